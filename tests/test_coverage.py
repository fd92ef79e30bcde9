"""Never skipped, in every flow: what the plan leaves out or runs twice fails the verdict.

A file matched by a task's globs that no explicit shard covers, or an item
that two explicit shards cover, shows in every verdict command (table, JSON,
JUnit) and keeps the verdict from passing. A shard count the user gives is
never ignored in silence, and a spare CI runner (more runners than shards)
has nothing to run and says so, with exit 0.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import pytest
from scratch import checks, cli, git, make_project, ran

from lokt_tasks import errors

FOUR = ["check_1.py", "check_2.py", "check_3.py", "check_4.py"]


def explicit_project(tmp_path, shards_toml: str):
    """A project whose task globs all four checks, with explicit shards."""
    project = make_project(tmp_path / "p", checks(FOUR), shards=1)
    toml = (project / "shards.toml").read_text().replace("shards = 1\n", shards_toml)
    (project / "shards.toml").write_text(toml)
    git(project, "commit", "-qam", "explicit shards")
    return project


UNCOVERED = """\
[[tasks.checks.shard]]
items = ["checks/check_1.py", "checks/check_2.py"]
[[tasks.checks.shard]]
items = ["checks/check_3.py"]
"""

OVERLAPPING = """\
[[tasks.checks.shard]]
items = ["checks/check_1.py", "checks/check_2.py"]
[[tasks.checks.shard]]
glob = ["checks/check_[134].py"]
"""


def test_a_file_in_no_shard_keeps_every_verdict_command_from_passing(tmp_path):
    project = explicit_project(tmp_path, UNCOVERED)

    run = cli(project, "shard-all", "checks")
    assert run.returncode == errors.INCOMPLETE, run.stdout + run.stderr
    assert "checks/check_4.py" in run.stdout + run.stderr
    assert "check_4.py" not in ran(project)

    table = cli(project, "verify", "checks")
    assert table.returncode == errors.INCOMPLETE
    assert "in no shard" in table.stdout and "checks/check_4.py" in table.stdout

    report = json.loads(cli(project, "verify", "checks", "--json").stdout)
    assert report["verdict"] == "incomplete" and report["exit_code"] == errors.INCOMPLETE
    assert report["uncovered_items"] == ["checks/check_4.py"]
    assert report["overlapping_items"] == {}

    junit = project / "verdict.xml"
    cli(project, "verify", "checks", "--junit", str(junit))
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    failing = [case for case in cases if case.find("failure") is not None]
    assert [case.get("name") for case in failing] == ["plan"]
    assert "checks/check_4.py" in failing[0].find("failure").get("message")


def test_an_item_in_two_shards_keeps_the_verdict_from_passing(tmp_path):
    project = explicit_project(tmp_path, OVERLAPPING)

    run = cli(project, "shard-all", "checks")
    assert run.returncode == errors.INCOMPLETE, run.stdout + run.stderr

    report = json.loads(cli(project, "verify", "checks", "--json").stdout)
    assert report["verdict"] == "incomplete"
    assert report["overlapping_items"] == {"checks/check_1.py": [1, 2]}
    assert report["uncovered_items"] == []


@pytest.mark.parametrize(
    "items, overlap",
    [
        (["./pkg/a/...", "pkg/b"], ["pkg/a"]),
        (["pkg/a/x", "pkg/c"], ["./pkg/a/..."]),
        (["pkg/a"], ["pkg/a/sub"]),
    ],
)
def test_explicit_items_that_cover_each_other_are_an_overlap(tmp_path, items, overlap):
    project = make_project(tmp_path / "p", checks(["check_1.py"]), shards=1)
    for path in ("pkg/a/sub", "pkg/b", "pkg/c"):
        (project / path).mkdir(parents=True)
        (project / path / "keep").write_text("")
    toml = (project / "shards.toml").read_text()
    toml = toml.replace('glob = ["checks/check_*.py"]\nshards = 1\n', "")
    toml += f"[[tasks.checks.shard]]\nitems = {json.dumps(items)}\n"
    toml += f"[[tasks.checks.shard]]\nitems = {json.dumps(overlap)}\n"
    (project / "shards.toml").write_text(toml)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "items")

    plan = cli(project, "plan", "checks")
    assert plan.returncode == 0, plan.stderr
    assert "runs more than once" in plan.stdout + plan.stderr
    report = json.loads(cli(project, "verify", "checks", "--json").stdout)
    assert report["overlapping_items"], report


def test_a_spare_ci_runner_has_nothing_to_run_and_exits_0(tmp_path):
    three = ["check_1.py", "check_2.py", "check_3.py"]
    project = make_project(tmp_path / "p", checks(three), shards=3)
    for index in (1, 2, 3):
        result = cli(project, "shard", "checks", "--id", str(index), "--total", "5")
        assert result.returncode == errors.PASSED, result.stderr
        assert "using 3 shard(s)" in result.stderr  # the lowered count is said, not ignored
    for index in (4, 5):
        spare = cli(project, "shard", "checks", "--id", str(index), "--total", "5")
        assert spare.returncode == errors.PASSED, spare.stderr
        assert "no shard to run" in spare.stdout + spare.stderr
    beyond = cli(project, "shard", "checks", "--id", "6", "--total", "5")
    assert beyond.returncode == errors.USAGE
    auto_env = {"CI_NODE_INDEX": "5", "CI_NODE_TOTAL": "5"}
    auto = cli(project, "shard", "checks", "--id", "auto", env=auto_env)
    assert auto.returncode == errors.PASSED, auto.stderr
    assert "no shard to run" in auto.stdout + auto.stderr
    assert sorted(ran(project)) == ["check_1.py", "check_2.py", "check_3.py"]
    verdict = cli(project, "verify", "checks")
    assert verdict.returncode == errors.PASSED, verdict.stdout


@pytest.mark.parametrize("spelling", ["pkg/b/../a/x.txt", "ABSOLUTE", "alias/x.txt"])
def test_two_spellings_of_one_file_are_an_overlap(tmp_path, spelling):
    """``..``, an absolute path and a symbolic link name the same file twice."""
    project = make_project(tmp_path / "p", checks(["check_1.py"]), shards=1)
    for path in ("pkg/a", "pkg/b"):
        (project / path).mkdir(parents=True)
    (project / "pkg/a/x.txt").write_text("")
    (project / "alias").symlink_to("pkg/a")
    if spelling == "ABSOLUTE":
        spelling = str(project / "pkg/a/x.txt")
    toml = (project / "shards.toml").read_text()
    toml = toml.replace('glob = ["checks/check_*.py"]\nshards = 1\n', "")
    toml += '[[tasks.checks.shard]]\nitems = ["pkg/a/x.txt"]\n'
    toml += f"[[tasks.checks.shard]]\nitems = {json.dumps([spelling])}\n"
    (project / "shards.toml").write_text(toml)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "items")

    report = json.loads(cli(project, "verify", "checks", "--json").stdout)
    assert report["verdict"] == "incomplete"
    assert report["overlapping_items"], report
