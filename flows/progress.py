"""Live progress of the long commands (index, eval, pipeline, demo), on stderr.

A command opens ``live_progress()`` around its flow; the flow and its tasks take counters with
``counter("documents embedded", total)`` and call them once per item done (``counter(n)``),
or hand them to the library loops as their ``progress`` callback. Tasks run in the flow's
process (Prefect's thread pool), so a task advances the same counters the command renders.
Outside ``live_progress()`` (the Python API, tests, a deployment run) every counter is a no-op.

On a terminal the counters are a rich progress display (count, rate, ETA); otherwise (CI logs,
a pipe) each counter prints a plain line at every 10 % of its total and at least every
``RAGPRESS_PROGRESS_SECONDS`` (default 10 s) while it moves. Everything goes to stderr, so a
command's ``--json`` output on stdout stays clean.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

PERIOD_ENV = "RAGPRESS_PROGRESS_SECONDS"
PLAIN_PERIOD_S = 10.0


class Counter:
    """One counted quantity; ``counter(n)`` marks ``n`` more items done. Without a board it does nothing."""

    def __init__(self, board: Board | None, label: str, total: int | None) -> None:
        self.board, self.label, self.total = board, label, total
        self.done = 0
        # The rate runs from the first update on, not from creation: work may start long after a
        # counter is made (questions are scored only once every chunk is embedded).
        self.first: tuple[float, int] | None = None  # (when, count) of the first update
        self.last = 0.0  # when the latest update came

    def __call__(self, n: int = 1) -> None:
        """``n`` more items done."""
        if self.board is not None and n:
            self.board.advance(self, n)

    def grow(self, n: int) -> None:
        """``n`` more items to do (for totals found out on the way, e.g. chunks of the next document)."""
        if self.board is not None and n:
            self.board.set_total(self, (self.total or 0) + n)

    def finish(self) -> None:
        """Nothing more to come: the count so far is the total (for counts without a total known ahead)."""
        if self.board is not None:
            self.board.set_total(self, self.done)

    def rate(self) -> float | None:
        """Items per second between the first and the latest update; None before a second update."""
        if self.first is None or self.done <= self.first[1]:
            return None
        return (self.done - self.first[1]) / max(self.last - self.first[0], 1e-9)

    def _count(self, n: int) -> None:
        self.last = time.monotonic()
        if self.first is None:
            self.first = (self.last, n)
        self.done += n

    def line(self) -> str:
        """``documents embedded 12/40 (30 %), 4.1/s, ETA 0:07`` (no share or ETA without a total,
        no rate or ETA before a second update)."""
        rate = self.rate()
        speed = "" if rate is None else f", {rate_text(rate)}"
        if not self.total:
            return f"{self.label} {self.done}{speed}"
        left = max(self.total - self.done, 0)
        eta = f", ETA {clock(left / rate)}" if rate and left else ""
        return f"{self.label} {self.done}/{self.total} ({100 * self.done / self.total:.0f} %){speed}{eta}"


def rate_text(per_second: float) -> str:
    """``4.1/s``, ``3.0/min`` or ``2.0/h``: the unit that keeps slow work readable."""
    for unit, scale in (("s", 1), ("min", 60), ("h", 3600)):
        if per_second * scale >= 1 or unit == "h":
            return f"{per_second * scale:.1f}/{unit}"
    raise AssertionError("unreachable")


def clock(seconds: float) -> str:
    """``0:07``, ``12:30`` or ``1:02:03``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Board:
    """The counters of one command and how they are shown; subclasses render."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.lock = threading.Lock()

    def counter(self, label: str, total: int | None) -> Counter:
        """The counter named ``label`` (created on first use); a given ``total`` replaces the old one."""
        with self.lock:
            found = self.counters.get(label)
            if found is None:
                found = self.counters[label] = Counter(self, label, total)
                self.added(found)
        if total is not None:
            self.set_total(found, total)
        return found

    def added(self, counter: Counter) -> None:
        """A new counter appeared."""

    def advance(self, counter: Counter, n: int) -> None:
        """``counter`` has ``n`` more items done."""
        with self.lock:
            counter._count(n)

    def set_total(self, counter: Counter, total: int) -> None:
        """``counter`` has ``total`` items to do."""
        with self.lock:
            counter.total = total

    def close(self, failed: bool = False) -> None:
        """The command's work ended, or ``failed`` (its error line follows)."""


