"""The CLI's live progress lines: one line per pipeline stage (done/total, rate, ETA), drawn with
rich from the :class:`~rag_platform.lib.progress.ProgressEvent` objects the stages publish.

On a terminal the lines update in place (``rich.progress``); on a pipe or file (``demo.sh``
logged, CI) each stage prints one line when it finishes, plus a line at most every
``every_seconds`` while it runs, so a log shows progress without a redraw per item.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from rag_platform.lib.progress import STAGE_UNITS, ProgressEvent, format_seconds, listening


class StageProgressDisplay:
    """Shows the stages of the in-process runs inside its ``with`` block.

    Args:
        console: where to draw (the CLI uses stderr, keeping stdout for the JSON lines).
        label: put before each stage name (the tenant id).
        every_seconds: on a non-terminal, most seconds between two lines of a running stage.
    """

    def __init__(self, console: Console, label: str = "", every_seconds: float = 30.0) -> None:
        self.console = console
        self.label = label
        self.every_seconds = every_seconds
        self._live = console.is_terminal
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._last_line: dict[str, float] = {}
        self._finished: set[str] = set()
        self._listening = listening(self)

    def __enter__(self) -> StageProgressDisplay:
        if self._live:
            self._progress = Progress(
                TextColumn("[bold]{task.description:<22}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TextColumn("{task.fields[rate]:>10}"),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
                transient=False,
            )
            self._progress.start()
        self._listening.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._listening.__exit__(exc_type, exc, tb)
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        name = f"{self.label} {event.stage}".strip()
        rate = f"{event.rate:.1f}/s" if event.rate is not None else ""
        if event.finished:
            eta = f"done in {format_seconds(event.seconds)}"
        elif event.eta_seconds is not None:
            eta = f"ETA {format_seconds(event.eta_seconds)}"
        else:
            eta = ""
        if self._progress is not None:
            task = self._tasks.get(event.stage)
            unit = STAGE_UNITS.get(event.stage, "items")
            if task is None:
                task = self._progress.add_task(
                    name, total=event.total, unit=unit, rate=rate, eta=eta
                )
                self._tasks[event.stage] = task
            self._progress.update(
                task, completed=event.done, total=event.total, unit=unit, rate=rate, eta=eta
            )
            return
        now = time.monotonic()
        if event.finished:
            if event.stage not in self._finished:
                self._finished.add(event.stage)
                self.console.print(f"{self.label} {event.message()}".strip(), highlight=False)
        elif now - self._last_line.get(event.stage, now - self.every_seconds) >= self.every_seconds:
            self._last_line[event.stage] = now
            self.console.print(f"{self.label} {event.message()}".strip(), highlight=False)
