"""The recorder: the process that runs *inside* ``lokt guard``, around the command.

``recorder.py RECORD FIELDS --agent PID [--log PATH] [--skip OUTCOMES] [--merge-stderr] -- CMD...``

``run.recorder_argv`` builds the command line (PID is the agent's, PATH the
shard's log), which imports this module and calls :func:`main` (see
``run.RECORDER_BOOTSTRAP``); it also runs as a plain script.

With the lokt engine, ``lokt guard`` runs this process, not the shard
command itself (the embedded engine holds the lock in the agent's own
process and records there, see ``run.py``). Because the recorder lives
inside the guard, both records are written while the lock is held:

- the start record proves the command really started, so an exit code of 2
  from ``lokt guard`` ("held") can never be mistaken for the command's own 2;
- the final record exists before the lock is released, so an agent that
  claims the shard next (queue mode) always sees that it is already done.

It forwards SIGINT and SIGTERM to the command and records the shard as
interrupted. It exits with the command's exit code, or 128 + N when the
command died of signal N, as a shell would. ``--merge-stderr`` sends the
command's stderr to its stdout (the shard's log), as lokt's own stderr is
kept apart then.

The command lives only as long as the agent that asked for it (``--agent``). The recorder runs in a session of its own, so killing the agent
or its process group (a CI timeout, a closed terminal) does not reach it.
A ``lokt guard --wait`` left behind by a killed agent would run the shard
long after nobody waits for it, and a command left running would race the
rerun. So when the agent is gone the recorder runs nothing, or stops the
command it runs (SIGTERM, then SIGKILL after a grace period), and writes no
final record: the start record stays, and ``verify`` calls the shard
crashed, as it is.

Why it stands alone. The recorder starts once per shard, so its start-up
time is part of every shard's overhead. It therefore runs isolated (``-I``:
bytecode caches are used whatever ``PYTHON*`` variables say), without
site-packages (``-S``), imported rather than run by path (a script is
compiled on every start, an imported module's bytecode is cached), and on
its usual path imports nothing beyond the package's tiny ``__init__`` and
the modules loaded when Python starts, except ``_signal``:
``json`` (which pulls in ``re``) and ``signal`` (``enum``) would each cost
about as much again as the interpreter's own start. So:

- FIELDS is the record's other fields, already in JSON, from
  ``results.unstamped_json``. The recorder writes a record as the lines of
  the stamped fields (``results.STAMPED_FIELDS``: outcome, exit code, times
  ...) put in front of those, exactly as ``results.record_to_json`` lays a
  record out. The stamped values are numbers, null, or plain ASCII words the
  recorder makes itself, so they need no JSON encoder.
- ``json`` is imported only to read back a record that already exists
  (``--skip``), and ``signal`` only to name a signal that stopped a command.

tests/test_recorder_compat.py holds the two formats together. The recorder
also keeps its own minimal copies of :func:`lokt_tasks.atomic.write_atomically`
and of the process checks of :mod:`lokt_tasks.lockfile` (pid alive, zombie,
start time).
"""
from __future__ import annotations

import os
import sys
import time

try:
    import _signal as signal  # the C module that ``signal`` wraps in enums
except ImportError:  # not CPython
    import signal

#: Exit code of the recorder when the shard was already done and nothing ran.
ALREADY_DONE = 0
#: Exit code of the recorder when its agent had died (nobody reads it).
AGENT_GONE = 125
#: Exit code for a command line the recorder cannot use (EX_USAGE).
USAGE = 64
#: How often the recorder checks that its agent still lives.
WATCH_INTERVAL = 0.1
#: After the agent died: how long the command gets between SIGTERM and SIGKILL.
ORPHAN_GRACE = 10.0

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Signals Python ignores for itself; the command gets their default back.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


USAGE_LINE = "usage: recorder.py RECORD FIELDS --agent PID [--log PATH] [--skip OUTCOMES] [--merge-stderr] -- CMD..."
OPTIONS_WITH_VALUES = ("--agent", "--log", "--skip")


def main(argv: list) -> int:
    try:
        separator = argv.index("--")
    except ValueError:
        separator = len(argv)
    command = argv[separator + 1 :]
    positional, options = [], {}
    words = iter(argv[:separator])
    for word in words:
        if word == "--merge-stderr":
            options[word] = True
        elif word in OPTIONS_WITH_VALUES:
            options[word] = next(words, "")
        else:
            positional.append(word)
    agent_pid = options.get("--agent", "")
    if len(positional) != 2 or not command or not agent_pid.isdigit() or not positional[1].startswith("{\n"):
        print(USAGE_LINE, file=sys.stderr)
        return USAGE
    record_path, fields = positional
    agent = AgentWatch(int(agent_pid))
    if agent.gone():
        return AGENT_GONE
    skip = options.get("--skip", "").split(",") if options.get("--skip") else []
    if skip and already_done(record_path, fields, skip):
        return ALREADY_DONE
    shard = ShardRecord(record_path, fields, options.get("--log") or None)
    return run_and_record(shard, command, agent, merge_stderr="--merge-stderr" in options)


