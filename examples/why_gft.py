"""Why GFT: train SFT and GFT (or DFT, GRPO, stages) from the same start on the same
data, then plot what the paper says separates them (token entropy, gradient norm, drift
from the base model, reward, held-out accuracy, pass@k) and print a table of the final
numbers, per seed and as mean and spread over seeds.

The default is the built-in task with 30% of the training answers wrong (an arithmetic
slip SFT imitates and GFT's verifier scores 0), K = 8 samples per prompt. Every method
trains on the answer tokens only (`mask_prompt`, as GFT does), and with wrong answers
the baselines include `sft-verified`: SFT on the rows whose expert answer the same
verifier accepts, what a user who has GFT's verifier would run instead of GFT.

Every run is scored after training on the same held-out problems: avg@k and the pass@k
curve at T = 1, greedy accuracy, distinct final answers per problem; on harder problems
than it trained on (`--ood-level`, built-in task); and on a task nobody trains on
(capitals, examples/data/capitals: what the base model knew and must not lose).

    python examples/why_gft.py --quick                 # embedded model and task, ~35 min, 2 cores
    python examples/why_gft.py --wrong-experts 0       # clean expert answers
    python examples/why_gft.py --methods sft,dft,gft   # and DFT
    python examples/why_gft.py --then-grpo 10          # and GRPO after SFT vs after GFT
    python examples/why_gft.py --methods sft,sft+gft   # SFT vs SFT -> GFT, same steps
    python examples/why_gft.py --methods sft@60,gft    # SFT with its own count, 60 iterations
    python examples/why_gft.py --methods sft,gft,gft:dynamic,gft:tau=0.1,sft:lr=1e-4
                                  # options per method: dynamic sampling, tau, lr, rounds,
                                  # no-mask-truncated (cut-off samples get a loss)
    python examples/why_gft.py --methods sft:lr=3e-5+gft:lr=1e-4   # each stage its own lr
    python examples/why_gft.py --score-every 10        # and each run at 10, 20, ...
                                                       # iterations: its best step count
    python examples/why_gft.py --warm-start 6 --train-size 16 --wrong-experts 0 --seeds 0,1,2
                    # the paper's regime in miniature (docs/learning.md): an SFT-warmed
                    # start that already solves a fair share, 5 epochs of 16 problems
    python examples/why_gft.py --model M --data D --iters 200
    python examples/why_gft.py ... --reuse             # after an interruption: keep the
                                                       # runs that finished (and their
                                                       # scores), train the rest

Writes <out>/[seed<s>/]<method>/ (adapters, metrics.jsonl), <out>/plots/*.png and
<out>/summary.md. Plots need matplotlib (pip install "mlx-gft[plot]").
"""

import argparse
import hashlib
import json
import shutil
import statistics
import time
from pathlib import Path

from mlx_gft.config import ConfigError, build_config
from mlx_gft.evaluate import build_parser as evaluate_parser
from mlx_gft.evaluate import evaluate
from mlx_gft.job import run
from mlx_gft.metrics import jsonable
from mlx_gft.plots import chain_stages, plot_runs, read_metrics
from mlx_gft.tasks import DEFAULT_LEVEL, make_dataset
from mlx_gft.tasks.arithmetic import STYLES

# An answer in the 'steps' style (the off-policy expert's): its opening step or its box.
STEPS_STYLE = r"Step 1:|\\boxed\{"
# Wrong expert answers: SFT imitates them, GFT's verifier scores them 0 (docs/demo.md).
DEMO_WRONG_EXPERTS = 0.3
# Like for like: entropy on the same held-out expert answers for every method (a run's
# own `entropy` is GFT's samples' but SFT's expert answers'), KL per token.
PLOTTED = (
    "val_entropy", "grad_norm", "kl_to_base_per_token", "val_acc", "sample_acc",
    "truncated_frac", "expert_pull",
)  # fmt: skip
EXAMPLES = Path(__file__).parent
CAPITALS = EXAMPLES / "data" / "capitals"
CONTAINS = f"{EXAMPLES / 'rewards' / 'contains_answer.py'}:contains_answer"


