"""The record store, timestamps and run keys, on real files and real git repositories."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lokt_tasks.errors import UsageError
from lokt_tasks.plan import Shard
from lokt_tasks.results import (
    LOCAL_RUN_KEY,
    STAMPED_FIELDS,
    CorruptRecord,
    Record,
    RecordStore,
    current_run_key,
    default_results_dir,
    finish,
    new_start_record,
    parse_time,
    read_record,
    record_to_dict,
    rerun_key,
    safe_component,
    unsafe_component,
)
from lokt_tasks.system import signal_name, utc_now

REPO = Path(__file__).resolve().parents[1]


def make_record(**changes) -> Record:
    fields = dict(
        task="test",
        shard=1,
        total=3,
        fingerprint="f" * 16,
        run_key="abc123def456",
        lock_name="test-shard-1",
        agent="agent-1",
        owner="alice",
        host="box",
        pid=4242,
        engine="embedded",
        started_at="2024-05-01T12:00:00.000000Z",
    )
    fields.update(changes)
    return Record(**fields)


# --- Writing and reading ----------------------------------------------------


def test_a_record_round_trips_as_indented_json_with_its_outcome_first(tmp_path):
    store = RecordStore(tmp_path)
    record = make_record(
        outcome="failed", exit_code=3, ended_at="2024-05-01T12:00:05.5Z", duration=5.5
    )

    path = store.write(record)

    assert path == tmp_path / "test" / "abc123def456" / "shard-1.json"
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[1:3] == ['  "outcome": "failed",', '  "exit_code": 3,']
    names = [line.split('"')[1] for line in lines[1:-1]]
    stamped = len(STAMPED_FIELDS)
    assert names[:stamped] == list(STAMPED_FIELDS) and names[stamped:] == sorted(names[stamped:])
    assert json.loads(text) == record_to_dict(record) and text.endswith("}\n")
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert store.read("test", "abc123def456", 1) == record
    assert store.read_run("test", "abc123def456") == {1: record}
    assert os.listdir(path.parent) == ["shard-1.json"]


def test_log_and_junit_paths_sit_beside_the_record(tmp_path):
    store = RecordStore(tmp_path)
    run_dir = tmp_path / "test" / "k1"
    assert store.record_path("test", "k1", 2) == run_dir / "shard-2.json"
    assert store.log_path("test", "k1", 2) == run_dir / "shard-2.log"
    assert store.junit_path("test", "k1", 2) == run_dir / "shard-2.junit.xml"


def test_nothing_recorded_reads_as_none_and_an_empty_run(tmp_path):
    store = RecordStore(tmp_path / "never-made")
    assert store.read("test", "k", 1) is None
    assert store.read_run("test", "k") == {}
    assert store.runs("test") == []


def test_odd_names_become_one_readable_path_component_each(tmp_path):
    store = RecordStore(tmp_path)
    record = make_record(task="unit tests", run_key="pr 12: 100%")
    path = store.write(record)

    assert path.parent.parent.parent == tmp_path
    assert path.parent.parent.name == "unit%20tests"
    assert path.parent.name == "pr%2012%3A%20100%25"
    assert store.read("unit tests", "pr 12: 100%", 1) == record
    assert store.runs("unit tests") == ["pr 12: 100%"]


@pytest.mark.parametrize(
    "name", ["test", "a/b", "..", ".", ".hidden", "x..y", "100%", "é ü", "a%2Fb"]
)
def test_escaping_is_reversible_and_never_hides_or_climbs(name):
    component = safe_component(name)
    assert "/" not in component
    assert not component.startswith(".")
    assert unsafe_component(component) == name


def test_different_names_never_share_a_directory():
    names = ["a/b", "a%2Fb", "a b", "a_b", "a-b", ".a", "%2Ea"]
    assert len({safe_component(name) for name in names}) == len(names)


def test_read_run_lists_shards_and_ignores_temp_and_other_files(tmp_path):
    store = RecordStore(tmp_path)
    for index in (1, 2, 10):
        store.write(make_record(shard=index, lock_name="test-shard-%d" % index))
    run_dir = store.run_dir("test", "abc123def456")
    (run_dir / ".shard-3.json.abcd.tmp").write_text('{"half": ', encoding="utf-8")
    (run_dir / "shard-1.log").write_text("output\n", encoding="utf-8")
    (run_dir / "shard-1.junit.xml").write_text("<testsuite/>", encoding="utf-8")
    (run_dir / "shard-01.json").write_text("{}", encoding="utf-8")
    (run_dir / "notes.json").write_text("{}", encoding="utf-8")

    records = store.read_run("test", "abc123def456")

    assert sorted(records) == [1, 2, 10]
    assert all(isinstance(record, Record) for record in records.values())


def test_runs_are_listed_oldest_write_first(tmp_path):
    store = RecordStore(tmp_path)
    for key, age in (("newest", 10), ("oldest", 300), ("middle", 100)):
        store.write(make_record(run_key=key))
        moment = time.time() - age
        os.utime(store.run_dir("test", key), (moment, moment))
    assert store.runs("test") == ["oldest", "middle", "newest"]


# --- Bad files are corrupt records, never exceptions, never passes -----------

GOOD = (
    json.dumps(record_to_dict(make_record(outcome="passed", exit_code=0)), sort_keys=True, indent=2)
    + "\n"
)


def _edited(**changes) -> bytes:
    data = json.loads(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode("utf-8")


_DROP = object()

CORRUPT_CASES = [
    ("empty", b"", "empty file"),
    ("blank", b"  \n", "empty file"),
    ("truncated", GOOD[: len(GOOD) // 2].encode(), "invalid JSON"),
    ("garbage", b"\x00\x9f\xffnot json at all", "not UTF-8"),
    ("text", b"hello world", "invalid JSON"),
    ("array", b"[1, 2, 3]", "expected a JSON object, found an array"),
    ("string", b'"passed"', "expected a JSON object"),
    ("missing field", _edited(fingerprint=_DROP), "'fingerprint' is missing"),
    ("wrong type", _edited(shard="1"), "'shard' should be an integer"),
    ("bool as int", _edited(pid=True), "'pid' should be an integer"),
    ("newer version", _edited(version=2), "version 2"),
    ("unknown outcome", _edited(outcome="great"), "unknown outcome 'great'"),
    ("nan", GOOD.replace('"duration": null', '"duration": NaN').encode(), "NaN"),
    ("bad time", _edited(started_at="yesterday"), "'started_at' is not an RFC 3339 time"),
    ("moved file", _edited(shard=2), "holds shard 2, expected 1"),
    ("other task", _edited(task="lint"), "holds task 'lint'"),
    ("reports not a list", _edited(reports="ab"), "'reports' should be a list of strings"),
    ("a report not a digest", _edited(reports=[1]), "'reports' should be a list of strings"),
    ("negative retries", _edited(retries=-1), "retries -1 is below 0"),
]


@pytest.mark.parametrize(
    "content, reason", [case[1:] for case in CORRUPT_CASES], ids=[case[0] for case in CORRUPT_CASES]
)
def test_unreadable_record_files_become_corrupt_records_naming_the_file(tmp_path, content, reason):
    store = RecordStore(tmp_path)
    path = store.record_path("test", "abc123def456", 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)

    found = store.read("test", "abc123def456", 1)
    in_run = store.read_run("test", "abc123def456")

    assert isinstance(found, CorruptRecord)
    assert found.path == str(path)
    assert reason in found.reason
    assert in_run == {1: found}


def test_a_directory_where_a_record_should_be_is_corrupt(tmp_path):
    store = RecordStore(tmp_path)
    store.record_path("test", "k", 1).mkdir(parents=True)
    found = store.read("test", "k", 1)
    assert isinstance(found, CorruptRecord)
    assert "cannot read" in found.reason


def test_unknown_fields_are_ignored_and_attempt_may_be_absent(tmp_path):
    path = tmp_path / "shard-1.json"
    path.write_bytes(_edited(added_later="x", attempt=_DROP))
    found = read_record(path)
    assert isinstance(found, Record)
    assert found.attempt == ""


def test_records_from_before_reports_and_retries_read_without_them(tmp_path):
    path = tmp_path / "shard-1.json"
    path.write_bytes(_edited(reports=_DROP, retries=_DROP))
    found = read_record(path)
    assert isinstance(found, Record) and (found.reports, found.retries) == ([], 0)
    path.write_bytes(_edited(reports=["a" * 64, None], retries=1))
    found = read_record(path)
    assert isinstance(found, Record) and (found.reports, found.retries) == (["a" * 64, None], 1)


# --- Reruns of failed tests ---------------------------------------------------


def test_a_rerun_is_a_run_below_its_run_with_its_own_files(tmp_path):
    store = RecordStore(tmp_path)
    key = rerun_key("ci 1", 2)
    assert key == "ci 1/rerun-2"
    assert store.record_path("t", key, 1) == tmp_path / "t" / "ci%201" / "rerun-2" / "shard-1.json"
    assert store.junit_path("t", key, 1, 3).name == "shard-1.retry-3.junit.xml"
    store.write(make_record(task="t", run_key=key))
    assert list(store.read_run("t", key)) == [1] and store.read_run("t", "ci 1") == {}
    assert store.runs("t") == ["ci 1"]  # a rerun is not a run of the task's own


def test_a_rerun_of_the_same_tests_is_joined_and_other_tests_start_the_next(tmp_path):
    store = RecordStore(tmp_path)
    assert store.reruns("t", "k") == []
    assert store.new_rerun("t", "k", [["a", "b"], ["c"]]) == (1, [["a", "b"], ["c"]])
    # The same tests, split otherwise (another agent's --jobs): rerun 1, as split there.
    assert store.new_rerun("t", "k", [["c", "a", "b"]]) == (1, [["a", "b"], ["c"]])
    assert store.new_rerun("t", "k", [["c"]]) == (2, [["c"]])
    assert store.reruns("t", "k") == [(1, [["a", "b"], ["c"]]), (2, [["c"]])]
    (store.run_dir("t", rerun_key("k", 2)) / "plan.json").write_text("{not json")
    assert store.reruns("t", "k")[1] == (2, None)  # unreadable: known as such, not guessed
    assert store.new_rerun("t", "k", [["c"]]) == (3, [["c"]])


# --- Atomicity, with real processes -----------------------------------------

WRITER = """
import sys
from pathlib import Path
from lokt_tasks.results import Record, RecordStore

