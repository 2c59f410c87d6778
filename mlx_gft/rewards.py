"""Rewards: the built-in math / exact / F1 rewards, user rewards, and weighted scoring.

A reward is called one of two ways, read from its signature when it is loaded:

- per sample, ``f(*, prompt, completion, answer, reference, **columns) -> float``: the
  prompt, one group member's completion, the dataset's ground-truth ``answer`` and expert
  ``reference`` (either may be None) and every extra dataset column, so it must accept
  ``**kwargs`` (it also gets ``kind``, ``truncated`` and ``completion_ids``);
- per batch, as TRL's GRPOTrainer calls it, ``f(prompts, completions, **kwargs) ->
  list[float | None]`` (a function with a ``prompts`` or ``completions`` parameter): one
  call for all the members of an iteration, every other argument a list with one entry per
  member, plus ``completion_ids`` and ``trainer_state``: during training a
  `reward_batches.TrainerState` with transformers' attribute names (``global_step``,
  the optimizer updates done so far; ``max_steps``, the stage's total; ``epoch``, passes
  over the training set so far), None elsewhere (evaluation). A None entry means "no
  reward for this sample", as in TRL. docs/verifiers.md has the details.

GFT scores every member of a group (expert, teachers and samples) with the same reward,
so a verifier that is too strict pushes correct expert answers down and one that is too
lenient rewards wrong samples.

The built-in rewards are in :mod:`mlx_gft.builtin_rewards`, the math verifier's answer
extraction and comparison in :mod:`mlx_gft.answers`; their names are re-exported here.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .answers import answers_match, extract_answer
from .builtin_rewards import (
    BUILTIN_REWARDS,
    RewardError,
    exact_match_reward,
    f1_reward,
    math_reward,
    math_verify_reward,
)
from .data import has_answers
from .reward_batches import TrainerState, batch_arguments
from .reward_loading import BATCH_ARGS, SAMPLE_ARGS, _required, load_reward, reward_api

__all__ = [
    "BUILTIN_REWARDS",
    "VERIFIERS",
    "Reward",
    "RewardError",
    "TrainerState",
    "answers_match",
    "check_rewards",
    "exact_match_reward",
    "extract_answer",
    "f1_reward",
    "load_reward",
    "load_rewards",
    "math_reward",
    "math_verify_reward",
    "score",
]


# Rewards that grade correctness: their 0/1 column is the sampled accuracy metric.
VERIFIERS = ("math", "accuracy", "math_verify")


def verifier_name(names: Iterable[str]) -> str | None:
    """The first of `names` that is a verifier, if any."""
    return next((n for n in names if n in VERIFIERS), None)


def default_rewards(chosen: list[str] | None, examples: Sequence[Any]) -> list[str]:
    """The reward specs a run uses: the user's, else the math verifier when every row has
    an `answer`, else token F1 against the expert answer."""
    if chosen:
        return chosen
    return ["math"] if has_answers(examples) else ["f1"]


def reward_origin(chosen: list[str] | None, specs: list[str]) -> str:
    """Why this reward, for the run's first lines: a changed default must not go unseen."""
    if chosen:
        return " (--reward)"
    if specs == ["math"]:
        return " (the math verifier against each row's 'answer')"
    return " (token F1 against the expert answer: the rows have no 'answer')"


# --------------------------------------------------------------------------------------
# Loading rewards (finding the function: reward_loading.py)


@dataclass(frozen=True)
class Reward:
    """One loaded reward: the name its column is logged under, the function, its weight,
    and whether it is called once per batch (TRL's API; None: read from the signature)."""

    name: str
    fn: Callable[..., Any]
    weight: float = 1.0
    batch: bool | None = None

    def __post_init__(self) -> None:
        if self.batch is None:  # frozen: set here once
            object.__setattr__(self, "batch", reward_api(self.name, self.fn) == "batch")


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
        fn = spec if callable(spec) else load_reward(spec)
        rewards.append(Reward(name=name, fn=fn, weight=float(weight)))  # checks the signature
    return tuple(rewards)


