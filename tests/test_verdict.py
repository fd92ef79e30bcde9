"""Verdicts: every shard state, the overall verdict and its exit code, JSON, JUnit and the table."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from lokt_tasks import errors
from lokt_tasks.attempt import digest
from lokt_tasks.engine import Holder
from lokt_tasks.junit import TestCase, TestResult
from lokt_tasks.plan import Plan, PlanStats, Shard
from lokt_tasks.results import CorruptRecord, Record, RecordStore, rerun_key
from lokt_tasks.states import ShardState, TestOutcome
from lokt_tasks.text import format_seconds
from lokt_tasks.verdict import (
    LISTED_TESTS,
    STATES,
    Rerun,
    ShardTests,
    judge,
    judge_live,
    render_table,
    summary_line,
    tail,
    verdict_to_json,
    verdict_to_junit,
    with_reruns,
)

RUN = "abc123def456"
REPO = Path(__file__).resolve().parents[1]


def make_plan(count: int = 3, task: str = "test") -> Plan:
    shards = tuple(
        Shard(
            task=task,
            index=index,
            total=count,
            items=("tests/test_%d.py" % index,),
            argv=("pytest", "tests/test_%d.py" % index),
            lock_name="%s-shard-%d" % (task, index),
            fingerprint="fp-%d" % index,
        )
        for index in range(1, count + 1)
    )
    return Plan(task=task, cwd=Path("."), shards=shards)


def make_record(shard: int = 1, **changes) -> Record:
    fields = dict(
        task="test",
        shard=shard,
        total=3,
        fingerprint="fp-%d" % shard,
        run_key=RUN,
        lock_name="test-shard-%d" % shard,
        agent="agent-%d" % shard,
        owner="alice",
        host="box",
        pid=1000 + shard,
        engine="embedded",
        started_at="2024-05-01T12:00:00.000000Z",
        outcome="passed",
        ended_at="2024-05-01T12:00:12.500000Z",
        duration=12.5,
        exit_code=0,
    )
    fields.update(changes)
    return Record(**fields)


def make_holder(shard: int = 1, pid_status: str = "alive", expired: bool = False) -> Holder:
    return Holder(
        name="test-shard-%d" % shard,
        owner="bob",
        agent_id="agent-b",
        host="other-box",
        pid=777,
        age_sec=3.0,
        pid_status=pid_status,
        expired=expired,
    )


def only_row(record=None, holder=None):
    records = {} if record is None else {1: record}
    verdict = judge(make_plan(1), records, {"test-shard-1": holder}, run_key=RUN)
    assert len(verdict.rows) == 1
    return verdict.rows[0]


# --- One state per shard ----------------------------------------------------


def test_passed_with_the_current_fingerprint():
    row = only_row(make_record())
    assert (row.state, row.duration, row.lock_name, row.shard) == (
        "passed",
        12.5,
        "test-shard-1",
        1,
    )


def test_failed_by_exit_code_and_by_signal():
    exited = only_row(make_record(outcome="failed", exit_code=3))
    assert (exited.state, exited.detail) == ("failed", "exit 3")
    killed = only_row(make_record(outcome="failed", exit_code=None, signal="SIGKILL"))
    assert (killed.state, killed.detail) == ("failed", "SIGKILL")


def test_an_engine_error_counts_as_failed_with_its_message():
    row = only_row(make_record(outcome="error", exit_code=None, message="lokt: permission denied"))
    assert row.state == "failed"
    assert row.detail == "engine error: lokt: permission denied"


@pytest.mark.parametrize(
    "pid_status, expired", [("alive", False), ("alive", True), ("unknown", False)]
)
def test_a_live_holder_means_running_even_over_a_finished_record(pid_status, expired):
    for record in (None, make_record(), make_record(outcome="failed", exit_code=1)):
        row = only_row(record, make_holder(pid_status=pid_status, expired=expired))
        assert row.state == "running"
        assert row.detail == "held by bob (agent agent-b, pid 777 on other-box)"
        assert row.holder is not None


def test_a_running_shard_shows_time_since_its_start_record():
    start = make_record(outcome="running", ended_at=None, duration=None, exit_code=None)
    now = datetime.datetime(2024, 5, 1, 12, 1, 0, tzinfo=datetime.timezone.utc)
    verdict = judge(make_plan(1), {1: start}, {"test-shard-1": make_holder()}, run_key=RUN, now=now)
    assert verdict.rows[0].duration == 60.0


@pytest.mark.parametrize(
    "holder, says",
    [
        (None, "its lock is free"),
        (make_holder(pid_status="dead"), "lock holder pid 777 on other-box is dead"),
        (make_holder(pid_status="dead", expired=True), "is dead"),
        (make_holder(pid_status="unknown", expired=True), "expired"),
    ],
)
def test_a_start_record_without_a_live_holder_is_crashed(holder, says):
    start = make_record(outcome="running", ended_at=None, duration=None, exit_code=None)
    row = only_row(start, holder)
    assert row.state == "crashed"
    assert says in row.detail
    assert "agent-1" in row.detail and "box" in row.detail


def test_interrupted():
    row = only_row(
        make_record(
            outcome="interrupted", exit_code=None, signal="SIGINT", message="stopped by SIGINT"
        )
    )
    assert row.state == "interrupted"
    assert row.detail.startswith("interrupted by SIGINT")


def test_missing_when_there_is_no_record_and_no_holder():
    for holder in (None, make_holder(pid_status="dead")):
        row = only_row(None, holder)
        assert (row.state, row.detail, row.record) == ("missing", "no record", None)


def test_a_record_for_another_plan_is_outdated_whatever_it_says():
    for outcome in ("passed", "failed", "running"):
        row = only_row(make_record(fingerprint="fp-old", outcome=outcome))
        assert row.state == "outdated"
        assert "recorded for another plan" in row.detail


def test_a_corrupt_record_is_named_and_never_passes():
    row = only_row(CorruptRecord("/results/test/k/shard-1.json", "invalid JSON"))
    assert row.state == "corrupt"
    assert "/results/test/k/shard-1.json" in row.detail and "invalid JSON" in row.detail


def test_corrupt_files_on_disk_give_corrupt_rows_not_exceptions(tmp_path):
    store = RecordStore(tmp_path)
    plan = make_plan(4)
    store.write(make_record(1))
    store.write(make_record(2))
    for shard, content in ((2, b'{"task": "test", "sha'), (3, b""), (4, b"\xff\xfe\x00garbage")):
        path = store.record_path("test", RUN, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    verdict = judge(plan, store.read_run("test", RUN), {}, run_key=RUN)

    assert [row.state for row in verdict.rows] == ["passed", "corrupt", "corrupt", "corrupt"]
    for row in verdict.rows[1:]:
        assert str(store.record_path("test", RUN, row.shard)) in row.detail
    assert verdict.state == "incomplete"
    assert verdict.exit_code == errors.INCOMPLETE


def test_a_crashed_writer_leaves_a_start_record_that_judges_as_crashed(tmp_path):
    """A process writes its start record and is killed -9: the shard shows crashed, not missing."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from lokt_tasks.plan import Shard\n"
        "from lokt_tasks.results import RecordStore, new_start_record\n"
        "shard = Shard('test', 1, 1, ('a',), ('true',), 'test-shard-1', 'fp-1')\n"
        "RecordStore(Path(sys.argv[1])).write(new_start_record(shard, run_key=sys.argv[2],"
        " agent='a', owner='o', host='h', pid=0, engine='embedded'))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), RUN],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "started\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    dead = Holder("test-shard-1", "o", "a", "h", child.pid, 1.0, "dead")

    verdict = judge(
        make_plan(1),
        RecordStore(tmp_path).read_run("test", RUN),
        {"test-shard-1": dead},
        run_key=RUN,
    )

    assert verdict.rows[0].state == "crashed"
    assert verdict.exit_code == errors.INCOMPLETE


