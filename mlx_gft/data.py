"""Datasets: read JSONL (or a Hub dataset), validate every row, tokenize prompts and answers.

Row formats, detected per row as mlx-lm does: chat `messages` (the last assistant
message is the expert answer), `prompt`/`completion`, or `text` (SFT/DFT only: it has no
prompt to sample from). GFT extras: `answer` (ground truth for a verifier) and
`teacher_responses` (or `responses`), a list of further expert-quality answers.
Every answer is tokenized exactly as the chat template lays it out after the prompt and
ends with the EOS token, which is trained.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A dataset problem, located at file:line (and field) so it can be fixed."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where


@dataclass
class Example:
    prompt: list[int]  # prompt tokens, chat template with the generation prompt
    expert: list[int]  # expert answer tokens, ending with EOS
    teachers: list[list[int]] = field(default_factory=list)
    prompt_text: str = ""
    expert_text: str = ""
    teacher_texts: list[str] = field(default_factory=list)
    answer: str | None = None
    expert_truncated: bool = False
    columns: dict[str, Any] = field(default_factory=dict)  # extra columns, passed to rewards
    where: str = ""  # file:line, for errors found after loading


def has_answers(examples: list[Example]) -> bool:
    """Every example has a reference answer, so a verifier can grade its samples."""
    return all(e.answer is not None for e in examples)


def _str_field(row: dict, key: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}'", f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{key}'", "is empty")
    return value


def parse_row(row: Any, where: str) -> dict[str, Any]:
    """Check one row's shape; return {messages, response, text, answer, teachers, columns}."""
    if not isinstance(row, dict):
        raise DataError(where, f"expected a JSON object, got {type(row).__name__}")
    out: dict[str, Any] = {"messages": None, "response": None, "text": None}
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{where}: field 'messages'", "expected a non-empty list of messages")
        for i, m in enumerate(msgs):
            if (
                not isinstance(m, dict)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise DataError(
                    f"{where}: field 'messages[{i}]'", 'expected {"role": str, "content": str}'
                )
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            raise DataError(
                f"{where}: field 'messages'",
                "the last message must be a non-empty assistant answer",
            )
        out["messages"], out["response"] = msgs[:-1], msgs[-1]["content"]
    elif "prompt" in row or "completion" in row:
        for key in ("prompt", "completion"):
            if key not in row:
                raise DataError(
                    where,
                    f"has '{'prompt' if key == 'completion' else 'completion'}' but no '{key}'",
                )
        prompt = _str_field(row, "prompt", where)
        out["messages"] = [{"role": "user", "content": prompt}]
        out["response"] = _str_field(row, "completion", where)
    elif "text" in row:
        out["text"] = _str_field(row, "text", where)
    else:
        raise DataError(where, "no 'messages', 'prompt'/'completion' or 'text' field")

    answer = row.get("answer")
    if answer is not None:
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise DataError(f"{where}: field 'answer'", "expected a string or a number")
    out["answer"] = answer
    key = "teacher_responses" if "teacher_responses" in row else "responses"
    teachers = row.get(key, [])
    if not isinstance(teachers, list) or not all(isinstance(t, str) for t in teachers):
        raise DataError(f"{where}: field '{key}'", "expected a list of strings")
    out["teachers"] = [t for t in teachers if t.strip()]
    skip = {"messages", "prompt", "completion", "text", "answer", "teacher_responses", "responses"}
    out["columns"] = {k: v for k, v in row.items() if k not in skip}
    return out


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


def read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """Parse and validate every line of a JSONL file before anything is tokenized."""
    return [(where, parse_row(row, where)) for where, row in raw_rows(path)]


def _eos_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def prompt_tokens(tokenizer, messages: list[dict]) -> list[int]:
    if getattr(tokenizer, "has_chat_template", False):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return tokenizer.encode("\n".join(m["content"] for m in messages))


def response_tokens(tokenizer, messages: list[dict], prompt: list[int], text: str) -> list[int]:
    """The answer's tokens as the chat template lays them after `prompt`, cut after EOS.

    Templates often add a newline after the end-of-turn token; a sample stops at EOS, so
    the expert must too, or the two would be trained on different endings.
    """
    eos = _eos_ids(tokenizer)
    tokens: list[int] | None = None
    if getattr(tokenizer, "has_chat_template", False):
        answer = {"role": "assistant", "content": text}
        full = list(tokenizer.apply_chat_template(messages + [answer]))
        if full[: len(prompt)] == prompt:
            tokens = full[len(prompt) :]
    if tokens is None:
        tokens = tokenizer.encode(text, add_special_tokens=False)
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens + [tokenizer.eos_token_id]


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
        if row["text"] is not None:
            if needs_prompt:
                raise DataError(
                    where,
                    "a 'text' row has no prompt to sample answers for; "
                    "use 'prompt'/'completion' or 'messages' (or --loss sft)",
                )
            expert = tokenizer.encode(row["text"])
            expert = expert + [tokenizer.eos_token_id]
            prompt: list[int] = []
            ex = Example(prompt=[], expert=expert, expert_text=row["text"])
        else:
            prompt = prompt_tokens(tokenizer, row["messages"])
            ex = Example(
                prompt=prompt,
                expert=response_tokens(tokenizer, row["messages"], prompt, row["response"]),
                teachers=[
                    response_tokens(tokenizer, row["messages"], prompt, t) for t in row["teachers"]
                ],
                prompt_text=row["messages"][-1]["content"] if row["messages"] else "",
                expert_text=row["response"],
                teacher_texts=row["teachers"],
                answer=row["answer"],
                columns=row["columns"],
            )
        ex.where = where
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
    missing = [where for where, row in rows if row.get("answer") is None]
    if verifier and missing:
        raise DataError(
            f"{missing[0]}: field 'answer'",
            f"missing; the {verifier!r} reward needs the ground truth of every row",
        )
    if having and missing:
        raise DataError(
            f"{missing[0]}: field 'answer'",
            f"missing, but {len(having)} other row(s) have it (first: {having[0]}); give "
            "every row its ground-truth answer, or none (then the reward is token F1)",
        )


def _hub_rows(data_id: str, split: str) -> list[tuple[str, dict]]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            data_id, "not a local folder; loading a Hub dataset needs `pip install datasets`"
        ) from None
    try:
        ds = datasets.load_dataset(data_id, split=split)
    except ValueError:  # the dataset has no such split
        return []
    return [
        (f"{data_id}[{split}]:{i + 1}", parse_row(dict(r), f"{data_id}[{split}]:{i + 1}"))
        for i, r in enumerate(ds)
    ]


def load_splits(data: str | None, **task_kwargs: Any) -> dict[str, list[tuple[str, dict]]]:
    """Validated rows of each split: a local folder, a Hub dataset id, or the built-in task."""
    if data is None:
        from .tasks import arithmetic

        return {
            split: [
                (f"<built-in task>[{split}]:{i + 1}", parse_row(r, split))
                for i, r in enumerate(rows)
            ]
            for split, rows in arithmetic.make_dataset(**task_kwargs).items()
        }
    path = Path(data)
    if path.is_file():
        raise DataError(data, "expected a folder with train.jsonl / valid.jsonl / test.jsonl")
    if path.is_dir():
        return {
            s: read_jsonl(path / f"{s}.jsonl") if (path / f"{s}.jsonl").exists() else []
            for s in SPLITS
        }
    if data.startswith((".", "/", "~")) or data.count("/") != 1:
        raise DataError(data, "no such folder")
    return {s: _hub_rows(data, "validation" if s == "valid" else s) for s in SPLITS}
