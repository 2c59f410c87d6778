"""The math verifiers side by side on a table of answer forms with the verdict each must give.

Each case is a completion as a model writes it, the dataset's `answer` column, and
whether the completion is right. The verifiers are the two built-in rewards, run as
training runs them: `math` (mlx_gft's own extraction and comparison, mlx_gft.answers)
and `math_verify` (Hugging Face's math-verify, in the sympy helper process). A third
column, for TRL users, is math-verify as TRL's `accuracy_reward` configures it (LaTeX
answers only; None, shown as "-", when the ground truth does not parse).

    python benchmarks/verifiers.py            # markdown table and totals (docs/verifiers.md)
    python benchmarks/verifiers.py --wrong    # only the rows some verifier gets wrong
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlx_gft.rewards import math_reward, math_verify_reward  # noqa: E402


class Case(NamedTuple):
    form: str
    completion: str
    answer: str
    right: bool


GSM8K_SOLUTION = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"

CASES = [
    # plain numbers
    Case("plain number", "48 + 24 = 72 clips in all, so 72.", "72", True),
    Case("plain number", "She has 72.0 apples left.", "72", True),
    Case("plain number", "In 7 hours she earns 70.", "72", False),
    Case("plain number", "72", "720", False),
    Case("plain number", "**Answer:** 42", "42", True),
    Case("plain number", "The total cost is $18.", "18", True),
    Case("plain number", "7 bags of 5 apples: 7 x 5 = 35 apples.", "35", True),
    Case("plain number", "So 1.5 hours is 90 minutes.", "90", True),
    # \boxed
    Case("boxed", "So the result is \\boxed{18}.", "18", True),
    Case("boxed", "First \\boxed{3}, no wait: \\boxed{4}", "4", True),
    Case("boxed", "\\boxed{17}", "18", False),
    Case("boxed", "The answer is $\\boxed{\\frac{1}{2}}$", "0.5", True),
    Case("boxed", "\\boxed{12} but then \\boxed{13", "12", True),  # cut off in the last box
    Case("boxed", "\\boxed{72}", "27", False),
    Case("boxed", "\\boxed{\\text{(A)}}", "A", True),
    Case("boxed", "$\\boxed{1{,}250}$ dollars", "1250", True),
    # GSM8K ####
    Case("####", "48 + 24 = 72\n#### 72", "72", True),
    Case("####", "#### 1,000", "1000", True),
    Case("####", "So 70.\n#### 70", "72", False),
    Case("####", "#### 5\nLater: 6 eggs were left over.", "5", True),
    Case("####", "#### $18", "18", True),
    Case("####", "#### 18.00", "18", True),
    Case("#### truth", "She sold \\boxed{72} clips.", GSM8K_SOLUTION, True),
    Case("#### truth", "She sold \\boxed{24} clips.", GSM8K_SOLUTION, False),
    # "The answer is ..."
    Case("words", "The answer is 12.", "12", True),
    Case("words", "5 + 7 = 12. The answer is 12 apples.", "12", True),
    Case("words", "The answer is 13.", "12", False),
    Case("words", "The final answer is $\\frac{3}{4}$. I hope it is correct.", "0.75", True),
    Case("words", "The answer is 12, not 15 as I first thought.", "12", True),
    Case(
        "words",
        "Final Answer: The final answer is $2\\sqrt{3}$. I hope it is correct.",
        "\\sqrt{12}",
        True,
    ),  # fmt: skip
    Case("words", "The answer is: 42", "42", True),
    Case("words", "Therefore, x = 5.", "5", True),
    Case("words", "x = 2 or x = 3", "2, 3", True),
    # fractions
    Case("fraction", "The answer is 1/2.", "\\frac{1}{2}", True),
    Case("fraction", "\\boxed{3/4}", "0.75", True),
    Case("fraction", "\\boxed{\\frac{2}{3}}", "\\frac{3}{2}", False),
    Case("fraction", "\\boxed{\\frac{1}{3}}", "0.33", False),
    Case("fraction", "\\boxed{0.75}", "\\frac{3}{5}", False),
    Case("\\frac", "\\boxed{-\\frac{1}{2}}", "\\frac12", False),
    Case("\\dfrac", "\\boxed{-\\dfrac{7}{2}}", "-3.5", True),
    Case("\\frac", "\\boxed{\\frac{6}{8}}", "\\frac{3}{4}", True),
    Case("\\frac", "\\boxed{-\\frac{1}{2}}", "-0.5", True),
    Case("\\frac", "\\boxed{\\frac12}", "0.5", True),
    Case("\\frac", "\\boxed{2\\frac{1}{2}}", "2.5", True),  # a mixed number
    Case("\\dfrac", "\\boxed{\\dfrac{3}{4}}", "3/4", True),
    Case("\\dfrac", "\\boxed{\\tfrac{1}{3}}", "\\frac13", True),
    Case("\\dfrac", "\\boxed{\\dfrac{5}{4}}", "\\frac{4}{5}", False),
    # units
    Case("units", "She pays \\boxed{18 \\text{ dollars}}.", "18", True),
    Case("units", "The answer is 5 cm.", "5", True),
    Case("units", "The area is \\boxed{12 \\text{ cm}^2}.", "12", True),
    Case("units", "The angle is \\boxed{30^\\circ}.", "30", True),
    Case("units", "The answer is 3 hours.", "3", True),
    Case("units", "The answer is 5 cm.", "6", False),
    Case("units", "It costs \\boxed{\\$18.50}.", "18.5", True),
    Case("units", "\\boxed{45^{\\circ}}", "45", True),
    Case("units", "The answer is 12 meters.", "12", True),
    Case("units", "\\boxed{8\\text{ inches}}", "8", True),
    # LaTeX expressions
    Case("LaTeX", "\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
    Case("LaTeX", "\\boxed{2\\sqrt{3}}", "\\sqrt{12}", True),
    Case("LaTeX", "\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    Case("LaTeX", "\\boxed{\\frac{\\pi}{2}}", "\\pi/2", True),
    Case("LaTeX", "\\boxed{x^2+2x+1}", "(x+1)^2", True),
    Case("LaTeX", "\\boxed{x^2-1}", "x^2+1", False),
    Case("LaTeX", "\\boxed{2^{10}}", "1024", True),
    Case("LaTeX", "$\\boxed{4 \\times 10^{3}}$", "4000", True),
    Case("LaTeX", "\\boxed{3+4i}", "4+3i", False),
    Case("LaTeX", "\\boxed{\\infty}", "\\infty", True),
    Case("LaTeX", "\\boxed{\\log_2 8}", "3", True),
    Case("LaTeX", "\\boxed{\\binom{5}{2}}", "10", True),
    Case(
        "LaTeX",
        "\\boxed{\\begin{pmatrix} 2/4 \\\\ 1 \\end{pmatrix}}",
        "\\begin{pmatrix} 1/2 \\\\ 1 \\end{pmatrix}",
        True,
    ),  # fmt: skip
    Case("LaTeX", "\\boxed{y = 2x + 3}", "2x+3", True),
    Case("LaTeX", "\\boxed{x^2}", "x^3", False),
    Case("LaTeX", "\\boxed{1.5 \\times 10^{-3}}", "0.0015", True),
    Case("LaTeX", "\\boxed{\\sqrt{2}}", "1.41421356", True),
    Case("LaTeX", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{1}{2}\\sqrt{3}", True),
    # thousands separators
    Case("thousands", "The total is \\boxed{1,000}.", "1000", True),
    Case("thousands", "It costs $1,250.", "1250", True),
    Case("thousands", "\\boxed{12,345,678}", "12345678", True),
    Case("thousands", "\\boxed{1{,}000}", "1000", True),
    Case("thousands", "The answer is 1,000.", "100", False),
    Case("thousands", "The answer is 100.", "1000", False),
    Case("thousands", "\\boxed{1,000,000}", "10^6", True),
    # decimals
    Case("decimal", "\\boxed{0.5}", "\\frac{1}{2}", True),
    Case("decimal", "\\boxed{18.00}", "18", True),
    Case("decimal", "\\boxed{1.001}", "1", False),
    Case("decimal", "The answer is 12.5.", "12", False),
    # percentages
    Case("percent", "\\boxed{50\\%}", "50", True),
    Case("percent", "The answer is 50%.", "0.5", True),
    Case("percent", "The answer is 25 percent.", "25\\%", True),
    Case("percent", "\\boxed{5\\%}", "50", False),
    Case("percent", "\\boxed{10\\%}", "0.1", True),
    Case("percent", "\\boxed{20\\%}", "0.25", False),
    # negative numbers
    Case("negative", "The temperature drops to \\boxed{-7}.", "-7", True),
    Case("negative", "\\boxed{-7}", "7", False),
    Case("negative", "The change is \u22124 degrees.", "-4", True),  # a unicode minus
    Case("negative", "\\boxed{y = -2}", "-2", True),
    Case("negative", "\\boxed{-3}", "3", False),
    Case("negative", "The answer is -12.", "-12", True),
    # sets, tuples, intervals
    Case("tuple", "\\boxed{(1, 2)}", "(1,2)", True),
    Case("tuple", "\\boxed{(2, 1)}", "(1, 2)", False),
    Case("tuple", "\\boxed{\\left( \\frac{1}{2}, 3 \\right)}", "(0.5, 3)", True),
    Case("tuple", "\\boxed{(3, -1)}", "(3,-1)", True),
    Case("interval", "\\boxed{(1,2]}", "(1,2)", False),
    Case("set", "\\boxed{\\{1,2,3\\}}", "\\{1,2\\}", False),
    Case("set", "\\boxed{\\{1, 2\\}}", "\\{2, 1\\}", True),
    Case("set", "The solutions are \\boxed{3, -2}", "-2, 3", True),
    Case("set", "\\boxed{3, -2}", "-2, 4", False),
    Case("interval", "\\boxed{[1, 2)}", "(1, 2)", False),
    Case("interval", "\\boxed{(-\\infty, 3]}", "(-\\infty,3]", True),
    Case("interval", "\\boxed{(4,5) \\cup (1,3)}", "(1,3) \\cup (4,5)", True),
    # words and multiple choice
    Case("words", "The answer is Yes.", "yes", True),
    Case("words", "The answer is no.", "yes", False),
    Case("choice", "The answer is (B).", "B", True),
    Case("choice", "The answer is (C).", "B", False),
    Case("choice", "The answer is C.", "C", True),
    Case("words", "\\boxed{\\text{Paris}}", "Paris", True),
    # no answer at all
    Case("none", "I do not know.", "12", False),
    Case("none", "", "5", False),
    Case("none", "So the answer is \\boxed{", "5", False),
    Case("none", "18 because she buys two more, so 20.", "18", False),
]


def ours(case: Case) -> bool:
    return math_reward(prompt="", completion=case.completion, answer=case.answer) == 1.0


def math_verify(case: Case) -> bool:
    return math_verify_reward(prompt="", completion=case.completion, answer=case.answer) == 1.0


def trl_accuracy(case: Case) -> bool | None:
    """TRL's `accuracy_reward` settings: the ground truth parsed as written, the completion
    read for LaTeX only (boxed first, no bare numbers). Runs here, on the main thread."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    gold = parse(case.answer, extraction_mode="first_match")
    if not gold:
        return None  # TRL skips the sample
    normalization = NormalizationConfig(
        nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
    )
    config = LatexExtractionConfig(
        normalization_config=normalization,
        boxed_match_priority=0,
        try_extract_without_anchor=False,
    )
    pred = parse(case.completion, extraction_config=[config], extraction_mode="first_match")
    return bool(verify(gold, pred))


