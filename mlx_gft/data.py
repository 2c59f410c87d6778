"""Datasets: read JSONL (or a Hub dataset), validate every row, tokenize prompts and answers.

The row formats (mlx_lm's and TRL's, column names per the `*_feature` options) are in
`formats`. A split is `<split>.jsonl` in a folder (`valid` may be `validation.jsonl`) or
the Hub dataset's split of that name (`valid` or `validation`). GFT extras: `answer`
(ground truth for a verifier) and `teacher_responses` (or `responses`), a list of further
expert-quality answers. Every answer is tokenized exactly as the chat template lays it
out after the prompt and ends with the EOS token, which is trained.
"""

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .formats import DataError, Features, parse_row

if TYPE_CHECKING:
    from .methods import Method

SPLITS = ("train", "valid", "test")
# The names a split may have in a folder or on the Hub; the first one found is read.
SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation"), "test": ("test",)}
SET_NAMES = {"train": "training set", "valid": "validation set", "test": "test set"}


@dataclass
class Example:
    prompt: list[int]  # prompt tokens, chat template with the generation prompt
    expert: list[int]  # expert answer tokens, ending with EOS; [] for a prompt-only row
    teachers: list[list[int]] = field(default_factory=list)
    prompt_text: str = ""
    prompt_messages: list[dict] | None = None  # the chat before the answer, for chat rows
    expert_text: str = ""
    teacher_texts: list[str] = field(default_factory=list)
    answer: str | None = None
    expert_truncated: bool = False
    columns: dict[str, Any] = field(default_factory=dict)  # extra columns, passed to rewards
    where: str = ""  # file:line, for errors found after loading


def has_answers(examples: list[Example]) -> bool:
    """Every example has a reference answer, so a verifier can grade its samples."""
    return all(e.answer is not None for e in examples)


def raw_rows(path: Path) -> list[tuple[str, Any]]:
    """(file:line, parsed JSON value) for every non-blank line of a JSONL file; bad UTF-8
    or JSON is a DataError at its file:line. The rows' shape is not checked here."""
    rows = []
    raw = path.read_bytes()
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of the first row.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}", f"not valid UTF-8 ({e.reason})") from None
    # Only "\n" ends a row: str.splitlines() would also split on U+2028 and other
    # separators JSON allows unescaped inside strings, and miscount lines.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            rows.append((where, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(where, f"malformed JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # too deeply nested, huge integers
            raise DataError(where, f"unreadable JSON ({type(e).__name__}: {e})") from None
    return rows


def read_jsonl(path: Path, features: Features | None = None) -> list[tuple[str, dict]]:
    """Parse and validate every line of a JSONL file before anything is tokenized."""
    return [(where, parse_row(row, where, features)) for where, row in raw_rows(path)]


def _eos_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _template(tokenizer, messages: list[dict], tools: list | None, **kwargs) -> list[int]:
    if tools:  # only when given: not every chat template function takes the argument
        kwargs["tools"] = tools
    return list(tokenizer.apply_chat_template(messages, **kwargs))


def prompt_tokens(tokenizer, messages: list[dict], tools: list | None = None) -> list[int]:
    if getattr(tokenizer, "has_chat_template", False):
        return _template(tokenizer, messages, tools, add_generation_prompt=True)
    return tokenizer.encode("\n".join(m.get("content", "") for m in messages))


def response_tokens(
    tokenizer, messages: list[dict], prompt: list[int], text: str, tools: list | None = None
) -> list[int]:
    """The answer's tokens as the chat template lays them after `prompt`, cut after EOS.

    Templates often add a newline after the end-of-turn token; a sample stops at EOS, so
    the expert must too, or the two would be trained on different endings.
    """
    eos = _eos_ids(tokenizer)
    tokens: list[int] | None = None
    if getattr(tokenizer, "has_chat_template", False):
        answer = {"role": "assistant", "content": text}
        full = _template(tokenizer, messages + [answer], tools)
        if full[: len(prompt)] == prompt:
            tokens = full[len(prompt) :]
    if tokens is None:
        tokens = tokenizer.encode(text, add_special_tokens=False)
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens + [tokenizer.eos_token_id]


def _features(row: dict) -> Features:
    return row.get("features") or Features()


def _text_row_error(where: str, row: dict, why: str) -> DataError:
    return DataError(
        f"{where}: field '{_features(row).text}'",
        f"a text row has no prompt to sample answers for{why}; use prompt/completion or "
        "chat rows (or --loss sft)",
    )


