"""What each token contributed to an update, in numbers a reader can check: the method's
per-token coefficient (DCR's for GFT), the token's weight in the loss, and the summaries
the reports carry (rectified shares, mean advantages, the pull toward the expert).

A token's weight is w_t = A_i * c_t * g_t, where g_t is what the loss's aggregation
gives the token over the whole update (1 / the update's scored tokens under
token-mean): the update's loss is then exactly -sum_t w_t * log p_t, and its gradient
-sum_t w_t * grad log p_t. SFT's weight on grad log p is g_t; on grad p it is g_t / p,
the unbounded 1/p that DCR caps. Plain numpy: these numbers are metrics and a log,
never trained on, so they are computed after the update from the log-probs it used.
"""

from collections.abc import Sequence

import numpy as np

KIND_NAMES = {"expert": "expert", "teacher": "teacher", "sampled": "sample"}


def coefficients(logp: np.ndarray, loss: str, tau: float) -> np.ndarray:
    """The per-token coefficient c_t the method multiplies log p_t by: GFT's DCR
    (p if p <= tau else 1), DFT's p, and 1 for SFT and GRPO (GRPO's PPO ratio is 1 at
    the sampling policy, the first update of a batch)."""
    p = np.exp(np.asarray(logp, dtype=np.float64))
    if loss == "gft":
        return np.where(p <= tau, p, 1.0)
    if loss == "dft":
        return p
    return np.ones_like(p)


def aggregation_weights(mask: np.ndarray, agg: str, norm: int | None = None) -> np.ndarray:
    """g (rows, T): the weight `losses.aggregate` gives each token of these rows (the
    whole update's, every row counted as the step's normaliser counts it), so that
    aggregate(v, mask) == (g * v).sum()."""
    mask = np.asarray(mask, dtype=np.float64)
    rows = max(mask.shape[0], 1)
    if agg == "token-mean":
        return mask / max(mask.sum(), 1.0)
    if agg == "seq-mean-token-mean":
        return mask / np.maximum(mask.sum(axis=1, keepdims=True), 1.0) / rows
    if agg == "seq-mean-token-sum-norm":
        return mask / (norm or mask.shape[1]) / rows
    raise ValueError(f"unknown loss aggregation {agg!r}")


def token_weights(
    coef: np.ndarray, mask: np.ndarray, advantages: np.ndarray, agg: str, norm: int | None = None
) -> np.ndarray:
    """w = A * c * g per token (rows, T): what each token contributed to the update."""
    adv = np.asarray(advantages, dtype=np.float64)[:, None]
    return adv * np.asarray(coef, dtype=np.float64) * aggregation_weights(mask, agg, norm)


def contributing_rows(
    mask: np.ndarray, advantages: np.ndarray, advantage_weighted: bool = True
) -> np.ndarray:
    """The rows that contribute to an update: a scored token and, where every term of
    the loss is a multiple of the row's advantage (`methods.skips_zero_advantage`), a
    non-zero advantage. The update may leave the others out (`step.rows_to_run`); the
    reports count on these, so leaving them out changes nothing reported."""
    scored = np.asarray(mask).sum(axis=1) > 0
    return scored & (np.asarray(advantages) != 0) if advantage_weighted else scored


def mechanism_metrics(
    kinds: Sequence[str],
    advantages: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray,
    rectified: np.ndarray,
    agg: str,
    norm: int | None = None,
) -> dict:
    """One update's view of what GFT does differently, from its rows (all of them, the
    quiet ones too, in order), each token's weight (`token_weights`) and whether its
    p <= tau (read only where the row contributes, `contributing_rows`):

    rectified_<kind>: the share of the contributing tokens of that kind with p <= tau
    (weighted like DFT: an unlikely expert token gets weight p, not SFT's 1/p);
    adv_<kind>: the mean advantage of that kind's members (quiet groups' 0 included);
    expert_pull: the total weight on the expert answers' tokens over what SFT's loss,
    with the same aggregation, would give the same answers alone: how hard the update
    pulls toward the expert, in SFT units (1: as SFT; the group's std scaling raises
    it when the samples fail, as does a token-mean denominator that shrinks when
    cut-off samples are masked; DCR lowers it where the expert's tokens are unlikely).
    """
    kinds = np.asarray(kinds)
    adv = np.asarray(advantages, dtype=np.float64)
    mask = np.asarray(mask, dtype=np.float64)
    used = contributing_rows(mask, adv)[:, None] * mask
    out = {}
    for kind in ("expert", "teacher", "sampled"):
        rows = kinds == kind
        if not rows.any():
            continue
        out[f"adv_{kind}"] = float(adv[rows].mean())
        tokens = used[rows].sum()
        if tokens:
            out[f"rectified_{kind}"] = float((rectified[rows] * used[rows]).sum() / tokens)
    expert = kinds == "expert"
    if expert.any() and mask[expert].sum():
        sft = aggregation_weights(mask[expert], agg, norm).sum()
        out["expert_pull"] = float(np.asarray(weights)[expert].sum() / sft)
    return out