store = RecordStore(Path(sys.argv[1]))
writer, rounds = sys.argv[2], int(sys.argv[3])
index = 0
while rounds < 0 or index < rounds:
    # Sizes alternate between tiny and large, so a torn write would show.
    message = writer * (1 if index % 2 else 40000)
    store.write(Record(task="test", shard=1, total=1, fingerprint="f", run_key="k",
                       lock_name="test-shard-1", agent=writer, owner="o", host="h", pid=1,
                       engine="embedded", started_at="2024-05-01T12:00:00Z", message=message))
    index += 1
    if index == 1:
        print("ready", flush=True)
"""


def _start_writer(root: Path, name: str, rounds: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), name, str(rounds)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_concurrent_writers_never_show_a_reader_a_partial_record(tmp_path):
    writers = [_start_writer(tmp_path, name, 150) for name in "abc"]
    store = RecordStore(tmp_path)
    try:
        for writer in writers:
            assert writer.stdout.readline() == "ready\n"
        seen = set()
        reads = 0
        while any(writer.poll() is None for writer in writers) or reads < 50:
            found = store.read("test", "k", 1)
            assert isinstance(found, Record), found
            assert found.message in (found.agent, found.agent * 40000)
            seen.add(found.agent)
            reads += 1
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert [writer.returncode for writer in writers] == [0, 0, 0]
    assert seen <= {"a", "b", "c"}
    assert os.listdir(store.run_dir("test", "k")) == ["shard-1.json"]


def test_a_writer_killed_mid_write_leaves_a_whole_record(tmp_path):
    writer = _start_writer(tmp_path, "z", -1)
    try:
        assert writer.stdout.readline() == "ready\n"
        time.sleep(0.2)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    store = RecordStore(tmp_path)
    found = store.read("test", "k", 1)
    assert isinstance(found, Record)
    assert found.message in ("z", "z" * 40000)
    assert list(store.read_run("test", "k")) == [1]


# --- Record helpers and timestamps ------------------------------------------


def test_start_and_final_records_from_a_shard():
    shard = Shard("test", 2, 3, ("a.py", "b.py"), ("pytest", "a.py", "b.py"), "test-shard-2", "fp2")
    start = new_start_record(
        shard,
        run_key="k",
        agent="a",
        owner="o",
        host="h",
        pid=7,
        engine="lokt",
        started_at="2024-05-01T12:00:00Z",
    )
    assert (start.task, start.shard, start.total, start.lock_name, start.fingerprint) == (
        "test",
        2,
        3,
        "test-shard-2",
        "fp2",
    )
    assert (start.outcome, start.items, start.ended_at) == ("running", 2, None)
    assert re.match(r"^[0-9a-f]{32}$", start.attempt)

    final = finish(start, outcome="failed", signal="SIGKILL", ended_at="2024-05-01T12:01:30.25Z")
    assert (final.outcome, final.signal, final.exit_code, final.duration) == (
        "failed",
        "SIGKILL",
        None,
        90.25,
    )
    assert final.attempt == start.attempt
    assert start.outcome == "running"
    with pytest.raises(ValueError):
        finish(start, outcome="running")


def format_time(moment: datetime.datetime) -> str:
    """``moment`` as RFC 3339 UTC with microseconds, as records write times."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_utc_now_is_rfc3339_utc_with_microseconds_and_parses_back():
    text = utc_now()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", text)
    assert format_time(parse_time(text)) == text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-27T23:41:03.163637376Z", "2026-11-27T23:41:03.163637Z"),
        ("2026-11-27T23:41:03Z", "2026-11-27T23:41:03.000000Z"),
        ("2026-11-28T01:41:03.5+02:00", "2026-11-27T23:41:03.500000Z"),
        ("2026-11-27T20:11:03-03:30", "2026-11-27T23:41:03.000000Z"),
    ],
)
def test_timestamps_from_lokt_and_other_zones_parse_to_utc(text, expected):
    parsed = parse_time(text)
    assert parsed.tzinfo is not None and parsed.utcoffset() == datetime.timedelta(0)
    assert format_time(parsed) == expected


