"""Stopping a run before its end, cleanly: SIGTERM/SIGINT and the command's time limit
(`mamlpp train --time-limit`, `mamlpp sweep run --time-limit`). The trainer checks a
`StopRequest` at its safe points; what it raises, `RunStopped`, carries the exit status and the
message the CLI prints. Light on purpose (no torch): the sweep imports it."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click

__all__ = [
    "TIME_LIMIT_EXIT", "Deadline", "RunStopped", "StopRequest", "minutes", "stop_on_signals",
    "time_limit_option",
]  # fmt: skip

TIME_LIMIT_EXIT = 75
"""Exit status of a run stopped by its time limit: EX_TEMPFAIL of sysexits.h, "try again"."""


class RunStopped(Exception):  # noqa: N818 (a request, not a failure)
    """The run stopped at a safe point before its end: by SIGTERM or SIGINT (`signum`; exit
    128 + the signal) or by its time limit (`time_limit`, seconds; exit `TIME_LIMIT_EXIT`).
    Every completed epoch is written, an epoch in flight is abandoned, and the same command
    resumes exactly. The catcher fills in how far the run got and, when it can tell, how long
    the rest and the whole run take at this command's pace."""

    def __init__(self, signum: int | None = None, time_limit: float | None = None) -> None:
        self.signum = signum
        self.time_limit = time_limit
        self.completed_epochs = 0
        self.total_epochs = 0
        self.left_s: float | None = None
        self.whole_s: float | None = None
        self.training_only = False
        """`left_s`/`whole_s` count training alone (no epoch completed: nothing else timed)."""
        self.in_flight: tuple[int, int, float] | None = None
        """(iterations done, of, seconds) of the epoch abandoned, when stopped inside one."""
        super().__init__(self._cause())

    def _cause(self) -> str:
        if self.signum is not None:
            return f"stopped by {signal.Signals(self.signum).name}"
        return f"time limit of {minutes(self.time_limit or 0.0)} reached"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum is not None else TIME_LIMIT_EXIT

    @property
    def preempted(self) -> bool:
        """Stopped from outside to be resumed (SIGTERM, as SLURM sends, or the time limit)."""
        return self.signum == signal.SIGTERM or self.signum is None

    def message(self) -> str:
        where = f"at epoch {self.completed_epochs}/{self.total_epochs}"
        if self.completed_epochs == self.total_epochs:
            where += " (training done, the test left)"
        elif self.in_flight is not None and self.in_flight[0] > 0:
            done, of, _ = self.in_flight
            where += f", in epoch {self.completed_epochs + 1} at iteration {done}/{of} (abandoned)"
        pace = ""
        if self.left_s is not None and self.whole_s is not None:
            pace = (
                f"; at this pace the rest takes ~{minutes(self.left_s)} and the whole run "
                f"~{minutes(self.whole_s)}"
            )
            if self.training_only:
                pace += " (training alone: validation and the test are not timed yet)"
        return (
            f"{self._cause()} {where} (every completed epoch is saved){pace}; run the same "
            "command to resume"
        )


def minutes(seconds: float) -> str:
    """A duration for people: seconds under a minute, hours from two hours, else minutes."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Deadline:
    """A command's wall-time budget (`mamlpp train --time-limit`), counted from `start`
    (time.monotonic) so that start-up (data, learner, graph recording) counts too."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds of the budget left (negative once it has passed)."""
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.left() <= 0

    def has_room_for(self, seconds: float) -> bool:
        return seconds <= self.left()


@dataclass
class StopRequest:
    """Why the run should stop at its next safe point (between iterations, before writing an
    epoch, between test chunks): `signum`, set by the SIGTERM/SIGINT handler of
    `stop_on_signals`, or the `deadline` passing. `check` raises RunStopped then; `make_room`
    raises it at an epoch boundary when the next piece of work (an epoch, the test) is not
    expected to end inside the deadline, so a time-limited command ends cleanly instead of
    abandoning work half done."""

    signum: int | None = None
    deadline: Deadline | None = None

    def requested(self) -> bool:
        return self.signum is not None or (self.deadline is not None and self.deadline.expired())

    def check(self, in_flight: tuple[int, int, float] | None = None) -> None:
        """Raise RunStopped when a stop is due; `in_flight`: (iterations done, of, seconds) of
        the epoch this is checked in, for the message and the projection."""
        stopped = None
        if self.signum is not None:
            stopped = RunStopped(self.signum)
        elif self.deadline is not None and self.deadline.expired():
            stopped = RunStopped(time_limit=self.deadline.seconds)
        if stopped is not None:
            stopped.in_flight = in_flight
            raise stopped

    def make_room(self, seconds: float | None) -> None:
        """Stop unless `seconds` (an estimate; None: unknown, go on) fit before the deadline."""
        self.check()
        if self.deadline is not None and seconds is not None:
            if not self.deadline.has_room_for(seconds):
                raise RunStopped(time_limit=self.deadline.seconds)


@contextlib.contextmanager
def stop_on_signals(enabled: bool, deadline: Deadline | None = None) -> Iterator[StopRequest]:
    """While inside, SIGTERM and SIGINT ask the run to stop at its next safe point; a second
    signal stops at once (atomic writes keep the files whole). The previous handlers are
    restored afterwards. Outside the main thread (or not `enabled`) nothing is installed. The
    request also carries the command's `deadline`."""
    request = StopRequest(deadline=deadline)
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None:
            raise RunStopped(signum)
        request.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def time_limit_option(help: str) -> Callable[[Any], Any]:
    """The `--time-limit MINUTES` click option (a positive number of minutes, or None)."""
    return click.option(
        "--time-limit",
        type=click.FloatRange(min=0.0, min_open=True),
        default=None,
        metavar="MINUTES",
        callback=_not_nan,
        help=help,
    )


def _not_nan(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """FloatRange lets NaN through (every comparison with it is false): a run would then ignore
    its limit until its first epoch ended, and stop there."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("nan is not a number of minutes; give a positive number, e.g. 9")
    return value
