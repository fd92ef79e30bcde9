"""An attempt as a process of its own, against the record format of results.

The attempt module imports only the standard library (through ``system``),
to start fast inside ``lokt guard``, so these tests hold it to the format:
every record it writes must be read back by ``results.read_record`` as a
valid Record, byte for byte in the format ``results`` itself writes. The
attempt runs exactly as the lokt engine starts it (``Attempt.argv``).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from scratch import wait_for

from lokt_tasks import attempt, junit, states, system
from lokt_tasks.attempt import JUNIT_PLACEHOLDER, Attempt
from lokt_tasks.results import Record, read_record, record_to_json, unstamped_json

#: All an attempt may import: the standard library (ctypes on macOS only),
#: and of the package ``system``, and ``junit`` (with ``states``) to read reports.
STANDARD_MODULES = {
    "__future__",
    "_signal",
    "ctypes",
    "dataclasses",
    "enum",
    "errno",
    "hashlib",
    "json",
    "math",
    "os",
    "pathlib",
    "signal",
    "stat",
    "subprocess",
    "sys",
    "time",
    "types",
    "typing",
    "xml",
}
#: What each module the attempt process may import imports of the package.
PACKAGE_IMPORTS = {"attempt": {"system", "junit"}, "junit": {"states", "system"}, "states": set()}


def attempt_argv(path: Path, start: Record, command, skip=(), *, log=None):
    """The attempt process's command line, as the lokt engine builds it."""
    return Attempt(path, unstamped_json(start), command, log=log or start.log, skip=skip).argv(
        start.pid
    )


def start_record(**changes) -> Record:
    record = Record(
        task="checks",
        shard=2,
        total=3,
        fingerprint="f" * 16,
        run_key="local",
        lock_name="checks-shard-2",
        agent="ann",
        owner="me/ann",
        host="here",
        pid=os.getpid(),
        engine="embedded",
        started_at="2024-05-01T12:00:00.000000Z",
        items=4,
        attempt="a" * 32,
    )
    return dataclasses.replace(record, **changes)


def python(code: str):
    return [sys.executable, "-c", code]


def run_attempt_process(path: Path, command, start: Record = None, skip=()):
    argv = attempt_argv(path, start or start_record(), command, skip)
    return subprocess.run(argv, capture_output=True, timeout=60)


def read_back(path: Path) -> Record:
    """The record as results reads it, checked to be in results' own format."""
    record = read_record(path)
    assert isinstance(record, Record), record
    assert path.read_text(encoding="utf-8") == record_to_json(record)
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [name for name in os.listdir(path.parent) if name.endswith(".tmp")] == []
    return record