def options(args: argparse.Namespace, seed: int) -> dict:
    """The settings every method shares: same model, data, adapters, steps and seed."""
    return dict(
        model=args.model,
        data=args.data,
        train=True,
        iters=args.iters,
        batch_size=4,
        learning_rate=args.learning_rate,
        num_layers=args.num_layers,
        group_size=args.group_size,
        tau=args.tau,
        temperature=1.0,
        max_completion_length=args.max_tokens,
        mask_truncated=True,
        steps_per_report=1,
        steps_per_eval=args.eval_every,
        val_batches=2,
        save_every=10_000,
        probe_size=8,
        seed=seed,
        mask_prompt=True,  # SFT/DFT baselines: loss on the answer only, as GFT
    )


# Per-method options in a method's name, e.g. gft:tau=0.1, sft:lr=1e-4, gft:dynamic:
# key=X takes a value of that type; a flag (True or False here) sets the option to it.
METHOD_OPTIONS = {
    "tau": ("tau", float),
    "lr": ("learning_rate", float),
    "dynamic": ("dynamic_sampling", True),  # DAPO's dynamic sampling
    "rounds": ("max_sampling_rounds", int),
    # Samples cut off at --max-tokens get a loss too: a rambling sample is pushed down.
    "no-mask-truncated": ("mask_truncated", False),
    # DAPO's soft overlong punishment over the last N tokens of the limit (factor 1).
    "overlong": ("overlong_buffer", int),
    "adv-scale": ("adv_scale", str),  # group, batch or none (no division by the std)
}
OPTION_NAMES = "tau=X, lr=X, rounds=N, overlong=N, adv-scale=S, dynamic, no-mask-truncated"


def parse_method(name: str, iters: int) -> tuple[list[str], int, list[dict]]:
    """'sft' -> (['sft'], iters, [{}]); 'sft@60' -> (['sft'], 60, [{}]); 'sft+gft' -> both
    stages; 'gft:tau=0.1:dynamic' -> (['gft'], iters, [{'tau': 0.1, 'dynamic_sampling':
    True}]). A stage's options follow its name, so each stage of a pipeline keeps its own
    learning rate: 'sft:lr=3e-5+gft:lr=1e-4' -> one options mapping per stage."""
    body, _, n = name.partition("@")
    losses, options = [], []
    for stage in body.split("+"):
        loss, *opts = stage.split(":")
        overrides = {}
        for opt in opts:
            key, eq, value = opt.partition("=")
            field, kind = METHOD_OPTIONS.get(key, (None, None))
            if field is None or bool(eq) == isinstance(kind, bool):
                raise SystemExit(
                    f"--methods {name}: unknown option {opt!r}; options: {OPTION_NAMES}"
                )
            try:
                overrides[field] = kind if isinstance(kind, bool) else kind(value)
            except ValueError:
                raise SystemExit(f"--methods {name}: {key} takes a number, not {value!r}") from None
        try:  # a value the trainer would refuse (adv-scale=bogus) stops here, not mid-run
            build_config(loss=loss, **overrides)
        except ConfigError as e:
            raise SystemExit(f"--methods {name}: {e}") from None
        losses.append(loss)
        options.append(overrides)
    return losses, int(n) if n else iters, options


