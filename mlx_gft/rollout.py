"""One iteration's training batch: sample K answers per prompt, build the groups
(expert + teachers + samples), score every member, z-score the rewards inside each
group (`score_groups`), draw more prompts while groups are quiet (`gather_groups`,
dynamic sampling), and lay the members out as the arrays the step trains on
(`with_arrays`). SFT and DFT skip the sampling and train on the expert answers."""

import time
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from . import distributed
from . import rewards as rewards_lib
from .advantages import quiet_groups, scored_advantages
from .config import TrainConfig
from .data import Example
from .groups import KINDS, Groups, build_groups, pad_batch, response_start, reward_inputs
from .logprobs import token_logprobs
from .methods import method
from .models import adapters_disabled, eval_mode
from .reward_batches import TrainerState
from .sampling import sample_groups
from .step import micro_batch_rows


@dataclass
class TrainBatch:
    """The members of one iteration's groups, ready for `step.run_updates`."""

    groups: Groups
    advantages: mx.array  # per member
    quiet: np.ndarray | None = None  # per group: rewards all equal, so every A is 0
    rewards: np.ndarray | None = None  # per member: the weighted sum the advantages z-score
    reward_columns: dict = field(default_factory=dict)  # per reward: its column of scores
    start: int = 0  # first scored target position (the prompt before it needs no logits)
    tokens: mx.array | None = None  # (members, width) prompt + response, right-padded
    mask: mx.array | None = None  # (members, width - 1 - start) scored target tokens
    old_lp: mx.array | None = None  # GRPO's old-policy log-probs (zeros otherwise)
    base_lp: mx.array | None = None  # GRPO's base-policy log-probs (zeros otherwise)
    metrics: dict = field(default_factory=dict)  # sampling and reward metrics

    @property
    def empty(self) -> bool:
        """Every answer of the batch was left out: nothing to train on."""
        return not self.groups.members

    def arrays(self) -> tuple:
        """Per-member arrays in the order the loss takes them."""
        return (self.tokens, self.mask, self.advantages, self.old_lp, self.base_lp)

    def select(self, groups) -> "TrainBatch":
        """These groups alone, with their advantages (before the arrays are built)."""
        rows = self.groups.member_rows(groups)
        advantages = self.advantages[mx.array(rows, dtype=mx.int32)] if rows else mx.zeros((0,))
        quiet = None if self.quiet is None else self.quiet[list(groups)]
        rewards = None if self.rewards is None else self.rewards[rows]
        columns = {name: column[rows] for name, column in self.reward_columns.items()}
        return TrainBatch(self.groups.select(groups), advantages, quiet, rewards, columns)

    @property
    def kinds(self) -> list[str]:
        return [member.kind for member in self.groups.members]


def with_arrays(model, tokenizer, batch: TrainBatch, config: TrainConfig) -> TrainBatch:
    """`batch` with the arrays the step trains on (nothing to build for an empty one)."""
    if not batch.empty:
        batch.start, arrays = training_arrays(
            model, tokenizer, batch.groups, batch.advantages, config
        )
        batch.tokens, batch.mask, _, batch.old_lp, batch.base_lp = arrays
    return batch


