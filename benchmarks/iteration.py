"""Wall time of one full training iteration (sample + reward + update): mlx_gft against
mlx-lm-lora's GRPO, same model, data, batch, group size and completion length.

mlx-lm-lora runs from its own virtual environment (never vendored), e.g.

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install "mlx[cpu]" mlx-lm-lora
    python benchmarks/iteration.py --peer-python /tmp/peer/bin/python

Both trainers are run as subprocesses one after the other; the per-iteration time is
read from their own report lines (mlx_gft: `It/sec`, mlx-lm-lora: `Speed: x it/s`),
leaving out the first iteration, which pays for compilation.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mlx_gft import _blas

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def run(cmd: list[str], pattern: str, env: dict | None = None) -> list[float]:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(
            f"{' '.join(cmd[:4])} ... failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
    return [1.0 / float(x) for x in re.findall(pattern, out.stdout + out.stderr) if float(x) > 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", help="python of a venv with mlx-lm-lora installed")
    ap.add_argument("--model", help="mlx-lm folder (default: the 2-layer SmolLM2 cut)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--iters", type=int, default=4)
    args = ap.parse_args()
    if args.model is None:
        from real_model import smollm_path

        args.model = str(smollm_path(2))
    from mlx_gft.tasks.arithmetic import write_dataset

    work = Path(tempfile.mkdtemp())
    data = write_dataset(work / "data", n_train=64, n_valid=8, n_test=8)
    common = [
        "--model",
        args.model,
        "--data",
        str(data),
        "--train",
        "--batch-size",
        str(args.batch_size),
        "--group-size",
        str(args.group_size),
        "--max-completion-length",
        str(args.max_completion_length),
        "--iters",
        str(args.iters),
        "--steps-per-report",
        "1",
        "--val-batches",
        "1",
        "--steps-per-eval",
        "1000",
        "--save-every",
        "1000",
    ]
    layers = ["--num-layers", "-1"]
    results = {}
    for loss in ("grpo", "gft"):
        cmd = [
            sys.executable,
            "-m",
            "mlx_gft.lora",
            *common,
            *layers,
            "--loss",
            loss,
            "--adapter-path",
            str(work / f"ours-{loss}"),
            "--probe-size",
            "1",
        ]
        results[f"mlx_gft --loss {loss}"] = run(cmd, r"It/sec ([0-9.]+)")[1:]
    if args.peer_python:
        cmd = [
            args.peer_python,
            "-m",
            "mlx_lm_lora.train",
            *common,
            "--train-mode",
            "grpo",
            "--num-layers",
            "-1",
            "--adapter-path",
            str(work / "peer"),
        ]
        # mlx_gft preloads OpenBLAS itself; give the peer the same BLAS so the
        # comparison measures the trainers, not the matmul library.
        env = dict(os.environ)
        if _blas.preload():
            env["LD_PRELOAD"] = _blas.loaded
        results["mlx-lm-lora GRPO"] = run(cmd, r"Speed: ([0-9.]+) it/s", env)[1:]
    print(
        f"B={args.batch_size}, K={args.group_size}, {args.max_completion_length} new tokens, "
        f"model {args.model}"
    )
    peer = results.get("mlx-lm-lora GRPO")
    for name, times in results.items():
        sec = float(np.median(times)) if times else float("nan")
        ratio = f"  {sec / np.median(peer):.3f}x mlx-lm-lora" if peer else ""
        print(f"{name:22s} {sec:8.2f} s/iteration (median of {len(times)}){ratio}")


if __name__ == "__main__":
    main()
