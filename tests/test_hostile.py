"""Hostile input: file names a shell would misread, command lines too long to
start, and record or durations files that are empty, cut short or garbage.

Items reach the command as argv elements, byte for byte, never through a
shell. What cannot run is refused before anything runs, in one line. What
cannot be read is named, and never crashes verify.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from scratch import PASS, checks, cli, commit_new_repository, lock_files, make_project, ran

from lokt_tasks import errors

PYTHON = json.dumps(sys.executable)  # a TOML basic string

#: Writes its arguments, as hex of their bytes, to argv-<first argument>.json.
DUMP_ARGV = """\
import json, os, sys
shard, items = sys.argv[1], sys.argv[2:]
with open("argv-" + shard + ".json", "w") as out:
    json.dump([os.fsencode(item).hex() for item in items], out)
"""

HOSTILE_NAMES = [
    "with space.item",
    "two  spaces .item",
    "single'quote.item",
    'double"quote.item',
    "$(touch pwned-dollar).item",
    "`touch pwned-backtick`.item",
    "semi;touch pwned-semicolon.item",
    "pipe|amp&.item",
    "star*.item",
    "question?.item",
    "[brackets].item",
    "{items}.item",
    "${HOME}.item",
    "back\\slash.item",
    "tab\there.item",
    "new\nline.item",
    "unicode-\u00e9-\u65e5\u672c.item",
    "-x.item",
    "--help.item",
]


def make_scratch(root: Path, toml: str, files: Dict[str, str]) -> Path:
    """A committed git repository with shards.toml and files."""
    root.mkdir(parents=True)
    (root / "shards.toml").write_text(toml)
    for name, text in files.items():
        (root / name).write_text(text)
    commit_new_repository(root)
    return root


def results_dir(project: Path) -> Path:
    return project / ".git" / "lokt-tasks"


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- file names ----------------------------------------------------------------


def test_hostile_file_names_reach_the_command_byte_for_byte_as_one_argument_each(tmp_path):
    toml = (
        '[defaults]\nengine = "embedded"\n\n'
        '[tasks.names]\nrun = "{python} dump_argv.py {shard} {items}"\n'
        'glob = ["*.item"]\nshards = 3\n'
    )
    files = {name: "" for name in HOSTILE_NAMES}
    files["dump_argv.py"] = DUMP_ARGV
    files[".gitignore"] = "argv-*.json\n"
    project = make_scratch(tmp_path / "p", toml, files)

    result = cli(project, "shard-all", "names")
    assert result.returncode == errors.PASSED, result.stdout + result.stderr

    arrived: List[bytes] = []
    for shard in (1, 2, 3):
        arrived += [
            bytes.fromhex(item) for item in json.loads((project / f"argv-{shard}.json").read_text())
        ]
    expected = [
        os.fsencode("./" + name if name.startswith("-") else name) for name in HOSTILE_NAMES
    ]
    assert sorted(arrived) == sorted(expected)
    assert not list(project.glob("pwned*"))  # no shell ever saw a name
    assert not list(Path.cwd().glob("pwned*"))


# --- too long for one command line ----------------------------------------------

#: Prints COUNT items of 200 bytes each.
MANY_LONG_ITEMS = """\
import sys
for number in range(int(sys.argv[1])):
    print("tests/case_%07d_" % number + "x" * 182)