def _example(where: str, row: dict, tokenizer, needs_prompt: bool) -> Example:
    """One validated row, tokenized (before any length check)."""
    if row["text"] is not None:
        if needs_prompt:
            raise _text_row_error(where, row, "")
        expert = tokenizer.encode(row["text"]) + [tokenizer.eos_token_id]
        return Example(prompt=[], expert=expert, expert_text=row["text"], where=where)
    messages, tools, response = row["messages"], row.get("tools"), row["response"]
    prompt = prompt_tokens(tokenizer, messages, tools)

    def answer(text: str) -> list[int]:
        return response_tokens(tokenizer, messages, prompt, text, tools)

    return Example(
        prompt=prompt,
        expert=answer(response) if response is not None else [],
        teachers=[answer(t) for t in row["teachers"]],
        prompt_text=messages[-1].get("content", "") if messages else "",
        prompt_messages=messages if row.get("conversational") else None,
        expert_text=response or "",
        teacher_texts=row["teachers"],
        answer=row["answer"],
        columns=row["columns"],
        where=where,
    )


def tokenize_rows(
    rows: list[tuple[str, dict]],
    tokenizer,
    max_seq_length: int,
    needs_prompt: bool,
    long_prompts: str = "error",
    log=print,
) -> list[Example]:
    """Tokenize validated rows. A row longer than `max_seq_length` is an error, or per
    `long_prompts` is skipped or truncated: a prompt to its last max_seq_length // 2
    tokens (the end of a chat prompt holds the question and the assistant header), an
    expert answer to the room left (SFT trains on the cut answer, as mlx_lm.lora does;
    GFT leaves it out of the group, where the verifier would score its lost ending).
    Teacher answers longer than the room are dropped with their texts."""
    examples, long, long_answers = [], [], []
    for where, row in rows:
        ex = _example(where, row, tokenizer, needs_prompt)
        prompt = ex.prompt
        if len(prompt) >= max_seq_length:
            long.append((where, len(prompt)))
            if long_prompts == "error":
                raise DataError(
                    where,
                    f"prompt is {len(prompt)} tokens, not shorter than --max-seq-length "
                    f"{max_seq_length} (or pass --long-prompts skip|truncate)",
                )
            if long_prompts == "skip":
                continue
            prompt = ex.prompt = prompt[-(max_seq_length // 2) :]
        room = max_seq_length - len(prompt)
        if len(ex.expert) > room:
            long_answers.append((where, len(prompt) + len(ex.expert)))
            if long_prompts == "error":
                raise DataError(
                    where,
                    f"prompt + answer is {len(prompt) + len(ex.expert)} tokens, longer than "
                    f"--max-seq-length {max_seq_length} (or pass --long-prompts skip|truncate)",
                )
            if long_prompts == "skip":
                continue
            ex.expert, ex.expert_truncated = ex.expert[:room], True
        kept = [
            (t, text)
            for t, text in zip(ex.teachers, ex.teacher_texts, strict=True)
            if len(t) <= room
        ]
        ex.teachers, ex.teacher_texts = [t for t, _ in kept], [text for _, text in kept]
        examples.append(ex)
    skipped = long_prompts == "skip"
    if long:
        action = "skipped" if skipped else f"cut to {max_seq_length // 2} tokens"
        log(
            f"Warning: {len(long)} prompt(s) not shorter than --max-seq-length {max_seq_length} "
            f"{action} (first: {long[0][0]}, {long[0][1]} tokens)"
        )
    if long_answers:
        action = (
            "skipped" if skipped else "answers cut (SFT/DFT train on the cut; GFT leaves it out)"
        )
        log(
            f"Warning: {len(long_answers)} row(s) longer than --max-seq-length "
            f"{max_seq_length}: {action} (first: {long_answers[0][0]}, "
            f"{long_answers[0][1]} tokens)"
        )
    return examples


def check_answers_consistent(rows: list[tuple[str, dict]], verifier: str | None = None) -> None:
    """Before the model loads. With a verifier reward every row needs its `answer`;
    with the default reward, rows with `answer` and rows without it in one split would
    silently make it token F1 for the whole run. Stop, naming the first row without."""
    having = [where for where, row in rows if row.get("answer") is not None]
    missing = [(where, row) for where, row in rows if row.get("answer") is None]
    if not missing:
        return
    where, row = missing[0]
    key = _features(row).answer
    if verifier:
        raise DataError(
            f"{where}: field '{key}'",
            f"missing; the {verifier!r} reward needs the ground truth of every row",
        )
    if having:
        raise DataError(
            f"{where}: field '{key}'",
            f"missing, but {len(having)} other row(s) have it (first: {having[0]}); give "
            "every row its ground-truth answer, or none (then the reward is token F1)",
        )


def check_method_rows(
    splits: Mapping[str, list[tuple[str, dict]]], method: "Method", reward: list[str] | None
) -> None:
    """Before the model loads: every row has what `method` needs. Sampling needs a prompt
    (no `text` row in any split); in the training set SFT/DFT need the expert answer,
    GFT's group an expert or teacher answer, and the default reward (token F1 against
    the expert answer) an expert or an `answer` to compare with."""
    for split, rows in splits.items():
        for where, row in rows:
            if row["text"] is not None and method.samples:
                raise _text_row_error(where, row, f" (--loss {method.name} samples answers)")
            if split == "train" and row["text"] is None and row["response"] is None:
                _check_prompt_only(where, row, method, reward)


def _check_prompt_only(where: str, row: dict, method: "Method", reward: list[str] | None) -> None:
    f = _features(row)
    missing = f"has '{f.prompt}' but no '{f.completion}'"
    if not method.samples:
        raise DataError(
            where,
            f"{missing}: --loss {method.name} trains on the expert answer; train prompt-only "
            "rows with --loss grpo (or gft with teacher answers)",
        )
    if method.expert_in_group and not row["teachers"]:
        raise DataError(
            where,
            f"{missing} nor teacher answers ('teacher_responses'): --loss {method.name} learns "
            "from an expert or teacher answer in each group; train prompt-only rows with "
            "--loss grpo, or add teacher answers with python -m mlx_gft.distill",
        )
    if not reward and row["answer"] is None:
        raise DataError(
            where,
            f"{missing} nor '{f.answer}': the default reward (token F1 against the expert "
            f"answer) has nothing to compare with; add the '{f.answer}' column or pass --reward",
        )


def _parsed(rows: Iterable[Any], label: str, features: Features | None) -> list[tuple[str, dict]]:
    return [(f"{label}:{i}", parse_row(r, f"{label}:{i}", features)) for i, r in enumerate(rows, 1)]


def _hub_rows(data_id: str) -> Mapping[str, Sequence[Any]]:
    """Every split of a Hub dataset by name, as mlx_lm loads it: the one call that goes
    to the network (tests replace it)."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            data_id, "not a local folder; loading a Hub dataset needs `pip install datasets`"
        ) from None
    try:
        return datasets.load_dataset(data_id)
    except Exception as e:  # not found, offline, needs a config name: an error, no traceback
        raise DataError(
            data_id, f"no such folder, and no Hub dataset loads ({type(e).__name__}: {e})"
        ) from e


def _split_names(available: list[str]) -> dict[str, str | None]:
    """{split: its name among `available` (train, valid or validation, test), or None}."""
    return {s: next((n for n in SPLIT_NAMES[s] if n in available), None) for s in SPLITS}


def _missing(split: str, available: list[str]) -> str:
    return f"the {SET_NAMES[split]} is missing (found: {', '.join(available) or 'nothing'})"


def _hub_splits(data_id: str, features: Features | None, need: Sequence[str]) -> dict:
    found = _hub_rows(data_id)
    names = _split_names(list(found))
    for split in need:
        if names[split] is None:
            raise DataError(data_id, f"no '{split}' split: {_missing(split, list(found))}")
    # A Hub row is a dict of its split's columns: checked like a JSON row.
    return {
        s: _parsed(found[n], f"{data_id}[{n}]", features) if n else [] for s, n in names.items()
    }


def _folder_splits(folder: Path, features: Features | None, need: Sequence[str]) -> dict:
    found = sorted(p.name for p in folder.glob("*.jsonl") if p.is_file())
    names = _split_names([name.removesuffix(".jsonl") for name in found])
    for split in need:
        if names[split] is None:
            raise DataError(str(folder / f"{split}.jsonl"), f"not found: {_missing(split, found)}")
    return {s: read_jsonl(folder / f"{n}.jsonl", features) if n else [] for s, n in names.items()}


def load_splits(
    data: str | None,
    *,
    features: Features | None = None,
    need: Sequence[str] = (),
    **task_kwargs: Any,
) -> dict[str, list[tuple[str, dict]]]:
    """Validated rows of each split: a local folder, a Hub dataset id, or the built-in
    task. `features` names the columns; a split in `need` that is absent is an error
    that says which splits there are."""
    if data is None:
        from .tasks import arithmetic

        return {
            split: _parsed(rows, f"<built-in task>[{split}]", None)
            for split, rows in arithmetic.make_dataset(**task_kwargs).items()
        }
    path = Path(data)
    if path.is_file():
        raise DataError(data, "expected a folder with train.jsonl / valid.jsonl / test.jsonl")
    if path.is_dir():
        return _folder_splits(path, features, need)
    if data.startswith((".", "/", "~")) or data.count("/") != 1:
        raise DataError(data, "no such folder")
    return _hub_splits(data, features, need)


def load_run_splits(config: Any) -> dict[str, list[tuple[str, dict]]]:
    """The splits a TrainConfig's run reads: its columns, and the splits it needs."""
    need = [split for split in ("train", "test") if getattr(config, split)]
    return load_splits(config.data, features=Features.of(config), need=need)
