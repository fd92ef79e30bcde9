"""Test-level results end to end, on both engines: a real pytest suite in 3 shards.

Each shard's command writes its JUnit report (``{junit}``); ``verify`` names
the failing tests, ``verify --junit`` merges every test of every shard into one
report (parsed here with junitparser, and counted against an unsharded run),
``shard-all --failed-tests`` reruns only the failing tests, ``retries`` reruns
them inside the shard's lock, and a test that passed only on a retry is flaky.
A shard that crashed or never ran is a failing test case of its own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from junitparser import Error, Failure, JUnitXml
from scratch import (
    FAIL,
    PASS,
    PYTHON,
    SUITE,
    cli,
    commit_new_repository,
    kill_group,
    make_project,
    pytest_project,
    start_cli,
    verdict,
    wait_for,
)

from lokt_tasks import errors

ENGINES = [
    "embedded",
    pytest.param(
        "lokt",
        marks=pytest.mark.skipif(shutil.which("lokt") is None, reason="lokt not on PATH"),
    ),
]

#: Two tests that fail until $FIXED is set: one sorts into shard 1, one into shard 3.
BROKEN = {
    "tests/test_alpha_broken.py": """\
import os

def test_broken():
    assert os.environ.get("FIXED"), "alpha is broken"
""",
    "tests/test_zeta.py": """\
import os

def test_ok():
    pass

def test_broken_too():
    assert os.environ.get("FIXED"), "zeta is broken too"
""",
}
BROKEN_IDS = {"tests/test_alpha_broken.py::test_broken", "tests/test_zeta.py::test_broken_too"}

#: Fails the first time it runs in a project, passes after (a flag file remembers).
FLAKY = {
    "tests/test_flaky.py": """\
from pathlib import Path

def test_flaky():
    flag = Path(__file__).parent.parent / "flaky.flag"
    if not flag.exists():
        flag.write_text("")
        assert False, "fails the first time"
"""
}
FLAKY_ID = "tests/test_flaky.py::test_flaky"


#: A task whose items are the suite's files (no collect command: quicker to plan).
FILES = """
[tasks.files]
run = "{python} -m pytest -q -p no:cacheprovider --junitxml={junit} {items}"
glob = ["tests/test_*.py"]
shards = 3
"""


def ran(project: Path) -> List[str]:
    log = project / "ran.log"
    return log.read_text().splitlines() if log.exists() else []


def unsharded_count(project: Path, tmp_path: Path) -> int:
    """The tests of a plain pytest run of the whole suite, by its own JUnit report."""
    report = tmp_path / "unsharded.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml"]
    subprocess.run([*command, str(report)], cwd=project, capture_output=True, check=False)
    (project / "ran.log").unlink()
    return JUnitXml.fromfile(str(report)).tests


def shard_of(project: Path) -> Dict[str, int]:
    plan = json.loads(cli(project, "plan", "unit", "--json").stdout)
    return {item: shard["index"] for shard in plan["shards"] for item in shard["items"]}


def cases(junit: Path) -> Dict[str, list]:
    """Each test case of a JUnit file, ``classname::name``: its results' tags."""
    found = {}
    for suite in JUnitXml.fromfile(str(junit)):
        for case in suite:
            found[f"{case.classname}::{case.name}"] = [type(r).__name__ for r in case.result]
    return found


def node(case_name: str) -> str:
    """``tests.test_x::test_a`` -> ``tests/test_x.py::test_a`` (pytest's classnames)."""
    module, _, name = case_name.partition("::")
    return module.replace(".", "/") + ".py::" + name


