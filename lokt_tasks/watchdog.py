"""The watchdog: stops the embedded engine's commands if their agent dies.

``python -I -S .../lokt_tasks/watchdog.py GRACE``, started once by an
embedded engine, in a session of its own, with a pipe as its stdin. The
engine writes one line per command it starts and one per command it has
reaped::

    +PGID START_TIME     watch this process group (START_TIME: "-" if unknown)
    -PGID                forget it

The embedded engine holds its locks in the agent's own process. If the agent
is killed (kill -9, a CI timeout, the OOM killer), its locks go with it: any
agent may take them once the holder is found dead. A command still running
would then run beside the rerun of its shard. The engine runs its commands in
sessions of their own (a Ctrl-C at the terminal reaches only the agent), so
nothing else stops them.

The watchdog notices the agent's death as the end of its stdin: the agent
holds the only write end of the pipe, and the kernel closes it however the
agent ends. It then sends SIGTERM to every group still watched, waits up to
GRACE seconds for them to end, and kills what is left. After an agent's
normal exit nothing is watched, and it just exits. A group whose leader's pid
now belongs to another process (a different start time) is left alone. It
ignores SIGINT, SIGTERM and SIGHUP: a signal sent to every process of a run
ends the agent, and the watchdog must outlive it to do its work.

It starts once per agent, not once per shard, and stands alone for the same
reason as the recorder: a plain script, isolated and without site-packages,
that imports only the standard library.
"""
import os
import signal
import sys
import time

#: How often the watchdog looks whether the stopped groups are gone.
POLL_INTERVAL = 0.05


def main(argv):
    grace = float(argv[0]) if argv else 10.0
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # it ends with its agent, not before
    watched = {}
    for line in sys.stdin:
        word = line.split()
        if len(word) == 2 and word[0].startswith("+"):
            watched[int(word[0][1:])] = None if word[1] == "-" else int(word[1])
        elif len(word) == 1 and word[0].startswith("-"):
            watched.pop(int(word[0][1:]), None)
    groups = [group for group, start in watched.items() if not reused(group, start)]
    stop_groups(groups, grace)
    return 0


def stop_groups(groups, grace):
    """SIGTERM every group, then SIGKILL the ones still there after ``grace``."""
    for group in groups:
        send(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while groups and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        groups = [group for group in groups if send(group, 0)]
    for group in groups:
        send(group, signal.SIGKILL)


def send(group, signum):
    """Signal a process group; False once it has no process left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reused(pid, start_time):
    """True when ``pid`` now belongs to a process that started after ours did."""
    if start_time is None:
        return False
    now = process_start_time(pid)
    return now is not None and now != start_time


def process_start_time(pid):
    """The start time of ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
