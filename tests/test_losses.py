"""Losses against hand-computed values, numpy, and finite differences."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_gft.losses import (
    AGGREGATIONS,
    aggregate,
    dcr_coefficient,
    dft_loss,
    gft_loss,
    grpo_loss,
    kl_to_base,
    rectified_fraction,
    sft_loss,
)

TAU = 0.5
# Probabilities straddling tau: just below, exactly at, just above, far from it.
P = np.array([[0.05, 0.4999, 0.5001, 0.9], [0.5, 0.3, 0.99, 0.01]])
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.float32)
ADV = np.array([1.5, -0.75])


def np_aggregate(values, mask, agg):
    if agg == "token-mean":
        return (values * mask).sum() / mask.sum()
    if agg == "seq-mean-token-mean":
        return ((values * mask).sum(-1) / mask.sum(-1)).mean()
    # Dr. GRPO: each answer's token sum over a constant, averaged over answers (the
    # constant defaults to the padded width when the caller gives none).
    return (values * mask).sum(-1).mean() / values.shape[-1]


def lp():
    return mx.array(np.log(P), dtype=mx.float32)


def test_dcr_coefficient_is_a_step_at_tau():
    c = np.array(dcr_coefficient(lp(), TAU))
    expected = np.where(P <= TAU, P, 1.0)
    np.testing.assert_allclose(c, expected, rtol=1e-5)
    # Just below tau keeps p, just above jumps to 1: the weight on grad p drops from 1/tau to 1.
    assert c[0, 1] == pytest.approx(0.4999, rel=1e-5) and c[0, 2] == 1.0


def test_dcr_coefficient_has_no_gradient():
    g = mx.grad(lambda x: dcr_coefficient(x, TAU).sum())(lp())
    assert np.all(np.array(g) == 0)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gft_loss_value_and_gradient_match_numpy(agg):
    c = np.where(P <= TAU, P, 1.0)
    terms = -ADV[:, None] * c * np.log(P)
    loss = gft_loss(lp(), mx.array(MASK), mx.array(ADV), TAU, agg)
    assert loss.item() == pytest.approx(np_aggregate(terms, MASK, agg), rel=1e-5)
    # d/d log p_t = -A c_t / normaliser on unmasked tokens, 0 on masked ones.
    grad = mx.grad(lambda x: gft_loss(x, mx.array(MASK), mx.array(ADV), TAU, agg))(lp())
    unit = np.ones_like(P)
    expected = -ADV[:, None] * c * MASK
    if agg == "token-mean":
        expected = expected / MASK.sum()
    elif agg == "seq-mean-token-mean":
        expected = expected / MASK.sum(-1, keepdims=True) / P.shape[0]
    else:  # each row's sum over the constant, averaged over the rows
        expected = expected / P.shape[1] / P.shape[0]
    np.testing.assert_allclose(np.array(grad), expected * unit, rtol=1e-5, atol=1e-7)


def test_hand_computed_gft_value():
    # Two tokens, A = 2: p=0.2 (rectified, c=0.2) and p=0.8 (c=1), tau=0.5, token-mean.
    logp = mx.log(mx.array([[0.2, 0.8]]))
    loss = gft_loss(logp, mx.ones((1, 2)), mx.array([2.0]), 0.5)
    expected = -(2 * 0.2 * np.log(0.2) + 2 * 1.0 * np.log(0.8)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_negative_advantage_pushes_probability_down():
    logits = mx.array([[[2.0, 0.0, -1.0]]])
    target = mx.array([[0]])

    def loss(z, adv):
        logp = mx.take_along_axis(z - mx.logsumexp(z, -1, keepdims=True), target[..., None], -1)
        return gft_loss(logp.squeeze(-1), mx.ones((1, 1)), mx.array([adv]), TAU)

    # Gradient descent raises the token's logit for A > 0 and lowers it for A < 0.
    assert mx.grad(loss)(logits, 1.0)[0, 0, 0].item() < 0
    assert mx.grad(loss)(logits, -1.0)[0, 0, 0].item() > 0


def test_masked_tokens_change_nothing():
    logp = lp()
    noisy = mx.where(mx.array(MASK) > 0, logp, mx.array(-30.0))
    for fn in (lambda x: gft_loss(x, mx.array(MASK), mx.array(ADV), TAU), sft_loss_fn, dft_loss_fn):
        assert fn(logp).item() == pytest.approx(fn(noisy).item(), rel=1e-6)


def sft_loss_fn(x):
    return sft_loss(x, mx.array(MASK))


def dft_loss_fn(x):
    return dft_loss(x, mx.array(MASK))


def test_tau_one_is_dft_and_tau_zero_is_sft():
    mask, ones = mx.array(MASK), mx.ones((2,))
    assert gft_loss(lp(), mask, ones, 1.0).item() == pytest.approx(dft_loss(lp(), mask).item())
    assert gft_loss(lp(), mask, ones, 0.0).item() == pytest.approx(sft_loss(lp(), mask).item())
    for tau, ref in ((1.0, dft_loss), (0.0, sft_loss)):
        g1 = mx.grad(lambda x, t=tau: gft_loss(x, mask, ones, t))(lp())
        g2 = mx.grad(lambda x, r=ref: r(x, mask))(lp())
        np.testing.assert_allclose(np.array(g1), np.array(g2), rtol=1e-6)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_sft_and_dft_match_numpy(agg):
    mask = mx.array(MASK)
    assert sft_loss(lp(), mask, agg).item() == pytest.approx(
        np_aggregate(-np.log(P), MASK, agg), rel=1e-5
    )
    assert dft_loss(lp(), mask, agg).item() == pytest.approx(
        np_aggregate(-P * np.log(P), MASK, agg), rel=1e-5
    )
    # DFT's gradient w.r.t. log p is -p: the SFT gradient of p itself.
    g = mx.grad(lambda x: dft_loss(x, mask, "token-mean"))(lp())
    np.testing.assert_allclose(np.array(g), -P * MASK / MASK.sum(), rtol=1e-5)


def _log_softmax_np(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_gft_gradient_through_logits_matches_finite_differences():
    rng = np.random.default_rng(0)
    z0 = rng.normal(size=(2, 3, 5)) * 2
    targets = rng.integers(0, 5, size=(2, 3))
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=np.float64)
    adv = np.array([0.8, -1.3])
    tau = 0.3

    def logp_np(z):
        return np.take_along_axis(_log_softmax_np(z), targets[..., None], -1)[..., 0]

    # The coefficient is a stop-gradient: finite differences hold it at its value at z0.
    p0 = np.exp(logp_np(z0))
    c0 = np.where(p0 <= tau, p0, 1.0)
    assert 0 < (p0 <= tau).sum() < p0.size, "the case must mix rectified and plain tokens"

    def loss_np(z):
        return -(adv[:, None] * c0 * logp_np(z) * mask).sum() / mask.sum()

    fd = np.zeros_like(z0)
    h = 1e-6
    for idx in np.ndindex(z0.shape):
        up, down = z0.copy(), z0.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (loss_np(up) - loss_np(down)) / (2 * h)

    def loss_mx(z):
        logp = z - mx.logsumexp(z, -1, keepdims=True)
        logp = mx.take_along_axis(logp, mx.array(targets)[..., None], -1).squeeze(-1)
        return gft_loss(logp, mx.array(mask), mx.array(adv), tau)

    grad = mx.grad(loss_mx)(mx.array(z0, dtype=mx.float32))
    np.testing.assert_allclose(np.array(grad), fd, atol=2e-6)


def test_grpo_ratio_and_clipping():
    old = mx.log(mx.array([[0.5, 0.5, 0.5]]))
    new = mx.log(mx.array([[0.5, 0.7, 0.3]]))  # ratios 1.0, 1.4, 0.6
    mask = mx.ones((1, 3))
    for adv in (1.0, -1.0):
        loss = grpo_loss(new, old, mask, mx.array([adv]), clip_eps=0.2)
        ratio = np.array([1.0, 1.4, 0.6])
        expected = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv).mean()
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        g = np.array(mx.grad(lambda x, a=adv: grpo_loss(x, old, mask, mx.array([a])))(new))
        # d/dlogp of -ratio*A is -ratio*A/3 where the unclipped term is the minimum.
        live = (ratio * adv) <= (np.clip(ratio, 0.8, 1.2) * adv)
        np.testing.assert_allclose(g[0], np.where(live, -ratio * adv / 3, 0), rtol=1e-5, atol=1e-7)


def test_grpo_on_policy_gradient_is_the_policy_gradient():
    # At ratio 1 the clipped objective's gradient is -A/N per token: not zero.
    logp = mx.log(mx.array([[0.4, 0.6]]))
    g = mx.grad(lambda x: grpo_loss(x, logp, mx.ones((1, 2)), mx.array([2.0])))(logp)
    np.testing.assert_allclose(np.array(g), [[-1.0, -1.0]], rtol=1e-6)


def test_grpo_kl_term():
    logp = mx.log(mx.array([[0.4, 0.6]]))
    base = mx.log(mx.array([[0.5, 0.3]]))
    mask = mx.ones((1, 2))
    plain = grpo_loss(logp, logp, mask, mx.array([0.0]))
    with_kl = grpo_loss(logp, logp, mask, mx.array([0.0]), base_log_probs=base, kl_coef=0.1)
    d = np.log([0.5, 0.3]) - np.log([0.4, 0.6])
    assert plain.item() == 0
    assert with_kl.item() == pytest.approx(0.1 * (np.exp(d) - d - 1).mean(), rel=1e-5)


def test_rectified_fraction_and_aggregate_errors():
    frac = rectified_fraction(lp(), mx.array(MASK), TAU).item()
    assert frac == pytest.approx(((P <= TAU) * MASK).sum() / MASK.sum())
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(lp(), mx.array(MASK), "mean")


def test_seq_mean_token_sum_norm_divides_by_a_constant():
    """The loss's scale must not depend on how wide this batch happened to be padded,
    nor on the other answers' lengths: the divisor is max_completion_length."""
    narrow = gft_loss(lp(), mx.array(MASK), mx.array(ADV), TAU, "seq-mean-token-sum-norm", 16)
    wide_lp = mx.concatenate([lp(), mx.zeros((2, 4))], axis=1)
    wide_mask = mx.concatenate([mx.array(MASK), mx.zeros((2, 4))], axis=1)
    wide = gft_loss(wide_lp, wide_mask, mx.array(ADV), TAU, "seq-mean-token-sum-norm", 16)
    assert wide.item() == pytest.approx(narrow.item(), rel=1e-6)
    c = np.where(P <= TAU, P, 1.0)
    terms = -ADV[:, None] * c * np.log(P) * MASK
    assert narrow.item() == pytest.approx(terms.sum(-1).mean() / 16, rel=1e-5)
    unnormed = gft_loss(wide_lp, wide_mask, mx.array(ADV), TAU, "seq-mean-token-sum-norm")
    assert unnormed.item() != pytest.approx(narrow.item(), rel=1e-3)  # width 8 stood in


def test_kl_estimates_are_bounded_for_extreme_tokens():
    """One token whose log-ratio is +-100 must not dominate: verl's clamps."""
    lp_theta = mx.array([[0.0, -100.0, -1.0]])
    lp_base = mx.array([[-100.0, 0.0, -1.0]])
    kl = np.array(kl_to_base(lp_theta, lp_base))
    assert np.isfinite(kl).all()
    assert kl[0, 0] == pytest.approx(10.0)  # e^-20 + 20 - 1 = 19, capped at 10
    assert kl[0, 1] == pytest.approx(10.0)  # e^20 would be 4.9e8
    assert kl[0, 2] == 0.0
    # Away from the bounds it is the plain k3 estimate exp(x) - x - 1.
    x = 0.3
    small = kl_to_base(mx.array([[0.0]]), mx.array([[x]])).item()
    assert small == pytest.approx(np.exp(x) - x - 1, rel=1e-6)
