"""Held-out evaluation: avg@k / pass@k arithmetic, the sampler loop and the CLI."""

import json
import re

import numpy as np
import pytest
from random_adapters import write_random_adapters

from mlx_gft import evaluate
from mlx_gft.data import Example
from mlx_gft.evaluate import (
    accuracy,
    avg_and_pass_at_k,
    avg_at_k_stderr,
    distinct_answers,
    main,
    pass_at_k_curve,
    score_samples,
)
from mlx_gft.models import load_model
from mlx_gft.sampling import Sample

RESULT_KEYS = {
    "n", "samples", "temperature", "top_k", "min_p", "max_concurrency", "max_tokens", "seed",
    "avg_at_k", "avg_at_k_stderr", "pass_at_k", "pass_at", "distinct_answers", "greedy", "correct",
    "greedy_correct", "reward", "model", "answer_tokens", "share_matching", "matching",
    "adapter_path", "data", "dataset_config", "split",
}  # fmt: skip


def test_pass_at_k_curve_is_the_unbiased_estimator():
    correct = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    # Problem 1 (2 of 4 right): pass@1 = 1 - C(2,1)/C(4,1) = 1/2, pass@2 = 1 - C(2,2)/C(4,2)
    # = 5/6, pass@3 = pass@4 = 1 (fewer than k wrong samples); problem 2: 0; problem 3: 1.
    curve = pass_at_k_curve(correct)
    assert curve == pytest.approx([1 / 2, (5 / 6 + 1) / 3, 2 / 3, 2 / 3])
    avg, passed = avg_and_pass_at_k(correct)
    assert (curve[0], curve[-1]) == pytest.approx((avg, passed))
    assert pass_at_k_curve(np.zeros((0, 3))) == []


def test_avg_at_k_stderr_is_the_spread_over_problems():
    # Per-problem accuracy 1/2, 0, 1: mean 1/2, sample variance ((0)^2 + (1/2)^2 + (1/2)^2)/2
    # = 1/4, standard error sqrt(1/4) / sqrt(3).
    correct = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert avg_at_k_stderr(correct) == pytest.approx(0.5 / np.sqrt(3))
    # 64 problems each right half the time: no spread over problems, standard error 0.
    assert avg_at_k_stderr(np.tile([1, 0], (64, 1))) == 0.0
    assert np.isnan(avg_at_k_stderr(np.ones((1, 4))))
    assert np.isnan(avg_at_k_stderr(np.zeros((0, 2))))


def test_distinct_answers_counts_final_answers_per_problem():
    texts = [["The answer is 3.", "#### 3", "\\boxed{4}"], ["no answer here", "nothing"]]
    assert distinct_answers(texts) == pytest.approx((2 + 1) / 2)  # {3, 4}; {none}


def test_avg_and_pass_at_k_match_hand_counts():
    correct = np.array(
        [
            [1, 0, 0, 1],  # 2 of 4
            [0, 0, 0, 0],  # none
            [1, 1, 1, 1],  # all
        ]
    )
    avg, passed = avg_and_pass_at_k(correct)
    assert avg == pytest.approx(6 / 12)
    assert passed == pytest.approx(2 / 3)
    # Rewards, not booleans: only > 0 counts as correct.
    avg, passed = avg_and_pass_at_k(np.array([[1.0, -1.0], [0.0, 0.0]]))
    assert (avg, passed) == (0.25, 0.5)
    assert all(np.isnan(v) for v in avg_and_pass_at_k(np.zeros((0, 4))))


def _examples(answers: list[str]) -> list[Example]:
    return [
        Example(prompt=[1, i + 3], expert=[2], prompt_text=f"q{i}", answer=a, where=f"f:{i + 1}")
        for i, a in enumerate(answers)
    ]


