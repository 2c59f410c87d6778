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

from mlx_gft.batches import DataStream, batch_number
from mlx_gft.config import build_config
from mlx_gft.data import read_jsonl, tokenize_rows
from mlx_gft.rewards import load_rewards
from mlx_gft.rollout import gather_groups
from mlx_gft.tasks.arithmetic import write_dataset

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


# Prompts with an odd checksum get the same reward for every answer (quiet groups); the
# others reward the expert's answer alone (spread), whatever the model samples.
QUIET_BY_PROMPT = """
def score(prompt, kind, **kwargs):
    return 1.0 if sum(map(ord, prompt)) % 2 or kind == "expert" else 0.0
"""


def test_dynamic_sampling_keeps_the_groups_with_spread(tiny_model, arithmetic_data, tmp_path):
    model, tokenizer = load(str(tiny_model))
    rows = read_jsonl(arithmetic_data / "train.jsonl")
    examples = tokenize_rows(rows, tokenizer, 512, True)
    reward = tmp_path / "quiet_by_prompt.py"
    reward.write_text(QUIET_BY_PROMPT)
    config = build_config(
        batch_size=4, group_size=2, max_completion_length=8, dynamic_sampling=True,
        max_sampling_rounds=5, reward=[f"{reward}:score"],
    )  # fmt: skip
    reward_fns = load_rewards(config.reward, None)
    odd = [sum(map(ord, e.prompt_text)) % 2 == 1 for e in examples]
    quiet = [e for e, q in zip(examples, odd, strict=True) if q]
    spread = [e for e, q in zip(examples, odd, strict=True) if not q]
    # Two groups with spread, then none, then three: one more than the batch needs.
    rounds = [
        [quiet[0], spread[0], quiet[1], spread[1]],
        quiet[2:6],
        [spread[2], quiet[6], spread[3], spread[4]],
    ]
    drawn = []

    def draw():
        drawn.append(rounds[len(drawn)])
        return len(drawn), drawn[-1]

    batch = gather_groups(model, tokenizer, draw, config, reward_fns)
    m = batch.metrics
    assert len(drawn) == m["sampling_rounds"] == 3 and m["prompts_drawn"] == 12
    assert m["groups_kept"] == len(batch.groups.sizes) == 4
    # Every group kept has reward spread: some of its advantages are not 0.
    adv = np.array(batch.advantages)
    starts = np.cumsum([0, *batch.groups.sizes])
    assert all(np.abs(adv[a:b]).max() > 0 for a, b in zip(starts, starts[1:], strict=False))
    assert not batch.quiet.any()
    # ... and they are the first batch_size groups with spread in the draw order, whole:
    # the fifth one, drawn in the same round as the third and fourth, is left out.
    kept = [[member.example for member in batch.groups.members[a:b]] for a, b in
            zip(starts, starts[1:], strict=False)]  # fmt: skip
    assert [[id(e) for e in group] for group in kept] == [[id(e)] * 3 for e in spread[:4]]


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
    # Iterations drew more than one batch before the resume point too: the checkpoint
    # the resumed run starts from is one whose data order ran ahead of its iterations.
    assert sum(rounds[:2]) > 2 and sum(rounds) > 4
    a = mx.load(str(tmp_path / "full" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "part" / "adapters.safetensors"))
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), atol=1e-5)
    states = [
        json.loads((tmp_path / run / "checkpoint" / "state.json").read_text())
        for run in ("full", "part")
    ]
    assert states[0] == states[1] and states[0]["data_position"] == sum(rounds)


def _turning_seed(count: int, position: int) -> int:
    """A data-order seed whose epoch, `count` batches long, ends at `position` with the
    batch the next epoch starts with."""
    return next(
        s
        for s in range(100)
        if batch_number(count, position, s) == batch_number(count, position + 1, s)
    )


def test_an_iteration_skips_a_batch_it_drew_before_the_epoch_turned():
    """Three batches, the last of epoch 0 first in epoch 1: an iteration that drew it at
    position 2 skips it at 3 (the position moves on), draws the other two, then has
    nothing left to draw; the next iteration starts where it stopped."""
    batches = [np.array([2 * i, 2 * i + 1]) for i in range(3)]
    seed = _turning_seed(3, 2)
    stream = DataStream(batches, seed, position=2)
    draws = [stream.next(since=2) for _ in range(4)]
    assert [d[0] for d in draws[:3]] == [2, 4, 5] and draws[3] is None
    assert sorted(i for _, indices in draws[:3] for i in indices) == list(range(6))
    assert stream.position == 6 and stream.next(since=6)[0] == 6
    # Without an iteration to keep apart, the data order is drawn as it comes.
    plain = DataStream(batches, seed, position=2)
    assert plain.next()[1] == plain.next()[1]


# A TRL reward that logs what each call (one per sampling round) was given, and scores
# every answer alike: every group is quiet, so every iteration draws all its rounds.
LOGGING_QUIET = """
import json

def logged(prompts, completions, trainer_state, **kwargs):
    with open({log!r}, "a") as f:
        f.write(json.dumps([trainer_state.global_step, trainer_state.epoch, sorted(set(prompts))]))
        f.write("\\n")
    return [1.0] * len(completions)
"""


def test_dynamic_rounds_at_an_epoch_boundary_draw_new_prompts_and_count_the_epoch(
    tiny_model, tmp_path
):
    """Six rows in batches of 2: 3 batches per epoch. Two rounds per iteration, so the
    second iteration draws positions 2 and 3, where epoch 1 starts with the batch epoch
    0 ended with: it skips that one and draws position 4. Rewards are told the epoch by
    the batches drawn (0, 2/3, 5/3), not by the iterations (0, 1/3, 2/3)."""
    data = write_dataset(tmp_path / "data", n_train=6, n_valid=2, n_test=2)
    log, reward = tmp_path / "calls.jsonl", tmp_path / "logged.py"
    reward.write_text(LOGGING_QUIET.format(log=str(log)))
    seed = _turning_seed(3, 2)
    quick_run(
        tiny_model, data, tmp_path / "ad", "--iters", "3", "--dynamic-sampling",
        "--max-sampling-rounds", "2", "--seed", str(seed), "--reward", f"{reward}:logged",
    )  # fmt: skip
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [step for step, _, _ in calls] == [0, 0, 1, 1, 2, 2]
    for it in range(3):
        first, second = (set(prompts) for step, _, prompts in calls if step == it)
        assert len(first) == len(second) == 2 and not first & second, it
    assert [epoch for step, epoch, _ in calls[::2]] == pytest.approx([0, 2 / 3, 5 / 3])
    state = json.loads((tmp_path / "ad" / "checkpoint" / "state.json").read_text())
    assert state["data_position"] >= 7  # 6 drawn, and at least the one skipped


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
        "Note: iteration 1 trains on 0 of 2 groups: no more had reward spread in the 3 "
        "batches it drew (at most --max-sampling-rounds 3, and each batch of the data once); "
        "the report lines count groups and rounds."
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
