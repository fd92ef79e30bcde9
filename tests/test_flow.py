"""The product end to end: shard, shard-all and verify in scratch git repositories."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
from scratch import (
    FAIL,
    PASS,
    WAIT,
    checks,
    cli,
    git,
    kill_group,
    lock_files,
    make_project,
    open_gate,
    ran,
    set_check,
    start_cli,
    states,
    verdict,
    wait_for,
)

from lokt_tasks import errors

SIX = [f"check_{n}.py" for n in range(1, 7)]


def test_shard_all_reports_the_failing_shard_then_one_rerun_completes_the_verdict(tmp_path):
    suite = checks(SIX)
    suite["check_4.py"] = FAIL  # sorted and dealt into 3 shards of 2: shard 2 holds checks 3 and 4
    project = make_project(tmp_path / "p", suite)
    env = {"LOKT_TASKS_RUN": "ci-42"}

    result = cli(project, "shard-all", "checks", "--jobs", "3", env=env)
    assert result.returncode == errors.FAILED, result.stderr
    assert "shard 2" in result.stdout or "checks-shard-2" in result.stdout
    assert "check failed on purpose" in result.stdout  # the failing shard's log tail
    report = verdict(project, env=env)
    assert report["verdict"] == "failed"
    assert states(report) == ["passed", "failed", "passed"]
    assert report["shards"][1]["exit_code"] == 1

    set_check(project, "check_4.py", PASS)
    result = cli(project, "shard", "checks", "--id", "2", env=env)
    assert result.returncode == errors.PASSED, result.stderr
    report = verdict(project, env=env)
    assert report["verdict"] == "passed" and report["exit_code"] == 0
    assert sorted(ran(project)) == sorted(SIX + ["check_3.py", "check_4.py"])


def test_agents_in_three_worktrees_share_one_verdict(tmp_path):
    project = make_project(tmp_path / "main", checks(SIX))
    worktrees = [project]
    for n in (2, 3):
        path = tmp_path / f"wt{n}"
        git(project, "worktree", "add", "-q", "-b", f"agent{n}", str(path))
        worktrees.append(path)
    for index, worktree in enumerate(worktrees, start=1):
        result = cli(worktree, "shard", "checks", "--id", str(index), "--agent", f"agent-{index}")
        assert result.returncode == 0, result.stderr
    for worktree in worktrees:
        report = verdict(worktree)
        assert report["verdict"] == "passed", report
        assert [row["agent"] for row in report["shards"]] == ["agent-1", "agent-2", "agent-3"]


def test_a_shard_held_by_another_agent_runs_nothing_and_names_the_holder(tmp_path):
    suite = checks(SIX)
    suite["check_1.py"] = WAIT
    project = make_project(tmp_path / "p", suite)
    first = start_cli(project, "shard", "checks", "--id", "1", "--agent", "alice")
    try:
        wait_for(lambda: "check_1.py" in ran(project))
        second = cli(project, "shard", "checks", "--id", "1", "--agent", "bob")
        assert second.returncode == errors.HELD
        assert "held" in second.stderr and "alice" in second.stderr
        assert ran(project) == ["check_1.py"]  # bob ran nothing
        assert states(verdict(project))[0] == "running"
    finally:
        open_gate(project, "check_1.py")
        first.wait(timeout=30)
    assert first.returncode == 0
    assert states(verdict(project))[0] == "passed"


@pytest.mark.parametrize(
    "engine",
    [
        "embedded",
        pytest.param(
            "lokt",
            marks=pytest.mark.skipif(shutil.which("lokt") is None, reason="lokt not on PATH"),
        ),
    ],
)
def test_a_command_that_exits_2_failed_it_was_not_held(tmp_path, engine):
    """lokt guard exits 2 when the lock is held, and with the command's own 2."""
    project = make_project(tmp_path / "p", checks(SIX), shards=1)
    (project / "run_checks.py").write_text("import sys\nprint('usage error')\nsys.exit(2)\n")
    git(project, "commit", "-qam", "exit 2")
    result = cli(project, "shard", "checks", "--id", "1", "--engine", engine)
    assert result.returncode == errors.FAILED, result.stderr
    assert "held" not in result.stderr
    report = verdict(project)
    assert states(report) == ["failed"] and report["shards"][0]["exit_code"] == 2
    assert lock_files(project) == []


def test_a_record_that_cannot_be_written_is_an_error_and_nothing_runs(tmp_path):
    project = make_project(tmp_path / "p", checks(SIX))
    record = project / ".git" / "lokt-tasks" / "checks" / "k1" / "shard-1.json"
    record.mkdir(parents=True)  # a directory where the record goes: no write can replace it
    result = cli(project, "shard", "checks", "--id", "1", "--run", "k1", "--engine", "embedded")
    assert result.returncode == errors.ENGINE, result.stderr
    assert "cannot write" in result.stderr and "shard-1.json" in result.stderr
    assert ran(project) == []
    assert lock_files(project) == []


