"""The wheel installs: `python -m build` makes an sdist and, from it, a wheel that twine
accepts; installed in a fresh venv outside the checkout, every module imports, every
console script answers --help and a 2-iteration GFT run writes its adapters."""

import json
import os
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Run inside the fresh venv: where the package came from, its versions, and every module
# imported (an import that only works from a checkout fails here).
PROBE = """
import importlib, importlib.metadata, json, pkgutil, sysconfig, mlx_gft
for m in pkgutil.walk_packages(mlx_gft.__path__, "mlx_gft."):
    importlib.import_module(m.name)
print(json.dumps({
    "file": mlx_gft.__file__,
    "purelib": sysconfig.get_paths()["purelib"],
    "version": mlx_gft.__version__,
    "metadata": importlib.metadata.version("mlx-gft"),
}))
"""


def run(argv, cwd: Path, env: dict | None = None, timeout: float = 300) -> str:
    argv = [str(a) for a in argv]
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{argv} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout


def package_files() -> set[str]:
    """The package's files as the repository has them (untracked scratch files aside)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "mlx_gft"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        listed = [p.relative_to(ROOT).as_posix() for p in (ROOT / "mlx_gft").rglob("*")]
    return {p for p in listed if (ROOT / p).is_file() and "__pycache__" not in p}


@pytest.mark.slow
def test_wheel_installs_and_trains(tmp_path, tiny_model, arithmetic_data):
    times: dict[str, float] = {}
    start = time.monotonic()

    def lap(name: str) -> None:
        nonlocal start
        times[name] = round(time.monotonic() - start, 1)
        start = time.monotonic()

    # build's default: the sdist, then the wheel from the unpacked sdist, so the wheel holds
    # only what the sdist ships, not files lying around the checkout or a stale build/.
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", dist, ROOT], cwd=tmp_path)
    (wheel,) = dist.glob("*.whl")
    run([sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir())], tmp_path)
    lap("build")

    # Non-.py files need package-data (or MANIFEST.in) to reach the wheel.
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = package_files() - names
    assert not missing, f"missing from {wheel.name}: {sorted(missing)}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    # A clean venv (no system site-packages); dependencies come from the index or pip's cache.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    run([venv / "bin/python", "-m", "pip", "install", "-q", wheel], tmp_path, env, timeout=900)
    lap("install")

    # From tmp_path with PYTHONPATH unset, the checkout is not importable.
    found = json.loads(run([venv / "bin/python", "-c", PROBE], tmp_path, env).splitlines()[-1])
    assert Path(found["file"]).is_relative_to(found["purelib"]), found
    assert Path(found["purelib"]).is_relative_to(venv), found
    assert found["version"] == found["metadata"] == wheel.name.split("-")[1], found

    for script in PROJECT["scripts"]:
        assert "usage:" in run([venv / "bin" / script, "--help"], tmp_path, env)
    lap("imports and --help")

    adapters = tmp_path / "ad"
    # fmt: off
    run([
        venv / "bin/mlx_gft.lora", "--model", tiny_model, "--data", arithmetic_data, "--train",
        "--iters", 2, "--batch-size", 2, "--group-size", 2, "--max-completion-length", 8,
        "--num-layers", -1, "--val-batches", 1, "--probe-size", 2, "--adapter-path", adapters,
    ], tmp_path, env, timeout=600)
    # fmt: on
    assert (adapters / "adapters.safetensors").is_file()
    lap("train")
    print(f"{wheel.name} ({wheel.stat().st_size} bytes), seconds: {times}")
