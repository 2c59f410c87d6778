"""Soak test: a long GFT run on the 2-layer SmolLM2 cut, checking that memory does not
grow after warm-up. Peak memory is reset at every report, so each report line holds
the peak of its own window; a leak shows as a rising trend across windows.

    python benchmarks/soak.py --iters 200
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--report", type=int, default=10, help="iterations per report window")
    ap.add_argument("--warmup", type=int, default=20, help="iterations left out of the trend")
    args = ap.parse_args()
    from real_model import smollm_path

    work = Path(tempfile.mkdtemp())
    cmd = [
        sys.executable, "-m", "mlx_gft.lora", "--model", str(smollm_path(2)), "--train",
        "--adapter-path", str(work / "ad"), "--iters", str(args.iters),
        "--steps-per-report", str(args.report), "--batch-size", "2", "--group-size", "4",
        "--max-completion-length", "32", "--num-layers", "-1", "--save-every", "50",
        "--steps-per-eval", "100", "--val-batches", "2", "--learning-rate", "1e-4",
        "--report-to", "jsonl",
    ]  # fmt: skip
    tic = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - tic
    rows = [json.loads(line) for line in (work / "ad" / "metrics.jsonl").open()]
    rows = [r for r in rows if "peak_memory_gb" in r]
    print(f"\n{args.iters} iterations in {wall / 60:.1f} min")
    nan = float("nan")
    print("iteration  peak GB  active GB  zero-var  sampled acc")
    for r in rows:
        print(
            f"{r['iteration']:9d}  {r['peak_memory_gb']:7.3f}  {r['active_memory_gb']:9.3f}  "
            f"{r.get('zero_var_frac', nan):8.2f}  {r.get('sample_acc', nan):11.3f}"
        )
    after = [r for r in rows if r["iteration"] > args.warmup]
    first, rest = after[0], after[1:]
    print(
        f"after warm-up: peak {min(r['peak_memory_gb'] for r in after):.3f}-"
        f"{max(r['peak_memory_gb'] for r in after):.3f} GB, active at the first window "
        f"{first['active_memory_gb']:.3f} GB, at the last {rest[-1]['active_memory_gb']:.3f} GB"
    )


if __name__ == "__main__":
    main()
