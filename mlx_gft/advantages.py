"""Group Advantage Learning: rewards z-scored inside each prompt's group (spec section 2)."""

from collections.abc import Sequence

import mlx.core as mx
import numpy as np

SCALES = ("group", "batch", "none")


def _group_ids(n: int, group_size: int | Sequence[int]) -> tuple[mx.array, int]:
    if isinstance(group_size, int):
        if group_size < 1 or n % group_size:
            raise ValueError(f"{n} rewards do not split into groups of {group_size}")
        return mx.arange(n) // group_size, n // group_size
    sizes = list(group_size)
    if sum(sizes) != n or min(sizes, default=1) < 1:
        raise ValueError(f"group sizes {sizes} do not add up to {n} rewards")
    ids = [i for i, size in enumerate(sizes) for _ in range(size)]
    return mx.array(ids), len(sizes)


def _segment_sum(values: mx.array, ids: mx.array, groups: int) -> mx.array:
    return mx.zeros((groups,), values.dtype).at[ids].add(values)


def group_advantages(
    rewards: mx.array | Sequence[float],
    group_size: int | Sequence[int],
    eps: float = 1e-6,
    scale: str = "group",
) -> mx.array:
    """A_i = (r_i - mean_G r) / (std_G r + eps), Bessel std, for rewards laid out group by group.

    `group_size` is one size for all groups or a list of sizes (rows with fewer teacher
    answers make smaller groups). A group whose rewards are all equal, or that has one
    member, gets A = 0: it carries no learning signal. `scale="batch"` divides by the
    batch's std instead, `scale="none"` keeps only the mean-centering (Dr. GRPO).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of {', '.join(SCALES)}")
    r = mx.array(rewards, dtype=mx.float32)
    ids, groups = _group_ids(r.size, group_size)
    count = _segment_sum(mx.ones_like(r), ids, groups)
    mean = _segment_sum(r, ids, groups) / count
    centered = r - mean[ids]
    spread = (mx.zeros((groups,)) - mx.inf).at[ids].maximum(r) - (
        (mx.zeros((groups,)) + mx.inf).at[ids].minimum(r)
    )
    flat = (spread == 0)[ids]
    if scale == "group":
        var = _segment_sum(centered * centered, ids, groups) / mx.maximum(count - 1, 1)
        centered = centered / (mx.sqrt(var)[ids] + eps)
    elif scale == "batch":
        dev = r - r.mean()
        std = mx.sqrt((dev * dev).sum() / max(r.size - 1, 1))
        centered = centered / (std + eps)
    return mx.where(flat, 0.0, centered)


def zero_variance_fraction(
    rewards: mx.array | Sequence[float], group_size: int | Sequence[int]
) -> float:
    """Fraction of groups whose rewards are all equal: the groups GFT cannot learn from."""
    r = mx.array(rewards, dtype=mx.float32)
    ids, groups = _group_ids(r.size, group_size)
    hi = (mx.zeros((groups,)) - mx.inf).at[ids].maximum(r)
    lo = (mx.zeros((groups,)) + mx.inf).at[ids].minimum(r)
    return (hi == lo).astype(mx.float32).mean().item()


def quiet_groups(total: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Per group, True when the rewards of its scored members are all equal (or it has
    fewer than two): every member's advantage is 0 and the group teaches nothing.
    Compared in float32, as `group_advantages` compares them."""
    total = np.asarray(total, dtype=np.float32)
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    scored = ~np.isnan(total)
    hi = np.full(len(sizes), -np.inf, dtype=np.float32)
    lo = np.full(len(sizes), np.inf, dtype=np.float32)
    np.maximum.at(hi, group_of[scored], total[scored])
    np.minimum.at(lo, group_of[scored], total[scored])
    return ~(hi > lo)


def scored_advantages(
    total: np.ndarray, sizes: Sequence[int], scale: str = "group"
) -> tuple[mx.array, float]:
    """Group advantages and the zero-variance share of `score`'s weighted sums laid out
    group by group, leaving out the samples no reward scored (NaN).

    Such a sample gets A = 0 and changes neither its group's mean nor its spread, as if it
    were not there; a group with no scored sample counts as zero-variance. The share is
    `quiet_groups`', the groups the update leaves out. Without NaN this is exactly
    `group_advantages` and `zero_variance_fraction`."""
    total = np.asarray(total, dtype=np.float64)
    flat = float(quiet_groups(total, sizes).mean())  # the groups the update leaves out
    scored = ~np.isnan(total)
    if scored.all():
        return group_advantages(total, sizes, scale=scale), flat
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    kept = np.bincount(group_of[scored], minlength=len(sizes))
    adv = np.zeros(len(total), dtype=np.float32)
    if scored.any():
        kept_sizes = [int(k) for k in kept if k]
        adv[scored] = np.array(group_advantages(total[scored], kept_sizes, scale=scale))
    return mx.array(adv), flat
