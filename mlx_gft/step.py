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

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from . import distributed
from .config import TrainConfig
from .logprobs import (
    prompt_spans,
    shared_prompt_logprobs,
    split_head,
    token_logprobs,
    why_prompts_cannot_be_shared,
)
from .methods import method
from .metrics import StepStats, iteration_metrics
from .models import checkpoint_layers


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); the last checkpoint is intact."""


def make_loss(config: TrainConfig):
    """loss(model, start, tokens, mask, advantages, old_lp, base_lp, spans=None)
    -> (loss, [response tokens, metric tokens, entropy sum, rectified tokens]).
    With `spans` (`logprobs.prompt_spans`) each span's prompt runs once for its rows."""
    m = method(config)
    temperature = config.temperature if m.tempered else 1.0
    norm = config.max_completion_length  # seq-mean-token-sum-norm's constant divisor
    # The entropy metric of sampled methods comes from the sampler's softmax; SFT/DFT
    # have no samples, so their update measures it on the expert answers.
    with_entropy = not m.samples

    def loss_fn(model, start, tokens, mask, advantages, old_lp, base_lp, spans=None):
        if spans is None:
            lp, entropy = token_logprobs(model, tokens, temperature, with_entropy, start=start)
        else:
            lp, entropy = shared_prompt_logprobs(
                model, tokens, spans, temperature, with_entropy, start=start
            )
            # Outside the responses the shared pass leaves 0: give every input the same
            # 0 there, so a ratio or KL of masked positions stays finite.
            scored = mask > 0
            old_lp, base_lp = mx.where(scored, old_lp, 0.0), mx.where(scored, base_lp, 0.0)
            if with_entropy:
                entropy = mx.where(scored, entropy, 0.0)
        loss = m.loss(lp, mask, advantages, old_lp, base_lp, config, norm)
        stat_mask = mask if with_entropy else mx.zeros_like(mask)
        entropy_sum = (entropy * mask).sum() if with_entropy else mx.array(0.0)
        p = mx.exp(mx.stop_gradient(lp))
        stats = mx.stack(
            [mask.sum(), stat_mask.sum(), entropy_sum, ((p <= config.tau) * mask).sum()]
        )
        return loss, stats

    return loss_fn


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
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        config: TrainConfig,
        ranks=None,
        log=print,
    ):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.ranks = ranks  # an mx.distributed group: gradients are summed over its ranks
        if config.grad_checkpoint:
            checkpoint_layers(model)
        state = [model.state, mx.random.state]
        loss = make_loss(config)
        # The model is captured, not passed: compile would see it as a plain dict of arrays.
        self.value_and_grad = mx.compile(
            nn.value_and_grad(model, lambda *batch: loss(model, *batch)),
            inputs=state,
            outputs=state,
        )
        # Shared prompts: the spans' structure varies batch to batch, so this one runs
        # eagerly (its cost is in big matmuls; compiling mostly saves small ops).
        self.shared_value_and_grad = nn.value_and_grad(
            model, lambda spans, *batch: loss(model, *batch, spans=spans)
        )
        self.shared = config.shared_prompt and method(config).samples
        reason = why_prompts_cannot_be_shared(model) if self.shared else None
        if split_head(model) is None:
            self.shared = False
            log(
                f"Note: {getattr(model, 'model_type', type(model).__name__)} is not among the "
                "architectures whose LM head runs apart from the layers (logprobs.AFTER_HEAD): "
                "the update takes logits at every position, prompt included, in one piece, "
                "and every answer runs its own prompt."
            )
        elif reason:
            self.shared = False
            log(f"Note: every answer runs its own prompt in the update: {reason}.")
        self.skipped = 0

    def _value_and_grad(self, start: int, batch: tuple):
        spans = None
        if self.shared:
            tokens, mask = batch[0], batch[1]
            spans = prompt_spans(tokens, mask, start)
            if len(spans) == tokens.shape[0]:  # no prompt has two rows here: no saving
                spans = None
        if spans is None:
            return self.value_and_grad(start, *batch)
        return self.shared_value_and_grad(spans, start, *batch)

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
        if not method(self.config).samples or self.config.kl_coef:
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
            (loss, s), g = self._value_and_grad(start, batch)
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
    return iteration_metrics(updates)
