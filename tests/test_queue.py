"""Queue mode (``shard TASK --id next``) with several real agents at once.

Each agent is a separate ``python -m lokt_tasks`` process with its own name.
What must hold whatever the timing: every shard runs exactly once (counted
in ran.log, which each check appends to), the records name the agent that
ran each shard, the lock audit log agrees, and a shard whose agent is killed
is run again by an agent that is still alive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Set

import pytest
from scratch import (
    FAIL,
    PYTHON,
    WAIT,
    checks,
    cli,
    git,
    kill_group,
    make_project,
    open_gate,
    ran,
    start_cli,
    states,
    verdict,
    wait_for,
)

from lokt_tasks import errors

SHORT_WORK = "time.sleep({seconds}); sys.exit(0)"


def queue_project(root: Path, suite: Dict[str, str], shards) -> Path:
    """A scratch project with one check per shard, run without the runner
    script: one process less per shard keeps many-shard tests quick."""
    project = make_project(root, suite)
    toml = project / "shards.toml"
    text = toml.read_text().replace(f"{PYTHON} run_checks.py {{items}}", f"{PYTHON} {{items}}")
    toml.write_text(text.replace("shards = 3", f"shards = {shards}"))
    git(project, "commit", "-qam", "one check per shard")
    return project


def names(count: int) -> List[str]:
    return [f"check_{n:02d}.py" for n in range(1, count + 1)]


def finish(agent: subprocess.Popen, timeout: float = 60) -> str:
    """Wait for an agent; its stdout and stderr together."""
    out, err = agent.communicate(timeout=timeout)
    return out + err


def ran_by_agent(output: str) -> Dict[int, str]:
    """Shard number -> final state, for each shard an agent says it ran."""
    return {
        int(n): state for n, state in re.findall(r"checks-shard-(\d+): (passed|failed)\b", output)
    }


def ran_count(output: str) -> int:
    found = re.search(r"ran (\d+) shard", output)
    assert found, output
    return int(found.group(1))


def audit_events(project: Path) -> List[dict]:
    root = Path(git(project, "rev-parse", "--git-common-dir"))
    root = root if root.is_absolute() else project / root
    log = root / "lokt" / "audit.log"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def record_outcomes(project: Path) -> Dict[int, str]:
    """Shard number -> outcome, read straight from the record files."""
    outcomes = {}
    for path in (project / ".git" / "lokt-tasks" / "checks").glob("*/shard-*.json"):
        try:
            outcomes[int(path.stem.split("-")[1])] = json.loads(path.read_text())["outcome"]
        except ValueError:
            pass  # being replaced right now
    return outcomes


def descendants(pid: int) -> Set[int]:
    """Every process below ``pid``, read from ps (Linux and macOS)."""
    table = subprocess.run(
        ["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True, check=True
    ).stdout
    children: Dict[int, List[int]] = {}
    for line in table.splitlines():
        child, parent = (int(field) for field in line.split())
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    state = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True
    ).stdout.strip()
    return bool(state) and not state.startswith("Z")


def kill_agent_and_its_commands(agent: subprocess.Popen) -> None:
    """SIGKILL an agent and every process it started, whatever their group:
    cleanup that does not wait for an attempt process to notice its agent is gone
    (the engine runs each shard's command in a session of its own)."""
    groups = {agent.pid}
    for pid in descendants(agent.pid):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    agent.wait(timeout=30)


def test_three_agents_started_apart_run_each_of_twelve_shards_exactly_once(tmp_path):
    suite = {
        name: SHORT_WORK.format(seconds=0.2 + 0.1 * (n % 3)) for n, name in enumerate(names(12))
    }
    project = queue_project(tmp_path / "p", suite, 12)
    agents = {}
    for name, delay in (("ann", 0.0), ("bob", 0.3), ("cy", 0.5)):
        time.sleep(delay)
        agents[name] = start_cli(project, "shard", "checks", "--id", "next", "--agent", name)
    outputs = {name: finish(agent) for name, agent in agents.items()}

    for name, agent in agents.items():
        assert agent.returncode == 0, outputs[name]
    assert Counter(ran(project)) == Counter(names(12))  # every check ran, none twice
    claimed = {name: ran_by_agent(output) for name, output in outputs.items()}
    assert sum(ran_count(output) for output in outputs.values()) == 12
    assert all(ran_count(outputs[name]) == len(claimed[name]) for name in agents)

    report = verdict(project)
    assert report["verdict"] == "passed", report
    record_agent = {row["shard"]: row["agent"] for row in report["shards"]}
    assert record_agent == {shard: name for name, shards in claimed.items() for shard in shards}

    # The lock audit log agrees: whoever ran a shard acquired its lock, and
    # an agent that acquired a lock without running the shard found it done.
    acquires = [e for e in audit_events(project) if e["event"] == "acquire"]
    for shard, name in record_agent.items():
        takers = [e["agent_id"] for e in acquires if e["name"] == f"checks-shard-{shard}"]
        assert name in takers, (shard, takers)
    assert not [
        e
        for e in audit_events(project)
        if e["event"] in ("auto-prune", "stale-break", "corrupt-break")
    ]


def test_a_shard_passed_over_while_held_is_run_by_a_survivor_once_its_holder_is_killed(tmp_path):
    suite = checks(names(4))
    suite["check_01.py"] = WAIT  # shard 1: its first agent is killed inside it
    project = queue_project(tmp_path / "p", suite, 4)
    doomed = start_cli(project, "shard", "checks", "--id", "next", "--agent", "doomed")
    survivors = []
    try:
        wait_for(lambda: "check_01.py" in ran(project))
        survivors = [
            start_cli(project, "shard", "checks", "--id", "next", "--agent", name)
            for name in ("bob", "cy")
        ]
        # Both survivors pass shard 1 over (held) and finish shards 2-4 meanwhile.
        wait_for(
            lambda: (
                record_outcomes(project) == {2: "passed", 3: "passed", 4: "passed", 1: "running"}
            )
        )

        # An agent told not to wait leaves at once, naming the holder.
        impatient = cli(
            project, "shard", "checks", "--id", "next", "--agent", "dan", "--wait-timeout", "0s"
        )
        assert impatient.returncode == 0, impatient.stderr
        assert ran_count(impatient.stdout) == 0
        assert "checks-shard-1 (held by agent doomed" in impatient.stdout

        # kill -9 of the agent's process group, as a CI timeout does: the
        # attempt process (in a session of its own) sees its agent gone and stops
        # the command. The gate opens only then, so that the orphaned
        # command cannot pass shard 1 on behalf of a dead agent.
        orphans = descendants(doomed.pid)
        kill_group(doomed)
        wait_for(lambda: not any(is_running(pid) for pid in orphans))
        open_gate(project, "check_01.py")
        outputs = [finish(agent) for agent in survivors]
    finally:
        for agent in [doomed, *survivors]:
            if agent.poll() is None:
                kill_agent_and_its_commands(agent)

    assert [agent.returncode for agent in survivors] == [0, 0], outputs
    report = verdict(project)
    assert report["verdict"] == "passed", report
    assert report["shards"][0]["agent"] in ("bob", "cy")
    assert Counter(ran(project)) == Counter(
        names(4) + ["check_01.py"]
    )  # shard 1 twice: killed, then run again
    pruned = [
        e
        for e in audit_events(project)
        if e["event"] == "auto-prune" and e["name"] == "checks-shard-1"
    ]
    assert len(pruned) == 1 and pruned[0]["extra"]["pruned_owner"].endswith("/doomed")


def test_twenty_per_item_shards_over_two_agents_each_run_once_and_a_failure_exits_3(tmp_path):
    suite = checks(names(20))
    suite["check_07.py"] = FAIL
    project = queue_project(tmp_path / "p", suite, '"per-item"')
    agents = {
        name: start_cli(project, "shard", "checks", "--id", "next", "--agent", name)
        for name in ("ann", "bob")
    }
    outputs = {name: finish(agent) for name, agent in agents.items()}

    assert Counter(ran(project)) == Counter(names(20))
    claimed = {name: ran_by_agent(output) for name, output in outputs.items()}
    assert sorted(shard for shards in claimed.values() for shard in shards) == list(range(1, 21))
    for name, agent in agents.items():
        ran_failing = claimed[name].get(7) == "failed"
        assert agent.returncode == (errors.FAILED if ran_failing else errors.PASSED), outputs[name]
    report = verdict(project)
    assert report["verdict"] == "failed"
    assert [row["shard"] for row in report["shards"] if row["state"] != "passed"] == [7]


@pytest.mark.skipif(
    shutil.which("lokt") is None,
    reason="lokt not on PATH: only the lokt engine runs an attempt process",
)
def test_a_shard_whose_attempt_process_is_killed_is_not_rerun_by_its_agent_but_by_the_next_one(
    tmp_path,
):
    """With lokt, the records are written by the attempt process inside `lokt
    guard`; the embedded engine writes them from the agent itself."""
    suite = checks(names(2))
    suite["check_01.py"] = WAIT
    project = queue_project(tmp_path / "p", suite, 2)
    agent = start_cli(
        project, "shard", "checks", "--id", "next", "--agent", "ann", "--engine", "lokt"
    )
    try:
        wait_for(lambda: "check_01.py" in ran(project))
        attempt = wait_for(
            lambda: [pid for pid in descendants(agent.pid) if _is_attempt(_cmdline(pid))]
        )
        # The attempt process and its command die, not the agent: the command
        # leads a process group of its own, beside lokt guard's.
        groups = {os.getpgid(pid) for pid in [attempt[0], *descendants(attempt[0])]}
        for group in groups:
            os.killpg(group, signal.SIGKILL)
        output = finish(agent)
    finally:
        if agent.poll() is None:
            kill_agent_and_its_commands(agent)
    assert agent.returncode == errors.INCOMPLETE, output
    assert "ran 2 shards (1 passed, 1 lost)" in output
    assert states(verdict(project)) == ["crashed", "passed"]

    open_gate(project, "check_01.py")
    again = start_cli(
        project, "shard", "checks", "--id", "next", "--agent", "bob", "--engine", "lokt"
    )
    output = finish(again)
    assert again.returncode == 0 and ran_count(output) == 1, output
    assert Counter(ran(project)) == Counter(names(2) + ["check_01.py"])
    assert verdict(project)["verdict"] == "passed"


def _is_attempt(command: bytes) -> bool:
    """The attempt process itself, not the `lokt guard` that runs it."""
    return b"from lokt_tasks.attempt import main" in command and b" guard " not in command


def _cmdline(pid: int) -> bytes:
    result = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True)
    return result.stdout
