"""Shared fixtures. Importing mlx_gft first loads an optimized BLAS before MLX."""

import mlx_gft  # noqa: F401