@pytest.mark.parametrize("module", [attempt, system, junit, states])
def test_the_attempt_imports_only_standard_modules(module):
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported, package = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 1
            package.update([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= STANDARD_MODULES
    assert package <= PACKAGE_IMPORTS.get(module.__name__.split(".")[-1], set())


def test_the_report_reader_imports_in_a_python_without_site_packages():
    """As the attempt process starts (``-I -S``): no colorama, no tomli."""
    code = system.bootstrap("attempt")[4].split("; from")[0]
    probe = (
        code + "; from lokt_tasks import junit"
        "; print(sorted(m for m in sys.modules if m.startswith(('colorama', 'tomli', 'invoke'))))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


def test_a_passing_command(tmp_path):
    path = tmp_path / "shard-2.json"
    result = run_attempt_process(path, python("pass"))
    assert result.returncode == 0, result.stderr
    record = read_back(path)
    assert (record.outcome, record.exit_code, record.signal, record.message) == (
        "passed",
        0,
        None,
        "",
    )
    assert record.started_at != start_record().started_at  # stamped when the command started
    assert record.ended_at >= record.started_at and isinstance(record.duration, float)
    assert dataclasses.replace(
        record, started_at="", ended_at=None, duration=None, exit_code=None, outcome="running"
    ) == dataclasses.replace(start_record(), started_at="")


def test_a_failing_command(tmp_path):
    path = tmp_path / "shard-2.json"
    result = run_attempt_process(path, python("import sys; sys.exit(3)"))
    assert result.returncode == 3
    record = read_back(path)
    assert (record.outcome, record.exit_code, record.signal) == ("failed", 3, None)


def test_a_command_killed_by_a_signal(tmp_path):
    path = tmp_path / "shard-2.json"
    result = run_attempt_process(
        path, python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    )
    assert result.returncode == 128 + signal.SIGKILL
    record = read_back(path)
    assert (record.outcome, record.exit_code, record.signal) == ("failed", None, "SIGKILL")


def test_a_command_that_cannot_run(tmp_path):
    path = tmp_path / "shard-2.json"
    result = run_attempt_process(path, [str(tmp_path / "no-such-program")])
    assert result.returncode == 127
    assert (
        f"lokt-tasks: {tmp_path / 'no-such-program'}: command not found".encode() in result.stderr
    )
    assert read_back(path).exit_code == 127


def test_fields_that_json_escapes_are_written_back_as_they_were(tmp_path):
    path = tmp_path / "shard-2.json"
    log = tmp_path / 'logs \u00e5 "quoted" \\ $(x)' / "shard-2.log"
    log.parent.mkdir()
    log.write_text("an earlier attempt's output")
    start = start_record(
        agent="\u00e5nn \U0001f600", owner='me/"ann"\\', host="h\u00f8st", log=str(log)
    )
    result = run_attempt_process(path, python("pass"), start)
    assert result.returncode == 0, result.stderr
    record = read_back(path)
    assert (record.agent, record.owner, record.host, record.log) == (
        start.agent,
        start.owner,
        start.host,
        str(log),
    )
    assert log.read_text() == ""  # found by its path


def test_with_a_log_both_streams_go_to_it_and_without_one_they_stay_apart(tmp_path):
    command = python(
        "import sys; sys.stdout.write('to stdout '); sys.stdout.flush();"
        " sys.stderr.write('to stderr')"
    )
    apart = subprocess.run(
        attempt_argv(tmp_path / "a.json", start_record(), command), capture_output=True, timeout=60
    )
    log = tmp_path / "b.log"
    merged = subprocess.run(
        attempt_argv(tmp_path / "b.json", start_record(), command, log=str(log)),
        capture_output=True,
        timeout=60,
    )
    assert (apart.stdout, apart.stderr) == (b"to stdout ", b"to stderr")
    assert (merged.stdout, merged.stderr) == (b"", b"")
    assert log.read_bytes() == b"to stdout to stderr"
    log = tmp_path / "c.log"
    missing = subprocess.run(
        attempt_argv(
            tmp_path / "c.json", start_record(), [str(tmp_path / "nothing")], log=str(log)
        ),
        capture_output=True,
        timeout=60,
    )
    assert missing.returncode == 127 and (missing.stdout, missing.stderr) == (b"", b"")
    assert b"command not found" in log.read_bytes()


def test_a_passing_shard_imports_nothing_beyond_os_sys_and_time(tmp_path):
    """Start-up is most of a shard's overhead: json (with re) or signal
    (with enum) would double it. Checked by what is imported, not by timing."""
    argv = attempt_argv(tmp_path / "shard-2.json", start_record(), python("pass"))
    result = subprocess.run(
        argv[:3] + ["-X", "importtime"] + argv[3:], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    imported = {
        line.split("|")[-1].strip()
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert (
        imported
        & {"json", "re", "enum", "signal", "subprocess", "dataclasses", "lokt_tasks.results"}
        == set()
    ), sorted(imported)
    bare = subprocess.run(
        argv[:3] + ["-X", "importtime", "-c", "import os, sys, time"],
        capture_output=True,
        timeout=60,
    ).stderr.decode()
    at_start = {
        line.split("|")[-1].strip() for line in bare.splitlines() if line.startswith("import time:")
    }
    allowed = {"__future__", "_signal", "lokt_tasks", "lokt_tasks.attempt", "lokt_tasks.system"}
    assert imported - at_start <= allowed, sorted(imported - at_start)


def test_it_is_imported_from_its_bytecode_cache_and_shadows_no_standard_module(tmp_path):
    """Imported, not run by path: Python compiles a script on every start
    but keeps an imported module's bytecode. The package's directory goes
    last on sys.path."""
    argv = attempt_argv(tmp_path / "shard-2.json", start_record(), python("pass"))
    assert argv[1:4] == ["-I", "-S", "-c"]
    probe = argv[4].replace(
        "from lokt_tasks.attempt import main; sys.exit(main(sys.argv[1:]))", "print(sys.path[-1])"
    )
    assert probe != argv[4]
    result = subprocess.run([*argv[:4], probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == str(Path(attempt.__file__).parent.parent)
    assert subprocess.run(argv, timeout=60).returncode == 0


def test_an_interrupted_command_and_its_start_record(tmp_path):
    path = tmp_path / "shard-2.json"
    started = tmp_path / "started"
    log = tmp_path / "shard-2.log"
    log.write_text("an earlier attempt's output\n")
    command = python(f"import time; open({str(started)!r}, 'w').close(); time.sleep(60)")
    attempt_process = subprocess.Popen(attempt_argv(path, start_record(log=str(log)), command))
    try:
        wait_for(started.exists)
        running = read_back(path)
        assert (running.outcome, running.ended_at, running.log) == ("running", None, str(log))
        assert log.read_text() == ""  # emptied once the lock was ours
        attempt_process.send_signal(signal.SIGTERM)
        assert attempt_process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        attempt_process.kill()
        attempt_process.wait()
    record = read_back(path)
    assert (record.outcome, record.signal, record.message) == (
        "interrupted",
        "SIGTERM",
        "stopped by SIGTERM",
    )
    assert record.started_at == running.started_at


@pytest.mark.parametrize(
    "existing, runs",
    [
        ("done", False),
        ("other plan", True),
        ("same attempt", True),
        ("garbage", True),
        ("wrong types", True),
    ],
)
def test_skip_runs_nothing_only_for_a_readable_record_that_is_done(tmp_path, existing, runs):
    path = tmp_path / "shard-2.json"
    done = dataclasses.replace(
        start_record(attempt="b" * 32, log=None), outcome="passed", exit_code=0
    )
    text = {
        "done": record_to_json(done),
        "other plan": record_to_json(dataclasses.replace(done, fingerprint="0" * 16)),
        "same attempt": record_to_json(dataclasses.replace(done, attempt=start_record().attempt)),
        "garbage": '{"outcome": "passed", "finger',
        "wrong types": record_to_json(done).replace('"shard": 2', '"shard": "2"'),
    }[existing]
    path.write_text(text)
    marker = tmp_path / "ran"
    log = tmp_path / "shard-2.log"
    start = start_record(log=str(log))
    result = run_attempt_process(
        path, python(f"open({str(marker)!r}, 'w').close()"), start, skip=("passed", "failed")
    )
    assert result.returncode == 0, result.stderr
    assert marker.exists() == runs
    if runs:
        assert read_back(path).outcome == "passed"
    else:
        assert path.read_text() == text


def test_nothing_runs_when_the_agent_is_already_gone(tmp_path):
    agent = subprocess.Popen(python("pass"))
    agent.wait()
    path = tmp_path / "shard-2.json"
    marker = tmp_path / "ran"
    result = run_attempt_process(
        path, python(f"open({str(marker)!r}, 'w').close()"), start_record(pid=agent.pid)
    )
    assert result.returncode == 125
    assert not marker.exists() and not path.exists()


def test_the_command_of_an_agent_that_dies_is_stopped_and_the_start_record_stays(tmp_path):
    agent = subprocess.Popen(python("import time; time.sleep(60)"))
    path = tmp_path / "shard-2.json"
    started = tmp_path / "started"
    command = python(f"import time; open({str(started)!r}, 'w').close(); time.sleep(60)")
    attempt_process = subprocess.Popen(attempt_argv(path, start_record(pid=agent.pid), command))
    try:
        wait_for(started.exists)
        agent.kill()
        agent.wait()
        assert attempt_process.wait(timeout=30) == 125
    finally:
        agent.kill()
        attempt_process.kill()
        attempt_process.wait()
    assert read_back(path).outcome == "running"


def test_a_command_past_its_timeout_is_stopped_with_its_group_and_recorded(tmp_path):
    """The attempt process as the lokt engine starts it, with a limit: a command
    that ignores SIGTERM, and its child, are killed by SIGKILL 1 s after it."""
    path, pids = tmp_path / "shard-2.json", tmp_path / "pids"
    command = python(
        "import os, signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pids)!r}, 'w').write('%d %d' % (os.getpid(), child.pid))\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "shard-2.log"
    argv = Attempt(
        path,
        unstamped_json(start_record()),
        command,
        log=str(log),
        timeout=0.5,
        timeout_text="500ms",
    ).argv(os.getpid())
    assert argv[argv.index("--timeout") :][:4] == ["--timeout", "0.5", "--timeout-text", "500ms"]

    result = subprocess.run(argv, capture_output=True, timeout=60)

    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    assert all(system.process_gone(pid) for pid in map(int, pids.read_text().split()))
    record = read_back(path)
    assert (record.outcome, record.exit_code, record.signal, record.message) == (
        "timed-out",
        None,
        "SIGKILL",
        "exceeded timeout 500ms",
    )
    assert 0.5 + attempt.TIMEOUT_GRACE <= record.duration < 0.5 + 2
    assert log.read_text().endswith("SIGKILL 1s later to what was left\n")


@pytest.mark.parametrize("value", ["x", "-1", "inf"])
def test_a_bad_timeout_is_a_usage_error_and_nothing_runs(tmp_path, value):
    marker = tmp_path / "ran"
    argv = attempt_argv(tmp_path / "shard-2.json", start_record(), ["touch", str(marker)])
    argv[-3:-3] = ["--timeout", value]
    result = subprocess.run(argv, capture_output=True, timeout=60)
    assert result.returncode == attempt.USAGE
    assert result.stderr.decode().startswith("usage: attempt ")
    assert not marker.exists() and not (tmp_path / "shard-2.json").exists()


# --- reports and retries -------------------------------------------------------

#: A runner: ``RUNNER REPORT [NAMES]`` runs the tests t_a and t_b (or those
#: named), writes their JUnit report, and exits 1 if one failed. t_b fails
#: the first time, and again while the file ``always`` exists beside the report.
RUNNER = """\
import os, sys
report, names = sys.argv[1], sys.argv[2:] or ["t_a", "t_b"]
flag = os.path.join(os.path.dirname(report), "t_b.flag")
always = os.path.exists(os.path.join(os.path.dirname(report), "always"))
failed = [n for n in names if n == "t_b" and (always or not os.path.exists(flag))]
open(flag, "w").close()
cases = "".join(
    '<testcase classname="pkg" name="%s">%s</testcase>'
    % (n, '<failure message="t_b broke">trace</failure>' if n in failed else "")
    for n in names
)
with open(report, "w") as out:
    out.write("<testsuite>%s</testsuite>" % cases)
sys.exit(1 if failed else 0)
"""


def report_attempt(tmp_path: Path, *, retries=0, flaky="pass", runner=RUNNER) -> Attempt:
    """An attempt whose command runs RUNNER, its report at ``shard-2.junit.xml``;
    retries go back with the names joined into one argument (``{items:,}``)."""
    report = tmp_path / "shard-2.junit.xml"
    command = [sys.executable, "-c", runner, str(report)]
    template = json.dumps([sys.executable, "-c", runner, JUNIT_PLACEHOLDER, [[" "]]])
    return Attempt(
        tmp_path / "shard-2.json",
        unstamped_json(start_record()),
        command,
        report=report,
        retries=retries,
        template=template,
        flaky=flaky,
    )


def run_process(attempt: Attempt, *extra: str) -> subprocess.CompletedProcess:
    argv = attempt.argv(os.getpid())
    return subprocess.run(argv[:3] + list(extra) + argv[3:], capture_output=True, timeout=60)


def test_retry_reports_sit_beside_the_report():
    assert attempt.retry_report("r/shard-1.junit.xml", 0) == "r/shard-1.junit.xml"
    assert attempt.retry_report("r/shard-1.junit.xml", 2) == "r/shard-1.retry-2.junit.xml"
    assert attempt.retry_report("r/report.xml", 1) == "r/report.xml.retry-1"


def test_stamps_are_escaped_as_json_escapes_them(tmp_path):
    message = 'quote " backslash \\ tab \t caf\u00e9 \U0001d11e'
    record = dataclasses.replace(start_record(), message=message, reports=["ab", None])
    text = record_to_json(record)
    assert text.isascii() and json.loads(text)["message"] == message
    assert '  "message": %s,' % json.dumps(message) in text.splitlines()
    path = tmp_path / "shard-2.json"
    path.write_text(text)
    assert read_record(path) == record


def test_a_failing_test_passes_on_a_retry_in_the_attempt_process_and_is_flaky(tmp_path):
    result = run_process(report_attempt(tmp_path, retries=2))
    assert result.returncode == 0, result.stderr
    record = read_back(tmp_path / "shard-2.json")
    assert (record.outcome, record.exit_code, record.retries) == ("passed", 0, 1)
    assert record.message == "1 flaky test passed on a retry"
    first, retry = tmp_path / "shard-2.junit.xml", tmp_path / "shard-2.retry-1.junit.xml"
    assert record.reports == [
        attempt.digest(first.read_bytes()),
        attempt.digest(retry.read_bytes()),
    ]
    assert "t_b" in retry.read_text() and "t_a" not in retry.read_text()  # only the failing test
    assert b"lokt-tasks: retry 1 of 2: 1 failing test, as 1 item" in result.stdout


def test_flaky_fail_fails_the_shard_though_the_retry_passed(tmp_path):
    result = run_process(report_attempt(tmp_path, retries=1, flaky="fail"))
    assert result.returncode == 0  # the command's exit code; the record holds the verdict
    record = read_back(tmp_path / "shard-2.json")
    assert (record.outcome, record.retries, record.message) == (
        "failed",
        1,
        "1 flaky test passed on a retry (flaky = fail)",
    )


def test_retries_stop_at_their_number_and_the_shard_fails(tmp_path):
    (tmp_path / "always").write_text("")
    result = run_process(report_attempt(tmp_path, retries=2))
    assert result.returncode == 1
    record = read_back(tmp_path / "shard-2.json")
    assert (record.outcome, record.exit_code, record.retries, len(record.reports)) == (
        "failed",
        1,
        2,
        3,
    )
    assert record.message == "1 test still failing after 2 retries"


def test_exit_0_with_a_failing_test_in_the_report_is_a_failure(tmp_path):
    lying = RUNNER.replace("sys.exit(1 if failed else 0)", "sys.exit(0)")
    result = run_process(report_attempt(tmp_path, runner=lying))
    assert result.returncode == 0
    record = read_back(tmp_path / "shard-2.json")
    assert (record.outcome, record.exit_code, record.message) == (
        "failed",
        0,
        "1 failing test in its report",
    )


def test_a_report_left_before_the_attempt_is_removed_and_never_named(tmp_path):
    for name in ("shard-2.junit.xml", "shard-2.retry-1.junit.xml"):
        (tmp_path / name).write_text("<testsuite><testcase name='old'/></testsuite>")
    silent = "import sys; sys.exit(1)"
    result = run_process(report_attempt(tmp_path, retries=1, runner=silent))
    assert result.returncode == 1
    record = read_back(tmp_path / "shard-2.json")
    assert (record.outcome, record.reports, record.retries) == ("failed", [None], 0)
    assert sorted(os.listdir(tmp_path)) == ["shard-2.json"]


def test_a_passing_shard_with_a_clean_report_reads_no_xml(tmp_path):
    """Only a digest (hashlib) is added to a passing shard's start-up cost."""
    result = run_process(report_attempt(tmp_path), "-X", "importtime")
    assert result.returncode == 1, result.stderr  # t_b fails: now with t_b's flag, it passes
    result = run_process(report_attempt(tmp_path), "-X", "importtime")
    assert result.returncode == 0, result.stderr
    imported = {
        line.split("|")[-1].strip()
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "hashlib" in imported
    assert imported & {"lokt_tasks.junit", "xml", "enum", "json", "dataclasses"} == set()
    assert read_back(tmp_path / "shard-2.json").outcome == "passed"
