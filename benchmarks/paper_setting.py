"""The paper's own setting on a laptop: Qwen2.5-Math-1.5B's shape, 1024-token prompts,
2048-token answers, groups of the expert, 3 teacher answers and 4 samples
(shared/GFT_SPEC.md section 6). Peak memory and seconds of one GFT iteration against one
mlx_lm.lora SFT step on the same rows, at a few layer counts, so a per-layer model can
estimate the whole 28-layer model.

Random weights in the exact configuration of Qwen/Qwen2.5-Math-1.5B (hidden 1536, 12
heads, 2 KV heads, intermediate 8960, vocabulary 151,936, tied embeddings), cut to
--layers; float32 (this CPU) unless --dtype; LoRA rank 8 on every layer. Each
measurement runs in its own process (a fresh allocator), under an address-space limit
(--limit-gb) so that one that does not fit fails with MLX's allocation error instead of
taking the machine down; a failure is a result, recorded as such.

  sample      sample_groups: 1 prompt of --prompt-len tokens, K = 4 answers of
              --answer-len tokens (EOS ignored); tokens/s at positions 128, 1024 and
              2048, the KV cache's bytes per sample, the peak
  update      one GFT update (Stepper via run_updates, as the trainer runs it) over the
              group's 8 rows (prompt + answer each), micro-batches of --micro rows
  iteration   sample, then the update on the 4 samples and 4 off-policy rows, in one
              process: what a training iteration holds (a cache kept after sampling
              would show here)
  mlx_lm-sft  mlx_lm.lora's SFT step (its default_loss, compiled as mlx_lm compiles
              it) on --sft-rows of the rows (prompt-masked; default 4, mlx_lm's batch
              size), all at once as mlx_lm runs a batch

    python benchmarks/paper_setting.py --layers 2 --variants sample,update,mlx_lm-sft
    python benchmarks/paper_setting.py --layers 2,4,6 --variants update --micro 1,4
    python benchmarks/paper_setting.py --layers 2 --variants iteration
    python benchmarks/paper_setting.py --layers 2,4 --variants update --grad-checkpoint
    python benchmarks/paper_setting.py --estimate results.jsonl   # the 28-layer model

--estimate fits peak = fixed + per_layer x layers through the measured layer counts
(weights alike, from each run's weights_gb) and prints the whole model's estimate in
float32, bfloat16 (weights and per-layer activations halved; GFT's fixed activations,
the LM head's chunks, kept: they are float32 whatever the weights; mlx_lm's logits,
in the model's dtype, halved) and 4-bit (weights x 4.5/32: 4 bits plus a scale and
bias per 64; activations as bfloat16), against 75% of a Mac's memory, about what macOS
lets the GPU use by default (its recommended working set).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SHAPE = dict(  # config.json of Qwen/Qwen2.5-Math-1.5B
    model_type="qwen2", hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
    num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=151936,
    rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=4096,
)  # fmt: skip
VARIANTS = ("sample", "update", "iteration", "mlx_lm-sft")
POSITIONS = (128, 1024, 2048)  # where sampling's speed is read


def build(layers: int, dtype: str):
    import mlx.core as mx
    from mlx_lm.models import qwen2

    mx.random.seed(0)
    model = qwen2.Model(qwen2.ModelArgs(**{**SHAPE, "num_hidden_layers": layers}))
    model.set_dtype(getattr(mx, dtype))
    mx.eval(model.parameters())
    return model


class NoText:
    """The tokenizer sampling needs here: no EOS (answers run to the limit), no text."""

    eos_token_ids: list[int] = []

    def decode(self, ids) -> str:
        return ""


class Timed:
    """The model, with the time of each call recorded (a decode step per call)."""

    def __init__(self, model):
        self.__dict__["model"], self.__dict__["calls"] = model, []

    def __call__(self, *args, **kwargs):
        self.calls.append(time.perf_counter())
        return self.model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __contains__(self, name):
        return name in self.model


def sample(model, args, prompt) -> dict:
    import mlx.core as mx

    from mlx_gft.sampling import sample_groups

    timed = Timed(model)
    tic = time.perf_counter()
    out = sample_groups(timed, NoText(), [prompt], 4, max_tokens=args.answer_len, seed=0,
                        eos_token_ids=())  # fmt: skip
    seconds = time.perf_counter() - tic
    # The last answer_len - 1 calls are the decode steps (the prompt's prefill comes first).
    steps = timed.calls[-(args.answer_len - 1) :]
    rates = {}
    for pos in POSITIONS:
        if pos <= args.answer_len:  # the answer's last token comes from decode step pos - 1
            end = min(pos, len(steps))
            window = steps[max(end - 32, 0) : end]
            dt = (window[-1] - window[0]) / max(len(window) - 1, 1)
            rates[f"tok_per_sec_at_{pos}"] = 4 / dt if dt else None
    kv = 2 * SHAPE["num_key_value_heads"] * (SHAPE["hidden_size"] // SHAPE["num_attention_heads"])
    kv *= args.layers * mx.array(0, getattr(mx, args.dtype)).itemsize
    return {
        "sample_seconds": seconds,
        "answer_tokens": [len(s.tokens) for s in out],
        # Per sample at the end: its prompt's copy and its answer (sample_groups repeats
        # the prefilled prompt cache for each of the K rows).
        "kv_bytes_per_sample": kv * (len(prompt) + args.answer_len),
        "kv_bytes_prompt_copy": kv * len(prompt),
        **rates,
    }, [s.tokens for s in out]


def update(model, args, prompt, answers, micro: int) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np

    from mlx_gft.config import build_config
    from mlx_gft.groups import pad_batch, response_start
    from mlx_gft.step import Stepper, run_updates

    config = build_config(num_layers=-1, batch_size=1, micro_batch_size=micro,
                          max_completion_length=args.answer_len,
                          max_seq_length=args.prompt_len + args.answer_len + 1,
                          grad_checkpoint=args.grad_checkpoint)  # fmt: skip
    tokens, mask = pad_batch([(prompt, a) for a in answers])
    start = response_start(mask)
    mask = mask[:, start:]
    adv = mx.array(np.random.default_rng(0).standard_normal(len(answers)).astype(np.float32))
    zeros = mx.zeros(mask.shape)
    stepper = Stepper(model, optim.AdamW(learning_rate=1e-6), config, log=lambda _: None)
    tic = time.perf_counter()
    run_updates(stepper, [len(answers)], start, (tokens, mask, adv, zeros, zeros), config)
    return {
        "update_seconds": time.perf_counter() - tic,
        "rows": len(answers),
        "micro": micro,
        "grad_checkpoint": args.grad_checkpoint,
    }


def child(args) -> dict:
    import mlx_gft  # noqa: F401  (OpenBLAS before MLX)

    # isort: split
    import mlx.core as mx
    import numpy as np

    from mlx_gft.config import build_config
    from mlx_gft.models import setup_trainable

    model = build(args.layers, args.dtype)
    setup_trainable(model, build_config(num_layers=-1))
    weights = mx.get_active_memory()
    rng = np.random.default_rng(0)
    vocab = SHAPE["vocab_size"]
    prompt = [int(t) for t in rng.integers(3, vocab, args.prompt_len)]
    offpolicy = [[int(t) for t in rng.integers(3, vocab, args.answer_len)] for _ in range(4)]
    out = {"variant": args.variant, "layers": args.layers, "dtype": args.dtype,
           "prompt_len": args.prompt_len, "answer_len": args.answer_len}  # fmt: skip
    mx.reset_peak_memory()
    if args.variant in ("sample", "iteration"):
        found, samples = sample(model, args, prompt)
        out.update(found, sample_peak_gb=mx.get_peak_memory() / 1e9)
        mx.reset_peak_memory()
        if args.variant == "iteration":
            out["after_sampling_active_gb"] = mx.get_active_memory() / 1e9
            out.update(update(model, args, prompt, offpolicy + samples, args.micro_one))
            out["update_peak_gb"] = mx.get_peak_memory() / 1e9
    elif args.variant == "update":
        out.update(update(model, args, prompt, offpolicy * 2, args.micro_one))
        out["update_peak_gb"] = mx.get_peak_memory() / 1e9
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from train import mlx_lm_sft_step  # benchmarks/train.py

        run = mlx_lm_sft_step(model, [(prompt, a) for a in offpolicy[: args.sft_rows]])
        tic = time.perf_counter()
        run()
        out.update(sft_seconds=time.perf_counter() - tic, rows=args.sft_rows)
        out["sft_peak_gb"] = mx.get_peak_memory() / 1e9
    out["weights_gb"] = weights / 1e9
    out["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def run_child(argv: list[str], limit_gb: float) -> dict:
    """One measurement in its own process, its address space capped: (results) or
    {"failed": the error's last line}."""

    def cap():
        limit = int(limit_gb * 1e9)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                         preexec_fn=cap if limit_gb else None)  # fmt: skip
    if out.returncode:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {"failed": lines[-1] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass
class Line:
    """y = fixed + per_layer x layers, least squares through the measured layer counts."""

    fixed: float
    per_layer: float

    def at(self, layers: float) -> float:
        return self.fixed + self.per_layer * layers


def fit_line(points: dict[int, float]) -> Line:
    import numpy as np

    xs = list(points)
    if len(set(xs)) < 2:
        raise ValueError(f"a per-layer fit needs two layer counts or more, got {xs}")
    slope, fixed = np.polyfit(xs, list(points.values()), 1)
    return Line(float(fixed), float(slope))


PEAKS = {"iteration": ("sample_peak_gb", "update_peak_gb"), "update": ("update_peak_gb",),
         "mlx_lm-sft": ("sft_peak_gb",), "sample": ("sample_peak_gb",)}  # fmt: skip
MAC_GB = (16, 24, 32, 64)
HALF_HEAD = {"mlx_lm-sft"}  # variants whose fixed activations follow the model's dtype
USABLE = 0.75  # of a Mac's memory
LAYERS = SHAPE["num_hidden_layers"]


def estimate(rows: list[dict], layers: int = LAYERS) -> list[dict]:
    """Per variant (and micro-batch size, gradient checkpointing), the float32 fit
    through the measured layer counts and the whole model's peak in float32, bfloat16
    and 4-bit. Runs that failed are left out of the fit (and listed by the caller)."""
    groups: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        if "failed" in r or r["variant"] not in PEAKS:
            continue
        # One fit per setting: rows and lengths are not mixed (older records lack them).
        key = (r["variant"], r.get("micro", 1), bool(r.get("grad_checkpoint")),
               r.get("rows"), r.get("prompt_len"), r.get("answer_len"))  # fmt: skip
        groups.setdefault(key, {})[r["layers"]] = r
    out = []
    for (variant, micro, ckpt, rows_, *_), by_layers in sorted(groups.items(), key=str):
        if len(by_layers) < 2:
            continue
        peak = fit_line({n: max(r[k] for k in PEAKS[variant]) for n, r in by_layers.items()})
        weights = fit_line({n: r["weights_gb"] for n, r in by_layers.items()})
        # What is not weights: fixed (the head's chunks, log-probabilities, the prompt)
        # and per layer (activations kept for the backward pass, KV cache).
        act = Line(peak.fixed - weights.fixed, peak.per_layer - weights.per_layer)
        f32 = peak.at(layers)
        # GFT's head runs in float32 whatever the weights (logprobs.py); mlx_lm's loss
        # takes the logits in the model's dtype.
        fixed = act.fixed / 2 if variant in HALF_HEAD else act.fixed
        bf16 = weights.at(layers) / 2 + fixed + act.per_layer * layers / 2
        q4 = weights.at(layers) * 4.5 / 32 + fixed + act.per_layer * layers / 2
        out.append({
            "variant": variant, "micro": micro, "grad_checkpoint": ckpt, "rows": rows_,
            "measured_layers": sorted(by_layers), "fixed_gb": peak.fixed,
            "per_layer_gb": peak.per_layer, "weights_per_layer_gb": weights.per_layer,
            "float32_gb": f32, "bfloat16_gb": bf16, "4bit_gb": q4,
            "bfloat16_fits": [g for g in MAC_GB if bf16 <= USABLE * g],
            "4bit_fits": [g for g in MAC_GB if q4 <= USABLE * g],
        })  # fmt: skip
    return out


def print_estimate(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for r in rows:
        if "failed" in r:
            print(f"failed: {r['variant']}, {r['layers']} layers, micro {r.get('micro')}: "
                  f"{r['failed']}")  # fmt: skip
    head = (f"{LAYERS} layers, estimated", "measured at", "float32 fit, GB", "float32",
            "bfloat16", "4-bit", "Macs (GB) it fits, bfloat16", "4-bit")  # fmt: skip
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for e in estimate(rows):
        if e["variant"] == "mlx_lm-sft":
            name = f"mlx_lm-sft, batch {e['rows']}"
        else:
            name = f"{e['variant']}, micro {e['micro']}"
            name += ", --grad-checkpoint" if e["grad_checkpoint"] else ""
        fits = [", ".join(map(str, e[k])) or "none" for k in ("bfloat16_fits", "4bit_fits")]
        layers = ", ".join(map(str, e["measured_layers"]))
        print(f"| {name} | {layers} | {e['fixed_gb']:.2f} + {e['per_layer_gb']:.3f} L | "
              f"{e['float32_gb']:.1f} GB | {e['bfloat16_gb']:.1f} GB | {e['4bit_gb']:.1f} GB "
              f"| {fits[0]} | {fits[1]} |")  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="2", help="comma-separated layer counts")
    ap.add_argument("--variants", default="sample,update,mlx_lm-sft", help=f"of {VARIANTS}")
    ap.add_argument("--micro", default="1", help="update: rows per micro-batch, comma-separated")
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--answer-len", type=int, default=2048)
    ap.add_argument("--sft-rows", type=int, default=4, choices=range(1, 5),
                    metavar="1-4", help="mlx_lm-sft: rows in its batch")  # fmt: skip
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--limit-gb", type=float, default=19.0, help="address space per run, 0: none")
    ap.add_argument(
        "--grad-checkpoint", action="store_true", help="the update recomputes layer activations"
    )
    ap.add_argument("--json", help="append every result to this file")
    ap.add_argument("--estimate", metavar="JSONL", help="fit the per-layer model to these "
                    "results and print the whole model's estimate (no measuring)")  # fmt: skip
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--micro-one", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.estimate:
        print_estimate(args.estimate)
        return
    if args.variant:
        args.layers = int(args.layers)
        print(json.dumps(child(args)))
        return
    common = ["--prompt-len", str(args.prompt_len), "--answer-len", str(args.answer_len),
              "--dtype", args.dtype, "--sft-rows", str(args.sft_rows)]  # fmt: skip
    common += ["--grad-checkpoint"] if args.grad_checkpoint else []
    results = []
    for layers in args.layers.split(","):
        for variant in args.variants.split(","):
            micros = args.micro.split(",") if variant in ("update", "iteration") else ["1"]
            for micro in micros:
                argv = [*common, "--layers", layers, "--variant", variant, "--micro-one", micro]
                tic = time.perf_counter()
                r = {"variant": variant, "layers": int(layers), "micro": int(micro),
                     **run_child(argv, args.limit_gb)}  # fmt: skip
                r["wall_seconds"] = time.perf_counter() - tic
                results.append(r)
                print(json.dumps(r), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
