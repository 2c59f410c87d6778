"""Where one decode step of a group goes: the model, its LM head, our sampling step.

Explains the ceiling in benchmarks/README.md: every batched sampler runs the same model
forward per step, so only the sampling step and the host work are ours to make faster.
Also times what we tried and did not keep: the whole decode step under `mx.compile`
with a fixed-size KV cache (so shapes never change between steps), and an `exp` made
of elementwise ops that `mx.compile` fuses (MLX's own is slow on its Linux CPU build).

Run:  python benchmarks/decode_step.py [--real] [--rows 8] [--context 100]
"""

from __future__ import annotations

import time

# isort: off
import mlx_gft  # noqa: F401  (preloads OpenBLAS: must come before mlx.core)

# isort: on
import mlx.core as mx
import mlx_lm
import numpy as np
from sampling import model_parser, resolve_model  # benchmarks/sampling.py

from mlx_gft.sampling import SamplingParams, _compiled_sampler, _prefill, _select_rows


def ms(fn, n: int = 20) -> float:
    """Median milliseconds of fn() evaluated, after warm-up."""
    for _ in range(3):
        mx.eval(fn())
    times = []
    for _ in range(n):
        tic = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - tic)
    return 1000 * float(np.median(times))


class FixedCache:
    """Keys/values of a fixed length; step t writes position `index` (an array)."""

    def __init__(self, keys, values, index, offset, mask):
        self.keys, self.values, self.index = keys, values, index
        self.offset, self.mask = offset, mask

    def update_and_fetch(self, k, v):
        self.keys = mx.slice_update(self.keys, k, self.index, axes=(2,))
        self.values = mx.slice_update(self.values, v, self.index, axes=(2,))
        return self.keys, self.values

    def make_mask(self, *args, **kwargs):
        return self.mask


def fixed_cache_step_ms(model, cache, rows: int, steps: int = 20) -> float:
    """The whole decode step compiled, on a cache padded to a fixed length."""
    length = cache[0]._idx + steps + 8
    kv = []
    for c in cache:
        pad = [(0, 0), (0, 0), (0, length - c._idx), (0, 0)]
        kv += [mx.pad(c.keys[..., : c._idx, :], pad), mx.pad(c.values[..., : c._idx, :], pad)]
    mx.eval(kv)

    def step(tokens, index, *kv):
        positions = mx.arange(length)
        mask = mx.broadcast_to(positions <= index, (rows, 1, 1, length))
        caches = [FixedCache(kv[i], kv[i + 1], index, index, mask) for i in range(0, len(kv), 2)]
        logits = model(tokens[:, None], cache=caches)[:, -1, :]
        return (logits, *[a for c in caches for a in (c.keys, c.values)])

    compiled = mx.compile(step)
    tokens = mx.zeros((rows,), mx.uint32)
    index = cache[0]._idx
    times = []
    for i in range(steps):
        tic = time.perf_counter()
        out = compiled(tokens, mx.array(index + i), *kv)
        kv = None  # let the new cache take the old buffers' place
        mx.eval(out)
        times.append(time.perf_counter() - tic)
        kv = list(out[1:])
    return 1000 * float(np.median(times[3:]))


def polynomial_exp(x: mx.array) -> mx.array:
    """exp(x) from elementwise ops only (so `mx.compile` fuses it into one kernel): x =
    n ln2 + r, a degree-7 polynomial for e^r, and 2^n written into the float's exponent."""
    x = mx.maximum(x, -87.0)
    n = mx.floor(x * 1.4426950408889634 + 0.5)
    r = x - n * 0.693145751953125 - n * 1.428606765330187e-06  # ln 2 in two parts
    p = mx.array(1 / 5040, mx.float32)
    for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0):
        p = p * r + c
    return p * ((n.astype(mx.int32) + 127) << 23).view(mx.float32)


def main() -> None:
    ap = model_parser(__doc__)
    ap.add_argument("--rows", type=int, default=8, help="rows decoded together (B*K)")
    ap.add_argument("--context", type=int, default=100, help="tokens already in the cache")
    args = ap.parse_args()
    path, label = resolve_model(args)
    model, _ = mlx_lm.load(str(path))
    n = args.rows
    print(f"model: {label}; {n} rows, {args.context} tokens in the cache")

    def decode_ms(rows: int) -> tuple[float, list]:
        cache, _ = _prefill(model, [[1] * args.context], 512)
        _select_rows(cache, [0] * rows)
        token = mx.zeros((rows, 1), mx.uint32)
        return ms(lambda: model(token, cache=cache)), cache

    one, _ = decode_ms(1)
    many, cache = decode_ms(n)
    print(f"model decode step, 1 row:        {one:7.2f} ms")
    print(f"model decode step, {n} rows:       {many:7.2f} ms")
    inner = model.model if hasattr(model, "model") else model
    hidden = mx.random.normal((n, 1, model.args.hidden_size))
    if getattr(model.args, "tie_word_embeddings", False):
        head = ms(lambda: inner.embed_tokens.as_linear(hidden))
    else:
        head = ms(lambda: model.lm_head(hidden))
    print(f"  of which the LM head:          {head:7.2f} ms")
    print(f"compiled step, fixed-size cache: {fixed_cache_step_ms(model, cache, n):7.2f} ms")

    vocab = model.args.vocab_size
    logits = mx.random.normal((n, vocab))
    keys = mx.random.split(mx.random.key(0), n)
    steps = mx.zeros((n,), mx.uint32)
    sampler = _compiled_sampler(SamplingParams())
    print(f"our sampling step (T=1):         {ms(lambda: sampler(logits, keys, steps)):7.2f} ms")
    print(f"argmax (the floor's 'sampler'):  {ms(lambda: mx.argmax(logits, axis=-1)):7.2f} ms")
    print(f"mx.exp of {n} x {vocab} values:    {ms(lambda: mx.exp(logits)):7.2f} ms")
    fast = mx.compile(polynomial_exp)
    error = np.max(np.abs(np.array(fast(logits)) / np.exp(np.array(logits, np.float64)) - 1))
    print(
        f"compiled polynomial exp:         {ms(lambda: fast(logits)):7.2f} ms "
        f"(max relative error {error:.1e}; tried, not kept)"
    )
    host = np.array(logits)
    tic = time.perf_counter()
    for _ in range(20):
        np.exp(host)
    print(f"numpy exp of the same values:    {1000 * (time.perf_counter() - tic) / 20:7.2f} ms")


if __name__ == "__main__":
    main()
