"""Merge records and live lock state into one verdict per shard and overall.

``judge`` gives each shard of the current plan exactly one state, from its
record (if any) and who holds its lock right now:

============ ==============================================================
passed       the record says passed, for this plan (same fingerprint)
failed       the record says the command failed (exit code or signal), or
             that the lock engine failed before it could run ("error"
             outcome: a human has to look, so it counts as a failure)
timed-out    the record says the command ran past the task's timeout and
             was stopped; it fails the verdict as a failure does
running      a live agent holds the shard's lock (pid alive, or on another
             host and not expired), whatever the record says: a rerun in
             progress is running
crashed      a start record for this plan exists but nobody holds the lock
             any more (free, holder dead, or expired): the agent died
interrupted  the run was stopped by SIGINT/SIGTERM before it finished
missing      no record at all, and nobody running it
outdated     a record exists but for another plan (its fingerprint differs:
             other items or another command)
corrupt      the record file could not be read; the detail names the file
             (or it says passed, but a report it names is missing,
             changed or unreadable: its tests are not known)
waiting      a live agent holds the shard's lock and waits for a slot or a
             resource (its record says "waiting"): the command has not
             started yet
============ ==============================================================

The overall verdict is "passed" when every shard passed (a plan with no
shards is not a pass), "failed" when any shard failed or timed out (a failing
test is the strongest signal, even while others still run), else "incomplete".

Each finished shard's tests come from the JUnit reports its record names by
digest (``Record.reports``: its command's, then its retries'), found by their
place beside the record, never by a path or a time stored anywhere: a
report another attempt left, or one changed since, is not read. A test's
runs are folded into one result (``junit.fold``), reruns of failed tests
(``shard-all --failed-tests``) on top (:func:`with_reruns`): a failed
shard whose failing tests all passed since passes, unless ``flaky`` is
"fail" (a test that passed on a rerun is flaky).

``verdict_to_json`` gives the document the README shows (version 2): every key
always present, and ``"counts": {"passed": 2, "failed": 1, "timed-out": 0,
"running": 0, "crashed": 0, "interrupted": 0, "missing": 0, "outdated": 0,
"corrupt": 0, "waiting": 0}``
listing every state. While a shard runs, its ``exit_code``, ``signal`` and
``ended_at`` are null, its ``duration`` is so far and its ``agent`` and ``host``
are the lock holder's. Its ``timing`` says how long the run took and could
have taken (see ``_timing``); ``report.py`` draws the document, and nothing
else, as a page and a terminal timeline.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import errors
from .attempt import digest
from .junit import ReportError, TestCase, TestIds, TestResult, fold, parse_report
from .plan import rerun_lock_name
from .results import (
    RECORD_LAG,
    AnyRecord,
    CorruptRecord,
    Record,
    RecordStore,
    format_time,
    parse_time,
)
from .states import (
    COLORS,
    FAILED_STATES,
    INCOMPLETE_STATES,
    SHOW_LOG_STATES,
    STARTED_OUTCOMES,
    OverallVerdict,
    RecordOutcome,
    ShardState,
    TestOutcome,
)
from .system import open_file, read_file
from .text import Cell, format_seconds, paint, shorten, table

if TYPE_CHECKING:
    from .engine import Holder
    from .plan import Plan, PlanStats, Shard

STATES: Tuple[ShardState, ...] = tuple(ShardState)  # in the order the README explains them
#: Overall verdicts and the exit code each one leaves with.
VERDICT_EXIT_CODES: Dict[OverallVerdict, int] = {
    OverallVerdict.PASSED: errors.PASSED,
    OverallVerdict.FAILED: errors.FAILED,
    OverallVerdict.INCOMPLETE: errors.INCOMPLETE,
}

JSON_VERSION = 2
JUNIT_LOG_LINES = 50  # lines of a failed shard's log put into its JUnit failure
JSON_LOG_LINES = 20  # lines of a shard's log put into the JSON (``log_tail``)
#: Shard states drawn on a timeline: their start (and end, if any) belong to this plan.
TIMED_STATES = frozenset(
    {
        ShardState.PASSED,
        ShardState.FAILED,
        ShardState.TIMED_OUT,
        ShardState.INTERRUPTED,
        ShardState.RUNNING,
        ShardState.CRASHED,
    }
)
#: Failing tests the table lists before "and N more" (the JSON lists them all).
LISTED_TESTS = 20
#: Width the table's lines under the shards are cut to (test ids excepted).
TABLE_WIDTH = 80


@dataclass(frozen=True)
class ShardTests:
    """A shard's tests, from the reports its record names, in the order first
    reported; ``problem`` says why a report was not read ("" when all were);
    ``unread`` whether a report the record names by digest is missing,
    changed or unreadable (then its tests are not known); ``reruns`` maps the
    tests last run by a rerun of failed tests to its number."""

    results: Tuple[TestResult, ...] = ()
    problem: str = ""
    reruns: Mapping[str, int] = dataclasses.field(default_factory=dict)
    unread: bool = False

    @property
    def failing(self) -> List[TestResult]:
        return [result for result in self.results if result.failing]

    @property
    def flaky(self) -> List[TestResult]:
        return [result for result in self.results if result.flaky]

    @property
    def counts(self) -> Dict[str, int]:
        """Tests per last outcome (every TestOutcome word), and ``flaky``."""
        counts = {str(outcome): 0 for outcome in TestOutcome}
        for result in self.results:
            counts[str(result.outcome)] += 1
        counts["flaky"] = len(self.flaky)
        return counts


@dataclass(frozen=True)
class Row:
    """The state of one planned shard, and what it was judged from."""

    shard: int
    lock_name: str
    state: ShardState
    detail: str  # for people: exit code, signal, lock holder, corrupt file and reason
    record: Optional[Record]  # None if none, or corrupt
    duration: Optional[float]  # seconds the command took; for a running shard, so far
    log: Optional[str]  # from the record
    holder: Optional[Holder] = None  # the live lock holder when "running"
    fingerprint: str = ""  # the plan's
    estimate: Optional[float] = None  # the plan's estimated seconds, None without timings
    items: Tuple[str, ...] = ()  # the plan's
    #: Its tests, when its record names reports (None: no record, or none named).
    tests: Optional[ShardTests] = None


@dataclass(frozen=True)
class Verdict:
    task: str
    run_key: str
    rows: Tuple[Row, ...]
    state: OverallVerdict
    stray_shards: Tuple[int, ...] = ()  # numbers of records not in the plan (ignored)
    #: What the plan leaves out or runs twice (``Plan.uncovered``, ``Plan.overlaps``).
    uncovered: Tuple[str, ...] = ()
    overlaps: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()
    #: The plan's balance figures (``Plan.stats``), for the estimates.
    stats: Optional[PlanStats] = None
    #: When the verdict was judged (RFC 3339 UTC); running shards are dated by it.
    judged_at: str = ""
    #: The reruns of failed tests folded in (see with_reruns), oldest first.
    reruns: Tuple[Rerun, ...] = ()

    @property
    def tests(self) -> List[Tuple[int, TestResult]]:
        """Every test of every shard, with its shard's number, in shard order."""
        return [(row.shard, test) for row in self.rows if row.tests for test in row.tests.results]

    @property
    def test_counts(self) -> Dict[str, int]:
        """Tests per last outcome and ``flaky``, over every shard (ShardTests.counts)."""
        total = ShardTests().counts
        for row in self.rows:
            for word, count in (row.tests.counts if row.tests else {}).items():
                total[word] += count
        return total

    @property
    def plan_problems(self) -> List[str]:
        """One line per problem of the plan, which keep the verdict from passing."""
        problems = []
        if self.uncovered:
            shown = ", ".join(self.uncovered[:5]) + (" ..." if len(self.uncovered) > 5 else "")
            problems.append("%d item(s) in no shard: %s" % (len(self.uncovered), shown))
        for item, shards in self.overlaps:
            numbers = ", ".join(map(str, shards))
            problems.append("%s is in shards %s: it runs more than once" % (item, numbers))
        return problems

    @property
    def exit_code(self) -> int:
        return VERDICT_EXIT_CODES[self.state]

    @property
    def counts(self) -> Dict[ShardState, int]:
        """Rows per state, for every state in STATES (zeros included)."""
        return {state: sum(row.state == state for row in self.rows) for state in STATES}


