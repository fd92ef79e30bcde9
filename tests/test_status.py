"""``status``: shard locks, leases and records into one view (lokt_tasks/status.py).

Holders are given as ``Engine.held_locks`` returns them; records are real
files in a results directory. The end-to-end view, with agents running, is
in tests/test_slots.py.
"""

from __future__ import annotations

import datetime
import os

from lokt_tasks.engine import Holder
from lokt_tasks.results import Record, RecordStore, rerun_key
from lokt_tasks.status import gather, render_status, status_to_json

NOW = datetime.datetime(2024, 5, 1, 12, 0, 30, tzinfo=datetime.timezone.utc)


def holder(name: str, owner: str, pid_status: str = "alive") -> Holder:
    agent = owner.split("/")[1]
    return Holder(name, owner, agent, "box", os.getpid(), 1.0, pid_status)


def record(shard: int, owner: str, run: str, **changes) -> Record:
    fields = dict(
        task="test",
        shard=shard,
        total=4,
        fingerprint="fp",
        run_key=run,
        lock_name=f"test-shard-{shard}",
        agent=owner.split("/")[1],
        owner=owner,
        host="box",
        pid=10,
        engine="embedded",
        started_at="2024-05-01T12:00:20.000000Z",
        outcome="running",
        cwd=f"/src/{run}",
        estimate=15.0,
    )
    fields.update(changes)
    return Record(**fields)


def test_running_and_waiting_shards_with_their_leases_and_the_free_slots(tmp_path):
    store = RecordStore(tmp_path)
    store.write(record(1, "me/ann", "r1", slot=2, waited=4.0, resources=["db"]))
    store.write(record(2, "me/bob", "r2", outcome="waiting", message="waiting for a slot"))
    store.write(record(3, "me/cy", "r1", outcome="passed", ended_at="2024-05-01T12:00:25Z"))
    holders = [
        holder("test-shard-1", "me/ann"),
        holder("test-shard-2", "me/bob"),
        holder("test-shard-3", "me/cy", pid_status="dead"),  # crashed: not running
        holder("test-shard-4", "me/dan"),  # no record of its holder's: the lock alone
        holder("lokt-tasks-slot-2", "me/ann"),
        holder("lokt-tasks-resource-db", "me/ann"),
        holder("deploy", "me/eve"),  # not a shard's lock
    ]
    status = gather(holders, store, lock_root="/r", lease_prefix="lokt-tasks", budget=3, now=NOW)

    data = status_to_json(status)
    assert data["slots"] == {"budget": 3, "in_use": [2], "free": [1, 3]}
    shards = {row["shard"]: row for row in data["shards"]}
    assert sorted(shards) == [1, 2, 4]
    assert shards[1] | {"log": None} == {
        "task": "test",
        "shard": 1,
        "total": 4,
        "lock": "test-shard-1",
        "state": "running",
        "run_key": "r1",
        "agent": "ann",
        "host": "box",
        "pid": os.getpid(),
        "worktree": "/src/r1",
        "slot": 2,
        "resources": ["db"],
        "age": 14.0,  # 10 s running after 4 s of waiting
        "elapsed": 10.0,
        "estimate": 15.0,
        "detail": "",
        "log": None,
    }
    assert (shards[2]["state"], shards[2]["age"], shards[2]["elapsed"]) == ("waiting", 10.0, None)
    assert shards[2]["detail"] == "waiting for a slot"
    assert (shards[4]["run_key"], shards[4]["agent"], shards[4]["slot"]) == (None, "dan", None)
    assert [(lease["lock"], lease["shard"], lease["run_key"]) for lease in data["leases"]] == [
        ("lokt-tasks-resource-db", 1, "r1"),
        ("lokt-tasks-slot-2", 1, "r1"),
    ]

    text = render_status(status, color=False).splitlines()
    assert text[0] == (
        "lock root /r; slots 1 of 3 in use (lokt-tasks-slot-1..3), free: 1, 3; 1 shard waiting"
    )
    assert text[1].split() == [
        *"task shard run state agent worktree slot resources age elapsed estimate detail".split()
    ]
    assert text[2].split() == [*"test 1/4 r1 running ann /src/r1 2 db 14.0s 10.0s 15.0s".split()]
    assert text[3].split()[3:] == [*"waiting bob /src/r2 - - 10.0s - 15.0s".split()] + [
        *"waiting for a slot".split()
    ]
    assert text[-1] == (
        "lokt-tasks-slot-2: held by agent ann (pid %d on box) for test-shard-1, run r1"
        % os.getpid()
    )


def test_nothing_running_and_no_budget(tmp_path):
    status = gather([], RecordStore(tmp_path), lock_root="/r", lease_prefix="p", budget=None)
    assert render_status(status, color=False) == (
        "lock root /r; no slot budget (none held)\nno shard is running"
    )
    assert status_to_json(status)["slots"] == {"budget": None, "in_use": [], "free": None}


def test_a_shard_of_a_rerun_of_failed_tests_is_listed_with_its_slot(tmp_path):
    """``shard-all --failed-tests`` runs shards under ``<task>-rerun-N`` locks,
    with records in ``<run>/rerun-<K>``: status names them, not a bare slot."""
    store = RecordStore(tmp_path)
    store.write(record(1, "me/ann", "r1", outcome="failed", ended_at="2024-05-01T12:00:10Z"))
    number, _ = store.new_rerun("test", "r1", [["tests/test_x.py::test_a"]])
    key = rerun_key("r1", number)
    store.write(record(1, "me/ann", key, lock_name="test-rerun-1", slot=1, total=1))
    holders = [holder("test-rerun-1", "me/ann"), holder("lokt-tasks-slot-1", "me/ann")]
    status = gather(holders, store, lock_root="/r", lease_prefix="lokt-tasks", budget=2, now=NOW)

    data = status_to_json(status)
    [shard] = data["shards"]
    assert (shard["lock"], shard["run_key"], shard["slot"], shard["state"]) == (
        "test-rerun-1",
        "r1/rerun-1",
        1,
        "running",
    )
    assert [(lease["lock"], lease["run_key"]) for lease in data["leases"]] == [
        ("lokt-tasks-slot-1", "r1/rerun-1")
    ]