# --- Overall verdict --------------------------------------------------------


def test_all_passed_is_passed_with_exit_0():
    verdict = judge(make_plan(3), {i: make_record(i) for i in (1, 2, 3)}, {}, run_key=RUN)
    assert (verdict.state, verdict.exit_code) == ("passed", errors.PASSED)
    assert verdict.counts == dict({state: 0 for state in STATES}, passed=3)


def test_any_failure_wins_over_incomplete():
    records = {1: make_record(1), 2: make_record(2, outcome="failed", exit_code=1)}
    verdict = judge(make_plan(3), records, {"test-shard-3": make_holder(3)}, run_key=RUN)
    assert [row.state for row in verdict.rows] == ["passed", "failed", "running"]
    assert (verdict.state, verdict.exit_code) == ("failed", errors.FAILED)


@pytest.mark.parametrize(
    "other", ["running", "crashed", "interrupted", "missing", "outdated", "corrupt"]
)
def test_anything_short_of_all_passed_is_incomplete(other):
    records = {1: make_record(1), 2: make_record(2)}
    holders = {}
    if other == "running":
        holders["test-shard-2"] = make_holder(2)
    elif other == "crashed":
        records[2] = make_record(2, outcome="running", ended_at=None, duration=None, exit_code=None)
    elif other == "interrupted":
        records[2] = make_record(2, outcome="interrupted", exit_code=None, signal="SIGTERM")
    elif other == "missing":
        del records[2]
    elif other == "outdated":
        records[2] = make_record(2, fingerprint="old")
    else:
        records[2] = CorruptRecord("/x/shard-2.json", "empty file")
    verdict = judge(make_plan(2), records, holders, run_key=RUN)
    assert verdict.rows[1].state == other
    assert (verdict.state, verdict.exit_code) == ("incomplete", errors.INCOMPLETE)


def test_a_plan_without_shards_is_not_a_pass():
    verdict = judge(make_plan(0), {}, {}, run_key=RUN)
    assert verdict.state == "incomplete"


def test_records_for_shards_outside_the_plan_are_ignored_and_reported():
    records = {1: make_record(1), 5: make_record(5)}
    verdict = judge(make_plan(1), records, {}, run_key=RUN)
    assert verdict.state == "passed"
    assert verdict.stray_shards == (5,)


