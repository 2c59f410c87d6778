"""Progress of evaluation and distillation: a tqdm bar on a terminal, otherwise a line
now and then with the time left."""

import io

import pytest

from mlx_gft.distill import main as distill_main
from mlx_gft.evaluate import main as evaluate_main
from mlx_gft.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_tenth_with_the_time_left():
    clock, lines = Clock(), []
    progress = Progress(40, "Sampling 4 per problem", lines.append, clock=clock)
    for _ in range(5):  # batches of 8 problems, 10 s each
        clock.now += 10
        progress.update(8)
    assert lines[0] == "Sampling 4 per problem: 8/40 problems (20%), 0:10 elapsed, about 0:40 left"
    assert len(lines) == 5  # every 4 problems asked; the batches are 8
    assert (
        lines[-1] == "Sampling 4 per problem: 40/40 problems (100%), 0:50 elapsed, about 0:00 left"
    )


def test_every_n_and_a_resumed_count():
    clock, lines = Clock(), []
    progress = Progress(
        100, "Training", lines.append, unit="iterations", every=25, initial=50, clock=clock
    )
    clock.now += 60
    progress.update(10)  # 60: no line yet
    assert lines == []
    progress.update(15)
    # The rate counts this run's 25 iterations in 60 s only, not the 50 done before.
    assert lines == ["Training: 75/100 iterations (75%), 1:00 elapsed, about 1:00 left"]


def test_durations_read_like_tqdm():
    assert [duration(s) for s in (0, 59.6, 61, 3723)] == ["0:00", "1:00", "1:01", "1:02:03"]


def test_a_terminal_gets_a_bar_and_no_lines(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, lines = Terminal(), []
    monkeypatch.setattr("sys.stderr", terminal)
    with Progress(10, "Greedy", lines.append) as progress:
        progress.update(10)
    assert lines == [] and "Greedy" in terminal.getvalue()


@pytest.mark.slow
def test_evaluate_prints_progress_lines_when_not_on_a_terminal(
    tiny_model, arithmetic_data, tmp_path, capsys
):
    argv = f"--model {tiny_model} --data {arithmetic_data} --split valid --limit 4 --samples 2"
    evaluate_main(f"{argv} --max-tokens 4 --batch-size 2 --output {tmp_path / 'r.json'}".split())
    printed = capsys.readouterr().out.splitlines()
    sampled = [line for line in printed if line.startswith("Sampling 2 per problem: ")]
    greedy = [line for line in printed if line.startswith("Greedy: ")]
    assert [line.split(",")[0] for line in sampled] == [
        "Sampling 2 per problem: 2/4 problems (50%)",
        "Sampling 2 per problem: 4/4 problems (100%)",
    ]
    assert greedy[-1].startswith("Greedy: 4/4 problems (100%), ") and "left" in greedy[-1]


@pytest.mark.slow
def test_distill_prints_progress_lines_when_not_on_a_terminal(
    tiny_model, arithmetic_data, tmp_path, capsys
):
    distill_main(
        f"--teacher {tiny_model} --data {arithmetic_data} --splits valid --num-responses 1 "
        f"--max-tokens 3 --batch-size 4 --output {tmp_path / 'out'}".split()
    )
    printed = capsys.readouterr().out.splitlines()
    lines = [line for line in printed if line.startswith("Distilling valid: ")]
    assert [line.split(",")[0] for line in lines] == [
        "Distilling valid: 4/8 rows (50%)",
        "Distilling valid: 8/8 rows (100%)",
    ]


@pytest.mark.slow
def test_training_shows_held_out_progress_when_not_on_a_terminal(tiny_model, tmp_path, capsys):
    from mlx_gft.lora import main as lora_main
    from mlx_gft.tasks.arithmetic import write_dataset

    # 20 test problems, sampled 16 at a time: a line after each batch, before and after.
    data = write_dataset(tmp_path / "data", n_train=4, n_valid=2, n_test=20)
    lora_main(
        f"--model {tiny_model} --data {data} --train --test --iters 1 --batch-size 2 "
        "--group-size 2 --max-completion-length 4 --num-layers -1 --probe-size 2 "
        f"--val-batches 1 --adapter-path {tmp_path / 'ad'}".split()
    )
    printed = capsys.readouterr().out.splitlines()
    lines = [line for line in printed if line.startswith("Held-out ")]
    # Each measurement's progress (up to its count), then its result (up to the number).
    shapes = [
        line.split(",")[0] if "/20 problems" in line else line.split(":")[0] for line in lines
    ]
    assert shapes == [
        "Held-out before: 16/20 problems (80%)",
        "Held-out before: 20/20 problems (100%)",
        "Held-out accuracy before",
        "Held-out after: 16/20 problems (80%)",
        "Held-out after: 20/20 problems (100%)",
        "Held-out accuracy after",
    ]
    assert all("elapsed, about" in line and line.endswith(" left") for line in lines[:2])
    assert "on 20 problems" in lines[2]
