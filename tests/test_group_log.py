"""The group log (`--log-completions`): every number in completions.jsonl recomputed from
the logged numbers alone, and the loss they give compared with the trainer's."""

import json

import numpy as np
import pytest

from mlx_gft.job import run
from mlx_gft.lora import parse_config

pytestmark = pytest.mark.slow


def _run(tiny_model, data, folder, *extra) -> tuple[list[dict], list[dict], list[str]]:
    argv = (
        f"--model {tiny_model} --data {data} --train --adapter-path {folder} --iters 2 "
        "--batch-size 2 --group-size 3 --max-completion-length 12 --num-layers -1 "
        "--steps-per-report 1 --val-batches 1 --probe-size 2 --seed 1 --tau 0.5"
    ).split()
    lines: list[str] = []
    run(parse_config([*argv, *extra]), log=lines.append)
    metrics = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]
    path = folder / "completions.jsonl"
    records = [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []
    return records, [m for m in metrics if "loss" in m], lines


def _z_scores(rewards: list[float]) -> np.ndarray:
    r = np.array(rewards, dtype=np.float64)
    if r.max() == r.min():
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std(ddof=1) + 1e-6)


CASES = {  # (extra options, mask_truncated on)
    "token-mean": (["--no-mask-truncated"], False),
    "token-mean, cut-off samples masked": ([], True),
    "seq-mean-token-mean, two updates": (
        ["--no-mask-truncated", "--loss-agg", "seq-mean-token-mean", "--updates-per-batch", "2"],
        False,
    ),
    "seq-mean-token-sum-norm": (["--loss-agg", "seq-mean-token-sum-norm"], True),
}


def _aggregation(agg: str, scored: list[int], rows: int, max_len: int) -> list[float]:
    """Per member, the weight the loss's aggregation gives each of its scored tokens over
    one update of `rows` rows (`scored`: each member's scored tokens)."""
    if agg == "token-mean":
        return [1 / sum(scored)] * len(scored)
    if agg == "seq-mean-token-mean":
        return [1 / (rows * n) if n else 0.0 for n in scored]
    return [1 / (rows * max_len)] * len(scored)


@pytest.mark.parametrize("case", CASES)
def test_the_logged_numbers_give_the_trainers_advantages_weights_and_loss(
    tiny_model, arithmetic_data, tmp_path, case
):
    """Every group of both iterations logged (2 groups per batch of 2): the advantages
    are the z-scored rewards, the coefficients DCR's of the logged log p, each weight
    A * c * the aggregation's weight over its update, and the mean over the updates of
    -sum(weight * logp) the reported loss. Masked: the tiny model's samples never end,
    so under mask_truncated they train on nothing and show weights 0 (their log-probs
    from the forward before the update)."""
    extra, masked = CASES[case]
    agg = case.split(",")[0]
    records, reports, lines = _run(tiny_model, arithmetic_data, tmp_path, "--log-completions",
                                   *extra)  # fmt: skip
    assert [r["iteration"] for r in records] == [1, 1, 2, 2]
    two = "--updates-per-batch" in extra
    assert [r["update"] for r in records] == ([0, 1, 0, 1] if two else [0, 0, 0, 0])
    assert sum(line.startswith("Group 0 of iteration") for line in lines) == 2
    for it, report in zip((1, 2), reports, strict=True):
        losses = []
        for update in sorted({r["update"] for r in records if r["iteration"] == it}):
            groups = [r for r in records if r["iteration"] == it and r["update"] == update]
            members = [m for g in groups for m in g["members"]]
            assert {m["kind"] for m in members} == {"expert", "sample"}
            scored = [0 if masked and m["truncated"] else len(m["tokens"]) for m in members]
            g_of = iter(_aggregation(agg, scored, len(members), 12))
            loss = 0.0
            for g in groups:
                adv = _z_scores([m["reward"] for m in g["members"]])
                np.testing.assert_allclose([m["advantage"] for m in g["members"]], adv, atol=1e-5)
                for m, a in zip(g["members"], adv, strict=True):
                    logp, weight = np.array(m["logp"]), np.array(m["weight"])
                    assert len(logp) == len(m["tokens"]) == len(m["coef"]) == len(weight)
                    p = np.exp(logp)
                    np.testing.assert_allclose(
                        m["coef"], np.where(p <= g["tau"], p, 1.0), rtol=1e-5
                    )
                    trained = a != 0 and not (masked and m["truncated"])
                    assert m["trained"] == trained
                    expected = a * np.array(m["coef"]) * next(g_of) if trained else 0 * logp
                    np.testing.assert_allclose(weight, expected, rtol=1e-5, atol=1e-9)
                    loss -= float(np.sum(weight * logp))
            losses.append(loss)
        assert np.mean(losses) == pytest.approx(report["loss"], rel=1e-5)
        n = sum(len(m["tokens"]) for r in records if r["iteration"] == it
                for m in r["members"] if not (masked and m["truncated"]))  # fmt: skip
        assert report["train_tokens"] == n
    if masked:
        cut = [m for r in records for m in r["members"] if m["truncated"]]
        assert cut and all(not m["trained"] and np.isfinite(m["logp"]).all() for m in cut)


