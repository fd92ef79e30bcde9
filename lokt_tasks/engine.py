"""The lock engine: run one command under a lokt lock.

Two engines speak the same on-disk protocol, so agents using either exclude
each other: ``lokt`` drives the real binary (``lokt guard``), ``embedded``
implements the protocol in Python for machines without lokt.

IMPLEMENTATION PENDING (engine helper): see the contract below.
"""
from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as read from its lock file."""

    name: str
    owner: str
    agent_id: str
    host: str
    pid: int
    age_sec: float
    #: "alive", "dead" or "unknown" (another host, or no way to tell).
    pid_status: str
    expired: bool = False


@dataclass(frozen=True)
class GuardResult:
    """What happened when we asked to run a command under a lock.

    ``state`` is one of:
    - "ran": the command started; ``exit_code`` or ``signal`` tells how it ended.
    - "held": another agent holds the lock; ``holder`` says who. Nothing ran.
    - "frozen": the lock name is frozen; nothing ran.
    - "error": the engine failed before the command started; ``message`` says why.
    ``interrupted`` is the signal number (SIGINT/SIGTERM) we received and
    forwarded to the command while it ran, or None.
    """

    state: str
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    holder: Optional[Holder] = None
    message: str = ""
    interrupted: Optional[int] = None

    @property
    def ran(self) -> bool:
        return self.state == "ran"


class StopRequest:
    """A stop asked for from outside (Ctrl-C, SIGTERM), shared with workers.

    The main thread records the signal; every guard polls it and forwards the
    signal to its command, then releases its lock.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: Optional[int] = None

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)