def train_method(name: str, args: argparse.Namespace, seed: int, out: Path) -> dict:
    """`name` is a loss, or losses joined by '+' that share the iterations in turn
    (sft+gft: the paper's pipeline, at the same number of examples seen as sft), with
    ':option' settings (METHOD_OPTIONS) after each stage's loss and an optional '@N' for
    N iterations instead of --iters. A one-loss method's options hold for the whole run
    (a --then-grpo stage too); a pipeline's stages keep their own."""
    folder = out / name.replace(":", "-")
    losses, iters, stage_options = parse_method(name, args.iters)
    config = dict(options(args, seed), loss=losses[0], adapter_path=str(folder), iters=iters)
    config["log_completions"] = getattr(args, "log_completions", False)
    if args.warm_start:
        config["resume_adapter_file"] = str(out / "warm-start" / "adapters.safetensors")
    stages = [
        {"loss": loss, "iters": iters // len(losses), **opts}
        for loss, opts in zip(losses, stage_options, strict=True)
    ]
    if args.then_grpo and losses[-1] in ("sft", "sft-verified", "gft"):
        stages.append({"loss": "grpo", "iters": args.then_grpo})
    if len(losses) == 1:  # one loss: its options are the run's, a --then-grpo stage's too
        config.update(stage_options[0])
    if len(stages) > 1:
        config["stages"] = stages
    if len(stages) == 1 and args.score_every:
        config["save_every"] = args.score_every
    record = _train(config, folder, args.reuse, f"{name} (seed {seed})")
    if len(stages) == 1:
        found = {"runs": {name: folder}, "minutes": {name: record["minutes"]}}
        found["checkpoints"] = checkpoints(name, folder, iters, args.score_every, record)
        return found
    runs = {f"{name}: {p.name}": p for p in sorted(folder.glob("[0-9]-*"))}
    # A stage's row costs the minutes to reach its model (a marker from before stage
    # minutes were kept gives the whole run's).
    stage = record["stage_minutes"]
    minutes = {label: stage.get(p.name, record["minutes"]) for label, p in runs.items()}
    return {"runs": runs, "minutes": minutes}


def checkpoints(name: str, folder: Path, iters: int, every: int, record: dict) -> dict:
    """With --score-every N, a one-stage run's checkpoints at N, 2N, ... as runs of their
    own: {'gft@10': {"folder": the run, "adapters": a folder with the checkpoint,
    "minutes": to reach it, "upto": 10}}. The learning rate is constant here, so the
    checkpoint at N is the model an N-iteration run trains: each method can be compared
    at its own best step count."""
    found = {}
    if not every:
        return found
    method = name.partition("@")[0]  # gft:dynamic@20's checkpoint at 10: gft:dynamic@10
    end = (folder / "why_gft.json").stat().st_mtime  # written when the run finished
    for n in range(every, iters, every):
        saved = folder / f"{n:07d}_adapters.safetensors"
        if not saved.exists():  # a run from before --score-every, kept by --reuse
            continue
        at = folder / f"at-{n}"
        at.mkdir(exist_ok=True)
        shutil.copy(folder / "adapter_config.json", at)
        shutil.copy(saved, at / "adapters.safetensors")
        minutes = record["minutes"] - (end - saved.stat().st_mtime) / 60
        found[f"{method}@{n}"] = {"folder": folder, "adapters": at, "minutes": minutes, "upto": n}
    return found


def warm_start(args: argparse.Namespace, seed: int, out: Path) -> None:
    """SFT on the warm-up rows (disjoint from the training set): every method starts from
    these adapters, as the paper's methods start from an instruct model that already
    solves a fair share of the problems."""
    config = dict(
        options(args, seed),
        data=str(out / "data_warm"),
        loss="sft",
        iters=args.warm_start,
        adapter_path=str(out / "warm-start"),
    )
    label = f"warm start: sft, {args.warm_start} iterations (seed {seed})"
    _train(config, out / "warm-start", args.reuse, label)


def _train(config: dict, folder: Path, reuse: bool, label: str) -> dict:
    """Train one run, or with --reuse take a finished one from an earlier call:
    {"minutes": the run's, "stage_minutes": {stage folder: minutes from the run's start
    to the end of that stage}} (a staged run's stages, none for one stage)."""
    done = folder / "why_gft.json"  # written last, so an interrupted run trains again
    if reuse and done.exists():
        print(f"\n=== {label}: reusing {folder} ===", flush=True)
        return {"stage_minutes": {}, **json.loads(done.read_text())}
    print(f"\n=== {label} ===", flush=True)
    start = time.time()
    run(build_config(**config))
    # A stage ends with the last line its metrics.jsonl gets (its final validation):
    # the minutes it took to reach that stage's model, earlier stages included.
    ends = {p.parent.name: p.stat().st_mtime for p in folder.glob("[0-9]-*/metrics.jsonl")}
    record = {
        "minutes": (time.time() - start) / 60,
        "stage_minutes": {name: (end - start) / 60 for name, end in sorted(ends.items())},
    }
    done.write_text(json.dumps(record))
    return record


def evaluate_on(args: argparse.Namespace, data: Path | None, adapters: Path | None, **kw) -> dict:
    """mlx_gft.evaluate's numbers for one model on one data folder's test split (or
    kw split)."""
    argv = [
        "--split",
        kw.get("split", "test"),
        "--max-tokens",
        str(args.max_tokens),
        "--seed",
        str(kw["seed"]),
    ]
    if kw.get("matching"):
        argv += ["--share-matching", kw["matching"]]
    argv += ["--samples", str(kw.get("samples", 1)), "--limit", str(kw["limit"])]
    argv += ["--temperature", str(kw.get("temperature", 1.0)), "--reward", kw.get("reward", "math")]
    for flag, value in {"--model": args.model, "--data": data, "--adapter-path": adapters}.items():
        if value:
            argv += [flag, str(value)]
    return evaluate(evaluate_parser().parse_args(argv), log=lambda _: None)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def held_out(args: argparse.Namespace, adapters: Path | None, seed: int, out: Path) -> dict:
    """held_out_scores for one model; a trained model's numbers are kept beside its
    adapters (held_out.json), and with --reuse taken from there when the adapters and
    every scoring setting are the same: scoring answers that run to the token limit costs
    more than training, so an interrupted or extended comparison does not score twice."""
    if adapters is None:
        return held_out_scores(args, adapters, seed, out)
    split = getattr(args, "score_split", "test")
    key = {
        "adapters": _digest(Path(adapters) / "adapters.safetensors"),
        "model": str(args.model),
        "data": _digest(Path(args.data) / f"{split}.jsonl"),
        "harder": _digest(out / "data_ood" / "test.jsonl"),
        **{
            name: getattr(args, name, None)
            for name in ("eval_samples", "test_problems", "ood_problems", "max_tokens")
        },
        "seed": seed,
        "split": split,
        "forgetting": args.forgetting,
        "expert_style": getattr(args, "expert_style", "own"),
    }
    cache = Path(adapters) / "held_out.json"
    if args.reuse and cache.exists():
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            print(f"(held-out numbers of {adapters}: reused)", flush=True)
            return {k: float("nan") if v is None else v for k, v in saved["numbers"].items()}
    found = held_out_scores(args, adapters, seed, out)
    cache.write_text(json.dumps({"key": key, "numbers": jsonable(found)}, indent=1))
    return found


def held_out_scores(args: argparse.Namespace, adapters: Path | None, seed: int, out: Path) -> dict:
    """Held-out numbers for one model: avg@k, pass@1..k and distinct answers at T = 1 and
    greedy accuracy on the test problems; avg@k on harder ones; capitals, greedy."""
    k, n = args.eval_samples, args.test_problems
    style = STEPS_STYLE if getattr(args, "expert_style", "own") == "steps" else None
    split = getattr(args, "score_split", "test")
    main = evaluate_on(
        args, args.data, adapters, seed=seed, samples=k, limit=n, matching=style, split=split
    )
    found = {
        "avg_at_k": main["avg_at_k"],
        "avg_stderr": main["avg_at_k_stderr"],
        "greedy": main["greedy"],
        "pass_at": main["pass_at"],
        "distinct": main["distinct_answers"],
        "answer_tokens": main["answer_tokens"],
        "scored_on": split,
    }
    if main["share_matching"] is not None:
        found["style_share"] = main["share_matching"]
    if (out / "data_ood").exists():
        limit = args.ood_problems
        ood = evaluate_on(args, out / "data_ood", adapters, seed=seed, samples=k, limit=limit)
        found.update(ood_avg=ood["avg_at_k"], ood_greedy=ood["greedy"])
    if args.forgetting:
        capitals = evaluate_on(
            args, CAPITALS, adapters, seed=seed, limit=1000, temperature=0.0, reward=CONTAINS
        )
        found["capitals"] = capitals["greedy"]
    return found


def write_task(args: argparse.Namespace, seed: int, out: Path) -> None:
    """The built-in task's data for one seed: the training set (with --wrong-experts of it
    slipped), clean warm-up rows disjoint from it, valid and test, and a harder test set."""
    n_warm = args.warm_start * 4
    n_train, n_test = args.train_size, max(200, args.test_problems)
    style = getattr(args, "expert_style", "own")
    splits = make_dataset(n_train, 100, n_test, seed, args.difficulty, args.wrong_experts, style)
    # The training draw is one stream without repeats, so a longer draw starts with the
    # same rows: its tail is clean warm-up rows that are not in the training set.
    longer = make_dataset(n_train + n_warm, 100, n_test, seed, args.difficulty)
    folders = {"data": splits, "data_warm": {"train": longer["train"][n_train:]}}
    folders["data_warm"]["valid"] = splits["valid"]
    if args.ood_level:
        # Its own draw of problems: overlap with the training set is possible only where
        # the two levels' problem spaces overlap (they differ in steps or ranges).
        folders["data_ood"] = {"test": make_dataset(0, 0, n_test, seed, args.ood_level)["test"]}
    for name, splits_ in folders.items():
        if name == "data_warm" and not n_warm:
            continue
        (out / name).mkdir(parents=True, exist_ok=True)
        for split, rows in splits_.items():
            with open(out / name / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)


def _series_stats(folder: Path, upto: int | None = None) -> dict:
    """The run's training curves summed up; with `upto`, up to that iteration only."""
    s = read_metrics(folder)
    if upto is not None:
        s = {metric: [(i, v) for i, v in points if i <= upto] for metric, points in s.items()}

    def last(metric):
        return s[metric][-1][1] if s.get(metric) else float("nan")

    def peak(metric):
        return max(v for _, v in s[metric]) if s.get(metric) else float("nan")

    return {
        "val_entropy_first": s["val_entropy"][0][1] if s.get("val_entropy") else float("nan"),
        "val_entropy": last("val_entropy"),
        "max_grad_norm": peak("grad_norm"),
        "kl_to_base": last("kl_to_base"),
        "zero_var_mean": _mean([v for _, v in s.get("zero_var_frac", [])]),
        "reward_sampled_last": last("reward_sampled"),
    }


def _brief(row: dict) -> str:
    shown = ("avg_at_k", "greedy", "ood_avg", "capitals", "val_entropy")
    return ", ".join(f"{k} {row[k]:.3f}" for k in shown if k in row)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def compare(args: argparse.Namespace, seed: int, out: Path) -> dict[str, dict]:
    """Every method (and the base, and the warm start) trained and scored for one seed:
    {row label: numbers}."""
    if args.builtin:
        write_task(args, seed, out)
        args.data = str(out / "data")
    rows: dict[str, dict] = {}
    first = seed == args.seeds_list[0] or not args.warm_start
    if args.eval_samples and args.base and first:
        # With a warm start, the base model only shows what the runs started from and
        # what they must not forget: once is enough.
        rows["base"] = held_out(args, None, seed, out)
        print(f"\nbase (seed {seed}): {_brief(rows['base'])}", flush=True)
    if args.warm_start:
        warm_start(args, seed, out)
        if args.eval_samples and args.base:
            rows["warm start"] = held_out(args, out / "warm-start", seed, out)
            print(f"\nwarm start (seed {seed}): {_brief(rows['warm start'])}", flush=True)
    trained = {m: train_method(m, args, seed, out) for m in args.methods.split(",")}
    print(f"\n=== held-out evaluation (seed {seed}) ===", flush=True)
    for out_ in trained.values():
        # Checkpoints first, in order, then the run. A checkpoint a run of that length
        # already gives (gft@10 beside gft's checkpoint at 10) is the same model: scored once.
        early = out_.get("checkpoints", {}).items()
        scored = {label: ck for label, ck in early if label not in trained}
        for label, folder in out_["runs"].items():
            minutes = out_["minutes"][label]
            scored[label] = {"folder": folder, "adapters": folder, "minutes": minutes}
        for label, s in scored.items():
            row = {**_series_stats(s["folder"], s.get("upto")), "minutes": s["minutes"]}
            row["folder"] = str(s["adapters"])
            if args.eval_samples:
                row.update(held_out(args, s["adapters"], seed, out))
            rows[label] = row
            print(f"{label} (seed {seed}): {_brief(row)}", flush=True)
    # One curve per method: a staged method's stages joined end to end.
    curves = {n: chain_stages(list(o["runs"].values())) for n, o in trained.items()}
    plots(curves, rows, out / "plots")
    return rows


def seed_spread(curves: list[list[float]], metric: str) -> dict:
    """Several seeds' curves (value at k = 1, 2, ...) as one series: their mean, and half
    their range as `<metric>_spread`, which mlx_gft.plots draws as error bars."""
    by_k = list(zip(*curves, strict=True))
    return {
        metric: [(k, statistics.fmean(v)) for k, v in enumerate(by_k, start=1)],
        f"{metric}_spread": [(k, (max(v) - min(v)) / 2) for k, v in enumerate(by_k, start=1)],
    }


def plots(curves: dict, rows: dict[str, dict], folder: Path) -> None:
    passk = {
        label: {"pass_at_k": list(enumerate(r["pass_at"], start=1))}
        for label, r in rows.items()
        if r.get("pass_at")
    }
    try:
        written = plot_runs(curves, folder, PLOTTED)
        written += plot_runs(passk, folder, ["pass_at_k"], xlabel="k (samples per problem)")
    except ImportError as e:
        print(f"No plots: {e}")
        return
    for path in written:
        print(f"Wrote {path}")


COLUMNS = (  # (key, heading, format)
    ("avg_at_k", "avg@{k} T=1", "{:.1%}"),
    ("avg_stderr", "its s.e. over problems", "{:.1%}"),
    ("pass_at_k", "pass@{k}", "{:.1%}"),
    ("greedy", "greedy", "{:.1%}"),
    ("distinct", "distinct answers", "{:.2f}"),
    ("answer_tokens", "answer length, tokens", "{:.1f}"),
    ("style_share", "answers in the expert's style", "{:.1%}"),
    ("ood_avg", "harder problems avg@{k}", "{:.1%}"),
    ("capitals", "capitals (not trained)", "{:.1%}"),
    ("val_entropy", "val entropy, end", "{:.3f}"),
    ("max_grad_norm", "max grad norm", "{:.2f}"),
    ("kl_to_base", "KL to base, end", "{:.1f}"),
    ("zero_var_mean", "zero-var groups", "{:.2f}"),
    ("minutes", "minutes", "{:.1f}"),
)


def _cell(values: list[float], fmt: str) -> str:
    values = [v for v in values if v == v]  # NaN: not measured for this row
    if not values:
        return ""
    if len(values) == 1:
        return fmt.format(values[0])
    spread = (max(values) - min(values)) / 2
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(spread).rstrip('%')}"


