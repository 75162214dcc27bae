"""Progress within one slide: which step runs and how many of its blocks are done.

Library code marks step boundaries (:func:`step`, :func:`end`) and counts blocks
(:func:`expect`, :func:`advance`; :func:`tlsquant.blocks.compute_blocks` does both). Every
call is a no-op unless a caller installed a :class:`Reporter` with :func:`reporting`. The
reporter is context-local (:mod:`contextvars`): a slide analysed in a batch worker, another
thread or another process reports nothing unless that context installs its own. Nothing here
prints; :class:`StreamReporter` writes only to the stream its caller hands it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TextIO

_current: ContextVar[Reporter | None] = ContextVar("tlsquant_progress", default=None)


@dataclass
class Step:
    """One named step of an analysis; ``total`` blocks (0: a step without blocks), ``done`` of them finished."""

    name: str
    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the step started (until it ended, once it has)."""
        stop = self.ended if self.ended is not None else (time.perf_counter() if now is None else now)
        return stop - self.started

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate so far; None before the first block or without blocks."""
        if not self.total or not self.done or self.done >= self.total:
            return None
        return self.elapsed(now) * (self.total - self.done) / self.done


def format_duration(seconds: float) -> str:
    """``27.4`` -> ``0:27``, ``3725`` -> ``1:02:05`` (whole seconds)."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def live_text(step: Step, now: float | None = None) -> str:
    """``[counting pass] 37/120 blocks, 0:12 elapsed, ETA 0:27`` (the line a terminal shows)."""
    parts = [f"{step.done}/{step.total} blocks"] if step.total else []
    parts.append(f"{format_duration(step.elapsed(now))} elapsed")
    eta = step.eta(now)
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return f"[{step.name}] " + ", ".join(parts)


def start_text(step: Step) -> str:
    """``counting pass: started`` (``, 120 blocks`` when the count is known up front)."""
    return f"{step.name}: started" + (f", {step.total} blocks" if step.total else "")


def end_text(step: Step) -> str:
    """``counting pass: 120 blocks in 39.1 s``, or ``TLS: done in 0.4 s`` for a step without blocks."""
    what = f"{step.done} blocks in" if step.total else "done in"
    return f"{step.name}: {what} {step.elapsed():.1f} s"


class Reporter:
    """Keeps the current step and its block counts; subclasses show them (``started``, ``advanced``, ``ended``).

    ``steps`` holds the finished steps in order. Thread-safe: blocks may be counted from
    a scheduler's thread while another thread redraws.
    """

    def __init__(self) -> None:
        self.step: Step | None = None
        self.steps: list[Step] = []
        self._lock = threading.RLock()

    def begin(self, name: str, total: int = 0) -> None:
        with self._lock:
            self.end()
            self.step = Step(name, total=total)
            self.started(self.step)

    def expect(self, blocks: int) -> None:
        with self._lock:
            if self.step is not None:
                self.step.total += blocks
                self.advanced(self.step)

    def advance(self, blocks: int = 1) -> None:
        with self._lock:
            if self.step is not None:
                self.step.done += blocks
                self.advanced(self.step)

    def end(self) -> None:
        with self._lock:
            if self.step is None:
                return
            step, self.step = self.step, None
            step.ended = time.perf_counter()
            self.steps.append(step)
            self.ended(step)

    def close(self) -> None:
        """End the open step; called when the :func:`reporting` block is left."""
        self.end()

    def abandon(self) -> None:
        """Drop the open step without reporting it as ended (the work stopped with an error)."""
        with self._lock:
            self.step = None

    def started(self, step: Step) -> None:
        """A step began."""

    def advanced(self, step: Step) -> None:
        """Its block count or total changed."""

    def ended(self, step: Step) -> None:
        """A step finished (``step.ended`` is set)."""


class StreamReporter(Reporter):
    """Writes progress to ``stream``.

    ``live``: one line redrawn in place (a terminal), refreshed every ``refresh_s`` so the
    elapsed time moves during long blocks, and cleared at the end. Otherwise one plain
    line when each step starts and one when it ends (a log file or a pipe: no carriage returns).
    """

    def __init__(self, stream: TextIO, *, live: bool, refresh_s: float = 0.5) -> None:
        super().__init__()
        self.stream, self.live, self.refresh_s = stream, live, refresh_s
        self._drawn_width = 0
        self._drawn_at = 0.0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def started(self, step: Step) -> None:
        if not self.live:
            self._write(start_text(step) + "\n")
            return
        self._draw(step)
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="tlsquant-progress", daemon=True)
            self._ticker.start()

    def advanced(self, step: Step) -> None:
        # redraws are capped at ten a second: thousands of small blocks cost nothing to show
        if self.live and (step.done >= step.total or time.perf_counter() - self._drawn_at >= 0.1):
            self._draw(step)

    def ended(self, step: Step) -> None:
        if self.live:  # what ran last stays in view until the next step or the end
            self._draw_text(end_text(step))
        else:
            self._write(end_text(step) + "\n")

    def close(self) -> None:
        super().close()
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self.live and self._drawn_width:
                self._write("\r" + " " * self._drawn_width + "\r")
                self._drawn_width = 0

    def _tick(self) -> None:
        while not self._stop.wait(self.refresh_s):
            with self._lock:
                if self.step is not None:
                    self._draw(self.step)

    def _draw(self, step: Step) -> None:
        self._draw_text(live_text(step))

    def _draw_text(self, text: str) -> None:
        self._write("\r" + text.ljust(self._drawn_width))
        self._drawn_width = max(self._drawn_width, len(text))
        self._drawn_at = time.perf_counter()

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Install ``reporter`` for the code run inside the block (this context only); closed on the way out."""
    token = _current.set(reporter)
    try:
        yield reporter
    except BaseException:
        reporter.abandon()  # a failed step did not finish: no "done" line for it
        raise
    finally:
        _current.reset(token)
        reporter.close()


def current() -> Reporter | None:
    """The reporter installed in this context, or None."""
    return _current.get()


def step(name: str, total: int = 0) -> None:
    """Start step ``name`` (ending the one before); ``total`` blocks when known up front."""
    reporter = _current.get()
    if reporter is not None:
        reporter.begin(name, total)


def expect(blocks: int) -> None:
    """Add ``blocks`` to the current step's total (a pass that is about to run them)."""
    reporter = _current.get()
    if reporter is not None:
        reporter.expect(blocks)


