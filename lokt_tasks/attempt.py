"""One attempt at a shard, under its lock: ``begin`` (nothing to do, or the
start record), ``start``, ``wait``, and ``finish`` (the final record,
durably, before the lock is released). The start record proves that the
command started, which ``lokt guard``'s exit code cannot (2 is both "held"
and a command's own 2); an attempt abandoned (its agent died, its lock was
lost) stops its command and writes no final record: ``verify`` calls it
crashed. The lokt engine has ``lokt guard`` run :func:`main`::

    RECORD FIELDS --agent PID [--log PATH] [--skip OUTCOMES]
           [--lock PATH] [--grace SECONDS] -- CMD...

which exits as a shell would: the command's code, or 128 + N for signal N.
An attempt with leases (a slot, named resources: ``leases.py``) takes them
once it holds the shard's lock and before its start record (meanwhile its
record says "waiting"); the lokt engine then runs ``leases.main``, which
holds them and runs :func:`main`.
Started once per shard, it imports only what Python loads at start-up
(``json`` only to read a record back), and writes records without a JSON
encoder: the stamps in front of the rest (``results.unstamped_json``).
"""

from __future__ import annotations

import os
import sys
import time

from . import system

#: Seconds a command gets after a stop (or its agent's death) before SIGKILL.
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
STAMPED_FIELDS = (
    "outcome",
    "exit_code",
    "signal",
    "message",
    "started_at",
    "ended_at",
    "duration",
    "slot",
    "waited",
)
#: Record fields that may hold null (the others may not).
OPTIONAL_FIELDS = ("ended_at", "duration", "exit_code", "signal", "log", "slot", "waited")

#: The message of an attempt's "waiting" record until a lease it wants is held by
#: another, and then, with what it waits for ("a slot", "resource 'db'") after it.
TAKING_LEASES = "taking its leases"
WAITING_FOR = "waiting for "

USAGE_LINE = (
    "usage: attempt RECORD FIELDS --agent PID [--log PATH] [--skip OUTCOMES]"
    " [--lock PATH] [--grace SECONDS] -- CMD..."
)


