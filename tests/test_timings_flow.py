"""Plans that change between runs: recorded timings, --shards, CI totals.

The timings project's runner does not sleep: each timed file lists its tests
and how long each "takes" (``test_it 4.0``), and the runner reports those
times in a JUnit XML file, as a test runner would, so the expected durations
are exact and the tests stay fast. Interruptions, layouts and the collect
recipe are tried with real pytest suites.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Dict, Mapping, Union

import pytest
from scratch import (
    PYTHON,
    checks,
    cli,
    commit_new_repository,
    git,
    make_project,
    ran,
    start_cli,
    states,
    verdict,
    wait_for,
)

from lokt_tasks import errors

# A backslash at the end of a line inside TIMED_RUNNER joins the next line to it.
TIMED_RUNNER = """\
import sys
from xml.sax.saxutils import quoteattr
junit, items = sys.argv[1], sys.argv[2:]
cases = []
with open("ran.log", "a") as log:
    for item in items:
        log.write(item + "\\n")
        with open(item) as source:
            for line in source:
                name, seconds = line.split()
                cases.append('<testcase classname="timed" name=%s file=%s time="%s"/>' \
% (quoteattr(name), quoteattr(item), seconds))
with open(junit, "w") as report:
    report.write('<testsuites><testsuite name="timed">%s</testsuite></testsuites>' % "".join(cases))
