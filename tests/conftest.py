"""Shared fixtures. Importing mlx_gft first loads an optimized BLAS before MLX."""

import sys
from pathlib import Path

import pytest

import mlx_gft  # noqa: F401

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Llama with a sentencepiece tokenizer, loadable by mlx_lm.load."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory) -> Path:
    """The built-in task written as a small train/valid/test folder."""
    from mlx_gft.tasks.arithmetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data"), n_train=32, n_valid=8, n_test=8)


@pytest.fixture
def flaky_reward(tmp_path):
    """make(fail_after, message) -> a `file.py:score` reward that raises
    ValueError(message) from its call fail_after + 1 on (calls count per process),
    scoring completion-length parity before that."""
    return lambda fail_after, message="down": _write_flaky_reward(tmp_path, fail_after, message)


def _write_flaky_reward(folder: Path, fail_after: int, message: str) -> str:
    path = folder / "flaky.py"
    path.write_text(
        "calls = 0\n"
        "def score(completion, **kw):\n"
        "    global calls\n"
        "    calls += 1\n"
        f"    if calls > {fail_after}:\n"
        f"        raise ValueError({message!r})\n"
        "    return float(len(completion) % 2)\n"
    )
    return f"{path}:score"


@pytest.fixture
def batch_joins(monkeypatch) -> list:
    """A list that gets an entry each time waiting samples join a running decode batch
    (`max_concurrency`): the sampler's queueing path was taken."""
    from mlx_gft import sampling

    joins: list = []
    extend = sampling._LiveBatch.extend
    monkeypatch.setattr(
        sampling._LiveBatch, "extend", lambda self, o: joins.append(1) or extend(self, o)
    )
    return joins


@pytest.fixture
def passes(monkeypatch) -> dict:
    """How many times each fast path ran: the shared-prompt pass and the chunked head."""
    from mlx_gft import logprobs, step

    counts = {"shared": 0, "chunked": 0}

    def spy(name, module, function):
        def counted(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        monkeypatch.setattr(module, function.__name__, counted)

    spy("shared", step, step.shared_prompt_logprobs)
    spy("chunked", logprobs, logprobs.chunked_logprobs)
    return counts
