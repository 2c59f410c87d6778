"""The examples folder: configs load, the custom reward scores, the GSM8K script converts."""

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from mlx_gft.config import TrainConfig, build_config, load_yaml, stage_configs
from mlx_gft.data import read_jsonl
from mlx_gft.lora import parse_config
from mlx_gft.rewards import load_rewards, score

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CONFIGS = sorted(EXAMPLES.glob("**/*.yaml"))
REWARD_FILE = "examples/rewards/format_and_length.py"
GSM8K_SCRIPT = EXAMPLES / "prepare_gsm8k.py"
HINTS = typing.get_type_hints(TrainConfig)


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    # The README's commands and reward specs are paths relative to the repository root.
    monkeypatch.chdir(ROOT)


def _has_declared_type(value: object, annotation: object) -> bool:
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    kinds = tuple(typing.get_origin(a) or a for a in allowed or (annotation,))
    if float in kinds:
        kinds += (int,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # YAML "yes" for an int option
    return isinstance(value, kinds)


def _check_types(config: TrainConfig) -> None:
    for f in fields(TrainConfig):
        value = getattr(config, f.name)
        # After validation every value has its declared type (YAML 1e-5 arrives as a string).
        assert _has_declared_type(value, HINTS[f.name]), f"{f.name}: {value!r}"


def test_all_example_configs_are_found():
    names = {p.relative_to(EXAMPLES).as_posix() for p in CONFIGS}
    expected = {f"configs/{n}.yaml" for n in ("gft", "sft", "dft", "grpo", "sft_gft_grpo")}
    assert expected | {"quickstart.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_example_config_loads_with_typed_values(path):
    config = build_config(load_yaml(path))
    _check_types(config)
    for stage in stage_configs(config):
        _check_types(stage)
        assert 1e-5 <= stage.learning_rate <= 5e-5
    assert config.model is None  # the embedded model unless the user picks one
    assert config.lora_parameters == {"rank": 8, "scale": 20.0, "dropout": 0.0}


@pytest.mark.parametrize("loss", ["gft", "sft", "dft", "grpo"])
def test_each_loss_config_trains_its_loss(loss):
    path = EXAMPLES / "configs" / f"{loss}.yaml"
    config = build_config(load_yaml(path))
    assert (config.loss, config.adapter_path, config.train) == (loss, f"adapters/{loss}", True)
    assert "# model: mlx-community/" in path.read_text()
    if loss in ("sft", "dft"):
        assert config.mask_prompt
    else:
        assert config.mask_truncated and config.group_size >= 4


def test_pipeline_config_runs_sft_then_gft_then_grpo():
    config = build_config(load_yaml(EXAMPLES / "configs" / "sft_gft_grpo.yaml"))
    sft, gft, grpo = stage_configs(config)
    assert [s.loss for s in (sft, gft, grpo)] == ["sft", "gft", "grpo"]
    assert [s.adapter_path for s in (sft, gft, grpo)] == [
        "adapters/pipeline/1-sft",
        "adapters/pipeline/2-gft",
        "adapters/pipeline/3-grpo",
    ]
    assert sft.mask_prompt and not gft.mask_prompt
    assert grpo.kl_coef > 0 and grpo.group_size > gft.group_size
    assert gft.learning_rate != grpo.learning_rate


def _readme_commands(tool: str) -> list[list[str]]:
    """argv of every `python -m <tool>` / `python <tool>` command in examples/README.md."""
    text = (EXAMPLES / "README.md").read_text().replace("\\\n", " ")
    prefix = f"python {tool} "
    return [
        shlex.split(line[len(prefix) :], comments=True)
        for line in text.splitlines()
        if line.startswith(prefix)
    ]


def test_readme_training_commands_parse_and_their_rewards_load():
    commands = _readme_commands("-m mlx_gft.lora")
    assert len(commands) >= 5
    for argv in commands:
        config = parse_config(argv)
        if config.reward:
            rewards = load_rewards(config.reward, config.reward_weights)
            assert len(rewards) == len(config.reward)
    mac = next(parse_config(a) for a in commands if "--model" in a)
    assert mac.model == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    assert (mac.loss, mac.data, mac.train) == ("gft", "examples/data/word_problems", True)
    assert (ROOT / mac.data / "train.jsonl").is_file()


def test_files_the_readme_names_exist():
    text = (EXAMPLES / "README.md").read_text()
    named = set(re.findall(r"examples/[\w./-]+\.(?:py|yaml|sh)", text))
    headings = re.findall(r"^## ([\w/]+\.(?:py|yaml|sh)):", text, re.M)
    table = re.findall(r"`((?:configs|rewards)/\w+\.(?:py|yaml))`", text)
    named |= {f"examples/{n}" for n in headings + table}
    assert {"examples/why_gft.py", "examples/distill_evaluate_plot.sh"} <= named
    assert {"examples/quickstart.yaml", "examples/configs/sft_gft_grpo.yaml"} <= named
    assert [n for n in sorted(named) if not (ROOT / n).exists()] == []


# --------------------------------------------------------------------------------------
# The custom reward


def _sample(completion: str, answer: str = "72", reference: str | None = None) -> dict:
    return {"prompt": "q", "completion": completion, "answer": answer, "reference": reference}


REFERENCE = "She sold 48 clips then 24 more clips #### 72"  # 10 words


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("48 + 24 = 72\n#### 72", 1.0),
        ("So the total is \\boxed{\\frac{1}{2}}.", 1.0),  # nested braces
        ("#### 1,234", 1.0),
        ("#### 72\nWait, let me check that again.", 0.5),  # answered, then rambled on
        ("The answer is 72.", 0.0),
        ("so \\boxed{", 0.0),  # cut off inside the box
        ("\\boxed{ }", 0.0),
        ("", 0.0),
    ],
)
def test_boxed_format(completion, expected):
    (reward,) = load_rewards([f"{REWARD_FILE}:boxed_format"])
    total, _ = score([reward], [_sample(completion)])
    assert total[0] == expected


