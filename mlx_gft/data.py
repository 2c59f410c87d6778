"""Datasets: read JSONL (or a Hub dataset), validate every row, tokenize prompts and answers.

The row formats (mlx_lm's and TRL's, column names per the `*_feature` options) are in
`formats`. A split is `<split>.jsonl` in a folder (`valid` may be `validation.jsonl`;
the tools read any other name too, `ood.jsonl`) or the Hub dataset's split of that name
(`valid` or `validation`), in the config `dataset_config` names; mlx_lm's `hf_dataset`
entries name a dataset, its config and a slice per split instead. GFT extras: `answer`
(ground truth for a verifier) and `teacher_responses` (or `responses`), a list of further
expert-quality answers. Every answer is tokenized exactly as the chat template lays it
out after the prompt and ends with the EOS token, which is trained.
"""

import ast
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .formats import DataError, Features, parse_row

if TYPE_CHECKING:
    from .config import HubEntry
    from .methods import Method

SPLITS = ("train", "valid", "test")
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


# --------------------------------------------------------------------------------------
# Sources: a folder, a Hub dataset or the built-in task, with its splits by their names


def split_names(split: str) -> tuple[str, ...]:
    """The names `split` may have in a dataset, in the order they are looked for: `valid`
    and `validation` stand for each other (mlx_lm writes valid.jsonl, the Hub says
    validation); any other name is itself (`ood` is ood.jsonl)."""
    if split in ("valid", "validation"):
        return (split, "validation" if split == "valid" else "valid")
    return (split,)


RowReader = Callable[[], list[tuple[str, Any]]]


@dataclass
class Source:
    """A dataset's splits under the names it gives them (a folder's `<name>.jsonl`, a Hub
    dataset's splits, the built-in task's train / valid / test), each read when asked
    for as (where, the row as written)."""

    label: str  # for errors: the folder, the Hub id, <built-in task>
    readers: dict[str, RowReader]
    folder: Path | None = None  # a folder's splits are files: errors name the file
    own_columns: bool = False  # the built-in task: its rows keep the default column names

    def name_of(self, split: str) -> str | None:
        """The source's name for `split` (`validation` for valid, say), None if absent."""
        return next((n for n in split_names(split) if n in self.readers), None)

    def found(self) -> str:
        names = [f"{n}.jsonl" if self.folder else n for n in self.readers]
        return ", ".join(names) or "nothing"

    def missing(self, split: str, hint: str = "") -> DataError:
        what = f"the {SET_NAMES[split]} is missing" if split in SET_NAMES else "it is missing"
        if self.folder is not None:
            where = str(self.folder / f"{split}.jsonl")
            return DataError(where, f"not found: {what} (found: {self.found()}){hint}")
        return DataError(self.label, f"no '{split}' split: {what} (found: {self.found()}){hint}")

    def raw(self, split: str, hint: str = "") -> list[tuple[str, Any]]:
        """The split's rows as written; a DataError listing the splits there are if absent."""
        name = self.name_of(split)
        if name is None:
            raise self.missing(split, hint)
        return self.readers[name]()

    def rows(
        self, split: str, features: Features | None = None, hint: str = ""
    ) -> list[tuple[str, dict]]:
        """The split's rows, each validated (file:line and field in any error)."""
        features = None if self.own_columns else features
        return [(where, parse_row(row, where, features)) for where, row in self.raw(split, hint)]


def open_source(data: str | None, dataset_config: str | None = None, **task_kwargs: Any) -> Source:
    """The splits of `data`: a folder of `<split>.jsonl` files, a Hub dataset id (in the
    config `dataset_config` names: `main` for openai/gsm8k), or the built-in task (None)."""
    if data is None:
        from .tasks import arithmetic

        made = arithmetic.make_dataset(**task_kwargs)
        label = "<built-in task>"
        readers = {s: _numbered(rows, f"{label}[{s}]") for s, rows in made.items()}
        return Source(label, readers, own_columns=True)
    path = Path(data)
    if path.is_file():
        raise DataError(data, "expected a folder with train.jsonl / valid.jsonl / test.jsonl")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        readers = {p.name.removesuffix(".jsonl"): partial(raw_rows, p) for p in files}
        return Source(str(path), readers, folder=path)
    if data.startswith((".", "/", "~")) or data.count("/") != 1:
        raise DataError(data, "no such folder")
    options = {"name": dataset_config} if dataset_config else {}
    found = _hub_rows(data, options)
    return Source(data, {n: _numbered(found[n], f"{data}[{n}]") for n in found})


def _numbered(rows: Sequence[Any], label: str) -> RowReader:
    return lambda: [(f"{label}:{i}", row) for i, row in enumerate(rows, 1)]


# --------------------------------------------------------------------------------------
# The Hub: the only calls that go to the network (tests replace `datasets`)


def _hub_rows(data_id: str, options: Mapping[str, Any]) -> Mapping[str, Sequence[Any]]:
    """Every split of a Hub dataset by name, as mlx_lm loads `--data <id>`; `options` are
    datasets.load_dataset's keyword arguments (`name`: the config)."""

    def fix(name: str) -> str:
        return (
            f"pass --dataset-config {name} (YAML: dataset_config: {name}, or mlx_lm's "
            f"hf_dataset: {{path: {data_id}, config: {{name: {name}}}}})"
        )

    return _load_dataset(data_id, options, fix, "no such folder, and no Hub dataset loads")


