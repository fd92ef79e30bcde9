"""Run one shard under its lock, for ``shard``, ``--id next`` and
``shard-all`` alike, and learn what happened from its record, not an exit code.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Optional

from .attempt import Attempt, digest, escape_braces
from .config import DEFAULT_LEASE_PREFIX, ENGINES
from .durations import DurationsError, FoldSummary, ShardReport, TaskTimings, fold_reports
from .embedded import EmbeddedEngine
from .engine import Engine, GuardResult, Identity, StopRequest, find_lock_root
from .errors import EngineError, UsageError, storage_error
from .leases import Leases
from .lokt_engine import LoktEngine, find_lokt_binary
from .plan import JUNIT_PLACEHOLDER, Shard, rerun_lock_name
from .results import RECORD_LAG, Record, RecordStore, new_start_record, unstamped_json
from .states import RAN_OUTCOMES, STARTED_OUTCOMES, GuardState, RecordOutcome, RunOutcome
from .system import read_file


def select_engine(choice: str, identity: Identity, *, root: Optional[Path] = None) -> Engine:
    """The engine for choice "auto", "lokt" or "embedded" on one lock root
    (``auto``: lokt when found, by $LOKT_BIN or on PATH, else embedded)."""
    if choice not in ENGINES:
        raise UsageError(f"unknown engine {choice!r}: use one of " + ", ".join(ENGINES))
    lock_root = Path(root) if root is not None else find_lock_root(Path.cwd())
    binary = find_lokt_binary() if choice != "embedded" else None
    if binary is not None:
        return LoktEngine(identity, lock_root, binary)
    if choice == "lokt":
        raise EngineError(
            'engine "lokt" chosen but no lokt binary found (set LOKT_BIN or put lokt on PATH),'
            ' or use engine = "embedded"'
        )
    return EmbeddedEngine(identity, lock_root)


@dataclass(frozen=True)
class TimingsStore:
    """Where the shards of a run record their times: the task's store of
    times recorded here (``RecordStore.local_durations_path``), never the
    committed durations file, which only ``durations`` folds reports into.

    The store keeps items this plan does not have: every worktree of the
    repository shares it, and another branch may have other files (plans
    look up only their own items, so those cost nothing)."""

    path: Path
    task: str
    #: The committed file's times, where an item's first entry here starts from.
    seed: TaskTimings


@dataclass(frozen=True)
class RunSettings:
    """Everything about a run that is the same for each of its shards."""

    cwd: Path
    store: RecordStore
    run_key: str
    engine: Engine
    identity: Identity
    ttl: float
    timings: Optional[TimingsStore] = None
    wait: bool = False
    timeout: Optional[float] = None
    #: How long each shard's command may run, in seconds (None: no limit), and
    #: as written in shards.toml, for the record's message.
    shard_timeout: Optional[float] = None
    shard_timeout_text: str = ""
    #: The task's ``retries`` and ``flaky`` (see config.TaskConfig).
    retries: int = 0
    flaky: str = "pass"
    #: The machine's slot budget (``config.slot_budget``): None for none.
    slots: Optional[int] = None
    lease_prefix: str = DEFAULT_LEASE_PREFIX


@dataclass(frozen=True)
class ShardOutcome:
    shard: Shard
    state: RunOutcome
    guard: GuardResult
    record: Optional[Record] = None
    #: What recording the shard's times did (None: no report to read).
    timings: Optional[FoldSummary] = None

    @property
    def ran(self) -> bool:
        return self.state in RAN_OUTCOMES

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
    on_wait: Optional[Callable[[str], None]] = None,
) -> ShardOutcome:
    """Run ``shard`` under its lock; ``to_log``: output to its log file; ``skip``:
    the record outcomes that make nothing run, checked *inside* the lock. Its
    leases (a slot, resources: :func:`shard_leases`) are taken inside the lock
    too, waits told to ``on_wait`` (see ``engine.GuardRequest``)."""
    store = settings.store
    record_path = store.record_path(shard.task, settings.run_key, shard.index)
    log_path = store.log_path(shard.task, settings.run_key, shard.index) if to_log else None
    junit_path = store.junit_path(shard.task, settings.run_key, shard.index)
    start = new_start_record(
        shard,
        run_key=settings.run_key,
        agent=settings.identity.agent,
        owner=settings.identity.owner,
        host=socket.gethostname(),
        pid=os.getpid(),
        engine=settings.engine.name,
        log=str(log_path) if log_path else None,
        cwd=str(settings.cwd),
    )
    junit = str(junit_path)
    command = [
        arg.replace(JUNIT_PLACEHOLDER, escape_braces(junit) if at in shard.slot_args else junit)
        for at, arg in enumerate(shard.argv)
    ]
    env = None
    if shard.env:
        env = dict(os.environ)
        for name, value in shard.env:
            filled = escape_braces(junit) if name in shard.slot_env else junit
            env[name] = value.replace(JUNIT_PLACEHOLDER, filled)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    wants_report = shard.wants_junit
    attempt = Attempt(
        record_path,
        unstamped_json(start),
        command,
        log=start.log,
        skip=tuple(skip),
        timeout=settings.shard_timeout,
        timeout_text=settings.shard_timeout_text,
        report=junit_path if wants_report else None,
        retries=settings.retries if wants_report and shard.template else 0,
        template=shard.template,
        flaky=settings.flaky,
        leases=shard_leases(shard, settings),
    )

    def guard_shard(wait: bool) -> GuardResult:
        return settings.engine.guard(
            shard.lock_name,
            attempt,
            ttl=settings.ttl,
            wait=wait,
            timeout=settings.timeout,
            env=env,
            cwd=settings.cwd,
            stop=stop,
            on_wait=on_wait,
        )

    guard = guard_shard(settings.wait)
    for _ in range(RETRIES_WHEN_RELEASED):
        if guard.state != GuardState.HELD or guard.holder is not None or settings.wait:
            break
        guard = guard_shard(False)  # held, but free when its holder was looked for: again
    if guard.state == GuardState.HELD and not settings.wait and guard.holder is not None:
        holder = guard.holder
        patience = max(RECORD_LAG - holder.age_sec, 0.0)  # a lock taken a moment ago
        rerun = shard.lock_name == rerun_lock_name(shard.task, shard.index)
        newest = store.newest_for(
            shard.task, shard.index, holder.owner, patience=patience, rerun=rerun
        )
        if newest is not None and newest[0] != settings.run_key:
            # NOTE: every run of a task shares its lock names (as the docs
            # teach); runs do not fail each other, so wait for the other's
            # (running, or finished and about to release the lock).
            guard = guard_shard(True)
    if not guard.ran and guard.state != GuardState.SKIPPED:
        return ShardOutcome(shard, RunOutcome(guard.state), guard)

    record = store.read(shard.task, settings.run_key, shard.index)
    if not isinstance(record, Record) or record.attempt != start.attempt:
        state = RunOutcome.DONE if skip and isinstance(record, Record) else RunOutcome.LOST
        return ShardOutcome(shard, state, guard, record if isinstance(record, Record) else None)
    if record.outcome in STARTED_OUTCOMES:
        return ShardOutcome(shard, RunOutcome.LOST, guard, record)
    folded = None
    if shard.wants_junit and _is_reported(junit_path, record):
        folded = _record_times(shard, record, junit_path, settings)
    return ShardOutcome(shard, RunOutcome(record.outcome), guard, record, folded)


#: Tries again at a shard's lock found held, but free a moment later.
RETRIES_WHEN_RELEASED = 3


def shard_leases(shard: Shard, settings: RunSettings) -> Optional[Leases]:
    """What ``shard`` must hold besides its lock, or None: its resources, and a
    slot when there is a budget or its command says ``{slot}`` (then, without
    a budget, an unbounded one: see leases.py)."""
    wants_slot = settings.slots is not None or shard.uses_slot
    if not wants_slot and not shard.resources:
        return None
    return Leases(
        settings.engine.root,
        prefix=settings.lease_prefix,
        owner=settings.identity.owner,
        agent=settings.identity.agent,
        ttl=settings.ttl,
        slot=wants_slot,
        budget=settings.slots,
        resources=shard.resources,
        slot_args=shard.slot_args,
        slot_env=shard.slot_env,
    )


def _record_times(
    shard: Shard, record: Record, report: Path, settings: RunSettings
) -> Optional[FoldSummary]:
    """Fold the shard's report (its command's, never a retry's, which holds
    only the failing tests) into the run's store of times. A report or a
    store that cannot be used costs timings (a warning), never the shard."""
    target = settings.timings
    if target is None:
        return None
    complete = record.outcome == RecordOutcome.PASSED
    read = ShardReport(shard.lock_name, report, shard.items, complete, record.attempt)
    try:
        return fold_reports(
            target.path,
            target.task,
            [read],
            root=settings.cwd,
            items=None,
            seed=target.seed,
        )
    except (DurationsError, OSError) as error:
        problem = str(error) if isinstance(error, DurationsError) else str(storage_error(error))
        return FoldSummary(target.path, problems=[f"{problem}; the shard's times are not recorded"])


def _is_reported(report: Path, record: Record) -> bool:
    """Whether ``report`` is the one the command left in this attempt, as its
    record names it: once the lock is released, the next attempt at the shard
    may already have removed it, or written its own."""
    try:
        return bool(record.reports) and record.reports[0] == digest(read_file(report))
    except OSError:
        return False
