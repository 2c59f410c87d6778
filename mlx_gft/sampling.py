"""Group sampling: K completions per prompt from the current policy, decoded in one batch.

GFT and GRPO need K samples of every prompt at every step; on a Mac this is where the
time goes. `sample_groups` does it the cheap way:

1. the B distinct prompts are left-padded and prefilled once, as a batch of B rows, in
   mlx-lm's `BatchKVCache` (the prompt is never re-run K times);
2. the prefilled cache (and the first next-token logits) is repeated K times along the
   batch axis, giving B*K rows that share the prompt's keys/values;
3. all rows decode together; each step's sampling (temperature, top-k, top-p, min-p,
   the draw and both log-probabilities) is one `mx.compile`d function;
4. rows stop independently (EOS, stop strings, length) and finished rows are dropped
   from the batch (and their cache) so late steps only pay for live rows; with
   `max_concurrency`, waiting samples join the running batch as rows free up.

Why not mlx-lm's `BatchGenerator`: it gives only the untempered log-probabilities,
splits the full log-softmax into one array per row every step, and draws from the
global random state, so the samples depend on how the rows happen to be batched.
Here every sample owns a random stream keyed by (seed, sample index, step): the output
does not depend on batching, `max_concurrency`, on which rows finished first, or on
whether the prompt prefill was shared.

Log-probabilities returned per sampled token:
- `logprobs`: under the distribution the token was actually drawn from: logits / T,
  then top-k, then top-p, then min-p, renormalised (the behaviour policy of GRPO);
- `logprobs_t1`: the plain temperature-1, full-vocabulary log-softmax (what training
  recomputes with `token_logprobs`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

FinishReason = Literal["stop", "length"]


@dataclass
class Sample:
    """One sampled completion.

    `tokens` are the exact ids fed back to the model (including the EOS token when the
    sample stopped on EOS). `text` is their decoding without that EOS and, when a stop
    string matched, cut just before it (the ids still hold the whole final token).
    """

    prompt_index: int
    tokens: list[int]
    text: str
    logprobs: list[float]
    logprobs_t1: list[float]
    finish_reason: FinishReason
    stop_string: str | None = field(default=None, repr=False)
    # The T=1 policy's entropy at each step (the training metric), from the same exp
    # pass the draw uses: training need not take a second softmax for it.
    entropy: list[float] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def validate(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 or >= vocab = off), got {self.top_k}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")


# ---------------------------------------------------------------------------------------
# The per-step sampling function
# ---------------------------------------------------------------------------------------


def truncated_logits(logits: mx.array, params: SamplingParams) -> mx.array:
    """Tempered logits with the tokens outside top-k / top-p / min-p set to -inf.

    Order (as in Hugging Face and vLLM): temperature, top-k, top-p on what top-k kept,
    min-p relative to the most likely token. The most likely token always survives.
    """
    x = logits.astype(mx.float32) / params.temperature
    neg_inf = mx.array(-mx.inf, mx.float32)
    vocab = x.shape[-1]
    if 0 < params.top_k < vocab:
        # The k-th largest value, found by a partition (cheaper than a full sort).
        pos = vocab - params.top_k
        kth = mx.partition(x, kth=pos, axis=-1)[..., pos : pos + 1]
        x = mx.where(x < kth, neg_inf, x)
    if params.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p: a token
        # is kept when the mass strictly above it is still below top_p.
        sorted_x = mx.sort(x, axis=-1)[..., ::-1]
        sorted_p = mx.softmax(sorted_x, axis=-1)
        mass_above = mx.cumsum(sorted_p, axis=-1) - sorted_p
        n_keep = mx.maximum((mass_above < params.top_p).sum(axis=-1, keepdims=True), 1)
        threshold = mx.take_along_axis(sorted_x, n_keep - 1, axis=-1)
        x = mx.where(x < threshold, neg_inf, x)
    if params.min_p > 0.0:
        # p_i >= min_p * p_max  <=>  x_i >= x_max + log(min_p)
        floor = x.max(axis=-1, keepdims=True) + math.log(params.min_p)
        x = mx.where(x < floor, neg_inf, x)
    return x


def _step_keys(row_keys: mx.array, steps: mx.array) -> mx.array:
    """A distinct threefry key per (sample, step): the sample's key with its step mixed in."""
    return row_keys ^ mx.stack([mx.zeros_like(steps), steps], axis=-1)


