"""TRL's reward-function API, f(prompts, completions, **kwargs) -> list[float | None], next
to the per-sample one: detection by signature, what a batch call receives, None entries,
samples no reward scored, time limits, load-time checks and a training run."""

import json
import re
import time

import mlx.core as mx
import numpy as np
import pytest

from mlx_gft.advantages import group_advantages, scored_advantages, zero_variance_fraction
from mlx_gft.rewards import (
    Reward,
    RewardError,
    TrainerState,
    batch_arguments,
    check_rewards,
    load_reward,
    load_rewards,
    score,
)

SAMPLES = [
    {"prompt": "1+1?", "completion": "2", "answer": "2", "level": 1, "kind": "expert"},
    {"prompt": "1+1?", "completion": "3", "answer": "2", "level": 1, "kind": "sampled"},
    {"prompt": "2+2?", "completion": "4", "answer": "4", "level": 2, "kind": "sampled"},
]


class Recorder:
    """A TRL reward that keeps what each call received."""

    def __init__(self, values=None):
        self.calls: list[dict] = []
        self.values = values

    def __call__(self, prompts, completions, answer, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, "answer": answer,
                           **kwargs})  # fmt: skip
        if self.values is not None:
            return self.values
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]


# --------------------------------------------------------------------------------------
# Which API: read from the signature when the reward loads


def trl_accuracy(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]


def trl_length(completions, **kwargs):  # TRL's docs' example takes no prompts
    return [float(len(c)) for c in completions]


def per_sample(prompt, completion, answer=None, **kwargs):
    return float(completion == answer)


def test_the_api_is_read_from_the_signature():
    loaded = load_rewards([trl_accuracy, trl_length, per_sample, lambda **kw: 1.0])
    assert [r.batch for r in loaded] == [True, True, False, False]
    assert Reward(name="r", fn=Recorder()).batch  # a callable object's __call__ counts


def test_a_trl_reward_loads_from_a_file(tmp_path):
    path = tmp_path / "trl_rewards.py"
    path.write_text(
        "def accuracy(prompts, completions, answer, **kwargs):\n"
        "    return [float(c == a) for c, a in zip(completions, answer)]\n"
    )
    (reward,) = load_rewards([f"{path}:accuracy"])
    assert reward.batch and reward.name == "accuracy"
    total, columns = score([reward], SAMPLES)
    assert total.tolist() == [1.0, 0.0, 1.0] and columns["accuracy"].tolist() == [1, 0, 1]


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda prompt, completions, **kw: [], "takes prompt and completions"),
        (lambda prompts, completions: [], r"must accept \*\*kwargs.*per batch as in TRL"),
        (lambda completions, /, **kw: [], r"completions cannot be passed by name"),
        (lambda text: 1.0, r"must accept \*\*kwargs.*per sample"),
    ],
)
def test_a_signature_that_fits_neither_api_fails_at_load(fn, message):
    with pytest.raises(RewardError, match=message):
        load_rewards([fn])