@dataclass(frozen=True)
class Rerun:
    """A rerun of a run's failed tests: its number, run key, and verdict (None
    when its plan cannot be read: ``problem`` says why)."""

    number: int
    run_key: str
    verdict: Optional[Verdict]
    problem: str = ""


def judge(
    plan: Plan,
    records: Mapping[int, Optional[AnyRecord]],
    holders: Mapping[str, Optional[Holder]],
    *,
    run_key: str,
    now: Optional[datetime.datetime] = None,
    tests: Optional[Mapping[int, ShardTests]] = None,
) -> Verdict:
    """One Row per planned shard and the overall verdict, from this run's records by
    shard number (``RecordStore.read_run``), each lock name's current holder or
    None, and the tests of the shards whose records name reports (see
    :func:`shard_tests`). ``now`` (aware) only dates running shards."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    tests = tests or {}
    rows = tuple(
        _judge_shard(shard, records.get(shard.index), holders.get(shard.lock_name), now)
        for shard in plan.shards
    )
    rows = tuple(
        _unvouched(dataclasses.replace(row, tests=tests.get(row.shard))) if _has_tests(row) else row
        for row in rows
    )
    planned = {shard.index for shard in plan.shards}
    stray = tuple(sorted(index for index in records if index not in planned))
    return Verdict(
        plan.task,
        run_key,
        rows,
        _overall(rows, plan.uncovered, plan.overlaps),
        stray,
        plan.uncovered,
        plan.overlaps,
        stats=plan.stats,
        judged_at=format_time(now),
    )


def _unvouched(row: Row) -> Row:
    """A passed shard whose report cannot be read as its record names it is
    corrupt, not passed: its tests, which may have failed, are not known."""
    if row.state != ShardState.PASSED or row.tests is None or not row.tests.unread:
        return row
    detail = "passed, but its tests are not known: %s" % row.tests.problem
    return dataclasses.replace(row, state=ShardState.CORRUPT, detail=detail)


def _has_tests(row: Row) -> bool:
    """Whether the row's record is this plan's, finished: its reports are its tests."""
    return row.state not in (ShardState.RUNNING, ShardState.OUTDATED) and row.record is not None


def _overall(rows: Tuple[Row, ...], uncovered: Tuple[str, ...], overlaps: tuple) -> OverallVerdict:
    # NOTE: a plan that leaves an item out, or runs one twice, is not an
    # honest pass whatever its shards did: never skipped, never twice.
    complete = not uncovered and not overlaps
    if any(row.state in FAILED_STATES for row in rows):
        return OverallVerdict.FAILED
    if rows and complete and all(row.state == ShardState.PASSED for row in rows):
        return OverallVerdict.PASSED
    return OverallVerdict.INCOMPLETE


def plan_test_ids(plan: Plan) -> TestIds:
    """The ids of the tests of ``plan``'s reports (see junit.TestIds)."""
    known = (item.partition("::")[0] for shard in plan.shards for item in shard.items)
    return TestIds(plan.cwd, known)


