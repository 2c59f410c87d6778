"""Group layout (spec section 2) and the padded batch with its response mask."""

import numpy as np

from mlx_gft.data import Example
from mlx_gft.groups import build_groups, pad_batch, response_start
from mlx_gft.sampling import Sample


def sample(i: int, tokens: list[int], reason: str = "stop") -> Sample:
    return Sample(i, tokens, f"s{tokens}", [0.0] * len(tokens), [0.0] * len(tokens), reason)


def test_expert_then_teachers_then_samples_with_smaller_groups_counted():
    full = Example(
        [1, 2], [7, 2], teachers=[[8, 2], [9, 2], [10, 2]], teacher_texts=["a", "b", "c"]
    )
    short = Example([3], [5, 2], teachers=[[6, 2]], teacher_texts=["d"])
    samples = [
        sample(0, [11, 2]),
        sample(0, [12], "length"),
        sample(1, [13, 2]),
        sample(1, [14, 2]),
    ]
    groups = build_groups([full, short], samples, group_size=2, teacher_count=3)
    kinds = [m.kind for m in groups.members]
    assert kinds == [
        "expert",
        "teacher",
        "teacher",
        "sampled",
        "sampled",
        "expert",
        "teacher",
        "sampled",
        "sampled",
    ]
    assert groups.sizes == [5, 4]
    assert groups.missing_teachers == 1  # the second row had one teacher of the two asked for
    assert [m.response for m in groups.members[:3]] == [[7, 2], [8, 2], [9, 2]]
    assert groups.members[4].truncated and not groups.members[3].truncated
    grpo = build_groups([full, short], samples, 2, 3, include_offpolicy=False)
    assert [m.kind for m in grpo.members] == ["sampled"] * 4 and grpo.sizes == [2, 2]


def test_truncated_expert_is_left_out_of_its_group():
    ex = Example([1], [4, 5], expert_truncated=True)
    groups = build_groups([ex], [sample(0, [6, 2])], group_size=1, teacher_count=1)
    assert [m.kind for m in groups.members] == ["sampled"]


def test_pad_batch_masks_exactly_the_response_targets():
    tokens, mask = pad_batch([([1, 2, 3], [4, 5]), ([1], [6, 7, 8])], pad_id=0)
    assert tokens.shape == (2, 33)  # L - 1 rounded up to 32
    np.testing.assert_array_equal(np.array(tokens)[:, :5], [[1, 2, 3, 4, 5], [1, 6, 7, 8, 0]])
    # Position t predicts token t + 1: row 0 scores targets 4, 5 at positions 2, 3.
    np.testing.assert_array_equal(np.array(mask)[:, :5], [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]])
    assert response_start(mask) == 0


def test_mask_truncated_drops_cut_off_samples_from_the_loss():
    from mlx_gft.config import build_config
    from mlx_gft.rollout import training_arrays

    class Tok:
        eos_token_id = 2

    ex = Example([1, 3], [7, 2])
    samples = [sample(0, [11, 2]), sample(0, [12, 13, 14], "length")]
    groups = build_groups([ex], samples, group_size=2, teacher_count=1)
    adv = np.zeros(3, dtype=np.float32)
    for flag, rows in ((False, [2, 2, 3]), (True, [2, 2, 0])):
        _, arrays = training_arrays(None, Tok(), groups, adv, build_config(mask_truncated=flag))
        assert np.array(arrays[1]).sum(axis=1).tolist() == rows
