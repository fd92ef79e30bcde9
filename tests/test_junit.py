"""Reading JUnit XML reports (lokt_tasks.junit): outcomes, messages, times,
and the test ids that name a testcase whatever the runner's root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lokt_tasks.junit import (
    DETAIL_LENGTH,
    ReportError,
    TestCase,
    TestIds,
    first_line,
    fold,
    parse_report,
    read_report,
    runner_items,
)
from lokt_tasks.states import TestOutcome

PYTEST_REPORT = """\
<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.test_x.TestY" name="test_a[1]" time="0.50"/>
<testcase classname="tests.test_x" name="test_b" time="1.25">
  <failure message="AssertionError: assert 1 == 2&#10;more detail">trace</failure>
</testcase>
<testcase classname="tests.test_x" name="test_c" time="0.01">
  <error message="">fixture 'db' not found
second line</error>
</testcase>
<testcase classname="tests.test_x" name="test_d" time="nan">
  <skipped message="no network"/>
</testcase>
<testcase classname="tests.test_x" name="test_e" time="1,234.5"/>
</testsuite></testsuites>
"""


def case(classname: str, name: str, file: str = "") -> TestCase:
    return TestCase(name, classname, "suite", file, TestOutcome.PASSED, 0.0)


def test_a_pytest_report_reads_into_outcomes_messages_and_seconds(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(PYTEST_REPORT)
    cases = read_report(report)
    assert [(c.name, c.outcome, c.seconds, c.message) for c in cases] == [
        ("test_a[1]", TestOutcome.PASSED, 0.5, ""),
        ("test_b", TestOutcome.FAILED, 1.25, "AssertionError: assert 1 == 2"),
        ("test_c", TestOutcome.ERROR, 0.01, "fixture 'db' not found"),
        ("test_d", TestOutcome.SKIPPED, 0.0, "no network"),
        ("test_e", TestOutcome.PASSED, 1234.5, ""),
    ]
    assert {c.suite for c in cases} == {"pytest"}


def test_nested_suites_give_their_name_and_file_to_their_cases(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite name="outer" file="a/outer.js">'
        '<testsuite name="inner" filepath="a/inner.js"><testcase name="t1"/></testsuite>'
        '<testcase name="t2" file="a\\own.js"/></testsuite></testsuites>'
    )
    assert [(c.suite, c.file) for c in read_report(report)] == [
        ("inner", "a/inner.js"),
        ("outer", "a/own.js"),
    ]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("", "not XML"),
        ("<testsuite><testcase", "not XML"),
        ("<html></html>", "root element is <html>"),
    ],
)
def test_what_is_not_a_report_is_a_report_error_naming_the_file(tmp_path, content, problem):
    report = tmp_path / "report.xml"
    report.write_text(content)
    with pytest.raises(ReportError) as caught:
        read_report(report)
    assert str(report) in str(caught.value) and problem in str(caught.value)


def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "report.xml"
    os.mkfifo(fifo)
    with pytest.raises(ReportError):
        read_report(fifo)


def test_a_missing_report_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_report(tmp_path / "none.xml")


def test_first_line_skips_blank_lines_and_cuts_long_ones():
    assert first_line("\n   \n  boom  \nrest") == "boom"
    assert len(first_line("x" * 1000)) == 300


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("")
    return tmp_path


@pytest.mark.parametrize(
    "classname, name, file, expected",
    [
        ("tests.test_x.TestY", "test_a[1]", "", "tests/test_x.py::TestY::test_a[1]"),
        ("tests.test_x", "test_b", "", "tests/test_x.py::test_b"),
        ("tests.test_x.TestY.TestZ", "t", "tests/test_x.py", "tests/test_x.py::TestY::TestZ::t"),
        # the runner's root above the directory of shards.toml (a monorepo)
        ("sub.tests.test_x.TestY", "t", "", "tests/test_x.py::TestY::t"),
        ("github.com/acme/pkg", "TestFoo", "", "github.com/acme/pkg::TestFoo"),
        ("", "plain", "", "plain"),
    ],
)
def test_ids_are_node_ids_when_the_file_is_known(tree, classname, name, file, expected):
    assert TestIds(tree).of(case(classname, name, file)) == expected


def test_an_absolute_file_outside_the_root_is_matched_by_its_tail(tree):
    outside = str(tree.parent / "repo" / "sub" / "tests" / "test_x.py")
    ids = TestIds(tree, known=["tests/test_x.py"])
    assert ids.of(case("sub.tests.test_x.TestY", "t", outside)) == "tests/test_x.py::TestY::t"


def test_a_runner_root_below_ours_is_matched_through_known_files(tmp_path):
    ids = TestIds(tmp_path, known=["pkg/tests/test_x.py", "pkg/tests/test_other.py"])
    assert ids.of(case("tests.test_x.TestY", "t")) == "pkg/tests/test_x.py::TestY::t"


def test_ids_of_a_real_pytest_report_are_the_node_ids_pytest_collects(tree):
    (tree / "tests" / "test_x.py").write_text(
        "import pytest\n"
        "class TestY:\n"
        "    @pytest.mark.parametrize('n', [1, 2])\n"
        "    def test_a(self, n):\n"
        "        assert n\n"
        "def test_b():\n"
        "    assert False, 'boom'\n"
    )
    report = tree / "report.xml"
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml"]
    subprocess.run([*run, str(report), "tests"], cwd=tree, capture_output=True, check=False)
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    cases = read_report(report)
    ids = TestIds(Path(tree))
    assert sorted(ids.of(c) for c in cases) == sorted(line for line in collected if "::" in line)
    failed = [c for c in cases if c.outcome == TestOutcome.FAILED]
    assert [c.message for c in failed] == ["AssertionError: boom"]


# --- failure text, folding runs, tests back to a command -------------------------


def test_the_failure_text_is_kept_and_bytes_parse_as_the_file_reads(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(PYTEST_REPORT)
    cases = read_report(report)
    assert [c.detail for c in cases] == ["", "trace", "fixture 'db' not found\nsecond line", "", ""]
    assert parse_report(report.read_bytes(), report) == cases
    long = "<testsuite><testcase name='t'><failure>%s</failure></testcase></testsuite>"
    (detail,) = [c.detail for c in parse_report((long % ("x" * 50_000)).encode(), report)]
    assert len(detail) == DETAIL_LENGTH


def ended(name: str, outcome: TestOutcome, message: str = "") -> TestCase:
    return TestCase(name, "pkg", "suite", "", outcome, 1.0, message)


def test_fold_keeps_the_last_outcome_and_the_failures_before_it(tree):
    ids = TestIds(tree)
    first = [
        ended("a", TestOutcome.FAILED, "a broke"),
        ended("b", TestOutcome.PASSED),
        ended("c", TestOutcome.ERROR, "c erred"),
        ended("d", TestOutcome.SKIPPED),
    ]
    retry = [ended("a", TestOutcome.PASSED), ended("c", TestOutcome.FAILED, "c again")]
    results = fold([first, retry], ids)
    assert list(results) == ["pkg::a", "pkg::b", "pkg::c", "pkg::d"]
    a, b, c, d = results.values()
    assert (a.outcome, a.flaky, a.failing, a.runs) == (TestOutcome.PASSED, True, False, 2)
    assert [f.message for f in a.failures] == ["a broke"]
    assert (b.flaky, b.runs, b.failures) == (False, 1, ())
    assert (c.outcome, c.flaky, c.failing, [f.message for f in c.failures]) == (
        TestOutcome.FAILED,
        False,
        True,
        ["c erred"],
    )
    assert (d.outcome, d.failing) == (TestOutcome.SKIPPED, False)
    # A later fold goes on from earlier results: a rerun after the retries.
    later = fold([[ended("c", TestOutcome.PASSED)]], ids, results)
    assert later["pkg::c"].flaky and len(later["pkg::c"].failures) == 2
    assert later["pkg::c"] == c.then(fold([[ended("c", TestOutcome.PASSED)]], ids)["pkg::c"])


def test_a_test_reported_twice_in_one_run_counts_once_with_its_worst_outcome(tree):
    run = [
        ended("a", TestOutcome.PASSED),
        ended("a", TestOutcome.ERROR),
        ended("a", TestOutcome.SKIPPED),
    ]
    (result,) = fold([run], TestIds(tree)).values()
    assert (result.outcome, result.runs, result.failures) == (TestOutcome.ERROR, 1, ())


def test_tests_go_back_as_node_ids_or_as_names(tree):
    ids = TestIds(tree)
    pytest_cases = [case("tests.test_x.TestY", "test_a[1]"), case("tests.test_x", "test_b")]
    assert runner_items(pytest_cases * 2, ids, whole=True) == [
        "tests/test_x.py::TestY::test_a[1]",
        "tests/test_x.py::test_b",
    ]
    go_cases = [case("example.com/pkg", "TestA/sub_1"), case("example.com/pkg", "TestA/sub_2")]
    go_cases.append(case("example.com/pkg", "TestB"))
    assert runner_items(go_cases, ids, whole=False) == ["TestA", "TestB"]
    with pytest.raises(ValueError, match="'example.com/pkg::TestA/sub_1' names no file"):
        runner_items(go_cases, ids, whole=True)
