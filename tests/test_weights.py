"""What each token contributed to an update (`weights`): against the losses' own
aggregation and against numbers worked by hand."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_gft.advantages import group_advantages
from mlx_gft.losses import AGGREGATIONS, aggregate, gft_loss
from mlx_gft.weights import (
    aggregation_weights,
    coefficients,
    contributing_rows,
    mechanism_metrics,
    token_weights,
)

RNG = np.random.default_rng(0)
LOGP = np.log(RNG.uniform(0.02, 0.98, size=(5, 7)))
MASK = (RNG.uniform(size=(5, 7)) > 0.3).astype(np.float32)
MASK[3] = 0  # a row with nothing scored (a masked cut-off sample)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_aggregation_weights_reproduce_aggregate(agg):
    values = RNG.normal(size=MASK.shape)
    expected = aggregate(mx.array(values, dtype=mx.float32), mx.array(MASK), agg, norm=12).item()
    got = (aggregation_weights(MASK, agg, norm=12) * values).sum()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_the_loss_is_minus_the_weighted_sum_of_log_probs(agg):
    """-sum(w * log p) is gft_loss: the group log's weights are the numbers the loss used."""
    adv = np.array([1.5, -0.5, 0.0, 2.0, -1.0])
    tau = 0.4
    loss = gft_loss(mx.array(LOGP, dtype=mx.float32), mx.array(MASK), mx.array(adv), tau, agg, 12)
    w = token_weights(coefficients(LOGP, "gft", tau), MASK, adv, agg, norm=12)
    assert -(w * LOGP).sum() == pytest.approx(loss.item(), rel=1e-5)


def test_coefficients_per_method():
    p = np.array([0.05, 0.5, 0.51, 0.9])
    logp = np.log(p)
    np.testing.assert_allclose(coefficients(logp, "gft", 0.5), [0.05, 0.5, 1.0, 1.0])  # p <= tau
    np.testing.assert_allclose(coefficients(logp, "dft", 0.5), p)
    np.testing.assert_allclose(coefficients(logp, "sft", 0.5), 1.0)
    np.testing.assert_allclose(coefficients(logp, "grpo", 0.5), 1.0)
    np.testing.assert_allclose(coefficients(logp, "gft", 0.0), 1.0)  # tau 0: REINFORCE


def test_a_lone_right_expert_among_failed_samples_pulls_harder_than_sft():
    """The off-policy runs' case: the expert right, 8 samples wrong. Group std scaling
    gives the expert A = 8/3 (Bessel std of one 1 among nine; eps 1e-6 aside), so with every expert
    token likely (c = 1) the pull is A times the expert's share of the scored tokens;
    DCR cuts it where the expert's tokens are unlikely."""
    rewards = [1.0] + [0.0] * 8
    adv = np.array(group_advantages(rewards, 9))
    assert adv[0] == pytest.approx(8 / 3, rel=1e-5) and adv[1] == pytest.approx(-1 / 3, rel=1e-5)
    kinds = ["expert"] + ["sampled"] * 8
    mask = np.zeros((9, 10))
    mask[0, :10] = 1  # the expert: 10 tokens
    mask[1:, :5] = 1  # each sample: 5 tokens
    likely = np.zeros((9, 10))  # log p = 0: p = 1 > tau, c = 1
    w = token_weights(coefficients(likely, "gft", 0.5), mask, adv, "token-mean")
    m = mechanism_metrics(kinds, adv, mask, w, np.zeros((9, 10)), "token-mean")
    # 50 scored tokens, 10 of them the expert's: pull = (8/3) * 10 / 50.
    assert m["expert_pull"] == pytest.approx(8 / 3 * 10 / 50, rel=1e-5)
    assert m["adv_expert"] == pytest.approx(8 / 3, rel=1e-5)
    assert m["adv_sampled"] == pytest.approx(-1 / 3, rel=1e-5)
    assert m["rectified_expert"] == 0.0
    # Mask the samples (cut off under mask_truncated): the denominator shrinks to the
    # expert's 10 tokens, and the pull rises to A itself.
    cut = mask.copy()
    cut[1:] = 0
    w = token_weights(coefficients(likely, "gft", 0.5), cut, adv, "token-mean")
    m = mechanism_metrics(kinds, adv, cut, w, np.zeros((9, 10)), "token-mean")
    assert m["expert_pull"] == pytest.approx(8 / 3, rel=1e-5)
    # Half the expert's tokens unlikely (p = 0.1 <= tau): those weigh p, not 1.
    logp = np.zeros((9, 10))
    logp[0, :5] = np.log(0.1)
    rect = (np.exp(logp) <= 0.5).astype(float)
    w = token_weights(coefficients(logp, "gft", 0.5), cut, adv, "token-mean")
    m = mechanism_metrics(kinds, adv, cut, w, rect, "token-mean")
    assert m["expert_pull"] == pytest.approx(8 / 3 * (5 * 0.1 + 5) / 10, rel=1e-5)
    assert m["rectified_expert"] == pytest.approx(0.5)


def test_quiet_groups_count_in_the_means_but_not_in_the_shares():
    """A quiet group's members (A = 0) add nothing to the weights or the rectified
    shares (the update may not even run them) but count in the mean advantage."""
    kinds = ["expert", "sampled", "expert", "sampled"]
    adv = np.array([1.0, -1.0, 0.0, 0.0])  # group 2 is quiet
    mask = np.ones((4, 3))
    rect = np.array([[1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=float)
    w = token_weights(np.ones((4, 3)), mask, adv, "token-mean")
    m = mechanism_metrics(kinds, adv, mask, w, rect, "token-mean")
    assert m["rectified_expert"] == pytest.approx(1 / 3)  # the quiet expert's tokens: not counted
    assert m["rectified_sampled"] == 1.0
    assert m["adv_expert"] == pytest.approx(0.5) and m["adv_sampled"] == pytest.approx(-0.5)
    # SFT on the two experts alone: weight 1/6 per token, 1 in all; GFT: 3 tokens x 1/12.
    assert m["expert_pull"] == pytest.approx(3 / 12)
    assert contributing_rows(mask, adv).tolist() == [True, True, False, False]
    # A loss with a term at A = 0 (GRPO's KL): every scored row contributes.
    assert contributing_rows(mask, adv, advantage_weighted=False).tolist() == [True] * 4
