"""Data order: length-sorted batches, a fresh batch order every epoch, --epochs."""

import pytest

from mlx_gft.batches import batch_indices, length_batches, num_iterations
from mlx_gft.config import ConfigError, build_config


def test_batches_are_length_neighbours_and_drop_the_remainder():
    lengths = [50, 10, 40, 20, 30, 60, 5]
    batches = length_batches(lengths, 3)
    assert [sorted(lengths[i] for i in b) for b in batches] == [[5, 10, 20], [30, 40, 50]]


def test_each_epoch_visits_every_batch_once_in_a_seeded_order():
    batches = length_batches(list(range(12)), 2)  # 6 batches
    epoch0 = [tuple(batch_indices(batches, it, seed=1)) for it in range(6)]
    epoch1 = [tuple(batch_indices(batches, it, seed=1)) for it in range(6, 12)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(tuple(int(i) for i in b) for b in batches)
    assert epoch0 != epoch1  # reshuffled between epochs
    assert epoch0 == [tuple(batch_indices(batches, it, seed=1)) for it in range(6)]


def test_too_few_examples_and_epochs():
    with pytest.raises(ConfigError, match="fewer than --batch-size 4"):
        length_batches([1, 2, 3], 4)
    assert num_iterations(build_config(epochs=2.5), batches_per_epoch=4) == 10
    assert num_iterations(build_config(iters=7), batches_per_epoch=4) == 7
    assert num_iterations(build_config(epochs=0.1), batches_per_epoch=4) == 1
