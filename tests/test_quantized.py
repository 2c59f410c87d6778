"""Quantized models (QLoRA) as a tested path: the tiny test model quantized to 4 and 8 bits
by mlx-lm's own converter trains with GFT and SFT, with LoRA and DoRA, on the quantized
layers (nothing is dequantized for good), through the shared-prompt pass, and its
adapters load back with mlx_lm."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_gft import models
from mlx_gft.job import run
from mlx_gft.lora import parse_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quantized(tiny_model, tmp_path_factory) -> dict:
    from mlx_lm import convert

    out = {}
    for bits in (4, 8):
        path = tmp_path_factory.mktemp(f"q{bits}") / "model"
        convert(str(tiny_model), str(path), quantize=True, q_bits=bits, q_group_size=32)
        out[bits] = path
    return out


def _largest_float(model: nn.Module) -> int:
    """Elements of the model's largest floating-point parameter."""
    return max(
        v.size for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)
    )


@pytest.mark.parametrize(
    "bits, loss, kind",
    [(4, "gft", "lora"), (8, "gft", "dora"), (4, "sft", "dora"), (8, "sft", "lora")],
)
def test_quantized_model_trains_on_quantized_layers_and_adapters_load(
    quantized, arithmetic_data, tmp_path, monkeypatch, passes, bits, loss, kind
):
    trained, initial = [], {}
    setup = models.setup_trainable

    def keep(model, config):  # the model the run trains, and its adapters before, to look at
        setup(model, config)
        trained.append(model)
        initial.update(_trainable(model))

    monkeypatch.setattr(models, "setup_trainable", keep)
    lines = []
    argv = (
        f"--model {quantized[bits]} --data {arithmetic_data} --train --adapter-path {tmp_path} "
        f"--loss {loss} --fine-tune-type {kind} --iters 2 --batch-size 2 --group-size 2 "
        "--max-completion-length 8 --no-mask-truncated --micro-batch-size 8 --num-layers -1 "
        "--steps-per-report 1 --steps-per-eval 2 "
        "--val-batches 1 --probe-size 2 --seed 5"
    ).split()
    run(parse_config(argv), log=lines.append)

    model = trained[0]
    wrapped = [m for _, m in model.named_modules() if hasattr(m, "lora_a")]
    assert wrapped and all(isinstance(m.linear, nn.QuantizedLinear) for m in wrapped)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    # Training left every base matrix packed: no float parameter is as large as one of
    # them dequantized (the float ones are adapters, norms, scales and biases).
    assert all(m.linear.weight.dtype == mx.uint32 for m in wrapped)
    smallest = min(m.linear.weight.size * (32 // bits) for m in wrapped)
    assert _largest_float(model) < smallest
    if loss == "gft":
        assert passes["shared"] > 0, [line for line in lines if "Note" in str(line)]
    rows = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] is not None for r in rows if "grad_norm" in r)
    # The run trained: every adapter tensor left its initial value (lora_b starts at 0, so
    # an untrained run would still save and load equal adapters).
    after = _trainable(model)
    assert after.keys() == initial.keys() and any(k.endswith(".lora_b") for k in after)
    unmoved = [k for k in after if np.array_equal(after[k], initial[k])]
    assert not unmoved, unmoved

    from mlx_lm import generate, load

    back, tokenizer = load(str(quantized[bits]), adapter_path=str(tmp_path))
    loaded = [m for _, m in back.named_modules() if hasattr(m, "lora_a")]
    assert len(loaded) == len(wrapped) and isinstance(loaded[0].linear, nn.QuantizedLinear)
    assert _trainable(back).keys() == after.keys()
    for name, value in _trainable(back).items():
        assert np.array_equal(value, after[name]), name
    # ... and change what the model computes: the adapted logits are not the base's.
    base, _ = load(str(quantized[bits]))
    x = mx.array([tokenizer.encode("2 + 2 =")])
    assert np.abs(np.array(back(x)) - np.array(base(x))).max() > 1e-4
    assert isinstance(generate(back, tokenizer, "2 + 2 =", max_tokens=3), str)


def _trainable(model: nn.Module) -> dict[str, np.ndarray]:
    """The adapters' parameters (lora_a, lora_b and DoRA's m), by name."""
    adapters = ("lora_a", "lora_b", "m")
    params = tree_flatten(model.parameters())
    return {k: np.array(v) for k, v in params if k.rsplit(".", 1)[-1] in adapters}
