"""The paper-setting benchmark's per-layer model, against hand-computed numbers."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "paper_setting", Path(__file__).resolve().parent.parent / "benchmarks" / "paper_setting.py"
)
paper_setting = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_setting)


def test_fit_line_through_two_and_three_points():
    line = paper_setting.fit_line({2: 3.0, 4: 5.0})
    assert (line.fixed, line.per_layer) == pytest.approx((1.0, 1.0))
    assert line.at(28) == pytest.approx(29.0)
    # Least squares: (2, 3), (4, 5), (6, 8): means 4 and 16/3, slope 10/8, intercept 1/3.
    line = paper_setting.fit_line({2: 3.0, 4: 5.0, 6: 8.0})
    assert (line.fixed, line.per_layer) == pytest.approx((1 / 3, 1.25))
    with pytest.raises(ValueError, match="two layer counts"):
        paper_setting.fit_line({2: 3.0})


def _row(variant, layers, weights, **peaks):
    return {"variant": variant, "layers": layers, "micro": 1, "weights_gb": weights, **peaks}


def test_estimate_splits_weights_from_activations_and_scales_each():
    # Weights 1.0 + 0.1 L, peak 2.0 + 1.1 L: activations 1.0 fixed + 1.0 per layer.
    rows = [
        _row("iteration", 2, 1.2, sample_peak_gb=0.5, update_peak_gb=4.2),
        _row("iteration", 4, 1.4, sample_peak_gb=0.7, update_peak_gb=6.4),
        _row("mlx_lm-sft", 2, 1.2, sft_peak_gb=9.0),
        {"variant": "mlx_lm-sft", "layers": 4, "micro": 1, "failed": "out of memory"},
    ]
    [e] = paper_setting.estimate(rows)  # SFT: one layer count left, no fit
    assert (e["variant"], e["measured_layers"]) == ("iteration", [2, 4])
    assert (e["fixed_gb"], e["per_layer_gb"]) == pytest.approx((2.0, 1.1))
    assert e["float32_gb"] == pytest.approx(2.0 + 1.1 * 28)
    # bf16: weights (1.0 + 2.8) / 2, fixed activations 1.0, per-layer ones 28 / 2.
    assert e["bfloat16_gb"] == pytest.approx(1.9 + 1.0 + 14.0)
    assert e["4bit_gb"] == pytest.approx(3.8 * 4.5 / 32 + 1.0 + 14.0)
    # 75% of 16 GB is 12 GB: 16.9 and 15.5 GB need a 24 GB Mac.
    assert e["bfloat16_fits"] == e["4bit_fits"] == [24, 32, 64]


def test_estimate_halves_mlx_lm_logits_with_the_weights():
    # mlx_lm's loss takes the logits in the model's dtype: its fixed activations halve too.
    rows = [_row("mlx_lm-sft", 2, 1.2, sft_peak_gb=4.2, rows=1),
            _row("mlx_lm-sft", 4, 1.4, sft_peak_gb=6.4, rows=1)]  # fmt: skip
    [e] = paper_setting.estimate(rows)
    assert e["rows"] == 1
    assert e["bfloat16_gb"] == pytest.approx(1.9 + 0.5 + 14.0)
