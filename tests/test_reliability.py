"""Bad input, faults and interruptions lose nothing: the loader under fuzzing, rewards
that raise or hang, signals, SIGKILL at random moments, out-of-memory errors."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_gft.data import DataError, read_jsonl
from mlx_gft.rewards import RewardError, load_rewards, score

# --------------------------------------------------------------------------------------
# The JSONL loader: a clean load or a DataError at file:line, never anything else
# --------------------------------------------------------------------------------------

GOOD_ROWS = [
    {"prompt": "What is 2+3?", "completion": "2+3=5. #### 5", "answer": "5"},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "7"},
        ],
        "teacher_responses": ["11", "13"],
    },
    {"text": "plain text for SFT"},
    {"prompt": "x", "completion": "y", "responses": ["z"], "answer": 3.5, "extra": [1, 2]},
]
KEYS = [
    "prompt", "completion", "messages", "text", "answer", "teacher_responses", "responses",
    "role", "content", "extra",
]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def _mutate(line: bytes, rnd: random.Random) -> bytes:
    data = bytearray(line)
    for _ in range(rnd.randint(1, 4)):
        op, at = rnd.randrange(3), rnd.randrange(len(data) + 1)
        byte = rnd.choice([rnd.randrange(256), *b'{}[]",:\\\n\r \x00'])
        if op == 0:
            data.insert(at, byte)
        elif op == 1 and at < len(data):
            del data[at]
        elif at < len(data):
            data[at] = byte
    return bytes(data)


def _check_load(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        rows = read_jsonl(path)
    except DataError as e:
        match = re.match(rf"{re.escape(str(path))}:(\d+)", str(e))
        assert match, f"DataError without file:line: {e}"
        assert 1 <= int(match.group(1)) <= content.count(b"\n") + 1
    else:
        assert all(where.startswith(f"{path}:") for where, _ in rows)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(json_values, min_size=1, max_size=4))
def test_loader_on_random_json_rows(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("fuzz") / "train.jsonl"
    _check_load(path, "\n".join(json.dumps(v) for v in values).encode())


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_loader_on_mutated_good_files(tmp_path_factory, seed):
    rnd = random.Random(seed)
    lines = [json.dumps(r, ensure_ascii=rnd.random() < 0.5).encode() for r in GOOD_ROWS]
    rnd.shuffle(lines)
    k = rnd.randrange(len(lines))
    lines[k] = _mutate(lines[k], rnd)
    path = tmp_path_factory.mktemp("fuzz") / "train.jsonl"
    _check_load(path, b"\n".join(lines))


def test_loader_counts_lines_like_an_editor(tmp_path):
    path = tmp_path / "train.jsonl"
    row = {"prompt": "a\u2028b\x0cc", "completion": "d"}  # separators JSON leaves raw
    text = json.dumps(row, ensure_ascii=False) + "\n\n" + '{"prompt": 1}\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # with a byte-order mark
    with pytest.raises(DataError, match=r"train.jsonl:3: has 'prompt' but no 'completion'"):
        read_jsonl(path)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(row, ensure_ascii=False).encode())
    assert read_jsonl(path)[0][1]["response"] == "d"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"prompt": "a", "completion": "b"}\n{"text": "\xff"}\n', r":2: not valid UTF-8"),
        (b"[" * 100_000, r":1: unreadable JSON \(RecursionError"),
        (b'{"prompt": "a", "completion": "b", "answer": ' + b"9" * 5000 + b"}", r":1: "),
        (b'{"prompt": "a", "completion": "  "}', r":1: field 'completion': is empty"),
        (b'{"prompt": "a", "completion": "b", "teacher_responses": "c"}', "list of strings"),
        (b'{"prompt": "a", "completion": "b", "answer": true}', r"field 'answer'"),
        (b'{"messages": [{"role": "user", "content": "a"}]}', "non-empty assistant answer"),
    ],
)
def test_loader_names_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_jsonl(path)


# --------------------------------------------------------------------------------------
# Rewards that raise, hang or return nonsense
# --------------------------------------------------------------------------------------

SAMPLE = {"prompt": "What is 2+3?", "completion": "It is 5", "answer": "5"}


def _raises(**kwargs):
    raise KeyError("score")


def _hangs(**kwargs):
    while True:
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (_raises, r"reward '_raises' raised KeyError: 'score' on sample 0 .*It is 5"),
        (_hangs, r"reward '_hangs' raised TimeoutError: no result within 0.3 s .*It is 5"),
        (lambda **kw: "1.0", r"returned '1.0' on sample 0"),
        (lambda **kw: float("nan"), r"returned nan on sample 0"),
        (lambda **kw: [1], r"returned a list"),
    ],
)
def test_bad_rewards_are_reported_with_the_sample(fn, message):
    tic = time.perf_counter()
    with pytest.raises(RewardError, match=message):
        score(load_rewards([fn]), [SAMPLE], timeout=0.3)
    assert time.perf_counter() - tic < 5


def test_timeout_keeps_rewards_that_answer_in_time():
    total, columns = score(load_rewards(["math", lambda **kw: 0.5]), [SAMPLE] * 3, timeout=5)
    assert total.tolist() == [1.5, 1.5, 1.5]


def test_sympy_check_cannot_stall():
    # A tower of powers that sympy would try to expand for a very long time.
    tic = time.perf_counter()
    out = score(load_rewards(["math"]), [{**SAMPLE, "completion": r"\boxed{9^{9^{9^{9}}}}"}])
    assert out[0].tolist() == [0.0] and time.perf_counter() - tic < 20


# --------------------------------------------------------------------------------------
# The CLI: up-front checks, signals, out of memory, SIGKILL at random moments
# --------------------------------------------------------------------------------------

QUICK = (
    "--batch-size 2 --group-size 2 --max-completion-length 8 --num-layers -1 --steps-per-report 1 "
    "--probe-size 2 --val-batches 1 --steps-per-eval 1000"
).split()


def _cli(tiny_model, data, adapters, *extra) -> list[str]:
    return [
        sys.executable, "-m", "mlx_gft.lora", "--model", str(tiny_model), "--data", str(data),
        "--train", "--adapter-path", str(adapters), *QUICK, *extra,
    ]  # fmt: skip


def _checkpoint_iteration(adapters: Path) -> int | None:
    """The iteration of the checkpoint `--resume` would load, after loading all of it."""
    import mlx.core as mx

    for name in ("checkpoint", "checkpoint.old"):
        state = adapters / name / "state.json"
        if state.exists():
            mx.load(str(adapters / name / "adapters.safetensors"))
            mx.load(str(adapters / name / "optimizer.safetensors"))
            return json.loads(state.read_text())["iteration"]
    return None


@pytest.mark.slow
def test_missing_answer_for_a_verifier_is_found_before_training(tmp_path, tiny_model):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [
        {"prompt": "1+1?", "completion": "2", "answer": "2"},
        {"prompt": "2+2?", "completion": "4"},
    ]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from mlx_gft.lora import main

    with pytest.raises(SystemExit, match=r"train.jsonl:2: field 'answer': missing; the 'math'"):
        main([*_cli(tiny_model, folder, tmp_path / "ad", "--reward", "math")[3:]])
    assert not (tmp_path / "ad").exists()


@pytest.mark.slow
def test_long_prompts_can_be_skipped_or_truncated(tmp_path, tiny_model):
    from mlx_lm import load

    from mlx_gft.data import tokenize_rows

    _, tokenizer = load(str(tiny_model))
    rows = [
        ("f:1", {"messages": [{"role": "user", "content": "one two " * 200}], "response": "x",
                 "text": None, "answer": None, "teachers": [], "columns": {}}),
        ("f:2", {"messages": [{"role": "user", "content": "short"}], "response": "x",
                 "text": None, "answer": None, "teachers": [], "columns": {}}),
    ]  # fmt: skip
    with pytest.raises(DataError, match="f:1: prompt is .* --long-prompts"):
        tokenize_rows(rows, tokenizer, 64, True)
    logs = []
    kept = tokenize_rows(rows, tokenizer, 64, True, "skip", logs.append)
    assert [e.where for e in kept] == ["f:2"] and "1 prompt(s)" in logs[0] and "f:1" in logs[0]
    cut = tokenize_rows(rows, tokenizer, 64, True, "truncate", logs.append)
    full = tokenize_rows(rows, tokenizer, 10_000, True)
    assert cut[0].prompt == full[0].prompt[-32:] and len(cut[0].expert) <= 32


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_that_resumes(tmp_path, tiny_model, arithmetic_data, sig):
    adapters = tmp_path / "ad"
    cmd = _cli(tiny_model, arithmetic_data, adapters, "--iters", "400", "--save-every", "1000")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # see each report line as it is written
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    seen = []
    for line in proc.stdout:  # wait until training is under way
        seen.append(line)
        if line.startswith("Iter 2:"):
            break
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, "".join(seen) + out
    assert "continue with --resume" in out
    done = _checkpoint_iteration(adapters)
    assert done is not None and done >= 2
    assert (adapters / f"{done:07d}_adapters.safetensors").exists()
    resumed = subprocess.run(
        [*cmd[:-4], "--iters", str(done + 1), "--resume"], capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from iteration {done}" in resumed.stdout
    assert _checkpoint_iteration(adapters) == done + 1


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_loadable_checkpoint(
    tmp_path, tiny_model, arithmetic_data
):
    """Kill -9 a run that checkpoints every iteration at random moments, including
    mid-save; the checkpoint must load each time and --resume must finish the run."""
    adapters, iters = tmp_path / "ad", 200
    cmd = _cli(tiny_model, arithmetic_data, adapters, "--iters", str(iters), "--save-every", "1")
    rnd = random.Random(0)
    deadline = time.monotonic() + 240
    kills, last = 0, 0
    resume: list[str] = []
    while kills < 6 and time.monotonic() < deadline:
        proc = subprocess.Popen(cmd + resume, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Startup (imports, model load) takes ~1.5 s here, then ~15 iterations/s, each
        # with a checkpoint: most kills land mid-iteration, some mid-save.
        time.sleep(rnd.uniform(1.5, 5.0))
        if proc.poll() is not None:
            break  # finished before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        done = _checkpoint_iteration(adapters)
        if done is not None:
            assert done >= last  # never goes backwards
            last, resume = done, ["--resume"]
    assert kills >= 2
    final = subprocess.run(cmd + resume, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert _checkpoint_iteration(adapters) == iters
    assert (adapters / "adapters.safetensors").exists()


def test_out_of_memory_names_the_knobs(monkeypatch):
    from mlx_gft import lora

    def oom(config, log=print):
        raise RuntimeError("[metal::malloc] Unable to allocate 134217728 bytes.")

    monkeypatch.setattr(lora, "run", oom)
    with pytest.raises(SystemExit) as info:
        lora.main(["--train", "--batch-size", "8", "--group-size", "16"])
    message = str(info.value)
    assert message.startswith("error: out of memory ([metal::malloc] Unable to allocate")
    assert "batch 8 x group 16 x 256 tokens" in message
    for knob in ("--batch-size", "--group-size", "--max-completion-length", "--grad-checkpoint"):
        assert knob in message
    assert "--micro-batch-size" in message and "micro-batches of 8 rows" in message
    monkeypatch.setattr(lora, "run", lambda c, log=print: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError, match="^x$"):  # other errors are not dressed up as OOM
        lora.main(["--train"])


@pytest.mark.parametrize("crash_at", range(8))  # 7 steps, then one run that finishes
def test_a_crash_at_any_step_of_a_save_leaves_a_checkpoint(tmp_path, monkeypatch, crash_at):
    """Stop save_checkpoint at each of its file-system steps in turn (what a kill would
    do); load_checkpoint must then find the old or the new checkpoint, whole."""
    import shutil

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlx_gft import checkpoint
    from mlx_gft.config import build_config

    config = build_config(adapter_path=str(tmp_path / "ad"))
    model, opt = nn.Linear(3, 2), optim.AdamW(learning_rate=0.1)
    opt.init(model.trainable_parameters())
    checkpoint.save_checkpoint(model, opt, config, {"iteration": 1}, {})
    model.update({"weight": mx.ones((2, 3))})

    steps = {"n": 0}

    def crashing(real):
        def step(*args, **kwargs):
            if steps["n"] == crash_at:
                raise KeyboardInterrupt  # stands in for the kill
            steps["n"] += 1
            return real(*args, **kwargs)

        return step

    monkeypatch.setattr(checkpoint.os, "replace", crashing(os.replace))
    monkeypatch.setattr(checkpoint.shutil, "rmtree", crashing(shutil.rmtree))
    monkeypatch.setattr(checkpoint.mx, "save_safetensors", crashing(mx.save_safetensors))
    try:
        checkpoint.save_checkpoint(model, opt, config, {"iteration": 2}, {})
        finished = True
    except KeyboardInterrupt:
        finished = False
    monkeypatch.undo()
    fresh = nn.Linear(3, 2)
    state, _ = checkpoint.load_checkpoint(fresh, optim.AdamW(learning_rate=0.1), config)
    assert finished == (crash_at == 7)
    assert state["iteration"] in ((2,) if finished else (1, 2))
    weight = fresh.weight.tolist()
    assert (weight == mx.ones((2, 3)).tolist()) == (state["iteration"] == 2)


@pytest.mark.slow
def test_a_failing_reward_keeps_the_finished_iterations(
    tmp_path, tiny_model, arithmetic_data, flaky_reward
):
    from mlx_gft.job import run
    from mlx_gft.lora import parse_config

    # 2 prompts x (expert + 2 samples) = 6 calls per iteration: iteration 3 fails.
    reward = flaky_reward(fail_after=12, message="service down")
    adapters = tmp_path / "ad"
    argv = [*_cli(tiny_model, arithmetic_data, adapters, "--iters", "5")[3:]]
    argv += ["--save-every", "100", "--teacher-count", "1"]
    with pytest.raises(
        RewardError, match=r"(?s)service down on sample 0 .*checkpoint of iteration 2 is saved"
    ):
        run(parse_config([*argv, "--reward", reward]), log=lambda _: None)
    assert _checkpoint_iteration(adapters) == 2
    lines = []
    run(parse_config([*argv, "--reward", "f1", "--resume"]), log=lines.append)
    assert "Resuming from iteration 2" in lines and _checkpoint_iteration(adapters) == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--iter", "4"], r"unrecognized arguments: --iter 4 \(--iter: did you mean --iters\?\)"),
        (["--lora-layers", "4"], r"--lora-layers 4 \(--lora-layers: did you mean --num-layers\?\)"),
        (
            ["--iter", "4", "--lerning-rate", "1e-5"],
            r"\(--iter: did you mean --iters\?; --lerning-rate: did you mean --learning-rate\?\)",
        ),
        (["--alpha", "16"], r"LoRA scale is set in YAML: lora_parameters: \{scale: ...\}"),
        (["--learning-rat", "1e-5"], r"did you mean --learning-rate\?"),
    ],
)
def test_misspelt_options_are_errors_that_suggest_the_name(argv, message, capsys):
    """No prefix matching: `--iter 4` once started a default 1000-iteration run."""
    from mlx_gft.lora import parse_config

    with pytest.raises(SystemExit):
        parse_config(["--train", *argv])
    assert re.search(message, capsys.readouterr().err)


def test_yaml_numbers_written_without_a_dot_are_numbers(tmp_path):
    from mlx_gft.config import ConfigError, build_config, load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-5\niters: 20\nreward_weights: [1, 2e-1]\n")
    config = build_config(load_yaml(path))  # PyYAML reads 1e-5 as the string '1e-5'
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)
    assert config.reward_weights == [1.0, 0.2]
    for bad, message in [
        ({"learning_rate": "fast"}, "learning_rate: expected float, got 'fast'"),
        ({"iters": 2.5}, "iters: expected int, got 2.5"),
        ({"train": "yes"}, "train: expected true or false, got 'yes'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_config(bad)


def test_a_hub_model_that_cannot_be_fetched_is_one_line_that_says_what_to_do():
    """Offline (HF_HUB_OFFLINE, or no network), a Hub id ends in one line naming the
    model and the offline ways on, not huggingface_hub's generic connection error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = ["--model", "mlx-community/no-such-model", "--train", "--iters", "1"]
    out = subprocess.run(
        [sys.executable, "-m", "mlx_gft.lora", *argv], env=env, capture_output=True, text=True
    )
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert last.startswith(
        "error: mlx-community/no-such-model: could not fetch it from the Hugging Face Hub ("
    )
    assert "`hf download mlx-community/no-such-model`" in last and "GGUF file" in last


def test_hub_failures_are_told_apart():
    from types import SimpleNamespace

    from huggingface_hub import errors

    from mlx_gft.models import hub_failure

    def http(kind, status):  # the response's fields the error reads
        return kind(f"{status}", response=SimpleNamespace(headers={}, request=None))

    assert "no such model on the Hugging Face Hub" in hub_failure(
        "a/b", http(errors.RepositoryNotFoundError, 404)
    )
    assert "gated" in hub_failure("a/b", http(errors.GatedRepoError, 403))
    assert hub_failure("a/b", ValueError("a bug of ours")) is None
