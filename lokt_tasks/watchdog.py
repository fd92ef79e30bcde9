"""The watchdog: holds an embedded agent's locks, and stops its commands if it dies.

Started once per embedded engine, in a session of its own, it reads a pipe
from the agent, one line per command started and one per command reaped::

    +PGID START_TIME     watch this process group (START_TIME: "-" if unknown)
    -PGID                forget it

The pipe closes however the agent ends: then it stops every group still
watched (SIGKILL after GRACE seconds) and exits, freeing the agent's locks.
"""

from __future__ import annotations

import sys

from . import system


def main(argv: list) -> int:
    grace = float(argv[0]) if argv else 10.0
    # NOTE: a signal sent to every process of a run ends the agent; the
    # watchdog must outlive it to do its work.
    system.on_signals((*system.STOP_SIGNALS, system.SIGHUP))
    watched = {}
    for line in sys.stdin:
        word = line.split()
        if len(word) == 2 and word[0].startswith("+"):
            watched[int(word[0][1:])] = None if word[1] == "-" else int(word[1])
        elif len(word) == 1 and word[0].startswith("-"):
            watched.pop(int(word[0][1:]), None)
    groups = [group for group, start in watched.items() if not reused(group, start)]
    system.stop_groups(groups, grace)
    return 0


def reused(pid: int, start_time: int | None) -> bool:
    """True when ``pid`` now belongs to a process that started after ours did."""
    return start_time is not None and system.process_start_time(pid) not in (None, start_time)
