"""Plans that change between runs: recorded timings, --shards, CI totals.

The timings project's runner does not sleep: each check file declares how
long it "takes" (``SECONDS = 4.0``) and the runner reports that time in a
JUnit XML file, as a test runner would, so the expected durations are exact
and the tests stay fast.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Dict

from scratch import PYTHON, checks, cli, git, make_project, ran, states, verdict

from lokt_tasks import errors

# A backslash at the end of a line inside TIMED_RUNNER joins the next line to it.
TIMED_RUNNER = """\
import re, sys
from xml.sax.saxutils import quoteattr
junit, items = sys.argv[1], sys.argv[2:]
cases = []
with open("ran.log", "a") as log:
    for item in items:
        log.write(item + "\\n")
        with open(item) as source:
            seconds = re.search(r"SECONDS = ([0-9.]+)", source.read()).group(1)
        cases.append('<testcase classname="timed" name="test_it" file=%s time="%s"/>' \
% (quoteattr(item), seconds))
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


def timed_project(root: Path, times: Dict[str, float]) -> Path:
    project = make_project(root, checks(["check_1.py"]), extra_toml=TIMED_TASK)
    (project / "timed_runner.py").write_text(TIMED_RUNNER)
    (project / "timed").mkdir()
    for name, seconds in times.items():
        set_time(project, name, seconds)
    (project / ".gitignore").write_text("ran.log\n*.go\ndurations.json.lock\n")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "timed suite")
    return project


def set_time(project: Path, name: str, seconds: float) -> None:
    (project / "timed" / f"t_{name}.py").write_text(f"SECONDS = {seconds}\n")


def item(name: str) -> str:
    return f"timed/t_{name}.py"


def plan_json(project: Path, *args: str) -> dict:
    result = cli(project, "plan", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def run_key(output: str) -> str:
    found = re.search(r"; run (\S+);", output)
    assert found, output
    return found.group(1)


def test_timings_are_recorded_planned_from_and_updated_line_by_line(tmp_path):
    project = timed_project(tmp_path / "p", FIRST_TIMES)
    durations = project / "durations.json"

    first = cli(project, "shard-all", "timed")
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(durations.read_text()) == {
        item(name): seconds for name, seconds in FIRST_TIMES.items()
    }

    plan = plan_json(project, "timed")
    assert plan["split"] == "timings" and plan["stats"]["unit"] == "seconds"
    for shard in plan["shards"]:
        assert shard["estimate"] == sum(
            FIRST_TIMES[i[len("timed/t_") : -len(".py")]] for i in shard["items"]
        )
    assert sorted(shard["estimate"] for shard in plan["shards"]) == [6.0, 6.0]  # a+d+e and b+c+f

    # Commit the timings, then make one check slow enough to change the split.
    git(project, "add", "durations.json")
    git(project, "commit", "-qm", "timings")
    before = durations.read_text().splitlines()
    set_time(project, "f", 7.0)
    git(project, "commit", "-qam", "f got slow")
    pinned_plan = plan  # planned from the same timings as the run will pin

    second = cli(project, "shard-all", "timed")
    assert second.returncode == 0, second.stdout + second.stderr
    after = durations.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert len(before) == len(after) and changed == [
        (f'  "{item("f")}": 1.0', f'  "{item("f")}": 7.0')
    ]
    assert git(project, "status", "--porcelain", "--untracked-files=no") == "M durations.json"

    # The run planned from the timings pinned when it started; verify, right
    # after, plans from the same pin and finds the same run key, although the
    # durations file (tracked) changed and would now split differently.
    report = verdict(project, "timed")
    assert report["run_key"] == run_key(second.stdout + second.stderr)
    assert report["verdict"] == "passed", report
    assert [row["fingerprint"] for row in report["shards"]] == [
        s["fingerprint"] for s in pinned_plan["shards"]
    ]
    replanned = plan_json(project, "timed")
    assert [s["items"] for s in replanned["shards"]] != [s["items"] for s in pinned_plan["shards"]]
    assert Counter(ran(project)) == Counter({item(name): 2 for name in FIRST_TIMES})


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