class AgentWatch:
    """Tells whether the agent that started this run has died.

    Its pid must still be alive, not a zombie, and not reused (same start
    time). When the agent is our parent (the embedded engine), a change of
    parent says so too: that works where zombies cannot be told (macOS).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.is_parent = os.getppid() == pid
        self.start_time = process_start_time(pid)

    def gone(self) -> bool:
        if self.is_parent and os.getppid() != self.pid:
            return True
        if not pid_alive(self.pid) or is_zombie(self.pid):
            return True
        return self.start_time is not None and process_start_time(self.pid) != self.start_time


class Command:
    """The shard's command as a child process (subprocess costs too much to import).

    A signal sent before the command exists is held and delivered once it
    does; none is sent after it has been reaped, when its pid may be reused.
    """

    def __init__(self) -> None:
        self.pid = None
        self.returncode = None
        self.held = []

    def start(self, argv: list, merge_stderr: bool = False) -> None:
        file_actions = [(os.POSIX_SPAWN_DUP2, 1, 2)] if merge_stderr else []
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=file_actions, setsigdef=RESTORED_SIGNALS)
        self.pid = pid
        if self.held:
            self.send(self.held[0])

    def send(self, signum: int) -> None:
        if self.pid is None:
            self.held.append(signum)
        elif self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        """Its return code (-N if killed by signal N); None if still running after ``timeout``."""
        if timeout is None:
            return self._reap(0)
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while self._reap(os.WNOHANG) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.05)
        return self.returncode

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def run_and_record(shard: "ShardRecord", command: list, agent: AgentWatch, merge_stderr: bool = False) -> int:
    received = []
    child = Command()

    def forward(signum, _frame):
        received.append(signum)
        child.send(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        began = time.monotonic()
        started_at = utc_now()  # after any wait for the lock
        if shard.log:
            empty_log(shard.log)
        shard.write(outcome="running", exit_code=None, signal=None, message="", started_at=started_at, ended_at=None, duration=None)
        try:
            child.start(command, merge_stderr)
        except OSError as error:
            returncode = 127 if isinstance(error, FileNotFoundError) else 126
            stream = sys.stdout if merge_stderr else sys.stderr
            print(f"lokt-tasks: cannot run {command[0]!r}: {error.strerror}", file=stream, flush=True)
        else:
            returncode = wait_watching(child, agent)
            if returncode is None:
                return AGENT_GONE
        duration = round(time.monotonic() - began, 3)
        shard.write(**final_stamps(returncode, received), started_at=started_at, ended_at=utc_now(), duration=duration)
    finally:
        for sig, handler in previous.items():  # once stopped, more signals must not cut our exit short
            signal.signal(sig, signal.SIG_IGN if received else handler)
    return 128 - returncode if returncode < 0 else returncode


def wait_watching(child: Command, agent: AgentWatch) -> int | None:
    """The command's return code; None if the agent died and the command was stopped."""
    while True:
        returncode = child.wait(WATCH_INTERVAL)
        if returncode is not None:
            return returncode
        if agent.gone():
            stop_orphaned(child)
            return None


def stop_orphaned(child: Command) -> None:
    """End the command of a dead agent: SIGTERM, SIGKILL after the grace period.

    With the embedded engine the recorder leads its own process group, which
    holds the command's children too: they are killed with it (and so is the
    recorder, which has nothing left to write).
    """
    child.send(signal.SIGTERM)
    if child.wait(ORPHAN_GRACE) is None:
        child.send(signal.SIGKILL)
        child.wait()
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)


def empty_log(path: str) -> None:
    """Start the shard's log afresh, now that this attempt holds the lock.

    Not earlier: an agent refused the lock must not wipe the log of the
    agent that holds it. The engine opened the log for appending, so our
    output and the command's continue at the new end of the file.
    """
    try:
        os.truncate(path, 0)
    except OSError:
        pass


# --- Records, in the format of lokt_tasks.results ---------------------------

#: Record fields that may hold null (the others may not).
OPTIONAL_FIELDS = ("ended_at", "duration", "exit_code", "signal", "log")


class ShardRecord:
    """The record file of this attempt: FIELDS from the agent, plus the stamps."""

    def __init__(self, path: str, fields: str, log: str | None) -> None:
        self.path = path
        self.fields = fields
        self.log = log

    def write(self, **stamps) -> None:
        """Write the record with ``stamps`` (``results.STAMPED_FIELDS``, in that
        order); durably unless it is the start record, as ``results.write_record``."""
        lines = "".join('  "%s": %s,\n' % (name, json_value(value)) for name, value in stamps.items())
        write_atomically(self.path, "{\n" + lines + self.fields[2:] + "\n", durable=stamps["outcome"] != "running")