def shard_tests(
    store: RecordStore, record: Record, ids: TestIds, run_key: Optional[str] = None
) -> Optional[ShardTests]:
    """The tests of the reports ``record`` names (None when it names none),
    each read from its place beside the record and only if its digest is the
    one the record names; ``run_key`` where to look (default: the record's)."""
    if not record.reports:
        return None
    runs: List[List[TestCase]] = []
    problems, unread = [], False
    for run, expected in enumerate(record.reports):
        which = "its command" if run == 0 else "retry %d" % run
        path = store.junit_path(record.task, run_key or record.run_key, record.shard, run)
        if expected is None:
            problems.append("%s left no report" % which)
            continue
        try:
            data = read_file(path)
        except FileNotFoundError:
            problems.append("the report of %s is missing (%s)" % (which, path.name))
            unread = True
            continue
        except OSError as error:
            problems.append("%s: %s" % (path.name, error.strerror or error))
            unread = True
            continue
        if digest(data) != expected:
            problems.append("%s is not the report its record names (changed since)" % path.name)
            unread = True
            continue
        try:
            runs.append(parse_report(data, path))
        except ReportError as error:
            problems.append("%s: %s" % (path.name, error.problem))
            unread = True
    return ShardTests(tuple(fold(runs, ids).values()), "; ".join(problems), unread=unread)


def with_reruns(verdict: Verdict, reruns: Sequence[Rerun], *, flaky: str = "pass") -> Verdict:
    """``verdict`` with the reruns of its failed tests folded in, oldest first.

    A rerun's test result comes after the one of the shard that ran the test
    (tests no shard ran are left out), and counts only when the rerun's
    shard started after that shard's record ended: a shard run again since
    (``--force``, ``--failed``) is judged by its new record, never by an
    older rerun. A failed shard whose report named
    failing tests, and whose command was not killed by a signal, passes once
    each of those passed since, unless ``flaky`` is "fail": a test that
    failed and then passed is flaky, whether on a retry or in a rerun.
    """
    if not reruns:
        return verdict
    results = {row.shard: {t.id: t for t in row.tests.results} for row in verdict.rows if row.tests}
    owner = {test: shard for shard, tests in results.items() for test in tests}
    last_rerun: Dict[int, Dict[str, int]] = {shard: {} for shard in results}
    record_of = {row.shard: row.record for row in verdict.rows}
    for rerun in reruns:
        for rerun_row in rerun.verdict.rows if rerun.verdict else ():
            for later in rerun_row.tests.results if rerun_row.tests else ():
                shard = owner.get(later.id)
                if shard is None or not _ran_after(rerun_row.record, record_of[shard]):
                    continue
                results[shard][later.id] = results[shard][later.id].then(later)
                last_rerun[shard][later.id] = rerun.number
    rows = []
    for row in verdict.rows:
        if row.tests is None or not last_rerun.get(row.shard):
            rows.append(row)
            continue
        tests = dataclasses.replace(
            row.tests,
            results=tuple(results[row.shard].values()),
            reruns={**row.tests.reruns, **last_rerun[row.shard]},
        )
        row = dataclasses.replace(row, tests=tests)
        if _passed_since(row, flaky):
            fixed = len([t for t in tests.results if t.id in last_rerun[row.shard] and t.flaky])
            detail = "%s; %s passed on a rerun" % (row.detail, _count(fixed, "failed test"))
            row = dataclasses.replace(row, state=ShardState.PASSED, detail=detail)
        rows.append(row)
    return dataclasses.replace(
        verdict,
        rows=tuple(rows),
        state=_overall(tuple(rows), verdict.uncovered, verdict.overlaps),
        reruns=tuple(reruns),
    )


def _ran_after(later: Optional[Record], earlier: Optional[Record]) -> bool:
    """Whether ``later`` (a rerun's record) started once ``earlier`` had ended."""
    if later is None or earlier is None:
        return False
    try:
        end = parse_time(earlier.ended_at or earlier.started_at)
        return parse_time(later.started_at) >= end
    except ValueError:
        return False


def _passed_since(row: Row, flaky: str) -> bool:
    """Whether a failed shard's failure was its tests, all of which passed since."""
    record, tests = row.record, row.tests
    if row.state != ShardState.FAILED or record is None or tests is None:
        return False
    if record.outcome != RecordOutcome.FAILED or record.signal is not None or tests.problem:
        return False
    rerun = [test for test in tests.results if test.id in tests.reruns]
    return bool(rerun) and not tests.failing and not (flaky == "fail" and tests.flaky)


def _count(count: int, noun: str) -> str:
    return "%d %s%s" % (count, noun, "" if count == 1 else "s")


