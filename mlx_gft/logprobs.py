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
import numpy as np
from mlx_lm.models.cache import KVCache, create_attention_mask, make_prompt_cache

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
        if temperature != 1.0:
            logits = logits / temperature
        return gather_logprobs(logits, targets, with_entropy)
    hidden = model.model(inputs)[:, start:]
    return head_logprobs(model, head, hidden, targets, temperature, with_entropy, chunk)


def head_logprobs(model, head, hidden, targets, temperature, with_entropy, chunk):
    """The LM head and log-softmax on the hidden states of the scored positions."""
    if chunk is None:
        chunk = default_chunk(model.args.vocab_size)
    if 0 < chunk < hidden.shape[0] * hidden.shape[1]:
        return chunked_logprobs(hidden, head, targets, temperature, with_entropy, chunk)
    logits = head(hidden)
    if temperature != 1.0:
        logits = logits / temperature
    return gather_logprobs(logits, targets, with_entropy)


# --------------------------------------------------------------------------------------
# Shared prompts: a group's members all continue the same prompt.


class _SharedPromptKV:
    """One layer's keys/values of a prompt continued by `rows` completions: the prompt
    pass (one row) keeps them, the completion pass sees them broadcast to every row.
    Plain array ops (no in-place buffer as in mlx-lm's caches), so the gradient flows
    back through the prompt: broadcasting's gradient sums the rows' contributions."""

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0
        self.rows = 1

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        if self.keys is None:
            self.keys, self.values = keys, values
            self.offset = keys.shape[2]
            return keys, values
        k = mx.broadcast_to(self.keys, (self.rows, *self.keys.shape[1:]))
        v = mx.broadcast_to(self.values, (self.rows, *self.values.shape[1:]))
        return mx.concatenate([k, keys], axis=2), mx.concatenate([v, values], axis=2)

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None):
        # The completion pass starts after the prompt: causal with an offset, as KVCache.
        return create_attention_mask(N, self.offset, return_array, window_size)


def why_prompts_cannot_be_shared(model: nn.Module) -> str | None:
    """None when `shared_prompt_logprobs` applies to `model`, else the reason."""
    if lm_head(model) is None:
        return "its LM head does not run apart from the layers"
    if not all(type(c) is KVCache for c in make_prompt_cache(model)):
        return "it has sliding-window, quantized or state-space caches"
    # mlx_lm's grad_checkpoint patches the layer class: recomputing a layer in the
    # backward would replay its cache update.
    if getattr(type(model.layers[0]).__call__, "__name__", "") == "checkpointed_fn":
        return "--grad-checkpoint recomputes the layers"
    return None


def shares_prompts(model: nn.Module) -> bool:
    """Whether `shared_prompt_logprobs` applies: a split LM head, plain KV caches, and
    layers that run once per forward."""
    return why_prompts_cannot_be_shared(model) is None


def prompt_spans(tokens, mask, start: int) -> list[tuple[int, int, int]]:
    """(first row, end row, prompt length) for each run of consecutive rows continuing
    the same prompt. A row's prompt ends where its scored tokens begin (`start` plus its
    first unmasked column); rows with nothing scored get no span (nothing to compute)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    spans: list[tuple[int, int, int]] = []
    for r in range(tokens.shape[0]):
        cols = np.flatnonzero(mask[r])
        if not cols.size:
            continue
        p = start + int(cols[0]) + 1
        last = spans[-1] if spans else None
        if (
            last
            and last[1] == r
            and last[2] == p
            and np.array_equal(tokens[last[0], :p], tokens[r, :p])
        ):
            spans[-1] = (last[0], r + 1, p)
        else:
            spans.append((r, r + 1, p))
    return spans


def shared_prompt_logprobs(
    model: nn.Module,
    tokens: mx.array,
    spans: list[tuple[int, int, int]],
    temperature: float = 1.0,
    with_entropy: bool = False,
    start: int = 0,
    chunk: int | None = None,
) -> tuple[mx.array, mx.array | None]:
    """`token_logprobs` at the response positions, running each span's prompt once
    (Prefix Grouper's idea): its keys/values serve every row of the span, and the
    gradient reaches the prompt's activations through them. Positions outside the
    spans' responses (prompts, rows without a span) are 0: callers mask them."""
    B, L = tokens.shape
    width = L - 1 - start
    head = lm_head(model)
    lps, ents, row = [], [], 0
    zeros = mx.zeros((1, width))

    def gap(rows: int, cols: int):
        return [mx.broadcast_to(zeros[:, :cols], (rows, cols))] if rows and cols else []

    for a, b, p in spans:
        if a > row:  # rows without a span: nothing scored
            lps += gap(a - row, width)
            ents += gap(a - row, width) if with_entropy else []
        cache = [_SharedPromptKV() for _ in model.layers]
        if p > 1:
            model.model(tokens[a : a + 1, : p - 1], cache=cache)
        for c in cache:
            c.rows = b - a
        # The last prompt token predicts the first response token: it runs with the rows.
        hidden = model.model(tokens[a:b, p - 1 : L - 1], cache=cache if p > 1 else None)
        lp, ent = head_logprobs(
            model, head, hidden, tokens[a:b, p:], temperature, with_entropy, chunk
        )
        pad = p - 1 - start
        lps.append(mx.concatenate(gap(b - a, pad) + [lp], axis=1) if pad else lp)
        if with_entropy:
            ents.append(mx.concatenate(gap(b - a, pad) + [ent], axis=1) if pad else ent)
        row = b
    if row < B:
        lps += gap(B - row, width)
        ents += gap(B - row, width) if with_entropy else []
    logp = mx.concatenate(lps, axis=0)
    return logp, mx.concatenate(ents, axis=0) if with_entropy else None