class PlainBoard(Board):
    """One line per counter at every 10 % of its total and at least every ``period`` seconds while it moves."""

    def __init__(self, stream: TextIO, period: float) -> None:
        super().__init__()
        self.stream, self.period = stream, period
        self.printed: dict[str, tuple[float, int, int]] = {}  # label -> (when, 10 % step, count) of its last line

    def _step(self, counter: Counter) -> int:
        return math.floor(10 * counter.done / counter.total) if counter.total else 0

    def advance(self, counter: Counter, n: int) -> None:
        """Count, and print a line when the counter passed a 10 % step or its period elapsed."""
        with self.lock:
            counter._count(n)
            now, started = time.monotonic(), counter.first[0] if counter.first else 0.0
            when, step, _ = self.printed.get(counter.label, (started, 0, 0))
            if self._step(counter) > step or now - when >= self.period:
                self._print(counter, now)

    def _print(self, counter: Counter, now: float) -> None:
        self.printed[counter.label] = (now, self._step(counter), counter.done)
        self.stream.write(f"progress: {counter.line()}\n")
        self.stream.flush()

    def close(self, failed: bool = False) -> None:
        """A last line for every counter that moved since its previous one (none after a failure:
        the error line is what matters then)."""
        if failed:
            return
        with self.lock:
            for counter in self.counters.values():
                if counter.done and self.printed.get(counter.label, (0.0, 0, 0))[2] != counter.done:
                    self._print(counter, time.monotonic())


class RichBoard(Board):
    """A rich progress display: a bar, count, rate and ETA per counter, redrawn in place."""

    def __init__(self, stream: TextIO, min_interval: float | None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__()
        self.min_interval, self.last_refresh = min_interval, 0.0
        self.tasks: dict[str, Any] = {}
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=stream), redirect_stdout=False, refresh_per_second=4,
        )
        self.progress.start()

    def added(self, counter: Counter) -> None:
        """A row of its own for each counter."""
        self.tasks[counter.label] = self.progress.add_task(counter.label, total=counter.total, rate="")

    def advance(self, counter: Counter, n: int) -> None:
        """Count and update the counter's row."""
        super().advance(counter, n)
        rate = counter.rate()
        self.progress.update(self.tasks[counter.label], completed=counter.done, rate="" if rate is None else rate_text(rate))
        self._maybe_refresh()

    def set_total(self, counter: Counter, total: int) -> None:
        """A new total in the counter's row."""
        super().set_total(counter, total)
        self.progress.update(self.tasks[counter.label], total=total)
        self._maybe_refresh()

    def _maybe_refresh(self) -> None:
        # Redraw now (not only at the display's own pace) when a minimum interval is asked for.
        now = time.monotonic()
        if self.min_interval is not None and now - self.last_refresh >= self.min_interval:
            self.last_refresh = now
            self.progress.refresh()

    def close(self, failed: bool = False) -> None:
        """Draw the final state once more and leave it on screen."""
        self.progress.refresh()
        self.progress.stop()


_active: Board | None = None


def counter(label: str, total: int | None = None) -> Counter:
    """The running command's counter named ``label``; a no-op counter when nothing is shown."""
    board = _active
    return board.counter(label, total) if board is not None else Counter(None, label, total)


def _period() -> float | None:
    value = os.environ.get(PERIOD_ENV)
    try:
        return None if value is None or not value.strip() else max(float(value), 0.0)
    except ValueError:
        return None  # a malformed setting must not break the command; use the default


def make_board(stream: TextIO) -> Board:
    """A rich board for a terminal, else plain lines."""
    period = _period()
    if stream.isatty():
        return RichBoard(stream, period)
    return PlainBoard(stream, PLAIN_PERIOD_S if period is None else period)


@contextmanager
def live_progress(stream: TextIO | None = None) -> Iterator[Board]:
    """Show the counters advanced inside the block on ``stream`` (default stderr) until it ends."""
    global _active
    board = make_board(stream if stream is not None else sys.stderr)
    previous, _active = _active, board
    try:
        yield board
    except BaseException:
        _active = previous
        board.close(failed=True)
        raise
    _active = previous
    board.close()
