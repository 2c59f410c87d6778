"""The memory-bounded step: chunked LM head and micro-batches give the same loss and
gradients as the plain full-batch path."""

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
from mlx_gft.logprobs import chunked_logprobs, gather_logprobs, token_logprobs
from mlx_gft.models import setup_trainable
from mlx_gft.step import Stepper, make_loss, plan_updates, run_updates


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_matches_the_full_logits(temperature):
    mx.random.seed(0)
    head = nn.Linear(16, 300)
    head.freeze()
    hidden = mx.random.normal((3, 7, 16))
    targets = mx.random.randint(0, 300, (3, 7))
    weights = mx.random.normal((3, 7))

    def full(h):
        lp, ent = gather_logprobs(head(h) / temperature, targets, with_entropy=True)
        return (lp * weights).sum(), (lp, ent)

    def chunked(h):  # 21 positions in chunks of 5: the last chunk is short
        lp, ent = chunked_logprobs(h, head, targets, temperature, True, 5)
        return (lp * weights).sum(), (lp, ent)

    (v1, (lp1, e1)), g1 = full(hidden), mx.grad(lambda h: full(h)[0])(hidden)
    (v2, (lp2, e2)), g2 = chunked(hidden), mx.grad(lambda h: chunked(h)[0])(hidden)
    np.testing.assert_allclose(v1.item(), v2.item(), rtol=1e-6)
    np.testing.assert_allclose(np.array(lp1), np.array(lp2), atol=1e-5)
    np.testing.assert_allclose(np.array(e1), np.array(e2), atol=1e-5)
    np.testing.assert_allclose(np.array(g1), np.array(g2), atol=1e-6)
    compiled = mx.compile(mx.grad(lambda h: chunked(h)[0]))(hidden)
    np.testing.assert_allclose(np.array(g1), np.array(compiled), atol=1e-6)


