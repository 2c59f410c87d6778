"""Teacher distillation: the output dataset's schema, row order and the keep-correct filter."""

import json
import re

import pytest
from random_adapters import write_random_adapters

from mlx_gft import evaluate
from mlx_gft.data import load_splits, open_source, read_jsonl
from mlx_gft.distill import main
from mlx_gft.formats import Features
from mlx_gft.models import load_model
from mlx_gft.sampling import Sample, sample_groups
from mlx_gft.tasks import arithmetic


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_every_row_gets_n_responses_and_keeps_its_fields(
    tiny_model, arithmetic_data, tmp_path, capsys
):
    out = tmp_path / "out"
    main(
        f"--teacher {tiny_model} --data {arithmetic_data} --num-responses 3 "
        f"--max-tokens 5 --output {out}".split()
    )
    for split in ("train", "valid"):
        before, after = _rows(arithmetic_data / f"{split}.jsonl"), _rows(out / f"{split}.jsonl")
        assert len(after) == len(before)
        for old, new in zip(before, after, strict=True):
            responses = new.pop("teacher_responses")
            assert new == old  # every original field, same row order
            assert len(responses) == 3 and all(isinstance(r, str) for r in responses)
        read_jsonl(out / f"{split}.jsonl")  # the trainer's reader accepts the files
    # The test split is not distilled (no teacher answers to learn from), only copied.
    assert (out / "test.jsonl").read_text() == (arithmetic_data / "test.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl", "valid.jsonl"]
    printed = capsys.readouterr().out
    assert "train: 32 rows, 96 responses written of 96 sampled (kept 100.0%)" in printed
    assert "valid: 8 rows, 24 responses written" in printed
    assert "test: 8 rows copied unchanged" in printed