def test_accuracy_scores_each_problem_in_batches(monkeypatch):
    # Problem p's sample j is right when RIGHT[p][j]: the counts are known in advance.
    right = [[True, False, True], [False, False, False], [True, True, True]]
    answers = ["4", "7", "10"]
    calls = []

    def fake_sampler(model, tokenizer, prompts, k, *, max_tokens, temperature, seed, **options):
        calls.append((len(prompts), k, seed, temperature))
        assert options == {"top_k": 0, "min_p": 0.0, "max_concurrency": None}  # the defaults
        first = [p[1] - 3 for p in prompts]  # the problem index, from _examples' prompt
        return [
            Sample(i, [5], f"The answer is {answers[p] if right[p][j] else 0}.", [], [], "stop")
            for i, p in enumerate(first)
            for j in range(k)
        ]

    monkeypatch.setattr(evaluate, "sample_groups", fake_sampler)
    result = accuracy(None, None, _examples(answers), "math", samples=3, seed=5, batch_size=2)
    assert result["correct"] == [2, 0, 3]
    assert result["avg_at_k"] == pytest.approx(5 / 9)
    assert result["pass_at_k"] == pytest.approx(2 / 3)
    # Two batches of prompts, each seeded by its offset, k samples per prompt.
    assert calls == [(2, 3, 5, 1.0), (1, 3, 7, 1.0)]
    greedy = accuracy(None, None, _examples(answers), "math", samples=3, temperature=0.0)
    assert greedy["samples"] == 1 and greedy["correct"] == [1, 0, 1]


def test_cli_errors_name_the_file(tmp_path):
    with pytest.raises(SystemExit, match=r"error: .*missing\.jsonl: no such file"):
        main(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "missing.jsonl")])
    no_answers = tmp_path / "plain.jsonl"
    no_answers.write_text('{"prompt": "2+2?", "completion": "4"}\n')
    with pytest.raises(SystemExit, match=r"error: .*plain\.jsonl: no rows with an 'answer'"):
        main(["--model", str(tmp_path / "m"), "--data", str(no_answers)])
    with pytest.raises(SystemExit, match=r"error: .*test\.jsonl: not found"):
        main(["--model", str(tmp_path / "m"), "--data", str(tmp_path)])


@pytest.mark.slow
def test_cli_writes_results_and_prints_table(tiny_model, arithmetic_data, tmp_path, capsys):
    out = tmp_path / "r" / "results.json"
    argv = f"--model {tiny_model} --data {arithmetic_data} --split valid --limit 3"
    argv += f" --samples 2 --temperature 1.0 --max-tokens 6 --batch-size 2 --output {out}"
    main(argv.split())
    result = json.loads(out.read_text())
    assert set(result) == RESULT_KEYS
    assert result["n"] == 3 and result["samples"] == 2 and result["split"] == "valid"
    assert len(result["correct"]) == 3 and all(0 <= c <= 2 for c in result["correct"])
    assert len(result["greedy_correct"]) == 3 and all(c in (0, 1) for c in result["greedy_correct"])
    assert result["avg_at_k"] == pytest.approx(sum(result["correct"]) / 6)
    per_problem = np.array(result["correct"]) / 2
    assert result["avg_at_k_stderr"] == pytest.approx(per_problem.std(ddof=1) / np.sqrt(3))
    assert result["adapter_path"] is None and result["model"] == str(tiny_model)
    assert (result["top_k"], result["min_p"], result["max_concurrency"]) == (0, 0.0, None)
    printed = capsys.readouterr().out
    for label in ("problems  3", "avg@2", "pass@2", "greedy", f"Results written to {out}"):
        assert label in printed