def judge_live(
    plan: Plan,
    store: RecordStore,
    holder_of: Callable[[str], Optional[Holder]],
    *,
    run_key: str,
    now: Optional[datetime.datetime] = None,
    rounds: int = 3,
) -> Verdict:
    """Judge the store's records against the live locks (``holder_of``: a lock
    name's holder or None), without false crashes: a shard that finishes while
    we look could pass for crashed (start record read, then its lock found free),
    so records are read before holders, and a crashed shard whose record changed
    since is judged again with a fresh holder (at most ``rounds`` times)."""
    records: Dict[int, Optional[AnyRecord]] = dict(store.read_run(plan.task, run_key))
    holders = {shard.lock_name: holder_of(shard.lock_name) for shard in plan.shards}
    for shard in plan.shards:
        # NOTE: every run of a task shares its lock names: a live holder that
        # runs the shard for another run is not running it for this one.
        holder, record = holders[shard.lock_name], records.get(shard.index)
        if holder is None or not holder_is_live(holder):
            continue
        if isinstance(record, Record) and record.outcome in STARTED_OUTCOMES:
            if record.owner == holder.owner:
                continue  # the holder's own start record: it runs the shard for this run
        patience = max(RECORD_LAG - holder.age_sec, 0.0)  # a lock taken a moment ago
        rerun = shard.lock_name == rerun_lock_name(plan.task, shard.index)
        newest = store.newest_for(
            plan.task, shard.index, holder.owner, patience=patience, rerun=rerun
        )
        if newest is not None and (newest[0] != run_key or newest[1] not in STARTED_OUTCOMES):
            # NOTE: it runs the shard for another run, or has finished ours and
            # is about to release the lock: the record tells this run's state.
            holders[shard.lock_name] = None
    verdict = judge(plan, records, holders, run_key=run_key, now=now)
    for _ in range(rounds):
        moved_on = False
        for row in verdict.rows:
            if row.state == ShardState.CRASHED:
                again = store.read(plan.task, run_key, row.shard)
                if again != records.get(row.shard):
                    moved_on = True
                    records[row.shard] = again  # None when the record is gone
                    holders[row.lock_name] = holder_of(row.lock_name)
        if not moved_on:
            break
        verdict = judge(plan, records, holders, run_key=run_key, now=now)
    ids = plan_test_ids(plan)
    tests = {
        row.shard: found
        for row in verdict.rows
        if row.record is not None and _has_tests(row)
        for found in [shard_tests(store, row.record, ids, run_key)]
        if found is not None
    }
    return (
        judge(plan, records, holders, run_key=run_key, now=now, tests=tests) if tests else verdict
    )


def holder_is_live(holder: Optional[Holder]) -> bool:
    """Whether the lock holder may still be running the shard: a live pid even
    past the TTL (lokt keeps such a lock too), a pid we cannot check (another
    host) until the lock expires."""
    if holder is None:
        return False
    return holder.pid_status == "alive" or (holder.pid_status == "unknown" and not holder.expired)


def describe_holder(holder: Holder) -> str:
    """``held by OWNER (agent A, pid P on HOST)``."""
    return f"held by {holder.owner} (agent {holder.agent_id}, pid {holder.pid} on {holder.host})"


def _started_under(record: Optional[Record], fingerprint: str) -> bool:
    """Whether ``record`` is a start record (no final outcome yet) of this plan."""
    return (
        record is not None
        and record.outcome == RecordOutcome.RUNNING
        and record.fingerprint == fingerprint
    )


def _judge_shard(
    shard: Shard,
    found: Optional[AnyRecord],
    holder: Optional[Holder],
    now: datetime.datetime,
) -> Row:
    record = found if isinstance(found, Record) else None
    row = functools.partial(
        Row,
        shard.index,
        shard.lock_name,
        record=record,
        duration=None,
        log=record.log if record is not None else None,
        fingerprint=shard.fingerprint,
        estimate=shard.estimate,
        items=shard.items,
    )
    if holder is not None and holder_is_live(holder):
        if (
            record is not None
            and record.outcome == RecordOutcome.WAITING
            and record.fingerprint == shard.fingerprint
            and record.owner == holder.owner
        ):
            detail = "%s; %s" % (record.message or "waiting", describe_holder(holder))
            return row(ShardState.WAITING, detail, holder=holder)
        elapsed = None
        if record is not None and _started_under(record, shard.fingerprint):
            try:
                elapsed = max((now - parse_time(record.started_at)).total_seconds(), 0.0)
            except ValueError:
                pass
        return row(ShardState.RUNNING, describe_holder(holder), duration=elapsed, holder=holder)
    if isinstance(found, CorruptRecord):
        return row(ShardState.CORRUPT, "unreadable record %s: %s" % (found.path, found.reason))
    if record is None:
        return row(ShardState.MISSING, "no record")
    if record.fingerprint != shard.fingerprint:
        return row(
            ShardState.OUTDATED,
            "recorded for another plan (outcome %s, fingerprint %s)"
            % (record.outcome, record.fingerprint[:12]),
        )
    outcome, duration = record.outcome, record.duration
    if outcome == RecordOutcome.PASSED:  # the message tells of flaky tests
        return row(ShardState.PASSED, record.message, duration=duration)
    if outcome == RecordOutcome.FAILED:
        how = record.signal or (
            "failed" if record.exit_code is None else "exit %d" % record.exit_code
        )
        return row(ShardState.FAILED, _with_message(how, record.message), duration=duration)
    if outcome == RecordOutcome.ERROR:
        # NOTE: the engine failed before the command ran: a human has to look,
        # so it counts as a failure, not as unfinished.
        how = "engine error: %s" % (record.message or "no message")
        return row(ShardState.FAILED, how, duration=duration)
    if outcome == RecordOutcome.TIMED_OUT:
        how = record.signal or ("" if record.exit_code is None else "exit %d" % record.exit_code)
        detail = record.message or "exceeded its timeout"
        return row(ShardState.TIMED_OUT, detail + (" (%s)" % how if how else ""), duration=duration)
    if outcome == RecordOutcome.INTERRUPTED:
        how = "interrupted by %s" % record.signal if record.signal else "interrupted"
        return row(ShardState.INTERRUPTED, _with_message(how, record.message), duration=duration)
    if outcome in STARTED_OUTCOMES:
        return row(ShardState.CRASHED, _crash_detail(record, holder))
    return row(ShardState.CORRUPT, "record has unknown outcome %r" % (outcome,))