# --- JSON -------------------------------------------------------------------

SHARD_KEYS = {
    "shard",
    "lock",
    "state",
    "detail",
    "exit_code",
    "signal",
    "duration",
    "estimate",
    "items",
    "agent",
    "host",
    "engine",
    "log",
    "log_tail",
    "started_at",
    "ended_at",
    "waited",
    "fingerprint",
    "record_fingerprint",
    "retries",
    "tests",
    "test_problem",
}
TIMING_KEYS = {
    "started_at",
    "ended_at",
    "wall",
    "work",
    "ideal",
    "lower_bound",
    "heaviest_item",
    "largest",
    "balance",
}


def mixed_verdict(tmp_path: Path):
    log = tmp_path / "shard-2.log"
    log.write_text("".join("line %d\n" % n for n in range(1, 201)), encoding="utf-8")
    records = {
        1: make_record(1),
        2: make_record(2, outcome="failed", exit_code=1, log=str(log)),
        4: make_record(4, outcome="running", ended_at=None, duration=None, exit_code=None),
        5: make_record(5, fingerprint="old"),
        6: CorruptRecord(str(tmp_path / "shard-6.json"), "empty file"),
        7: make_record(7, outcome="interrupted", exit_code=None, signal="SIGINT"),
        8: make_record(8, outcome="passed"),
    }
    holders = {"test-shard-8": make_holder(8)}
    return judge(make_plan(8), records, holders, run_key=RUN)


def test_json_has_the_documented_shape(tmp_path):
    verdict = mixed_verdict(tmp_path)
    data = json.loads(json.dumps(verdict_to_json(verdict)))

    assert set(data) == {
        "version",
        "task",
        "run_key",
        "commit",
        "judged_at",
        "verdict",
        "exit_code",
        "counts",
        "shards",
        "timing",
        "tests",
        "stray_shards",
        "uncovered_items",
        "overlapping_items",
        "test_counts",
        "reruns",
    }
    assert set(data["timing"]) == TIMING_KEYS
    assert (data["commit"], data["tests"]) == (None, None)
    assert (data["uncovered_items"], data["overlapping_items"]) == ([], {})
    assert (data["tests"], data["reruns"]) == (None, [])
    assert data["test_counts"] == dict.fromkeys(
        ["passed", "failed", "error", "skipped", "flaky"], 0
    )
    assert (data["version"], data["task"], data["run_key"]) == (2, "test", RUN)
    assert (data["verdict"], data["exit_code"]) == ("failed", 3)
    assert list(data["counts"]) == list(STATES)
    assert data["counts"] == {
        "passed": 1,
        "failed": 1,
        "timed-out": 0,
        "running": 1,
        "crashed": 1,
        "interrupted": 1,
        "missing": 1,
        "outdated": 1,
        "corrupt": 1,
        "waiting": 0,
    }
    assert [shard["shard"] for shard in data["shards"]] == list(range(1, 9))
    for shard in data["shards"]:
        assert set(shard) == SHARD_KEYS
    by_state = {shard["state"]: shard for shard in data["shards"]}
    assert by_state["failed"]["exit_code"] == 1
    assert by_state["failed"]["log"] == str(tmp_path / "shard-2.log")
    assert by_state["passed"]["duration"] == 12.5
    assert by_state["interrupted"]["signal"] == "SIGINT"
    running = by_state["running"]
    assert (running["agent"], running["host"], running["exit_code"], running["ended_at"]) == (
        "agent-b",
        "other-box",
        None,
        None,
    )
    assert (
        by_state["missing"]["agent"] is None and by_state["missing"]["record_fingerprint"] is None
    )
    assert (
        by_state["outdated"]["fingerprint"] == "fp-5"
        and by_state["outdated"]["record_fingerprint"] == "old"
    )


