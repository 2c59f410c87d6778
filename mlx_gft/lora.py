"""`python -m mlx_gft.lora`: fine-tune with GFT (or SFT, DFT, GRPO), mlx_lm.lora-style.

    python -m mlx_gft.lora --train --test                  # default model and task
    python -m mlx_gft.lora --model M --data D --train -c config.yaml

Precedence: command line > YAML (-c) > defaults. Every option can be set from YAML.
"""

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from .config import ConfigError, TrainConfig, build_config, load_yaml
from .data import DataError

YAML_ONLY = ("optimizer_config", "lora_parameters", "lr_schedule")


def _arg_type(tp):
    """(argparse type, nargs) for a dataclass field type such as `int | None` or `list[str]`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = args[0]
    if typing.get_origin(base) is list:
        return typing.get_args(base)[0], "+"
    return base, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlx_gft.lora",
        description="Group Fine-Tuning (GFT) with LoRA, DoRA or full fine-tuning.",
        epilog="YAML-only: " + ", ".join(YAML_ONLY) + ".",
        # No argparse defaults: an option absent from the command line must not mask YAML.
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("-c", "--config", help="YAML file with any of the options below")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in YAML_ONLY:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default})"
        if hints[f.name] is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        tp, nargs = _arg_type(hints[f.name])
        parser.add_argument(flag, type=tp, nargs=nargs, help=help_text, metavar=f.name.upper())
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    yaml_values = load_yaml(args.pop("config")) if "config" in args else {}
    return build_config(yaml_values, **args)


def run(config: TrainConfig, log=print) -> dict:
    """Load, optionally evaluate, train and test; returns the accuracies measured."""
    import mlx.core as mx
    from mlx_lm import load

    from . import data as data_lib
    from .evaluate import accuracy
    from .gguf import resolve_model_path
    from .trainer import default_rewards, expert_nll, setup_trainable, train

    if not (config.train or config.test):
        raise ConfigError("nothing to do: pass --train and/or --test")
    mx.random.seed(config.seed)
    model_path = resolve_model_path(config.model)
    log(f"Loading model {config.model or 'SmolLM2-135M-Instruct (embedded default)'}")
    model, tokenizer = load(model_path)
    log(f"Loading data {config.data or '(built-in arithmetic task)'}")
    splits = data_lib.load_splits(config.data)
    needs_prompt = config.loss in ("gft", "grpo")
    sets = {
        name: data_lib.tokenize_rows(rows, tokenizer, config.max_seq_length, needs_prompt)
        for name, rows in splits.items()
    }
    if config.train and not sets["train"]:
        raise DataError(str(config.data), "the training set (train.jsonl) is missing or empty")
    if config.test and not sets["test"]:
        raise DataError(str(config.data), "the test set (test.jsonl) is missing or empty")

    results: dict = {}
    test_set = sets["test"]
    n_test = len(test_set) if config.test_batches < 0 else config.test_batches * config.batch_size
    test_set = test_set[:n_test]
    verifier = test_set and all(e.answer is not None for e in test_set)

    def held_out(tag: str) -> None:
        if not (config.test and verifier):
            return
        acc = accuracy(
            model,
            tokenizer,
            test_set,
            default_rewards(config, test_set)[0],
            temperature=config.temperature,
            max_tokens=config.max_completion_length,
            seed=config.seed,
        )
        results[f"{tag}_accuracy"] = acc["avg_at_k"]
        log(
            f"Held-out accuracy {tag}: {acc['avg_at_k']:.3f} on {acc['n']} problems "
            f"(T={config.temperature})"
        )

    if config.train:
        setup_trainable(model, config)
        held_out("before")
        log(f"Training with --loss {config.loss}")
        results["reports"] = train(model, tokenizer, config, sets["train"], sets["valid"], log)
    elif config.test and config.adapter_path and Path(config.adapter_path).exists():
        from mlx_lm.tuner.utils import load_adapters

        load_adapters(model, config.adapter_path)
    if config.test:
        results["test_loss"] = expert_nll(model, test_set, config.batch_size)
        log(f"Test loss {results['test_loss']:.3f}")
        held_out("after" if config.train else "test")
    return results


def main(argv: list[str] | None = None) -> None:
    try:
        config = parse_config(argv)
        run(config)
    except (ConfigError, DataError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
