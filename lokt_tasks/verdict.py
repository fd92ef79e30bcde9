"""Merge records and live lock state into one verdict per shard and overall.

``judge`` looks at each shard of the current plan, its record (if any) and
who holds its lock right now, and gives it exactly one state:

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
============ ==============================================================

The overall verdict is "passed" when every shard passed (a plan with no
shards is not a pass), "failed" when any shard failed (a failing test is the
strongest signal, even while others still run), else "incomplete". Exit
codes: passed 0, failed 3, incomplete 4 (see errors.py).

JSON shape (``verdict_to_json``, version 1)::

    {
      "version": 1,
      "task": "test",
      "run_key": "1a2b3c4d5e6f",
      "verdict": "passed" | "failed" | "incomplete",
      "exit_code": 0 | 3 | 4,
      "counts": {"passed": 2, "failed": 1, "running": 0, "crashed": 0,
                 "interrupted": 0, "missing": 0, "outdated": 0, "corrupt": 0},
      "shards": [
        {
          "shard": 1,                  # 1-based index
          "lock": "test-shard-1",
          "state": "failed",           # one of the states above
          "detail": "exit 1",          # human text, "" when nothing to add
          "exit_code": 1,              # from the record; null while running
          "signal": null,              # "SIGKILL"...; null while running
          "duration": 12.345,          # seconds; for running: so far; or null
          "agent": "agent-1",          # the lock holder's while running,
          "host": "build-3",           #   else the record's; or null
          "log": "/path/shard-1.log",  # or null
          "started_at": "2024-...Z",   # RFC 3339, or null
          "ended_at": "2024-...Z",     # null while running or unfinished
          "fingerprint": "ab12...",    # the plan's fingerprint of this shard
          "record_fingerprint": "..."  # the record's (differs when outdated)
        }
      ],
      "stray_shards": []               # record numbers not in the plan
    }

Every key is always present; every state is always in ``counts``.
"""

from __future__ import annotations

import datetime
import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Tuple, Union

from . import errors
from .results import CorruptRecord, Record, RecordStore, parse_time
from .states import (
    COLORS,
    INCOMPLETE_STATES,
    SHOW_LOG_STATES,
    OverallVerdict,
    RecordOutcome,
    ShardState,
)
from .system import open_file
from .text import Cell, format_seconds, paint, shorten, table

if TYPE_CHECKING:
    from .engine import Holder
    from .plan import Plan, Shard

#: Per-shard states, in the order they are explained in the README.
STATES: Tuple[ShardState, ...] = tuple(ShardState)

#: Overall verdicts and the exit code each one leaves with.
VERDICT_EXIT_CODES: Dict[OverallVerdict, int] = {
    OverallVerdict.PASSED: errors.PASSED,
    OverallVerdict.FAILED: errors.FAILED,
    OverallVerdict.INCOMPLETE: errors.INCOMPLETE,
}

JSON_VERSION = 1

#: Lines of a failed shard's log put into its JUnit failure.
JUNIT_LOG_LINES = 50


@dataclass(frozen=True)
class Row:
    """The state of one planned shard, and what it was judged from."""

    shard: int
    lock_name: str
    state: ShardState
    #: Human text: exit code, signal, lock holder, corrupt file and reason.
    detail: str
    #: The record found for this shard (None if none, or corrupt).
    record: Optional[Record]
    #: Seconds the command took; for a running shard, seconds so far.
    duration: Optional[float]
    #: Path of the shard's log, from the record.
    log: Optional[str]
    #: The live lock holder when the state is "running", else None.
    holder: Optional[Holder] = None
    #: The plan's fingerprint of this shard.
    fingerprint: str = ""


@dataclass(frozen=True)
class Verdict:
    task: str
    run_key: str
    rows: Tuple[Row, ...]
    state: OverallVerdict
    #: Shard numbers that have records but are not in the plan (ignored).
    stray_shards: Tuple[int, ...] = ()

    @property
    def exit_code(self) -> int:
        return VERDICT_EXIT_CODES[self.state]

    @property
    def counts(self) -> Dict[ShardState, int]:
        """Rows per state, for every state in STATES (zeros included)."""
        counts = {state: 0 for state in STATES}
        for row in self.rows:
            counts[row.state] += 1
        return counts


