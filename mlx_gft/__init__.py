"""mlx_gft: Group Fine-Tuning (arXiv 2604.14258) for MLX."""

from . import _blas

_blas.preload()  # must run before the first `import mlx.core`

from .advantages import group_advantages, zero_variance_fraction  # noqa: E402
from .config import TrainConfig, build_config  # noqa: E402
from .losses import (  # noqa: E402
    aggregate,
    dcr_coefficient,
    dft_loss,
    gft_loss,
    grpo_loss,
    kl_to_base,
    rectified_fraction,
    sft_loss,
)

__version__ = "0.1.0"


def train(config: TrainConfig | None = None, log=print, **options) -> dict:
    """Fine-tune from Python (see `mlx_gft.job.train`); imports mlx-lm only when called."""
    from .job import train as _train

    return _train(config, log, **options)


__all__ = [
    "TrainConfig",
    "build_config",
    "train",
    "aggregate",
    "dcr_coefficient",
    "dft_loss",
    "gft_loss",
    "grpo_loss",
    "group_advantages",
    "kl_to_base",
    "rectified_fraction",
    "sft_loss",
    "zero_variance_fraction",
]
