"""Row formats users already have (mlx_lm's, TRL's, Hub datasets with their own column
names): parsed to one shape, checked per method before the model loads, trained end to
end through the CLI."""

import json

import numpy as np
import pytest

from mlx_gft import data as data_lib
from mlx_gft.config import build_config
from mlx_gft.data import DataError, Example, Features, load_splits, parse_row
from mlx_gft.groups import build_groups, reward_inputs
from mlx_gft.methods import METHODS
from mlx_gft.sampling import Sample

SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "What is 2 + 2?"}
ASSISTANT = {"role": "assistant", "content": "4"}

# (row, prompt messages, expert answer or None, text or None), one per accepted format.
FORMATS = {
    "standard": ({"prompt": "What is 2 + 2?", "completion": "4"}, [USER], "4", None),
    "conversational": (
        {"prompt": [SYSTEM, USER], "completion": [ASSISTANT], "answer": 4},
        [SYSTEM, USER],
        "4",
        None,
    ),
    "mixed": ({"prompt": "What is 2 + 2?", "completion": [ASSISTANT]}, [USER], "4", None),
    "messages": ({"messages": [SYSTEM, USER, ASSISTANT]}, [SYSTEM, USER], "4", None),
    "prompt-only": ({"prompt": "What is 2 + 2?", "answer": "4"}, [USER], None, None),
    "conversational prompt-only": ({"prompt": [SYSTEM, USER]}, [SYSTEM, USER], None, None),
    "null completion": ({"prompt": "What is 2 + 2?", "completion": None}, [USER], None, None),
    "text": ({"text": "2 + 2 = 4"}, None, None, "2 + 2 = 4"),
    # mlx_lm's order: prompt + completion, then messages, then text, then a prompt alone.
    "text before a lone prompt": (
        {"prompt": "2 + 2", "text": "2 + 2 = 4"},
        None,
        None,
        "2 + 2 = 4",
    ),
    "prompt + completion before messages": (
        {"prompt": "What is 2 + 2?", "completion": "4", "messages": [USER, ASSISTANT]},
        [USER],
        "4",
        None,
    ),
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sample(tokens: list[int]) -> Sample:
    return Sample(0, tokens, f"s{tokens}", [0.0] * len(tokens), [0.0] * len(tokens), "stop")


# --------------------------------------------------------------------------------------
# Parsing one row


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_parses_to_prompt_messages_and_answer(name):
    row, messages, response, text = FORMATS[name]
    out = parse_row(row, "f:1")
    assert (out["messages"], out["response"], out["text"]) == (messages, response, text)


def test_answer_teachers_tools_and_extra_columns():
    tools = [{"type": "function", "function": {"name": "add"}}]
    row = {
        "prompt": [USER],
        "completion": [ASSISTANT],
        "answer": 4,
        "teacher_responses": ["four", [{"role": "assistant", "content": "2+2=4"}], " "],
        "tools": tools,
        "level": 1,
    }
    out = parse_row(row, "f:1")
    assert out["answer"] == "4" and out["teachers"] == ["four", "2+2=4"]
    assert out["tools"] == tools and out["columns"] == {"tools": tools, "level": 1}


def test_hub_style_messages_lose_null_keys_and_keep_tool_calls():
    call = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]}
    tool = {"role": "tool", "content": "5", "name": None}
    row = {"messages": [USER, call, tool, ASSISTANT]}
    out = parse_row(row, "f:1")
    call.pop("content")
    assert out["messages"] == [USER, call, {"role": "tool", "content": "5"}]


def test_columns_named_by_features():
    f = Features(prompt="question", completion="solution", answer="final")
    row = {"question": "2 + 2?", "solution": "It is 4.", "final": 4, "source": "x"}
    out = parse_row(row, "f:1", f)
    assert out["messages"] == [{"role": "user", "content": "2 + 2?"}]
    assert (out["response"], out["answer"], out["columns"]) == ("It is 4.", "4", {"source": "x"})
    # One column may be both the expert answer and the ground truth (GSM8K's "#### 4").
    f = Features(prompt="question", completion="answer")
    out = parse_row({"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"}, "f:1", f)
    assert out["response"] == out["answer"] == "2 + 2 = 4\n#### 4"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"question": "q", "answer": "a"},
            r"f:7: has columns question, answer; no 'prompt' \(set ",
        ),
        ({"completion": "a"}, r"f:7: has 'completion' but no 'prompt'"),
        ({"prompt": 3}, r"f:7: has 'prompt' but no 'completion'; field 'prompt': expected a str"),
        ({"prompt": [USER, ASSISTANT]}, r"f:7: .*field 'prompt': ends with an assistant"),
        ({"prompt": [{"role": "user"}]}, r"f:7: .*field 'prompt\[0\]': expected \{\"role\""),
        ({"prompt": "q", "completion": [USER]}, r"f:7: field 'completion\[0\]': .*got role 'us"),
        ({"prompt": "q", "completion": [ASSISTANT] * 2}, r"f:7: field 'completion': .* got 2"),
        ({"prompt": "q", "completion": {"a": 1}}, r"f:7: field 'completion': expected a string"),
        ({"prompt": "q", "completion": " "}, r"f:7: field 'completion': is empty"),
        ({"messages": [USER]}, r"f:7: field 'messages': the last message must be"),
        (
            {"messages": [USER, {"role": "assistant", "tool_calls": []}]},
            r"f:7: field 'messages': .* only calls tools",
        ),
        ({"text": 5}, r"f:7: field 'text': expected a string"),
        ({"prompt": "q", "answer": [1]}, r"f:7: field 'answer': expected a string or a number"),
        ({"prompt": "q", "responses": ["a", 2]}, r"f:7: field 'responses\[1\]': expected a list"),
        ({"prompt": "q", "tools": "add"}, r"f:7: field 'tools': expected a list"),
    ],
)
def test_bad_rows_name_line_and_field(row, message):
    with pytest.raises(DataError, match=message):
        parse_row(row, "f:7")


