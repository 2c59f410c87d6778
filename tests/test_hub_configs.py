"""Hub datasets that need a config name (openai/gsm8k needs "main"): TRL's
`--dataset-config`, mlx_lm's `hf_dataset` YAML entries, and the error that lists the
configs. `datasets` is replaced by a stand-in module: no network here."""

import json
import sys
import types

import numpy as np
import pytest

from mlx_gft.config import ConfigError
from mlx_gft.data import load_run_splits
from mlx_gft.lora import main, parse_config

# gsm8k's shape: the worked solution, ending in "#### <number>", is the `answer` column.
TRAIN = [{"question": f"{i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(10)]
TEST = [{"question": f"{i} + 2?", "answer": f"#### {i + 2}"} for i in range(3)]
CONFIGS = ["main", "socratic"]
COLUMNS = ["--prompt-feature", "question", "--completion-feature", "answer"]


@pytest.fixture
def hub(monkeypatch) -> list[dict]:
    """A `datasets` module serving openai/gsm8k as the Hub does: two configs and no
    default, so a load without a config name fails with datasets' own message. Returns
    the keyword arguments of every load_dataset call."""
    calls: list[dict] = []

    def load_dataset(path, name=None, split=None, **options):
        calls.append({"path": path, "name": name, "split": split, **options})
        if name is None:
            raise ValueError(
                "Config name is missing.\nPlease pick one among the available configs: "
                f"{CONFIGS}\nExample of usage:\n\t`load_dataset('{path}', 'main')`"
            )
        if name not in CONFIGS:
            raise ValueError(f"BuilderConfig '{name}' not found. Available: {CONFIGS}")
        splits = {"train": TRAIN, "test": TEST}
        if split is None:
            return splits
        base, _, part = split.partition("[")
        return splits[base][:2] if part else splits[base]  # a slice: some of the rows

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_a_missing_config_lists_the_configs_and_how_to_pass_one(hub, tmp_path, capsys):
    argv = ["--model", str(tmp_path / "no-model"), "--data", "openai/gsm8k", "--train"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    message = str(info.value.code)
    assert message.startswith(
        "error: openai/gsm8k: the Hub dataset has several configs and needs one named "
        "(main, socratic): pass --dataset-config main (YAML: dataset_config: main"
    )
    assert "hf_dataset: {path: openai/gsm8k, config: {name: main}}" in message
    assert "Loading model" not in capsys.readouterr().out  # it stopped before the model
    with pytest.raises(SystemExit, match=r"has no config 'mian' \(it has: main, socratic\)"):
        main([*argv, "--dataset-config", "mian"])


def test_dataset_config_from_the_command_line_or_yaml(hub, tmp_path):
    splits = load_run_splits(
        parse_config(["--data", "openai/gsm8k", "--dataset-config", "main", "--train", *COLUMNS])
    )
    assert hub[-1] == {"path": "openai/gsm8k", "name": "main", "split": None}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [10, 0, 3]
    where, row = splits["train"][0]
    assert where == "openai/gsm8k[train]:1" and row["response"] == "0 + 1 = 1\n#### 1"
    yaml = tmp_path / "c.yaml"
    yaml.write_text("data: openai/gsm8k\ndataset_config: socratic\ntrain: true\n")
    load_run_splits(parse_config(["-c", str(yaml), *COLUMNS]))
    assert hub[-1]["name"] == "socratic"


def test_mlx_lm_hf_dataset_entries_slice_each_split(hub, tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        "train: true\ntest: true\n"
        "hf_dataset:\n"
        "  - path: openai/gsm8k\n"
        "    config: {name: main}\n"
        "    test_split: test\n"
        "    prompt_feature: question\n"
        "    completion_feature: answer\n"
        "  - path: openai/gsm8k\n"
        "    config: socratic\n"  # a bare name is the config name
        "    train_split: train\n"
        "    valid_split: test[:1]\n"
        "    test_split: test\n"
        "    prompt_feature: question\n"
        "    completion_feature: answer\n"
    )
    splits = load_run_splits(parse_config(["-c", str(yaml)]))
    # mlx_lm's default slices for the first entry; each entry's rows after the last's.
    assert [(c["name"], c["split"]) for c in hub] == [
        ("main", "train[:80%]"),
        ("main", "train[-10%:]"),
        ("main", "test"),
        ("socratic", "train"),
        ("socratic", "test[:1]"),
        ("socratic", "test"),
    ]
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [2 + 10, 2 + 2, 3 + 3]
    assert splits["train"][2][0] == "openai/gsm8k[train]:1"
    assert splits["valid"][0][0] == "openai/gsm8k[train[-10%:]]:1"


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("hf_dataset: {path: openai/gsm8k, name: main}", r"a config name goes in config: \{name"),
        ("hf_dataset: {path: openai/gsm8k, train_splt: train}", "did you mean 'train_split'"),
        ("hf_dataset: {config: main}", "path: expected a Hub dataset id"),
        ("hf_dataset: [openai/gsm8k]", r"hf_dataset\[0\]: expected a mapping"),
        ("hf_dataset: {path: a/b}\ndataset_config: main", "put it in the entry: config"),
    ],
)
def test_hf_dataset_mistakes_are_config_errors(tmp_path, yaml, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml + "\n")
    with pytest.raises(ConfigError, match=message):
        parse_config(["-c", str(path)])


def test_hf_dataset_without_a_test_split_cannot_test(hub, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("hf_dataset: {path: openai/gsm8k, config: {name: main}}\ntest: true\n")
    with pytest.raises(SystemExit, match=r"hf_dataset openai/gsm8k: no test_split: .*test_split"):
        main(["-c", str(path), "--model", str(tmp_path / "no-model")])


def test_evaluate_and_distill_take_the_config_name_too(hub, tmp_path):
    from mlx_gft.distill import main as distill
    from mlx_gft.evaluate import main as evaluate

    model = str(tmp_path / "no-model")
    with pytest.raises(SystemExit, match="pass --dataset-config main"):
        evaluate(["--model", model, "--data", "openai/gsm8k"])
    with pytest.raises(SystemExit, match="pass --dataset-config main"):
        distill(["--teacher", model, "--data", "openai/gsm8k", "--num-responses", "1"])
    # With it and the columns named, the rows load (then the missing model stops the run).
    argv = ["--model", model, "--data", "openai/gsm8k", "--dataset-config", "main", *COLUMNS]
    with pytest.raises(SystemExit, match="no-model"):
        evaluate(argv)
    assert hub[-1]["name"] == "main"


@pytest.mark.slow
def test_training_from_an_hf_dataset_yaml(hub, tiny_model, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "hf_dataset:\n"
        "  path: openai/gsm8k\n"
        "  config: {name: main}\n"
        "  train_split: train\n"
        "  valid_split: test\n"
        "  prompt_feature: question\n"
        "  completion_feature: answer\n"
    )
    adapters = tmp_path / "ad"
    main(
        f"-c {path} --model {tiny_model} --train --adapter-path {adapters} --iters 1 "
        "--batch-size 2 --group-size 2 --max-completion-length 8 --probe-size 2 "
        "--val-batches 1 --steps-per-report 1 --num-layers -1".split()
    )
    assert [(c["name"], c["split"]) for c in hub] == [("main", "train"), ("main", "test")]
    metrics = [json.loads(line) for line in (adapters / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite([m["loss"] for m in metrics if "loss" in m]).all()
    assert "val_loss" in metrics[0]  # the valid_split was read
