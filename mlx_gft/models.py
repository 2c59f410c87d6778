"""Model helpers on top of mlx-lm: switching LoRA/DoRA adapters off in place, and
evaluation mode (no dropout) for everything that is not the update."""

from collections.abc import Iterator
from contextlib import contextmanager

import mlx.nn as nn
from mlx.utils import tree_unflatten


def _adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, adapter module, wrapped base module) for every LoRA/DoRA layer."""
    found = []
    for name, module in model.named_modules():
        if "lora_a" in module:
            base = module.get("linear", module.get("embedding"))
            if base is not None:
                found.append((name, module, base))
    return found


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` as its base policy: every adapter layer is swapped for the layer it wraps.

    Swapping (rather than zeroing the LoRA scale) is exact for DoRA too, whose learned
    magnitude would otherwise still rescale the base weight. No second copy is loaded.
    """
    layers = _adapter_modules(model)
    model.update_modules(tree_unflatten([(name, base) for name, _, base in layers]))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten([(name, mod) for name, mod, _ in layers]))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """No LoRA dropout inside (sampling, old/base log-probs, KL probe, validation), as
    mlx_lm.lora evaluates; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
