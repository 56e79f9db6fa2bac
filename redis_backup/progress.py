"""Progress on stderr for long interactive work (bytes, files, rate), silent when stderr is not a terminal.

A `Progress` is made by a command (cli) and passed down to the code doing the work, which only counts:
``add(n)`` per chunk (a float compare when nothing is due), ``phase(...)`` around each step. Drawing is
throttled (INTERVAL), one line rewritten in place with ``\\r``, cut to the terminal's width, and always
ended with a newline before anything else may be printed. Disabled (not a terminal, ``--json``), it
only keeps the counters. The line's text comes from pure functions (render, fit) and the clock is
injected, so that both are tested without a terminal or a sleep.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

INTERVAL = 0.25  # seconds between redraws: 4 a second
DEFAULT_WIDTH = 80  # when the terminal does not say (a pseudo-terminal nobody sized)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def human_duration(seconds: float) -> str:
    """3s, 2m05s, 1h02m: short enough for a progress line."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Phase:
    """One step of the work and its counters: bytes (`done` of `total`) and items (files, keys)."""

    name: str
    total: int | None = None  # bytes expected (None: not known)
    items_total: int | None = None
    unit: str | None = None  # what the items are ("files", "keys"); None: no items counted
    done: int = 0
    items: int = 0
    elapsed: float = 0.0  # seconds it was the current phase, up to `since`
    since: float | None = None  # when it last became the current phase (None: it is not)
    drawn: bool = False

    def seconds(self, now: float) -> float:
        return self.elapsed + (now - self.since if self.since is not None else 0.0)


def render(label: str, ph: Phase, elapsed: float) -> tuple[str, str]:
    """(what, figures) of a progress line, e.g. ("restore: reading files", "3/5 files, 12.0 MiB of
    40.0 MiB (30%), 5.0 MiB/s, 6s left"). `elapsed`: seconds spent in the phase."""
    what = f"{label}: {ph.name}" if ph.name and label else ph.name or label
    parts = []
    if ph.unit is not None and (ph.items_total is not None or ph.items):
        of = f"/{ph.items_total}" if ph.items_total is not None else ""
        parts.append(f"{ph.items}{of} {ph.unit}")
    rate = ph.done / elapsed if elapsed > 0 else 0.0
    if ph.total:
        total = max(ph.total, ph.done)  # a file that grew since it was listed
        parts.append(f"{human_bytes(ph.done)} of {human_bytes(total)} ({ph.done * 100 // total}%)")
    elif ph.done:
        parts.append(human_bytes(ph.done))
    if ph.done and elapsed > 0:
        parts.append(f"{human_bytes(rate)}/s")
    if ph.total and 0 < ph.done < ph.total and rate > 0:
        parts.append(f"{human_duration((ph.total - ph.done) / rate)} left")
    else:
        parts.append(human_duration(elapsed))
    return what, ", ".join(parts)


def fit(what: str, figures: str, width: int) -> str:
    """The line in `width` columns: the figures kept whole, `what` shortened first (then the end cut)."""
    line = f"{what}: {figures}" if what else figures
    if len(line) <= width:
        return line
    room = width - len(figures) - 2
    if what and room >= 8:
        return f"{what[: room - 3]}...: {figures}"
    return line[:width]


class Throttle:
    """Says when a redraw is due: `interval` seconds (of the clock passed in) after the last one."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self._next = -math.inf

    def due(self, now: float) -> bool:
        return now >= self._next

    def drawn(self, now: float) -> None:
        self._next = now + self.interval

    def reset(self) -> None:
        """The next due() is True (a new phase, a cleared line: show it at once)."""
        self._next = -math.inf


def _width(stream: TextIO) -> int:
    """Columns to use: one less than the terminal's, as a line filling the last column wraps on some."""
    try:
        columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return max(20, (columns or DEFAULT_WIDTH) - 1)


class Progress:
    """``with Progress("restore") as p: ... with p.phase("reading", total=n, items=5): p.add(len(block))``.

    enabled: None = when `stream` (stderr) is a terminal. keep: each finished phase's last line stays
    (restore: the steps it took); False: a phase's line is overwritten by what follows (verify: one line
    for all its chains, each chain's --deep steps shown while they run).
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        keep: bool = True,
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label  # may be changed as the work goes (verify: which chain)
        self.keep = keep
        self._clock = clock
        self._throttle = Throttle(interval)
        self._phase = Phase("", total=total, since=clock())
        self._shown = 0  # characters of the line now on the terminal (0: the cursor is at a line's start)

    @classmethod
    def on_terminal(cls, label: str, *, json: bool = False, keep: bool = True) -> Progress:
        """A command's progress: on stderr when it is a terminal, never with --json (a script reads it)."""
        return cls(label, enabled=False if json else None, keep=keep)

    @property
    def current(self) -> Phase:
        return self._phase

    # ------------------------------------------------------------------ counting (the hot path)

    def add(self, n: int, items: int = 0) -> None:
        """n more bytes (and items) done in the current phase."""
        ph = self._phase
        ph.done += n
        ph.items += items
        if self.enabled:
            now = self._clock()
            if self._throttle.due(now):
                self._draw(now)

    def update(self, done: int, total: int | None = None) -> None:
        """The current phase's bytes done (and total) as measured elsewhere (a server's loading figures)."""
        ph = self._phase
        ph.done = done
        if total is not None:
            ph.total = total
        self.add(0)

    @contextlib.contextmanager
    def phase(self, name: str, *, total: int | None = None, items: int | None = None, unit: str | None = "files"
              ) -> Iterator[Phase]:  # fmt: skip
        """A step of the work with its own counters; the one it interrupts goes on afterwards."""
        outer = self._phase
        now = self._clock()
        self._leave(outer, now)
        ph = Phase(name, total=total, items_total=items, unit=unit if items is not None else None, since=now)
        self._phase = ph
        if self.enabled:
            self._new_line()
            self._draw(now)
        try:
            yield ph
        finally:
            now = self._clock()
            if self.enabled:
                self._draw(now)
                if self.keep:
                    self._end_line()
            self._leave(ph, now)
            outer.since = now
            self._phase = outer
            self._throttle.reset()

    # ------------------------------------------------------------------ the terminal

    def clear(self) -> None:
        """Erase the line, so that other output can be printed on the terminal; the next add redraws it."""
        if self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0
        self._throttle.reset()

    def finish(self) -> None:
        """The current phase's last figures (if it showed any), and a newline."""
        if self.enabled:
            ph = self._phase
            if ph.drawn or ph.done or ph.items:
                self._draw(self._clock())
            self._end_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.finish()  # also on an error: its message then starts on a line of its own

    def _leave(self, ph: Phase, now: float) -> None:
        if ph.since is not None:
            ph.elapsed += now - ph.since
            ph.since = None

    def _new_line(self) -> None:
        if self.keep:
            self._end_line()

    def _end_line(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = 0

    def _draw(self, now: float) -> None:
        ph = self._phase
        ph.drawn = True
        global _on_screen
        _on_screen = self
        self._throttle.drawn(now)
        text = fit(*render(self.label, ph, ph.seconds(now)), _width(self.stream))
        self.stream.write("\r" + text + " " * max(0, self._shown - len(text)))
        self.stream.flush()
        self._shown = max(len(text), 1)


_on_screen: Progress | None = None  # the last one drawn: its line may be on the terminal


def clear_line() -> None:
    """Erase the progress line now on the terminal, if any (a log line is about to be written)."""
    if _on_screen is not None:
        _on_screen.clear()


def silent() -> Progress:
    """A Progress that only counts: for work done without a command's (the service, a library call)."""
    return Progress("", enabled=False)
