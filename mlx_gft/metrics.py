"""Training metrics: how each one combines, and where the reports go.

A metric is measured per optimizer update (`StepStats`, summed over its micro-batches),
combined into one row per iteration (`iteration_metrics`), over ranks
(`distributed.reduce_metrics`, by `RULES`) and over a report window (`summarise`, by
`RULES`), then written as a report line, a metrics.jsonl row and optionally to the
--report-to services and a training callback (`Reporter`).
"""

import importlib.util
import json
import math
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import ConfigError, TrainConfig, report_names
from .groups import KINDS


@dataclass
class StepStats:
    """What one optimizer update measured (sums over its micro-batches and ranks)."""

    loss: float
    grad_norm: float  # before the clip (--grad-clip)
    clipped_norm: float  # after it: the norm of the step the optimizer took
    response_tokens: float  # tokens the forward ran on (quiet rows left out are not)
    metric_tokens: float  # tokens the entropy metric is taken on
    entropy_sum: float
    skipped: int = 0  # 1 when a non-finite loss or gradient was not applied
    idle: int = 0  # 1 when no advantage was non-zero: nothing to learn, nothing applied
    # Per micro-batch, the log-probs the loss used (rows, T): the group log's and the
    # rectified shares' source.
    logps: list = field(default_factory=list, repr=False)
    divisor: float = 0.0  # the loss's normaliser over every rank's rows (0: idle)


@dataclass(frozen=True)
class Rule:
    ranks: str  # over the ranks of one iteration: "mean", "sum" or "max"
    window: str  # over the iterations of one report: "mean", "sum" or "max"


MEAN, SUM, MAX = "mean", "sum", "max"
RULES = {
    "loss": Rule(MEAN, MEAN),
    # Identical on every rank (the gradients are summed before it is taken); the window
    # reports its worst update, which is what clipping and divergence are about.
    "grad_norm": Rule(MEAN, MAX),
    "grad_norm_clipped": Rule(MEAN, MAX),  # after --grad-clip: the step actually taken
    "entropy": Rule(MEAN, MEAN),
    "rectified_frac": Rule(MEAN, MEAN),
    # GFT's mechanism (weights.mechanism_metrics): per member kind, and the pull toward
    # the expert in SFT units.
    **{f"rectified_{k}": Rule(MEAN, MEAN) for k in KINDS},
    **{f"adv_{k}": Rule(MEAN, MEAN) for k in KINDS},
    "expert_pull": Rule(MEAN, MEAN),
    "overlong_penalty": Rule(MEAN, MEAN),
    "skipped": Rule(MEAN, SUM),  # every rank skips alike
    "idle_updates": Rule(MEAN, SUM),
    "train_tokens": Rule(SUM, SUM),
    "gen_tokens": Rule(SUM, SUM),
    "zero_var_frac": Rule(MEAN, MEAN),
    "group_size_mean": Rule(MEAN, MEAN),
    "sample_acc": Rule(MEAN, MEAN),
    "truncated_frac": Rule(MEAN, MEAN),
    "missing_teachers": Rule(SUM, MEAN),
    "groups": Rule(SUM, MEAN),  # trained on
    "quiet_row_frac": Rule(MEAN, MEAN),  # rows left out of the update (A = 0)
    # Dynamic sampling: batches of prompts drawn, prompts drawn, groups kept.
    "sampling_rounds": Rule(MEAN, MEAN),
    "prompts_drawn": Rule(SUM, MEAN),
    "groups_kept": Rule(SUM, MEAN),
    "stop": Rule(SUM, MEAN),  # any rank signalled: all stop
    **{f"reward_{k}": Rule(MEAN, MEAN) for k in KINDS},
    # Seconds per phase; the others wait for the slowest rank. Validation, the probe and
    # checkpoints run on rank 0 after the ranks' metrics are combined.
    **{f"{phase}_time": Rule(MAX, SUM) for phase in ("sample", "reward", "update")},
    **{f"{phase}_time": Rule(MAX, SUM) for phase in ("val", "probe", "save", "log")},
}
# The phases of an iteration in the order they run, as the report line shows them (log:
# the group log's forward and writing, with --log-completions).
PHASES = ("sample", "reward", "update", "val", "probe", "save", "log")
TRAINING = ("sample", "reward", "update")  # It/sec counts these, as mlx_lm counts its steps


