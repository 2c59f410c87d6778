"""What a run leaves on disk: adapters as mlx-lm reads them, resumable checkpoints, and
the one atomic writer every output file goes through (a kill at any moment leaves the
previous version of a file whole, never half a new one)."""

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from .config import TrainConfig


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) a sibling temporary file, then rename it over `path` (atomic on POSIX).
    The temporary name keeps the suffix: mx.save_safetensors appends one otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, value: dict, indent: int = 4) -> None:
    text = json.dumps(value, indent=indent, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_safetensors(path: Path, arrays: dict[str, mx.array]) -> None:
    atomic_write(path, lambda tmp: mx.save_safetensors(str(tmp), arrays))


def adapter_config(config: TrainConfig) -> dict:
    """adapter_config.json as mlx_lm.load / mlx_lm.fuse read it, plus the rest of the args."""
    lora = {"dropout": 0.0, **config.lora_parameters}
    return {**asdict(config), "model": recorded_model(config), "lora_parameters": lora}


def recorded_model(config: TrainConfig) -> str | None:
    """The model as mlx-lm tools can load it (`mlx_lm.generate --model`, `mlx_lm.fuse
    --model`): for the embedded default model or a .gguf file, the converted folder the
    run loaded, since mlx-lm reads neither; anything else as given."""
    model = config.model
    if model is not None and not model.endswith(".gguf"):
        return model
    from .gguf import resolve_model_path

    try:
        return resolve_model_path(model, config.model_dtype)  # cached: no new conversion
    except FileNotFoundError:  # the default model is not installed: nothing to point at
        return model


def save_adapters(model: nn.Module, config: TrainConfig, iteration: int | None = None) -> None:
    folder = Path(config.adapter_path)
    weights = dict(tree_flatten(model.trainable_parameters()))
    write_safetensors(folder / "adapters.safetensors", weights)
    if iteration is not None:
        write_safetensors(folder / f"{iteration:07d}_adapters.safetensors", weights)


def save_checkpoint(
    model: nn.Module, optimizer: optim.Optimizer, config: TrainConfig, state: dict, probe: dict
) -> None:
    """Adapters, optimizer state, iteration and probe set; a kill at any moment leaves the
    previous checkpoint loadable (the new one is written aside, then swapped in)."""
    folder = Path(config.adapter_path)
    final, tmp, old = folder / "checkpoint", folder / "checkpoint.tmp", folder / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(
        str(tmp / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    if probe:
        mx.save_safetensors(str(tmp / "probe.safetensors"), probe)
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_dir(config: TrainConfig) -> Path | None:
    folder = Path(config.adapter_path)
    for name in ("checkpoint", "checkpoint.old"):  # .old survives a kill mid-swap
        if (folder / name / "state.json").exists():
            return folder / name
    return None


def has_checkpoint(config: TrainConfig) -> bool:
    return _checkpoint_dir(config) is not None


def stage_finished(config: TrainConfig) -> bool:
    ckpt = _checkpoint_dir(config)
    return ckpt is not None and json.loads((ckpt / "state.json").read_text()).get("finished", False)


def load_checkpoint(
    model: nn.Module, optimizer: optim.Optimizer, config: TrainConfig
) -> tuple[dict, dict]:
    """(state, probe) of the run's checkpoint, with the adapters and optimizer restored."""
    ckpt = _checkpoint_dir(config)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {config.adapter_path}")
    model.load_weights(str(ckpt / "adapters.safetensors"), strict=False)
    optimizer.init(model.trainable_parameters())
    optimizer.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    probe_file = ckpt / "probe.safetensors"
    probe = mx.load(str(probe_file)) if probe_file.exists() else {}
    return json.loads((ckpt / "state.json").read_text()), probe
