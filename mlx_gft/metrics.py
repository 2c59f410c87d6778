"""Training metrics: how each one combines, and where the reports go.

A metric is measured per optimizer update (`StepStats`, summed over its micro-batches),
combined into one row per iteration (`iteration_metrics`), over ranks
(`distributed.reduce_metrics`, by `RULES`) and over a report window (`summarise`, by
`RULES`), then written as a report line, a metrics.jsonl row and optionally to Weights &
Biases (`Reporter`).
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import TrainConfig
from .groups import KINDS


@dataclass
class StepStats:
    """What one optimizer update measured (sums over its micro-batches and ranks)."""

    loss: float
    grad_norm: float
    response_tokens: float  # tokens the loss saw
    metric_tokens: float  # tokens the entropy metric is taken on
    entropy_sum: float
    rectified_tokens: float  # tokens with p <= tau
    skipped: int = 0  # 1 when a non-finite loss or gradient was not applied
    idle: int = 0  # 1 when no advantage was non-zero: nothing to learn, nothing applied


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
    "entropy": Rule(MEAN, MEAN),
    "rectified_frac": Rule(MEAN, MEAN),
    "skipped": Rule(MEAN, SUM),  # every rank skips alike
    "idle_updates": Rule(MEAN, SUM),
    "train_tokens": Rule(SUM, SUM),
    "gen_tokens": Rule(SUM, SUM),
    "zero_var_frac": Rule(MEAN, MEAN),
    "group_size_mean": Rule(MEAN, MEAN),
    "sample_acc": Rule(MEAN, MEAN),
    "truncated_frac": Rule(MEAN, MEAN),
    "missing_teachers": Rule(SUM, MEAN),
    "groups": Rule(SUM, MEAN),
    "stop": Rule(SUM, MEAN),  # any rank signalled: all stop
    **{f"reward_{k}": Rule(MEAN, MEAN) for k in KINDS},
    # The others wait for the slowest rank.
    "sample_time": Rule(MAX, SUM),
    "train_time": Rule(MAX, SUM),
}


def iteration_metrics(updates: list[StepStats]) -> dict:
    """One iteration's step metrics from its updates: the loss averaged over the applied
    ones, the worst gradient norm, token-weighted entropy and rectified fraction."""
    n_tok = sum(u.response_tokens for u in updates)
    n_metric = sum(u.metric_tokens for u in updates)
    applied = [u for u in updates if not u.idle] or updates
    metrics = {
        "loss": float(np.mean([u.loss for u in applied])),
        "grad_norm": float(max(u.grad_norm for u in applied)),
        "skipped": sum(u.skipped for u in updates),
        "idle_updates": sum(u.idle for u in updates),
        "train_tokens": int(n_tok),
    }
    if n_metric:  # an idle update measures nothing: no entropy rather than a false 0
        metrics["entropy"] = sum(u.entropy_sum for u in updates) / n_metric
    if n_tok:
        metrics["rectified_frac"] = sum(u.rectified_tokens for u in updates) / n_tok
    return metrics


def summarise(window: list[dict], iteration: int) -> dict:
    """A report window's iterations as one row, plus the rates."""
    keys = {k for r in window for k in r} - {"iteration"}
    out = {"iteration": iteration}
    for k in sorted(keys):
        values = [r[k] for r in window if k in r]
        rule = RULES[k].window if k in RULES else MEAN
        if rule == MAX:
            out[k] = max(values)
        elif rule == SUM:
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


class Reporter:
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
