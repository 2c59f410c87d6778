"""The split LM head: for every architecture in `logprobs.AFTER_HEAD` the head runs on
the scored positions alone and gives the model's own log-probabilities; chunked, it
trains whatever of the head is trainable (LoRA/DoRA on lm_head, a tied embedding, full
fine-tuning) exactly as the unchunked head does."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.utils import _get_classes
from random_adapters import perturb_trainable

from mlx_gft import logprobs
from mlx_gft.config import build_config
from mlx_gft.logprobs import (
    AFTER_HEAD,
    gather_logprobs,
    prompt_spans,
    shared_prompt_logprobs,
    split_head,
    token_logprobs,
    why_prompts_cannot_be_shared,
)
from mlx_gft.models import setup_trainable
from mlx_gft.step import Stepper

VOCAB = 97
BASE = dict(
    hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=VOCAB, max_position_embeddings=256,
    rope_theta=10000.0,
)  # fmt: skip
# One small config per architecture family, with what sets its head apart switched on:
# a tied or untied head, softcapping, scaled logits, Gemma's scaled embeddings.
FAMILIES = {
    "llama": dict(tie_word_embeddings=False),
    "mistral": dict(tie_word_embeddings=True),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(tie_word_embeddings=False, head_dim=8),
    "phi3": dict(tie_word_embeddings=False),
    "gemma": dict(head_dim=8),
    "gemma2": dict(
        head_dim=8, final_logit_softcapping=0.5, attn_logit_softcapping=50.0,
        query_pre_attn_scalar=8.0, rope_traditional=False,
    ),
    "gemma3_text": dict(
        head_dim=8, query_pre_attn_scalar=8.0, sliding_window=16, sliding_window_pattern=2
    ),
    "smollm3": dict(tie_word_embeddings=True, no_rope_layer_interval=4),
    "olmo2": dict(tie_word_embeddings=False),
    "granite": dict(
        logits_scaling=4.0, attention_multiplier=0.2, embedding_multiplier=2.0,
        residual_multiplier=0.5, attention_bias=False, mlp_bias=False, tie_word_embeddings=True,
    ),
    "cohere": dict(
        logit_scale=3.0, layer_norm_eps=1e-5, attention_bias=False, layer_norm_bias=False,
        use_qk_norm=False,
    ),
}  # fmt: skip


def build(family: str, scale: float = 4.0) -> nn.Module:
    if family == "gemma3":  # the multimodal wrapper around gemma3_text
        text = {**BASE, **FAMILIES["gemma3_text"], "model_type": "gemma3_text"}
        config = {"model_type": "gemma3", "vocab_size": VOCAB, "text_config": text}
    else:
        config = {**BASE, **FAMILIES[family], "model_type": family}
    model_class, args_class = _get_classes(config)
    mx.random.seed(0)
    model = model_class(args_class.from_dict(config))
    # Larger weights than the default init: logits of a few units, so softcapping and
    # logit scales change the log-probs visibly (a missing transform would fail).
    model.update(tree_unflatten([(k, scale * v) for k, v in tree_flatten(model.parameters())]))
    return model


def _tokens(rows=3, length=20, seed=0):
    return mx.array(np.random.default_rng(seed).integers(0, VOCAB, (rows, length)))


def test_every_family_in_the_table_is_tested():
    assert set(AFTER_HEAD) == {*FAMILIES, "gemma3"}


@pytest.mark.parametrize("family", [*FAMILIES, "gemma3"])
def test_split_head_gives_the_models_own_log_probs_on_the_scored_positions(
    family, monkeypatch, passes
):
    model = build(family)
    assert split_head(model) is not None
    tokens, start = _tokens(), 8
    logits = model(tokens[:, :-1])
    expected, _ = gather_logprobs(logits[:, start:], tokens[:, 1 + start :])
    seen = []
    head_logprobs = logprobs.head_logprobs
    monkeypatch.setattr(
        logprobs,
        "head_logprobs",
        lambda head, h, *a: seen.append(h.shape) or head_logprobs(head, h, *a),
    )
    for chunk, chunked in ((0, 0), (5, 1)):  # one piece, and chunks of 5 positions
        lp, _ = token_logprobs(model, tokens, start=start, chunk=chunk)
        np.testing.assert_allclose(np.array(lp), np.array(expected), rtol=1e-5, atol=2e-5)
        assert passes["chunked"] == chunked, chunk  # the chunked head ran, and only then
    # The head ran on the positions from `start` only, never on the prompt before it.
    assert seen == [(3, 19 - start, 32)] * 2


def test_a_family_outside_the_table_runs_the_whole_forward(monkeypatch):
    model = build("llama")
    monkeypatch.setattr(model, "model_type", "some_new_arch")
    assert split_head(model) is None
    assert why_prompts_cannot_be_shared(model) == "its LM head does not run apart from the layers"
    tokens = _tokens()
    expected, _ = gather_logprobs(model(tokens[:, :-1]), tokens[:, 1:])
    np.testing.assert_allclose(np.array(token_logprobs(model, tokens)[0]), np.array(expected))
    lines = []
    stepper = Stepper(model, optim.SGD(learning_rate=0.1), build_config(), log=lines.append)
    assert not stepper.shared
    assert lines == [
        "Note: some_new_arch is not among the architectures whose LM head runs apart from "
        "the layers (logprobs.AFTER_HEAD): the update takes logits at every position, "
        "prompt included, in one piece, and every answer runs its own prompt."
    ]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma3_text"])
def test_shared_prompts_give_the_plain_log_probs(family):
    """Every family with plain KV caches runs the shared-prompt pass (Gemma 3's sliding
    windows fall back to the plain one, which the test above covers)."""
    model = build(family, scale=1.0)
    assert why_prompts_cannot_be_shared(model) is None
    prompt = list(np.random.default_rng(1).integers(0, VOCAB, 9))
    rows = [prompt + list(np.random.default_rng(s).integers(0, VOCAB, 6)) for s in range(3)]
    tokens = mx.array(np.array(rows, dtype=np.int32))
    mask = mx.ones((3, tokens.shape[1] - 1 - 8))
    spans = prompt_spans(tokens, mask, 8)
    assert spans == [(0, 3, 9)]
    plain, _ = token_logprobs(model, tokens, start=8)
    shared, _ = shared_prompt_logprobs(model, tokens, spans, start=8)
    np.testing.assert_allclose(np.array(shared), np.array(plain), rtol=1e-5, atol=2e-5)


def test_gemma3_sliding_windows_keep_the_plain_pass():
    reason = why_prompts_cannot_be_shared(build("gemma3_text"))
    assert reason == "it has sliding-window, quantized or state-space caches"


# --------------------------------------------------------------------------------------
# A trainable head under the chunked head


def _trainable(family: str, how: str) -> nn.Module:
    model = build(family)
    if how == "full":  # full fine-tuning of the layers, with the head opened by hand
        setup_trainable(model, build_config(num_layers=-1, fine_tune_type="full"))
        model.lm_head.unfreeze()
        return model
    keys = {
        "lora-head": ["lm_head"],
        "dora-head": ["lm_head"],
        "lora-embedding": ["model.embed_tokens"],
    }
    lora = {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": [*keys[how], "self_attn.q_proj"]}
    fine_tune = "dora" if how.startswith("dora") else "lora"
    setup_trainable(
        model, build_config(num_layers=-1, fine_tune_type=fine_tune, lora_parameters=lora)
    )
    perturb_trainable(model, seed=2)
    return model


@pytest.mark.parametrize(
    "family,how,head_key",
    [
        ("llama", "lora-head", "lm_head.lora_b"),
        ("llama", "dora-head", "lm_head.m"),
        ("llama", "full", "lm_head.weight"),
        ("qwen2", "lora-embedding", "model.embed_tokens.lora_b"),  # tied: head and input
        ("gemma2", "lora-embedding", "model.embed_tokens.lora_a"),  # tied and softcapped
    ],
)
def test_chunked_head_gives_every_trainable_parameter_its_gradient(family, how, head_key, passes):
    model = _trainable(family, how)
    tokens, start = _tokens(length=24), 4
    weights = mx.array(np.random.default_rng(3).standard_normal((3, 23 - start)), mx.float32)

    def grads(chunk):
        def loss(model):
            lp, _ = token_logprobs(model, tokens, start=start, chunk=chunk)
            return (lp * weights).sum()

        value, g = nn.value_and_grad(model, loss)(model)
        return value.item(), dict(tree_flatten(g))

    v_full, g_full = grads(0)
    assert passes["chunked"] == 0
    v_chunk, g_chunk = grads(7)
    assert passes["chunked"] == 1  # the chunked head, not the full one twice
    np.testing.assert_allclose(v_chunk, v_full, rtol=1e-5)
    assert g_full.keys() == g_chunk.keys() and head_key in g_full
    for k, g in g_full.items():
        g, c = np.array(g), np.array(g_chunk[k])
        scale = max(1e-3, float(np.abs(g).max()))
        assert np.abs(g - c).max() <= 1e-5 * max(1.0, scale), (k, np.abs(g - c).max(), scale)
    assert np.abs(np.array(g_full[head_key])).max() > 1e-3  # the head does learn
    # After the backward the head holds its own weights again, not the VJP's tracers.
    # Chunked and full sums round differently: log-probs near -44 differ by a few float32
    # ulps (1.5e-5 seen in CI), so the tolerance is relative, as in the tests above.
    lp_again, _ = token_logprobs(model, tokens, start=start, chunk=7)
    lp_full, _ = token_logprobs(model, tokens, start=start, chunk=0)
    assert passes["chunked"] == 2
    np.testing.assert_allclose(np.array(lp_again), np.array(lp_full), rtol=1e-5, atol=2e-5)
