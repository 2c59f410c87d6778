"""Peak memory and speed of the GFT update at real model shapes, against mlx_lm.lora's
SFT step on the same prompts and expert answers, side by side in one run.

Random-weight models in the exact shape of Hub models (memory and speed depend on the
shape, not the weights), float32, LoRA (rank 8) on every layer. Each variant runs in its
own process, so one's cached buffers do not count against the next:

- mlx_lm-sft-step: `mlx_lm.tuner.trainer.default_loss`, compiled as mlx_lm.lora
  compiles it, on batch_size rows (prompt + expert answer);
- gft-one-pass: ONE prompt's K+1 rows in one forward/backward with the full logits
  tensor (what the update did before micro-batches and the chunked head; the whole
  batch's batch_size x (K+1) rows that way would not fit this 23 GB machine);
- gft-default: the batch's batch_size x (K+1) rows through `Stepper.update` at its
  defaults (micro-batches of batch_size rows, one after another; LM head in chunks;
  each group's prompt run once per micro-batch for all its rows there);
- gft-unshared: the same with --no-shared-prompt (every row runs its own prompt).
- grpo-kl: GRPO with --kl-coef 0.05 and --updates-per-batch 2 on the same rows: the
  old-policy and base log-probs (`rollout.reference_logprobs`, micro-batched as the
  update is), then the two updates;
- grpo-kl-one-pass: the same, with each reference forward over the whole batch in one
  call (what the reference forwards did before they were micro-batched);
- gft-quiet-half: gft-default with every other group's advantages 0 (all its rewards
  equal), left out of the update as by default; gft-quiet-half-all-rows runs them too
  (--no-skip-zero-advantage): the same update.

    python benchmarks/memory.py                          # Qwen2.5-0.5B shape, 2 layers
    python benchmarks/memory.py --layers 24 --repeats 1  # the whole model
    python benchmarks/memory.py --shape llama-3.2-1b --layers 2
    python benchmarks/memory.py --variants loglik-bare,loglik-ours,loglik-unchunked
    python benchmarks/memory.py --prompt-len 356 --variants gft-unshared,gft-default
    python benchmarks/memory.py --variants gft-default,grpo-kl,grpo-kl-one-pass
    python benchmarks/memory.py --variants gft-quiet-half-all-rows,gft-quiet-half
    python benchmarks/memory.py --bits 4 --variants mlx_lm-sft-step,gft-default   # QLoRA
"""

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {
    # config.json of Qwen/Qwen2.5-0.5B-Instruct and meta-llama/Llama-3.2-1B-Instruct.
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
        num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6,
        vocab_size=151936, rope_theta=1000000.0, tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, num_hidden_layers=16, intermediate_size=8192,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
        vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={
            "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3",
        },
    ),
    # A toy of the same family with the embedded tokenizer's vocabulary (smoke tests).
    "tiny": dict(
        model_type="qwen2", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        vocab_size=49152, rope_theta=10000.0, tie_word_embeddings=True,
    ),
}  # fmt: skip
VARIANTS = ("mlx_lm-sft-step", "gft-one-pass", "gft-default", "gft-unshared")
GRPO = ("grpo-kl", "grpo-kl-one-pass")
# Half of the batch's groups quiet (A = 0): left out of the update (the default) or run.
QUIET = ("gft-quiet-half", "gft-quiet-half-all-rows")
# The log-prob path alone (no loss, no optimizer), on batch_size rows: value_and_grad of
# the answers' summed log-likelihood from the model's full logits, against the same sum
# from `token_logprobs` (LM head from the first answer position, chunked past 2**27).
LOGLIK = ("loglik-bare", "loglik-ours", "loglik-unchunked")  # the last: ours, head in one piece


def build_model(shape: str, layers: int, bits: int = 0):
    """A random-weight model of `shape`; `bits` > 0 quantizes it with mlx-lm's own
    quantize_model (group size 64, as `mlx_lm.convert -q` and mlx-community's models)."""
    import mlx.core as mx
    from mlx_lm.models import llama, qwen2
    from mlx_lm.utils import quantize_model

    values = {**SHAPES[shape], "num_hidden_layers": layers or SHAPES[shape]["num_hidden_layers"]}
    module = {"qwen2": qwen2, "llama": llama}[values["model_type"]]
    mx.random.seed(0)
    model = module.Model(module.ModelArgs(**values))
    if bits:
        model, _ = quantize_model(model, dict(values), group_size=64, bits=bits)
    mx.eval(model.parameters())
    return model


