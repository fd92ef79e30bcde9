"""Both lock engines, held to the same protocol with real processes.

Each test runs against the embedded engine, and against the lokt engine when
``lokt`` is on PATH (skipped otherwise). Agents are separate processes
(tests/engine_agent.py) where signals, kills or races are involved.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_agent import OWNER_BASE, Agent, Guarding, agent_env, kill_process_group_of  # noqa: E402

from lokt_tasks import lockfile, system  # noqa: E402
from lokt_tasks.engine import make_identity  # noqa: E402
from lokt_tasks.errors import UsageError  # noqa: E402
from lokt_tasks.lockfile import LockData  # noqa: E402
from lokt_tasks.run import select_engine  # noqa: E402

NAME = "demo-shard-1"
LOKT = shutil.which("lokt")
needs_lokt = pytest.mark.skipif(LOKT is None, reason="lokt not on PATH")
ENGINES = ["embedded", pytest.param("lokt", marks=needs_lokt)]


@pytest.fixture(params=ENGINES)
def engine_name(request):
    return request.param


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


@pytest.fixture
def spawn(tmp_path, root):
    """Start agents; whatever happens, none of their processes outlive the test."""
    agents = []

    def start(engine, agent, command, **options):
        started = Agent(
            tmp_path, engine, root, options.pop("name", NAME), command, agent=agent, **options
        )
        agents.append(started)
        return started

    yield start
    for agent in agents:
        agent.kill_everything()


def in_process(engine_name, root, agent):
    engine = select_engine(
        engine_name, make_identity(agent, env={"LOKT_OWNER": OWNER_BASE}), root=root
    )
    return Guarding(engine, root.parent / "attempts")


def hold_until(path):
    """A command that runs until path exists."""
    return ["/bin/sh", "-c", 'while [ ! -e "$1" ]; do sleep 0.02; done', "hold", str(path)]


def lock_file(root, name=NAME):
    return root / "locks" / f"{name}.json"


def audit_lines(root):
    path = root / "audit.log"
    return path.read_text().splitlines() if path.exists() else []


def audit_events(root):
    return [json.loads(line) for line in audit_lines(root)]


def lokt_env(root, owner, agent=None):
    env = agent_env()
    env.update(LOKT_ROOT=str(root), LOKT_OWNER=owner)
    if agent:
        env["LOKT_AGENT_ID"] = agent
    return env


def wait_for(condition, what, limit=20.0):
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return system.is_zombie(pid)


def write_lock(root, **fields):
    lockfile.ensure_dirs(root)
    now = lockfile.now_ns()
    values = dict(
        name=NAME,
        owner="someone/else",
        host=lockfile.host_name(),
        pid=1,
        lock_id="0123456789abcdef0123456789abcdef",
        agent_id="else",
        acquired_ns=now,
        ttl_sec=60,
        expires_ns=now + 60 * 10**9,
    )
    values.update(fields)
    lock_file(root).write_text(LockData(**values).to_json())
    return lock_file(root).read_text()


# Exclusion -------------------------------------------------------------------


def test_second_agent_is_held_and_told_who_holds(engine_name, tmp_path, root, spawn):
    release = tmp_path / "release"
    holder_agent = spawn(engine_name, "A", hold_until(release))
    command_pid = holder_agent.wait_started()

    other = spawn(engine_name, "B", ["touch", str(tmp_path / "B-ran")]).result()

    assert other["state"] == "held"
    assert not (tmp_path / "B-ran").exists()
    holder = other["holder"]
    assert (holder["owner"], holder["agent_id"], holder["host"]) == (
        "tester/A",
        "A",
        lockfile.host_name(),
    )
    assert holder["pid_status"] == "alive"
    recorded_pid = json.loads(lock_file(root).read_text())["pid"]
    assert holder["pid"] == recorded_pid
    if engine_name == "embedded":  # the agent's watchdog, which outlives it to stop its commands
        assert recorded_pid == watchdog_of(holder_agent.pid)
    else:  # lokt guard records itself; it leads the session in which the command leads a group
        assert recorded_pid == os.getsid(command_pid) and os.getpgid(command_pid) == command_pid

    release.touch()
    result = holder_agent.result()
    assert (result["state"], result["exit_code"]) == ("ran", 0)
    assert not lock_file(root).exists()


def test_waiting_gives_up_at_the_timeout_and_names_the_holder(engine_name, tmp_path, root, spawn):
    release = tmp_path / "release"
    holder_agent = spawn(engine_name, "A", hold_until(release))
    holder_agent.wait_started()

    result = in_process(engine_name, root, "B").guard(NAME, ["true"], ttl=1, wait=True, timeout=0.5)

    assert result.state == "held"
    assert result.holder.owner == "tester/A"
    assert result.message.startswith("timeout after 0.5s waiting: ")
    assert "held by tester/A (agent: A)@" in result.message
    release.touch()
    assert holder_agent.result()["state"] == "ran"


def test_lock_outlives_three_ttls_while_the_command_runs(engine_name, root, spawn):
    holder_agent = spawn(engine_name, "A", ["sleep", "3.5"], ttl=1)
    holder_agent.wait_started()
    began = time.monotonic()
    first = json.loads(lock_file(root).read_text())
    probe = in_process(engine_name, root, "B")

    states = []
    while time.monotonic() - began < 3.0:
        states.append(probe.guard(NAME, ["true"], ttl=1).state)
        time.sleep(0.2)
    last = json.loads(lock_file(root).read_text())

    assert states and set(states) == {"held"}
    assert last["lock_id"] == first["lock_id"]
    assert last["acquired_ts"] != first["acquired_ts"]
    renewals = [e for e in audit_events(root) if e["event"] == "renew" and e["owner"] == "tester/A"]
    assert len(renewals) >= 2
    result = holder_agent.result()
    assert (result["state"], result["exit_code"]) == ("ran", 0)
    assert not lock_file(root).exists()


def watchdog_of(agent_pid):
    """The pid of an embedded agent's watchdog, the holder of its locks."""
    listing = subprocess.run(
        ["ps", "-ww", "-A", "-o", "pid=,ppid=,args="], capture_output=True, text=True
    )
    found = [
        int(pid)
        for pid, parent, command in (line.split(None, 2) for line in listing.stdout.splitlines())
        if int(parent) == agent_pid and "from lokt_tasks.watchdog import main" in command
    ]
    assert len(found) == 1, listing.stdout
    return found[0]