"""

TIMED_TASK = f"""
[tasks.timed]
run = "{PYTHON} timed_runner.py {{junit}} {{items}}"
glob = ["timed/t_*.py"]
shards = 2
split = "timings"
durations = "durations.json"
"""

FIRST_TIMES = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0, "e": 1.0, "f": 1.0}

Times = Union[float, Mapping[str, float]]


def timed_project(root: Path, times: Mapping[str, Times], durations: str = "{}\n") -> Path:
    """A committed project whose task ``timed`` runs the timed files of ``times``
    (a file's one test ``test_it``, or its tests by name), with ``durations``
    as its committed durations file."""
    project = make_project(root, checks(["check_1.py"]), extra_toml=TIMED_TASK)
    (project / "timed_runner.py").write_text(TIMED_RUNNER)
    (project / "timed").mkdir()
    for name, seconds in times.items():
        set_time(project, name, seconds)
    (project / "durations.json").write_text(durations)
    (project / ".gitignore").write_text("ran.log\n*.go\n*.json.lock\n")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "timed suite")
    return project


def set_time(project: Path, name: str, times: Times) -> None:
    tests = times if isinstance(times, Mapping) else {"test_it": times}
    lines = "".join(f"{test} {seconds}\n" for test, seconds in tests.items())
    (project / "timed" / f"t_{name}.py").write_text(lines)


def item(name: str) -> str:
    return f"timed/t_{name}.py"


def plan_json(project: Path, *args: str, env: Dict[str, str] = None) -> dict:
    result = cli(project, "plan", *args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_key(output: str) -> str:
    found = re.search(r"; run (\S+);", output)
    assert found, output
    return found.group(1)


def local_times(project: Path, task: str = "timed") -> dict:
    """The times runs recorded in the project's results directory, by item."""
    store = project / ".git" / "lokt-tasks" / task / ".durations.json"
    data = json.loads(store.read_text())
    assert data["version"] == 2
    return data["tasks"][task]


def committed_times(project: Path, task: str = "timed", name: str = "durations.json") -> dict:
    data = json.loads((project / name).read_text())
    assert data["version"] == 2
    return data["tasks"][task]


def one_sample_each(times: Mapping[str, float]) -> dict:
    return {item(name): {"test_it": [seconds]} for name, seconds in times.items()}


def test_runs_record_times_outside_the_checkout_and_durations_folds_them_in(tmp_path):
    project = timed_project(tmp_path / "p", FIRST_TIMES)

    first = cli(project, "shard-all", "timed")
    assert first.returncode == 0, first.stdout + first.stderr
    assert git(project, "status", "--porcelain") == ""  # the checkout stays clean
    assert local_times(project) == one_sample_each(FIRST_TIMES)

    # This run pinned the (empty) committed timings when it started, so its
    # plan weighs file sizes; plan says so, and --current plans from the times
    # recorded since, as the next run will.
    pinned = cli(project, "plan", "timed")
    assert pinned.returncode == 0, pinned.stderr
    assert f"timings: the copy pinned when run {run_key(first.stdout)} started" in pinned.stdout
    assert plan_json(project, "timed")["stats"]["unit"] == "bytes"
    current = plan_json(project, "timed", "--current")
    assert current["pinned_by_run"] is None and current["stats"]["unit"] == "seconds"
    assert sorted(shard["estimate"] for shard in current["shards"]) == [6.0, 6.0]
    assert "timings: the copy" not in cli(project, "plan", "timed", "--current").stdout

    folded = cli(project, "durations", "timed")
    assert folded.returncode == 0, folded.stderr
    assert folded.stdout.strip().endswith(
        "2 reports folded in (6 test times, 6 items); rewritten"
    ), folded.stdout
    assert committed_times(project) == one_sample_each(FIRST_TIMES)
    assert git(project, "status", "--porcelain") == "M durations.json"

    again = cli(project, "durations", "timed")
    assert again.returncode == 0, again.stderr
    assert "2 reports already folded in before; unchanged" in again.stdout
    assert committed_times(project) == one_sample_each(FIRST_TIMES)

    no_reports = cli(project, "durations", "checks")  # its command writes no JUnit report
    assert no_reports.returncode == errors.USAGE
    assert no_reports.stderr.strip().splitlines()[-1] == (
        "lokt-tasks: error: task 'checks' writes no JUnit report, so there are no times to fold:"
        " give its run a report path, as in --junitxml={junit}"
    )


def test_plan_shows_the_split_the_run_uses_while_the_timings_change(tmp_path):
    times = {item(name): {"test_it": [seconds]} for name, seconds in FIRST_TIMES.items()}
    committed = json.dumps({"version": 2, "tasks": {"timed": times}}, indent=2) + "\n"
    project = timed_project(tmp_path / "p", FIRST_TIMES, durations=committed)
    set_time(project, "f", 7.0)  # one check got slow; the committed times do not know yet
    git(project, "commit", "-qam", "f got slow")

    before = plan_json(project, "timed")  # no run yet: what the next run will pin
    assert before["pinned_by_run"] is None
    run = cli(project, "shard-all", "timed")
    assert run.returncode == 0, run.stdout + run.stderr
    key = run_key(run.stdout)

    # The run recorded f's new time, which would split differently now; but
    # plan, verify and every shard of this run keep to the pinned copy.
    during = plan_json(project, "timed")
    assert during["pinned_by_run"] == key
    assert [s["fingerprint"] for s in during["shards"]] == [
        s["fingerprint"] for s in before["shards"]
    ]
    report = verdict(project, "timed")
    assert report["run_key"] == key and report["verdict"] == "passed", report
    assert [row["fingerprint"] for row in report["shards"]] == [
        s["fingerprint"] for s in before["shards"]
    ]
    fresh = plan_json(project, "timed", "--current")
    assert [s["items"] for s in fresh["shards"]] != [s["items"] for s in during["shards"]]
    assert local_times(project)[item("f")] == {"test_it": [1.0, 7.0]}
    assert Counter(ran(project)) == Counter({item(name): 1 for name in FIRST_TIMES})

    # A pinned copy broken by hand: every command of the run plans alike without it.
    pin = project / ".git" / "lokt-tasks" / "timed" / key / "durations.json"
    pin.write_text("{")
    broken = cli(project, "verify", "timed")
    assert broken.returncode == errors.INCOMPLETE, broken.stdout + broken.stderr
    assert broken.stderr.count("warning") == 1 and "Traceback" not in broken.stderr
    assert f"lokt-tasks: warning: {pin.relative_to(project)}: corrupt durations file" in (
        broken.stderr
    )
    assert broken.stderr.strip().endswith("the run plans without timings")


def test_the_median_of_recent_samples_keeps_one_odd_run_from_moving_the_split(tmp_path):
    project = timed_project(tmp_path / "p", FIRST_TIMES)
    for number, slow in enumerate([1.0, 1.0, 30.0, 1.0]):  # one run of d is very slow
        set_time(project, "d", slow)
        result = cli(project, "shard-all", "timed", "--force", env={"LOKT_TASKS_RUN": f"r{number}"})
        assert result.returncode == 0, result.stdout + result.stderr
    assert local_times(project)[item("d")] == {"test_it": [1.0, 1.0, 30.0, 1.0]}
    current = plan_json(project, "timed", "--current", env={"LOKT_TASKS_RUN": "next"})
    assert sorted(shard["estimate"] for shard in current["shards"]) == [6.0, 6.0]


def test_the_ci_flow_with_three_runners_ends_with_every_test_timed(tmp_path):
    times = {
        "a": {"test_one": 4.0, "test_two": 0.5},
        "b": 3.0,
        "c": {"test_one": 2.0, "test_two": 0.25, "test_three": 0.12},
        "d": 1.0,
        "e": 1.0,
        "f": 1.0,
    }
    origin = timed_project(tmp_path / "origin", times)
    (origin / "shards.toml").write_text(
        (origin / "shards.toml").read_text().replace("shards = 2", "shards = 3")
    )
    git(origin, "commit", "-qam", "three shards")
    env = {"LOKT_TASKS_RUN": "pipeline-41"}

    # Three runners, each with its own checkout and results directory, which
    # its job uploads as an artifact.
    for number in (1, 2, 3):
        runner = tmp_path / f"runner-{number}"
        git(tmp_path, "clone", "-q", str(origin), str(runner))
        result = cli(
            runner, "shard", "timed", "--id", str(number), "--results", "shard-results", env=env
        )
        assert result.returncode == 0, result.stdout + result.stderr

    # The final job: a fresh checkout, the artifacts downloaded into one directory.
    final = tmp_path / "final"
    git(tmp_path, "clone", "-q", str(origin), str(final))
    for number in (1, 2, 3):
        shutil.copytree(
            tmp_path / f"runner-{number}" / "shard-results",
            final / "shard-results",
            dirs_exist_ok=True,
        )
    checked = cli(final, "verify", "timed", "--results", "shard-results", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    folded = cli(final, "durations", "timed", "--results", "shard-results", env=env)
    assert folded.returncode == 0, folded.stdout + folded.stderr
    assert "3 reports folded in (9 test times, 6 items)" in folded.stdout

    recorded = committed_times(final)
    expected = {
        item(name): {test: [seconds] for test, seconds in tests.items()}
        if isinstance(tests, dict)
        else {"test_it": [tests]}
        for name, tests in times.items()
    }
    assert recorded == expected
    # the file the final job keeps as an artifact, to commit
    assert git(final, "status", "--porcelain", "--untracked-files=no") == "M durations.json"

    # Committed, the next pipeline's plan uses every time.
    shutil.copy(final / "durations.json", origin / "durations.json")
    git(origin, "commit", "-qam", "timings of pipeline 41")
    nxt = plan_json(origin, "timed", env={"LOKT_TASKS_RUN": "pipeline-42"})
    assert nxt["stats"]["unit"] == "seconds" and nxt["stats"]["total"] == 12.87
    # a+b (4.5) / b+e (4.0) / c+d+f (4.37), longest first
    assert sorted(shard["estimate"] for shard in nxt["shards"]) == [4.0, 4.37, 4.5]


def test_folding_drops_deleted_files_and_renamed_tests_and_upgrades_a_version_1_file(tmp_path):
    old = {item("a"): 4.0, item("b"): 3.0, "timed/t_gone.py": 9.0, "other/item.py": 2.0}
    project = timed_project(
        tmp_path / "p", {"a": {"test_x": 4.0, "test_y": 1.0}, "b": 3.0}, json.dumps(old)
    )
    plan = plan_json(project, "timed")
    assert {s["estimate"] for s in plan["shards"]} == {4.0, 3.0}  # version 1 still loads

    assert cli(project, "shard-all", "timed").returncode == 0
    assert cli(project, "durations", "timed").returncode == 0
    assert committed_times(project) == {
        item("a"): {"test_x": [4.0], "test_y": [1.0]},
        item("b"): {"test_it": [3.0]},
    }

    set_time(project, "a", {"test_x": 4.0, "test_z": 2.0})  # test_y renamed to test_z
    git(project, "commit", "-qam", "rename a test")
    assert cli(project, "shard-all", "timed").returncode == 0
    assert cli(project, "durations", "timed").returncode == 0
    assert committed_times(project)[item("a")] == {"test_x": [4.0, 4.0], "test_z": [2.0]}

    git(project, "rm", "-q", item("b"))
    git(project, "commit", "-qm", "b is gone")
    assert cli(project, "shard-all", "timed").returncode == 0
    folded = cli(project, "durations", "timed")
    assert "1 item no longer in task 'timed' dropped" in folded.stdout, folded.stdout
    assert list(committed_times(project)) == [item("a")]


def test_a_corrupt_durations_file_mid_run_costs_timings_not_shards_or_the_verdict(tmp_path):
    conflict = "<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> theirs\n"
    project = timed_project(tmp_path / "p", FIRST_TIMES)
    store = project / ".git" / "lokt-tasks" / "timed" / ".durations.json"
    # The first shard's command leaves both durations files unreadable, as a
    # stray merge would; the others start after it (one at a time).
    runner = (project / "timed_runner.py").read_text() + (
        "import os\n"
        f"if os.path.exists({str(store)!r}) or {item('a')!r} in items:\n"
        f"    for path in ('durations.json', {str(store)!r}):\n"
        f"        open(path, 'w').write({conflict!r})\n"
    )
    (project / "timed_runner.py").write_text(runner)
    (project / "shards.toml").write_text(
        (project / "shards.toml").read_text().replace("shards = 2", "shards = 3\njobs = 1")
    )
    git(project, "commit", "-qam", "a runner that breaks the durations files")

    result = cli(project, "shard-all", "timed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(ran(project)) == sorted(item(name) for name in FIRST_TIMES)
    assert "verdict: PASSED - 3 passed" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(
        "lokt-tasks: warning: .git/lokt-tasks/timed/.durations.json: corrupt durations file"
    )
    assert warnings[0].endswith("rewritten from new times, its earlier ones are lost")
    assert json.loads(store.read_text())["version"] == 2  # rewritten by the next shard's times
    assert "Traceback" not in result.stderr

    # Broken before a command starts: that command names it once, and runs everything.
    (project / "timed_runner.py").write_text(TIMED_RUNNER)
    git(project, "commit", "-qam", "a well-behaved runner")
    store.write_text(conflict)
    again = cli(project, "shard-all", "timed")
    assert again.returncode == 0 and "verdict: PASSED - 3 passed" in again.stdout, again.stderr
    warnings = [line for line in again.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, again.stderr  # the committed file (still broken), and the store
    assert sorted(w.split(": ")[2] for w in warnings) == [
        ".git/lokt-tasks/timed/.durations.json",
        "durations.json",
    ]


# --- real pytest suites -------------------------------------------------------------

PYTEST_FILES = {
    "tests/test_a.py": "def test_one():\n    pass\n\n\ndef test_two():\n    pass\n",
    "tests/test_b.py": (
        "import os\n\n\n"
        "def test_first():\n    pass\n\n\n"
        "def test_gate():\n"
        "    assert not os.path.exists('fail-b')\n"
        "    open('b.started', 'w').close()\n"
        "    while os.path.exists('hold-b'):\n"
        "        pass\n\n\n"
        "def test_last():\n    pass\n"
    ),
    "tests/test_c.py": "def test_one():\n    pass\n",
}


def pytest_project(root: Path, run_options: str = "", files=PYTEST_FILES) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "shards.toml").write_text(
        '[defaults]\nengine = "embedded"\n\n[tasks.test]\n'
        f'run = "{{python}} -m pytest -q -p no:cacheprovider {run_options}'
        ' --junitxml={junit} {items}"\n'
        'glob = ["tests/test_*.py"]\nshards = 1\nsplit = "timings"\n'
    )
    (root / ".gitignore").write_text("__pycache__/\nhold-*\nfail-*\n*.started\n")
    commit_new_repository(root)
    return root


def sample_counts(times: dict) -> dict:
    return {name: {test: len(s) for test, s in tests.items()} for name, tests in times.items()}


@pytest.mark.parametrize("option", ["-x", "--maxfail=1"])
def test_a_run_stopped_early_updates_only_the_tests_that_ran(tmp_path, option):
    project = pytest_project(tmp_path / "p", option)
    assert cli(project, "shard-all", "test", env={"LOKT_TASKS_RUN": "one"}).returncode == 0
    first = local_times(project, "test")
    (project / "fail-b").write_text("")
    stopped = cli(project, "shard-all", "test", env={"LOKT_TASKS_RUN": "two"})
    assert stopped.returncode == errors.FAILED, stopped.stdout + stopped.stderr
    after = local_times(project, "test")
    assert sample_counts(after) == {
        "tests/test_a.py": {"test_one": 2, "test_two": 2},
        "tests/test_b.py": {"test_first": 2, "test_gate": 2, "test_last": 1},
        "tests/test_c.py": {"test_one": 1},
    }
    assert after["tests/test_c.py"] == first["tests/test_c.py"]
    assert after["tests/test_b.py"]["test_last"] == first["tests/test_b.py"]["test_last"]


def test_an_interrupted_shard_leaves_the_times_of_what_it_did_not_finish_unchanged(tmp_path):
    project = pytest_project(tmp_path / "p")
    assert cli(project, "shard-all", "test", env={"LOKT_TASKS_RUN": "one"}).returncode == 0
    first = local_times(project, "test")

    (project / "b.started").unlink()
    (project / "hold-b").write_text("")
    agent = start_cli(project, "shard-all", "test", env={"LOKT_TASKS_RUN": "two"})
    try:
        wait_for(lambda: (project / "b.started").exists())
        os.killpg(agent.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        output, errors_text = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    assert agent.returncode == errors.INTERRUPTED_SIGINT, output + errors_text
    after = local_times(project, "test")
    assert sample_counts(after) == {
        "tests/test_a.py": {"test_one": 2, "test_two": 2},
        "tests/test_b.py": {"test_first": 2, "test_gate": 1, "test_last": 1},
        "tests/test_c.py": {"test_one": 1},
    }
    assert after["tests/test_b.py"]["test_gate"] == first["tests/test_b.py"]["test_gate"]
    assert after["tests/test_c.py"] == first["tests/test_c.py"]

    # durations folds the interrupted shard's report the same way.
    folded = cli(project, "durations", "test", env={"LOKT_TASKS_RUN": "two"})
    assert folded.returncode == 0, folded.stderr
    assert sample_counts(committed_times(project, "test", "shard-durations.json")) == {
        "tests/test_a.py": {"test_one": 1, "test_two": 1},
        "tests/test_b.py": {"test_first": 1},
    }


MONOREPO_COLLECT = "{python} -m pytest --collect-only --verbosity=-1 --rootdir=."


def test_a_monorepo_with_quiet_addopts_gets_timings_for_files_and_node_ids(tmp_path):
    repo = tmp_path / "repo"
    sub = repo / "services" / "api"
    (sub / "tests").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\naddopts = -q -p no:cacheprovider\n")
    (sub / "tests" / "test_x.py").write_text(
        "import pytest\n\n\nclass TestK:\n    def test_a(self):\n        pass\n\n\n"
        "@pytest.mark.parametrize('n', [1, 2])\ndef test_p(n):\n    pass\n"
    )
    (sub / "tests" / "test_y.py").write_text("def test_y():\n    pass\n")
    (sub / "shards.toml").write_text(
        '[defaults]\nengine = "embedded"\n\n'
        '[tasks.files]\nrun = "{python} -m pytest --junitxml={junit} {items}"\n'
        'glob = ["tests/test_*.py"]\nshards = 2\nsplit = "timings"\n\n'
        '[tasks.cases]\nrun = "{python} -m pytest --junitxml={junit} {items}"\n'
        f'collect = "{MONOREPO_COLLECT}"\nshards = 2\nsplit = "timings"\n'
    )
    (repo / ".gitignore").write_text("__pycache__/\n")
    commit_new_repository(repo)

    cases = plan_json(sub, "cases")
    assert sorted(i for shard in cases["shards"] for i in shard["items"]) == [
        "tests/test_x.py::TestK::test_a",
        "tests/test_x.py::test_p[1]",
        "tests/test_x.py::test_p[2]",
        "tests/test_y.py::test_y",
    ]
    for task in ("files", "cases"):
        result = cli(sub, "shard-all", task)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "warning" not in result.stderr, result.stderr
    store = repo / ".git" / "lokt-tasks"
    by_file = json.loads((store / "files" / ".durations.json").read_text())["tasks"]["files"]
    assert sample_counts(by_file) == {
        "tests/test_x.py": {"TestK::test_a": 1, "test_p[1]": 1, "test_p[2]": 1},
        "tests/test_y.py": {"test_y": 1},
    }
    by_case = json.loads((store / "cases" / ".durations.json").read_text())["tasks"]["cases"]
    assert sorted(by_case) == sorted(i for shard in cases["shards"] for i in shard["items"])
    assert all(isinstance(samples, list) and len(samples) == 1 for samples in by_case.values())


def test_a_report_that_matches_no_item_is_one_warning_naming_an_example(tmp_path):
    project = timed_project(tmp_path / "p", FIRST_TIMES)
    # Classnames that name no file of the project, and no file attribute.
    elsewhere = TIMED_RUNNER.replace('classname="timed"', 'classname="elsewhere.Checks"')
    elsewhere = elsewhere.replace("file=%s ", "%.0s")
    (project / "timed_runner.py").write_text(elsewhere)
    git(project, "commit", "-qam", "a runner whose classnames name no file here")
    result = cli(project, "shard-all", "timed")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith("lokt-tasks: warning: timed-shard-")
    assert "0 of 3 testcases in its JUnit report belong to an item of the shard" in warnings[0]
    assert (
        "testcase 'test_it' (classname 'elsewhere.Checks') was read as 'elsewhere.Checks::test_it'"
        " and compared with items such as 'timed/t_" in warnings[0]
    )
    assert "; the same in timed-shard-" in warnings[0]


# --- shard counts ----------------------------------------------------------------


def test_shards_override_is_part_of_the_plan_fingerprint_and_force_runs_again(tmp_path):
    project = make_project(tmp_path / "p", checks([f"check_{n}.py" for n in range(1, 7)]), shards=3)
    env = {"LOKT_TASKS_RUN": "counts"}

    plan = plan_json(project, "checks", "--shards", "2")
    assert [len(shard["items"]) for shard in plan["shards"]] == [3, 3]
    result = cli(project, "shard-all", "checks", "--shards", "2", env=env)
    assert result.returncode == 0, (
        result.stdout + result.stderr
    )  # its closing verdict, under --shards 2, passed
    assert len(ran(project)) == 6

    three = verdict(project, "checks", "--shards", "3", env=env)
    assert states(three) == ["outdated", "outdated", "missing"]
    assert three["verdict"] == "incomplete" and three["exit_code"] == errors.INCOMPLETE

    out_of_range = cli(project, "shard", "checks", "--id", "3", "--shards", "2", env=env)
    assert out_of_range.returncode == errors.USAGE and "has 2 shards" in out_of_range.stderr

    again = cli(project, "shard-all", "checks", "--shards", "2", "--force", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert Counter(ran(project)) == Counter({f"check_{n}.py": 2 for n in range(1, 7)})


def test_id_auto_takes_the_shard_from_the_ci_and_replans_to_its_total(tmp_path):
    suite = checks([f"check_{n}.py" for n in range(1, 7)])
    explicit = (
        '\n[tasks.pair]\nrun = "{python} run_checks.py {items}"\n'
        '[[tasks.pair.shard]]\nitems = ["checks/check_1.py"]\n'
        '[[tasks.pair.shard]]\nitems = ["checks/check_2.py"]\n'
    )
    project = make_project(tmp_path / "p", suite, shards=3, extra_toml=explicit)

    gitlab = cli(
        project, "shard", "checks", "--id", "auto", env={"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "3"}
    )
    assert gitlab.returncode == 0, gitlab.stderr
    assert ran(project) == ["check_3.py", "check_4.py"]  # shard 2 of 3 (GitLab counts from 1)

    circle = cli(
        project,
        "shard",
        "checks",
        "--id",
        "auto",
        env={"CIRCLE_NODE_INDEX": "0", "CIRCLE_NODE_TOTAL": "3"},
    )
    assert circle.returncode == 0, circle.stderr
    assert ran(project)[2:] == ["check_1.py", "check_2.py"]  # shard 1 of 3 (CircleCI counts from 0)

    (project / "ran.log").unlink()
    two = cli(
        project, "shard", "checks", "--id", "auto", env={"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "2"}
    )
    assert two.returncode == 0, two.stderr
    assert ran(project) == ["check_4.py", "check_5.py", "check_6.py"]  # re-planned: shard 2 of 2

    mismatch = cli(
        project, "shard", "pair", "--id", "auto", env={"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "3"}
    )
    assert mismatch.returncode == errors.USAGE, mismatch.stderr
    assert (
        "--id auto (GitLab CI, 3 shards)" in mismatch.stderr
        and "2 explicit shards" in mismatch.stderr
    )
    assert len(mismatch.stderr.strip().splitlines()) == 1
    assert ran(project) == ["check_4.py", "check_5.py", "check_6.py"]
