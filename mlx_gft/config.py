"""Training configuration: one dataclass, filled from defaults, then YAML, then the CLI.

Every field can be set from YAML; the command line only overrides what it names (its
parser has no defaults of its own, so it can never mask a YAML value).
"""

import argparse
import difflib
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .formats import Features

# The configuration is what every module reads, so it imports none of them: it names
# the choices, and the modules that implement them check they cover these names
# (methods.METHODS, metrics.SERVICES; tests/test_imports.py).
LOSSES = ("gft", "sft", "sft-verified", "dft", "grpo")
REPORT_TO = ("jsonl", "wandb", "swanlab", "tensorboard")  # metrics.jsonl: always
# Names users bring from other LoRA tools, mapped to ours.
ALIASES = {
    "alpha": "scale",
    "lora_alpha": "scale",
    "r": "rank",
    "lora_rank": "rank",
    "lora_layers": "num_layers",
    "lora_dropout": "dropout",
    "num_generations": "group_size",
    "lr": "learning_rate",
    "beta": "kl_coef",
    "epsilon": "clip_eps",
}
LORA_KEYS = ("rank", "scale", "dropout", "keys")


def opt(default: Any, help: str) -> Any:
    """A config field with its one-line help (shown by --help)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class ConfigError(ValueError):
    """A configuration value or key that cannot be used, with what to write instead."""


@dataclass
class TrainConfig:
    # Model and data (None = the embedded default model / the built-in task).
    model: str | None = opt(
        None, "Hub id, mlx-lm folder or .gguf file (unset: the embedded SmolLM2-135M-Instruct)"
    )
    model_dtype: str | None = opt(
        None,
        "for .gguf models: float32, bfloat16, float16 or keep-quantized (unset: float32 on a "
        "CPU, keep-quantized on Apple silicon)",
    )
    trust_remote_code: bool = opt(False, "let the tokenizer/model run code from the model's repo")
    data: str | None = opt(
        None,
        "folder with train/valid/test.jsonl or a Hub dataset (unset: the built-in arithmetic "
        "word problems)",
    )
    dataset_config: str | None = opt(
        None, "the Hub dataset's config (subset) name, e.g. main for openai/gsm8k (TRL's name)"
    )
    hf_dataset: dict | list | None = opt(
        None,
        "YAML, as mlx_lm.lora: a Hub dataset (or a list of them) with path, config "
        "(load_dataset's arguments, e.g. {name: main}), train_split / valid_split / "
        "test_split and *_feature columns; data is then not read",
    )
    # Data columns, mlx_lm's names and defaults (a prompt alone is a prompt-only row).
    prompt_feature: str = opt("prompt", "column with the prompt: text or chat messages")
    completion_feature: str = opt("completion", "column with the expert answer")
    answer_feature: str = opt("answer", "column with the ground truth a verifier checks")
    chat_feature: str = opt("messages", "column with a chat ending in the expert answer")
    text_feature: str = opt("text", "column with plain text (SFT/DFT: no prompt)")
    train: bool = opt(False, "run training")
    test: bool = opt(
        False, "score the test set: before and after training with --train, else the adapters"
    )
    # mlx_lm.lora's options, same spellings and defaults.
    fine_tune_type: str = opt("lora", "lora, dora or full")
    optimizer: str = opt("adamw", "adam, adamw, sgd, adafactor or muon")
    optimizer_config: dict = opt({}, "per-optimizer kwargs (YAML)")
    mask_prompt: bool = opt(False, "SFT/DFT: no loss on prompt tokens (GFT/GRPO always)")
    num_layers: int = opt(16, "layers to fine-tune from the top, -1 for all")
    batch_size: int = opt(4, "prompts per iteration")
    iters: int = opt(1000, "training iterations")
    epochs: float | None = opt(None, "passes over train.jsonl (set: overrides iters)")
    val_batches: int = opt(25, "validation batches, -1 for all")
    learning_rate: float = opt(1e-5, "peak learning rate")
    steps_per_report: int = opt(10, "iterations between report lines")
    steps_per_eval: int = opt(200, "iterations between validations")
    grad_accumulation_steps: int = opt(1, "split each update into at least this many parts")
    micro_batch_size: int = opt(
        0,
        "rows (group members: expert, teachers, samples) per forward/backward, run one "
        "micro-batch after another for the same update; 0 = batch_size rows, what "
        "mlx_lm.lora runs at once (batch_size itself counts prompts, each a group of rows)",
    )
    micro_batch_tokens: int = opt(0, "also cap rows x padded length per micro-batch (0 = no cap)")
    shared_prompt: bool = opt(
        True, "run each group's prompt once in the update, for all its answers (same result)"
    )
    skip_zero_advantage: bool = opt(
        True, "leave rows with advantage 0 (quiet groups) out of the update (same result)"
    )
    dynamic_sampling: bool = opt(
        False,
        "GFT/GRPO: draw more batches of prompts until batch_size groups have reward spread "
        "(DAPO's dynamic sampling); groups whose rewards are all equal teach nothing",
    )
    max_sampling_rounds: int = opt(
        4, "with dynamic_sampling: batches drawn per iteration at most, then train on what is kept"
    )
    resume_adapter_file: str | None = opt(None, "start from these adapter weights")
    resume: bool = opt(False, "continue the run in --adapter-path from its last checkpoint")
    adapter_path: str = opt("adapters", "where adapters and checkpoints go")
    save_every: int = opt(100, "iterations between checkpoints")
    test_batches: int = opt(500, "test batches, -1 for all")
    max_seq_length: int = opt(2048, "longest prompt + response in tokens")
    long_prompts: str = opt(
        "error",
        "rows whose prompt reaches max_seq_length tokens, or whose prompt + answer pass it: "
        "error, skip the row, or truncate (the prompt to its last max_seq_length / 2 "
        "tokens, the answer to the room left)",
    )
    grad_checkpoint: bool = opt(False, "recompute activations to save memory")
    clear_cache_threshold: int = opt(
        0, "free MLX's buffer cache after an iteration when over this many bytes (500M, 2G)"
    )
    seed: int = opt(0, "seed for data order, sampling and dropout")
    report_to: str | None = opt(
        None, "wandb, swanlab and/or tensorboard, comma-separated (metrics.jsonl: always)"
    )
    project_name: str | None = opt(None, "wandb/swanlab project (unset: this folder's name)")
    lora_parameters: dict = opt(
        {"rank": 8, "scale": 20.0, "dropout": 0.0}, "YAML: rank, scale, dropout, keys"
    )
    lr_schedule: dict | None = opt(None, "YAML: name, arguments, warmup, warmup_init")
    # GFT.
    loss: str = opt(
        "gft", "gft, sft, sft-verified (SFT on the expert answers the reward accepts), dft, grpo"
    )
    group_size: int = opt(4, "K self-samples per prompt")
    teacher_count: int = opt(
        4,
        "off-policy members per group: the expert plus up to teacher_count - 1 answers from "
        "a row's teacher_responses (the shipped data has none: the group is then the expert "
        "and the K samples)",
    )
    tau: float = opt(
        0.5,
        "DCR threshold: a token with p <= tau gets coefficient p (DFT-like: weight 1 on the "
        "gradient of p), a likelier one 1 (SFT-like: 1/p on it); 0 = DCR off (REINFORCE)",
    )
    temperature: float = opt(1.0, "sampling temperature")
    top_p: float = opt(1.0, "sampling nucleus")
    max_completion_length: int = opt(256, "new tokens per sample")
    mask_truncated: bool = opt(
        True,
        "no loss on samples cut off by max_completion_length (they still count in "
        "their group's reward statistics)",
    )
    reward: list[str] | None = opt(
        None,
        "math, math_verify, exact, f1 or file.py:function, several summed (unset: math if "
        "the rows have answers, else f1)",
    )
    reward_weights: list[float] | None = opt(None, "one weight per reward")
    reward_timeout: float = opt(60.0, "seconds a reward may take on one sample, 0 for no limit")
    overlong_buffer: int = opt(
        0,
        "DAPO's soft overlong punishment (verl: overlong_buffer.len): an answer of L tokens "
        "gets min(0, (max_completion_length - overlong_buffer - L) / overlong_buffer) x "
        "overlong_penalty added to its reward, 0 down to -overlong_penalty over the last "
        "overlong_buffer tokens; 0 = off. Use with --no-mask-truncated: a masked cut-off "
        "sample carries no loss to punish",
    )
    overlong_penalty: float = opt(
        1.0, "the punishment at max_completion_length tokens (verl: penalty_factor)"
    )
    adv_scale: str = opt(
        "group",
        "advantages: group = (r - group mean) / group std (GFT, GRPO); batch = divided by the "
        "batch's std instead; none = r - group mean only (Dr. GRPO)",
    )
    loss_agg: str = opt(
        "token-mean",
        "token-mean = every scored token of the update weighs alike (GFT's reference); "
        "seq-mean-token-mean = each answer's token mean, answers alike; "
        "seq-mean-token-sum-norm = each answer's token sum / max_completion_length (Dr. GRPO)",
    )
    updates_per_batch: int = opt(1, "optimizer updates per sampled batch")
    clip_eps: float = opt(0.2, "GRPO only: the PPO ratio's clip")
    kl_coef: float = opt(0.0, "GRPO only: KL to the base model (adapters off) in the loss")
    grad_clip: float = opt(
        1.0,
        "clip every update's global gradient norm to this (the GFT reference's; mlx_lm.lora "
        "does not clip), 0 to disable",
    )
    max_skipped_steps: int = opt(10, "consecutive non-finite steps before stopping")
    probe_size: int = opt(8, "probe prompts for KL to the base")
    log_completions: bool = opt(
        False,
        "at every report, write num_completions_to_print groups to "
        "<adapter_path>/completions.jsonl: each member's text, reward, advantage and, per "
        "token, log p, DCR's coefficient and the weight the update gave it (TRL's name); "
        "the terminal shows one group",
    )
    num_completions_to_print: int = opt(2, "with log_completions: groups logged per report")
    stages: list[str] | None = opt(
        None,
        "run losses in turn, each from the last one's adapters, e.g. sft gft grpo "
        "(YAML: a list of losses or of option mappings)",
    )

    def _check_types(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for f in fields(self):
            value, kinds = getattr(self, f.name), typing.get_args(hints[f.name]) or (hints[f.name],)
            if value is None and type(None) in kinds:
                continue
            kind = next((k for k in (int, float) if k in kinds), None)
            if kind is not None:
                setattr(self, f.name, _number(f.name, value, kind))
            elif bool in kinds and not isinstance(value, bool):
                raise ConfigError(f"{f.name}: expected true or false, got {value!r}")
        if isinstance(self.reward_weights, list):
            self.reward_weights = [_number("reward_weights", w, float) for w in self.reward_weights]

    def validate(self) -> "TrainConfig":
        self.clear_cache_threshold = parse_size(self.clear_cache_threshold)
        self._check_types()
        report_names(self.report_to)  # unknown services fail now; job.run checks packages
        choices = {
            "fine_tune_type": ("lora", "dora", "full"),
            "optimizer": ("adam", "adamw", "sgd", "adafactor", "muon"),
            "loss": LOSSES,
            "adv_scale": ("group", "batch", "none"),
            "loss_agg": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
            "long_prompts": ("error", "skip", "truncate"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                value = getattr(self, name)
                raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        positive = (
            "batch_size",
            "iters",
            "group_size",
            "teacher_count",
            "max_completion_length",
            "updates_per_batch",
            "grad_accumulation_steps",
            "steps_per_report",
            "steps_per_eval",
            "save_every",
            "max_seq_length",
            "max_sampling_rounds",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("micro_batch_size", "micro_batch_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"{name} must be 0 (automatic) or more, got {getattr(self, name)}"
                )
        dtypes = (None, "float32", "bfloat16", "float16", "keep-quantized")
        if self.model_dtype not in dtypes:
            raise ConfigError(f"model_dtype: {self.model_dtype!r} is not one of {dtypes[1:]}")
        if self.overlong_buffer < 0 or self.overlong_buffer > self.max_completion_length:
            raise ConfigError(
                f"overlong_buffer must be between 0 (off) and max_completion_length "
                f"{self.max_completion_length}, got {self.overlong_buffer}"
            )
        if self.overlong_penalty < 0:
            raise ConfigError(f"overlong_penalty must be >= 0, got {self.overlong_penalty}")
        if self.num_completions_to_print < 1:
            raise ConfigError(
                f"num_completions_to_print must be at least 1, got {self.num_completions_to_print}"
            )
        if not 0.0 <= self.tau <= 1.0:
            raise ConfigError(f"tau must be in [0, 1], got {self.tau}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        for key in self.lora_parameters:
            if key not in LORA_KEYS:
                raise ConfigError(
                    f"lora_parameters: unknown key {key!r}{suggest_key(key, LORA_KEYS)}"
                )
        if isinstance(self.reward, str):
            self.reward = [r for r in self.reward.split(",") if r]
        weights, rewards = self.reward_weights, self.reward
        if weights is not None and rewards and len(weights) != len(rewards):
            raise ConfigError(
                f"reward_weights has {len(weights)} values for {len(rewards)} rewards"
            )
        if self.hf_dataset is not None:
            hub_entries(self)  # a malformed entry fails now, naming its key
            if self.dataset_config:
                raise ConfigError(
                    "dataset_config names the config of --data's Hub dataset; with hf_dataset "
                    "put it in the entry: config: {name: ...}"
                )
        if self.stages:
            stage_configs(self)  # each stage's options are checked now, not mid-run
        if self.kl_coef and self.fine_tune_type == "full":
            raise ConfigError(
                "kl_coef needs adapters (lora/dora): the base policy is the model with them off"
            )
        return self


# What a stage may not change: the trainable layers are set up once for all stages.
RUN_WIDE = (
    "model", "model_dtype", "trust_remote_code", "data", "train", "test", "fine_tune_type",
    "num_layers", "lora_parameters", "adapter_path", "resume", "stages", "seed",
    # The data is loaded once for every stage, so its column mapping is the run's.
    "dataset_config", "hf_dataset", "prompt_feature", "completion_feature", "answer_feature",
    "chat_feature", "text_feature",
)  # fmt: skip
# The options that say where the rows are and which column is what: mlx_gft.evaluate and
# mlx_gft.distill take them too, with the same meaning.
DATA_OPTIONS = (
    "dataset_config", "prompt_feature", "completion_feature", "answer_feature", "chat_feature",
    "text_feature",
)  # fmt: skip


class DefaultsFormatter(argparse.HelpFormatter):
    """--help that states each option's default once: appended as "(default: X)" unless
    the help already says it (or what unset means), or there is none to state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or "unset" in text
            or default is None
            or default is argparse.SUPPRESS
            or default is False  # a flag: off unless given
            or not action.option_strings
        ):
            return text
        return f"{text} (default: {default})"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--dataset-config and the --*-feature column options, with training's help and
    defaults, for the tools that read the same data."""
    for f in fields(TrainConfig):
        if f.name in DATA_OPTIONS:
            flag = "--" + f.name.replace("_", "-")
            help_text = f.metadata["help"]
            if f.default is not None:
                help_text += f" (default: {f.default})"
            parser.add_argument(flag, default=f.default, help=help_text, metavar=f.name.upper())


# --------------------------------------------------------------------------------------
# mlx_lm.lora's `hf_dataset` (tuner/datasets.py): its keys and split defaults


HUB_SPLIT_DEFAULTS = {"train": "train[:80%]", "valid": "train[-10%:]", "test": None}
HUB_KEYS = (
    "path",
    "config",
    *(f"{split}_split" for split in HUB_SPLIT_DEFAULTS),
    *(f"{f.name}_feature" for f in fields(Features)),  # answer_feature is ours
)


@dataclass(frozen=True)
class HubEntry:
    """One Hub dataset of `hf_dataset`: its id, datasets.load_dataset's keyword arguments
    (`name`: the config), the slice each split reads (`train[:80%]`; None: none), and
    its columns (the run's, where the entry names none)."""

    path: str
    options: dict
    splits: dict[str, str | None]
    features: Features


def hub_entries(config: "TrainConfig") -> list[HubEntry]:
    """config.hf_dataset (one mapping or a list, as mlx_lm.lora reads it), checked."""
    value = config.hf_dataset
    many = isinstance(value, list)
    if many and not value:
        raise ConfigError("hf_dataset: an empty list; give at least one {path: <Hub id>}")
    entries = value if many else [value]
    run = Features.of(config)
    return [
        _hub_entry(entry, f"hf_dataset[{i}]" if many else "hf_dataset", run)
        for i, entry in enumerate(entries)
    ]


def _hub_entry(entry: Any, where: str, run: Features) -> HubEntry:
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: expected a mapping such as {{path: openai/gsm8k, config: {{name: main}}}}, "
            f"got {type(entry).__name__}"
        )
    for key in entry:
        if key not in HUB_KEYS:
            hint = "; a config name goes in config: {name: ...}" if key == "name" else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}{hint or suggest_key(key, HUB_KEYS)} "
                f"(keys: {', '.join(HUB_KEYS)})"
            )
    path = entry.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: path: expected a Hub dataset id such as openai/gsm8k")
    options = entry.get("config") or {}
    if isinstance(options, str):  # a bare config name: the usual case
        options = {"name": options}
    if not isinstance(options, dict):
        raise ConfigError(
            f"{where}: config: expected datasets.load_dataset's keyword arguments, such as "
            "{name: main}"
        )
    splits = {}
    for split, default in HUB_SPLIT_DEFAULTS.items():
        spec = entry.get(f"{split}_split", default)
        if spec is not None and not isinstance(spec, str):
            raise ConfigError(f"{where}: {split}_split: expected a split such as train[:80%]")
        splits[split] = spec
    columns = {}
    for f in fields(Features):
        column = entry.get(f"{f.name}_feature", getattr(run, f.name))
        if not isinstance(column, str):
            raise ConfigError(f"{where}: {f.name}_feature: expected a column name")
        columns[f.name] = column
    return HubEntry(path, dict(options), splits, Features(**columns))


