"""kill -9 at every point of a shard's life, with real processes.

A shard goes: agent plans, takes the lock (or waits for it), the start
record is written, the command runs, the final record is written, the lock
is released. With the embedded engine the agent holds the lock and writes
the records; with lokt, `lokt guard` holds it and the attempt process inside it
writes them. An agent killed at any of these points must
never leave a shard that ``verify`` calls passed, must not leave a lock
that blocks the next agent, and one rerun must complete the verdict.

``lokt guard``, the attempt process and the command run in sessions of their own
(so that a Ctrl-C at the terminal reaches only the agent). A CI timeout
kills the whole process tree; ``kill_tree`` does that. Killing only the
agent (or only its process group, which is the same here) is tested
separately: the embedded engine's watchdog, or lokt's attempt process, notices and
stops the command.

Each test runs with the embedded engine, and with lokt when ``lokt`` is on
PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence, Set

import pytest
from scratch import (
    PASS,
    WAIT,
    checks,
    cli,
    git,
    lock_files,
    make_project,
    open_gate,
    ran,
    start_cli,
    states,
    verdict,
    wait_for,
)

from lokt_tasks import errors
from lokt_tasks.results import read_record
from lokt_tasks.system import bootstrap, is_zombie, pid_alive

#: What the command line of an attempt process holds.
ATTEMPT_BOOTSTRAP = bootstrap("attempt")[4]

needs_lokt = pytest.mark.skipif(
    shutil.which("lokt") is None, reason="lokt not on PATH: lokt engine cases not run"
)
ENGINES = ["embedded", pytest.param("lokt", marks=needs_lokt)]

SIX = [f"check_{n}.py" for n in range(1, 7)]
#: Shard 1 of 3 holds check_1.py and check_2.py; check_1.py waits for its gate.
SHARD_1 = ["check_1.py", "check_2.py"]


@pytest.fixture
def project(tmp_path):
    suite = checks(SIX, PASS)
    suite["check_1.py"] = WAIT
    return make_project(tmp_path / "p", suite)


# --- processes -----------------------------------------------------------------


def descendants(pid: int) -> Dict[int, str]:
    """Every process below pid, with its whole command line (``-ww``: ps
    cuts it to $COLUMNS otherwise, even into a pipe)."""
    table = subprocess.run(
        ["ps", "-ww", "-A", "-o", "pid=", "-o", "ppid=", "-o", "args="],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    children: Dict[int, List[int]] = {}
    args: Dict[int, str] = {}
    for line in table.splitlines():
        child, parent, command = (line.split(None, 2) + [""])[:3]
        children.setdefault(int(parent), []).append(int(child))
        args[int(child)] = command
    found: Dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = args[child]
        todo.extend(children.get(child, []))
    return found


def alive(pid: int) -> bool:
    return pid_alive(pid) and not is_zombie(pid)


def reaped(pid: int) -> bool:
    """Gone for good: lokt counts a zombie as alive, until init reaps it."""
    return not pid_alive(pid)


def stop_tree(pid: int) -> List[int]:
    """SIGSTOP pid and everything below it, until nothing new appears."""
    stopped: Set[int] = set()
    todo = [pid]
    while todo:
        for each in todo:
            try:
                os.kill(each, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            stopped.add(each)
        todo = [p for root in list(stopped) for p in descendants(root) if p not in stopped]
    return sorted(stopped)


def kill_tree(agent: subprocess.Popen, *, engines: Sequence[str] = ()) -> None:
    """SIGKILL the agent and every process below it at once, as a CI timeout does.

    Returns once they are dead; for lokt, once they are reaped too.
    """
    tree = stop_tree(agent.pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    agent.wait(timeout=30)
    dead = reaped if "lokt" in engines else lambda pid: not alive(pid)
    wait_for(lambda: all(dead(pid) for pid in tree))


# --- lock and records ----------------------------------------------------------


def lokt_dir(project: Path) -> Path:
    return project / ".git" / "lokt"


def lock_holder_pid(project: Path, name: str = "checks-shard-1") -> int:
    """The pid in the lock file, once it is complete (0 while absent or being written)."""
    try:
        return int(json.loads((lokt_dir(project) / "locks" / f"{name}.json").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return 0


def denied(project: Path, agent: str) -> bool:
    """Whether agent has been refused the lock at least once (lokt's audit log)."""
    try:
        lines = (lokt_dir(project) / "audit.log").read_text().splitlines()
    except OSError:
        return False
    return any(
        json.loads(line).get("event") == "deny" and json.loads(line).get("agent_id") == agent
        for line in lines
    )


def record_files(project: Path) -> List[Path]:
    return sorted((lokt_dir(project).parent / "lokt-tasks").rglob("shard-*.json"))


def shard_1(project: Path) -> dict:
    return verdict(project)["shards"][0]


def rerun_completes(project: Path, engine: str) -> None:
    """The gate is opened, one rerun of shard 1 passes, and no lock is left."""
    open_gate(project, "check_1.py")
    rerun = cli(project, "shard", "checks", "--id", "1", "--engine", engine)
    assert rerun.returncode == errors.PASSED, rerun.stderr
    assert lock_files(project) == []
    report = verdict(project)
    assert states(report)[0] == "passed"


# --- (a) before the lock -------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_killed_while_waiting_for_the_lock_never_runs_the_shard(project, engine):
    """Only the waiting agent's process group is killed. With lokt, `lokt
    guard --wait` lives in a session of its own and outlives the agent: it
    takes the lock once A lets go, and the attempt process, seeing its agent dead,
    runs nothing."""
    holder = start_cli(project, "shard", "checks", "--id", "1", "--engine", engine, "--agent", "A")
    try:
        wait_for(lambda: "check_1.py" in ran(project))
        waiter = start_cli(
            project, "shard", "checks", "--id", "1", "--engine", engine, "--agent", "B", "--wait"
        )
        wait_for(lambda: denied(project, "B"))
        left_behind = descendants(waiter.pid)
        os.killpg(waiter.pid, signal.SIGKILL)
        waiter.wait(timeout=30)
        row = shard_1(project)
        assert row["state"] == "running" and row["agent"] == "A"
    finally:
        open_gate(project, "check_1.py")
        holder.wait(timeout=30)
    assert holder.returncode == errors.PASSED
    wait_for(lambda: not any(alive(pid) for pid in left_behind))
    assert ran(project) == SHARD_1  # B ran nothing, ever
    assert lock_files(project) == []
    assert states(verdict(project))[0] == "passed"


# --- (b) holding the lock, command not started ----------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_killed_after_taking_the_lock_before_the_command_starts(project, engine):
    agent = start_cli(project, "shard", "checks", "--id", "1", "--engine", engine)
    try:
        # What runs the shard (the embedded agent, whose watchdog is named as
        # the holder, or lokt guard) is stopped the moment the lock file is
        # complete, with whatever it has started below it.
        holder = wait_for(lambda: lock_holder_pid(project), interval=0.001)
        stop_tree(agent.pid if engine == "embedded" else holder)
        assert ran(project) == []
        row = shard_1(project)
        assert row["state"] == "running"  # a stopped holder is alive
    finally:
        kill_tree(agent, engines=[engine])
    report = verdict(project)
    assert report["shards"][0]["state"] in ("missing", "crashed"), report["shards"][0]
    assert report["exit_code"] == errors.INCOMPLETE
    assert ran(project) == []
    rerun_completes(project, engine)


# --- (c) during the command ----------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rerun_engine", ENGINES)
def test_killed_during_the_command_is_crashed_and_either_engine_reruns_it(
    project, engine, rerun_engine
):
    agent = start_cli(project, "shard", "checks", "--id", "1", "--engine", engine)
    try:
        wait_for(lambda: "check_1.py" in ran(project))
    finally:
        kill_tree(agent, engines=[engine, rerun_engine])
    report = verdict(project)
    assert states(report) == ["crashed", "missing", "missing"]
    assert "never finished" in report["shards"][0]["detail"]
    assert report["exit_code"] == errors.INCOMPLETE
    rerun_completes(project, rerun_engine)
    assert ran(project) == ["check_1.py", *SHARD_1]


# --- (d) command ended, final record not written -------------------------------

#: Runs the checks; the first time, stops its parent (the attempt process) before
#: exiting, so the command's end is never recorded. Then tells the test.
STOPPER = """\
import os, signal, subprocess, sys
code = subprocess.call([sys.executable, "run_checks.py", *sys.argv[1:]])
flag = os.environ["STOP_PARENT"]
if os.path.exists(flag):
    os.unlink(flag)
    os.kill(os.getppid(), signal.SIGSTOP)
    open(flag + ".exited", "w").close()
sys.exit(code)
"""


@pytest.mark.parametrize("engine", ENGINES)
def test_killed_after_the_command_passed_before_the_final_record(tmp_path, engine):
    project = make_project(tmp_path / "p", checks(SIX, PASS))
    (project / "stopper.py").write_text(STOPPER)
    toml = (
        (project / "shards.toml").read_text().replace("run_checks.py {items}", "stopper.py {items}")
    )
    (project / "shards.toml").write_text(toml)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "stop the attempt process once")
    flag = tmp_path / "stop-attempt"
    flag.write_text("")
    env = {"STOP_PARENT": str(flag)}

    agent = start_cli(project, "shard", "checks", "--id", "1", "--engine", engine, env=env)
    try:
        wait_for(lambda: Path(f"{flag}.exited").exists())
        assert ran(project) == SHARD_1  # the command ran and passed
        assert read_record(record_files(project)[0]).outcome == "running"
        assert shard_1(project)["state"] == "running"
    finally:
        kill_tree(agent, engines=[engine])
    report = verdict(project)
    assert report["shards"][0]["state"] == "crashed", report["shards"][
        0
    ]  # it passed, but nothing says so
    assert report["exit_code"] == errors.INCOMPLETE
    rerun = cli(project, "shard", "checks", "--id", "1", "--engine", engine, env=env)
    assert rerun.returncode == errors.PASSED, rerun.stderr
    assert lock_files(project) == []
    assert states(verdict(project))[0] == "passed"


