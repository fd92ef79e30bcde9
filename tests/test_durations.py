"""The durations file: its format, estimates, folds of JUnit reports, concurrent writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Sequence

import pytest

from lokt_tasks.durations import (
    SAMPLES,
    DurationsError,
    ShardReport,
    TaskTimings,
    dump_durations,
    fold_reports,
    fold_warnings,
    pin_timings,
    read_durations,
    read_task_timings,
    round_seconds,
)
from lokt_tasks.errors import USAGE

REPO = Path(__file__).resolve().parent.parent


def python_process(code: str, *args: str, **options) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=environment, **options
    )


def report(tmp_path: Path, cases: Sequence[str], name: str = "junit.xml") -> Path:
    path = tmp_path / name
    path.write_text("<testsuites><testsuite>\n" + "\n".join(cases) + "\n</testsuite></testsuites>")
    return path


def case(classname: str, name: str, seconds: float, file: str = "") -> str:
    where = f' file="{file}"' if file else ""
    return f'<testcase classname="{classname}" name="{name}" time="{seconds}"{where}/>'


def fold(path: Path, root: Path, xml: Path, items: Sequence[str], complete=True, **options):
    shard = ShardReport("t-shard-1", xml, tuple(items), complete, options.pop("attempt", ""))
    every = options.pop("every", items)
    return fold_reports(path, "t", [shard], root=root, items=every, **options)


def section(path: Path, task: str = "t") -> Dict:
    return json.loads(path.read_text())["tasks"][task]


# --- the file ------------------------------------------------------------------------


def test_a_missing_file_means_no_timings(tmp_path):
    assert read_durations(tmp_path / "d.json").task("t") == TaskTimings()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "not JSON"),
        ("<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> b\n", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"a.py": "fast"}', "'a.py' has \"fast\""),
        ('{"a.py": -1}', "'a.py' has -1"),
        ('{"a.py": NaN}', "not JSON"),
        ('{"version": 2}', '"tasks" should be an object'),
        ('{"version": 2, "tasks": {"t": []}}', "task 't' should be an object"),
        ('{"version": 2, "tasks": {"t": {"a.py": {"x": []}}}}', "item 'a.py' of task 't'"),
        ('{"version": 2, "tasks": {"t": {"a.py": [true]}}}', "item 'a.py' of task 't'"),
    ],
)
def test_a_corrupt_file_is_an_error_naming_it(tmp_path, text, problem):
    path = tmp_path / "d.json"
    path.write_text(text)
    with pytest.raises(DurationsError) as raised:
        read_durations(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: corrupt durations file") and problem in message
    assert "\n" not in message and raised.value.exit_code == USAGE and not raised.value.newer
    timings, warning = read_task_timings(path, "t")
    assert timings == TaskTimings() and warning == message + "; its timings are left out"


def test_the_format_is_sorted_one_test_a_line_rounded_and_ends_with_a_newline():
    text = dump_durations(
        {
            "test": {
                "tests/b.py": {"test_z": [2.0], "TestK::test_a": [0.01234, 1.2345, 1234.5]},
                "tests/a.py::test_x": {"": [0.00049, 0.0015]},
                "ünï.py": 3.14159,
            },
            "lint": {},
        }
    )
    assert text == textwrap.dedent("""\
        {
          "version": 2,
          "tasks": {
            "lint": {},
            "test": {
              "tests/a.py::test_x": [0.0, 0.002],
              "tests/b.py": {
                "TestK::test_a": [0.012, 1.2, 1200.0],
                "test_z": [2.0]
              },
              "ünï.py": 3.1
            }
          }
        }
    """)
    assert read_durations_text(text).tasks["test"]["tests/a.py::test_x"] == {"": [0.0, 0.002]}


def read_durations_text(text: str):
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "d.json"
        path.write_text(text)
        return read_durations(path)


def test_rounding_keeps_two_significant_digits_and_milliseconds():
    assert [round_seconds(s) for s in (1.234, 0.0567, 12.34, 0.0004, 0.0016, 98.76)] == [
        1.2,
        0.057,
        12.0,
        0.0,
        0.002,
        99.0,
    ]


def test_a_newer_format_is_refused_and_never_overwritten(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"version": 3, "whatever": {}}')
    with pytest.raises(DurationsError, match="format version 3, newer than") as raised:
        read_durations(path)
    assert raised.value.newer
    xml = report(tmp_path, [case("t", "test_a", 1.0, "a.py")])
    (tmp_path / "a.py").write_text("")
    with pytest.raises(DurationsError):
        fold(path, tmp_path, xml, ["a.py"])
    assert path.read_text() == '{"version": 3, "whatever": {}}'


# --- estimates -----------------------------------------------------------------------


def test_an_item_is_the_sum_of_its_tests_medians():
    timings = TaskTimings(
        {
            "a.py": {"test_x": [1.0, 1.0, 30.0], "test_y": [2.0, 0.01, 2.0, 2.0]},
            "b.py::test_z": {"": [0.5, 0.75]},
            "old.py": 4.0,
            "empty.py": {},
        }
    )
    assert timings.seconds(["a.py", "b.py::test_z", "old.py", "empty.py", "new.py"]) == {
        "a.py": 3.0,  # one slow run (30 s) and one cut short (0.01 s) move nothing
        "b.py::test_z": 0.625,
        "old.py": 4.0,
    }


# --- folding ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    for name in ("tests/test_x.py", "tests/sub/test_y.py", "tests/test_z.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return tmp_path


PYTEST_REPORT = [
    case("tests.sub.test_y", "test_c", 0.25),
    case("tests.test_x", "test_a", 1.5),
    case("tests.test_x.TestK", "test_b", 0.5),
    case("tests.test_x", "test_p[1]", 0.75),
    case("tests.test_x", "test_p[2]", 0.5),
    '<testcase classname="tests.test_z" name="test_s" time=""><skipped/></testcase>',
    '<testcase time="0.000" />',  # pytest's stand-in for a test Ctrl-C cut short
]


def test_a_pytest_report_gives_each_file_item_its_tests(tree):
    xml = report(tree, PYTEST_REPORT)
    path = tree / "d.json"
    items = ["tests/sub/test_y.py", "tests/test_x.py", "tests/test_z.py", "tests/test_new.py"]
    summary = fold(path, tree, xml, items)
    assert section(path) == {
        "tests/sub/test_y.py": {"test_c": [0.25]},
        "tests/test_x.py": {
            "TestK::test_b": [0.5],
            "test_a": [1.5],
            "test_p[1]": [0.75],
            "test_p[2]": [0.5],
        },
        "tests/test_z.py": {"test_s": [0.0]},
    }
    assert (summary.tests, summary.items, summary.written) == (6, set(items[:3]), True)
    assert summary.mismatches == [] and summary.problems == []
    assert read_durations(path).task("t").seconds(items) == {
        "tests/sub/test_y.py": 0.25,
        "tests/test_x.py": 3.25,
        "tests/test_z.py": 0.0,
    }


def test_node_ids_classes_and_directories_get_their_tests(tree):
    xml = report(tree, PYTEST_REPORT)
    path = tree / "d.json"
    items = [
        "tests/test_x.py::test_a",
        "tests/test_x.py::TestK",
        "./tests/sub/",
        "tests/test_x.py::test_gone",
    ]
    fold(path, tree, xml, items)
    assert section(path) == {
        "./tests/sub/": {"tests/sub/test_y.py::test_c": [0.25]},
        "tests/test_x.py::TestK": {"test_b": [0.5]},
        "tests/test_x.py::test_a": [1.5],
    }


def test_a_report_with_some_of_an_items_tests_updates_only_those(tree):
    path = tree / "d.json"
    items = ["tests/test_x.py", "tests/test_z.py"]
    fold(path, tree, report(tree, PYTEST_REPORT), items)
    before = section(path)
    partial = report(tree, [case("tests.test_x", "test_a", 9.0)], "partial.xml")
    fold(path, tree, partial, items, complete=False)  # a shard stopped by -x, --maxfail, Ctrl-C
    after = section(path)
    assert after["tests/test_x.py"] == {**before["tests/test_x.py"], "test_a": [1.5, 9.0]}
    assert after["tests/test_z.py"] == before["tests/test_z.py"]
    assert read_durations(path).task("t").seconds(items)["tests/test_x.py"] == pytest.approx(
        0.5 + (1.5 + 9.0) / 2 + 0.75 + 0.5
    )


def test_a_passed_shards_report_drops_the_tests_it_no_longer_has(tree):
    path = tree / "d.json"
    items = ["tests/test_x.py", "tests/test_z.py"]
    fold(path, tree, report(tree, PYTEST_REPORT), items)
    renamed = report(
        tree, [case("tests.test_x", "test_a", 1.0), case("tests.test_x", "test_q", 2.0)], "r.xml"
    )
    fold(path, tree, renamed, items, complete=True)
    assert section(path) == {
        "tests/test_x.py": {"test_a": [1.5, 1.0], "test_q": [2.0]},
        "tests/test_z.py": {"test_s": [0.0]},  # no test of it in the report: left alone
    }


def test_items_no_longer_in_the_plan_are_dropped(tree):
    path = tree / "d.json"
    fold(path, tree, report(tree, PYTEST_REPORT), ["tests/test_x.py", "tests/test_z.py"])
    only_z = report(tree, [case("tests.test_z", "test_s", 0.1)], "z.xml")
    kept = fold(path, tree, only_z, ["tests/test_z.py"], every=None)  # a store of local times
    assert sorted(section(path)) == ["tests/test_x.py", "tests/test_z.py"] and kept.dropped == 0
    summary = fold(path, tree, only_z, ["tests/test_z.py"])
    assert section(path) == {"tests/test_z.py": {"test_s": [0.0, 0.1, 0.1]}}
    assert summary.dropped == 1


def test_each_test_keeps_its_last_samples(tree):
    path = tree / "d.json"
    for number in range(SAMPLES + 2):
        xml = report(tree, [case("tests.test_z", "test_s", number + 1)], f"{number}.xml")
        fold(path, tree, xml, ["tests/test_z.py"])
    assert section(path) == {"tests/test_z.py": {"test_s": [3.0, 4.0, 5.0, 6.0, 7.0]}}


def test_a_version_1_file_is_read_for_every_task_and_upgraded_on_the_next_write(tree):
    path = tree / "d.json"
    path.write_text('{"tests/test_x.py": 3.0, "tests/test_z.py": 2.0, "tests/gone.py": 1.0}')
    assert read_durations(path).task("any").seconds(["tests/test_z.py"]) == {"tests/test_z.py": 2.0}
    xml = report(tree, [case("tests.test_x", "test_a", 1.5)])
    fold(path, tree, xml, ["tests/test_x.py", "tests/test_z.py"], complete=False)
    assert json.loads(path.read_text()) == {
        "version": 2,
        "tasks": {
            "t": {
                "tests/test_x.py": {"test_a": [1.5]},  # per-test times replace the whole item's
                "tests/test_z.py": 2.0,  # kept until it has per-test times
            }
        },
    }


def test_an_unchanged_file_is_not_rewritten(tree):
    path = tree / "d.json"
    items = ["tests/test_z.py"]
    fold(path, tree, report(tree, [case("tests.test_z", "test_s", 1.0)]), items)
    before = os.stat(path)
    summary = fold(path, tree, report(tree, [], "empty.xml"), items)
    after = os.stat(path)
    assert not summary.written
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_a_ledger_folds_each_attempt_once(tree):
    path, ledger = tree / "d.json", tree / "folded.json"
    xml = report(tree, [case("tests.test_z", "test_s", 1.0)])
    first = fold(path, tree, xml, ["tests/test_z.py"], attempt="a1", ledger=ledger)
    second = fold(path, tree, xml, ["tests/test_z.py"], attempt="a1", ledger=ledger)
    third = fold(path, tree, xml, ["tests/test_z.py"], attempt="a2", ledger=ledger)
    assert (first.folded, second.already, third.folded) == (["t-shard-1"],) * 3
    assert section(path) == {"tests/test_z.py": {"test_s": [1.0, 1.0]}}


def test_a_corrupt_file_is_rewritten_from_new_times_with_a_warning(tree):
    path = tree / "d.json"
    path.write_text("<<<<<<< HEAD\n")
    summary = fold(
        path, tree, report(tree, [case("tests.test_z", "test_s", 1.0)]), ["tests/test_z.py"]
    )
    assert section(path) == {"tests/test_z.py": {"test_s": [1.0]}}
    assert summary.problems == [] and summary.rewritten.startswith(f"{path}: corrupt durations")
    assert summary.rewritten.endswith("rewritten from new times, its earlier ones are lost")
    assert fold_warnings([summary]) == [summary.rewritten]
    assert fold_warnings([summary], named=[path]) == []  # the command warned when it read it


def test_an_unreadable_report_costs_its_times_only(tree):
    path = tree / "d.json"
    bad = tree / "bad.xml"
    bad.write_text("<html/>")
    summary = fold(path, tree, bad, ["tests/test_z.py"])
    assert summary.folded == [] and summary.tests == 0 and section(path) == {}
    assert summary.problems == [
        f"t-shard-1: cannot read JUnit XML {bad}: root element is <html>, not <testsuites>"
        " or <testsuite>; its times are not recorded"
    ]


def test_the_merge_keeps_the_file_mode_and_leaves_no_temporary_files(tree):
    path = tree / "d.json"
    xml = report(tree, [case("tests.test_z", "test_s", 1.0)])
    fold(path, tree, xml, ["tests/test_z.py"])
    assert os.stat(path).st_mode & 0o777 == 0o644
    os.chmod(path, 0o664)
    fold(path, tree, xml, ["tests/test_z.py"])
    assert os.stat(path).st_mode & 0o777 == 0o664
    assert sorted(p.name for p in tree.iterdir() if p.name.startswith(("d.", ".d."))) == [
        "d.json",
        "d.json.lock",
    ]


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "d.json"
    start = tmp_path / "start"
    writer = """
        import sys, time
        from pathlib import Path
        from lokt_tasks.durations import ShardReport, fold_reports
        path, start, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
        every = [f"w{w}/item_{i:02d}.py" for w in range(8) for i in range(20)]
        while not start.exists():
            time.sleep(0.001)
        for index in range(20):
            item = f"{name}/item_{index:02d}.py"
            xml = path.parent / f"{name}-{index}.xml"
            case = f'<testcase name="t" file="{item}" time="{index + 1}"/>'
            xml.write_text(f"<testsuite>{case}</testsuite>")
            shard = ShardReport(name, xml, (item,), True)
            fold_reports(path, "t", [shard], root=path.parent, items=every)
    """
    writers = [python_process(writer, str(path), str(start), f"w{number}") for number in range(8)]
    start.touch()
    for process in writers:
        assert process.wait(timeout=60) == 0
    times = section(path)
    assert len(times) == 8 * 20
    assert times["w7/item_19.py"] == {"t": [20.0]}
    assert path.read_text() == dump_durations({"t": read_durations(path).tasks["t"]})


def test_a_writer_killed_while_holding_the_lock_does_not_block_the_next(tree):
    path = tree / "d.json"
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
    fold(path, tree, report(tree, [case("tests.test_z", "test_s", 1.0)]), ["tests/test_z.py"])
    assert section(path) == {"tests/test_z.py": {"test_s": [1.0]}}


def test_a_pin_is_written_once_and_read_by_every_later_command(tmp_path):
    pinned = tmp_path / "run" / "durations.json"
    first = pin_timings(pinned, "t", "r1", lambda: TaskTimings({"a.py": {"x": [1.234]}}))
    later = pin_timings(pinned, "t", "r1", lambda: TaskTimings({"a.py": {"x": [9.0]}}))
    assert first == later == TaskTimings({"a.py": {"x": [1.2]}}, pinned_by="r1")


# --- where testcases belong --------------------------------------------------------


def test_report_paths_absolute_or_relative_and_a_monorepo_root_above(tree):
    xml = report(
        tree,
        [
            case("tests.test_x", "test_a", 1.0, "tests/test_x.py"),
            case("x", "test_b", 2.0, f"{tree}/tests/test_x.py"),
            case("repo.sub.tests.test_z", "test_c", 4.0),  # pytest's rootdir two levels above
            case("test_y", "test_d", 8.0),  # pytest's rootdir below: tests/sub
        ],
    )
    path = tree / "d.json"
    fold(path, tree, xml, ["tests/test_x.py", "tests/test_z.py", "tests/sub/test_y.py"])
    assert section(path) == {
        "tests/sub/test_y.py": {"test_d": [8.0]},
        "tests/test_x.py": {"test_a": [1.0], "test_b": [2.0]},
        "tests/test_z.py": {"test_c": [4.0]},
    }


GOTESTSUM = """\
<testsuites>
  <testsuite name="example.com/mod/internal/a">
    <testcase classname="example.com/mod/internal/a" name="TestAlpha" time="1.0"/>
    <testcase classname="example.com/mod/internal/a" name="TestAlpha/sub" time="0.2"/>
  </testsuite>
  <testsuite name="example.com/mod/internal/a/deep">
    <testcase classname="example.com/mod/internal/a/deep" name="TestDeep" time="0.5"/>
  </testsuite>
  <testsuite name="example.com/mod/cmd/b">
    <testcase classname="example.com/mod/cmd/b" name="TestBeta" time="1.5"/>
    <testcase classname="example.com/mod/cmd/b" name="TestAlpha" time="0.4"/>
  </testsuite>
