"""The training loop, top-down: per iteration take `batch_size` prompts, roll out the
groups (`rollout`), run the updates (`step`), report (`metrics`), evaluate
(`validation`) and save (`checkpoint`). `train_stage` trains one stage in place;
`job.run` loads the model and data and runs the stages.
"""

import contextlib
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import maybe_set_recommended_wired_limit

from . import distributed, group_log
from . import rewards as rewards_lib
from .batches import DataStream, num_iterations, train_batches
from .checkpoint import adapter_config, load_checkpoint, save_adapters, save_checkpoint, write_json
from .config import ConfigError, TrainConfig
from .data import Example, has_answers
from .methods import method
from .metrics import RULES, Clock, Reporter, summarise
from .progress import Progress
from .reward_batches import TrainerState
from .rollout import gather_groups, verified_examples, with_arrays
from .step import Stepper, TrainingStopped, make_optimizer, run_updates
from .validation import make_probe, probe_kl, validate


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM: a resumable checkpoint was saved after the current iteration."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        # Shell convention: 128 + signal number (130 for Ctrl-C, 143 for SIGTERM).
        self.exit_code = 128 + int(getattr(signal, signal_name))


def stopped_ending(cut_shares: list[float], share: float = 0.5, run: int = 3) -> bool:
    """Whether a model whose samples ended (under `share` of them cut off at the length
    limit in an earlier iteration) has had `share` or more cut off in each of the last
    `run` iterations. Masked, a sample that never ends costs nothing, so such a drift is
    not pulled back; a base model that rambles from the start (the quickstart's) is not a
    drift, and neither is one iteration's spike."""
    before, recent = cut_shares[:-run], cut_shares[-run:]
    return len(recent) == run and min(recent) >= share and any(c < share for c in before)


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

    data_offset: batches reserved by earlier stages (`batches.stage_batches`). This stage
    draws batches from there on in the data order (one per iteration, or several with
    dynamic sampling), each with its own sampling seed, so a later stage goes on through
    the data instead of seeing the earlier stage's prompts again.

    training_callback: an mlx_lm TrainingCallback (or any object with its two methods),
    called on rank 0 with every train report (on_train_loss_report) and validation
    (on_val_loss_report), under mlx_lm's keys plus every metrics.jsonl metric."""
    if not train_set:
        raise ValueError("the training set is empty")
    ranks, log = distributed.init(config, log)
    lead = ranks.rank() == 0  # rank 0 alone logs and writes files
    # Apple silicon: keep the model's memory wired, as mlx_lm.lora does (a no-op where the
    # device recommends no working set, as on the CPU).
    maybe_set_recommended_wired_limit()
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
    batches = train_batches(config, train_set)
    total_iters = num_iterations(config, len(batches))
    start, probe, clock = 0, {}, Clock()
    stream = DataStream(batches, config.seed, data_offset)
    checkpoint = {}
    if config.resume:
        checkpoint, probe = load_checkpoint(model, optimizer, config)
        start = checkpoint["iteration"]
        stream.position = checkpoint.get("data_position", data_offset + start)
        log(f"Resuming from iteration {start}")
    if not probe and lead:
        with clock("probe_time"):
            probe = make_probe(model, tokenizer, valid_set or train_set, config)
    stepper = Stepper(model, optimizer, config, ranks, log)
    report = Reporter(config, log, enabled=lead, training_callback=training_callback)
    reports, window, kl = [], [], {}  # kl: the last probe's, until a report takes it
    # Running counts a resumed run carries on from its checkpoint (`Counters`).
    counts = Counters.of(checkpoint)
    stepper.skipped = counts.skipped_in_a_row
    # Data without any teacher answers is the common case: nothing is missing, no notice.
    has_teachers = any(e.teachers for e in train_set)
    if lead and config.mask_truncated and config.overlong_buffer and m.samples:
        log(
            "Note: --overlong-buffer with mask_truncated: a sample cut off at "
            "--max-completion-length gets the full punishment but no loss, so the "
            "punishment reaches only the answers that end inside the buffer; add "
            "--no-mask-truncated to punish the cut-off ones too (DAPO's setting)."
        )
    # A bar on a terminal only: the report lines already tell a log file how far it is.
    progress = Progress(total_iters, "Training", initial=start, unit="iterations") if lead else None

    def save(done: int, position: int, numbered: bool = True) -> None:
        if lead:
            save_adapters(model, config, done if numbered else None)
            counts.skipped_in_a_row = stepper.skipped
            state = {
                "iteration": done,
                "finished": done == total_iters,
                "data_position": position,
                "counters": asdict(counts),
            }
            save_checkpoint(model, optimizer, config, state, probe)

    def evaluate(done: int) -> None:
        tic = time.perf_counter()
        val = validate(model, tokenizer, valid_set, config, reward_fns)
        seconds = clock.add("val_time", time.perf_counter() - tic)
        report.val({"iteration": done, **val}, seconds)

    def draw_from(first: int):
        """`gather_groups`' draw() for the iteration that starts drawing at position
        `first`: the next batch of prompts in the data order that the iteration has not
        drawn yet (this rank's share) and its sampling seed, or None once it drew every
        batch. Resumable: it depends only on the positions (and the rank)."""

        def draw() -> tuple[int, list[Example]] | None:
            drawn = stream.next(since=first)
            if drawn is None:
                return None
            position, indices = drawn
            picked = distributed.shard(indices, ranks)
            return sampling_seed(config, position, ranks), [train_set[i] for i in picked]

        return draw

    if lead and valid_set and start == 0:
        evaluate(0)  # the starting point, as mlx_lm.lora does: curves begin at the base
    saved = start
    try:
        with stop_signals(log) as stop:
            for it in range(start, total_iters):
                first = stream.position  # where this iteration starts drawing
                mx.random.seed(sampling_seed(config, first, ranks))
                # (With dynamic sampling the data order runs ahead of the iterations.)
                state = trainer_state(config, it, total_iters, len(batches), first - data_offset)
                try:
                    batch = gather_groups(
                        model, tokenizer, draw_from(first), config, reward_fns, state, ranks
                    )
                except rewards_lib.RewardError as e:
                    # Nothing of this iteration is applied yet: keep the work done so far.
                    if it > saved:  # (distributed: the other ranks stop at their next exchange)
                        save(it, first)
                    raise rewards_lib.RewardError(
                        f"{e}\nThe checkpoint of iteration {it} is saved: fix the reward, then "
                        "continue with --resume."
                    ) from e
                row = batch.metrics
                tic = time.perf_counter()
                arrays = None
                if not batch.empty:  # (empty: every answer of the batch was left out)
                    batch = with_arrays(model, tokenizer, batch, config)
                    arrays = batch.arrays()
                update_seconds = time.perf_counter() - tic
                done = it + 1
                log_groups = (
                    config.log_completions and lead and arrays is not None
                    and (done % config.steps_per_report == 0 or done == total_iters)
                )  # fmt: skip
                if log_groups:  # the rows the update leaves out, before it changes them
                    with clock("log_time"):
                        shown = group_log.before_update(model, batch, config)
                tic = time.perf_counter()
                updated = run_updates(
                    stepper, batch.groups.sizes, batch.start, arrays, config, batch.kinds
                )
                row.update(updated.metrics)
                _clear_cache(config.clear_cache_threshold)
                row["update_time"] = update_seconds + time.perf_counter() - tic
                row["groups"] = len(batch.groups.sizes)
                row["stop"] = float(bool(stop))
                row = distributed.reduce_metrics(row, RULES, ranks)
                # Decided once, alike on every rank: a signal arriving after this is seen
                # at the end of the next iteration.
                stopping = bool(row.pop("stop"))
                if stopping and not stop:  # another rank was signalled: stop together
                    stop.append("SIGTERM")
                row["learning_rate"] = float(optimizer.learning_rate.item())
                counts.trained_tokens += row["train_tokens"]
                if log_groups:
                    with clock("log_time"):
                        group_log.finish(batch, updated, shown, tokenizer, config, done, log)
                if not has_teachers and "missing_teachers" in row:
                    row["missing_teachers"] = 0.0
                if row.get("missing_teachers") and not counts.noticed_missing:
                    counts.noticed_missing = True
                    log(
                        "Note: some rows have fewer than teacher_count - 1 = "
                        f"{config.teacher_count - 1} teacher answers; their groups are smaller "
                        "(counted as missing_teachers)."
                    )
                if row.get("groups_kept", config.batch_size) < config.batch_size:
                    if not counts.noticed_short:
                        counts.noticed_short = True
                        log(
                            f"Note: iteration {it + 1} trains on {row['groups_kept']:.0f} of "
                            f"{config.batch_size} groups: no more had reward spread in the "
                            f"{row['sampling_rounds']:.0f} batches it drew (at most "
                            f"--max-sampling-rounds {config.max_sampling_rounds}, and each "
                            "batch of the data once); the report lines count groups and rounds."
                        )
                cuts = counts.cut_shares
                cuts.append(row.get("truncated_frac", 0.0))
                if config.mask_truncated and not counts.noticed_cut and stopped_ending(cuts):
                    counts.noticed_cut = True
                    log(
                        f"Note: iteration {it + 1}: samples that used to end run to "
                        f"--max-completion-length {config.max_completion_length} "
                        f"({cuts[-1]:.0%} of them now) and get no loss (mask_truncated), "
                        "so nothing in the loss pulls the model back toward ending its answers "
                        "(docs/learning.md, off-policy experts)."
                    )
                if progress:
                    progress.update()

                last = done == total_iters
                report_due = done % config.steps_per_report == 0 or last or stopping
                if lead and valid_set and (done % config.steps_per_eval == 0 or last):
                    evaluate(done)
                if done % config.save_every == 0 or last or stopping:
                    with clock("save_time"):
                        save(done, stream.position, numbered=not last)
                    saved = done
                # The probe is a forward over probe_size long rows: at every report of
                # a steps_per_report=1 run it cost ~15% of the iteration, so it runs at
                # the validation cadence and goes to the next report (the others carry
                # no KL).
                if probe and (done % config.steps_per_eval == 0 or last or stopping):
                    with clock("probe_time"):
                        kl = probe_kl(model, probe)
                # Validation, the probe and checkpoints (and, first, the validation and
                # probe before training) count in the iteration they follow.
                window.append({**row, **clock.take()})
                if report_due:
                    summary = summarise(window, done)
                    summary.update(kl)
                    kl = {}
                    summary.update(
                        trained_tokens=counts.trained_tokens,
                        peak_memory_gb=mx.get_peak_memory() / 1e9,
                        active_memory_gb=mx.get_active_memory() / 1e9,
                    )
                    # Peak per report window, so a leak shows as growth across reports.
                    mx.reset_peak_memory()
                    report.train(summary)
                    reports.append(summary)
                    window = []
                if stopping and not last:
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


