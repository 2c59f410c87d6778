"""Stage chaining: SFT -> GFT -> GRPO in one run, each stage from the last one's adapters."""

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_gft.config import ConfigError, build_config, stage_configs
from mlx_gft.job import run
from mlx_gft.lora import parse_config
from mlx_gft.rewards import RewardError


def test_stage_configs_override_the_run_and_keep_folders_apart():
    config = build_config(
        adapter_path="ad",
        learning_rate=1e-5,
        stages=["sft", {"loss": "gft", "learning-rate": 3e-5}],
    )
    sft, gft = stage_configs(config)
    assert (sft.loss, sft.learning_rate, sft.adapter_path) == ("sft", 1e-5, "ad/1-sft")
    assert (gft.loss, gft.learning_rate, gft.adapter_path) == ("gft", 3e-5, "ad/2-gft")
    assert sft.stages is None and stage_configs(build_config(loss="dft")) == [
        build_config(loss="dft")
    ]


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (["sft", {"num_layers": 2}], r"stages\[1\]: 'num_layers' is set for the whole run"),
        ([{"prompt_feature": "q"}], r"stages\[0\]: 'prompt_feature' is set for the whole run"),
        ([{"los": "gft"}], r"stages\[0\]: unknown key 'los'; did you mean 'loss'\?"),
        (["gtf"], r"loss: 'gtf' is not one of"),
        ([3], r"stages\[0\]: expected a loss name or a mapping"),
    ],
)
def test_bad_stages_fail_before_anything_runs(stages, message):
    with pytest.raises(ConfigError, match=message):
        build_config(stages=stages)


QUICK = (
    "--batch-size 2 --group-size 2 --max-completion-length 8 --num-layers -1 --iters 2 "
    "--steps-per-report 1 --probe-size 2 --val-batches 1 --learning-rate 1e-3"
).split()


def _weights(path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(path)).items()}


@pytest.mark.slow
def test_each_stage_starts_from_the_last_ones_adapters(tmp_path, tiny_model, arithmetic_data):
    ad = tmp_path / "ad"
    config = tmp_path / "stages.yaml"
    # The GFT stage has a zero learning rate: it must end where SFT left the adapters.
    config.write_text("stages:\n  - sft\n  - {loss: gft, learning_rate: 0.0}\n")
    argv = ["-c", str(config), "--model", str(tiny_model), "--data", str(arithmetic_data)]
    argv += ["--train", "--test", "--test-batches", "1", "--adapter-path", str(ad), *QUICK]
    lines = []
    results = run(parse_config(argv), log=lines.append)
    sft, gft = (
        _weights(ad / "1-sft/adapters.safetensors"),
        _weights(ad / "2-gft/adapters.safetensors"),
    )
    assert max(np.abs(v).max() for k, v in sft.items() if "lora_b" in k) > 1e-3  # SFT trained
    for k in sft:
        np.testing.assert_array_equal(gft[k], sft[k])
    top = _weights(ad / "adapters.safetensors")
    assert all(np.array_equal(top[k], gft[k]) for k in gft)
    for stage in ("1-sft", "2-gft"):
        rows = [json.loads(x) for x in (ad / stage / "metrics.jsonl").open()]
        assert [r["iteration"] for r in rows if "loss" in r] == [1, 2]
    assert any(x.startswith("Stage 2/2: --loss gft") for x in lines)
    assert {
        "before_accuracy",
        "after stage 1 (sft)_accuracy",
        "after stage 2 (gft)_accuracy",
    } <= set(results)


@pytest.mark.slow
def test_resume_skips_finished_stages(tmp_path, tiny_model, arithmetic_data, flaky_reward):
    # 2 prompts x (expert + 2 samples) = 6 calls per iteration: GFT's iteration 2 fails.
    reward = flaky_reward(fail_after=6)
    ad = tmp_path / "ad"
    argv = ["--model", str(tiny_model), "--data", str(arithmetic_data), "--train"]
    argv += ["--adapter-path", str(ad), *QUICK, "--teacher-count", "1", "--stages", "sft", "gft"]
    with pytest.raises(RewardError, match="checkpoint of iteration 1 is saved"):
        run(parse_config([*argv, "--reward", reward]), log=lambda _: None)
    lines = []
    run(parse_config([*argv, "--reward", "f1", "--resume"]), log=lines.append)
    assert "Stage 1/2 (sft) is finished: loading its adapters" in lines
    assert "Resuming from iteration 1" in lines
    state = json.loads((ad / "2-gft/checkpoint/state.json").read_text())
    counters = state.pop("counters")  # the running counts a resume carries on from
    assert state == {"iteration": 2, "finished": True, "data_position": 4}  # SFT drew 0 and 1
    assert counters["trained_tokens"] > 0 and len(counters["cut_shares"]) == 2


@pytest.mark.slow
def test_a_later_stage_goes_on_through_the_data(tmp_path, tiny_model, arithmetic_data, monkeypatch):
    # SFT 2 -> SFT 2 must see the batches of iterations 0-3, as SFT 4 does, not 0-1 twice
    # (the paper's pipelines compare at equal examples seen).
    import mlx_gft.batches as batches_lib

    seen = []
    real = batches_lib.batch_indices

    def spy(batches, iteration, seed):
        seen.append(iteration)
        return real(batches, iteration, seed)

    monkeypatch.setattr(batches_lib, "batch_indices", spy)
    argv = ["--model", str(tiny_model), "--data", str(arithmetic_data), "--train"]
    argv += ["--adapter-path", str(tmp_path / "ad"), *QUICK, "--stages", "sft", "sft"]
    run(parse_config(argv), log=lambda _: None)
    assert seen == [0, 1, 2, 3]