def json_value(value: object) -> str:
    """A stamp in JSON: null, a number, or one of our own plain ASCII words."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"%s"' % value
    return repr(value)


def final_stamps(returncode: int, received: list) -> dict:
    """outcome, exit_code, signal and message of the final record."""
    stamps = {"outcome": "failed", "exit_code": returncode, "signal": None, "message": ""}
    if returncode < 0:
        stamps.update(exit_code=None, signal=signal_name(-returncode))
    if received:
        stamps.update(outcome="interrupted", message="stopped by " + signal_name(received[0]))
    elif returncode == 0:
        stamps["outcome"] = "passed"
    return stamps


def already_done(record_path: str, fields: str, skip: list) -> bool:
    """True when this shard already has one of the ``skip`` outcomes under this plan.

    A record that cannot be read is not done. The check of its fields is
    lighter than ``results.read_record``'s (our start record's fields, with
    the same JSON types, or null where a record may leave them empty); a
    record that passes here but not there can only be hand-made, and
    ``verify`` still calls it corrupt, never passed.
    """
    try:
        with open(record_path, "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    import json  # only when there is a record to read: it costs as much as starting Python

    try:
        existing, start = json.loads(data), json.loads(fields)
    except ValueError:
        return False
    if not isinstance(existing, dict):
        return False
    existing.setdefault("attempt", "")  # records from before attempts were kept
    start.update(outcome="running", message="", started_at="")
    for name, ours in start.items():
        theirs = existing.get(name)
        if theirs is None and name in OPTIONAL_FIELDS:
            continue
        if ours is not None and type(theirs) is not type(ours):
            return False
    return (
        existing["version"] == start["version"]
        and existing["fingerprint"] == start["fingerprint"]
        and existing["outcome"] in skip
        and existing["attempt"] != start["attempt"]
    )


def write_atomically(path: str, text: str, durable: bool = True) -> None:
    """Replace ``path`` with ``text`` as ``atomic.write_atomically`` does.

    Temp file in the same directory, fsync, rename over the old record,
    fsync the directory: readers see the old record or the new one, never a
    mix, and after a machine crash the rename is not lost. ``durable`` False
    skips both fsyncs.
    """
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with open(fd, "wb") as handle:
            handle.write(text.encode("ascii"))
            handle.flush()
            os.fchmod(handle.fileno(), 0o644)
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(directory or ".")


def fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # Some filesystems refuse fsync on directories; the rename still happened.
    finally:
        os.close(fd)


def utc_now() -> str:
    """Now as ``results.utc_now`` writes it: ``2024-05-01T12:00:00.123456Z``."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%06dZ" % (nanoseconds // 1000)


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9, as ``results.signal_name`` names it."""
    import signal  # the full module, with names: only when a signal stopped the command

    try:
        return signal.Signals(signum).name
    except ValueError:
        return "SIG%d" % signum


# --- Processes: minimal copies of lokt_tasks.lockfile's checks ---------------


def pid_alive(pid: int) -> bool:
    """kill(pid, 0): EPERM still means the process exists."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> int | None:
    """The process's start time as lokt stores it, or None where it cannot be read."""
    if sys.platform.startswith("linux"):
        try:
            return int(linux_stat_fields(pid)[19])
        except (IndexError, ValueError):
            return None
    if sys.platform == "darwin":
        return darwin_start_time(pid)
    return None


def is_zombie(pid: int) -> bool:
    """A process that has exited but was not reaped (told on Linux only)."""
    if not sys.platform.startswith("linux"):
        return False
    fields = linux_stat_fields(pid)
    return bool(fields) and fields[0] in (b"Z", b"X")


def linux_stat_fields(pid: int) -> list:
    """/proc/PID/stat from field 3 on (after the command name); empty if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return []
    return data[data.rfind(b")") + 2 :].split()


def darwin_start_time(pid: int) -> int | None:
    """kinfo_proc's p_starttime from sysctl, in ns since the epoch."""
    import ctypes  # macOS only, and only here: it is slow to import

    try:
        sysctl = ctypes.CDLL(None, use_errno=True).sysctl
        sysctl.argtypes = [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        sysctl.restype = ctypes.c_int
        mib = (ctypes.c_int * 4)(1, 14, 1, pid)  # CTL_KERN, KERN_PROC, KERN_PROC_PID
        size = ctypes.c_size_t(0)
        if sysctl(mib, 4, None, ctypes.byref(size), None, 0) != 0 or size.value == 0:
            return None
        buffer = ctypes.create_string_buffer(size.value)
        if sysctl(mib, 4, buffer, ctypes.byref(size), None, 0) != 0 or size.value < 16:
            return None
    except (OSError, AttributeError, ctypes.ArgumentError):
        return None
    # A timeval: 64-bit tv_sec, then 32-bit tv_usec (and padding lokt ignores too).
    seconds = int.from_bytes(buffer.raw[0:8], "little", signed=True)
    microseconds = int.from_bytes(buffer.raw[8:12], "little", signed=True)
    return seconds * 1_000_000_000 + microseconds * 1_000


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
