"""Per-token log-probabilities of a padded batch: the one forward pass everything uses.

Sampling checks, training, evaluation and KL-to-base all call `token_logprobs`, so
log p, p (for DCR) and the entropy always come from the same log-softmax.
"""

import mlx.core as mx
import mlx.nn as nn


def gather_logprobs(
    logits: mx.array, targets: mx.array, with_entropy: bool = False
) -> tuple[mx.array, mx.array | None]:
    """log-softmax(logits)[targets] and, optionally, the entropy of each row.

    logits (..., V) and targets (...) -> (...,). The normaliser is computed once; the
    entropy reuses it under stop-gradient (it is a metric, never trained on).
    """
    logits = logits.astype(mx.float32)
    lse = mx.logsumexp(logits, axis=-1)
    chosen = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    logp = chosen - lse
    entropy = None
    if with_entropy:
        sg_logits, sg_lse = mx.stop_gradient(logits), mx.stop_gradient(lse)
        probs = mx.exp(sg_logits - sg_lse[..., None])
        entropy = sg_lse - (probs * sg_logits).sum(axis=-1)
    return logp, entropy


# Architectures whose Model.__call__ is `model.model(x)` then the (tied) LM head, so the
# head can run on the response positions alone.
_SPLIT_HEAD = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def _logits_from(model: nn.Module, inputs: mx.array, start: int) -> mx.array:
    """Logits at positions start.. of `inputs`. Where the architecture allows it the LM
    head runs on those positions only: with a 49k vocabulary it is most of a small model's
    cost, and prompt positions are never scored."""
    if start and getattr(model, "model_type", None) in _SPLIT_HEAD:
        hidden = model.model(inputs)[:, start:]
        if model.args.tie_word_embeddings:
            return model.model.embed_tokens.as_linear(hidden)
        return model.lm_head(hidden)
    return model(inputs)[:, start:]


def token_logprobs(
    model: nn.Module,
    tokens: mx.array,
    temperature: float = 1.0,
    with_entropy: bool = False,
    start: int = 0,
) -> tuple[mx.array, mx.array | None]:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for a (B, L) batch -> (B, L-1-start).

    `start` skips the first target positions (shared prompt tokens nobody scores).
    Padding positions get values too; callers mask them.
    """
    logits = _logits_from(model, tokens[:, :-1], start)
    if temperature != 1.0:
        logits = logits / temperature
    return gather_logprobs(logits, tokens[:, 1 + start :], with_entropy)