def _with_message(detail: str, message: str) -> str:
    return "%s: %s" % (detail, message) if message else detail


def _crash_detail(record: Record, holder: Optional[Holder]) -> str:
    started = (
        f"started {record.started_at} by {record.agent} on {record.host} (pid {record.pid}),"
        " never finished"
    )
    if record.outcome == RecordOutcome.WAITING:
        started = (
            f"{record.message or 'waiting'} since {record.started_at}, by {record.agent} on"
            f" {record.host} (pid {record.pid}); its command never started"
        )
    if holder is None:
        return started + "; its lock is free"
    if holder.pid_status == "dead":
        return started + "; lock holder pid %d on %s is dead" % (holder.pid, holder.host)
    return started + "; its lock (held on %s) expired" % holder.host


def verdict_to_json(verdict: Verdict, *, commit: Optional[str] = None) -> Dict[str, object]:
    """The verdict as a JSON-ready dict; the shape is documented above and in the
    README (verdict JSON). ``commit`` is the commit checked out where the
    verdict was judged (``results.head_commit``), or None.

    ``tests`` is null when no shard's record names a report, else every test
    of every shard; a shard that did not pass, or holds a failing or flaky
    test, gets its log tail; the tests' measured seconds bound the run from
    below (see ``_timing``).
    """
    reruns = {row.shard: row.tests.reruns for row in verdict.rows if row.tests}
    entries: Optional[List[Dict[str, Any]]] = None
    if any(row.tests is not None for row in verdict.rows):
        entries = [
            _test_to_json(shard, test, reruns.get(shard, {})) for shard, test in verdict.tests
        ]
    noted = {
        entry["shard"]
        for entry in entries or ()
        if entry["flaky"] or entry["outcome"] in (TestOutcome.FAILED, TestOutcome.ERROR)
    }
    rows = [
        _row_to_json(row, row.state in SHOW_LOG_STATES or row.shard in noted)
        for row in verdict.rows
    ]
    timing = _timing(verdict, rows, entries)
    return {
        "version": JSON_VERSION,
        "task": verdict.task,
        "run_key": verdict.run_key,
        "commit": commit,
        "judged_at": verdict.judged_at or None,
        "verdict": verdict.state,
        "exit_code": verdict.exit_code,
        "counts": verdict.counts,
        "shards": rows,
        "timing": timing,
        "tests": entries,
        "stray_shards": list(verdict.stray_shards),
        "uncovered_items": list(verdict.uncovered),
        "overlapping_items": {item: list(shards) for item, shards in verdict.overlaps},
        "test_counts": verdict.test_counts,
        "reruns": [
            {
                "rerun": rerun.number,
                "run_key": rerun.run_key,
                "problem": rerun.problem or None,
                "verdict": rerun.verdict.state if rerun.verdict else None,
                "counts": rerun.verdict.counts if rerun.verdict else None,
                "shards": [_row_to_json(row, False) for row in rerun.verdict.rows]
                if rerun.verdict
                else [],
            }
            for rerun in verdict.reruns
        ],
    }


def _test_to_json(shard: int, test: TestResult, reruns: Mapping[str, int]) -> Dict[str, object]:
    return {
        "id": test.id,
        "shard": shard,
        "outcome": test.outcome,
        "flaky": test.flaky,
        "runs": test.runs,
        "rerun": reruns.get(test.id),
        "seconds": round(test.case.seconds, 3),
        "message": test.case.message or (test.failures[-1].message if test.failures else ""),
        "name": test.case.name,
        "classname": test.case.classname,
        "file": test.case.file or None,
    }


def _row_to_json(row: Row, with_tail: bool) -> Dict[str, object]:
    record = row.record
    running = row.state == ShardState.RUNNING
    final = None if running else record  # where the fields of a finished shard come from
    live = row.holder if running else None
    started_at = record.started_at if record else None
    if running and not _started_under(record, row.fingerprint):
        started_at = None  # a running shard's start is that of this plan's start record
    log_tail = xml_safe(tail(row.log, JSON_LOG_LINES)) if with_tail and row.log else None
    return {
        "shard": row.shard,
        "lock": row.lock_name,
        "state": row.state,
        "detail": row.detail,
        "exit_code": final.exit_code if final else None,
        "signal": final.signal if final else None,
        "duration": None if row.duration is None else round(row.duration, 3),
        "estimate": None if row.estimate is None else round(row.estimate, 3),
        "items": list(row.items),
        "agent": live.agent_id if live else (record.agent if record else None),
        "host": live.host if live else (record.host if record else None),
        "engine": record.engine if record else None,
        "log": row.log,
        "log_tail": log_tail or None,
        "started_at": started_at,
        "ended_at": final.ended_at if final else None,
        "waited": None,  # filled in by _timing
        "fingerprint": row.fingerprint,
        "record_fingerprint": record.fingerprint if record else None,
        "retries": final.retries if final else None,
        "tests": row.tests.counts if row.tests else None,
        "test_problem": row.tests.problem or None if row.tests else None,
    }