def test_weighted_rewards_score_hand_made_samples():
    rewards = load_rewards(
        ["math", f"{REWARD_FILE}:boxed_format", f"{REWARD_FILE}:brevity"], [1.0, 0.2, 0.5]
    )
    samples = [
        _sample("48 + 24 = 72\n#### 72", reference=REFERENCE),  # right, marked, short
        _sample("#### 71\nor maybe not", reference=REFERENCE),  # wrong, buried answer
        _sample(" ".join(["word"] * 19) + "\n#### 72", reference=REFERENCE),  # 21 words
        _sample(" ".join(["word"] * 40) + " 72", reference=REFERENCE),  # 4x: full penalty
        _sample("#### 72", reference=None),  # no reference: no length penalty
    ]
    total, columns = score(rewards, samples)
    np.testing.assert_allclose(columns["math"], [1, 0, 1, 1, 1])
    np.testing.assert_allclose(columns["boxed_format"], [1, 0.5, 1, 0, 1])
    np.testing.assert_allclose(columns["brevity"], [0, 0, -0.4, -1, 0])
    np.testing.assert_allclose(total, [1.2, 0.1, 1.0, 0.5, 1.2])


# --------------------------------------------------------------------------------------
# prepare_gsm8k.py


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_gsm8k", GSM8K_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gsm8k = _load_script()


