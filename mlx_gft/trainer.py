"""The training loop: sample groups, score them, compute advantages, update. One step owner.

Per iteration: take `batch_size` prompts, sample K answers per prompt with the current
policy, build the groups (expert + teachers + samples), score every member, z-score the
rewards inside each group, then run `updates_per_batch` optimizer updates on the batch.
SFT and DFT skip the sampling and train on the expert answers.
"""

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from . import distributed
from . import rewards as rewards_lib
from .advantages import group_advantages, zero_variance_fraction
from .config import SAMPLED_LOSSES, ConfigError, TrainConfig
from .data import Example
from .evaluate import accuracy
from .groups import KINDS, Groups, build_groups, pad_batch, response_start, reward_inputs
from .logprobs import token_logprobs
from .losses import k3
from .models import adapters_disabled, eval_mode
from .sampling import sample_groups
from .step import Stepper, TrainingStopped, run_updates


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM: a resumable checkpoint was saved after the current iteration."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        # Shell convention: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM).
        self.exit_code = 128 + int(getattr(signal, signal_name))


# --------------------------------------------------------------------------------------
# Model set-up and files
# --------------------------------------------------------------------------------------


def setup_trainable(model: nn.Module, config: TrainConfig) -> None:
    """Freeze the model, then open the layers the fine-tune type trains (as mlx_lm.lora)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    if config.num_layers > len(model.layers):
        raise ConfigError(
            f"num_layers is {config.num_layers} but the model has {len(model.layers)} layers "
            "(-1 trains all of them)"
        )
    if config.fine_tune_type == "full":
        for layer in model.layers[-max(config.num_layers, 0) :]:
            layer.unfreeze()
    else:
        lora = {"dropout": 0.0, **config.lora_parameters}
        linear_to_lora_layers(model, config.num_layers, lora, config.fine_tune_type == "dora")
    if config.resume_adapter_file:
        model.load_weights(config.resume_adapter_file, strict=False)


def make_optimizer(config: TrainConfig) -> optim.Optimizer:
    from mlx_lm.tuner.utils import build_schedule

    lr = config.learning_rate
    if config.lr_schedule:
        # Users write schedules in iterations (as for mlx_lm.lora); the optimizer counts
        # updates, updates_per_batch of them per iteration (skipped ones included).
        schedule, per_iteration = build_schedule(config.lr_schedule), config.updates_per_batch
        lr = schedule if per_iteration == 1 else (lambda step: schedule(step // per_iteration))
    cls = {
        "adam": optim.Adam,
        "adamw": optim.AdamW,  # weight decay 0.01 by default, as the reference
        "sgd": optim.SGD,
        "adafactor": optim.Adafactor,
        "muon": optim.Muon,
    }[config.optimizer]
    return cls(learning_rate=lr, **config.optimizer_config.get(config.optimizer, {}))


def _atomic_safetensors(path: Path, arrays: dict[str, mx.array]) -> None:
    tmp = path.with_name(path.name + ".tmp.safetensors")
    mx.save_safetensors(str(tmp), arrays)
    os.replace(tmp, path)


def _atomic_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=4, default=str))
    os.replace(tmp, path)


def adapter_config(config: TrainConfig) -> dict:
    """adapter_config.json as mlx_lm.load / mlx_lm.fuse read it, plus the rest of the args."""
    return {**asdict(config), "lora_parameters": {"dropout": 0.0, **config.lora_parameters}}


def save_adapters(model: nn.Module, config: TrainConfig, iteration: int | None = None) -> None:
    folder = Path(config.adapter_path)
    folder.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    _atomic_safetensors(folder / "adapters.safetensors", weights)
    if iteration is not None:
        _atomic_safetensors(folder / f"{iteration:07d}_adapters.safetensors", weights)


def save_checkpoint(model, optimizer, config: TrainConfig, state: dict, probe: dict) -> None:
    """Adapters, optimizer state, iteration and probe set; a kill at any moment leaves the
    previous checkpoint loadable (the new one is written aside, then swapped in)."""
    folder = Path(config.adapter_path)
    final, tmp, old = folder / "checkpoint", folder / "checkpoint.tmp", folder / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(
        str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    if probe:
        mx.save_safetensors(str(tmp / "probe.safetensors"), probe)
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_dir(config: TrainConfig) -> Path | None:
    folder = Path(config.adapter_path)
    for name in ("checkpoint", "checkpoint.old"):  # .old survives a kill mid-swap
        if (folder / name / "state.json").exists():
            return folder / name
    return None


def has_checkpoint(config: TrainConfig) -> bool:
    return _checkpoint_dir(config) is not None


def stage_finished(config: TrainConfig) -> bool:
    ckpt = _checkpoint_dir(config)
    return ckpt is not None and json.loads((ckpt / "state.json").read_text()).get("finished", False)


def load_checkpoint(model, optimizer, config: TrainConfig) -> tuple[dict, dict]:
    ckpt = _checkpoint_dir(config)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {config.adapter_path}")
    model.load_weights(str(ckpt / "adapters.safetensors"), strict=False)
    optimizer.init(model.trainable_parameters())
    optimizer.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    probe_file = ckpt / "probe.safetensors"
    probe = mx.load(str(probe_file)) if probe_file.exists() else {}
    return json.loads((ckpt / "state.json").read_text()), probe


# --------------------------------------------------------------------------------------
# Data order, probes and evaluation helpers
# --------------------------------------------------------------------------------------


def length_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """As mlx_lm.lora: examples sorted by length, cut into fixed batches of neighbours so a
    batch pads little; a remainder smaller than a batch is left out."""
    if len(lengths) < batch_size:
        raise ConfigError(
            f"the training set has {len(lengths)} examples, fewer than --batch-size {batch_size}"
        )
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def batch_indices(batches: list[np.ndarray], iteration: int, seed: int) -> list[int]:
    """The batch of a 0-based iteration: every epoch visits the batches in a fresh order,
    reproducible from (seed, iteration) alone, so a resumed run sees the same data."""
    epoch, k = divmod(iteration, len(batches))
    return [
        int(i) for i in batches[np.random.default_rng([seed, epoch]).permutation(len(batches))[k]]
    ]


def make_probe(model, tokenizer, examples: list[Example], config: TrainConfig) -> dict:
    """A fixed probe set for KL(pi_base || pi_theta): one base-policy answer per prompt,
    with its base log-probs, taken once (adapters off, so a resumed run keeps the true base)."""
    examples = [e for e in examples if e.prompt][: config.probe_size]
    if not examples:
        return {}
    with adapters_disabled(model), eval_mode(model):
        samples = sample_groups(
            model,
            tokenizer,
            [e.prompt for e in examples],
            1,
            max_tokens=config.max_completion_length,
            seed=config.seed + 7,
        )
        tokens, mask = pad_batch(
            [(e.prompt, s.tokens) for e, s in zip(examples, samples, strict=True)]
        )
        start = response_start(mask)
        base_lp, _ = token_logprobs(model, tokens, start=start)
    return {"tokens": tokens, "mask": mask[:, start:], "base_lp": base_lp}


def probe_kl(model, probe: dict) -> float:
    """KL(pi_base || pi_theta) per probe answer (sampled from the base), summed over its
    tokens and averaged over answers. The reference sums log pi_base - log pi_theta;
    with r = pi_theta / pi_base, r - 1 - log r has the same expectation under the base
    but is never negative, so an 8-answer probe does not report a negative KL; each
    token's term is bounded (`losses.k3`) so one extreme token cannot dominate."""
    if not probe:
        return float("nan")
    start = probe["tokens"].shape[1] - 1 - probe["mask"].shape[1]
    with eval_mode(model):
        lp, _ = token_logprobs(model, probe["tokens"], start=start)
    return (k3(lp - probe["base_lp"]) * probe["mask"]).sum(-1).mean().item()


