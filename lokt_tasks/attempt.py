"""One attempt at a shard, under its lock: ``begin`` (nothing to do, or the
start record), ``start``, ``wait``, and ``finish`` (the final record,
durably, before the lock is released). The start record proves that the
command started, which ``lokt guard``'s exit code cannot (2 is both "held"
and a command's own 2); an attempt abandoned (its agent died, its lock was
lost) stops its command and writes no final record: ``verify`` calls it
crashed. The lokt engine has ``lokt guard`` run :func:`main`::

    RECORD FIELDS --agent PID [--log PATH] [--skip OUTCOMES] [--lock PATH]
           [--grace SECONDS] [--timeout SECONDS --timeout-text TEXT] [--stderr FD]
           [--report PATH [--retries N --template JSON] [--flaky fail]] -- CMD...

which exits as a shell would: the command's code, or 128 + N for signal N.
An attempt with leases (a slot, named resources: ``leases.py``) takes them
once it holds the shard's lock and before its start record (meanwhile its
record says "waiting"), and holds them through its retries; the lokt engine
then runs ``leases.main``, which holds them and runs :func:`main`.
Started once per shard, it imports only what Python loads at start-up
(``json`` only to read a record back), and writes records without a JSON
encoder: the stamps in front of the rest (``results.unstamped_json``).

A command that writes a JUnit report (``{junit}``) has it tied to the
attempt: the attempt removes the reports an earlier one left before its
command starts, and its final record lists the SHA-256 digest of the report
each run left (``reports``), so that a reader takes only those. After a
failing run, ``retries`` runs the failing tests again (a command built from
the task's :data:`template <fill_template>` with them as items), each with a
report of its own (:func:`retry_report`), still under the lock. The outcome
is judged from the last run's exit code and the tests (:meth:`Attempt.judge`):
a report that holds a failing test is a failure whatever the exit code, and
a test that passed on a retry is flaky (a failure when ``flaky`` is "fail").
Reports are parsed (through ``junit``, standard library only) only when
that can change the outcome: after a failure with retries left, or when the
bytes hold a ``<failure`` or ``<error`` tag.
"""

from __future__ import annotations

import os
import sys
import time

from . import system

#: Seconds a command gets after a stop (or its agent's death) before SIGKILL.
STOP_GRACE = 10.0
#: Seconds a command past its timeout gets between SIGTERM and SIGKILL, both to its
#: whole process group. NOTE: far shorter than STOP_GRACE, because a command that
#: runs past its limit is most likely hung, not finishing: it gets a moment to end
#: cleanly on SIGTERM (a test runner flushing its output), and the shard is still
#: gone, recorded and its lock released within 2 s of the limit, as promised.
TIMEOUT_GRACE = 1.0
#: The line a timed-out command's output ends with (its log, else our stderr).
TIMEOUT_NOTE = (
    "exceeded timeout %s: sent SIGTERM to the command's process group,"
    " and SIGKILL %gs later to what was left"
)
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
    "retries",
    "reports",
    "slot",
    "waited",
)
#: In a run template and a shard's command, where the command's JUnit report goes.
JUNIT_PLACEHOLDER = "{junit}"
#: Left in a shard's argv and env for the attempt, which knows its slot only once it holds one.
SLOT_PLACEHOLDER = "{slot}"
#: Record fields that may hold null (the others may not).
OPTIONAL_FIELDS = ("ended_at", "duration", "exit_code", "signal", "log", "slot", "waited")

#: The message of an attempt's "waiting" record until a lease it wants is held by
#: another, and then, with what it waits for ("a slot", "resource 'db'") after it.
TAKING_LEASES = "taking its leases"
WAITING_FOR = "waiting for "