def table(per_seed: dict[int, dict[str, dict]], k: int) -> str:
    """One row per run: the value, or over several seeds mean ± half the range."""
    for rows in per_seed.values():
        for r in rows.values():
            if r.get("pass_at"):
                r["pass_at_k"] = r["pass_at"][-1]
    labels = list(next(iter(per_seed.values())))
    used = [
        c for c in COLUMNS if any(c[0] in r for rows in per_seed.values() for r in rows.values())
    ]
    head = "| run | " + " | ".join(h.format(k=k) for _, h, _ in used) + " |"
    lines = [head, "|" + "---|" * (len(used) + 1)]
    for label in labels:
        cells = [
            _cell([rows.get(label, {}).get(key, float("nan")) for rows in per_seed.values()], fmt)
            for key, _, fmt in used
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def family(label: str) -> str | None:
    """'gft' for a GFT run or stage, 'sft' for an SFT-like one (sft, sft-verified, dft);
    None for the rest (base, warm start, anything with GRPO: RL is compared separately).
    A staged run's rows are its stages, labelled 'sft+gft: 2-gft'."""
    method, _, stage = label.partition(": ")
    stages = [stage.partition("-")[2]] if stage else method.partition("@")[0].split("+")
    losses = {s.partition(":")[0] for s in stages}
    if "grpo" in losses:
        return None
    if "gft" in losses:
        return "gft"
    return "sft" if losses <= {"sft", "sft-verified", "dft"} else None


def verdict(per_seed: dict[int, dict[str, dict]], k: int, margin: float = 0.03) -> str:
    """The best GFT-family run against the best SFT-family run on held-out avg@k, said
    plainly: a gap counts only when it is at least `margin` and larger than either run's
    spread over the seeds (half the range), and never on one seed. A run counts only if
    every seed scored it: a mean over fewer seeds is not comparable (--reuse can mix runs
    made with and without --score-every)."""
    best = {}
    for label in next(iter(per_seed.values())):
        found = [r[label] for r in per_seed.values() if "avg_at_k" in r.get(label, {})]
        values = [r["avg_at_k"] for r in found]
        if family(label) and len(values) == len(per_seed):
            mean, spread = statistics.fmean(values), (max(values) - min(values)) / 2
            if family(label) not in best or mean > best[family(label)][1]:
                stderr = found[0].get("avg_stderr", float("nan"))
                best[family(label)] = (label, mean, spread, stderr)
    if len(best) < 2:
        return ""
    (g_label, g, g_spread, g_se), (s_label, s, s_spread, s_se) = best["gft"], best["sft"]
    head = (
        f"Best GFT-family run {g_label}: avg@{k} {g:.1%}; best SFT-family run {s_label}: {s:.1%}."
    )
    gap, noise = g - s, max(g_spread, s_spread)
    if len(per_seed) < 2:
        # One seed has no spread; the metric's own noise still bounds what a gap means.
        chance = 2 * (g_se**2 + s_se**2) ** 0.5
        if chance != chance:
            return f"{head} One seed: nothing to judge a gap by (run --seeds 0,1,2)."
        within = "within" if abs(gap) <= chance else "beyond"
        return (
            f"{head} One seed: the gap ({gap * 100:+.1f} points) is {within} twice the "
            f"standard error of the difference ({chance * 100:.1f}); run --seeds 0,1,2."
        )
    if abs(gap) < margin or abs(gap) <= noise:
        return (
            f"{head} No clear winner: the gap ({gap * 100:+.1f} points) is under "
            f"{margin * 100:.0f} points or within the seeds' spread (±{noise * 100:.1f})."
        )
    winner = "GFT" if gap > 0 else "SFT"
    return f"{head} {winner} ahead by {abs(gap) * 100:.1f} points (spread ±{noise * 100:.1f})."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="the default setting (about 35 min on 2 CPU cores)"
    )
    ap.add_argument("--model", help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--data", help="default: the built-in arithmetic task")
    ap.add_argument(
        "--methods",
        help="losses, a+b for stages, a@N for N iterations, a:option for per-method "
        f"(per-stage) settings ({OPTION_NAMES}) (default: sft,gft; with "
        "wrong answers sft,sft-verified,gft)",
    )
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--learning-rate", type=float, default=3e-5)
    ap.add_argument("--group-size", type=int, default=8, help="GFT/GRPO samples per prompt")
    ap.add_argument("--tau", type=float, default=0.5, help="GFT's DCR threshold")
    ap.add_argument("--num-layers", type=int, default=16, help="LoRA layers, -1 for all")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--test-problems", type=int, default=64)
    ap.add_argument(
        "--score-split",
        choices=("test", "valid"),
        default="test",
        help="the split the main table scores: valid to choose settings (a learning rate) "
        "without looking at the test problems (the built-in task has 100 valid rows)",
    )
    ap.add_argument(
        "--eval-samples", type=int, default=4, help="k of avg@k after training, 0 to skip"
    )
    ap.add_argument(
        "--score-every",
        type=int,
        default=0,
        help="also score each one-stage run's checkpoints every N iterations, to compare "
        "each method at its best step count (e.g. SFT over-fits a small set early)",
    )
    ap.add_argument("--then-grpo", type=int, default=0, help="GRPO iterations after SFT / GFT")
    ap.add_argument(
        "--wrong-experts",
        type=float,
        help="built-in task with this share of training answers wrong (an arithmetic slip); "
        f"default {DEMO_WRONG_EXPERTS} on the built-in task, 0 for clean answers",
    )
    ap.add_argument("--difficulty", type=int, default=DEFAULT_LEVEL, help="built-in task level")
    ap.add_argument(
        "--expert-style",
        choices=STYLES,
        default="own",
        help="built-in task: the training answers' style; 'steps' is off-policy for the model "
        "(numbered steps and \\boxed{}, while the warm start keeps the short 'own' style)",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=64,
        help="new tokens per answer, in training samples and held-out scoring alike",
    )
    ap.add_argument("--train-size", type=int, default=1000, help="built-in training rows")
    ap.add_argument(
        "--ood-level", type=int, default=3, help="harder built-in test problems (0: none)"
    )
    ap.add_argument("--ood-problems", type=int, default=64, help="harder problems scored")
    ap.add_argument(
        "--warm-start", type=int, default=0, help="SFT iterations on other rows before every method"
    )
    ap.add_argument(
        "--no-base",
        dest="base",
        action="store_false",
        help="do not score the starting models (base, warm start)",
    )
    ap.add_argument(
        "--no-forgetting", dest="forgetting", action="store_false", help="skip the capitals check"
    )
    ap.add_argument(
        "--log-completions",
        action="store_true",
        help="each run writes 2 groups per iteration to completions.jsonl (members, rewards, "
        "advantages, per-token weights), for mlx_gft.report's group browser",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", help="comma-separated seeds (overrides --seed), e.g. 0,1,2")
    ap.add_argument("--out", default="why_gft_runs")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep runs an earlier call with the same settings finished in --out, and "
        "their held-out numbers where the scoring settings are the same too (an "
        "interrupted comparison picks up where it stopped; a later call can put runs "
        "of separate calls in one table)",
    )
    args = ap.parse_args()
    args.builtin = not args.data
    if args.wrong_experts is None:
        args.wrong_experts = DEMO_WRONG_EXPERTS if args.builtin else 0.0
    if args.builtin and args.wrong_experts and args.expert_style != "own":
        ap.error("--expert-style steps has no slipped answers: add --wrong-experts 0")
    if not args.builtin and (args.wrong_experts or args.warm_start or args.expert_style != "own"):
        ap.error(
            "--wrong-experts, --warm-start and --expert-style build the built-in task: "
            "leave out --data"
        )
    if not args.builtin:
        args.ood_level = 0
    if args.methods is None:
        args.methods = "sft,sft-verified,gft" if args.wrong_experts else "sft,gft"
    for name in args.methods.split(","):  # a bad option stops here, before data is written
        parse_method(name, args.iters)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    args.seeds_list = seeds
    noisy = f"{args.wrong_experts:.0%} of training answers wrong" if args.builtin else ""
    if noisy:
        print(f"Built-in task, level {args.difficulty}, {args.train_size} rows, {noisy}")

    out_dir = Path(args.out)
    per_seed = {}
    for seed in seeds:
        out = out_dir / f"seed{seed}" if len(seeds) > 1 else out_dir
        per_seed[seed] = compare(args, seed, out)
        # What a run did not measure (an SFT run's zero-variance share) is null, not NaN.
        found = {label: jsonable(r) for label, r in per_seed[seed].items()}
        (out / "summary.json").write_text(json.dumps(found, indent=1))
    summary = table(per_seed, args.eval_samples)
    if len(seeds) > 1:
        summary = f"Seeds {args.seeds}: mean ± half the range\n\n" + summary
        mean_curves = {
            label: seed_spread(
                [r[label]["pass_at"] for r in per_seed.values() if label in r], "pass_at_k"
            )
            for label in per_seed[seeds[0]]
            if per_seed[seeds[0]][label].get("pass_at")
        }
        try:
            plot_runs(
                mean_curves, out_dir / "plots", ["pass_at_k"], xlabel="k (samples per problem)"
            )
        except ImportError:
            pass
    if args.eval_samples:
        summary += "\n\n" + verdict(per_seed, args.eval_samples)
    (out_dir / "summary.md").write_text(summary.rstrip() + "\n")
    if noisy:
        print(f"\nBuilt-in task, level {args.difficulty}, {args.train_size} rows, {noisy}")
    print("\n" + summary)


if __name__ == "__main__":
    main()
