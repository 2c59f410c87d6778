"""why_gft's verdict line: which runs count as GFT or SFT family, and when a gap is one."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "why_gft.py"
spec = importlib.util.spec_from_file_location("why_gft", SCRIPT)
why_gft = importlib.util.module_from_spec(spec)
spec.loader.exec_module(why_gft)


@pytest.mark.parametrize(
    "label, family",
    [
        ("sft", "sft"),
        ("sft-verified", "sft"),
        ("dft", "sft"),
        ("sft@74", "sft"),
        ("sft+sft-verified", "sft"),
        ("gft", "gft"),
        ("gft@10", "gft"),
        ("sft+gft: 2-gft", "gft"),
        ("sft+gft", "gft"),
        ("sft+gft: 1-sft", "sft"),  # a pipeline's first stage is SFT at half the steps
        ("sft+gft: 2-sft-verified", "sft"),
        ("sft: 1-sft", "sft"),
        ("gft:dynamic", "gft"),
        ("gft:tau=0.1@10", "gft"),
        ("sft:lr=0.0001", "sft"),
        ("sft+gft:dynamic: 2-gft", "gft"),
        ("sft:lr=3e-5+gft:lr=1e-4: 1-sft", "sft"),
        ("sft:lr=3e-5+gft:lr=1e-4", "gft"),
        ("sft:lr=3e-5@10", "sft"),
        # RL after either is compared with RL after the other, not with SFT alone.
        ("sft+gft: 3-grpo", None),
        ("sft: 2-grpo", None),
        ("grpo", None),
        ("base", None),
        ("warm start", None),
    ],
)
def test_family(label, family):
    assert why_gft.family(label) == family


def test_method_names_carry_options():
    assert why_gft.parse_method("sft", 20) == (["sft"], 20, [{}])
    assert why_gft.parse_method("sft+gft@40", 20) == (["sft", "gft"], 40, [{}, {}])
    assert why_gft.parse_method("gft:tau=0.1:dynamic:rounds=3@10", 20) == (
        ["gft"],
        10,
        [{"tau": 0.1, "dynamic_sampling": True, "max_sampling_rounds": 3}],
    )
    assert why_gft.parse_method("sft:lr=1e-4", 20)[2] == [{"learning_rate": 1e-4}]
    # A pipeline's stages keep their own options (each stage at its own learning rate).
    assert why_gft.parse_method("sft:lr=3e-5+gft:lr=1e-4:tau=0.1@10", 20) == (
        ["sft", "gft"],
        10,
        [{"learning_rate": 3e-5}, {"learning_rate": 1e-4, "tau": 0.1}],
    )
    assert why_gft.parse_method("gft:no-mask-truncated", 20)[2] == [{"mask_truncated": False}]
    for bad in ("gft:dynamic=1", "gft:tau", "gft:beta=2", "gft:no-mask-truncated=1"):
        with pytest.raises(SystemExit, match="unknown option"):
            why_gft.parse_method(bad, 20)
    with pytest.raises(SystemExit, match="lr takes a number, not 'fast'"):
        why_gft.parse_method("gft:lr=fast", 20)
    # The off-policy mechanism arms: the overlong punishment and unscaled advantages.
    assert why_gft.parse_method("gft:no-mask-truncated:overlong=32:adv-scale=none", 20)[2] == [
        {"mask_truncated": False, "overlong_buffer": 32, "adv_scale": "none"}
    ]
    with pytest.raises(SystemExit, match="adv_scale: 'bogus' is not one of"):
        why_gft.parse_method("gft:adv-scale=bogus", 20)


def _runs(**avg_by_label):
    """{seed: {label: {'avg_at_k': v}}} from label=[v_seed0, v_seed1, ...]."""
    n = len(next(iter(avg_by_label.values())))
    return {s: {k: {"avg_at_k": v[s]} for k, v in avg_by_label.items()} for s in range(n)}


def test_verdict_names_the_best_of_each_family_and_the_winner():
    # Best SFT-family run is sft-verified (0.85), best GFT is gft (0.90): gap 5 points,
    # spreads 1 and 2 points.
    runs = _runs(base=[0.1, 0.1], sft=[0.70, 0.72], **{"sft-verified": [0.84, 0.86]},
                 gft=[0.88, 0.92], grpo=[0.99, 0.99])  # fmt: skip
    line = why_gft.verdict(runs, 4)
    assert (
        "GFT-family run gft: avg@4 90.0%" in line and "SFT-family run sft-verified: 85.0%" in line
    )
    assert line.endswith("GFT ahead by 5.0 points (spread ±2.0).")
    # GRPO alone is in neither family, however well it does.
    assert "grpo" not in line


def test_verdict_calls_a_gap_within_the_spread_or_under_the_margin_no_winner():
    wide = why_gft.verdict(_runs(sft=[0.80, 0.80], gft=[0.76, 0.94]), 4)  # +5, spread 9
    assert "No clear winner: the gap (+5.0 points)" in wide and "(±9.0)" in wide
    small = why_gft.verdict(_runs(sft=[0.80, 0.80], gft=[0.82, 0.82]), 4)  # +2 < 3
    assert "No clear winner" in small
    sft_wins = why_gft.verdict(_runs(sft=[0.90, 0.92], gft=[0.80, 0.80]), 4)
    assert sft_wins.endswith("SFT ahead by 11.0 points (spread ±1.0).")


def test_verdict_on_one_seed_or_one_family():
    one = why_gft.verdict(_runs(sft=[0.5], gft=[0.9]), 4)
    assert "One seed: nothing to judge a gap by" in one and "ahead" not in one
    # With the metric's standard errors (3 and 4 points): twice that of the difference
    # is 2 * 5 = 10 points; a 40-point gap is beyond it, a 5-point gap within.
    runs = _runs(sft=[0.5], gft=[0.9])
    runs[0]["sft"]["avg_stderr"], runs[0]["gft"]["avg_stderr"] = 0.03, 0.04
    assert "the gap (+40.0 points) is beyond twice the standard error of the difference (10.0)" in (
        why_gft.verdict(runs, 4)
    )
    runs[0]["gft"]["avg_at_k"] = 0.55
    assert "(+5.0 points) is within twice" in why_gft.verdict(runs, 4)
    assert why_gft.verdict(_runs(sft=[0.5, 0.6], grpo=[0.9, 0.9]), 4) == ""


def test_verdict_skips_a_run_not_scored_on_every_seed():
    # gft@10 scored on seed 0 only (0.99) must not beat gft's mean over both seeds.
    runs = _runs(sft=[0.80, 0.80], gft=[0.70, 0.72])
    runs[0]["gft@10"] = {"avg_at_k": 0.99}
    line = why_gft.verdict(runs, 4)
    assert "GFT-family run gft: avg@4 71.0%" in line and "gft@10" not in line
    assert line.endswith("SFT ahead by 9.0 points (spread ±1.0).")


def test_expert_style_writes_off_policy_training_answers_and_an_own_style_warm_start(tmp_path):
    import argparse
    import json

    args = argparse.Namespace(
        warm_start=2, train_size=6, test_problems=8, difficulty=1, wrong_experts=0.0,
        ood_level=0, expert_style="steps",
    )  # fmt: skip
    why_gft.write_task(args, 0, tmp_path)

    def rows(folder):
        return [json.loads(s) for s in (tmp_path / folder / "train.jsonl").read_text().splitlines()]

    train, warm = rows("data"), rows("data_warm")
    assert len(train) == 6 and all(r["completion"].endswith("}") for r in train)
    assert all("\\boxed" in r["completion"] for r in train)
    assert len(warm) == 8 and all(
        r["completion"].endswith(f"The answer is {r['answer']}.") for r in warm
    )


def test_pipeline_stages_train_at_their_own_options(monkeypatch, tmp_path):
    """'sft:lr=3e-5+gft:lr=1e-4:tau=0.1': the job's stage configs carry each stage's own
    learning rate and tau, and the run-wide rate stays the command line's."""
    from argparse import Namespace

    from mlx_gft.config import build_config, stage_configs

    seen = {}

    def fake_train(config, folder, reuse, label):
        seen["config"] = config
        return {"minutes": 1.0, "stage_minutes": {}}

    monkeypatch.setattr(why_gft, "_train", fake_train)
    args = Namespace(
        model=None, data=str(tmp_path), iters=20, learning_rate=1e-5, num_layers=4,
        group_size=4, tau=0.5, max_tokens=64, eval_every=10, warm_start=0, then_grpo=0,
        score_every=0, reuse=False,
    )  # fmt: skip
    why_gft.train_method("sft:lr=3e-5+gft:lr=1e-4:tau=0.1", args, 0, tmp_path)
    stages = stage_configs(build_config(**seen["config"]))
    assert [(s.loss, s.iters, s.learning_rate, s.tau) for s in stages] == [
        ("sft", 10, 3e-5, 0.5),
        ("gft", 10, 1e-4, 0.1),
    ]
    why_gft.train_method("gft:lr=1e-4:tau=0.1", args, 0, tmp_path)
    one = build_config(**seen["config"])
    assert (one.loss, one.learning_rate, one.tau, one.stages) == ("gft", 1e-4, 0.1, None)
    # One loss: its options are the run's, so a --then-grpo stage keeps them too.
    args.then_grpo = 5
    why_gft.train_method("gft:lr=1e-4:dynamic", args, 0, tmp_path)
    stages = stage_configs(build_config(**seen["config"]))
    assert [(s.loss, s.iters, s.learning_rate, s.dynamic_sampling) for s in stages] == [
        ("gft", 20, 1e-4, True),
        ("grpo", 5, 1e-4, True),
    ]


def test_a_bad_method_option_stops_before_any_data_is_written(tmp_path):
    """A typo in --methods is a one-line error and leaves no run folder behind."""
    import subprocess
    import sys

    out = tmp_path / "runs"
    cmd = [sys.executable, str(SCRIPT), "--methods", "sft,gft:bogus", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown option 'bogus'" in done.stderr
    assert not out.exists()


def test_a_mean_over_seeds_carries_its_spread():
    """why_gft's pass@k of several seeds: the mean at each k, and half the range, which
    mlx_gft.plots draws as error bars."""
    curves = [[0.5, 0.7, 0.8], [0.7, 0.8, 0.9], [0.6, 0.9, 1.0]]
    series = why_gft.seed_spread(curves, "pass_at_k")
    assert [k for k, _ in series["pass_at_k"]] == [1, 2, 3]
    assert [v for _, v in series["pass_at_k"]] == pytest.approx([0.6, 0.8, 0.9])
    assert [v for _, v in series["pass_at_k_spread"]] == pytest.approx([0.1, 0.1, 0.1])