"""


@pytest.fixture
def too_long(tmp_path):
    """One shard of items 20% over ARG_MAX (2 MiB on Linux, 1 MiB on macOS)."""
    count = os.sysconf("SC_ARG_MAX") * 6 // 5 // 200
    toml = (
        '[defaults]\nengine = "embedded"\n\n'
        '[tasks.huge]\nrun = "{python} -c pass {items}"\n'
        f'collect = "{{python}} many.py {count}"\nshards = 1\n'
    )
    return make_scratch(tmp_path / "p", toml, {"many.py": MANY_LONG_ITEMS})


@pytest.mark.parametrize(
    "command", [["plan", "huge"], ["shard", "huge", "--id", "1"], ["shard-all", "huge"]]
)
def test_a_shard_too_long_for_one_command_line_is_refused_before_anything_runs(too_long, command):
    result = cli(too_long, *command)
    assert result.returncode == errors.USAGE, result.stdout + result.stderr
    line = one_line_error(result)
    assert "shards.toml: tasks.huge.shards:" in line
    assert "shard 1 of 1 of task 'huge'" in line
    assert "bytes" in line and "ARG_MAX" in line
    assert not results_dir(too_long).exists()
    assert lock_files(too_long) == []


def test_the_same_items_in_more_shards_run(too_long):
    result = cli(too_long, "shard", "huge", "--id", "2", "--shards", "4")
    assert result.returncode == errors.PASSED, result.stderr


# --- unreadable records ---------------------------------------------------------


def test_damaged_records_are_reported_as_corrupt_by_name_and_fail_the_verdict(tmp_path):
    project = make_project(
        tmp_path / "p", checks([f"check_{n}.py" for n in range(1, 7)], PASS), shards=6
    )
    assert cli(project, "shard-all", "checks").returncode == errors.PASSED
    records = {
        int(path.stem.split("-")[1]): path for path in results_dir(project).rglob("shard-*.json")
    }
    whole = records[2].read_bytes()
    damage = {
        1: b"",  # empty
        2: whole[: len(whole) // 2],  # cut short
        3: b"\x00\xff\xfegarbage\n",  # not even text
        4: b"[1, 2, 3]\n",  # JSON, but not a record
        5: b'{"version": 1, "task": "checks"}\n',  # a record with fields missing
    }
    for shard, text in damage.items():
        records[shard].write_bytes(text)

    report = cli(project, "verify", "checks", "--json")
    assert report.returncode == errors.INCOMPLETE, report.stderr
    assert "Traceback" not in report.stderr
    rows = json.loads(report.stdout)["shards"]
    assert [row["state"] for row in rows] == ["corrupt"] * 5 + ["passed"]
    for row in rows[:5]:
        assert str(records[row["shard"]]) in row["detail"]

    table = cli(project, "verify", "checks")
    assert table.returncode == errors.INCOMPLETE
    assert "Traceback" not in table.stderr
    for shard in damage:
        assert records[shard].name in table.stdout
    assert len(ran(project)) == 6  # verify ran nothing


# --- unreadable durations file ----------------------------------------------------


def timings_project(root: Path, content: str) -> Path:
    extra = 'split = "timings"\ndurations = "timings.json"\n'
    project = make_project(
        root, checks([f"check_{n}.py" for n in range(1, 7)], PASS), extra_toml=extra
    )
    (project / "timings.json").write_text(content)
    return project


@pytest.mark.parametrize(
    "content, problem",
    [
        ("<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> other\n", "not JSON"),
        ('{"version": 2, "tasks": {"checks": {"a.py": [-1]}}}', "item 'a.py' of task 'checks'"),
    ],
)
def test_a_corrupt_durations_file_costs_timings_never_a_shard(tmp_path, content, problem):
    project = timings_project(tmp_path / "p", content)
    warning = "timings.json: corrupt durations file ("
    for command in (
        ["shard", "checks", "--id", "1"],
        ["shard-all", "checks"],
        ["verify", "checks"],
    ):
        result = cli(project, *command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if "timings.json" in line]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("lokt-tasks: warning: " + warning) and problem in lines[0]
        assert lines[0].endswith("its timings are left out")
    shown = cli(project, "plan", "checks")
    assert shown.returncode == 0 and f"warning: {warning}" in shown.stdout
    assert sorted(ran(project)) == [f"check_{n}.py" for n in range(1, 7)]
    assert (project / "timings.json").read_text() == content  # runs never write it
    assert lock_files(project) == []