def start_killable_holder(engine_name, tmp_path, root, spawn, command):
    """The process that records itself in the lock, as our child (so it is
    reaped when killed): the embedded agent, or ``lokt guard`` itself."""
    if engine_name == "embedded":
        agent = spawn("embedded", "A", command, ttl=1)
        return agent.process, agent.wait_started()
    marker = tmp_path / "A.pid"
    wrapped = ["/bin/sh", "-c", 'echo $$ > "$1"; shift; exec "$@"', "mark", str(marker), *command]
    guard = subprocess.Popen(
        [LOKT, "guard", "--ttl", "1s", NAME, "--", *wrapped],
        env=lokt_env(root, "tester/A", "A"),
        start_new_session=True,
    )
    wait_for(lambda: marker.exists() and marker.read_text().strip(), "lokt guard's command")
    return guard, int(marker.read_text())


def test_killed_holder_leaves_a_lock_the_next_agent_takes(engine_name, tmp_path, root, spawn):
    holder, command_pid = start_killable_holder(
        engine_name, tmp_path, root, spawn, hold_until(tmp_path / "never")
    )
    try:
        recorded = json.loads(lock_file(root).read_text())["pid"]
        assert recorded == (watchdog_of(holder.pid) if engine_name == "embedded" else holder.pid)
        holder.kill()
        holder.wait()
    finally:
        kill_process_group_of(command_pid)
    assert lock_file(root).exists()

    result = spawn(engine_name, "B", ["true"], ttl=1).result()

    assert (result["state"], result["exit_code"]) == ("ran", 0)
    assert not lock_file(root).exists()
    assert any(e["event"] == "auto-prune" for e in audit_events(root))


@pytest.mark.parametrize("command_ends", ["on SIGTERM", "only on SIGKILL"])
def test_embedded_agent_killed_outright_has_its_command_group_stopped(
    tmp_path, root, spawn, command_ends
):
    """The embedded agent holds the lock itself: once it is dead the lock is
    anyone's, so its watchdog stops the command (in a session of its own)
    and what the command started: SIGTERM, then SIGKILL after the grace."""
    child = tmp_path / "child.pid"
    trap = "trap '' TERM; " if command_ends == "only on SIGKILL" else ""
    script = trap + 'sleep 60 & echo $! > "$1"; wait'
    agent = spawn("embedded", "A", ["/bin/sh", "-c", script, "hold", str(child)], ttl=1, grace=0.5)
    command_pid = agent.wait_started()
    wait_for(lambda: child.exists() and child.read_text().strip(), "the command's child")
    grandchild = int(child.read_text())
    agent.process.kill()
    agent.process.wait()
    wait_for(
        lambda: process_gone(command_pid) and process_gone(grandchild),
        "the command and its child to be stopped",
    )
    assert lock_file(root).exists()  # the dead agent's lock, pruned by the next agent
    assert spawn("embedded", "B", ["true"], ttl=1).result()["state"] == "ran"


