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
from .config import TrainConfig
from .logprobs import (
    prompt_spans,
    shared_prompt_logprobs,
    split_head,
    token_logprobs,
    why_prompts_cannot_be_shared,
)
from .methods import method, skips_zero_advantage
from .metrics import StepStats, iteration_metrics
from .models import checkpoint_layers
from .weights import coefficients, contributing_rows, mechanism_metrics, token_weights


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps); the last checkpoint is intact."""


def make_loss(config: TrainConfig):
    """loss(model, start, tokens, mask, advantages, old_lp, base_lp, spans=None)
    -> (loss, (stats, log_probs)): stats = [response tokens, metric tokens, entropy sum],
    log_probs (rows, T) the ones the loss used (reports and the group log read them).
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
        stats = mx.stack([mask.sum(), stat_mask.sum(), entropy_sum])
        return loss, (stats, mx.stop_gradient(lp))

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


@dataclass
class UpdatePlan:
    """One optimizer update's rows: all of them (the loss's normaliser counts every one)
    and, in micro-batches, those that run forward and backward."""

    rows: list[int]
    micro_batches: list[list[int]]


def plan_updates(
    sizes: list[int], width: int, config: TrainConfig, run: np.ndarray | None = None
) -> list[UpdatePlan]:
    """Member rows (groups of `sizes` rows, in order) -> updates_per_batch updates.

    Updates split along group boundaries (a group's members update the same weights);
    `grad_accumulation_steps` splits each update into at least that many parts along
    group boundaries too; then the rows of a part that run (`run`, default all) are cut
    into micro-batches of at most `micro_batch_rows`."""
    starts = np.cumsum([0] + list(sizes))
    group_rows = [list(range(starts[g], starts[g + 1])) for g in range(len(sizes))]
    per_micro = micro_batch_rows(config, width)
    plan = []
    for update in np.array_split(np.arange(len(group_rows)), config.updates_per_batch):
        every, micro = [], []
        for part in np.array_split(update, config.grad_accumulation_steps):
            rows = [r for g in part for r in group_rows[g]]
            every += rows
            rows = [r for r in rows if run is None or run[r]]
            micro += [rows[i : i + per_micro] for i in range(0, len(rows), per_micro)]
        plan.append(UpdatePlan(every, micro))  # with no rows too: every rank updates alike
    return plan


def rows_to_run(config: TrainConfig, mask: mx.array, advantages: mx.array) -> np.ndarray:
    """Which rows the update runs. Where the loss is a multiple of each row's advantage
    (`methods.skips_zero_advantage`), a row with A = 0, or with no scored token,
    contributes exactly nothing: it gets no forward and no backward. Every row still
    counts in the loss's normaliser (`normaliser`), so the update is the same."""
    if not (config.skip_zero_advantage and skips_zero_advantage(config)):
        return np.ones(mask.shape[0], dtype=bool)
    return contributing_rows(np.array(mask), np.array(advantages))


def normaliser(config: TrainConfig, mask: mx.array) -> mx.array:
    """The loss's divisor over these rows: their scored tokens under token-mean (as the
    reference), their number under the seq-mean modes."""
    if config.loss_agg == "token-mean":
        return mask.sum()
    return mx.array(float(mask.shape[0]))


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

    def _has_signal(self, micro_batches: list[tuple]) -> bool:
        """False when no row of the update (on any rank) has a gradient: no row at all,
        or, where the loss is advantage-weighted, every row's advantage zero (all groups
        zero-variance). The gradient is then zero, but AdamW's momentum and weight decay
        would still move the weights. GRPO's KL term and SFT/DFT (advantage 1) have a
        gradient on every row."""
        if skips_zero_advantage(self.config):
            rows = [(mx.abs(a) * (m.sum(axis=1) > 0)).sum() for _, m, a, *_ in micro_batches]
            signal = sum(rows, mx.array(0.0)).item()
        else:
            signal = float(sum(batch[0].shape[0] for batch in micro_batches))
        # NaN is not "no signal": the update skips it as non-finite.
        return distributed.all_ranks_sum(signal, self.ranks) != 0

    def _skip(self) -> None:
        # The schedule counts updates, applied or not, so it stays in step with iterations.
        self.optimizer.state["step"] = self.optimizer.step + 1

    def update(
        self, micro_batches: list[tuple], start: int = 0, divisor: mx.array | None = None
    ) -> StepStats:
        """One optimizer update from micro-batches (and, distributed, from every rank's
        micro-batches); `start` is the first scored target position (`response_start`).
        `divisor`: the loss's normaliser over every row of the update, those left out of
        the micro-batches included (default: over the micro-batches' rows).
        Each micro-batch's gradient is evaluated before the next is built."""
        if not self._has_signal(micro_batches):
            self._skip()
            return StepStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, idle=1)
        self.model.train()  # LoRA dropout on, for the update only
        grads, total, stats, logps = None, mx.zeros((2,)), mx.zeros((3,)), []
        for batch in micro_batches:
            tokens, mask, adv, old_lp, base_lp = batch
            width, n = trim_padding(tokens, mask, start)
            batch = (tokens[:, :width], mask[:, :n], adv, old_lp[:, :n], base_lp[:, :n])
            (loss, (s, lp)), g = self._value_and_grad(start, batch)
            # The loss is a mean over this micro-batch: weighted by its normaliser and
            # summed, then divided by the whole update's, it is one big batch's.
            w = normaliser(self.config, batch[1])
            g = tree_map(lambda x, w=w: x * w, g)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            total = total + mx.stack([loss * w, w])
            stats = stats + s
            mx.eval(grads, total, stats, lp)
            logps.append(lp)
        if grads is None:  # another rank has rows to run, this one has none
            grads = tree_map(mx.zeros_like, self.model.trainable_parameters())
        if divisor is not None:
            total = mx.stack([total[0], divisor])
        if self.ranks is not None and self.ranks.size() > 1:
            grads = distributed.sum_gradients(grads, self.ranks)
            total = mx.distributed.all_sum(total, group=self.ranks, stream=mx.cpu)
        denominator = mx.maximum(total[1], 1e-12)
        grads = tree_map(lambda g: g / denominator, grads)
        loss = total[0] / denominator
        norm = grad_norm(grads)
        mx.eval(loss, norm, grads)
        n_tok, n_stat, ent = stats.tolist()
        out = StepStats(loss.item(), norm.item(), norm.item(), n_tok, n_stat, ent, logps=logps)
        out.divisor = float(denominator.item())  # every rank's rows: the weights' scale
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
            out.clipped_norm = self.config.grad_clip
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.parameters(), self.optimizer.state)
        return out