def test_file_spec_with_a_bad_signature_names_the_spec(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("def both(prompt, completions, **kw):\n    return []\n")
    with pytest.raises(RewardError, match=r"r\.py:both' takes prompt and completions"):
        load_reward(f"{path}:both")


# --------------------------------------------------------------------------------------
# What a batch call receives


def test_one_call_per_batch_with_trls_keyword_lists():
    recorder = Recorder()
    samples = [{**s, "completion_ids": [7, i, 2]} for i, s in enumerate(SAMPLES)]
    total, _ = score(load_rewards([recorder]), samples, trainer_state="state")
    assert total.tolist() == [1.0, 0.0, 1.0]
    (call,) = recorder.calls  # one call for the whole batch
    assert call["prompts"] == ["1+1?", "1+1?", "2+2?"]
    assert call["completions"] == ["2", "3", "4"]
    assert call["answer"] == ["2", "2", "4"]
    assert call["level"] == [1, 1, 2]  # a dataset column: one entry per sample
    assert call["kind"] == ["expert", "sampled", "sampled"]
    assert call["completion_ids"] == [[7, 0, 2], [7, 1, 2], [7, 2, 2]]
    assert call["trainer_state"] == "state"
    assert call["reference"] == [None] * 3  # absent from the samples: None, as per sample
    assert "prompt" not in call and "completion" not in call


def test_trainer_state_counts_optimizer_steps_of_the_stage_and_epochs():
    from mlx_gft.config import build_config
    from mlx_gft.trainer import trainer_state

    # Two updates per sampled batch: TRL's global_step and max_steps count updates.
    config = build_config(updates_per_batch=2)
    state = trainer_state(config, iteration=5, total_iters=10, batches_per_epoch=4)
    assert state == TrainerState(global_step=10, max_steps=20, epoch=1.25)
    assert trainer_state(build_config(), 0, 7, 3) == TrainerState(0, 7, 0.0)


def test_columns_some_samples_lack_are_none_there():
    samples = [SAMPLES[0], {"prompt": "p", "completion": "c", "extra": 5}]
    kwargs = batch_arguments(samples)
    assert kwargs["extra"] == [None, 5] and kwargs["level"] == [1, None]
    assert kwargs["completion_ids"] == [None, None] and kwargs["trainer_state"] is None


def test_conversational_form_when_every_sample_has_its_chat():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    samples = [{"prompt": "1+1?", "completion": "2", "prompt_messages": chat}] * 2
    kwargs = batch_arguments(samples)
    assert kwargs["prompts"] == [chat, chat]
    assert kwargs["completions"] == [[{"role": "assistant", "content": "2"}]] * 2
    assert "prompt_messages" not in kwargs
    mixed = batch_arguments([samples[0], {"prompt": "1+1?", "completion": "2"}])
    assert mixed["prompts"] == ["1+1?", "1+1?"] and mixed["completions"] == ["2", "2"]


def test_a_conversational_reward_on_strings_gets_a_hint():
    def trl_think_format(completions, **kwargs):
        return [float("<think>" in c[0]["content"]) for c in completions]

    with pytest.raises(RewardError, match=r"TypeError.*passed as strings.*completion\[0\]"):
        score(load_rewards([trl_think_format]), SAMPLES)


def test_an_async_reward_is_awaited():
    async def judge(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    for timeout in (None, 5):  # on this thread, and on the time-limited worker thread
        total, _ = score(load_rewards([judge]), SAMPLES, timeout=timeout)
        assert total.tolist() == [0.5, 0.5, 0.5]


def test_both_apis_in_one_weighted_sum():
    loaded = load_rewards([trl_accuracy, per_sample, trl_length], weights=[1.0, 2.0, 0.5])
    total, columns = score(loaded, SAMPLES)
    np.testing.assert_allclose(columns["trl_accuracy"], [1, 0, 1])
    np.testing.assert_allclose(columns["per_sample"], [1, 0, 1])
    np.testing.assert_allclose(total, [3.5, 0.5, 3.5])


# --------------------------------------------------------------------------------------
# None: no reward for this sample


def test_none_is_left_out_of_the_weighted_sum():
    only_level_1 = Recorder(values=[1.0, 0.0, None])  # e.g. a reward for one task type
    only_level_2 = Recorder(values=[None, None, 0.25])
    loaded = load_rewards([only_level_1, only_level_2], weights=[1.0, 2.0])
    total, columns = score(loaded, SAMPLES)
    assert np.isnan(columns["Recorder"][2]) and np.isnan(columns["Recorder#1"][:2]).all()
    np.testing.assert_allclose(total, [1.0, 0.0, 0.5])


def test_a_sample_no_reward_scored_is_nan_in_the_sum():
    loaded = load_rewards([Recorder(values=[1.0, None, float("nan")])])  # NaN: TRL's None
    total, _ = score(loaded, SAMPLES)
    assert total[0] == 1.0 and np.isnan(total[1:]).all()
    # A weight-0 reward is only logged: its score does not make a sample count.
    logged = load_rewards([Recorder(values=[1.0, None, None]), trl_length], weights=[1.0, 0.0])
    total, _ = score(logged, SAMPLES)
    assert total[0] == 1.0 and np.isnan(total[1:]).all()


def test_unscored_samples_are_left_out_of_their_group():
    # Groups of 4 and 3; NaN marks the samples no reward scored.
    total = np.array([1.0, np.nan, 0.0, 0.5, np.nan, np.nan, np.nan])
    adv, zero_var = scored_advantages(total, [4, 3])
    expected = np.array(group_advantages([1.0, 0.0, 0.5], [3]))
    np.testing.assert_allclose(np.array(adv), [expected[0], 0, expected[1], expected[2], 0, 0, 0])
    assert zero_var == 0.5  # the group with nothing scored teaches nothing
    batch, _ = scored_advantages(total, [4, 3], "batch")
    np.testing.assert_allclose(
        np.array(batch)[[0, 2, 3]], np.array(group_advantages([1.0, 0.0, 0.5], [3], scale="batch"))
    )
    nothing, zero_var = scored_advantages(np.full(4, np.nan), [2, 2])
    assert np.array(nothing).tolist() == [0, 0, 0, 0] and zero_var == 1.0


def test_without_nan_the_statistics_are_exactly_the_plain_ones():
    total = np.array([1.0, 0.0, 0.25, 2.0, 2.0, 0.5])
    adv, zero_var = scored_advantages(total, [3, 3])
    assert mx.array_equal(adv, group_advantages(total, [3, 3]))
    assert zero_var == zero_variance_fraction(total, [3, 3])


# --------------------------------------------------------------------------------------
# Wrong results and time limits


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (1.0, r"returned a float \('1.0'\) for a batch of 3 samples"),
        (None, r"returned None for a batch of 3 samples"),
        ("1,0,1", r"returned a str"),
        ([1.0, 0.0], r"returned 2 values for a batch of 3 samples"),
        ([1.0, "no", 0.0], r"returned 'no' on sample 1 \(prompt '1\+1\?', completion '3'\)"),
        ([1.0, float("inf"), 0.0], r"returned inf on sample 1"),
    ],
)
def test_a_bad_batch_result_names_the_reward_and_the_rule(values, problem):
    def batch_reward(prompts, completions, **kwargs):
        return values

    with pytest.raises(RewardError) as info:
        score(load_rewards([batch_reward]), SAMPLES)
    message = str(info.value)
    assert "'batch_reward'" in message and "list of 3 floats" in message
    assert re.search(problem, message), message