@pytest.mark.slow
def test_cli_reads_one_jsonl_file_and_skips_rows_without_answers(tiny_model, tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    chat = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]
    rows = [
        {"prompt": "Tom has 2 pens and gets 3 more. How many?", "completion": "5", "answer": 5},
        {"prompt": "Say hi.", "completion": "hi"},
        {"messages": chat, "answer": "2"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.json"
    main(f"--model {tiny_model} --data {data} --samples 1 --max-tokens 4 --output {out}".split())
    assert json.loads(out.read_text())["n"] == 2
    assert f"skipped 1 row(s) without an 'answer' (first: {data}:2)" in capsys.readouterr().out


def _recording_reward(folder):
    """A `file.py:fn` reward that scores 0 and logs every completion it is given, in
    order: the k samples of each problem, then (at T > 0) each problem's greedy answer."""
    log = folder / "completions.jsonl"
    (folder / "record.py").write_text(
        "import json\n"
        "def record(completion, **kw):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(json.dumps(completion) + '\\n')\n"
        "    return 0.0\n"
    )

    def completions():
        texts = [json.loads(line) for line in log.read_text().splitlines()]
        log.unlink()
        return texts

    return f"{folder / 'record.py'}:record", completions


@pytest.mark.slow
def test_answer_length_and_the_share_a_pattern_finds(tiny_model, arithmetic_data, tmp_path, capsys):
    """The samples' mean length in tokens and the share of them a regular expression finds
    in (how off-policy experiments count answers in the expert's style)."""
    reward, completions = _recording_reward(tmp_path)
    out = tmp_path / "r.json"
    argv = f"--model {tiny_model} --data {arithmetic_data} --split valid --limit 3 --samples 3 "
    argv += f"--max-tokens 6 --reward {reward} --output {out} --share-matching [aeiou]"
    main(argv.split())
    sampled = completions()[:9]
    result = json.loads(out.read_text())
    assert result["share_matching"] == pytest.approx(
        sum(re.search("[aeiou]", t) is not None for t in sampled) / 9
    )
    assert 1 <= result["answer_tokens"] <= 6 and result["matching"] == "[aeiou]"
    assert "share of samples with /[aeiou]/" in capsys.readouterr().out
    main(argv.replace(" --share-matching [aeiou]", "").split())
    assert json.loads(out.read_text())["share_matching"] is None
    with pytest.raises(SystemExit):
        main([*argv.split()[:-1], "(unclosed"])
    assert "--share-matching: not a regular expression" in capsys.readouterr().err


def test_cli_top_k_1_samples_the_greedy_answer(tiny_model, arithmetic_data, tmp_path, capsys):
    reward, completions = _recording_reward(tmp_path)
    out = tmp_path / "r.json"
    argv = f"--model {tiny_model} --data {arithmetic_data} --split valid --limit 3 --samples 3 "
    argv += f"--max-tokens 6 --reward {reward} --output {out}"
    main(argv.split())
    texts = completions()
    sampled, greedy = texts[:9], texts[9:]
    assert len(greedy) == 3
    assert sampled != [g for g in greedy for _ in range(3)]  # T=1 samples are not all greedy

    main(f"{argv} --top-k 1 --min-p 0.05".split())
    texts = completions()
    assert texts[9:] == greedy
    assert texts[:9] == [g for g in greedy for _ in range(3)]  # top-1 of T=1 is the argmax
    result = json.loads(out.read_text())
    assert set(result) == RESULT_KEYS
    assert (result["top_k"], result["min_p"], result["max_concurrency"]) == (1, 0.05, None)
    assert "(mean over 3 samples at T=1, top-k 1, min-p 0.05; standard error" in (
        capsys.readouterr().out
    )


@pytest.mark.slow
def test_cli_max_concurrency_does_not_change_the_samples(
    tiny_model, arithmetic_data, tmp_path, batch_joins
):
    joins = batch_joins
    reward, completions = _recording_reward(tmp_path)
    out = tmp_path / "r.json"
    # Hot enough that the random model's EOS ends some samples early, so with a cap of
    # 2 waiting samples join a running batch (a cap of 1 only ever runs one at a time).
    argv = f"--model {tiny_model} --data {arithmetic_data} --split valid --limit 4 --samples 8 "
    argv += f"--batch-size 4 --temperature 3 --max-tokens 64 --reward {reward} --output {out}"
    main(argv.split())
    free, free_result = completions(), json.loads(out.read_text())
    assert len(free) == 4 * 8 + 4 and not joins
    for cap in (1, 2):
        main(f"{argv} --max-concurrency {cap}".split())
        assert completions() == free
        result = json.loads(out.read_text())
        assert result["max_concurrency"] == cap
        assert result | {"max_concurrency": None} == free_result
    assert joins, "with --max-concurrency 2, waiting samples should join a running batch"


def test_cli_rejects_bad_sampling_options(tmp_path, capsys):
    # Checked by the parser, before any data or model is read.
    for flag, message in [
        ("--top-k -1", "--top-k must be >= 0"),
        ("--min-p 1", "--min-p must be in [0, 1)"),
        ("--min-p nan", "--min-p must be in [0, 1)"),
        ("--max-concurrency 0", "--max-concurrency must be at least 1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(f"--model {tmp_path / 'm'} {flag}".split())
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_adapters_change_what_is_evaluated(tiny_model, arithmetic_data, tmp_path, capsys):
    adapters = tmp_path / "adapters"
    write_random_adapters(tiny_model, adapters)
    from mlx_gft.data import load_splits

    rows = load_splits(str(arithmetic_data))["test"][:4]
    texts = []
    for path in (None, adapters):
        model, tok = load_model(str(tiny_model), str(path) if path else None)
        examples = evaluate.sampling_examples(rows, tok, model)
        greedy = score_samples(model, tok, examples, temperature=0.0, max_tokens=8).texts
        texts.append(greedy)
    assert len(texts[0]) == 4 and texts[0] != texts[1]

    # The CLI loads them too, and by default writes its results next to them.
    main(f"--model {tiny_model} --data {arithmetic_data} --limit 2 --samples 2 "
         f"--max-tokens 4 --adapter-path {adapters}".split())  # fmt: skip
    result = json.loads((adapters / "eval_results.json").read_text())
    assert result["adapter_path"] == str(adapters) and result["n"] == 2
    assert f"Results written to {adapters / 'eval_results.json'}" in capsys.readouterr().out


@pytest.mark.slow
def test_adapters_that_do_not_fit_are_an_error(tiny_model, arithmetic_data, tmp_path):
    adapters = tmp_path / "bad"
    write_random_adapters(tiny_model, adapters)
    config = json.loads((adapters / "adapter_config.json").read_text())
    config["lora_parameters"]["rank"] = 8  # the saved matrices have rank 4
    (adapters / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(
        SystemExit,
        match=r"error: adapters in .*bad do not fit the model:\n  model\.layers\..*does not match",
    ):
        main(f"--model {tiny_model} --data {arithmetic_data} --adapter-path {adapters}".split())
    with pytest.raises(SystemExit, match=r"error: .*nowhere/adapter_config\.json: not found"):
        main(f"--model {tiny_model} --adapter-path {tmp_path / 'nowhere'}".split())


# --------------------------------------------------------------------------------------
# Splits and columns, read as training reads them


def _own_columns_folder(folder, splits: dict[str, int]):
    """A folder of <split>.jsonl files with n rows each, in columns of its own: the
    question in `question`, the worked answer in `solution`, the number in `final`."""
    folder.mkdir()
    for split, n in splits.items():
        rows = [
            {"question": f"Tom has {i} pens and buys 1 more. How many?", "solution": f"{i + 1}",
             "final": i + 1}
            for i in range(n)
        ]  # fmt: skip
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


COLUMN_FLAGS = "--prompt-feature question --completion-feature solution --answer-feature final"


def test_cli_a_missing_split_lists_the_splits_found(tmp_path):
    data = _own_columns_folder(tmp_path / "data", {"train": 1, "valid": 1, "ood": 1})
    with pytest.raises(SystemExit) as info:
        main(f"--model {tmp_path / 'm'} --data {data} --split hard {COLUMN_FLAGS}".split())
    assert str(info.value.code) == (
        f"error: {data / 'hard.jsonl'}: not found: it is missing (found: ood.jsonl, "
        "train.jsonl, valid.jsonl); choose one with --split"
    )
    # Without the column options the rows are not understood: they are training's rows.
    with pytest.raises(SystemExit, match=r"ood\.jsonl:1: has columns question, solution, final"):
        main(f"--model {tmp_path / 'm'} --data {data} --split ood".split())


@pytest.mark.slow
def test_cli_reads_any_split_file_and_validation_with_trainings_columns(
    tiny_model, tmp_path, capsys
):
    data = _own_columns_folder(tmp_path / "data", {"train": 1, "valid": 2, "ood": 3})
    argv = f"--model {tiny_model} --data {data} --samples 1 --max-tokens 2 {COLUMN_FLAGS}"
    for split, n in (("ood", 3), ("validation", 2)):  # validation reads valid.jsonl
        out = tmp_path / f"{split}.json"
        main(f"{argv} --split {split} --output {out}".split())
        result = json.loads(out.read_text())
        # Every row counted: each one's `final` column was read as its answer.
        assert (result["n"], result["split"]) == (n, split)
        assert len(result["correct"]) == n