def test_embedded_watchdog_ends_with_its_agent(tmp_path, root, spawn):
    def watchdogs():
        listing = subprocess.run(
            ["ps", "-ww", "-A", "-o", "args="], capture_output=True, text=True
        ).stdout
        marker = "from lokt_tasks.watchdog import main; sys.exit(main(sys.argv[1:])) 0.137"
        return [line for line in listing.splitlines() if marker in line]

    agent = spawn("embedded", "A", hold_until(tmp_path / "go"), ttl=1, grace=0.137)
    agent.wait_started()
    assert len(watchdogs()) == 1
    (tmp_path / "go").touch()
    assert agent.result()["state"] == "ran"
    wait_for(lambda: watchdogs() == [], "the watchdog to end")


def test_live_holder_is_never_stolen_even_when_expired(engine_name, tmp_path, root):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        now = lockfile.now_ns()
        text = write_lock(
            root,
            pid=sleeper.pid,
            pid_start_ns=system.process_start_time(sleeper.pid) or 0,
            acquired_ns=now - 120 * 10**9,
            expires_ns=now - 60 * 10**9,
        )
        probe = in_process(engine_name, root, "B")

        result = probe.guard(NAME, ["touch", str(tmp_path / "ran")], ttl=1)

        assert result.state == "held"
        assert (result.holder.pid, result.holder.expired, result.holder.pid_status) == (
            sleeper.pid,
            True,
            "alive",
        )
        if engine_name == "embedded":  # lokt's --wait does break it; ours does not
            assert probe.guard(NAME, ["true"], ttl=1, wait=True, timeout=0.3).state == "held"
        assert lock_file(root).read_text() == text
        assert not (tmp_path / "ran").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("how", ["dead pid", "recycled pid"])
def test_dead_holder_is_pruned(engine_name, root, how):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        if how == "dead pid":
            finished = subprocess.Popen(["true"])
            finished.wait()
            write_lock(root, pid=finished.pid)
        else:
            write_lock(
                root,
                pid=sleeper.pid,
                pid_start_ns=(system.process_start_time(sleeper.pid) or 0) + 12345,
            )

        result = in_process(engine_name, root, "B").guard(NAME, ["true"], ttl=1)

        assert (result.state, result.exit_code) == ("ran", 0)
        assert not lock_file(root).exists()
        assert any(e["event"] == "auto-prune" for e in audit_events(root))
    finally:
        sleeper.kill()
        sleeper.wait()


# Freezes, damaged files, names -----------------------------------------------


def test_freeze_blocks_and_an_expired_freeze_is_removed(engine_name, tmp_path, root):
    if engine_name == "lokt":
        subprocess.run(
            [LOKT, "freeze", "--ttl", "1m", NAME], env=lokt_env(root, "tester/F", "F"), check=True
        )
    else:
        lockfile.ensure_dirs(root)
        now = lockfile.now_ns()
        freeze = LockData(
            NAME,
            "tester/F",
            lockfile.host_name(),
            4242,
            agent_id="F",
            acquired_ns=now,
            ttl_sec=60,
            expires_ns=now + 60 * 10**9,
        )
        lockfile.freeze_path(root, NAME).write_text(freeze.to_json())
    probe = in_process(engine_name, root, "B")
    marker = tmp_path / "ran"

    result = probe.guard(NAME, ["touch", str(marker)], ttl=1)

    assert result.state == "frozen"
    assert (result.holder.owner, result.holder.agent_id) == ("tester/F", "F")
    assert not marker.exists()
    assert probe.frozen(NAME)
    assert "freeze-deny" in [e["event"] for e in audit_events(root)]

    now = lockfile.now_ns()
    expired = LockData(
        NAME,
        "tester/F",
        lockfile.host_name(),
        4242,
        acquired_ns=now - 120 * 10**9,
        ttl_sec=60,
        expires_ns=now - 60 * 10**9,
    )
    lockfile.freeze_path(root, NAME).write_text(expired.to_json())
    result = probe.guard(NAME, ["touch", str(marker)], ttl=1)
    assert (result.state, result.exit_code) == ("ran", 0)
    assert marker.exists()
    assert not lockfile.freeze_path(root, NAME).exists()


