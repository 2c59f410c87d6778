"""Quiet groups and where an iteration's time goes: dynamic sampling (DAPO) draws more
prompts until the batch holds groups with reward spread, resumes exactly, and is
bounded; every phase of an iteration is timed; Apple silicon's wired limit is set as
mlx_lm.lora sets it."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load
from test_train import quick_run

from mlx_gft.config import build_config
from mlx_gft.data import read_jsonl, tokenize_rows
from mlx_gft.rewards import load_rewards
from mlx_gft.rollout import gather_groups

pytestmark = pytest.mark.slow

# Half of the built-in task's prompts (by a checksum of their text) get the same reward
# for every answer, so their groups are quiet; the others are graded by answer length.
QUIET_HALF = """
def score(prompt, completion, **kwargs):
    if sum(map(ord, prompt)) % 2:
        return 1.0
    return float(len(completion) % 3 == 0)
"""


@pytest.fixture
def quiet_half(tmp_path) -> str:
    path = tmp_path / "quiet_half.py"
    path.write_text(QUIET_HALF)
    return f"{path}:score"


def test_dynamic_sampling_keeps_the_groups_with_spread(tiny_model, arithmetic_data, quiet_half):
    model, tokenizer = load(str(tiny_model))
    rows = read_jsonl(arithmetic_data / "train.jsonl")
    examples = tokenize_rows(rows, tokenizer, 512, True)
    config = build_config(
        batch_size=4, group_size=2, max_completion_length=8, dynamic_sampling=True,
        max_sampling_rounds=5, reward=[quiet_half],
    )  # fmt: skip
    reward_fns = load_rewards(config.reward, None)
    drawn = []

    def draw():
        start = 4 * len(drawn)
        drawn.append(examples[start : start + 4])
        return len(drawn), drawn[-1]

    batch = gather_groups(model, tokenizer, draw, config, reward_fns)
    m = batch.metrics
    assert m["sampling_rounds"] == len(drawn) and m["prompts_drawn"] == 4 * len(drawn)
    assert m["groups_kept"] == len(batch.groups.sizes) <= 4
    assert len(drawn) == 5 or m["groups_kept"] == 4  # full, or stopped at the bound
    assert len(drawn) > 1  # half of the prompts are quiet: one batch is not enough
    # Every group kept has reward spread: some of its advantages are not 0.
    adv = np.array(batch.advantages)
    starts = np.cumsum([0, *batch.groups.sizes])
    assert all(np.abs(adv[a:b]).max() > 0 for a, b in zip(starts, starts[1:], strict=False))
    assert not batch.quiet.any()
    # ... and they are the first ones drawn with spread, in the data order.
    kept = [member.example for member in batch.groups.members]
    order = [e for round_ in drawn for e in round_]
    assert sorted({order.index(e) for e in kept}) == sorted(
        dict.fromkeys(order.index(e) for e in kept)
    )


def test_a_resumed_dynamic_run_ends_as_the_unbroken_run(
    tiny_model, arithmetic_data, tmp_path, quiet_half
):
    common = ["--save-every", "2", "--seed", "3", "--dynamic-sampling", "--reward", quiet_half]
    full, _ = quick_run(tiny_model, arithmetic_data, tmp_path / "full", "--iters", "4", *common)
    quick_run(tiny_model, arithmetic_data, tmp_path / "part", "--iters", "2", *common)
    _, lines = quick_run(
        tiny_model, arithmetic_data, tmp_path / "part", "--iters", "4", "--resume", *common
    )
    assert "Resuming from iteration 2" in lines
    rounds = [r["sampling_rounds"] for r in full["reports"]]
    assert sum(rounds) > 4  # some iterations drew more than one batch
    a = mx.load(str(tmp_path / "full" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "part" / "adapters.safetensors"))
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), atol=1e-5)
    states = [
        json.loads((tmp_path / run / "checkpoint" / "state.json").read_text())
        for run in ("full", "part")
    ]
    assert states[0] == states[1] and states[0]["data_position"] == sum(rounds)


def test_sampling_rounds_are_bounded_and_said(tiny_model, arithmetic_data, tmp_path):
    """Every group quiet: each iteration draws max_sampling_rounds batches, keeps
    nothing, makes no update, and the run says so once and in every report."""
    reward = tmp_path / "same.py"
    reward.write_text("def score(completion, **kwargs):\n    return 1.0\n")
    results, lines = quick_run(
        tiny_model, arithmetic_data, tmp_path / "ad", "--iters", "2", "--dynamic-sampling",
        "--max-sampling-rounds", "3", "--reward", f"{reward}:score",
    )  # fmt: skip
    reports = results["reports"]
    assert [r["sampling_rounds"] for r in reports] == [3, 3]
    assert [r["prompts_drawn"] for r in reports] == [6, 6] and [r["groups"] for r in reports] == [
        0,
        0,
    ]
    assert [r["idle_updates"] for r in reports] == [1, 1]
    notes = [line for line in lines if "--max-sampling-rounds" in line]
    assert notes == [
        "Note: iteration 1 trains on 0 of 2 groups: no more had reward spread in 3 batches "
        "(--max-sampling-rounds); the report lines count groups and rounds."
    ]
    assert any("Groups 0.0 of 6.0 in 3.0 rounds" in line for line in lines)


def test_every_phase_of_an_iteration_is_timed(tiny_model, arithmetic_data, tmp_path):
    folder = tmp_path / "ad"
    results, lines = quick_run(
        tiny_model,
        arithmetic_data,
        folder,
        "--iters",
        "2",
        "--steps-per-eval",
        "1",
        "--save-every",
        "1",
    )
    rows = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    for phase in ("sample", "reward", "update", "val", "probe", "save"):
        assert all(r[f"{phase}_time"] > 0 for r in train), phase
    assert all(r["val_time"] > 0 for r in rows if "val_loss" in r)
    report = next(line for line in lines if line.startswith("Iter 2: Train loss"))
    assert "Sec/it sample " in report and " update " in report and " save " in report


def test_the_wired_limit_is_set_as_mlx_lm_sets_it(
    tiny_model, arithmetic_data, tmp_path, monkeypatch
):
    """On Apple silicon mlx_lm.lora wires the recommended working set; the CPU reports
    none, so the device info is faked here."""
    wired = []
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 12345})
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: wired.append(n) or 0)
    quick_run(tiny_model, arithmetic_data, tmp_path / "ad", "--iters", "1", "--loss", "sft")
    assert wired == [12345]