VERIFIERS = ("math", "accuracy")


def default_rewards(config: TrainConfig, examples: list[Example]) -> list[str]:
    if config.reward:
        return config.reward
    return ["math"] if all(e.answer is not None for e in examples) else ["f1"]


def reward_origin(config: TrainConfig, specs: list[str]) -> str:
    """Why this reward, for the run's first lines: a changed default must not go unseen."""
    if config.reward:
        return " (--reward)"
    if specs == ["math"]:
        return " (the math verifier against each row's 'answer')"
    return " (token F1 against the expert answer: the rows have no 'answer')"


def quiet(*args, **kwargs) -> None:
    """The log of a rank that is not rank 0."""


def check_distributed(config: TrainConfig, ranks: int) -> None:
    """Every rank must take the same number of groups and make the same number of
    updates, or one would wait forever for the others' gradients."""
    if config.batch_size % ranks:
        raise ConfigError(f"batch_size {config.batch_size} must be divisible by {ranks} ranks")
    if config.batch_size // ranks < config.updates_per_batch:
        raise ConfigError(
            f"updates_per_batch {config.updates_per_batch} needs at least that many prompts "
            f"per rank; batch_size {config.batch_size} over {ranks} ranks gives "
            f"{config.batch_size // ranks}"
        )


def expert_stats(model, examples: list[Example], batch_size: int) -> dict:
    """Token-mean NLL of the expert answers, and the model's mean token entropy on them:
    a loss and an entropy every method is measured on alike (a run's own `entropy` is
    taken on its samples for GFT/GRPO but on the expert answers for SFT/DFT)."""
    nll, entropy, count = 0.0, 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        tokens, mask = pad_batch([(e.prompt, e.expert) for e in chunk])
        start = response_start(mask)
        lp, ent = token_logprobs(model, tokens, start=start, with_entropy=True)
        mask = mask[:, start:]
        nll += (-(lp * mask).sum()).item()
        entropy += (ent * mask).sum().item()
        count += mask.sum().item()
    return {"nll": nll / max(count, 1), "entropy": entropy / max(count, 1)}


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def train_batches(config: TrainConfig, train_set: list[Example]) -> list[np.ndarray]:
    """The batches `train` draws from, one epoch's worth."""
    lengths = [len(e.prompt) + len(e.expert) for e in train_set]
    return length_batches(lengths, config.batch_size)


