"""The built-in rewards: the math verifier (ours, or Hugging Face's math-verify in the
sympy helper process), exact match and token F1. `mlx_gft.rewards` loads and scores them
beside users' rewards."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping

from . import sympy_worker
from .answers import _ground_truth, answers_match, extract_answer


class RewardError(ValueError):
    """A reward cannot be loaded, or returned something that is not a finite number."""


# --------------------------------------------------------------------------------------
# Built-in rewards


def math_reward(prompt: str, completion: str, answer: str | None = None, **kwargs: object) -> float:
    """1.0 when the completion's final answer matches `answer`, else 0.0.

    `answer` may be a bare answer or a whole GSM8K / MATH solution (its ``#### N`` or last
    ``\\boxed{}`` is used). A completion with no extractable answer scores 0.0.
    """
    if answer is None:
        raise RewardError("the math reward needs an 'answer' column (the ground truth)")
    pred = extract_answer(completion)
    if pred is None:
        return 0.0
    return 1.0 if answers_match(pred, _ground_truth(answer)) else 0.0


# Seconds math-verify may spend on one completion before its helper process is killed
# (its own per-step limits, inside the helper, are shorter).
MATH_VERIFY_TIMEOUT = 5.0


def math_verify_reward(
    prompt: str, completion: str, answer: str | None = None, **kwargs: object
) -> float:
    """1.0 when Hugging Face's math-verify finds `answer` in the completion, else 0.0.

    math-verify extracts the completion's final answer itself (LaTeX, ``\\boxed{}``, plain
    expressions) and compares it with sympy. It runs in the sympy helper process: its own
    time limits need a main thread, and the helper is killed when it overruns.
    """
    if answer is None:
        raise RewardError("the math_verify reward needs an 'answer' column (the ground truth)")
    try:
        ok = sympy_worker._WORKER.math_verify(str(answer), completion, MATH_VERIFY_TIMEOUT)
    except RuntimeError as exc:  # math-verify cannot be imported in the helper
        raise RewardError(str(exc)) from exc
    return 1.0 if ok else 0.0


def exact_match_reward(
    prompt: str,
    completion: str,
    answer: str | None = None,
    reference: str | None = None,
    **kwargs: object,
) -> float:
    """1.0 when the completion's extracted answer, or the whole completion, stripped,
    equals the stripped `answer` (or `reference` when there is no answer)."""
    target = answer if answer is not None else reference
    if target is None:
        raise RewardError("the exact reward needs an 'answer' or 'reference' column")
    truth, pred = _ground_truth(target), extract_answer(completion)
    # The whole completion too: "There are 3 cats" would extract "3".
    return 1.0 if completion.strip() == truth or (pred and pred.strip() == truth) else 0.0


def _squad_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def f1_reward(
    prompt: str, completion: str, reference: str | None = None, **kwargs: object
) -> float:
    """Token-level F1 between the completion and the expert answer (SQuAD-style).

    For chat data without a checkable answer. Falls back to `answer` when the dataset has
    no `reference` column.
    """
    if reference is None:
        reference = kwargs.get("answer")  # type: ignore[assignment]
    if reference is None:
        raise RewardError("the f1 reward needs a 'reference' (or 'answer') column")
    pred, gold = _squad_tokens(completion), _squad_tokens(str(reference))
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


BUILTIN_REWARDS: Mapping[str, Callable[..., float]] = {
    "math": math_reward,
    "accuracy": math_reward,
    "math_verify": math_verify_reward,
    "exact": exact_match_reward,
    "f1": f1_reward,
}

# Built-in rewards that need an optional package: name -> (module, what to pip install).
_OPTIONAL = {"math_verify": ("math_verify", "math-verify")}