def stage_configs(config: TrainConfig) -> list[TrainConfig]:
    """One config per stage: the run's options overridden by the stage's, each stage
    writing to its own folder `<adapter_path>/<n>-<loss>`. No stages: [config]."""
    if not config.stages:
        return [config]
    out = []
    for n, stage in enumerate(config.stages, start=1):
        if isinstance(stage, str):
            stage = {"loss": stage}
        if not isinstance(stage, dict):
            raise ConfigError(f"stages[{n - 1}]: expected a loss name or a mapping of options")
        stage = {k.replace("-", "_"): v for k, v in stage.items()}
        for key in stage:
            if key in RUN_WIDE:
                raise ConfigError(f"stages[{n - 1}]: {key!r} is set for the whole run, not a stage")
            if key not in field_names():
                raise ConfigError(
                    f"stages[{n - 1}]: unknown key {key!r}{suggest_key(key, field_names())}"
                )
        values = {f.name: getattr(config, f.name) for f in fields(TrainConfig)}
        values.update(stage, stages=None)
        values["adapter_path"] = str(Path(config.adapter_path) / f"{n}-{values['loss']}")
        out.append(TrainConfig(**values).validate())
    return out


def _number(name: str, value: Any, kind: type) -> Any:
    """YAML 1.1 reads `1e-5` (no dot) as a string; take it as the number it means, and
    refuse what is not a number at all instead of failing deep inside the optimizer."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    try:
        number = kind(value) if kind is float else int(str(value))
    except ValueError:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    return number


def report_names(report_to: str | None) -> list[str]:
    """The services `report_to` names (comma-separated, any case, as mlx_lm.lora reads
    it); an unknown name is an error now, not after the model loads."""
    names = [n.strip().lower() for n in (report_to or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in REPORT_TO]
    if unknown:
        raise ConfigError(
            f"report_to: unknown service {unknown[0]!r}; choose from {', '.join(REPORT_TO)} "
            "(comma-separated)"
        )
    return names


def parse_size(value: Any) -> int:
    """Bytes as mlx_lm.lora's --clear-cache-threshold reads them: 1000000, 500M, 1.5GB."""
    units = {"": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9}
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(value))
    if isinstance(value, bool) or not match or match[2].upper() not in units:
        raise ConfigError(f"clear_cache_threshold: expected bytes (500M, 2G), got {value!r}")
    return int(float(match[1]) * units[match[2].upper()])


