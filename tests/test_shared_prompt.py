"""The shared-prompt pass: each group's prompt runs once for all its answers, with the
same loss and gradients as running every answer with its own copy of the prompt."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from random_adapters import perturb_trainable

from mlx_gft.config import build_config
from mlx_gft.groups import pad_batch, response_start
from mlx_gft.logprobs import (
    prompt_spans,
    shared_prompt_logprobs,
    shares_prompts,
    token_logprobs,
    why_prompts_cannot_be_shared,
)
from mlx_gft.models import checkpoint_layers, recomputed_in_backward, setup_trainable
from mlx_gft.step import Stepper, make_loss

pytestmark = pytest.mark.slow


def _groups(seed=0):
    """Two prompts (37 and 50 tokens) with 3 and 3 answers of different lengths; the
    last answer of the first group is masked out, as a truncated sample is."""
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(3, 200, n)) for n in (37, 50)]
    lengths = [(5, 9, 3), (7, 2, 12)]
    pairs = [
        (p, list(rng.integers(3, 200, n)))
        for p, ns in zip(prompts, lengths, strict=True)
        for n in ns
    ]
    tokens, mask = pad_batch(pairs)
    start = response_start(mask)
    mask = mask[:, start:] * mx.array([1, 1, 0, 1, 1, 1], dtype=mx.float32)[:, None]
    adv = mx.array(rng.standard_normal(len(pairs)).astype(np.float32))
    old = mx.array(-rng.random(mask.shape).astype(np.float32))
    return start, (tokens, mask, adv, old, old - 0.1)


def test_prompt_spans_follow_runs_of_one_prompt():
    a, b = [5, 6, 7], [5, 6, 8]
    tokens = mx.array([a + [1, 2], a + [3, 4], b + [1, 2], b + [9, 9], a + [1, 1]])
    # Scored targets start at position 2 (the prompts are 3 tokens); row 3 is masked out.
    mask = mx.array([[1, 1], [1, 1], [1, 1], [0, 0], [1, 0]], dtype=mx.float32)
    # A prompt seen again after another one starts a new span: spans are runs of rows.
    assert prompt_spans(tokens, mask, start=2) == [(0, 2, 3), (2, 3, 3), (4, 5, 3)]


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
def test_shared_log_probs_equal_the_plain_pass(tiny_model, fine_tune_type):
    model, _ = load(str(tiny_model))
    setup_trainable(model, build_config(num_layers=-1, fine_tune_type=fine_tune_type))
    start, (tokens, mask, *_) = _groups()
    spans = prompt_spans(tokens, mask, start)
    assert [b - a for a, b, _ in spans] == [2, 3]  # the masked row needs no pass
    plain, plain_ent = token_logprobs(model, tokens, 0.7, True, start=start)
    shared, shared_ent = shared_prompt_logprobs(model, tokens, spans, 0.7, True, start=start)
    assert shared.shape == plain.shape
    np.testing.assert_allclose(np.array(shared * mask), np.array(plain * mask), atol=1e-5)
    np.testing.assert_allclose(np.array(shared_ent * mask), np.array(plain_ent * mask), atol=1e-5)


def _loss_and_grad(tiny_model, config):
    """(model, step, start, batch, spans): the tiny model with perturbed adapters, and
    step(start, *batch, spans=None) its loss and gradients for `_groups(seed=3)`."""
    model, _ = load(str(tiny_model))
    setup_trainable(model, config)
    perturb_trainable(model)
    start, batch = _groups(seed=3)
    spans = prompt_spans(batch[0], batch[1], start)
    loss = make_loss(config)
    step = nn.value_and_grad(model, lambda *a, spans=None: loss(model, *a, spans=spans))
    return model, step, start, batch, spans


@pytest.mark.parametrize("fine_tune_type", ["lora", "dora"])
@pytest.mark.parametrize(
    "options",
    [
        {"loss": "gft", "tau": 0.5},
        {"loss": "sft"},
        {"loss": "dft", "loss_agg": "seq-mean-token-mean"},
        {"loss": "grpo", "updates_per_batch": 2, "kl_coef": 0.1, "temperature": 0.7},
        {"loss": "grpo", "loss_agg": "seq-mean-token-sum-norm"},
    ],
    ids=["gft", "sft", "dft", "grpo-old-and-kl", "grpo-dr"],
)
def test_shared_loss_and_gradients_equal_the_plain_pass(tiny_model, fine_tune_type, options):
    config = build_config(num_layers=-1, fine_tune_type=fine_tune_type, **options)
    model, step, start, batch, spans = _loss_and_grad(tiny_model, config)
    (plain, (plain_stats, plain_lp)), plain_grads = step(start, *batch)
    (shared, (shared_stats, shared_lp)), shared_grads = step(start, *batch, spans=spans)
    assert abs(plain.item() - shared.item()) <= 1e-5
    np.testing.assert_allclose(np.array(shared_stats), np.array(plain_stats), rtol=1e-5)
    # The log-probs the loss used (the group log's): the same at every scored token.
    scored = np.array(batch[1]) > 0
    np.testing.assert_allclose(
        np.array(shared_lp)[scored], np.array(plain_lp)[scored], rtol=1e-5, atol=1e-5
    )
    plain_grads, shared_grads = dict(tree_flatten(plain_grads)), dict(tree_flatten(shared_grads))
    assert plain_grads.keys() == shared_grads.keys()
    worst = max(np.abs(np.array(plain_grads[k] - shared_grads[k])).max() for k in plain_grads)
    scale = max(np.abs(np.array(g)).max() for g in plain_grads.values())
    # 1e-5 of the gradient's scale (at least 1e-5): float32 itself is that far off here.
    # For SFT (scale 4.3) the plain pass is 3.7e-5 from the same gradient in float64,
    # the shared pass 3.4e-5; they are 2e-5 apart.
    assert scale > 1e-3 and worst <= 1e-5 * max(1.0, scale), (worst, scale)


def test_an_update_with_shared_prompts_equals_the_plain_one(tiny_model, passes):
    """Micro-batches of 2 rows split each 3-answer group: a split group's prompt runs
    once per micro-batch, and the update is still the plain one."""
    start, batch = _groups(seed=5)
    weights = []
    for shared in (False, True):
        assert passes["shared"] == 0  # the plain run (first) never takes the shared pass
        model, _ = load(str(tiny_model))
        config = build_config(num_layers=-1, micro_batch_size=2, shared_prompt=shared)
        mx.random.seed(0)  # the same LoRA initialisation for both
        setup_trainable(model, config)
        stepper = Stepper(model, optim.SGD(learning_rate=0.5), config)
        micro = [tuple(a[mx.array(rows)] for a in batch) for rows in ([0, 1], [2, 3], [4, 5])]
        stats = stepper.update(micro, start)
        assert stats.skipped == 0 and stats.response_tokens > 0
        weights.append(dict(tree_flatten(model.trainable_parameters())))
    # One shared pass per micro-batch: [0, 1] and [4, 5] hold two rows of one prompt; in
    # [2, 3] row 2 is masked out, so row 3 is its only span.
    assert passes["shared"] == 3
    moved = max(np.abs(np.array(weights[0][k])).max() for k in weights[0] if "lora_b" in k)
    assert moved > 1e-3  # the update did something worth comparing
    for k in weights[0]:
        np.testing.assert_allclose(np.array(weights[0][k]), np.array(weights[1][k]), atol=1e-5)


def test_architectures_without_plain_caches_fall_back_with_a_notice(tiny_model, monkeypatch):
    from mlx_lm.models.cache import RotatingKVCache

    model, _ = load(str(tiny_model))
    assert shares_prompts(model)
    monkeypatch.setattr(
        type(model),
        "make_cache",
        lambda self: [RotatingKVCache(64) for _ in self.layers],
        raising=False,
    )
    assert not shares_prompts(model)
    lines = []
    stepper = Stepper(model, optim.SGD(learning_rate=0.1), build_config(), log=lines.append)
    assert not stepper.shared
    assert lines == [
        "Note: every answer runs its own prompt in the update: it has sliding-window, "
        "quantized or state-space caches."
    ]


def test_grad_checkpoint_turns_sharing_off_with_a_notice(tiny_model, passes):
    """A checkpointed layer recomputes its forward in the backward, which would replay
    the shared pass's cache update: the update runs unshared, and equals the update
    without checkpointing."""
    start, batch = _groups(seed=5)
    weights, lines = [], []
    for checkpoint in (False, True):
        model, _ = load(str(tiny_model))
        config = build_config(num_layers=-1, micro_batch_size=6, grad_checkpoint=checkpoint)
        mx.random.seed(0)
        setup_trainable(model, config)
        stepper = Stepper(model, optim.SGD(learning_rate=0.5), config, log=lines.append)
        assert stepper.shared != checkpoint and shares_prompts(model) != checkpoint
        stepper.update([batch], start)
        weights.append(dict(tree_flatten(model.trainable_parameters())))
    assert passes["shared"] == 1  # the run without checkpointing
    assert lines == [
        "Note: every answer runs its own prompt in the update: "
        "--grad-checkpoint recomputes the layers."
    ]
    for k in weights[0]:
        np.testing.assert_allclose(np.array(weights[0][k]), np.array(weights[1][k]), atol=1e-5)


def test_checkpointing_changes_this_models_layers_only(tiny_model):
    first, _ = load(str(tiny_model))
    second, _ = load(str(tiny_model))
    checkpoint_layers(first)
    assert all(recomputed_in_backward(layer) for layer in first.layers)
    assert not any(recomputed_in_backward(layer) for layer in second.layers)
    assert shares_prompts(second) and not shares_prompts(first)
    tokens = mx.array([[5, 6, 7, 8, 9]])
    np.testing.assert_allclose(np.array(first(tokens)), np.array(second(tokens)), atol=1e-6)


@pytest.mark.parametrize("wrapper", ["mlx_lm", "renamed"])
def test_any_wrapper_of_a_layers_forward_turns_sharing_off(tiny_model, monkeypatch, wrapper):
    """Not only our own checkpointing: mlx_lm's grad_checkpoint, under whatever name its
    wrapper has, or any function put in place of a layer's forward."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    model, _ = load(str(tiny_model))
    layer_class = type(model.layers[0])
    # Both patch the class for the whole process: undo it after the test.
    monkeypatch.setattr(layer_class, "__call__", layer_class.__call__)
    assert shares_prompts(model)
    if wrapper == "mlx_lm":
        grad_checkpoint(model.layers[0])
    else:
        forward = layer_class.__call__

        def layer_forward(self, *args, **kwargs):  # a name nobody looks for
            return forward(self, *args, **kwargs)

        layer_class.__call__ = layer_forward
    assert recomputed_in_backward(model.layers[0])
    assert why_prompts_cannot_be_shared(model) == "--grad-checkpoint recomputes the layers"


