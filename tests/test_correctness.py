"""Defects found in review (issue 18), each pinned by a test that failed before its fix."""

import json

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load

from mlx_gft.config import build_config
from mlx_gft.data import DataError, read_jsonl, tokenize_rows
from mlx_gft.job import run
from mlx_gft.lora import main, parse_config
from mlx_gft.models import setup_trainable
from mlx_gft.rollout import reference_logprobs
from mlx_gft.step import Stepper, make_optimizer
from mlx_gft.validation import make_probe, probe_kl, validate


def _write(folder, rows, name="train.jsonl"):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


LONG = "one two three four five six seven eight nine ten " * 6


@pytest.mark.slow
def test_sft_on_answers_longer_than_max_seq_length(tiny_model, tmp_path):
    """Item 1: it used to crash in pad_batch ("max() arg is an empty sequence")."""
    rows = [{"prompt": f"say {i}", "completion": LONG} for i in range(4)]
    data = _write(tmp_path / "data", rows)
    base = f"--model {tiny_model} --data {data} --train --loss sft --iters 2 --batch-size 2 "
    base += "--num-layers -1 --max-seq-length 48 --steps-per-report 1 --probe-size 1"
    # The default policy (long_prompts: error) names the row, before any training.
    with pytest.raises(DataError, match=r"train.jsonl:1: prompt \+ answer is \d+ tokens"):
        run(parse_config(f"{base} --adapter-path {tmp_path / 'a'}".split()), log=lambda *_: None)
    # truncate: SFT trains on the cut answers, as mlx_lm.lora does; the count is reported.
    lines = []
    argv = f"{base} --long-prompts truncate --adapter-path {tmp_path / 'b'}".split()
    reports = run(parse_config(argv), log=lines.append)["reports"]
    assert any("4 row(s) longer than --max-seq-length 48" in line for line in lines)
    assert [r["train_tokens"] > 0 for r in reports] == [True, True]
    assert all(np.isfinite(r["loss"]) for r in reports)


def test_long_rows_are_skipped_and_counted(tiny_model, tmp_path):
    _, tokenizer = load(str(tiny_model))
    rows = [{"prompt": "hi", "completion": LONG}, {"prompt": "hi", "completion": "ok"}]
    data = _write(tmp_path / "data", rows)
    lines = []
    kept = tokenize_rows(
        read_jsonl(data / "train.jsonl"), tokenizer, 48, False, "skip", lines.append
    )
    assert [e.expert_text for e in kept] == ["ok"]
    assert "1 row(s) longer than --max-seq-length 48: skipped" in lines[0]


def test_rows_with_and_without_answer_stop_before_the_model_loads(tmp_path, capsys):
    """Item 2: one row without `answer` used to switch the reward to token F1 silently."""
    rows = [
        {"prompt": "1+1?", "completion": "2", "answer": "2"},
        {"prompt": "2+2?", "completion": "4", "answer": "4"},
        {"prompt": "3+3?", "completion": "6"},
    ]
    data = _write(tmp_path / "data", rows)
    missing_model = tmp_path / "no-model-here"  # never reached
    with pytest.raises(SystemExit) as stop:
        main(["--data", str(data), "--train", "--model", str(missing_model)])
    message = str(stop.value)
    assert "train.jsonl:3: field 'answer'" in message and "train.jsonl:1" in message


@pytest.mark.slow
def test_the_reward_in_use_is_printed_first(tiny_model, arithmetic_data, tmp_path):
    lines = []
    argv = f"--model {tiny_model} --data {arithmetic_data} --train --iters 1 --batch-size 2 "
    argv += f"--group-size 2 --max-completion-length 8 --adapter-path {tmp_path / 'a'} "
    argv += "--val-batches 1 --probe-size 1 --num-layers -1"
    run(parse_config(argv.split()), log=lines.append)
    reward_line = next(i for i, line in enumerate(lines) if line.startswith("Reward: "))
    assert "math verifier" in lines[reward_line]
    assert reward_line < next(i for i, line in enumerate(lines) if line.startswith("Iter 1"))


def test_a_dropped_teacher_takes_its_text_with_it(tiny_model, tmp_path):
    """Item 3: the first teacher too long, the second kept: ids and text stay paired."""
    _, tokenizer = load(str(tiny_model))
    row = {"prompt": "hi", "completion": "ok", "teacher_responses": [LONG, "short one"]}
    data = _write(tmp_path / "data", [row])
    (ex,) = tokenize_rows(read_jsonl(data / "train.jsonl"), tokenizer, 48, True, "error", print)
    assert ex.teacher_texts == ["short one"]
    assert tokenizer.decode(ex.teachers[0]).strip().startswith("short one")


def _dropout_model(tiny_model):
    model, tokenizer = load(str(tiny_model))
    config = build_config(num_layers=-1, lora_parameters={"dropout": 0.5}, loss="grpo")
    mx.random.seed(0)
    setup_trainable(model, config)
    # Non-zero LoRA B so the dropped-out inputs change the output.
    for layer in model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.v_proj):
            proj.lora_b = mx.random.normal(proj.lora_b.shape) * 0.5
    model.train()
    return model, tokenizer, config