class Clock:
    """Seconds per phase of training (validation, the KL probe, checkpoints), summed
    until they are taken into an iteration's metrics."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, phase: str, seconds: float) -> float:
        self.seconds[phase] += seconds
        return seconds

    @contextmanager
    def __call__(self, phase: str):
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - tic)

    def take(self) -> dict[str, float]:
        taken = dict(self.seconds)
        self.seconds.clear()
        return taken


def iteration_metrics(updates: list[StepStats]) -> dict:
    """One iteration's step metrics from its updates: the loss averaged over the applied
    ones, the worst gradient norm before and after the clip, token-weighted entropy.
    (Token counts and rectified shares come from the rows: `step.run_updates`.)"""
    n_metric = sum(u.metric_tokens for u in updates)
    applied = [u for u in updates if not u.idle] or updates
    # A skipped update's loss or norm is not finite: it is counted, not averaged in.
    losses = [u.loss for u in applied if math.isfinite(u.loss)]
    norms = [u.grad_norm for u in applied if math.isfinite(u.grad_norm)]
    clipped = [u.clipped_norm for u in applied if not u.skipped and math.isfinite(u.clipped_norm)]
    metrics = {
        "skipped": sum(u.skipped for u in updates),
        "idle_updates": sum(u.idle for u in updates),
    }
    if losses:
        metrics["loss"] = float(np.mean(losses))
    if norms:
        metrics["grad_norm"] = float(max(norms))
    if clipped:
        metrics["grad_norm_clipped"] = float(max(clipped))
    if n_metric:  # an idle update measures nothing: no entropy rather than a false 0
        metrics["entropy"] = sum(u.entropy_sum for u in updates) / n_metric
    return metrics


def summarise(window: list[dict], iteration: int) -> dict:
    """A report window's iterations as one row, plus the rates."""
    # Every report has these, null when nothing in the window measured them (an update
    # skipped, every sample masked): a script reading metrics.jsonl meets null, not NaN.
    always = {"loss", "grad_norm", "grad_norm_clipped", "entropy"}
    keys = ({k for r in window for k in r} | always) - {"iteration"}
    out = {"iteration": iteration}
    for k in sorted(keys):
        values = [r[k] for r in window if measured(r.get(k))]
        rule = RULES[k].window if k in RULES else MEAN
        if not values:  # nothing measured in the window: null, never NaN
            out[k] = None
        elif rule == MAX:
            out[k] = max(values)
        elif rule == SUM:
            out[k] = sum(values)
        else:
            out[k] = float(np.mean(values))
    out["it_per_sec"] = len(window) / max(_training_time(out), 1e-9)
    out["gen_tok_per_sec"] = (out.get("gen_tokens") or 0) / max(out.get("sample_time") or 0, 1e-9)
    out["train_tok_per_sec"] = (out.get("train_tokens") or 0) / max(
        out.get("update_time") or 0, 1e-9
    )
    out["window_iterations"] = len(window)
    return out


def _training_time(r: dict) -> float:
    return sum(r.get(f"{phase}_time") or 0.0 for phase in TRAINING)


def measured(value) -> bool:
    """Whether a metric holds a number: a metric over nothing (no token scored, no update
    applied) is None, and NaN or infinity is treated as not measured too."""
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def jsonable(metrics: dict) -> dict:
    """A metrics row for metrics.jsonl: what was not measured is null (JSON has no NaN)."""
    return {k: (v if measured(v) else None) for k, v in metrics.items()}


def _shown(r: dict, key: str, spec: str) -> str:
    value = r.get(key)
    return format(value, spec) if measured(value) else "-"


def train_info(r: dict) -> dict:
    """A report's numbers under mlx_lm's TrainingCallback keys (its on_train_loss_report)."""
    elapsed = _training_time(r)
    return {
        "iteration": r["iteration"],
        "train_loss": r["loss"],
        "learning_rate": r["learning_rate"],
        "iterations_per_second": r["it_per_sec"],
        # Trained tokens per second of the whole iteration (sampling included), over the
        # same time as It/sec, as mlx_lm divides both by its step time.
        "tokens_per_second": r.get("train_tokens", 0) / max(elapsed, 1e-9),
        "trained_tokens": int(r["trained_tokens"]),
        "peak_memory": r["peak_memory_gb"],
    }


