"""Who runs what on this machine now: every shard whose lock a live agent
holds, with its record (run, agent, worktree, slot, resources, times), and
the slot and resource leases (leases.py), from the lock files of one lock
root and the records of one results directory. It reads; it changes nothing.

A shard's lock is ``<task>-shard-<N>``; its record is the newest its holder
started and has not finished (``RecordStore.running_for``). Times, in
seconds: ``age`` since its attempt began (it holds the lock; waiting for its
leases counts), ``elapsed`` since its command started, ``estimate`` the
plan's (with timings). ``status_to_json`` gives the document README.md shows
(version 1), every key always present.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

from .leases import parse_lease_lock, slot_lock
from .results import Record, RecordStore, parse_time
from .states import COLORS, STARTED_OUTCOMES, RecordOutcome, ShardState
from .text import Cell, format_seconds, table
from .verdict import holder_is_live

if TYPE_CHECKING:
    from .engine import Holder

JSON_VERSION = 1
_SHARD_LOCK = re.compile(r"(.+)-(shard|rerun)-([1-9][0-9]*)\Z")


@dataclass(frozen=True)
class RunningShard:
    """A shard whose lock a live agent holds: running, or waiting for a lease."""

    task: str
    shard: int
    lock: str
    state: ShardState  #: RUNNING or WAITING
    agent: str
    host: str
    pid: int  #: the lock holder's
    total: Optional[int] = None
    run_key: Optional[str] = None  #: None when no record of the holder's is found
    worktree: Optional[str] = None
    slot: Optional[int] = None
    resources: Tuple[str, ...] = ()
    age: Optional[float] = None
    elapsed: Optional[float] = None
    estimate: Optional[float] = None
    detail: str = ""  #: what a waiting shard waits for
    log: Optional[str] = None
    owner: str = ""


@dataclass(frozen=True)
class Lease:
    """A slot or resource lock a live holder has, and the shard it is for (when known)."""

    lock: str
    kind: str  #: "slot" or "resource"
    agent: str
    host: str
    pid: int
    slot: Optional[int] = None
    resource: Optional[str] = None
    task: Optional[str] = None
    shard: Optional[int] = None
    run_key: Optional[str] = None


@dataclass(frozen=True)
class Status:
    lock_root: str
    results: str
    lease_prefix: str
    budget: Optional[int]  #: the slot budget in effect for the caller, None for none
    shards: Tuple[RunningShard, ...]
    leases: Tuple[Lease, ...]

    @property
    def slots_in_use(self) -> List[int]:
        return sorted(lease.slot for lease in self.leases if lease.slot is not None)

    @property
    def free_slots(self) -> Optional[List[int]]:
        """The slot numbers free now, up to the budget; None without a budget."""
        if self.budget is None:
            return None
        taken = set(self.slots_in_use)
        return [number for number in range(1, self.budget + 1) if number not in taken]

    @property
    def waiting(self) -> int:
        return sum(shard.state == ShardState.WAITING for shard in self.shards)


def gather(
    holders: Sequence[Holder],
    store: RecordStore,
    *,
    lock_root: str,
    lease_prefix: str,
    budget: Optional[int],
    now: Optional[datetime.datetime] = None,
) -> Status:
    """The status from every lock of a root (``Engine.held_locks``): the shard
    locks and leases whose holder is live, each shard with its holder's record."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    live = [holder for holder in holders if holder_is_live(holder)]
    shards = []
    for holder in live:
        match = _SHARD_LOCK.fullmatch(holder.name)
        if match and parse_lease_lock(lease_prefix, holder.name) is None:
            task, kind, index = match.group(1), match.group(2), int(match.group(3))
            shards.append(_running(holder, task, index, store, now, rerun=kind == "rerun"))
    shards.sort(key=lambda shard: (shard.task, shard.shard, shard.run_key or ""))
    leases = []
    for holder in live:
        kind = parse_lease_lock(lease_prefix, holder.name)
        if kind is not None:
            leases.append(_lease(holder, kind, shards))
    leases.sort(key=lambda lease: (lease.kind, lease.slot or 0, lease.resource or ""))
    return Status(lock_root, str(store.root), lease_prefix, budget, tuple(shards), tuple(leases))


def _running(
    holder: Holder,
    task: str,
    index: int,
    store: RecordStore,
    now: datetime.datetime,
    *,
    rerun: bool = False,
) -> RunningShard:
    shard = RunningShard(
        task, index, holder.name, ShardState.RUNNING, holder.agent_id, holder.host, holder.pid
    )
    try:
        run_key = store.running_for(task, index, holder.owner, rerun=rerun)
    except (OSError, ValueError):  # a results directory we cannot read: locks only
        run_key = None
    record = store.read(task, run_key, index) if run_key is not None else None
    if not isinstance(record, Record) or record.outcome not in STARTED_OUTCOMES:
        return shard
    try:
        since = max((now - parse_time(record.started_at)).total_seconds(), 0.0)
    except ValueError:
        since = None
    waiting = record.outcome == RecordOutcome.WAITING
    elapsed = None if waiting else since
    age = since if waiting or since is None else since + (record.waited or 0.0)
    return RunningShard(
        task,
        index,
        holder.name,
        ShardState.WAITING if waiting else ShardState.RUNNING,
        record.agent,
        record.host,
        holder.pid,
        total=record.total,
        run_key=run_key,
        worktree=record.cwd,
        slot=record.slot,
        resources=tuple(record.resources),
        age=age,
        elapsed=elapsed,
        estimate=record.estimate,
        detail=record.message if waiting else "",
        log=record.log,
        owner=record.owner,
    )


