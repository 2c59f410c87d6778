"""The math verifier: extract a completion's final answer and compare it with the truth.

It follows the paper's reference (section 2 of the spec): take the last
``\\boxed{...}``, else ``#### N``, else "the answer is ..." (the number or expression at
its start when words follow it), else the last number; then
compare as normalised strings, as numbers (relative tolerance 1e-4, percentages), and
finally symbolically with sympy. The symbolic check runs, under a time limit, in the
helper process of :mod:`mlx_gft.sympy_worker`, and only when the cheap checks cannot decide.
"""

from __future__ import annotations

import math
import re
import time

from . import sympy_worker
from .sympy_worker import _GREEK

__all__ = ["answers_match", "extract_answer"]


# --------------------------------------------------------------------------------------
# Answer extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?\s*([^\n]+)", re.IGNORECASE)
# A sign only when it is not a hyphen inside a word or a range ("3-4", "x-1").
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:/\d+)?%?"
)
# Dashes that typeset text and word processors put for a minus sign (U+2212 minus, U+2013
# en dash, ...): read as "-", so the number pattern's own rule tells a sign ("-4") from a
# range ("3-4").
_MINUS = str.maketrans(dict.fromkeys("\u2212\u2012\u2013\ufe63\uff0d", "-"))


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Contents of the {...} group opening at text[start] and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None  # unbalanced: the text was cut off inside the group


def _last_boxed(text: str) -> str | None:
    for m in reversed(list(_BOX_RE.finditer(text))):
        rest = text[m.end() :]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            group = _braced(stripped, 0)
            if group is not None and group[0].strip():
                return group[0].strip()
        else:  # "\boxed 5": the argument is the next token
            token = re.match(r"\s+([^\s$]+)", rest)
            if token:
                return token.group(1)
    return None


def _first_sentence(s: str) -> str:
    # "18. So she pays ..." -> "18"; a decimal point is followed by a digit, not a space.
    return re.split(r"\.(?:\s|$)", s, maxsplit=1)[0].strip()


# Words that do not end an answer written out after "the answer is": the second half of
# a hedge ("4 or 5" must stay "4 or 5", which matches nothing) and math spelt in words.
_MATH_WORDS = {"or", "and", "plus", "minus", "times", "over", "divided", "by", "squared",
               "cubed", "to", "mod", "percent", "infinity"}  # fmt: skip
_WORD_RE = re.compile(r"[A-Za-z]{2}")
_TOKEN_RE = re.compile(r"\\(?:[A-Za-z]+|.)|[A-Za-z]+|.", re.DOTALL)


def _is_math_word(word: str) -> bool:
    w = word.lower()
    return (
        w in _MATH_WORDS
        or w in _LATEX_NAMES
        or w in _SYMPY_FUNCS
        or w in _SYMPY_CONSTS
        or _UNIT_WORD_RE.fullmatch(word) is not None  # "5 cm": _normalize drops the unit
    )


