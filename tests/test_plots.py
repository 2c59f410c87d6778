"""Run comparison plots and the summary table, from hand-written metrics.jsonl files."""

import json
import math
import sys

import pytest

from mlx_gft.plots import main, plot_runs, read_metrics, summary_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train_line(it: int, entropy: float, grad: float, kl: float, reward: float) -> dict:
    return {
        "iteration": it,
        "loss": 1.0 / it,
        "entropy": entropy,
        "grad_norm": grad,
        "grad_norm_clipped": min(grad, 1.0),
        "kl_to_base": kl,
        "kl_to_base_per_token": kl / 10,
        "reward_sampled": reward,
        "sample_acc": reward,
        "zero_var_frac": 0.5,
        "peak_memory_gb": 0.1,
    }


def _val_line(it: int, entropy: float, acc: float | None = None) -> dict:
    line = {"iteration": it, "val_loss": 1.5, "val_entropy": entropy}
    if acc is not None:
        line.update(val_acc=acc, val_problems=8, val_acc_stderr=0.1)
    return line


def _write_run(folder, lines: list[dict], tail: str = "") -> None:
    folder.mkdir(parents=True)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (folder / "metrics.jsonl").write_text(text + tail)


@pytest.fixture
def runs(tmp_path):
    gft = tmp_path / "gft"
    _write_run(
        gft,
        [
            _train_line(1, 2.0, 0.5, 0.0, 0.1),
            _train_line(2, 1.8, 3.0, 0.01, 0.2),
            _val_line(2, 0.9, 0.25),
            _train_line(3, 1.5, 1.0, 0.02, 0.3),
            _val_line(3, 0.7, 0.5),
        ],
    )
    sft = tmp_path / "sft"
    # No probe (KL is NaN), no validation, and a resume that logged iteration 2 again.
    _write_run(
        sft,
        [
            _train_line(1, 2.2, 0.7, math.nan, 0.0),
            _train_line(2, 2.0, 0.9, math.nan, 0.0),
            _train_line(2, 1.9, 0.8, math.nan, 0.0),
            _val_line(2, 0.4),
        ],
        tail='{"iteration": 3, "loss": 0.',  # killed mid-write
    )
    return {"gft": gft, "sft": sft}


def test_read_metrics_gives_points_per_metric(runs):
    gft = read_metrics(runs["gft"] / "metrics.jsonl")
    assert gft["entropy"] == [(1, 2.0), (2, 1.8), (3, 1.5)]
    assert gft["val_acc"] == [(2, 0.25), (3, 0.5)]
    assert gft["val_entropy"] == [(2, 0.9), (3, 0.7)]
    assert gft["grad_norm"] == [(1, 0.5), (2, 3.0), (3, 1.0)]
    assert "iteration" not in gft
    sft = read_metrics(runs["sft"])  # a run folder works too
    assert sft["entropy"] == [(1, 2.2), (2, 1.9)]  # the later line of iteration 2 wins
    assert all(math.isnan(v) for _, v in sft["kl_to_base"])
    assert "val_acc" not in sft


def test_read_metrics_rejects_a_broken_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "loss": 1}\nnot json\n{"iteration": 2, "loss": 1}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: malformed JSON"):
        read_metrics(path)
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "nowhere")


def test_summary_table_numbers(runs):
    table = summary_table(runs).splitlines()
    assert table[0] == (
        "| run | iterations | final val entropy, nats/token | max grad norm before the clip | "
        "final KL to base, nats/token | final KL to base, nats/answer | final val_acc |"
    )
    assert table[2] == "| gft | 3 | 0.7 | 3 | 0.002 | 0.02 | 0.5 |"
    assert table[3] == "| sft | 2 | 0.4 | 0.8 | nan | nan | - |"  # 0.9 was replaced on resume
    # Without any validation the column is left out.
    assert "val_acc" not in summary_table({"sft": runs["sft"]})


def test_plot_runs_writes_one_png_per_logged_metric(runs, tmp_path):
    out = tmp_path / "plots"
    written = plot_runs(runs, out, metrics=("val_entropy", "val_acc", "truncated_frac"))
    assert written == [out / "val_entropy.png", out / "val_acc.png"]  # nobody logged the last
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_an_unknown_metric_is_an_error_with_suggestions(runs, tmp_path):
    with pytest.raises(ValueError, match=r"unknown metric 'val_entrpy'; did you mean val_entropy"):
        plot_runs(runs, tmp_path / "plots", metrics=("val_entrpy",))


