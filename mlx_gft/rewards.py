"""Rewards: the built-in math / exact / F1 rewards, user rewards, and weighted scoring.

A reward is any callable ``f(*, prompt, completion, answer, reference, **columns) -> float``:
it receives the prompt, one group member's completion, the dataset's ground-truth
``answer`` and expert ``reference`` (either may be None) and every extra dataset column,
so it must accept ``**kwargs``. GFT scores every member of a group (expert, teachers and
samples) with the same reward, so a verifier that is too strict pushes correct expert
answers down and one that is too lenient rewards wrong samples.

The math reward's verifier (answer extraction and comparison) is :mod:`mlx_gft.answers`;
its ``extract_answer`` and ``answers_match`` are re-exported here.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import os
import re
import string
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .answers import _ground_truth, answers_match, extract_answer

__all__ = [
    "BUILTIN_REWARDS",
    "VERIFIERS",
    "Reward",
    "RewardError",
    "answers_match",
    "exact_match_reward",
    "extract_answer",
    "f1_reward",
    "load_reward",
    "load_rewards",
    "math_reward",
    "score",
]


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
    "exact": exact_match_reward,
    "f1": f1_reward,
}


# Rewards that grade correctness: their 0/1 column is the sampled accuracy metric.
VERIFIERS = ("math", "accuracy")


def verifier_name(names: Iterable[str]) -> str | None:
    """The first of `names` that is a verifier, if any."""
    return next((n for n in names if n in VERIFIERS), None)


def default_rewards(chosen: list[str] | None, examples: Sequence[Any]) -> list[str]:
    """The reward specs a run uses: the user's, else the math verifier when every row has
    an `answer`, else token F1 against the expert answer."""
    if chosen:
        return chosen
    return ["math"] if all(e.answer is not None for e in examples) else ["f1"]


def reward_origin(chosen: list[str] | None, specs: list[str]) -> str:
    """Why this reward, for the run's first lines: a changed default must not go unseen."""
    if chosen:
        return " (--reward)"
    if specs == ["math"]:
        return " (the math verifier against each row's 'answer')"
    return " (token F1 against the expert answer: the rows have no 'answer')"


# --------------------------------------------------------------------------------------
# Loading rewards