def test_kill_9_mid_shard_is_crashed_never_passed_and_a_rerun_completes(tmp_path):
    suite = checks(SIX)
    suite["check_1.py"] = WAIT
    project = make_project(tmp_path / "p", suite)
    agent = start_cli(project, "shard", "checks", "--id", "1")
    wait_for(lambda: "check_1.py" in ran(project))
    kill_group(agent)  # the agent, its attempt process and its command, as a CI timeout would

    report = verdict(project)
    assert states(report)[0] == "crashed"
    assert report["verdict"] == "incomplete" and report["exit_code"] == errors.INCOMPLETE

    open_gate(project, "check_1.py")
    assert cli(project, "shard", "checks", "--id", "1").returncode == 0
    assert lock_files(project) == []
    for n in (2, 3):
        assert cli(project, "shard", "checks", "--id", str(n)).returncode == 0
    assert verdict(project)["verdict"] == "passed"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_shard_all_stopped_by_a_signal_records_interrupted_and_releases_every_lock(
    tmp_path, sig, code
):
    project = make_project(tmp_path / "p", checks(SIX, WAIT))
    agent = start_cli(project, "shard-all", "checks", "--jobs", "3")
    wait_for(lambda: len(ran(project)) == 3)
    agent.send_signal(sig)
    agent.wait(timeout=30)
    assert agent.returncode == code
    assert lock_files(project) == []
    report = verdict(project)
    assert states(report) == ["interrupted"] * 3
    assert report["verdict"] == "incomplete"


def test_a_second_shard_all_runs_nothing_and_failed_reruns_only_the_failed_shard(tmp_path):
    project = make_project(tmp_path / "p", checks(SIX))
    env = {"LOKT_TASKS_RUN": "resume"}
    assert cli(project, "shard-all", "checks", env=env).returncode == 0
    again = cli(project, "shard-all", "checks", env=env)
    assert again.returncode == 0
    assert "nothing to run" in again.stdout
    assert len(ran(project)) == 6

    set_check(project, "check_6.py", FAIL)
    forced = cli(project, "shard", "checks", "--id", "3", "--force", env=env)
    assert forced.returncode == errors.FAILED
    set_check(project, "check_6.py", PASS)
    (project / "ran.log").unlink()
    rerun = cli(project, "shard-all", "checks", "--failed", env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(ran(project)) == ["check_5.py", "check_6.py"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["shard", "checks", "--id", "4"], "--id 4 is out of range"),
        (["shard", "checks", "--id", "0"], "--id 0 is out of range"),
        (["shard", "checks", "--id", "two"], "--id must be a shard number"),
        (["shard", "checks"], "shard needs --id"),
        (["shard", "nope", "--id", "1"], "unknown task 'nope'"),
        (["verify", "checks", "--shards", "x"], "--shards must be a whole number"),
        (["shard-all", "checks", "--jobs", "0"], "--jobs must be at least 1"),
        (["verify", "checks", "--wait", "--wait-timeout", "10"], "unit"),
    ],
)
def test_bad_command_lines_are_one_line_usage_errors_and_run_nothing(tmp_path, args, fragment):
    project = make_project(tmp_path / "p", checks(SIX))
    result = cli(project, *args)
    assert result.returncode == errors.USAGE, result.stderr
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert ran(project) == []


def test_verify_junit_has_one_testcase_per_shard(tmp_path):
    import xml.etree.ElementTree as ET

    suite = checks(SIX)
    suite["check_2.py"] = FAIL
    project = make_project(tmp_path / "p", suite)
    cli(project, "shard", "checks", "--id", "1", "--log")
    junit = tmp_path / "verdict.xml"
    result = cli(project, "verify", "checks", "--junit", str(junit))
    assert result.returncode == errors.FAILED
    cases = ET.parse(junit).getroot().iter("testcase")
    outcome = {case.get("name"): [child.tag for child in case] for case in cases}
    assert outcome == {"shard-1": ["failure"], "shard-2": ["error"], "shard-3": ["error"]}


def test_plan_json_lists_every_item_once(tmp_path):
    project = make_project(tmp_path / "p", checks(SIX))
    result = cli(project, "plan", "checks", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    items = [item for shard in plan["shards"] for item in shard["items"]]
    assert sorted(items) == sorted(f"checks/{name}" for name in SIX)
    assert ran(project) == []


def test_an_agent_refused_the_lock_leaves_the_holders_log_alone(tmp_path):
    suite = checks(SIX)
    suite["check_1.py"] = "print('holder output', flush=True)\n" + WAIT
    project = make_project(tmp_path / "p", suite)
    holder = start_cli(project, "shard", "checks", "--id", "1", "--log", "--agent", "alice")
    try:
        wait_for(lambda: "check_1.py" in ran(project))
        log = wait_for(lambda: verdict(project)["shards"][0]["log"])
        wait_for(lambda: "holder output" in open(log).read())
        refused = cli(project, "shard", "checks", "--id", "1", "--log", "--agent", "bob")
        assert refused.returncode == errors.HELD
        assert "holder output" in open(log).read()
    finally:
        open_gate(project, "check_1.py")
        holder.wait(timeout=30)
    assert holder.returncode == 0
    assert "holder output" in open(log).read()
