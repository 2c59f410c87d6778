"""Plot and compare training runs from the metrics.jsonl the trainer writes.

    python -m mlx_gft.plots adapters-gft adapters-sft --out plots/

One PNG per metric with one line per run, and a markdown table of each run's final
numbers. Needs matplotlib (`pip install matplotlib`; from a checkout `pip install -e
".[plot]"`), imported only to draw. `mlx_gft.report` draws the same metrics, and the
group log, in one HTML page without it.
"""

import argparse
import difflib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Like for like: every method measured on the same thing. `entropy` is not here: GFT's
# is taken on its own samples, SFT's on the expert answers (`val_entropy` is both on the
# same held-out expert answers).
DEFAULT_METRICS = (
    "val_entropy", "grad_norm", "kl_to_base_per_token", "val_acc", "sample_acc",
    "zero_var_frac",
)  # fmt: skip


@dataclass(frozen=True)
class Metric:
    """How a metric is drawn: its title, the y axis's label with its unit, and a fixed
    y range for shares (None: from the data)."""

    title: str
    unit: str
    ylim: tuple[float, float] | None = None


SHARE = (0.0, 1.0)
METRICS = {
    "val_entropy": Metric("Entropy on the held-out expert answers", "nats per token"),
    "entropy": Metric(
        "Entropy on trained tokens (GFT: its samples; SFT: the expert answers)", "nats per token"
    ),
    "grad_norm": Metric("Gradient norm before the clip (largest per report)", "L2 norm"),
    "grad_norm_clipped": Metric("Gradient norm after the clip (largest per report)", "L2 norm"),
    "kl_to_base_per_token": Metric("KL to the base model, probe answers", "nats per token"),
    "kl_to_base": Metric("KL to the base model, summed over each probe answer", "nats per answer"),
    "val_acc": Metric(
        "Validation accuracy, one sample per problem at the training temperature",
        "share of problems",
        SHARE,
    ),
    "sample_acc": Metric("Sampled accuracy of the training samples", "share of samples", SHARE),
    "reward_sampled": Metric("Reward of the training samples", "reward"),
    "zero_var_frac": Metric("Zero-variance groups (they teach nothing)", "share of groups", SHARE),
    "truncated_frac": Metric("Samples cut off at the length limit", "share of samples", SHARE),
    "rectified_expert": Metric("Expert tokens rectified: p <= tau", "share of tokens", SHARE),
    "rectified_frac": Metric("Trained tokens rectified: p <= tau", "share of tokens", SHARE),
    "expert_pull": Metric("Pull toward the expert answer", "weight, in SFT units (SFT = 1)"),
    "adv_expert": Metric("Mean advantage of the expert answer", "advantage (z-score)"),
    "adv_sampled": Metric("Mean advantage of the samples", "advantage (z-score)"),
    "loss": Metric("Training loss", "loss"),
    "val_loss": Metric("Validation loss: NLL of the held-out expert answers", "nats per token"),
    "overlong_penalty": Metric("Soft overlong punishment of the samples", "reward (mean)"),
    "quiet_row_frac": Metric("Rows left out of the update (A = 0)", "share of rows", SHARE),
    "pass_at_k": Metric("pass@k on the held-out problems", "share of problems", SHARE),
}
# One colour per run, the same in every figure (matplotlib's tab10, colour-blind aware).
COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
)  # fmt: skip


def run_color(index: int) -> str:
    """The colour of the run at this position of the command line (or mapping)."""
    return COLORS[index % len(COLORS)]


def describe(metric: str) -> Metric:
    return METRICS.get(metric, Metric(metric, metric))