def check_rewards(
    specs: Sequence[str] | None,
    weights: Sequence[float] | None,
    rows: Sequence[tuple[str, Mapping[str, Any]]],
) -> None:
    """Before the model loads: the rewards load, and every argument they require is one
    we pass or a column of every training row (`rows` as `data.load_splits` gives them)."""
    if not specs:
        return  # the default reward is a built-in
    for reward in load_rewards(specs, weights):
        known = BATCH_ARGS if reward.batch else SAMPLE_ARGS
        for arg in _required(reward.fn):
            if arg in known:
                continue
            lacking = next((where for where, row in rows if arg not in row["columns"]), None)
            if lacking is None:
                continue
            hint = "; the ground truth is passed as 'answer'" if arg in _TRUTH_NAMES else ""
            raise RewardError(
                f"reward {reward.name!r} requires {arg!r}, which is neither an argument we "
                f"pass ({', '.join(known)}) nor a column of every training row (first "
                f"without it: {lacking}){hint}"
            )


# Other libraries' names for the ground-truth column (open-r1 and TRL use `solution`).
_TRUTH_NAMES = ("solution", "solutions", "ground_truth", "target", "gold", "answers")


def _spec_name(spec: str | Callable[..., float]) -> str:
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__)
    return spec.rsplit(":", 1)[-1] if ":" in spec else spec


# --------------------------------------------------------------------------------------
# Scoring


