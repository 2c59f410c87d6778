"""The time-limited symbolic check: a persistent sympy helper process.

Sympy can spin for minutes on a hostile expression (``9^{9^{9^9}}``) and ``signal.alarm``
only works on the main thread, so the symbolic check runs in a persistent helper process
that is killed (and lazily restarted) when it overruns; an overrun counts as "not equal".
The helper is started with ``subprocess`` (fork + immediate exec, safe next to MLX's
threads, and it does not re-import the caller's ``__main__`` as multiprocessing's "spawn"
would) and only when the cheap checks cannot decide.

The helper also runs Hugging Face's math-verify (the ``math_verify`` reward): its own
time limits use ``signal.alarm``, which works only on a main thread, and rewards run on a
worker thread under ``--reward-timeout``; in the helper they run on its main thread, and
the kill on overrun still bounds them.

The helper runs this very file, loaded by path outside the package, so it may import only
the standard library (and sympy and math-verify, inside the helper), never the rest of
``mlx_gft``.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

# Names the helper binds to sympy symbols. mlx_gft.answers lets exactly these through to
# the sympy source; they live here because the helper cannot import that module.
_GREEK = {"alpha", "beta", "gamma", "theta", "phi", "mu", "sigma", "omega", "lamda"}


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


# math-verify's own limits (whole seconds, signal.alarm in the helper's main thread): a
# slow parse or comparison returns "no match" instead of costing a helper restart.
_MATH_VERIFY_SECONDS = 2


def _math_verify(gold: str, completion: str) -> bool:
    """Runs in the helper process: does math-verify find `gold` in `completion`?"""
    from math_verify import parse, verify

    limit = _MATH_VERIFY_SECONDS
    # A bare ground truth ("(1,2)", "\\frac{3}{4}") is LaTeX math without its delimiters;
    # math-verify only reads LaTeX between them. A worked solution is parsed as written.
    bare = not any(mark in gold for mark in ("$", "\\boxed", "####", "\n"))
    gold_parsed = parse(f"${gold}$", parsing_timeout=limit) if bare else []
    gold_parsed = gold_parsed or parse(gold, parsing_timeout=limit)
    pred_parsed = parse(completion, parsing_timeout=limit)
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=limit))


def _handle(request: dict) -> dict:
    """Runs in the helper process: one request -> one answer (unsupported input: not equal)."""
    op = request.get("op", "equal")
    if op == "load_math_verify":
        try:
            import math_verify  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install of its dependencies
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True}
    try:
        if op == "math_verify":
            return {"ok": _math_verify(request["gold"], request["pred"])}
        return {"ok": bool(_sympy_equal(request["a"], request["b"]))}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # unparsable, unsupported, overflowing, or math-verify's
        return {"ok": False}  # TimeoutException (a BaseException): not equal


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
        out.write(json.dumps(_handle(json.loads(line))) + "\n")
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
        self._math_verify_loaded = False
        self._buffer = b""

    def equal(self, a: str, b: str, timeout: float) -> bool:
        with self._lock:
            return self._cached((a, b), lambda: self._ok({"a": a, "b": b}, timeout))

    def math_verify(self, gold: str, completion: str, timeout: float) -> bool:
        """math-verify's verdict on `completion` against `gold`; False when it overruns.
        Raises RuntimeError when math-verify cannot run in the helper."""
        with self._lock:
            request = {"op": "math_verify", "gold": gold, "pred": completion}
            return self._cached(
                ("math_verify", gold, completion),
                lambda: self._load_math_verify() and self._ok(request, timeout),
            )

    def _cached(self, key: tuple, compute: Callable[[], bool]) -> bool:
        if key not in self._cache:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache[key] = compute()
        return self._cache[key]

    def _load_math_verify(self) -> bool:
        # Imported once per helper, under the start-up limit, not a check's time limit.
        if self._math_verify_loaded and self._proc is not None and self._proc.poll() is None:
            return True
        reply = self._request({"op": "load_math_verify"}, self.startup_timeout)
        if reply is None or not reply["ok"]:
            error = reply["error"] if reply else self.disabled_reason or "it did not answer"
            raise RuntimeError(
                f"math-verify cannot be imported in the helper process ({error}); "
                "pip install math-verify"
            )
        self._math_verify_loaded = True
        return True

    def _ok(self, request: dict, timeout: float) -> bool:
        reply = self._request(request, timeout)
        return bool(reply is not None and reply["ok"])

    def _request(self, request: dict, timeout: float) -> dict | None:
        """The helper's answer to `request`, or None when it is off or overran."""
        if self.disabled_reason is not None or not self._ensure_ready():
            return None
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            line = self._readline(timeout)
        except OSError:
            line = None
        if line is None:
            # Overran (or died): kill it and start the replacement right away, so its
            # sympy import overlaps with training instead of delaying the next check.
            self._stop()
            self._spawn()
            return None
        return json.loads(line)

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
        self._math_verify_loaded = False
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