def report_line(r: dict) -> str:
    """The report line: mlx_lm.lora's fields in its order and spelling, so tools that read
    its logs read these, then GFT's."""
    info = train_info(r)
    parts = [
        f"Iter {r['iteration']}: Train loss {_shown(r, 'loss', '.3f')}",
        f"Learning Rate {info['learning_rate']:.3e}",
        f"It/sec {info['iterations_per_second']:.3f}",
        f"Tokens/sec {info['tokens_per_second']:.3f}",
        f"Trained Tokens {info['trained_tokens']}",
        f"Peak mem {info['peak_memory']:.3f} GB",
    ]
    if "reward_sampled" in r:
        parts.append(f"Reward {r['reward_sampled']:.3f}")
    if "sample_acc" in r:
        parts.append(f"Acc {r['sample_acc']:.3f}")
    if "zero_var_frac" in r:
        parts.append(f"Zero-var {r['zero_var_frac']:.2f}")
    parts += [
        f"Entropy {_shown(r, 'entropy', '.3f')}",
        f"Grad norm {_shown(r, 'grad_norm', '.3f')}",
    ]
    if measured(r.get("grad_norm")) and measured(r.get("grad_norm_clipped")):
        if r["grad_norm_clipped"] < r["grad_norm"]:  # the clip acted in this window
            parts.append(f"Clipped to {r['grad_norm_clipped']:.3f}")
    if measured(r.get("kl_to_base")):  # measured at the validation cadence
        parts.append(f"KL {r['kl_to_base']:.4f}")
        if measured(r.get("kl_to_base_per_token")):
            parts.append(f"KL/token {r['kl_to_base_per_token']:.4f}")
    mechanism = [
        ("rectified_expert", "Rectified expert", ".2f"),
        ("adv_expert", "Adv expert", "+.2f"),
        ("adv_sampled", "Adv samples", "+.2f"),
        ("expert_pull", "Expert pull", ".2f"),
        ("overlong_penalty", "Overlong", ".3f"),
    ]
    parts += [f"{name} {r[key]:{spec}}" for key, name, spec in mechanism if measured(r.get(key))]
    if r.get("gen_tokens"):
        parts.append(f"Gen tok/s {r['gen_tok_per_sec']:.1f}")
    parts.append(f"Train tok/s {r['train_tok_per_sec']:.1f}")
    if r.get("quiet_row_frac"):
        parts.append(f"Quiet rows {r['quiet_row_frac']:.2f}")
    if "sampling_rounds" in r:
        parts.append(
            f"Groups {r['groups_kept']:.1f} of {r['prompts_drawn']:.1f} in "
            f"{r['sampling_rounds']:.1f} rounds"
        )
    if r.get("skipped"):
        parts.append(f"Skipped {r['skipped']}")
    if r.get("idle_updates"):
        parts.append(f"Idle updates {r['idle_updates']}")
    n = max(r.get("window_iterations", 1), 1)
    seconds = [f"{p} {r[f'{p}_time'] / n:.2f}" for p in PHASES if f"{p}_time" in r]
    if seconds:
        parts.append("Sec/it " + " ".join(seconds))
    return ", ".join(parts)


def val_line(r: dict, seconds: float) -> str:
    """mlx_lm.lora's `Iter N: Val loss X, Val took Ys`, then GFT's validation numbers."""
    line = f"Iter {r['iteration']}: Val loss {_shown(r, 'val_loss', '.3f')}, "
    line += f"Val took {seconds:.3f}s, Val entropy {_shown(r, 'val_entropy', '.3f')}"
    if "val_acc" in r:
        line += f", Val acc {_shown(r, 'val_acc', '.3f')}"
    return line


# --report-to services (mlx_lm.lora has wandb and swanlab) and the package each needs.
# metrics.jsonl is written whatever report_to says; "jsonl" names it for clarity.
SERVICES = {"wandb": "wandb", "swanlab": "swanlab", "tensorboard": "tensorboardX"}