_BLOCK = 256  # vocabulary block size of the two-level inverse-CDF draw


def _last_positive(x: mx.array) -> mx.array:
    """Index of the last entry > 0 along the last axis (rows have at least one)."""
    n = x.shape[-1]
    return n - 1 - mx.argmax((x > 0)[..., ::-1], axis=-1)


def draw(probs: mx.array, u: mx.array) -> mx.array:
    """One token per row from probs (N, V) with two uniforms per row u (N, 2).

    Inverse CDF in two levels: u[:, 0] picks a block of 256 tokens by block mass, u[:, 1]
    a token inside it. Each level's cumsum is short and starts near 0, so float32 loses
    almost nothing of the tail (a flat cumsum over 50k tokens would drop tokens below
    its rounding step near 1), and it costs a fraction of Gumbel-max: no per-token
    random numbers or logarithms. Zero-probability (truncated) tokens are never drawn.
    """
    n, vocab = probs.shape
    n_blocks = -(-vocab // _BLOCK)
    pad = n_blocks * _BLOCK - vocab
    if pad:
        probs = mx.pad(probs, [(0, 0), (0, pad)])
    blocks = probs.reshape(n, n_blocks, _BLOCK)
    mass = blocks.sum(axis=-1)
    cum = mx.cumsum(mass, axis=-1)
    # First block whose cumulative mass exceeds the target (rounding can overshoot the
    # end: fall back to the last block that has mass).
    b = (cum <= (u[:, 0] * cum[:, -1])[:, None]).sum(axis=-1)
    b = mx.minimum(b, _last_positive(mass))
    inner = mx.take_along_axis(blocks, b[:, None, None], axis=1)[:, 0]
    icum = mx.cumsum(inner, axis=-1)
    j = (icum <= (u[:, 1] * icum[:, -1])[:, None]).sum(axis=-1)
    j = mx.minimum(j, _last_positive(inner))
    return b * _BLOCK + j


def _is_plain(params: SamplingParams) -> bool:
    """Temperature 1 and no truncation: the sampling distribution is the T=1 softmax."""
    return params == SamplingParams(temperature=1.0)


@lru_cache(maxsize=32)
def _compiled_sampler(params: SamplingParams):
    """(logits (N, V), row_keys (N, 2), steps (N,)) -> (token, log q, log p_T=1, T=1
    entropy) per row.

    Compiled once per sampling setting (the settings are constants of the graph).
    """

    def sample(logits: mx.array, row_keys: mx.array, steps: mx.array):
        logits = logits.astype(mx.float32)
        # One exp pass serves both the T=1 log-softmax and, for plain sampling, the probs.
        top = logits.max(axis=-1, keepdims=True)
        e = mx.exp(logits - top)
        total = e.sum(axis=-1, keepdims=True)
        log_z = top + mx.log(total)
        logp_t1 = logits - log_z
        entropy = log_z[:, 0] - (e * logits).sum(axis=-1) / total[:, 0]
        if params.temperature == 0:
            token = mx.argmax(logits, axis=-1)
            logq = mx.zeros(token.shape, mx.float32)  # greedy: a point mass
        else:
            if _is_plain(params):
                logq_all, probs = logp_t1, e / total
            else:
                x = truncated_logits(logits, params)
                logq_all = x - mx.logsumexp(x, axis=-1, keepdims=True)
                probs = mx.exp(logq_all)
            # One key per row and step: row i's draw does not depend on the rows around
            # it, so batching never changes a sample.
            keys = _step_keys(row_keys, steps)
            u = mx.vmap(lambda k: mx.random.uniform(shape=(2,), key=k))(keys)
            token = draw(probs, u)
            logq = mx.take_along_axis(logq_all, token[:, None], axis=-1)[:, 0]
        chosen_t1 = mx.take_along_axis(logp_t1, token[:, None], axis=-1)[:, 0]
        return token.astype(mx.uint32), logq, chosen_t1, entropy

    return mx.compile(sample)


# ---------------------------------------------------------------------------------------
# Prefill and cache handling
# ---------------------------------------------------------------------------------------


def _context_length(model: nn.Module) -> int | None:
    args = getattr(model, "args", None)
    return getattr(args, "max_position_embeddings", None)


def _vocab_size(model: nn.Module) -> int | None:
    args = getattr(model, "args", None)
    return getattr(args, "vocab_size", None)


def _batch_cache(model: nn.Module, rows: int) -> list[Any]:
    """An empty batch cache of `rows` rows, one per layer, of the model's own cache kinds.

    The per-sequence caches are made the model's way (`make_prompt_cache` honours a
    model's `make_cache`) and batched through each class's public `merge`, which maps it
    to its batch class (KVCache -> BatchKVCache, RotatingKVCache ->
    BatchRotatingKVCache, ...): the same calls mlx-lm's private `_merge_caches` makes,
    without depending on that helper.
    """
    per_row = [make_prompt_cache(model) for _ in range(rows)]
    cache = []
    for layers in zip(*per_row, strict=True):
        if not hasattr(layers[0], "merge"):
            raise ValueError(
                f"this model's {type(layers[0]).__name__} has no batched version in mlx-lm "
                "(no `merge`), so its samples cannot be decoded in a batch"
            )
        cache.append(layers[0].merge(list(layers)))
    return cache


def _prefill(
    model: nn.Module, prompts: list[list[int]], prefill_step_size: int
) -> tuple[list[Any], mx.array]:
    """Run the left-padded prompts once; returns (batch cache, last-position logits (B, V)).

    Everything but the last token goes through in chunks while only the cache is
    evaluated, so the LM head is never computed on prompt positions.
    """
    max_len = max(len(p) for p in prompts)
    padding = [max_len - len(p) for p in prompts]
    tokens = mx.array([[0] * (max_len - len(p)) + p for p in prompts], dtype=mx.uint32)
    cache = _batch_cache(model, len(prompts))
    for c in cache:
        c.prepare(left_padding=padding)
    body = tokens[:, :-1]
    while body.shape[1] > 0:
        model(body[:, :prefill_step_size], cache=cache)
        mx.eval([c.state for c in cache])
        body = body[:, prefill_step_size:]
    logits = model(tokens[:, -1:], cache=cache)[:, -1, :]
    return cache, logits


def _select_rows(cache: list[Any], rows: list[int]) -> None:
    """Keep (or repeat) the given batch rows of every layer cache, in place.

    `filter` gathers rows, so a repeated index duplicates a prompt's prefilled cache;
    it also trims left padding no remaining row needs.
    """
    index = mx.array(rows, dtype=mx.int32)
    for c in cache:
        c.filter(index)


# ---------------------------------------------------------------------------------------
# Host-side bookkeeping of one row
# ---------------------------------------------------------------------------------------


class _Row:
    """A sample being decoded: its ids, log-probs and stop detection."""

    def __init__(self, sample_index: int, prompt_index: int, limit: int):
        self.sample_index = sample_index
        self.prompt_index = prompt_index
        self.limit = limit
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.logprobs_t1: list[float] = []
        self.entropy: list[float] = []
        self.finish_reason: FinishReason | None = None
        self.stop_string: str | None = None

    def add(
        self, token: int, logq: float, logp: float, ent: float, eos: set[int], stops: _StopStrings
    ) -> bool:
        """Record one sampled token; True when the row is finished."""
        self.tokens.append(token)
        self.logprobs.append(logq)
        self.logprobs_t1.append(logp)
        self.entropy.append(ent)
        if token in eos:
            self.finish_reason = "stop"
        elif stops and (hit := stops.match(self.tokens)) is not None:
            self.finish_reason, self.stop_string = "stop", hit
        elif len(self.tokens) >= self.limit:
            self.finish_reason = "length"
        return self.finish_reason is not None


class _StopStrings:
    """Detects user stop strings in the decoded text of a growing token list.

    Only the tail is decoded each step: a string first appears because of the newest
    token, so it lies within the last few tokens (a character can take up to four
    byte-fallback tokens, hence the margin).
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.window = 4 * max((len(s) for s in self.stop), default=0) + 2

    def __bool__(self) -> bool:
        return bool(self.stop)

    def match(self, tokens: list[int]) -> str | None:
        tail = self.tokenizer.decode(tokens[-self.window :])
        for s in self.stop:
            if s in tail:
                return s
        return None


def _finish_text(tokenizer: Any, row: _Row, eos: set[int]) -> str:
    ids = row.tokens[:-1] if row.tokens and row.tokens[-1] in eos else row.tokens
    text = tokenizer.decode(ids)
    if row.stop_string is not None:
        text = text[: text.find(row.stop_string)]
    return text


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------


class _LiveBatch:
    """Rows decoding together: their cache, random keys, per-row step and next draw.

    `out` = (token, log q, log p) drawn for every row but not yet fed to the model; the
    cache holds everything before it.
    """

    def __init__(
        self, rows: list[_Row], cache: list[Any], out: tuple, keys: mx.array, steps: mx.array
    ):
        self.rows, self.cache, self.out, self.keys, self.steps = rows, cache, out, keys, steps

    def filter(self, keep: list[int]) -> None:
        index = mx.array(keep, dtype=mx.int32)
        self.rows = [self.rows[i] for i in keep]
        self.out = tuple(a[index] for a in self.out)
        self.keys, self.steps = self.keys[index], self.steps[index]
        _select_rows(self.cache, keep)

    def extend(self, other: _LiveBatch) -> None:
        for mine, theirs in zip(self.cache, other.cache, strict=True):
            mine.extend(theirs)  # right-aligns both, padding on the left
        self.rows += other.rows
        self.out = tuple(mx.concatenate([a, b]) for a, b in zip(self.out, other.out, strict=True))
        self.keys = mx.concatenate([self.keys, other.keys])
        self.steps = mx.concatenate([self.steps, other.steps])


def _start(
    model: nn.Module,
    prompts: list[list[int]],
    rows: list[_Row],
    row_keys: mx.array,
    sampler: Any,
    prefill_step_size: int,
) -> _LiveBatch:
    """Prefill each distinct prompt of `rows` once, copy its cache to its rows, draw once."""
    distinct = sorted({r.prompt_index for r in rows})
    slot = {p: i for i, p in enumerate(distinct)}
    cache, logits = _prefill(model, [prompts[p] for p in distinct], prefill_step_size)
    gather = [slot[r.prompt_index] for r in rows]
    _select_rows(cache, gather)
    logits = logits[mx.array(gather, dtype=mx.int32)]
    keys = row_keys[mx.array([r.sample_index for r in rows], dtype=mx.int32)]
    steps = mx.zeros((len(rows),), dtype=mx.uint32)
    return _LiveBatch(rows, cache, sampler(logits, keys, steps), keys, steps)


def _decode(
    model: nn.Module,
    prompts: list[list[int]],
    pending: deque[_Row],
    max_rows: int,
    admit_chunk: int,
    row_keys: mx.array,
    sampler: Any,
    eos: set[int],
    stops: _StopStrings,
    prefill_step_size: int,
) -> None:
    """Decode every pending row to completion, at most `max_rows` at a time.

    When enough rows have finished (`admit_chunk`, normally a whole group, so its
    prompt is prefilled once), waiting rows join the running batch instead of waiting
    for the slowest row of the batch.
    """
    batch: _LiveBatch | None = None
    while pending or batch is not None:
        free = max_rows - (len(batch.rows) if batch else 0)
        if pending and free >= min(admit_chunk, len(pending)):
            new = [pending.popleft() for _ in range(min(free, len(pending)))]
            fresh = _start(model, prompts, new, row_keys, sampler, prefill_step_size)
            if batch is None:
                batch = fresh
            else:
                batch.extend(fresh)
            mx.async_eval(batch.out)
        assert batch is not None
        # Queue the next step before reading this one, so the host work below overlaps
        # with the model. Rows that turn out finished are dropped from it afterwards.
        last = max(r.limit - len(r.tokens) for r in batch.rows) <= 1
        if not last:
            logits = model(batch.out[0][:, None], cache=batch.cache)[:, -1, :]
            steps = batch.steps + 1
            nxt = sampler(logits, batch.keys, steps)
            mx.async_eval(nxt)
        tokens, logq, logp, ent = (a.tolist() for a in batch.out)
        keep = [
            i
            for i, r in enumerate(batch.rows)
            if not r.add(tokens[i], logq[i], logp[i], ent[i], eos, stops)
        ]
        if last or not keep:
            batch = None
            continue
        batch.out, batch.steps = nxt, steps
        if len(keep) < len(batch.rows):
            batch.filter(keep)


def _row_limit(max_tokens: int, context: int | None, prompt_len: int) -> int:
    """New tokens a row may generate: max_tokens, but never past the model's context."""
    return max_tokens if context is None else min(max_tokens, context - prompt_len)


def _admit_chunk(group_size: int, max_rows: int) -> int:
    """Free rows needed before waiting rows join: a whole group (one shared prefill),
    but no more than half the cap, so a small cap does not idle until its batch drains."""
    return min(group_size, max(1, max_rows // 2))


def _queue(
    prompts: list[list[int]],
    group_size: int,
    max_tokens: int,
    context: int | None,
    by_length: bool,
) -> deque[_Row]:
    """One row per sample, group after group; by prompt length when batches are capped
    (so rows decoded together pad their prompts to similar lengths)."""
    order = range(len(prompts))
    if by_length:
        order = sorted(order, key=lambda p: len(prompts[p]))
    limit = [_row_limit(max_tokens, context, len(p)) for p in prompts]
    return deque(_Row(p * group_size + k, p, limit[p]) for p in order for k in range(group_size))


def _validate(
    model: nn.Module,
    prompts: list[list[int]],
    group_size: int,
    max_tokens: int,
    max_concurrency: int | None,
    params: SamplingParams,
) -> None:
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_concurrency is not None and max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    vocab, context = _vocab_size(model), _context_length(model)
    params.validate()
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: it needs at least one token")
        if context is not None and len(p) >= context:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens but the model's context is {context}: "
                "no room to generate"
            )
        if vocab is not None and (min(p) < 0 or max(p) >= vocab):
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab})")


