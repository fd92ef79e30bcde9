"""The watchdog: holds an embedded agent's locks, and stops its commands if it dies.

``system.bootstrap("watchdog") + [GRACE]``, started once by an embedded
engine, in a session of its own, with a pipe as its stdin. The engine writes
one line per command it starts and one per command it has reaped::

    +PGID START_TIME     watch this process group (START_TIME: "-" if unknown)
    -PGID                forget it

The embedded engine holds its locks in the agent's process, but names the
watchdog as their holder (its pid in the lock file). If the agent is killed
(kill -9, a CI timeout, the OOM killer), its commands would run on, no longer
watched: they run in sessions of their own (a Ctrl-C at the terminal reaches
only the agent). The watchdog notices the agent's death as the end of its
stdin (the agent holds the only write end of the pipe, and the kernel closes
it however the agent ends), sends SIGTERM to every group still watched,
SIGKILL to what is left after GRACE seconds, and exits once none is left.
Only then is the holder of the agent's locks dead, so another agent never
runs a shard while something of its last attempt still runs.

After an agent's normal exit nothing is watched, and it just exits. A group
whose leader's pid now belongs to another process (a different start time)
is left alone. It ignores SIGINT, SIGTERM and SIGHUP: a signal sent to every
process of a run ends the agent, and the watchdog must outlive it to do its
work. It starts once per agent, not once per shard, and like the attempt
process imports only the standard library, through ``system``.
"""

from __future__ import annotations

import sys

from . import system


def main(argv: list) -> int:
    grace = float(argv[0]) if argv else 10.0
    # NOTE: it ends with its agent, not before: a signal sent to every
    # process of a run ends the agent, and the watchdog must outlive it.
    system.on_signals((*system.STOP_SIGNALS, system.SIGHUP))
    watched = {}
    for line in sys.stdin:
        word = line.split()
        if len(word) == 2 and word[0].startswith("+"):
            watched[int(word[0][1:])] = None if word[1] == "-" else int(word[1])
        elif len(word) == 1 and word[0].startswith("-"):
            watched.pop(int(word[0][1:]), None)
    # NOTE: the agent's locks name this process as their holder, so they
    # stay taken until every group is gone: only then may another agent run
    # the same shards.
    groups = [group for group, start in watched.items() if not reused(group, start)]
    system.stop_groups(groups, grace)
    return 0


def reused(pid: int, start_time: int | None) -> bool:
    """True when ``pid`` now belongs to a process that started after ours did."""
    if start_time is None:
        return False
    now = system.process_start_time(pid)
    return now is not None and now != start_time
