"""Progress of long work (an epoch, an evaluation, labelling a split) where a person or a log can see it.

On a terminal it is a tqdm bar that goes away when the work ends. Anywhere else (output to a file: a cluster
job, nohup, a pipe) a bar would fill the log with carriage returns, so a plain line is printed instead, at most
once every LABELOPT_PROGRESS_SECONDS seconds (default 30), none for work that ends sooner:

    epoch 3/240: 12,800/50,000 img (25.6%), 1,234 img/s, ETA 0:00:30, loss 2.345, lr 0.05

`Progress` has tqdm's own calls (update, set_postfix, close, with-block), so it replaces a tqdm bar line for line.
"""
from __future__ import annotations

import os
import sys
import time

INTERVAL_ENV = "LABELOPT_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def progress_interval() -> float:
    """Seconds between two plain lines: $LABELOPT_PROGRESS_SECONDS when it is a positive number, else 30."""
    try:
        seconds = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return seconds if 0 < seconds < float("inf") else DEFAULT_INTERVAL


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def clock_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """`total` units of work (images) under `desc`; `enabled=False` shows nothing (torchrun ranks other than 0).
    `stream` defaults to stderr, where labelopt's other messages go; `interval` to progress_interval()."""

    def __init__(self, total: int, desc: str, *, unit: str = "img", enabled: bool = True, stream=None,
                 interval: float | None = None, clock=time.monotonic):
        self.total, self.desc, self.unit, self.enabled = int(total), desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = progress_interval() if interval is None else interval
        self.clock, self.done, self.postfix = clock, 0, {}
        self.started = clock()
        self.next_line = self.started + self.interval
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if self.bar is not None:
            self.bar.update(n)
            return
        if self.enabled:
            now = self.clock()
            if now >= self.next_line:
                self.stream.write(self.line(now) + "\n")
                self.stream.flush()
                self.next_line = now + self.interval

    def set_postfix(self, **values) -> None:
        """Figures shown after the counts (the loss, the lr): on the bar, and in the next plain line."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        share = f" ({100.0 * self.done / self.total:.1f}%)" if self.total else ""
        eta = clock_text((self.total - self.done) / rate) if rate > 0 and self.total >= self.done else "?"
        speed = f"{rate:,.1f}" if rate < 10 else f"{rate:,.0f}"
        text = f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}{share}, {speed} {self.unit}/s, ETA {eta}"
        return text + "".join(f", {name} {value}" for name, value in self.postfix.items())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
