"""The watchdog: holds an embedded agent's locks, and stops its commands if it dies.

Started once per embedded engine, in a session of its own, it reads a pipe
from the agent, one line per command started and one per command reaped::

    +PGID START_TIME LOCK   watch this process group (START_TIME: "-" if
                            unknown), run under the lock file LOCK
    -PGID                   forget it

The pipe closes however the agent ends: then it stops every group still
watched (SIGKILL after GRACE seconds) and exits, freeing the agent's locks.
Meanwhile it looks at each group's lock file every LOCK_CHECK seconds: a
lock no longer held by the watchdog was taken over (the agent was stopped
past the TTL, say, and ``lokt guard --wait`` broke the lock), so the group is
killed at once, as another agent may run the shard already, even while the
agent itself cannot act.
"""

from __future__ import annotations

import os
import select

from . import system
from .attempt import names_holder

#: Seconds between two looks at the lock files of the watched groups.
LOCK_CHECK = 0.5


def main(argv: list) -> int:
    grace = float(argv[0]) if argv else 10.0
    # NOTE: a signal sent to every process of a run ends the agent; the
    # watchdog must outlive it to do its work.
    system.on_signals((*system.STOP_SIGNALS, system.SIGHUP))
    watched: dict = {}  # group -> (start time or None, lock file or None)
    pending = b""
    while True:
        if select.select([0], [], [], LOCK_CHECK)[0]:
            chunk = os.read(0, 65536)
            if not chunk:
                break  # the agent is gone
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                _note(watched, line.decode("utf-8", "surrogateescape"))
        for group, (start, lock) in list(watched.items()):
            if lock is not None and not names_holder(lock, os.getpid()):
                del watched[group]
                if not reused(group, start):
                    system.stop_groups([group], 0.0)
    groups = [group for group, (start, _) in watched.items() if not reused(group, start)]
    system.stop_groups(groups, grace)
    return 0


def _note(watched: dict, line: str) -> None:
    word = line.split(" ", 2)
    if len(word) >= 2 and word[0].startswith("+"):
        start = None if word[1] == "-" else int(word[1])
        watched[int(word[0][1:])] = (start, word[2] if len(word) == 3 else None)
    elif len(word) == 1 and word[0].startswith("-"):
        watched.pop(int(word[0][1:]), None)


def reused(pid: int, start_time: int | None) -> bool:
    """True when ``pid`` now belongs to a process that started after ours did."""
    return start_time is not None and system.process_start_time(pid) not in (None, start_time)