@dataclass
class Updated:
    """One iteration's updates: their metrics and, per member row and scored column,
    the log-probs the update used (NaN where the row did not run), the method's
    coefficient and each token's weight in its update's loss (`weights`)."""

    metrics: dict
    logps: np.ndarray | None = None
    coef: np.ndarray | None = None
    weights: np.ndarray | None = None


def run_updates(
    stepper: Stepper,
    sizes: list[int],
    start: int,
    arrays: tuple | None,
    config,
    kinds: list[str] | None = None,
) -> Updated:
    """updates_per_batch optimizer updates over one sampled batch (`arrays` None: no
    member to train on, as when every answer was left out), each from its micro-batches
    of the rows that run (`rows_to_run`); returns the iteration's step metrics and what
    each token contributed. `kinds`: each member's kind, for the metrics of GFT's
    mechanism (`weights.mechanism_metrics`).

    Token counts and rectified shares count every row of each update, whether or not
    it ran: leaving quiet rows out changes the time and `quiet_row_frac`, nothing else."""
    if arrays is None:
        run, plans = np.zeros(0, dtype=bool), [UpdatePlan([], [])] * config.updates_per_batch
    else:
        run = rows_to_run(config, arrays[1], arrays[2])
        plans = plan_updates(sizes, int(arrays[0].shape[1]), config, run)
    updates = []
    logps = None if arrays is None else np.full(arrays[1].shape, np.nan)
    for plan in plans:
        micro = [tuple(a[mx.array(rows)] for a in arrays) for rows in plan.micro_batches]
        divisor = normaliser(config, arrays[1][mx.array(plan.rows)]) if plan.rows else None
        stats = stepper.update(micro, start, divisor)
        for rows, lp in zip(plan.micro_batches, stats.logps, strict=False):
            logps[rows, : lp.shape[1]] = np.array(lp)
        updates.append(stats)
    out = Updated({**iteration_metrics(updates), "train_tokens": 0})  # (no rows: none)
    if arrays is not None:
        _add_row_metrics(out, plans, updates, arrays, logps, config, kinds)
    if run.size:
        out.metrics["quiet_row_frac"] = float(1.0 - run.mean())
    return out


def _add_row_metrics(
    out: Updated,
    plans: list[UpdatePlan],
    updates: list[StepStats],
    arrays: tuple,
    logps: np.ndarray,
    config,
    kinds,
) -> None:
    """Trained tokens, the rectified share, each token's coefficient and weight and, for
    sampled methods, GFT's mechanism metrics, over every row of each update (those left
    out as quiet included). Distributed, the mechanism metrics are this rank's rows' (the
    report averages the ranks'), and the weights are scaled to the whole update's
    normaliser, every rank's rows, as the loss scales them."""
    mask, adv = np.array(arrays[1]), np.array(arrays[2])
    used = contributing_rows(mask, adv, skips_zero_advantage(config))[:, None] * mask
    ran = np.nan_to_num(logps, nan=0.0, posinf=0.0)  # rows that did not run: masked below
    coef = np.where(used > 0, coefficients(ran, config.loss, config.tau), 0.0)
    rect = (np.exp(ran) <= config.tau) * (used > 0)
    weights = np.zeros(mask.shape)
    norm = config.max_completion_length
    per_update = []
    for plan, stats in zip(plans, updates, strict=True):
        rows = plan.rows
        if not rows:
            continue
        weights[rows] = token_weights(coef[rows], mask[rows], adv[rows], config.loss_agg, norm)
        if kinds is not None and method(config).samples:
            per_update.append(
                mechanism_metrics(
                    [kinds[r] for r in rows], adv[rows], mask[rows], weights[rows], rect[rows],
                    config.loss_agg, norm,
                )
            )  # fmt: skip
        local = float(normaliser(config, arrays[1][mx.array(rows)]).item())
        if stats.divisor and stats.divisor != local:  # other ranks' rows count too
            weights[rows] *= local / stats.divisor
    metrics = out.metrics
    metrics["train_tokens"] = int(mask[[r for p in plans for r in p.rows]].sum())
    if used.sum():
        metrics["rectified_frac"] = float(rect.sum() / used.sum())
    for key in {k for m in per_update for k in m}:
        metrics[key] = float(np.mean([m[key] for m in per_update if key in m]))
    out.logps, out.coef, out.weights = logps, coef, weights