class Attempt:
    """One attempt: its record file, the record's other fields (JSON, with a
    unique ``attempt`` id), the command, the log (None: our stdout), ``skip``,
    and its ``leases`` (a ``leases.Leases``, or None)."""

    def __init__(
        self,
        record: str | os.PathLike,
        fields: str,
        command: list,
        *,
        log: str | None = None,
        skip: tuple = (),
        leases=None,
    ) -> None:
        if not fields.startswith("{\n") or not command:
            raise ValueError("an attempt needs record fields in JSON and a command")
        self.record = os.fspath(record)
        self.fields = fields
        self.command = [str(word) for word in command]
        self.log = log
        self.skip = tuple(skip)
        self.leases = leases
        #: Seconds spent taking the leases, once taken (None without leases), and
        #: how many times one was held by another meanwhile.
        self.waited: float | None = None
        self.waits = 0
        # NOTE: found by substring, not json (which the attempt process spares).
        mark = '"attempt": "'
        start = fields.find(mark) + len(mark)
        self.attempt_id = fields[start : fields.find('"', start)] if start >= len(mark) else ""
        self.started_at, self._began = "", 0.0  # set by begin
        self._log_fd: int | None = None

    def begin(self) -> bool:
        """False if the shard is already done, else empty the log and write the
        start record (with leases: :meth:`take_leases` does); raises OSError
        naming the file (nothing has run then)."""
        if self.skip and already_done(self.record, self.fields, self.skip):
            return False
        if self.leases is None:
            self._started()
        else:  # NOTE: at once: other agents tell our run by our record
            self.started_at, self._began = system.utc_now(), time.monotonic()
            self._write("waiting", None, None, TAKING_LEASES, None, None, durable=False)
        return True

    def take_leases(self, *, stopped, abandoned=None, on_wait=None, holder=None) -> bool:
        """Take the leases in lock order (``leases.Leases.take``), then empty
        the log and write the start record; while one is held by another, the
        record says "waiting" (and for what), and ``on_wait`` is told. False if
        a stop or ``abandoned()`` came first (no lease held); True at once
        without leases. Raises OSError naming the file."""
        if self.leases is None:
            return True
        began = time.monotonic()

        def waiting(what: str) -> None:
            self.waits += 1
            self._write("waiting", None, None, WAITING_FOR + what, None, None, durable=False)
            if on_wait is not None:
                on_wait(what)

        if not self.leases.take(holder, stopped=stopped, abandoned=abandoned, on_wait=waiting):
            return False
        self.waited = round(time.monotonic() - began, 3)
        try:
            self._started()
        except OSError:
            self.release_leases()
            raise
        return True

    def release_leases(self) -> None:
        """Give the leases back (idempotent): the shard's command has ended."""
        if self.leases is not None:
            self.leases.release()

    def _started(self) -> None:
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

    def _close_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def start(
        self, *, env: dict | None = None, cwd: str | None = None, new_session: bool = True
    ) -> system.Child | int:
        """Start the command (``system.start``): its Child, or 127 or 126 when
        it could not start, the reason written where its output goes."""
        fd, command = self._log_fd, self.command
        if self.leases is not None:
            command, env = self.leases.fill(command, env)
        try:
            return system.start(command, stdout=fd, env=env, cwd=cwd, new_session=new_session)
        except OSError as error:
            code, reason = system.not_started(error)
            line = "lokt-tasks: %s: %s\n" % (self.command[0], reason)
            os.write(2 if fd is None else fd, line.encode("utf-8", "replace"))
            return code
        finally:
            self._close_log()

    def wait(
        self, child: system.Child | int, *, stopped, abandoned=None, grace: float = STOP_GRACE
    ) -> tuple | None:
        """:func:`supervise` what :meth:`start` gave, then stop what it left
        behind in its group: nothing of the shard outlives its lock, or its
        leases, which go back then. A lost lease abandons it as a lost lock does."""
        if isinstance(child, int):
            self.release_leases()
            return child, None
        if self.leases is not None:
            watched, keep = abandoned, self.leases.keep
            abandoned = lambda: 0.0 if not keep() else watched() if watched else None  # noqa: E731
        ended = supervise(child, stopped=stopped, abandoned=abandoned, grace=grace)
        if ended is not None and system.group_alive(child.pid):
            system.stop_groups([child.pid], grace)
        self.release_leases()
        return ended

    def finish(self, returncode: int | None, stopped_by: int | None) -> bool:
        """Write the final record from the return code (-N: signal N; None:
        never started) and the stop signal that came; raises OSError. False,
        writing nothing, if another agent took it over (our lock was lost)."""
        self._close_log()
        self.release_leases()
        if not self._record_is_ours():
            return False
        code, signal = returncode, None
        if returncode is not None and returncode < 0:
            code, signal = None, system.signal_name(-returncode)
        if stopped_by:
            outcome, message = "interrupted", "stopped by " + system.signal_name(stopped_by)
        else:
            outcome, message = ("passed" if returncode == 0 else "failed"), ""
        duration = round(time.monotonic() - self._began, 3)
        self._write(outcome, code, signal, message, system.utc_now(), duration)
        return True

    def _record_is_ours(self) -> bool:
        """Whether the record still holds our attempt id (by substring: json is costly)."""
        try:
            mine = ('"attempt": "%s"' % self.attempt_id).encode("ascii")
            return mine in system.read_file(self.record)
        except OSError:
            return False

    def _write(self, outcome, exit_code, signal, message, ended_at, duration, durable=True):
        # NOTE: the start record is not fsynced (costly): after a crash it is
        # missing or empty, which verify reports as missing or corrupt.
        slot = self.leases.slot if self.leases is not None else None
        stamps = (outcome, exit_code, signal, message, self.started_at, ended_at, duration)
        stamps += (slot, self.waited)
        text = record_text(dict(zip(STAMPED_FIELDS, stamps)), self.fields)
        system.write_atomically(self.record, text.encode("ascii"), durable=durable)

    def argv(self, agent_pid: int, *, lock: str | None = None, grace: float = STOP_GRACE) -> list:
        """The command line that runs this attempt inside ``lokt guard``,
        watching the agent ``agent_pid`` and the lock file ``lock``."""
        head = system.bootstrap("attempt") if self.leases is None else self.leases.argv()
        argv = head + [self.record, self.fields, "--agent", str(agent_pid)]
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
        except (OSError, ValueError):
            return None
        mine = isinstance(record, dict) and record.get("attempt") == self.attempt_id
        return record if mine and self.attempt_id else None


def record_text(stamps: dict, fields: str) -> str:
    """A record's text: ``stamps`` as lines in front of ``fields`` (JSON, indent 2)."""
    lines = "".join('  "%s": %s,\n' % (name, _json_value(value)) for name, value in stamps.items())
    return "{\n" + lines + fields[2:] + "\n"


def _json_value(value: object) -> str:
    """A stamp in JSON: null, a number, or one of our own plain ASCII words."""
    if value is None:
        return "null"
    return '"%s"' % value if isinstance(value, str) else repr(value)


