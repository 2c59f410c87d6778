"""Where a training run's time goes: the seconds of every phase of an iteration
(sampling, rewards, the update, validation, the KL probe, checkpoints) from the run's
metrics.jsonl, and what the whole command spends outside the iterations (loading,
held-out accuracy before and after).

Presets, each run as the user runs it (one process, nothing else heavy on the CPU):

- quickstart: the README's first command, `python -m mlx_gft.lora -c
  examples/quickstart.yaml`;
- regime: the GFT run of docs/learning.md's regime in miniature (why_gft.py
  `--warm-start 6 --train-size 16 --iters 20 --wrong-experts 0`, seed 0): the 16
  problems' folder and the warm start are built first, then timed is the GFT run alone.

    python benchmarks/phases.py --preset quickstart
    python benchmarks/phases.py --preset regime
    python benchmarks/phases.py --preset quickstart --extra "--dynamic-sampling"
    python benchmarks/phases.py --metrics runs/gft/metrics.jsonl   # a finished run
"""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("sample", "reward", "update", "val", "probe", "save")


def split(rows: list[dict]) -> dict:
    """Seconds per phase over the run's report rows (each holds its window's sums)."""
    train = [r for r in rows if "loss" in r]
    total = {p: sum(r.get(f"{p}_time", 0.0) for r in train) for p in PHASES}
    iterations = train[-1]["iteration"] if train else 0
    return {"iterations": iterations, "seconds": total}


def table(found: dict, wall: float | None) -> str:
    seconds, n = found["seconds"], max(found["iterations"], 1)
    timed = sum(seconds.values())
    lines = [
        f"{found['iterations']} iterations, {timed:.1f} s in timed phases"
        + (f", {wall:.1f} s for the whole command" if wall else ""),
        "",
        "| phase | s per iteration | share of the iterations |",
        "|---|---|---|",
    ]
    for phase in PHASES:
        share = seconds[phase] / timed if timed else 0.0
        lines.append(f"| {phase} | {seconds[phase] / n:.2f} | {share:.0%} |")
    if wall:
        lines.append(f"| outside the iterations (load, held-out) | | {wall - timed:.1f} s |")
    return "\n".join(lines)


def run(argv: list[str], folder: Path) -> float:
    """Run `python -m mlx_gft.lora argv` writing to `folder`; its wall seconds."""
    cmd = [sys.executable, "-m", "mlx_gft.lora", *argv, "--adapter-path", str(folder)]
    print("$", shlex.join(cmd), flush=True)
    tic = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - tic


def regime(out: Path, extra: list[str]) -> list[str]:
    """The regime's data (seed 0) and warm start, built with why_gft.py's own code; the
    GFT run's arguments (why_gft.py's shared options for it)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import why_gft

    args = argparse.Namespace(
        warm_start=6, train_size=16, test_problems=64, difficulty=why_gft.DEFAULT_LEVEL,
        wrong_experts=0.0, ood_level=0, model=None, data=str(out / "data"), iters=20,
        learning_rate=3e-5, num_layers=16, group_size=8, tau=0.5, eval_every=5, reuse=False,
    )  # fmt: skip
    why_gft.write_task(args, 0, out)
    why_gft.warm_start(args, 0, out)
    options = why_gft.options(args, 0)
    argv = ["--data", options["data"], "--train", "--loss", "gft"]
    argv += ["--resume-adapter-file", str(out / "warm-start" / "adapters.safetensors")]
    for key in ("iters", "batch_size", "learning_rate", "num_layers", "group_size", "tau",
                "max_completion_length", "steps_per_report", "steps_per_eval", "val_batches",
                "save_every", "probe_size", "seed"):  # fmt: skip
        argv += ["--" + key.replace("_", "-"), str(options[key])]
    return argv + extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("quickstart", "regime"))
    ap.add_argument("--extra", default="", help="more mlx_gft.lora options, quoted")
    ap.add_argument("--metrics", help="read this metrics.jsonl instead of running")
    ap.add_argument("--out", help="keep the run here (default: a temporary folder)")
    args = ap.parse_args()
    if args.metrics:
        rows = [json.loads(s) for s in Path(args.metrics).read_text().splitlines()]
        print(table(split(rows), None))
        return
    if not args.preset:
        ap.error("give --preset or --metrics")
    out = Path(args.out or tempfile.mkdtemp(prefix="phases-"))
    extra = shlex.split(args.extra)
    if args.preset == "quickstart":
        argv = ["-c", str(ROOT / "examples" / "quickstart.yaml"), *extra]
    else:
        argv = regime(out, extra)
    wall = run(argv, out / "run")
    rows = [json.loads(s) for s in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    print(table(split(rows), wall))


if __name__ == "__main__":
    main()
