"""The recorder: the process that runs *inside* the lock, around the command.

``python -m lokt_tasks.recorder RECORD_FILE START_JSON [--skip OUTCOMES] -- CMD...``

Whatever engine holds the lock (``lokt guard`` or the embedded one), it runs
this process, not the shard command itself. Because the recorder lives inside
the guard, both records are written while the lock is held:

- the start record proves the command really started, so an exit code of 2
  from ``lokt guard`` ("held") can never be mistaken for the command's own 2;
- the final record exists before the lock is released, so an agent that
  claims the shard next (queue mode) always sees that it is already done.

It forwards SIGINT and SIGTERM to the command and records the shard as
interrupted. It exits with the command's exit code, or 128 + N when the
command died of signal N, as a shell would.

The command lives only as long as the agent that asked for it (the ``pid``
of the start record). The recorder runs in a session of its own, so killing
the agent or its process group (a CI timeout, a closed terminal) does not
reach it. With the embedded engine the agent *is* the lock holder: once it is
dead any agent may take the lock, and a command still running would run
twice. With lokt, a ``lokt guard --wait`` left behind by a killed agent would
run the shard long after nobody waits for it. So when the agent is gone the
recorder runs nothing, or stops the command it runs (SIGTERM, then SIGKILL
after a grace period), and writes no final record: the start record stays,
and ``verify`` calls the shard crashed, as it is.

Keep this module light: it starts once per shard, and its import time is
part of every shard's overhead.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from .lockfile import is_zombie, pid_alive, process_start_time
from .results import Record, read_record, signal_name, utc_now, write_record

#: Exit code of the recorder when the shard was already done and nothing ran.
ALREADY_DONE = 0
#: Exit code of the recorder when its agent had died (nobody reads it).
AGENT_GONE = 125
#: How often the recorder checks that its agent still lives.
WATCH_INTERVAL = 0.1
#: After the agent died: how long the command gets between SIGTERM and SIGKILL.
ORPHAN_GRACE = 10.0

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        separator = args.index("--")
    except ValueError:
        print("usage: python -m lokt_tasks.recorder RECORD START_JSON [--skip OUTCOMES] -- CMD...", file=sys.stderr)
        return 64
    options, command = args[:separator], args[separator + 1 :]
    if len(options) < 2 or not command:
        print("recorder: need RECORD, START_JSON and a command", file=sys.stderr)
        return 64
    record_path = Path(options[0])
    start = Record(**json.loads(options[1]))
    skip = options[3].split(",") if options[2:3] == ["--skip"] and len(options) > 3 else []
    agent = AgentWatch(start.pid)
    if agent.gone():
        return AGENT_GONE
    if skip and _already_done(record_path, start, skip):
        return ALREADY_DONE
    return run_and_record(record_path, start, command, agent)


class AgentWatch:
    """Tells whether the agent that started this run has died.

    Its pid must still be alive, not a zombie, and not reused (same start
    time). When the agent is our parent (the embedded engine), a change of
    parent says so too: that works where zombies cannot be told (macOS).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.is_parent = os.getppid() == pid
        self.start_time = process_start_time(pid)

    def gone(self) -> bool:
        if self.is_parent and os.getppid() != self.pid:
            return True
        if not pid_alive(self.pid) or is_zombie(self.pid):
            return True
        return self.start_time is not None and process_start_time(self.pid) != self.start_time


def _empty_log(path: str) -> None:
    """Start the shard's log afresh, now that this attempt holds the lock.

    Not earlier: an agent refused the lock must not wipe the log of the
    agent that holds it. The engine opened the log for appending, so our
    output and the command's continue at the new end of the file.
    """
    try:
        os.truncate(path, 0)
    except OSError:
        pass


def _already_done(record_path: Path, start: Record, skip: List[str]) -> bool:
    """True when this shard already has one of the ``skip`` outcomes under this plan."""
    existing = read_record(record_path)
    return (
        isinstance(existing, Record)
        and existing.fingerprint == start.fingerprint
        and existing.outcome in skip
        and existing.attempt != start.attempt
    )


def run_and_record(record_path: Path, start: Record, command: List[str], agent: Optional[AgentWatch] = None) -> int:
    received: List[int] = []

    def forward(signum, _frame):
        received.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    child = None
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        began = time.monotonic()
        start.started_at = utc_now()  # after any wait for the lock
        if start.log:
            _empty_log(start.log)
        write_record(record_path, start)
        try:
            child = subprocess.Popen(command)
        except OSError as error:
            returncode = 127 if isinstance(error, FileNotFoundError) else 126
            print(f"lokt-tasks: cannot run {command[0]!r}: {error.strerror}", file=sys.stderr, flush=True)
        else:
            if received:  # a signal came between the start record and the child
                child.send_signal(received[0])
            returncode = _wait(child, agent)
            if returncode is None:
                return AGENT_GONE
        final = _finish(start, returncode, received, time.monotonic() - began)
        write_record(record_path, final)
    finally:
        for sig, handler in previous.items():  # once stopped, more signals must not cut our exit short
            signal.signal(sig, signal.SIG_IGN if received else handler)
    return 128 - returncode if returncode < 0 else returncode


def _wait(child: subprocess.Popen, agent: Optional[AgentWatch]) -> Optional[int]:
    """The command's return code; None if the agent died and the command was stopped."""
    while True:
        try:
            return child.wait(timeout=WATCH_INTERVAL if agent is not None else None)
        except subprocess.TimeoutExpired:
            pass
        if agent is not None and agent.gone():
            _stop_orphaned(child)
            return None


def _stop_orphaned(child: subprocess.Popen) -> None:
    """End the command of a dead agent: SIGTERM, SIGKILL after the grace period.

    With the embedded engine the recorder leads its own process group, which
    holds the command's children too: they are killed with it (and so is the
    recorder, which has nothing left to write).
    """
    child.terminate()
    try:
        child.wait(timeout=ORPHAN_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)


def _finish(start: Record, returncode: int, received: List[int], duration: float) -> Record:
    final = Record(**vars(start))
    final.ended_at = utc_now()
    final.duration = round(duration, 3)
    if returncode < 0:
        final.signal = signal_name(-returncode)
        final.exit_code = None
    else:
        final.exit_code = returncode
    if received:
        final.outcome = "interrupted"
        final.message = f"stopped by {signal_name(received[0])}"
    elif returncode == 0:
        final.outcome = "passed"
    else:
        final.outcome = "failed"
    return final


if __name__ == "__main__":
    sys.exit(main())
