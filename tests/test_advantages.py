"""Group advantages: hand values and properties (hypothesis)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_gft.advantages import group_advantages, quiet_groups, zero_variance_fraction


def test_hand_computed_group():
    # One right answer among four: mean 0.25, Bessel std 0.5 -> +1.5 and -0.5.
    adv = np.array(group_advantages([1.0, 0, 0, 0], 4))
    np.testing.assert_allclose(adv, [1.5, -0.5, -0.5, -0.5], rtol=1e-5)


def test_all_wrong_group_gives_zero_and_is_counted():
    rewards = [0, 0, 0, 0, 1, 0, 1, 0]
    adv = np.array(group_advantages(rewards, 4))
    assert np.all(adv[:4] == 0)
    assert zero_variance_fraction(rewards, 4) == 0.5


def test_variable_group_sizes():
    adv = np.array(group_advantages([1, 0, 2, 2, 2, 5], [2, 3, 1]))
    np.testing.assert_allclose(adv[:2], [0.7071063, -0.7071063], rtol=1e-5)
    assert np.all(adv[2:] == 0)  # a constant group and a group of one carry no signal
    assert zero_variance_fraction([1, 0, 2, 2, 2, 5], [2, 3, 1]) == pytest.approx(2 / 3)


def test_quiet_groups_are_those_with_all_advantages_zero():
    nan = float("nan")
    total = [1, 1, 1, 0, 1, nan, 2, nan, nan, 3, nan, 1, 1.00000001]
    sizes = [3, 2, 2, 2, 1, 3]
    # all equal; spread; one scored; none scored; one member; equal in float32
    assert quiet_groups(total, sizes).tolist() == [True, False, True, True, True, True]
    no_nan = [1, 1, 0, 2, 2, 2, 5]
    quiet = quiet_groups(no_nan, [2, 1, 3, 1])
    assert quiet.mean() == zero_variance_fraction(no_nan, [2, 1, 3, 1])


def test_scale_none_only_centers_and_batch_scale():
    np.testing.assert_allclose(np.array(group_advantages([3.0, 1.0], 2, scale="none")), [1.0, -1.0])
    r = np.array([1.0, 0.0, 0.0, 0.0])
    batch = np.array(group_advantages(r, 2, scale="batch"))
    np.testing.assert_allclose(batch[:2], (r[:2] - 0.5) / (r.std(ddof=1) + 1e-6), rtol=1e-5)


def test_bad_layouts_are_errors():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages([1, 2, 3, 4], 3)
    with pytest.raises(ValueError, match="add up"):
        group_advantages([1, 2, 3], [2, 2])
    with pytest.raises(ValueError, match="scale"):
        group_advantages([1, 2], 2, scale="z")


rewards_st = st.floats(-100, 100, allow_nan=False, width=32)


@st.composite
def grouped(draw):
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=6))
    rewards = draw(st.lists(rewards_st, min_size=sum(sizes), max_size=sum(sizes)))
    return np.array(rewards, dtype=np.float32), sizes


def _split(values, sizes):
    return np.split(values, np.cumsum(sizes)[:-1])


@settings(max_examples=200, deadline=None)
@given(grouped())
def test_group_properties(case):
    rewards, sizes = case
    adv = np.array(group_advantages(rewards, sizes))
    for r, a in zip(_split(rewards, sizes), _split(adv, sizes), strict=True):
        if np.all(r == r[0]):
            assert np.all(a == 0)
            continue
        assert abs(a.mean()) < 1e-4
        std = r.std(ddof=1)
        # Unit Bessel std up to the eps in the denominator.
        assert a.std(ddof=1) == pytest.approx(std / (std + 1e-6), rel=1e-3)


@settings(max_examples=100, deadline=None)
@given(grouped(), st.floats(-50, 50, allow_nan=False, width=32))
def test_invariant_to_shifting_a_group(case, shift):
    rewards, sizes = case
    shifted = _split(rewards.copy(), sizes)
    shifted[0] = shifted[0] + np.float32(shift)
    # Skip shifts that lose float32 precision on a group's spread.
    spread = np.ptp(_split(rewards, sizes)[0])
    if spread and spread < 1e-3 * (abs(shift) + np.abs(rewards).max()):
        return
    a = np.array(group_advantages(rewards, sizes))
    b = np.array(group_advantages(np.concatenate(shifted), sizes))
    np.testing.assert_allclose(a, b, atol=2e-3)
