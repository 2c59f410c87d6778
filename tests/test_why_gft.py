"""examples/why_gft.py end to end on the tiny model: runs, table and plots."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_gft.tasks.arithmetic import is_correct

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "why_gft.py"


def test_why_gft_writes_the_table_and_plots(tiny_model, tmp_path):
    out = tmp_path / "why"
    # No --data: the demo's default, the built-in task with 30% of expert answers wrong.
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_model)]
    cmd += ["--iters", "2", "--test-problems", "8", "--eval-every", "1", "--num-layers", "-1"]
    cmd += ["--methods", "sft,sft-verified,dft,sft+gft", "--then-grpo", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r.split("|")[1:-1] for r in (out / "summary.md").read_text().splitlines()]
    labels = [r[0].strip() for r in rows[2:]]
    assert labels == [
        "base", "sft: 1-sft", "sft: 2-grpo", "sft-verified: 1-sft-verified",
        "sft-verified: 2-grpo", "dft", "sft+gft: 1-sft", "sft+gft: 2-gft", "sft+gft: 3-grpo",
    ]  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"wrong_experts", "base", "sft", "sft-verified", "dft", "sft+gft"}
    train = [json.loads(x) for x in (out / "data" / "train.jsonl").open()]
    wrong = sum(not is_correct(r["completion"], r["answer"]) for r in train)
    assert summary["wrong_experts"] == 0.3 and wrong == round(0.3 * len(train)), wrong
    # sft-verified trained on the rows the verifier accepts: the 70% with right answers.
    right = len(train) - wrong
    assert f"Training on the {right} of {len(train)} rows whose expert answer" in done.stdout
    config = json.loads((out / "sft-verified/1-sft-verified/adapter_config.json").read_text())
    assert config["loss"] == "sft-verified" and config["mask_prompt"] is True
    # Every run, and the base, has avg@4 and greedy accuracy on the 8 test problems.
    for r in rows[2:]:
        for cell, n in ((r[2], 32), (r[3], 8)):  # avg@4: 32 answers; greedy: 8
            assert 0 <= float(cell) <= 1 and abs(float(cell) * n - round(float(cell) * n)) < 0.05, r
    assert f"{summary['sft']['eval']['sft: 2-grpo']['greedy']:.3f}" == rows[4][3].strip()
    assert summary["sft+gft"]["before"] == summary["sft"]["before"]  # same start and test set
    for png in ("val_entropy", "grad_norm", "kl_to_base", "val_acc"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000
    # Each stage in its own folder; the iterations are shared between SFT and GFT.
    steps = [json.loads(x)["iteration"] for x in (out / "sft+gft/2-gft/metrics.jsonl").open()]
    assert max(steps) == 1 and (out / "sft+gft" / "3-grpo" / "metrics.jsonl").exists()
