"""A metric with nothing to average is not measured: `-` on the report line, null in
metrics.jsonl, left out for services and plots; never NaN."""

import json
import math

from mlx_gft.job import run
from mlx_gft.lora import parse_config
from mlx_gft.metrics import StepStats, iteration_metrics, jsonable, report_line, summarise


def _update(**changes) -> StepStats:
    values = dict(loss=0.5, grad_norm=1.0, clipped_norm=1.0, response_tokens=10,
                  metric_tokens=10, entropy_sum=5.0)  # fmt: skip
    return StepStats(**{**values, **changes})


def _window(*updates: StepStats) -> dict:
    row = {**iteration_metrics(list(updates)), "sample_time": 1.0, "update_time": 1.0}
    return summarise([row], 1) | {"learning_rate": 1e-5, "trained_tokens": 10,
                                   "peak_memory_gb": 1.0}  # fmt: skip


def test_an_iteration_with_no_scored_token_has_no_entropy_not_nan():
    r = _window(_update(metric_tokens=0, entropy_sum=0.0))
    assert r["entropy"] is None
    assert "Entropy -" in report_line(r) and "nan" not in report_line(r).lower()


def test_a_window_of_skipped_updates_has_a_null_loss_and_the_others_average_the_rest():
    r = _window(_update(loss=math.nan, grad_norm=math.inf, clipped_norm=math.inf, skipped=1))
    assert r["loss"] is None and r["grad_norm"] is None and r["grad_norm_clipped"] is None
    assert "Train loss -" in report_line(r) and "Grad norm -" in report_line(r)
    assert json.loads(json.dumps(jsonable(r), allow_nan=False))["loss"] is None
    mixed = _window(_update(loss=math.nan, skipped=1), _update(loss=0.25))
    assert mixed["loss"] == 0.25 and mixed["skipped"] == 1


def test_jsonable_writes_null_for_nan_and_keeps_numbers():
    assert jsonable({"a": math.nan, "b": 1.5, "c": None, "d": 3}) == {
        "a": None, "b": 1.5, "c": None, "d": 3,
    }  # fmt: skip


def test_an_all_truncated_run_reports_no_nan(tiny_model, arithmetic_data, tmp_path):
    # One token per sample: every sample is cut off, and with mask_truncated none is
    # scored, so the samples' entropy has nothing to average.
    lines = []
    argv = (
        f"--model {tiny_model} --data {arithmetic_data} --train --adapter-path {tmp_path} "
        "--iters 2 --batch-size 2 --group-size 2 --max-completion-length 1 --num-layers -1 "
        "--steps-per-report 1 --steps-per-eval 2 --val-batches 1 --probe-size 2 --seed 3"
    ).split()
    run(parse_config(argv), log=lines.append)
    rows = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert train and all(r["truncated_frac"] == 1.0 for r in train)
    assert all(r["entropy"] is None for r in train)
    text = (tmp_path / "metrics.jsonl").read_text() + "\n".join(map(str, lines))
    assert "nan" not in text.lower()
    assert any("Entropy -" in str(line) for line in lines)
