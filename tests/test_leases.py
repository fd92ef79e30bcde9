"""Leases (lokt_tasks/leases.py) on their own: slot and resource locks in a
real lock root, taken in lock order, waited for, renewed, lost, released,
pruned when their holder is dead, and handed to the attempt process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lokt_tasks import attempt, leases, lockfile, system
from lokt_tasks.config import load_config, slot_budget
from lokt_tasks.errors import UsageError
from lokt_tasks.leases import Leases, parse_lease_lock, resource_lock, slot_lock


def holder(agent: str, pid: int = 0) -> lockfile.Claimant:
    pid = pid or os.getpid()
    started = system.process_start_time(pid) or 0
    return lockfile.Claimant(f"tester/{agent}", lockfile.host_name(), pid, agent, started)


def make(root: Path, agent: str, **options) -> Leases:
    options.setdefault("prefix", "p")
    return Leases(root, owner=f"tester/{agent}", agent=agent, ttl=30, **options)


def never():
    return None


def take(lease: Leases, agent: str, **options) -> bool:
    return lease.take(holder(agent), stopped=options.pop("stopped", never), **options)


def locks(root: Path):
    return sorted(path.name[: -len(".json")] for path in (root / "locks").glob("*.json"))


def audit(root: Path):
    lines = (root / "audit.log").read_text().splitlines()
    return [(event["event"], event["name"]) for event in map(json.loads, lines)]


def test_lock_names_and_their_reading():
    assert slot_lock("lokt-tasks", 3) == "lokt-tasks-slot-3"
    assert resource_lock("lokt-tasks", "postgres") == "lokt-tasks-resource-postgres"
    assert parse_lease_lock("lokt-tasks", "lokt-tasks-slot-12") == ("slot", 12)
    assert parse_lease_lock("lokt-tasks", "lokt-tasks-resource-db.1") == ("resource", "db.1")
    for other in ("lokt-tasks-slot-x", "test-shard-1", "other-slot-1", "lokt-tasks-resource-"):
        assert parse_lease_lock("lokt-tasks", other) is None


def test_the_lowest_free_slot_is_taken_and_a_full_budget_waits_until_one_is_free(tmp_path):
    first, second = (
        make(tmp_path, "a", slot=True, budget=2),
        make(tmp_path, "b", slot=True, budget=2),
    )
    assert take(first, "a") and take(second, "b")
    assert (first.slot, second.slot) == (1, 2)
    assert locks(tmp_path) == ["p-slot-1", "p-slot-2"]

    third, told = make(tmp_path, "c", slot=True, budget=2), []
    given_up = take(
        third, "c", stopped=lambda: signal.SIGINT if told else None, on_wait=told.append
    )
    assert not given_up and told == ["a slot"] and third.slot is None and third.held == []

    result = []
    waiter = threading.Thread(target=lambda: result.append(take(third, "c", on_wait=told.append)))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()  # both slots still held
    second.release()
    waiter.join(timeout=10)
    assert result == [True] and third.slot == 2
    first.release()
    third.release()
    assert locks(tmp_path) == []


def test_without_a_budget_every_taker_gets_a_number_of_its_own_at_once(tmp_path):
    taken = [make(tmp_path, f"a{n}", slot=True) for n in range(3)]
    told: list = []
    for number, lease in enumerate(taken):
        assert take(lease, f"a{number}", on_wait=told.append)
    assert [lease.slot for lease in taken] == [1, 2, 3] and told == []
    taken[1].release()
    again = make(tmp_path, "b", slot=True)
    assert take(again, "b") and again.slot == 2


def test_resources_are_taken_by_name_then_the_slot_and_given_back_last_first(tmp_path):
    lease = make(tmp_path, "a", slot=True, budget=1, resources=("zeta", "alpha"))
    assert take(lease, "a")
    lease.release()
    lease.release()  # idempotent
    assert audit(tmp_path) == [
        ("acquire", "p-resource-alpha"),
        ("acquire", "p-resource-zeta"),
        ("acquire", "p-slot-1"),
        ("release", "p-slot-1"),
        ("release", "p-resource-zeta"),
        ("release", "p-resource-alpha"),
    ]


def test_a_wait_for_a_resource_holds_the_ones_before_it_and_no_slot(tmp_path):
    other = make(tmp_path, "b", resources=("b",))
    assert take(other, "b")
    lease, told = make(tmp_path, "a", slot=True, budget=1, resources=("a", "b")), []
    assert not take(
        lease, "a", stopped=lambda: signal.SIGTERM if told else None, on_wait=told.append
    )
    assert told == ["resource 'b'"]
    assert locks(tmp_path) == ["p-resource-b"]  # "a" given back, the slot never taken
    events = audit(tmp_path)
    assert ("acquire", "p-resource-a") in events and ("release", "p-resource-a") in events
    assert "deny" not in {event for event, _ in events}  # waiting writes no deny lines


def test_an_abandoned_wait_gives_up_what_it_holds(tmp_path):
    assert take(make(tmp_path, "b", slot=True, budget=1), "b")
    lease = make(tmp_path, "a", slot=True, budget=1, resources=("db",))
    assert not take(lease, "a", abandoned=lambda: 0.0)
    assert locks(tmp_path) == ["p-slot-1"]


def test_a_dead_holders_slot_is_pruned_and_taken(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    lockfile.ensure_dirs(tmp_path)
    dead = lockfile.Claimant("tester/dead", lockfile.host_name(), gone.pid, "dead", 0)
    lockfile.create_lock(
        lockfile.lock_path(tmp_path, "p-slot-1"), dead.new_lock("p-slot-1", 30, lockfile.now_ns())
    )

    lease = make(tmp_path, "a", slot=True, budget=1)
    assert take(lease, "a") and lease.slot == 1
    assert audit(tmp_path) == [("auto-prune", "p-slot-1"), ("acquire", "p-slot-1")]


def test_keep_renews_at_half_the_ttl_and_says_when_a_lease_is_lost(tmp_path):
    lease = Leases(tmp_path, prefix="p", owner="tester/a", agent="a", ttl=1, slot=True, budget=1)
    assert take(lease, "a")
    before = lockfile.read_lock(lockfile.lock_path(tmp_path, "p-slot-1"))
    time.sleep(0.6)
    assert lease.keep()
    after = lockfile.read_lock(lockfile.lock_path(tmp_path, "p-slot-1"))
    assert after.lock_id == before.lock_id and after.acquired_ns > before.acquired_ns
    assert ("renew", "p-slot-1") in audit(tmp_path)

    lockfile.lock_path(tmp_path, "p-slot-1").unlink()  # taken from us
    lease._next_check = 0.0
    assert not lease.keep() and not lease.keep()


def test_fill_puts_the_slot_only_into_the_templates():
    lease = Leases("/nowhere", prefix="p", owner="o", agent="a", ttl=1, slot=True,
                   slot_args=(1,), slot_env=("DB",))  # fmt: skip
    lease.slot = 3
    command = ["run", "db_{slot}_{{x}}", "{slot}"]
    env = {"DB": "app_{slot}", "OTHER": "{slot}"}
    assert lease.fill(command, env) == (
        ["run", "db_3_{x}", "{slot}"],
        {"DB": "app_3", "OTHER": "{slot}"},
    )
    lease.slot = None
    assert lease.fill(command, env) == (command, env)


def test_the_attempt_process_gets_its_leases_as_one_argument(tmp_path):
    lease = make(tmp_path, "a", slot=True, budget=4, resources=("db",), slot_args=(2,),
                 slot_env=("DB",))  # fmt: skip
    again = Leases.from_json(lease.to_json())
    assert again.to_json() == lease.to_json()
    assert lease.argv()[-1] == lease.to_json()
    assert "from lokt_tasks.leases import main" in lease.argv()[-2]

    refused = subprocess.run(
        [*system.bootstrap("leases"), "{not json", "record", "{\n}", "--", "true"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == attempt.USAGE
    assert refused.stderr.startswith("usage: leases LEASES RECORD FIELDS --agent PID")


def test_the_attempt_process_holds_its_leases_for_the_commands_life(tmp_path):
    """leases.main as lokt guard would run it: the slot lock names the attempt
    process, ``{slot}`` reaches the command, and the lock goes when it ends."""
    record, seen = tmp_path / "r.json", tmp_path / "seen"
    lease = make(tmp_path / "root", "a", slot=True, budget=2, slot_args=(4,))
    fields = json.dumps({"attempt": "x1"}, indent=2)
    script = "import os, sys, time; open(sys.argv[1], 'w').write(sys.argv[2]); time.sleep(0.5)"
    argv = lease.argv() + [str(record), fields, "--agent", str(os.getpid()), "--"]
    process = subprocess.Popen(argv + [sys.executable, "-c", script, str(seen), "slot {slot}"])
    deadline = time.monotonic() + 20
    while not seen.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    held = lockfile.read_lock(lockfile.lock_path(tmp_path / "root", "p-slot-1"))
    assert (held.pid, held.owner, held.agent_id) == (process.pid, "tester/a", "a")
    assert process.wait(timeout=20) == 0
    assert seen.read_text() == "slot 1"
    written = json.loads(record.read_text())
    assert (written["outcome"], written["slot"]) == ("passed", 1)
    assert isinstance(written["waited"], float)
    assert locks(tmp_path / "root") == []


def test_the_slot_budget_comes_from_the_flag_the_environment_or_the_file(tmp_path):
    assert slot_budget(None, None, {}) is None
    assert slot_budget(3, None, {}) == 3
    assert slot_budget("cpus", None, {}) == (os.cpu_count() or 1)
    assert slot_budget(3, None, {"LOKT_TASKS_SLOTS": "5"}) == 5
    assert slot_budget(3, "2", {"LOKT_TASKS_SLOTS": "5"}) == 2
    assert slot_budget(3, None, {"LOKT_TASKS_SLOTS": " "}) == 3
    with pytest.raises(UsageError, match=r"^--slots: expected a whole number of at least 1"):
        slot_budget(None, "0", {})
    with pytest.raises(UsageError, match=r'^LOKT_TASKS_SLOTS: .* or "cpus", got "many"'):
        slot_budget(None, None, {"LOKT_TASKS_SLOTS": "many"})
    config = tmp_path / "shards.toml"
    config.write_text(
        '[defaults]\nslots = "cpus"\nlease_prefix = "ci"\n[tasks.t]\nrun = "x {items}"\n'
        'glob = "a"\nshards = 1\nenv = { DB = "d_{slot}" }\nresources = ["db"]\n'
    )
    loaded = load_config(config)
    assert (loaded.slots, loaded.lease_prefix) == ("cpus", "ci")
    assert (loaded.tasks["t"].env, loaded.tasks["t"].resources) == ((("DB", "d_{slot}"),), ("db",))


def test_leases_import_nothing_beyond_the_standard_library_and_lockfile():
    code = (
        "import sys; sys.path.append(%r); import lokt_tasks.leases; "
        "print(sorted(m for m in sys.modules if m.startswith('lokt_tasks')))"
    ) % str(Path(leases.__file__).resolve().parent.parent)
    shown = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert eval(shown.stdout) == [
        "lokt_tasks",
        "lokt_tasks.attempt",
        "lokt_tasks.errors",
        "lokt_tasks.leases",
        "lokt_tasks.lockfile",
        "lokt_tasks.system",
    ]
