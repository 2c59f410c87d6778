"""Held-out accuracy with a verifier: avg@k (the paper's number), pass@k and greedy.

    python -m mlx_gft.evaluate --model M --adapter-path adapters --samples 4
    python -m mlx_gft.evaluate --model M --data data/ --split valid --limit 50

avg@k is the mean verifier score over k samples per problem, pass@k the fraction of
problems with at least one correct sample, greedy the accuracy of one temperature-0
answer. The numbers, per-problem counts and settings go to a JSON file.
"""

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import rewards as rewards_lib
from .answers import extract_answer
from .checkpoint import write_json
from .config import DefaultsFormatter, add_data_options
from .data import DataError, Example, open_source, read_jsonl, tokenize_rows
from .formats import Features
from .groups import Groups, Member, reward_inputs
from .models import LoadError, load_model
from .progress import Progress
from .sampling import sample_groups


def avg_and_pass_at_k(correct: np.ndarray) -> tuple[float, float]:
    """(avg@k, pass@k) of a (problems, samples) table of correctness (reward > 0).

    avg@k: the mean over every problem and sample; pass@k: the fraction of problems
    with at least one correct sample. NaN for an empty table.
    """
    correct = np.asarray(correct) > 0
    if correct.size == 0:
        return float("nan"), float("nan")
    return float(correct.mean()), float(correct.any(axis=1).mean())


def avg_at_k_stderr(correct: np.ndarray) -> float:
    """The standard error of avg@k over problems: the spread of per-problem accuracy over
    the square root of the number of problems. It is the metric's own noise (which
    problems, which samples): two models scored on the same problems differ by less than
    about twice this only by chance. NaN under two problems."""
    per_problem = (np.asarray(correct) > 0).mean(axis=1) if np.size(correct) else np.zeros(0)
    if per_problem.size < 2:
        return float("nan")
    return float(per_problem.std(ddof=1) / np.sqrt(per_problem.size))


def pass_at_k_curve(correct: np.ndarray) -> list[float]:
    """Unbiased pass@k for k = 1..n (Chen et al. 2021) of a (problems, n samples) table:
    per problem 1 - C(n - c, k) / C(n, k) with c correct samples, averaged over problems.
    pass@n is `avg_and_pass_at_k`'s pass@k; pass@1 is its avg@k."""
    correct = np.asarray(correct) > 0
    if correct.size == 0:
        return []
    n = correct.shape[1]
    c = correct.sum(axis=1)
    curve = []
    for k in range(1, n + 1):
        # C(n - c, k) / C(n, k) as a product, no big binomials: prod_{i=n-c+1..n} (1 - k/i).
        miss = [np.prod(1.0 - k / np.arange(n - ci + 1, n + 1)) if n - ci >= k else 0.0 for ci in c]
        curve.append(float(1.0 - np.mean(miss)))
    return curve


def distinct_answers(texts: list[list[str]]) -> float:
    """Mean number of distinct final answers per problem among its samples (answers as
    the math verifier extracts them; a sample with none counts as one more answer)."""
    if not texts:
        return float("nan")
    counts = [len({extract_answer(t) for t in samples}) for samples in texts]
    return float(np.mean(counts))


def sampled_batches(
    model,
    tokenizer,
    examples: list[Example],
    samples: int,
    max_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
    *,
    top_k: int = 0,
    min_p: float = 0.0,
    max_concurrency: int | None = None,
) -> Iterator[tuple[list[Example], list]]:
    """(examples, their samples) `batch_size` prompts at a time, `samples` per prompt in
    prompt order; each batch's seed depends on its position, so results do not depend on
    how far a caller reads. top_k, min_p and max_concurrency go to `sample_groups`."""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        outs = sample_groups(
            model,
            tokenizer,
            [e.prompt for e in chunk],
            samples,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            min_p=min_p,
            seed=seed + start,
            max_concurrency=max_concurrency,
        )
        yield chunk, outs


@dataclass
class Scored:
    """What score_samples returns: rewards (problems, samples), the texts per problem and
    every sample's length in new tokens (problem-major)."""

    rewards: np.ndarray
    texts: list[list[str]]
    lengths: list[int]