def _answer_head(phrase: str) -> str:
    """The answer at the start of what follows "the answer is", without the words after
    it: "12 apples" -> "12", "12, not 15 as I thought" -> "12".

    A word ends the answer when it stands on its own (after a space or "("), outside
    braces and $...$, and is neither math nor a unit. Only a head with a digit or LaTeX in
    it is cut off: "Yes", "C" or "Paris" is a word answer, read whole as before.
    """
    if not _WORD_RE.search(phrase):  # "12", "C", "-3/4": nothing to cut, the common case
        return phrase
    depth, in_math, prev = 0, False, " "
    for m in _TOKEN_RE.finditer(phrase):
        token = m.group(0)
        if token.isalpha() and len(token) > 1 and not depth and not in_math:
            if prev in " (" and not _is_math_word(token):
                head = phrase[: m.start()].rstrip(" ,;:(")
                return head if re.search(r"[\d$\\]", head) else phrase
        depth += token == "{"
        depth -= token == "}"
        in_math ^= token == "$"
        prev = token[-1] if not token.isspace() else " "
    return phrase


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, or None when there is none.

    Tries, in order: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces kept), the
    last GSM8K ``#### N``, the last "the answer is ..." (up to the words after the answer),
    the last number in the text.
    """
    if not text:
        return None
    text = text.translate(_MINUS)
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    gsm = [m.group(1).strip() for m in _GSM8K_RE.finditer(text)]
    if gsm and gsm[-1]:
        return gsm[-1]
    said = [_answer_head(_first_sentence(m.group(1))) for m in _ANSWER_IS_RE.finditer(text)]
    if said and said[-1]:
        return said[-1]
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def _ground_truth(answer: object) -> str:
    """The answer column as a string; a GSM8K / MATH solution is reduced to its answer."""
    text = str(answer).strip()
    if "\\boxed" in text or "\\fbox" in text:
        return _last_boxed(text) or text
    gsm = [m.group(1).strip() for m in _GSM8K_RE.finditer(text)]
    return gsm[-1] if gsm and gsm[-1] else text


# --------------------------------------------------------------------------------------
# Normalisation and the cheap checks

_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}"
)
_SPACING_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])|\\[!,;:> ]|\\q?quad|~")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°")
# Units and counted things stripped from the end of an answer ("5 dollars", "3 cm^2").
# Single letters (m, g, s, h, l) only after a space, so "2x" or a variable answer survive.
_UNIT_WORDS = (
    r"dollars?|cents?|euros?|pounds?|yuan|rupees?|"
    r"square|sq|cubic|"
    r"(?:milli|centi|kilo)?(?:meters?|metres?|grams?|liters?|litres?)|"
    r"mm|cm|km|kg|mg|ml|lbs?|oz|ounces?|inch(?:es)?|feet|foot|ft|yards?|yd|miles?|mph|"
    r"hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|"
    r"degrees?|units?|people|persons?|items?|pieces?|points?|times"
)
_UNIT_WORD_RE = re.compile(_UNIT_WORDS, re.I)
_UNIT_RE = re.compile(
    rf"(?:(?<=[\d\s}}])(?:{_UNIT_WORDS})|(?<=\s)[mgshl])(?:\^\{{?[23]\}}?)?\.?\s*$", re.I
)
_UNICODE = {"\u00d7": "\\times ", "\u00f7": "\\div ", "\u03c0": "\\pi ",
            "\u221e": "\\infty ", "\u2009": " ", "\u00a0": " "}  # fmt: skip
_LEADING_VAR_RE = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?")


def _normalize(s: str) -> str:
    """A canonical spelling of an answer: no $, \\text, \\left, spaces, units, final period."""
    s = s.strip().rstrip(".").strip("*`")  # markdown bold / code around the answer
    s = s.translate(_MINUS)
    for char, latex in _UNICODE.items():
        s = s.replace(char, latex)
    prev = None
    while prev != s:  # \text{\textbf{..}} nests
        prev, s = s, _TEXT_CMD_RE.sub(r"\1", s)
    s = _SPACING_RE.sub(" ", s)
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("{,}", ",").replace("\\%", "%").replace("\\$", "").replace("$", "")
    s = s.replace("\\{", "{").replace("\\}", "}")
    s = re.sub(r"\\[()\[\]]", "", s)  # \( \) \[ \] math delimiters
    s = re.sub(r"\bpercent\b", "%", s, flags=re.I)
    s = s.strip().rstrip(".").strip()
    prev = None
    while prev != s:  # "5 square feet" -> "5 square" -> "5"
        prev, s = s, _UNIT_RE.sub("", s).strip()
    s = _LEADING_VAR_RE.sub("", s)
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)  # multiple choice: "(B)" == "B"
    # Mixed numbers written with a space ("2 1/2") before the spaces go.
    s = re.sub(r"(\d)\s+(\d+)\s*/\s*(\d+)", r"\1\\frac{\2}{\3}", s)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    s = s.rstrip(".")
    # "1,000,000" is one number, not a list of three: without its separators it also
    # reaches the symbolic check as a number ("1,000,000" == "10^6").
    return s.replace(",", "") if _THOUSANDS_RE.fullmatch(s) else s


_DECIMAL_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:e[+-]?\d+)?|[+-]?\.\d+")
_FRAC_RE = re.compile(r"([+-]?)(\d*)\\frac\{([^{}]+)\}\{([^{}]+)\}")


def _decimal(s: str) -> float | None:
    if not _DECIMAL_RE.fullmatch(s):
        return None
    return float(s.replace(",", ""))


def _parse_number(s: str) -> tuple[float, bool] | None:
    """(value, written as a percentage) for a normalised plain number, fraction or mixed
    number; None for anything else (expressions go to the symbolic check)."""
    percent = s.endswith("%")
    if percent:
        s = s[:-1]
    value = _decimal(s)
    frac = _FRAC_RE.fullmatch(s)
    if value is None and frac:
        sign, whole, num, den = frac.groups()
        n, d = _decimal(num), _decimal(den)
        if n is None or d is None or d == 0:
            return None
        value = (float(whole) if whole else 0.0) + n / d
        value = -value if sign == "-" else value
    if value is None and s.count("/") == 1:
        num, den = s.split("/")
        n, d = _decimal(num), _decimal(den)
        if n is None or d is None or d == 0:
            return None
        value = n / d
    return None if value is None else (value, percent)


def _numbers_match(a: tuple[float, bool], b: tuple[float, bool]) -> bool:
    # A percentage matches both of its spellings: 50% == 50 == 0.5. Without a % sign on
    # either side 50 and 0.5 stay different (the reference's always-on x100 variants
    # would also reward "5" for a truth of 500).
    candidates = {a[0]} | ({a[0] / 100} if a[1] or b[1] else set())
    targets = {b[0]} | ({b[0] / 100} if a[1] or b[1] else set())
    return any(math.isclose(x, y, rel_tol=1e-4) for x in candidates for y in targets)


_OPEN = "([{"
_CLOSE = ")]}"


def _split_top_level(s: str) -> list[str]:
    """Split at commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _as_sequence(s: str) -> tuple[str, list[str]] | None:
    """(brackets, elements) for a tuple / interval / set / bare list, else None."""
    brackets = ""
    if len(s) >= 2 and s[0] in "([{" and s[-1] in ")]}" and _encloses(s):
        brackets, s = s[0] + s[-1], s[1:-1]
    parts = _split_top_level(s)
    if len(parts) < 2:  # "(x+1)" is an expression, not a 1-tuple
        return None
    return brackets.replace("{}", ""), parts  # a set is written like a bare list