def stage_iterations(config: TrainConfig, train_set: list[Example]) -> int:
    """Iterations `train` runs for `config` on `train_set`."""
    return num_iterations(config, len(train_batches(config, train_set)))


def num_iterations(config: TrainConfig, batches_per_epoch: int) -> int:
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * batches_per_epoch))
    return config.iters


# Per-iteration metrics exchanged between ranks (the same list everywhere); the times
# go separately, as the slowest rank's (distributed.SLOWEST).
METRIC_KEYS = [
    "loss", "grad_norm", "entropy", "rectified_frac", "skipped", "idle_updates", "train_tokens",
    "gen_tokens", "zero_var_frac", "group_size_mean", "sample_acc",
    "truncated_frac", "missing_teachers", "groups", "stop", *(f"reward_{k}" for k in KINDS),
]  # fmt: skip


def rollout(model, tokenizer, examples: list[Example], config: TrainConfig, reward_fns, seed: int):
    """Sample K answers per prompt, build the groups, score and z-score them.

    Returns (groups, advantages, metrics). SFT and DFT train on the expert alone.
    """
    if config.loss not in SAMPLED_LOSSES:
        groups = build_groups(examples, [], 0, teacher_count=1, keep_truncated_expert=True)
        return groups, mx.ones((len(groups.members),)), {}
    tic = time.perf_counter()
    with eval_mode(model):  # no LoRA dropout while sampling
        samples = sample_groups(
            model,
            tokenizer,
            [e.prompt for e in examples],
            config.group_size,
            max_tokens=config.max_completion_length,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=seed,
        )
    row = {
        "sample_time": time.perf_counter() - tic,
        "gen_tokens": sum(len(s.tokens) for s in samples),
    }
    offpolicy = config.loss == "gft"
    groups = build_groups(examples, samples, config.group_size, config.teacher_count, offpolicy)
    total, columns = rewards_lib.score(reward_fns, reward_inputs(groups), config.reward_timeout)
    adv = group_advantages(total, groups.sizes, scale=config.adv_scale)
    kinds = np.array([m.kind for m in groups.members])
    row["zero_var_frac"] = zero_variance_fraction(total, groups.sizes)
    row["group_size_mean"] = float(np.mean(groups.sizes))
    for kind in KINDS:
        if (kinds == kind).any():
            row[f"reward_{kind}"] = float(total[kinds == kind].mean())
    verifier = next((r.name for r in reward_fns if r.name in VERIFIERS), None)
    if verifier:
        row["sample_acc"] = float(columns[verifier][kinds == "sampled"].mean())
    row["truncated_frac"] = float(np.mean([s.finish_reason == "length" for s in samples]))
    # The policy's entropy on the sampled tokens the loss trains on, from the sampler.
    trained = [s for s in samples if not (config.mask_truncated and s.finish_reason == "length")]
    if any(s.entropy for s in trained):
        row["entropy"] = float(np.mean([h for s in trained for h in s.entropy]))
    row["missing_teachers"] = groups.missing_teachers
    return groups, adv, row


