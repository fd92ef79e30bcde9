"""Merge records and live lock state into one verdict per shard and overall.

``judge`` gives each shard of the current plan exactly one state, from its
record (if any) and who holds its lock right now:

============ ==============================================================
passed       the record says passed, for this plan (same fingerprint)
failed       the record says the command failed (exit code or signal), or
             that the lock engine failed before it could run ("error"
             outcome: a human has to look, so it counts as a failure)
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
waiting      a live agent holds the shard's lock and waits for a slot or a
             resource (its record says "waiting"): the command has not
             started yet
============ ==============================================================

The overall verdict is "passed" when every shard passed (a plan with no
shards is not a pass), "failed" when any shard failed (a failing test is the
strongest signal, even while others still run), else "incomplete".

``verdict_to_json`` gives the document the README shows (version 1): every key
always present, and ``"counts": {"passed": 2, "failed": 1, "running": 0,
"crashed": 0, "interrupted": 0, "missing": 0, "outdated": 0, "corrupt": 0,
"waiting": 0}`` listing every state. While a shard runs, its ``exit_code``,
``signal`` and ``ended_at`` are null, its ``duration`` is so far and its
``agent`` and ``host`` are the lock holder's.
"""

from __future__ import annotations

import datetime
import functools
import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Tuple, Union

from . import errors
from .results import RECORD_LAG, AnyRecord, CorruptRecord, Record, RecordStore, parse_time
from .states import (
    COLORS,
    INCOMPLETE_STATES,
    SHOW_LOG_STATES,
    STARTED_OUTCOMES,
    OverallVerdict,
    RecordOutcome,
    ShardState,
)
from .system import open_file
from .text import Cell, format_seconds, paint, shorten, table

if TYPE_CHECKING:
    from .engine import Holder
    from .plan import Plan, Shard

STATES: Tuple[ShardState, ...] = tuple(ShardState)  # in the order the README explains them
#: Overall verdicts and the exit code each one leaves with.
VERDICT_EXIT_CODES: Dict[OverallVerdict, int] = {
    OverallVerdict.PASSED: errors.PASSED,
    OverallVerdict.FAILED: errors.FAILED,
    OverallVerdict.INCOMPLETE: errors.INCOMPLETE,
}

JSON_VERSION = 1
JUNIT_LOG_LINES = 50  # lines of a failed shard's log put into its JUnit failure


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


def judge(
    plan: Plan,
    records: Mapping[int, Optional[AnyRecord]],
    holders: Mapping[str, Optional[Holder]],
    *,
    run_key: str,
    now: Optional[datetime.datetime] = None,
) -> Verdict:
    """One Row per planned shard and the overall verdict, from this run's records by
    shard number (``RecordStore.read_run``) and each lock name's current holder or
    None. ``now`` (aware) only dates running shards."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rows = tuple(
        _judge_shard(shard, records.get(shard.index), holders.get(shard.lock_name), now)
        for shard in plan.shards
    )
    planned = {shard.index for shard in plan.shards}
    stray = tuple(sorted(index for index in records if index not in planned))
    # NOTE: a plan that leaves an item out, or runs one twice, is not an
    # honest pass whatever its shards did: never skipped, never twice.
    complete = not plan.uncovered and not plan.overlaps
    if any(row.state == ShardState.FAILED for row in rows):
        overall = OverallVerdict.FAILED
    elif rows and complete and all(row.state == ShardState.PASSED for row in rows):
        overall = OverallVerdict.PASSED
    else:
        overall = OverallVerdict.INCOMPLETE
    return Verdict(plan.task, run_key, rows, overall, stray, plan.uncovered, plan.overlaps)


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
        newest = store.newest_for(plan.task, shard.index, holder.owner, patience=patience)
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
    return verdict


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
    if outcome == RecordOutcome.PASSED:
        return row(ShardState.PASSED, "", duration=duration)
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


def verdict_to_json(verdict: Verdict) -> Dict[str, object]:
    """The verdict as a JSON-ready dict; the shape is documented above."""
    return {
        "version": JSON_VERSION,
        "task": verdict.task,
        "run_key": verdict.run_key,
        "verdict": verdict.state,
        "exit_code": verdict.exit_code,
        "counts": verdict.counts,
        "shards": [_row_to_json(row) for row in verdict.rows],
        "stray_shards": list(verdict.stray_shards),
        "uncovered_items": list(verdict.uncovered),
        "overlapping_items": {item: list(shards) for item, shards in verdict.overlaps},
    }


def _row_to_json(row: Row) -> Dict[str, object]:
    record = row.record
    running = row.state == ShardState.RUNNING
    final = None if running else record  # where the fields of a finished shard come from
    live = row.holder if running else None
    started_at = record.started_at if record else None
    if running and not _started_under(record, row.fingerprint):
        started_at = None  # a running shard's start is that of this plan's start record
    return {
        "shard": row.shard,
        "lock": row.lock_name,
        "state": row.state,
        "detail": row.detail,
        "exit_code": final.exit_code if final else None,
        "signal": final.signal if final else None,
        "duration": None if row.duration is None else round(row.duration, 3),
        "agent": live.agent_id if live else (record.agent if record else None),
        "host": live.host if live else (record.host if record else None),
        "log": row.log,
        "started_at": started_at,
        "ended_at": final.ended_at if final else None,
        "fingerprint": row.fingerprint,
        "record_fingerprint": record.fingerprint if record else None,
    }


_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` without terminal colour codes and characters XML 1.0 forbids."""
    return _XML_ILLEGAL.sub("", _ANSI_ESCAPE.sub("", text))


