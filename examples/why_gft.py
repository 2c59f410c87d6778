"""Why GFT: train SFT and GFT (or DFT, GRPO, stages) from the same start on the same
data, then plot what the paper says separates them (token entropy, gradient norm, drift
from the base model, reward, held-out accuracy) and print a table of the final numbers.

The default is the built-in task with 30% of the training answers wrong (an arithmetic
slip SFT imitates and GFT's verifier scores 0), K = 8 samples per prompt. Every method
trains on the answer tokens only (`mask_prompt`, as GFT does), and with wrong answers
the baselines include `sft-verified`: SFT on the rows whose expert answer the same
verifier accepts, what a user who has GFT's verifier would run instead of GFT.

    python examples/why_gft.py --quick                 # embedded model and task, < 30 min
    python examples/why_gft.py --wrong-experts 0       # clean expert answers
    python examples/why_gft.py --methods sft,dft,gft   # and DFT
    python examples/why_gft.py --then-grpo 10          # and GRPO after SFT vs after GFT
    python examples/why_gft.py --methods sft,sft+gft   # SFT vs SFT -> GFT, same steps
    python examples/why_gft.py --model M --data D --iters 200

Writes <out>/<method>/ (adapters, metrics.jsonl), <out>/plots/*.png and <out>/summary.md.
Plots need matplotlib (pip install "mlx-gft[plot]").
"""

import argparse
import json
import time
from pathlib import Path

from mlx_gft.config import build_config
from mlx_gft.evaluate import build_parser as evaluate_parser
from mlx_gft.evaluate import evaluate
from mlx_gft.job import run
from mlx_gft.plots import chain_stages, plot_runs, read_metrics
from mlx_gft.tasks import write_dataset

MAX_TOKENS = 64  # per answer, in training samples and held-out evaluation alike
# Wrong expert answers: SFT imitates them, GFT's verifier scores them 0 (README, Why GFT).
DEMO_WRONG_EXPERTS = 0.3
PLOTTED = ("val_entropy", "grad_norm", "kl_to_base", "reward_sampled", "val_acc", "val_loss")


def options(args: argparse.Namespace) -> dict:
    """The settings every method shares: same model, data, adapters, steps and seed."""
    return dict(
        model=args.model,
        data=args.data,
        train=True,
        test=True,
        iters=args.iters,
        batch_size=4,
        learning_rate=args.learning_rate,
        num_layers=args.num_layers,
        group_size=args.group_size,
        tau=0.5,
        temperature=1.0,
        max_completion_length=MAX_TOKENS,
        mask_truncated=True,
        steps_per_report=1,
        steps_per_eval=args.eval_every,
        val_batches=2,
        test_batches=args.test_problems // 4,
        save_every=10_000,
        probe_size=8,
        seed=args.seed,
        mask_prompt=True,  # SFT/DFT baselines: loss on the answer only, as GFT
    )


