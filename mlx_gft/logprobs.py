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

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.cache import KVCache, create_attention_mask, make_prompt_cache

from .models import recomputed_in_backward

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


def _plain(model: nn.Module, logits: mx.array) -> mx.array:
    return logits


def _softcapped(model: nn.Module, logits: mx.array) -> mx.array:  # Gemma 2
    cap = model.final_logit_softcapping
    return mx.tanh(logits / cap) * cap


def _scaled_down(model: nn.Module, logits: mx.array) -> mx.array:  # Granite
    return logits / model.logits_scaling


def _scaled_up(model: nn.Module, logits: mx.array) -> mx.array:  # Cohere
    return logits * model.model.args.logit_scale


# Architectures whose Model.__call__ is `model.model(x)` (embeddings, layers, final norm),
# then the LM head (`lm_head`, or the tied input embedding when there is none), then
# what this table names: the head can run on the scored positions alone, and in chunks.
# tests/test_heads.py checks every entry against the model's own forward.
AFTER_HEAD = {
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma3_text", "gemma3",
         "smollm3", "olmo2"),
        _plain,
    ),
    "gemma2": _softcapped,
    "granite": _scaled_down,
    "cohere": _scaled_up,
}  # fmt: skip


@dataclass(frozen=True)
class Head:
    """A model cut at its last hidden state, so the LM head runs on chosen positions only."""

    body: nn.Module  # tokens (and a cache) -> last hidden states, final norm included
    weights: nn.Module  # the module holding the head's weights: lm_head or the tied embedding
    project: Callable[[mx.array], mx.array]  # hidden states -> logits, as the model's forward
    vocab_size: int


def split_head(model: nn.Module) -> Head | None:
    """The model's body and head, or None where the architecture is not in AFTER_HEAD
    (its logits then come from the whole forward, at every position)."""
    after = AFTER_HEAD.get(getattr(model, "model_type", None))
    if after is None:
        return None
    text = model.language_model if "language_model" in model else model  # Gemma 3's wrapper
    body = text.model
    weights = text.lm_head if "lm_head" in text else body.embed_tokens
    linear = weights if "lm_head" in text else weights.as_linear
    return Head(body, weights, lambda h: after(text, linear(h)), _vocab_size(model, text))


def _vocab_size(model: nn.Module, text: nn.Module) -> int:
    args = getattr(text, "args", None) or model.args
    return int(args.vocab_size)