@pytest.mark.parametrize(
    "text", ["", "2024-05-01", "2024-05-01T12:00:00", "noon", "2024-13-01T00:00:00Z"]
)
def test_bad_timestamps_raise_value_error(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_signal_names():
    assert signal_name(signal.SIGKILL) == "SIGKILL"
    assert signal_name(signal.SIGTERM) == "SIGTERM"


# --- Where results live ----------------------------------------------------


def test_default_results_dir_is_a_sibling_of_the_lock_root(tmp_path):
    git_dir = tmp_path / "repo" / ".git"
    assert default_results_dir(git_dir / "lokt") == git_dir / "lokt-tasks"
    assert default_results_dir(tmp_path / ".lokt") == tmp_path / ".lokt-tasks"
    assert default_results_dir(tmp_path / "srv" / "locks") == tmp_path / "srv" / "locks-tasks"


def test_default_results_dir_of_a_relative_root_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_results_dir(Path(".lokt")) == tmp_path / ".lokt-tasks"


# --- Run keys ------------------------------------------------------------------


@pytest.fixture
def isolated_git(tmp_path, monkeypatch):
    """Git that ignores this machine's configuration and cannot see parent repos."""
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "LOKT_TASKS_RUN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        # No background maintenance after a commit: it could touch the index
        # while a test watches it.
        [
            "git",
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "maintenance.auto=false",
            "-c",
            "gc.auto=0",
            *args,
        ],
        cwd=str(repo),
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


@pytest.fixture
def repo(isolated_git):
    repo = isolated_git / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "code.py").write_text("print('hello')\n", encoding="utf-8")
    (repo / "data.bin").write_bytes(b"\x00\x01\x02")
    (repo / ".gitignore").write_text("*.log\ncache/\n", encoding="utf-8")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("X = 1\n", encoding="utf-8")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_a_clean_checkout_is_keyed_by_its_commit(repo):
    head = git(repo, "rev-parse", "HEAD")
    assert current_run_key(repo, env={}) == head[:12]
    assert current_run_key(repo / "pkg", env={}) == head[:12]


