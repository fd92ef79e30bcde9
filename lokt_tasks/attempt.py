"""One attempt at a shard: its records, its command, its signals, written once.

An attempt runs while its shard's lock is held, and every step of it
happens under that lock:

1. ``begin``: if ``skip`` names outcomes and the record already holds one of
   them, from another attempt under the same plan, the shard is done: run
   nothing. Else empty the log and write the start record (outcome
   "running"), which proves the command started: ``lokt guard`` exits 2
   both for "held" and for a command's own 2, so its exit code cannot.
2. ``start``: the command, never through a shell, in a session of its own,
   stdout and stderr to the log. One that cannot start ends as under a
   shell: 127 (not found) or 126.
3. ``wait``: forward a stop (SIGINT/SIGTERM) to the command once, SIGKILL
   its process group if it outlives the grace period; once it ended, stop
   what is left of its process group (SIGTERM, then SIGKILL). If the attempt
   is abandoned (its agent died, its lock was lost), stop the whole group
   and owe no final record.
4. ``finish``: stamp how it ended (outcome, exit code, signal, times) and
   write the final record durably, before the lock is released, so that
   the next agent to claim the shard sees it done.

The embedded engine holds its locks in the agent and calls these steps in
its own process. The lokt engine has ``lokt guard`` run :func:`main` in a
process of its own (``system.bootstrap("attempt")``)::

    RECORD FIELDS --agent PID [--log PATH] [--skip OUTCOMES]
           [--lock PATH] [--grace SECONDS] -- CMD...

which watches the agent (PID), its guard and the lock file (PATH), and exits
with the command's exit code, or 128 + N when signal N ended it, as a shell
would.

A record file is the stamped fields (``STAMPED_FIELDS``, in that order)
followed by the rest, which the agent passes already in JSON
(``results.unstamped_json``): the attempt needs no JSON encoder, as the
stamps are numbers, null or plain ASCII words it makes itself. That and
the imports: this module starts once per shard inside ``lokt guard``, so it
imports only the standard library modules Python loads at start-up, plus
``system``; ``json`` (which costs as much as starting Python) only to read
a record back. The strings it writes ("running", "passed", ...) are the
values of ``states.Outcome``, which it cannot import for that reason.
"""

from __future__ import annotations

import os
import sys
import time

from . import system

#: After a stop was forwarded (or the agent died): how long the command gets
#: before its process group is killed.
STOP_GRACE = 10.0
#: How often a running attempt looks at stop requests and its agent.
POLL_INTERVAL = 0.025

#: Exit codes of the attempt process itself, when it runs no command.
ALREADY_DONE = 0
AGENT_GONE = 125
USAGE = 64  # EX_USAGE
CANNOT_WRITE = 73  # EX_CANTCREAT: a record could not be written
LOCK_LOST = 75  # EX_TEMPFAIL: the lock is not (or no longer) ours

#: The fields stamped on when an attempt starts and ends, first in a record.
STAMPED_FIELDS = ("outcome", "exit_code", "signal", "message", "started_at", "ended_at", "duration")
#: Record fields that may hold null (the others may not).
OPTIONAL_FIELDS = ("ended_at", "duration", "exit_code", "signal", "log")

USAGE_LINE = (
    "usage: attempt RECORD FIELDS --agent PID [--log PATH] [--skip OUTCOMES]"
    " [--lock PATH] [--grace SECONDS] -- CMD..."
)


