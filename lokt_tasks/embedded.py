"""The embedded engine: lokt's locking protocol in Python, on lokt's files
(``lockfile``), so that it and ``lokt guard`` exclude each other: sweep,
freeze check, acquire, heartbeat and release, each audited as lokt does.
The holder named in its lock files is the agent's ``Watchdog``.

Stricter than lokt, on purpose: never re-entrant; waiting never breaks an
expired lock whose holder is alive here (it is stalled, not finished); a
zombie holder is dead; a stale file is removed only if it still reads as
judged (never another agent's fresh lock); an empty lock file older than
``lockfile.EMPTY_LOCK_ABANDONED_AFTER`` is abandoned.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Optional, Union

from . import lockfile, system
from .engine import (
    DEFAULT_WAIT_TIMEOUT,
    Engine,
    GuardRequest,
    GuardResult,
    Holder,
    effective_ttl,
    frozen_message,
    held_message,
    holder_from_lock,
    interrupted_before_start,
    ran,
)
from .lockfile import (
    Claimant,
    CorruptLockFile,
    EmptyLockFile,
    LockData,
    LockFileError,
    UnsupportedVersion,
    release,
    renew,
)
from .states import GuardState

BACKOFF_START = 0.05
BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class LockTry:
    """One try at the lock: ours, refused (holder may be unknown), or an error."""

    acquired: Optional[LockData] = None
    holder: Optional[LockData] = None
    error: str = ""


def sweep(root: Path, me: Claimant) -> None:
    """lokt's sweep of locks/ and freezes/ before acquiring: corrupt files, and
    expired locks whose holder is on another host or dead here, go."""
    for directory in (lockfile.locks_dir(root), lockfile.freezes_dir(root)):
        try:
            paths = sorted(directory.glob("*.json"))
        except OSError:
            continue
        for path in paths:
            _sweep_one(root, path, me)


def _sweep_one(root: Path, path: Path, me: Claimant) -> None:
    lock: Optional[LockData] = None
    try:
        text = lockfile.read_text(path)
        lock = lockfile.parse_lock(text)
    except CorruptLockFile:
        reason = "corrupted"
    except (OSError, LockFileError):
        return  # gone, empty (mid-acquire), newer version: not ours to judge
    else:
        if not lock.expired():
            return
        status = lockfile.pid_status(lock, me.host)
        if status == "alive":
            return
        reason = "expired+dead_pid" if status == "dead" else "expired"
    if not lockfile.remove_if_unchanged(path, text):
        return
    extra: Dict[str, object] = {"sweep_reason": reason}
    if lock is not None:
        extra.update(pruned_owner=lock.owner, pruned_host=lock.host, pruned_pid=lock.pid)
    # lokt writes sweep events without agent_id and lock_id.
    me.audit(root, "auto-prune", path.name[: -len(".json")], agent_id="", extra=extra)


def active_freeze(root: Path, name: str, me: Claimant) -> Optional[LockData]:
    """The unexpired freeze of name (audited), else None, removing expired and
    corrupt ones; UnsupportedVersion for a newer lokt's (lokt refuses too)."""
    for path in (lockfile.freeze_path(root, name), lockfile.legacy_freeze_path(root, name)):
        freeze: Optional[LockData] = None
        try:
            text = lockfile.read_text(path)
            freeze = lockfile.parse_lock(text)
        except FileNotFoundError:
            continue
        except CorruptLockFile:
            pass
        except (OSError, EmptyLockFile):
            return None
        if freeze is None or freeze.expired():
            lockfile.remove_if_unchanged(path, text)
            return None
        extra = {"freeze_owner": freeze.owner, "freeze_host": freeze.host, "freeze_pid": freeze.pid}
        me.audit(root, "freeze-deny", name, lock_id=freeze.lock_id, extra=extra)
        return freeze
    return None


def acquire_once(root: Path, name: str, me: Claimant, ttl_sec: int) -> LockTry:
    """One non-blocking try, as lokt's Acquire (``lockfile.take_lock``: never
    re-entrant), with a deny line naming the holder when it is held."""
    path = lockfile.lock_path(root, name)
    try:
        taken = lockfile.take_lock(root, name, me, ttl_sec)
    except OSError as error:
        return LockTry(error=f"cannot write lock file {path}: {error}")
    if taken is not None:
        return LockTry(acquired=taken)
    try:
        existing = lockfile.read_lock(path)
    except UnsupportedVersion as error:
        return LockTry(error=f"lock {name!r}: {error}")
    except (FileNotFoundError, LockFileError):
        return LockTry()  # gone a moment ago, or being written: held by nobody known
    except OSError as error:  # not a regular file, a symbolic link, unreadable
        return LockTry(error=f"{path}: {error.strerror or error}")
    extra = dict(holder_owner=existing.owner, holder_host=existing.host, holder_pid=existing.pid)
    me.audit(root, "deny", name, ttl_sec=ttl_sec, extra=extra)
    return LockTry(holder=existing)


