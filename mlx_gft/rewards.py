"""Rewards: the math verifier, exact / F1 rewards, user rewards, and weighted scoring.

A reward is any callable ``f(*, prompt, completion, answer, reference, **columns) -> float``:
it receives the prompt, one group member's completion, the dataset's ground-truth
``answer`` and expert ``reference`` (either may be None) and every extra dataset column,
so it must accept ``**kwargs``. GFT scores every member of a group (expert, teachers and
samples) with the same reward, so a verifier that is too strict pushes correct expert
answers down and one that is too lenient rewards wrong samples.

The math verifier follows the paper's reference (section 2 of the spec): take the last
``\\boxed{...}``, else ``#### N``, else "the answer is ...", else the last number; then
compare as normalised strings, as numbers (relative tolerance 1e-4, percentages), and
finally symbolically with sympy. Sympy can spin for minutes on a hostile expression
(``9^{9^{9^9}}``) and ``signal.alarm`` only works on the main thread, so the symbolic
check runs in a persistent helper process that is killed (and lazily restarted) when it
overruns; an overrun counts as "not equal". The helper is started with ``subprocess``
(fork + immediate exec, safe next to MLX's threads, and it does not re-import the
caller's ``__main__`` as multiprocessing's "spawn" would) and only when the cheap
checks cannot decide.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import inspect
import json
import math
import numbers
import os
import re
import select
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BUILTIN_REWARDS",
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
# Answer extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?\s*([^\n]+)", re.IGNORECASE)
# A sign only when it is not a hyphen inside a word or a range ("3-4", "x-1").
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)])-)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:/\d+)?%?"
)


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


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, or None when there is none.

    Tries, in order: the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces kept), the
    last GSM8K ``#### N``, the last "the answer is ...", the last number in the text.
    """
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    gsm = [m.group(1).strip() for m in _GSM8K_RE.finditer(text)]
    if gsm and gsm[-1]:
        return gsm[-1]
    said = [_first_sentence(m.group(1)) for m in _ANSWER_IS_RE.finditer(text)]
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
_UNIT_RE = re.compile(
    rf"(?:(?<=[\d\s}}])(?:{_UNIT_WORDS})|(?<=\s)[mgshl])(?:\^\{{?[23]\}}?)?\.?\s*$", re.I
)
_UNICODE = {"\u2212": "-", "\u00d7": "\\times ", "\u00f7": "\\div ", "\u03c0": "\\pi ",
            "\u221e": "\\infty ", "\u2009": " ", "\u00a0": " "}  # fmt: skip
_LEADING_VAR_RE = re.compile(r"^[a-zA-Z]\s*=\s*(?=\S)")


def _normalize(s: str) -> str:
    """A canonical spelling of an answer: no $, \\text, \\left, spaces, units, final period."""
    s = s.strip().rstrip(".").strip("*`")  # markdown bold / code around the answer
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
    return s.rstrip(".")


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
# LaTeX -> sympy source, then the time-limited symbolic check

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
_GREEK = {"alpha", "beta", "gamma", "theta", "phi", "mu", "sigma", "omega", "lamda"}
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


def _sympy_equal(a: str, b: str) -> bool:
    """Runs in the helper process: are the sympy sources a and b the same value?"""
    import sympy
    from sympy.parsing.sympy_parser import (
        implicit_multiplication,
        parse_expr,
        standard_transformations,
    )

    names: dict[str, object] = {c: sympy.Symbol(c) for c in string.ascii_letters}
    names.update({g: sympy.Symbol(g) for g in _GREEK}, e=sympy.E, i=sympy.I)
    transformations = (*standard_transformations, implicit_multiplication)
    x = parse_expr(a, local_dict=names, transformations=transformations)
    y = parse_expr(b, local_dict=names, transformations=transformations)
    if x == y:
        return True
    if not getattr(x, "free_symbols", True) and not getattr(y, "free_symbols", True):
        try:  # numbers: the same relative tolerance as the cheap numeric check
            u, v = complex(sympy.N(x, 30)), complex(sympy.N(y, 30))
            return abs(u - v) <= 1e-4 * max(abs(u), abs(v))
        except (TypeError, ValueError, OverflowError):
            pass
    return sympy.simplify(x - y) == 0