def verdict_to_junit(verdict: Verdict) -> str:
    """The verdict as JUnit XML: one testsuite, one testcase per shard.

    Only passed shards are passes: a failed shard is a ``<failure>`` carrying
    the tail of its log; every other state is an ``<error>``, because a
    shard that did not finish under this plan did not pass.
    """
    counts, tests = verdict.counts, len(verdict.rows)
    failures, passes = counts[ShardState.FAILED], counts[ShardState.PASSED]
    suite = ElementTree.Element("testsuite", name="lokt-tasks.%s" % verdict.task, tests=str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(tests - failures - passes))
    suite.set("skipped", "0")
    suite.set("time", "%.3f" % sum(row.duration or 0.0 for row in verdict.rows))
    properties = ElementTree.SubElement(suite, "properties")
    for name, value in (("run_key", verdict.run_key), ("verdict", verdict.state)):
        ElementTree.SubElement(properties, "property", name=name, value=xml_safe(value))
    for row in verdict.rows:
        case = ElementTree.SubElement(suite, "testcase", classname=verdict.task)
        case.set("name", "shard-%d" % row.shard)
        case.set("time", "%.3f" % (row.duration or 0.0))
        if row.state == ShardState.PASSED:
            continue
        failed = row.state == ShardState.FAILED
        message = row.detail if failed else "%s: %s" % (row.state, row.detail)
        problem = ElementTree.SubElement(
            case, "failure" if failed else "error", message=xml_safe(message), type=row.state
        )
        log_tail = tail(row.log, JUNIT_LOG_LINES) if row.state != ShardState.RUNNING else ""
        body = row.detail
        if log_tail:
            body += "\n--- last %d lines of %s ---\n%s" % (JUNIT_LOG_LINES, row.log, log_tail)
        problem.text = xml_safe(body)
    problems = verdict.plan_problems
    if problems:  # NOTE: a CI test tab must not show green for a plan that skips items
        case = ElementTree.SubElement(suite, "testcase", classname=verdict.task, name="plan")
        failure = ElementTree.SubElement(case, "failure", message=xml_safe("; ".join(problems)))
        failure.set("type", "plan")
        failure.text = xml_safe("\n".join(problems))
        suite.set("tests", str(tests + 1))
        suite.set("failures", str(failures + 1))
    ElementTree.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n%s\n' % ElementTree.tostring(
        suite, encoding="unicode"
    )


def render_table(verdict: Verdict, *, color: bool) -> str:
    """The verdict as aligned text (no trailing newline): one row per shard, then
    a summary line; colour codes only when ``color`` is true."""
    rows: List[List[Union[str, Cell]]] = [["shard", "state", "time", "detail"]]
    for row in verdict.rows:
        state = Cell(str(row.state), COLORS.get(row.state, "") if color else "")
        rows.append([str(row.shard), state, format_seconds(row.duration), row.detail])
    lines = ["%s, run %s" % (verdict.task, verdict.run_key), *table(rows, right={2})]
    for row in verdict.rows:
        if row.log and row.state in SHOW_LOG_STATES:
            lines.append("log of shard %d: %s" % (row.shard, row.log))
    if verdict.stray_shards:
        numbers = ", ".join(str(index) for index in verdict.stray_shards)
        lines.append("ignored records for shards not in the plan: %s" % numbers)
    lines.extend("plan: %s" % problem for problem in verdict.plan_problems)
    lines.append(summary_line(verdict, color=color))
    return "\n".join(lines)


def summary_line(verdict: Verdict, *, color: bool = False) -> str:
    """``verdict: FAILED - 2 passed, 1 failed (shard 3: exit 1)``, naming the
    first few shards that did not pass, failed ones first."""
    word = verdict.state.upper()
    if color:
        word = paint(word, COLORS[verdict.state])
    counts = verdict.counts
    parts = ["%d %s" % (counts[state], state) for state in STATES if counts[state]]
    text = "verdict: %s - %s" % (word, ", ".join(parts) if parts else "no shards")
    failed = [row for row in verdict.rows if row.state == ShardState.FAILED]
    problems = failed + [row for row in verdict.rows if row.state in INCOMPLETE_STATES]
    notes = [
        "shard %d: %s"
        % (row.shard, shorten(row.detail, 60) if row.state == ShardState.FAILED else row.state)
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