class Attempt:
    """One attempt: its record file, the record's other fields (a JSON object
    as ``results.unstamped_json`` writes it, with a unique ``attempt`` id),
    the command, the log (None: the command writes to our stdout/stderr) and
    the outcomes that make it run nothing (``skip``)."""

    def __init__(
        self,
        record: str | os.PathLike,
        fields: str,
        command: list,
        *,
        log: str | None = None,
        skip: tuple = (),
    ) -> None:
        if not fields.startswith("{\n") or not command:
            raise ValueError("an attempt needs record fields in JSON and a command")
        self.record = os.fspath(record)
        self.fields = fields
        self.command = [str(word) for word in command]
        self.log = log
        self.skip = tuple(skip)
        self.started_at = ""
        self._began = 0.0
        self._log_fd: int | None = None

    # --- the steps -------------------------------------------------------------

    def begin(self) -> bool:
        """Under the lock: False if the shard is already done, else start the
        log afresh and write the start record. Raises OSError, with the file
        it names, when the log cannot be opened (a FIFO, a symbolic link...)
        or the record written: nothing has run then."""
        if self.skip and already_done(self.record, self.fields, self.skip):
            return False
        if self.log:
            # NOTE: emptied only now: an agent refused the lock must not wipe
            # the log of the one that holds it.
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
            self._log_fd = system.open_file(self.log, flags)
        self.started_at, self._began = system.utc_now(), time.monotonic()
        try:
            self._write("running", None, None, "", None, None, durable=False)
        except OSError:
            self._close_log()
            raise
        return True

    def _close_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def start(
        self, *, env: dict | None = None, cwd: str | None = None, new_session: bool = True
    ) -> system.Child | int:
        """Start the command (see ``system.start``): its Child, or the
        shell's return code (127 or 126) when it could not start, the reason
        written where its output goes."""
        fd = self._log_fd
        try:
            return system.start(self.command, stdout=fd, env=env, cwd=cwd, new_session=new_session)
        except OSError as error:
            code, reason = system.not_started(self.command[0], error)
            line = "lokt-tasks: %s: %s\n" % (self.command[0], reason)
            os.write(2 if fd is None else fd, line.encode("utf-8", "replace"))
            return code
        finally:
            self._close_log()

    def wait(
        self, child: system.Child | int, *, stopped, abandoned=None, grace: float = STOP_GRACE
    ) -> tuple | None:
        """Wait for the command :meth:`start` gave (see :func:`supervise`),
        then for the rest of its process group: what the command started and
        left behind (a wrapper's test runner, a server) gets SIGTERM, then
        SIGKILL after ``grace``, so that nothing of the shard runs on once its
        lock is released. None when abandoned (the group is stopped then)."""
        if isinstance(child, int):
            return child, None
        ended = supervise(child, stopped=stopped, abandoned=abandoned, grace=grace)
        if ended is not None and system.group_alive(child.pid):
            system.stop_groups([child.pid], grace)
        return ended

    def finish(self, returncode: int | None, stopped_by: int | None) -> bool:
        """Write the final record, durably: the command's return code (-N:
        killed by signal N; None: it never started) and the stop signal that
        came while it ran, or None. False, writing nothing, when the record
        is no longer this attempt's (another agent took the shard over, as it
        may once our lock was lost). Raises OSError."""
        self._close_log()
        if not self._record_is_ours():
            return False
        code = returncode if returncode is not None and returncode >= 0 else None
        signal = (
            system.signal_name(-returncode) if returncode is not None and returncode < 0 else None
        )
        if stopped_by:
            outcome, message = "interrupted", "stopped by " + system.signal_name(stopped_by)
        else:
            outcome, message = ("passed" if returncode == 0 else "failed"), ""
        duration = round(time.monotonic() - self._began, 3)
        self._write(outcome, code, signal, message, system.utc_now(), duration)
        return True

    def _record_is_ours(self) -> bool:
        """Whether the record file still holds this attempt's id (a substring
        check: json costs the attempt process more than the rest of a shard)."""
        mark = '"attempt": "'
        start = self.fields.find(mark) + len(mark)
        attempt_id = self.fields[start : self.fields.find('"', start)]
        try:
            text = system.read_file(self.record)
        except OSError:
            return False
        return ('"attempt": "%s"' % attempt_id).encode("ascii") in text

    # --- the record ---------------------------------------------------------------

    def _write(self, outcome, exit_code, signal, message, ended_at, duration, durable=True):
        # NOTE: the start record is not fsynced (it costs more than the rest of
        # a shard's bookkeeping): after a machine crash it can only be missing
        # or empty, which verify reports as missing or corrupt, never passed.
        stamps = (outcome, exit_code, signal, message, self.started_at, ended_at, duration)
        text = record_text(dict(zip(STAMPED_FIELDS, stamps)), self.fields)
        system.write_atomically(self.record, text.encode("ascii"), durable=durable)

    def argv(self, agent_pid: int, *, lock: str | None = None, grace: float = STOP_GRACE) -> list:
        """The command line that runs this attempt in a process of its own
        inside ``lokt guard``, watching the agent ``agent_pid`` and the lock
        file ``lock`` (see :class:`Watch`)."""
        argv = system.bootstrap("attempt") + [self.record, self.fields, "--agent", str(agent_pid)]
        if lock:
            argv += ["--lock", lock]
        if grace != STOP_GRACE:
            argv += ["--grace", repr(grace)]
        if self.log:
            argv += ["--log", self.log]
        if self.skip:
            argv += ["--skip", ",".join(self.skip)]
        return argv + ["--", *self.command]

    def own_record(self) -> dict | None:
        """This attempt's record as last written (start or final), or None."""
        import json

        try:
            record = json.loads(system.read_file(self.record))
            mine = json.loads(self.fields)["attempt"]
        except (OSError, ValueError, KeyError):
            return None
        return record if isinstance(record, dict) and record.get("attempt") == mine else None