def already_done(record_path: str, fields: str, skip: tuple) -> bool:
    """Whether another attempt under the same plan left a ``skip`` outcome (a
    lighter check than ``results.read_record``'s, which still judges it)."""
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
    """Wait for ``child``: ``(returncode, stop signal or None)``, or None once
    ``abandoned()`` returns the seconds its group gets between SIGTERM and
    SIGKILL (0 for a lost lock: another agent may run the shard already).
    A ``stopped()`` signal goes once to the child, as ``lokt guard`` does;
    SIGKILL to its group ``grace`` s later."""
    forwarded = kill_at = None
    while child.wait(POLL_INTERVAL) is None:
        signum = stopped()
        if forwarded is None and signum:
            forwarded, kill_at = signum, time.monotonic() + grace
            child.send(signum)
        if kill_at is not None and time.monotonic() >= kill_at:
            child.kill_group()
            kill_at = None
        given = abandoned() if abandoned is not None else None
        if given is not None:
            system.stop_groups([child.pid], given)
            child.wait()
            return None
    # NOTE: a stop that came while the child ended counts: a Ctrl-C at the
    # terminal can reach both at once.
    return child.returncode, forwarded or stopped()


def names_holder(lock: str, pid: int) -> bool:
    """Whether the lock file ``lock`` still names ``pid`` as its holder (lokt
    and the embedded engine both write ``"pid": N,`` on a line of its own).
    A missing file does not; one that cannot be read now is no proof."""
    try:
        return b'"pid": %d,' % pid in system.read_file(lock)
    except FileNotFoundError:
        return False
    except OSError:
        return True


class Watch:
    """Whether an attempt inside ``lokt guard`` is abandoned: its agent died
    (or its pid was reused), its guard died (another parent), or the lock
    file no longer names the guard (lokt writes ``"pid": N,`` on a line)."""

    def __init__(self, agent_pid: int, lock: str | None, grace: float) -> None:
        self.agent_pid, self.agent_start = agent_pid, system.process_start_time(agent_pid)
        self.guard_pid, self.lock, self.grace = os.getppid(), lock, grace

    def agent_gone(self) -> bool:
        if system.process_gone(self.agent_pid):
            return True
        return self.agent_start not in (None, system.process_start_time(self.agent_pid))

    def lock_lost(self) -> bool:
        return self.lock is not None and not names_holder(self.lock, self.guard_pid)

    def abandoned(self) -> float | None:
        """None while wanted; else the grace its command gets (see supervise)."""
        if self.lock_lost():
            return 0.0
        if self.agent_gone() or os.getppid() != self.guard_pid:
            return self.grace
        return None


def main(argv: list, leases=None) -> int:
    """Run one attempt as ``lokt guard``'s command, only as long as its agent
    and its lock last (:class:`Watch`), or it would race the rerun of its shard;
    with ``leases`` (from ``leases.main``), taken first and held here."""
    separator = argv.index("--") if "--" in argv else len(argv)
    positional, options, words = [], {}, iter(argv[:separator])
    for word in words:
        if word in ("--agent", "--log", "--skip", "--lock", "--grace"):
            options[word] = next(words, "")
        else:
            positional.append(word)
    command = argv[separator + 1 :]
    agent_pid = options.get("--agent", "")
    grace = options.get("--grace") or repr(STOP_GRACE)
    usable = len(positional) == 2 and command and agent_pid.isdigit()
    if not usable or not positional[1].startswith("{\n") or not _is_seconds(grace):
        print(USAGE_LINE, file=sys.stderr)
        return USAGE
    skip = tuple(options["--skip"].split(",")) if options.get("--skip") else ()
    record, fields = positional
    log = options.get("--log") or None
    attempt = Attempt(record, fields, command, log=log, skip=skip, leases=leases)
    watch = Watch(int(agent_pid), options.get("--lock") or None, float(grace))
    if watch.agent_gone():
        return AGENT_GONE
    if watch.lock_lost():
        return LOCK_LOST

    received: list = []
    previous = system.on_signals(system.STOP_SIGNALS, lambda signum, _: received.append(signum))
    try:
        if not attempt.begin():
            return ALREADY_DONE
        stopped = lambda: received[0] if received else None  # noqa: E731
        if not attempt.take_leases(stopped=stopped, abandoned=watch.abandoned):
            if received:  # the "waiting" record becomes an interrupted one
                attempt.finish(None, received[0])
                return 128 + received[0]
            return LOCK_LOST if watch.lock_lost() else AGENT_GONE
        # NOTE: the command leads a process group of its own, in lokt guard's
        # session, so that the whole of it can be stopped without us.
        child = attempt.start(new_session=False)
        ended = attempt.wait(
            child,
            stopped=stopped,
            abandoned=watch.abandoned,
            grace=float(grace),
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
        attempt.release_leases()
        # NOTE: once stopped, more signals must not cut our exit short.
        system.restore_signals(previous, ignore=bool(received))
    returncode = ended[0]
    return 128 - returncode if returncode < 0 else returncode


def _is_seconds(text: str) -> bool:
    try:
        return 0 <= float(text) < float("inf")
    except ValueError:
        return False