def sample_groups(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    group_size: int,
    *,
    max_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    stop: Iterable[str] = (),
    eos_token_ids: Iterable[int] | None = None,
    seed: int | None = None,
    max_concurrency: int | None = None,
    prefill_step_size: int = 512,
) -> list[Sample]:
    """Sample `group_size` completions of every prompt; returns B * group_size Samples.

    Order: prompt 0's samples, then prompt 1's, ... Sample i of prompt p is the same
    whatever `max_concurrency` or batching is used (it has its own random stream).

    prompts: token ids (already chat-templated). temperature 0 is greedy (logprobs 0).
    stop: strings that end a sample (matched on decoded text). eos_token_ids: ids that
    end a sample (default: the tokenizer's EOS ids; pass () to ignore EOS). A sample
    never runs past the model's context (finish_reason "length").
    seed: None draws one from MLX's global generator (so `mx.random.seed` fixes it).
    max_concurrency: cap on rows decoded at once (memory); None decodes all together.

    The model is used as is (LoRA/DoRA, quantized; wrap the call in
    `mlx_gft.models.adapters_disabled(model)` to sample the base policy). It runs in
    eval mode (no adapter dropout) and its previous mode is restored.
    """
    prompts = [list(map(int, p)) for p in prompts]
    params = SamplingParams(float(temperature), float(top_p), int(top_k), float(min_p))
    _validate(model, prompts, group_size, max_tokens, max_concurrency, params)

    eos = set(tokenizer.eos_token_ids if eos_token_ids is None else eos_token_ids)
    stops = _StopStrings(tokenizer, list(stop))
    if seed is None:
        seed = int(mx.random.randint(0, 2**31 - 1, ()).item())
    n_samples = len(prompts) * group_size
    row_keys = mx.random.split(mx.random.key(seed), n_samples)
    sampler = _compiled_sampler(params)
    context = _context_length(model)

    queue = _queue(prompts, group_size, max_tokens, context, max_concurrency is not None)
    rows = sorted(queue, key=lambda r: r.sample_index)
    max_rows = min(max_concurrency or n_samples, n_samples)
    was_training = model.training
    model.eval()
    try:
        _decode(
            model,
            prompts,
            queue,
            max_rows,
            _admit_chunk(group_size, max_rows),
            row_keys,
            sampler,
            eos,
            stops,
            prefill_step_size,
        )
    finally:
        model.train(was_training)

    return [
        Sample(
            prompt_index=r.prompt_index,
            tokens=r.tokens,
            text=_finish_text(tokenizer, r, eos),
            logprobs=r.logprobs,
            logprobs_t1=r.logprobs_t1,
            finish_reason=r.finish_reason or "length",
            stop_string=r.stop_string,
            entropy=r.entropy,
        )
        for r in rows
    ]