def score_samples(
    model,
    tokenizer,
    examples: list[Example],
    reward: str = "math",
    samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 16,
    *,
    top_k: int = 0,
    min_p: float = 0.0,
    max_concurrency: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Scored:
    """Rewards (problems, samples), the sampled texts and their lengths in tokens,
    `batch_size` prompts at a time; `progress(n)` after each batch of n problems."""
    reward_fns = rewards_lib.load_rewards([reward])
    scores, texts, lengths = [], [], []
    batches = sampled_batches(
        model,
        tokenizer,
        examples,
        samples,
        max_tokens,
        temperature,
        seed,
        batch_size,
        top_k=top_k,
        min_p=min_p,
        max_concurrency=max_concurrency,
    )
    for chunk, outs in batches:
        members = [
            Member(chunk[i // samples].prompt, s.tokens, "sampled", s.text, chunk[i // samples])
            for i, s in enumerate(outs)
        ]
        total, _ = rewards_lib.score(reward_fns, reward_inputs(Groups(members, [])))
        scores.append(total.reshape(len(chunk), samples))
        texts += [[s.text for s in outs[i : i + samples]] for i in range(0, len(outs), samples)]
        lengths += [len(s.tokens) for s in outs]
        if progress is not None:
            progress(len(chunk))
    table = np.concatenate(scores) if scores else np.zeros((0, samples))
    return Scored(table, texts, lengths)


def accuracy(
    model,
    tokenizer,
    examples: list[Example],
    reward: str = "math",
    samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 16,
    *,
    top_k: int = 0,
    min_p: float = 0.0,
    max_concurrency: int | None = None,
    progress: Callable[[int], None] | None = None,
    matching: str | None = None,
) -> dict:
    """Score `samples` answers per prompt; temperature 0 is greedy (then samples = 1).

    Returns n, samples, temperature, top_k, min_p, avg_at_k (and its standard error over
    problems), pass_at_k, `correct` (the number of correct samples of each problem),
    answer_tokens (the samples' mean length) and, given a regular expression `matching`,
    share_matching: the share of samples it finds in (None without one).
    """
    if temperature == 0:
        samples = 1  # greedy answers are all the same
    scored = score_samples(
        model,
        tokenizer,
        examples,
        reward,
        samples,
        temperature,
        max_tokens,
        seed,
        batch_size,
        top_k=top_k,
        min_p=min_p,
        max_concurrency=max_concurrency,
        progress=progress,
    )
    table, texts = scored.rewards, scored.texts
    avg, passed = avg_and_pass_at_k(table)
    flat = [t for problem in texts for t in problem]
    share = None
    if matching is not None and flat:
        share = sum(re.search(matching, t) is not None for t in flat) / len(flat)
    return {
        "n": len(examples),
        "samples": samples,
        "temperature": temperature,
        "top_k": top_k,
        "min_p": min_p,
        "avg_at_k": avg,
        "avg_at_k_stderr": avg_at_k_stderr(table),
        "pass_at_k": passed,
        "pass_at": pass_at_k_curve(table),  # pass@1 .. pass@samples
        "distinct_answers": distinct_answers(texts),
        "correct": [int(c) for c in (table > 0).sum(axis=1)],
        "answer_tokens": float(np.mean(scored.lengths)) if scored.lengths else None,
        "share_matching": share,
    }


# --------------------------------------------------------------------------------------
# Rows for sampling, shared with mlx_gft.distill


def sampling_examples(rows: list[tuple[str, dict]], tokenizer, model) -> list[Example]:
    """Rows as Examples whose chat-templated prompts fit the model's context, in order."""
    examples = tokenize_rows(rows, tokenizer, max_seq_length=sys.maxsize, needs_prompt=True)
    context = getattr(getattr(model, "args", None), "max_position_embeddings", None)
    for ex in examples:
        if context is not None and len(ex.prompt) >= context:
            raise DataError(
                ex.where, f"prompt is {len(ex.prompt)} tokens, the model's context is {context}"
            )
    return examples


def split_rows(
    data: str | None,
    split: str,
    features: Features | None = None,
    dataset_config: str | None = None,
) -> list[tuple[str, dict]]:
    """Validated rows of one split, read as training reads them: a .jsonl file (whatever
    the split), a folder's <split>.jsonl (valid and validation stand for each other, any
    other name is its file: `ood` reads ood.jsonl), a Hub dataset's split (in config
    `dataset_config`), or the built-in task's (data None). `features` names the columns."""
    path = Path(data) if data is not None else None
    if path is not None and path.suffix == ".jsonl" and not path.exists():
        raise DataError(str(path), "no such file")
    if path is not None and path.is_file():
        return read_jsonl(path, features)
    source = open_source(data, dataset_config)
    return source.rows(split, features, hint="; choose one with --split")


# --------------------------------------------------------------------------------------
# The command line


def _with_answers(
    rows: list[tuple[str, dict]], where: str, column: str, log
) -> list[tuple[str, dict]]:
    kept = [(w, r) for w, r in rows if r["answer"] is not None]
    if not kept:
        raise DataError(where, f"no rows with an '{column}' field for the verifier to check")
    if len(kept) < len(rows):
        first = next(w for w, r in rows if r["answer"] is None)
        log(f"Note: skipped {len(rows) - len(kept)} row(s) without an '{column}' (first: {first})")
    return kept


def evaluate(args: argparse.Namespace, log=print) -> dict:
    """Load, sample and score as the command line asks; returns the results written."""
    source = args.data or "<built-in task>"
    features = Features.of(args)
    rows = split_rows(args.data, args.split, features, args.dataset_config)
    if not rows:
        raise DataError(source, f"the {args.split} split is empty")
    if args.reward in rewards_lib.VERIFIERS:
        rows = _with_answers(rows, source, features.answer, log)
    rows = rows[: args.limit] if args.limit else rows
    rewards_lib.load_rewards([args.reward])  # a bad reward fails before the model loads
    model, tokenizer = load_model(args.model, args.adapter_path, args.model_dtype)
    examples = sampling_examples(rows, tokenizer, model)
    common = dict(
        max_tokens=args.max_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        max_concurrency=args.max_concurrency,
    )
    # Truncation is for the k samples only: it never changes the greedy argmax.
    what = "Greedy" if args.temperature == 0 else f"Sampling {args.samples} per problem"
    with Progress(len(examples), what, log) as progress:
        sampled = accuracy(
            model,
            tokenizer,
            examples,
            args.reward,
            args.samples,
            args.temperature,
            top_k=args.top_k,
            min_p=args.min_p,
            progress=progress.update,
            matching=args.share_matching,
            **common,
        )
    if args.temperature == 0:
        greedy = sampled
    else:
        with Progress(len(examples), "Greedy", log) as progress:
            greedy = accuracy(
                model, tokenizer, examples, args.reward, 1, 0.0, progress=progress.update, **common
            )
    return {
        "n": sampled["n"],
        "samples": sampled["samples"],
        "temperature": args.temperature,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "max_concurrency": args.max_concurrency,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "avg_at_k": sampled["avg_at_k"],
        "avg_at_k_stderr": sampled["avg_at_k_stderr"],
        "pass_at_k": sampled["pass_at_k"],
        "pass_at": sampled["pass_at"],
        "distinct_answers": sampled["distinct_answers"],
        "greedy": greedy["avg_at_k"],
        "answer_tokens": sampled["answer_tokens"],
        "share_matching": sampled["share_matching"],
        "matching": args.share_matching,
        "correct": sampled["correct"],
        "greedy_correct": greedy["correct"],
        "reward": args.reward,
        "model": args.model,
        "adapter_path": args.adapter_path,
        "data": args.data,
        "dataset_config": args.dataset_config,
        "split": args.split,
    }


def format_table(result: dict) -> str:
    k, t = result["samples"], result["temperature"]
    setting = f"T={t:g}"
    # Only truncation that is on: the default table reads as it always has.
    if result.get("top_k"):
        setting += f", top-k {result['top_k']}"
    if result.get("min_p"):
        setting += f", min-p {result['min_p']:g}"
    lines = [
        f"{'problems':<10}{result['n']}",
        f"{f'avg@{k}':<10}{result['avg_at_k']:.3f}  (mean over {k} samples at {setting}; "
        f"standard error over problems {result['avg_at_k_stderr']:.3f})",
        f"{f'pass@{k}':<10}{result['pass_at_k']:.3f}  (any of {k} correct)",
        f"{'pass@1..':<10}{' '.join(f'{p:.3f}' for p in result['pass_at'])}  (unbiased)",
        f"{'distinct':<10}{result['distinct_answers']:.2f}  (final answers per problem)",
        f"{'greedy':<10}{result['greedy']:.3f}  (T=0, one answer)",
    ]
    if result.get("answer_tokens") is not None:
        lines.append(f"{'length':<10}{result['answer_tokens']:.1f}  (new tokens per sample, mean)")
    if result.get("share_matching") is not None:
        lines.append(
            f"{'matching':<10}{result['share_matching']:.3f}  "
            f"(share of samples with /{result['matching']}/)"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx_gft.evaluate",
        description="Verifier accuracy on held-out problems: avg@k, pass@k and greedy.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument(
        "--model",
        help="Hub id, mlx-lm folder or .gguf file (unset: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--model-dtype",
        help="for .gguf models: float32, bfloat16, float16 or keep-quantized (unset: float32 "
        "on a CPU, keep-quantized on Apple silicon)",
    )
    p.add_argument("--adapter-path", help="folder with adapters.safetensors + adapter_config")
    p.add_argument(
        "--data", help="folder with <split>.jsonl, a .jsonl file or Hub dataset (default: built-in)"
    )
    p.add_argument(
        "--split",
        default="test",
        help="which split: train, valid (or validation), test, or any other <split>.jsonl in "
        "the folder, e.g. ood (default: test)",
    )
    add_data_options(p)  # --prompt-feature ... as training reads the rows
    p.add_argument("--limit", type=int, help="only the first N problems (unset: all)")
    p.add_argument("--samples", type=int, default=4, help="k samples per problem")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="for the k samples (greedy is also scored)"
    )
    p.add_argument("--top-k", type=int, default=0, help="sampling top-k (default: 0, off)")
    p.add_argument("--min-p", type=float, default=0.0, help="sampling min-p (default: 0.0, off)")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per answer")
    p.add_argument("--reward", default="math", help="verifier (default: math) or file.py:fn")
    p.add_argument(
        "--share-matching",
        metavar="REGEX",
        help="also report the share of samples this regular expression finds in (a format or "
        "style, e.g. 'boxed')",
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts sampled together")
    p.add_argument(
        "--max-concurrency",
        type=int,
        help="most samples decoded at once, to bound memory; the samples do not change "
        "(default: all of a batch, batch-size x samples)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the samples' random draws")
    p.add_argument("--output", help="JSON file (default: <adapter-path or .>/eval_results.json)")
    return p


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("samples", "max_tokens", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.share_matching is not None:
        try:
            re.compile(args.share_matching)
        except re.error as e:
            parser.error(f"--share-matching: not a regular expression: {e}")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        parser.error("--temperature must be >= 0")
    check_sampling_options(parser, args)


def check_sampling_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--top-k, --min-p and --max-concurrency, shared with mlx_gft.distill."""
    if args.top_k < 0:
        parser.error("--top-k must be >= 0 (0 = off)")
    if not 0.0 <= args.min_p < 1.0:
        parser.error("--min-p must be in [0, 1) (0 = off)")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        parser.error("--max-concurrency must be at least 1")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        result = evaluate(args)
    except (DataError, rewards_lib.RewardError, LoadError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    output = Path(args.output or Path(args.adapter_path or ".") / "eval_results.json")
    write_json(output, result, indent=2)
    print(format_table(result))
    print(f"Results written to {output}")


if __name__ == "__main__":
    main()