@pytest.mark.parametrize("engine", ENGINES)
def test_two_failing_tests_are_named_merged_and_rerun_alone(tmp_path, engine):
    project = pytest_project(tmp_path / "p", BROKEN)
    total = unsharded_count(project, tmp_path)
    assert total == 14 + 3
    where = shard_of(project)
    assert len({where[test] for test in BROKEN_IDS}) == 2  # in two different shards
    env = {"LOKT_TASKS_RUN": "ci-1"}

    result = cli(project, "shard-all", "unit", "--engine", engine, env=env)
    assert result.returncode == errors.FAILED, result.stdout + result.stderr
    shown = cli(project, "verify", "unit", "--junit", "reports/sub/verdict.xml", env=env)
    assert shown.returncode == errors.FAILED
    for test in BROKEN_IDS:
        line = next(line for line in shown.stdout.splitlines() if test in line)
        assert f"shard {where[test]}" in line, shown.stdout
    assert "alpha is broken" in shown.stdout and "zeta is broken too" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()[:5]) <= 80

    merged = cases(project / "reports" / "sub" / "verdict.xml")
    assert len(merged) == total
    failing = {node(name) for name, tags in merged.items() if tags}
    assert failing == BROKEN_IDS
    assert all(tags == ["Failure"] for tags in merged.values() if tags)
    document = JUnitXml.fromfile(str(project / "reports" / "sub" / "verdict.xml"))
    assert (document.tests, document.failures, document.errors) == (total, 2, 0)

    report = verdict(project, "unit", "--junit", "reports/sub/again.xml", env=env)
    assert (project / "reports" / "sub" / "again.xml").read_bytes() == (
        project / "reports" / "sub" / "verdict.xml"
    ).read_bytes()
    assert report["version"] == 2
    assert {t["id"] for t in report["tests"] if t["outcome"] == "failed"} == BROKEN_IDS
    assert report["test_counts"]["passed"] == total - 2

    # Records and reports copied elsewhere (a CI's artifacts) tell the same.
    copy = tmp_path / "artifacts"
    shutil.copytree(project / ".git" / "lokt-tasks", copy, copy_function=shutil.copyfile)
    elsewhere = verdict(project, "unit", "--results", str(copy), env=env)
    assert elsewhere["tests"] == report["tests"]

    rerun = cli(
        project,
        "shard-all",
        "unit",
        "--failed-tests",
        "--engine",
        engine,
        env={**env, "FIXED": "1"},
    )
    assert rerun.returncode == errors.PASSED, rerun.stdout + rerun.stderr
    assert sorted(ran(project)[total:]) == sorted(BROKEN_IDS)  # exactly those 2 tests
    after = verdict(project, "unit", "--junit", str(tmp_path / "after.xml"), env=env)
    assert after["verdict"] == "passed" and after["exit_code"] == 0
    again = {t["id"]: t for t in after["tests"]}
    assert all(again[test]["rerun"] == 1 and again[test]["flaky"] for test in BROKEN_IDS)
    assert [rerun["verdict"] for rerun in after["reruns"]] == ["passed"]
    folded = cases(tmp_path / "after.xml")
    assert len(folded) == total and not any(tags for tags in folded.values())


def test_a_rerun_older_than_a_shard_run_again_never_passes_its_new_failure(tmp_path):
    """A failed test passes on a rerun; the shard runs again (--force) and the
    test fails again: the verdict fails (the old rerun is older than the new
    record), and the next --failed-tests makes a new rerun and runs it."""
    project = pytest_project(tmp_path / "p", BROKEN)
    env, fixed = {"LOKT_TASKS_RUN": "ci-2"}, {"LOKT_TASKS_RUN": "ci-2", "FIXED": "1"}
    assert cli(project, "shard-all", "unit", env=env).returncode == errors.FAILED
    assert cli(project, "shard-all", "unit", "--failed-tests", env=fixed).returncode == 0
    again = cli(project, "shard-all", "unit", "--force", env=env)
    assert again.returncode == errors.FAILED, again.stdout
    report = verdict(project, "unit", env=env)
    assert report["verdict"] == "failed"
    assert {t["id"] for t in report["tests"] if t["outcome"] == "failed"} == BROKEN_IDS
    before = len(ran(project))
    still = cli(project, "shard-all", "unit", "--failed-tests", env=env)
    assert still.returncode == errors.FAILED, still.stdout
    assert sorted(ran(project)[before:]) == sorted(BROKEN_IDS)  # rerun 2, not rerun 1 joined
    assert [r["rerun"] for r in verdict(project, "unit", env=env)["reruns"]] == [1, 2]
    assert cli(project, "shard-all", "unit", "--failed-tests", env=fixed).returncode == 0
    assert verdict(project, "unit", env=env)["verdict"] == "passed"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("policy, code", [("pass", errors.PASSED), ("fail", errors.FAILED)])
