"""Bit-identical regression runs: refactors must not change what training computes.

A fixed-seed three-iteration GFT run and SFT run on the tiny model; the digest of their
adapters and of metrics.jsonl (timings and memory left out) must equal the one recorded
in tests/regression.json. A change that is meant to alter the numbers re-records it:

    MLX_GFT_RECORD=1 python -m pytest tests/test_regression.py

Digests are only comparable on the platform that recorded them: the same MLX and mlx-lm
versions, BLAS library, thread count and BLAS kernel (a BLAS sums in a different order on
another thread count, and OpenBLAS picks its kernels by CPU: the SFT run's second loss
was 7.812199592 on one x86_64 machine and 7.812198162 on another with the same
versions). The record keeps one entry per platform; on a platform it has no entry for,
the test skips and says so.
"""

import ctypes
import hashlib
import json
import os
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


def _digest(folder: Path) -> dict:
    weights = mx.load(str(folder / "adapters.safetensors"))
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.array(weights[name]).tobytes())
    rows = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        rows.append({k: v for k, v in json.loads(line).items() if k not in VOLATILE})
    metrics = json.dumps(rows, sort_keys=True)
    return {
        "adapters": h.hexdigest(),
        "metrics": hashlib.sha256(metrics.encode()).hexdigest(),
        "loss": [r["loss"] for r in rows if "loss" in r],  # readable when it fails
    }


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


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fixed_seed_run_is_bit_identical(tiny_model, arithmetic_data, tmp_path, name):
    folder = tmp_path / name
    argv = (
        f"--model {tiny_model} --data {arithmetic_data} --train --adapter-path {folder} "
        "--iters 3 --batch-size 2 --max-completion-length 12 --num-layers -1 --seed 11 "
        "--steps-per-report 1 --steps-per-eval 3 --val-batches 1 --probe-size 2 "
        f"{RUNS[name]}"
    ).split()
    run(parse_config(argv), log=lambda *a: None)
    got = _digest(folder)
    records = json.loads(RECORD.read_text()) if RECORD.exists() else []
    here = next((r for r in records if r["platform"] == _platform()), None)
    if os.environ.get("MLX_GFT_RECORD"):
        if here is None:
            here = {"platform": _platform()}
            records.append(here)
        here[name] = got
        RECORD.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
        return
    if here is None or name not in here:
        recorded = [r["platform"] for r in records]
        pytest.skip(f"recorded on {recorded}, this is {_platform()}")
    assert got == here[name]
