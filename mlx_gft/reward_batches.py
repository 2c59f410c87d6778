"""TRL's form of a batch reward call: ``f(prompts, completions, **kwargs)``, every other
argument a list with one entry per sample (GRPOTrainer's reward-function API)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Sample keys that a batch reward gets in TRL's form instead (prompts, completions).
_BATCH_OWN = ("prompt", "completion", "completion_ids", "prompt_messages")


def batch_arguments(
    samples: Sequence[Mapping[str, object]], trainer_state: object = None
) -> dict[str, object]:
    """TRL's keyword arguments for a batch reward: ``prompts``, ``completions``,
    ``completion_ids``, ``trainer_state``, and every other key of the samples as a list
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
