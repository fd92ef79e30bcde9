"""SIGINT and SIGTERM to a running agent: one, two in quick succession, or a burst.

Whatever arrives and however fast, the agent stops its shards' commands,
releases every lock, leaves records that all parse and say interrupted, and
exits 130 (SIGINT) or 143 (SIGTERM), after the first signal it got. Signals
go to the agent's process group, as a terminal's Ctrl-C does. (shard-all
stopped by a single signal is in test_flow.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import List, Sequence

import pytest
from scratch import (
    PASS,
    WAIT,
    checks,
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
from lokt_tasks.results import Record, read_record
from lokt_tasks.system import is_zombie, pid_alive

needs_lokt = pytest.mark.skipif(
    shutil.which("lokt") is None, reason="lokt not on PATH: lokt engine cases not run"
)
ENGINES = ["embedded", pytest.param("lokt", marks=needs_lokt)]
EXIT_CODES = {signal.SIGINT: errors.INTERRUPTED_SIGINT, signal.SIGTERM: errors.INTERRUPTED_SIGTERM}

SIX = [f"check_{n}.py" for n in range(1, 7)]


def descendants(pid: int) -> List[int]:
    table = subprocess.run(
        ["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True, check=True
    ).stdout
    pairs = [tuple(int(field) for field in line.split()) for line in table.splitlines()]
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, ppid in pairs if ppid == parent]
        found += children
        todo += children
    return found


def gone(pid: int) -> bool:
    return not pid_alive(pid) or is_zombie(pid)


def send(agent: subprocess.Popen, signals: Sequence[int], pause: float) -> None:
    for sig in signals:
        try:
            os.killpg(agent.pid, sig)
        except ProcessLookupError:
            return  # already gone: the rest arrive after it exited
        time.sleep(pause)


def stop_and_check(
    project: Path,
    agent: subprocess.Popen,
    signals: Sequence[int],
    *,
    running: int,
    pause: float = 0.05,
    exit_codes: Sequence[int] = (),
) -> dict:
    """Send signals once ``running`` checks run; check what a clean stop leaves.

    Every gate is opened afterwards: a command that survived would go on to
    its next check and show up in ran.log. The exit code is the first
    signal's, unless ``exit_codes`` says otherwise.
    """
    try:
        wait_for(lambda: len(ran(project)) == running)
        tree = descendants(agent.pid)
        send(agent, signals, pause)
        agent.wait(timeout=60)
    finally:
        for name in SIX:
            open_gate(project, name)
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    wait_for(lambda: all(gone(pid) for pid in tree))
    assert agent.returncode in (exit_codes or [EXIT_CODES[signals[0]]]), agent.stderr.read()
    assert len(ran(project)) == running  # nothing went on after the stop
    assert lock_files(project) == []
    results = project / ".git" / "lokt-tasks"
    assert not [p.name for p in results.rglob("*.tmp")]
    for path in results.rglob("shard-*.json"):
        record = read_record(path)
        assert isinstance(record, Record), record
        assert record.outcome == "interrupted", (path.name, record.outcome)
    return verdict(project)


@pytest.fixture
def waiting(tmp_path):
    """A project whose six checks all wait for their gate (3 shards of 2)."""
    return make_project(tmp_path / "p", checks(SIX, WAIT))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_shard_stopped_by_a_signal(waiting, engine, sig):
    agent = start_cli(waiting, "shard", "checks", "--id", "2", "--engine", engine)
    report = stop_and_check(waiting, agent, [sig], running=1)
    assert states(report) == ["missing", "interrupted", "missing"]
    assert report["shards"][1]["detail"].startswith("interrupted")
    assert report["exit_code"] == errors.INCOMPLETE


def test_shard_given_sigint_then_sigterm_during_its_cleanup(waiting):
    agent = start_cli(waiting, "shard", "checks", "--id", "1")
    report = stop_and_check(waiting, agent, [signal.SIGINT, signal.SIGTERM], running=1)
    assert states(report) == ["interrupted", "missing", "missing"]


def test_shard_all_given_two_sigints_50ms_apart(waiting):
    agent = start_cli(waiting, "shard-all", "checks", "--jobs", "3")
    report = stop_and_check(waiting, agent, [signal.SIGINT, signal.SIGINT], running=3)
    assert states(report) == ["interrupted"] * 3


def test_shard_all_given_a_burst_of_signals(waiting):
    """Signals pending together are handled lowest number first, so which
    of SIGTERM and SIGINT came "first" in a burst is not defined."""
    burst = [signal.SIGTERM, signal.SIGINT] * 15
    agent = start_cli(waiting, "shard-all", "checks", "--jobs", "3")
    codes = [errors.INTERRUPTED_SIGINT, errors.INTERRUPTED_SIGTERM]
    report = stop_and_check(waiting, agent, burst, running=3, pause=0.003, exit_codes=codes)
    assert states(report) == ["interrupted"] * 3


def test_shard_given_a_burst_at_every_process_of_the_shard(waiting):
    """As if agent, attempt process and command shared the terminal's process group:
    the attempt process gets the burst too, while it stops the command and writes."""
    agent = start_cli(waiting, "shard", "checks", "--id", "3")
    try:
        wait_for(lambda: len(ran(waiting)) == 1)
        tree = [agent.pid, *descendants(agent.pid)]
        for _ in range(10):
            for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
                for pid in tree:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            time.sleep(0.005)
        agent.wait(timeout=60)
    finally:
        open_gate(waiting, "check_5.py")
        open_gate(waiting, "check_6.py")
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    wait_for(lambda: all(gone(pid) for pid in tree))
    assert agent.returncode == errors.INTERRUPTED_SIGINT, agent.stderr.read()
    assert ran(waiting) == ["check_5.py"]
    assert lock_files(waiting) == []
    assert states(verdict(waiting)) == ["missing", "missing", "interrupted"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_queue_mode_stopped_by_a_signal_claims_nothing_more(tmp_path, sig):
    suite = checks(SIX, PASS)
    suite["check_3.py"] = WAIT  # shard 2 waits; with no timings the queue goes 1, 2, 3
    project = make_project(tmp_path / "p", suite)
    agent = start_cli(project, "shard", "checks", "--id", "next")
    try:
        wait_for(lambda: "check_3.py" in ran(project))
        tree = descendants(agent.pid)
        send(agent, [sig], 0)
        agent.wait(timeout=60)
    finally:
        open_gate(project, "check_3.py")
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    wait_for(lambda: all(gone(pid) for pid in tree))
    assert agent.returncode == EXIT_CODES[sig], agent.stderr.read()
    assert ran(project) == ["check_1.py", "check_2.py", "check_3.py"]
    assert lock_files(project) == []
    report = verdict(project)
    assert states(report) == ["passed", "interrupted", "missing"]
    assert report["exit_code"] == errors.INCOMPLETE