def _lease(
    holder: Holder, kind: Tuple[str, Union[int, str]], shards: Sequence[RunningShard]
) -> Lease:
    what, value = kind
    slot = value if what == "slot" and isinstance(value, int) else None
    resource = value if what == "resource" and isinstance(value, str) else None
    mine = [shard for shard in shards if shard.owner == holder.owner]
    if slot is not None:
        mine = [shard for shard in mine if shard.slot == slot]
    else:
        mine = [shard for shard in mine if resource in shard.resources]
        running = [shard for shard in mine if shard.state == ShardState.RUNNING]
        mine = running or mine  # a waiting one may hold it while it waits for the next
    found = mine[0] if len(mine) == 1 else None
    return Lease(
        holder.name,
        what,
        holder.agent_id,
        holder.host,
        holder.pid,
        slot=slot,
        resource=resource,
        task=found.task if found else None,
        shard=found.shard if found else None,
        run_key=found.run_key if found else None,
    )


def status_to_json(status: Status) -> Dict[str, object]:
    """The status as a JSON-ready dict (see README.md: ``status --json``)."""
    return {
        "version": JSON_VERSION,
        "lock_root": status.lock_root,
        "results": status.results,
        "lease_prefix": status.lease_prefix,
        "slots": {
            "budget": status.budget,
            "in_use": status.slots_in_use,
            "free": status.free_slots,
        },
        "shards": [
            {
                "task": shard.task,
                "shard": shard.shard,
                "total": shard.total,
                "lock": shard.lock,
                "state": shard.state,
                "run_key": shard.run_key,
                "agent": shard.agent,
                "host": shard.host,
                "pid": shard.pid,
                "worktree": shard.worktree,
                "slot": shard.slot,
                "resources": list(shard.resources),
                "age": _rounded(shard.age),
                "elapsed": _rounded(shard.elapsed),
                "estimate": _rounded(shard.estimate),
                "detail": shard.detail,
                "log": shard.log,
            }
            for shard in status.shards
        ],
        "leases": [
            {
                "lock": lease.lock,
                "kind": lease.kind,
                "slot": lease.slot,
                "resource": lease.resource,
                "agent": lease.agent,
                "host": lease.host,
                "pid": lease.pid,
                "task": lease.task,
                "shard": lease.shard,
                "run_key": lease.run_key,
            }
            for lease in status.leases
        ],
    }


def _rounded(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds, 3)


def render_status(status: Status, *, color: bool) -> str:
    """The status as aligned text: a summary line, one row per shard, one per lease."""
    lines = [f"lock root {status.lock_root}; {_slots_line(status)}"]
    if not status.shards:
        lines.append("no shard is running")
    else:
        header: List[Union[str, Cell]] = ["task", "shard", "run", "state", "agent", "worktree"]
        header += ["slot", "resources", "age", "elapsed", "estimate", "detail"]
        rows: List[List[Union[str, Cell]]] = [header]
        for shard in status.shards:
            number = f"{shard.shard}/{shard.total}" if shard.total else str(shard.shard)
            state = Cell(str(shard.state), COLORS.get(shard.state, "") if color else "")
            rows.append(
                [
                    shard.task,
                    number,
                    shard.run_key or "?",
                    state,
                    shard.agent or "?",
                    shard.worktree or "?",
                    "-" if shard.slot is None else str(shard.slot),
                    ",".join(shard.resources) or "-",
                    format_seconds(shard.age),
                    format_seconds(shard.elapsed),
                    format_seconds(shard.estimate),
                    shard.detail,
                ]
            )
        lines.extend(table(rows, right={1, 6, 8, 9, 10}))
    for lease in status.leases:
        held = f"held by agent {lease.agent} (pid {lease.pid} on {lease.host})"
        if lease.task is not None:
            held += f" for {lease.task}-shard-{lease.shard}, run {lease.run_key}"
        lines.append(f"{lease.lock}: {held}")
    return "\n".join(lines)


def _slots_line(status: Status) -> str:
    used, waiting = status.slots_in_use, status.waiting
    wait = f"; {waiting} shard{'s' if waiting != 1 else ''} waiting" if waiting else ""
    if status.budget is None:
        held = f"{len(used)} slot{'s' if len(used) != 1 else ''} held" if used else "none held"
        return f"no slot budget ({held}){wait}"
    free = status.free_slots or []
    inside = [number for number in used if number <= status.budget]
    names = f"{slot_lock(status.lease_prefix, 1)}..{status.budget}"
    shown = ", ".join(map(str, free)) if free else "none"
    beyond = len(used) - len(inside)
    extra = f" (and {beyond} beyond it, by agents with a larger budget)" if beyond else ""
    return f"slots {len(inside)} of {status.budget} in use{extra} ({names}), free: {shown}{wait}"