class _Yaml(yaml.SafeLoader):
    """mlx_lm.lora's YAML reading: `1e-5` (no dot) is a float, also where no field type
    converts it (optimizer_config, lr_schedule arguments)."""


_Yaml.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def closest_key(key: str, known) -> str | None:
    """The known key a user most likely meant: another tool's name for it, or the
    nearest spelling."""
    if key in ALIASES and ALIASES[key] in known:
        return ALIASES[key]
    close = difflib.get_close_matches(key, list(known), n=1)
    return close[0] if close else None


def suggest_key(key: str, known) -> str:
    close = closest_key(key, known)
    return f"; did you mean {close!r}?" if close else ""


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config; unknown keys are errors, all of them in one, each with its
    line and the likely intended key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        values = yaml.load(text, _Yaml) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
    nested = values.pop("config", None)  # mlx_lm.lora's key for -c itself
    if nested is not None and Path(str(nested)).resolve() != path.resolve():
        raise ConfigError(f"{path}: config: {nested!r}: one config file only; pass it with -c")
    unknown = _unknown_keys(yaml.compose(text, _Yaml), field_names()) if values else []
    if len(unknown) == 1:
        line, key, hint = unknown[0]
        raise ConfigError(f"{path}:{line}: unknown key {key!r}{hint}")
    if unknown:
        listed = "\n".join(f"  {path}:{line}: {key!r}{hint}" for line, key, hint in unknown)
        raise ConfigError(f"{path}: {len(unknown)} unknown keys:\n{listed}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def _unknown_keys(root: yaml.Node, known: list[str]) -> list[tuple[int, str, str]]:
    """(line, key, suggestion) of every unknown key at the top level and inside
    lora_parameters, in file order."""
    out = []
    for key_node, value_node in root.value:
        key = str(key_node.value)
        norm = key.replace("-", "_")
        line = key_node.start_mark.line + 1
        if norm == "lora_parameters" and isinstance(value_node, yaml.MappingNode):
            for sub, _ in value_node.value:
                if str(sub.value) not in LORA_KEYS:
                    hint = suggest_key(str(sub.value), LORA_KEYS)
                    out.append((sub.start_mark.line + 1, f"lora_parameters.{sub.value}", hint))
        elif norm not in known and norm not in ("config", "<<"):  # <<: a YAML merge
            out.append((line, key, suggest_key(norm, known)))
    return out


def build_config(yaml_values: dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < YAML < explicit overrides (the CLI passes only what the user typed)."""
    values = {**(yaml_values or {}), **{k: v for k, v in overrides.items() if v is not None}}
    lora = {**TrainConfig().lora_parameters, **values.pop("lora_parameters", {})}
    known = field_names()
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown option {key!r}{suggest_key(key, known)}")
    return TrainConfig(**values, lora_parameters=lora).validate()
