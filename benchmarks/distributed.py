"""Step time of data-parallel training on 1 vs 2 local ranks (MLX ring backend), same
global batch, on the 2-layer SmolLM2 cut. Both runs are `python -m mlx_gft.lora`
subprocesses; the per-iteration time is read from the report lines (`It/sec`), leaving
out the first iteration (compilation).

    python benchmarks/distributed.py --iters 6

On one machine the ranks share its cores: this shows the overhead of the exchange, not
the speed-up of two Macs.
"""

import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from iteration import run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=32)
    args = ap.parse_args()
    import tempfile

    from real_model import smollm_path

    work = Path(tempfile.mkdtemp())
    cmd = [
        sys.executable, "-m", "mlx_gft.lora", "--model", str(smollm_path(2)), "--train",
        "--iters", str(args.iters), "--batch-size", str(args.batch_size),
        "--group-size", str(args.group_size), "--num-layers", "-1",
        "--max-completion-length", str(args.max_completion_length), "--steps-per-report", "1",
        "--steps-per-eval", "1000", "--save-every", "1000", "--val-batches", "1",
    ]  # fmt: skip
    launch = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
    times = {}
    for ranks in (1, 2):
        full = cmd + ["--adapter-path", str(work / f"r{ranks}")]
        if ranks > 1:
            port = str(random.randrange(20000, 60000, 16))
            full = [*launch, "--backend", "ring", "-n", str(ranks), "--starting-port", port, *full]
        times[ranks] = run(full, r"It/sec ([0-9.]+)")[1:]
    print(
        f"global batch {args.batch_size} prompts x K={args.group_size}, "
        f"{args.max_completion_length} new tokens, 2-layer SmolLM2 cut"
    )
    for ranks, t in times.items():
        sec = float(np.median(t))
        print(
            f"{ranks} rank(s): {sec:6.2f} s/iteration (median of {len(t)}), "
            f"{sec / np.median(times[1]):.2f}x the 1-rank time"
        )


if __name__ == "__main__":
    main()
