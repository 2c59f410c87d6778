"""The training loop, top-down: per iteration take `batch_size` prompts, roll out the
groups (`rollout`), run the updates (`step`), report (`metrics`), evaluate
(`validation`) and save (`checkpoint`). `train_stage` trains one stage in place;
`job.run` loads the model and data and runs the stages.
"""

import contextlib
import signal
import threading
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from . import distributed
from . import rewards as rewards_lib
from .batches import batch_indices, num_iterations, train_batches
from .checkpoint import adapter_config, load_checkpoint, save_adapters, save_checkpoint, write_json
from .config import ConfigError, TrainConfig
from .data import Example, has_answers
from .methods import method
from .metrics import RULES, Reporter, summarise
from .progress import Progress
from .reward_batches import TrainerState
from .rollout import rollout, verified_examples
from .step import Stepper, TrainingStopped, make_optimizer, run_updates
from .validation import make_probe, probe_kl, validate


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM: a resumable checkpoint was saved after the current iteration."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        # Shell convention: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM).
        self.exit_code = 128 + int(getattr(signal, signal_name))


def train_stage(
    model: nn.Module,
    tokenizer,
    config: TrainConfig,
    train_set: list[Example],
    valid_set: list[Example],
    log=print,
    data_offset: int = 0,
    training_callback=None,
) -> list[dict]:
    """Train `model` in place (its trainable layers must already be set up); returns the
    reported metrics. Adapters, checkpoints and metrics.jsonl go to config.adapter_path.

    data_offset: batches already used by earlier stages. Iteration i trains on the data
    (and sampling seed) of iteration data_offset + i, so a later stage goes on through
    the data instead of seeing the earlier stage's prompts again.

    training_callback: an mlx_lm TrainingCallback (or any object with its two methods),
    called on rank 0 with every train report (on_train_loss_report) and validation
    (on_val_loss_report), under mlx_lm's keys plus every metrics.jsonl metric."""
    if not train_set:
        raise ValueError("the training set is empty")
    ranks, log = distributed.init(config, log)
    lead = ranks.rank() == 0  # rank 0 alone logs and writes files
    if lead:
        write_json(Path(config.adapter_path) / "adapter_config.json", adapter_config(config))
    optimizer = make_optimizer(config)
    if config.grad_accumulation_steps > 1:  # same name as mlx_lm.lora's, other effect
        log(
            f"Note: grad_accumulation_steps {config.grad_accumulation_steps} splits each update "
            "into parts (less memory, the same update); mlx_lm.lora's would also make each "
            "update that many batches: multiply batch_size for that."
        )
    reward_fns, m = (), method(config)
    if m.samples or m.verified_experts or (valid_set and has_answers(valid_set)):
        specs = rewards_lib.default_rewards(config.reward, train_set)
        reward_fns = rewards_lib.load_rewards(specs, config.reward_weights)
        log(f"Reward: {', '.join(specs)}{rewards_lib.reward_origin(config.reward, specs)}")
    if m.verified_experts:
        # Step 0 on a resumed run too: a reward that reads the step must not change which
        # rows a resumed run trains on. (With --epochs, max_steps counts every row here.)
        every_row = train_batches(config, train_set)
        state = trainer_state(config, 0, num_iterations(config, len(every_row)), len(every_row))
        train_set, rows = verified_examples(train_set, reward_fns, config.reward_timeout, state)
        log(
            f"Training on the {len(train_set)} of {rows} rows whose expert answer the "
            "reward accepts"
        )
        if len(train_set) < config.batch_size:
            raise ConfigError(
                f"--loss {config.loss}: {len(train_set)} of {rows} expert answers pass the "
                f"reward, fewer than --batch-size {config.batch_size}"
            )
    start, probe = 0, {}
    if config.resume:
        state, probe = load_checkpoint(model, optimizer, config)
        start = state["iteration"]
        log(f"Resuming from iteration {start}")
    if not probe and lead:
        probe = make_probe(model, tokenizer, valid_set or train_set, config)
    stepper = Stepper(model, optimizer, config, ranks, log)
    batches = train_batches(config, train_set)
    total_iters = num_iterations(config, len(batches))
    report = Reporter(config, log, enabled=lead, training_callback=training_callback)
    reports, window, trained_tokens = [], [], 0
    # Data without any teacher answers is the common case, not worth a notice.
    noticed_missing = not any(e.teachers for e in train_set)
    # A bar on a terminal only: the report lines already tell a log file how far it is.
    progress = Progress(total_iters, "Training", initial=start, unit="iterations") if lead else None

    def save(done: int, numbered: bool = True) -> None:
        if lead:
            save_adapters(model, config, done if numbered else None)
            state = {"iteration": done, "finished": done == total_iters}
            save_checkpoint(model, optimizer, config, state, probe)

    def evaluate(done: int) -> None:
        tic = time.perf_counter()
        val = validate(model, tokenizer, valid_set, config, reward_fns)
        report.val({"iteration": done, **val}, time.perf_counter() - tic)

    if lead and valid_set and start == 0:
        evaluate(0)  # the starting point, as mlx_lm.lora does: curves begin at the base
    saved = start
    try:
        with stop_signals(log) as stop:
            for it in range(start, total_iters):
                tic = time.perf_counter()
                # Resumable: the seed depends only on the iteration (and differs per rank).
                step = data_offset + it
                seed = (config.seed * 1_000_003 + step) * ranks.size() + ranks.rank()
                mx.random.seed(seed)
                picked = distributed.shard(batch_indices(batches, step, config.seed), ranks)
                try:
                    batch = rollout(
                        model,
                        tokenizer,
                        [train_set[i] for i in picked],
                        config,
                        reward_fns,
                        seed,
                        trainer_state(config, it, total_iters, len(batches)),
                    )
                except rewards_lib.RewardError as e:
                    # Nothing of this iteration is applied yet: keep the work done so far.
                    if it > saved:  # (distributed: the other ranks stop at their next exchange)
                        save(it)
                    raise rewards_lib.RewardError(
                        f"{e}\nThe checkpoint of iteration {it} is saved: fix the reward, then "
                        "continue with --resume."
                    ) from e
                row = batch.metrics
                if batch.empty:  # every answer of the batch was left out
                    row.update(stepper.idle_iteration())
                else:
                    sizes, arrays = batch.groups.sizes, batch.arrays()
                    row.update(run_updates(stepper, sizes, batch.start, arrays, config))
                _clear_cache(config.clear_cache_threshold)
                row["train_time"] = time.perf_counter() - tic - row.get("sample_time", 0.0)
                row["groups"] = len(picked)
                row["stop"] = float(bool(stop))
                row = distributed.reduce_metrics(row, RULES, ranks)
                if row.pop("stop") and not stop:  # another rank was signalled: stop together
                    stop.append("SIGTERM")
                row["learning_rate"] = float(optimizer.learning_rate.item())
                trained_tokens += row["train_tokens"]
                if row.get("missing_teachers") and not noticed_missing:
                    noticed_missing = True
                    log(
                        "Note: some rows have fewer than teacher_count - 1 = "
                        f"{config.teacher_count - 1} teacher answers; their groups are smaller "
                        "(counted as missing_teachers)."
                    )
                window.append(row)
                if progress:
                    progress.update()

                done = it + 1
                last = done == total_iters
                if done % config.steps_per_report == 0 or last or stop:
                    summary = summarise(window, done)
                    summary.update(
                        kl_to_base=probe_kl(model, probe),
                        trained_tokens=trained_tokens,
                        peak_memory_gb=mx.get_peak_memory() / 1e9,
                        active_memory_gb=mx.get_active_memory() / 1e9,
                    )
                    # Peak per report window, so a leak shows as growth across reports.
                    mx.reset_peak_memory()
                    report.train(summary)
                    reports.append(summary)
                    window = []
                if lead and valid_set and (done % config.steps_per_eval == 0 or last):
                    evaluate(done)
                if done % config.save_every == 0 or last or stop:
                    save(done, numbered=not last)
                    saved = done
                if stop and not last:
                    raise TrainingInterrupted(
                        f"{stop[0]}: stopped after iteration {done} with a checkpoint in "
                        f"{config.adapter_path}; continue with --resume",
                        stop[0],
                    )
    finally:
        if progress:
            progress.close()
        report.close()
    return reports


def trainer_state(
    config: TrainConfig, iteration: int, total_iters: int, batches_per_epoch: int
) -> TrainerState:
    """Where this stage stands before its 0-based `iteration`, for TRL rewards. Counted
    from the iteration, not the optimizer, so a resumed run passes the same values."""
    updates = config.updates_per_batch  # every iteration makes this many, applied or not
    return TrainerState(
        global_step=iteration * updates,
        max_steps=total_iters * updates,
        epoch=iteration / batches_per_epoch,
    )


@contextlib.contextmanager
def stop_signals(log):
    """Turn the first SIGINT / SIGTERM into a request to stop after the current iteration
    (with a checkpoint); a second one aborts at once, leaving the last checkpoint."""
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signal.Signals(signum).name)
        log(f"\n{requested[0]}: finishing this iteration, then saving (again to abort now)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _clear_cache(threshold: int) -> None:
    """mlx_lm.lora's clear_cache_threshold: hand the allocator's cached buffers back once
    they pass it (0: after every iteration, as mlx_lm does after every step)."""
    if mx.get_cache_memory() > threshold:
        mx.clear_cache()
