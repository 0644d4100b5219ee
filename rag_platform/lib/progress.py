"""Stage progress: components report ``(done, total)`` through a plain callable, so ``lib/`` stays
free of Dagster and of any terminal library.

A component takes ``progress: ProgressCallback | None`` and calls it as items finish. The caller
binds the stage: :class:`StageProgress` turns the calls into :class:`ProgressEvent` objects
(done, total, rate, ETA), sends every event to the process's listeners (the CLI's live progress
lines, :func:`listening`) and a throttled message to a log function (the Dagster asset's
``context.log.info``, so the Dagster UI shows the same progress).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

#: What a component calls as it works: ``progress(done, total)``, counts of its own items
#: (documents, chunks, questions), ``done`` non-decreasing, ``done <= total``.
ProgressCallback = Callable[[int, int], None]

#: The stages that report progress, in pipeline order.
STAGES = ("parse", "mask", "chunk", "embed", "index", "evaluate")

#: What each stage counts.
STAGE_UNITS: dict[str, str] = {
    "parse": "documents",
    "mask": "documents",
    "chunk": "documents",
    "embed": "chunks",
    "index": "chunks",
    "evaluate": "searches",
}


def no_progress(done: int, total: int) -> None:
    """The callback used when a component is given none."""


def format_seconds(seconds: float) -> str:
    """``75.0`` → ``1m15s``; ``8.2`` → ``8s``; ``3725`` → ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of one stage.

    Attributes:
        stage: one of :data:`STAGES` (or any name a caller binds).
        done: items finished so far.
        total: items the stage has in this run.
        seconds: wall seconds since the stage's first report.
    """

    stage: str
    done: int
    total: int
    seconds: float

    @property
    def rate(self) -> float | None:
        """Items per second so far, or None before a measurable interval."""
        return self.done / self.seconds if self.seconds > 0 and self.done else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far (0 when done), or None without a rate."""
        if self.done >= self.total:
            return 0.0
        rate = self.rate
        return (self.total - self.done) / rate if rate else None

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def message(self) -> str:
        """``embed: 1,200/4,800 chunks (16.2/s, ETA 3m42s)``."""
        unit = STAGE_UNITS.get(self.stage, "items")
        text = f"{self.stage}: {self.done:,}/{self.total:,} {unit}"
        rate = self.rate
        parts = [f"{rate:.1f}/s" if rate is not None else None]
        if self.finished:
            parts.append(f"done in {format_seconds(self.seconds)}")
        elif (eta := self.eta_seconds) is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        shown = [p for p in parts if p]
        return f"{text} ({', '.join(shown)})" if shown else text


ProgressListener = Callable[[ProgressEvent], None]

_listeners: list[ProgressListener] = []
_listeners_lock = threading.Lock()


@contextmanager
def listening(listener: ProgressListener) -> Iterator[None]:
    """Sends every :class:`ProgressEvent` of this process to ``listener`` inside the block
    (the in-process runner's terminal display). A listener that raises is dropped from that
    event only; the stage goes on."""
    with _listeners_lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _listeners_lock:
            _listeners.remove(listener)


def publish(event: ProgressEvent) -> None:
    """Delivers ``event`` to the listeners registered with :func:`listening`."""
    with _listeners_lock:
        current = list(_listeners)
    for listener in current:
        try:
            listener(event)
        except Exception:  # a broken display must never stop a pipeline stage
            continue


class StageProgress:
    """The :data:`ProgressCallback` of one stage run.

    Every call becomes a :class:`ProgressEvent` for the listeners; the log function receives
    the event's message on the first call, then at most every ``log_every_seconds`` or
    ``log_every_items`` items, whichever comes first, and always when the stage finishes.

    Args:
        stage: the stage name (:data:`STAGES`).
        log: e.g. the Dagster asset's ``context.log.info``; None: listeners only.
        log_every_seconds: most seconds between two logged messages while items finish.
        log_every_items: most items between two logged messages (None: time only).
        clock: monotonic seconds (a test may pass its own).
    """

    def __init__(
        self,
        stage: str,
        log: Callable[[str], object] | None = None,
        log_every_seconds: float = 10.0,
        log_every_items: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.log = log
        self.log_every_seconds = log_every_seconds
        self.log_every_items = log_every_items
        self.clock = clock
        self._start: float | None = None
        self._last_log: float | None = None
        self._last_logged_done = -1
        self.last: ProgressEvent | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self._start is None:
            self._start = now
        event = ProgressEvent(self.stage, done, max(total, done), now - self._start)
        self.last = event
        publish(event)
        if self.log is None or done == self._last_logged_done:
            return
        due = (
            self._last_log is None
            or event.finished
            or now - self._last_log >= self.log_every_seconds
            or (
                self.log_every_items is not None
                and done - self._last_logged_done >= self.log_every_items
            )
        )
        if due:
            self._last_log = now
            self._last_logged_done = done
            self.log(event.message())
