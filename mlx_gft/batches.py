"""Which examples each iteration trains on: length-sorted batches as mlx_lm.lora cuts
them, visited in a fresh order every epoch, reproducible from (seed, iteration)."""

import math

import numpy as np

from .config import ConfigError, TrainConfig
from .data import Example


def length_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """As mlx_lm.lora: examples sorted by length, cut into fixed batches of neighbours so a
    batch pads little; a remainder smaller than a batch is left out."""
    if len(lengths) < batch_size:
        raise ConfigError(
            f"the training set has {len(lengths)} examples, fewer than --batch-size {batch_size}"
        )
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def batch_number(count: int, iteration: int, seed: int) -> int:
    """Which of `count` batches a 0-based iteration visits: every epoch visits them in a
    fresh order, reproducible from (seed, iteration) alone."""
    epoch, k = divmod(iteration, count)
    return int(np.random.default_rng([seed, epoch]).permutation(count)[k])


def batch_indices(batches: list[np.ndarray], iteration: int, seed: int) -> list[int]:
    """The batch of a 0-based iteration (`batch_number`), so a resumed run sees the same
    data."""
    return [int(i) for i in batches[batch_number(len(batches), iteration, seed)]]


class DataStream:
    """The batches of every epoch one after another, drawn in turn: an iteration draws
    one, or several with dynamic sampling. `position` counts the batches drawn or skipped
    over the whole run (stages included), so a checkpoint that keeps it resumes the same
    order."""

    def __init__(self, batches: list[np.ndarray], seed: int, position: int = 0):
        self.batches, self.seed, self.position = batches, seed, position

    def next(self, since: int | None = None) -> tuple[int, list[int]] | None:
        """(position, example indices) of the next batch; with `since` (where the current
        iteration started drawing), of the next one it has not drawn yet, or None once it
        drew every batch. Dynamic sampling's extra rounds run on into the next epoch's
        order, where a batch the iteration drew at the end of the last one comes again:
        it is skipped, its position passed, so the positions alone still say what each
        iteration drew (a resumed run draws the same)."""
        start = self.position if since is None else since
        count = len(self.batches)
        drawn = {batch_number(count, p, self.seed) for p in range(start, self.position)}
        if len(drawn) == count:
            return None
        while batch_number(count, self.position, self.seed) in drawn:
            self.position += 1
        position = self.position
        self.position += 1
        return position, batch_indices(self.batches, position, self.seed)


def train_batches(config: TrainConfig, train_set: list[Example]) -> list[np.ndarray]:
    """The batches `train` draws from, one epoch's worth."""
    lengths = [len(e.prompt) + len(e.expert) for e in train_set]
    return length_batches(lengths, config.batch_size)


def stage_iterations(config: TrainConfig, train_set: list[Example]) -> int:
    """Iterations `train` runs for `config` on `train_set`."""
    return num_iterations(config, len(train_batches(config, train_set)))


def stage_batches(config: TrainConfig, train_set: list[Example]) -> int:
    """The most positions of the data order a stage may pass: one per iteration, or with
    dynamic sampling up to max_sampling_rounds drawn, plus as many skipped less one (a
    skipped batch is one the iteration drew before the epoch turned: `DataStream.next`).
    The next stage starts after them, wherever this one stopped, so where each stage
    starts is known before any runs (and on --resume)."""
    rounds = 2 * config.max_sampling_rounds - 1 if config.dynamic_sampling else 1
    return stage_iterations(config, train_set) * rounds


def num_iterations(config: TrainConfig, batches_per_epoch: int) -> int:
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * batches_per_epoch))
    return config.iters
