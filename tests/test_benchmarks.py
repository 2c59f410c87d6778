"""The benchmarks still run (on tiny models; their figures are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=BENCH
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_sampling_benchmark_methods_generate_the_same_tokens():
    # The script asserts every method produced B*K*max_tokens tokens.
    out = _run("sampling.py", "--repeats", "1", "--max-tokens", "8", "--methods",
               "ours,batch_gen,per_prompt,bg_shared,model_only")  # fmt: skip
    rows = [line.split()[0] for line in out.splitlines()[-5:]]
    assert rows == ["ours", "batch_gen", "per_prompt", "bg_shared", "model_only"]


def test_decode_step_breakdown_prints_every_part():
    out = _run("decode_step.py", "--rows", "4", "--context", "16")
    for part in ("model decode step, 4 rows", "LM head", "compiled step", "our sampling step"):
        assert part in out


def test_memory_benchmarks_compare_every_variant():
    out = _run("memory.py", "--shape", "tiny", "--prompt-len", "8", "--answer-len", "8",
               "--repeats", "1")  # fmt: skip
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["mlx_lm-sft-step", "gft-one-pass", "gft-default", "gft-unshared"]
    extra = "grpo-kl,grpo-kl-one-pass,gft-quiet-half-all-rows,gft-quiet-half"
    out = _run("memory.py", "--shape", "tiny", "--prompt-len", "8", "--answer-len", "8",
               "--repeats", "1", "--variants", extra)  # fmt: skip
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert rows[1:] == extra.split(",")
    out = _run("memory.py", "--shape", "tiny", "--prompt-len", "8", "--answer-len", "8",
               "--repeats", "1", "--bits", "4",
               "--variants", "mlx_lm-sft-step,gft-default")  # fmt: skip
    assert "4-bit weights" in out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["mlx_lm-sft-step", "gft-default"]
    out = _run("memory_iteration.py", "--shape", "tiny", "--prompt-len", "8",
               "--answer-len", "8")  # fmt: skip
    assert "| mlx_lm.lora (SFT) |" in out and "| mlx_gft.lora (GFT) |" in out


def test_phases_prints_the_split_of_a_run(tmp_path):
    rows = [
        {"iteration": 0, "val_loss": 1.0, "val_time": 4.0},
        {"iteration": 2, "loss": 0.1, "sample_time": 6.0, "reward_time": 0.2, "update_time": 8.0,
         "val_time": 4.0, "probe_time": 1.0, "save_time": 0.8},
    ]  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _run("phases.py", "--metrics", str(metrics))
    assert "2 iterations, 20.0 s in timed phases" in out
    assert "| sample | 3.00 | 30% |" in out and "| update | 4.00 | 40% |" in out


def test_paper_setting_measures_and_estimates(tmp_path):
    # The paper's 1.5B shape cut to 1 and 2 layers, 8-token prompt and answers: every
    # measurement runs in its own process, and the estimate fits the two layer counts.
    results = tmp_path / "paper.jsonl"
    out = _run("paper_setting.py", "--layers", "1,2", "--prompt-len", "8", "--answer-len",
               "8", "--variants", "iteration,mlx_lm-sft", "--json", str(results))  # fmt: skip
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["variant"], r["layers"]) for r in rows] == [
        ("iteration", 1), ("mlx_lm-sft", 1), ("iteration", 2), ("mlx_lm-sft", 2)
    ]  # fmt: skip
    assert not [r for r in rows if "failed" in r], out
    assert all(r["answer_tokens"] == [8] * 4 for r in rows if r["variant"] == "iteration")
    estimate = _run("paper_setting.py", "--estimate", str(results))
    table = [line for line in estimate.splitlines() if line.startswith("| iteration")]
    assert table and "1, 2" in table[0], estimate