def timed_verdict(tmp_path: Path, *, stats=None, now=None):
    """Shards 1-3 ran (agent-1: 1 then 3, agent-2: 2, failing), shard 4 crashed."""
    log = tmp_path / "shard-2.log"
    log.write_text("".join("line %d\n" % n for n in range(1, 101)), encoding="utf-8")
    passed_log = tmp_path / "shard-1.log"
    passed_log.write_text("all good\n", encoding="utf-8")
    base = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)

    def at(seconds: float) -> str:
        return (base + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def ran(shard, start, end, **changes):
        fields = dict(started_at=at(start), ended_at=at(end), duration=end - start)
        return make_record(shard, **{**fields, **changes})

    records = {
        1: ran(1, 0, 10, agent="agent-1", log=str(passed_log)),
        2: ran(2, 1, 13, agent="agent-2", outcome="failed", exit_code=1, log=str(log)),
        3: ran(3, 10, 16, agent="agent-1", engine="lokt", log=str(passed_log)),
        4: make_record(
            4, outcome="running", started_at=at(2), ended_at=None, duration=None, exit_code=None
        ),
    }
    plan = make_plan(4)
    shards = tuple(
        Shard(**{**shard.__dict__, "estimate": 9.0 + shard.index, "items": ("a%d" % shard.index,)})
        for shard in plan.shards
    )
    plan = Plan(task="test", cwd=Path("."), shards=shards, stats=stats)
    return judge(plan, records, {}, run_key=RUN, now=now)


def test_json_times_the_run_and_each_shard(tmp_path):
    data = verdict_to_json(timed_verdict(tmp_path), commit="ab" * 20)

    timing = data["timing"]
    assert data["commit"] == "ab" * 20
    assert (timing["started_at"], timing["ended_at"]) == (
        "2024-05-01T12:00:00.000000Z",
        "2024-05-01T12:00:16.000000Z",
    )
    # work: 10 + 12 + 6 (the crashed shard has no time); ideal over the 4 planned shards
    assert (timing["wall"], timing["work"], timing["ideal"]) == (16.0, 28.0, 7.0)
    assert (timing["lower_bound"], timing["heaviest_item"]) == (7.0, None)
    assert (timing["largest"], timing["balance"]) == (12.0, round(12 / 7, 3))
    shards = data["shards"]
    assert [s["waited"] for s in shards] == [0.0, 1.0, 10.0, 2.0]
    assert [s["estimate"] for s in shards] == [10.0, 11.0, 12.0, 13.0]
    assert [s["items"] for s in shards] == [["a1"], ["a2"], ["a3"], ["a4"]]
    assert [s["engine"] for s in shards] == ["embedded", "embedded", "lokt", "embedded"]
    # the log tail of a failed shard only (its last JSON_LOG_LINES lines)
    assert shards[0]["log_tail"] is None and shards[2]["log_tail"] is None
    assert shards[1]["log_tail"] == "".join("line %d\n" % n for n in range(81, 101))


def test_a_running_shard_extends_the_run_to_now(tmp_path):
    now = datetime.datetime(2024, 5, 1, 12, 0, 30, tzinfo=datetime.timezone.utc)
    records_now = timed_verdict(tmp_path, now=now)
    holders = {"test-shard-4": make_holder(4)}
    plan = Plan(
        task="test", cwd=Path("."), shards=tuple(row_shard(row) for row in records_now.rows)
    )
    records = {row.shard: row.record for row in records_now.rows}
    data = verdict_to_json(judge(plan, records, holders, run_key=RUN, now=now))

    assert data["judged_at"] == "2024-05-01T12:00:30.000000Z"
    assert data["shards"][3]["state"] == "running"
    assert (data["timing"]["ended_at"], data["timing"]["wall"]) == (
        "2024-05-01T12:00:30.000000Z",
        30.0,
    )
    assert data["timing"]["work"] == 28.0 + 28.0  # shard 4 has run for 28 s so far


def row_shard(row) -> Shard:
    return Shard(
        task="test",
        index=row.shard,
        total=4,
        items=row.items,
        argv=("pytest",),
        lock_name=row.lock_name,
        fingerprint=row.fingerprint,
        estimate=row.estimate,
    )


def test_the_lower_bound_is_the_heaviest_item_when_it_outweighs_the_ideal(tmp_path):
    stats = PlanStats(
        unit="seconds",
        items=4,
        total=46.0,
        ideal=11.5,
        lower_bound=20.0,
        largest=20.0,
        balance=1.7,
        heaviest_item="a3",
        heaviest=20.0,
    )
    estimated = verdict_to_json(timed_verdict(tmp_path, stats=stats))["timing"]
    assert estimated["heaviest_item"] == {"item": "a3", "seconds": 20.0, "measured": False}
    assert estimated["lower_bound"] == 20.0

    # Measured per-test times beat the estimate: a test belongs to the item that
    # is its id or the longest "::" prefix of it.
    def result(test_id, outcome, seconds, flaky=False):
        case = TestCase(test_id.split("::")[-1], "", "", "", outcome, seconds)
        failed = dataclasses.replace(case, outcome=TestOutcome.FAILED)
        return TestResult(test_id, case, (failed,) if flaky else (), 2 if flaky else 1)

    by_shard = {
        1: [result("a1::t", TestOutcome.PASSED, 5)],
        2: [result("a2::t::x", TestOutcome.FAILED, 8.5), result("a2::u", TestOutcome.PASSED, 0.5)],
        3: [
            result("a3", TestOutcome.PASSED, 6, flaky=True),
            result("elsewhere::t", TestOutcome.SKIPPED, 99),
        ],
    }
    verdict = timed_verdict(tmp_path, stats=stats)
    rows = tuple(
        dataclasses.replace(row, tests=ShardTests(tuple(by_shard[row.shard])))
        if row.shard in by_shard
        else row
        for row in verdict.rows
    )
    data = verdict_to_json(dataclasses.replace(verdict, rows=rows))
    timing = data["timing"]
    assert timing["heaviest_item"] == {"item": "a2", "seconds": 9.0, "measured": True}
    assert timing["lower_bound"] == 9.0  # over the ideal, 7.0
    assert [t["flaky"] for t in data["tests"]] == [False, False, False, True, False]
    first = data["tests"][0]
    assert (first["id"], first["shard"], first["outcome"], first["seconds"]) == (
        "a1::t",
        1,
        "passed",
        5.0,
    )
    # a shard holding a flaky test shows its log's tail too, a plain pass does not
    tails = [shard["log_tail"] is not None for shard in data["shards"]]
    assert tails == [False, True, True, False]


# --- JUnit XML --------------------------------------------------------------


def test_junit_without_reports_has_one_testcase_per_shard_and_only_passes_pass(tmp_path):
    verdict = mixed_verdict(tmp_path)
    top = ElementTree.fromstring(verdict_to_junit(verdict).encode("utf-8"))

    assert top.tag == "testsuites"
    assert top.get("name") == "lokt-tasks.test"
    assert (top.get("tests"), top.get("failures"), top.get("errors")) == ("8", "1", "6")
    suites = top.findall("testsuite")
    assert [suite.get("name") for suite in suites] == ["test.shard-%d" % n for n in range(1, 9)]
    properties = {p.get("name"): p.get("value") for p in suites[1].iter("property")}
    assert properties == {
        "shard": "2",
        "state": "failed",
        "agent": "agent-2",
        "host": "box",
        "run_key": RUN,
        "retries": "0",
    }
    cases = [case for suite in suites for case in suite.findall("testcase")]
    assert [(case.get("classname"), case.get("name")) for case in cases] == [
        ("test", "shard-%d" % n) for n in range(1, 9)
    ]
    assert cases[0].get("time") == "12.500"
    assert list(cases[0]) == []
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "exit 1"
    assert (
        "line 200" in failure.text
        and "line 151" in failure.text
        and "line 150\n" not in failure.text
    )
    for case, state in zip(
        cases[2:], ("missing", "crashed", "outdated", "corrupt", "interrupted", "running")
    ):
        error = case.find("error")
        assert error is not None, state
        assert error.get("type") == state
        assert case.find("failure") is None


def test_junit_survives_colour_codes_and_control_characters_in_logs(tmp_path):
    log = tmp_path / "shard-1.log"
    log.write_bytes(b"\x1b[31mFAILED\x1b[0m test_x \x00\x07 bell\n\xff bad utf-8\n")
    record = make_record(
        1, outcome="failed", exit_code=1, log=str(log), message="\x1b[1mbold\x1b[0m"
    )
    verdict = judge(make_plan(1), {1: record}, {}, run_key=RUN)

    top = ElementTree.fromstring(verdict_to_junit(verdict).encode("utf-8"))

    text = top.find("testsuite/testcase/failure").text
    assert "FAILED test_x" in text and "bad utf-8" in text
    assert "\x1b" not in text and "\x00" not in text


def test_junit_without_a_readable_log_still_reports_the_failure(tmp_path):
    record = make_record(1, outcome="failed", exit_code=2, log=str(tmp_path / "gone.log"))
    top = ElementTree.fromstring(
        verdict_to_junit(judge(make_plan(1), {1: record}, {}, run_key=RUN)).encode("utf-8")
    )
    assert top.find("testsuite/testcase/failure").get("message") == "exit 2"


# --- Text table -------------------------------------------------------------


def test_table_has_a_row_per_shard_and_a_summary(tmp_path):
    records = {
        1: make_record(1),
        2: make_record(2),
        3: make_record(3, outcome="failed", exit_code=1, duration=4.0),
    }
    verdict = judge(make_plan(3), records, {}, run_key=RUN)

    text = render_table(verdict, color=False)

    lines = text.splitlines()
    assert lines[0] == "test, run %s" % RUN
    assert lines[1].split() == ["shard", "state", "time", "detail"]
    assert lines[2].split() == ["1", "passed", "12.5s"]
    assert lines[4].split() == ["3", "failed", "4.0s", "exit", "1"]
    assert lines[-1] == "verdict: FAILED - 2 passed, 1 failed (shard 3: exit 1)"
    assert "\x1b" not in text
    # Columns line up: every state starts at the same offset.
    assert (
        len({line.index(state) for line, state in zip(lines[2:5], ("passed", "passed", "failed"))})
        == 1
    )


def test_table_colours_only_when_asked(tmp_path):
    verdict = mixed_verdict(tmp_path)
    plain = render_table(verdict, color=False)
    coloured = render_table(verdict, color=True)
    assert "\x1b" not in plain
    assert "\x1b[32m" in coloured and "\x1b[31m" in coloured and "\x1b[33m" in coloured
    assert plain.splitlines() == [_strip_ansi(line) for line in coloured.splitlines()]


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_summary_lists_problems_failed_first():
    records = {
        1: make_record(1, outcome="running", ended_at=None, duration=None, exit_code=None),
        3: make_record(3, outcome="failed", signal="SIGKILL", exit_code=None),
    }
    verdict = judge(make_plan(3), records, {}, run_key=RUN)
    assert summary_line(verdict) == (
        "verdict: FAILED - 1 failed, 1 crashed, 1 missing"
        " (shard 3: SIGKILL; shard 1: crashed; shard 2: missing)"
    )


def test_a_timed_out_shard_fails_the_verdict_and_names_its_limit(tmp_path):
    """As a failure: verdict failed (exit 3), its log shown, a JUnit <failure>
    whose message names the limit; in JSON and the counts as "timed-out"."""
    log = tmp_path / "shard-2.log"
    log.write_text("test_hangs ...\nlokt-tasks: exceeded timeout 15m: stopped\n", encoding="utf-8")
    timed_out = make_record(
        2,
        outcome="timed-out",
        exit_code=None,
        signal="SIGTERM",
        message="exceeded timeout 15m",
        log=str(log),
        duration=900.4,
    )
    verdict = judge(make_plan(2), {1: make_record(1), 2: timed_out}, {}, run_key=RUN)

    assert (verdict.state, verdict.exit_code) == ("failed", errors.FAILED)
    row = verdict.rows[1]
    assert (row.state, row.detail) == ("timed-out", "exceeded timeout 15m (SIGTERM)")
    data = verdict_to_json(verdict)
    assert data["counts"]["timed-out"] == 1 and data["shards"][1]["state"] == "timed-out"
    assert (data["shards"][1]["signal"], data["shards"][1]["duration"]) == ("SIGTERM", 900.4)
    # on the timeline and in the run's figures, as any shard that ran
    assert data["shards"][1]["waited"] == 0.0 and data["timing"]["largest"] == 900.4
    lines = render_table(verdict, color=False).splitlines()
    assert lines[3].split() == [
        "2",
        "timed-out",
        "15m00s",
        "exceeded",
        "timeout",
        "15m",
        "(SIGTERM)",
    ]
    assert "log of shard 2: %s" % log in lines
    assert lines[-1] == (
        "verdict: FAILED - 1 passed, 1 timed-out (shard 2: exceeded timeout 15m (SIGTERM))"
    )
    suite = ElementTree.fromstring(verdict_to_junit(verdict).encode("utf-8"))
    assert (suite.get("failures"), suite.get("errors")) == ("1", "0")
    failure = suite.find("testsuite/testcase[@name='shard-2']/failure")
    assert failure.get("type") == "timed-out"
    assert failure.get("message") == "timed-out: exceeded timeout 15m (SIGTERM)"
    assert "test_hangs ..." in failure.text


def test_the_summary_lists_a_timeout_first_with_the_failures():
    records = {
        1: make_record(1, outcome="running", ended_at=None, duration=None, exit_code=None),
        2: make_record(2, outcome="timed-out", exit_code=143, message="exceeded timeout 1s"),
    }
    verdict = judge(make_plan(2), records, {}, run_key=RUN)
    assert summary_line(verdict) == (
        "verdict: FAILED - 1 timed-out, 1 crashed"
        " (shard 2: exceeded timeout 1s (exit 143); shard 1: crashed)"
    )


@pytest.mark.parametrize(
    "seconds, text",
    [(None, "-"), (0.04, "0.0s"), (4.25, "4.2s"), (59.9, "59.9s"), (125, "2m05s"), (3725, "1h02m")],
)
def test_durations_read_easily(seconds, text):
    assert format_seconds(seconds) == text


# --- Log tails --------------------------------------------------------------


def test_tail_gives_the_last_lines(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("one\ntwo\nthree\n", encoding="utf-8")
    assert tail(log, 2) == "two\nthree\n"
    assert tail(log, 10) == "one\ntwo\nthree\n"
    assert tail(log, 0) == ""
    log.write_text("one\ntwo\nthree", encoding="utf-8")
    assert tail(log, 2) == "two\nthree"


def test_tail_of_a_big_file_reads_from_the_end(tmp_path):
    log = tmp_path / "big.log"
    with open(log, "w", encoding="utf-8") as handle:
        for number in range(200000):
            handle.write("line %d of a long log\n" % number)
    assert (
        tail(log, 3)
        == "line 199997 of a long log\nline 199998 of a long log\nline 199999 of a long log\n"
    )


def test_tail_of_a_missing_or_empty_file_is_empty(tmp_path):
    assert tail(tmp_path / "nope.log") == ""
    assert tail(None) == ""
    (tmp_path / "empty.log").write_bytes(b"")
    assert tail(tmp_path / "empty.log") == ""


# --- Judging a live store -----------------------------------------------------


def start_record(shard: int = 1, attempt: str = "a1") -> Record:
    return make_record(
        shard, outcome="running", ended_at=None, duration=None, exit_code=None, attempt=attempt
    )


def test_judge_live_does_not_call_a_shard_that_just_finished_crashed(tmp_path):
    """The shard finishes and frees its lock between our reading its record and its lock."""
    store = RecordStore(tmp_path)
    store.write(start_record())
    asked = []

    def holder_of(name):
        asked.append(name)
        if len(asked) == 1:
            store.write(make_record(1, attempt="a1"))  # final record, then the lock is released
        return None

    verdict = judge_live(make_plan(1), store, holder_of, run_key=RUN)

    assert verdict.rows[0].state == "passed"
    assert asked == ["test-shard-1", "test-shard-1"]


def test_judge_live_sees_a_new_attempt_that_started_meanwhile_as_running(tmp_path):
    store = RecordStore(tmp_path)
    store.write(start_record(attempt="old"))
    asked = []

    def holder_of(name):
        asked.append(name)
        if len(asked) == 1:
            store.write(start_record(attempt="new"))
            return None
        return make_holder()

    verdict = judge_live(make_plan(1), store, holder_of, run_key=RUN)

    assert verdict.rows[0].state == "running"


def test_judge_live_confirms_a_real_crash(tmp_path):
    store = RecordStore(tmp_path)
    store.write(start_record())
    store.write(make_record(2))
    asked = []

    def holder_of(name):
        asked.append(name)
        return make_holder(1, pid_status="dead") if name == "test-shard-1" else None

    verdict = judge_live(make_plan(3), store, holder_of, run_key=RUN)

    assert [row.state for row in verdict.rows] == ["crashed", "passed", "missing"]
    assert asked == ["test-shard-1", "test-shard-2", "test-shard-3"]


def test_a_live_holder_waiting_for_a_lease_is_waiting_not_running():
    waiting = make_record(
        outcome="waiting",
        owner="bob",
        message="waiting for a slot",
        ended_at=None,
        duration=None,
        exit_code=None,
    )
    row = only_row(waiting, make_holder())
    assert row.state == ShardState.WAITING and row.duration is None
    assert row.detail == "waiting for a slot; held by bob (agent agent-b, pid 777 on other-box)"
    verdict = judge(make_plan(1), {1: waiting}, {"test-shard-1": make_holder()}, run_key=RUN)
    assert verdict.state == "incomplete" and verdict.counts[ShardState.WAITING] == 1


def test_an_agent_dead_while_waiting_for_a_lease_leaves_a_crashed_shard_that_never_ran():
    waiting = make_record(outcome="waiting", message="waiting for resource 'db'", ended_at=None)
    row = only_row(waiting, None)
    assert row.state == ShardState.CRASHED
    assert row.detail == (
        "waiting for resource 'db' since 2024-05-01T12:00:00.000000Z, by agent-1 on box"
        " (pid 1001); its command never started; its lock is free"
    )


# --- Tests from the reports a record names ------------------------------------------


def report_xml(*cases: str) -> bytes:
    """A JUnit report: ``name`` passes, ``!name`` fails, ``?name`` errs, ``-name`` is skipped."""
    body = ""
    for case in cases:
        name, ending = case.lstrip("!?-"), {"!": "failure", "?": "error", "-": "skipped"}
        tag = ending.get(case[0])
        inner = f'<{tag} message="{name} broke">trace of {name}</{tag}>' if tag else ""
        body += f'<testcase classname="pkg" name="{name}" time="0.5">{inner}</testcase>'
    return f"<testsuites><testsuite>{body}</testsuite></testsuites>".encode()


def store_shard(store: RecordStore, shard: int, *reports: bytes, run_key=RUN, **changes) -> Record:
    """A final record of ``shard`` naming ``reports`` (its command's, then retries'),
    written beside it; a report of b"" is one the run did not leave."""
    for run, data in enumerate(reports):
        if data:
            path = store.junit_path("test", run_key, shard, run)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    names = [digest(data) if data else None for data in reports]
    record = make_record(shard, run_key=run_key, reports=names, retries=len(reports) - 1)
    store.write(dataclasses.replace(record, **changes))
    return record


def live(plan: Plan, store: RecordStore, run_key: str = RUN):
    return judge_live(plan, store, lambda name: None, run_key=run_key)


def test_a_shard_reads_only_the_reports_its_record_names(tmp_path):
    store = RecordStore(tmp_path)
    first = report_xml("a", "b", "-c")
    store_shard(store, 1, first)
    store_shard(store, 2, b"", outcome="failed", exit_code=3)
    store_shard(store, 3, report_xml("d"))
    store.junit_path("test", RUN, 3).write_bytes(report_xml("d", "!e"))  # changed since
    rows = live(make_plan(3), store).rows

    assert [test.id for test in rows[0].tests.results] == ["pkg::a", "pkg::b", "pkg::c"]
    assert rows[0].tests.counts == {
        "passed": 2,
        "failed": 0,
        "error": 0,
        "skipped": 1,
        "flaky": 0,
    }
    assert (rows[1].tests.results, rows[1].tests.problem) == ((), "its command left no report")
    assert rows[2].tests.results == ()
    assert rows[2].tests.problem == (
        "shard-3.junit.xml is not the report its record names (changed since)"
    )
    store.junit_path("test", RUN, 1).unlink()
    missing = live(make_plan(3), store).rows[0].tests
    assert missing.problem == "the report of its command is missing (shard-1.junit.xml)"
    assert missing.results == ()
    assert live(make_plan(3), store).state == "failed"  # the records decide, not the reports
    assert [row.state for row in live(make_plan(3), store).rows] == [
        "corrupt",  # passed, but its report is gone: its tests are not known
        "failed",
        "corrupt",  # passed, but its report changed since
    ]


@pytest.mark.parametrize("report", [b"", b"<testsuites><testsuite><testcase name='t'><failure>"])
def test_a_passed_shard_whose_report_cannot_be_read_is_not_a_pass(tmp_path, report):
    """A command that exits 0 leaving an empty or cut-short report: its tests,
    which may have failed, are not known, so the shard is corrupt (exit 4)."""
    store = RecordStore(tmp_path)
    path = store.junit_path("test", RUN, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(report)
    record = make_record(1, run_key=RUN, reports=[digest(report)], retries=0)
    store.write(record)
    verdict = live(make_plan(1), store)
    assert (verdict.rows[0].state, verdict.state, verdict.exit_code) == (
        "corrupt",
        "incomplete",
        errors.INCOMPLETE,
    )
    assert verdict.rows[0].detail.startswith("passed, but its tests are not known: shard-1.junit")


def test_a_shard_retried_has_its_tests_folded_and_its_flaky_tests_listed(tmp_path):
    store = RecordStore(tmp_path)
    store_shard(
        store, 1, report_xml("a", "!b", "?c"), report_xml("b", "!c"), outcome="failed", exit_code=1
    )
    verdict = live(make_plan(1), store)
    (row,) = verdict.rows
    flaky, failing = row.tests.flaky, row.tests.failing
    assert [(t.id, t.runs) for t in flaky] == [("pkg::b", 2)]
    assert [(t.id, t.outcome, len(t.failures)) for t in failing] == [("pkg::c", "failed", 1)]
    text = render_table(verdict, color=False)
    assert text.splitlines()[2:] == [
        "  1      failed  12.5s  2/1/0 +1 flaky  exit 1",
        "failed tests (1):",
        "  pkg::c  (shard 1, failed)",
        "      c broke",
        "flaky tests (1):",
        "  pkg::b  (shard 1, passed after 1 failure)",
        "      b broke",
        "tests: 2 passed, 1 failed, 0 skipped, 1 flaky",
        "verdict: FAILED - 1 failed (shard 1: exit 1)",
    ]

    junit = ElementTree.fromstring(verdict_to_junit(verdict))
    cases = {case.get("name"): case for case in junit.iter("testcase")}
    assert set(cases) == {"a", "b", "c"}  # the failing tests say why the shard failed
    assert [child.tag for child in cases["b"]] == ["flakyFailure"]
    assert cases["b"].find("flakyFailure/stackTrace").text == "trace of b"
    assert [child.tag for child in cases["c"]] == ["failure", "rerunError"]
    assert cases["c"].find("failure").text == "trace of c"


def test_the_failing_tests_are_listed_twenty_at_most_within_80_columns(tmp_path):
    store = RecordStore(tmp_path)
    names = ["!t%02d" % n for n in range(25)]
    store_shard(store, 1, report_xml(*names), outcome="failed", exit_code=1)
    text = render_table(live(make_plan(1), store), color=False)
    listed = [line for line in text.splitlines() if line.startswith("  pkg::t")]
    assert len(listed) == LISTED_TESTS
    assert "  and 5 more (verify --json lists every test)" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_failed_shard_whose_failing_tests_passed_on_a_rerun_passes(tmp_path):
    store = RecordStore(tmp_path)
    store_shard(store, 1, report_xml("a", "!b"), outcome="failed", exit_code=1)
    store_shard(store, 2, report_xml("c", "!d"), outcome="failed", exit_code=1)
    store_shard(store, 3, report_xml("e"))
    key = rerun_key(RUN, 1)
    rerun_plan = make_plan(1)
    later = dict(started_at="2024-05-01T12:01:00.000000Z", ended_at="2024-05-01T12:01:02Z")
    store_shard(store, 1, report_xml("b", "!d"), run_key=key, **later)
    rerun = Rerun(1, key, live(rerun_plan, store, key))
    before = live(make_plan(3), store)

    after = with_reruns(before, [rerun])
    assert [row.state for row in after.rows] == ["passed", "failed", "passed"]
    assert after.rows[0].detail == "exit 1; 1 failed test passed on a rerun"
    assert after.state == "failed" and after.reruns == (rerun,)
    assert [(t.id, t.flaky) for _, t in after.tests if t.failures] == [
        ("pkg::b", True),
        ("pkg::d", False),
    ]
    data = verdict_to_json(after)
    assert [(t["id"], t["rerun"]) for t in data["tests"] if t["rerun"]] == [
        ("pkg::b", 1),
        ("pkg::d", 1),
    ]
    assert data["reruns"][0]["run_key"] == key and data["reruns"][0]["verdict"] == "passed"
    # A test that passed only on a rerun is flaky: with flaky = "fail" it fails the shard.
    assert with_reruns(before, [rerun], flaky="fail").rows[0].state == "failed"
    # A rerun that started before the shard's record ended is older than it: not folded in.
    early = dict(started_at="2024-05-01T12:00:05.000000Z", ended_at="2024-05-01T12:00:07Z")
    store_shard(store, 1, report_xml("b", "!d"), run_key=key, **early)
    old = Rerun(1, key, live(rerun_plan, store, key))
    assert [row.state for row in with_reruns(before, [old]).rows] == ["failed", "failed", "passed"]
    # A shard killed by a signal did not run all its tests: a rerun cannot clear it.
    store_shard(store, 1, report_xml("a", "!b"), outcome="failed", signal="SIGKILL")
    assert with_reruns(live(make_plan(3), store), [rerun]).rows[0].state == "failed"