def _gsm8k_row(i: int) -> dict:
    total = 1000 + i  # "#### 1,00i": thousands separators, as hand-made files have them
    return {
        "question": f"Problem {i}: Natalia sold clips to 48 friends in April. How many?",
        "answer": f"In May she sold 48/2 = <<48/2=24>>24 clips.\n"
        f"Altogether {total - 24}+24 = <<{total - 24}+24={total}>>{total}.\n#### {total:,}",
    }


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run_script(*args: object) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(GSM8K_SCRIPT), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_prepare_gsm8k_writes_a_valid_data_folder(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", [_gsm8k_row(i) for i in range(10)])
    test = _write_jsonl(tmp_path / "test.jsonl", [_gsm8k_row(i) for i in range(10, 14)])
    out = tmp_path / "data"
    result = _run_script("--train", train, "--test", test, "--valid-fraction", "0.2", "--out", out)
    assert result.returncode == 0, result.stderr
    splits = {s: read_jsonl(out / f"{s}.jsonl") for s in ("train", "valid", "test")}
    assert {s: len(rows) for s, rows in splits.items()} == {"train": 8, "valid": 2, "test": 4}
    for rows in splits.values():
        for _, row in rows:
            completion = row["response"]
            assert "<<" not in completion and ">>" not in completion
            assert completion.endswith(f"\n#### {row['answer']}")
            assert re.fullmatch(r"10\d\d", row["answer"])  # "1,003" -> "1003"
    first = json.loads((out / "test.jsonl").read_text().splitlines()[0])
    i = int(first["answer"]) - 1000
    assert first["prompt"] == _gsm8k_row(i)["question"]
    assert first["completion"] == (
        f"In May she sold 48/2 = 24 clips.\nAltogether {976 + i}+24 = {1000 + i}.\n#### {1000 + i}"
    )
    # Every training question lands in train or valid, once.
    seen = [row["messages"][0]["content"] for s in ("train", "valid") for _, row in splits[s]]
    assert sorted(seen) == sorted(_gsm8k_row(i)["question"] for i in range(10))


def test_make_splits_limits_and_cuts_test_from_train_when_there_is_none():
    rows = [gsm8k.convert_row(_gsm8k_row(i), f"f:{i}") for i in range(20)]
    splits = gsm8k.make_splits(rows, None, valid_fraction=0.5, test_fraction=0.25, limit=8)
    assert {s: len(r) for s, r in splits.items()} == {"train": 3, "valid": 3, "test": 2}
    prompts = [r["prompt"] for s in splits.values() for r in s]
    assert len(set(prompts)) == 8  # disjoint
    assert splits == gsm8k.make_splits(rows, None, 0.5, 0.25, limit=8)  # same seed, same rows
    with_test = gsm8k.make_splits(rows[:10], rows[10:], valid_fraction=0.1, limit=6)
    assert {s: len(r) for s, r in with_test.items()} == {"train": 5, "valid": 1, "test": 6}


def test_instruction_is_appended_to_the_question():
    row = gsm8k.convert_row(_gsm8k_row(0), "f:1", instruction="End with '#### N'.")
    assert row["prompt"] == _gsm8k_row(0)["question"] + "\nEnd with '#### N'."


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"question": "How many?", "answer": "She has 5."}', "no '#### <final answer>'"),
        ('{"answer": "#### 5"}', "field 'question' is missing"),
        ('{"question": "How many?", "answer": "#### five"}', "not a number: 'five'"),
        ('{"question": "How many?", "answer": ', "malformed JSON"),
        ('["question", "answer"]', "expected a JSON object"),
    ],
)
def test_a_malformed_row_is_named_by_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "train.jsonl"
    path.write_text(f"{json.dumps(_gsm8k_row(0))}\n\n{bad_line}\n")
    with pytest.raises(gsm8k.GSM8KError, match=re.escape(f"{path}:3: ") + ".*" + message):
        gsm8k.read_gsm8k(path)


def test_the_script_reports_a_bad_row_and_writes_nothing(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(f"{json.dumps(_gsm8k_row(0))}\n{json.dumps({'question': 'Q?'})}\n")
    out = tmp_path / "data"
    result = _run_script("--train", path, "--out", out)
    assert result.returncode == 1
    assert f"{path}:2: field 'answer' is missing" in result.stderr
    assert not out.exists()
