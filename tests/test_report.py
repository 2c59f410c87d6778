"""mlx_gft.report: the HTML page from a tiny run's files, its pieces, and the page in a
real browser (headless Chromium: no console message, every logged member shown)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlx_gft.job import run
from mlx_gft.lora import parse_config
from mlx_gft.report import build_report, main, nice_ticks, read_groups

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# As the machine probe starts it: no first-run, sync or background connections.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
    "--enable-logging=stderr", "--v=0",
)  # fmt: skip


@pytest.fixture(scope="module")
def logged_run(tiny_model, arithmetic_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run") / "gft"
    argv = (
        f"--model {tiny_model} --data {arithmetic_data} --train --adapter-path {folder} "
        "--iters 2 --batch-size 2 --group-size 3 --max-completion-length 10 --num-layers -1 "
        "--steps-per-report 1 --val-batches 1 --probe-size 2 --log-completions"
    ).split()
    run(parse_config(argv), log=lambda _: None)
    return folder


def _browser() -> str | None:
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def load_in_browser(page: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """(the DOM after loading, the console messages Chromium logged)."""
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium here (apt-get install chromium)")
    done = subprocess.run(
        [browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow
def test_the_report_renders_every_logged_member_in_chromium(logged_run, tmp_path):
    page = tmp_path / "report.html"
    main([str(logged_run), "-o", str(page)])
    dom, console = load_in_browser(page, tmp_path)
    assert console == []
    members = sum(len(r["members"]) for r in read_groups(logged_run))
    assert members == 2 * 2 * 4  # 2 iterations x 2 groups x (expert + 3 samples)
    assert len(re.findall(r'class="member[ "]', dom)) == members
    assert dom.count("<svg") >= 6  # the dashboard's panels
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:)?//', page.read_text())


@pytest.mark.slow
def test_the_console_check_sees_an_error(tmp_path):
    """The check above can fail: a page that logs an error is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><p class="member">x</p><script>console.error("boom")</script>')
    _, console = load_in_browser(page, tmp_path)
    assert len(console) == 1 and '"boom"' in console[0]


@pytest.mark.slow
def test_text_is_escaped_and_runs_overlay(logged_run, tmp_path):
    other = tmp_path / "sft"
    other.mkdir()
    rows = [{"iteration": 1, "val_entropy": 0.5, "grad_norm": 4.0, "grad_norm_clipped": 1.0}]
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_groups(logged_run)
    records[0]["prompt"] = "<script>alert(1)</script> & more"
    hostile = tmp_path / "hostile"
    shutil.copytree(logged_run, hostile)
    (hostile / "completions.jsonl").write_text(json.dumps(records[0]) + "\n")
    page = build_report({"gft": hostile, "sft": other})
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    # One colour per run in every panel: gft's first, sft's second of the palette.
    assert page.count('stroke="#1f77b4"') > 0 and page.count('stroke="#ff7f0e"') > 0
    assert "No run here logged" not in page
    assert "No run here logged" in build_report({"sft": other})
    only = build_report({"gft": logged_run}, iterations=[2])
    assert "iteration 2 · group" in only and "iteration 1 · group" not in only
    with pytest.raises(ValueError, match="unknown metric 'val_entrpy'"):
        build_report({"sft": other}, metrics=["val_entrpy"])


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.0, 0.83) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.0, 3.93) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert nice_ticks(1, 20, integer=True) == [0, 5, 10, 15, 20]
    assert nice_ticks(1, 2, integer=True) == [1, 2]
    assert nice_ticks(3.0, 3.0) == [3.0, 3.25, 3.5, 3.75, 4.0]  # one point: still an axis


def test_a_group_of_a_skipped_step_renders_its_nulls():
    """A step skipped as non-finite logs null log-probs and weights: drawn, not a crash."""
    from mlx_gft.report import group_view

    member = {"kind": "sample", "text": "x y", "reward": None, "rewards": {}, "advantage": 0.5,
              "truncated": False, "trained": True, "tokens": ["x", " y"],
              "logp": [None, -0.5], "coef": [None, 1.0], "weight": [None, 0.25]}  # fmt: skip
    record = {"iteration": 3, "group": 0, "prompt": "p", "answer": "1", "tau": 0.5,
              "members": [member]}  # fmt: skip
    page = group_view(record, "run")
    assert page.count('<span class="t') == 2 and "weight +0.25" in page and "weight +nan" in page


def test_labels_name_the_runs_on_the_page(logged_run, tmp_path):
    page = tmp_path / "labelled.html"
    main([str(logged_run), "-o", str(page), "--label", "GFT <tau 0.5>"])
    text = page.read_text()
    assert "GFT &lt;tau 0.5&gt;" in text and "<tau 0.5>" not in text
    with pytest.raises(SystemExit, match=r"--label: .*1 runs, 2 labels"):
        main([str(logged_run), "-o", str(page), "--label", "a", "--label", "b"])