@dataclass
class Counters:
    """What a run counts across iterations: kept in the checkpoint, so a resumed run
    reports what an unbroken one would (trained tokens, the cut-off shares the drift
    note reads, the notes already given, non-finite steps in a row)."""

    trained_tokens: int = 0
    cut_shares: list[float] = field(default_factory=list)
    skipped_in_a_row: int = 0
    noticed_missing: bool = False
    noticed_short: bool = False
    noticed_cut: bool = False

    @classmethod
    def of(cls, state: dict) -> "Counters":
        """From a checkpoint's state (one from before counters were kept: from 0)."""
        saved = state.get("counters", {})
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


def sampling_seed(config: TrainConfig, position: int, ranks) -> int:
    """The seed of the batch at `position` in the data order: resumable, and different on
    every rank."""
    return (config.seed * 1_000_003 + position) * ranks.size() + ranks.rank()


def trainer_state(
    config: TrainConfig,
    iteration: int,
    total_iters: int,
    batches_per_epoch: int,
    drawn: int | None = None,
) -> TrainerState:
    """Where this stage stands before its 0-based `iteration`, for TRL rewards. Counted
    from the iteration and the data order, not the optimizer, so a resumed run passes the
    same values. `drawn`: the batches of the data order this stage passed before it (one
    per iteration unless given; more with dynamic sampling), which `epoch` counts."""
    updates = config.updates_per_batch  # every iteration makes this many, applied or not
    drawn = iteration if drawn is None else drawn
    return TrainerState(
        global_step=iteration * updates,
        max_steps=total_iters * updates,
        epoch=drawn / batches_per_epoch,
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