USAGE_LINE = (
    "usage: attempt RECORD FIELDS --agent PID [--log PATH] [--skip OUTCOMES] [--lock PATH]"
    " [--grace SECONDS] [--timeout SECONDS --timeout-text TEXT] [--stderr FD]"
    " [--report PATH [--retries N --template JSON] [--flaky fail]] -- CMD..."
)
#: The options of :func:`main` that take a value.
OPTIONS = (
    "--agent",
    "--log",
    "--skip",
    "--lock",
    "--grace",
    "--timeout",
    "--timeout-text",
    "--stderr",
    "--report",
    "--retries",
    "--template",
    "--flaky",
)


class Attempt:
    """One attempt: its record file, the record's other fields (JSON, with a
    unique ``attempt`` id), the command, the log (None: our stdout), ``skip``;
    ``timeout``: the seconds the shard may run, retries included (None: no
    limit, counted from the start record: waiting for leases is not
    running), which ``timeout_text`` names in the record's message ("15m");
    where the command's stderr goes without a log (``stderr``, a descriptor;
    None: ours); ``report``: where the command writes its JUnit report (None:
    it writes none); ``retries`` of its failing tests, with commands from
    ``template`` (JSON, see :func:`fill_template`); ``flaky``: "fail" to fail
    the shard for a test that passed only on a retry (``config.FLAKY``);
    its ``leases`` (a ``leases.Leases``, or None)."""

    def __init__(
        self,
        record: str | os.PathLike,
        fields: str,
        command: list,
        *,
        log: str | None = None,
        skip: tuple = (),
        timeout: float | None = None,
        timeout_text: str = "",
        stderr: int | None = None,
        report: str | os.PathLike | None = None,
        retries: int = 0,
        template: str = "",
        flaky: str = "pass",
        leases=None,
    ) -> None:
        if not fields.startswith("{\n") or not command:
            raise ValueError("an attempt needs record fields in JSON and a command")
        if retries < 0 or (retries and not (report and template)):
            raise ValueError("retries need a report and a command template")
        self.record = os.fspath(record)
        self.fields = fields
        self.command = [str(word) for word in command]
        self.log = log
        self.skip = tuple(skip)
        self.stderr = stderr
        self.timeout = timeout
        self.timeout_text = timeout_text or ("" if timeout is None else "%gs" % timeout)
        self.report = os.fspath(report) if report else None
        self.retries, self.template, self.flaky = retries, template, flaky
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
        #: Runs started (the command, then retries), and the command of the next one.
        self.runs, self._next = 0, self.command
        #: Per run that ended: its report's digest (None: it left none) and its
        #: test cases (None: not parsed); why the failing tests were not retried.
        self.reports: list = []
        self._cases: list = []
        self._not_retried = self._why = ""
        self.cwd = ""  # where the commands run: set by start

    def begin(self) -> bool:
        """False if the shard is already done, else remove the reports an earlier
        attempt left, empty the log and write the start record (with leases:
        :meth:`take_leases` does); raises OSError naming the file (nothing has
        run then)."""
        if self.skip and already_done(self.record, self.fields, self.skip):
            return False
        if self.report:
            for run in range(self.retries + 1):
                try:
                    os.unlink(retry_report(self.report, run))
                except FileNotFoundError:
                    pass
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
        """Give the leases back (idempotent): the shard's last run has ended."""
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

    @property
    def retried(self) -> int:
        return max(self.runs - 1, 0)

    def _close_log(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def start(
        self, *, env: dict | None = None, cwd: str | None = None, new_session: bool = True
    ) -> system.Child | int:
        """Start the command, or after :meth:`retry` the retry (``system.start``),
        with the slot filled in: its Child, or 127 or 126 when it could not
        start, the reason written where its output goes."""
        self.cwd = cwd or os.getcwd()
        fd, argv = self._log_fd, self._next
        if self.leases is not None:
            command, env = self.leases.fill(self.command, env)
            # NOTE: a retry's command has its slot already (see retry).
            argv = argv if self.runs else command
        if self.runs and self.report:
            env = self._retry_env(env)
        if self.runs and self.log:  # a retry: its output follows the command's
            fd = self._log_fd = system.open_file(self.log, os.O_WRONLY | os.O_APPEND)
        err = self.stderr if fd is None else None
        self.runs += 1
        try:
            if self.runs > 1:
                line = "lokt-tasks: retry %d of %d: %s\n" % (self.retried, self.retries, self._why)
                os.write(1 if fd is None else fd, line.encode("utf-8", "replace"))
            return system.start(
                argv, stdout=fd, stderr=err, env=env, cwd=cwd, new_session=new_session
            )
        except OSError as error:
            code, reason = system.not_started(error)
            self._tell("%s: %s" % (argv[0], reason))
            return code
        finally:
            self._close_log()

    def _retry_env(self, env: dict | None) -> dict | None:
        """``env`` (None: ours) for the retry about to start: a variable that
        names the command's report (``{junit}`` in ``env``) names the retry's."""
        source = os.environ if env is None else env
        report = self.report or ""
        if not any(report in value for value in source.values()):
            return env
        mine = retry_report(report, self.runs)
        return {name: value.replace(report, mine) for name, value in source.items()}

    def _tell(self, text: str) -> None:
        """A line of ours where the command's output goes: its log, else the
        command's stderr (``stderr``, else ours)."""
        line = ("lokt-tasks: %s\n" % text).encode("utf-8", "replace")
        if self._log_fd is not None or self.log is None:
            if self._log_fd is not None:
                os.write(self._log_fd, line)
            else:
                os.write(2 if self.stderr is None else self.stderr, line)
            return
        fd = system.open_file(self.log, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def wait(
        self, child: system.Child | int, *, stopped, abandoned=None, grace: float = STOP_GRACE
    ) -> tuple | None:
        """:func:`supervise` what :meth:`start` gave, until the timeout if
        any (counted from the start record), then stop what it left behind in
        its group: nothing of the shard outlives its lock, or its leases (which
        go back with the final record, or here once abandoned). A lost lease
        abandons it as a lost lock does."""
        if isinstance(child, int):
            return child, None, False
        if self.leases is not None:
            watched, keep = abandoned, self.leases.keep
            abandoned = lambda: 0.0 if not keep() else watched() if watched else None  # noqa: E731
        deadline = None if self.timeout is None else self._began + self.timeout
        ended = supervise(
            child, stopped=stopped, abandoned=abandoned, grace=grace, deadline=deadline
        )
        if ended is not None and system.group_alive(child.pid):
            system.stop_groups([child.pid], grace)
        if ended is None:
            self.release_leases()
        if ended is not None and ended[2]:
            try:
                self._tell(TIMEOUT_NOTE % (self.timeout_text, TIMEOUT_GRACE))
            except OSError:
                pass  # NOTE: the record, not this line, tells the outcome
        return ended

    def retry(self, ended: tuple) -> bool:
        """After a run ended as ``ended`` (:meth:`wait`'s tuple): whether to run
        its failing tests again, and if so make that the command :meth:`start`
        runs next. Not after a stop or the timeout, nor past ``retries``, nor
        when the report names no failing test or one that cannot be given back
        to the command."""
        returncode, stopped_by, timed_out = ended
        self._note(returncode)
        if stopped_by or timed_out or self.retried >= self.retries or self._cases[-1] is None:
            return False
        failing = self._failing()
        if not failing:
            return False
        from . import junit

        ids = self._test_ids()
        try:
            items = junit.runner_items(failing, ids, whole=None in _template(self.template))
        except ValueError as error:
            self._not_retried = "not retried: %s" % error
            return False
        slot = None if self.leases is None else self.leases.slot
        command = fill_template(_template(self.template), items, self.cwd, slot=slot)
        report = retry_report(self.report or "", self.runs)
        self._next = [arg.replace(JUNIT_PLACEHOLDER, report) for arg in command]
        self._why = "%s, as %s" % (_count(len(failing), "failing test"), _count(len(items), "item"))
        return True

    def finish(
        self, returncode: int | None, stopped_by: int | None, timed_out: bool = False
    ) -> bool:
        """Write the final record from the last run's return code (-N: signal
        N; None: never started), the stop signal that came, whether the shard
        was stopped at its timeout (a stop asked for comes first) and the tests
        its reports hold (:meth:`judge`); raises OSError. False, writing
        nothing, if another agent took it over (our lock was lost). The leases
        go back first: the shard's commands have ended."""
        self._close_log()
        self.release_leases()
        if not self._record_is_ours():
            return False
        code, signal = returncode, None
        if returncode is not None and returncode < 0:
            code, signal = None, system.signal_name(-returncode)
        if returncode is not None:
            self._note(returncode)
        if stopped_by:
            outcome, message = "interrupted", "stopped by " + system.signal_name(stopped_by)
        elif timed_out:
            outcome, message = "timed-out", "exceeded timeout " + self.timeout_text
        else:
            outcome, message = self.judge(returncode)
        duration = round(time.monotonic() - self._began, 3)
        self._write(outcome, code, signal, message, system.utc_now(), duration)
        return True

    def judge(self, returncode: int | None) -> tuple:
        """``(outcome, message)`` of runs that were not stopped: "passed" only
        when the last run exited 0 and no test of the reports failed last;
        a test that passed on a retry after failing is flaky, which is a pass
        unless ``flaky`` is "fail"."""
        tests = self._tests()
        failing = [test for test in tests if test.failing]
        flaky = [test for test in tests if test.flaky]
        if returncode != 0:  # None: it never started
            if failing and self.retried:
                return "failed", "%s still failing after %s" % (
                    _count(len(failing), "test"),
                    _count(self.retried, "retry", "retries"),
                )
            return "failed", self._not_retried
        if failing:
            return "failed", "%s in its report" % _count(len(failing), "failing test")
        if flaky:
            message = "%s passed on a retry" % _count(len(flaky), "flaky test")
            if self.flaky == "fail":
                return "failed", message + " (flaky = fail)"
            return "passed", message
        return "passed", ""

    def _note(self, returncode: int) -> None:
        """The digest of the report the last run left, and its tests when they
        can change the outcome (see the module's docstring)."""
        run = len(self.reports)
        if not self.report or run >= self.runs:
            return
        path = retry_report(self.report, run)
        try:
            data = system.read_file(path)
        except OSError:  # none, or not a regular file: no report of this run
            self.reports.append(None)
            self._cases.append(None)
            return
        self.reports.append(digest(data))
        cases = None
        if run or (returncode != 0 and self.retries) or b"<failure" in data or b"<error" in data:
            from . import junit

            try:
                cases = junit.parse_report(data, path)
            except junit.ReportError:
                cases = None
        self._cases.append(cases)

    def _test_ids(self):
        from . import junit

        # NOTE: the command's path arguments help name tests whose runner's
        # root lies below ours (junit.TestIds); node ids count by their file.
        known = [arg.partition("::")[0] for arg in self.command if not os.path.isabs(arg)]
        return junit.TestIds(self.cwd or os.getcwd(), known)

    def _tests(self) -> list:
        """Every test of the reports parsed, folded over the runs (junit.fold)."""
        runs = [cases for cases in self._cases if cases is not None]
        if not runs:
            return []
        from . import junit

        return list(junit.fold(runs, self._test_ids()).values())

    def _failing(self) -> list:
        """The last case of each test that failed the last time it ran."""
        return [test.case for test in self._tests() if test.failing]

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
        stamps = (outcome, exit_code, signal, message, self.started_at, ended_at, duration)
        slot = self.leases.slot if self.leases is not None else None
        stamps += (self.retried, list(self.reports), slot, self.waited)
        text = record_text(dict(zip(STAMPED_FIELDS, stamps)), self.fields)
        system.write_atomically(self.record, text.encode("ascii"), durable=durable)

    def argv(
        self,
        agent_pid: int,
        *,
        lock: str | None = None,
        grace: float = STOP_GRACE,
        stderr: int | None = None,
    ) -> list:
        """The command line that runs this attempt inside ``lokt guard``,
        watching the agent ``agent_pid`` and the lock file ``lock``; ``stderr``:
        a descriptor the attempt inherits, for the command's stderr."""
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
        if self.timeout is not None:
            argv += ["--timeout", repr(self.timeout), "--timeout-text", self.timeout_text]
        if stderr is not None:
            argv += ["--stderr", str(stderr)]
        if self.report:
            argv += ["--report", self.report]
        if self.retries:
            argv += ["--retries", str(self.retries), "--template", self.template]
        if self.flaky != "pass":
            argv += ["--flaky", self.flaky]
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
    """A stamp in JSON, ASCII only, as ``json.dumps`` writes it: null, a number,
    a string, or a list of them on one line."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[%s]" % ", ".join(map(_json_value, value))
    if not isinstance(value, str):
        return repr(value)
    escaped = []
    for char in value:
        if char in '"\\':
            escaped.append("\\" + char)
        elif " " <= char <= "~":
            escaped.append(char)
        elif char in _SHORT_ESCAPES:
            escaped.append(_SHORT_ESCAPES[char])
        else:
            code = ord(char)
            if code > 0xFFFF:  # a surrogate pair, as JSON spells characters past the BMP
                code -= 0x10000
                escaped.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))
            else:
                escaped.append("\\u%04x" % code)
    return '"%s"' % "".join(escaped)


#: The characters JSON escapes in two characters rather than six.
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _count(count: int, noun: str, plural: str = "") -> str:
    """``1 test``, ``2 tests``."""
    return "%d %s" % (count, noun if count == 1 else plural or noun + "s")


def digest(data: bytes) -> str:
    """The SHA-256 hex digest by which a record names the report ``data``."""
    import hashlib  # only when a report was left

    return hashlib.sha256(data).hexdigest()


def retry_report(report: str, run: int) -> str:
    """Where run ``run`` of an attempt writes its report: ``report`` itself for
    the command (run 0), ``shard-1.retry-2.junit.xml`` for its retry 2."""
    if not run:
        return report
    suffix = ".junit.xml" if report.endswith(".junit.xml") else ""
    return "%s.retry-%d%s" % (report[: len(report) - len(suffix)], run, suffix)


def _template(text: str) -> list:
    import json  # only to retry

    return json.loads(text) if text else []


def fill_template(template: list, items, root: str, *, slot: int | None = None) -> list:
    """The argv of a command template with ``items`` in their places.

    A template is JSON: a list of arguments, each a string (as it is), null
    (``{items}``: one argument per item; an item that starts with ``-`` and
    names a path below ``root`` goes as ``./<item>``, so that it is not read
    as an option), a list of parts, strings and ``[SEP]`` (``{items:SEP}``:
    the items joined by SEP), joined into one argument, or ``{"slot": PARTS}``
    for an argument with ``{slot}``: PARTS as in a list, whose strings are a
    ``str.format`` template (fields ``{slot}`` and ``{junit}``, other braces
    doubled). Such an argument is that template, the items' braces doubled,
    or, with ``slot``, the text with the slot number filled in.
    """
    argv: list = []
    for arg in template:
        if arg is None:
            argv.extend(
                "./" + item
                if item.startswith("-") and os.path.lexists(os.path.join(root, item))
                else item
                for item in items
            )
        elif isinstance(arg, str):
            argv.append(arg)
        elif isinstance(arg, dict):
            text = "".join(
                part if isinstance(part, str) else escape_braces(part[0].join(items))
                for part in arg["slot"]
            )
            if slot is not None:
                text = text.format(slot=slot, junit=JUNIT_PLACEHOLDER)
            argv.append(text)
        else:
            argv.append(
                "".join(part if isinstance(part, str) else part[0].join(items) for part in arg)
            )
    return argv


def escape_braces(text: str) -> str:
    """``text`` as literal text inside a ``str.format`` template."""
    return text.replace("{", "{{").replace("}", "}}")


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
    child: system.Child,
    *,
    stopped,
    abandoned=None,
    grace: float = STOP_GRACE,
    deadline: float | None = None,
) -> tuple | None:
    """Wait for ``child``: ``(returncode, stop signal or None, timed out)``, or
    None once ``abandoned()`` returns the seconds its group gets between SIGTERM
    and SIGKILL (0 for a lost lock: another agent may run the shard already).
    A ``stopped()`` signal goes once to the child, as ``lokt guard`` does;
    SIGKILL to its group ``grace`` s later. Once ``time.monotonic()`` passes
    ``deadline``, SIGTERM goes to the child's whole group, and SIGKILL to what
    is left of it TIMEOUT_GRACE s later, whether the child itself ended or not."""
    forwarded = kill_at = None
    timed_out = False
    while child.wait(POLL_INTERVAL) is None:
        now = time.monotonic()
        signum = stopped()
        if forwarded is None and signum:
            forwarded, kill_at = signum, now + grace
            child.send(signum)
        if deadline is not None and now >= deadline and not timed_out:
            timed_out, soon = True, now + TIMEOUT_GRACE
            kill_at = soon if kill_at is None else min(kill_at, soon)
            child.kill_group(system.SIGTERM)
        if kill_at is not None and now >= kill_at:
            child.kill_group()
            kill_at = None
        given = abandoned() if abandoned is not None else None
        if given is not None:
            system.stop_groups([child.pid], given)
            child.wait()
            return None
    if timed_out and kill_at is not None:
        # NOTE: a wrapper (sh -c) ends at SIGTERM while a child of its group
        # may ignore it: that child too is gone by the same SIGKILL time.
        while (alive := system.group_alive(child.pid)) and time.monotonic() < kill_at:
            time.sleep(POLL_INTERVAL)
        if alive:
            child.kill_group()
    # NOTE: a stop that came while the child ended counts: a Ctrl-C at the
    # terminal can reach both at once.
    return child.returncode, forwarded or stopped(), timed_out


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
        if word in OPTIONS:
            options[word] = next(words, "")
        else:
            positional.append(word)
    command = argv[separator + 1 :]
    agent_pid = options.get("--agent", "")
    grace = options.get("--grace") or repr(STOP_GRACE)
    timeout = options.get("--timeout")
    stderr = options.get("--stderr", "0")
    retries = options.get("--retries") or "0"
    usable = len(positional) == 2 and command and agent_pid.isdigit() and stderr.isdigit()
    usable = usable and retries.isdigit() and _is_seconds(grace)
    usable = usable and (timeout is None or _is_seconds(timeout))
    if not usable or not positional[1].startswith("{\n"):
        print(USAGE_LINE, file=sys.stderr)
        return USAGE
    skip = tuple(options["--skip"].split(",")) if options.get("--skip") else ()
    record, fields = positional
    try:
        attempt = Attempt(
            record,
            fields,
            command,
            log=options.get("--log") or None,
            skip=skip,
            timeout=None if timeout is None else float(timeout),
            timeout_text=options.get("--timeout-text", ""),
            stderr=_inherited(stderr),
            report=options.get("--report") or None,
            retries=int(retries),
            template=options.get("--template", ""),
            flaky=options.get("--flaky") or "pass",
            leases=leases,
        )
    except ValueError:
        print(USAGE_LINE, file=sys.stderr)
        return USAGE
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
        def run() -> tuple | None:
            return attempt.wait(
                attempt.start(new_session=False),
                stopped=stopped,
                abandoned=watch.abandoned,
                grace=float(grace),
            )

        ended = run()
        while ended is not None and watch.abandoned() is None and attempt.retry(ended):
            ended = run()
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


def _inherited(fd: str) -> int | None:
    """The descriptor ``fd`` (from ``--stderr``) if it is open, kept from the
    command itself (which gets it as its stderr); None for 0 or a closed one."""
    number = int(fd)
    try:
        if number > 2:
            os.set_inheritable(number, False)
            return number
    except OSError:
        pass
    return None


def _is_seconds(text: str) -> bool:
    try:
        return 0 <= float(text) < float("inf")
    except ValueError:
        return False
