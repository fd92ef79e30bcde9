"""Storage that is not a plain file or a trusted directory: one line, an exit code, no hang.

A FIFO, a symbolic link or a directory where a record, log or lock belongs,
a results directory that another user could write, names too long for a
file name: each gets one line naming the path and its exit code (2 for bad
input found before running, 6 for storage), nothing half done, no
traceback, and never a hang (every command here has a time limit).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from scratch import checks, cli, lock_files, make_project, ran

from lokt_tasks import errors

ENGINES = [
    "embedded",
    pytest.param(
        "lokt", marks=pytest.mark.skipif(shutil.which("lokt") is None, reason="lokt not on PATH")
    ),
]
LIMIT = 30  # seconds: a command that hangs fails the test instead


@pytest.fixture
def project(tmp_path):
    return make_project(
        tmp_path / "p", checks(["check_1.py", "check_2.py", "check_3.py"]), shards=3
    )


@pytest.fixture
def results(tmp_path):
    return tmp_path / "results"


def run_dir(results: Path) -> Path:
    path = results / "checks" / "r1"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lokt_tasks(project, results, *args, engine="embedded"):
    return cli(
        project, *args, "--run", "r1", "--results", str(results), "--engine", engine, timeout=LIMIT
    )


def shard_1_under(project, root, engine):
    """``shard checks --id 1`` with its locks (and audit log) under ``root``."""
    env = {"LOKT_ROOT": str(root)}
    return cli(project, "shard", "checks", "--id", "1", "--engine", engine, env=env, timeout=LIMIT)


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("lokt-tasks: error: "), result.stderr
    return lines[0]


def test_a_fifo_at_a_record_path_is_a_corrupt_record_not_a_hang(project, results):
    os.mkfifo(run_dir(results) / "shard-1.json")
    result = cli(
        project,
        "verify",
        "checks",
        "--json",
        "--run",
        "r1",
        "--results",
        str(results),
        timeout=LIMIT,
    )
    assert result.returncode == errors.INCOMPLETE, result.stderr
    row = json.loads(result.stdout)["shards"][0]
    assert row["state"] == "corrupt" and "not a regular file" in row["detail"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("what", ["fifo", "symlink", "directory"])
def test_a_log_path_that_is_not_a_regular_file_runs_nothing(
    project, results, tmp_path, engine, what
):
    log = run_dir(results) / "shard-1.log"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    {
        "fifo": lambda: os.mkfifo(log),
        "symlink": lambda: log.symlink_to(victim),
        "directory": lambda: log.mkdir(),
    }[what]()

    result = lokt_tasks(project, results, "shard", "checks", "--id", "1", "--log", engine=engine)

    assert result.returncode == errors.ENGINE, result.stderr
    assert str(log) in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert ran(project) == []
    assert victim.read_text() == "precious\n"
    assert lock_files(project) == []
    assert (
        not (run_dir(results) / "shard-1.json").exists()
        or json.loads((run_dir(results) / "shard-1.json").read_text())["outcome"] != "passed"
    )


def test_a_symlink_at_audit_log_is_never_written_through(project, tmp_path):
    """(The embedded engine's audit lines; lokt writes its own.)"""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    root = tmp_path / "lock-root"
    root.mkdir()
    (root / "audit.log").symlink_to(victim)

    result = shard_1_under(project, root, "embedded")

    assert result.returncode == errors.PASSED, result.stderr
    assert "audit log write failed" in result.stderr and "symbolic link" in result.stderr
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_fifo_at_a_lock_path_is_an_error_naming_it(project, tmp_path, engine):
    root = tmp_path / "lock-root"
    (root / "locks").mkdir(parents=True)
    os.mkfifo(root / "locks" / "checks-shard-1.json")

    result = shard_1_under(project, root, engine)

    assert result.returncode == errors.ENGINE, result.stderr
    assert "checks-shard-1.json" in one_line_error(result)
    assert ran(project) == []


def test_a_results_directory_that_cannot_be_made_is_one_line(project, results):
    results.mkdir()
    (results / "checks").write_text("a file where a directory belongs")
    result = lokt_tasks(project, results, "shard-all", "checks")
    assert result.returncode == errors.ENGINE, result.stderr
    assert str(results / "checks") in one_line_error(result)
    assert ran(project) == []


def test_verify_junit_creates_its_directory(project, results):
    report = project / "reports" / "sub" / "verdict.xml"
    results.mkdir()  # NOTE: a --results directory that does not exist is refused
    result = cli(
        project,
        "verify",
        "checks",
        "--junit",
        str(report),
        "--run",
        "r1",
        "--results",
        str(results),
        timeout=LIMIT,
    )
    assert result.returncode == errors.INCOMPLETE, result.stderr
    assert report.read_text().startswith("<?xml")


def test_a_run_key_too_long_for_a_directory_name_is_refused_before_running(project, results):
    key = "\u00e9" * 100  # 100 characters, 600 bytes once escaped
    result = cli(
        project, "shard-all", "checks", "--run", key, "--results", str(results), timeout=LIMIT
    )
    assert result.returncode == errors.USAGE
    assert "too long once escaped" in one_line_error(result)
    assert ran(project) == [] and not results.exists()


def test_a_task_name_too_long_for_a_lock_name_is_a_config_error(tmp_path):
    name = "t" * 220
    project = make_project(tmp_path / "p", checks(["check_1.py"]), shards=1, task=name)
    result = cli(project, "plan", name, timeout=LIMIT)
    assert result.returncode == errors.USAGE
    assert "at most 200 characters" in one_line_error(result)


@pytest.mark.parametrize("mode, trusted", [(0o777, False), (0o1777, True), (0o775, True)])
def test_a_results_directory_every_user_can_write_is_not_trusted(project, results, mode, trusted):
    results.mkdir()
    os.chmod(results, mode)
    result = lokt_tasks(project, results, "shard-all", "checks")
    if trusted:
        assert result.returncode == errors.PASSED, result.stderr
    else:
        assert result.returncode == errors.ENGINE
        assert "writable by every user (mode 0777)" in one_line_error(result)
        assert ran(project) == []


@pytest.mark.skipif(shutil.which("lokt") is None, reason="lokt not on PATH")
@pytest.mark.parametrize("what", ["fifo", "symlink"])
def test_lokt_is_never_handed_an_audit_log_it_would_hang_on_or_write_through(
    project, tmp_path, what
):
    """lokt itself blocks on a FIFO at audit.log and follows a link there."""
    root = tmp_path / "lock-root"
    root.mkdir()
    victim = tmp_path / "victim"
    if what == "fifo":
        os.mkfifo(root / "audit.log")
    else:
        (root / "audit.log").symlink_to(victim)

    result = shard_1_under(project, root, "lokt")

    assert result.returncode == errors.ENGINE, result.stderr
    assert "audit.log: is not a regular file" in one_line_error(result)
    assert ran(project) == [] and not victim.exists()
