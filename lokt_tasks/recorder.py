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

from .results import Record, read_record, signal_name, utc_now, write_record

#: Exit code of the recorder when the shard was already done and nothing ran.
ALREADY_DONE = 0

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
    if skip and _already_done(record_path, start, skip):
        return ALREADY_DONE
    return run_and_record(record_path, start, command)


def _already_done(record_path: Path, start: Record, skip: List[str]) -> bool:
    """True when this shard already has one of the ``skip`` outcomes under this plan."""
    existing = read_record(record_path)
    return (
        isinstance(existing, Record)
        and existing.fingerprint == start.fingerprint
        and existing.outcome in skip
        and existing.attempt != start.attempt
    )


def run_and_record(record_path: Path, start: Record, command: List[str]) -> int:
    received: List[int] = []

    def forward(signum, _frame):
        received.append(signum)
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    child = None
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        began = time.monotonic()
        write_record(record_path, start)
        try:
            child = subprocess.Popen(command)
        except OSError as error:
            returncode = 127 if isinstance(error, FileNotFoundError) else 126
            print(f"lokt-tasks: cannot run {command[0]!r}: {error.strerror}", file=sys.stderr, flush=True)
        else:
            if received:  # a signal came between the start record and the child
                child.send_signal(received[0])
            returncode = _wait(child)
        final = _finish(start, returncode, received, time.monotonic() - began)
        write_record(record_path, final)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - returncode if returncode < 0 else returncode


def _wait(child: subprocess.Popen) -> int:
    while True:
        try:
            return child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue


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
