"""Recorded test times: the durations file, and JUnit reports folded into it.

``split = "timings"`` balances shards by these times, and every plan shows
them as estimates. A durations file (format version 2) keeps, per task and
per item, the last :data:`SAMPLES` times of each of the item's tests,
newest last, with sorted keys and one test per line, so that a fold changes
only the lines of the tests that ran::

    {
      "version": 2,
      "tasks": {
        "test": {
          "tests/test_api.py": {
            "TestLogin::test_ok": [0.41, 0.39, 0.4],
            "test_health": [0.012, 0.011]
          },
          "tests/test_cli.py::test_help": [1.3, 1.2, 1.4],
          "tests/test_old.py": 3.2
        }
      }
    }

An item's value is an object of its tests (each named after the item:
``TestLogin::test_ok`` in ``tests/test_api.py``; by its whole test id when
it does not start with the item), a list when the item is itself the test
(a pytest node id), or a number: the item's whole time from a version-1 file
(``{item: seconds}``). A version-1 file loads as those numbers for every
task; the next write keeps the writing task's current items, and each until
it has per-test times. Seconds are rounded to two significant digits and to
milliseconds: run-to-run noise is larger than that, and fewer digits make
fewer changed lines.

**Estimates** (:meth:`TaskTimings.seconds`): a test's estimate is the median
of its samples, so one run that was slow (a loaded machine) or cut short
does not move it; an item's estimate is the sum of its tests' estimates.
Items without any time get the plan's fallback (the mean of the known ones).

**Folding** (:func:`fold_reports`): each testcase of a shard's report is
given its test id (:class:`junit.TestIds`: relative to the directory of
shards.toml whatever the runner's root) and placed in the shard's items
(:class:`ItemIndex`). Only the tests in the report get a new sample, so a
partial report (a shard interrupted, ``pytest -x``, ``--maxfail``) never
lowers a complete time. Two rules keep the file to what exists: the tests of
an item that a *passed* shard's report does not list are dropped (deleted or
renamed; a passed shard ran every test of its items), and, given the
plan's items, so are the items no longer in it (deleted or renamed files:
the committed file; a store that worktrees of several branches share keeps
them). They are dropped rather than aged out because the plan knows every
current item exactly; an item that comes back is timed again at its next run.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Callable,
    Collection,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from .config import display_path
from .errors import ConfigError
from .junit import ReportError, TestCase, TestIds, normal_path, read_report
from .system import read_file, write_atomically

FORMAT_VERSION = 2
#: Samples kept per test; the estimate is their median.
SAMPLES = 5
#: A report whose testcases match items of their shard less often than this gets a warning.
MATCH_WARNING_SHARE = 0.5
#: How many of a shard's items a mismatch warning shows.
_SHOWN_ITEMS = 3

#: Per test key (see the module docstring), its samples in seconds, oldest first;
#: or a version-1 file's whole seconds for the item.
ItemTimes = Union[float, Dict[str, List[float]]]
#: One task's part of a durations file: item -> its times.
Section = Dict[str, ItemTimes]


class DurationsError(ConfigError):
    """A durations file that cannot be used: unreadable, corrupt, or of a newer format."""

    def __init__(self, path: Path, problem: str, *, newer: bool = False):
        super().__init__(f"{display_path(path)}: {problem}")
        self.path = Path(path)
        #: Written by a newer lokt-tasks: never overwritten by this one.
        self.newer = newer


@dataclass(frozen=True)
class TaskTimings:
    """One task's recorded times, by item (shapes: see the module docstring)."""

    items: Mapping[str, ItemTimes] = field(default_factory=dict)
    #: The run key whose pinned copy these are; None for the current timings.
    pinned_by: Optional[str] = None

    def seconds(self, items: Iterable[str]) -> Dict[str, float]:
        """Estimated seconds of each of ``items`` that has recorded times."""
        found = {}
        for item in items:
            times = self.items.get(item)
            if times is not None and times != {}:
                found[item] = item_estimate(times)
        return found

    def over(self, base: TaskTimings) -> TaskTimings:
        """These times, and ``base``'s for the items these do not have."""
        return TaskTimings({**base.items, **self.items})