def judge(
    plan: Plan,
    records: Mapping[int, Union[Record, CorruptRecord]],
    holders: Mapping[str, Optional[Holder]],
    *,
    run_key: str,
    now: Optional[datetime.datetime] = None,
) -> Verdict:
    """One Row per planned shard and the overall verdict.

    ``records`` are this run's records by shard number (``RecordStore.read_run``);
    ``holders`` maps each lock name to its current holder or None, as the
    engine reports it. ``now`` (aware) is only used for the elapsed time of
    running shards.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rows = tuple(
        _judge_shard(shard, records.get(shard.index), holders.get(shard.lock_name), now)
        for shard in plan.shards
    )
    planned = {shard.index for shard in plan.shards}
    stray = tuple(sorted(index for index in records if index not in planned))
    return Verdict(
        task=plan.task, run_key=run_key, rows=rows, state=_overall(rows), stray_shards=stray
    )


def judge_live(
    plan: Plan,
    store: RecordStore,
    holder_of: Callable[[str], Optional[Holder]],
    *,
    run_key: str,
    now: Optional[datetime.datetime] = None,
    rounds: int = 3,
) -> Verdict:
    """Judge the store's records against the live locks, without false crashes.

    A shard that finishes while we look could pass for crashed: its start
    record read, then its lock found free. So records are read before lock
    holders, and every "crashed" shard's record is read once more: if it
    changed, the shard moved on, and it is judged again with a fresh holder
    (at most ``rounds`` times). ``holder_of`` maps a lock name to its holder
    or None (the engine's query).
    """
    records: Dict[int, Union[Record, CorruptRecord]] = dict(store.read_run(plan.task, run_key))
    holders = {shard.lock_name: holder_of(shard.lock_name) for shard in plan.shards}
    for shard in plan.shards:
        # NOTE: every run of a task shares its lock names: a live holder that
        # runs the shard for another run is not running it for this one.
        holder = holders[shard.lock_name]
        if holder_is_live(holder) and not _started_by(records.get(shard.index), holder):
            assert holder is not None
            other = store.running_for(plan.task, shard.index, holder.owner)
            if other is not None and other != run_key:
                holders[shard.lock_name] = None
    verdict = judge(plan, records, holders, run_key=run_key, now=now)
    for _ in range(rounds):
        moved_on = False
        for row in verdict.rows:
            if row.state != ShardState.CRASHED:
                continue
            again = store.read(plan.task, run_key, row.shard)
            if again == records.get(row.shard):
                continue
            moved_on = True
            if again is None:
                records.pop(row.shard, None)
            else:
                records[row.shard] = again
            holders[row.lock_name] = holder_of(row.lock_name)
        if not moved_on:
            break
        verdict = judge(plan, records, holders, run_key=run_key, now=now)
    return verdict


def _started_by(record: Union[Record, CorruptRecord, None], holder: Holder) -> bool:
    """Whether ``record`` is the start record of ``holder``'s attempt."""
    return (
        isinstance(record, Record)
        and record.outcome == RecordOutcome.RUNNING
        and record.owner == holder.owner
    )


def _overall(rows: Tuple[Row, ...]) -> OverallVerdict:
    if any(row.state == ShardState.FAILED for row in rows):
        return OverallVerdict.FAILED
    if rows and all(row.state == ShardState.PASSED for row in rows):
        return OverallVerdict.PASSED
    return OverallVerdict.INCOMPLETE


def holder_is_live(holder: Optional[Holder]) -> bool:
    """Whether the lock holder may still be running the shard.

    A live pid counts even past the TTL (lokt keeps such a lock too); a pid
    we cannot check (another host) counts until the lock expires.
    """
    if holder is None:
        return False
    if holder.pid_status == "alive":
        return True
    return holder.pid_status == "unknown" and not holder.expired


def describe_holder(holder: Holder) -> str:
    """``held by OWNER (agent A, pid P on HOST)``."""
    return "held by %s (agent %s, pid %d on %s)" % (
        holder.owner,
        holder.agent_id,
        holder.pid,
        holder.host,
    )


def _judge_shard(
    shard: Shard,
    found: Union[Record, CorruptRecord, None],
    holder: Optional[Holder],
    now: datetime.datetime,
) -> Row:
    record = found if isinstance(found, Record) else None
    log = record.log if record is not None else None

    def row(
        state: ShardState,
        detail: str,
        duration: Optional[float] = None,
        live: Optional[Holder] = None,
    ) -> Row:
        return Row(
            shard=shard.index,
            lock_name=shard.lock_name,
            state=state,
            detail=detail,
            record=record,
            duration=duration,
            log=log,
            holder=live,
            fingerprint=shard.fingerprint,
        )

    if holder_is_live(holder):
        assert holder is not None
        elapsed = _elapsed(record, shard, now)
        return row(ShardState.RUNNING, describe_holder(holder), elapsed, holder)
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
    outcome = record.outcome
    if outcome == RecordOutcome.PASSED:
        return row(ShardState.PASSED, "", record.duration)
    if outcome == RecordOutcome.FAILED:
        how = _with_message(_how_it_ended(record), record.message)
        return row(ShardState.FAILED, how, record.duration)
    if outcome == RecordOutcome.ERROR:
        # NOTE: the engine failed before the command ran: a human has to look,
        # so it counts as a failure, not as unfinished.
        how = "engine error: %s" % (record.message or "no message")
        return row(ShardState.FAILED, how, record.duration)
    if outcome == RecordOutcome.INTERRUPTED:
        how = "interrupted by %s" % record.signal if record.signal else "interrupted"
        return row(ShardState.INTERRUPTED, _with_message(how, record.message), record.duration)
    if outcome == RecordOutcome.RUNNING:
        return row(ShardState.CRASHED, _crash_detail(record, holder))
    return row(ShardState.CORRUPT, "record has unknown outcome %r" % (outcome,))


def _how_it_ended(record: Record) -> str:
    if record.signal:
        return record.signal
    if record.exit_code is not None:
        return "exit %d" % record.exit_code
    return "failed"


def _with_message(detail: str, message: str) -> str:
    return "%s: %s" % (detail, message) if message else detail


def _crash_detail(record: Record, holder: Optional[Holder]) -> str:
    started = "started %s by %s on %s (pid %d), never finished" % (
        record.started_at,
        record.agent,
        record.host,
        record.pid,
    )
    if holder is None:
        return started + "; its lock is free"
    if holder.pid_status == "dead":
        return started + "; lock holder pid %d on %s is dead" % (holder.pid, holder.host)
    return started + "; its lock (held on %s) expired" % holder.host


def _elapsed(record: Optional[Record], shard: Shard, now: datetime.datetime) -> Optional[float]:
    if (
        record is None
        or record.outcome != RecordOutcome.RUNNING
        or record.fingerprint != shard.fingerprint
    ):
        return None
    try:
        started = parse_time(record.started_at)
    except ValueError:
        return None
    return max((now - started).total_seconds(), 0.0)


# --- JSON -------------------------------------------------------------------


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
    }