def test_a_batch_gets_the_per_sample_limit_times_its_size():
    def slow(completions, **kwargs):  # 0.4 s for 3 samples: within 3 x 0.2 s
        time.sleep(0.4)
        return [1.0] * len(completions)

    def stuck(completions, **kwargs):
        time.sleep(30)

    assert score(load_rewards([slow]), SAMPLES, timeout=0.2)[0].tolist() == [1.0] * 3
    tic = time.perf_counter()
    with pytest.raises(RewardError, match=r"no result within 0.6 s \(--reward-timeout 0.2 s x 3"):
        score(load_rewards([stuck]), SAMPLES, timeout=0.2)
    assert time.perf_counter() - tic < 3


def test_an_exception_names_the_batch():
    def broken(completions, **kwargs):
        raise KeyError("solution")

    with pytest.raises(RewardError, match=r"raised KeyError: 'solution' on a batch of 3 samples"):
        score(load_rewards([broken]), SAMPLES)


# --------------------------------------------------------------------------------------
# Before the model loads: arguments the data cannot give


ROWS = [("train.jsonl:1", {"columns": {"solution": "2", "level": 1}}),
        ("train.jsonl:2", {"columns": {"level": 2}})]  # fmt: skip


def test_required_arguments_are_checked_against_the_training_rows():
    check_rewards(None, None, ROWS)  # the default reward: nothing to check
    check_rewards(["math"], None, ROWS)
    check_rewards([trl_accuracy, per_sample], None, ROWS)  # type: ignore[list-item]

    def needs_level(completions, level, **kwargs):
        return [1.0] * len(completions)

    def needs_solution(completions, solution, **kwargs):
        return [1.0] * len(completions)

    check_rewards([needs_level], [1.0], ROWS)  # type: ignore[list-item]
    with pytest.raises(RewardError) as info:
        check_rewards([needs_solution], None, ROWS)  # type: ignore[list-item]
    message = str(info.value)
    assert "requires 'solution'" in message and "train.jsonl:2" in message
    assert "the ground truth is passed as 'answer'" in message


# --------------------------------------------------------------------------------------
# From the command line: fails before the model loads, and trains


