"""examples/why_gft.py end to end on the tiny model: runs, table and plots."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_gft.tasks.arithmetic import is_correct

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "why_gft.py"


def _rows(path: Path) -> list[list[str]]:
    return [
        [c.strip() for c in r.split("|")[1:-1]]
        for r in path.read_text().splitlines()
        if r.startswith("|")
    ]


def _strict_json(path: Path) -> dict:
    """JSON as any parser reads it: NaN or Infinity in the file fails the test."""
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {path}"))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.open()]


def test_why_gft_writes_the_table_and_plots(tiny_model, tmp_path):
    out = tmp_path / "why"
    # No --data: the demo's default, the built-in task with 30% of expert answers wrong;
    # a warm start, two seeds and every kind of method name (a@N, staged, then GRPO).
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_model), "--iters", "2"]
    cmd += ["--test-problems", "8", "--ood-problems", "4", "--eval-samples", "2"]
    cmd += ["--eval-every", "1", "--num-layers", "-1", "--train-size", "12"]
    cmd += ["--warm-start", "1", "--seeds", "0,1", "--then-grpo", "1", "--out", str(out)]
    cmd += ["--methods", "sft@3,sft-verified,sft+gft"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = _rows(out / "summary.md")
    assert (out / "summary.md").read_text().startswith("Seeds 0,1: mean ± half the range")
    head, body = rows[0], rows[2:]
    assert [r[0] for r in body] == [
        "base", "warm start", "sft@3: 1-sft", "sft@3: 2-grpo", "sft-verified: 1-sft-verified",
        "sft-verified: 2-grpo",
        "sft+gft: 1-sft", "sft+gft: 2-gft", "sft+gft: 3-grpo",
    ]  # fmt: skip
    for name in ("avg@2 T=1", "pass@2", "greedy", "harder problems avg@2", "capitals"):
        assert any(h.startswith(name) for h in head), (name, head)
    # The verdict line: the only GFT-family row is the pipeline's GFT stage (GRPO after
    # it is RL, compared separately), against the better of the SFT-family rows.
    verdict = (out / "summary.md").read_text().strip().splitlines()[-1]
    assert verdict.startswith("Best GFT-family run sft+gft: 2-gft: avg@2 "), verdict
    assert "No clear winner" in verdict or "ahead by" in verdict, verdict
    # The base model is scored once (seed 0); every trained row is a mean over two seeds.
    assert "±" not in body[0][1] and all("±" in r[1] for r in body[1:]), body

    per_seed = {s: _strict_json(out / f"seed{s}" / "summary.json") for s in (0, 1)}
    assert "base" in per_seed[0] and "base" not in per_seed[1]
    for seed, found in per_seed.items():
        for label, r in found.items():
            # pass@1 is avg@k; pass@k never falls as k grows; counts are of 8 x 2 answers.
            assert r["pass_at"][0] == pytest.approx(r["avg_at_k"]) and len(r["pass_at"]) == 2
            assert r["avg_stderr"] is None or r["avg_stderr"] >= 0  # None: < 2 rows
            if label.endswith(("-sft", "-sft-verified")):  # no groups: not measured
                assert "zero_var_mean" in r and r["zero_var_mean"] is None, (label, r)
            assert r["pass_at"][0] <= r["pass_at"][1] + 1e-9, (seed, label)
            assert float(r["avg_at_k"] * 16).is_integer() and float(r["greedy"] * 8).is_integer()
            assert float(r["ood_avg"] * 8).is_integer(), (seed, label)
            capitals = _jsonl(SCRIPT.parent / "data" / "capitals" / "test.jsonl")
            assert float(r["capitals"] * len(capitals)).is_integer()

    # A stage's row costs the minutes to reach its model: they grow along the pipeline.
    stages = [per_seed[0][f"sft+gft: {s}"]["minutes"] for s in ("1-sft", "2-gft", "3-grpo")]
    assert 0 < stages[0] < stages[1] < stages[2], stages

    data = out / "seed1" / "data"
    train, test = _jsonl(data / "train.jsonl"), _jsonl(data / "test.jsonl")
    warm = _jsonl(out / "seed1" / "data_warm" / "train.jsonl")
    wrong = sum(not is_correct(r["completion"], r["answer"]) for r in train)
    assert len(train) == 12 and wrong == round(0.3 * 12)
    # Warm-up rows: clean, as many as one SFT iteration takes, in neither train nor test.
    assert len(warm) == 4 and all(is_correct(r["completion"], r["answer"]) for r in warm)
    prompts = {r["prompt"] for r in train + test}
    assert not prompts & {r["prompt"] for r in warm}
    # sft-verified trained on the rows the verifier accepts: the 70% with right answers.
    assert f"Training on the {12 - wrong} of 12 rows whose expert answer" in done.stdout
    # Every method starts from the seed's warm start; sft@3 trains for 3 iterations.
    config = json.loads((out / "seed1" / "sft@3" / "1-sft" / "adapter_config.json").read_text())
    assert config["resume_adapter_file"].endswith("seed1/warm-start/adapters.safetensors")
    assert config["mask_prompt"] is True and config["iters"] == 3
    steps = [r["iteration"] for r in _jsonl(out / "seed1" / "sft@3" / "1-sft" / "metrics.jsonl")]
    assert max(steps) == 3
    # Each stage in its own folder; the iterations are shared between SFT and GFT.
    steps = [r["iteration"] for r in _jsonl(out / "seed0" / "sft+gft" / "2-gft" / "metrics.jsonl")]
    assert max(steps) == 1 and (out / "seed0" / "sft+gft" / "3-grpo" / "metrics.jsonl").exists()
    for png in ("val_entropy", "grad_norm", "kl_to_base_per_token", "pass_at_k"):
        assert (out / "seed0" / "plots" / f"{png}.png").stat().st_size > 1000
    assert (out / "plots" / "pass_at_k.png").stat().st_size > 1000  # mean over the seeds

    # --reuse: an interrupted comparison picks up where it stopped. Finished runs are
    # kept (same adapters, same minutes); a run without its end marker trains again.
    (out / "seed1" / "sft-verified" / "why_gft.json").unlink()
    kept = out / "seed0" / "sft+gft" / "2-gft" / "adapters.safetensors"
    before = kept.stat().st_mtime_ns
    again = subprocess.run(
        cmd + ["--reuse", "--eval-samples", "0"], capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(": reusing ") == 7, again.stdout  # 2 warm starts, 5 methods
    assert "=== sft-verified (seed 1) ===" in again.stdout
    assert kept.stat().st_mtime_ns == before
    rerun = json.loads((out / "seed0" / "summary.json").read_text())
    assert rerun["sft+gft: 2-gft"]["minutes"] == per_seed[0]["sft+gft: 2-gft"]["minutes"]


def test_score_every_scores_each_run_at_its_checkpoints(tiny_model, tmp_path):
    import mlx.core as mx

    out = tmp_path / "why"
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_model), "--iters", "2"]
    cmd += ["--test-problems", "4", "--eval-samples", "1", "--num-layers", "-1", "--no-base"]
    cmd += ["--train-size", "8", "--wrong-experts", "0", "--ood-level", "0", "--no-forgetting"]
    cmd += ["--methods", "gft@3,sft,sft@1", "--score-every", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # Each run's checkpoints are rows of their own, before the run; sft's checkpoint at 1
    # is the sft@1 run's model, scored once.
    body = [r[0] for r in _rows(out / "summary.md")[2:]]
    assert body == ["gft@1", "gft@2", "gft@3", "sft", "sft@1"], body
    found = json.loads((out / "summary.json").read_text())
    assert found["gft@1"]["minutes"] < found["gft@2"]["minutes"] < found["gft@3"]["minutes"]
    # Constant learning rate: the checkpoint at 1 is what a 1-iteration run trains.
    at_1 = mx.load(str(out / "sft" / "at-1" / "adapters.safetensors"))
    run_1 = mx.load(str(out / "sft@1" / "adapters.safetensors"))
    assert at_1.keys() == run_1.keys()
    assert all(mx.array_equal(at_1[k], run_1[k]) for k in at_1)
    # A checkpoint row's curves stop at its iteration.
    assert found["gft@1"]["kl_to_base"] != found["gft@3"]["kl_to_base"]
    assert found["gft@1"]["folder"].endswith("gft@3/at-1")


def test_off_policy_runs_report_style_share_and_length(tiny_model, tmp_path):
    """--expert-style steps: every scored row says how many answers are in the expert's
    style and how long they are; --max-tokens bounds training samples and scoring."""
    out = tmp_path / "why"
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_model), "--iters", "1"]
    cmd += ["--test-problems", "4", "--eval-samples", "2", "--num-layers", "-1"]
    cmd += ["--train-size", "8", "--wrong-experts", "0", "--ood-level", "0", "--no-forgetting"]
    cmd += ["--expert-style", "steps", "--max-tokens", "5", "--methods", "sft", "--out", str(out)]
    cmd += ["--score-split", "valid"]  # as the learning rate is chosen
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((out / "summary.json").read_text())
    for label in ("base", "sft"):
        assert 0.0 <= found[label]["style_share"] <= 1.0
        assert 1 <= found[label]["answer_tokens"] <= 5
        assert found[label]["scored_on"] == "valid"
    head = _rows(out / "summary.md")[0]
    assert "answers in the expert's style" in head and "answer length, tokens" in head
    config = json.loads((out / "sft" / "adapter_config.json").read_text())
    assert config["max_completion_length"] == 5


def test_reuse_keeps_held_out_numbers_until_the_scoring_changes(tiny_model, tmp_path):
    """--reuse takes a finished run's held-out numbers from beside its adapters; a call
    with other scoring settings scores afresh (as do other adapters: their digest is in
    the key)."""
    out = tmp_path / "why"
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_model), "--iters", "1"]
    cmd += ["--eval-samples", "2", "--num-layers", "-1", "--no-base", "--train-size", "8"]
    cmd += ["--wrong-experts", "0", "--ood-level", "0", "--no-forgetting", "--reuse"]
    cmd += ["--methods", "sft", "--out", str(out)]

    def call(problems: int) -> tuple[str, dict]:
        done = subprocess.run(
            cmd + ["--test-problems", str(problems)], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout, _strict_json(out / "summary.json")["sft"]

    first_out, first = call(4)
    assert "reused)" not in first_out
    saved = _strict_json(out / "sft" / "held_out.json")
    assert saved["numbers"]["avg_at_k"] == first["avg_at_k"]

    again_out, again = call(4)  # same run, same scoring: nothing generated
    assert f"(held-out numbers of {out / 'sft'}: reused)" in again_out, again_out
    assert {k: again[k] for k in saved["numbers"]} == saved["numbers"]

    other_out, other = call(6)  # more problems: scored again
    assert "reused)" not in other_out
    assert float(other["avg_at_k"] * 12).is_integer()  # of 6 problems x 2 answers
    assert _strict_json(out / "sft" / "held_out.json")["key"]["test_problems"] == 6
