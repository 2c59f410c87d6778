"""Plot and compare training runs from the metrics.jsonl the trainer writes.

    python -m mlx_gft.plots adapters-gft adapters-sft --out plots/

One PNG per metric with one line per run, and a markdown table of each run's final
numbers. Needs matplotlib (`pip install "mlx-gft[plot]"`), imported only to draw.
"""

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_METRICS = (
    "val_entropy", "entropy", "grad_norm", "kl_to_base", "reward_sampled", "val_acc",
)  # fmt: skip

Series = dict[str, list[tuple[int, float]]]


def metrics_file(run: str | Path) -> Path:
    """A run folder's metrics.jsonl (a path to the file itself is accepted too)."""
    path = Path(run)
    return path / "metrics.jsonl" if path.is_dir() else path


def read_metrics(path: str | Path) -> Series:
    """{metric: [(iteration, value), ...]} sorted by iteration, from a metrics.jsonl.

    A resumed run appends to the same file and may log an iteration again: the later
    line wins. A cut-off last line (a run killed mid-write) is ignored.
    """
    path = metrics_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is this a training run folder?)")
    lines = path.read_text(encoding="utf-8").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    points: dict[str, dict[int, float]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:
                break
            raise ValueError(f"{path}:{i + 1}: malformed JSON ({e.msg})") from None
        if not isinstance(row, dict) or "iteration" not in row:
            raise ValueError(f"{path}:{i + 1}: expected an object with an 'iteration'")
        for key, value in row.items():
            if key != "iteration" and _is_number(value):
                points.setdefault(key, {})[int(row["iteration"])] = float(value)
    return {key: sorted(values.items()) for key, values in points.items()}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError(
            'plotting needs matplotlib: pip install "mlx-gft[plot]" (or pip install matplotlib)'
        ) from None
    return Figure, FigureCanvasAgg, MaxNLocator


def chain_stages(folders: Sequence[str | Path]) -> Series:
    """One series for a staged run (--stages): each stage's iterations continue where
    the previous stage's ended, so SFT -> GFT reads as one curve."""
    out: Series = {}
    offset = 0
    for folder in folders:
        series = read_metrics(folder)
        for metric, points in series.items():
            out.setdefault(metric, []).extend((i + offset, v) for i, v in points)
        offset += max((points[-1][0] for points in series.values() if points), default=0)
    return out


def plot_runs(
    runs: dict[str, Path | Series],
    out_dir: str | Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    xlabel: str = "iteration",
) -> list[Path]:
    """Write <metric>.png for each metric some run logged, one line per run; returns them.
    A run is its folder (or metrics.jsonl), or a series already read (`chain_stages`).

    Uses matplotlib's Agg canvas directly, not pyplot, so it changes no global backend
    (safe inside a notebook or a GUI session).
    """
    Figure, FigureCanvasAgg, MaxNLocator = _figure_class()
    series = {
        name: run if isinstance(run, dict) else read_metrics(run) for name, run in runs.items()
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        logged = {name: s[metric] for name, s in series.items() if s.get(metric)}
        if not logged:
            continue
        fig = Figure(figsize=(6.4, 4.0), constrained_layout=True)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for name, points in logged.items():
            x, y = zip(*points, strict=True)
            ax.plot(x, y, label=name, marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_title(metric)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
        path = out_dir / f"{metric}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def _final(points: list[tuple[int, float]] | None) -> float | None:
    return points[-1][1] if points else None


def _max(points: list[tuple[int, float]] | None) -> float | None:
    finite = [v for _, v in points or [] if not math.isnan(v)]
    return max(finite) if finite else None


# (column title, metric, how the run's series becomes one number)
COLUMNS = (
    ("final entropy", "entropy", _final),
    ("max grad norm", "grad_norm", _max),
    ("final KL to base", "kl_to_base", _final),
    ("final val_acc", "val_acc", _final),
)


def summary_table(runs: dict[str, Path]) -> str:
    """A markdown table of each run's last iteration and final / max numbers.

    The val_acc column appears only when some run measured it; '-' marks a metric a
    run did not log.
    """
    series = {name: read_metrics(path) for name, path in runs.items()}
    columns = [
        c for c in COLUMNS if c[1] != "val_acc" or any("val_acc" in s for s in series.values())
    ]
    header = ["run", "iterations", *(title for title, _, _ in columns)]
    rows = [header, ["---"] * len(header)]
    for name, s in series.items():
        last = max((points[-1][0] for points in s.values()), default=None)
        cells = [name, "-" if last is None else str(last)]
        for _, metric, reduce in columns:
            value = reduce(s.get(metric))
            cells.append("-" if value is None else f"{value:.4g}")
        rows.append(cells)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def run_names(paths: Sequence[str | Path]) -> dict[str, Path]:
    """Short names for the legend: folder names, or whole paths when two names clash."""
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    return dict(zip(names, map(Path, paths), strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_gft.plots",
        description="Plot metrics.jsonl of one or more training runs and print a summary.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="adapter folders of runs")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated (default: {','.join(DEFAULT_METRICS)})",
    )
    args = parser.parse_args(argv)
    runs = run_names(args.runs)
    try:
        print(summary_table(runs))
        written = plot_runs(runs, args.out, [m for m in args.metrics.split(",") if m])
    except (FileNotFoundError, ValueError, ImportError) as e:
        sys.exit(f"error: {e}")
    if not written:
        sys.exit(f"error: none of the runs logged any of {args.metrics}")
    for path in written:
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
