"""A reward for short factual answers: 1 when the answer appears in the completion.

Used by `examples/why_gft.py` as a forgetting check: the base model names most capitals
in examples/data/capitals (a task no method trains on), and fine-tuning on arithmetic
should not make it lose them.

    python -m mlx_gft.evaluate --data examples/data/capitals \\
        --reward examples/rewards/contains_answer.py:contains_answer --temperature 0
"""

import unicodedata


def _fold(text: str) -> str:
    # "Brasília" and "Brasilia" are the same answer; so are "PARIS" and "Paris".
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def contains_answer(completion: str, answer: str, **kwargs) -> float:
    return float(_fold(answer) in _fold(completion))