def gather_groups(
    model,
    tokenizer,
    draw,
    config: TrainConfig,
    reward_fns,
    trainer_state: TrainerState | None = None,
    ranks=None,
) -> TrainBatch:
    """One iteration's scored groups (no arrays yet). `draw()` -> (seed, examples): the
    next batch of prompts in the data order that this iteration has not drawn yet, and
    its sampling seed; None once the iteration has drawn every batch of the data.

    One batch; or, with `dynamic_sampling` (DAPO's dynamic sampling) and a method that
    samples, batches drawn in turn, each sampled in one go, keeping the groups whose
    rewards differ, until there are as many as one batch has prompts (on every rank),
    `max_sampling_rounds` batches were drawn or no batch is left to draw; the first ones
    kept are trained on. A quiet group has A = 0 everywhere: it would cost a full update
    and teach nothing."""

    def next_batch() -> TrainBatch | None:
        drawn = draw()
        if drawn is None:
            return None
        seed, examples = drawn
        return score_groups(model, tokenizer, examples, config, reward_fns, seed, trainer_state)

    batch = next_batch()
    if not (config.dynamic_sampling and method(config).samples):
        return batch
    rounds, wanted = [batch], len(batch.groups.sizes)
    kept = [batch.select(np.flatnonzero(~batch.quiet))]
    while True:
        have = sum(len(k.groups.sizes) for k in kept)
        # Every rank draws alike: stop when every rank has its share, or at the bound.
        short = distributed.all_ranks_sum(max(wanted - have, 0), ranks)
        if not short or len(rounds) >= config.max_sampling_rounds:
            break
        batch = next_batch()
        if batch is None:  # every batch drawn (the ranks share the data order: on all)
            break
        rounds.append(batch)
        kept.append(batch.select(np.flatnonzero(~batch.quiet)))
    groups = Groups.concat([k.groups for k in kept])
    advantages = mx.concatenate([k.advantages for k in kept])
    quiet = np.concatenate([k.quiet for k in kept])
    rewards = np.concatenate([k.rewards for k in kept])
    columns = {name: np.concatenate([k.reward_columns[name] for k in kept]) for name in
               rounds[0].reward_columns}  # fmt: skip
    out = TrainBatch(groups, advantages, quiet, rewards, columns)
    out = out.select(range(min(have, wanted)))
    out.metrics = combine_rounds([r.metrics for r in rounds])
    out.metrics.update(
        sampling_rounds=len(rounds),
        prompts_drawn=sum(len(r.groups.sizes) for r in rounds),
        groups_kept=len(out.groups.sizes),
    )
    return out


# Metrics of a round that add up over the rounds of an iteration; the others average.
SUMMED = ("sample_time", "reward_time", "gen_tokens", "missing_teachers")


def combine_rounds(rows: list[dict]) -> dict:
    """An iteration's rollout metrics from its sampling rounds (each one batch of
    prompts): times, tokens and counts add up, shares and means average over rounds."""
    keys = {k for r in rows for k in r}
    out = {}
    for k in keys:
        values = [r[k] for r in rows if k in r]
        out[k] = sum(values) if k in SUMMED else float(np.mean(values))
    return out


def score_groups(
    model,
    tokenizer,
    examples: list[Example],
    config: TrainConfig,
    reward_fns,
    seed: int,
    trainer_state: TrainerState | None = None,
) -> TrainBatch:
    """The groups and their advantages (no arrays yet), with the rollout's metrics."""
    m = method(config)
    if not m.samples:
        groups = build_groups(examples, [], 0, teacher_count=1, keep_truncated_expert=True)
        return TrainBatch(groups, mx.ones((len(groups.members),)))
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
    groups = build_groups(
        examples, samples, config.group_size, config.teacher_count, m.expert_in_group
    )
    tic = time.perf_counter()
    total, columns = rewards_lib.score(
        reward_fns, reward_inputs(groups), config.reward_timeout, trainer_state
    )
    row["reward_time"] = time.perf_counter() - tic
    if config.overlong_buffer:
        lengths = [len(member.response) for member in groups.members]
        penalty = rewards_lib.overlong_punishment(
            lengths, config.max_completion_length, config.overlong_buffer, config.overlong_penalty
        )
        total = total + penalty  # an unscored sample (NaN) stays unscored
        columns = {**columns, "overlong_penalty": penalty}
        sampled = [member.kind == "sampled" for member in groups.members]
        row["overlong_penalty"] = float(penalty[sampled].mean()) if any(sampled) else 0.0
    # A sample no reward scored (NaN, TRL's None) is left out of its group's statistics.
    adv, row["zero_var_frac"] = scored_advantages(total, groups.sizes, config.adv_scale)
    quiet = quiet_groups(total, groups.sizes)
    kinds = np.array([member.kind for member in groups.members])
    row["group_size_mean"] = float(np.mean(groups.sizes))
    for kind in KINDS:
        scored = (kinds == kind) & ~np.isnan(total)
        if scored.any():
            row[f"reward_{kind}"] = float(total[scored].mean())
    verifier = rewards_lib.verifier_name(r.name for r in reward_fns)
    if verifier:
        row["sample_acc"] = float(columns[verifier][kinds == "sampled"].mean())
    row["truncated_frac"] = float(np.mean([s.finish_reason == "length" for s in samples]))
    # The policy's entropy on the sampled tokens the loss trains on, from the sampler.
    trained = [s for s in samples if not (config.mask_truncated and s.finish_reason == "length")]
    if any(s.entropy for s in trained):
        row["entropy"] = float(np.mean([h for s in trained for h in s.entropy]))
    row["missing_teachers"] = groups.missing_teachers
    return TrainBatch(groups, adv, quiet, total, columns, metrics=row)


