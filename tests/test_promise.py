"""Never twice: at the process boundary, a shard's lock outlives all of its processes.

Each test runs against the embedded engine, and against the lokt engine when
``lokt`` is on PATH. Agents are real processes (tests/engine_agent.py),
killed, stopped and signalled for real; zombies are made on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import PASS, WAIT, git, make_project, open_gate, ran, start_cli, states, verdict  # noqa: E402
from test_engine_conformance import (  # noqa: E402, F401 (engine_name, root, spawn: fixtures)
    NAME,
    audit_events,
    engine_name,
    in_process,
    lock_file,
    root,
    spawn,
    wait_for,
    write_lock,
)

from lokt_tasks import errors, lockfile, system  # noqa: E402

needs_lokt = pytest.mark.skipif(shutil.which("lokt") is None, reason="lokt not on PATH")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


#: A shard's command as a wrapper: a shell that starts a child and waits for
#: it. The child takes ``$2`` seconds to honour SIGTERM (a test runner's
#: graceful shutdown); both write their pids to the file ``$1``.
SLOW_TREE = r"""
pids="$1"; slow="$2"
python3 -c '
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(float(sys.argv[1])), sys.exit(0)))
time.sleep(600)
' "$slow" &
echo "$$ $!" > "$pids.tmp" && mv "$pids.tmp" "$pids"
wait
"""

#: Writes, as JSON, which of the pids in the file ``$1`` run code now (alive
#: and not a zombie): run as the next agent's command, it sees the moment
#: that agent got the lock.
SEES_ALIVE = r"""
import json, sys
def running(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
pids = [int(word) for word in open(sys.argv[1]).read().split()]
json.dump([pid for pid in pids if running(pid)], open(sys.argv[2], "w"))
"""


def tree_pids(path: Path):
    wait_for(path.exists, "the shard's processes")
    return [int(word) for word in path.read_text().split()]


def running(pid: int) -> bool:
    return not system.process_gone(pid)


@linux_only
@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_no_process_of_a_killed_agent_s_shard_runs_once_another_agent_has_its_lock(
    engine_name, tmp_path, spawn, how
):
    """The agent dies (or is told to stop) while its command is a wrapper
    whose child takes 4 s to honour SIGTERM. A second agent waiting for the
    lock starts only once no process of the first attempt runs: the lock
    outlives the whole tree, on both engines."""
    pids, seen = tmp_path / "pids", tmp_path / "seen.json"
    first = spawn(
        engine_name, "A", ["/bin/sh", "-c", SLOW_TREE, "tree", str(pids), "4"], ttl=2, grace=8
    )
    tree = tree_pids(pids)
    second = spawn(
        engine_name,
        "B",
        [sys.executable, "-c", SEES_ALIVE, str(pids), str(seen)],
        ttl=2,
        wait=True,
        timeout=60,
    )
    time.sleep(0.3)  # B is waiting for the lock now
    first.process.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGTERM)
    first.process.wait(timeout=30)

    result = second.result(limit=60)
    assert (result["state"], result["exit_code"]) == ("ran", 0), result
    assert json.loads(seen.read_text()) == []  # nothing of A's tree ran when B started
    assert not any(running(pid) for pid in tree)


@linux_only
def test_a_wrapper_s_children_do_not_outlive_the_shard(engine_name, tmp_path, spawn):
    """The command ends but leaves a child behind (a server it started): the
    rest of its process group is stopped before the lock is released."""
    pids = tmp_path / "pids"
    script = 'sleep 600 & echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"; exit 3'
    agent = spawn(engine_name, "A", ["/bin/sh", "-c", script, "leaver", str(pids)], ttl=2, grace=1)
    result = agent.result(limit=60)
    assert (result["state"], result["exit_code"]) == ("ran", 3)
    assert not any(running(pid) for pid in tree_pids(pids))


def test_an_agent_that_lost_its_lock_stops_its_command_and_writes_no_final_record(
    engine_name, tmp_path, root, spawn
):
    """Another agent takes the lock over while the command runs (as after
    this agent was stopped past the TTL): the command is stopped, and the
    record left is never a final one of ours."""
    pids = tmp_path / "pids"
    agent = spawn(
        engine_name, "A", ["/bin/sh", "-c", SLOW_TREE, "tree", str(pids), "0"], ttl=2, grace=1
    )
    tree = tree_pids(pids)
    write_lock(
        root,
        owner="tester/B",
        agent_id="B",
        pid=os.getpid(),
        pid_start_ns=system.process_start_time(os.getpid()) or 0,
    )

    result = agent.result(limit=60)
    wait_for(lambda: not any(running(pid) for pid in tree), "the command to be stopped")
    assert result["state"] == "ran" and result["exit_code"] != 0
    records = [json.loads(path.read_text()) for path in (tmp_path / "attempts").iterdir()]
    assert [record["outcome"] for record in records] == ["running"]
    assert json.loads(lock_file(root).read_text())["owner"] == "tester/B"  # never released by A


def test_a_zombie_holder_never_blocks_a_rerun(engine_name, tmp_path, root):
    """A holder that died but is not reaped yet (its parent does not wait)
    is dead for both engines, though lokt itself calls it alive."""
    zombie = subprocess.Popen(["true"])  # never waited for: a zombie while this test runs
    wait_for(lambda: system.is_zombie(zombie.pid), "the zombie")
    write_lock(
        root,
        owner="tester/Z",
        agent_id="Z",
        pid=zombie.pid,
        ttl_sec=600,
        pid_start_ns=system.process_start_time(zombie.pid) or 0,
    )
    try:
        result = in_process(engine_name, root, "B").guard(NAME, ["true"], ttl=1)
    finally:
        zombie.wait()
    assert (result.state, result.exit_code) == ("ran", 0)
    pruned = [event for event in audit_events(root) if event["event"] == "auto-prune"]
    assert pruned and pruned[0]["extra"]["pruned_pid"] == zombie.pid


@pytest.mark.parametrize("age, runs", [(1, False), (60, True)])
def test_an_empty_lock_file_is_held_while_young_and_broken_once_abandoned(
    engine_name, tmp_path, root, age, runs
):
    lockfile.ensure_dirs(root)
    lock_file(root).write_text("")
    moment = time.time() - age
    os.utime(lock_file(root), (moment, moment))

    result = in_process(engine_name, root, "B").guard(NAME, ["touch", str(tmp_path / "ran")], ttl=1)

    assert (tmp_path / "ran").exists() == runs
    assert result.state == ("ran" if runs else "held")
    breaks = [event for event in audit_events(root) if event["event"] == "corrupt-break"]
    assert len(breaks) == (1 if runs else 0)
    if runs:
        assert not lock_file(root).exists()


def test_an_embedded_lock_file_is_never_empty(tmp_path):
    """Written whole, then linked into place: a second writer gets
    FileExistsError and the first lock is untouched; no temporary is left."""
    root = tmp_path / "root"
    lockfile.ensure_dirs(root)
    first = lockfile.LockData(NAME, "tester/A", lockfile.host_name(), os.getpid(), lock_id="a" * 32)
    lockfile.create_lock(lock_file(root), first)
    with pytest.raises(FileExistsError):
        lockfile.create_lock(lock_file(root), lockfile.LockData(NAME, "tester/B", "h", 1))
    assert lockfile.read_lock(lock_file(root)).owner == "tester/A"
    assert sorted(os.listdir(root / "locks")) == [f"{NAME}.json"]


def test_two_agents_of_one_name_never_both_run(engine_name, tmp_path, spawn):
    """lokt lets a lock's owner take it again, and both agents of one name
    have the same owner: the second is held all the same, on both engines."""
    release = tmp_path / "release"
    hold = ["/bin/sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.02; done', "hold", str(release)]
    first = spawn(engine_name, "twin", hold)
    first.wait_started()

    second = spawn(engine_name, "twin", ["touch", str(tmp_path / "second-ran")]).result()

    assert second["state"] == "held"
    assert not (tmp_path / "second-ran").exists()
    release.touch()
    assert first.result()["state"] == "ran"


@pytest.mark.parametrize("engine", ["embedded", pytest.param("lokt", marks=needs_lokt)])
def test_runs_of_two_worktrees_never_fail_each_other(tmp_path, engine):
    """Two worktrees with different edits are two runs (two run keys) that
    share lock names: the second waits for the first instead of failing,
    and neither's verdict shows the other's agent as running its shard."""
    suite = {"check_1.py": WAIT, "check_2.py": PASS}
    project = make_project(tmp_path / "main", suite, shards=2)
    other = tmp_path / "wt2"
    git(project, "worktree", "add", "-q", "-b", "agent2", str(other))
    (other / "run_checks.py").write_text((other / "run_checks.py").read_text() + "\n# edited\n")
    first = start_cli(
        project, "shard", "checks", "--id", "1", "--agent", "alice", "--engine", engine
    )
    second = None
    try:
        wait_for(lambda: "check_1.py" in ran(project), "alice's shard", limit=60)
        second = start_cli(
            other, "shard", "checks", "--id", "1", "--agent", "bob", "--engine", engine
        )
        time.sleep(1.0)
        assert second.poll() is None, second.communicate()  # waiting, not failed
        mine = verdict(other, "checks", "--engine", engine)
        assert mine["run_key"] != verdict(project, "checks", "--engine", engine)["run_key"]
        assert states(mine)[0] == "missing"  # alice runs it for the other run
        assert states(verdict(project, "checks", "--engine", engine))[0] == "running"
    finally:
        open_gate(project, "check_1.py")
        open_gate(other, "check_1.py")
        first.wait(timeout=60)
        if second is not None:
            output = second.communicate(timeout=60)
    assert first.returncode == errors.PASSED
    assert second.returncode == errors.PASSED, output
    assert states(verdict(other, "checks", "--engine", engine))[0] == "passed"


@linux_only
def test_a_stopped_agent_s_command_is_stopped_once_its_lock_is_taken_over(tmp_path, root, spawn):
    """Embedded: the agent is stopped (SIGSTOP) past its TTL and its lock taken
    over, as ``lokt guard --wait`` does: its watchdog kills the command at
    once, though the agent itself cannot act, and no final record is written."""
    pids = tmp_path / "pids"
    command = ["/bin/sh", "-c", SLOW_TREE, "tree", str(pids), "30"]
    agent = spawn("embedded", "A", command, ttl=1, grace=10)
    tree = tree_pids(pids)
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # past the TTL
        start = system.process_start_time(os.getpid()) or 0
        write_lock(root, owner="tester/B", agent_id="B", pid=os.getpid(), pid_start_ns=start)
        wait_for(lambda: not any(running(pid) for pid in tree), "the command to stop", limit=5)
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    agent.result(limit=60)
    records = [json.loads(path.read_text()) for path in (tmp_path / "attempts").iterdir()]
    assert [record["outcome"] for record in records] == ["running"]
    assert json.loads(lock_file(root).read_text())["owner"] == "tester/B"