def _row_to_json(row: Row) -> Dict[str, object]:
    record = row.record
    running = row.state == ShardState.RUNNING
    if running and row.holder is not None:
        agent: Optional[str] = row.holder.agent_id
        host: Optional[str] = row.holder.host
    else:
        agent = record.agent if record else None
        host = record.host if record else None
    started_at = record.started_at if record else None
    if running and (
        record is None
        or record.outcome != RecordOutcome.RUNNING
        or record.fingerprint != row.fingerprint
    ):
        started_at = None
    return {
        "shard": row.shard,
        "lock": row.lock_name,
        "state": row.state,
        "detail": row.detail,
        "exit_code": None if running or record is None else record.exit_code,
        "signal": None if running or record is None else record.signal,
        "duration": None if row.duration is None else round(row.duration, 3),
        "agent": agent,
        "host": host,
        "log": row.log,
        "started_at": started_at,
        "ended_at": None if running or record is None else record.ended_at,
        "fingerprint": row.fingerprint,
        "record_fingerprint": record.fingerprint if record else None,
    }


# --- JUnit XML --------------------------------------------------------------

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
    suite = ElementTree.Element("testsuite")
    suite.set("name", "lokt-tasks.%s" % verdict.task)
    counts = verdict.counts
    suite.set("tests", str(len(verdict.rows)))
    failures, passes = counts[ShardState.FAILED], counts[ShardState.PASSED]
    suite.set("failures", str(failures))
    suite.set("errors", str(len(verdict.rows) - failures - passes))
    suite.set("skipped", "0")
    suite.set("time", _junit_time(sum(row.duration or 0.0 for row in verdict.rows)))
    properties = ElementTree.SubElement(suite, "properties")
    for name, value in (("run_key", verdict.run_key), ("verdict", verdict.state)):
        prop = ElementTree.SubElement(properties, "property")
        prop.set("name", name)
        prop.set("value", xml_safe(value))
    for row in verdict.rows:
        case = ElementTree.SubElement(suite, "testcase")
        case.set("classname", verdict.task)
        case.set("name", "shard-%d" % row.shard)
        case.set("time", _junit_time(row.duration or 0.0))
        if row.state == ShardState.PASSED:
            continue
        if row.state == ShardState.FAILED:
            problem = ElementTree.SubElement(case, "failure")
            problem.set("message", xml_safe(row.detail))
        else:
            problem = ElementTree.SubElement(case, "error")
            problem.set("message", xml_safe("%s: %s" % (row.state, row.detail)))
        problem.set("type", row.state)
        body = row.detail
        shows_log = row.log and row.state != ShardState.RUNNING
        log_tail = tail(row.log, JUNIT_LOG_LINES) if shows_log else ""
        if log_tail:
            body = "%s\n--- last %d lines of %s ---\n%s" % (
                row.detail,
                JUNIT_LOG_LINES,
                row.log,
                log_tail,
            )
        problem.text = xml_safe(body)
    ElementTree.indent(suite)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        + ElementTree.tostring(suite, encoding="unicode")
        + "\n"
    )