def _cell(text: str, limit: int = 46) -> str:
    text = " ".join(text.split()) or "(empty)"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _mark(verdict: bool | None, right: bool) -> str:
    if verdict is None:
        return "-"
    return "ok" if verdict == right else "**wrong**"


def table(only_wrong: bool = False) -> str:
    verifiers = {"math": ours, "math_verify": math_verify, "TRL accuracy_reward": trl_accuracy}
    results = {name: [fn(case) for case in CASES] for name, fn in verifiers.items()}
    lines = [
        "| form | completion | answer | right | " + " | ".join(verifiers) + " |",
        "|---|---|---|---|" + "---|" * len(verifiers),
    ]
    for i, case in enumerate(CASES):
        marks = [_mark(results[name][i], case.right) for name in verifiers]
        if only_wrong and all(m == "ok" for m in marks):
            continue
        cells = [case.form, _cell(case.completion), _cell(case.answer, 30), str(case.right)]
        lines.append("| " + " | ".join(cells + marks) + " |")
    totals = [
        f"{sum(v == c.right for v, c in zip(results[name], CASES, strict=True))}/{len(CASES)}"
        for name in verifiers
    ]
    lines.append("| **right** | | | | " + " | ".join(f"**{t}**" for t in totals) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wrong", action="store_true", help="only rows some verifier gets wrong")
    print(table(parser.parse_args().wrong))


if __name__ == "__main__":
    main()