def training_arrays(model, tokenizer, groups: Groups, adv: mx.array, config: TrainConfig):
    """(start, arrays) for the loss: the first scored target position, then per member
    tokens, mask, advantages, old and base log-probs (GRPO)."""
    if config.loss in SAMPLED_LOSSES or config.mask_prompt:
        pairs = [(m.prompt, m.response) for m in groups.members]
    else:  # mlx_lm.lora's default: SFT trains on the prompt tokens too
        pairs = [([], m.prompt + m.response) for m in groups.members]
    tokens, mask = pad_batch(pairs, pad_id=tokenizer.eos_token_id or 0)
    start = response_start(mask)
    mask = mask[:, start:]
    if config.mask_truncated:
        # A sample cut off before its answer is not wrong so much as unfinished (DAPO's
        # overlong filtering): it still counts in its group's reward statistics.
        keep = np.array([not m.truncated for m in groups.members], dtype=np.float32)
        mask = mask * mx.array(keep)[:, None]
    old_lp = base_lp = mx.zeros(mask.shape)
    if config.loss == "grpo":
        old_lp, base_lp = reference_logprobs(model, tokens, start, config, old_lp)
    return start, (tokens, mask, adv, old_lp, base_lp)


def reference_logprobs(model, tokens: mx.array, start: int, config: TrainConfig, zeros):
    """GRPO's old-policy and base log-probs (zeros where the loss needs none), taken
    without dropout."""
    old_lp = base_lp = zeros
    with eval_mode(model):
        if config.updates_per_batch > 1:
            # The ratio's denominator: the policy that sampled, before this batch's updates
            # (with one update per batch the step takes it from the current forward).
            old_lp = token_logprobs(model, tokens, config.temperature, start=start)[0]
            old_lp = mx.stop_gradient(old_lp)
        if config.kl_coef:
            with adapters_disabled(model):
                base_lp = token_logprobs(model, tokens, config.temperature, start=start)[0]
    return old_lp, base_lp


def validate(model, tokenizer, valid_set: list[Example], config: TrainConfig, reward_fns) -> dict:
    """Expert-answer NLL (comparable across losses) and, with a verifier, sampled accuracy."""
    n = len(valid_set) if config.val_batches < 0 else config.val_batches * config.batch_size
    subset = valid_set[:n]
    with eval_mode(model):  # no dropout: the same model gives the same numbers
        stats = expert_stats(model, subset, config.batch_size)
        out = {"val_loss": stats["nll"], "val_entropy": stats["entropy"]}
        verifier = next((r.name for r in reward_fns if r.name in VERIFIERS), None)
        if verifier and all(e.answer is not None for e in subset):
            acc = accuracy(
                model,
                tokenizer,
                subset,
                verifier,
                temperature=config.temperature,
                max_tokens=config.max_completion_length,
                seed=config.seed,
                batch_size=config.batch_size * config.group_size,
            )
            out["val_acc"] = acc["avg_at_k"]
        return out