def test_sft_on_plain_text_logs_each_predicted_token(tiny_model, tmp_path):
    """A text row has no prompt: its first token is not predicted, so the log lists the
    rest, one log p each (and the report draws them)."""
    from mlx_gft.report import build_report

    data = tmp_path / "text"
    data.mkdir()
    rows = [{"text": f"Tom has {i} apples and buys {i + 2} more."} for i in range(8)]
    for split in ("train", "valid"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, reports, _ = _run(tiny_model, data, tmp_path / "ad", "--loss", "sft",
                               "--log-completions")  # fmt: skip
    members = [m for r in records for m in r["members"]]
    assert members and all(m["kind"] == "expert" and m["trained"] for m in members)
    assert all(len(m["tokens"]) == len(m["logp"]) == len(m["weight"]) > 0 for m in members)
    assert 'class="member' in build_report({"sft": tmp_path / "ad"})


def test_the_log_shows_the_text_and_costs_nothing_when_off(tiny_model, arithmetic_data, tmp_path):
    from mlx_lm import load

    records, _, _ = _run(tiny_model, arithmetic_data, tmp_path / "on", "--log-completions",
                         "--num-completions-to-print", "1")  # fmt: skip
    assert [r["group"] for r in records] == [0, 0]  # one group per report
    _, tokenizer = load(str(tiny_model))
    for m in records[0]["members"]:
        # The token pieces join into the decoded answer (its EOS, when it has one, too).
        assert "".join(m["tokens"]).startswith(m["text"].rstrip())
        assert set(m["rewards"]) == {"math"} and m["reward"] == m["rewards"]["math"]
    assert records[0]["prompt"] and records[0]["answer"] is not None
    off, _, lines = _run(tiny_model, arithmetic_data, tmp_path / "off")
    assert off == [] and not any(line.startswith("Group ") for line in lines)


def test_the_overlong_punishment_is_a_logged_reward(tiny_model, arithmetic_data, tmp_path):
    """Samples cut off at the limit get -overlong_penalty; the run warns when the
    masked samples would carry no loss to punish."""
    records, reports, lines = _run(
        tiny_model, arithmetic_data, tmp_path, "--log-completions", "--overlong-buffer", "4",
        "--overlong-penalty", "0.5",
    )  # fmt: skip
    assert any("--overlong-buffer with mask_truncated" in line for line in lines)
    samples = [m for r in records for m in r["members"] if m["kind"] == "sample"]
    for m in samples:
        # The tiny model's samples run to the 12-token limit: the full punishment.
        assert m["truncated"] and m["rewards"]["overlong_penalty"] == -0.5
        assert m["reward"] == pytest.approx(m["rewards"]["math"] - 0.5)
    assert all(r["overlong_penalty"] == -0.5 for r in reports)
