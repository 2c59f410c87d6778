"""Tests for mlx_gft.rewards, mlx_gft.answers and mlx_gft.sympy_worker: the math verifier,
built-in rewards, loading and scoring."""

import math
import re
import sys
import threading
import time

import numpy as np
import pytest

from mlx_gft import answers, builtin_rewards, rewards, sympy_worker
from mlx_gft.rewards import (
    Reward,
    RewardError,
    answers_match,
    exact_match_reward,
    extract_answer,
    f1_reward,
    load_reward,
    load_rewards,
    math_reward,
    score,
)

# --------------------------------------------------------------------------------------
# Extraction

EXTRACT_CASES = [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{4}", "4"),
    ("\\boxed{\\left(\\frac{1}{2}, \\sqrt{3}\\right)}", "\\left(\\frac{1}{2}, \\sqrt{3}\\right)"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{{a}^{b_{c}}}", "{a}^{b_{c}}"),
    ("The answer is $\\boxed 5$.", "5"),
    ("\\fbox{7}", "7"),
    ("\\boxed {8}", "8"),
    ("She sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("#### 1,000\n", "1,000"),
    ("#### 5\nlater: 6", "5"),
    ("The answer is 18.", "18"),
    ("so THE ANSWER IS: 3.5. Done", "3.5"),
    ("The final answer is $\\frac{1}{2}$. I hope", "$\\frac{1}{2}$"),
    ("The answer is\n42", "42"),
    ("3 apples and 4.5 pears", "4.5"),
    ("it costs $1,250.", "1,250"),
    ("a drop of -7 degrees", "-7"),
    ("pages 3-4", "4"),
    ("up 12% today", "12%"),
    ("half is 1/2", "1/2"),
    ("\\boxed{12} but then \\boxed{13", "12"),  # a cut-off last box is skipped
    ("no digits here", None),
    ("", None),
    # "the answer is" followed by words: the number or expression at its start
    ("5 + 7 = 12. The answer is 12 apples.", "12"),
    ("The answer is 12, not 15 as I first thought.", "12"),
    ("The answer is 12 (twelve).", "12"),
    ("The answer is x = 5 because 5 + 1 = 6.", "x = 5"),
    ("The answer is \\frac{1}{2} cup of flour.", "\\frac{1}{2}"),
    ("The answer is $\\frac{3}{4}$ of the cake.", "$\\frac{3}{4}$"),
    ("The answer is 2\\sqrt{3} meters long.", "2\\sqrt{3} meters"),  # units stay
    ("The answer is 25 percent of the class.", "25 percent"),  # and so do percentages
    ("The answer is 2 pi radians.", "2 pi"),  # math words do not end the answer
    # ... but nothing else changes: a list, a hedge, variables, words and choices
    ("The answer is 3, -2", "3, -2"),
    ("The answer is 4 or 5.", "4 or 5"),
    ("The answer is 3xy.", "3xy"),
    ("The answer is C.", "C"),
    ("The answer is (B).", "(B)"),
    ("The answer is Yes.", "Yes"),
    ("The answer is New York City.", "New York City"),
    ("The answer is C because it is largest.", "C because it is largest"),  # read whole
    # dashes that mean minus
    ("The change is \u22124 degrees.", "-4"),
    ("It fell to \u20137 overnight.", "-7"),
    ("pages 3\u20134", "4"),  # an en dash range is still a range
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# --------------------------------------------------------------------------------------
# The verifier table: (extracted prediction, ground truth, should match)

MATCH_CASES = [
    # plain integers and decimals
    ("72", "72", True),
    ("72.0", "72", True),
    ("18.00", "18", True),
    ("0.333333", "0.3333", True),  # relative tolerance 1e-4
    ("1.0001", "1", True),
    (".5", "0.5", True),
    ("1e3", "1000", True),
    ("17", "71", False),
    ("1.001", "1", False),
    ("72", "720", False),
    # signs
    ("-3", "-3", True),
    ("-3", "3", False),
    ("+5", "5", True),
    ("\u22124", "-4", True),  # a unicode minus
    ("\u20134", "-4", True),  # an en dash for a minus
    ("2\u03c0", "2\\pi", True),
    # thousands separators
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("12,345,678", "12345678", True),
    ("1,000,000", "10^6", True),  # one number, not a list of three
    ("-1,250.5", "-1250.5", True),
    ("1,000", "100", False),
    ("1,5", "1.5", False),
    # trailing period, $, \text, spaces, markdown
    ("18.", "18", True),
    ("$18$", "18", True),
    ("\\$18.50", "18.5", True),
    ("**42**", "42", True),
    ("\\text{42}", "42", True),
    ("\\textbf{Yes}", "yes", True),
    ("\\text{(B)}", "B", True),
    ("(C)", "B", False),
    # units and degrees
    ("18 dollars", "18", True),
    ("5 cm", "5", True),
    ("5\\text{ cm}^2", "5", True),
    ("12 square feet", "12", True),
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30", True),
    ("45°", "45", True),
    ("3 hours", "3", True),
    ("10 m", "10", True),
    ("5 cm", "6", False),
    ("x", "m", False),
    # percentages
    ("50%", "0.5", True),
    ("50\\%", "50", True),
    ("0.5", "50\\%", True),
    ("25 percent", "0.25", True),
    ("0.5", "50", False),  # no % sign anywhere: 0.5 and 50 are different answers
    ("5", "500", False),
    # fractions and mixed numbers
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\dfrac{3}{4}", "3/4", True),
    ("\\tfrac34", "\\frac{3}{4}", True),
    ("\\frac{6}{8}", "\\frac34", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-1}{2}", "-\\frac12", True),
    ("2\\frac{1}{2}", "2.5", True),
    ("2 1/2", "\\frac{5}{2}", True),
    ("1/2", "2", False),
    ("\\frac{1}{3}", "0.33", False),
    ("3/0", "0", False),
    # leading "x ="
    ("x = 5", "5", True),
    ("y=-2", "-2", True),
    # symbolic: radicals, pi, powers, polynomials
    ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\sqrt[3]{8}", "2", True),
    ("0.7071", "\\frac{\\sqrt{2}}{2}", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("2\\pi", "2 \\pi", True),
    ("\\pi/2", "\\frac{\\pi}{2}", True),
    ("\\frac{\\pi}{2}", "1.5708", True),
    ("3\\pi", "\\pi", False),
    ("2^{10}", "1024", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("(x+1)(x-1)", "x^2-1", True),
    ("2 \\cdot 3", "6", True),
    ("4 \\times 10^{3}", "4000", True),
    ("\\frac{a}{b} + 1", "\\frac{a+b}{b}", True),
    ("x^2+1", "x^2-1", False),
    ("3+4i", "4+3i", False),
    ("3i+4", "4+3i", True),
    # tuples, intervals, sets, lists
    ("(1, 2)", "(1,2)", True),
    ("\\left( \\frac12, 3\\right)", "(0.5, 3)", True),
    ("(2, 1)", "(1, 2)", False),  # points are ordered
    ("[1, 2)", "(1, 2)", False),  # open vs half-open interval
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("\\{1, 2\\}", "\\{2, 1\\}", True),  # sets are not
    ("3, -2", "-2, 3", True),  # nor are bare lists of solutions
    ("3, -2", "-2, 4", False),
    ("(1, 2, 3)", "(1, 2)", False),
    ("x = 1, x = -1", "\\{-1, 1\\}", True),
    ("(7)", "7", True),
    ("**42**.", "42", True),
    # words
    ("Yes", "yes", True),
    ("no", "yes", False),
    ("18 because she buys two", "18", False),
]


@pytest.mark.parametrize(("pred", "truth", "expected"), MATCH_CASES)
def test_answers_match(pred, truth, expected):
    assert answers_match(pred, truth) is expected


def test_verifier_table_is_large_and_has_negatives():
    assert len(MATCH_CASES) >= 60
    assert sum(not expected for *_, expected in MATCH_CASES) >= 15


def test_answers_match_none_and_empty():
    assert not answers_match(None, "1")
    assert not answers_match("", "")
    assert not answers_match("1", None)


# --------------------------------------------------------------------------------------
# The symbolic check: time limit, threads, laziness, cleanup


def test_pathological_symbolic_check_is_cut_off():
    answers_match("\\sqrt{2}", "\\sqrt{2}+0")  # make sure the helper is up (not timed)
    helper = sympy_worker._WORKER._proc
    start = time.monotonic()
    # 9^(9^(9^9)) has ~10^369693099 digits: sympy would compute for ever.
    assert not answers_match("9^{9^{9^{9}}}", "2", timeout=1.0)
    assert time.monotonic() - start < 1.0 + 1.0
    # The overrunning helper was killed and reaped; a fresh one serves the next check.
    assert helper.returncode is not None
    assert sympy_worker._WORKER._proc is not helper
    assert answers_match("\\sqrt{8}", "2\\sqrt{2}")
    # The same pair again (samples in a group often agree) is answered from the cache.
    replacement, start = sympy_worker._WORKER._proc, time.monotonic()
    assert not answers_match("9^{9^{9^{9}}}", "2", timeout=1.0)
    assert time.monotonic() - start < 0.5 and sympy_worker._WORKER._proc is replacement


def test_symbolic_check_from_another_thread():
    results = []
    thread = threading.Thread(
        target=lambda: results.append(answers_match("\\frac{\\sqrt{3}}{3}", "1/\\sqrt{3}"))
    )
    thread.start()
    thread.join(timeout=30)
    assert results == [True]


def test_helper_is_lazy_and_closes(monkeypatch):
    worker = sympy_worker._SympyWorker()
    monkeypatch.setattr(sympy_worker, "_WORKER", worker)
    # Strings and numbers are decided without starting sympy.
    assert answers_match("1,000", "1000") and answers_match("\\frac12", "50\\%")
    assert not answers_match("no", "yes") and not answers_match("18 apples and", "18")
    assert worker._proc is None
    assert answers_match("x(x+1)", "x^2+x")
    proc = worker._proc
    assert proc is not None and proc.poll() is None
    worker.close()
    assert worker._proc is None
    assert proc.returncode is not None  # reaped, not a zombie


def test_sympy_source_is_sanitised():
    # Anything that is not arithmetic on known names never reaches parse_expr's eval.
    for hostile in ["__import__('os')", "x.__class__", "open(1)", "lambda: 1", "a[0]", "a==b"]:
        assert answers._to_sympy_source(answers._normalize(hostile)) is None
    assert answers._to_sympy_source("2xy") == "2 x*y"


# --------------------------------------------------------------------------------------
# Built-in rewards


def test_math_reward_end_to_end():
    gsm8k_solution = "Natalia sold 48/2 = 24 clips in May.\n#### 72"
    assert math_reward(prompt="q", completion="48+24 = \\boxed{72}", answer=gsm8k_solution) == 1.0
    assert math_reward(prompt="q", completion="So 70.\n#### 70", answer="72") == 0.0
    assert math_reward(prompt="q", completion="The answer is 72.", answer=72) == 1.0
    math_solution = "Hence $\\boxed{\\frac{1}{2}}$."
    assert math_reward(prompt="q", completion="\\boxed{0.5}", answer=math_solution) == 1.0
    # No answer to extract: 0.0. Extra dataset columns are accepted and ignored.
    assert math_reward(prompt="q", completion="I do not know", answer="1", level=3) == 0.0
    assert rewards.BUILTIN_REWARDS["accuracy"] is math_reward
    with pytest.raises(RewardError, match="answer"):
        math_reward(prompt="q", completion="1", answer=None)


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("5 + 7 = 12. The answer is 12 apples.", "12", 1.0),
        ("The answer is 12, not 15 as I first thought.", "12", 1.0),
        ("The answer is 12, not 15 as I first thought.", "15", 0.0),
        ("The answer is 4 or 5.", "4", 0.0),  # a hedge is not rewarded
        ("The answer is 4 or maybe 5.", "4", 0.0),
        ("The answer is 50 percent of them.", "0.5", 1.0),
        ("The answer is $\\frac{3}{4}$ of the cake.", "0.75", 1.0),
        ("The answer is C.", "C", 1.0),
        ("The answer is (B).", "B", 1.0),
        ("The answer is Yes.", "yes", 1.0),
        ("The answer is no.", "yes", 0.0),
        ("The change is \u22124 degrees.", "-4", 1.0),
        ("The change is \u22124 degrees.", "4", 0.0),
        ("\\boxed{1,000,000}", "10^6", 1.0),
        ("\\boxed{1,000,000}", "10^5", 0.0),
    ],
)
def test_math_reward_extraction_forms(completion, answer, expected):
    assert math_reward(prompt="q", completion=completion, answer=answer) == expected


def test_exact_match_reward():
    assert exact_match_reward(prompt="", completion="so \\boxed{Paris}", answer=" Paris") == 1.0
    assert exact_match_reward(prompt="", completion="  blue \n", answer="blue") == 1.0
    assert exact_match_reward(prompt="", completion="\\boxed{0.5}", answer="1/2") == 0.0
    assert exact_match_reward(prompt="", completion="red", answer=None, reference="red") == 1.0
    assert exact_match_reward(prompt="", completion="#### 72", answer="... #### 72") == 1.0
    assert exact_match_reward(prompt="", completion="I have 3 cats", reference="I have 3 cats")
    assert exact_match_reward(prompt="", completion="I have 3 cats", answer="3 cats") == 0.0
    with pytest.raises(RewardError, match="answer"):
        exact_match_reward(prompt="", completion="x", answer=None, reference=None)


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        # [cat sat on mat] vs [cat sat on hat]: 3 common, P = R = 3/4.
        ("The cat sat on the mat.", "A cat sat on a hat", 0.75),
        # [paris is capital] vs [paris]: P = 1/3, R = 1, F1 = 2 * (1/3) / (4/3).
        ("Paris is the capital", "Paris", 0.5),
        # [x y y y] vs [y y z]: common y twice, P = 2/4, R = 2/3, F1 = 4/7.
        ("x y y y", "y y z", 4 / 7),
        ("Hello, world!", "hello world", 1.0),
        ("completely different", "nothing shared", 0.0),
        ("", "", 1.0),
        ("the", "an", 1.0),  # both empty after dropping articles
        ("word", "", 0.0),
    ],
)
def test_f1_reward(completion, reference, expected):
    assert f1_reward(prompt="p", completion=completion, reference=reference) == pytest.approx(
        expected
    )


def test_f1_reward_falls_back_to_answer():
    assert f1_reward(prompt="p", completion="blue sky", reference=None, answer="blue") == (
        pytest.approx(2 / 3)
    )
    with pytest.raises(RewardError, match="reference"):
        f1_reward(prompt="p", completion="x", reference=None)


# --------------------------------------------------------------------------------------
# Loading rewards

USER_REWARDS = """
def length_reward(prompt, completion, **kwargs):
    return len(completion) / 100

def strict(prompt, completion):
    return 1.0

NOT_A_FUNCTION = 3
"""


def test_load_builtin():
    assert load_reward("math") is math_reward
    assert load_reward("accuracy") is math_reward
    assert load_reward("exact") is exact_match_reward
    assert load_reward("f1") is f1_reward
    with pytest.raises(RewardError, match="unknown reward 'mth'"):
        load_reward("mth")


def test_load_from_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    fn = load_reward(f"{path}:length_reward")
    assert fn(prompt="p", completion="x" * 50, answer=None) == 0.5


def test_load_from_module(tmp_path, monkeypatch):
    (tmp_path / "gft_test_user_pkg.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward("gft_test_user_pkg:length_reward")
    assert fn(prompt="p", completion="x" * 10) == 0.1
    assert load_reward("mlx_gft.rewards:f1_reward") is f1_reward
    monkeypatch.delitem(sys.modules, "gft_test_user_pkg", raising=False)


def test_load_errors(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_REWARDS)
    missing = tmp_path / "nope.py"
    with pytest.raises(RewardError, match=r"nope\.py:f'.*does not exist"):
        load_reward(f"{missing}:f")
    with pytest.raises(RewardError, match="no function 'missing'.*length_reward"):
        load_reward(f"{path}:missing")
    with pytest.raises(RewardError, match="'NOT_A_FUNCTION' is a int, not a function"):
        load_reward(f"{path}:NOT_A_FUNCTION")
    with pytest.raises(RewardError, match=r"strict' must accept \*\*kwargs"):
        load_reward(f"{path}:strict")
    with pytest.raises(RewardError, match="cannot import module 'no_such_module_xyz'"):
        load_reward("no_such_module_xyz:f")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_xyz\n")
    with pytest.raises(RewardError, match=r"broken\.py:f'.*ModuleNotFoundError"):
        load_reward(f"{broken}:f")
    script = tmp_path / "script.py"
    script.write_text("import sys\nsys.exit(2)\n")
    with pytest.raises(RewardError, match=r"script\.py.*SystemExit"):
        load_reward(f"{script}:f")
    assert issubclass(RewardError, ValueError)


# --------------------------------------------------------------------------------------
# Combining and scoring

SAMPLES = [
    {"prompt": "1+1?", "completion": "\\boxed{2}", "answer": "2", "source": "a"},
    {"prompt": "2+2?", "completion": "\\boxed{5}", "answer": "4", "source": "b"},
    {"prompt": "3+3?", "completion": "it is 6", "answer": "6", "source": "c"},
]


def _source_is_a(prompt, completion, source, **kwargs):
    return 1.0 if source == "a" else 0.0  # extra dataset columns arrive as keywords


def test_score_weighted_sum_and_columns():
    loaded = load_rewards(["math", _source_is_a, "exact"], weights=[1.0, 0.5, 0.0])
    assert [r.name for r in loaded] == ["math", "_source_is_a", "exact"]
    total, columns = score(loaded, SAMPLES)
    np.testing.assert_allclose(columns["math"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(columns["_source_is_a"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(columns["exact"], [1.0, 0.0, 1.0])  # logged, weight 0
    np.testing.assert_allclose(total, [1.5, 0.0, 1.0])
    assert total.shape == (3,)


def test_default_weights_and_duplicate_names(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "r.py").write_text("def s(completion, **kw):\n    return 1.0\n")
    loaded = load_rewards([f"{tmp_path}/a/r.py:s", f"{tmp_path}/b/r.py:s"])
    assert [r.weight for r in loaded] == [1.0, 1.0]
    assert len({r.name for r in loaded}) == 2
    total, _ = score(loaded, SAMPLES[:1])
    assert total.tolist() == [2.0]
    twice = load_rewards(["math", "math"], weights=[1.0, 2.0])
    assert [r.name for r in twice] == ["math", "math#1"]
    total, columns = score(twice, SAMPLES[:1])
    assert total.tolist() == [3.0] and len(columns) == 2


def test_weight_errors():
    with pytest.raises(RewardError, match="2 reward weights for 1 rewards"):
        load_rewards(["math"], weights=[1.0, 2.0])
    with pytest.raises(RewardError, match="not a finite number"):
        load_rewards(["math"], weights=[math.nan])
    with pytest.raises(RewardError, match="at least one"):
        load_rewards([])
    with pytest.raises(RewardError, match=r"must accept \*\*kwargs"):
        load_rewards([lambda prompt, completion: 1.0])


def _returns(value):
    def bad_reward(prompt, completion, **kwargs):
        if completion == "\\boxed{5}":
            return value() if callable(value) else value
        return 1.0

    return bad_reward


def _boom():
    raise ZeroDivisionError("division by zero")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "returned None"),
        (math.nan, "returned nan"),
        (math.inf, "returned inf"),
        ("1.0", "returned '1.0'"),
        ([1.0], r"returned a list \('\[1.0\]'\)"),
        (_boom, "raised ZeroDivisionError: division by zero"),
    ],
)
def test_bad_reward_values_name_reward_and_sample(value, problem):
    loaded = (Reward(name="bad_reward", fn=_returns(value)),)
    with pytest.raises(RewardError) as info:
        score(loaded, SAMPLES)
    message = str(info.value)
    assert "'bad_reward'" in message
    assert re.search(problem, message)
    assert "sample 1" in message and "2+2?" in message and "boxed{5}" in message


def test_numpy_and_bool_results_are_numbers():
    loaded = load_rewards([lambda **kw: np.float32(0.25), lambda **kw: True])
    total, _ = score(loaded, SAMPLES[:1])
    assert total.tolist() == [1.25]


def test_sample_without_completion():
    with pytest.raises(RewardError, match="sample 0.*'completion'"):
        score(load_rewards(["math"]), [{"prompt": "p"}])


def test_long_excerpts_are_shortened():
    sample = {"prompt": "p" * 500, "completion": "\\boxed{5}", "answer": "4"}
    loaded = (Reward(name="bad_reward", fn=_returns(None)),)
    with pytest.raises(RewardError) as info:
        score(loaded, [sample])
    assert len(str(info.value)) < 300


def test_words_are_not_products_of_symbols():
    assert not answers_match("no", "on")
    assert answers._to_sympy_source("no") is None


# --------------------------------------------------------------------------------------
# The math-verify backend (`--reward math_verify`)


def test_math_verify_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if not installed
    for load in (load_reward, lambda name: load_rewards([name])):
        with pytest.raises(
            RewardError, match="'math_verify' reward needs math-verify.*pip install"
        ):
            load("math_verify")
    assert load_reward("math") is math_reward  # the default does not need it


def test_math_verify_reward():
    pytest.importorskip("math_verify")
    assert load_reward("math_verify") is rewards.math_verify_reward
    assert rewards.verifier_name(["f1", "math_verify"]) == "math_verify"
    cases = [
        ("So $\\boxed{\\dfrac{3}{4}}$.", "0.75", 1.0),
        ("The point is $(1, 2)$.", "(1,2)", 1.0),  # a bare LaTeX truth is read as math
        ("She sold \\boxed{72} clips.", "Natalia sold 48+24 = 72 clips.\n#### 72", 1.0),
        ("\\boxed{\\log_2 8}", "3", 1.0),
        ("\\boxed{\\frac{2}{3}}", "\\frac{3}{2}", 0.0),
        ("I do not know.", "12", 0.0),
    ]
    for completion, answer, expected in cases:
        got = rewards.math_verify_reward(prompt="", completion=completion, answer=answer)
        assert got == expected, (completion, answer)
    with pytest.raises(RewardError, match="answer"):
        rewards.math_verify_reward(prompt="q", completion="1", answer=None)


def test_math_verify_cannot_run_off_the_main_thread_so_it_runs_in_the_helper():
    math_verify = pytest.importorskip("math_verify")
    errors = []

    def in_thread():
        try:
            math_verify.parse("$1$")
        except ValueError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(timeout=30)
    assert errors and "threaded environment" in errors[0]  # its signal.alarm time limits
    # Under --reward-timeout every reward runs on a worker thread: the helper process
    # (whose main thread runs math-verify) makes that work.
    samples = [{"prompt": "q", "completion": "\\boxed{\\frac{1}{2}}", "answer": "0.5"}] * 2
    total, _ = score(load_rewards(["math_verify"]), samples, timeout=30)
    assert total.tolist() == [1.0, 1.0]


def test_math_verify_overrun_is_cut_off(monkeypatch):
    pytest.importorskip("math_verify")
    monkeypatch.setattr(builtin_rewards, "MATH_VERIFY_TIMEOUT", 1.0)
    rewards.math_verify_reward(prompt="", completion="\\boxed{1}", answer="1")  # helper up
    tic = time.monotonic()
    hostile = "\\boxed{9^{9^{9^{9}}}}"  # sympy would evaluate it for ever
    assert rewards.math_verify_reward(prompt="", completion=hostile, answer="2") == 0.0
    assert time.monotonic() - tic < 1.0 + 1.0
    # The killed helper's replacement loads math-verify again and answers.
    assert rewards.math_verify_reward(prompt="", completion="\\boxed{-7}", answer="-7") == 1.0


def test_the_verifier_comparison_in_the_docs_is_current():
    pytest.importorskip("math_verify")
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("_verifiers", root / "benchmarks/verifiers.py")
    verifiers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verifiers)
    table = verifiers.table()
    doc = (root / "docs" / "verifiers.md").read_text()
    assert table.splitlines()[-1] in doc  # the totals row
    assert table in doc, "rerun python benchmarks/verifiers.py and update docs/verifiers.md"
