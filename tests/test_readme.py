"""The README's test command is the one CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_the_coming_from_mlx_lm_yaml_parses_unchanged(tmp_path):
    from mlx_gft.lora import parse_config

    readme = (ROOT / "README.md").read_text()
    yaml_text = next(
        b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "# config.yaml" in b
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    config = parse_config(["-c", str(path)])
    assert (config.model, config.iters, config.mask_prompt) == (
        "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
        200,
        True,
    )
    assert config.lora_parameters["rank"] == 8 and config.lr_schedule["warmup"] == 10


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
