"""Per-token log-probabilities of a padded batch: the one forward pass everything uses.

Sampling checks, training, evaluation and KL-to-base all call `token_logprobs`, so
log p, p (for DCR) and the entropy always come from the same log-softmax.

Memory: a (rows x positions x vocabulary) float32 logits tensor is the largest array of
a training step (175 MB per 300-token row at Qwen2.5's 152k vocabulary, and its backward
needs about three more). Where the architecture lets the LM head run on its own, the
head and the log-softmax run over `chunk` positions at a time with a custom gradient,
so only one chunk's logits exist at once, forward or backward (the backward recomputes
them: Cut Cross-Entropy's and TRL's chunked-NLL idea). The values are the same.
"""

import mlx.core as mx
import mlx.nn as nn

# Logits elements per chunk (float32: 4 bytes each). A batch with fewer logits runs the
# head in one piece: the backward's recomputation costs one more head matmul, worth it
# only once the logits are large (2**27 floats: 0.5 GB, with its backward about 2 GB).
CHUNK_ELEMENTS = 2**27


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
# head can run on the response positions alone, and in chunks.
_SPLIT_HEAD = ("llama", "mistral", "qwen2", "qwen3", "phi3")


def lm_head(model: nn.Module) -> nn.Module | None:
    """The module mapping the last hidden state to logits, or None where the architecture
    does more than `model.model(x)` then the head (softcapping, scaled logits, ...)."""
    if getattr(model, "model_type", None) not in _SPLIT_HEAD:
        return None
    if model.args.tie_word_embeddings:
        return model.model.embed_tokens.as_linear
    return model.lm_head


def default_chunk(vocab_size: int) -> int:
    """Positions per LM-head chunk: CHUNK_ELEMENTS logits, at least 32 positions."""
    return max(32, CHUNK_ELEMENTS // max(vocab_size, 1))


def chunked_logprobs(
    hidden: mx.array,
    head,
    targets: mx.array,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int = 256,
) -> tuple[mx.array, mx.array | None]:
    """`gather_logprobs(head(hidden) / temperature, targets)` over `chunk` positions at a
    time: hidden (B, T, D), targets (B, T) -> (B, T); the gradient reaches `hidden` only
    (the head is frozen under LoRA and full fine-tuning of the layers).

    A custom VJP recomputes each chunk's logits from the saved log-sum-exp, and every
    chunk waits for the one before it (`mx.depends`): without that, MLX's scheduler runs
    all the chunks' head matmuls first and the whole logits tensor exists anyway."""
    B, T, D = hidden.shape
    spans = [(i, min(i + chunk, B * T)) for i in range(0, B * T, chunk)]

    def logits_of(h):
        z = head(h).astype(mx.float32)
        return z / temperature if temperature != 1.0 else z

    @mx.custom_function
    def logprobs(h, t):
        lps, lses, ents, before = [], [], [], None
        for a, b in spans:
            hc = h[a:b] if before is None else mx.depends(h[a:b], before)
            z = logits_of(hc)
            lse = mx.logsumexp(z, axis=-1)
            lp = mx.take_along_axis(z, t[a:b, None], axis=-1).squeeze(-1) - lse
            lps.append(lp)
            lses.append(lse)
            before = [lp]
            if with_entropy:
                ents.append(lse - (mx.exp(z - lse[:, None]) * z).sum(axis=-1))
                before.append(ents[-1])
        out = [mx.concatenate(lps), mx.concatenate(lses)]
        return out + ([mx.concatenate(ents)] if with_entropy else [])

    @logprobs.vjp
    def logprobs_vjp(primals, cotangents, outputs):
        h, t = primals
        g, lse = cotangents[0], outputs[1]  # the entropy and lse are never trained on
        grads, before = [], None
        for a, b in spans:
            hc = h[a:b] if before is None else mx.depends(h[a:b], before)
            z = logits_of(hc)
            # d log p_t / dz = onehot(t) - softmax(z): scale the softmax, then add g at
            # the targets (a scatter, not a second pass over the vocabulary).
            gc, tc = g[a:b, None], t[a:b, None]
            dz = mx.exp(z - lse[a:b, None]) * -gc
            dz = mx.put_along_axis(dz, tc, mx.take_along_axis(dz, tc, axis=-1) + gc, axis=-1)
            dh = mx.vjp(logits_of, [hc], [dz])[1][0]
            grads.append(dh)
            before = dh
        return mx.concatenate(grads), mx.zeros_like(t)

    out = logprobs(hidden.reshape(B * T, D), targets.reshape(B * T))
    logp = out[0].reshape(B, T)
    entropy = mx.stop_gradient(out[2]).reshape(B, T) if with_entropy else None
    return logp, entropy


def token_logprobs(
    model: nn.Module,
    tokens: mx.array,
    temperature: float = 1.0,
    with_entropy: bool = False,
    start: int = 0,
    chunk: int | None = None,
) -> tuple[mx.array, mx.array | None]:
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for a (B, L) batch -> (B, L-1-start).

    `start` skips the first target positions (shared prompt tokens nobody scores): the
    LM head, most of a small model's cost, never runs on them. `chunk` positions of
    logits exist at a time (default from the vocabulary; 0 = the whole batch at once).
    Padding positions get values too; callers mask them.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1 + start :]
    head = lm_head(model)
    if head is None:
        logits = model(inputs)[:, start:]
    else:
        hidden = model.model(inputs)[:, start:]
        if chunk is None:
            chunk = default_chunk(model.args.vocab_size)
        if 0 < chunk < hidden.shape[0] * hidden.shape[1]:
            return chunked_logprobs(hidden, head, targets, temperature, with_entropy, chunk)
        logits = head(hidden)
    if temperature != 1.0:
        logits = logits / temperature
    return gather_logprobs(logits, targets, with_entropy)