def test_a_test_that_fails_once_passes_on_a_retry_and_is_flaky(tmp_path, engine, policy, code):
    toml = FILES + f'retries = 1\nflaky = "{policy}"\n'
    project = pytest_project(tmp_path / "p", FLAKY, toml=toml)
    result = cli(project, "shard-all", "files", "--engine", engine)
    assert result.returncode == code, result.stdout + result.stderr
    assert ran(project).count(FLAKY_ID) == 2  # ran, failed, ran again
    assert len(ran(project)) == 15 + 1  # nothing else ran twice

    shown = cli(project, "verify", "files", "--junit", "verdict.xml")
    assert shown.returncode == code
    assert "flaky tests (1):" in shown.stdout and FLAKY_ID in shown.stdout
    assert "+1 flaky" in shown.stdout

    report = verdict(project, "files")
    test = next(t for t in report["tests"] if t["id"] == FLAKY_ID)
    assert (test["outcome"], test["flaky"], test["runs"]) == ("passed", True, 2)
    assert test["message"] == "AssertionError: fails the first time"
    row = next(row for row in report["shards"] if row["tests"]["flaky"])
    assert row["retries"] == 1 and row["state"] == ("passed" if policy == "pass" else "failed")

    document = JUnitXml.fromfile(str(project / "verdict.xml"))
    # With flaky = "fail" the shard failed though every test passed last: a
    # failing test case of its own says so, or the CI's test tab would be green.
    assert (document.tests, document.failures) == ((15, 0) if policy == "pass" else (16, 1))
    flaky = [
        case
        for suite in document
        for case in suite
        if f"{case.classname}::{case.name}" == "tests.test_flaky::test_flaky"
    ]
    assert len(flaky) == 1 and flaky[0].is_passed  # a pass, with its earlier failure kept
    earlier = flaky[0]._elem.find("flakyFailure")
    assert earlier is not None and earlier.get("message") == "AssertionError: fails the first time"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_crashed_and_a_missing_shard_are_failing_cases_in_the_merged_junit(tmp_path, engine):
    gate = tmp_path / "gate"
    waits = {
        "tests/test_aaa_wait.py": f"""\
import os, time

def test_waits():
    deadline = time.time() + 60
    while not os.path.exists({str(gate)!r}) and time.time() < deadline:
        time.sleep(0.05)
"""
    }
    project = pytest_project(tmp_path / "p", waits, toml=FILES)
    agent = start_cli(project, "shard", "files", "--id", "1", "--engine", engine)
    try:
        wait_for(lambda: "tests/test_aaa_wait.py::test_waits" in ran(project))
        kill_group(agent)  # kill -9: the agent and what runs in its process group
        wait_for(lambda: verdict(project, "files")["shards"][0]["state"] == "crashed")
    finally:
        kill_group(agent)
        gate.write_text("")
    third = cli(project, "shard", "files", "--id", "3", "--engine", engine)
    assert third.returncode == errors.PASSED, third.stderr

    junit = tmp_path / "verdict.xml"
    result = cli(project, "verify", "files", "--junit", str(junit))
    assert result.returncode == errors.INCOMPLETE
    document = JUnitXml.fromfile(str(junit))
    suites = {suite.name: suite for suite in document}
    assert set(suites) == {"files.shard-1", "files.shard-2", "files.shard-3"}
    shards = (("files.shard-1", "crashed", True), ("files.shard-2", "missing", False))
    for name, state, agent in shards:
        [case] = list(suites[name])
        assert case.name == name.split(".")[1]
        [problem] = case.result
        assert isinstance(problem, Error) and problem.type == state
        properties = {p.name: p.value for p in suites[name].properties()}
        assert properties["state"] == state and properties["shard"] == name[-1]
        assert bool(properties["agent"]) == agent  # a missing shard: nobody ran it
    passed = list(suites["files.shard-3"])
    assert len(passed) == len(verdict(project, "files")["tests"]) > 1
    assert all(case.is_passed for case in passed)
    assert document.errors == 2 and document.failures == 0


#: The suite's conftest, and a hook that ends pytest before it writes a report.
DIES = {
    "conftest.py": SUITE["conftest.py"]
    + """
import os

def pytest_configure(config):
    if os.environ.get("DIE") and config.option.xmlpath:  # a shard's run, not the collect
        os._exit(7)
"""
}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_report_an_earlier_attempt_left_is_never_read_as_this_records(tmp_path, engine):
    """The first attempt passes and leaves its report; the second dies before
    pytest writes one. The shard is failed, with no tests, not the first's."""
    project = pytest_project(tmp_path / "p", DIES, toml=FILES)
    env = {"LOKT_TASKS_RUN": "k"}
    first = cli(project, "shard", "files", "--id", "1", "--engine", engine, env=env)
    assert first.returncode == errors.PASSED, first.stderr
    report = project / ".git" / "lokt-tasks" / "files" / "k" / "shard-1.junit.xml"
    assert report.exists() and verdict(project, "files", env=env)["tests"]
    again = {**env, "DIE": "1"}
    second = cli(project, "shard", "files", "--id", "1", "--force", "--engine", engine, env=again)
    assert second.returncode == errors.FAILED
    assert not report.exists()  # removed inside the lock, before the command started
    shown = verdict(project, "files", "--junit", str(tmp_path / "v.xml"), env=env)
    row = shown["shards"][0]
    assert (row["state"], row["exit_code"], row["test_problem"]) == (
        "failed",
        7,
        "its command left no report",
    )
    assert set(row["tests"].values()) == {0} and shown["tests"] == []
    junit = tmp_path / "v.xml"
    suite = next(suite for suite in JUnitXml.fromfile(str(junit)) if suite.name.endswith("-1"))
    [case] = list(suite)
    assert case.name == "shard-1" and isinstance(case.result[0], Failure)
    assert "its command left no report" in case.result[0].message


