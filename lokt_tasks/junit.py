"""JUnit XML reports, read into test cases, and the test ids that name them.

JUnit XML has no single standard. What is read here is the common ground of
the dialects runners write (pytest's ``--junitxml``, gotestsum, Jest, Maven
Surefire, Playwright): ``<testsuites>`` or ``<testsuite>`` at the top, suites
nested at any depth, and per ``<testcase>`` its ``name``, ``classname``,
``time`` (seconds) and an optional ``file`` (also taken from its suite's
``file`` or ``filepath``). A testcase holding ``<failure>`` failed, one
holding ``<error>`` erred, one holding ``<skipped>`` was skipped (pytest
writes an expected failure so), any other passed.

A test id (:meth:`TestIds.of`) is what a user and a test runner call a test:

- a pytest node id ``tests/test_x.py::TestY::test_a[1]`` when the test's
  file is known, from its ``file`` attribute or from its dotted classname
  (pytest writes ``tests.test_x.TestY`` for a class in ``tests/test_x.py``);
- else ``classname::name`` (a Go package and test name, a Java class and
  method), or the name alone when there is no classname.

File paths in ids are relative to the directory of shards.toml, where the
commands run, even when the runner's root lies above or below it.

A test that runs more than once (a shard's retries, reruns of failed tests)
is folded into one :class:`TestResult` (:func:`fold`): its last outcome, and
the runs before in which it failed; one that failed and then passed is
*flaky*. :func:`runner_items` turns tests back into items a command takes.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from .states import FAILING_TESTS, TestOutcome
from .system import read_file

#: Reports larger than this are refused rather than read into memory (bytes).
MAX_REPORT_BYTES = 256 * 1024 * 1024
#: Characters of a failure message kept: its first line, cut to this length.
MESSAGE_LENGTH = 300
#: Characters kept of the text of a failure, error or skip (a traceback), from its start.
DETAIL_LENGTH = 20_000
#: Child elements that say how a testcase ended, strongest first.
_ENDINGS = (
    ("error", TestOutcome.ERROR),
    ("failure", TestOutcome.FAILED),
    ("skipped", TestOutcome.SKIPPED),
)


@dataclass(frozen=True)
class TestCase:
    """One ``<testcase>`` of a report. ``file`` is "" when the report names
    none, else as the report writes it with forward slashes (absolute or
    relative to the runner's root); ``seconds`` is 0.0 when missing or bad;
    ``message`` is the first line of the failure, error or skip message;
    ``detail`` the element's text (a traceback), at most DETAIL_LENGTH characters."""

    __test__ = False  # NOTE: a name pytest would otherwise try to collect as tests

    name: str
    classname: str
    suite: str
    file: str
    outcome: TestOutcome
    seconds: float
    message: str = ""
    detail: str = ""


class ReportError(ValueError):
    """A report that cannot be read as JUnit XML; ``path`` names the file."""

    def __init__(self, path: Union[str, Path], problem: str):
        super().__init__(f"cannot read JUnit XML {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


def read_report(path: Path) -> List[TestCase]:
    """Every testcase of the JUnit report at ``path``, in document order.

    Raises FileNotFoundError when there is no file, ReportError when it is not
    a regular file, is larger than MAX_REPORT_BYTES, or is not JUnit XML.
    """
    try:
        data = read_file(path, MAX_REPORT_BYTES + 1)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ReportError(path, error.strerror or str(error)) from None
    return parse_report(data, path)


def parse_report(data: bytes, path: Union[str, Path]) -> List[TestCase]:
    """Every testcase of a report's bytes ``data`` (read from ``path``, named in
    errors), in document order; ReportError as :func:`read_report`."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(path, f"larger than {MAX_REPORT_BYTES} bytes")
    try:
        top = ElementTree.fromstring(data)
    except ElementTree.ParseError as error:
        raise ReportError(path, f"not XML ({error})") from None
    if top.tag not in ("testsuites", "testsuite"):
        raise ReportError(path, f"root element is <{top.tag}>, not <testsuites> or <testsuite>")
    return [_test_case(case, suite, file) for suite, file, case in _cases(top, "", "")]


def _cases(
    element: ElementTree.Element, suite: str, file: str
) -> Iterator[Tuple[str, str, ElementTree.Element]]:
    """Every <testcase> below ``element`` with the name and file of its nearest suite."""
    if element.tag == "testsuite":
        suite = element.get("name") or suite
        file = element.get("file") or element.get("filepath") or file
    for child in element:
        if child.tag == "testcase":
            yield suite, file, child
        elif child.tag in ("testsuite", "testsuites"):
            yield from _cases(child, suite, file)


def _test_case(case: ElementTree.Element, suite: str, suite_file: str) -> TestCase:
    outcome, message, detail = TestOutcome.PASSED, "", ""
    for tag, ending in _ENDINGS:
        found = case.find(tag)
        if found is not None:
            outcome, message = ending, first_line(found.get("message") or found.text or "")
            detail = (found.text or "").strip()[:DETAIL_LENGTH]
            break
    return TestCase(
        name=case.get("name") or "",
        classname=case.get("classname") or "",
        suite=suite,
        file=(case.get("file") or suite_file).replace("\\", "/"),
        outcome=outcome,
        seconds=_seconds(case.get("time")),
        message=message,
        detail=detail,
    )


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped, at most MESSAGE_LENGTH characters."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= MESSAGE_LENGTH else line[: MESSAGE_LENGTH - 3] + "..."


def _seconds(text: Optional[str]) -> float:
    try:
        seconds = float((text or "0").replace(",", ""))  # NOTE: some runners write 1,234.5
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def normal_path(text: str) -> str:
    """``./a//b/``, ``a/b/...`` and ``a\\b`` -> ``a/b``: one spelling of a relative path."""
    if text.endswith("/..."):
        text = text[: -len("/...")]
    parts = text.replace("\\", "/").split("/")
    return "/".join(part for part in parts if part not in ("", "."))


class TestIds:
    """Test ids for the testcases of reports whose commands ran in ``root``.

    ``known`` are files the ids may name (relative to ``root``, such as the
    files of a task's items); a file not among them is looked for on disk
    below ``root``. A dotted classname or a report path is matched whole
    first, then with leading directories taken off (the runner's root is
    above ``root``: a monorepo), then as the unique known file it ends
    (the runner's root is below ``root``).
    """

    __test__ = False  # NOTE: a name pytest would otherwise try to collect as tests

    def __init__(self, root: Path, known: Iterable[str] = ()):
        self.root = Path(os.path.abspath(root))
        self.known = {normal_path(path) for path in known if path}
        self._by_suffix: Optional[Dict[str, List[str]]] = None
        self._exists: Dict[str, bool] = {}

    def of(self, case: TestCase) -> str:
        """The test id of ``case`` (see the module's docstring)."""
        file, inner = self.file_of(case)
        if file:
            return "::".join([file, *inner, case.name])
        return f"{case.classname}::{case.name}" if case.classname else case.name

    def file_of(self, case: TestCase) -> Tuple[str, List[str]]:
        """``(file, classes)``: the file of ``case`` relative to ``root`` and the
        classes inside it that hold the test, or ``("", [])`` when unknown."""
        if case.file:
            file = self._located(self._relative(case.file))
            if file:
                return file, self._inner_classes(file, case.classname)
        parts = [part for part in case.classname.split(".") if part]
        for start in range(len(parts)):
            for end in range(len(parts), start, -1):
                file = self._located("/".join(parts[start:end]) + ".py")
                if file:
                    return file, parts[end:]
        return "", []

    def _relative(self, path: str) -> str:
        if os.path.isabs(path):
            try:
                return os.path.relpath(path, self.root)
            except ValueError:  # NOTE: another drive, on Windows only
                return path
        return path

    def _located(self, candidate: str) -> str:
        """``candidate`` as a file below ``root``: itself, or the one known file
        it is the tail of; "" when neither."""
        candidate = normal_path(candidate)
        if not candidate or candidate.startswith("../"):
            stripped = candidate
            while stripped.startswith("../"):
                stripped = stripped[3:]
            return self._unique_tail(stripped) if stripped else ""
        if self._is_file(candidate):
            return candidate
        return self._unique_tail(candidate)

    def _is_file(self, path: str) -> bool:
        if path in self.known:
            return True
        if path not in self._exists:
            self._exists[path] = os.path.isfile(self.root / path)
        return self._exists[path]

    def _unique_tail(self, tail: str) -> str:
        if self._by_suffix is None:
            self._by_suffix = {}
            for path in self.known:
                parts = path.split("/")
                for start in range(1, len(parts)):
                    self._by_suffix.setdefault("/".join(parts[start:]), []).append(path)
        matches = self._by_suffix.get(tail, [])
        return matches[0] if len(matches) == 1 else ""

    @staticmethod
    def _inner_classes(file: str, classname: str) -> List[str]:
        """The classes of a dotted ``classname`` after the part naming ``file``:
        ``TestY`` of ``tests.test_x.TestY``, ``sub.tests.test_x.TestY`` (the
        runner's root above ours) or ``test_x.TestY`` (below) for ``tests/test_x.py``."""
        if not file.endswith(".py"):
            return []
        stem, parts = file[: -len(".py")].split("/"), classname.split(".")
        for index, part in enumerate(parts):
            shared = min(index, len(stem) - 1)
            if part == stem[-1] and parts[index - shared : index] == stem[-1 - shared : -1]:
                return parts[index + 1 :]
        return []


@dataclass(frozen=True)
class TestResult:
    """One test across the runs that ran it: ``case`` as it ran last, and
    ``failures``, the cases of the earlier runs in which it failed or erred."""

    __test__ = False  # NOTE: a name pytest would otherwise try to collect as tests

    id: str
    case: TestCase
    failures: Tuple[TestCase, ...] = ()
    runs: int = 1

    @property
    def outcome(self) -> TestOutcome:
        return self.case.outcome

    @property
    def failing(self) -> bool:
        """Whether it failed or erred the last time it ran."""
        return self.case.outcome in FAILING_TESTS

    @property
    def flaky(self) -> bool:
        """Whether it passed the last time after failing before (Surefire's flakyFailure)."""
        return self.case.outcome == TestOutcome.PASSED and bool(self.failures)

    def then(self, later: TestResult) -> TestResult:
        """This result followed by ``later`` runs of the same test."""
        failures = self.failures + ((self.case,) if self.failing else ()) + later.failures
        return TestResult(self.id, later.case, failures, self.runs + later.runs)


#: Within one run, the outcome kept for a test reported twice: the worst.
_RANK = {TestOutcome.SKIPPED: 0, TestOutcome.PASSED: 1, TestOutcome.FAILED: 2, TestOutcome.ERROR: 3}


def fold(
    runs: Iterable[Iterable[TestCase]],
    ids: TestIds,
    earlier: Optional[Mapping[str, TestResult]] = None,
) -> Dict[str, TestResult]:
    """Each test of ``runs`` (the cases of each run, oldest run first), on top of
    the ``earlier`` results, by test id in the order first seen. A test reported
    twice in one run counts once, with its worst outcome (error, failed,
    passed, skipped); a later run's outcome replaces an earlier one's."""
    results = dict(earlier or {})
    for cases in runs:
        this_run: Dict[str, TestCase] = {}
        for case in cases:
            test_id = ids.of(case)
            seen = this_run.get(test_id)
            if seen is None or _RANK[case.outcome] > _RANK[seen.outcome]:
                this_run[test_id] = case
        for test_id, case in this_run.items():
            before, now = results.get(test_id), TestResult(test_id, case)
            results[test_id] = now if before is None else before.then(now)
    return results


def runner_items(cases: Iterable[TestCase], ids: TestIds, *, whole: bool) -> List[str]:
    """The items that make a task's command run just ``cases`` again, once each.

    ``whole``: the command takes its items as whole arguments (``{items}``),
    so each test goes back as its pytest node id, which needs its file; else
    the items are joined inside an argument (``{items:SEP}``, as in Go's
    ``-run '^(A|B)$'``), so each goes back as its name, a subtest (``TestA/b``)
    as its top-level test. ValueError, naming the test, for one that cannot.
    """
    items: Dict[str, None] = {}
    for case in cases:
        if whole:
            if not ids.file_of(case)[0]:
                raise ValueError(
                    f"test '{ids.of(case)}' names no file in its report, and a command that"
                    " takes whole items ({items}) is given tests as pytest node ids (file::test)"
                )
            items[ids.of(case)] = None
        elif case.name:
            items[case.name.split("/")[0]] = None
        else:
            raise ValueError(f"a test of class '{case.classname}' has no name in its report")
    return list(items)