def load_reward(spec: str) -> Callable[..., float]:
    """A reward from a built-in name, ``path/to/file.py:function`` or ``package.module:fn``."""
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if ":" not in spec:
        raise RewardError(
            f"unknown reward {spec!r}: use a built-in ({', '.join(BUILTIN_REWARDS)}), "
            "path/to/file.py:function or package.module:function"
        )
    where, name = spec.rsplit(":", 1)  # rsplit: a Windows path has a drive colon
    if not where or not name:
        raise RewardError(f"reward {spec!r}: expected 'file.py:function' or 'module:function'")
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _import_file(spec, Path(where).expanduser())
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise RewardError(f"reward {spec!r}: cannot import module {where!r}: {exc}") from exc
        except Exception as exc:
            raise RewardError(
                f"reward {spec!r}: importing module {where!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    fn: object = module
    for part in name.split("."):  # "Class.method" works too
        if not hasattr(fn, part):
            public = sorted(
                k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
            )
            raise RewardError(
                f"reward {spec!r}: {where!r} has no function {name!r} "
                f"(callables defined there: {', '.join(public) or 'none'})"
            )
        fn = getattr(fn, part)
    if not callable(fn):
        raise RewardError(f"reward {spec!r}: {name!r} is a {type(fn).__name__}, not a function")
    _check_accepts_kwargs(spec, fn)
    return fn


def _import_file(spec: str, path: Path) -> object:
    if not path.is_file():
        raise RewardError(f"reward {spec!r}: file {str(path)!r} does not exist")
    # A private, path-derived module name: two reward files called rewards.py can coexist.
    module_name = f"_mlx_gft_user_reward_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardError(f"reward {spec!r}: cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickle look modules up here
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # SystemExit: a script's argparse at top level
        del sys.modules[module_name]
        raise RewardError(
            f"reward {spec!r}: importing {str(path)!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _check_accepts_kwargs(spec: str, fn: Callable[..., object]) -> None:
    # Fail at start-up, not at the first step, when the function would reject the columns.
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins / C callables have no signature
        return
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        raise RewardError(
            f"reward {spec!r} must accept **kwargs: it is called with prompt=, completion=, "
            "answer=, reference= and every extra dataset column"
        )


@dataclass(frozen=True)
class Reward:
    """One loaded reward: the name its column is logged under, the function, its weight."""

    name: str
    fn: Callable[..., float]
    weight: float = 1.0


def load_rewards(
    specs: Sequence[str | Callable[..., float]], weights: Sequence[float] | None = None
) -> tuple[Reward, ...]:
    """Load several rewards; the training reward is their weighted sum (weights default
    to 1). A weight of 0 keeps a reward in the logs without training on it. Plain
    callables are accepted next to spec strings."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise RewardError("no reward given: pass at least one (e.g. 'math')")
    if weights is None:
        weights = [1.0] * len(specs)
    if len(weights) != len(specs):
        raise RewardError(
            f"{len(weights)} reward weights for {len(specs)} rewards "
            f"({', '.join(map(_spec_name, specs))}): give one weight per reward"
        )
    rewards: list[Reward] = []
    names = [_spec_name(s) for s in specs]
    for index, (spec, name, weight) in enumerate(zip(specs, names, weights, strict=True)):
        if not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise RewardError(f"reward {name!r}: weight {weight!r} is not a finite number")
        # Column names must be unique: "a.py:score" and "b.py:score" log as their specs.
        if names.count(name) > 1 and isinstance(spec, str):
            name = spec
        if name in {r.name for r in rewards}:
            name = f"{name}#{index}"
        if callable(spec):
            _check_accepts_kwargs(name, spec)
            fn = spec
        else:
            fn = load_reward(spec)
        rewards.append(Reward(name=name, fn=fn, weight=float(weight)))
    return tuple(rewards)


def _spec_name(spec: str | Callable[..., float]) -> str:
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__)
    return spec.rsplit(":", 1)[-1] if ":" in spec else spec


# --------------------------------------------------------------------------------------
# Scoring


def _excerpt(value: object, limit: int = 60) -> str:
    text = " ".join(str(value).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _call_with_timeout(fn: Callable[..., object], kwargs: dict, timeout: float) -> object:
    """fn(**kwargs) in a daemon thread; TimeoutError after `timeout` seconds. A Python
    thread cannot be killed, but a daemon one never keeps the process from exiting."""
    result: list = []

    def target() -> None:
        try:
            result.append((True, fn(**kwargs)))
        except BaseException as exc:  # handed to the caller's thread
            result.append((False, exc))

    worker = threading.Thread(target=target, daemon=True, name="mlx_gft-reward")
    worker.start()
    worker.join(timeout)
    if not result:
        raise TimeoutError(f"no result within {timeout:g} s (--reward-timeout)")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def score(
    rewards: Sequence[Reward],
    samples: Sequence[Mapping[str, object]],
    timeout: float | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Score every sample with every reward.

    Each sample is a mapping with at least ``prompt`` and ``completion`` (``answer`` and
    ``reference`` default to None; other keys are passed through as dataset columns).
    Returns the weighted sum, shape (N,), and one column per reward name for logging.
    Any failure, a call that takes longer than `timeout` seconds, or a result that is
    not a finite number raises a RewardError naming the reward and the sample.
    """
    columns = {r.name: np.zeros(len(samples), dtype=np.float64) for r in rewards}
    for index, sample in enumerate(samples):
        where = (
            f"sample {index} (prompt {_excerpt(sample.get('prompt', ''))}, "
            f"completion {_excerpt(sample.get('completion', ''))})"
        )
        if "prompt" not in sample or "completion" not in sample:
            raise RewardError(f"{where} has no 'prompt' or 'completion' key")
        kwargs = {"answer": None, "reference": None, **sample}
        for reward in rewards:
            try:
                if timeout:
                    value = _call_with_timeout(reward.fn, kwargs, timeout)
                else:
                    value = reward.fn(**kwargs)
            except Exception as exc:
                raise RewardError(
                    f"reward {reward.name!r} raised {type(exc).__name__}: {exc} on {where}"
                ) from exc
            columns[reward.name][index] = _as_finite(value, reward.name, where)
    total = np.zeros(len(samples), dtype=np.float64)
    for reward in rewards:
        total += reward.weight * columns[reward.name]
    return total, columns


def _as_finite(value: object, name: str, where: str) -> float:
    problem = None
    if value is None or isinstance(value, str | bytes):
        problem = f"returned {value!r}"
    else:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            problem = f"returned a {type(value).__name__} ({_excerpt(value, 40)})"
        else:
            if math.isfinite(number):
                return number
            problem = f"returned {number}"
    raise RewardError(f"reward {name!r} {problem} on {where}; a reward must return a finite float")