class _KeyedNoise(nn.Module):
    """Stands in for LoRA dropout: a mask in [0.5, 1.5] (constant to the gradient, as
    dropout's is) that is a function of the input, so equal activations get equal masks,
    as one shared dropout mask gives. Slowly varying, so float32 rounding between the
    two passes is not amplified from layer to layer."""

    def __call__(self, x):
        return x * mx.stop_gradient(1.0 + 0.5 * mx.sin(x / (1.0 + mx.abs(x))))


def test_lora_dropout_differs_only_by_one_mask_per_prompt(tiny_model):
    """With LoRA dropout the shared pass draws the prompt's dropout mask once for all
    the rows of a group, where the plain pass draws one per row: an estimate of the
    same expected gradient with correlated noise. With noise that depends only on the
    activations (so every row's copy of the prompt gets the same, as in the shared
    pass), the two passes give the same gradient: the mask is the only difference."""
    lora = {"rank": 8, "scale": 20.0, "dropout": 0.3}
    config = build_config(num_layers=-1, lora_parameters=lora)
    model, step, start, batch, spans = _loss_and_grad(tiny_model, config)

    def gradients(spans):
        grads = step(start, *batch, spans=spans)[1]
        return {k: np.array(g) for k, g in tree_flatten(grads)}

    model.train()
    mx.random.seed(2)
    plain = gradients(None)
    mx.random.seed(2)
    shared = gradients(spans)
    assert max(np.abs(plain[k] - shared[k]).max() for k in plain) > 1e-3  # real dropout
    for _, module in model.named_modules():
        if "dropout" in module and isinstance(module.dropout, nn.Dropout):
            module.dropout = _KeyedNoise()
    plain, shared = gradients(None), gradients(spans)
    scale = max(np.abs(g).max() for g in plain.values())
    worst = max(np.abs(plain[k] - shared[k]).max() for k in plain)
    assert scale > 1e-3 and worst <= 1e-5 * max(1.0, scale), (worst, scale)
