"""The built-in arithmetic task: determinism, disjoint splits, correct worked solutions."""

import json
import random
import re

import pytest

from mlx_gft.tasks import (
    LEVELS,
    Difficulty,
    arithmetic,
    extract_answer,
    is_correct,
    make_dataset,
    make_problem,
    write_dataset,
)

_EQ = re.compile(r"(\d+) ([+\-*]) (\d+) = (\d+)")


def _check_row(row: dict) -> list[tuple[int, str, int, int]]:
    """Recompute every step of a worked solution; return the parsed equations."""
    assert set(row) == {"prompt", "completion", "answer"}
    assert all(isinstance(v, str) for v in row.values())
    eqs = [(int(a), op, int(n), int(r)) for a, op, n, r in _EQ.findall(row["completion"])]
    assert eqs, row
    # Starting amount is the first number in the question.
    assert eqs[0][0] == int(re.search(r"\d+", row["prompt"]).group())
    prev = None
    for a, op, n, r in eqs:
        if prev is not None:
            assert a == prev, "each step starts from the previous result"
        assert r == {"+": a + n, "-": a - n, "*": a * n}[op], row["completion"]
        assert r > 0
        prev = r
    # Every operand appears in the question, in order.
    q_numbers = [int(x) for x in re.findall(r"\d+", row["prompt"])]
    assert q_numbers == [eqs[0][0]] + [n for _, _, n, _ in eqs]
    assert row["completion"].endswith(f"The answer is {row['answer']}.")
    assert int(row["answer"]) == prev
    return eqs


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_level_is_arithmetically_right(level):
    rng = random.Random(level)
    d = LEVELS[level]
    for _ in range(300):
        eqs = _check_row(make_problem(rng, level))
        assert len(eqs) == d.steps
        assert {op for _, op, _, _ in eqs} <= set(d.ops)


def test_dataset_rows_verify_with_their_own_answer():
    data = make_dataset(200, 20, 50, seed=3)
    for rows in data.values():
        for row in rows:
            _check_row(row)
            assert is_correct(row["completion"], row["answer"])
            assert extract_answer(row["completion"]) == row["answer"]


def test_deterministic_by_seed():
    a = make_dataset(50, 10, 10, seed=7, difficulty=3)
    b = make_dataset(50, 10, 10, seed=7, difficulty=3)
    c = make_dataset(50, 10, 10, seed=8, difficulty=3)
    assert a == b
    assert a != c
    assert make_problem(random.Random(1)) == make_problem(random.Random(1))


def test_test_split_does_not_depend_on_train_size():
    small = make_dataset(10, 10, 30, seed=0)
    big = make_dataset(500, 10, 30, seed=0)
    assert small["test"] == big["test"]
    assert small["valid"] == big["valid"]


@pytest.mark.parametrize("level", [1, 2])
def test_splits_disjoint_and_unique(level):
    data = make_dataset(1000, 100, 200, seed=0, difficulty=level)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [1000, 100, 200]
    prompts = [row["prompt"] for rows in data.values() for row in rows]
    assert len(prompts) == len(set(prompts))


def test_templates_are_varied():
    rows = make_dataset(300, 0, 0, seed=0)["train"]
    first_words = {row["prompt"].split()[0] for row in rows}
    objects = {row["prompt"].split("?")[0].split()[-4] for row in rows}
    assert len(first_words) >= 10  # names, and "There are ..."
    assert len(objects) >= 8
    answers = {row["answer"] for row in rows}
    assert len(answers) >= 10


def test_difficulty_knob_changes_steps_ranges_and_ops():
    def stats(d):
        rng = random.Random(0)
        eqs = [e for _ in range(300) for e in _check_row(make_problem(rng, d))]
        return max(n for _, op, n, _ in eqs if op != "*"), {op for _, op, _, _ in eqs}

    high, ops = stats(Difficulty(steps=1, low=1, high=5, ops=("+",)))
    assert high <= 5 and ops == {"+"}
    high, ops = stats(Difficulty(steps=3, low=50, high=90, ops=("+", "-", "*")))
    assert high > 5 and ops == {"+", "-", "*"}
    rng = random.Random(0)
    assert len(_check_row(make_problem(rng, Difficulty(steps=3)))) == 3
    # Levels get harder: more steps or wider ranges.
    keys = [(LEVELS[k].steps, LEVELS[k].high, len(LEVELS[k].ops)) for k in sorted(LEVELS)]
    assert keys == sorted(keys)


def test_only_subtraction_still_stays_positive():
    rng = random.Random(0)
    for _ in range(200):
        _check_row(make_problem(rng, Difficulty(steps=3, low=1, high=3, ops=("-",))))


def test_bad_difficulty_rejected():
    with pytest.raises(ValueError):
        make_problem(random.Random(0), 9)
    with pytest.raises(ValueError):
        Difficulty(steps=4)
    with pytest.raises(ValueError):
        Difficulty(ops=("/",))


