"""Data parallelism over MLX's own distributed layer (`mlx.launch`, ring or MPI).

Every rank holds the whole model and takes its share of each global batch of prompts,
so a group (expert, teachers, K samples of one prompt) never straddles ranks: rewards
and advantages stay local. Gradients are summed over ranks before the update, metrics
are reduced for the report, and rank 0 alone writes files.
"""

import mlx.core as mx
from mlx.nn.utils import average_gradients
from mlx.utils import tree_map

from .config import ConfigError


def shard(indices: list[int], ranks) -> list[int]:
    """This rank's prompts of a global batch (interleaved, as mlx_lm.lora shards)."""
    return indices[ranks.rank() :: ranks.size()]


def sum_gradients(grads, ranks):
    """Sum a gradient tree over ranks. average_gradients packs small arrays into few
    messages; every rank holds the same N, so the sum is N times the average."""
    n = ranks.size()
    return tree_map(lambda g: g * n, average_gradients(grads, group=ranks))


def all_ranks_sum(value: float, ranks) -> float:
    """`value` summed over the ranks (itself without several ranks): for decisions every
    rank must take alike."""
    if ranks is None or ranks.size() == 1:
        return value
    return mx.distributed.all_sum(mx.array(float(value)), group=ranks, stream=mx.cpu).item()


def reduce_metrics(row: dict, rules: dict, ranks) -> dict:
    """Combine one iteration's metrics over ranks by `rules` (`metrics.RULES`: the same
    keys in the same order on every rank, whether or not this rank measured them).
    A metric no rank measured stays absent; "mean" is over the ranks that have it."""
    if ranks.size() == 1:
        return row
    keys = list(rules)
    values = mx.array([[float(row.get(k, 0.0)), float(k in row)] for k in keys], dtype=mx.float32)
    sums = mx.distributed.all_sum(values, group=ranks, stream=mx.cpu).tolist()
    maxes = mx.distributed.all_max(values[:, 0], group=ranks, stream=mx.cpu).tolist()
    out = dict(row)
    for k, (total, present), top in zip(keys, sums, maxes, strict=True):
        if present:
            how = rules[k].ranks
            out[k] = total if how == "sum" else top if how == "max" else total / present
    return out


def check_ranks(config, ranks: int) -> None:
    """Every rank must take the same number of groups and make the same number of
    updates, or one would wait forever for the others' gradients."""
    if config.batch_size % ranks:
        raise ConfigError(f"batch_size {config.batch_size} must be divisible by {ranks} ranks")
    if config.batch_size // ranks < config.updates_per_batch:
        raise ConfigError(
            f"updates_per_batch {config.updates_per_batch} needs at least that many prompts "
            f"per rank; batch_size {config.batch_size} over {ranks} ranks gives "
            f"{config.batch_size // ranks}"
        )


def quiet(*args, **kwargs) -> None:
    """The log of a rank that is not rank 0."""


def init(config, log, training: bool = True):
    """(ranks, log): the world of processes this job runs on (one without mlx.launch),
    checked for `config` when training; ranks other than 0 log nothing."""
    ranks = mx.distributed.init()
    if training and ranks.size() > 1:
        check_ranks(config, ranks.size())
    return ranks, log if ranks.rank() == 0 else quiet