</testsuites>
"""


def test_go_packages_by_import_path_directory_and_pattern_and_go_test_names(tmp_path):
    (tmp_path / "go.mod").write_text("module example.com/mod // the module\n\ngo 1.22\n")
    xml = tmp_path / "junit.xml"
    xml.write_text(GOTESTSUM)
    path = tmp_path / "d.json"
    items = ["example.com/mod/cmd/b", "./internal/a", "./internal/...", "TestBeta", "TestAlpha"]
    fold(path, tmp_path, xml, items)
    assert read_durations(path).task("t").seconds(items) == {
        "example.com/mod/cmd/b": 1.9,
        "./internal/a": 1.2,
        "./internal/...": 1.7,
        "TestBeta": 1.5,
        "TestAlpha": 1.4,
    }
    assert section(path)["TestAlpha"] == {
        "example.com/mod/cmd/b::TestAlpha": [0.4],
        "example.com/mod/internal/a::TestAlpha": [1.0],
    }


def test_dotted_class_names_find_their_files_in_any_language(tmp_path):
    xml = report(
        tmp_path,
        [
            case("com.acme.FooTest", "testOne", 1.0),
            case("com.acme.FooTest", "testTwo", 2.0),
            case("com.acme.BarTest", "testThree", 4.0),
        ],
    )
    path = tmp_path / "d.json"
    items = ["src/test/java/com/acme/FooTest.java", "com.acme.BarTest"]
    fold(path, tmp_path, xml, items)
    assert section(path) == {
        "com.acme.BarTest": {"testThree": [4.0]},
        "src/test/java/com/acme/FooTest.java": {
            "com.acme.FooTest::testOne": [1.0],
            "com.acme.FooTest::testTwo": [2.0],
        },
    }


def test_jest_reports_by_file_attribute_or_suite_path(tmp_path):
    xml, math = tmp_path / "junit.xml", tmp_path / "src" / "math.test.js"
    xml.write_text(
        '<testsuites name="jest tests">\n'
        '  <testsuite name="math">\n'
        f'    <testcase classname="math adds" name="math adds" time="0.5" file="{math}"/>\n'
        f'    <testcase classname="math subs" name="math subs" time="1" file="{math}"/>\n'
        "  </testsuite>\n"
        '  <testsuite name="src/strings.test.js">\n'
        '    <testcase classname="strings trims" name="strings trims" time="1"/>\n'
        "  </testsuite>\n"
        "</testsuites>\n"
    )
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "math.test.js").write_text("")
    path = tmp_path / "d.json"
    items = ["src/math.test.js", "src/strings.test.js"]
    fold(path, tmp_path, xml, items)
    assert read_durations(path).task("t").seconds(items) == {
        "src/math.test.js": 1.5,
        "src/strings.test.js": 1.0,
    }


def test_a_report_that_mostly_matches_nothing_is_one_warning(tree):
    xml = report(
        tree,
        [case("elsewhere.Thing", f"test_{n}", 1.0) for n in range(3)]
        + [case("tests.test_z", "test_s", 1.0)],
    )
    summary = fold(tree / "d.json", tree, xml, ["tests/test_z.py", "tests/test_x.py"])
    [mismatch] = summary.mismatches
    assert (mismatch.cases, mismatch.matched, mismatch.example_id) == (
        4,
        1,
        "elsewhere.Thing::test_0",
    )
    other = fold(tree / "d.json", tree, xml, ["tests/test_z.py"])
    [warning] = fold_warnings([summary, None, other])
    assert warning == (
        "t-shard-1: 1 of 4 testcases in its JUnit report belong to an item of the shard"
        " (the times of the others are not recorded): testcase 'test_0' (classname"
        " 'elsewhere.Thing') was read as 'elsewhere.Thing::test_0' and compared with items"
        " such as 'tests/test_z.py', 'tests/test_x.py'; the same in t-shard-1"
    )
    half = report(
        tree, [case("elsewhere.Thing", "t", 1.0), case("tests.test_z", "s", 1.0)], "h.xml"
    )
    assert fold(tree / "d.json", tree, half, ["tests/test_z.py"]).mismatches == []
