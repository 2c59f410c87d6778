"""LoRA adapters with random non-zero B (so they change the policy), written as mlx-lm's
load_adapters and mlx_gft.trainer.save_adapters lay them out."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm import load
from mlx_lm.tuner.utils import linear_to_lora_layers


def perturb_trainable(model, seed: int = 1, scale: float = 0.05) -> None:
    """Add seeded noise to every trainable parameter: LoRA B is no longer zero, so the
    adapters (and DoRA's magnitudes) shape the forward and every gradient is non-zero."""
    mx.random.seed(seed)
    params = tree_flatten(model.trainable_parameters())
    model.update(tree_unflatten([(k, v + scale * mx.random.normal(v.shape)) for k, v in params]))


def write_random_adapters(model_path: Path, folder: Path) -> None:
    model, _ = load(str(model_path))
    model.freeze()
    lora = {"rank": 4, "scale": 20.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, lora)
    rng = np.random.default_rng(0)
    for _, module in model.named_modules():
        if "lora_b" in module:
            module.lora_b = mx.array(rng.standard_normal(module.lora_b.shape).astype(np.float32))
    folder.mkdir()
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(folder / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": lora}
    (folder / "adapter_config.json").write_text(json.dumps(config))