def _encloses(s: str) -> bool:
    """Whether s[0] and s[-1] are a pair of brackets around the whole string."""
    depth = 0
    for i, ch in enumerate(s):
        depth += ch in _OPEN
        depth -= ch in _CLOSE
        if depth == 0 and i < len(s) - 1:
            return False
    return depth == 0


# --------------------------------------------------------------------------------------
# LaTeX -> sympy source

_LATEX_NAMES = {
    "pi": " pi ", "infty": " oo ", "infinity": " oo ", "cdot": "*", "times": "*",
    "div": "/", "sin": " sin", "cos": " cos", "tan": " tan", "cot": " cot", "sec": " sec",
    "csc": " csc", "arcsin": " asin", "arccos": " acos", "arctan": " atan", "sinh": " sinh",
    "cosh": " cosh", "tanh": " tanh", "ln": " log", "log": " log", "exp": " exp",
    "alpha": " alpha ", "beta": " beta ", "gamma": " gamma ", "theta": " theta ",
    "phi": " phi ", "mu": " mu ", "sigma": " sigma ", "omega": " omega ",
    "lambda": " lamda ",  # "lambda" is a Python keyword
}  # fmt: skip
# The only names the sympy source may contain; every other letter run is split into
# single-letter symbols. With no quotes, underscores, brackets or attribute access left,
# the string that parse_expr evaluates can only do arithmetic on sympy objects.
_SYMPY_FUNCS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan",
                "sinh", "cosh", "tanh", "log", "exp", "binomial"}  # fmt: skip
_SYMPY_CONSTS = {"pi", "oo"}
_MAX_SYMPY_CHARS = 400