def advance(blocks: int = 1) -> None:
    """Count ``blocks`` of the current step as done."""
    reporter = _current.get()
    if reporter is not None:
        reporter.advance(blocks)


def end() -> None:
    """End the current step."""
    reporter = _current.get()
    if reporter is not None:
        reporter.end()


class EventReporter(Reporter):
    """Hands each step's start and end, and its block count at most every ``interval_s``, to
    ``publish`` as a plain dict (picklable, for a batch worker to send to the client that draws
    the batch's progress): ``{"event": "started" | "advanced" | "ended", "step", "done", "total", "elapsed_s"}``.
    """

    def __init__(self, publish, *, interval_s: float = 1.0) -> None:
        super().__init__()
        self.publish, self.interval_s = publish, interval_s
        self._sent_at = 0.0

    def started(self, step: Step) -> None:
        self._send("started", step)

    def advanced(self, step: Step) -> None:
        # a whole slide's blocks would flood the scheduler's event log: a count a second is enough to draw
        if time.perf_counter() - self._sent_at >= self.interval_s:
            self._send("advanced", step)

    def ended(self, step: Step) -> None:
        self._send("ended", step)

    def _send(self, event: str, step: Step) -> None:
        self._sent_at = time.perf_counter()
        self.publish({"event": event, "step": step.name, "done": step.done, "total": step.total,
                      "elapsed_s": round(step.elapsed(), 3)})


def step_from_event(event: dict) -> Step:
    """The :class:`Step` an :class:`EventReporter` event describes, timed on this machine's clock."""
    now = time.perf_counter()
    step = Step(event["step"], total=int(event.get("total", 0)), done=int(event.get("done", 0)),
                started=now - float(event.get("elapsed_s", 0.0)))
    if event.get("event") == "ended":
        step.ended = now
    return step


class BatchDisplay:
    """Progress of a batch on ``stream``: slides done of the total and, for each slide running, its step.

    Called as ``display(slide_id, status, done, total)`` when a slide finishes (the batch's
    progress callback) and ``display.step(slide_id, step_event)`` for the steps inside
    running slides (:class:`EventReporter` events, arriving from another thread). ``live``:
    one line redrawn in place (a terminal); otherwise one plain line per slide finished and
    per step started or ended (a log file or a pipe).
    """

    def __init__(self, stream: TextIO, *, live: bool, width: int = 120) -> None:
        self.stream, self.live, self.width = stream, live, width
        self.done = self.total = 0
        self.running: dict[str, Step] = {}
        self.finished: set[str] = set()
        self._drawn_width = 0
        self._lock = threading.Lock()

    def __call__(self, slide_id: str, status: str, done: int, total: int) -> None:
        with self._lock:
            self.done, self.total = done, total
            self.finished.add(slide_id)
            self.running.pop(slide_id, None)
            if self.live:
                self._draw(last=f"{slide_id}: {status}")
                if done >= total:
                    self._write("\n")
                    self._drawn_width = 0
            else:
                self._write(f"{done}/{total} {slide_id}: {status}\n")

    def step(self, slide_id: str, event: dict) -> None:
        with self._lock:
            if slide_id in self.finished:  # an event overtaken by the slide's result
                return
            self.total = self.total or int(event.get("batch_total", 0))
            step = step_from_event(event)
            self.running[slide_id] = step
            if self.live:
                self._draw()
            elif event.get("event") == "started":
                self._write(f"{slide_id}: {start_text(step)}\n")
            elif event.get("event") == "ended":
                self._write(f"{slide_id}: {end_text(step)}\n")

    def _draw(self, last: str = "") -> None:
        bar_width = 20
        filled = int(bar_width * self.done / max(self.total, 1))
        parts = [f"[{'#' * filled}{'.' * (bar_width - filled)}] {self.done}/{self.total or '?'}"]
        parts += [f"{slide_id} {live_text(step)}" for slide_id, step in sorted(self.running.items())]
        if last and not self.running:
            parts.append(last)
        text = " | ".join(parts)
        if len(text) > self.width:
            text = text[: self.width - 1] + "…"
        self._write("\r" + text.ljust(self._drawn_width))
        self._drawn_width = max(self._drawn_width, len(text))

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
