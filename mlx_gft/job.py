"""The job `python -m mlx_gft.lora` runs, for Python users too: load the model and data,
measure held-out accuracy, train, test."""

import shutil
from pathlib import Path

from .config import ConfigError, TrainConfig, build_config, stage_configs
from .data import DataError


def run(config: TrainConfig, log=print, training_callback=None) -> dict:
    """Load, optionally evaluate, train and test; returns the accuracies measured.
    training_callback: as mlx_lm's TrainingCallback (see trainer.train_stage)."""
    import mlx.core as mx

    from . import data as data_lib
    from . import distributed
    from .batches import stage_batches
    from .checkpoint import has_checkpoint, stage_finished
    from .evaluate import accuracy
    from .methods import method
    from .metrics import report_services
    from .models import load_model, setup_trainable
    from .progress import Progress
    from .rewards import check_rewards, verifier_name
    from .trainer import train_stage
    from .validation import expert_stats

    if not (config.train or config.test):
        raise ConfigError("nothing to do: pass --train and/or --test")
    report_services(config.report_to)  # a missing package fails before anything loads
    mx.random.seed(config.seed)
    ranks, log = distributed.init(config, log, training=config.train)
    lead = ranks.rank() == 0  # distributed: rank 0 speaks and evaluates
    # Every row is parsed and checked before the (slow) model load.
    log(f"Loading data {_data_name(config)}")
    if config.hf_dataset and config.data:
        log(f"Note: hf_dataset is set, so --data {config.data} is not read (as in mlx_lm.lora)")
    splits = data_lib.load_run_splits(config)
    stages = stage_configs(config)
    chosen = [s.reward for s in stages if s.reward] if config.train else []
    for stage in stages if config.train else []:  # a reward that cannot be called fails now
        check_rewards(stage.reward, stage.reward_weights, splits["train"])
    verifier = verifier_name(r for specs in chosen for r in specs)
    if verifier:
        data_lib.check_answers_consistent(splits["train"], verifier)
    elif not chosen:  # the default reward follows the rows: it must not flip silently
        for rows in splits.values():
            data_lib.check_answers_consistent(rows)
    for stage in stages if config.train else []:  # rows each method can train on
        data_lib.check_method_rows(splits, method(stage), stage.reward)
    log(f"Loading model {config.model or 'SmolLM2-135M-Instruct (embedded default)'}")
    model, tokenizer = load_model(
        config.model, dtype=config.model_dtype, trust_remote_code=config.trust_remote_code
    )
    needs_prompt = any(method(c).samples for c in stages)
    sets = {
        name: data_lib.tokenize_rows(
            rows, tokenizer, config.max_seq_length, needs_prompt, config.long_prompts, log
        )
        for name, rows in splits.items()
    }
    if config.train and not sets["train"]:
        raise DataError(_data_name(config), "the training set (train.jsonl) is missing or empty")
    if config.test and not sets["test"]:
        raise DataError(_data_name(config), "the test set (test.jsonl) is missing or empty")

    results: dict = {}
    test_set = sets["test"]
    n_test = len(test_set) if config.test_batches < 0 else config.test_batches * config.batch_size
    test_set = test_set[:n_test]
    verifier = test_set and data_lib.has_answers(test_set)

    def held_out(tag: str) -> None:
        if not (config.test and verifier and lead):
            return
        # Sampling every test problem can take as long as training: show how far it is,
        # as mlx_gft.evaluate does (a bar on a terminal, a line every ~10% in a log).
        with Progress(len(test_set), f"Held-out {tag}", log) as progress:
            acc = accuracy(
                model,
                tokenizer,
                test_set,
                "math",  # rows with answers: the verifier, whatever the training reward
                temperature=config.temperature,
                max_tokens=config.max_completion_length,
                seed=config.seed,
                progress=progress.update,
            )
        results[f"{tag}_accuracy"] = acc["avg_at_k"]
        log(
            f"Held-out accuracy {tag}: {acc['avg_at_k']:.3f} on {acc['n']} problems "
            f"(T={config.temperature})"
        )

    if config.train:
        setup_trainable(model, config)
        held_out("before")
        results["reports"] = []
        offset = 0  # each stage goes on through the data where the last one stopped
        for n, stage in enumerate(stages, start=1):
            stage_offset, offset = offset, offset + stage_batches(stage, sets["train"])
            if len(stages) > 1:
                if config.resume and stage_finished(stage):
                    log(f"Stage {n}/{len(stages)} ({stage.loss}) is finished: loading its adapters")
                    model.load_weights(
                        str(Path(stage.adapter_path) / "adapters.safetensors"), strict=False
                    )
                    continue
                stage.resume = config.resume and has_checkpoint(stage)
                log(f"Stage {n}/{len(stages)}: --loss {stage.loss} -> {stage.adapter_path}")
            else:
                log(f"Training with --loss {config.loss}")
            results["reports"] += train_stage(
                model,
                tokenizer,
                stage,
                sets["train"],
                sets["valid"],
                log,
                stage_offset,
                training_callback,
            )
            if len(stages) > 1:
                held_out(f"after stage {n} ({stage.loss})")
        if len(stages) > 1 and lead:
            # The last stage's adapters also sit where mlx_lm --adapter-path expects them.
            for name in ("adapters.safetensors", "adapter_config.json"):
                shutil.copyfile(
                    Path(stages[-1].adapter_path) / name, Path(config.adapter_path) / name
                )
    elif config.test and config.adapter_path and Path(config.adapter_path).exists():
        from mlx_lm.tuner.utils import load_adapters

        load_adapters(model, config.adapter_path)
    if config.test:
        nll = expert_stats(model, test_set, config.batch_size)["nll"]
        if nll == nll:  # no expert answer to measure (prompt-only rows): no test loss
            results["test_loss"] = nll
            log(f"Test loss {nll:.3f}")
        if len(stages) == 1 or not config.train:
            held_out("after" if config.train else "test")
    return results


def _data_name(config: TrainConfig) -> str:
    if config.hf_dataset:
        entries = config.hf_dataset if isinstance(config.hf_dataset, list) else [config.hf_dataset]
        return "hf_dataset " + ", ".join(str(e.get("path")) for e in entries)
    name = config.data or "(built-in arithmetic task)"
    return f"{name} (config {config.dataset_config})" if config.dataset_config else name


def train(config: TrainConfig | None = None, log=print, training_callback=None, **options) -> dict:
    """Fine-tune from Python: `mlx_gft.train(model=..., data=..., loss="gft", iters=100)`
    or with a TrainConfig. Returns the reports and accuracies `run` measured.
    training_callback: as mlx_lm's TrainingCallback (see trainer.train_stage)."""
    config = config or build_config(train=True, **options)
    return run(config, log, training_callback)
