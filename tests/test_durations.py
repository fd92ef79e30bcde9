"""The durations file: stable on disk, safe under concurrent writers, fed by JUnit XML."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lokt_tasks.durations import (
    dump_durations,
    durations_from_junit,
    load_durations,
    merge_durations,
)
from lokt_tasks.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def python_process(code: str, *args: str, **options) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=environment, **options
    )


def test_missing_file_means_no_timings(tmp_path):
    assert load_durations(tmp_path / "shard-durations.json") == {}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"a.py": "fast"}', "'a.py' has \"fast\""),
        ('{"a.py": -1}', "'a.py' has -1"),
        ('{"a.py": true}', "'a.py' has true"),
    ],
)
def test_corrupt_file_is_a_config_error_naming_it(tmp_path, text, reason):
    path = tmp_path / "shard-durations.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_durations(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: corrupt durations file")
    assert reason in message
    assert "\n" not in message
    assert raised.value.exit_code == 2


def test_file_format_is_sorted_indented_rounded_and_ends_with_a_newline():
    text = dump_durations({"tests/b.py": 2, "tests/a.py": 1.23456789, "ünï.py": 0.0004})
    assert text == '{\n  "tests/a.py": 1.235,\n  "tests/b.py": 2.0,\n  "ünï.py": 0.0\n}\n'


def test_merge_creates_then_updates_only_the_given_items(tmp_path):
    path = tmp_path / "shard-durations.json"
    merge_durations(path, {"c.py": 3.0, "a.py": 1.0, "b.py": 2.0})
    assert path.read_text() == '{\n  "a.py": 1.0,\n  "b.py": 2.0,\n  "c.py": 3.0\n}\n'

    merge_durations(path, {"b.py": 2.5, "d.py": 0.1234})
    assert (
        path.read_text()
        == '{\n  "a.py": 1.0,\n  "b.py": 2.5,\n  "c.py": 3.0,\n  "d.py": 0.123\n}\n'
    )
    assert load_durations(path) == {"a.py": 1.0, "b.py": 2.5, "c.py": 3.0, "d.py": 0.123}


def test_merge_without_a_change_leaves_the_file_alone(tmp_path):
    path = tmp_path / "shard-durations.json"
    merge_durations(path, {"a.py": 1.0, "b.py": 2.0})
    before = os.stat(path)
    merge_durations(path, {"a.py": 1.0004})
    after = os.stat(path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_merge_keeps_the_file_mode_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "shard-durations.json"
    merge_durations(path, {"a.py": 1.0})
    assert os.stat(path).st_mode & 0o777 == 0o644
    os.chmod(path, 0o664)
    merge_durations(path, {"a.py": 2.0})
    assert os.stat(path).st_mode & 0o777 == 0o664
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [
        "shard-durations.json",
        "shard-durations.json.lock",
    ]


def test_merge_refuses_nonsense_and_a_corrupt_file(tmp_path):
    path = tmp_path / "shard-durations.json"
    with pytest.raises(ValueError):
        merge_durations(path, {"a.py": -1.0})
    path.write_text("garbage")
    with pytest.raises(ConfigError, match="corrupt durations file"):
        merge_durations(path, {"a.py": 1.0})
    assert path.read_text() == "garbage"


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "shard-durations.json"
    start = tmp_path / "start"
    writer = """
        import os, sys, time
        from pathlib import Path
        from lokt_tasks.durations import merge_durations
        path, start, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
        while not start.exists():
            time.sleep(0.001)
        for index in range(25):
            merge_durations(path, {f"{name}/item_{index:02d}.py": index + 0.5})
    """
    writers = [
        python_process(writer, str(path), str(start), f"shard{number}") for number in range(8)
    ]
    start.touch()
    for process in writers:
        assert process.wait(timeout=60) == 0

    durations = load_durations(path)
    assert len(durations) == 8 * 25
    assert durations["shard7/item_24.py"] == 24.5
    assert path.read_text() == dump_durations(durations)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [
        "shard-durations.json",
        "shard-durations.json.lock",
        "start",
    ]


def test_a_writer_killed_while_holding_the_lock_does_not_block_the_next(tmp_path):
    path = tmp_path / "shard-durations.json"
    merge_durations(path, {"a.py": 1.0})
    holder = python_process(
        """
        import fcntl, sys, time
        handle = open(sys.argv[1], "a")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
        """,
        str(path) + ".lock",
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    merge_durations(path, {"b.py": 2.0})
    assert load_durations(path) == {"a.py": 1.0, "b.py": 2.0}


PYTEST_XUNIT2 = """\
<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" tests="6" time="3.5">
<testcase classname="tests.sub.test_y" name="test_c" time="0.25" />
<testcase classname="tests.test_x" name="test_a" time="1.5" />
<testcase classname="tests.test_x.TestK" name="test_b" time="0.5" />
<testcase classname="tests.test_x" name="test_p[1]" time="0.75" />
<testcase classname="tests.test_x" name="test_p[2]" time="0.5"><failure message="boom"/></testcase>
<testcase classname="tests.test_z" name="test_skipped" time=""><skipped/></testcase>
</testsuite></testsuites>
"""


def test_pytest_report_by_file(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(PYTEST_XUNIT2)
    items = ["tests/sub/test_y.py", "tests/test_x.py", "tests/test_z.py", "tests/test_unknown.py"]
    assert durations_from_junit(report, items) == {
        "tests/sub/test_y.py": 0.25,
        "tests/test_x.py": 3.25,
        "tests/test_z.py": 0.0,
    }


def test_pytest_report_by_node_id_and_by_directory(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(PYTEST_XUNIT2)
    items = [
        "tests/test_x.py::test_a",
        "tests/test_x.py::TestK::test_b",
        "tests/test_x.py::test_p[2]",
        "tests/test_x.py::test_gone",
    ]
    assert durations_from_junit(report, items) == {
        "tests/test_x.py::test_a": 1.5,
        "tests/test_x.py::TestK::test_b": 0.5,
        "tests/test_x.py::test_p[2]": 0.5,
    }


def test_directory_items_sum_the_files_below_them(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuite name="pytest">\n'
        '  <testcase classname="tests.sub.test_y" name="test_c" file="tests/sub/test_y.py"'
        ' time="0.25"/>\n'
        '  <testcase classname="tests.test_x" name="test_a" file="tests/test_x.py" time="1.5"/>\n'
        '  <testcase classname="lib.test_l" name="test_l" file="lib/test_l.py" time="4"/>\n'
        "</testsuite>\n"
    )
    assert durations_from_junit(report, ["tests", "./tests/sub/", "lib/...", "docs"]) == {
        "tests": 1.75,
        "./tests/sub/": 0.25,
        "lib/...": 4.0,
    }


def test_pytest_xunit1_file_attribute_and_absolute_paths(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">\n'
        '  <testcase classname="tests.test_x" name="test_a" file="tests/test_x.py" line="1"'
        ' time="1.0"/>\n'
        '  <testcase classname="tests.test_x.TestK" name="test_b" file="./tests/test_x.py" line="4"'
        ' time="2.0"/>\n'
        f'  <testcase classname="c" name="test_c" file="{tmp_path}/tests/test_c.py" time="4.0"/>\n'
        "</testsuite></testsuites>\n"
    )
    items = ["tests/test_x.py", "tests/test_x.py::TestK::test_b", "tests/test_c.py"]
    assert durations_from_junit(report, items, root=tmp_path) == {
        "tests/test_x.py": 3.0,
        "tests/test_x.py::TestK::test_b": 2.0,
        "tests/test_c.py": 4.0,
    }


def test_gotestsum_report_by_package_and_by_test_name(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        textwrap.dedent("""\
        <?xml version="1.0" encoding="UTF-8"?>
        <testsuites tests="4" time="3.1">
          <testsuite tests="2" name="example.com/mod/internal/a" time="1.2">
            <testcase classname="example.com/mod/internal/a" name="TestAlpha" time="1.000000"/>
            <testcase classname="example.com/mod/internal/a" name="TestAlpha/sub" time="0.200000"/>
          </testsuite>
          <testsuite tests="2" name="example.com/mod/cmd/b" time="1.9">
            <testcase classname="example.com/mod/cmd/b" name="TestBeta" time="1.500000"/>
            <testcase classname="example.com/mod/cmd/b" name="TestAlpha" time="0.400000"/>
          </testsuite>
        </testsuites>
    """)
    )
    items = [
        "example.com/mod/internal/a",
        "example.com/mod/cmd/b",
        "TestBeta",
        "TestAlpha",
        "./internal/...",
    ]
    assert durations_from_junit(report, items) == {
        "example.com/mod/internal/a": 1.2,
        "example.com/mod/cmd/b": 1.9,
        "TestBeta": 1.5,
        "TestAlpha": 1.4,
    }


def test_jest_junit_report_with_file_attributes(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        '<testsuites name="jest tests" tests="3" time="2.5">\n'
        '  <testsuite name="math" tests="2" time="1.5">\n'
        '    <testcase classname="math adds" name="math adds" time="0.5"'
        f' file="{tmp_path}/src/math.test.js"/>\n'
        '    <testcase classname="math subtracts" name="math subtracts" time="1"'
        f' file="{tmp_path}/src/math.test.js"/>\n'
        "  </testsuite>\n"
        '  <testsuite name="strings" tests="1" time="1" filepath="src/strings.test.js">\n'
        '    <testcase classname="strings trims" name="strings trims" time="1"/>\n'
        "  </testsuite>\n"
        "</testsuites>\n"
    )
    items = ["src/math.test.js", "src/strings.test.js", "math adds", "math"]
    assert durations_from_junit(report, items, root=tmp_path) == {
        "src/math.test.js": 1.5,
        "src/strings.test.js": 1.0,
        "math adds": 0.5,
        "math": 1.5,
    }


@pytest.mark.parametrize("content", ["<testsuite><testcase", "<html><body/></html>", None])
def test_unreadable_reports_raise_value_error(tmp_path, content):
    report = tmp_path / "junit.xml"
    if content is not None:
        report.write_text(content)
    with pytest.raises(ValueError, match="cannot read JUnit XML"):
        durations_from_junit(report, ["a.py"])


def test_junit_times_feed_the_durations_file(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(PYTEST_XUNIT2)
    path = tmp_path / "shard-durations.json"
    merge_durations(path, {"other/test_o.py": 9.0})
    merge_durations(path, durations_from_junit(report, ["tests/test_x.py", "tests/sub/test_y.py"]))
    assert json.loads(path.read_text()) == {
        "other/test_o.py": 9.0,
        "tests/sub/test_y.py": 0.25,
        "tests/test_x.py": 3.25,
    }