def _junit_time(seconds: float) -> str:
    return "%.3f" % seconds


# --- Text table -------------------------------------------------------------


def render_table(verdict: Verdict, *, color: bool) -> str:
    """The verdict as aligned text: one row per shard, then a summary line.

    Pure: returns the text (no trailing newline); colour codes only when
    ``color`` is true.
    """
    rows: List[List[Union[str, Cell]]] = [["shard", "state", "time", "detail"]]
    for row in verdict.rows:
        state = Cell(str(row.state), COLORS.get(row.state, "") if color else "")
        rows.append([str(row.shard), state, format_seconds(row.duration), row.detail])
    lines = ["%s, run %s" % (verdict.task, verdict.run_key)]
    lines.extend(table(rows, right={2}))
    for row in verdict.rows:
        if row.log and row.state in SHOW_LOG_STATES:
            lines.append("log of shard %d: %s" % (row.shard, row.log))
    if verdict.stray_shards:
        numbers = ", ".join(str(index) for index in verdict.stray_shards)
        lines.append("ignored records for shards not in the plan: %s" % numbers)
    lines.append(summary_line(verdict, color=color))
    return "\n".join(lines)


def summary_line(verdict: Verdict, *, color: bool = False) -> str:
    """``verdict: FAILED - 2 passed, 1 failed (shard 3: exit 1)``."""
    word = verdict.state.upper()
    if color:
        word = paint(word, COLORS[verdict.state])
    counts = verdict.counts
    parts = ["%d %s" % (counts[state], state) for state in STATES if counts[state]]
    text = "verdict: %s - %s" % (word, ", ".join(parts) if parts else "no shards")
    notes = _problem_notes(verdict)
    return text + (" (%s)" % notes if notes else "")


def _problem_notes(verdict: Verdict, limit: int = 3) -> str:
    """The first few shards that did not pass, failed ones first."""
    failed = [row for row in verdict.rows if row.state == ShardState.FAILED]
    others = [row for row in verdict.rows if row.state in INCOMPLETE_STATES]
    problems = failed + others
    notes = []
    for row in problems[:limit]:
        detail = shorten(row.detail, 60) if row.state == ShardState.FAILED else row.state
        notes.append("shard %d: %s" % (row.shard, detail))
    if len(problems) > limit:
        notes.append("%d more" % (len(problems) - limit))
    return "; ".join(notes)


# --- Logs -------------------------------------------------------------------


def tail(
    path: Union[str, os.PathLike[str], None], lines: int = 20, *, max_bytes: int = 1024 * 1024
) -> str:
    """The last ``lines`` lines of a file, reading backwards from its end.

    Reads at most ``max_bytes`` however long the log is. Returns "" when the
    file is missing or unreadable: a lost log must not hide a verdict.
    """
    if path is None or lines <= 0:
        return ""
    block = 8192
    try:
        with open(open_file(path), "rb") as handle:
            position = handle.seek(0, os.SEEK_END)
            data = b""
            while position > 0 and data.count(b"\n") <= lines and len(data) < max_bytes:
                step = min(block, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except OSError:
        return ""
    ends_with_newline = data.endswith(b"\n")
    body = data[:-1] if ends_with_newline else data
    kept = body.split(b"\n")[-lines:]
    if not body and not ends_with_newline:
        return ""
    text = b"\n".join(kept) + (b"\n" if ends_with_newline else b"")
    return text.decode("utf-8", "replace")