def test_a_named_answer_column_must_exist():
    f = Features(prompt="question", answer="final")
    with pytest.raises(DataError, match=r"f:2: has columns question; no 'final' \(set --answer"):
        parse_row({"question": "q"}, "f:2", f)
    assert parse_row({"prompt": "q"}, "f:2")["answer"] is None  # the default may be absent


def test_features_come_from_the_cli_and_yaml(tmp_path):
    from mlx_gft.lora import parse_config

    config = parse_config(["--prompt-feature", "question", "--completion-feature", "solution"])
    assert Features.of(config) == Features(prompt="question", completion="solution")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prompt_feature: input\ncompletion_feature: output\nchat_feature: chosen\n")
    config = parse_config(["-c", str(cfg)])
    assert Features.of(config) == Features(prompt="input", completion="output", chat="chosen")
    assert Features.of(build_config()) == Features()


# --------------------------------------------------------------------------------------
# Splits: folders and Hub datasets


def test_folder_reads_validation_jsonl_with_the_column_mapping(tmp_path):
    rows = [{"question": "2 + 2?", "solution": "4"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "validation.jsonl", rows)
    f = Features(prompt="question", completion="solution")
    splits = load_splits(str(tmp_path), features=f, need=["train"])
    assert splits["valid"][0][0] == f"{tmp_path / 'validation.jsonl'}:1"
    assert splits["train"][0][1]["response"] == "4" and splits["test"] == []


def test_a_missing_split_says_what_the_folder_has(tmp_path):
    write_jsonl(tmp_path / "training.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=r"train.jsonl: not found: .*\(found: training.jsonl\)"):
        load_splits(str(tmp_path), need=["train"])
    assert load_splits(str(tmp_path))["train"] == []  # not needed: --test only


@pytest.fixture
def hub(monkeypatch):
    """Replace the Hub download: hub(splits) serves {split name: rows} for any id."""
    calls = []

    def serve(splits):
        def fake(data_id, options):
            calls.append(data_id)
            return splits

        monkeypatch.setattr(data_lib, "_hub_rows", fake)
        return calls

    return serve


def test_hub_dataset_with_validation_split_and_own_columns(hub):
    rows = [{"question": f"{i} + 1?", "solution": f"{i + 1}", "id": i} for i in range(3)]
    calls = hub({"train": rows, "validation": rows[:1], "test": rows[:2]})
    f = Features(prompt="question", completion="solution")
    splits = load_splits("user/math", features=f, need=["train", "test"])
    assert calls == ["user/math"]
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [3, 1, 2]
    where, row = splits["valid"][0]
    assert where == "user/math[validation]:1" and row["columns"] == {"id": 0}


def test_hub_errors_say_what_was_found(hub):
    hub({"train": [{"question": "q", "answer": "a"}], "dev": []})
    with pytest.raises(DataError, match=r"user/ds: no 'test' split: .*\(found: train, dev\)"):
        load_splits("user/ds", need=["train", "test"])
    with pytest.raises(
        DataError,
        match=r"user/ds\[train\]:1: has columns question, answer; no 'prompt' \(set --prompt-f",
    ):
        load_splits("user/ds")
    hub({"valid": [{"prompt": "q"}], "validation": [{"prompt": "q"}, {"prompt": "r"}]})
    assert [w for w, _ in load_splits("user/ds")["valid"]] == ["user/ds[valid]:1"]


def test_hub_without_the_datasets_package_says_how_to_install():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"user/ds: .*pip install datasets"):
            load_splits("user/ds")
    else:
        pytest.skip("datasets is installed")


# --------------------------------------------------------------------------------------
# What each method needs, checked before the model loads


def rows_of(*rows):
    return {"train": [(f"t.jsonl:{i}", parse_row(r, "x")) for i, r in enumerate(rows, 1)]}


PROMPT_ONLY = {"prompt": [SYSTEM, USER]}
TEACHERS = {"prompt": "2 + 2?", "teacher_responses": ["4"]}


@pytest.mark.parametrize(
    ("loss", "row", "reward", "message"),
    [
        ("gft", {"text": "t"}, None, r"t.jsonl:1: field 'text': .*has no prompt to sample"),
        ("grpo", {"text": "t"}, ["f1"], r"field 'text': .*--loss grpo samples"),
        ("sft", PROMPT_ONLY, None, r"t.jsonl:1: has 'prompt' but no 'completion': --loss sft"),
        ("dft", TEACHERS, None, r"has 'prompt' but no 'completion': --loss dft trains on"),
        ("gft", PROMPT_ONLY, ["f1"], r"t.jsonl:1: has 'prompt' but no 'completion' nor teacher"),
        ("grpo", PROMPT_ONLY, None, r"t.jsonl:1: .* nor 'answer': the default reward"),
        ("gft", TEACHERS, None, r"nor 'answer': the default reward"),
    ],
)
def test_rows_a_method_cannot_train_on(loss, row, reward, message):
    with pytest.raises(DataError, match=message):
        data_lib.check_method_rows(rows_of(row), METHODS[loss], reward)


@pytest.mark.parametrize(
    ("loss", "row", "reward"),
    [
        ("sft", {"text": "t"}, None),
        ("dft", {"messages": [USER, ASSISTANT]}, None),
        ("grpo", {**PROMPT_ONLY, "answer": "4"}, None),
        ("grpo", PROMPT_ONLY, ["my.py:score"]),
        ("gft", {**TEACHERS, "answer": 4}, None),
        ("gft", TEACHERS, ["my.py:score"]),
    ],
)
def test_rows_a_method_can_train_on(loss, row, reward):
    data_lib.check_method_rows(rows_of(row), METHODS[loss], reward)


def test_only_the_training_set_needs_answers_to_learn_from():
    train, valid = rows_of(FORMATS["standard"][0]), rows_of(PROMPT_ONLY)
    splits = {"train": train["train"], "valid": valid["train"], "test": []}
    data_lib.check_method_rows(splits, METHODS["sft"], None)  # SFT: val loss on experts only


def test_a_row_without_an_expert_puts_no_empty_member_in_its_group():
    teachers = [[8, 2], [9, 2], [10, 2]]
    ex = Example([1], [], teachers=teachers, teacher_texts=["a", "b", "c"], answer="4")
    groups = build_groups([ex], [sample([11, 2])], group_size=1, teacher_count=3)
    # The expert's slot goes to a teacher: teacher_count off-policy answers all the same.
    assert [m.kind for m in groups.members] == ["teacher"] * 3 + ["sampled"]
    assert all(m.response for m in groups.members) and groups.missing_teachers == 0
    assert reward_inputs(groups)[0]["reference"] is None  # rewards see no expert, not ""
    grpo = build_groups([ex], [sample([11, 2])], 1, 3, include_offpolicy=False)
    assert [m.kind for m in grpo.members] == ["sampled"]


# --------------------------------------------------------------------------------------
# End to end through the CLI on the tiny model

QUICK = (
    "--batch-size 2 --group-size 2 --max-completion-length 8 --num-layers -1 --iters 1 "
    "--steps-per-report 1 --probe-size 1 --val-batches 1 --max-seq-length 256"
).split()


def train(tiny_model, data, tmp_path, *extra):
    from mlx_gft.job import run
    from mlx_gft.lora import parse_config

    argv = [*f"--model {tiny_model} --data {data} --train".split(), *QUICK, *extra]
    argv += ["--adapter-path", str(tmp_path / "ad")]
    return run(parse_config(argv), log=lambda *_: None)


def folder_of(tmp_path, rows, valid=True):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    if valid:
        write_jsonl(folder / "valid.jsonl", rows[:2])
    return folder


def problems(n=4):
    return [(f"What is {i} + 2?", str(i + 2)) for i in range(n)]


LENGTH_REWARD = "def score(completion, **kw):\n    return len(completion) / 10\n"
E2E = {
    "trl-conversational": (
        [
            {"prompt": [SYSTEM, {"role": "user", "content": q}],
             "completion": [{"role": "assistant", "content": f"It is {a}."}], "answer": a}
            for q, a in problems()
        ],
        ["--loss", "gft"],
    ),
    "mlx-lm-messages": (
        [{"messages": [SYSTEM, {"role": "user", "content": q},
                       {"role": "assistant", "content": a}]} for q, a in problems()],
        ["--loss", "gft"],
    ),
    "text-sft": ([{"text": f"{q} {a}"} for q, a in problems()], ["--loss", "sft"]),
    "prompt-only-grpo": (
        [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in problems()],
        ["--loss", "grpo", "--reward", "REWARD", "--no-mask-truncated"],
    ),
    "prompt-only-gft-teachers": (
        [{"prompt": q, "teacher_responses": [f"{a}.", f"It is {a}."], "answer": a}
         for q, a in problems()],
        ["--loss", "gft", "--teacher-count", "2"],
    ),
    "own-columns": (
        [{"question": q, "solution": f"So {a}.", "final": a} for q, a in problems()],
        ["--prompt-feature", "question", "--completion-feature", "solution",
         "--answer-feature", "final"],
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", E2E)
def test_each_format_trains_through_the_cli(tiny_model, tmp_path, name):
    rows, extra = E2E[name]
    reward = tmp_path / "length.py"
    reward.write_text(LENGTH_REWARD)
    extra = [f"{reward}:score" if a == "REWARD" else a for a in extra]
    results = train(tiny_model, folder_of(tmp_path, rows), tmp_path, *extra)
    report = results["reports"][-1]
    assert np.isfinite(report["loss"])
    assert (tmp_path / "ad" / "adapters.safetensors").exists()
    if name == "prompt-only-gft-teachers":
        # Both teachers fill the group (the expert's slot too); no empty expert member.
        assert "reward_teacher" in report and "reward_expert" not in report


@pytest.mark.slow
def test_hub_dataset_with_its_own_columns_trains_from_yaml(tiny_model, tmp_path, hub):
    rows = [{"question": q, "solution": f"So {a}.", "answer": a} for q, a in problems()]
    hub({"train": rows, "validation": rows[:2]})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("prompt_feature: question\ncompletion_feature: solution\n")
    results = train(tiny_model, "user/math", tmp_path, "-c", str(cfg))
    assert np.isfinite(results["reports"][-1]["loss"])
    metrics = (tmp_path / "ad" / "metrics.jsonl").read_text().splitlines()
    assert "val_loss" in json.loads(metrics[0])  # the validation split was read


@pytest.mark.slow
def test_conversational_prompt_keeps_its_system_message(tiny_model):
    from mlx_lm import load

    _, tokenizer = load(str(tiny_model))
    row = parse_row(FORMATS["conversational"][0], "f:1")
    (ex,) = data_lib.tokenize_rows([("f:1", row)], tokenizer, 256, True)
    assert "You are terse." in tokenizer.decode(ex.prompt)
    assert tokenizer.decode(ex.expert).strip().startswith("4")
    only = parse_row(FORMATS["conversational prompt-only"][0], "f:2")
    (bare,) = data_lib.tokenize_rows([("f:2", only)], tokenizer, 256, True)
    assert bare.prompt == ex.prompt and bare.expert == [] and bare.expert_text == ""


@pytest.mark.slow
def test_chat_rows_reach_batch_rewards_as_messages_string_rows_as_text(tiny_model):
    """TRL passes a conversational dataset's prompts and completions to its reward
    functions as messages, a standard one's as strings: so do we."""
    from mlx_lm import load

    from mlx_gft.groups import build_groups, reward_inputs
    from mlx_gft.reward_batches import batch_arguments

    _, tokenizer = load(str(tiny_model))
    chat = parse_row(FORMATS["conversational"][0], "f:1")
    plain = parse_row({"prompt": "2+2?", "completion": "4"}, "f:2")
    examples = data_lib.tokenize_rows([("f:1", chat), ("f:2", plain)], tokenizer, 256, True)
    inputs = reward_inputs(build_groups(examples, [], 0, teacher_count=1))
    conversational = batch_arguments(inputs[:1])
    assert conversational["prompts"] == [[SYSTEM, USER]]
    assert conversational["completions"][0][0]["role"] == "assistant"
    standard = batch_arguments(inputs[1:])
    assert standard["prompts"] == ["2+2?"] and standard["completions"] == ["4"]


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ([PROMPT_ONLY] * 4, ["--loss", "sft"], r"train.jsonl:1: has 'prompt' but no 'completion'"),
        ([PROMPT_ONLY] * 4, [], r"train.jsonl:1: .* nor teacher answers"),
        ([{"text": "t"}] * 4, ["--loss", "grpo"], r"train.jsonl:1: field 'text': "),
        ([{"q": "x"}] * 4, [], r"train.jsonl:1: has columns q; no 'prompt' \(set --prompt-f"),
    ],
)
def test_rows_a_method_cannot_use_stop_before_the_model_loads(tmp_path, rows, extra, message):
    # No model at that path: only a check before the model loads gives this error.
    with pytest.raises(DataError, match=message):
        train(tmp_path / "no-model", folder_of(tmp_path, rows), tmp_path, *extra)
    assert not (tmp_path / "ad").exists()