def default_chunk(vocab_size: int) -> int:
    """Positions per LM-head chunk: CHUNK_ELEMENTS logits, at least 32 positions."""
    return max(32, CHUNK_ELEMENTS // max(vocab_size, 1))


def chunked_logprobs(
    hidden: mx.array,
    project: Callable[[mx.array], mx.array],
    targets: mx.array,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int = 256,
    weights: nn.Module | None = None,
) -> tuple[mx.array, mx.array | None]:
    """`gather_logprobs(project(hidden) / temperature, targets)` over `chunk` positions
    at a time: hidden (B, T, D), targets (B, T) -> (B, T).

    The gradient reaches `hidden` and the trainable parameters of `weights`, the module
    `project` reads its weights from (a LoRA/DoRA adapter on the LM head, a trained tied
    embedding): the same gradients as one pass over the whole logits tensor.

    A custom VJP recomputes each chunk's logits from the saved log-sum-exp, and every
    chunk waits for the one before it (`mx.depends`): without that, MLX's scheduler runs
    all the chunks' head matmuls first and the whole logits tensor exists anyway."""
    B, T, D = hidden.shape
    spans = [(i, min(i + chunk, B * T)) for i in range(0, B * T, chunk)]
    trained = tree_flatten(weights.trainable_parameters()) if weights is not None else []
    names = [name for name, _ in trained]

    def logits_of(h, *params):
        if params:  # the head as a function of its trainable weights, for their gradient
            weights.update(tree_unflatten(list(zip(names, params, strict=True))))
        z = project(h).astype(mx.float32)
        return z / temperature if temperature != 1.0 else z

    @mx.custom_function
    def logprobs(h, t, params):  # params: the head's trainable weights, for the VJP
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
        h, t, params = primals
        g, lse = cotangents[0], outputs[1]  # the entropy and lse are never trained on
        dhs, dparams, before = [], [mx.zeros_like(p) for p in params], None
        for a, b in spans:
            hc = h[a:b] if before is None else mx.depends(h[a:b], before)
            z = logits_of(hc, *params)
            # d log p_t / dz = onehot(t) - softmax(z): scale the softmax, then add g at
            # the targets (a scatter, not a second pass over the vocabulary).
            gc, tc = g[a:b, None], t[a:b, None]
            dz = mx.exp(z - lse[a:b, None]) * -gc
            dz = mx.put_along_axis(dz, tc, mx.take_along_axis(dz, tc, axis=-1) + gc, axis=-1)
            dh, *dps = mx.vjp(logits_of, [hc, *params], [dz])[1]
            dhs.append(dh)
            dparams = [acc + d for acc, d in zip(dparams, dps, strict=True)]
            before = [dh, *dparams]
        if params:  # vjp left its own tracers in the module: give it its weights back
            weights.update(tree_unflatten(list(zip(names, params, strict=True))))
        return mx.concatenate(dhs), mx.zeros_like(t), dparams

    params = [value for _, value in trained]
    out = logprobs(hidden.reshape(B * T, D), targets.reshape(B * T), params)
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
    Padding positions get values too; callers mask them. Architectures outside
    AFTER_HEAD run the whole forward: logits at every position, in one piece.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1 + start :]
    head = split_head(model)
    if head is None:
        logits = model(inputs)[:, start:]
        if temperature != 1.0:
            logits = logits / temperature
        return gather_logprobs(logits, targets, with_entropy)
    hidden = head.body(inputs)[:, start:]
    return head_logprobs(head, hidden, targets, temperature, with_entropy, chunk)


def head_logprobs(
    head: Head,
    hidden: mx.array,
    targets: mx.array,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk: int | None = None,
) -> tuple[mx.array, mx.array | None]:
    """The LM head and log-softmax on the hidden states of the scored positions, in
    chunks once their logits pass CHUNK_ELEMENTS."""
    if chunk is None:
        chunk = default_chunk(head.vocab_size)
    if 0 < chunk < hidden.shape[0] * hidden.shape[1]:
        return chunked_logprobs(
            hidden, head.project, targets, temperature, with_entropy, chunk, head.weights
        )
    logits = head.project(hidden)
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
    if split_head(model) is None:
        return "its LM head does not run apart from the layers"
    if not all(type(c) is KVCache for c in make_prompt_cache(model)):
        return "it has sliding-window, quantized or state-space caches"
    # A layer recomputed in the backward would replay its cache update.
    if any(recomputed_in_backward(layer) for layer in model.layers):
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
    spans' responses (prompts, rows without a span) are 0: callers mask them.

    In training mode LoRA dropout draws one mask for the span's prompt, where the plain
    pass draws one per row: an estimate of the same expected gradient, with the rows'
    noise correlated on the prompt (tests/test_shared_prompt.py)."""
    B, L = tokens.shape
    width = L - 1 - start
    head = split_head(model)
    lps, ents, row = [], [], 0
    zeros = mx.zeros((1, width))

    def gap(rows: int, cols: int):
        return [mx.broadcast_to(zeros[:, :cols], (rows, cols))] if rows and cols else []

    for a, b, p in spans:
        if a > row:  # rows without a span: nothing scored
            lps += gap(a - row, width)
            ents += gap(a - row, width) if with_entropy else []
        cache = [_SharedPromptKV() for _ in head.body.layers]
        if p > 1:
            head.body(tokens[a : a + 1, : p - 1], cache=cache)
        for c in cache:
            c.rows = b - a
        # The last prompt token predicts the first response token: it runs with the rows.
        hidden = head.body(tokens[a:b, p - 1 : L - 1], cache=cache if p > 1 else None)
        lp, ent = head_logprobs(head, hidden, tokens[a:b, p:], temperature, with_entropy, chunk)
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
