"""Assemble each prompt's group: expert, teacher answers and self-samples (spec section 2).

A group is laid out expert first, then the first `teacher_count - 1` teacher answers,
then the K samples. Every member keeps its exact token ids. The whole step's members
are padded into one (N, L) batch; `mask` marks the response tokens the loss sees.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .data import Example
from .sampling import Sample

KINDS = ("expert", "teacher", "sampled")


@dataclass
class Member:
    prompt: list[int]
    response: list[int]
    kind: str  # one of KINDS
    text: str
    example: Example
    truncated: bool = False


@dataclass
class Groups:
    members: list[Member]
    sizes: list[int]  # members per group, in order
    missing_teachers: int = 0  # teacher answers asked for but absent (rows with fewer)

    def member_rows(self, groups: Sequence[int]) -> list[int]:
        """The members' indices of these groups, in order."""
        starts = np.cumsum([0, *self.sizes])
        return [r for g in groups for r in range(starts[g], starts[g + 1])]

    def select(self, groups: Sequence[int]) -> "Groups":
        """These groups alone (missing_teachers stays the whole batch's count)."""
        members = [self.members[r] for r in self.member_rows(groups)]
        return Groups(members, [self.sizes[g] for g in groups], self.missing_teachers)

    @staticmethod
    def concat(parts: Sequence["Groups"]) -> "Groups":
        return Groups(
            [m for p in parts for m in p.members],
            [s for p in parts for s in p.sizes],
            sum(p.missing_teachers for p in parts),
        )


def build_groups(
    examples: list[Example],
    samples: list[Sample],
    group_size: int,
    teacher_count: int,
    include_offpolicy: bool = True,
    keep_truncated_expert: bool = False,
) -> Groups:
    """Groups for a batch of prompts; samples ordered prompt after prompt, K each.

    `include_offpolicy=False` gives GRPO's groups (self-samples only). A truncated
    expert would lose its final answer and be pushed down by the verifier, so it is left
    out (the reference code keeps it: spec section 9); SFT/DFT
    (`keep_truncated_expert`) train on it, as mlx_lm.lora trains on a cut row.
    """
    members, sizes, missing = [], [], 0
    for i, ex in enumerate(examples):
        group = []
        if include_offpolicy:
            if ex.expert and (keep_truncated_expert or not ex.expert_truncated):
                group.append(Member(ex.prompt, ex.expert, "expert", ex.expert_text, ex))
            # A prompt-only row (no expert answer) gives the expert's slot to a teacher.
            slots = teacher_count - 1 if ex.expert else teacher_count
            teachers = list(zip(ex.teachers, ex.teacher_texts, strict=True))[:slots]
            missing += max(slots - len(teachers), 0)
            group += [Member(ex.prompt, t, "teacher", text, ex) for t, text in teachers]
        for s in samples[i * group_size : (i + 1) * group_size]:
            truncated = s.finish_reason == "length"
            group.append(Member(ex.prompt, s.tokens, "sampled", s.text, ex, truncated))
        members += group
        sizes.append(len(group))
    return Groups(members, sizes, missing)


def reward_inputs(groups: Groups) -> list[dict]:
    """Keyword arguments for the reward functions, one dict per member."""
    return [
        {
            **m.example.columns,
            "prompt": m.example.prompt_text,
            "completion": m.text,
            "completion_ids": m.response,
            "answer": m.example.answer,
            "reference": m.example.expert_text if m.example.expert else None,
            "kind": m.kind,
            "truncated": m.truncated,
            # TRL's conversational form for batch rewards (per-sample ones ignore it).
            **({"prompt_messages": m.example.prompt_messages} if m.example.prompt_messages else {}),
        }
        for m in groups.members
    ]


def pad_batch(
    sequences: list[tuple[list[int], list[int]]], pad_id: int = 0, multiple: int = 32
) -> tuple[mx.array, mx.array]:
    """(prompt, response) pairs -> tokens (N, L) and a response mask (N, L - 1) over targets.

    L - 1 is rounded up to a multiple of 32 so the compiled step sees few distinct shapes.
    """
    lengths = [len(p) + len(r) for p, r in sequences]
    width = -(-(max(lengths) - 1) // multiple) * multiple + 1
    tokens = np.full((len(sequences), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(sequences), width - 1), dtype=np.float32)
    for row, (prompt, response) in enumerate(sequences):
        seq = prompt + response
        tokens[row, : len(seq)] = seq
        # Target position t predicts token t + 1: the response starts at len(prompt) - 1.
        mask[row, max(len(prompt) - 1, 0) : len(seq) - 1] = 1.0
    return mx.array(tokens), mx.array(mask)


def response_start(mask: mx.array, multiple: int = 32) -> int:
    """First target position any row scores, rounded down to a multiple of 32: positions
    before it (the shared prompt) need no logits, and few distinct values keep the
    compiled step's cache small."""
    cols = np.flatnonzero(np.array(mask.sum(axis=0)) > 0)
    return int(cols[0]) // multiple * multiple if cols.size else 0