@pytest.mark.slow
def test_keep_correct_keeps_only_verified_answers(tiny_model, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    chat = [
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": "42"},
    ]
    rows = [
        {"prompt": "Tom has 3 pens and buys 4 more. How many?", "completion": "7", "answer": "7"},
        {"messages": chat, "answer": 42, "id": "q2"},
        {"prompt": "Ann has 9 cards, loses 2. How many?", "completion": "7", "answer": "7",
         "teacher_responses": ["Earlier teacher: 7"]},
    ]  # fmt: skip
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = ["Tom has 3 pens", "What is 6 times 7?", "Ann has 9 cards"]
    answers = {"Tom has 3 pens": 7, "What is 6 times 7?": 42, "Ann has 9 cards": 7}

    def fake_sampler(model, tokenizer, prompts, k, *, max_tokens, temperature, seed, **options):
        # One right and one wrong answer per prompt, found from the prompt's own text:
        # a response attached to the wrong row would fail the checks below.
        out = []
        for i, prompt in enumerate(prompts):
            text = tokenizer.decode(prompt)
            answer = next(answers[q] for q in questions if q in text)
            out += [
                Sample(i, [5], f"So it is {answer + 1}.", [], [], "stop"),
                Sample(i, [5], f"The answer is {answer}.", [], [], "stop"),
            ]
        return out

    monkeypatch.setattr(evaluate, "sample_groups", fake_sampler)  # distill samples through it
    out = tmp_path / "out"
    main(
        f"--teacher {tiny_model} --data {data} --num-responses 2 --keep-correct "
        f"--splits train --batch-size 2 --output {out}".split()
    )
    written = _rows(out / "train.jsonl")
    assert [r["teacher_responses"] for r in written] == [
        ["The answer is 7."],
        ["The answer is 42."],
        ["Earlier teacher: 7", "The answer is 7."],  # existing answers come first
    ]
    assert written[1]["id"] == "q2" and written[1]["messages"] == chat
    assert "train: 3 rows, 3 responses written of 6 sampled (kept 50.0%)" in capsys.readouterr().out


def _responses(folder, split="valid") -> list[list[str]]:
    return [row["teacher_responses"] for row in _rows(folder / f"{split}.jsonl")]


@pytest.mark.slow
def test_top_k_1_gives_the_greedy_teacher_answer(tiny_model, arithmetic_data, tmp_path):
    argv = f"--teacher {tiny_model} --data {arithmetic_data} --splits valid --max-tokens 6"
    main(f"{argv} --temperature 0 --num-responses 1 --output {tmp_path / 'greedy'}".split())
    main(f"{argv} --top-k 1 --num-responses 3 --output {tmp_path / 'top1'}".split())
    greedy = _responses(tmp_path / "greedy")
    assert len(greedy) == 8 and all(len(r) == 1 for r in greedy)
    assert _responses(tmp_path / "top1") == [r * 3 for r in greedy]


@pytest.mark.slow
def test_teacher_adapters_are_loaded(tiny_model, arithmetic_data, tmp_path, capsys):
    # A user's own fine-tuned adapters as the teacher: its greedy answers are the adapted
    # model's (as evaluate decodes them), not the base model's.
    adapters = tmp_path / "adapters"
    write_random_adapters(tiny_model, adapters)
    argv = f"--teacher {tiny_model} --data {arithmetic_data} --splits valid --max-tokens 6 "
    argv += "--temperature 0 --num-responses 1"
    main(f"{argv} --output {tmp_path / 'base'}".split())
    main(f"{argv} --teacher-adapter-path {adapters} --output {tmp_path / 'adapted'}".split())
    assert f"Loading teacher {tiny_model} with adapters {adapters}" in capsys.readouterr().out
    adapted = _responses(tmp_path / "adapted")
    assert adapted != _responses(tmp_path / "base")
    model, tokenizer = load_model(str(tiny_model), str(adapters))
    rows = load_splits(str(arithmetic_data))["valid"]
    examples = evaluate.sampling_examples(rows, tokenizer, model)
    greedy = evaluate.score_samples(model, tokenizer, examples, temperature=0.0, max_tokens=6).texts
    assert adapted == greedy

    with pytest.raises(SystemExit, match="adapter_config.json: not found"):
        main(f"{argv} --teacher-adapter-path {tmp_path} --output {tmp_path / 'x'}".split())


@pytest.mark.slow
def test_min_p_and_max_concurrency_reach_the_sampler(
    tiny_model, arithmetic_data, tmp_path, batch_joins
):
    joins = batch_joins
    # Hot enough that the random model's EOS ends some answers early, so with a cap of
    # 2 waiting samples join a running batch.
    argv = f"--teacher {tiny_model} --data {arithmetic_data} --splits valid --num-responses 4 "
    argv += "--temperature 3 --max-tokens 64 --min-p 0.1"
    main(f"{argv} --output {tmp_path / 'free'}".split())
    assert not joins
    main(f"{argv} --max-concurrency 2 --output {tmp_path / 'capped'}".split())
    assert joins, "with --max-concurrency 2, waiting samples should join a running batch"
    written = _responses(tmp_path / "free")
    assert _responses(tmp_path / "capped") == written

    # The answers are the sampler's own min-p samples of the training prompts.
    model, tokenizer = load_model(str(tiny_model))
    rows = load_splits(str(arithmetic_data))["valid"]
    prompts = [e.prompt for e in evaluate.sampling_examples(rows, tokenizer, model)]
    kw = {"max_tokens": 64, "temperature": 3.0, "seed": 0}
    expected = [s.text for s in sample_groups(model, tokenizer, prompts, 4, min_p=0.1, **kw)]
    assert written == [expected[i : i + 4] for i in range(0, len(expected), 4)]
    untruncated = [s.text for s in sample_groups(model, tokenizer, prompts, 4, **kw)]
    assert untruncated != expected


def test_bad_sampling_options_are_usage_errors(tmp_path, capsys):
    for flag, message in [
        ("--top-k -3", "--top-k must be >= 0"),
        ("--min-p 1.5", "--min-p must be in [0, 1)"),
        ("--max-concurrency 0", "--max-concurrency must be at least 1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(f"--teacher {tmp_path / 'm'} --num-responses 2 {flag}".split())
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_keep_correct_needs_every_answer(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lines = [
        '{"prompt": "a", "completion": "1", "answer": "1"}',
        '{"prompt": "b", "completion": "2"}',
    ]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    # Checked before the teacher loads (the model path does not even exist).
    with pytest.raises(SystemExit, match=r"error: .*train\.jsonl:2: field 'answer': missing"):
        main(f"--teacher {tmp_path / 'm'} --data {data} --num-responses 2 --keep-correct".split())
    with pytest.raises(SystemExit, match=r"error: .*--output is the input folder"):
        main(f"--teacher x --data {data} --num-responses 1 --output {data}".split())
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        main(f"--teacher x --data {data} --num-responses 0".split())


def test_built_in_rows_are_the_task_rows():
    rows = open_source(None).raw("valid")
    assert [row for _, row in rows] == arithmetic.make_dataset()["valid"]
    assert rows[0][0] == "<built-in task>[valid]:1"


# --------------------------------------------------------------------------------------
# Splits and columns, read as training reads them


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _own_columns(n: int, start: int = 0) -> list[dict]:
    return [
        {"question": f"Ann has {i} cards and gets 1 more. How many?", "solution": f"{i + 1}",
         "final": i + 1}
        for i in range(start, start + n)
    ]  # fmt: skip


COLUMN_FLAGS = "--prompt-feature question --completion-feature solution --answer-feature final"


@pytest.fixture
def layout(tmp_path):
    """A folder as the Hub exports them: validation.jsonl, an extra ood.jsonl split, and
    columns of its own."""
    data = tmp_path / "data"
    data.mkdir()
    for split, n in {"train": 3, "validation": 2, "ood": 2, "test": 1}.items():
        _write(data / f"{split}.jsonl", _own_columns(n, start=10 * len(split)))
    return data


def _echo_sampler(model, tokenizer, prompts, k, **options):
    # Each sample names the row it answers: a response on the wrong row would show.
    cards = [re.search(r"Ann has (\d+) cards", tokenizer.decode(p))[1] for p in prompts]
    return [Sample(i, [5], f"Ann has {n} cards", [], [], "stop") for i, n in enumerate(cards)
            for _ in range(k)]  # fmt: skip


@pytest.mark.slow
def test_validation_jsonl_and_other_splits_with_their_own_columns(
    tiny_model, layout, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(evaluate, "sample_groups", _echo_sampler)
    out = tmp_path / "out"
    main(f"--teacher {tiny_model} --data {layout} --num-responses 2 --output {out} "
         f"{COLUMN_FLAGS}".split())  # fmt: skip
    printed = capsys.readouterr().out
    assert "train: 3 rows, 6 responses written" in printed
    assert "validation: 2 rows, 4 responses written" in printed  # not skipped: it is valid
    assert "ood: 2 rows copied unchanged" in printed and "test: 1 rows copied" in printed
    names = ["ood.jsonl", "test.jsonl", "train.jsonl", "validation.jsonl"]
    assert sorted(p.name for p in out.iterdir()) == names  # each split under its own name
    for name in ("train", "validation"):
        for row, old in zip(
            _rows(out / f"{name}.jsonl"), _rows(layout / f"{name}.jsonl"), strict=True
        ):
            responses = row.pop("teacher_responses")
            assert row == old and len(responses) == 2
            assert all(old["question"].startswith(r) for r in responses)
    for name in ("ood", "test"):
        assert (out / f"{name}.jsonl").read_text() == (layout / f"{name}.jsonl").read_text()

    # --splits names any split there is: here the extra one alone.
    main(f"--teacher {tiny_model} --data {layout} --num-responses 1 --splits ood "
         f"--output {tmp_path / 'ood'} {COLUMN_FLAGS}".split())  # fmt: skip
    assert [len(r["teacher_responses"]) for r in _rows(tmp_path / "ood" / "ood.jsonl")] == [1, 1]
    assert "teacher_responses" not in _rows(tmp_path / "ood" / "train.jsonl")[0]


def test_missing_splits_and_columns_are_named_before_the_teacher_loads(layout, tmp_path):
    argv = f"--teacher {tmp_path / 'm'} --data {layout} --num-responses 1 {COLUMN_FLAGS}"
    with pytest.raises(SystemExit) as info:
        main(f"{argv} --splits valid,hard".split())
    assert str(info.value.code) == (
        f"error: {layout / 'hard.jsonl'}: not found: it is missing (found: ood.jsonl, "
        "test.jsonl, train.jsonl, validation.jsonl); name splits that exist with --splits"
    )
    # Checked against the column --answer-feature names, not `answer`.
    _write(
        layout / "train.jsonl",
        [*_own_columns(1), {"question": "q?", "solution": "s", "final": None}],
    )
    with pytest.raises(SystemExit, match=r"train\.jsonl:2: field 'final': missing; --keep-c"):
        main(f"{argv} --keep-correct".split())
    # The rows are training's: without the column options they are not understood.
    with pytest.raises(SystemExit, match=r"train\.jsonl:1: has columns question, solution"):
        main(f"--teacher {tmp_path / 'm'} --data {layout} --num-responses 1".split())


def test_by_default_the_splits_there_are_and_a_note_for_the_others(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "ood.jsonl", _own_columns(1))
    argv = f"--teacher {tmp_path / 'm'} --data {data} --num-responses 1 {COLUMN_FLAGS}"
    with pytest.raises(SystemExit, match=r"no train or valid split to distill \(found: ood\.j"):
        main(argv.split())
    _write(data / "train.jsonl", _own_columns(1))
    with pytest.raises(SystemExit, match="m"):  # the teacher: only a missing model stops it
        main(argv.split())
    assert "Note: no valid split to distill" in capsys.readouterr().out


@pytest.mark.slow
def test_one_jsonl_file_becomes_the_train_split(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "sample_groups", _echo_sampler)
    data = tmp_path / "prompts.jsonl"
    _write(data, _own_columns(3))
    main(f"--teacher {tiny_model} --data {data} --num-responses 2 {COLUMN_FLAGS}".split())
    out = tmp_path / "prompts-distilled"  # beside the file, named for it
    assert [p.name for p in out.iterdir()] == ["train.jsonl"]
    for row, old in zip(_rows(out / "train.jsonl"), _own_columns(3), strict=True):
        responses = row.pop("teacher_responses")
        assert row == old and len(responses) == 2
    printed = capsys.readouterr().out
    assert f"Distilling {data} as the train split: {out / 'train.jsonl'}" in printed
    assert "train: 3 rows, 6 responses written" in printed and "Note:" not in printed
    # Training reads the output folder as it is, teacher answers and all.
    columns = Features(prompt="question", completion="solution", answer="final")
    trained = load_splits(str(out), need=["train"], features=columns)["train"]
    assert [len(row["teachers"]) for _, row in trained] == [2, 2, 2]


def test_one_jsonl_file_errors_name_it(tmp_path):
    argv = f"--teacher {tmp_path / 'm'} --num-responses 1 {COLUMN_FLAGS}"
    with pytest.raises(SystemExit, match=r"missing\.jsonl: no such file"):
        main(f"{argv} --data {tmp_path / 'missing.jsonl'}".split())
    data = tmp_path / "prompts.jsonl"
    _write(data, _own_columns(1))
    with pytest.raises(SystemExit, match=r"prompts\.jsonl: one \.jsonl file is the train split"):
        main(f"{argv} --data {data} --splits valid".split())
    _write(data, [*_own_columns(1), {"question": 3}])
    with pytest.raises(SystemExit, match=r"prompts\.jsonl:2: "):
        main(f"{argv} --data {data}".split())