def test_changing_a_tracked_file_makes_a_dirty_key_that_tracks_the_change(repo):
    clean = current_run_key(repo, env={})
    (repo / "code.py").write_text("print('changed')\n", encoding="utf-8")
    dirty = current_run_key(repo, env={})
    assert re.match(r"^%s-dirty-[0-9a-f]{8}$" % clean, dirty)

    assert current_run_key(repo / "pkg", env={}) == dirty
    git(repo, "add", "code.py")
    assert current_run_key(repo, env={}) == dirty, "staging the same change keeps the key"

    (repo / "code.py").write_text("print('changed again')\n", encoding="utf-8")
    assert current_run_key(repo, env={}) not in (clean, dirty)

    (repo / "code.py").write_text("print('hello')\n", encoding="utf-8")
    git(repo, "add", "code.py")
    assert current_run_key(repo, env={}) == clean


def test_binary_changes_and_deletions_make_the_key_dirty(repo):
    clean = current_run_key(repo, env={})
    (repo / "data.bin").write_bytes(b"\x00\x01\x03")
    binary = current_run_key(repo, env={})
    assert binary.startswith(clean + "-dirty-")
    (repo / "data.bin").write_bytes(b"\x00\x01\x02")
    (repo / "pkg" / "mod.py").unlink()
    deleted = current_run_key(repo, env={})
    assert deleted.startswith(clean + "-dirty-") and deleted != binary