def _span(
    shard: Mapping[str, Any],
) -> Optional[Tuple[datetime.datetime, Optional[datetime.datetime]]]:
    """A timed shard's start and end (None: crashed, its end unknown); None when untimed."""
    if shard["state"] not in TIMED_STATES or not shard["started_at"]:
        return None
    try:
        start = parse_time(shard["started_at"])
        if shard["ended_at"]:
            return start, parse_time(shard["ended_at"])
    except ValueError:
        return None
    if shard["state"] == ShardState.RUNNING and shard["duration"] is not None:
        return start, start + datetime.timedelta(seconds=shard["duration"])
    return start, None


def _timing(
    verdict: Verdict, shards: List[Dict[str, Any]], tests: Optional[Sequence[Mapping[str, Any]]]
) -> Dict[str, Any]:
    """The run's ``timing`` (see the README), and each timed shard's ``waited``.

    ``wall`` runs from the first shard's start to the last one's end (to now
    while one runs); ``work`` sums the shards' seconds; ``ideal`` is work per
    planned shard; ``lower_bound`` is ``max(ideal, heaviest item)``, the
    plan's own bound (``PlanStats.lower_bound``) in measured seconds: no split
    into as many shards finishes sooner. The heaviest item is measured when
    ``tests`` name items (a test whose id is the item or starts with
    ``item::``), else the plan's estimate (a ``timings`` split), else unknown.
    """
    spans = {shard["shard"]: _span(shard) for shard in shards}
    starts = [span[0] for span in spans.values() if span]
    ends = [span[1] for span in spans.values() if span and span[1]]
    first = min(starts) if starts else None
    last = max(ends) if ends else None
    for shard in shards:
        span = spans[shard["shard"]]
        if span and first is not None:
            shard["waited"] = round((span[0] - first).total_seconds(), 3)
    timed = [s["duration"] for s in shards if spans[s["shard"]] and s["duration"] is not None]
    work = math.fsum(timed)
    ideal = work / len(shards) if shards else 0.0
    heaviest = _heaviest_item(verdict, tests)
    wall = (last - first).total_seconds() if first and last and last >= first else None
    return {
        "started_at": format_time(first) if first else None,
        "ended_at": format_time(last) if last else None,
        "wall": None if wall is None else round(wall, 3),
        "work": round(work, 3),
        "ideal": round(ideal, 3),
        "lower_bound": round(max(ideal, heaviest["seconds"] if heaviest else 0.0), 3),
        "heaviest_item": heaviest,
        "largest": round(max(timed), 3) if timed else None,
        "balance": round(max(timed) / ideal, 3) if timed and ideal > 0 else None,
    }


def _heaviest_item(
    verdict: Verdict, tests: Optional[Sequence[Mapping[str, Any]]]
) -> Optional[Dict[str, Any]]:
    """``{"item", "seconds", "measured"}`` of the heaviest single item, or None."""
    items = {item for row in verdict.rows for item in row.items}
    measured: Dict[str, float] = {}
    for test in tests or ():
        parts = str(test["id"]).split("::")
        # NOTE: the item a test belongs to is its id, or the longest ``::`` prefix of it
        # that is an item (a file, a class).
        owner = next(
            (
                name
                for name in ("::".join(parts[:n]) for n in range(len(parts), 0, -1))
                if name in items
            ),
            None,
        )
        if owner is not None:
            measured[owner] = measured.get(owner, 0.0) + float(test["seconds"] or 0.0)
    if measured:
        heaviest = min(measured, key=lambda name: (-measured[name], name))
        return {"item": heaviest, "seconds": round(measured[heaviest], 3), "measured": True}
    stats = verdict.stats
    if stats is not None and stats.unit == "seconds" and stats.heaviest_item is not None:
        seconds = round(stats.heaviest, 3)
        return {"item": stats.heaviest_item, "seconds": seconds, "measured": False}
    return None