def report_services(report_to: str | None) -> list[str]:
    """The services `report_to` names, each with its package installed: a missing one
    is an error before the model loads (job.run), not after training starts."""
    names = report_names(report_to)
    for name in names:
        package = SERVICES.get(name)
        if package and not _installed(package):
            raise ConfigError(
                f"report_to {name}: {package} is not installed: pip install {package}"
            )
    return [n for n in names if n in SERVICES]


def _installed(package: str) -> bool:
    # find_spec locates without importing (wandb takes seconds to import); a module put in
    # sys.modules by hand may have no spec, which find_spec refuses.
    if sys.modules.get(package) is not None:
        return True
    return importlib.util.find_spec(package) is not None


class ServiceCallback:
    """One --report-to service as an mlx_lm TrainingCallback: every report's numbers,
    logged at its iteration. The package is imported here, when training starts."""

    def __init__(self, name: str, config: TrainConfig):
        self.name = name
        self._log, self._close = OPENERS[name](config, Path(config.adapter_path))

    def on_train_loss_report(self, info: dict) -> None:
        self._log(info, info["iteration"])

    def on_val_loss_report(self, info: dict) -> None:
        self._log(info, info["iteration"])

    def close(self) -> None:
        self._close()


def _project(config: TrainConfig) -> str:
    return config.project_name or Path.cwd().name


def _wandb(config: TrainConfig, folder: Path):
    import wandb  # as mlx_lm's WandBCallback: run named after the adapter folder

    wandb.init(project=_project(config), name=folder.name, dir=str(folder), config=asdict(config))
    return (lambda values, step: wandb.log(values, step=step)), wandb.finish


def _swanlab(config: TrainConfig, folder: Path):
    import swanlab  # as mlx_lm's SwanLabCallback

    swanlab.init(
        project=_project(config),
        experiment_name=folder.name,
        logdir=str(folder / "swanlog"),
        config=asdict(config),
    )
    return (lambda values, step: swanlab.log(values, step=step)), swanlab.finish


def _tensorboard(config: TrainConfig, folder: Path):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(folder / "tensorboard"))

    def log(values: dict, step: int) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(key, value, step)

    return log, writer.close


OPENERS = {"wandb": _wandb, "swanlab": _swanlab, "tensorboard": _tensorboard}


class Reporter:
    """Report lines to the log, every metric to metrics.jsonl, and the reports to the
    --report-to services and a `training_callback` (mlx_lm's TrainingCallback interface:
    on_train_loss_report / on_val_loss_report). Callbacks get mlx_lm's keys first, then
    every metric of metrics.jsonl under its own name."""

    def __init__(self, config: TrainConfig, log, enabled: bool = True, training_callback=None):
        self.log, self.enabled = log, enabled
        self.file = (Path(config.adapter_path) / "metrics.jsonl").open("a") if enabled else None
        self.services, self.callbacks = [], []
        if enabled:
            self.services = [ServiceCallback(n, config) for n in report_services(config.report_to)]
            user = [training_callback] if training_callback is not None else []
            self.callbacks = [*self.services, *user]

    def train(self, summary: dict) -> None:
        self._emit(summary, report_line(summary), train_info(summary), "on_train_loss_report")

    def val(self, row: dict, seconds: float) -> None:
        info = {"iteration": row["iteration"], "val_loss": row["val_loss"], "val_time": seconds}
        self._emit({**row, "val_time": seconds}, val_line(row, seconds), info, "on_val_loss_report")

    def _emit(self, metrics: dict, line: str, info: dict, hook: str) -> None:
        if not self.enabled:
            return
        self.log(line)
        self.file.write(json.dumps(jsonable(metrics), allow_nan=False) + "\n")
        self.file.flush()
        # Services and callbacks get what was measured; a metric over nothing is left out.
        values = {**info, **{k: v for k, v in metrics.items() if k not in info}}
        values = {k: v for k, v in values.items() if measured(v)}
        for callback in self.callbacks:
            getattr(callback, hook)(dict(values))

    def close(self) -> None:
        if self.file:
            self.file.close()
        for service in self.services:
            service.close()
