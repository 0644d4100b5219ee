"""Stage progress: events with rate and ETA, throttled log messages, in-process listeners, and
the CLI's progress lines on a pipe and on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from rag_platform.console import StageProgressDisplay
from rag_platform.lib.progress import ProgressEvent, StageProgress, format_seconds, listening


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestProgressEvent:
    def test_rate_eta_and_message(self) -> None:
        event = ProgressEvent("embed", 200, 1000, 10.0)
        assert event.rate == 20.0 and event.eta_seconds == 40.0 and not event.finished
        assert event.message() == "embed: 200/1,000 chunks (20.0/s, ETA 40s)"
        done = ProgressEvent("parse", 30, 30, 75.0)
        assert done.eta_seconds == 0.0
        assert done.message() == "parse: 30/30 documents (0.4/s, done in 1m15s)"
        assert ProgressEvent("mask", 0, 5, 0.0).message() == "mask: 0/5 documents"

    def test_format_seconds(self) -> None:
        assert [format_seconds(s) for s in (0.4, 59, 61, 3725)] == ["0s", "59s", "1m01s", "1h02m"]


class TestStageProgress:
    def test_logs_first_then_every_interval_and_the_end(self) -> None:
        clock = _Clock()
        logged: list[str] = []
        progress = StageProgress("chunk", logged.append, log_every_seconds=10, clock=clock)
        progress(0, 100)
        for done in range(1, 100):
            clock.now += 0.5  # 50 s in all: about one message per 10 s
            progress(done, 100)
        clock.now += 0.5
        progress(100, 100)
        assert logged[0] == "chunk: 0/100 documents"
        assert 5 <= len(logged) <= 7, logged
        assert logged[-1].startswith("chunk: 100/100 documents") and "done in 50s" in logged[-1]
        progress(100, 100)  # a repeated report is not logged twice
        assert len([m for m in logged if m.startswith("chunk: 100/100")]) == 1

    def test_every_items(self) -> None:
        clock = _Clock()
        logged: list[str] = []
        progress = StageProgress("embed", logged.append, 1e9, log_every_items=25, clock=clock)
        for done in range(0, 101):
            progress(done, 100)
        assert [m.split()[1] for m in logged] == [f"{d}/100" for d in (0, 25, 50, 75, 100)]

    def test_listeners_get_every_event_and_a_broken_one_is_ignored(self) -> None:
        seen: list[ProgressEvent] = []

        def broken(event: ProgressEvent) -> None:
            raise RuntimeError("display gone")

        progress = StageProgress("index")
        with listening(broken), listening(seen.append):
            for done in range(5):
                progress(done, 4)  # done past total: total follows
        progress(9, 9)  # after the block: not delivered
        assert [(e.done, e.total) for e in seen] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
        assert all(e.stage == "index" for e in seen)


class TestStageProgressDisplay:
    def test_pipe_gets_one_line_per_finished_stage(self) -> None:
        out = io.StringIO()
        console = Console(file=out, force_terminal=False, width=120)
        with StageProgressDisplay(console, label="sci", every_seconds=1e9):
            for stage, total in (("parse", 3), ("embed", 40)):
                progress = StageProgress(stage)
                for done in range(total + 1):
                    progress(done, total)
                progress(total, total)
        lines = out.getvalue().splitlines()
        assert lines[0] == "sci parse: 0/3 documents"
        assert lines[1].startswith("sci parse: 3/3 documents (")
        assert lines[2] == "sci embed: 0/40 chunks"
        assert lines[3].startswith("sci embed: 40/40 chunks (") and len(lines) == 4

    def test_terminal_draws_one_line_per_stage(self) -> None:
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=120)
        with StageProgressDisplay(console, label="sci"):
            for stage in ("parse", "mask"):
                progress = StageProgress(stage)
                for done in range(11):
                    progress(done, 10)
        text = out.getvalue()
        assert "sci parse" in text and "sci mask" in text and "10/10" in text
        assert "documents" in text and "done in" in text