def item_estimate(times: ItemTimes) -> float:
    """Seconds: the sum over the item's tests of the median of their samples."""
    if isinstance(times, dict):
        # math.fsum rounds the exact sum: the order of the tests does not matter.
        return math.fsum(statistics.median(samples) for samples in times.values() if samples)
    return float(times)


@dataclass(frozen=True)
class DurationsFile:
    """A durations file as read: each task's section, and a version-1 file's items."""

    tasks: Mapping[str, Section] = field(default_factory=dict)
    #: ``{item: seconds}`` of a version-1 file, for every task.
    legacy: Mapping[str, float] = field(default_factory=dict)

    def task(self, name: str, pinned_by: Optional[str] = None) -> TaskTimings:
        return TaskTimings({**self.legacy, **self.tasks.get(name, {})}, pinned_by)


def read_durations(path: Path) -> DurationsFile:
    """The durations file at ``path``; empty when it does not exist yet.
    Raises DurationsError naming the file when it cannot be read or used."""
    return _load(Path(path))[1]


def read_task_timings(path: Path, task: str) -> Tuple[TaskTimings, Optional[str]]:
    """``task``'s times in ``path``, and a warning instead of an error: a bad
    durations file costs its timings, never a shard (empty times then)."""
    try:
        return read_durations(path).task(task), None
    except DurationsError as error:
        return TaskTimings(), f"{error}; its timings are left out"


def _load(path: Path) -> Tuple[Optional[bytes], DurationsFile]:
    """The file's bytes (None when missing) and what they say."""
    try:
        data = read_file(path)
    except (FileNotFoundError, NotADirectoryError):  # NOTE: the latter: a file on the way
        return None, DurationsFile()
    except OSError as error:
        raise DurationsError(
            path, f"cannot read durations file: {error.strerror or error}"
        ) from None
    try:
        parsed = json.loads(data.decode("utf-8", "surrogateescape"), parse_constant=_no_constant)
    except ValueError as error:
        raise DurationsError(path, f"corrupt durations file (not JSON: {error})") from None
    return data, _parse(path, parsed)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number of seconds")


def _parse(path: Path, data: object) -> DurationsFile:
    def corrupt(problem: str) -> DurationsError:
        return DurationsError(path, f"corrupt durations file ({problem})")

    if not isinstance(data, dict):
        raise corrupt("expected a JSON object")
    version = data.get("version")
    if not (isinstance(version, int) and not isinstance(version, bool) and version >= 2):
        legacy = {}
        for item, seconds in data.items():  # version 1: {item: seconds}
            if not _is_seconds(seconds):
                raise corrupt(f"'{item}' has {json.dumps(seconds)}, expected seconds")
            legacy[item] = float(seconds)
        return DurationsFile(legacy=legacy)
    if version > FORMAT_VERSION:
        raise DurationsError(
            path,
            f"durations file of format version {version}, newer than this lokt-tasks reads "
            f"({FORMAT_VERSION}); upgrade lokt-tasks",
            newer=True,
        )
    tasks = data.get("tasks")
    if not isinstance(tasks, dict):
        raise corrupt('"tasks" should be an object of tasks')
    sections: Dict[str, Section] = {}
    for task, items in tasks.items():
        if not isinstance(items, dict):
            raise corrupt(f"task '{task}' should be an object of items")
        section: Section = {}
        for item, value in items.items():
            times = _item_times(value)
            if times is None:
                shown = json.dumps(value, ensure_ascii=False)
                raise corrupt(
                    f"item '{item}' of task '{task}' has {shown[:60]}, expected seconds, "
                    "a list of seconds, or an object of such lists"
                )
            section[item] = times
        sections[task] = section
    return DurationsFile(tasks=sections)


