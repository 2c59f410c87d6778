"""Data-parallel training: 2 ranks on localhost with MLX's ring backend (`mlx.launch`)."""

import json
import random
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

pytestmark = pytest.mark.slow

COMMON = (
    "--batch-size 4 --iters 3 --num-layers -1 --steps-per-report 1 --probe-size 2 "
    "--val-batches 1 --steps-per-eval 1000 --learning-rate 1e-3 --max-completion-length 8 "
    "--group-size 2 --save-every 2"
).split()


def _train(tiny_model, data, adapters, *extra, ranks: int = 1) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlx_gft.lora", "--model", str(tiny_model), "--data", str(data)]
    cmd += ["--train", "--adapter-path", str(adapters), *COMMON, *extra]
    if ranks > 1:
        # A fresh port range per run: the previous run's sockets may linger in TIME_WAIT.
        port = str(random.randrange(20000, 60000, 16))
        launch = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
        cmd = [*launch, "--backend", "ring", "-n", str(ranks), "--starting-port", port, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    text = out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode == 0, text
    # mlx.launch exits 0 whatever its ranks did: it says which failed.
    assert "exited with code" not in out.stderr and "was killed" not in out.stderr, text
    return out


def _adapters(folder) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(folder / "adapters.safetensors")).items()}


@pytest.mark.parametrize("extra", [[], ["--grad-accumulation-steps", "2"]])
def test_two_ranks_match_one_process_on_the_same_global_batch(
    tiny_model, arithmetic_data, tmp_path, extra
):
    """SFT has no sampling, so the only difference is who computes which rows: gradients
    weighted by their token counts and summed over ranks must give the same update."""
    _train(tiny_model, arithmetic_data, tmp_path / "one", "--loss", "sft", *extra)
    out = _train(tiny_model, arithmetic_data, tmp_path / "two", "--loss", "sft", *extra, ranks=2)
    one, two = _adapters(tmp_path / "one"), _adapters(tmp_path / "two")
    assert one.keys() == two.keys() and one
    moved = max(float(np.abs(v).max()) for k, v in one.items() if "lora_b" in k)
    assert moved > 1e-3  # the adapters did train
    for k in one:
        np.testing.assert_allclose(two[k], one[k], atol=1e-4, rtol=0, err_msg=k)
    assert out.stdout.count("Iter 3: Train loss") == 1  # rank 0 alone reports


def test_gft_on_two_ranks_accounts_for_both(tiny_model, arithmetic_data, tmp_path):
    _train(tiny_model, arithmetic_data, tmp_path / "gft", "--loss", "gft", ranks=2)
    rows = [json.loads(line) for line in (tmp_path / "gft" / "metrics.jsonl").open()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in train_rows] == [1, 2, 3]
    for r in train_rows:
        assert r["groups"] == 4  # 2 prompts per rank, summed over both ranks
        assert np.isfinite(r["loss"]) and r["gen_tokens"] > 0
    # Rank 0 saved the checkpoint; a resumed 2-rank run continues from it.
    state = json.loads((tmp_path / "gft" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 3
    _train(
        tiny_model, arithmetic_data, tmp_path / "gft", "--loss", "gft", "--resume",
        "--iters", "4", ranks=2,
    )  # fmt: skip
    state = json.loads((tmp_path / "gft" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 4


# Rank 1's groups are all quiet (every answer scores alike); rank 0's all have spread
# (the expert's answer alone scores): each update has rows to run on rank 0 only.
RANK_ONE_QUIET = """
import os


def score(kind, **kwargs):
    if os.environ["MLX_RANK"] == "1":
        return 1.0
    return float(kind == "expert")
"""


def test_a_rank_whose_groups_are_all_quiet_joins_every_update(
    tiny_model, arithmetic_data, tmp_path
):
    """Rank 1 runs no row (skip_zero_advantage) while rank 0 does: rank 1 still takes
    part in every update (no rank waits forever, none errs), and every update applies."""
    reward = tmp_path / "rank_one_quiet.py"
    reward.write_text(RANK_ONE_QUIET)
    folder = tmp_path / "ad"
    _train(
        tiny_model, arithmetic_data, folder, "--loss", "gft", "--reward", f"{reward}:score",
        "--no-mask-truncated", ranks=2,
    )  # fmt: skip
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["iteration"] for r in train_rows] == [1, 2, 3]
    for r in train_rows:
        # Every row of rank 1 left out, none of rank 0 (all scored): the mean is 1/2.
        assert r["quiet_row_frac"] == 0.5
        assert r["idle_updates"] == 0 and r["skipped"] == 0 and np.isfinite(r["loss"])
    adapters = _adapters(folder)
    assert max(float(np.abs(v).max()) for k, v in adapters.items() if "lora_b" in k) > 0


def test_batch_must_split_evenly_over_ranks(tiny_model, arithmetic_data, tmp_path):
    port = str(random.randrange(20000, 60000, 16))
    launch = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
    cmd = [*launch, "--backend", "ring", "-n", "2", "--starting-port", port]
    cmd += [sys.executable, "-m", "mlx_gft.lora", "--model", str(tiny_model)]
    cmd += ["--data", str(arithmetic_data), "--train", "--batch-size", "3"]
    cmd += ["--adapter-path", str(tmp_path / "ad")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr  # mlx.launch itself exits 0 and reports each rank
    assert "error: batch_size 3 must be divisible by 2 ranks" in text
    assert "exited with code 1" in text  # the first to fail; the launcher stops the other
    assert not (tmp_path / "ad").exists()