def test_corrupt_lock_file_is_recovered(engine_name, root):
    lockfile.ensure_dirs(root)
    lock_file(root).write_text('{"version": 1, "name": ')

    result = in_process(engine_name, root, "B").guard(NAME, ["true"], ttl=1)

    assert (result.state, result.exit_code) == ("ran", 0)
    assert not lock_file(root).exists()
    removals = [e for e in audit_events(root) if e["event"] in ("auto-prune", "corrupt-break")]
    assert removals and removals[0]["name"] == NAME


def test_empty_lock_file_counts_as_held(engine_name, tmp_path, root):
    lockfile.ensure_dirs(root)
    lock_file(root).write_text("")

    result = in_process(engine_name, root, "B").guard(NAME, ["touch", str(tmp_path / "ran")], ttl=1)

    assert result.state == "held"
    assert result.holder is None
    assert lock_file(root).read_text() == ""
    assert not (tmp_path / "ran").exists()


def test_lock_from_a_newer_lokt_is_an_error(engine_name, tmp_path, root):
    text = write_lock(root).replace('"version": 1', '"version": 2')
    lock_file(root).write_text(text)

    result = in_process(engine_name, root, "B").guard(NAME, ["true"], ttl=1, log=tmp_path / "log")

    assert result.state == "error"
    assert "version" in result.message
    assert lock_file(root).read_text() == text


@pytest.mark.parametrize(
    "bad_name", ["", "../escape", "/abs", "has space", "a..b", "semi;colon", "ünï", "-flag"]
)
def test_invalid_lock_names_are_refused_before_anything_runs(engine_name, tmp_path, root, bad_name):
    marker = tmp_path / "ran"
    with pytest.raises(UsageError, match="invalid lock name"):
        in_process(engine_name, root, "B").guard(bad_name, ["touch", str(marker)], ttl=1)
    assert not marker.exists()
    assert not root.exists()


# What comes back -------------------------------------------------------------

EXITS = [
    (["sh", "-c", "exit 0"], 0, None),
    (["sh", "-c", "exit 1"], 1, None),
    (["sh", "-c", "exit 2"], 2, None),
    (["sh", "-c", "exit 3"], 3, None),
    (["no-such-command-for-lokt-tasks"], 127, None),
    (["sh", "-c", "kill -TERM $$"], None, signal.SIGTERM),
    (["sh", "-c", "kill -KILL $$"], None, signal.SIGKILL),
]


@pytest.mark.parametrize("command, exit_code, signum", EXITS, ids=lambda value: str(value))
def test_exit_codes_and_signals_come_back_as_ran(engine_name, root, command, exit_code, signum):
    result = in_process(engine_name, root, "A").guard(NAME, command, ttl=1)

    assert (result.state, result.exit_code, result.signal) == ("ran", exit_code, signum)
    (record,) = [json.loads(path.read_text()) for path in (root.parent / "attempts").iterdir()]
    assert (record["exit_code"], record["signal"]) == (
        exit_code,
        signum and signal.Signals(signum).name,
    )
    assert record["outcome"] == ("passed" if exit_code == 0 else "failed")
    assert not lock_file(root).exists()


def test_output_goes_to_the_log_started_afresh_once_the_lock_is_ours(engine_name, tmp_path, root):
    log = tmp_path / "logs" / "shard.log"
    log.parent.mkdir()
    log.write_text("an earlier attempt's output\n")
    command = ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]

    result = in_process(engine_name, root, "A").guard(NAME, command, ttl=1, log=log)

    assert (result.state, result.exit_code) == ("ran", 3)
    assert log.read_text().splitlines() == ["to-stdout", "to-stderr"]


def test_command_sees_its_lokt_identity(engine_name, tmp_path, root):
    out = tmp_path / "identity"
    command = [
        "sh",
        "-c",
        'printf "%s\\n" "$LOKT_OWNER" "$LOKT_AGENT_ID" "$LOKT_ROOT" > "$1"',
        "sh",
        str(out),
    ]

    in_process(engine_name, root, "A").guard(NAME, command, ttl=1)

    assert out.read_text().splitlines() == ["tester/A", "A", str(root)]


