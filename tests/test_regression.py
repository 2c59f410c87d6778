"""Regression runs: refactors must not change what training computes.

A fixed-seed three-iteration GFT run and SFT run on the tiny model, checked two ways
against tests/regression.json:

- bit for bit, on a platform the record has an entry for: the digest of the adapters and
  of metrics.jsonl (timings and memory left out). Digests are only comparable with the
  same MLX and mlx-lm versions, BLAS library, thread count and BLAS kernel (a BLAS sums
  in another order on another thread count, and OpenBLAS picks its kernels by CPU: the
  SFT run's second loss was 7.812199592 on one x86_64 machine and 7.812198162 on another);
- everywhere else, within what float32 summation order allows: every metric of every
  report (relative 1e-3) and each adapter tensor's norm (relative 1e-4). Measured across
  OpenBLAS's Cooperlake, Sandybridge and Prescott kernels the runs differ by at most
  1.1e-4 (relative) in a metric and 1.7e-6 in a norm; a change to what is trained moves
  them by far more.

A change that is meant to alter the numbers re-records (the bit-exact entries of other
platforms whose runs it changed are dropped, since they no longer hold):

    MLX_GFT_RECORD=1 python -m pytest tests/test_regression.py
"""

import ctypes
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

from mlx_gft import _blas
from mlx_gft.job import run
from mlx_gft.lora import parse_config

pytestmark = pytest.mark.slow

RECORD = Path(__file__).parent / "regression.json"
# Wall-clock and allocator figures vary run to run; everything else must not.
VOLATILE = {
    "sample_time", "reward_time", "update_time", "val_time", "probe_time", "save_time",
    "it_per_sec", "gen_tok_per_sec", "train_tok_per_sec", "peak_memory_gb", "active_memory_gb",
}  # fmt: skip
RUNS = {
    # The tiny model's samples all reach the 12-token limit: trained on (not masked), so
    # each group has rows for the shared-prompt pass to run.
    "gft": "--loss gft --group-size 3 --no-mask-truncated",
    # The plain forward, every answer with its own prompt pass: the shared-prompt pass
    # (the default) must not have changed it.
    "gft-unshared": "--loss gft --group-size 3 --no-mask-truncated --no-shared-prompt",
    "sft": "--loss sft --mask-prompt",
}


def _rows(folder: Path) -> list[dict]:
    rows = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        rows.append({k: v for k, v in json.loads(line).items() if k not in VOLATILE})
    return rows


def _digest(folder: Path) -> dict:
    weights = mx.load(str(folder / "adapters.safetensors"))
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.array(weights[name]).tobytes())
    rows = _rows(folder)
    metrics = json.dumps(rows, sort_keys=True)
    return {
        "adapters": h.hexdigest(),
        "metrics": hashlib.sha256(metrics.encode()).hexdigest(),
        "loss": [r["loss"] for r in rows if "loss" in r],  # readable when it fails
    }


def _summary(folder: Path) -> dict:
    """What the tolerant check compares: every report's metrics, each adapter's norm."""
    weights = mx.load(str(folder / "adapters.safetensors"))
    norms = {name: float(np.linalg.norm(np.array(w))) for name, w in sorted(weights.items())}
    return {"metrics": _rows(folder), "adapter_norms": norms}


def _close(got, want, rtol: float, atol: float = 1e-7) -> bool:
    numbers = (int, float)
    if isinstance(want, bool) or not isinstance(want, numbers):
        return got == want
    return isinstance(got, numbers) and abs(got - want) <= atol + rtol * abs(want)


def _summary_mismatches(got: dict, want: dict) -> list[str]:
    """Where `got` leaves the tolerance around `want` (empty: within it)."""
    bad = []
    if len(got["metrics"]) != len(want["metrics"]):
        return [f"{len(got['metrics'])} reports, recorded {len(want['metrics'])}"]
    for n, (g, w) in enumerate(zip(got["metrics"], want["metrics"], strict=True)):
        for key in sorted(set(g) | set(w)):
            if key not in g or key not in w or not _close(g[key], w[key], rtol=1e-3):
                bad.append(f"report {n}: {key} = {g.get(key)!r}, recorded {w.get(key)!r}")
    if set(got["adapter_norms"]) != set(want["adapter_norms"]):
        return bad + ["adapter tensors differ from the recorded ones"]
    for name, norm in want["adapter_norms"].items():
        if not _close(got["adapter_norms"][name], norm, rtol=1e-4):
            bad.append(f"|{name}| = {got['adapter_norms'][name]!r}, recorded {norm!r}")
    return bad


