"""Load an optimized BLAS before MLX on Linux.

The Linux ``mlx[cpu]`` wheel links a reference BLAS that is ~40x slower on matmul
than OpenBLAS. MLX resolves its BLAS symbols when ``mlx.core`` is first loaded, so a
library loaded earlier with RTLD_GLOBAL wins. Results do not depend on it.
Opt out with ``MLX_GFT_BLAS=none``; point at another library with ``MLX_GFT_BLAS=/path``.
"""

import ctypes
import os
import sys

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib64/libopenblas.so.0",
)

loaded: str | None = None


def preload() -> str | None:
    """Load the first BLAS found; a no-op off Linux or once ``mlx.core`` is imported."""
    global loaded
    choice = os.environ.get("MLX_GFT_BLAS", "")
    if loaded or not sys.platform.startswith("linux") or choice == "none":
        return loaded
    if "mlx.core" in sys.modules:
        return None
    for path in (choice,) if choice else _CANDIDATES:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
            except OSError:
                continue
            loaded = path
            break
    return loaded