# Stopping --------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_reaches_the_command_and_releases_the_lock(engine_name, root, spawn, signum):
    agent = spawn(engine_name, "A", ["sleep", "30"])
    command_pid = agent.wait_started()

    os.kill(agent.pid, signum)
    result = agent.result()

    assert (result["state"], result["interrupted"], result["signal"]) == ("ran", signum, signum)
    assert not lock_file(root).exists()
    assert process_gone(command_pid)


FORWARDING_PARENT = """
import signal, subprocess, sys, time
children = []
def forward(signum, frame):
    time.sleep(0.2)  # a copy sent to the whole group would land first, not merge with ours
    for child in children:
        child.send_signal(signum)
signal.signal(signal.SIGINT, forward)
children.append(subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]]))
sys.exit(children[0].wait())
"""
COUNTING_CHILD = """
import signal, sys, time
received = []
signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
open(sys.argv[1] + ".ready", "w").close()
while not received:
    time.sleep(0.01)
time.sleep(0.5)  # room for a duplicate to arrive
open(sys.argv[1], "w").write(str(len(received)))
"""


def test_a_command_that_forwards_signals_passes_on_exactly_one(engine_name, tmp_path, spawn):
    """Like an attempt process: the engine signals the command, the command its child."""
    count = tmp_path / "count"
    agent = spawn(
        engine_name, "A", [sys.executable, "-c", FORWARDING_PARENT, COUNTING_CHILD, str(count)]
    )
    agent.wait_started()
    wait_for(lambda: Path(str(count) + ".ready").exists(), "the child to be ready")

    os.kill(agent.pid, signal.SIGINT)
    result = agent.result()

    assert (result["state"], result["interrupted"], result["exit_code"]) == (
        "ran",
        signal.SIGINT,
        0,
    )
    assert count.read_text() == "1"


def test_stop_while_waiting_for_the_lock(engine_name, tmp_path, root, spawn):
    release = tmp_path / "release"
    holder_agent = spawn(engine_name, "A", hold_until(release))
    holder_agent.wait_started()
    waiter = spawn(engine_name, "B", ["touch", str(tmp_path / "B-ran")], wait=True, timeout=60)
    wait_for(
        lambda: any(e["event"] == "deny" and e["owner"] == "tester/B" for e in audit_events(root)),
        "the waiting agent to be denied once",
    )

    os.kill(waiter.pid, signal.SIGTERM)
    result = waiter.result()

    assert (result["state"], result["interrupted"]) == ("interrupted", signal.SIGTERM)
    assert not (tmp_path / "B-ran").exists()
    assert json.loads(lock_file(root).read_text())["owner"] == "tester/A"
    release.touch()
    assert holder_agent.result()["state"] == "ran"
    assert not lock_file(root).exists()


# Races -------------------------------------------------------------------------


def race_engines():
    return ["embedded", "lokt"] if LOKT else ["embedded"]


def test_twenty_agents_without_wait_exactly_one_runs(tmp_path, root, spawn):
    release = tmp_path / "release"
    engines = race_engines()
    agents = [spawn(engines[i % len(engines)], f"r{i:02d}", hold_until(release)) for i in range(20)]
    try:
        wait_for(
            lambda: sum(a.process.poll() is not None for a in agents) >= 19,
            "19 agents to give up",
            60,
        )
    finally:
        release.touch()

    results = [agent.result() for agent in agents]

    states = sorted(result["state"] for result in results)
    assert states == ["held"] * 19 + ["ran"]
    winner = agents[[result["state"] for result in results].index("ran")]
    for result in results:
        if result["state"] == "held":
            assert result["holder"]["owner"] == f"tester/{winner.agent}"
    assert not lock_file(root).exists()


def test_twenty_waiting_agents_all_run_one_at_a_time(tmp_path, root, spawn):
    sentinel = tmp_path / "inside"
    # mkdir is atomic: it fails if another command is inside at the same time.
    command = [
        "/bin/sh",
        "-c",
        'mkdir "$1" || exit 99; sleep 0.05; rmdir "$1"',
        "overlap",
        str(sentinel),
    ]
    engines = race_engines()
    agents = [
        spawn(engines[i % len(engines)], f"w{i:02d}", command, wait=True, timeout=120)
        for i in range(20)
    ]

    results = [agent.result(limit=150) for agent in agents]

    assert [(r["state"], r["exit_code"]) for r in results] == [("ran", 0)] * 20
    assert not lock_file(root).exists()
    acquired_by = {e["owner"] for e in audit_events(root) if e["event"] == "acquire"}
    assert acquired_by == {f"tester/{agent.agent}" for agent in agents}