def _excerpt(value: object, limit: int = 60) -> str:
    text = " ".join(str(value).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _where(index: int, sample: Mapping[str, object]) -> str:
    return (
        f"sample {index} (prompt {_excerpt(sample.get('prompt', ''))}, "
        f"completion {_excerpt(sample.get('completion', ''))})"
    )


def _call_with_timeout(
    fn: Callable[..., object], kwargs: dict, timeout: float, rule: str = "--reward-timeout"
) -> object:
    """fn(**kwargs) in a daemon thread; TimeoutError after `timeout` seconds. A Python
    thread cannot be killed, but a daemon one never keeps the process from exiting."""
    result: list = []

    def target() -> None:
        try:
            result.append((True, _resolve(fn(**kwargs))))
        except BaseException as exc:  # handed to the caller's thread
            result.append((False, exc))

    worker = threading.Thread(target=target, daemon=True, name="mlx_gft-reward")
    worker.start()
    worker.join(timeout)
    if not result:
        raise TimeoutError(f"no result within {timeout:g} s ({rule})")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _resolve(value: object) -> object:
    # TRL accepts `async def` rewards: run the coroutine to its end on this thread.
    if inspect.isawaitable(value):

        async def wait() -> object:
            return await value

        return asyncio.run(wait())
    return value


def _call(reward: Reward, kwargs: dict, timeout: float | None, where: str, rule: str) -> object:
    try:
        if timeout:
            return _call_with_timeout(reward.fn, kwargs, timeout, rule)
        return _resolve(reward.fn(**kwargs))
    except Exception as exc:
        raise RewardError(
            f"reward {reward.name!r} raised {type(exc).__name__}: {exc} on {where}"
            + _hint(reward, exc)
        ) from exc


def _hint(reward: Reward, exc: Exception) -> str:
    # A TRL reward written for conversational data reads completion[0]["content"].
    if reward.batch and isinstance(exc, TypeError) and "string indices" in str(exc):
        return (
            "; prompts and completions are passed as strings (TRL's standard format): read "
            "the text as `completion`, not `completion[0]['content']`"
        )
    return ""


def score(
    rewards: Sequence[Reward],
    samples: Sequence[Mapping[str, object]],
    timeout: float | None = None,
    trainer_state: TrainerState | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Score every sample with every reward.

    Each sample is a mapping with at least ``prompt`` and ``completion`` (``answer`` and
    ``reference`` default to None; other keys are passed through as dataset columns). A
    per-sample reward is called once per sample, within `timeout` seconds each; a batch
    reward (TRL's API) once for all samples, within `timeout` x len(samples) seconds,
    with `trainer_state` passed through.

    Returns the weighted sum, shape (N,), and one column per reward name for logging. A
    batch reward's None for a sample is NaN in its column and left out of the sum, as in
    TRL; a sample that no reward with a nonzero weight scored is NaN in the sum, and
    `scored_advantages` leaves it out of its group. Any failure, overrun, or a result that
    is not a finite number raises a RewardError naming the reward and the sample.
    """
    for index, sample in enumerate(samples):
        if "prompt" not in sample or "completion" not in sample:
            raise RewardError(f"{_where(index, sample)} has no 'prompt' or 'completion' key")
    columns = {}
    for reward in rewards:
        if reward.batch:
            columns[reward.name] = _score_batch(reward, samples, timeout, trainer_state)
        else:
            columns[reward.name] = _score_each(reward, samples, timeout)
    return _weighted_sum(rewards, columns, len(samples)), columns


def overlong_punishment(
    lengths: Sequence[int], max_length: int, buffer: int, factor: float = 1.0
) -> np.ndarray:
    """DAPO's soft overlong punishment (verl's reward_manager/dapo.py, TRL's
    get_soft_overlong_punishment): 0 for answers of up to max_length - buffer tokens,
    then falling linearly to -factor at max_length tokens (and -factor past it), added
    to the reward. Unlike
    the verifier's 0, it tells an answer cut off at the limit from a finished wrong one.
    `buffer` 0: no punishment."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if not buffer:
        return np.zeros_like(lengths)
    exceed = lengths - (max_length - buffer)
    # Past max_length (an expert answer longer than the limit) it stays -factor, as TRL's.
    return np.clip(-exceed / buffer * factor, -factor, 0.0)


def _score_each(
    reward: Reward, samples: Sequence[Mapping[str, object]], timeout: float | None
) -> np.ndarray:
    column = np.zeros(len(samples), dtype=np.float64)
    for index, sample in enumerate(samples):
        where = _where(index, sample)
        kwargs = {"answer": None, "reference": None, **sample}
        value = _call(reward, kwargs, timeout, where, "--reward-timeout")
        column[index] = _as_finite(value, reward.name, where)
    return column


def _score_batch(
    reward: Reward,
    samples: Sequence[Mapping[str, object]],
    timeout: float | None,
    trainer_state: TrainerState | None,
) -> np.ndarray:
    n = len(samples)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    # The per-sample limit, for each sample in the call: a slow batch is as slow as the
    # same work done one sample at a time.
    limit = timeout * n if timeout else None
    rule = f"--reward-timeout {timeout:g} s x {n} samples" if timeout else ""
    where = f"a batch of {n} samples (first: {_where(0, samples[0])})"
    value = _call(reward, batch_arguments(samples, trainer_state), limit, where, rule)
    return _as_column(value, reward.name, samples)


def _as_column(value: object, name: str, samples: Sequence[Mapping[str, object]]) -> np.ndarray:
    n = len(samples)
    rule = (
        f"a batch reward must return a list of {n} floats, one per completion (None for "
        "one it does not score)"
    )
    if value is None or isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        got = repr(value) if value is None else f"a {type(value).__name__} ({_excerpt(value, 40)})"
        raise RewardError(f"reward {name!r} returned {got} for a batch of {n} samples; {rule}")
    values = list(value)
    if len(values) != n:
        raise RewardError(
            f"reward {name!r} returned {len(values)} values for a batch of {n} samples; {rule}"
        )
    column = np.zeros(n, dtype=np.float64)
    for index, item in enumerate(values):
        where = _where(index, samples[index])
        column[index] = math.nan if item is None else _as_finite(item, name, where, rule)
    return column


def _weighted_sum(
    rewards: Sequence[Reward], columns: Mapping[str, np.ndarray], n: int
) -> np.ndarray:
    total = np.zeros(n, dtype=np.float64)
    for reward in rewards:
        total += reward.weight * np.nan_to_num(columns[reward.name], nan=0.0)
    # TRL's rule: a None is left out of the weighted sum. A sample that no reward scored
    # has no reward at all (a weight-0 reward is only logged: it does not count here).
    deciding = [r for r in rewards if r.weight] or list(rewards)
    if deciding:
        scored = np.zeros(n, dtype=bool)
        for reward in deciding:
            scored |= ~np.isnan(columns[reward.name])
        total[~scored] = np.nan
    return total


def _as_finite(value: object, name: str, where: str, batch_rule: str | None = None) -> float:
    """`value` as a float. A batch reward's entry (`batch_rule` given) may also be NaN,
    which TRL treats as None."""
    rule = batch_rule or "a reward must return a finite float"
    problem = None
    if value is None or isinstance(value, str | bytes):
        problem = f"returned {value!r}"
        if value is None:  # per sample: most likely a missing `return`
            rule += " (only a batch reward, f(prompts, completions, **kwargs), may give None)"
    else:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            problem = f"returned a {type(value).__name__} ({_excerpt(value, 40)})"
        else:
            if math.isfinite(number) or (batch_rule and math.isnan(number)):
                return number
            problem = f"returned {number}"
    raise RewardError(f"reward {name!r} {problem} on {where}; {rule}")
