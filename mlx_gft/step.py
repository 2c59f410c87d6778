"""The training step: the loss closure, value-and-grad, accumulation over micro-batches,
clipping and the optimizer update. `Stepper.update` is the one place weights change.

Memory: a GFT update trains K+1 (or more) rows per prompt, several times the rows of an
SFT batch. The rows are cut into micro-batches of at most `micro_batch_size` rows and
`micro_batch_tokens` padded tokens, and each micro-batch's gradient is evaluated before
the next one is built, so peak memory is one micro-batch's, whatever the group size.
The advantages are known before the update, so the weighted sum over micro-batches is
the full batch's gradient exactly.
"""

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from . import distributed
from .config import SAMPLED_LOSSES, TrainConfig
from .logprobs import token_logprobs
from .losses import dft_loss, gft_loss, grpo_loss, sft_loss


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); the last checkpoint is intact."""


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


def make_loss(config: TrainConfig):
    """loss(model, start, tokens, mask, advantages, old_lp, base_lp)
    -> (loss, [response tokens, metric tokens, entropy sum, rectified tokens])."""
    temperature = config.temperature if config.loss == "grpo" else 1.0
    # One update per sampled batch: the sampling policy is the current one, so the PPO
    # ratio is exactly 1 in value; sg(current log p) gives it without a second forward.
    ratio_from_current = config.updates_per_batch == 1
    norm = config.max_completion_length  # seq-mean-token-sum-norm's constant divisor

    # The entropy metric of sampled losses comes from the sampler's softmax; SFT/DFT have
    # no samples, so their update measures it on the expert answers.
    with_entropy = config.loss not in SAMPLED_LOSSES

    def loss_fn(model, start, tokens, mask, advantages, old_lp, base_lp):
        lp, entropy = token_logprobs(model, tokens, temperature, with_entropy, start=start)
        if config.loss == "gft":
            loss = gft_loss(lp, mask, advantages, config.tau, config.loss_agg, norm)
        elif config.loss == "sft":
            loss = sft_loss(lp, mask, config.loss_agg, norm)
        elif config.loss == "dft":
            loss = dft_loss(lp, mask, config.loss_agg, norm)
        else:
            loss = grpo_loss(
                lp,
                mx.stop_gradient(lp) if ratio_from_current else old_lp,
                mask,
                advantages,
                config.clip_eps,
                base_log_probs=base_lp,
                kl_coef=config.kl_coef,
                agg=config.loss_agg,
                norm=norm,
            )
        stat_mask = mask if with_entropy else mx.zeros_like(mask)
        entropy_sum = (entropy * mask).sum() if with_entropy else mx.array(0.0)
        p = mx.exp(mx.stop_gradient(lp))
        stats = mx.stack(
            [mask.sum(), stat_mask.sum(), entropy_sum, ((p <= config.tau) * mask).sum()]
        )
        return loss, stats

    return loss_fn


def grad_norm(grads) -> mx.array:
    return mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for _, g in tree_flatten(grads)))


def micro_batch_rows(config: TrainConfig, width: int) -> int:
    """Rows per micro-batch for a batch padded to `width` tokens.

    Default: `batch_size` rows, the rows mlx_lm.lora trains at once at the same batch
    size, so a GFT update costs about the memory of the SFT step users already run.
    `micro_batch_tokens` caps rows x width as well."""
    rows = config.micro_batch_size or config.batch_size
    if config.micro_batch_tokens:
        rows = min(rows, config.micro_batch_tokens // max(width, 1))
    return max(rows, 1)


def plan_updates(sizes: list[int], width: int, config: TrainConfig) -> list[list[list[int]]]:
    """Member rows (groups of `sizes` rows, in order) -> updates_per_batch updates, each a
    list of micro-batches of row indices.

    Updates split along group boundaries (a group's members update the same weights);
    `grad_accumulation_steps` splits each update into at least that many parts along
    group boundaries too; then parts longer than `micro_batch_rows` are cut further."""
    starts = np.cumsum([0] + list(sizes))
    group_rows = [list(range(starts[g], starts[g + 1])) for g in range(len(sizes))]
    per_micro = micro_batch_rows(config, width)
    plan = []
    for update in np.array_split(np.arange(len(group_rows)), config.updates_per_batch):
        micro = []
        for part in np.array_split(update, config.grad_accumulation_steps):
            rows = [r for g in part for r in group_rows[g]]
            micro += [rows[i : i + per_micro] for i in range(0, len(rows), per_micro)]
        if micro:
            plan.append(micro)
    return plan


def trim_padding(tokens: mx.array, mask: mx.array, start: int, multiple: int = 32):
    """Drop the columns past a micro-batch's longest row (kept to a multiple of 32, so the
    compiled step sees few shapes). Causal attention: earlier positions are unchanged."""
    scored = np.flatnonzero(np.array(mask.sum(axis=0)) > 0)
    last = start + (int(scored[-1]) + 1 if scored.size else 1)  # targets up to here
    width = min(-(-last // multiple) * multiple, tokens.shape[1] - 1)
    return width + 1, width - start


class Stepper:
    """Compiled loss-and-gradient, plus the eager accumulate / clip / skip / update."""

    def __init__(
        self, model: nn.Module, optimizer: optim.Optimizer, config: TrainConfig, ranks=None
    ):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.ranks = ranks  # an mx.distributed group: gradients are summed over its ranks
        if config.grad_checkpoint:
            from mlx_lm.tuner.trainer import grad_checkpoint

            grad_checkpoint(model.layers[0])
        state = [model.state, mx.random.state]
        loss = make_loss(config)
        # The model is captured, not passed: compile would see it as a plain dict of arrays.
        self.value_and_grad = mx.compile(
            nn.value_and_grad(model, lambda *batch: loss(model, *batch)),
            inputs=state,
            outputs=state,
        )
        self.skipped = 0

    def _weight(self, batch: tuple, stats: mx.array) -> mx.array:
        """The loss's divisor for this micro-batch: weighting each micro-batch's gradient by
        it makes accumulation over micro-batches and ranks equal one big batch."""
        if self.config.loss_agg == "token-mean":
            return stats[0]  # its response tokens
        return mx.array(float(batch[0].shape[0]))  # the seq-mean modes: its sequences

    def _has_signal(self, micro_batches: list[tuple]) -> bool:
        """False when every trained row's advantage is zero (all groups zero-variance):
        the gradient is zero, but AdamW's momentum and weight decay would still move
        the weights. GRPO's KL term and SFT/DFT (advantage 1) always have a gradient."""
        if self.config.loss not in SAMPLED_LOSSES or self.config.kl_coef:
            return True
        signal = sum(
            (mx.abs(adv) * (mask.sum(axis=1) > 0)).sum() for _, mask, adv, *_ in micro_batches
        )
        if self.ranks is not None and self.ranks.size() > 1:  # every rank decides alike
            signal = mx.distributed.all_sum(signal, group=self.ranks, stream=mx.cpu)
        return signal.item() != 0  # NaN is not "no signal": the update skips it as non-finite

    def _skip(self) -> None:
        # The schedule counts updates, applied or not, so it stays in step with iterations.
        self.optimizer.state["step"] = self.optimizer.step + 1

    def idle_iteration(self) -> dict:
        """An iteration with no row to train on: its updates are skipped and counted."""
        for _ in range(self.config.updates_per_batch):
            self._skip()
        return {
            "loss": 0.0,
            "grad_norm": 0.0,
            "skipped": 0,
            "train_tokens": 0,
            "idle_updates": self.config.updates_per_batch,
        }

    def update(self, micro_batches: list[tuple], start: int = 0) -> StepStats:
        """One optimizer update from micro-batches (and, distributed, from every rank's
        micro-batches); `start` is the first scored target position (`response_start`).
        Each micro-batch's gradient is evaluated before the next is built."""
        if not self._has_signal(micro_batches):
            self._skip()
            return StepStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, idle=1)
        self.model.train()  # LoRA dropout on, for the update only
        grads, total, stats = None, mx.zeros((2,)), mx.zeros((4,))
        for batch in micro_batches:
            tokens, mask, adv, old_lp, base_lp = batch
            width, n = trim_padding(tokens, mask, start)
            batch = (tokens[:, :width], mask[:, :n], adv, old_lp[:, :n], base_lp[:, :n])
            (loss, s), g = self.value_and_grad(start, *batch)
            w = self._weight(batch, s)
            g = tree_map(lambda x, w=w: x * w, g)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            total = total + mx.stack([loss * w, w])
            stats = stats + s
            mx.eval(grads, total, stats)
        if self.ranks is not None and self.ranks.size() > 1:
            grads = distributed.sum_gradients(grads, self.ranks)
            total = mx.distributed.all_sum(total, group=self.ranks, stream=mx.cpu)
        denominator = mx.maximum(total[1], 1e-12)
        grads = tree_map(lambda g: g / denominator, grads)
        loss = total[0] / denominator
        norm = grad_norm(grads)
        mx.eval(loss, norm, grads)
        n_tok, n_stat, ent, rect = stats.tolist()
        out = StepStats(loss.item(), norm.item(), n_tok, n_stat, ent, rect)
        if not (math.isfinite(out.loss) and math.isfinite(out.grad_norm)):
            self.skipped += 1
            out.skipped = 1
            self._skip()
            if self.skipped >= self.config.max_skipped_steps:
                raise TrainingStopped(
                    f"{self.skipped} consecutive steps had a non-finite loss or gradient; "
                    "stopping. Lower the learning rate or check the data; the last "
                    "checkpoint is intact."
                )
            return out
        self.skipped = 0
        if self.config.grad_clip > 0 and out.grad_norm > self.config.grad_clip:
            grads = tree_map(lambda g: g * (self.config.grad_clip / out.grad_norm), grads)
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.parameters(), self.optimizer.state)
        return out


def run_updates(stepper: Stepper, sizes: list[int], start: int, arrays: tuple, config) -> dict:
    """updates_per_batch optimizer updates over one sampled batch, each from its
    micro-batches; returns the iteration's step metrics."""
    updates = []
    for plan in plan_updates(sizes, int(arrays[0].shape[1]), config):
        micro = [tuple(a[mx.array(rows)] for a in arrays) for rows in plan]
        updates.append(stepper.update(micro, start))
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
