"""What people see: colours (only on a terminal, with NO_COLOR unset or empty, as
https://no-color.org asks), messages, and the live one-line-per-shard view."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Dict, Optional, Sequence, TextIO

from colorama import Style

from .states import COLORS, Progress, RunOutcome
from .text import Cell, format_seconds, paint, table

#: The board's state column fits every word it can show, so it never shifts.
STATE_WIDTH = max(len(state) for vocabulary in (Progress, RunOutcome) for state in vocabulary)
#: Elapsed times are right-aligned in this many characters ("59m59s").
ELAPSED_WIDTH = 6


class Console:
    """Human output on one stream (stdout); errors go to stderr via invoke.Exit."""

    def __init__(self, stream: Optional[TextIO] = None, color: Optional[bool] = None):
        self.stream = stream or sys.stdout
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.color = (self.is_tty and not os.environ.get("NO_COLOR")) if color is None else color

    def color_of(self, state: str) -> str:
        """The colour code of ``state`` (see states.COLORS), or "" without colour."""
        return COLORS.get(state, "") if self.color else ""

    def paint(self, text: str, state: str) -> str:
        """``text`` in the colour of ``state`` (any state word, or states.WARNING)."""
        return paint(text, self.color_of(state))

    def say(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A side remark (which engine, which run key), dimmed on a terminal."""
        self.say(paint(f"lokt-tasks: {text}", Style.DIM if self.color else ""))


class LiveBoard:
    """One line per shard with its state and elapsed time: on a terminal redrawn in place
    twice a second, otherwise printed once per change of state, so CI logs stay readable."""

    def __init__(self, console: Console, labels: Sequence[str]):
        self.console = console
        self.labels = list(labels)
        self.label_width = max((len(label) for label in labels), default=0)
        self.states: Dict[str, str] = {label: Progress.WAITING for label in labels}
        self.started: Dict[str, float] = {}
        self.ended: Dict[str, float] = {}
        self.details: Dict[str, str] = dict.fromkeys(labels, "")
        self._lock = threading.Lock()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> LiveBoard:
        if self.console.is_tty:
            self._draw()
            self._thread = threading.Thread(target=self._refresh, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._draw()

    def update(self, label: str, state: str, detail: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            self.states[label] = state
            self.details[label] = detail
            if state == Progress.RUNNING:
                self.started[label] = now
                self.ended.pop(label, None)
            elif label in self.started:
                self.ended[label] = now
            line = self._line(label, now)
        if not self.console.is_tty:
            self.console.say(line)

    def _line(self, label: str, now: float) -> str:
        state, started = self.states[label], self.started.get(label)
        elapsed = "" if started is None else format_seconds(self.ended.get(label, now) - started)
        return table(
            [[label, Cell(str(state), self.console.color_of(state)), elapsed, self.details[label]]],
            right={2},
            widths=(self.label_width, STATE_WIDTH, ELAPSED_WIDTH),
            indent="",
        )[0]

    def _refresh(self) -> None:
        while not self._stop.wait(0.5):
            self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        with self._lock:
            lines = [self._line(label, now) for label in self.labels]
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.console.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.console.stream.flush()
            self._drawn = len(lines)
