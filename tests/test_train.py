"""End-to-end training on the tiny model through the CLI entry points."""

import json
import random

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_gft
from mlx_gft.config import ConfigError
from mlx_gft.data import DataError
from mlx_gft.job import run
from mlx_gft.lora import main, parse_config
from mlx_gft.trainer import stopped_ending

pytestmark = pytest.mark.slow

QUICK = (
    "--batch-size 2 --group-size 3 --max-completion-length 16 --num-layers -1 "
    "--test-batches 1 --steps-per-report 1 --probe-size 2 --val-batches 1"
).split()


def quick_run(tiny_model, data, adapters, *extra, log=None):
    argv = f"--model {tiny_model} --data {data} --train --adapter-path {adapters}".split()
    argv += [*QUICK, *extra]
    lines = []
    results = run(parse_config(argv), log=log or lines.append)
    return results, lines


@pytest.mark.parametrize("loss", ["gft", "sft", "sft-verified", "dft", "grpo"])
def test_each_loss_trains_and_saves_mlx_lm_adapters(tiny_model, arithmetic_data, tmp_path, loss):
    extra = ["--iters", "2", "--loss", loss]
    if loss == "grpo":
        # Self-samples only: the tiny model is never right, so a user reward that grades
        # length gives the groups the reward spread GRPO needs to move at all.
        reward = tmp_path / "length_reward.py"
        reward.write_text("def score(completion, **kw):\n    return len(completion) / 10\n")
        extra += ["--kl-coef", "0.05", "--updates-per-batch", "2", "--reward", f"{reward}:score"]
        # The tiny model's samples all run to the length limit: masked (the default),
        # GRPO would have no token to learn from.
        extra += ["--no-mask-truncated"]
    results, lines = quick_run(tiny_model, arithmetic_data, tmp_path / "ad", *extra)
    reports = results["reports"]
    assert len(reports) == 2 and all(np.isfinite(r["loss"]) for r in reports)
    assert any(line.startswith("Iter 2: Train loss") for line in lines)
    if loss == "gft":
        assert 0.0 <= reports[-1]["zero_var_frac"] <= 1.0
        assert "sample_acc" in reports[-1]
    if loss == "grpo":
        assert reports[-1]["zero_var_frac"] < 1.0
    # The adapters load in mlx-lm unchanged and change the model's output.
    from mlx_lm import load

    base, _ = load(str(tiny_model))
    tuned, _ = load(str(tiny_model), adapter_path=str(tmp_path / "ad"))
    x = mx.array([[1, 5, 9, 12]])
    assert not np.allclose(np.array(base(x)), np.array(tuned(x)))
    metrics = [json.loads(s) for s in (tmp_path / "ad" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["iteration"] == 0 and "val_loss" in metrics[0]  # the starting point
    assert [m["iteration"] for m in metrics if "loss" in m] == [1, 2]


@pytest.mark.parametrize(
    "shares, said",
    [
        ([0.0, 0.31, 0.53, 0.88, 0.97], True),  # off-policy GFT, seed 1: drifted, said at 5
        ([0.0, 0.09, 0.34, 0.38, 0.41, 0.12], False),  # seed 0: never half cut off
        ([0.94, 0.94, 0.6, 0.3, 0.06], False),  # a base model that rambles, then learns
        ([1.0, 1.0, 1.0, 1.0], False),  # never ended: nothing it used to do
        ([0.0, 0.6, 0.1, 0.6, 0.6], False),  # spikes, not three in a row
        ([0.0, 0.6, 0.6], False),  # three in a row but nothing ended before them
    ],
)
def test_samples_that_stop_ending_are_told_from_a_rambling_start(shares, said):
    assert stopped_ending(shares) is said


def test_a_tiny_model_that_never_ended_gets_no_note(tiny_model, arithmetic_data, tmp_path):
    """Its samples run to the length limit from the first iteration: not a drift, no
    note; and expert-only data misses no teacher answers (it counted 3 per row)."""
    results, lines = quick_run(tiny_model, arithmetic_data, tmp_path / "a", "--iters", "3")
    assert all(r["truncated_frac"] >= 0.5 for r in results["reports"])
    assert not [line for line in lines if "mask_truncated" in line]
    assert [r["missing_teachers"] for r in results["reports"]] == [0.0, 0.0, 0.0]


def test_a_drift_into_cut_off_samples_is_said_once(
    tiny_model, arithmetic_data, tmp_path, monkeypatch
):
    """The trainer asks stopped_ending with every iteration's share and says it once."""
    seen = []
    monkeypatch.setattr(mlx_gft.trainer, "stopped_ending", lambda s: seen.append(list(s)) or True)
    results, lines = quick_run(tiny_model, arithmetic_data, tmp_path / "a", "--iters", "2")
    notes = [line for line in lines if "mask_truncated" in line]
    assert len(notes) == 1 and notes[0].startswith("Note: iteration 1: samples that used to end")
    assert seen[0] == [results["reports"][0]["truncated_frac"]]
    _, lines = quick_run(
        tiny_model, arithmetic_data, tmp_path / "b", "--iters", "1", "--no-mask-truncated"
    )
    assert not [line for line in lines if "mask_truncated" in line]


def test_resume_matches_an_unbroken_run(tiny_model, arithmetic_data, tmp_path):
    common = ["--save-every", "2", "--seed", "3"]
    full, _ = quick_run(tiny_model, arithmetic_data, tmp_path / "full", "--iters", "4", *common)
    quick_run(tiny_model, arithmetic_data, tmp_path / "part", "--iters", "2", *common)
    part, lines = quick_run(
        tiny_model, arithmetic_data, tmp_path / "part", "--iters", "4", "--resume", *common
    )
    assert "Resuming from iteration 2" in lines
    a = mx.load(str(tmp_path / "full" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "part" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), atol=1e-5)
    # The last report is the unbroken run's: running counts carry on from the checkpoint.
    unbroken, resumed = full["reports"][-1], part["reports"][-1]
    assert resumed["trained_tokens"] == unbroken["trained_tokens"] > 0
    clock = ("_time", "per_sec", "memory_gb")  # seconds, rates and memory differ run to run
    assert resumed.keys() == unbroken.keys()
    for key, value in unbroken.items():
        if not key.endswith(clock) and value is not None:
            assert resumed[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_yaml_only_configuration(tmp_path, tiny_model, arithmetic_data):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {tiny_model}\ndata: {arithmetic_data}\ntrain: true\niters: 1\n"
        f"adapter_path: {tmp_path / 'ad'}\nloss: dft\nmask_prompt: true\n"
        "lora_parameters: {rank: 4, scale: 10.0}\ngroup_size: 7\nnum_layers: -1\n"
    )
    config = parse_config(["-c", str(cfg)])
    assert (config.loss, config.iters, config.mask_prompt, config.group_size) == ("dft", 1, True, 7)
    assert config.lora_parameters == {"rank": 4, "scale": 10.0, "dropout": 0.0}
    # The command line wins over YAML, and only for what it names.
    config = parse_config(["-c", str(cfg), "--group-size", "2"])
    assert (config.group_size, config.loss) == (2, "dft")
    run(config, log=lambda *_: None)
    saved = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert saved["lora_parameters"]["rank"] == 4 and saved["fine_tune_type"] == "lora"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("lora_layers: 4\n", "did you mean 'num_layers'"),
        ("lora_parameters: {alpha: 16}\n", "did you mean 'scale'"),
        ("loss: ppo\n", "loss: 'ppo' is not one of"),
        ("model_dtype: int4\n", "model_dtype: 'int4' is not one of"),
    ],
)
def test_config_errors_suggest_the_right_name(tmp_path, yaml_text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        parse_config(["-c", str(cfg)])


def test_every_unknown_yaml_key_is_named_at_once_with_its_line(tmp_path):
    """A misspelt file names all its unknown keys, not one per attempt."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "iters: 3\nlerning_rate: 1e-5\nbatch_size: 2\ngroup_sise: 4\n"
        "lora_parameters: {rank: 8, alpha: 16}\n"
    )
    with pytest.raises(ConfigError) as e:
        parse_config(["-c", str(cfg)])
    assert str(e.value).splitlines() == [
        f"{cfg}: 3 unknown keys:",
        f"  {cfg}:2: 'lerning_rate'; did you mean 'learning_rate'?",
        f"  {cfg}:4: 'group_sise'; did you mean 'group_size'?",
        f"  {cfg}:5: 'lora_parameters.alpha'; did you mean 'scale'?",
    ]
    cfg.write_text("iters: 3\n\nlerning_rate: 1e-5\n")
    with pytest.raises(ConfigError) as e:
        parse_config(["-c", str(cfg)])
    assert str(e.value) == f"{cfg}:3: unknown key 'lerning_rate'; did you mean 'learning_rate'?"


def _folder(tmp_path, train_text):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "train.jsonl").write_text(train_text)
    return folder


@pytest.mark.parametrize(
    ("train_text", "message"),
    [
        (
            '{"prompt": "1+1?", "completion": "2"}\n{"prompt": "2+2?"\n',
            r"train.jsonl:2: malformed JSON",
        ),
        ('{"prompt": "1+1?"}\n', r"train.jsonl:1: has 'prompt' but no 'completion'"),
        ('{"prompt": "1+1?", "completion": 2}\n', r"train.jsonl:1: field 'completion'"),
        ('{"text": "hello"}\n', "has no prompt to sample"),
        ("", "training set .* missing or empty"),
        ('{"prompt": "' + "one two three " * 400 + '", "completion": "2"}\n', "--max-seq-length"),
    ],
)
def test_bad_data_is_a_clear_error_with_no_outputs(tmp_path, tiny_model, train_text, message):
    folder = _folder(tmp_path, train_text)
    ad = tmp_path / "ad"
    argv = f"--model {tiny_model} --data {folder} --train --iters 1 --adapter-path {ad}".split()
    argv += ["--max-seq-length", "256"]
    with pytest.raises(DataError, match=message):
        run(parse_config(argv))
    assert not (tmp_path / "ad").exists()


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(tmp_path / "missing"), "--train", "--model", str(tmp_path)])
    assert "error:" in str(exit_info.value)


def test_gft_raises_the_sampled_reward(tiny_model, tmp_path):
    """A learning test: a dense user reward (shorter answers score higher).

    A random tiny model's samples vary in length, so every group has reward spread; GFT
    must move the policy towards short answers within a few dozen steps. (A sparse reward
    such as "answer is all digits" takes off on some seeds and not others here: with a
    near-uniform policy every token has p << tau and DCR weights it by p.)
    """
    folder = tmp_path / "data"
    folder.mkdir()
    rng = random.Random(0)
    words = ["apple", "river", "stone", "cloud", "green", "house", "light", "music"]
    prompts = [" ".join(rng.choice(words) for _ in range(3)) for _ in range(64)]
    rows = [{"prompt": p, "completion": "7 7 7 7 7 7"} for p in prompts]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    reward = tmp_path / "short.py"
    reward.write_text("def score(completion, **kw):\n    return -len(completion) / 20\n")
    argv = (
        f"--model {tiny_model} --data {folder} --train --iters 30 --batch-size 4 "
        "--group-size 4 --max-completion-length 8 --num-layers -1 --learning-rate 3e-3 "
        f"--steps-per-report 5 --reward {reward}:score --adapter-path {tmp_path / 'ad'} "
        "--probe-size 2 --seed 2 --no-mask-truncated"  # the reward grades length itself
    ).split()
    reports = run(parse_config(argv), log=lambda *_: None)["reports"]
    rewards = [r["reward_sampled"] for r in reports]
    assert rewards[-1] > rewards[0] + 0.2, rewards


def test_dora_and_fused_adapters_work_in_mlx_lm(tiny_model, arithmetic_data, tmp_path):
    """DoRA adapters load by adapter_config.json alone, and mlx_lm.fuse folds them in."""
    import subprocess
    import sys

    from mlx_lm import load

    quick_run(
        tiny_model,
        arithmetic_data,
        tmp_path / "ad",
        "--iters",
        "2",
        "--fine-tune-type",
        "dora",
        "--learning-rate",
        "1e-2",
    )
    saved = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert saved["fine_tune_type"] == "dora"
    tuned, _ = load(str(tiny_model), adapter_path=str(tmp_path / "ad"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "fuse",
            "--model",
            str(tiny_model),
            "--adapter-path",
            str(tmp_path / "ad"),
            "--save-path",
            str(tmp_path / "fused"),
        ],
        check=True,
        capture_output=True,
    )
    fused, _ = load(str(tmp_path / "fused"))
    base, _ = load(str(tiny_model))
    x = mx.array([[1, 5, 9, 12, 40]])
    np.testing.assert_allclose(np.array(fused(x)), np.array(tuned(x)), atol=1e-4)
    assert not np.allclose(np.array(base(x)), np.array(tuned(x)), atol=1e-4)


def test_qlora_on_a_quantized_base(tiny_model, arithmetic_data, tmp_path):
    from mlx_lm import convert, load

    convert(
        str(tiny_model), mlx_path=str(tmp_path / "q4"), quantize=True, q_bits=4, q_group_size=32
    )
    results, _ = quick_run(
        tmp_path / "q4", arithmetic_data, tmp_path / "ad", "--iters", "2", "--learning-rate", "1e-2"
    )
    assert np.isfinite(results["reports"][-1]["loss"])
    base, _ = load(str(tmp_path / "q4"))
    tuned, _ = load(str(tmp_path / "q4"), adapter_path=str(tmp_path / "ad"))
    x = mx.array([[1, 5, 9, 12, 40]])
    assert not np.allclose(np.array(base(x)), np.array(tuned(x)), atol=1e-4)


def test_python_api(tiny_model, arithmetic_data, tmp_path):
    results = mlx_gft.train(
        model=str(tiny_model),
        data=str(arithmetic_data),
        iters=1,
        batch_size=2,
        group_size=2,
        max_completion_length=8,
        num_layers=-1,
        adapter_path=str(tmp_path / "ad"),
        probe_size=1,
        log=lambda *_: None,
    )
    assert results["reports"][0]["iteration"] == 1
    assert (tmp_path / "ad" / "adapters.safetensors").exists()


def test_non_finite_steps_are_skipped_then_stop_training(tiny_model):
    import mlx.optimizers as optim
    from mlx_lm import load

    from mlx_gft.config import build_config
    from mlx_gft.models import setup_trainable
    from mlx_gft.step import Stepper, TrainingStopped

    model, _ = load(str(tiny_model))
    config = build_config(num_layers=-1, max_skipped_steps=2)
    setup_trainable(model, config)
    stepper = Stepper(model, optim.AdamW(learning_rate=1e-2), config)
    tokens = mx.array([[1, 5, 9, 12, 40, 41]])
    mask = mx.ones((1, 5))
    zeros = mx.zeros((1, 5))

    def batch(adv):
        return [(tokens, mask, mx.array([adv]), zeros, zeros)]

    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    assert stepper.update(batch(float("nan"))).skipped == 1
    after = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing applied
    assert stepper.update(batch(1.0)).skipped == 0  # a good step resets the count
    stepper.update(batch(float("inf")))
    with pytest.raises(TrainingStopped, match="2 consecutive steps"):
        stepper.update(batch(float("nan")))


def test_real_weights_and_the_built_in_task(tmp_path):
    """The default path end to end on real pretrained weights (SmolLM2's first 2 layers):
    no --data means the built-in task; held-out accuracy is measured before and after."""
    from real_model import smollm_path

    lines = []
    results = mlx_gft.train(
        model=str(smollm_path(2)),
        iters=1,
        batch_size=2,
        group_size=2,
        max_completion_length=16,
        num_layers=-1,
        adapter_path=str(tmp_path / "ad"),
        probe_size=1,
        test=True,
        test_batches=1,
        val_batches=1,
        log=lines.append,
    )
    assert {"before_accuracy", "after_accuracy", "test_loss"} <= results.keys()
    assert any(line.startswith("Held-out accuracy after:") for line in lines)
    assert np.isfinite(results["reports"][0]["loss"])


def test_probe_kl_is_zero_at_the_base_and_positive_after_a_change(tiny_model):
    from mlx_lm import load

    from mlx_gft.config import build_config
    from mlx_gft.data import Example
    from mlx_gft.models import setup_trainable
    from mlx_gft.validation import make_probe, probe_kl

    model, tokenizer = load(str(tiny_model))
    config = build_config(num_layers=-1, probe_size=4, max_completion_length=8)
    setup_trainable(model, config)
    examples = [Example(prompt=tokenizer.encode(f"What is {i} + 3?"), expert=[1]) for i in range(4)]
    probe = make_probe(model, tokenizer, examples, config)
    at_base = probe_kl(model, probe)  # LoRA B starts at zero
    assert at_base == pytest.approx({"kl_to_base": 0.0, "kl_to_base_per_token": 0.0}, abs=1e-6)
    from mlx.utils import tree_unflatten

    mx.random.seed(1)
    moved = [
        (k, mx.random.normal(v.shape) * 0.05) for k, v in tree_flatten(model.trainable_parameters())
    ]
    model.update(tree_unflatten(moved))
    kl = probe_kl(model, probe)
    assert kl["kl_to_base"] > 1e-4
    # Per token: the same terms over every probe token, so the per-answer sum's mean
    # over answers divided by the mean answer length.
    tokens = float(probe["mask"].sum())
    answers = probe["mask"].shape[0]
    assert kl["kl_to_base_per_token"] == pytest.approx(kl["kl_to_base"] * answers / tokens)


def test_sft_verified_trains_on_the_expert_answers_the_reward_accepts(
    tiny_model, arithmetic_data, tmp_path
):
    rows = [json.loads(x) for x in (arithmetic_data / "train.jsonl").open()]
    # Accept the rows whose answer is even: the log names how many the run kept.
    reward = tmp_path / "even.py"
    reward.write_text("def score(answer, **kw):\n    return float(int(answer) % 2 == 0)\n")
    even = sum(int(r["answer"]) % 2 == 0 for r in rows)
    extra = ["--iters", "1", "--loss", "sft-verified", "--reward", f"{reward}:score"]
    _, lines = quick_run(tiny_model, arithmetic_data, tmp_path / "ad", *extra)
    assert (
        f"Training on the {even} of {len(rows)} rows whose expert answer the reward accepts"
        in lines
    )
    reward.write_text("def score(**kw):\n    return 0.0\n")
    with pytest.raises(ConfigError, match="0 of .* expert answers pass the reward"):
        quick_run(tiny_model, arithmetic_data, tmp_path / "none", *extra)
