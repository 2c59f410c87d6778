"""The training methods in one table: what forms a group, whether the policy samples,
which loss, which reference log-probs. The loop and the step ask this table; nothing
else compares the method's name.

| method       | group members                 | samples | log-probs at | references | A = 0 |
|--------------|-------------------------------|---------|--------------|------------|-------|
| gft          | expert + teachers + K samples | yes     | T = 1        | none       | skip  |
| grpo         | K samples                     | yes     | T (sampling) | old, base  | skip* |
| sft          | expert                        | no      | T = 1        | none       |       |
| sft-verified | expert, if the reward accepts | no      | T = 1        | none       |       |
| dft          | expert                        | no      | T = 1        | none       |       |

A = 0, skip: a row whose advantage is zero (every row of a group whose rewards are all
equal) adds nothing to an advantage-weighted loss, so the update leaves it out (no
forward, no backward; the loss's normaliser still counts it). *Not with --kl-coef: the
KL term has a gradient at A = 0. SFT and DFT train every row with weight 1. GRPO's
references: the old policy's log-probs (the PPO ratio) and the base's (the KL term).

sft-verified is the baseline a user with GFT's verifier would run when expert answers
can be wrong: SFT on the rows whose expert answer the run's reward scores above 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlx.core as mx

from .losses import dft_loss, gft_loss, grpo_loss, sft_loss

if TYPE_CHECKING:
    from .config import TrainConfig

# (log p, mask, advantages, old log p, base log p, config, norm) -> scalar loss
LossFn = Callable[[mx.array, mx.array, mx.array, mx.array, mx.array, "TrainConfig", int], mx.array]


@dataclass(frozen=True)
class Method:
    name: str
    samples: bool  # K answers per prompt from the current policy, scored by the reward
    expert_in_group: bool  # the expert (and teacher) answers join the sampled group
    tempered: bool  # log-probs at the sampling temperature: the policy that sampled
    references: bool  # needs old-policy (PPO ratio) and base (KL) log-probs
    # Every token's loss is a multiple of its row's advantage (GRPO's: without its KL
    # term): a row with A = 0 adds nothing to the loss or the gradient.
    advantage_weighted: bool
    loss: LossFn
    verified_experts: bool = False  # trains only on expert answers the reward accepts


def _gft(lp, mask, adv, old_lp, base_lp, config, norm):
    return gft_loss(lp, mask, adv, config.tau, config.loss_agg, norm)


def _sft(lp, mask, adv, old_lp, base_lp, config, norm):
    return sft_loss(lp, mask, config.loss_agg, norm)


def _dft(lp, mask, adv, old_lp, base_lp, config, norm):
    return dft_loss(lp, mask, config.loss_agg, norm)


def _grpo(lp, mask, adv, old_lp, base_lp, config, norm):
    if config.updates_per_batch == 1:
        # One update per sampled batch: the sampling policy is the current one, so the
        # PPO ratio is exactly 1 in value; sg(current log p) gives it without a forward.
        old_lp = mx.stop_gradient(lp)
    return grpo_loss(
        lp,
        old_lp,
        mask,
        adv,
        config.clip_eps,
        base_log_probs=base_lp,
        kl_coef=config.kl_coef,
        agg=config.loss_agg,
        norm=norm,
    )


METHODS = {
    m.name: m
    for m in (
        Method("gft", samples=True, expert_in_group=True, tempered=False, references=False,
               advantage_weighted=True, loss=_gft),
        Method("sft", samples=False, expert_in_group=True, tempered=False, references=False,
               advantage_weighted=False, loss=_sft),
        Method("sft-verified", samples=False, expert_in_group=True, tempered=False,
               references=False, advantage_weighted=False, loss=_sft, verified_experts=True),
        Method("dft", samples=False, expert_in_group=True, tempered=False, references=False,
               advantage_weighted=False, loss=_dft),
        Method("grpo", samples=True, expert_in_group=False, tempered=True, references=True,
               advantage_weighted=True, loss=_grpo),
    )
}  # fmt: skip


def method(config: TrainConfig) -> Method:
    """The method `config.loss` names."""
    return METHODS[config.loss]


def skips_zero_advantage(config: TrainConfig) -> bool:
    """Whether a row with A = 0 contributes nothing to this run's loss, so the update
    can leave it out: an advantage-weighted loss with no KL term to the base."""
    return method(config).advantage_weighted and not config.kl_coef
