"""Progress of a long loop (training iterations, problems sampled): a tqdm bar on a
terminal; elsewhere (a log file, CI, a notebook's captured output) a line now and then
with an estimate of the time left, since a bar redrawn in a file is unreadable."""

import math
import sys
import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """3:07, 1:02:03: how tqdm writes elapsed and remaining time."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """`update(n)` after each n items. On a terminal (stderr) a tqdm bar; otherwise, when
    `log` is given, a line whenever another `every` items are done (0: about every 10%)
    and at the end; with neither, nothing."""

    def __init__(
        self,
        total: int,
        desc: str,
        log: Callable[[str], None] | None = None,
        *,
        unit: str = "problems",
        every: int = 0,
        initial: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.bar, self.log = None, None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False)
        else:
            self.log = log
        self.every = every or max(1, math.ceil(total / 10))
        self.clock, self.started, self.initial = clock, clock(), initial
        self.next_line = (initial // self.every + 1) * self.every

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.log is not None and (self.done >= self.next_line or self.done >= self.total):
            self.next_line = (self.done // self.every + 1) * self.every
            self.log(self.line())

    def line(self) -> str:
        elapsed = self.clock() - self.started
        # The rate of this run only: a resumed run's earlier items took no time here.
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else math.inf
        left = max(self.total - self.done, 0) / rate if rate > 0 else math.inf
        eta = duration(left) if math.isfinite(left) else "?"
        percent = 100 * self.done / self.total if self.total else 100.0
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({percent:.0f}%), "
            f"{duration(elapsed)} elapsed, about {eta} left"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
