"""Run one shard under its lock, through the recorder, and report what happened.

``shard``, ``shard --id next`` and ``shard-all`` all come through
:func:`run_shard`, so a shard behaves the same whichever command ran it.
The records themselves are written by the recorder (``recorder.py``) inside
the lock; this layer decides what to ask the engine, then reads the record
back to learn the truth rather than trusting an exit code.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Collection, List, Optional, Sequence, Tuple

from .durations import durations_from_junit, merge_durations
from .engine import Engine, GuardResult, Identity, StopRequest
from .plan import JUNIT_PLACEHOLDER, Shard
from .results import Record, RecordStore, new_start_record

#: What a shard run came to, from the point of view of the agent that asked.
#: "passed", "failed" and "interrupted" mean the command ran; "held",
#: "frozen" and "error" mean it did not; "done" means another agent had
#: already passed it (queue mode); "lost" means the recorder died before it
#: could write the final record (the start record stays: verify says crashed).
RAN = ("passed", "failed", "interrupted")

#: The recorder script. It starts once per shard, so it runs isolated and
#: without site-packages (``-I -S``): it needs only the standard library.
RECORDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recorder.py")


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run that is the same for each of its shards."""

    cwd: Path
    store: RecordStore
    run_key: str
    engine: Engine
    identity: Identity
    ttl: float
    durations_file: Optional[Path] = None
    wait: bool = False
    timeout: Optional[float] = None


@dataclass(frozen=True)
class ShardOutcome:
    shard: Shard
    state: str
    guard: GuardResult
    record: Optional[Record] = None

    @property
    def ran(self) -> bool:
        return self.state in RAN

    @property
    def log(self) -> Optional[str]:
        return self.record.log if self.record else None


def run_shard(
    shard: Shard,
    settings: RunSettings,
    *,
    to_log: bool = False,
    skip: Collection[str] = (),
    stop: Optional[StopRequest] = None,
) -> ShardOutcome:
    """Run ``shard`` under its lock and return its outcome.

    ``to_log`` sends the command's output to the shard's log file instead of
    the terminal. ``skip`` lists record outcomes ("passed", "failed") that
    make the recorder run nothing, because the shard is already done under
    this plan: a check made *inside* the lock, so that two agents never both
    run it.
    """
    store = settings.store
    record_path = store.record_path(shard.task, settings.run_key, shard.index)
    log_path = store.log_path(shard.task, settings.run_key, shard.index) if to_log else None
    junit_path = store.junit_path(shard.task, settings.run_key, shard.index)
    start = _start_record(shard, settings, log_path)

    command = [arg.replace(JUNIT_PLACEHOLDER, str(junit_path)) for arg in shard.argv]
    argv = recorder_argv(record_path, start, command, skip)

    record_path.parent.mkdir(parents=True, exist_ok=True)
    report_before = _file_state(junit_path)
    guard = settings.engine.guard(
        shard.lock_name,
        argv,
        ttl=settings.ttl,
        wait=settings.wait,
        timeout=settings.timeout,
        log=log_path,
        cwd=settings.cwd,
        stop=stop,
    )
    if not guard.ran:
        return ShardOutcome(shard, guard.state, guard)

    record = store.read(shard.task, settings.run_key, shard.index)
    if not isinstance(record, Record) or record.attempt != start.attempt:
        state = "done" if skip and isinstance(record, Record) else "lost"
        return ShardOutcome(shard, state, guard, record if isinstance(record, Record) else None)
    if record.outcome == "running":
        return ShardOutcome(shard, "lost", guard, record)
    if shard.wants_junit and settings.durations_file is not None and _file_state(junit_path) not in (None, report_before):
        try:
            timings = durations_from_junit(junit_path, shard.items, root=settings.cwd)
        except ValueError:
            timings = {}  # an unreadable report costs us timings, not the shard's outcome
        merge_durations(settings.durations_file, timings)
    return ShardOutcome(shard, record.outcome, guard, record)


def recorder_argv(record_path: Path, start: Record, command: Sequence[str], skip: Collection[str] = ()) -> List[str]:
    """The command line that runs ``command`` through the recorder, which
    writes ``start`` (stamped with the real start time) and the final record
    to ``record_path``."""
    argv = [sys.executable or "python3", "-I", "-S", RECORDER, str(record_path), json.dumps(asdict(start))]
    if skip:
        argv += ["--skip", ",".join(skip)]
    return argv + ["--", *command]


def _file_state(path: Path) -> Optional[Tuple[int, int, int]]:
    """Inode, size and mtime of ``path``, or None if it does not exist.

    A JUnit report that is unchanged since before we asked for the lock was
    left by an earlier attempt and is not read as ours. It is not deleted
    before the lock is ours either: it may belong to the agent that holds
    the shard now and has not read it yet.
    """
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def _start_record(shard: Shard, settings: RunSettings, log_path: Optional[Path]) -> Record:
    return new_start_record(
        shard,
        run_key=settings.run_key,
        agent=settings.identity.agent,
        owner=settings.identity.owner,
        host=socket.gethostname(),
        pid=os.getpid(),
        engine=settings.engine.name,
        log=str(log_path) if log_path else None,
    )
