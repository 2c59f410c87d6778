"""Models on top of mlx-lm: loading (with adapters), opening the layers a fine-tune
trains, switching LoRA/DoRA adapters off in place, and evaluation mode (no dropout) for
everything that is not the update."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from .config import ConfigError, TrainConfig


class LoadError(RuntimeError):
    """A model or adapter folder that mlx-lm cannot use."""


def load_model(
    model: str | None,
    adapter_path: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
):
    """(model, tokenizer) via mlx-lm, with LoRA/DoRA adapters from `adapter_path` if given;
    trust_remote_code as mlx_lm.lora passes it (tokenizer and model)."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters

    from .gguf import resolve_model_path

    if model and model.startswith((".", "/", "~")) and not Path(model).expanduser().exists():
        # mlx-lm would take it for a malformed Hub id and say so.
        raise FileNotFoundError(f"{model}: no such model file or folder")
    try:
        loaded, tokenizer = load(
            resolve_model_path(model, dtype),
            tokenizer_config={"trust_remote_code": trust_remote_code},
            trust_remote_code=trust_remote_code,
        )
    except Exception as e:
        message = hub_failure(model, e)
        if message is None:
            raise
        raise LoadError(message) from None
    if adapter_path:
        path = Path(adapter_path)
        for name in ("adapter_config.json", "adapters.safetensors"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name}: not found (is the adapter path right?)")
        try:
            load_adapters(loaded, str(path))
        except ValueError as e:  # mlx-lm: tensors that do not fit this model
            raise LoadError(
                f"adapters in {path} do not fit the model:\n{_first_lines(e)}"
            ) from None
    loaded.eval()
    return loaded, tokenizer


def hub_failure(model: str | None, error: Exception) -> str | None:
    """One line for a model the Hub could not give (no connection, no such repository,
    gated): which model, and how to go on offline. None for any other error."""
    from huggingface_hub import errors

    offline = (
        f"download it first where there is a network (`hf download {model}`, into the Hub "
        "cache mlx-lm reads), or pass a local mlx-lm folder or a GGUF file as --model; "
        "without --model the embedded SmolLM2-135M-Instruct runs offline"
    )
    if isinstance(error, errors.GatedRepoError):
        return (
            f"{model}: gated on the Hugging Face Hub; accept its terms there, then `hf auth login`"
        )
    if isinstance(error, errors.RepositoryNotFoundError):
        return (
            f"{model}: no such model on the Hugging Face Hub (or it is private: `hf auth "
            "login`); a local folder or GGUF file needs a path that exists"
        )
    if isinstance(error, (errors.LocalEntryNotFoundError, errors.HfHubHTTPError)):
        cause = error.__cause__ or error
        return f"{model}: could not fetch it from the Hugging Face Hub ({cause}); {offline}"
    return None


def _first_lines(error: Exception, keep: int = 3) -> str:
    """mlx-lm lists every mismatched tensor: a few tell the story."""
    lines = [line for line in str(error).splitlines() if line.startswith("  ")]
    if not lines:
        return f"  {error}"
    more = f"\n  ... and {len(lines) - keep} more" if len(lines) > keep else ""
    return "\n".join(lines[:keep]) + more


def setup_trainable(model: nn.Module, config: TrainConfig) -> None:
    """Freeze the model, then open the layers the fine-tune type trains (as mlx_lm.lora)."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    if config.num_layers > len(model.layers):
        raise ConfigError(
            f"num_layers is {config.num_layers} but the model has {len(model.layers)} layers "
            "(-1 trains all of them)"
        )
    if config.fine_tune_type == "full":
        for layer in model.layers[-max(config.num_layers, 0) :]:
            layer.unfreeze()
    else:
        lora = {"dropout": 0.0, **config.lora_parameters}
        linear_to_lora_layers(model, config.num_layers, lora, config.fine_tune_type == "dora")
    if config.resume_adapter_file:
        model.load_weights(config.resume_adapter_file, strict=False)


def checkpoint_layers(model: nn.Module) -> None:
    """--grad-checkpoint: every layer of `model` keeps only its inputs and recomputes its
    activations in the backward, as mlx_lm.lora's grad_checkpoint does. Unlike that one,
    it changes this model's layers only (each becomes a subclass of its own class that
    says so), not every instance of the layer class in the process."""
    for layer in model.layers:
        if not recomputed_in_backward(layer):
            layer.__class__ = _checkpointed(type(layer))


@cache
def _checkpointed(cls: type) -> type:
    forward = cls.__call__

    def __call__(self, *args, **kwargs):
        def inner(params, *args, **kwargs):
            self.update(params)
            return forward(self, *args, **kwargs)

        return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "recomputed_in_backward": True})


def recomputed_in_backward(layer: nn.Module) -> bool:
    """Whether `layer`'s forward may run twice per step: ours checkpointed, or its
    `__call__` replaced from outside its class (mlx_lm's grad_checkpoint, or any other
    wrapper), told by the function's qualified name, which Python sets where a function
    is defined. A forward that replays must not update a cache it shares."""
    cls = type(layer)
    if getattr(cls, "recomputed_in_backward", False):
        return True
    owner = next((c for c in cls.__mro__ if "__call__" in vars(c)), None)
    if owner is None:
        return False
    return getattr(vars(owner)["__call__"], "__qualname__", "") != f"{owner.__qualname__}.__call__"


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