TRL_REWARD_FILE = """
import json

LOG = {log!r}


def length_or_none(prompts, completions, completion_ids, kind, trainer_state, **kwargs):
    with open(LOG, "a") as f:
        f.write(json.dumps({{
            "n": len(completions),
            "prompts_are_str": all(isinstance(p, str) for p in prompts),
            "ids_are_ints": all(isinstance(t, int) for ids in completion_ids for t in ids),
            "answers": len(kwargs["answer"]),
            "kinds": sorted(set(kind)),
            # As TRL rewards read transformers' TrainerState: attributes, not keys.
            "global_step": trainer_state.global_step,
            "max_steps": trainer_state.max_steps,
            "epoch": trainer_state.epoch,
        }}) + "\\n")
    # No reward for the expert's answer: the samples' lengths alone make the groups.
    return [None if k == "expert" else len(c) / 10 for c, k in zip(completions, kind)]
"""


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def r(prompt, completions, **kw):\n    return []\n", "takes prompt and completions"),
        ("def r(prompts, completions):\n    return []\n", r"must accept \*\*kwargs"),
        ("def r(completions, solution, **kw):\n    return []\n", "requires 'solution'"),
    ],
)
def test_a_bad_reward_stops_the_run_before_the_model_loads(
    tmp_path, arithmetic_data, source, message
):
    from mlx_gft.job import run
    from mlx_gft.lora import parse_config

    path = tmp_path / "bad.py"
    path.write_text(source)
    argv = ["--model", str(tmp_path / "no-such-model"), "--data", str(arithmetic_data)]
    lines = []
    with pytest.raises(RewardError, match=message):
        run(parse_config([*argv, "--train", "--reward", f"{path}:r"]), log=lines.append)
    assert not any(line.startswith("Loading model") for line in lines)


@pytest.mark.slow
def test_training_with_a_trl_reward_from_the_command_line(tmp_path, tiny_model, arithmetic_data):
    from mlx_gft.lora import main

    log = tmp_path / "calls.jsonl"
    reward = tmp_path / "trl_reward.py"
    reward.write_text(TRL_REWARD_FILE.format(log=str(log)))
    adapters = tmp_path / "ad"
    main(
        f"--model {tiny_model} --data {arithmetic_data} --train --adapter-path {adapters} "
        "--iters 3 --batch-size 2 --group-size 3 --max-completion-length 16 --num-layers -1 "
        "--steps-per-report 1 --probe-size 2 --val-batches 1 --no-mask-truncated "
        f"--reward math {reward}:length_or_none --reward-weights 0 1".split()
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 3  # one call per iteration, for all its groups' members
    for call in calls:
        assert call["n"] == 2 * (1 + 3) == call["answers"]  # 2 prompts x (expert + 3 samples)
        assert call["prompts_are_str"] and call["ids_are_ints"]
        assert call["kinds"] == ["expert", "sampled"]
    # The optimizer steps done before each call, of 3; 32 rows in batches of 2 are 16 per epoch.
    assert [c["global_step"] for c in calls] == [0, 1, 2]
    assert [c["max_steps"] for c in calls] == [3, 3, 3]
    assert [c["epoch"] for c in calls] == [0.0, 1 / 16, 2 / 16]
    metrics = [json.loads(s) for s in (adapters / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in metrics if "loss" in m]
    assert [m["iteration"] for m in trained] == [1, 2, 3]
    # The unscored experts were left out of their groups (A = 0): NaN rewards would have
    # made every advantage NaN and every update a skipped one.
    assert all(np.isfinite(m["loss"]) and m["skipped"] == 0 for m in trained)
    assert all(np.isfinite(m["reward_sampled"]) and "reward_expert" not in m for m in trained)
    assert (adapters / "adapters.safetensors").exists()


@pytest.mark.slow
def test_sft_verified_checks_the_experts_once_at_step_0(tmp_path, tiny_model, arithmetic_data):
    from mlx_gft.lora import main

    log = tmp_path / "states.jsonl"
    reward = tmp_path / "accept.py"
    reward.write_text(
        "import json\n"
        "def accept(completions, trainer_state, **kwargs):\n"
        "    s = trainer_state\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(json.dumps([s.global_step, s.max_steps, s.epoch]) + '\\n')\n"
        "    return [1.0] * len(completions)\n"
    )
    main(
        f"--model {tiny_model} --data {arithmetic_data} --train --adapter-path {tmp_path / 'ad'} "
        "--iters 2 --batch-size 2 --loss sft-verified --num-layers -1 --val-batches 1 "
        f"--probe-size 2 --reward {reward}:accept".split()
    )
    # SFT samples nothing: the reward runs once, on the expert answers, before training.
    assert [json.loads(line) for line in log.read_text().splitlines()] == [[0, 2, 0.0]]