def break_stale(root: Path, name: str, me: Claimant) -> None:
    """Between waits: free a corrupt lock, or an expired one from another host."""
    path = lockfile.lock_path(root, name)
    try:
        text = lockfile.read_text(path)
        existing = lockfile.parse_lock(text)
    except CorruptLockFile:
        if lockfile.remove_if_unchanged(path, text):
            me.audit(root, "corrupt-break", name)
        return
    except (OSError, LockFileError):
        return
    if existing.expired() and lockfile.pid_status(existing, me.host) == "unknown":
        if lockfile.remove_if_unchanged(path, text):
            me.audit(root, "stale-break", name, lock_id=existing.lock_id, ttl_sec=existing.ttl_sec)


def backoff(attempt: int) -> float:
    """50 ms doubling to 2 s, with ±25% jitter so waiters do not move in step."""
    interval = min(BACKOFF_START * 2 ** min(attempt, 6), BACKOFF_MAX)
    return interval * random.uniform(0.75, 1.25)


class Heartbeat(threading.Thread):
    """Renews a lock every ``interval`` seconds (while owner, host and pid are
    ours) until stopped; ``lost`` once the lock is no longer ours."""

    def __init__(self, root: Path, lock_name: str, me: Claimant, interval: float) -> None:
        super().__init__(name=f"lokt-heartbeat-{lock_name}", daemon=True)
        self.root, self.lock_name, self.me, self.interval = root, lock_name, me, interval
        self.lost, self.stopped = False, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            if renew(self.root, self.lock_name, self.me) is False:
                self.lost = True
                warning = f"lock {self.lock_name!r} is no longer ours; not renewing it"
                print(f"lokt-tasks: warning: {warning}", file=sys.stderr)
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join()


