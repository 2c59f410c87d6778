"""Data parallelism over MLX's own distributed layer (`mlx.launch`, ring or MPI).

Every rank holds the whole model and takes its share of each global batch of prompts,
so a group (expert, teachers, K samples of one prompt) never straddles ranks: rewards
and advantages stay local. Gradients are summed over ranks before the update, metrics
are reduced for the report, and rank 0 alone writes files.
"""

import mlx.core as mx
from mlx.nn.utils import average_gradients
from mlx.utils import tree_map

# How each per-iteration metric combines over ranks (anything else: mean over the ranks
# that have it). Times take the slowest rank: the others wait for it.
SUMMED = ("gen_tokens", "train_tokens", "missing_teachers", "groups", "stop")
SLOWEST = ("sample_time", "train_time")


def shard(indices: list[int], group) -> list[int]:
    """This rank's prompts of a global batch (interleaved, as mlx_lm.lora shards)."""
    return indices[group.rank() :: group.size()]


def sum_gradients(grads, group):
    """Sum a gradient tree over ranks. average_gradients packs small arrays into few
    messages; every rank holds the same N, so the sum is N times the average."""
    n = group.size()
    return tree_map(lambda g: g * n, average_gradients(grads, group=group))


def reduce_metrics(row: dict, keys: list[str], group) -> dict:
    """Combine one iteration's metrics over ranks; `keys` (the same list on every rank)
    names what to exchange, whether or not this rank has it."""
    if group.size() == 1:
        return row
    values = mx.array([[float(row.get(k, 0.0)), float(k in row)] for k in keys], dtype=mx.float32)
    sums = mx.distributed.all_sum(values, group=group, stream=mx.cpu).tolist()
    slowest = mx.distributed.all_max(
        mx.array([float(row.get(k, 0.0)) for k in SLOWEST]), group=group, stream=mx.cpu
    ).tolist()
    out = dict(row)
    for k, (total, present) in zip(keys, sums, strict=True):
        if present:
            out[k] = total if k in SUMMED else total / present
    out.update(zip(SLOWEST, slowest, strict=True))
    return out