def go_like_project(root: Path) -> Path:
    """A runner that takes test names joined into ``-run '^(A|B)$'`` (as go test
    does) and writes a report whose tests have a package, a name and no file;
    ``names`` lists the tests, ``fail`` makes TestB fail until $FIXED is set."""
    root.mkdir(parents=True)
    (root / "runner.py").write_text(
        """\
import os, re, sys
args = sys.argv[1:]
pattern, report = args[args.index("-run") + 1], args[args.index("--junit") + 1]
names = [n for n in ("TestA", "TestB", "TestC", "TestD") if re.fullmatch(pattern, n)]
with open("ran.log", "a") as log:
    log.writelines(name + "\\n" for name in names)
failed = [n for n in names if n == "TestB" and not os.environ.get("FIXED")]
cases = "".join(
    '<testcase classname="example.com/pkg" name="%s">%s</testcase>'
    % (n, '<failure message="TestB is broken"/>' if n in failed else "")
    for n in names
)
open(report, "w").write("<testsuites><testsuite>%s</testsuite></testsuites>" % cases)
sys.exit(1 if failed else 0)
"""
    )
    (root / "names.txt").write_text("TestA\nTestB\nTestC\nTestD\n")
    (root / "shards.toml").write_text(
        '[defaults]\nengine = "embedded"\n\n'
        "[tasks.go]\n"
        f'collect = "{PYTHON} -c \'print(open(\\"names.txt\\").read())\'"\n'
        "run = \"{python} runner.py -run '^({items:|})$' --junit {junit}\"\n"
        "shards = 2\n"
        "[tasks.whole]\n"
        f'collect = "{PYTHON} -c \'print(open(\\"names.txt\\").read())\'"\n'
        "run = \"{python} runner.py -run '.*' --junit {junit} {items}\"\n"
        "shards = 2\n"
    )
    (root / ".gitignore").write_text("ran.log\n")
    commit_new_repository(root)
    return root


def test_go_test_names_go_back_joined_and_whole_items_need_a_file(tmp_path):
    project = go_like_project(tmp_path / "go")
    env = {"LOKT_TASKS_RUN": "g"}
    assert cli(project, "shard-all", "go", env=env).returncode == errors.FAILED
    names = verdict(project, "go", env=env)
    assert [t["id"] for t in names["tests"] if t["outcome"] == "failed"] == [
        "example.com/pkg::TestB"
    ]
    (project / "ran.log").unlink()
    rerun = cli(project, "shard-all", "go", "--failed-tests", env={**env, "FIXED": "1"})
    assert rerun.returncode == errors.PASSED, rerun.stdout + rerun.stderr
    assert (project / "ran.log").read_text() == "TestB\n"

    assert cli(project, "shard-all", "whole", env=env).returncode == errors.FAILED
    refused = cli(project, "shard-all", "whole", "--failed-tests", env=env)
    assert refused.returncode == errors.CANNOT_RERUN, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "lokt-tasks: error: cannot rerun the failed tests of task 'whole': test"
        " 'example.com/pkg::TestB' names no file in its report, and a command that takes"
        " whole items ({items}) is given tests as pytest node ids (file::test)"
    ]


def test_verify_junit_to_a_path_that_cannot_be_written_is_one_line_and_exit_6(tmp_path):
    project = pytest_project(tmp_path / "p")
    (tmp_path / "file").write_text("")
    result = cli(project, "verify", "unit", "--junit", str(tmp_path / "file" / "v.xml"))
    assert result.returncode == errors.ENGINE
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "file") in result.stderr


def test_retries_need_a_report_in_the_command(tmp_path):
    project = pytest_project(tmp_path / "p")
    toml = (project / "shards.toml").read_text().replace("--junitxml={junit} ", "")
    (project / "shards.toml").write_text(toml + "retries = 2\n")
    result = cli(project, "plan", "unit")
    assert result.returncode == errors.USAGE
    assert result.stderr.strip() == (
        "lokt-tasks: error: shards.toml: tasks.unit.retries: needs {junit} in run: the failing"
        " tests are read from the command's JUnit report (task 'unit')"
    )


def test_failed_tests_of_a_task_without_reports_are_unknown_exit_7(tmp_path):
    project = make_project(tmp_path / "p", {"check_1.py": FAIL, "check_2.py": PASS}, shards=2)
    assert cli(project, "shard-all", "checks").returncode == errors.FAILED
    result = cli(project, "shard-all", "checks", "--failed-tests")
    assert result.returncode == errors.CANNOT_RERUN
    assert result.stderr.strip().splitlines() == [
        "lokt-tasks: error: task 'checks' writes no JUnit report ({junit} in run), so its"
        " failed tests are not known; 'shard-all checks --failed' reruns shards"
    ]
    both = cli(project, "shard-all", "checks", "--failed", "--failed-tests")
    assert both.returncode == errors.USAGE and "cannot be combined" in both.stderr
