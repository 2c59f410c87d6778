"""Token-level policy losses: GFT (spec section 4) and the baselines it is compared with.

Every loss takes `log_probs` (B, T), the log-probabilities of the tokens that were
actually generated or given, and `mask` (B, T) in {0, 1} that keeps response tokens
only. Probabilities for DCR and DFT are `exp(log_probs)` under stop-gradient: they come
from the same log-softmax as log p, never from a second full-vocabulary softmax.
"""

import mlx.core as mx

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(
    values: mx.array, mask: mx.array, agg: str = "token-mean", norm: int | None = None
) -> mx.array:
    """Reduce per-token values (B, T) to a scalar with verl's aggregation modes.

    token-mean: sum over all unmasked tokens / their count (the GFT reference).
    seq-mean-token-mean: each sequence's token mean, averaged over sequences.
    seq-mean-token-sum-norm: each sequence's token sum / `norm`, averaged over
    sequences (Dr. GRPO): `norm` is a constant, the longest answer the run allows
    (max_completion_length), so neither long answers nor a batch of short ones change
    the loss's scale. Without `norm`, T (this batch's padded width) stands in.
    """
    mask = mask.astype(values.dtype)
    total = values * mask
    if agg == "token-mean":
        return total.sum() / mx.maximum(mask.sum(), 1)
    if agg == "seq-mean-token-mean":
        per_seq = total.sum(axis=-1) / mx.maximum(mask.sum(axis=-1), 1)
        return per_seq.mean()
    if agg == "seq-mean-token-sum-norm":
        return total.sum(axis=-1).mean() / (norm or values.shape[-1])
    raise ValueError(f"unknown loss aggregation {agg!r}; choose one of {', '.join(AGGREGATIONS)}")


def dcr_coefficient(log_probs: mx.array, tau: float) -> mx.array:
    """Dynamic Coefficient Rectification: sg(p if p <= tau else 1), p = exp(log_probs).

    Times grad log p this gives the weight c/p on grad p: 1 for unlikely tokens (DFT-like),
    1/p <= 1/tau for likely ones (SFT-like). A step at p = tau, not min(1/p, 1/tau).
    """
    p = mx.exp(mx.stop_gradient(log_probs))
    return mx.where(p <= tau, p, mx.ones_like(p))


@mx.compile
def _gft_terms(log_probs: mx.array, advantages: mx.array, tau: mx.array) -> mx.array:
    return -advantages[:, None] * dcr_coefficient(log_probs, tau) * log_probs


def gft_loss(
    log_probs: mx.array,
    mask: mx.array,
    advantages: mx.array,
    tau: float,
    agg: str = "token-mean",
    norm: int | None = None,
) -> mx.array:
    """L = -agg(A_i * c_it * log p_it): the GFT objective, advantages (B,) broadcast per token.

    tau = 1 gives advantage-weighted DFT, tau = 0 advantage-weighted SFT (REINFORCE).
    """
    dtype = log_probs.dtype
    terms = _gft_terms(log_probs, advantages.astype(dtype), mx.array(tau, dtype))
    return aggregate(terms, mask, agg, norm)


def sft_loss(
    log_probs: mx.array, mask: mx.array, agg: str = "token-mean", norm: int | None = None
) -> mx.array:
    """Cross-entropy on the given tokens: -agg(log p)."""
    return aggregate(-log_probs, mask, agg, norm)


def dft_loss(
    log_probs: mx.array, mask: mx.array, agg: str = "token-mean", norm: int | None = None
) -> mx.array:
    """Dynamic Fine-Tuning (arXiv 2508.05629): -agg(sg(p) * log p)."""
    return aggregate(-mx.exp(mx.stop_gradient(log_probs)) * log_probs, mask, agg, norm)


# verl's bounds for its low-variance KL (kl_penalty "low_var_kl"): one token whose
# probability moved by e^20 or more must not dominate the metric or the penalty.
LOG_RATIO_BOUND = 20.0
KL_TOKEN_BOUND = 10.0


def k3(log_ratio: mx.array) -> mx.array:
    """exp(x) - x - 1 >= 0 per token for x = log(q / p) on tokens drawn from p: an
    unbiased, never-negative estimate of KL(p || q) (Schulman's k3), with x clamped to
    +-20 and the result to at most 10, as verl does."""
    x = mx.clip(log_ratio, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return mx.minimum(mx.exp(x) - x - 1, KL_TOKEN_BOUND)


def kl_to_base(log_probs: mx.array, base_log_probs: mx.array) -> mx.array:
    """Per-token k3 estimate of KL(pi_theta || pi_base) on tokens sampled from pi_theta
    (the policy being trained): the GRPO penalty. Bounded per token (see `k3`)."""
    return k3(base_log_probs - log_probs)


def grpo_loss(
    log_probs: mx.array,
    old_log_probs: mx.array,
    mask: mx.array,
    advantages: mx.array,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    base_log_probs: mx.array | None = None,
    kl_coef: float = 0.0,
    agg: str = "token-mean",
    norm: int | None = None,
) -> mx.array:
    """PPO-clipped policy gradient with group advantages, plus an optional KL to the base.

    The ratio is taken against `old_log_probs`, the log-probs of the policy that sampled
    the tokens (not a stop-gradient copy of the current ones, which makes it always 1).
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    adv = advantages.astype(log_probs.dtype)[:, None]
    ratio = mx.exp(log_probs - mx.stop_gradient(old_log_probs))
    clipped = mx.clip(ratio, 1.0 - clip_eps, 1.0 + high)
    terms = -mx.minimum(ratio * adv, clipped * adv)
    if kl_coef and base_log_probs is not None:
        terms = terms + kl_coef * kl_to_base(log_probs, mx.stop_gradient(base_log_probs))
    return aggregate(terms, mask, agg, norm)


def rectified_fraction(log_probs: mx.array, mask: mx.array, tau: float) -> mx.array:
    """Share of response tokens with p <= tau (the ones DCR weights like DFT)."""
    p = mx.exp(mx.stop_gradient(log_probs))
    return aggregate((p <= tau).astype(mx.float32), mask)
