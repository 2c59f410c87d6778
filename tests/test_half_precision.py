"""Half precision, the Mac user's model: a bfloat16 or float16 model trains with GFT and
SFT; log-probabilities, DCR's coefficients and the loss are computed in float32 and
agree with the float32 model's; nothing becomes inf or NaN; the adapters load in mlx_lm."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm import load

from mlx_gft.advantages import group_advantages
from mlx_gft.config import build_config
from mlx_gft.groups import pad_batch, response_start
from mlx_gft.job import run
from mlx_gft.logprobs import token_logprobs
from mlx_gft.lora import parse_config
from mlx_gft.models import setup_trainable
from mlx_gft.step import make_loss

pytestmark = pytest.mark.slow
HALF = ("bfloat16", "float16")


def _half_model(tiny_model, tmp_path, dtype: str):
    """The tiny model's folder with its weights stored in `dtype`, as mlx-community's
    bf16 / fp16 models are (mlx_lm.load keeps the stored dtype)."""
    folder = tmp_path / dtype
    shutil.copytree(tiny_model, folder)
    weights = mx.load(str(folder / "model.safetensors"))
    half = {k: v.astype(getattr(mx, dtype)) for k, v in weights.items()}
    mx.save_safetensors(str(folder / "model.safetensors"), half)
    return folder


def _batch(tokenizer):
    """Two groups of four answers with rewards that give every member a non-zero
    advantage, the expert first."""
    prompts = [tokenizer.encode("Tom has 3 apples and buys 4. How many?"),
               tokenizer.encode("Ann has 9 pens and loses 2. How many?")]  # fmt: skip
    answers = ["He has 7 apples.", "7", "Tom has 12.", "It is 1.", "She has 7 pens.", "5",
               "Ann has 7.", "11 pens"]  # fmt: skip
    rows = [(prompts[i // 4], tokenizer.encode(a) + [tokenizer.eos_token_id])
            for i, a in enumerate(answers)]  # fmt: skip
    tokens, mask = pad_batch(rows)
    start = response_start(mask)
    rewards = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    return start, tokens, mask[:, start:], group_advantages(rewards, 4)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_log_probs_and_loss_are_float32_and_match(tiny_model, tmp_path, dtype):
    start, tokens, mask, adv = _batch(load(str(tiny_model))[1])
    assert (np.array(adv) != 0).all()  # the same advantages (from rewards) for both
    found = {}
    for kind in ("float32", dtype):
        folder = tiny_model if kind == "float32" else _half_model(tiny_model, tmp_path, kind)
        model, _ = load(str(folder))
        assert model.layers[0].self_attn.q_proj.weight.dtype == getattr(mx, kind)
        mx.random.seed(0)
        setup_trainable(model, build_config(num_layers=-1))
        lp, _ = token_logprobs(model, tokens, start=start)
        losses = {}
        for loss_name in ("gft", "sft"):
            config = build_config(num_layers=-1, tau=0.5, loss=loss_name)
            loss, (_, used) = make_loss(config)(model, start, tokens, mask, adv, mask, mask)
            assert lp.dtype == used.dtype == loss.dtype == mx.float32
            losses[loss_name] = loss.item()
        p = mx.exp(lp)
        coef = mx.where(p <= 0.5, p, 1.0)  # DCR's, from the float32 log-probs
        assert coef.dtype == mx.float32
        found[kind] = (np.array(lp), losses, np.array(coef))
        assert np.isfinite(found[kind][0]).all() and np.isfinite(list(losses.values())).all()
    (lp32, loss32, coef32), (lp16, loss16, coef16) = found["float32"], found[dtype]
    scored = np.array(mask) > 0
    assert loss16["sft"] == pytest.approx(loss32["sft"], rel=1e-2)
    # GFT's loss sums terms of both signs (advantages z-scored to mean 0): its value is a
    # small difference of large terms, so it is compared on the scale of its terms.
    terms = np.abs(np.array(adv)[:, None] * coef32 * lp32)[scored].mean()
    assert abs(loss16["gft"] - loss32["gft"]) <= 1e-2 * terms
    # The weights are rounded to half precision, the arithmetic after them is float32.
    assert np.abs(lp16 - lp32)[scored].max() < 0.05 * np.abs(lp32[scored]).max()
    assert np.median(np.abs(coef16 - coef32)[scored]) < 1e-2


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_precision_model_trains_gft_and_sft_and_mlx_lm_loads_it(
    tiny_model, arithmetic_data, tmp_path, dtype
):
    folder = _half_model(tiny_model, tmp_path, dtype)
    for loss in ("gft", "sft"):
        adapters = tmp_path / f"ad-{loss}"
        argv = (
            f"--model {folder} --data {arithmetic_data} --train --adapter-path {adapters} "
            f"--loss {loss} --iters 3 --batch-size 2 --group-size 3 --max-completion-length 12 "
            "--num-layers -1 --steps-per-report 1 --steps-per-eval 3 --val-batches 1 "
            "--probe-size 2 --mask-prompt --no-mask-truncated --learning-rate 1e-3"
        ).split()
        results = run(parse_config(argv), log=lambda _: None)
        reports = results["reports"]
        assert len(reports) == 3 and all(np.isfinite(r["loss"]) for r in reports)
        assert all(np.isfinite(r["grad_norm"]) and r["skipped"] == 0 for r in reports)
        rows = [json.loads(s) for s in (adapters / "metrics.jsonl").read_text().splitlines()]
        text = json.dumps(rows)
        assert "NaN" not in text and "Infinity" not in text
        trained = mx.load(str(adapters / "adapters.safetensors"))
        assert any(float(mx.abs(v.astype(mx.float32)).max()) > 0 for k, v in trained.items()
                   if "lora_b" in k)  # fmt: skip
        base, _ = load(str(folder))
        tuned, _ = load(str(folder), adapter_path=str(adapters))
        x = mx.array([[1, 5, 9, 12]])
        out = np.array(tuned(x).astype(mx.float32))
        assert np.isfinite(out).all()
        assert not np.allclose(np.array(base(x).astype(mx.float32)), out)