def _batch(n_rows=6, seed=0, groups=0):
    """Rows of random prompts and answers; with `groups`, the rows are that many groups
    of consecutive rows sharing one prompt each, as a GFT batch is."""
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(3, 200, 35)) for _ in range(groups or n_rows)]
    pairs = [
        (prompts[i * len(prompts) // n_rows], list(rng.integers(3, 200, int(rng.integers(4, 40)))))
        for i in range(n_rows)
    ]
    tokens, mask = pad_batch(pairs)
    start = response_start(mask)
    mask = mask[:, start:]
    adv = mx.array(rng.standard_normal(n_rows).astype(np.float32))
    old = mx.array(-rng.random(mask.shape).astype(np.float32))
    return start, (tokens, mask, adv, old, old - 0.1)


def test_token_logprobs_chunked_equals_unchunked_on_a_model(tiny_model, passes):
    model, _ = load(str(tiny_model))
    setup_trainable(model, build_config(num_layers=-1))
    start, (tokens, mask, adv, *_rest) = _batch()

    def loss(chunk):
        def f(model):
            lp, _ = token_logprobs(model, tokens, start=start, chunk=chunk)
            return (lp * mask * adv[:, None]).sum()

        return nn.value_and_grad(model, f)(model)

    v_full, g_full = loss(0)
    assert passes["chunked"] == 0
    v_chunk, g_chunk = loss(16)
    assert passes["chunked"] == 1  # the chunked head ran: not the full one twice
    np.testing.assert_allclose(v_full.item(), v_chunk.item(), rtol=1e-5)
    flat_full, flat_chunk = dict(tree_flatten(g_full)), dict(tree_flatten(g_chunk))
    for k, g in flat_full.items():
        assert_close(np.array(g), np.array(flat_chunk[k]), k)


def assert_close(a: np.ndarray, b: np.ndarray, name: str) -> None:
    """Float32 sums in another order: equal to 1e-5 relative to the array's scale."""
    scale = max(1.0, float(np.abs(a).max()))
    assert np.abs(a - b).max() <= 1e-5 * scale, (name, np.abs(a - b).max(), scale)


def _params_after_update(tiny_model, config, start, arrays, sizes, kinds=None):
    model, _ = load(str(tiny_model))
    mx.random.seed(0)  # the same LoRA initialisation for every call
    setup_trainable(model, config)
    stepper = Stepper(model, optim.SGD(learning_rate=1.0), config)
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    metrics = run_updates(stepper, sizes, start, arrays, config, kinds).metrics
    after = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    # SGD with lr 1: the change is minus the (clipped) gradient.
    return {k: before[k] - after[k] for k in before}, metrics


@pytest.mark.parametrize(
    "loss,agg,groups",
    [
        ("gft", "token-mean", 0),
        ("gft", "token-mean", 2),
        ("gft", "seq-mean-token-mean", 2),
        ("sft", "token-mean", 0),
        ("dft", "token-mean", 0),
        ("grpo", "token-mean", 2),
    ],
)
def test_micro_batches_make_the_full_batch_update(tiny_model, loss, agg, groups, passes):
    """groups=2: two groups of three rows sharing a prompt, split across micro-batches of
    two rows, so a sampled method's micro-batches run the shared-prompt pass."""
    start, arrays = _batch(groups=groups)
    sizes = [3, 3]  # two groups of three members
    common = dict(num_layers=-1, loss=loss, loss_agg=agg, grad_clip=0.0, batch_size=2)
    whole, m_whole = _params_after_update(
        tiny_model, build_config(micro_batch_size=6, **common), start, arrays, sizes
    )
    parts, m_parts = _params_after_update(
        tiny_model, build_config(micro_batch_size=1, **common), start, arrays, sizes
    )
    assert m_whole["train_tokens"] == m_parts["train_tokens"]
    np.testing.assert_allclose(m_whole["loss"], m_parts["loss"], rtol=1e-5)
    assert ("entropy" in m_whole) == (loss in ("sft", "dft"))  # GFT/GRPO: the sampler's
    np.testing.assert_allclose(m_whole.get("entropy", 0), m_parts.get("entropy", 0), rtol=1e-5)
    for k in whole:
        assert_close(whole[k], parts[k], k)
    assert max(np.abs(v).max() for v in whole.values()) > 1e-4  # the update did something
    assert (passes["shared"] > 0) == (groups > 0 and loss in ("gft", "grpo"))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("keys", [None, ["lm_head", "self_attn.v_proj"]])
def test_a_chunked_head_in_the_stepper_makes_the_unchunked_update(
    tiny_model, monkeypatch, passes, shared, keys
):
    """The tiny vocabulary never reaches CHUNK_ELEMENTS: lower it so the compiled step
    runs the head in chunks of 32 positions, with and without an adapter on the head.
    Every pass of the head (counted when traced, for the compiled step) is chunked."""
    from mlx_gft import logprobs

    heads = []
    head_logprobs = logprobs.head_logprobs
    monkeypatch.setattr(
        logprobs, "head_logprobs", lambda *a, **k: heads.append(1) or head_logprobs(*a, **k)
    )
    start, arrays = _batch(groups=2)
    lora = {"rank": 4, "scale": 10.0, "dropout": 0.0, **({"keys": keys} if keys else {})}
    config = build_config(
        num_layers=-1, batch_size=2, grad_clip=0.0, shared_prompt=shared, lora_parameters=lora
    )
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 2**62)
    whole, _ = _params_after_update(tiny_model, config, start, arrays, [3, 3])
    assert passes["chunked"] == 0 and heads
    heads.clear()
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 1)  # the floor: chunks of 32 positions
    chunked, _ = _params_after_update(tiny_model, config, start, arrays, [3, 3])
    assert passes["chunked"] == len(heads) > 0 and (passes["shared"] > 0) == shared
    if keys:
        assert max(np.abs(v).max() for k, v in chunked.items() if k.startswith("lm_head")) > 1e-4
    for k in whole:
        assert_close(whole[k], chunked[k], k)


def test_micro_batch_plan_respects_rows_tokens_and_groups():
    sizes = [9, 9, 9, 9]  # batch 4, expert + 8 samples
    config = build_config(batch_size=4)
    (update,) = plan_updates(sizes, 300, config)
    assert [len(m) for m in update.micro_batches] == [4] * 9  # batch_size rows at a time
    assert sorted(r for m in update.micro_batches for r in m) == update.rows == list(range(36))
    config = build_config(batch_size=4, micro_batch_size=9, micro_batch_tokens=1000)
    plan = plan_updates(sizes, 300, config)[0]
    assert {len(m) for m in plan.micro_batches} == {3}  # 1000 // 300
    config = build_config(batch_size=4, micro_batch_size=64, updates_per_batch=2)
    plan = plan_updates(sizes, 300, config)
    assert [[len(m) for m in u.micro_batches] for u in plan] == [[18], [18]]
    # Rows that do not run leave the micro-batches, not the update: an update whose
    # rows all stay out is still an update (skipped as idle, counted by the schedule).
    run = np.ones(36, dtype=bool)
    run[:18] = False
    run[20] = False
    plan = plan_updates(sizes, 300, config, run)
    assert [u.rows for u in plan] == [list(range(18)), list(range(18, 36))]
    assert [u.micro_batches for u in plan] == [[], [[18, 19, *range(21, 36)]]]


