"""Teacher answers for GFT groups: sample a stronger model and write a new dataset folder.

    python -m mlx_gft.distill --teacher M --data data/ --num-responses 4 --keep-correct
    python -m mlx_gft.distill --teacher M --teacher-adapter-path adapters/ ...  # M + LoRA

The data is read as training reads it: a folder of `<split>.jsonl` files (valid.jsonl or
validation.jsonl, and any other split such as ood.jsonl), a Hub dataset
(`--dataset-config` for its config), or the built-in task; every row form, with the same
`--*-feature` column options. Every row of the chosen splits (`--splits`, default train
and valid) is copied unchanged with `teacher_responses` added: the row's existing teacher
answers (`teacher_responses` or `responses`) followed by the teacher's new samples, drawn
from the same chat-templated prompt training samples from. `--keep-correct` keeps only
the samples the math verifier accepts against the row's answer. The other splits (test,
by default) are copied as they are, each under its own name, so the output is a complete
dataset for `python -m mlx_gft.lora --data OUT`.
"""

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from . import rewards as rewards_lib
from .checkpoint import write_jsonl
from .config import DefaultsFormatter, add_data_options
from .data import DataError, Source, open_source, parse_row, raw_rows
from .evaluate import check_sampling_options, sampled_batches, sampling_examples
from .formats import Features
from .models import LoadError, load_model
from .progress import Progress


@dataclass
class SplitStats:
    rows: int = 0
    sampled: int = 0
    written: int = 0
    truncated: int = 0  # samples cut off by --max-tokens
    empty_rows: int = 0  # rows left with no new response (--keep-correct)


# What --splits means when it is not given: the splits training learns from.
DEFAULT_SPLITS = ("train", "valid")


def chosen_splits(source: Source, splits: str | None, log=print) -> list[str]:
    """The source's names of the splits to distill (`validation` for valid, say). Each
    split --splits names must be there; by default train and valid, those there are."""
    if splits is not None:
        hint = "; name splits that exist with --splits"
        missing = next((s for s in splits.split(",") if s and not source.name_of(s)), None)
        if missing is not None:
            raise source.missing(missing, hint)
        return list(dict.fromkeys(source.name_of(s) for s in splits.split(",") if s))
    chosen = []
    for split in DEFAULT_SPLITS:
        name = source.name_of(split)
        if name is None:
            log(f"Note: no {split} split to distill in {source.label} (found: {source.found()})")
        else:
            chosen.append(name)
    if not chosen:
        raise DataError(
            source.label,
            f"no train or valid split to distill (found: {source.found()}); name the splits "
            "to distill with --splits",
        )
    return chosen


def existing_responses(row: dict) -> list[str]:
    key = "teacher_responses" if "teacher_responses" in row else "responses"
    return list(row.get(key, []))


def distill_split(
    model,
    tokenizer,
    rows: list[tuple[str, dict]],
    num_responses: int,
    keep_correct: bool = False,
    temperature: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 8,
    *,
    top_k: int = 0,
    min_p: float = 0.0,
    max_concurrency: int | None = None,
    progress: Callable[[int], None] | None = None,
    features: Features | None = None,
) -> tuple[list[dict], SplitStats]:
    """The rows with the teacher's answers added, in the same order, and counts.

    top_k and min_p truncate the teacher's sampling; max_concurrency caps the samples
    decoded at once (memory) without changing them. `progress(n)` after each batch of
    n rows. `features` names the rows' columns, as training's options do.
    """
    parsed = [(where, parse_row(row, where, features)) for where, row in rows]
    if keep_correct:
        require_answers(parsed)
    examples = sampling_examples(parsed, tokenizer, model)
    stats, out = SplitStats(rows=len(rows)), []
    batches = sampled_batches(
        model,
        tokenizer,
        examples,
        num_responses,
        max_tokens,
        temperature,
        seed,
        batch_size,
        top_k=top_k,
        min_p=min_p,
        max_concurrency=max_concurrency,
    )
    for chunk, samples in batches:
        for i, ex in enumerate(chunk):
            group = samples[i * num_responses : (i + 1) * num_responses]
            stats.truncated += sum(s.finish_reason == "length" for s in group)
            texts = [s.text for s in group]
            if keep_correct:
                texts = [t for t in texts if is_correct(ex.prompt_text, t, ex.answer)]
            stats.sampled += len(group)
            stats.written += len(texts)
            stats.empty_rows += not texts
            row = dict(rows[len(out)][1])  # one output row per input row, in order
            row["teacher_responses"] = existing_responses(row) + texts
            out.append(row)
        if progress is not None:
            progress(len(chunk))
    return out, stats


def require_answers(parsed: list[tuple[str, dict]]) -> None:
    for where, row in parsed:
        if row["answer"] is None:
            column = row["features"].answer
            raise DataError(
                f"{where}: field '{column}'", "missing; --keep-correct checks against it"
            )


def is_correct(prompt: str, completion: str, answer: str) -> bool:
    return rewards_lib.math_reward(prompt=prompt, completion=completion, answer=answer) > 0


def summary_line(split: str, stats: SplitStats) -> str:
    kept = stats.written / stats.sampled if stats.sampled else float("nan")
    line = (
        f"{split}: {stats.rows} rows, {stats.written} responses written "
        f"of {stats.sampled} sampled (kept {kept:.1%})"
    )
    if stats.truncated:
        line += f", {stats.truncated} hit --max-tokens"
    if stats.empty_rows:
        line += f", {stats.empty_rows} row(s) got none"
    return line


