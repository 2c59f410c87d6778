"""Token-level policy losses: GFT (spec section 4) and the baselines it is compared with.

Every loss takes `log_probs` (B, T), the log-probabilities of the tokens that were
actually generated or given, and `mask` (B, T) in {0, 1} that keeps response tokens
only. Probabilities for DCR and DFT are `exp(log_probs)` under stop-gradient: they come
from the same log-softmax as log p, never from a second full-vocabulary softmax.
"""

import mlx.core as mx

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(values: mx.array, mask: mx.array, agg: str = "token-mean") -> mx.array:
    """Reduce per-token values (B, T) to a scalar with verl's aggregation modes.

    token-mean: sum over all unmasked tokens / their count (the GFT reference).
    seq-mean-token-mean: each sequence's token mean, averaged over sequences.
    seq-mean-token-sum-norm: sum over all tokens / T (Dr. GRPO as verl writes it: a
    constant divisor, so long answers are not down-weighted).
    """
    mask = mask.astype(values.dtype)
    total = values * mask
    if agg == "token-mean":
        return total.sum() / mx.maximum(mask.sum(), 1)
    if agg == "seq-mean-token-mean":
        per_seq = total.sum(axis=-1) / mx.maximum(mask.sum(axis=-1), 1)
        return per_seq.mean()
    if agg == "seq-mean-token-sum-norm":
        return total.sum() / values.shape[-1]
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
) -> mx.array:
    """L = -agg(A_i * c_it * log p_it): the GFT objective, advantages (B,) broadcast per token.

    tau = 1 gives advantage-weighted DFT, tau = 0 advantage-weighted SFT (REINFORCE).
    """
    dtype = log_probs.dtype
    terms = _gft_terms(log_probs, advantages.astype(dtype), mx.array(tau, dtype))
    return aggregate(terms, mask, agg)


def sft_loss(log_probs: mx.array, mask: mx.array, agg: str = "token-mean") -> mx.array:
    """Cross-entropy on the given tokens: -agg(log p)."""
    return aggregate(-log_probs, mask, agg)


def dft_loss(log_probs: mx.array, mask: mx.array, agg: str = "token-mean") -> mx.array:
    """Dynamic Fine-Tuning (arXiv 2508.05629): -agg(sg(p) * log p)."""
    return aggregate(-mx.exp(mx.stop_gradient(log_probs)) * log_probs, mask, agg)


def kl_to_base(log_probs: mx.array, base_log_probs: mx.array) -> mx.array:
    """Per-token k3 estimate of KL(pi_base || pi_theta) on tokens sampled from pi_theta.

    exp(b - l) - (b - l) - 1 >= 0, unbiased, the estimator GRPO implementations use.
    """
    diff = base_log_probs - log_probs
    return mx.exp(diff) - diff - 1


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
    return aggregate(terms, mask, agg)


def rectified_fraction(log_probs: mx.array, mask: mx.array, tau: float) -> mx.array:
    """Share of response tokens with p <= tau (the ones DCR weights like DFT)."""
    p = mx.exp(mx.stop_gradient(log_probs))
    return aggregate((p <= tau).astype(mx.float32), mask)
