"""Shaping rewards to add next to the math verifier: answer format and length.

A reward is a function called with keyword arguments ``prompt``, ``completion`` (the
text being scored: the expert answer, a teacher answer or a sample), ``answer`` (the
row's ground truth), ``reference`` (the row's expert answer) and every extra dataset
column, so it takes ``**kwargs`` for what it does not use, and returns a float:

    python -m mlx_gft.lora -c examples/configs/grpo.yaml \\
        --reward math examples/rewards/format_and_length.py:boxed_format \\
        --reward-weights 1.0 0.2

The training reward is the weighted sum; each reward is also logged on its own. Keep
shaping weights well below the verifier's, or the model learns to format wrong answers.
"""

import re

# "#### 42", "#### -3.5", "#### 1,234" (GSM8K's final-answer line).
_GSM8K_LINE = re.compile(r"####\s*-?(?:\d[\d,]*)?\.?\d+\s*")
_BOXED = "\\boxed{"


def _has_boxed(text: str) -> bool:
    """Whether text holds a closed, non-empty \\boxed{...} (nested braces allowed)."""
    start = text.rfind(_BOXED)
    if start < 0:
        return False
    depth, body = 1, start + len(_BOXED)
    for i in range(body, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return bool(text[body:i].strip())
    return False  # cut off inside the box


def _is_marked(line: str) -> bool:
    return _has_boxed(line) or _GSM8K_LINE.fullmatch(line.strip()) is not None


def boxed_format(completion: str, **kwargs) -> float:
    """1.0 when the last line marks the answer (``\\boxed{...}`` or ``#### N``), 0.5 when
    a marked answer is followed by more text, 0.0 when no answer is marked.

    The half credit keeps "answered, then rambled on" above "never answered": a model
    that keeps writing after its answer is the one whose samples hit the length limit.
    """
    lines = [line for line in completion.splitlines() if line.strip()]
    if not lines:
        return 0.0
    if _is_marked(lines[-1]):
        return 1.0
    return 0.5 if any(_is_marked(line) for line in lines) else 0.0


# Up to SLACK times the reference's length costs nothing; the penalty then grows
# linearly and reaches -1 at 2 * SLACK times the reference.
SLACK = 1.5


def brevity(completion: str, reference: str | None = None, **kwargs) -> float:
    """A mild length penalty in [-1, 0]: 0 up to 1.5x the expert answer's word count,
    -1 from 3x on, linear in between. 0 when the row has no reference answer.

    Relative to the reference rather than a fixed budget, so long problems may have
    long solutions; words rather than tokens, so it does not depend on the tokenizer.
    """
    if not reference or not reference.split():
        return 0.0
    ratio = len(completion.split()) / len(reference.split())
    penalty = min(1.0, max(0.0, (ratio - SLACK) / SLACK))
    return -penalty if penalty else 0.0  # not -0.0 in the logs
