"""TRL's form of a batch reward call: ``f(prompts, completions, **kwargs)``, every other
argument a list with one entry per sample (GRPOTrainer's reward-function API)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Sample keys that a batch reward gets in TRL's form instead (prompts, completions).
_BATCH_OWN = ("prompt", "completion", "completion_ids", "prompt_messages")


@dataclass(frozen=True)
class TrainerState:
    """The attributes of transformers' `TrainerState` that TRL reward functions read, to
    schedule a reward over training (a length penalty that grows, a format bonus that
    fades). Counted per stage, as each TRL trainer counts its own run.

    global_step: optimizer updates done before this call (skipped and idle ones count,
    as the learning-rate schedule counts them); max_steps: the stage's total updates
    (iterations x updates_per_batch: the iterations, by default), so
    global_step / max_steps is the share of training done; epoch: passes over the
    training set so far, fractional as in transformers (1.5: half-way through the
    second pass)."""

    global_step: int
    max_steps: int
    epoch: float


def batch_arguments(
    samples: Sequence[Mapping[str, object]], trainer_state: TrainerState | None = None
) -> dict[str, object]:
    """TRL's keyword arguments for a batch reward: ``prompts``, ``completions``,
    ``completion_ids``, ``trainer_state`` (where training stands; None outside
    training), and every other key of the samples as a list
    with one entry per sample (None where a sample lacks the key).

    Prompts and completions are strings, as in TRL's standard format. When every sample
    carries ``prompt_messages`` (`groups.reward_inputs` gives them for rows written in
    chat form: TRL's conversational rows and mlx_lm's `messages`) they are TRL's
    conversational form instead: each prompt those messages, each completion
    ``[{"role": "assistant", "content": text}]``."""
    n = len(samples)
    keys = dict.fromkeys(k for sample in samples for k in sample if k not in _BATCH_OWN)
    columns = {key: [sample.get(key) for sample in samples] for key in keys}
    prompts: list = [sample["prompt"] for sample in samples]
    completions: list = [sample["completion"] for sample in samples]
    if all(sample.get("prompt_messages") is not None for sample in samples):
        prompts = [[dict(m) for m in sample["prompt_messages"]] for sample in samples]
        completions = [[{"role": "assistant", "content": text}] for text in completions]
    return {
        "answer": [None] * n,
        "reference": [None] * n,
        **columns,
        "prompts": prompts,
        "completions": completions,
        "completion_ids": [sample.get("completion_ids") for sample in samples],
        "trainer_state": trainer_state,
    }