def record_text(stamps: dict, fields: str) -> str:
    """A record file's text: ``stamps`` as lines in front of ``fields`` (a
    JSON object, two-space indent), ASCII, with a final newline."""
    lines = "".join('  "%s": %s,\n' % (name, _json_value(value)) for name, value in stamps.items())
    return "{\n" + lines + fields[2:] + "\n"


def _json_value(value: object) -> str:
    """A stamp in JSON: null, a number, or one of our own plain ASCII words."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"%s"' % value
    return repr(value)


def already_done(record_path: str, fields: str, skip: tuple) -> bool:
    """True when the record holds one of the ``skip`` outcomes, written by
    another attempt under the same plan (version and fingerprint).

    A record that cannot be read is not done. The check of its fields is
    lighter than ``results.read_record``'s (the fields of ours, with the same
    JSON types, or null where a record may leave them empty); a record that
    passes here but not there can only be hand-made, and ``verify`` still
    calls it corrupt, never passed.
    """
    try:
        data = system.read_file(record_path)
    except OSError:
        return False
    import json  # only when there is a record to read

    try:
        existing, ours = json.loads(data), json.loads(fields)
    except ValueError:
        return False
    if not isinstance(existing, dict):
        return False
    existing.setdefault("attempt", "")  # records from before attempts were kept
    ours.update(outcome="running", message="", started_at="")
    for name, value in ours.items():
        theirs = existing.get(name)
        if theirs is None and name in OPTIONAL_FIELDS:
            continue
        if value is not None and type(theirs) is not type(value):
            return False
    return (
        existing.get("version") == ours.get("version")
        and existing.get("fingerprint") == ours.get("fingerprint")
        and existing["outcome"] in skip
        and existing["attempt"] != ours.get("attempt")
    )


def supervise(
    child: system.Child, *, stopped, abandoned=None, grace: float = STOP_GRACE
) -> tuple | None:
    """Wait for ``child`` to end: ``(returncode, stop signal or None)``, or
    None when ``abandoned()`` said so (the child is stopped then).

    ``stopped()`` returns the number of a stop signal asked for, or None: it
    is forwarded once to the child itself (which passes it on to its own
    children, as ``lokt guard`` does); after ``grace`` seconds the child's
    whole process group is killed.
    """
    forwarded = kill_at = None
    while child.wait(POLL_INTERVAL) is None:
        signum = stopped()
        if forwarded is None and signum:
            forwarded, kill_at = signum, time.monotonic() + grace
            child.send(signum)
        if kill_at is not None and time.monotonic() >= kill_at:
            child.kill_group()
            kill_at = None
        if abandoned is not None and abandoned():
            stop_orphaned(child, grace)
            return None
    # NOTE: a stop that came while the child ended counts: a Ctrl-C at the
    # terminal can reach both at once.
    return child.returncode, forwarded or stopped()


def stop_orphaned(child: system.Child, grace: float) -> None:
    """End the command of an attempt that is abandoned (its agent died, or
    its lock was lost): SIGTERM to its whole process group, then SIGKILL
    after ``grace`` seconds, and reap it."""
    system.stop_groups([child.pid], grace)
    child.wait()


# --- The attempt as a process of its own, inside ``lokt guard`` ------------------


class Watch:
    """Whether an attempt running inside ``lokt guard`` is abandoned: its
    agent died (pid gone, a zombie, or reused: another start time), the
    ``lokt guard`` that runs it died (we were handed to another parent), or
    the lock is no longer that guard's (``lock``: its lock file, which lokt
    writes with ``"pid": N,`` on a line of its own)."""

    def __init__(self, agent_pid: int, lock: str | None) -> None:
        self.agent_pid = agent_pid
        self.agent_start = system.process_start_time(agent_pid)
        self.guard_pid = os.getppid()
        self.lock = lock

    def agent_gone(self) -> bool:
        if system.process_gone(self.agent_pid):
            return True
        now = system.process_start_time(self.agent_pid)
        return self.agent_start is not None and now != self.agent_start

    def lock_lost(self) -> bool:
        if self.lock is None:
            return False
        try:
            text = system.read_file(self.lock)
        except OSError:
            return True
        return (b'"pid": %d,' % self.guard_pid) not in text

    def abandoned(self) -> bool:
        return self.agent_gone() or os.getppid() != self.guard_pid or self.lock_lost()


def main(argv: list) -> int:
    """Run one attempt as ``lokt guard``'s command (see the module docstring).

    The command lives only as long as the agent that asked for it and the
    lock that covers it. Killed outright (a CI timeout, kill -9), the agent
    leaves ``lokt guard`` (in a session of its own) running; a guard killed
    alone, or a lock taken over (the guard was stopped past its TTL, or
    another agent of the same name re-entered it, as lokt allows one owner),
    leaves the command unlocked. Either way a command left running would
    race the rerun of its shard: the attempt stops its whole process group
    and writes no final record (the start record stays, and ``verify`` calls
    the shard crashed, as it is), or runs nothing at all.
    """
    try:
        separator = argv.index("--")
    except ValueError:
        separator = len(argv)
    positional, options, words = [], {}, iter(argv[:separator])
    for word in words:
        if word in ("--agent", "--log", "--skip", "--lock", "--grace"):
            options[word] = next(words, "")
        else:
            positional.append(word)
    command = argv[separator + 1 :]
    agent_pid = options.get("--agent", "")
    if (
        len(positional) != 2
        or not command
        or not agent_pid.isdigit()
        or not positional[1].startswith("{\n")
    ):
        print(USAGE_LINE, file=sys.stderr)
        return USAGE
    skip = tuple(options["--skip"].split(",")) if options.get("--skip") else ()
    attempt = Attempt(
        positional[0], positional[1], command, log=options.get("--log") or None, skip=skip
    )
    grace = float(options.get("--grace") or STOP_GRACE)
    watch = Watch(int(agent_pid), options.get("--lock") or None)
    if watch.agent_gone():
        return AGENT_GONE
    if watch.lock_lost():
        return LOCK_LOST

    received: list = []
    previous = system.on_signals(
        system.STOP_SIGNALS, lambda number, _frame: received.append(number)
    )
    try:
        if not attempt.begin():
            return ALREADY_DONE
        # NOTE: the command leads a process group of its own, in lokt guard's
        # session, so that the whole of it can be stopped without us.
        child = attempt.start(new_session=False)
        ended = attempt.wait(
            child,
            stopped=lambda: received[0] if received else None,
            abandoned=watch.abandoned,
            grace=grace,
        )
        if ended is None:
            return LOCK_LOST if watch.lock_lost() else AGENT_GONE
        if not attempt.finish(*ended):
            return LOCK_LOST
    except OSError as error:  # from begin or finish: the log or the record
        where, reason = error.filename or attempt.record, error.strerror or error
        print("lokt-tasks: cannot write %s: %s" % (where, reason), file=sys.stderr)
        return CANNOT_WRITE
    finally:
        # NOTE: once stopped, more signals must not cut our exit short.
        system.restore_signals(previous, ignore=bool(received))
    returncode = ended[0]
    return 128 - returncode if returncode < 0 else returncode