def _item_times(value: object) -> Optional[ItemTimes]:
    if _is_seconds(value):
        return float(value)  # type: ignore[arg-type]
    tests = {"": value} if isinstance(value, list) else value
    if not isinstance(tests, dict):
        return None
    parsed: Dict[str, List[float]] = {}
    for key, samples in tests.items():
        if not isinstance(samples, list) or not samples or not all(map(_is_seconds, samples)):
            return None
        parsed[key] = [float(seconds) for seconds in samples[-SAMPLES:]]
    return parsed


def _is_seconds(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


def round_seconds(seconds: float) -> float:
    """Two significant digits, and no finer than milliseconds: 1.234 -> 1.2, 0.0567 -> 0.057."""
    return float("%.2g" % round(float(seconds), 3))


def dump_durations(tasks: Mapping[str, Mapping[str, ItemTimes]]) -> str:
    """The text of a version-2 file holding ``tasks``: sorted keys, two-space
    indent, one test per line, rounded seconds, a trailing newline."""
    body = {
        task: {item: _shape(times) for item, times in items.items()}
        for task, items in tasks.items()
    }
    return '{\n  "version": %d,\n  "tasks": %s\n}\n' % (FORMAT_VERSION, _text(body, "  "))


def _shape(times: ItemTimes) -> object:
    if isinstance(times, dict):
        return times[""] if list(times) == [""] else times
    return times


def _text(value: object, indent: str) -> str:
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = indent + "  "
        lines = [
            f"{inner}{json.dumps(key, ensure_ascii=False)}: {_text(value[key], inner)}"
            for key in sorted(value)
        ]
        return "{\n" + ",\n".join(lines) + "\n" + indent + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_text(seconds, indent) for seconds in value) + "]"
    return json.dumps(round_seconds(value))  # type: ignore[arg-type]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``<file>.lock``, for writers of ``path`` that
    read, change and replace it: no reader sees half a file (the replace is
    atomic), no writer loses another's entries."""
    with open(path.with_name(path.name + ".lock"), "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


def pin_timings(
    pinned: Path, task: str, run_key: str, current: Callable[[], TaskTimings]
) -> TaskTimings:
    """The timings a run plans with, the same for every command of that run.

    Shards record times as they finish: a later command of the run planning
    from the updated times could find every record outdated. So the first
    command writes ``current()`` to ``pinned`` with a hard link that fails if
    it exists (two agents starting at once agree), and every later one plans
    from that copy. Raises DurationsError when the pinned copy is unusable.
    """
    pinned = Path(pinned)
    if not pinned.exists():
        text = dump_durations({task: current().items})
        pinned.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_atomically(
                pinned, text.encode("utf-8", "surrogateescape"), mode=None, exclusive=True
            )
        except FileExistsError:
            pass  # another agent pinned first: plan from its copy
    return read_durations(pinned).task(task, pinned_by=run_key)


# --- folding reports ---------------------------------------------------------------


@dataclass(frozen=True)
class ShardReport:
    """A shard's JUnit report, to fold into a durations file."""

    #: The shard's lock name, for messages.
    label: str
    path: Path
    items: Tuple[str, ...]
    #: The shard passed: its report lists every test of its items, so the tests
    #: of those items that it does not list are gone (deleted or renamed).
    complete: bool
    #: Which attempt wrote the report (the record's attempt id); a ledger skips those it lists.
    attempt: str = ""


@dataclass(frozen=True)
class Mismatch:
    """A report whose testcases mostly match no item of their shard."""

    label: str
    cases: int
    matched: int
    example: TestCase
    #: The test id the example was read as.
    example_id: str
    #: A few of the shard's items it was compared with.
    compared: Tuple[str, ...]


@dataclass
class FoldSummary:
    """What a fold did to one durations file."""

    path: Path
    folded: List[str] = field(default_factory=list)  #: labels of the reports folded in
    already: List[str] = field(default_factory=list)  #: labels the ledger lists as folded
    tests: int = 0  #: samples added
    items: Set[str] = field(default_factory=set)  #: items that got samples
    dropped: int = 0  #: items dropped: no longer in the task
    written: bool = False
    mismatches: List[Mismatch] = field(default_factory=list)
    #: Warnings about reports that cannot be read.
    problems: List[str] = field(default_factory=list)
    #: The warning when the file was corrupt, and so rewritten from the new times alone.
    rewritten: Optional[str] = None


def fold_reports(
    path: Path,
    task: str,
    reports: Sequence[ShardReport],
    *,
    root: Path,
    items: Optional[Collection[str]],
    seed: Optional[TaskTimings] = None,
    ledger: Optional[Path] = None,
) -> FoldSummary:
    """Add the times in ``reports`` to ``task``'s section of the durations file
    ``path``, under its lock; the file is rewritten only when its text changes.

    ``root`` is where the commands ran (the directory of shards.toml);
    ``items`` every item of the task's plan (entries for others are dropped),
    or None to keep every entry;
    ``seed`` the times an item starts from when the file has none for it yet
    (the committed file, for a store of local times); ``ledger`` a file
    listing the attempts already folded into ``path``, which are skipped and
    to which those folded now are added. A corrupt file is rewritten from the
    reports (with the warning in ``rewritten``); one of a newer format raises
    DurationsError, and a file that cannot be written OSError. A report that
    cannot be read is a warning in ``problems``.
    """
    path = Path(path)
    summary = FoldSummary(path)
    module = go_module(root)
    read: List[Tuple[ShardReport, Dict[str, Dict[str, float]]]] = []
    for report in reports:  # parsed before taking the lock: the slow part
        try:
            samples, mismatch = report_samples(report, root, module)
        except (ReportError, OSError) as error:
            summary.problems.append(f"{report.label}: {error}; its times are not recorded")
            continue
        if mismatch is not None:
            summary.mismatches.append(mismatch)
        read.append((report, samples))
    keep = None if items is None else set(items)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        done = _read_ledger(ledger, path) if ledger is not None else set()
        try:
            before, durations = _load(path)
        except DurationsError as error:
            if error.newer:
                raise
            summary.rewritten = f"{error}; rewritten from new times, its earlier ones are lost"
            before, durations = b"", DurationsFile()
        tasks = {name: dict(section) for name, section in durations.tasks.items()}
        section: Section = {
            item: times for item, times in durations.legacy.items() if keep is None or item in keep
        }
        section.update(tasks.get(task, {}))
        for report, samples in read:
            if report.attempt and report.attempt in done:
                summary.already.append(report.label)
                continue
            summary.folded.append(report.label)
            for item, tests in samples.items():
                start = section.get(item, seed.items.get(item) if seed else None)
                section[item] = _added(start, tests, report.complete)
                summary.items.add(item)
                summary.tests += len(tests)
        if keep is not None:
            summary.dropped = sum(1 for item in section if item not in keep)
            section = {item: times for item, times in section.items() if item in keep}
        tasks[task] = section
        text = dump_durations(tasks).encode("utf-8", "surrogateescape")
        if text != before:
            try:
                mode = os.stat(path).st_mode & 0o777
            except FileNotFoundError:
                mode = 0o644
            write_atomically(path, text, mode=mode)
            summary.written = True
        if ledger is not None and summary.folded:
            _write_ledger(ledger, path, done | {r.attempt for r, _ in read if r.attempt})
    return summary


def _added(start: Optional[ItemTimes], tests: Mapping[str, float], complete: bool) -> ItemTimes:
    """An item's times with one new sample per test in ``tests``; with
    ``complete``, the tests not in ``tests`` dropped. Whole-item seconds (from
    a version-1 file) give way to per-test samples."""
    times = (
        {key: list(samples) for key, samples in start.items()} if isinstance(start, dict) else {}
    )
    for key, seconds in tests.items():
        times[key] = (times.get(key, []) + [seconds])[-SAMPLES:]
    if complete:
        times = {key: samples for key, samples in times.items() if key in tests}
    return times


def _read_ledger(ledger: Path, path: Path) -> Set[str]:
    try:
        data = json.loads(read_file(ledger).decode("utf-8"))
        folded = data["folded"][os.path.realpath(path)]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return (
        {attempt for attempt in folded if isinstance(attempt, str)}
        if isinstance(folded, list)
        else set()
    )


def _write_ledger(ledger: Path, path: Path, attempts: Set[str]) -> None:
    try:
        data = json.loads(read_file(ledger).decode("utf-8"))
        folded = data["folded"] if isinstance(data.get("folded"), dict) else {}
    except (OSError, ValueError, AttributeError):
        folded = {}
    folded[os.path.realpath(path)] = sorted(attempts)
    text = json.dumps({"version": 1, "folded": folded}, indent=2, sort_keys=True) + "\n"
    write_atomically(ledger, text.encode("utf-8", "surrogateescape"), durable=False)


# --- where a testcase belongs ---------------------------------------------------------


def report_samples(
    report: ShardReport, root: Path, module: Optional[str] = None
) -> Tuple[Dict[str, Dict[str, float]], Optional[Mismatch]]:
    """The report's seconds by item of its shard and test key, and a Mismatch
    when fewer than MATCH_WARNING_SHARE of its testcases belong to an item.
    Raises ReportError or OSError (FileNotFoundError) for a report that cannot be read."""
    cases = read_report(report.path)
    index = ItemIndex(report.items, module)
    ids = TestIds(root, known=index.files)
    samples: Dict[str, Dict[str, float]] = {}
    counted = matched = 0
    example: Optional[Tuple[TestCase, str]] = None
    for case in cases:
        if not case.name:
            continue  # NOTE: pytest's stand-in for the test a Ctrl-C cut short
        counted += 1
        file, _ = ids.file_of(case)
        test_id = ids.of(case)
        places = index.places(case, test_id, file)
        if places:
            matched += 1
        elif example is None:
            example = (case, test_id)
        for item, key in places:
            tests = samples.setdefault(item, {})
            tests[key] = tests.get(key, 0.0) + case.seconds
    rounded = {
        item: {key: round_seconds(seconds) for key, seconds in tests.items()}
        for item, tests in samples.items()
    }
    mismatch = None
    if example is not None and matched < MATCH_WARNING_SHARE * counted:
        mismatch = Mismatch(
            report.label, counted, matched, example[0], example[1], report.items[:_SHOWN_ITEMS]
        )
    return rounded, mismatch


def go_module(root: Path) -> Optional[str]:
    """The module path ``go.mod`` in ``root`` declares, or None."""
    try:
        text = read_file(Path(root) / "go.mod", 64 * 1024).decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        words = line.split("//")[0].split()
        if len(words) == 2 and words[0] == "module":
            return words[1].strip('"')
    return None


def normal_item(item: str) -> str:
    """One spelling of an item to compare with test ids: ``./a//b.py::T::t`` ->
    ``a/b.py::T::t``, ``./pkg/...`` -> ``pkg``."""
    file, separator, rest = item.partition("::")
    return normal_path(file) + separator + rest


class ItemIndex:
    """Which of a shard's items a testcase belongs to, and under which key.

    A test whose file is known (its id a pytest-style ``file::...``) belongs
    to the item equal to its id, to a node above it (``file::Class``), to its
    file, and to each directory above the file. Any other test belongs to the
    item equal to its classname (a Go package's import path, a Java class),
    to its name (a Go test name, in any package), to its suite (a file path
    some runners give as the suite's name), to a Go package directory
    (``./pkg``, or ``./pkg/...`` for those below; read from the import path
    with ``go.mod``'s module path), or to the one file item whose path ends
    with its dotted classname (``com.acme.FooTest``: ``.../com/acme/FooTest.java``).
    """

    def __init__(self, items: Iterable[str], module: Optional[str] = None):
        self.items = tuple(items)
        self.module = module
        self._by_spelling: Dict[str, List[str]] = {}
        for item in self.items:
            self._by_spelling.setdefault(normal_item(item), []).append(item)
        self._stems: Optional[Dict[str, List[str]]] = None

    @property
    def files(self) -> List[str]:
        """The paths the items name (a node id's file): what TestIds may resolve to."""
        return [spelled.partition("::")[0] for spelled in self._by_spelling]

    def places(self, case: TestCase, test_id: str, file: str) -> List[Tuple[str, str]]:
        """``(item, key)`` for each item ``case`` belongs to (see the class docstring)."""
        found: Dict[str, str] = {}

        def add(spelling: str, recursive_only: bool = False) -> None:
            for item in self._by_spelling.get(spelling, ()):
                if item not in found and (not recursive_only or item.endswith("...")):
                    found[item] = key_in_item(normal_item(item), test_id)

        if file:
            parts = test_id.split("::")
            for length in range(len(parts), 0, -1):
                add("::".join(parts[:length]))
            for directory in _parents(file):
                add(directory)
            return list(found.items())
        for text in (case.classname, case.name, case.suite):
            if text:
                add(normal_item(text))
        if self.module and (case.classname + "/").startswith(self.module + "/"):
            package = case.classname[len(self.module) :].strip("/")
            add(package)
            for directory in _parents(package) if package else ():
                add(directory, recursive_only=True)
        if "/" not in case.classname and case.classname:
            dotted = case.classname.split(".")
            for length in range(len(dotted), 0, -1):
                matches = self._stem_items().get("/".join(dotted[:length]), [])
                if len(matches) == 1:
                    found.setdefault(matches[0], key_in_item(normal_item(matches[0]), test_id))
                    break
        return list(found.items())

    def _stem_items(self) -> Dict[str, List[str]]:
        """File items by each tail of their path without the extension."""
        if self._stems is None:
            self._stems = {}
            for spelled, items in self._by_spelling.items():
                head, dot, extension = spelled.rpartition(".")
                if "::" in spelled or not dot or "/" in extension or not head:
                    continue
                parts = head.split("/")
                for start in range(len(parts)):
                    self._stems.setdefault("/".join(parts[start:]), []).extend(items)
        return self._stems


def _parents(path: str) -> List[str]:
    """``a/b/c`` -> ``["a/b", "a", ""]``: the directories above a relative path."""
    parts = path.split("/")
    return ["/".join(parts[:length]) for length in range(len(parts) - 1, -1, -1)]


def key_in_item(item: str, test_id: str) -> str:
    """How an item names one of its tests: what follows ``item::`` in the id,
    "" for the item itself, else the whole id."""
    if test_id == item:
        return ""
    if test_id.startswith(item + "::"):
        return test_id[len(item) + 2 :]
    return test_id


def fold_warnings(
    summaries: Iterable[Optional[FoldSummary]], named: Collection[Path] = ()
) -> List[str]:
    """The warnings of one command's folds: each problem once, none about a
    corrupt file already ``named`` (warned of when the command read it), and
    one for the reports whose testcases match no item (or few), naming an example."""
    problems: Dict[str, None] = {}
    mismatches: List[Mismatch] = []
    for summary in summaries:
        if summary is None:
            continue
        if summary.rewritten and summary.path not in named:
            problems[summary.rewritten] = None
        problems.update(dict.fromkeys(summary.problems))
        mismatches.extend(summary.mismatches)
    warnings = list(problems)
    if mismatches:
        first = mismatches[0]
        case = first.example
        described = f"testcase '{case.name}'"
        if case.classname:
            described += f" (classname '{case.classname}')"
        if case.file:
            described += f" (file '{case.file}')"
        others = [m.label for m in mismatches[1:]]
        also = f"; the same in {', '.join(others)}" if others else ""
        compared = ", ".join(f"'{item}'" for item in first.compared)
        warnings.append(
            f"{first.label}: {first.matched} of {first.cases} testcases in its JUnit report "
            f"belong to an item of the shard (the times of the others are not recorded): "
            f"{described} was read as '{first.example_id}' and compared with items such as "
            f"{compared}{also}"
        )
    return warnings