def test_grpo_with_one_update_needs_no_old_policy_forward(tiny_model):
    """With one update per sampled batch the ratio is sg(current) / current: the same
    loss and gradient as a separate old-policy forward gives, without that forward."""
    start, (tokens, mask, adv, _, base) = _batch()
    model, _ = load(str(tiny_model))
    setup_trainable(model, build_config(num_layers=-1))
    old = mx.stop_gradient(token_logprobs(model, tokens, start=start)[0])
    results = []
    for upb in (1, 2):
        fn = make_loss(build_config(loss="grpo", updates_per_batch=upb, batch_size=2))
        value_and_grad = nn.value_and_grad(model, lambda *b, fn=fn: fn(model, start, *b)[0])
        results.append(value_and_grad(tokens, mask, adv, old, base))
    (v1, g1), (v2, g2) = results
    np.testing.assert_allclose(v1.item(), v2.item(), rtol=1e-5)
    for (k, a), (_, b) in zip(tree_flatten(g1), tree_flatten(g2), strict=True):
        assert_close(np.array(a), np.array(b), k)


def test_the_samplers_entropy_is_the_training_forwards(tiny_model):
    """GFT/GRPO report the policy's entropy on sampled tokens from the sampler's own
    softmax (at T=1), sparing the training step a second pass over the vocabulary."""
    from mlx_gft.sampling import sample_groups

    model, tokenizer = load(str(tiny_model))
    prompt = tokenizer.encode("Tom has 3 apples.")
    (sample,) = sample_groups(model, tokenizer, [prompt], 1, max_tokens=12, seed=3)
    tokens, mask = pad_batch([(prompt, sample.tokens)])
    _, entropy = token_logprobs(model, tokens, with_entropy=True)
    expected = np.array(entropy)[0][np.array(mask)[0] > 0]
    np.testing.assert_allclose(sample.entropy, expected, rtol=1e-4, atol=1e-4)


def test_grpo_reference_log_probs_run_in_micro_batches(tiny_model, monkeypatch):
    """The old-policy and base forwards take micro_batch_rows rows at a time, as the
    update does, so their peak is one micro-batch's too; the values are the whole
    batch's."""
    from mlx_gft import rollout
    from mlx_gft.models import adapters_disabled

    model, _ = load(str(tiny_model))
    config = build_config(
        num_layers=-1, loss="grpo", updates_per_batch=2, kl_coef=0.1, batch_size=2
    )
    setup_trainable(model, config)
    perturb_trainable(model)  # the old policy is not the base
    start, (tokens, mask, *_rest) = _batch(groups=2)
    rows, forward = [], rollout.token_logprobs
    monkeypatch.setattr(
        rollout,
        "token_logprobs",
        lambda m, t, *a, **k: rows.append(t.shape[0]) or forward(m, t, *a, **k),
    )
    old, base = rollout.reference_logprobs(model, tokens, start, config, mx.zeros(mask.shape))
    assert rows == [2, 2, 2] * 2  # 6 rows in micro-batches of batch_size, old then base
    whole_old = forward(model, tokens, start=start)[0]
    with adapters_disabled(model):
        whole_base = forward(model, tokens, start=start)[0]
    np.testing.assert_allclose(np.array(old), np.array(whole_old), atol=1e-5)
    np.testing.assert_allclose(np.array(base), np.array(whole_base), atol=1e-5)
    assert np.abs(np.array(old - base)).max() > 1e-3