def train_method(name: str, args: argparse.Namespace, then_grpo: int) -> dict:
    """`name` is a loss, or losses joined by '+' that share the iterations in turn
    (sft+gft: the paper's pipeline, at the same number of examples seen as sft)."""
    folder = Path(args.out) / name
    losses = name.split("+")
    config = dict(options(args), loss=losses[0], adapter_path=str(folder))
    stages = [{"loss": loss, "iters": args.iters // len(losses)} for loss in losses]
    if then_grpo:
        stages.append({"loss": "grpo", "iters": then_grpo})
    if len(stages) > 1:
        config["stages"] = stages
    print(f"\n=== {name} ===", flush=True)
    tic = time.perf_counter()
    results = run(build_config(**config))
    minutes = (time.perf_counter() - tic) / 60
    after = [k for k in results if k.endswith("_accuracy") and k != "before_accuracy"]
    runs = (
        {f"{name}: {p.name}": p for p in sorted(folder.glob("[0-9]-*"))}
        if len(stages) > 1
        else {name: folder}
    )
    return {
        "runs": runs,
        "before": results.get("before_accuracy"),
        "after": {k.removesuffix("_accuracy"): results[k] for k in after},
        "minutes": minutes,
    }


def held_out(args: argparse.Namespace, adapters: Path | None) -> dict:
    """avg@k at T=1 and greedy accuracy on the same test problems the runs report."""
    argv = ["--split", "test", "--limit", str(args.test_problems), "--max-tokens", str(MAX_TOKENS)]
    argv += ["--samples", str(args.eval_samples), "--seed", str(args.seed)]
    options = {"--model": args.model, "--data": args.data, "--adapter-path": adapters}
    for flag, value in options.items():
        if value:
            argv += [flag, str(value)]
    result = evaluate(evaluate_parser().parse_args(argv), log=lambda _: None)
    return {"avg_at_k": result["avg_at_k"], "greedy": result["greedy"]}


def _series_stats(folder: Path) -> dict:
    s = read_metrics(folder)

    def last(metric):
        return s[metric][-1][1] if s.get(metric) else float("nan")

    def peak(metric):
        return max(v for _, v in s[metric]) if s.get(metric) else float("nan")

    return {
        "val_entropy_first": s["val_entropy"][0][1] if s.get("val_entropy") else float("nan"),
        "val_entropy": last("val_entropy"),
        "max_grad_norm": peak("grad_norm"),
        "kl_to_base": last("kl_to_base"),
        "reward_sampled": last("reward_sampled"),
        "val_acc": last("val_acc"),
    }


def table(outcomes: dict[str, dict], base: dict | None = None, k: int = 4) -> str:
    """One row per run (per stage of a staged method). `held out` is one sample per
    problem at T=1 as the run measured it; avg@k and greedy come from `held_out`."""
    head = (
        f"| run | held out, before -> after | avg@{k} T=1 | greedy | val entropy "
        "(expert answers) | max grad norm | KL to base (final) | val acc (final) | minutes |"
    )
    rows = [head, "|" + "---|" * 9]
    if base:
        rows.append(f"| base | | {base['avg_at_k']:.3f} | {base['greedy']:.3f} | | | | | |")
    for out in outcomes.values():
        for (label, folder), (stage, acc) in zip(
            out["runs"].items(), out["after"].items(), strict=True
        ):
            st = _series_stats(folder)
            ev = out.get("eval", {}).get(label)
            avg, greedy = (f"{ev['avg_at_k']:.3f}", f"{ev['greedy']:.3f}") if ev else ("", "")
            rows.append(
                f"| {label} | {out['before']:.3f} -> {acc:.3f} ({stage}) | {avg} | {greedy} | "
                f"{st['val_entropy_first']:.3f} -> {st['val_entropy']:.3f} | "
                f"{st['max_grad_norm']:.3f} | {st['kl_to_base']:.4f} | {st['val_acc']:.3f} | "
                f"{out['minutes']:.1f} |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the < 30 min setting (default)")
    ap.add_argument("--model", help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--data", help="default: the built-in arithmetic task")
    ap.add_argument(
        "--methods",
        help="losses, or a+b for stages (default: sft,gft; with wrong answers "
        "sft,sft-verified,gft)",
    )
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--learning-rate", type=float, default=3e-5)
    ap.add_argument("--group-size", type=int, default=8, help="GFT/GRPO samples per prompt")
    ap.add_argument("--num-layers", type=int, default=16, help="LoRA layers, -1 for all")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--test-problems", type=int, default=64)
    ap.add_argument(
        "--eval-samples", type=int, default=4, help="k of avg@k after training, 0 to skip"
    )
    ap.add_argument("--then-grpo", type=int, default=0, help="GRPO iterations after SFT / GFT")
    ap.add_argument(
        "--wrong-experts",
        type=float,
        help="built-in task with this share of training answers wrong (an arithmetic slip); "
        f"default {DEMO_WRONG_EXPERTS} on the built-in task, 0 for clean answers",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="why_gft_runs")
    args = ap.parse_args()
    if args.wrong_experts is None:
        args.wrong_experts = 0.0 if args.data else DEMO_WRONG_EXPERTS
    noisy = f"Built-in task, {args.wrong_experts:.0%} of training answers wrong"
    if args.wrong_experts:
        if args.data:
            ap.error("--wrong-experts changes the built-in task: leave out --data")
        print(noisy, flush=True)
        args.data = str(
            write_dataset(Path(args.out) / "data", seed=args.seed, wrong_experts=args.wrong_experts)
        )

    if args.methods is None:
        args.methods = "sft,sft-verified,gft" if args.wrong_experts else "sft,gft"
    outcomes = {}
    for method in args.methods.split(","):
        grpo = args.then_grpo if method.split("+")[-1] in ("sft", "sft-verified", "gft") else 0
        outcomes[method] = train_method(method, args, grpo)
    base = None
    if args.eval_samples:
        print(f"\n=== avg@{args.eval_samples} and greedy on the held-out problems ===", flush=True)
        base = held_out(args, None)
        for out in outcomes.values():
            out["eval"] = {label: held_out(args, folder) for label, folder in out["runs"].items()}
    # One curve per method: a staged method's stages joined end to end.
    curves = {name: chain_stages(list(out["runs"].values())) for name, out in outcomes.items()}
    out_dir = Path(args.out)
    summary = table(outcomes, base, args.eval_samples)
    (out_dir / "summary.md").write_text(summary + "\n")
    (out_dir / "summary.json").write_text(
        json.dumps(
            {
                "wrong_experts": args.wrong_experts,
                "base": base,
                **{
                    k: {**v, "runs": {n: str(p) for n, p in v["runs"].items()}}
                    for k, v in outcomes.items()
                },
            },
            indent=1,
        )  # fmt: skip
    )
    if args.wrong_experts:
        print("\n" + noisy)
    print("\n" + summary)
    try:
        for path in plot_runs(curves, out_dir / "plots", PLOTTED):
            print(f"Wrote {path}")
    except ImportError as e:
        print(f"No plots: {e}")


if __name__ == "__main__":
    main()