_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` without terminal colour codes and characters XML 1.0 forbids."""
    return _XML_ILLEGAL.sub("", _ANSI_ESCAPE.sub("", text))


def verdict_to_junit(verdict: Verdict) -> str:
    """The verdict as one JUnit XML report: ``<testsuites>`` holding a
    ``<testsuite>`` per shard (properties: shard, state, agent, host, run key,
    retries) with every test case of its reports as they last ran (a flaky
    test passes, with a Surefire ``<flakyFailure>`` per failed run; a test
    still failing has a ``<rerunFailure>`` per earlier failed run).

    A shard gets a test case of its own (``shard-N``) when its tests are not
    known (no report, or a task that writes none): a pass only when it passed;
    and a failing one whenever it did not pass and no test of it fails (it
    crashed, is missing, running, interrupted, outdated, corrupt, or failed
    outside its tests), so a CI's test tab is never green for a shard that
    did not pass. A plan that leaves items out or runs one twice is a
    failing ``plan`` test case.
    """
    root = ElementTree.Element("testsuites", name="lokt-tasks.%s" % verdict.task)
    for row in verdict.rows:
        suite = ElementTree.SubElement(
            root, "testsuite", name="%s.shard-%d" % (verdict.task, row.shard)
        )
        record = row.record
        properties = ElementTree.SubElement(suite, "properties")
        for name, value in (
            ("shard", str(row.shard)),
            ("state", str(row.state)),
            (
                "agent",
                (row.holder.agent_id if row.holder else record.agent if record else "") or "",
            ),
            ("host", (row.holder.host if row.holder else record.host if record else "") or ""),
            ("run_key", verdict.run_key),
            ("retries", str(record.retries if record else 0)),
        ):
            ElementTree.SubElement(properties, "property", name=name, value=xml_safe(value))
        tests = row.tests.results if row.tests else ()
        for test in tests:
            _junit_test(suite, test)
        failing = any(test.failing for test in tests)
        if not tests or (row.state != ShardState.PASSED and not failing):
            _junit_shard(suite, verdict.task, row)
        _junit_counts(suite)
    problems = verdict.plan_problems
    if problems:  # NOTE: a CI test tab must not show green for a plan that skips items
        suite = ElementTree.SubElement(root, "testsuite", name="%s.plan" % verdict.task)
        case = ElementTree.SubElement(suite, "testcase", classname=verdict.task, name="plan")
        failure = ElementTree.SubElement(case, "failure", message=xml_safe("; ".join(problems)))
        failure.set("type", "plan")
        failure.text = xml_safe("\n".join(problems))
        _junit_counts(suite)
    for name in ("tests", "failures", "errors", "skipped"):
        root.set(name, str(sum(int(suite.get(name, "0")) for suite in root)))
    root.set("time", "%.3f" % sum(float(suite.get("time", "0")) for suite in root))
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n%s\n' % ElementTree.tostring(
        root, encoding="unicode"
    )


def _junit_test(suite: ElementTree.Element, test: TestResult) -> None:
    case = test.case
    element = ElementTree.SubElement(suite, "testcase", classname=xml_safe(case.classname))
    element.set("name", xml_safe(case.name))
    if case.file:
        element.set("file", xml_safe(case.file))
    element.set("time", "%.3f" % case.seconds)
    if case.outcome != TestOutcome.PASSED:
        tag = {TestOutcome.FAILED: "failure", TestOutcome.ERROR: "error"}.get(
            case.outcome, "skipped"
        )
        ending = ElementTree.SubElement(element, tag, message=xml_safe(case.message))
        if tag != "skipped":
            ending.set("type", tag)
        ending.text = xml_safe(case.detail) or None
    # NOTE: Maven Surefire's words for the earlier runs of a rerun test.
    kind = "flaky" if test.flaky else "rerun"
    if test.outcome == TestOutcome.SKIPPED:
        return
    for failure in test.failures:
        word = "Failure" if failure.outcome == TestOutcome.FAILED else "Error"
        earlier = ElementTree.SubElement(element, kind + word, message=xml_safe(failure.message))
        earlier.set("type", word.lower())
        if failure.detail:
            ElementTree.SubElement(earlier, "stackTrace").text = xml_safe(failure.detail)


def _junit_shard(suite: ElementTree.Element, task: str, row: Row) -> None:
    """The test case that stands for a whole shard (see verdict_to_junit)."""
    case = ElementTree.SubElement(suite, "testcase", classname=task, name="shard-%d" % row.shard)
    case.set("time", "%.3f" % (row.duration or 0.0))
    problem = row.tests.problem if row.tests else ""
    if row.state == ShardState.PASSED:
        if problem:
            ElementTree.SubElement(case, "system-out").text = xml_safe(problem)
        return
    failed = row.state in FAILED_STATES
    detail = row.detail + ("; " + problem if problem else "")
    message = detail if row.state == ShardState.FAILED else "%s: %s" % (row.state, detail)
    ending = ElementTree.SubElement(
        case, "failure" if failed else "error", message=xml_safe(message), type=row.state
    )
    # NOTE: a running or waiting shard's log is (or is about to be) its new attempt's.
    unstarted = (ShardState.RUNNING, ShardState.WAITING)
    log_tail = tail(row.log, JUNIT_LOG_LINES) if row.state not in unstarted else ""
    body = detail
    if log_tail:
        body += "\n--- last %d lines of %s ---\n%s" % (JUNIT_LOG_LINES, row.log, log_tail)
    ending.text = xml_safe(body)


def _junit_counts(suite: ElementTree.Element) -> None:
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    for name, tag in (("failures", "failure"), ("errors", "error"), ("skipped", "skipped")):
        suite.set(name, str(sum(case.find(tag) is not None for case in cases)))
    suite.set("time", "%.3f" % sum(float(case.get("time", "0")) for case in cases))


def render_table(verdict: Verdict, *, color: bool) -> str:
    """The verdict as aligned text (no trailing newline): one row per shard
    (with its tests passed/failed/skipped when its reports are known), the
    failing tests (at most LISTED_TESTS), the flaky ones, the reruns of failed
    tests, then a summary line; colour codes only when ``color`` is true."""
    tested = any(row.tests for row in verdict.rows)  # NOTE: no tests column without reports
    rows: List[List[Union[str, Cell]]] = [["shard", "state", "time", "tests p/f/s", "detail"]]
    for row in verdict.rows:
        state = Cell(str(row.state), COLORS.get(row.state, "") if color else "")
        detail = row.detail
        if row.tests and row.tests.problem:
            detail = "%s%s" % (detail + "; " if detail else "", row.tests.problem)
        rows.append([str(row.shard), state, format_seconds(row.duration), _tests_cell(row), detail])
    if not tested:
        rows = [cells[:3] + cells[4:] for cells in rows]
    lines = ["%s, run %s" % (verdict.task, verdict.run_key), *table(rows, right={2})]
    for row in verdict.rows:
        if row.log and row.state in SHOW_LOG_STATES:
            lines.append("log of shard %d: %s" % (row.shard, row.log))
    lines += _listed_tests(verdict, color=color)
    for rerun in verdict.reruns:
        if rerun.verdict is None:
            lines.append("rerun %d: %s" % (rerun.number, rerun.problem))
            continue
        shards = rerun.verdict.counts
        states = ", ".join("%d %s" % (shards[state], state) for state in STATES if shards[state])
        tests = sum(len(shard.tests.results) for shard in rerun.verdict.rows if shard.tests)
        lines.append(
            "rerun %d of failed tests (run %s): %s, shards %s"
            % (rerun.number, rerun.run_key, _count(tests, "test"), states or "none")
        )
    if verdict.stray_shards:
        numbers = ", ".join(str(index) for index in verdict.stray_shards)
        lines.append("ignored records for shards not in the plan: %s" % numbers)
    lines.extend("plan: %s" % problem for problem in verdict.plan_problems)
    if tested:
        counts = verdict.test_counts
        failed = counts[TestOutcome.FAILED] + counts[TestOutcome.ERROR]
        words = "%d passed, %d failed, %d skipped" % (
            counts[TestOutcome.PASSED],
            failed,
            counts[TestOutcome.SKIPPED],
        )
        lines.append(
            "tests: %s%s" % (words, ", %d flaky" % counts["flaky"] if counts["flaky"] else "")
        )
    lines.append(summary_line(verdict, color=color))
    return "\n".join(lines)


def _tests_cell(row: Row) -> str:
    """``12/1/0``: the shard's tests passed, failed (or erred) and skipped."""
    if row.tests is None:
        return "-"
    counts = row.tests.counts
    failed = counts[TestOutcome.FAILED] + counts[TestOutcome.ERROR]
    cell = "%d/%d/%d" % (counts[TestOutcome.PASSED], failed, counts[TestOutcome.SKIPPED])
    return cell + (" +%d flaky" % counts["flaky"] if counts["flaky"] else "")


def _listed_tests(verdict: Verdict, *, color: bool) -> List[str]:
    """Each failing test (id, shard, first message line), then each flaky one."""
    lines = []
    for title, chosen in (
        ("failed", [(shard, t) for shard, t in verdict.tests if t.failing]),
        ("flaky", [(shard, t) for shard, t in verdict.tests if t.flaky]),
    ):
        if not chosen:
            continue
        heading = "%s tests (%d):" % (title, len(chosen))
        lines.append(
            paint(heading, COLORS["failed" if title == "failed" else "warning"])
            if color
            else heading
        )
        for shard, test in chosen[:LISTED_TESTS]:
            if test.flaky:
                how = "passed after %s" % _count(len(test.failures), "failure")
                message = test.failures[-1].message
            else:
                how, message = str(test.outcome), test.case.message
            lines.append("  %s  (shard %d, %s)" % (test.id, shard, how))
            if message:
                lines.append(shorten("      " + message, TABLE_WIDTH))
        if len(chosen) > LISTED_TESTS:
            lines.append(
                "  and %d more (verify --json lists every test)" % (len(chosen) - LISTED_TESTS)
            )
    return lines


def summary_line(verdict: Verdict, *, color: bool = False) -> str:
    """``verdict: FAILED - 2 passed, 1 failed (shard 3: exit 1)``, naming the
    first few shards that did not pass, failed ones first."""
    word = verdict.state.upper()
    if color:
        word = paint(word, COLORS[verdict.state])
    counts = verdict.counts
    parts = ["%d %s" % (counts[state], state) for state in STATES if counts[state]]
    text = "verdict: %s - %s" % (word, ", ".join(parts) if parts else "no shards")
    failed = [row for row in verdict.rows if row.state in FAILED_STATES]
    problems = failed + [row for row in verdict.rows if row.state in INCOMPLETE_STATES]
    notes = [
        "shard %d: %s"
        % (row.shard, shorten(row.detail, 60) if row.state in FAILED_STATES else row.state)
        for row in problems[:3]
    ]
    if len(problems) > 3:
        notes.append("%d more" % (len(problems) - 3))
    return text + (" (%s)" % "; ".join(notes) if notes else "")


def tail(
    path: Union[str, os.PathLike[str], None], lines: int = 20, *, max_bytes: int = 1024 * 1024
) -> str:
    """The last ``lines`` lines of a file, reading at most ``max_bytes`` back from
    its end; "" when it is missing or unreadable: a lost log must not hide a verdict."""
    if path is None or lines <= 0:
        return ""
    try:
        with open(open_file(path), "rb") as handle:
            position = handle.seek(0, os.SEEK_END)
            data = b""
            while position > 0 and data.count(b"\n") <= lines and len(data) < max_bytes:
                step = min(8192, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except OSError:
        return ""
    newline = b"\n" if data.endswith(b"\n") else b""
    kept = data[: len(data) - len(newline)].split(b"\n")[-lines:]
    return (b"\n".join(kept) + newline).decode("utf-8", "replace")
