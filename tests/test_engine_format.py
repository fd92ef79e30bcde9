"""The pieces under the engines: lokt's file formats, names, identity, lock
root discovery and engine selection."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lokt_tasks import lockfile, system
from lokt_tasks.config import parse_duration
from lokt_tasks.embedded import EmbeddedEngine
from lokt_tasks.engine import StopRequest, find_lock_root, make_identity
from lokt_tasks.errors import EngineError, UsageError
from lokt_tasks.lockfile import CorruptLockFile, EmptyLockFile, LockData, UnsupportedVersion
from lokt_tasks.lokt_engine import LoktEngine
from lokt_tasks.run import select_engine

# Written by lokt itself (commit edfc905) on a machine in UTC.
LOKT_LOCK = """{
  "version": 1,
  "name": "demo",
  "lock_id": "69a51fdb63c9bba4f39b30abc95cabf1",
  "owner": "root",
  "host": "vm",
  "pid": 5412,
  "pid_start_ns": 29389,
  "agent_id": "agent-bc17",
  "acquired_ts": "2026-11-27T23:44:01.711969708Z",
  "ttl_sec": 1,
  "expires_at": "2026-11-27T23:44:02.711969708Z"
}
"""
LOKT_AUDIT = [
    '{"ts":"2026-11-27T23:44:01.7641218Z","event":"acquire","name":"demo",'
    '"lock_id":"a0673e2804573a165b3dea2cffcee3f4","owner":"root","host":"vm","pid":5444,'
    '"agent_id":"agent-b4d2","ttl_sec":5}',
    '{"ts":"2026-11-27T23:44:01.746484378Z","event":"acquire","name":"demo",'
    '"lock_id":"e00533d289b6cbebd9ab91e2a45da592","owner":"root","host":"vm","pid":5433,'
    '"agent_id":"agent-b9e5"}',
]


@pytest.fixture
def zone(monkeypatch):
    """Run in a given local time zone; lokt writes local time."""

    def set_zone(name):
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("LOKT_ROOT", "LOKT_AGENT_ID", "LOKT_OWNER", "LOKT_BIN"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


# Lock files and audit lines ------------------------------------------------------


def test_lock_written_by_lokt_reads_and_writes_back_identically(zone):
    zone("UTC")
    lock = lockfile.parse_lock(LOKT_LOCK)
    assert (lock.owner, lock.pid, lock.pid_start_ns, lock.ttl_sec) == ("root", 5412, 29389, 1)
    assert lock.to_json() == LOKT_LOCK


def test_timestamps_are_written_like_go(zone):
    zone("UTC")
    for text in (
        "2026-11-27T23:44:01.7641218Z",
        "2026-11-27T23:44:01Z",
        "2026-01-02T03:04:05.000000001Z",
    ):
        assert lockfile.format_timestamp(lockfile.parse_timestamp(text)) == text
    zone("EST+5")
    moment = lockfile.parse_timestamp("2026-11-27T23:44:01.5Z")
    assert lockfile.format_timestamp(moment) == "2026-11-27T18:44:01.5-05:00"
    assert lockfile.parse_timestamp("2026-11-27T18:44:01.5-05:00") == moment


def test_empty_fields_are_left_out_of_a_lock_file():
    lock = LockData("demo", "me", "host", 12, acquired_ns=10**18)
    assert re.findall(r'"(\w+)":', lock.to_json()) == [
        "version",
        "name",
        "owner",
        "host",
        "pid",
        "acquired_ts",
    ]


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"pid": "12"}', '{"pid": 1.5}', '{"acquired_ts": "yesterday"}', "   "]
)
def test_damaged_lock_files_are_corrupt(text):
    with pytest.raises(CorruptLockFile):
        lockfile.parse_lock(text)


def test_empty_and_newer_lock_files_are_told_apart():
    with pytest.raises(EmptyLockFile):
        lockfile.parse_lock("")
    newer = LOKT_LOCK.replace('"version": 1', '"version": 2')
    with pytest.raises(UnsupportedVersion, match="version 2"):
        lockfile.parse_lock(newer)
    assert lockfile.parse_lock(newer, allow_newer=True).owner == "root"


def test_audit_lines_are_written_like_lokts():
    for line in LOKT_AUDIT:
        event = json.loads(line)
        written = lockfile.audit_line(
            event["event"],
            event["name"],
            owner=event["owner"],
            host=event["host"],
            pid=event["pid"],
            lock_id=event["lock_id"],
            agent_id=event["agent_id"],
            ttl_sec=event.get("ttl_sec", 0),
            at_ns=lockfile.parse_timestamp(event["ts"]),
        )
        assert written == line + "\n"


def test_audit_extra_is_sorted_and_html_characters_escaped_like_go():
    line = lockfile.audit_line(
        "deny",
        "demo",
        owner="a<b>&c",
        host="vm",
        pid=1,
        extra={"holder_pid": 3, "holder_host": "vm"},
    )
    assert '"owner":"a\\u003cb\\u003e\\u0026c"' in line
    assert line.endswith(',"extra":{"holder_host":"vm","holder_pid":3}}\n')


# Names -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test-shard-1", "a.b_c", "A9", "x"])
def test_valid_lock_names(name):
    lockfile.validate_lock_name(name)


@pytest.mark.parametrize(
    "name, reason",
    [("", "empty"), ("/etc", "absolute"), ("a..b", "traversal"), ("a/b", "letters"), ("-x", "'-'")],
)
def test_invalid_lock_names_say_why(name, reason):
    with pytest.raises(UsageError, match=reason):
        lockfile.validate_lock_name(name)


# Identity ----------------------------------------------------------------------


def test_agent_comes_from_the_caller_then_the_environment_then_chance(clean_env):
    clean_env.setenv("LOKT_OWNER", "ci")
    assert make_identity("a1") == make_identity("a1")
    assert (make_identity("a1").agent, make_identity("a1").owner) == ("a1", "ci/a1")
    clean_env.setenv("LOKT_AGENT_ID", "from-env")
    assert make_identity(None).owner == "ci/from-env"
    clean_env.delenv("LOKT_AGENT_ID")
    first, second = make_identity(None), make_identity(None)
    assert re.fullmatch(r"agent-[0-9a-f]{8}", first.agent)
    assert first.owner != second.owner


def test_owner_base_is_the_user_name_without_lokt_owner(clean_env):
    import pwd

    assert make_identity("a1").owner == pwd.getpwuid(os.getuid()).pw_name + "/a1"


# Lock root -----------------------------------------------------------------------


def git(*args, cwd):
    subprocess.run(
        ["git", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_lock_root_from_lokt_root(clean_env, tmp_path):
    clean_env.setenv("LOKT_ROOT", "/some/where")
    assert find_lock_root(tmp_path) == Path("/some/where")
    clean_env.setenv("LOKT_ROOT", "relative")
    assert find_lock_root(tmp_path) == tmp_path / "relative"


def test_lock_root_is_shared_by_all_worktrees(clean_env, tmp_path):
    clean_env.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    git("init", "-q", cwd=repo)
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "x",
        cwd=repo,
    )
    git("worktree", "add", "-q", str(tmp_path / "other"), cwd=repo)

    assert find_lock_root(repo / "sub") == repo / ".git" / "lokt"
    assert find_lock_root(tmp_path / "other") == repo / ".git" / "lokt"


def test_lock_root_outside_git_is_local(clean_env, tmp_path):
    clean_env.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert find_lock_root(tmp_path) == tmp_path / ".lokt"


# Choosing an engine ------------------------------------------------------------------


def test_unknown_engine_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="auto, lokt, embedded"):
        select_engine("flock", make_identity("a"), root=tmp_path)


def test_lokt_engine_without_lokt_says_what_to_do(clean_env, tmp_path):
    clean_env.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError, match='LOKT_BIN.*PATH.*"embedded"'):
        select_engine("lokt", make_identity("a"), root=tmp_path)
    engine = select_engine("auto", make_identity("a"), root=tmp_path)
    assert isinstance(engine, EmbeddedEngine)
    assert engine.describe() == "embedded engine"


def test_lokt_bin_is_used_and_checked(clean_env, tmp_path):
    fake = tmp_path / "my-lokt"
    fake.write_text('#!/bin/sh\necho "lokt 9.9 (commit: abc, built: today)"\n')
    fake.chmod(0o755)
    clean_env.setenv("LOKT_BIN", str(fake))
    engine = select_engine("auto", make_identity("a"), root=tmp_path)
    assert isinstance(engine, LoktEngine)
    assert engine.describe() == f"lokt 9.9 (commit: abc, built: today) at {fake}"
    clean_env.setenv("LOKT_BIN", str(tmp_path / "missing"))
    with pytest.raises(EngineError, match="LOKT_BIN"):
        select_engine("auto", make_identity("a"), root=tmp_path)


@pytest.mark.skipif(shutil.which("lokt") is None, reason="lokt not on PATH")
def test_real_lokt_describes_itself(tmp_path):
    engine = select_engine("lokt", make_identity("a"), root=tmp_path)
    assert engine.describe().startswith("lokt ")
    assert engine.describe().endswith(" at " + shutil.which("lokt"))


def test_lokt_guard_flags_come_before_the_name_with_units(tmp_path):
    engine = LoktEngine(make_identity("a"), tmp_path, "/bin/lokt")
    assert engine.guard_command("n", 600, True, 30) == [
        "/bin/lokt",
        "guard",
        "--ttl",
        "600s",
        "--wait",
        "--timeout",
        "30s",
        "n",
        "--",
    ]
    assert engine.guard_command("n", 0.2, False, None) == [
        "/bin/lokt",
        "guard",
        "--ttl",
        "1s",
        "n",
        "--",
    ]
    assert engine.guard_command("n", 0, False, None) == ["/bin/lokt", "guard", "n", "--"]


@pytest.mark.parametrize(
    "seconds, text", [(600, "600s"), (1.5, "1500ms"), (2.25, "2250ms"), (7 / 3, "2333333us")]
)
def test_durations_have_units(seconds, text):
    command = LoktEngine(make_identity("a"), Path("/r"), "/bin/lokt").guard_command(
        "n", 1, True, seconds
    )
    assert command[command.index("--timeout") + 1] == text
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-6)


# Reading lock state --------------------------------------------------------------------


def test_reading_lock_state_changes_nothing(tmp_path):
    root = tmp_path / "root"
    lockfile.ensure_dirs(root)
    finished = subprocess.Popen(["true"])
    finished.wait()
    now = lockfile.now_ns()
    dead = LockData(
        "old",
        "x/y",
        lockfile.host_name(),
        finished.pid,
        agent_id="y",
        acquired_ns=now - 10**11,
        ttl_sec=10,
        expires_ns=now - 9 * 10**10,
    )
    lockfile.lock_path(root, "old").write_text(dead.to_json())
    lockfile.lock_path(root, "broken").write_text("{")
    before = sorted((p.name, p.read_text()) for p in (root / "locks").iterdir())
    engine = EmbeddedEngine(make_identity("a"), root)

    holder = engine.holder("old")
    listed = engine.held_locks()

    assert (holder.owner, holder.agent_id, holder.pid_status, holder.expired) == (
        "x/y",
        "y",
        "dead",
        True,
    )
    assert [h.name for h in listed] == ["old"]
    assert engine.holder("broken") is None and engine.holder("absent") is None
    assert not engine.frozen("old")
    assert sorted((p.name, p.read_text()) for p in (root / "locks").iterdir()) == before
    assert not (root / "audit.log").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="zombie detection reads /proc")
def test_an_unreaped_holder_counts_as_dead():
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while not system.is_zombie(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        lock = LockData("z", "x", lockfile.host_name(), child.pid)
        assert lockfile.pid_status(lock) == "dead"
    finally:
        child.wait()


def test_stop_request_from_a_signal_handler_wakes_a_waiting_main_thread():
    stop = StopRequest()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: stop.request(signal.SIGTERM))
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        assert stop.wait(30) is True
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert stop.signum == signal.SIGTERM
    stop.request(signal.SIGINT)
    assert stop.signum == signal.SIGTERM