class _Reporter:
    """Report lines to the log, every metric to metrics.jsonl, optionally to wandb."""

    def __init__(self, config: TrainConfig, log, enabled: bool = True):
        self.log, self.enabled = log, enabled
        self.file = (Path(config.adapter_path) / "metrics.jsonl").open("a") if enabled else None
        self.wandb = None
        if enabled and config.report_to and "wandb" in config.report_to.split(","):
            import wandb

            name = config.project_name or Path.cwd().name
            self.wandb = wandb.init(project=name, config=asdict(config))

    def __call__(self, metrics: dict, line: str) -> None:
        if not self.enabled:
            return
        self.log(line)
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        if self.wandb:
            self.wandb.log(metrics, step=metrics["iteration"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.wandb:
            self.wandb.finish()


def train(
    model: nn.Module,
    tokenizer,
    config: TrainConfig,
    train_set: list[Example],
    valid_set: list[Example],
    log=print,
    data_offset: int = 0,
) -> list[dict]:
    """Train `model` in place (its trainable layers must already be set up); returns the
    reported metrics. Adapters, checkpoints and metrics.jsonl go to config.adapter_path.

    data_offset: batches already used by earlier stages. Iteration i trains on the data
    (and sampling seed) of iteration data_offset + i, so a later stage goes on through
    the data instead of seeing the earlier stage's prompts again."""
    if not train_set:
        raise ValueError("the training set is empty")
    group = mx.distributed.init()
    lead = group.rank() == 0  # rank 0 alone logs and writes files
    if group.size() > 1:
        check_distributed(config, group.size())
        log = log if lead else quiet
    folder = Path(config.adapter_path)
    if lead:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_json(folder / "adapter_config.json", adapter_config(config))
    optimizer = make_optimizer(config)
    reward_fns = ()
    if config.loss in SAMPLED_LOSSES or (valid_set and all(e.answer for e in valid_set)):
        specs = default_rewards(config, train_set)
        reward_fns = rewards_lib.load_rewards(specs, config.reward_weights)
        log(f"Reward: {', '.join(specs)}{reward_origin(config, specs)}")
    start, probe = 0, {}
    if config.resume:
        state, probe = load_checkpoint(model, optimizer, config)
        start = state["iteration"]
        log(f"Resuming from iteration {start}")
    if not probe and lead:
        probe = make_probe(model, tokenizer, valid_set or train_set, config)
    stepper = Stepper(model, optimizer, config, group)
    batches = train_batches(config, train_set)
    total_iters = num_iterations(config, len(batches))
    report = _Reporter(config, log, enabled=lead)
    reports, window, trained_tokens = [], [], 0
    # Data without any teacher answers is the common case, not worth a notice.
    noticed_missing = not any(e.teachers for e in train_set)
    progress = _progress(total_iters, start) if lead else None

    def save(done: int, numbered: bool = True) -> None:
        if lead:
            save_adapters(model, config, done if numbered else None)
            state = {"iteration": done, "finished": done == total_iters}
            save_checkpoint(model, optimizer, config, state, probe)

    def evaluate(done: int) -> None:
        tic = time.perf_counter()
        val = validate(model, tokenizer, valid_set, config, reward_fns)
        line = f"Iter {done}: Val loss {val['val_loss']:.3f}, Val entropy {val['val_entropy']:.3f}"
        if "val_acc" in val:
            line += f", Val acc {val['val_acc']:.3f}"
        report({"iteration": done, **val}, f"{line}, Val took {time.perf_counter() - tic:.3f}s")

    if lead and valid_set and start == 0:
        evaluate(0)  # the starting point, as mlx_lm.lora does: curves begin at the base
    saved = start
    try:
        with stop_signals(log) as stop:
            for it in range(start, total_iters):
                tic = time.perf_counter()
                # Resumable: the seed depends only on the iteration (and differs per rank).
                step = data_offset + it
                seed = (config.seed * 1_000_003 + step) * group.size() + group.rank()
                mx.random.seed(seed)
                picked = distributed.shard(batch_indices(batches, step, config.seed), group)
                try:
                    groups, adv, row = rollout(
                        model, tokenizer, [train_set[i] for i in picked], config, reward_fns, seed
                    )
                except rewards_lib.RewardError as e:
                    # Nothing of this iteration is applied yet: keep the work done so far.
                    if it > saved:  # (distributed: the other ranks stop at their next exchange)
                        save(it)
                    raise rewards_lib.RewardError(
                        f"{e}\nThe checkpoint of iteration {it} is saved: fix the reward, then "
                        "continue with --resume."
                    ) from e
                if groups.members:
                    start_pos, arrays = training_arrays(model, tokenizer, groups, adv, config)
                    row.update(run_updates(stepper, groups.sizes, start_pos, arrays, config))
                else:  # every answer of the batch was left out: nothing to train on
                    row.update(stepper.idle_iteration())
                row["train_time"] = time.perf_counter() - tic - row.get("sample_time", 0.0)
                row["groups"] = len(picked)
                row["stop"] = float(bool(stop))
                row = distributed.reduce_metrics(row, METRIC_KEYS, group)
                if row.pop("stop") and not stop:  # another rank was signalled: stop together
                    stop.append("SIGTERM")
                row["learning_rate"] = float(optimizer.learning_rate.item())
                trained_tokens += row["train_tokens"]
                if row.get("missing_teachers") and not noticed_missing:
                    noticed_missing = True
                    log(
                        "Note: some rows have fewer than teacher_count - 1 = "
                        f"{config.teacher_count - 1} teacher answers; their groups are smaller "
                        "(counted as missing_teachers)."
                    )
                window.append(row)
                if progress:
                    progress.update()

                done = it + 1
                last = done == total_iters
                if done % config.steps_per_report == 0 or last or stop:
                    summary = _summarise(window, done)
                    summary.update(
                        kl_to_base=probe_kl(model, probe),
                        trained_tokens=trained_tokens,
                        peak_memory_gb=mx.get_peak_memory() / 1e9,
                        active_memory_gb=mx.get_active_memory() / 1e9,
                    )
                    # Peak per report window, so a leak shows as growth across reports.
                    mx.reset_peak_memory()
                    report(summary, report_line(summary))
                    reports.append(summary)
                    window = []
                if lead and valid_set and (done % config.steps_per_eval == 0 or last):
                    evaluate(done)
                if done % config.save_every == 0 or last or stop:
                    save(done, numbered=not last)
                    saved = done
                if stop and not last:
                    raise TrainingInterrupted(
                        f"{stop[0]}: stopped after iteration {done} with a checkpoint in "
                        f"{config.adapter_path}; continue with --resume",
                        stop[0],
                    )
    finally:
        if progress:
            progress.close()
        report.close()
    return reports


@contextlib.contextmanager
def stop_signals(log):
    """Turn the first SIGINT / SIGTERM into a request to stop after the current iteration
    (with a checkpoint); a second one aborts at once, leaving the last checkpoint."""
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signal.Signals(signum).name)
        log(f"\n{requested[0]}: finishing this iteration, then saving (again to abort now)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _progress(total: int, start: int):
    """A progress bar on a terminal; nothing when output goes to a file or a test."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="Training", leave=False)


def _summarise(window: list[dict], iteration: int) -> dict:
    keys = {k for r in window for k in r} - {"iteration"}
    out = {"iteration": iteration}
    for k in sorted(keys):
        values = [r[k] for r in window if k in r]
        if k in ("grad_norm",):
            out[k] = max(values)
        elif k in (
            "sample_time",
            "train_time",
            "gen_tokens",
            "train_tokens",
            "skipped",
            "idle_updates",
        ):
            out[k] = sum(values)
        else:
            out[k] = float(np.mean(values))
    elapsed = out.get("sample_time", 0) + out.get("train_time", 0)
    out["it_per_sec"] = len(window) / max(elapsed, 1e-9)
    out["gen_tok_per_sec"] = out.get("gen_tokens", 0) / max(out.get("sample_time", 0), 1e-9)
    out["train_tok_per_sec"] = out.get("train_tokens", 0) / max(out.get("train_time", 0), 1e-9)
    return out


def report_line(r: dict) -> str:
    """The classic one-line report scripts grep (mlx_lm.lora's style, GFT's fields)."""
    parts = [f"Iter {r['iteration']}: Train loss {r['loss']:.3f}"]
    if "reward_sampled" in r:
        parts.append(f"Reward {r['reward_sampled']:.3f}")
    if "sample_acc" in r:
        parts.append(f"Acc {r['sample_acc']:.3f}")
    if "zero_var_frac" in r:
        parts.append(f"Zero-var {r['zero_var_frac']:.2f}")
    parts += [
        f"Entropy {r.get('entropy', math.nan):.3f}",
        f"Grad norm {r['grad_norm']:.3f}",
        f"KL {r['kl_to_base']:.4f}",
        f"Learning Rate {r['learning_rate']:.3e}",
        f"It/sec {r['it_per_sec']:.3f}",
    ]
    if r.get("gen_tokens"):
        parts.append(f"Gen tok/s {r['gen_tok_per_sec']:.1f}")
    parts += [f"Train tok/s {r['train_tok_per_sec']:.1f}", f"Peak mem {r['peak_memory_gb']:.3f} GB"]
    if r.get("skipped"):
        parts.append(f"Skipped {r['skipped']}")
    if r.get("idle_updates"):
        parts.append(f"Idle updates {r['idle_updates']}")
    return ", ".join(parts)
