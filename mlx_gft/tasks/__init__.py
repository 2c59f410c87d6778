"""Built-in tasks with verifiers. The default task is arithmetic word problems."""

from .arithmetic import (
    DEFAULT_LEVEL,
    LEVELS,
    Difficulty,
    extract_answer,
    is_correct,
    make_dataset,
    make_problem,
    write_dataset,
)

__all__ = [
    "DEFAULT_LEVEL",
    "LEVELS",
    "Difficulty",
    "extract_answer",
    "is_correct",
    "make_dataset",
    "make_problem",
    "write_dataset",
]
