"""Turn GSM8K into an mlx_gft data folder (train.jsonl, valid.jsonl, test.jsonl).

GSM8K rows are ``{"question": ..., "answer": "<worked solution>\\n#### 42"}``, with
calculator annotations like ``<<48/2=24>>`` inside the solution. Each output row has
``prompt`` (the question, plus --instruction if given), ``completion`` (the solution
without annotations, ending with ``#### 42``) and ``answer`` (``42``, for the verifier).

    # from the JSONL files of the openai/gsm8k dataset (main/train.jsonl, main/test.jsonl)
    python examples/prepare_gsm8k.py --train train.jsonl --test test.jsonl --out data
    # straight from the Hugging Face Hub (needs `pip install datasets`)
    python examples/prepare_gsm8k.py --hub openai/gsm8k --out data
    # a quick random subset: 500 training problems (valid is cut from them), 500 test ones
    python examples/prepare_gsm8k.py --hub openai/gsm8k --limit 500 --out data

valid.jsonl is a random --valid-fraction of the training rows. Without a test set
(--test or the Hub's test split), test.jsonl is cut from the training rows too
(--test-fraction). A malformed row stops the script with its file:line.
"""

import argparse
import json
import random
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from mlx_gft.data import DataError, raw_rows

ANNOTATION = re.compile(r"<<[^<>]*>>")
NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
SUGGESTED_INSTRUCTION = "Solve step by step, then give the final answer as '#### <number>'."


class GSM8KError(ValueError):
    """A row that cannot be converted, named by file:line."""


def convert_row(row: object, where: str, instruction: str = "") -> dict[str, str]:
    """One GSM8K row as ``{"prompt", "completion", "answer"}``; raises GSM8KError."""
    if not isinstance(row, dict):
        raise GSM8KError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise GSM8KError(f"{where}: field '{key}' is missing or not a non-empty string")
    if "####" not in row["answer"]:
        raise GSM8KError(f"{where}: field 'answer' has no '#### <final answer>' line")
    solution, final = row["answer"].rsplit("####", 1)
    # The verifier's ground truth is a bare number: no thousands separators or "$".
    final = final.strip().replace(",", "").lstrip("$")
    if not NUMBER.fullmatch(final):
        raise GSM8KError(f"{where}: the final answer after '####' is not a number: {final!r}")
    solution = ANNOTATION.sub("", solution).strip()
    prompt = row["question"].strip()
    if instruction:
        prompt = f"{prompt}\n{instruction}"
    completion = f"{solution}\n#### {final}" if solution else f"#### {final}"
    return {"prompt": prompt, "completion": completion, "answer": final}


def read_gsm8k(path: Path, instruction: str = "") -> list[dict[str, str]]:
    """Every row of a GSM8K JSONL file, converted; the first bad line raises GSM8KError."""
    try:
        raw = raw_rows(path)  # mlx_gft's JSONL walk: bad UTF-8 or JSON named by file:line
    except DataError as e:
        raise GSM8KError(str(e)) from None
    return [convert_row(row, where, instruction) for where, row in raw]


def read_hub(dataset: str, config: str, split: str, instruction: str = "") -> list[dict] | None:
    """A split of a Hub dataset in GSM8K's format; None when the dataset has no such split."""
    try:
        import datasets
    except ImportError:
        raise GSM8KError(f"--hub {dataset}: needs `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(dataset, config, split=split)
    except ValueError:  # datasets raises ValueError for an unknown split
        return None
    return [
        convert_row(dict(row), f"{dataset}[{split}]:{i + 1}", instruction)
        for i, row in enumerate(ds)
    ]


def take(rows: list[dict], limit: int | None, rng: random.Random) -> list[dict]:
    """A shuffled copy of rows, at most `limit` long (a random subset, not the first N)."""
    rows = list(rows)
    rng.shuffle(rows)
    return rows if limit is None else rows[:limit]


def cut(rows: list[dict], fraction: float, name: str) -> tuple[list[dict], list[dict]]:
    """(rest, piece): piece is round(fraction * len(rows)) rows, at least 1 if fraction > 0."""
    n = round(fraction * len(rows))
    if fraction > 0:
        n = max(n, 1)
    if n >= len(rows):
        raise GSM8KError(
            f"{name} fraction {fraction} of {len(rows)} training rows leaves none to train on"
        )
    return rows[n:], rows[:n]


def make_splits(
    train: list[dict],
    test: list[dict] | None,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Shuffle, subsample (at most `limit` rows of each input) and split converted rows
    into train / valid / test; with no test rows given, test is cut from train."""
    rng = random.Random(seed)
    train = take(train, limit, rng)
    if test is not None:
        test = take(test, limit, rng)
    else:
        train, test = cut(train, test_fraction, "test")
    train, valid = cut(train, valid_fraction, "valid")
    return {"train": train, "valid": valid, "test": test}


def write_splits(splits: dict[str, list[dict]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_files(paths: Iterable[Path], instruction: str) -> list[dict]:
    return [row for path in paths for row in read_gsm8k(path, instruction)]


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--train", nargs="+", type=Path, metavar="FILE", help="GSM8K JSONL")
    source.add_argument("--hub", metavar="ID", help="Hub dataset, e.g. openai/gsm8k")
    p.add_argument("--test", nargs="+", type=Path, metavar="FILE", help="held-out GSM8K JSONL")
    p.add_argument("--hub-config", default="main", help="Hub dataset config (default: main)")
    p.add_argument("--out", type=Path, default=Path("data"), help="output folder (data)")
    p.add_argument("--valid-fraction", type=fraction, default=0.05, help="of train (0.05)")
    p.add_argument(
        "--test-fraction", type=fraction, default=0.05, help="of train, without a test set"
    )
    p.add_argument("--limit", type=positive, help="at most N rows of train and of test")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (0)")
    p.add_argument(
        "--instruction",
        default="",
        help=f"text added after each question, e.g. {SUGGESTED_INSTRUCTION!r}",
    )
    args = p.parse_args(argv)
    if args.hub and args.test:
        p.error("--test goes with --train; --hub reads the dataset's own test split")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.hub:
            train = read_hub(args.hub, args.hub_config, "train", args.instruction)
            test = read_hub(args.hub, args.hub_config, "test", args.instruction)
        else:
            train = read_files(args.train, args.instruction)
            test = read_files(args.test, args.instruction) if args.test else None
        if not train:
            raise GSM8KError("no training rows")
        if test == []:
            raise GSM8KError("the --test files hold no rows")
        splits = make_splits(
            train, test, args.valid_fraction, args.test_fraction, args.limit, args.seed
        )
    except (GSM8KError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_splits(splits, args.out)
    sizes = ", ".join(f"{name}.jsonl {len(rows)}" for name, rows in splits.items())
    print(f"wrote {args.out}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