def _worker_main() -> None:
    """The helper's loop: one JSON request per line on stdin, one answer per line."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # nothing a library prints (Python or C) may corrupt the protocol
    sys.stdout = sys.stderr
    parent = os.getppid()

    def orphan_watch() -> None:  # exit if the trainer dies while we are mid-simplify
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphan_watch, daemon=True).start()
    _sympy_equal("1", "1")  # import and warm sympy before saying we are ready
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            ok = bool(_sympy_equal(request["a"], request["b"]))
        except Exception:  # unparsable, unsupported or overflowing: not equal
            ok = False
        out.write(json.dumps({"ok": ok}) + "\n")
        out.flush()


# Loads this file by path under a private name: no dependency on how (or whether) the
# package is installed, and the user's working directory cannot shadow a module.
_BOOTSTRAP = (
    "import importlib.util, sys; sys.path.pop(0); "
    "spec = importlib.util.spec_from_file_location('_mlx_gft_sympy_worker', sys.argv[1]); "
    "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; "
    "spec.loader.exec_module(mod); mod._worker_main()"
)


class _SympyWorker:
    """A persistent helper process for the symbolic check, killed when it overruns."""

    startup_timeout = 60.0  # importing sympy on a busy laptop; not charged to a check
    cache_size = 4096

    def __init__(self) -> None:
        self.disabled_reason: str | None = None
        # Samples in a group often agree, so the same pair comes back; a pair that timed
        # out would otherwise cost a full timeout and a restart every time.
        self._cache: dict[tuple[str, str], bool] = {}
        self.forget()

    def forget(self) -> None:
        """Drop the helper without touching it (in a forked child it is the parent's)."""
        self._lock = threading.Lock()  # a fork may have copied it in the locked state
        self._proc: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._buffer = b""

    def equal(self, a: str, b: str, timeout: float) -> bool:
        with self._lock:
            if (a, b) not in self._cache:
                if len(self._cache) >= self.cache_size:
                    self._cache.pop(next(iter(self._cache)))  # the oldest entry
                self._cache[a, b] = self._ask(a, b, timeout)
            return self._cache[a, b]

    def _ask(self, a: str, b: str, timeout: float) -> bool:
        if self.disabled_reason is not None or not self._ensure_ready():
            return False
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps({"a": a, "b": b}) + "\n").encode())
            self._proc.stdin.flush()
            line = self._readline(timeout)
        except OSError:
            line = None
        if line is None:
            # Overran (or died): kill it and start the replacement right away, so its
            # sympy import overlaps with training instead of delaying the next check.
            self._stop()
            self._spawn()
            return False
        return bool(json.loads(line)["ok"])

    def _spawn(self) -> None:
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(Path(__file__).resolve())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            self._disable(f"cannot start the sympy helper: {exc}")

    def _ensure_ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            self._stop()  # it died between checks
        if self._proc is None:
            self._spawn()
            if self._proc is None:
                return False
        if not self._ready:
            if self._readline(self.startup_timeout) != b"ready":
                self._stop()
                # Without sympy the cheap checks still work; do not pay a start-up per call.
                self._disable("the sympy helper did not start (is sympy installed?)")
                return False
            self._ready = True
        return True

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        print(f"mlx_gft.rewards: {reason}; symbolic answer checks are off", file=sys.stderr)

    def _readline(self, timeout: float) -> bytes | None:
        """One line from the helper within `timeout` seconds, None on timeout or EOF."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.strip()

    def _stop(self) -> None:
        proc, self._proc, self._ready, self._buffer = self._proc, None, False, b""
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()  # reap it: no zombie
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            self._stop()


_WORKER = _SympyWorker()
atexit.register(_WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER.forget)


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
    return _WORKER.equal(a, b, remaining)


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