def hub_split(entry: "HubEntry", split: str) -> list[tuple[str, Any]]:
    """One split of an mlx_lm `hf_dataset` entry, sliced as its `<split>_split` says
    (`train[:80%]`), as (where, row)."""
    spec = entry.splits[split]

    def fix(name: str) -> str:
        return f"add config: {{name: {name}}} to its hf_dataset entry"

    rows = _load_dataset(entry.path, {**entry.options, "split": spec}, fix, "it does not load")
    return _numbered(rows, f"{entry.path}[{spec}]")()


def _load_dataset(
    data_id: str, options: Mapping[str, Any], fix: Callable[[str], str], failed: str
) -> Any:
    """datasets.load_dataset(data_id, **options), its failures as DataErrors: `fix(name)`
    says how to name config `name` where this dataset was given, `failed` what any other
    failure means there."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            data_id, "a Hub dataset (not a local folder): loading it needs `pip install datasets`"
        ) from None
    try:
        return datasets.load_dataset(data_id, **options)
    except Exception as e:  # not found, offline, needs a config name: an error, no traceback
        problem = _config_problem(datasets, data_id, options, e, fix)
        raise DataError(data_id, problem or f"{failed} ({type(e).__name__}: {e})") from e


def _config_problem(
    datasets: Any,
    data_id: str,
    options: Mapping[str, Any],
    e: Exception,
    fix: Callable[[str], str],
) -> str | None:
    """What to write when the Hub dataset needs a config name, or has none by the name
    given: the configs there are and how to pass one. None for other failures."""
    text = str(e)
    missing = "Config name is missing" in text
    unknown = "BuilderConfig" in text and "not found" in text
    if not (missing or unknown):
        return None
    names = _config_names(datasets, data_id, text)
    listed = ", ".join(names) if names else "see the dataset's page on the Hub"
    how = fix(names[0] if names else "NAME")
    if missing:
        return f"the Hub dataset has several configs and needs one named ({listed}): {how}"
    return f"the Hub dataset has no config {options.get('name')!r} (it has: {listed}): {how}"


def _config_names(datasets: Any, data_id: str, message: str) -> list[str]:
    """The configs a `datasets` error lists ("Please pick one among the available configs:
    ['main', 'socratic']", "BuilderConfig 'x' not found. Available: [...]"), else the
    Hub's list (one more request; nothing when that fails too)."""
    match = re.search(r"(?:available configs|Available): (\[[^\]]*\])", message)
    if match:
        try:
            return [str(name) for name in ast.literal_eval(match[1])]
        except (ValueError, SyntaxError):
            pass
    try:
        return [str(name) for name in datasets.get_dataset_config_names(data_id)]
    except Exception:  # offline, or a datasets without the function: say what we can
        return []


# --------------------------------------------------------------------------------------
# The splits a run trains, validates and tests on


def load_splits(
    data: str | None,
    *,
    features: Features | None = None,
    need: Sequence[str] = (),
    dataset_config: str | None = None,
    **task_kwargs: Any,
) -> dict[str, list[tuple[str, dict]]]:
    """Validated rows of each split (train, valid, test): a local folder, a Hub dataset id
    (in config `dataset_config`), or the built-in task. `features` names the columns; a
    split in `need` that is absent is an error that says which splits there are."""
    source = open_source(data, dataset_config, **task_kwargs)
    for split in need:  # before any row is parsed: a missing file is the first thing to fix
        if source.name_of(split) is None:
            raise source.missing(split)
    return {s: source.rows(s, features) if source.name_of(s) else [] for s in SPLITS}


def load_hub_entries(
    entries: Sequence["HubEntry"], need: Sequence[str]
) -> dict[str, list[tuple[str, dict]]]:
    """Validated rows of each split from mlx_lm's `hf_dataset` entries, each entry's rows
    after the last's, as mlx_lm concatenates them. Only the splits the run reads are
    downloaded: train and valid to train, test to test."""
    wanted = [*need, "valid"] if "train" in need else list(need)
    out: dict[str, list[tuple[str, dict]]] = {split: [] for split in SPLITS}
    for entry in entries:
        for split in SPLITS:
            if split not in wanted:
                continue
            if entry.splits[split] is None:
                if split in need:
                    raise DataError(
                        f"hf_dataset {entry.path}",
                        f"no {split}_split: the {SET_NAMES[split]} is needed; name the split, "
                        f"e.g. {split}_split: {split}",
                    )
                continue
            rows = hub_split(entry, split)
            out[split] += [(where, parse_row(row, where, entry.features)) for where, row in rows]
    return out


def load_run_splits(config: Any) -> dict[str, list[tuple[str, dict]]]:
    """The splits a TrainConfig's run reads: its data (or mlx_lm's `hf_dataset` entries),
    its columns, and the splits it needs."""
    need = [split for split in ("train", "test") if getattr(config, split)]
    if getattr(config, "hf_dataset", None):
        from .config import hub_entries

        return load_hub_entries(hub_entries(config), need)
    features = Features.of(config)
    return load_splits(
        config.data, features=features, need=need, dataset_config=config.dataset_config
    )
