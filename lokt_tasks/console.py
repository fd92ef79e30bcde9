"""What people see: colours (only on a terminal, with NO_COLOR unset or empty, as
https://no-color.org asks), messages, and the live one-line-per-shard view."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from colorama import Style

from .states import COLORS, Progress, RunOutcome
from .text import format_seconds, paint, shorten, table

#: The board's state column fits every word it can show, so it never shifts.
STATE_WIDTH = max(len(state) for vocabulary in (Progress, RunOutcome) for state in vocabulary)
#: Elapsed times are right-aligned in this many characters ("59m59s"); "59m59s/1h02m"
#: when the shards have estimates.
ELAPSED_WIDTH = 6
#: Seconds between two redraws of the board on a terminal.
REDRAW_INTERVAL = 0.5
#: Terminal controls: to the start of the line N lines up (CPL); erase from the cursor down.
_UP, _ERASE_BELOW = "\x1b[%dF", "\x1b[J"


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

    def size(self) -> Optional[os.terminal_size]:
        """The terminal's columns and lines ($COLUMNS and $LINES first), or None off one."""
        return shutil.get_terminal_size() if self.is_tty else None


class LiveBoard:
    """One line per shard: its state and elapsed time, against its estimate when it has one
    (``estimates``, seconds or None, in the order of ``labels``), and, while estimated
    shards are left, the run's ETA (:meth:`eta`). On a terminal the board is redrawn in
    place twice a second, every line cut to the terminal's width and, when the shards
    outnumber its lines, the running ones shown first and the rest counted on one line,
    so that the redraw never wraps or scrolls; otherwise one line is printed per change
    of state, so CI logs stay readable.
    A ``report`` given with a change (a failure's log tail) is shown at once: above the
    board on a terminal, after the change's line otherwise."""

    def __init__(
        self,
        console: Console,
        labels: Sequence[str],
        *,
        estimates: Optional[Sequence[Optional[float]]] = None,
        jobs: int = 1,
    ):
        self.console = console
        self.labels = list(labels)
        self.label_width = max((len(label) for label in labels), default=0)
        self.estimates: Dict[str, Optional[float]] = dict(zip(self.labels, estimates or ()))
        self.jobs = max(jobs, 1)
        estimated = any(value is not None for value in self.estimates.values())
        self.time_width = 2 * ELAPSED_WIDTH + 1 if estimated else ELAPSED_WIDTH
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

    def update(self, label: str, state: str, detail: str = "", report: str = "") -> None:
        """Shard ``label`` is now in ``state`` (Progress.RUNNING: it starts now;
        Progress.WAITING again: it waits for a lease, its time not counted)."""
        now = time.monotonic()
        with self._lock:
            self.states[label] = state
            self.details[label] = detail
            if state == Progress.RUNNING:
                self.started[label] = now
                self.ended.pop(label, None)
            elif state == Progress.WAITING:  # for a slot or a resource: not started yet
                self.started.pop(label, None)
                self.ended.pop(label, None)
            elif label in self.started:
                self.ended[label] = now
            if self.console.is_tty:
                if report:  # NOTE: above the board, which is drawn again below it
                    self._write(self._erase() + report + "\n")
                    self._drawn = 0
                    self._draw_locked(now)
                return
            line = self._lines([label], now)[0]
            self._write(line + "\n" + (report + "\n" if report else ""))

    def eta(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds until the run is likely done: the estimated work left (the rest of each
        running shard's estimate, the whole of each waiting one's) spread over the jobs,
        and never less than the largest part left; None without an estimate for each."""
        now = time.monotonic() if now is None else now
        left: List[float] = []
        for label in self.labels:
            state, estimate = self.states[label], self.estimates.get(label)
            if state not in (Progress.WAITING, Progress.RUNNING):
                continue
            if estimate is None:
                return None
            started = self.started.get(label, now) if state == Progress.RUNNING else now
            left.append(max(estimate - (now - started), 0.0))
        if not left:
            return None
        return max(sum(left) / min(self.jobs, len(left)), max(left))

    def _cells(self, label: str, now: float) -> List[str]:
        """Label, state, elapsed time (against the estimate) and detail of one shard."""
        state, started = self.states[label], self.started.get(label)
        elapsed = "" if started is None else format_seconds(self.ended.get(label, now) - started)
        estimate = self.estimates.get(label)
        if elapsed and estimate is not None:
            elapsed += "/" + format_seconds(estimate)
        return [label, str(state), elapsed, self.details[label]]

    def _lines(self, labels: Sequence[str], now: float, width: Optional[int] = None) -> List[str]:
        """The lines of ``labels``, cut to ``width`` columns, their states painted. Columns
        have fixed widths, so that they do not shift as states change, unless the lines
        would not fit: then each is as wide as what it holds now."""
        rows = [self._cells(label, now) for label in labels]
        widths = (self.label_width, STATE_WIDTH, self.time_width)
        lines = table(rows, right={2}, widths=widths, indent="")
        if width is not None and max(map(len, lines), default=0) > width:
            lines = table(rows, right={2}, widths=(self.label_width,), indent="")
        return [self._painted(line, row[1], width) for line, row in zip(lines, rows)]

    def _painted(self, whole: str, state: str, width: Optional[int]) -> str:
        """``whole`` cut to ``width``, its state (after the label) painted after the cut,
        so that colour codes take no columns."""
        line = whole if width is None else shorten(whole, width)
        begin = self.label_width + 2
        end = min(begin + len(state), len(line) - (3 if line != whole else 0))
        color = self.console.color_of(state)
        if not color or end <= begin:
            return line
        return line[:begin] + paint(line[begin:end], color) + line[end:]

    def _refresh(self) -> None:
        while not self._stop.wait(REDRAW_INTERVAL):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            self._draw_locked(time.monotonic())

    def _draw_locked(self, now: float) -> None:
        size = self.console.size() or os.terminal_size((80, 24))
        # NOTE: one column short of the width: a line as wide as the terminal leaves the
        # cursor past its edge, where terminals differ on what a newline does.
        width = max(size.columns - 1, 4)
        eta = self.eta(now)
        footer = [] if eta is None else [f"eta {format_seconds(eta)}"]
        # NOTE: the cursor goes back up only as far as the screen reaches: one line
        # is left for the cursor itself.
        shown, more = self._fitting(max(size.lines - 1 - len(footer), 1))
        lines = self._lines(shown, now, width)
        lines += [shorten(line, width) for line in more + footer]
        self._write(self._erase() + "".join(line + "\n" for line in lines))
        self._drawn = len(lines)

    def _fitting(self, room: int) -> Tuple[List[str], List[str]]:
        """The labels to show in ``room`` lines, in board order, running ones first to
        be picked; and a line counting the others by state when not all fit."""
        if len(self.labels) <= room:
            return self.labels, []
        running = [label for label in self.labels if self.states[label] == Progress.RUNNING]
        others = [label for label in self.labels if self.states[label] != Progress.RUNNING]
        picked = set((running + others)[: room - 1])
        hidden = Counter(str(self.states[label]) for label in self.labels if label not in picked)
        counts = ", ".join(f"{count} {state}" for state, count in hidden.items())
        more = f"{sum(hidden.values())} more: {counts}"
        return [label for label in self.labels if label in picked], [more]

    def _erase(self) -> str:
        """What takes the cursor back to the board's first line and erases the board."""
        return (_UP % self._drawn + _ERASE_BELOW) if self._drawn else ""

    def _write(self, text: str) -> None:
        self.console.stream.write(text)
        self.console.stream.flush()