def test_untracked_and_ignored_files_never_change_the_key(repo):
    clean = current_run_key(repo, env={})
    (repo / "new_untracked.py").write_text("junk\n", encoding="utf-8")
    (repo / "shard-1.log").write_text("output\n", encoding="utf-8")
    (repo / "cache").mkdir()
    (repo / "cache" / "blob").write_bytes(os.urandom(64))
    os.utime(repo / "code.py")  # touched, same content
    assert current_run_key(repo, env={}) == clean

    (repo / "code.py").write_text("print('changed')\n", encoding="utf-8")
    dirty = current_run_key(repo, env={})
    (repo / "another_untracked.txt").write_text("more junk\n", encoding="utf-8")
    (repo / "shard-2.log").write_text("more output\n", encoding="utf-8")
    assert current_run_key(repo, env={}) == dirty


def test_reading_the_key_leaves_the_index_alone(repo):
    """git diff refreshes the index after a stat-only change (taking its
    lock) unless told not to; GIT_OPTIONAL_LOCKS does not stop it."""
    index = repo / ".git" / "index"
    an_hour_ago = time.time() - 3600
    os.utime(repo / "code.py", (an_hour_ago, an_hour_ago))
    git(repo, "add", "code.py")  # the index now holds an old time for it, and is not racily clean
    before = index.stat().st_mtime_ns
    os.utime(repo / "code.py")  # touched, same content: stat-dirty
    assert current_run_key(repo, env={}) == git(repo, "rev-parse", "HEAD")[:12]
    assert index.stat().st_mtime_ns == before


def test_outside_git_and_before_the_first_commit_the_key_is_local(isolated_git):
    plain = isolated_git / "plain"
    plain.mkdir()
    assert current_run_key(plain, env={}) == LOCAL_RUN_KEY == "local"
    empty = isolated_git / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    assert current_run_key(empty, env={}) == "local"


def test_explicit_key_beats_environment_beats_git(repo):
    head = git(repo, "rev-parse", "HEAD")[:12]
    assert current_run_key(repo, explicit="ci-42", env={"LOKT_TASKS_RUN": "nightly"}) == "ci-42"
    assert current_run_key(repo, env={"LOKT_TASKS_RUN": "nightly"}) == "nightly"
    assert current_run_key(repo, env={"LOKT_TASKS_RUN": ""}) == head


@pytest.mark.parametrize(
    "bad", ["", "a/b", "..", "x..y", "tab\there", "new\nline", " padded", "k" * 129]
)
def test_unusable_explicit_keys_are_usage_errors(tmp_path, bad):
    with pytest.raises(UsageError) as caught:
        current_run_key(tmp_path, explicit=bad, env={})
    assert "--run" in str(caught.value)
    with pytest.raises(UsageError) as caught:
        current_run_key(tmp_path, env={"LOKT_TASKS_RUN": bad or "a/b"})
    assert "LOKT_TASKS_RUN" in str(caught.value)


def test_a_record_can_be_copied_field_for_field():
    record = make_record()
    assert Record(**dataclasses.asdict(record)) == record
