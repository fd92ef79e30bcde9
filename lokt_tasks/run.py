"""Run one shard under its lock, record it, and report what happened.

``shard``, ``shard --id next`` and ``shard-all`` all come through
:func:`run_shard`, so a shard behaves the same whichever command ran it.
Both records are written while the lock is held: by this process when the
engine holds the lock here (embedded, :class:`ShardRecords`), by the
recorder (``recorder.py``) that ``lokt guard`` runs around the command
otherwise. This layer then reads the record back to learn the truth rather
than trusting an exit code.
"""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Collection, List, Optional, Sequence, Tuple

from .durations import durations_from_junit, merge_durations
from .engine import Engine, GuardResult, Identity, InsideLock, StopRequest
from .plan import JUNIT_PLACEHOLDER, Shard
from .recorder import empty_log
from .results import (
    Record,
    RecordStore,
    finish,
    new_start_record,
    read_record,
    signal_name,
    unstamped_json,
    utc_now,
    write_record,
)

#: What a shard run came to, from the point of view of the agent that asked.
#: "passed", "failed" and "interrupted" mean the command ran; "held",
#: "frozen" and "error" (the engine failed, or a record could not be
#: written) mean it did not; "done" means another agent had already passed
#: it (queue mode); "lost" means lokt's recorder died before it could write
#: the final record (the start record stays: verify says crashed).
RAN = ("passed", "failed", "interrupted")

#: The recorder's source file.
RECORDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recorder.py")

#: How the recorder is started, once per shard: isolated and without
#: site-packages (``-I -S``), as it needs only the standard library; and
#: imported rather than run by path, so that Python uses its cached bytecode
#: instead of compiling it each time. The directory that holds lokt_tasks is
#: put last on sys.path, so it cannot hide a standard module.
RECORDER_BOOTSTRAP = (
    "import sys; sys.path.append(%r); from lokt_tasks.recorder import main; sys.exit(main(sys.argv[1:]))"
    % os.path.dirname(os.path.dirname(RECORDER))
)


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
    make nothing run, because the shard is already done under this plan: a
    check made *inside* the lock, so that two agents never both run it.
    """
    store = settings.store
    record_path = store.record_path(shard.task, settings.run_key, shard.index)
    log_path = store.log_path(shard.task, settings.run_key, shard.index) if to_log else None
    junit_path = store.junit_path(shard.task, settings.run_key, shard.index)
    start = _start_record(shard, settings, log_path)

    command = [arg.replace(JUNIT_PLACEHOLDER, str(junit_path)) for arg in shard.argv]
    record_path.parent.mkdir(parents=True, exist_ok=True)
    report_before = _file_state(junit_path)
    engine = settings.engine
    options = dict(ttl=settings.ttl, wait=settings.wait, timeout=settings.timeout, log=log_path, cwd=settings.cwd, stop=stop)
    if engine.holds_lock_in_process:
        records = ShardRecords(record_path, start, skip)
        guard = engine.guard(shard.lock_name, command, inside=InsideLock(records.begin, records.end), **options)
        if records.error:
            return ShardOutcome(shard, "error", GuardResult("error", message=records.error))
        if guard.state == "skipped":
            return ShardOutcome(shard, "done", guard, records.existing)
    else:
        argv = recorder_argv(record_path, start, command, skip, merge_stderr=to_log)
        guard = engine.guard(shard.lock_name, argv, started=lambda: _has_started(record_path, start), **options)
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


class ShardRecords:
    """A shard's start and final records, written by this process, for an
    engine that holds the lock here (``InsideLock``): what the recorder
    script does inside ``lokt guard``, with the same records."""

    def __init__(self, path: Path, start: Record, skip: Collection[str]) -> None:
        self.path = path
        self.start = start
        self.skip = skip
        #: The record that made ``begin`` run nothing.
        self.existing: Optional[Record] = None
        #: Why a record could not be written (the shard is then an error).
        self.error = ""

    def begin(self) -> bool:
        """Write the start record, now that the lock is ours; False when the
        shard is already done (one of the ``skip`` outcomes) under this plan."""
        if self.skip:
            existing = read_record(self.path)
            if isinstance(existing, Record) and _already_done(existing, self.start, self.skip):
                self.existing = existing
                return False
        if self.start.log:
            empty_log(self.start.log)
        self.start = replace(self.start, started_at=utc_now())
        return self._write(self.start)

    def end(self, result: GuardResult) -> None:
        """Write the final record: the command ended, or a stop came first."""
        signal = signal_name(result.signal) if result.signal else None
        if result.interrupted:
            outcome, message = "interrupted", f"stopped by {signal_name(result.interrupted)}"
        else:
            outcome, message = ("passed" if result.exit_code == 0 else "failed"), ""
        self._write(finish(self.start, outcome=outcome, exit_code=result.exit_code, signal=signal, message=message))

    def _write(self, record: Record) -> bool:
        try:
            write_record(self.path, record)
        except OSError as error:
            self.error = f"cannot write {self.path}: {error.strerror or error}"
            return False
        return True


def _already_done(existing: Record, start: Record, skip: Collection[str]) -> bool:
    """Done under this plan by another attempt, as the recorder's ``already_done``."""
    return (
        existing.outcome in skip
        and existing.version == start.version
        and existing.fingerprint == start.fingerprint
        and existing.attempt != start.attempt
    )


def recorder_argv(
    record_path: Path,
    start: Record,
    command: Sequence[str],
    skip: Collection[str] = (),
    *,
    merge_stderr: bool = False,
) -> List[str]:
    """The command line that runs ``command`` through the recorder, which
    writes ``start`` (stamped with the real start time) and the final record
    to ``record_path``. ``merge_stderr`` sends the command's stderr to its
    stdout."""
    argv = [sys.executable or "python3", "-I", "-S", "-c", RECORDER_BOOTSTRAP, str(record_path), unstamped_json(start)]
    argv += ["--agent", str(start.pid)]
    if start.log:
        argv += ["--log", start.log]
    if skip:
        argv += ["--skip", ",".join(skip)]
    if merge_stderr:
        argv.append("--merge-stderr")
    return argv + ["--", *command]


def _has_started(record_path: Path, start: Record) -> bool:
    """Whether the recorder has written a record of this attempt (start or final)."""
    record = read_record(record_path)
    return isinstance(record, Record) and record.attempt == start.attempt


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