def _quiet_batch():
    """Three groups of four rows sharing a prompt each: the first zero-variance (A = 0
    for all), the second with one row at its group's mean reward (A = 0 for it), the
    third with a row that has no scored token (a truncated sample)."""
    from mlx_gft.advantages import group_advantages

    start, (tokens, mask, _, old, base) = _batch(n_rows=12, seed=4, groups=3)
    rewards = [1, 1, 1, 1, 1, 0, 0.5, 0.5, 0, 1, 0, 1]
    adv = group_advantages(rewards, 4)
    keep = np.ones((12, 1), dtype=np.float32)
    keep[9] = 0
    return start, (tokens, mask * mx.array(keep), adv, old, base)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize(
    "loss,upb,accumulation",
    [("gft", 1, 1), ("grpo", 1, 1), ("grpo", 2, 1), ("gft", 1, 2), ("grpo", 2, 2)],
)
@pytest.mark.parametrize("shared", [True, False])
def test_leaving_quiet_rows_out_makes_the_same_update(
    tiny_model, monkeypatch, passes, agg, loss, upb, accumulation, shared
):
    """Rows with A = 0 (or nothing scored) run no forward and no backward, and the
    weights after the update are those of the update that runs every row: with the
    update in parts too (grad_accumulation_steps; with two updates of two parts, the
    first part is the quiet group alone and runs nothing)."""
    start, arrays = _quiet_batch()
    assert np.flatnonzero(np.array(arrays[2])).tolist() == [4, 5, 8, 9, 10, 11]  # row 9: masked
    rows_run = []
    forward = Stepper._value_and_grad
    monkeypatch.setattr(
        Stepper,
        "_value_and_grad",
        lambda self, start, batch: (
            rows_run.append(batch[0].shape[0]) or forward(self, start, batch)
        ),
    )
    results = {}
    for skip in (False, True):
        config = build_config(
            num_layers=-1, loss=loss, loss_agg=agg, grad_clip=0.0, batch_size=4,
            micro_batch_size=3, shared_prompt=shared, updates_per_batch=upb,
            grad_accumulation_steps=accumulation, skip_zero_advantage=skip,
        )  # fmt: skip
        rows_run.clear()
        passes["shared"] = 0
        kinds = ["expert", "sampled", "sampled", "sampled"] * 3
        results[skip] = _params_after_update(tiny_model, config, start, arrays, [4, 4, 4], kinds)
        assert sum(rows_run) == (5 if skip else 12)  # A != 0 and something scored: 5 rows
        # Rows of a group that run together share their prompt's pass (the step's
        # shared_value_and_grad), skipping or not; without it, none does.
        assert (passes["shared"] > 0) == shared, (skip, passes["shared"])
    (every, m_every), (skipped, m_skipped) = results[False], results[True]
    np.testing.assert_allclose(m_skipped["loss"], m_every["loss"], rtol=1e-5)
    assert m_every["quiet_row_frac"] == 0 and m_skipped["quiet_row_frac"] == pytest.approx(7 / 12)
    # Everything else reported is the same: tokens, rectified shares, GFT's mechanism.
    m_every.pop("quiet_row_frac"), m_skipped.pop("quiet_row_frac")
    assert m_every.keys() == m_skipped.keys()
    assert {"train_tokens", "rectified_frac", "expert_pull", "adv_expert"} <= m_every.keys()
    assert m_every["train_tokens"] == int(np.array(arrays[1]).sum())  # every row's tokens
    for key, value in m_every.items():
        assert m_skipped[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    for k in every:
        assert_close(every[k], skipped[k], k)
    assert max(np.abs(v).max() for v in every.values()) > 1e-4


class _OtherRankHasRows:
    """Rank 1 of two; rank 0, whose rows have signal, is played by the test's all_sum."""

    def size(self) -> int:
        return 2

    def rank(self) -> int:
        return 1


def test_a_rank_whose_rows_are_all_quiet_joins_the_update(tiny_model, monkeypatch):
    """Distributed, a rank whose rows all have A = 0 runs no micro-batch while another
    rank's rows have a gradient: it still makes every collective the other rank makes
    (the signal check, the gradient sum, the loss sum), in the same order, so neither
    waits forever, and applies the summed update. Two ranks are simulated: all_sum adds
    the other rank's share, ones in every shape."""
    collectives = []

    def all_sum(x, group=None, stream=None):
        collectives.append(tuple(x.shape))
        return x + mx.ones_like(x)

    monkeypatch.setattr(mx.distributed, "all_sum", all_sum)
    start, (tokens, mask, adv, old, base) = _quiet_batch()
    config = build_config(num_layers=-1, batch_size=4, grad_clip=0.0)  # GFT, token-mean

    def update(advantages) -> tuple[dict, dict, list]:
        model, _ = load(str(tiny_model))
        mx.random.seed(0)
        setup_trainable(model, config)
        stepper = Stepper(model, optim.SGD(learning_rate=1.0), config, _OtherRankHasRows())
        before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
        collectives.clear()
        arrays = (tokens, mask, advantages, old, base)
        metrics = run_updates(stepper, [4, 4, 4], start, arrays, config).metrics
        after = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
        return {k: before[k] - after[k] for k in before}, metrics, list(collectives)

    moved, metrics, quiet_calls = update(mx.zeros_like(adv))  # every row of this rank quiet
    _, _, busy_calls = update(adv)  # the same rank with rows to run
    assert metrics["quiet_row_frac"] == 1.0 and metrics["idle_updates"] == 0
    assert quiet_calls == busy_calls and len(quiet_calls) >= 3
    # The update is the other rank's gradient (ones) over both ranks' normaliser: this
    # rank's scored tokens, and the other's 1.
    expected = 1.0 / (float(mask.sum()) + 1.0)
    assert metrics["loss"] == pytest.approx(expected)
    for k, change in moved.items():
        np.testing.assert_allclose(change, expected, rtol=1e-5, err_msg=k)


def test_a_kl_term_keeps_every_row(tiny_model):
    """GRPO's KL to the base has a gradient at A = 0: no row is left out."""
    start, arrays = _quiet_batch()
    config = build_config(num_layers=-1, loss="grpo", kl_coef=0.1, batch_size=4)
    _, metrics = _params_after_update(tiny_model, config, start, arrays, [4, 4, 4])
    assert metrics["quiet_row_frac"] == 0
