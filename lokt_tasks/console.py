"""What people see: colours, messages, and the live one-line-per-shard view.

Colour is on only when the stream is a terminal and NO_COLOR is unset
(https://no-color.org). Without a terminal, progress is plain lines, one per
state change, so CI logs stay readable.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Dict, Optional, Sequence, TextIO

from colorama import Fore, Style

STATE_COLORS = {
    "passed": Fore.GREEN,
    "failed": Fore.RED,
    "crashed": Fore.RED,
    "corrupt": Fore.RED,
    "error": Fore.RED,
    "lost": Fore.RED,
    "running": Fore.CYAN,
    "waiting": Style.DIM,
    "held": Fore.YELLOW,
    "frozen": Fore.YELLOW,
    "interrupted": Fore.YELLOW,
    "missing": Fore.YELLOW,
    "outdated": Fore.YELLOW,
    "done": Fore.GREEN,
}


def wants_color(stream: TextIO, env=os.environ) -> bool:
    if "NO_COLOR" in env and env["NO_COLOR"] != "":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Console:
    """Human output on one stream (stdout); errors go to stderr via invoke.Exit."""

    def __init__(self, stream: Optional[TextIO] = None, color: Optional[bool] = None):
        self.stream = stream or sys.stdout
        self.color = wants_color(self.stream) if color is None else color
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def paint(self, text: str, state: str) -> str:
        if not self.color or state not in STATE_COLORS:
            return text
        return f"{STATE_COLORS[state]}{text}{Style.RESET_ALL}"

    def dim(self, text: str) -> str:
        return f"{Style.DIM}{text}{Style.RESET_ALL}" if self.color else text

    def say(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A side remark (which engine, which run key), dimmed on a terminal."""
        self.say(self.dim(f"lokt-tasks: {text}"))


class LiveBoard:
    """One line per shard with its state and elapsed time.

    On a terminal the lines are redrawn in place twice a second; otherwise
    each change of state is printed once as a plain line.
    """

    REFRESH_SECONDS = 0.5

    def __init__(self, console: Console, labels: Sequence[str]):
        self.console = console
        self.labels = list(labels)
        self.states: Dict[str, str] = {label: "waiting" for label in labels}
        self.started: Dict[str, float] = {}
        self.ended: Dict[str, float] = {}
        self.details: Dict[str, str] = {}
        self._lock = threading.Lock()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "LiveBoard":
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
            if state == "running":
                self.started[label] = now
                self.ended.pop(label, None)
            elif label in self.started:
                self.ended[label] = now
            line = self._line(label, now)
        if not self.console.is_tty:
            self.console.say(line)

    def _elapsed(self, label: str, now: float) -> str:
        if label not in self.started:
            return ""
        seconds = self.ended.get(label, now) - self.started[label]
        return f"{seconds:6.1f}s"

    def _line(self, label: str, now: float) -> str:
        state = self.states[label]
        detail = self.details.get(label, "")
        text = f"{label:<{self._width()}}  {self.console.paint(f'{state:<11}', state)} {self._elapsed(label, now):>7}"
        return f"{text}  {detail}".rstrip()

    def _width(self) -> int:
        return max((len(label) for label in self.labels), default=0)

    def _refresh(self) -> None:
        while not self._stop.wait(self.REFRESH_SECONDS):
            self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        with self._lock:
            lines = [self._line(label, now) for label in self.labels]
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.console.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.console.stream.flush()
            self._drawn = len(lines)
