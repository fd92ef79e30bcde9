"""The lokt engine: ``lokt guard`` holds the lock and runs the attempt
(``Attempt.argv``), whose record says whether the command ran: lokt exits 2
both when held and when the command exits 2, and 255 for any signal.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Mapping, Optional

from . import lockfile, system
from .attempt import LOCK_LOST, WAITING_FOR, supervise
from .config import format_duration
from .engine import (
    DEFAULT_WAIT_TIMEOUT,
    STOP_GRACE,
    Engine,
    GuardRequest,
    GuardResult,
    Identity,
    effective_ttl,
    frozen_message,
    held_message,
    interrupted_before_start,
    ran,
)
from .errors import EngineError
from .lockfile import LockFileError
from .states import STARTED_OUTCOMES, GuardState, RecordOutcome


class LoktEngine(Engine):
    name = "lokt"

    def __init__(
        self, identity: Identity, root: Path, binary: str, *, grace: float = STOP_GRACE
    ) -> None:
        super().__init__(identity, root, grace=grace)
        self.binary = binary
        self._version: Optional[str] = None

    def describe(self) -> str:
        if self._version is None:
            command = [self.binary, "version"]
            try:
                output = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                output = ""
            lines = output.strip().splitlines()
            self._version = lines[0] if lines else "lokt (version unknown)"
        return f"{self._version} at {self.binary}"

    def guard_command(
        self, lock_name: str, ttl: float, wait: bool, timeout: Optional[float]
    ) -> List[str]:
        """``lokt guard`` with its flags before the name (where Go's flag parsing
        stops) and durations with units (lokt refuses bare numbers)."""
        command = [self.binary, "guard"]
        lifetime = effective_ttl(ttl)
        if lifetime > 0:
            command += ["--ttl", format_duration(lifetime)]
        if wait:
            command.append("--wait")
            if timeout is not None and timeout > 0:
                command += ["--timeout", format_duration(timeout)]
        return command + [lock_name, "--"]

    def _guard(self, request: GuardRequest) -> GuardResult:
        lock_name, attempt = request.lock_name, request.attempt
        refused = self._before_guard(request)
        if refused is not None:
            return refused
        path = str(lockfile.lock_path(self.root, lock_name))
        argv = self.guard_command(lock_name, request.ttl, request.wait, request.timeout)
        # NOTE: the attempt stops its command within two grace periods (the
        # command, then what it left behind); the guard is killed only after.
        patience = 2 * self.grace + 5
        # NOTE: lokt's own lines (held, frozen, its errors) are kept apart from
        # the command's output, to be told in our words or added to the log when
        # the command ran. Without a log, the command's stderr reaches ours
        # through a descriptor lokt hands on to the attempt untouched.
        with tempfile.TemporaryFile() as lokt_output:
            out = lokt_output.fileno() if attempt.log else None
            ours = None if attempt.log else os.dup(2)
            argv += attempt.argv(os.getpid(), lock=path, grace=self.grace, stderr=ours)
            try:
                guard = system.start(
                    argv,
                    stdout=out,
                    stderr=lokt_output.fileno(),
                    env=request.env,
                    cwd=request.cwd,
                    pass_fds=() if ours is None else (ours,),
                )
            except OSError as error:
                message = f"cannot run {self.binary}: {error.strerror or error}"
                return GuardResult(GuardState.ERROR, message=message)
            finally:
                if ours is not None:
                    os.close(ours)
            stopped = request.stop.asked
            if request.on_wait is not None and attempt.leases is not None:
                stopped = WaitWatch(attempt, request.on_wait, stopped)
            try:
                ended = supervise(guard, stopped=stopped, grace=patience)
            except BaseException:
                guard.kill_group()
                guard.wait()
                self._remove_leftover(lock_name, guard.pid)
                raise
            lokt_output.seek(0)
            lokt_message = lokt_output.read().decode("utf-8", "replace").strip()
        assert ended is not None  # never abandoned
        returncode, forwarded, _ = ended  # no deadline: the attempt inside keeps it
        if returncode < 0:
            # NOTE: lokt guard was killed, leaving its lock. The attempt stops
            # the command; the lock goes only once nothing of the shard runs.
            deadline = time.monotonic() + patience
            while system.group_alive(guard.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            guard.kill_group()
            self._remove_leftover(lock_name, guard.pid)
        own = attempt.own_record()
        if own is not None:  # the command ran: its record tells how it ended
            if lokt_message and attempt.log:
                log = system.open_file(attempt.log, os.O_WRONLY | os.O_APPEND)
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(lokt_message + "\n")
            elif lokt_message:
                for line in lokt_message.splitlines():  # the attempt's own start so
                    said = line if line.startswith("lokt-tasks: ") else f"lokt-tasks: lokt: {line}"
                    print(said, file=sys.stderr)
            if own.get("outcome") == RecordOutcome.WAITING and returncode == LOCK_LOST:
                message = "the lock was lost while its attempt waited for a lease; nothing ran"
                return GuardResult(GuardState.HELD, holder=self.holder(lock_name), message=message)
            if own.get("outcome") in STARTED_OUTCOMES:  # the attempt died before the end
                result = ran(returncode, forwarded)
                if returncode == LOCK_LOST:
                    lost = "the lock was lost while the command ran: it was stopped"
                    return replace(result, message=lost + ", and no final record written")
                return result
            signum = system.signal_number(own["signal"]) if own.get("signal") else None
            code = own.get("exit_code")
            return GuardResult(GuardState.RAN, exit_code=code, signal=signum, interrupted=forwarded)
        if returncode == 0 and attempt.skip:
            return GuardResult(GuardState.SKIPPED, message="nothing to run")
        if returncode == LOCK_LOST:
            message = (
                f'lock "{lock_name}" was not this agent\'s when its attempt began (taken over'
                " while it waited or was stopped, or by another agent of the same name)"
            )
            return GuardResult(GuardState.HELD, holder=self.holder(lock_name), message=message)
        if forwarded is not None:
            return interrupted_before_start(forwarded)
        lines = [line.strip() for line in lokt_message.splitlines() if line.strip()]
        errors = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
        message = (errors or lines or [""])[-1]  # lokt's reason, without "error: "
        if returncode == 2:
            return self._refused(request, message)
        if returncode < 0:
            message = f"lokt guard was killed by signal {-returncode} before the command started"
        elif not message:
            message = f"lokt guard failed with exit code {returncode} before the command started"
        return GuardResult(GuardState.ERROR, message=message)

    def _before_guard(self, request: GuardRequest) -> Optional[GuardResult]:
        """What lokt gets wrong, set right: it calls a zombie holder alive and
        never breaks an empty lock file (pruned here; with --wait, once the
        file is old enough), lets an owner re-enter its lock (a live holder
        with our owner: held), and appends to ``audit.log`` through a symbolic
        link or blocks on a FIFO there (refused)."""
        me, lock_name = self.identity, request.lock_name
        audit = self.root / "audit.log"
        if audit.is_symlink() or (audit.exists() and not audit.is_file()):
            return GuardResult(GuardState.ERROR, message=f"{audit}: is not a regular file")
        path = lockfile.lock_path(self.root, lock_name)
        deadline = time.monotonic() + (request.timeout or DEFAULT_WAIT_TIMEOUT)
        while True:
            lockfile.prune_abandoned(
                self.root,
                lock_name,
                owner=me.owner,
                host=me.host,
                pid=os.getpid(),
                agent_id=me.agent,
            )
            try:
                status = path.lstat()
            except OSError:  # released meanwhile, or not there at all
                break
            if not (request.wait and time.monotonic() < deadline):
                break
            if not stat.S_ISREG(status.st_mode) or status.st_size:
                break
            if request.stop.wait(0.5):
                return interrupted_before_start(request.stop.signum)
        holder = self.holder(lock_name)
        if holder is None or holder.owner != me.owner or holder.pid_status == "dead":
            return None
        named = f": another agent named {me.agent!r}"
        message = held_message(lock_name, holder, False, None) + named
        return GuardResult(GuardState.HELD, holder=holder, message=message)

    def _refused(self, request: GuardRequest, lokt_message: str) -> GuardResult:
        """Exit 2 and no record of the attempt: held or frozen, as the files
        say (with --wait, lokt gives up with 2 only when frozen or timed out)."""
        name = request.lock_name
        freeze = self.frozen_by(name)
        if "frozen" in lokt_message or (not lokt_message and freeze is not None):
            message = frozen_message(name, freeze)
            return GuardResult(GuardState.FROZEN, holder=freeze, message=message)
        holder = self.settled_holder(name)
        message = held_message(name, holder, request.wait, request.timeout)
        return GuardResult(GuardState.HELD, holder=holder, message=message)

    def _remove_leftover(self, lock_name: str, lokt_pid: int) -> None:
        """lokt was killed before it could release: remove its lock, ours only."""
        path = lockfile.lock_path(self.root, lock_name)
        try:
            lock = lockfile.read_lock(path)
        except (OSError, LockFileError):
            return
        if (lock.owner, lock.pid, lock.host) == (self.identity.owner, lokt_pid, self.identity.host):
            lockfile.remove_file(path)


class WaitWatch:
    """``stopped`` for supervising ``lokt guard``, which also reads the
    attempt's record every POLL seconds and tells ``on_wait`` what the
    attempt process waits for (a "waiting" record), and "" once that wait ends."""

    POLL = 0.2

    def __init__(self, attempt, on_wait, asked) -> None:
        self.attempt, self.on_wait, self.asked = attempt, on_wait, asked
        self.next_look, self.waiting, self.done = 0.0, "", False

    def __call__(self) -> Optional[int]:
        now = time.monotonic()
        if not self.done and now >= self.next_look:
            self.next_look = now + self.POLL
            record = self.attempt.own_record()
            if record is not None:
                message = str(record.get("message") or "")
                waiting = record.get("outcome") == RecordOutcome.WAITING
                told = waiting and message.startswith(WAITING_FOR)
                what = message[len(WAITING_FOR) :] if told else ""
                self.done = not waiting
                if what != self.waiting:
                    self.waiting = what
                    self.on_wait(what)
        return self.asked()


def find_lokt_binary(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """$LOKT_BIN if set (it must be an executable file), else lokt on PATH."""
    environ = os.environ if env is None else env
    configured = environ.get("LOKT_BIN", "")
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return os.path.abspath(configured)
        raise EngineError(f"LOKT_BIN={configured} is not an executable file")
    return shutil.which("lokt", path=environ.get("PATH"))