def test_exhausted_problem_space_raises_instead_of_hanging(monkeypatch):
    # Give up at the first duplicate so a few thousand draws are enough to hit one.
    monkeypatch.setattr(arithmetic, "_MAX_MISSES", 0)
    tiny = Difficulty(steps=1, low=1, high=1, ops=("+",))
    with pytest.raises(ValueError, match="distinct"):
        make_dataset(5000, 0, 0, difficulty=tiny)


def test_write_dataset_round_trips(tmp_path):
    folder = write_dataset(tmp_path / "arith", 20, 5, 7, seed=1, difficulty=2)
    expected = make_dataset(20, 5, 7, seed=1, difficulty=2)
    for split in ("train", "valid", "test"):
        with open(folder / f"{split}.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        assert rows == expected[split]


@pytest.mark.parametrize(
    "text, want",
    [
        ("so 3 + 5 = 8. The answer is 8.", "8"),
        ("The answer is 12. Then 99 more words 7", "12"),
        ("He has 1,200 apples", "1200"),
        ("I think 4, or maybe 5", "5"),
        ("no numbers here", None),
        ("the answer is -3", "-3"),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_is_correct():
    assert is_correct("3 + 5 = 8. The answer is 8.", "8")
    assert not is_correct("3 + 5 = 9. The answer is 9.", "8")
    assert not is_correct("", "8")


def test_project_verifier_accepts_every_expert_solution():
    rewards = pytest.importorskip("mlx_gft.rewards")
    for level in sorted(LEVELS):
        for row in make_dataset(40, 0, 0, seed=level, difficulty=level)["train"]:
            got = rewards.math_reward(
                prompt=row["prompt"], completion=row["completion"], answer=row["answer"]
            )
            assert got == 1.0, row


@pytest.mark.parametrize("level", [1, 3, 5])
def test_wrong_experts_slip_the_last_result_of_a_fixed_share_of_train_rows(level):
    from mlx_gft.rewards import math_reward

    clean = make_dataset(200, 20, 30, seed=4, difficulty=level)
    noisy = make_dataset(200, 20, 30, seed=4, difficulty=level, wrong_experts=0.25)
    assert noisy["valid"] == clean["valid"] and noisy["test"] == clean["test"]
    slipped = 0
    for c, n in zip(clean["train"], noisy["train"], strict=True):
        assert (n["prompt"], n["answer"]) == (c["prompt"], c["answer"])
        if n == c:
            continue
        slipped += 1
        got = int(extract_answer(n["completion"]))
        assert 1 <= abs(got - int(c["answer"])) <= 2 and got > 0
        # Only the last equation's result changes; the steps before it stay right.
        assert _EQ.findall(n["completion"])[:-1] == _EQ.findall(c["completion"])[:-1]
        assert math_reward(prompt=n["prompt"], completion=n["completion"], answer=n["answer"]) == 0
    assert slipped == 50


def test_wrong_experts_out_of_range_rejected():
    with pytest.raises(ValueError, match="wrong_experts must be in"):
        make_dataset(10, 0, 0, wrong_experts=1.5)


@pytest.mark.parametrize("level", [1, 3, 5])
def test_off_policy_experts_same_problems_other_style_all_verified(level):
    from mlx_gft.rewards import math_reward

    own = make_dataset(60, 20, 30, seed=2, difficulty=level)
    steps = make_dataset(60, 20, 30, seed=2, difficulty=level, expert_style="steps")
    assert steps["valid"] == own["valid"] and steps["test"] == own["test"]
    for o, s in zip(own["train"], steps["train"], strict=True):
        assert (s["prompt"], s["answer"]) == (o["prompt"], o["answer"])
        # Another style: none of the own style's sentences, its opening and boxed answer,
        # the same equations (one per step), about twice as long.
        assert s["completion"].startswith("Let's work through this step by step.")
        assert s["completion"].endswith(f"\\boxed{{{o['answer']}}}")
        assert "The answer is" not in s["completion"] and "starts with" not in s["completion"]
        equations = re.findall(r"(\d+) [+\-x] (\d+) = (\d+)", s["completion"])
        assert equations == [(a, n, r) for a, _, n, r in _EQ.findall(o["completion"])]
        assert len(s["completion"]) > 1.5 * len(o["completion"])
        assert math_reward(prompt=s["prompt"], completion=s["completion"], answer=s["answer"]) == 1


def test_expert_style_checked_and_not_mixed_with_slips():
    with pytest.raises(ValueError, match="style: 'boxed' is not one of own, steps"):
        make_dataset(10, 0, 0, expert_style="boxed")
    with pytest.raises(ValueError, match="slips the 'own' style"):
        make_dataset(10, 0, 0, wrong_experts=0.3, expert_style="steps")