def _group(s: str, i: int) -> tuple[str, int]:
    """The argument of a LaTeX command at s[i]: a {...} group, a \\command or one char."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise ValueError("missing argument")
    if s[i] == "{":
        group = _braced(s, i)
        if group is None:
            raise ValueError("unbalanced braces")
        return group
    if s[i] == "\\":
        m = re.match(r"\\[A-Za-z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
    return s[i], i + 1


def _latex_to_sympy_source(s: str) -> str:
    r"""Rewrite \frac, \sqrt, ^, \cdot, \pi ... as sympy source; raises on anything else."""
    out: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            m = re.match(r"\\([A-Za-z]+)", s[i:])
            if not m:
                raise ValueError(f"bad command at {s[i:]!r}")
            name, i = m.group(1), i + m.end()
            if name == "frac":
                num, i = _group(s, i)
                den, i = _group(s, i)
                out.append(f"(({_latex_to_sympy_source(num)})/({_latex_to_sympy_source(den)}))")
            elif name == "binom":
                n, i = _group(s, i)
                k, i = _group(s, i)
                out.append(f" binomial({_latex_to_sympy_source(n)},{_latex_to_sympy_source(k)})")
            elif name == "sqrt":
                index = None
                if s[i : i + 1] == "[":
                    close = s.find("]", i)
                    if close < 0:
                        raise ValueError("unbalanced \\sqrt[")
                    index, i = s[i + 1 : close], close + 1
                arg, i = _group(s, i)
                arg = _latex_to_sympy_source(arg)
                if index is None:
                    out.append(f" sqrt({arg})")
                else:
                    out.append(f"(({arg})**(1/({_latex_to_sympy_source(index)})))")
            elif name in _LATEX_NAMES:
                out.append(_LATEX_NAMES[name])
            else:
                raise ValueError(f"unsupported command \\{name}")
        elif ch == "^":
            if s[i + 1 : i + 2] in ("{", "\\"):
                arg, i = _group(s, i + 1)
                out.append(f"**({_latex_to_sympy_source(arg)})")
            else:  # plain "2^10" / "x^(n+1)": the exponent is what follows
                out.append("**")
                i += 1
        elif ch == "{":
            arg, i = _group(s, i)
            out.append(f"({_latex_to_sympy_source(arg)})")
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _to_sympy_source(s: str) -> str | None:
    """Safe sympy source for a normalised answer, or None when it is not an expression."""
    try:
        src = _latex_to_sympy_source(s)
    except (ValueError, RecursionError):
        return None
    if not src or len(src) > _MAX_SYMPY_CHARS:
        return None
    if not re.fullmatch(r"[0-9A-Za-z+\-*/()., ]*", src) or re.search(r"[A-Za-z)]\s*\.", src):
        return None
    if src.isalpha() and src not in _SYMPY_CONSTS:
        return None  # a bare word or symbol: the string check decided ("no" is not n*o)

    def split_letters(m: re.Match[str]) -> str:
        word = m.group(0)
        if word in _SYMPY_FUNCS or word in _SYMPY_CONSTS or word in _GREEK:
            return f" {word} "
        if len(word) > 3:  # prose ("18 because ..."), not a product of variables
            raise ValueError(word)
        return " " + "*".join(word) + " "  # "xy" -> "x*y"

    try:
        return re.sub(r"[A-Za-z]+", split_letters, src).strip()
    except ValueError:
        return None


# --------------------------------------------------------------------------------------
# Comparing answers


def answers_match(pred: str, truth: str, timeout: float = 2.0) -> bool:
    """Whether an extracted answer equals the ground truth.

    Equal as normalised strings, or as numbers (relative tolerance 1e-4; percentages,
    thousands separators, fractions, mixed numbers), or element-wise for tuples /
    intervals / lists, or symbolically (sympy ``simplify(a - b) == 0``) within `timeout`
    seconds; a symbolic check that overruns counts as not equal.
    """
    if pred is None or truth is None:
        return False
    deadline = time.monotonic() + timeout
    return _match(_normalize(str(pred)), _normalize(str(truth)), deadline)


def _match(p: str, t: str, deadline: float) -> bool:
    if not p or not t:
        return False
    if p.lower() == t.lower():
        return True
    p_num, t_num = _parse_number(p), _parse_number(t)
    if p_num is not None and t_num is not None:
        return _numbers_match(p_num, t_num)
    p_seq, t_seq = _as_sequence(p), _as_sequence(t)
    if p_seq is not None or t_seq is not None:
        return _sequences_match(p_seq, t_seq, deadline)
    a, b = _to_sympy_source(p), _to_sympy_source(t)
    remaining = deadline - time.monotonic()
    if a is None or b is None or remaining <= 0:
        return False
    return sympy_worker._WORKER.equal(a, b, remaining)


def _sequences_match(
    p: tuple[str, list[str]] | None, t: tuple[str, list[str]] | None, deadline: float
) -> bool:
    if p is None or t is None or p[0] != t[0] or len(p[1]) != len(t[1]) or len(p[1]) > 32:
        return False
    brackets = p[0]
    p_items, t_items = [_normalize(x) for x in p[1]], [_normalize(x) for x in t[1]]
    if brackets in ("()", "[]", "(]", "[)"):  # tuples, points and intervals are ordered
        return all(_match(a, b, deadline) for a, b in zip(p_items, t_items, strict=True))
    # Sets and bare lists of solutions ("-2, 3"): any order, each element used once.
    left = list(t_items)
    for a in p_items:
        hit = next((k for k, b in enumerate(left) if _match(a, b, deadline)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True
