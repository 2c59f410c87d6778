"""`mlx_gft.report RUN [RUN ...] -o report.html`: one self-contained HTML page that shows
what GFT does differently, from the files a run leaves (metrics.jsonl and, with
--log-completions, completions.jsonl).

- The dynamics dashboard: like-for-like panels (entropy on the same held-out expert
  answers, the gradient norm before the clip with the clip drawn, KL to the base per
  token, validation accuracy with its n and standard error, sampled accuracy, the
  zero-variance and cut-off shares, the expert tokens DCR rectifies, the pull toward the
  expert), one colour per run in every panel, every axis labelled with its unit.
- The group browser: for each logged group, every member's tokens coloured by the weight
  the update gave them (green: pulled up, red: pushed down, darker: heavier), tokens
  with p <= tau underlined (DCR weighs them by p: rectified), each member's reward and
  advantage beside it; the expert's tokens once more as SFT would weigh them, 1/p on
  the gradient of p.

No network, no script: inline CSS and SVG drawn from the numbers, text escaped with the
standard library. A browser shows it as it is; it prints too.
"""

import argparse
import html
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .plots import (
    Series,
    add_label_option,
    check_metrics,
    describe,
    read_metrics,
    run_color,
    run_names,
)

PANELS = (
    "val_entropy", "grad_norm", "kl_to_base_per_token", "val_acc", "sample_acc",
    "zero_var_frac", "truncated_frac", "rectified_expert", "expert_pull",
)  # fmt: skip
# Second series drawn dashed in a panel: the norm of the step actually taken.
COMPANIONS = {"grad_norm": "grad_norm_clipped"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;
 margin:24px auto;max-width:1320px;padding:0 16px;color:#1b1b1b;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;
 border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
p.note{color:#555;margin:4px 0 10px;max-width:980px}
.legend span{display:inline-block;margin-right:18px}
.swatch{display:inline-block;width:22px;height:4px;vertical-align:middle;margin-right:6px}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(410px,1fr));gap:12px}
.panel{border:1px solid #e3e3e3;border-radius:6px;padding:6px}
.panel svg{width:100%;height:auto;display:block}
details.group{border:1px solid #e3e3e3;border-radius:6px;margin:8px 0;padding:4px 10px}
details.group>summary{cursor:pointer;font-weight:600;padding:4px 0}
.prompt{white-space:pre-wrap;background:#f6f6f6;padding:6px 8px;border-radius:4px;
 margin:6px 0}
.member{display:grid;grid-template-columns:170px 1fr;gap:10px;border-top:1px solid #eee;
 padding:6px 0}
.member .head{font-size:12.5px;color:#333}
.kind{display:inline-block;font-weight:700;border-radius:3px;padding:0 5px;color:#fff}
.k-expert{background:#6a3d9a}.k-teacher{background:#1f78b4}.k-sample{background:#777}
.off{opacity:.55}
.text{font:13px/1.7 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
 white-space:pre-wrap;word-break:break-word}
.t{border-radius:2px}
.u{background:rgba(0,140,60,var(--w))}.d{background:rgba(214,39,40,var(--w))}
.s{background:rgba(255,127,14,var(--w))}
.r{text-decoration:underline dotted #333 1.5px;text-underline-offset:3px}
.sft{margin-top:4px}.sft>summary{cursor:pointer;color:#555;font-size:12.5px}
table.runs{border-collapse:collapse;margin:6px 0}
table.runs td,table.runs th{border:1px solid #ddd;padding:3px 8px;text-align:left}
"""


# ------------------------------------------------------------------------------------
# Charts: inline SVG from the numbers


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten apart) covering [low, high];
    `integer`: whole numbers only (iterations)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1, round(step))
    first = math.floor(low / step) * step
    ticks, v = [], first
    while v <= high + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.0e}"
    return f"{v:g}"


def line_chart(
    lines: list[tuple[str, str, list[tuple[float, float]], bool]],
    title: str,
    ylabel: str,
    xlabel: str = "iteration",
    ylim: tuple[float, float] | None = None,
    errors: dict[str, dict[float, float]] | None = None,
    note: str = "",
) -> str:
    """An SVG line chart. `lines`: (label, colour, points, dashed); `errors`: per label,
    {x: half-height of an error bar}. Axes with round ticks, labels and units."""
    W, H, left, right, top, bottom = 420, 270, 58, 12, 40, 44
    pw, ph = W - left - right, H - top - bottom
    xs = [x for *_, pts, _ in lines for x, _ in pts]
    ys = [y for *_, pts, _ in lines for _, y in pts if math.isfinite(y)]
    for label, bars in (errors or {}).items():
        for x, e in bars.items():
            ys += [y + s * e for lab, _, pts, _ in lines if lab == label
                   for px, y in pts if px == x for s in (-1, 1)]  # fmt: skip
    if not xs or not ys:
        return ""
    x_ticks = nice_ticks(min(xs), max(xs), integer=True)
    if ylim:
        y_ticks = nice_ticks(*ylim)
    else:
        lo, hi = min(ys), max(ys)
        lo = min(lo, 0.0) if lo >= 0 else lo  # a quantity that cannot be negative starts at 0
        y_ticks = nice_ticks(lo, hi if hi > lo else lo + 1)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x):
        return left + (x - x0) / ((x1 - x0) or 1) * pw

    def py(y):
        return top + ph - (y - y0) / ((y1 - y0) or 1) * ph

    e = html.escape
    out = [
        f'<svg viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="{e(title)}" font-size="11" font-family="system-ui,sans-serif">',
        f'<text x="{W / 2}" y="15" text-anchor="middle" font-size="12.5" '
        f'font-weight="600">{e(title)}</text>',
    ]
    if note:
        out.append(f'<text x="{W / 2}" y="30" text-anchor="middle" fill="#555">{e(note)}</text>')
    for t in y_ticks:
        y = py(t)
        out.append(f'<line x1="{left}" x2="{W - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 5}" y="{y + 3.5:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in x_ticks:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="#f3f3f3"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
        f'<text x="{left + pw / 2}" y="{H - 8}" text-anchor="middle">{e(xlabel)}</text>'
        f'<text transform="translate(13 {top + ph / 2}) rotate(-90)" '
        f'text-anchor="middle">{e(ylabel)}</text>'
    )
    for label, color, points, dashed in lines:
        pts = [(x, y) for x, y in points if math.isfinite(y)]
        if not pts:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"{dash}>'
            f"<title>{e(label)}</title></polyline>"
        )
        if len(pts) <= 30:
            out += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.4" fill="{color}">'
                f"<title>{e(label)}: {x:g}, {y:.4g}</title></circle>"
                for x, y in pts
            ]
        for x, half in (errors or {}).get(label, {}).items():
            y = dict(pts).get(x)
            if y is None or not math.isfinite(half):
                continue
            out.append(
                f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(y - half):.1f}" '
                f'y2="{py(y + half):.1f}" stroke="{color}" stroke-width="1.2"/>'
            )
    out.append("</svg>")
    return "".join(out)


def panel(metric: str, runs: dict[str, Series], colors: dict[str, str]) -> str:
    """One dashboard panel: the metric of every run that logged it."""
    info = describe(metric)
    lines, errors, note = [], {}, ""
    for name, s in runs.items():
        if s.get(metric):
            lines.append((name, colors[name], s[metric], False))
            bars = dict(s.get(f"{metric}_stderr", []))
            if bars:
                errors[name] = bars
        companion = COMPANIONS.get(metric)
        if companion and s.get(companion):
            lines.append((f"{name}, after the clip", colors[name], s[companion], True))
    if not lines:
        return ""
    if metric == "val_acc":
        sizes = sorted({int(v) for s in runs.values() for _, v in s.get("val_problems", [])})
        if sizes:
            note = f"on {'/'.join(map(str, sizes))} problems; bars: ± one standard error"
    if metric in COMPANIONS:
        note = "solid: before the clip; dashed: the step taken (after it)"
    return line_chart(lines, info.title, info.unit, ylim=info.ylim or None, errors=errors,
                      note=note)  # fmt: skip


def dashboard(runs: dict[str, Series], colors: dict[str, str], metrics: Sequence[str]) -> str:
    legend = "".join(
        f'<span><i class="swatch" style="background:{colors[n]}"></i>{html.escape(n)}</span>'
        for n in runs
    )
    charts = [panel(m, runs, colors) for m in metrics]
    body = "".join(f'<div class="panel">{c}</div>' for c in charts if c)
    return f'<p class="legend">{legend}</p><div class="panels">{body}</div>'


# ------------------------------------------------------------------------------------
# The group browser


def read_groups(run: Path) -> list[dict]:
    """The records of a run's completions.jsonl ([] without one); a cut-off last line
    (a run killed mid-write) is left out, and a group logged again by a resumed run
    (its iterations after the last checkpoint run twice) is shown once, as logged last."""
    path = Path(run) / "completions.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: malformed JSON ({e.msg})") from None
    latest = {(r["iteration"], r["group"]): r for r in records}
    return sorted(latest.values(), key=lambda r: (r["iteration"], r["group"]))


def _finite(x) -> float:
    """A logged number, NaN for null (a step skipped as non-finite logs nulls)."""
    return math.nan if x is None else float(x)


def _token_spans(member: dict, tau: float, scale: float) -> str:
    """The member's tokens, each coloured by its weight (share of the group's largest)."""
    out = []
    for piece, logp, coef, w in zip(
        member["tokens"], member["logp"], member["coef"], member["weight"], strict=True
    ):
        p, coef, w = math.exp(_finite(logp)), _finite(coef), _finite(w)
        cls = ["t"]
        if w > 0 or w < 0:
            cls.append("u" if w > 0 else "d")
        if p <= tau:
            cls.append("r")
        shade = min(abs(w) / scale, 1.0) if scale and math.isfinite(w) else 0.0
        tip = (
            f"p {p:.3g}; coefficient {coef:.3g}; weight {w:+.3g}; SFT's 1/p {1 / max(p, 1e-30):.3g}"
        )
        style = f' style="--w:{0.08 + 0.8 * shade:.2f}"' if shade else ""
        out.append(
            f'<span class="{" ".join(cls)}"{style} title="{tip}">{html.escape(piece)}</span>'
        )
    return "".join(out)


def _sft_spans(member: dict) -> str:
    """The expert's tokens as SFT's loss weighs them on the gradient of p: 1/p, shaded by
    log(1/p) against the answer's largest (its unlikely tokens get by far the most)."""
    inv = [-_finite(lp) for lp in member["logp"]]  # log(1/p)
    top = max((v for v in inv if math.isfinite(v)), default=0.0) or 1.0
    return "".join(
        f'<span class="t s" style="--w:{0.05 + 0.85 * (v / top if math.isfinite(v) else 0):.2f}" '
        f'title="1/p {math.exp(v):.3g}">{html.escape(piece)}</span>'
        for piece, v in zip(member["tokens"], inv, strict=True)
    )


def group_view(record: dict, run: str, opened: bool = False) -> str:
    """One logged group: prompt, answer, then each member with its tokens."""
    e = html.escape
    members = record["members"]
    scale = max((abs(w) for m in members for w in m["weight"] if w is not None), default=0.0)
    rewards = ", ".join(f"{m['reward']:.2f}" if m["reward"] is not None else "-" for m in members)
    prompt = " ".join((record.get("prompt") or "").split())
    head = (
        f"{e(run)} · iteration {int(record['iteration'])} · group {int(record['group'])} · rewards "
        f"{rewards} · {e(prompt[:90])}{'...' if len(prompt) > 90 else ''}"
    )
    rows = []
    for m in members:
        rect = sum(math.exp(_finite(lp)) <= record["tau"] for lp in m["logp"])
        status = "trained" if m["trained"] else "not trained (A = 0 or masked)"
        cut = "<br>cut off at the limit" if m["truncated"] else ""
        extra = "".join(
            f"<br>{e(name)} {value:.2f}" for name, value in m["rewards"].items()
            if value is not None and len(m["rewards"]) > 1
        )  # fmt: skip
        sft = ""
        if m["kind"] == "expert" and m["logp"]:
            sft = (
                '<details class="sft"><summary>as SFT weighs it: 1/p on the gradient of p'
                f'</summary><div class="text">{_sft_spans(m)}</div></details>'
            )
        rows.append(
            f'<div class="member{"" if m["trained"] else " off"}">'
            f'<div class="head"><span class="kind k-{e(m["kind"])}">{e(m["kind"])}</span><br>'
            f"reward {'-' if m['reward'] is None else format(m['reward'], '.2f')}{extra}<br>"
            f"advantage {m['advantage']:+.2f}<br>{len(m['tokens'])} tokens, {rect} with "
            f"p &le; {record['tau']:g}<br>{status}{cut}</div>"
            f'<div><div class="text">{_token_spans(m, record["tau"], scale)}</div>{sft}</div>'
            "</div>"
        )
    answer = record.get("answer")
    return (
        f'<details class="group"{" open" if opened else ""}><summary>{head}</summary>'
        f'<div class="prompt">{e(record.get("prompt") or "")}</div>'
        f"<div>reference answer: <b>{e(str(answer))}</b> · tau {record['tau']:g} · "
        f"loss {e(record.get('loss', 'gft'))}</div>{''.join(rows)}</details>"
    )


BROWSER_NOTE = (
    "Each member's tokens are coloured by the weight the update gave them: "
    '<span class="t u" style="--w:.6">green</span> pulled up (positive advantage), '
    '<span class="t d" style="--w:.6">red</span> pushed down, darker for a heavier weight '
    "(the largest in the group is darkest); uncoloured tokens taught nothing (a quiet group, "
    'a masked sample). <span class="r">Underlined</span> tokens have p &le; tau: DCR weighs '
    "them by p, as DFT does, where SFT's weight on the gradient of p is 1/p (open "
    "<i>as SFT weighs it</i> under an expert answer). Hover a token for p, DCR's coefficient, "
    "its weight and SFT's 1/p."
)


def browser(groups: dict[str, list[dict]], limit: int) -> str:
    parts = [f'<p class="note">{BROWSER_NOTE}</p>']
    for run, records in groups.items():
        if not records:
            continue
        shown = pick_groups(records, limit)
        parts.append(f"<h3>{html.escape(run)}: {len(shown)} of {len(records)} logged groups</h3>")
        parts += [group_view(r, run, opened=i == 0) for i, r in enumerate(shown)]
    return "".join(parts)


def pick_groups(records: list[dict], limit: int) -> list[dict]:
    """Up to `limit` groups spread evenly over the run, its first and last kept."""
    if len(records) <= limit:
        return records
    step = (len(records) - 1) / (limit - 1) if limit > 1 else 0
    return [records[round(i * step)] for i in range(limit)]


# ------------------------------------------------------------------------------------
# The page


def build_report(
    runs: dict[str, Path],
    metrics: Sequence[str] = PANELS,
    max_groups: int = 40,
    iterations: Sequence[int] | None = None,
) -> str:
    """The HTML page for these runs ({name: run folder}), as a string; `iterations`: the
    browser shows only those iterations' groups."""
    series = {name: read_metrics(folder) for name, folder in runs.items()}
    wanted = [m for m in metrics if m != "none"]
    check_metrics(wanted, series)
    colors = {name: run_color(i) for i, name in enumerate(series)}
    groups = {name: read_groups(folder) for name, folder in runs.items()}
    if iterations:
        groups = {n: [r for r in g if r["iteration"] in iterations] for n, g in groups.items()}
    rows = "".join(
        f"<tr><td><i class='swatch' style='background:{colors[n]}'></i>{html.escape(n)}</td>"
        f"<td>{html.escape(str(runs[n]))}</td><td>{len(groups[n])}</td></tr>"
        for n in runs
    )
    logged = any(groups.values())
    browser_html = (
        browser(groups, max_groups)
        if logged
        else '<p class="note">No run here logged its groups: train with '
        "<code>--log-completions</code> (YAML <code>log_completions: true</code>).</p>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>GFT report: {html.escape(', '.join(runs))}</title><style>{CSS}</style></head>"
        "<body><h1>What the runs did</h1>"
        f"<table class='runs'><tr><th>run</th><th>folder</th><th>groups logged</th></tr>"
        f"{rows}</table>"
        "<h2>Training dynamics</h2><p class='note'>Like for like: entropy and accuracy on the "
        "same held-out problems for every method; the gradient norm before GFT's and SFT's "
        "clip; KL per token. Panels a run did not log are left out.</p>"
        f"{dashboard(series, colors, wanted)}"
        f"<h2>Inside the groups</h2>{browser_html}</body></html>"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx_gft.report",
        description="One self-contained HTML page of training runs: the dynamics of every "
        "run side by side and, for runs trained with --log-completions, every logged group's "
        "members with their rewards, advantages and per-token weights.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (--adapter-path)")
    parser.add_argument(
        "-o",
        "--output",
        default="report.html",
        help="the HTML file to write (default: report.html)",
    )
    parser.add_argument(
        "--metrics",
        default=",".join(PANELS),
        help=f"dashboard panels, comma-separated (default: {','.join(PANELS)})",
    )
    parser.add_argument(
        "--iterations",
        help="comma-separated: show only these iterations' groups (unset: spread over the run)",
    )
    parser.add_argument(
        "--max-groups",
        type=int,
        default=40,
        help="groups shown per run, spread over it (default: 40)",
    )
    add_label_option(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    shown = [int(i) for i in args.iterations.split(",")] if args.iterations else None
    try:
        names = run_names(args.runs, args.label)
        metrics = [m for m in args.metrics.split(",") if m]
        page = build_report(names, metrics, args.max_groups, shown)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    Path(args.output).write_text(page, encoding="utf-8")
    print(f"Wrote {args.output} ({len(page) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
