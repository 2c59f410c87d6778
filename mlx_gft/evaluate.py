"""Held-out accuracy with a verifier: avg@k (the paper's number), pass@k and greedy."""

import numpy as np

from . import rewards as rewards_lib
from .data import Example
from .groups import Groups, Member, reward_inputs
from .sampling import sample_groups


def accuracy(
    model,
    tokenizer,
    examples: list[Example],
    reward: str = "math",
    samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """Score `samples` answers per prompt; temperature 0 is greedy (then samples = 1)."""
    if temperature == 0:
        samples = 1
    reward_fns = rewards_lib.load_rewards([reward])
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        outs = sample_groups(
            model,
            tokenizer,
            [e.prompt for e in chunk],
            samples,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed + start,
        )
        members = [
            Member(chunk[i // samples].prompt, s.tokens, "sampled", s.text, chunk[i // samples])
            for i, s in enumerate(outs)
        ]
        total, _ = rewards_lib.score(reward_fns, reward_inputs(Groups(members, [])))
        scores.append(total.reshape(len(chunk), samples))
    if was_training:
        model.train()
    table = np.concatenate(scores) if scores else np.zeros((0, samples))
    return {
        "n": len(examples),
        "samples": samples,
        "temperature": temperature,
        "avg_at_k": float(table.mean()) if table.size else float("nan"),
        "pass_at_k": float((table.max(axis=1) > 0).mean()) if table.size else float("nan"),
    }
