"""Regression runs: refactors must not change what training computes.

Fixed-seed three-iteration runs on the tiny model (GFT with and without the shared-prompt
pass, with dynamic sampling and with two updates per batch; GRPO with a KL term; SFT),
checked two ways against tests/regression.json:

- bit for bit, on a platform the record has an entry for: the digest of the adapters and
  of metrics.jsonl (timings and memory left out). Digests are only comparable with the
  same MLX and mlx-lm versions, BLAS library, thread count and BLAS kernel (a BLAS sums
  in another order on another thread count, and OpenBLAS picks its kernels by CPU: the
  SFT run's second loss was 7.812199592 on one x86_64 machine and 7.812198162 on another);
- everywhere else, within what float32 summation order allows: every metric of every
  report (relative 1e-3), each adapter tensor's norm and a fixed signed projection of it
  (relative 1e-4; the projection, which a sign or an entry moved shows where a norm may
  not, relative to the larger of itself and the norm, since a signed sum can cancel).
  Measured across OpenBLAS's Cooperlake, Sandybridge and Prescott kernels the runs
  differ by at most 1.1e-4 (relative) in a metric, 1.7e-6 in a norm and 2.6e-5 in a
  projection; a change to what is trained moves them by far more.

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
    # Self-samples only: the tiny model is never right, so the reward grades the answers'
    # length, which gives the groups spread; the KL term needs the base's log-probs.
    "grpo-kl": "--loss grpo --kl-coef 0.05 --group-size 3 --no-mask-truncated "
    "--reward {rewards}/length.py:score",
    # Half of the prompts are quiet (`QUIET_HALF`): iterations draw more than one batch.
    "gft-dynamic": "--loss gft --group-size 3 --no-mask-truncated --dynamic-sampling "
    "--reward {rewards}/quiet_half.py:score",
    # Two optimizer updates per sampled batch (the second one off-policy).
    "gft-2-updates": "--loss gft --group-size 3 --no-mask-truncated --updates-per-batch 2",
}
# The rewards the runs above name, written to a folder at run time.
REWARDS = {
    "length.py": "def score(completion, **kwargs):\n    return len(completion) / 10\n",
    # Prompts with an odd checksum score every answer alike (a quiet group); the others
    # score the expert's answer alone.
    "quiet_half.py": (
        "def score(prompt, kind, **kwargs):\n"
        "    return 1.0 if sum(map(ord, prompt)) % 2 or kind == 'expert' else 0.0\n"
    ),
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


def _projection(name: str, weight: np.ndarray) -> float:
    """The sum of the tensor's entries times a fixed pseudo-random pattern of signs,
    seeded by its name: it moves when entries change sign or place, where a norm need
    not."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    signs = np.random.default_rng(seed).integers(0, 2, weight.shape) * 2 - 1
    return float((weight.astype(np.float64) * signs).sum())


def _summary(folder: Path) -> dict:
    """What the tolerant check compares: every report's metrics, each adapter's norm and
    signed projection."""
    weights = {
        name: np.array(w) for name, w in mx.load(str(folder / "adapters.safetensors")).items()
    }
    return {
        "metrics": _rows(folder),
        "adapter_norms": {name: float(np.linalg.norm(w)) for name, w in sorted(weights.items())},
        "adapter_projections": {name: _projection(name, w) for name, w in sorted(weights.items())},
    }


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
    if set(got["adapter_projections"]) != set(want.get("adapter_projections", {})):
        return bad + ["adapter projections not recorded: re-record (module docstring)"]
    for name, norm in want["adapter_norms"].items():
        if not _close(got["adapter_norms"][name], norm, rtol=1e-4):
            bad.append(f"|{name}| = {got['adapter_norms'][name]!r}, recorded {norm!r}")
        projection, recorded = got["adapter_projections"][name], want["adapter_projections"][name]
        # A signed sum can cancel to near 0: relative to the tensor's scale too.
        if abs(projection - recorded) > 1e-4 * max(abs(recorded), norm):
            bad.append(f"projection of {name} = {projection!r}, recorded {recorded!r}")
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
    rewards = folder.parent / "rewards"
    rewards.mkdir(parents=True, exist_ok=True)
    for file, source in REWARDS.items():
        (rewards / file).write_text(source)
    argv = (
        f"--model {tiny_model} --data {data} --train --adapter-path {folder} "
        "--iters 3 --batch-size 2 --max-completion-length 12 --num-layers -1 --seed 11 "
        "--steps-per-report 1 --steps-per-eval 3 --val-batches 1 --probe-size 2 "
        f"{RUNS[name].format(rewards=rewards)} {extra}"
    ).split()
    run(parse_config(argv), log=lambda *a: None)


def _exercised(name: str, rows: list[dict]) -> bool:
    """The run does what it is in the record for: GRPO's groups have reward spread,
    dynamic sampling drew more than one batch in some iteration."""
    train = [r for r in rows if "loss" in r]
    if name == "grpo-kl":
        return all(r["zero_var_frac"] < 1 for r in train)
    if name == "gft-dynamic":
        return any(r["sampling_rounds"] > 1 for r in train)
    return True


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fixed_seed_run_is_unchanged(tiny_model, arithmetic_data, tmp_path, name):
    folder = tmp_path / name
    _train(tiny_model, arithmetic_data, folder, name)
    digest, summary = _digest(folder), _summary(folder)
    assert _exercised(name, summary["metrics"]), summary["metrics"]
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
    off leaves it, and so do adapter norms 0.1% off, an adapter's entries with their
    signs flipped or one loss 1% off."""
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
    # A tensor whose entries changed sign keeps its norm: its projection tells.
    moved = _summary(folder)
    name = "model.layers.0.self_attn.q_proj.lora_b"
    flipped = -np.array(mx.load(str(folder / "adapters.safetensors"))[name])
    moved["adapter_norms"][name] = float(np.linalg.norm(flipped))
    moved["adapter_projections"][name] = _projection(name, flipped)
    assert _summary_mismatches(moved, want) == [
        f"projection of {name} = {moved['adapter_projections'][name]!r}, "
        f"recorded {want['adapter_projections'][name]!r}"
    ]
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