def verified_examples(
    examples: list[Example],
    reward_fns,
    timeout: float,
    trainer_state: TrainerState | None = None,
) -> tuple[list[Example], int]:
    """(the examples whose expert answer the rewards score above 0, how many there were)."""
    groups = build_groups(examples, [], 0, teacher_count=1, keep_truncated_expert=True)
    total, _ = rewards_lib.score(reward_fns, reward_inputs(groups), timeout, trainer_state)
    accepted = {id(m.example) for m, r in zip(groups.members, total, strict=True) if r > 0}
    return [e for e in examples if id(e) in accepted], len(examples)


def training_arrays(model, tokenizer, groups: Groups, adv: mx.array, config: TrainConfig):
    """(start, arrays) for the loss: the first scored target position, then per member
    tokens, mask, advantages, old and base log-probs (GRPO)."""
    m = method(config)
    if m.samples or config.mask_prompt:
        pairs = [(member.prompt, member.response) for member in groups.members]
    else:  # mlx_lm.lora's default: SFT trains on the prompt tokens too
        pairs = [([], member.prompt + member.response) for member in groups.members]
    tokens, mask = pad_batch(pairs, pad_id=tokenizer.eos_token_id or 0)
    start = response_start(mask)
    mask = mask[:, start:]
    if config.mask_truncated:
        # A sample cut off before its answer is not wrong so much as unfinished (DAPO's
        # overlong filtering): it still counts in its group's reward statistics.
        keep = np.array([not member.truncated for member in groups.members], dtype=np.float32)
        mask = mask * mx.array(keep)[:, None]
    old_lp = base_lp = mx.zeros(mask.shape)
    if m.references:
        old_lp, base_lp = reference_logprobs(model, tokens, start, config, old_lp)
    return start, (tokens, mask, adv, old_lp, base_lp)


def reference_logprobs(model, tokens: mx.array, start: int, config: TrainConfig, zeros):
    """GRPO's old-policy and base log-probs (zeros where the loss needs none), taken
    without dropout, `micro_batch_rows` rows at a time as the update runs them, so their
    peak memory is one micro-batch's too."""
    old_lp = base_lp = zeros
    with eval_mode(model):
        if config.updates_per_batch > 1:
            # The ratio's denominator: the policy that sampled, before this batch's updates
            # (with one update per batch the loss takes it from the current forward).
            old_lp = logprobs_in_parts(model, tokens, start, config, config.temperature)
        if config.kl_coef:
            with adapters_disabled(model):
                base_lp = logprobs_in_parts(model, tokens, start, config, config.temperature)
    return old_lp, base_lp


def logprobs_in_parts(
    model, tokens: mx.array, start: int, config: TrainConfig, temperature: float = 1.0
) -> mx.array:
    """token_logprobs without gradient, `micro_batch_rows` rows at a time as the update
    runs them (so its peak memory is one micro-batch's too)."""
    rows = micro_batch_rows(config, tokens.shape[1])
    parts = []
    for i in range(0, tokens.shape[0], rows):
        lp = token_logprobs(model, tokens[i : i + rows], temperature, start=start)[0]
        mx.eval(lp)  # before the next part is built
        parts.append(lp)
    return mx.stop_gradient(mx.concatenate(parts))