def check_metrics(wanted: Sequence[str], series: dict[str, "Series"]) -> None:
    """An unknown metric name is an error that names the closest ones (a misspelt
    --metrics would otherwise draw nothing and say nothing)."""
    logged = {k for s in series.values() for k in s}
    known = logged | set(METRICS)
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown metric {name!r}{hint}")


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
            "plotting needs matplotlib: pip install matplotlib (from a checkout: "
            "pip install -e '.[plot]')"
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
    Each run keeps its colour in every figure; axes carry the metric's unit (`METRICS`);
    val_acc is drawn with its standard error and says over how many problems. An
    unknown metric name is an error (`check_metrics`).

    Uses matplotlib's Agg canvas directly, not pyplot, so it changes no global backend
    (safe inside a notebook or a GUI session).
    """
    Figure, FigureCanvasAgg, MaxNLocator = _figure_class()
    series = {
        name: run if isinstance(run, dict) else read_metrics(run) for name, run in runs.items()
    }
    check_metrics(metrics, series)
    colors = {name: run_color(i) for i, name in enumerate(series)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        logged = {name: s[metric] for name, s in series.items() if s.get(metric)}
        if not logged:
            continue
        info = describe(metric)
        fig = Figure(figsize=(6.4, 4.0), constrained_layout=True)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        title = info.title
        for name, points in logged.items():
            x, y = zip(*points, strict=True)
            style = dict(label=name, color=colors[name], markersize=3)
            # Error bars: a metric's standard error (val_acc), or over seeds half the
            # range of a mean (why_gft's pass@k of several seeds).
            errors = dict(
                series[name].get(f"{metric}_stderr") or series[name].get(f"{metric}_spread") or []
            )
            if errors:
                yerr = [errors.get(i, 0.0) for i in x]
                ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, **style)
            else:
                ax.plot(x, y, marker="o" if len(points) < 20 else None, **style)
        if metric == "val_acc":
            sizes = {int(v) for s in series.values() for _, v in s.get("val_problems", [])}
            if sizes:
                n = "/".join(str(v) for v in sorted(sizes))
                title += f"\n{n} problems, bars: ± one standard error"
        if any(f"{metric}_spread" in s for s in series.values()):
            title += "\nmean over seeds, bars: half the range"
        if metric == "grad_norm" and any("grad_norm_clipped" in s for s in series.values()):
            clipped = [v for s in series.values() for _, v in s.get("grad_norm_clipped", [])]
            if clipped and max(clipped) < max(v for p in logged.values() for _, v in p):
                ax.axhline(max(clipped), color="black", linestyle="--", linewidth=1,
                           label=f"clip ({max(clipped):g})")  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(info.unit)
        if info.ylim:
            ax.set_ylim(*info.ylim)
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
    ("final val entropy, nats/token", "val_entropy", _final),
    ("max grad norm before the clip", "grad_norm", _max),
    ("final KL to base, nats/token", "kl_to_base_per_token", _final),
    ("final KL to base, nats/answer", "kl_to_base", _final),
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


def run_names(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> dict[str, Path]:
    """Names for the legend: the labels given (one per run, in order), else folder names,
    or whole paths when two folder names clash."""
    if labels:
        if len(labels) != len(paths) or len(set(labels)) < len(labels):
            raise ValueError(
                f"--label: give one distinct label per run ({len(paths)} runs, "
                f"{len(labels)} labels: {', '.join(labels)})"
            )
        names = list(labels)
    else:
        names = [Path(p).resolve().name for p in paths]
        if len(set(names)) < len(names):
            names = [str(p) for p in paths]
    return dict(zip(names, map(Path, paths), strict=True))


def add_label_option(parser: argparse.ArgumentParser) -> None:
    """`--label NAME`, once per run: the legend's names instead of the folders'."""
    parser.add_argument(
        "--label",
        action="append",
        metavar="NAME",
        help="the legend's name of a run, once per run in the order of the runs "
        "(default: the folder names)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx_gft.plots",
        description="Plot metrics.jsonl of one or more training runs (one PNG per metric, one "
        "colour per run) and print a table of their final numbers. mlx_gft.report draws the "
        "same in one HTML page, with the logged groups.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="adapter folders of runs")
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help=f"comma-separated metrics.jsonl keys (default: {','.join(DEFAULT_METRICS)})",
    )
    add_label_option(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        runs = run_names(args.runs, args.label)
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
