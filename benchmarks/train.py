"""Cost of the GFT update against mlx_lm.lora's SFT step, side by side in one process.

Same model, same LoRA layers, same padded sequences, same optimizer (AdamW):
- mlx-lm: its `default_loss` (cross-entropy over the completion) in a step compiled the
  way `mlx_lm.tuner.trainer.train` compiles it;
- mlx_gft: `step.Stepper.update` with the GFT loss (DCR coefficient, advantages, entropy and
  rectified-token statistics), i.e. exactly what `python -m mlx_gft.lora` runs.
Prints trained tokens/second and peak memory for both and their ratios.

    python benchmarks/train.py                 # the 2-layer cut of SmolLM2-135M
    python benchmarks/train.py --layers 0      # the full 30-layer model
"""

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import mlx_gft  # noqa: F401  (OpenBLAS before MLX)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx_lm import load
from mlx_lm.tuner.trainer import default_loss

from mlx_gft.config import build_config
from mlx_gft.groups import pad_batch, response_start
from mlx_gft.models import setup_trainable
from mlx_gft.step import Stepper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def sequences(n: int, prompt_len: int, answer_len: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        (list(rng.integers(3, vocab, prompt_len)), list(rng.integers(3, vocab, answer_len)))
        for _ in range(n)
    ]


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # compile / warm up
    mx.reset_peak_memory()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return float(np.median(times)), mx.get_peak_memory() / 1e9


def mlx_lm_step(model, pairs, repeats):
    return timed(mlx_lm_sft_step(model, pairs), repeats)


def mlx_lm_sft_step(model, pairs):
    """A function that runs one mlx_lm.lora SFT step on `pairs` (compiled as mlx_lm's
    trainer compiles it, mlx_lm's default_loss over the completion tokens)."""
    tokens, _ = pad_batch(pairs)
    lengths = mx.array([[len(p), len(p) + len(r) - 1] for p, r in pairs])
    opt = optim.AdamW(learning_rate=1e-5)
    loss_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, opt.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, lens):
        (loss, ntoks), grad = loss_and_grad(model, batch, lens)
        opt.update(model, grad)
        return loss, ntoks

    def run():
        loss, _ = step(tokens, lengths)
        mx.eval(state, loss)

    return run


def gft_step(model, pairs, repeats, config):
    tokens, mask = pad_batch(pairs)
    start = response_start(mask)
    n = len(pairs)
    adv = mx.array(np.random.default_rng(1).standard_normal(n), dtype=mx.float32)
    zeros = mx.zeros(mask[:, start:].shape)
    batch = (tokens, mask[:, start:], adv, zeros, zeros)
    stepper = Stepper(model, optim.AdamW(learning_rate=1e-5), config)
    return timed(lambda: stepper.update([batch], start), repeats)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="mlx-lm folder (default: SmolLM2-135M cut to --layers)")
    ap.add_argument("--layers", type=int, default=2, help="layers of SmolLM2 to keep, 0 = all")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--answer-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.model:
        path = args.model
    else:
        from real_model import smollm_path

        path = str(smollm_path(args.layers or None))
    config = build_config(num_layers=-1)
    results = {}
    for name in ("mlx_lm.lora SFT step", "mlx_gft GFT update"):
        model, _ = load(path)  # a fresh model each, so neither inherits the other's state
        setup_trainable(model, config)
        vocab = model.model.embed_tokens.weight.shape[0]
        pairs = sequences(args.batch, args.prompt_len, args.answer_len, vocab)
        tokens = args.batch * args.answer_len
        if name.startswith("mlx_lm"):
            sec, mem = mlx_lm_step(model, pairs, args.repeats)
        else:
            sec, mem = gft_step(model, pairs, args.repeats, config)
        results[name] = (tokens / sec, mem)
        print(f"{name:22s} {tokens / sec:9.1f} trained tok/s  {sec:6.3f} s/step  peak {mem:.3f} GB")
    (base_tps, base_mem), (tps, mem) = results.values()
    print(
        f"GFT / mlx-lm: speed {tps / base_tps:.2f}x, peak memory {mem / base_mem:.2f}x "
        f"({args.batch} x ({args.prompt_len} prompt + {args.answer_len} answer) tokens, "
        f"{len(model.layers)} layers, LoRA on all)"
    )


if __name__ == "__main__":
    main()