def _blas_kernel() -> str:
    """OpenBLAS's name for the kernels it chose on this CPU ('Haswell', 'Cooperlake')."""
    if not _blas.loaded:
        return "bundled"
    corename = getattr(ctypes.CDLL(_blas.loaded), "openblas_get_corename", None)
    if corename is None:
        return "unknown"
    corename.restype = ctypes.c_char_p
    return corename().decode()


def _platform() -> dict:
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or str(os.cpu_count())
    return {
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
        "blas": _blas.loaded or "bundled",
        "blas_kernel": _blas_kernel(),
        "threads": threads,
    }


def _record(records: dict, name: str, digest: dict, summary: dict) -> None:
    """This platform's digest and the summary of run `name`; other platforms' digests
    of that run go when the summary moved past the tolerance (they no longer hold)."""
    old = records["summary"].get(name)
    if old is not None and _summary_mismatches(summary, old):
        for entry in records["exact"]:
            entry.pop(name, None)
    records["summary"][name] = summary
    here = next((r for r in records["exact"] if r["platform"] == _platform()), None)
    if here is None:
        here = {"platform": _platform()}
        records["exact"].append(here)
    here[name] = digest
    records["exact"] = [r for r in records["exact"] if set(r) - {"platform"}]
    RECORD.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")


def _train(tiny_model: Path, data: Path, folder: Path, name: str, extra: str = "") -> None:
    argv = (
        f"--model {tiny_model} --data {data} --train --adapter-path {folder} "
        "--iters 3 --batch-size 2 --max-completion-length 12 --num-layers -1 --seed 11 "
        "--steps-per-report 1 --steps-per-eval 3 --val-batches 1 --probe-size 2 "
        f"{RUNS[name]} {extra}"
    ).split()
    run(parse_config(argv), log=lambda *a: None)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fixed_seed_run_is_unchanged(tiny_model, arithmetic_data, tmp_path, name):
    folder = tmp_path / name
    _train(tiny_model, arithmetic_data, folder, name)
    digest, summary = _digest(folder), _summary(folder)
    records = json.loads(RECORD.read_text()) if RECORD.exists() else {"exact": [], "summary": {}}
    if os.environ.get("MLX_GFT_RECORD"):
        _record(records, name, digest, summary)
        return
    assert name in records["summary"], f"{name}: not recorded; run with MLX_GFT_RECORD=1"
    here = next((r for r in records["exact"] if r["platform"] == _platform()), {})
    if name in here:  # the platform that recorded it: bit for bit
        assert digest == here[name]
    else:
        assert _summary_mismatches(summary, records["summary"][name]) == []


def test_the_tolerant_check_rejects_a_change(tiny_model, arithmetic_data, tmp_path):
    """The tolerance is not so wide that a change passes: the run at a learning rate 1%
    off leaves it, and so do adapter norms 0.1% off or one loss 1% off."""
    records = json.loads(RECORD.read_text())
    want = records["summary"]["sft"]
    folder = tmp_path / "sft"
    _train(tiny_model, arithmetic_data, folder, "sft")
    assert _summary_mismatches(_summary(folder), want) == []
    _train(tiny_model, arithmetic_data, tmp_path / "lr", "sft", "--learning-rate 1.01e-5")
    assert _summary_mismatches(_summary(tmp_path / "lr"), want)
    moved = _summary(folder)
    moved["adapter_norms"] = {k: v * (1 + 1e-3) for k, v in moved["adapter_norms"].items()}
    assert len(_summary_mismatches(moved, want)) == len(want["adapter_norms"])
    moved = _summary(folder)
    moved["metrics"][1]["loss"] *= 1 + 1e-2
    assert _summary_mismatches(moved, want) == [
        f"report 1: loss = {moved['metrics'][1]['loss']!r}, recorded {want['metrics'][1]['loss']!r}"
    ]


def test_passes_on_another_blas_kernel():
    """The check runs (passes, not skips) where OpenBLAS picked other kernels than the
    recording machine's, as on a VM with a generic CPU name (OPENBLAS_CORETYPE forces
    one; it takes effect only when the library loads, so in a fresh process)."""
    if not _blas.loaded:
        pytest.skip("no OpenBLAS loaded: its kernel cannot be forced")
    other = "Sandybridge" if _blas_kernel() != "Sandybridge" else "Prescott"
    env = {**os.environ, "OPENBLAS_CORETYPE": other}
    env.pop("MLX_GFT_RECORD", None)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", __file__,
         "-k", "test_fixed_seed_run_is_unchanged"],
        env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    summary = out.stdout.strip().splitlines()[-1]
    assert out.returncode == 0 and f"{len(RUNS)} passed" in summary, out.stdout[-3000:]
    assert "skipped" not in summary