# --- only the agent ------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_killing_only_the_agent_stops_its_command_and_the_shard_is_crashed(project, engine):
    """The command runs in a session of its own, so killing the agent does
    not reach it. With the embedded engine the dead agent was the lock
    holder: letting the command go on would let a second agent run the shard
    at the same time, so the agent's watchdog stops it. With lokt, the
    attempt process inside `lokt guard` watches the agent, stops the command and
    writes no final record; `lokt guard` then releases the lock."""
    agent = start_cli(project, "shard", "checks", "--id", "1", "--engine", engine)
    try:
        wait_for(lambda: "check_1.py" in ran(project))
        below = descendants(agent.pid)
    finally:
        agent.kill()
        agent.wait(timeout=30)
    try:
        command = [pid for pid, args in below.items() if "run_checks.py" in args]
        assert command, below
        wait_for(lambda: not any(alive(pid) for pid in command))
        open_gate(project, "check_1.py")  # a command left running would now pass and go on
        report = verdict(project)
        assert states(report)[0] == "crashed", report["shards"][0]
        assert report["exit_code"] == errors.INCOMPLETE
        assert ran(project) == ["check_1.py"]  # check_2.py never started
    finally:
        open_gate(project, "check_1.py")
        wait_for(lambda: not any(alive(pid) for pid in below))
    rerun = cli(project, "shard", "checks", "--id", "1", "--engine", engine)
    assert rerun.returncode == errors.PASSED, rerun.stderr
    assert lock_files(project) == []
    assert states(verdict(project))[0] == "passed"


@needs_lokt
def test_killing_only_lokt_guard_stops_the_command_it_guarded(project):
    """`lokt guard` killed on its own cannot release its lock, and the next
    agent prunes the lock of a dead holder: the agent sees its guard die and
    stops what ran under it, so the command never runs on unlocked beside a
    rerun."""
    agent = start_cli(project, "shard", "checks", "--id", "1", "--engine", "lokt")
    try:
        wait_for(lambda: "check_1.py" in ran(project))
        below = descendants(agent.pid)
        guard = [
            pid
            for pid, command in below.items()
            if command.split()[0].endswith("lokt") and " guard " in command
        ]
        assert guard, below
        os.kill(guard[0], signal.SIGKILL)
        attempt = [
            pid
            for pid, command in below.items()
            if ATTEMPT_BOOTSTRAP in command and pid not in guard
        ]
        assert attempt, below
        wait_for(lambda: not alive(attempt[0]))
        open_gate(project, "check_1.py")  # a command left running would now pass and go on
        assert ran(project) == ["check_1.py"]
        assert states(verdict(project))[0] != "passed"
    finally:
        open_gate(project, "check_1.py")
        agent.wait(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in below))
    rerun_completes(project, "lokt")