# lokt and the embedded engine together --------------------------------------------


@needs_lokt
def test_lokt_sees_a_lock_held_by_the_embedded_engine(tmp_path, root, spawn):
    release = tmp_path / "release"
    holder_agent = spawn("embedded", "A", hold_until(release), ttl=7)
    holder_agent.wait_started()
    env = lokt_env(root, "tester/B", "B")

    guard = subprocess.run(
        [LOKT, "guard", "--ttl", "5s", NAME, "--", "true"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    status = subprocess.run(
        [LOKT, "status", NAME, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )

    assert guard.returncode == 2
    assert "held by tester/A (agent: A)" in guard.stderr
    shown = json.loads(status.stdout)
    assert (shown["owner"], shown["agent_id"], shown["pid"]) == (
        "tester/A",
        "A",
        watchdog_of(holder_agent.pid),
    )
    assert (shown["pid_status"], shown["ttl_sec"], shown["expired"]) == ("alive", 7, False)
    release.touch()
    assert holder_agent.result()["state"] == "ran"


@needs_lokt
def test_embedded_engine_is_held_by_lokt_guard(tmp_path, root, spawn):
    release = tmp_path / "release"
    holder_agent = spawn("lokt", "A", hold_until(release))
    holder_agent.wait_started()

    result = in_process("embedded", root, "B").guard(NAME, ["true"], ttl=1)

    assert result.state == "held"
    assert (result.holder.owner, result.holder.agent_id, result.holder.pid_status) == (
        "tester/A",
        "A",
        "alive",
    )
    release.touch()
    assert holder_agent.result()["state"] == "ran"


@needs_lokt
def test_lokt_freeze_blocks_the_embedded_engine(tmp_path, root):
    subprocess.run(
        [LOKT, "freeze", "--ttl", "1m", NAME], env=lokt_env(root, "tester/F"), check=True
    )

    result = in_process("embedded", root, "B").guard(NAME, ["touch", str(tmp_path / "ran")], ttl=1)

    assert result.state == "frozen"
    assert result.holder.owner == "tester/F"
    assert not (tmp_path / "ran").exists()


@needs_lokt
def test_embedded_audit_lines_are_written_like_lokts(tmp_path, root, spawn):
    """Each engine acquires, renews, releases, is denied, meets a freeze and
    sweeps a corrupt file; every event type must come out field for field alike."""
    lokt_engine = in_process("lokt", root, "L")
    embedded = in_process("embedded", root, "E")
    for engine in (lokt_engine, embedded):
        engine.guard(NAME, ["sleep", "0.8"], ttl=1)
    for holder_engine, engine in (("embedded", lokt_engine), ("lokt", embedded)):
        release = tmp_path / f"release-{holder_engine}"
        holder_agent = spawn(holder_engine, f"H-{holder_engine}", hold_until(release))
        holder_agent.wait_started()
        assert engine.guard(NAME, ["true"], ttl=1).state == "held"
        release.touch()
        holder_agent.result()
    subprocess.run(
        [LOKT, "freeze", "--ttl", "1m", "frozen-name"], env=lokt_env(root, "tester/F"), check=True
    )
    for engine in (lokt_engine, embedded):
        assert engine.guard("frozen-name", ["true"], ttl=1).state == "frozen"
        (root / "locks" / "broken.json").write_text("{")
        assert engine.guard("other", ["true"], ttl=1).state == "ran"

    by_writer = {}
    for line in audit_lines(root):
        event = json.loads(line)
        assert line == json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        writer = (
            "embedded"
            if event["owner"] == "tester/E"
            else "lokt"
            if event["owner"] == "tester/L"
            else None
        )
        if writer:
            by_writer.setdefault((writer, event["event"]), []).append(event)

    events = ("acquire", "renew", "release", "deny", "freeze-deny", "auto-prune")
    for event in events:
        assert (("lokt", event) in by_writer) and (("embedded", event) in by_writer), event
        lokt_shape = {shape(e) for e in by_writer[("lokt", event)]}
        embedded_shape = {shape(e) for e in by_writer[("embedded", event)]}
        assert embedded_shape == lokt_shape, event


def shape(event):
    """Field names in order, with the names inside extra."""
    return tuple(event), tuple(event.get("extra", {}))