@pytest.mark.slow
def test_everything_but_the_update_runs_without_dropout(tiny_model, arithmetic_data):
    """Item 4: with LoRA dropout 0.5, evaluating the same batch twice gives the same
    numbers (KL probe, validation, GRPO's reference log-probs)."""
    from mlx_gft import data as data_lib

    model, tokenizer, config = _dropout_model(tiny_model)
    config.max_completion_length, config.probe_size, config.val_batches = 8, 2, 1
    config.batch_size, config.updates_per_batch, config.kl_coef = 2, 2, 0.1
    rows = data_lib.load_splits(str(arithmetic_data))["valid"]
    examples = tokenize_rows(rows, tokenizer, 512, True, "error", print)[:2]
    probe = make_probe(model, tokenizer, examples, config)
    assert probe_kl(model, probe) == probe_kl(model, probe)
    first, second = (validate(model, tokenizer, examples, config, ()) for _ in range(2))
    assert first == second
    tokens = probe["tokens"]
    start = tokens.shape[1] - 1 - probe["mask"].shape[1]
    zeros = mx.zeros(probe["mask"].shape)
    (old1, base1), (old2, base2) = (
        reference_logprobs(model, tokens, start, config, zeros) for _ in range(2)
    )
    assert np.array_equal(np.array(old1), np.array(old2))
    assert np.array_equal(np.array(base1), np.array(base2))
    assert model.training  # and the update still trains with dropout


def _update_batch(adv):
    tokens = mx.array([[1, 5, 9, 12, 40, 41], [1, 5, 7, 8, 30, 31]])
    mask = mx.ones((2, 5))
    zeros = mx.zeros((2, 5))
    return [(tokens, mask, mx.array(adv), zeros, zeros)]


def test_an_update_without_reward_spread_leaves_the_weights_alone(tiny_model):
    """Item 6: all advantages zero, yet AdamW's weight decay and momentum moved them."""
    model, _ = load(str(tiny_model))
    config = build_config(num_layers=-1, batch_size=1)
    setup_trainable(model, config)
    optimizer = optim.AdamW(learning_rate=1e-2, weight_decay=0.1)
    stepper = Stepper(model, optimizer, config)
    assert stepper.update(_update_batch([0.5, -0.5])).idle == 0  # momentum exists now
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    stats = stepper.update(_update_batch([0.0, 0.0]))
    after = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    assert stats.idle == 1
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert optimizer.step.item() == 2  # the schedule still counts it


def test_the_lr_schedule_is_written_in_iterations():
    """Item 7: with 2 updates per batch, a 10-iteration decay ended at iteration 5."""
    schedule = {"name": "linear_schedule", "arguments": [1.0, 0.0, 10]}
    config = build_config(lr_schedule=schedule, updates_per_batch=2, batch_size=2)
    optimizer = make_optimizer(config)
    params = {"w": mx.zeros((1,))}
    optimizer.init(params)
    used = []  # the rate each update applied
    for _ in range(10 * 2):  # 10 iterations x 2 updates per batch
        params = optimizer.apply_gradients({"w": mx.zeros((1,))}, params)
        used.append(optimizer.learning_rate.item())
    # Both updates of iteration i use the schedule's value at i (before: at 2i and 2i+1).
    expected = [1 - i / 10 for i in range(10) for _ in range(2)]
    np.testing.assert_allclose(used, expected, atol=1e-6)


def test_the_command_line_switches_off_a_yaml_boolean(tmp_path):
    """Item 9: mask_truncated is on by default and --no-mask-truncated beats YAML."""
    assert build_config().mask_truncated
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("mask_truncated: true\nmask_prompt: true\n")
    config = parse_config(["-c", str(yaml_file), "--no-mask-truncated", "--no-mask-prompt"])
    assert not config.mask_truncated and not config.mask_prompt
    assert parse_config(["-c", str(yaml_file)]).mask_truncated


def test_a_batch_with_nothing_to_train_on_is_skipped_and_counted(tiny_model):
    """Item 1's last case: every member of the batch is left out of the loss (the expert
    cut by max_seq_length, the samples cut by max_completion_length and masked): the
    iteration is idle, not a crash, and the weights stay as they were."""
    from mlx_gft.data import Example
    from mlx_gft.groups import build_groups
    from mlx_gft.rollout import training_arrays
    from mlx_gft.sampling import Sample
    from mlx_gft.step import run_updates

    model, tokenizer = load(str(tiny_model))
    config = build_config(num_layers=-1, batch_size=1, group_size=2)
    setup_trainable(model, config)
    ex = Example([1, 3, 4], [7, 8], expert_truncated=True)
    cut = [Sample(0, [11, 12, 13], "x", [0.0] * 3, [0.0] * 3, "length") for _ in range(2)]
    groups = build_groups([ex], cut, group_size=2, teacher_count=1)
    start, arrays = training_arrays(model, tokenizer, groups, mx.array([1.0, -1.0]), config)
    stepper = Stepper(model, optim.AdamW(learning_rate=1e-2), config)
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    metrics = run_updates(stepper, groups.sizes, start, arrays, config).metrics
    after = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    assert metrics["idle_updates"] == 1 and metrics["train_tokens"] == 0
    assert all(np.array_equal(before[k], after[k]) for k in before)
