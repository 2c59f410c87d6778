"""Tests of the group sampler (mlx_gft.sampling) and of the tiny test model."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import (
    BatchKVCache,
    BatchRotatingKVCache,
    CacheList,
    ChunkedKVCache,
    KVCache,
    RotatingKVCache,
)
from mlx_lm.tuner.utils import linear_to_lora_layers
from tiny_model import build_tiny_model

from mlx_gft import sampling
from mlx_gft.logprobs import token_logprobs
from mlx_gft.models import adapters_disabled
from mlx_gft.sampling import Sample, sample_groups

QUESTIONS = [
    "Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
    "How many?",
    "Ann shares 12 pens equally among 3 friends at school.",
]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(tiny_path):
    return mlx_lm.load(str(tiny_path))


@pytest.fixture(scope="module")
def prompts(loaded) -> list[list[int]]:
    _, tok = loaded
    return [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in QUESTIONS
    ]


def _lora_model(tiny_path: Path, use_dora: bool, quantize: bool = False) -> nn.Module:
    """The tiny model with adapters whose lora_b is nonzero (so they change the policy)."""
    model, _ = mlx_lm.load(str(tiny_path))
    if quantize:
        nn.quantize(model, group_size=32, bits=4)
    model.freeze()
    config = {"rank": 4, "scale": 2.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, config, use_dora=use_dora)
    rng = np.random.default_rng(0)
    for _, module in model.named_modules():
        if "lora_b" in module:
            shape = module.lora_b.shape
            module.lora_b = mx.array(rng.standard_normal(shape).astype(np.float32) * 0.3)
    mx.eval(model.parameters())
    return model


def _forward_logits(model, prompt: list[int], sample: Sample) -> mx.array:
    """Logits predicting each completion token, from one plain (unpadded) forward pass."""
    seq = mx.array([prompt + sample.tokens])
    return model(seq[:, :-1])[0, len(prompt) - 1 :].astype(mx.float32)


def _reference_logq(
    logits: np.ndarray, token: int, t: float, top_k: int, top_p: float, min_p: float
) -> float:
    """log q(token) for temperature then top-k, top-p, min-p, written independently."""
    x = logits.astype(np.float64) / t
    keep = np.ones_like(x, dtype=bool)
    if top_k:
        keep &= x >= np.sort(x)[-top_k]
    if top_p < 1.0:
        xs = np.where(keep, x, -np.inf)
        p = np.exp(xs - xs.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        above = np.cumsum(p[order]) - p[order]
        n_keep = max(int((above < top_p).sum()), 1)
        keep &= xs >= xs[order[n_keep - 1]]
    if min_p:
        keep &= x >= x.max() + np.log(min_p)
    xs = np.where(keep, x, -np.inf)
    return float(xs[token] - (xs.max() + np.log(np.exp(xs - xs.max()).sum())))


# ---------------------------------------------------------------------------------------
# The tiny model itself
# ---------------------------------------------------------------------------------------


def test_tiny_model_loads_and_tokenizes(tiny_path, loaded):
    model, tok = loaded
    config = json.loads((tiny_path / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert model.args.vocab_size == len(tok._tokenizer) == config["vocab_size"]
    assert tok.eos_token_ids == {tok.eos_token_id} and tok.eos_token == "</s>"
    for text in ["Tom has 12 apples. #### 34", "Ünïcode 日本 + 7 - 2 = 5"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<s><|user|>\nWhat is 2 + 3?</s>\n<|assistant|>\n"
    messages = [{"role": "user", "content": "2 + 3"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), config["vocab_size"])


def test_tiny_model_is_deterministic(tiny_path, tmp_path):
    other = build_tiny_model(tmp_path / "again")
    for name in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json"]:
        assert (other / name).read_bytes() == (tiny_path / name).read_bytes(), name
    # A second call on a finished folder reuses it.
    stamp = (other / "model.safetensors").stat().st_mtime_ns
    build_tiny_model(other)
    assert (other / "model.safetensors").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------------------------------
# Shapes, order, stopping
# ---------------------------------------------------------------------------------------


def test_shapes_and_order(loaded, prompts):
    model, tok = loaded
    samples = sample_groups(model, tok, prompts, 4, max_tokens=12, seed=0, eos_token_ids=())
    assert [s.prompt_index for s in samples] == [p for p in range(3) for _ in range(4)]
    for s in samples:
        assert len(s.tokens) == len(s.logprobs) == len(s.logprobs_t1) == 12
        assert s.finish_reason == "length"
        assert all(isinstance(t, int) and 0 <= t < model.args.vocab_size for t in s.tokens)
        assert s.text == tok.decode(s.tokens)
    # Different members of a group are different samples.
    assert len({tuple(s.tokens) for s in samples[:4]}) == 4


def test_eos_stops_rows_independently(loaded, prompts):
    model, tok = loaded
    # Many "EOS" ids so that some rows stop early and others run to the limit.
    eos = set(range(5, model.args.vocab_size, 9))
    samples = sample_groups(model, tok, prompts, 6, max_tokens=10, seed=1, eos_token_ids=eos)
    reasons = {s.finish_reason for s in samples}
    assert reasons == {"stop", "length"}
    for s in samples:
        assert not any(t in eos for t in s.tokens[:-1])
        if s.finish_reason == "stop":
            assert s.tokens[-1] in eos and len(s.tokens) <= 10
            assert s.text == tok.decode(s.tokens[:-1])
        else:
            assert len(s.tokens) == 10 and s.tokens[-1] not in eos


def test_default_eos_is_the_tokenizers(loaded, prompts):
    model, tok = loaded
    # A hot temperature makes the random model's EOS (about 1 in 512) show up a few times.
    samples = sample_groups(model, tok, prompts, 16, max_tokens=64, seed=3, temperature=3.0)
    stopped = [s for s in samples if s.finish_reason == "stop"]
    assert stopped
    for s in stopped:
        assert s.tokens[-1] == tok.eos_token_id
        assert s.text == tok.decode(s.tokens[:-1])
    for s in samples:
        assert tok.eos_token_id not in s.tokens[:-1]


def test_stop_strings(loaded, prompts):
    model, tok = loaded
    stop = ["e", "s"]
    samples = sample_groups(
        model, tok, prompts, 4, max_tokens=20, seed=2, stop=stop, eos_token_ids=()
    )
    stopped = [s for s in samples if s.finish_reason == "stop"]
    assert stopped, "expected some samples to hit a stop string"
    for s in samples:
        assert not any(x in s.text for x in stop)
        before = tok.decode(s.tokens[:-1])
        assert not any(x in before for x in stop)  # stopped at the first occurrence
        if s.finish_reason == "stop":
            assert s.stop_string in tok.decode(s.tokens)
            assert tok.decode(s.tokens).startswith(s.text)
        else:
            assert len(s.tokens) == 20


# ---------------------------------------------------------------------------------------
# Token ids and log-probabilities against a separate forward pass
# ---------------------------------------------------------------------------------------


def _check_logprobs(model, prompts, samples, t, top_k=0, top_p=1.0, min_p=0.0):
    """The returned ids, fed to a fresh forward pass, reproduce both log-probs."""
    for s in samples:
        prompt = prompts[s.prompt_index]
        seq = mx.array([prompt + s.tokens])
        # T = 1 via the library's own scorer, as training computes it.
        logp, _ = token_logprobs(model, seq)
        ref_t1 = np.array(logp[0, len(prompt) - 1 :])
        np.testing.assert_allclose(s.logprobs_t1, ref_t1, atol=1e-4, rtol=0)
        if t == 1.0 and not (top_k or top_p < 1.0 or min_p):
            np.testing.assert_allclose(s.logprobs, ref_t1, atol=1e-4, rtol=0)
        logits = np.array(_forward_logits(model, prompt, s))
        ref_q = [
            _reference_logq(logits[i], tok_id, t, top_k, top_p, min_p)
            for i, tok_id in enumerate(s.tokens)
        ]
        np.testing.assert_allclose(s.logprobs, ref_q, atol=1e-4, rtol=0)
        assert all(np.isfinite(s.logprobs))  # never drew a truncated token


def test_logprobs_match_forward_pass_t1(loaded, prompts):
    model, tok = loaded
    samples = sample_groups(model, tok, prompts, 3, max_tokens=16, seed=4, eos_token_ids=())
    _check_logprobs(model, prompts, samples, 1.0)


@pytest.mark.parametrize(
    "t,top_k,top_p,min_p",
    [
        (0.7, 0, 1.0, 0.0),
        (1.3, 20, 1.0, 0.0),
        (0.8, 0, 0.9, 0.0),
        (1.0, 0, 1.0, 0.05),
        (0.6, 50, 0.8, 0.02),
    ],
)
def test_logprobs_match_truncated_distribution(loaded, prompts, t, top_k, top_p, min_p):
    model, tok = loaded
    samples = sample_groups(
        model,
        tok,
        prompts,
        3,
        max_tokens=12,
        seed=5,
        eos_token_ids=(),
        temperature=t,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
    )
    _check_logprobs(model, prompts, samples, t, top_k, top_p, min_p)


def test_truncation_limits_support(loaded, prompts):
    model, tok = loaded
    greedy = sample_groups(model, tok, prompts, 2, max_tokens=8, temperature=0.0, seed=0)
    top1 = sample_groups(model, tok, prompts, 2, max_tokens=8, top_k=1, seed=9)
    for g, s in zip(greedy, top1, strict=True):
        assert g.tokens == s.tokens
        assert g.logprobs == [0.0] * len(g.tokens)
        np.testing.assert_allclose(s.logprobs, 0.0, atol=1e-6)
        np.testing.assert_allclose(s.logprobs_t1, g.logprobs_t1, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Determinism and batching invariance
# ---------------------------------------------------------------------------------------


def _ids(samples):
    return [s.tokens for s in samples]


def test_seeded_determinism(loaded, prompts):
    model, tok = loaded
    kw = {"max_tokens": 10, "eos_token_ids": ()}
    a = sample_groups(model, tok, prompts, 4, seed=7, **kw)
    b = sample_groups(model, tok, prompts, 4, seed=7, **kw)
    c = sample_groups(model, tok, prompts, 4, seed=8, **kw)
    assert _ids(a) == _ids(b) and [s.logprobs for s in a] == [s.logprobs for s in b]
    assert _ids(a) != _ids(c)
    mx.random.seed(11)
    d = sample_groups(model, tok, prompts, 4, **kw)
    mx.random.seed(11)
    e = sample_groups(model, tok, prompts, 4, **kw)
    assert _ids(d) == _ids(e)


def test_shared_prefix_equals_unshared(loaded, prompts):
    model, tok = loaded
    k = 4
    kw = {"max_tokens": 14, "seed": 21, "eos_token_ids": set(range(5, 500, 37))}
    shared = sample_groups(model, tok, prompts, k, **kw)
    # Every prompt repeated K times, each copy prefilled on its own row.
    repeated = [p for p in prompts for _ in range(k)]
    unshared = sample_groups(model, tok, repeated, 1, **kw)
    assert _ids(shared) == _ids(unshared)
    for a, b in zip(shared, unshared, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
        assert a.finish_reason == b.finish_reason


@pytest.mark.parametrize("cap", [1, 3, 5])
def test_max_concurrency_does_not_change_samples(loaded, prompts, cap, batch_joins):
    model, tok = loaded
    joins = batch_joins
    kw = {"max_tokens": 10, "seed": 13, "eos_token_ids": set(range(5, 500, 23))}
    free = sample_groups(model, tok, prompts, 4, **kw)
    assert not joins
    capped = sample_groups(model, tok, prompts, 4, max_concurrency=cap, **kw)
    assert _ids(free) == _ids(capped)
    assert [s.prompt_index for s in capped] == [s.prompt_index for s in free]
    if cap > 1:
        assert joins, "waiting rows should join a running batch"
    # Rows that joined a running batch (left-padded to it) still score exactly.
    _check_logprobs(model, prompts, capped, 1.0)


def test_batch_cache_follows_the_models_cache_kinds():
    # Built through the cache classes' public `merge` (not mlx-lm's private
    # _merge_caches): a model's own make_cache kinds must map to their batch classes.
    class Model:
        def __init__(self, *kinds):
            self.kinds = kinds

        def make_cache(self):
            return [kind() for kind in self.kinds]

    model = Model(
        KVCache,
        lambda: RotatingKVCache(max_size=8),
        lambda: CacheList(KVCache(), RotatingKVCache(max_size=4)),
    )
    cache = sampling._batch_cache(model, 3)
    assert [type(c) for c in cache] == [BatchKVCache, BatchRotatingKVCache, CacheList]
    assert [type(c) for c in cache[2].caches] == [BatchKVCache, BatchRotatingKVCache]
    assert all(c.left_padding.tolist() == [0, 0, 0] for c in cache[:2] + list(cache[2].caches))
    with pytest.raises(ValueError, match="ChunkedKVCache has no batched version"):
        sampling._batch_cache(Model(lambda: ChunkedKVCache(4)), 2)


def test_single_token_prompt_and_context_limit(loaded):
    model, tok = loaded
    ctx = model.args.max_position_embeddings
    samples = sample_groups(model, tok, [[1]], 2, max_tokens=5, seed=0, eos_token_ids=())
    assert all(len(s.tokens) == 5 for s in samples)
    near_end = [1] + [300] * (ctx - 4)  # room for 3 tokens
    samples = sample_groups(model, tok, [near_end], 2, max_tokens=50, seed=0, eos_token_ids=())
    assert all(len(s.tokens) == 3 and s.finish_reason == "length" for s in samples)


# ---------------------------------------------------------------------------------------
# Adapters: LoRA / DoRA on, off, and quantized base weights
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("use_dora", [False, True])
def test_adapters_disabled_samples_the_base_model(tiny_path, loaded, prompts, use_dora):
    base, tok = loaded
    model = _lora_model(tiny_path, use_dora)
    kw = {"max_tokens": 12, "seed": 17, "eos_token_ids": ()}
    expected = sample_groups(base, tok, prompts, 3, **kw)
    with_adapters = sample_groups(model, tok, prompts, 3, **kw)
    assert _ids(with_adapters) != _ids(expected)
    with adapters_disabled(model):
        off = sample_groups(model, tok, prompts, 3, **kw)
    assert _ids(off) == _ids(expected)
    for a, b in zip(off, expected, strict=True):
        np.testing.assert_allclose(a.logprobs_t1, b.logprobs_t1, atol=1e-5)
    # Adapters are back afterwards, and the adapted samples score under the adapted model.
    assert _ids(sample_groups(model, tok, prompts, 3, **kw)) == _ids(with_adapters)
    _check_logprobs(model, prompts, with_adapters, 1.0)


@pytest.mark.slow
def test_qlora_model(tiny_path, loaded, prompts):
    _, tok = loaded
    model = _lora_model(tiny_path, use_dora=False, quantize=True)
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    samples = sample_groups(
        model,
        tok,
        prompts,
        3,
        max_tokens=10,
        seed=3,
        eos_token_ids=(),
        temperature=0.9,
        top_p=0.95,
    )
    _check_logprobs(model, prompts, samples, 0.9, top_p=0.95)


def test_training_mode_is_restored(tiny_path, loaded, prompts):
    _, tok = loaded
    model = _lora_model(tiny_path, use_dora=False)
    model.train()
    sample_groups(model, tok, prompts[:1], 2, max_tokens=3, seed=0)
    assert model.training
    trainable = dict(tree_flatten(model.trainable_parameters()))
    assert trainable and all("lora" in k for k in trainable)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prompts": [[1, 5], []]}, "prompt 1 is empty"),
        ({"prompts": []}, "prompts is empty"),
        ({"prompts": [[1] * 600]}, "context"),
        ({"prompts": [[1, 99999]]}, "outside"),
        ({"group_size": 0}, "group_size"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.0}, "min_p"),
    ],
)
def test_bad_input(loaded, kwargs, match):
    model, tok = loaded
    args = {"prompts": [[1, 5, 6]], "group_size": 2, "max_tokens": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        sample_groups(model, tok, **args)


# ---------------------------------------------------------------------------------------
# The draw itself
# ---------------------------------------------------------------------------------------


def test_draw_follows_the_distribution():
    rng = np.random.default_rng(0)
    vocab = 700  # not a multiple of the 256-token block
    p = rng.random(vocab) ** 4
    p[rng.random(vocab) < 0.5] = 0.0  # truncated tokens
    p[-1] = 0.0
    p /= p.sum()
    n = 200_000
    probs = mx.broadcast_to(mx.array(p.astype(np.float32)), (n, vocab))
    u = mx.random.uniform(shape=(n, 2), key=mx.random.key(1))
    counts = np.bincount(np.array(sampling.draw(probs, u)), minlength=vocab)
    assert counts[p == 0].sum() == 0
    expected = p * n
    big = expected > 50
    z = (counts[big] - expected[big]) / np.sqrt(expected[big])
    assert np.abs(z).max() < 5 and abs((z**2).mean() - 1) < 0.3
    # The extreme uniforms still land on tokens that have mass.
    edges = mx.array([[0.0, 0.0], [0.0, 1 - 2**-24], [1 - 2**-24, 1 - 2**-24], [1 - 2**-24, 0.0]])
    picked = np.array(sampling.draw(probs[:4], edges))
    assert (p[picked] > 0).all()