def child(args) -> dict:
    import mlx_gft  # noqa: F401  (OpenBLAS before MLX)

    # isort: split
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np

    from mlx_gft import logprobs
    from mlx_gft.config import build_config
    from mlx_gft.groups import pad_batch, response_start
    from mlx_gft.models import setup_trainable
    from mlx_gft.step import Stepper, run_updates

    model = build_model(args.shape, args.layers, args.bits)
    sft_rows = args.batch
    gft_rows = args.batch * (args.group_size + 1)
    config = build_config(num_layers=-1, batch_size=args.batch, group_size=args.group_size)
    setup_trainable(model, config)
    rng = np.random.default_rng(0)
    vocab = SHAPES[args.shape]["vocab_size"]
    prompts = [list(rng.integers(3, vocab, args.prompt_len)) for _ in range(args.batch)]
    answers = [list(rng.integers(3, vocab, args.answer_len)) for _ in range(gft_rows)]
    rows = {VARIANTS[0]: sft_rows, VARIANTS[1]: args.group_size + 1}.get(args.variant, gft_rows)
    rows = sft_rows if args.variant in LOGLIK else rows
    pairs = [(prompts[i * args.batch // rows], answers[i]) for i in range(rows)]
    tokens, mask = pad_batch(pairs)

    if args.variant == VARIANTS[0]:
        from train import mlx_lm_sft_step  # benchmarks/train.py

        run = mlx_lm_sft_step(model, pairs)
    elif args.variant in LOGLIK:
        from mlx_gft.logprobs import gather_logprobs, token_logprobs

        start = response_start(mask) if args.variant != LOGLIK[0] else 0
        if args.variant == LOGLIK[2]:
            logprobs.CHUNK_ELEMENTS = 2**62
        scored = mask[:, start:]

        def loglik(model):
            if args.variant == LOGLIK[0]:
                lp, _ = gather_logprobs(model(tokens[:, :-1]), tokens[:, 1:])
            else:
                lp, _ = token_logprobs(model, tokens, start=start)
            return (lp * scored).sum()

        value_and_grad = nn.value_and_grad(model, loglik)

        def run():
            mx.eval(value_and_grad(model))

    elif args.variant in GRPO:
        from mlx_gft.logprobs import token_logprobs
        from mlx_gft.models import adapters_disabled, eval_mode
        from mlx_gft.rollout import reference_logprobs

        config = build_config(
            num_layers=-1, batch_size=args.batch, loss="grpo", kl_coef=0.05, updates_per_batch=2
        )
        start = response_start(mask)
        mask = mask[:, start:]
        adv = mx.array(rng.standard_normal(rows).astype(np.float32))
        stepper = Stepper(model, optim.AdamW(learning_rate=1e-5), config)
        sizes = [args.group_size + 1] * (rows // (args.group_size + 1))

        def references():
            if args.variant == GRPO[0]:
                return reference_logprobs(model, tokens, start, config, mx.zeros(mask.shape))
            with eval_mode(model):  # the whole batch in one call, each
                old = mx.stop_gradient(token_logprobs(model, tokens, start=start)[0])
                mx.eval(old)
                with adapters_disabled(model):
                    base = token_logprobs(model, tokens, start=start)[0]
                mx.eval(base)
            return old, base

        def run():
            old, base = references()
            run_updates(stepper, sizes, start, (tokens, mask, adv, old, base), config)

    else:
        if args.variant == VARIANTS[1]:
            logprobs.CHUNK_ELEMENTS = 2**62  # the whole logits tensor at once
            config = build_config(
                num_layers=-1, batch_size=args.batch, micro_batch_size=gft_rows, shared_prompt=False
            )
        if args.variant == VARIANTS[3]:
            config = build_config(num_layers=-1, batch_size=args.batch, shared_prompt=False)
        if args.variant == QUIET[1]:
            config = build_config(num_layers=-1, batch_size=args.batch, skip_zero_advantage=False)
        start = response_start(mask)
        mask = mask[:, start:]
        adv = mx.array(rng.standard_normal(rows).astype(np.float32))
        if args.variant in QUIET:  # every other group's rewards all equal: A = 0
            group = np.arange(rows) // (args.group_size + 1)
            adv = mx.where(mx.array(group % 2 == 1), 0.0, adv)
        zeros = mx.zeros(mask.shape)
        arrays = (tokens, mask, adv, zeros, zeros)
        stepper = Stepper(model, optim.AdamW(learning_rate=1e-5), config)
        sizes = [args.group_size + 1] * (rows // (args.group_size + 1))

        def run():
            run_updates(stepper, sizes, start, arrays, config)

    weights = mx.get_active_memory()
    for _ in range(args.warmup):  # compile and warm up
        run()
    mx.reset_peak_memory()
    times = []
    for _ in range(args.repeats):
        tic = time.perf_counter()
        run()
        times.append(time.perf_counter() - tic)
    sec = float(np.median(times))
    return {
        "variant": args.variant,
        "rows": rows,
        "trained_tok_per_sec": rows * args.answer_len / sec,
        "sec_per_step": sec,
        "peak_gb": mx.get_peak_memory() / 1e9,
        "weights_gb": weights / 1e9,
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=SHAPES, default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=2, help="layers to build, 0 = all")
    ap.add_argument("--batch", type=int, default=4, help="prompts (mlx_lm: rows)")
    ap.add_argument("--group-size", type=int, default=8, help="K samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--answer-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps first")
    ap.add_argument("--bits", type=int, default=0, choices=(0, 4, 8), help="quantize (QLoRA)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {VARIANTS + GRPO + QUIET}")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    results = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", variant] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{variant}: failed\n{out.stderr[-2000:]}")
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    layers = args.layers or SHAPES[args.shape]["num_hidden_layers"]
    print(
        f"{args.shape}, {layers} layers, "
        f"{f'{args.bits}-bit weights (float32 activations)' if args.bits else 'float32'}, "
        f"LoRA on all; batch {args.batch}, "
        f"K = {args.group_size}, prompt {args.prompt_len} / answer {args.answer_len} tokens\n"
    )
    head = "| variant | rows | peak GB (MLX) | max RSS GB | trained tok/s | memory | speed |"
    print(head + "\n" + "|---" * 7 + "|")
    base = results[0] if results else None  # the ratios are against the first variant
    for r in results:
        mem = f"{r['peak_gb'] / base['peak_gb']:.2f}x" if base else ""
        speed = f"{r['trained_tok_per_sec'] / base['trained_tok_per_sec']:.2f}x" if base else ""
        print(
            f"| {r['variant']} | {r['rows']} | {r['peak_gb']:.2f} | {r['max_rss_gb']:.2f} | "
            f"{r['trained_tok_per_sec']:.1f} | {mem} | {speed} |"
        )


if __name__ == "__main__":
    main()