def one_file(path: Path, splits: str | None) -> Source:
    """One .jsonl file is one split, distilled into <output>/train.jsonl: the folder
    training reads."""
    if not path.is_file():
        raise DataError(str(path), "no such file")
    if splits not in (None, "train"):
        raise DataError(str(path), "one .jsonl file is the train split; leave out --splits")
    return Source(str(path), {"train": partial(raw_rows, path)})


def distill(args: argparse.Namespace, log=print) -> dict[str, SplitStats]:
    """Run the command line's job; returns the counts of every distilled split, by the
    names the data gives them."""
    out_dir = Path(args.output)
    if args.data is not None and Path(args.data).is_dir():
        if out_dir.resolve() == Path(args.data).resolve():
            raise DataError(args.output, "--output is the input folder; choose another")
    splits = args.splits
    if args.data is not None and args.data.endswith(".jsonl"):
        source, splits = one_file(Path(args.data), splits), "train"
        log(f"Distilling {args.data} as the train split: {out_dir / 'train.jsonl'}")
    else:
        source = open_source(args.data, args.dataset_config)
    features = None if source.own_columns else Features.of(args)
    splits = chosen_splits(source, splits, log)
    # Every row is read, and every row to distill checked, before the (slow) model load.
    rows = {name: read() for name, read in source.readers.items()}
    if not any(rows[name] for name in splits):
        raise DataError(source.label, f"no rows in the splits {', '.join(splits)}")
    for name in splits:
        checked = [(where, parse_row(row, where, features)) for where, row in rows[name]]
        if args.keep_correct:
            require_answers(checked)
    if args.temperature == 0 and args.num_responses > 1:
        log("Note: --temperature 0 gives the same answer every time")
    adapters = f" with adapters {args.teacher_adapter_path}" if args.teacher_adapter_path else ""
    log(f"Loading teacher {args.teacher}{adapters}")
    model, tokenizer = load_model(args.teacher, args.teacher_adapter_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = {}
    for split in [*splits, *(name for name in rows if name not in splits)]:
        if not rows[split]:
            continue
        if split in splits:
            with Progress(len(rows[split]), f"Distilling {split}", log, unit="rows") as progress:
                new, stats[split] = distill_split(
                    model,
                    tokenizer,
                    rows[split],
                    args.num_responses,
                    args.keep_correct,
                    args.temperature,
                    args.max_tokens,
                    args.seed,
                    args.batch_size,
                    top_k=args.top_k,
                    min_p=args.min_p,
                    max_concurrency=args.max_concurrency,
                    progress=progress.update,
                    features=features,
                )
            log(summary_line(split, stats[split]))
        else:
            new = [row for _, row in rows[split]]
            log(f"{split}: {len(new)} rows copied unchanged")
        write_jsonl(out_dir / f"{split}.jsonl", new)
    log(f"Wrote {out_dir}")
    return stats


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx_gft.distill",
        description="Add teacher-model answers (teacher_responses) to a dataset for GFT.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--teacher", required=True, help="Hub id, mlx-lm folder or .gguf file")
    p.add_argument(
        "--teacher-adapter-path",
        help="LoRA/DoRA adapters on the teacher (a folder mlx_gft.lora or mlx_lm.lora wrote)",
    )
    p.add_argument(
        "--data",
        help="folder with train/valid/test.jsonl (and any other <split>.jsonl), one .jsonl file "
        "(written as <output>/train.jsonl) or Hub dataset (default: built-in task)",
    )
    p.add_argument("--num-responses", type=int, required=True, help="samples per prompt")
    p.add_argument(
        "--keep-correct", action="store_true", help="keep only answers the math verifier accepts"
    )
    p.add_argument("--temperature", type=float, default=1.0, help="the teacher's sampling")
    p.add_argument("--top-k", type=int, default=0, help="sampling top-k (default: 0, off)")
    p.add_argument("--min-p", type=float, default=0.0, help="sampling min-p (default: 0.0, off)")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per answer")
    p.add_argument("--output", help="new dataset folder (default: <data>-distilled)")
    p.add_argument(
        "--splits",
        help="splits to distill, comma-separated, e.g. train,validation,ood; the others are "
        "copied (default: train,valid, those there are)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="prompts sampled together")
    p.add_argument(
        "--max-concurrency",
        type=int,
        help="most teacher samples decoded at once, to bound memory; the samples do not "
        "change (default: all of a batch, batch-size x num-responses)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the teacher's random draws")
    add_data_options(p)  # --prompt-feature ... as training reads the rows
    return p


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("num_responses", "max_tokens", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not (args.temperature >= 0 and math.isfinite(args.temperature)):
        parser.error("--temperature must be >= 0")
    check_sampling_options(parser, args)
    if args.splits is not None and not args.splits.strip(","):
        parser.error("--splits: name at least one split, comma-separated (train,valid)")
    if args.output is None:
        args.output = default_output(args.data)


def default_output(data: str | None) -> str:
    """data-distilled next to a folder; for a Hub dataset (user/name) name-distilled here."""
    if data is None:
        return "distilled"
    if Path(data).is_dir():
        return f"{data.rstrip('/')}-distilled"
    if data.endswith(".jsonl"):  # prompts.jsonl -> prompts-distilled/train.jsonl beside it
        return f"{data.removesuffix('.jsonl')}-distilled"
    return f"{data.rstrip('/').rsplit('/', 1)[-1]}-distilled"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        distill(args)
    except (DataError, LoadError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