class Watchdog:
    """The process that holds this agent's locks and stops its commands if it
    dies (watchdog.py), told of each command run (``watch``) and reaped."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen[bytes]] = None
        #: Our end of the watchdog's stdin: closing it (as our death does) ends it.
        self._pipe: Optional[BinaryIO] = None
        self._unavailable = False

    def holder(self) -> int:
        """The pid to hold a new lock: the watchdog's (started if need be), else ours."""
        with self._lock:
            process = self._process
            if not self._unavailable and (process is None or process.poll() is not None):
                self._start()
            return os.getpid() if self._process is None else self._process.pid

    def alive(self, holder: int) -> bool:
        """Whether ``holder`` still holds our locks (a dead watchdog took them)."""
        process = self._process
        mine = process is not None and process.pid == holder and process.poll() is None
        return holder == os.getpid() or mine

    def watch(self, pid: int, lock: Path) -> None:
        """Watch the group ``pid`` leads, run under the lock file ``lock``."""
        start = system.process_start_time(pid) if sys.platform.startswith("linux") else None
        self._send(f"+{pid} {'-' if start is None else start} {lock}\n")

    def forget(self, pid: int) -> None:
        self._send(f"-{pid}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._pipe is None:
                return
            try:
                self._pipe.write(line.encode("ascii"))
                self._pipe.flush()
            except OSError:  # it died: its locks are lost (see alive)
                pipe, self._pipe = self._pipe, None
                try:
                    pipe.close()  # flushes again, and fails again
                except OSError:
                    pass

    def _start(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
        self._process, self._pipe = None, None
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                system.bootstrap("watchdog") + [str(self.grace)],
                stdin=read_end,
                # Holding no output of ours: whoever reads our output (a pipe,
                # $(...)) would otherwise wait for the watchdog's end too.
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            os.close(write_end)
            self._unavailable = True
            reason = error.strerror or error
            print(
                f"lokt-tasks: warning: cannot start the watchdog ({reason}):"
                " if this agent is killed, its commands will run on",
                file=sys.stderr,
            )
            return
        finally:
            os.close(read_end)
        # Reaped by a thread of ours once it exits, so that no zombie is left.
        threading.Thread(target=process.wait, name="lokt-tasks-watchdog", daemon=True).start()
        self._process, self._pipe = process, os.fdopen(write_end, "wb")


class EmbeddedEngine(Engine):
    name = "embedded"
    _watchdog: Optional[Watchdog] = None

    @property
    def watchdog(self) -> Watchdog:
        """This engine's watchdog, with the engine's grace when it first runs a command."""
        if self._watchdog is None:
            self._watchdog = Watchdog(self.grace)
        return self._watchdog

    def describe(self) -> str:
        return "embedded engine"

    def _guard(self, request: GuardRequest) -> GuardResult:
        name, attempt, stop = request.lock_name, request.attempt, request.stop
        lifetime = effective_ttl(request.ttl)
        heartbeat = None
        with ExitStack() as cleanup:  # unwinds in reverse: heartbeat, then the lock
            pid, identity = self.watchdog.holder(), self.identity
            started = system.process_start_time(pid) or 0
            me = Claimant(identity.owner, identity.host, pid, identity.agent, started)
            try:
                claim = self._acquire(request, me)
            except OSError as error:
                message = f"lock root {self.root} is unusable: {error}"
                return GuardResult(GuardState.ERROR, message=message)
            if isinstance(claim, GuardResult):
                return claim
            cleanup.callback(release, self.root, name, me, claim.lock_id)
            cleanup.callback(attempt.release_leases)  # before the lock: unwinds in reverse
            if lifetime > 0:
                heartbeat = Heartbeat(self.root, name, me, max(lifetime / 2, 0.5))
                heartbeat.start()
                cleanup.callback(heartbeat.stop)
            if stop.is_set():
                return interrupted_before_start(stop.signum)
            path = lockfile.lock_path(self.root, name)

            def lost() -> bool:
                """Whether the lock is no longer ours (taken over, or its holder died)."""
                return (
                    (heartbeat is not None and heartbeat.lost)
                    or not self.watchdog.alive(me.pid)
                    or not lockfile.holds(path, claim.lock_id)
                )

            try:
                return self._attempt(request, lost, me)
            except OSError as error:  # from begin or finish: the log or the record
                where = error.filename or attempt.record
                message = f"cannot write {where}: {error.strerror or error}"
                return GuardResult(GuardState.ERROR, message=message)

    def _attempt(
        self, request: GuardRequest, lost: Callable[[], bool], me: Claimant
    ) -> GuardResult:
        """The attempt, under our lock, its leases held by ``me`` too: the
        command, then its retries. If the lock is ``lost()`` meanwhile, the
        command is stopped and no final record written."""
        attempt, stop = request.attempt, request.stop
        if not attempt.begin():
            return GuardResult(GuardState.SKIPPED, message="nothing to run")
        # NOTE: a lost lock may be another agent's already: no grace.
        abandoned = lambda: 0.0 if lost() else None  # noqa: E731
        if not stop.is_set() and not attempt.take_leases(
            holder=me, stopped=stop.asked, abandoned=abandoned, on_wait=request.on_wait
        ):
            if not stop.is_set():
                message = "the lock was lost while its attempt waited for a lease; nothing ran"
                holder = self.holder(request.lock_name)
                return GuardResult(GuardState.HELD, holder=holder, message=message)
        if stop.is_set():
            attempt.finish(None, stop.signum)
            return interrupted_before_start(stop.signum)
        if attempt.waits and request.on_wait is not None:
            request.on_wait("")
        ended = self._run(request, abandoned)
        while ended is not None and not lost() and attempt.retry(ended):
            ended = self._run(request, abandoned)
        if ended is None or lost() or not attempt.finish(*ended):
            message = (
                "the lock was lost while the command ran: it was stopped,"
                " and no final record written"
            )
            return GuardResult(GuardState.RAN, message=message)
        returncode, stopped_by, _ = ended  # a timeout is told by the record
        return ran(returncode, stopped_by)

    def _run(
        self, request: GuardRequest, abandoned: Callable[[], Optional[float]]
    ) -> Optional[tuple]:
        """One run of the attempt (the command or a retry), watched by the
        watchdog: how it ended (``attempt.supervise``'s tuple), or None when
        ``abandoned()`` said so meanwhile (the lock or a lease was lost)."""
        attempt = request.attempt
        child = attempt.start(env=request.env, cwd=request.cwd)
        if isinstance(child, int):
            return child, None, False
        try:
            self.watchdog.watch(child.pid, lockfile.lock_path(self.root, request.lock_name))
            stopped = request.stop.asked
            return attempt.wait(child, stopped=stopped, abandoned=abandoned, grace=self.grace)
        except BaseException:
            child.kill_group()
            child.wait()
            raise
        finally:
            if child.returncode is not None:
                self.watchdog.forget(child.pid)

    def _acquire(self, request: GuardRequest, me: Claimant) -> Union[LockData, GuardResult]:
        name, wait, timeout = request.lock_name, request.wait, request.timeout
        lockfile.ensure_dirs(self.root)
        sweep(self.root, me)
        try:
            freeze = active_freeze(self.root, name, me)
        except UnsupportedVersion as error:
            return GuardResult(GuardState.ERROR, message=f"freeze of {name!r}: {error}")
        if freeze is not None:
            froze = holder_from_lock(freeze, name)
            return GuardResult(GuardState.FROZEN, holder=froze, message=frozen_message(name, froze))
        limit = timeout if timeout is not None and timeout > 0 else DEFAULT_WAIT_TIMEOUT
        deadline = time.monotonic() + limit
        tries = 0
        while True:
            tried = acquire_once(self.root, name, me, int(effective_ttl(request.ttl)))
            if tried.acquired is not None:
                return tried.acquired
            if tried.error:
                return GuardResult(GuardState.ERROR, message=tried.error)
            remaining = deadline - time.monotonic()
            if not wait or remaining <= 0:
                holder = self._holder_of(name, tried.holder)
                message = held_message(name, holder, wait, timeout)
                return GuardResult(GuardState.HELD, holder=holder, message=message)
            if request.stop.wait(min(backoff(tries), remaining)):
                return interrupted_before_start(request.stop.signum)
            tries += 1
            break_stale(self.root, name, me)

    def _holder_of(self, name: str, seen: Optional[LockData]) -> Optional[Holder]:
        """The holder to report: the one seen, else one read again for a moment."""
        return holder_from_lock(seen, name) if seen is not None else self.settled_holder(name)