def test_a_run_keeps_its_colour_and_axes_say_their_units(runs, tmp_path, monkeypatch):
    """sft has no val_acc: gft must not take another colour in that figure."""
    from matplotlib.axes import Axes

    drawn = []
    for name in ("plot", "errorbar"):
        original = getattr(Axes, name)

        def record(self, *a, _original=original, **kw):
            drawn.append((self.get_title(), kw.get("label"), kw.get("color"), self))
            return _original(self, *a, **kw)

        monkeypatch.setattr(Axes, name, record)
    plot_runs(runs, tmp_path / "plots", metrics=("val_entropy", "val_acc", "grad_norm"))
    colors = {}
    for _, label, color, _ in drawn:
        assert colors.setdefault(label, color) == color
    assert colors["gft"] != colors["sft"]
    axes = {id(ax): ax for *_, ax in drawn}.values()
    units = {ax.get_ylabel() for ax in axes}
    assert units == {"nats per token", "share of problems", "L2 norm"}
    val_acc = next(ax for ax in axes if ax.get_ylabel() == "share of problems")
    assert "8 problems" in val_acc.get_title() and val_acc.get_ylim() == (0.0, 1.0)


def test_missing_matplotlib_says_what_to_install(runs, tmp_path, monkeypatch):
    for name in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install matplotlib"):
        plot_runs(runs, tmp_path / "plots")


def test_cli_plots_and_prints_the_table(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    main([str(runs["gft"]), str(runs["sft"]), "--out", str(out)])
    names = sorted(p.name for p in out.iterdir())
    expected = ["grad_norm.png", "kl_to_base_per_token.png", "sample_acc.png", "val_acc.png"]
    assert names == sorted([*expected, "val_entropy.png", "zero_var_frac.png"])
    printed = capsys.readouterr().out
    assert "| gft | 3 | 0.7 | 3 | 0.002 | 0.02 | 0.5 |" in printed
    assert f"Wrote {out / 'val_entropy.png'}" in printed
    with pytest.raises(SystemExit, match=r"error: .*nowhere.*no metrics\.jsonl"):
        main([str(tmp_path / "nowhere"), "--out", str(out)])
    with pytest.raises(SystemExit, match=r"error: unknown metric 'entropyy'"):
        main([str(runs["gft"]), "--out", str(out), "--metrics", "entropyy"])


def test_chain_stages_continues_the_iterations(tmp_path):
    from mlx_gft.plots import chain_stages

    for stage, losses in (("1-sft", [2.0, 1.0]), ("2-gft", [0.5, 0.25, 0.125])):
        folder = tmp_path / stage
        folder.mkdir()
        rows = [{"iteration": 0, "val_loss": 9.0}]
        rows += [{"iteration": i + 1, "loss": v} for i, v in enumerate(losses)]
        (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    series = chain_stages([tmp_path / "1-sft", tmp_path / "2-gft"])
    assert series["loss"] == [(1, 2.0), (2, 1.0), (3, 0.5), (4, 0.25), (5, 0.125)]
    assert series["val_loss"] == [(0, 9.0), (2, 9.0)]  # stage 2 starts where stage 1 ended
    written = plot_runs({"sft+gft": series}, tmp_path / "png", ["loss"])
    assert written[0].stat().st_size > 1000


def test_labels_name_the_runs_in_order(runs, tmp_path, capsys):
    """--label, once per run: the table and legend use the labels, the runs keep their
    order; a missing or repeated label is an error that says how many were given."""
    out = tmp_path / "labelled"
    main([str(runs["gft"]), str(runs["sft"]), "--out", str(out), "--label", "GFT, tau 0.5",
          "--label", "SFT"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "| GFT, tau 0.5 | 3 | 0.7 | 3 | 0.002 | 0.02 | 0.5 |" in printed
    assert "| SFT |" in printed and "| gft |" not in printed
    with pytest.raises(SystemExit, match=r"--label: .*2 runs, 1 labels"):
        main([str(runs["gft"]), str(runs["sft"]), "--out", str(out), "--label", "GFT"])
    with pytest.raises(SystemExit, match=r"--label: .*2 runs, 2 labels"):
        main([str(runs["gft"]), str(runs["sft"]), "--out", str(out), "--label", "a",
              "--label", "a"])  # fmt: skip
