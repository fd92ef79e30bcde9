"""The embedded engine: lokt's locking protocol in Python.

For machines without the lokt binary. It reads and writes the same files in
the same format (``lockfile``) and follows the same rules, so an embedded
agent and a ``lokt guard`` exclude each other:

- sweep the whole root first: remove corrupt files, and expired locks whose
  holder is on another host or dead here (a live holder is kept);
- an unexpired freeze (freezes/NAME.json) refuses the lock; an expired one
  is removed;
- acquire by creating locks/NAME.json with O_EXCL, then writing it by temp
  file + fsync + rename + directory fsync. An existing empty file means
  another agent is between those two steps: held. A corrupt file is
  removed; a holder on this host whose pid is dead (or was reused, the
  start time differs) is pruned; otherwise the lock is held;
- while the command runs, a heartbeat renews the lock every max(TTL/2,
  0.5 s) as long as owner, host and pid in the file are still ours;
- release removes the lock only if owner and lock_id are still ours.
Every step appends lokt's audit event to audit.log.

The lock file's pid is this process (as ``lokt guard`` records itself, not
the command): the lock lives as long as the agent that holds it. The
command runs in its own session, so a Ctrl-C at the terminal reaches only
the agent, which forwards it. If the agent is killed outright, its
``Watchdog`` (a process that outlives it, see watchdog.py) stops the
command, which would otherwise run on, no longer locked. (Under a killed
``lokt guard`` a command does run on.)

Stricter than lokt, on purpose:
- Never re-entrant. lokt lets the same owner overwrite a lock; here a lock
  with our owner is held like any other while its pid lives, and pruned like
  any other when it is dead.
- Waiting (``wait=True``) never breaks an expired lock whose holder is alive
  on this host; lokt's ``--wait`` does. A live holder renews its lock, so
  such a lock belongs to a stalled process, not a finished one.
- A zombie holder (exited, not reaped: containers without an init) is dead.
- A stale or corrupt file is removed only if it still reads as it did when
  judged, so an agent never deletes the fresh lock of another that pruned
  the same file a moment earlier.
Like lokt, an empty lock file is never broken: if a crash left one behind,
the name stays held until someone removes the file.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Dict, Optional, Union

from . import lockfile, system
from .attempt import Attempt
from .engine import (
    DEFAULT_WAIT_TIMEOUT,
    STOP_GRACE,
    Engine,
    GuardResult,
    Holder,
    Identity,
    StopRequest,
    effective_ttl,
    frozen_message,
    held_message,
    holder_from_lock,
    interrupted_before_start,
    ran,
)
from .lockfile import (
    CorruptLockFile,
    EmptyLockFile,
    LockData,
    LockFileError,
    UnsupportedVersion,
    append_audit,
)
from .states import GuardState

BACKOFF_START = 0.05
BACKOFF_MAX = 2.0
#: Re-reads of an empty (being written) lock file before reporting "held by ?".
SETTLE_TRIES = 20
SETTLE_PAUSE = 0.01


@dataclass(frozen=True)
class Claimant:
    """This process as it appears in lock files and audit lines."""

    owner: str
    host: str
    pid: int
    agent_id: str
    pid_start_ns: int

    @classmethod
    def current(cls, owner: str, agent_id: str, host: str) -> "Claimant":
        pid = os.getpid()
        return cls(owner, host, pid, agent_id, system.process_start_time(pid) or 0)

    def new_lock(self, name: str, ttl_sec: int, at_ns: int) -> LockData:
        return LockData(
            name=name,
            owner=self.owner,
            host=self.host,
            pid=self.pid,
            lock_id=os.urandom(16).hex(),
            pid_start_ns=self.pid_start_ns,
            agent_id=self.agent_id,
            acquired_ns=at_ns,
            ttl_sec=ttl_sec,
            expires_ns=at_ns + ttl_sec * 1_000_000_000 if ttl_sec > 0 else None,
        )

    def audit(self, root: Path, event: str, name: str, **fields) -> None:
        line = lockfile.audit_line(
            event, name, owner=self.owner, host=self.host, pid=self.pid, agent_id=self.agent_id, **fields
        )
        append_audit(root, line)


@dataclass(frozen=True)
class LockTry:
    """One try at the lock: ours, refused (holder may be unknown), or an error."""

    acquired: Optional[LockData] = None
    holder: Optional[LockData] = None
    error: str = ""


def sweep(root: Path, me: Claimant) -> None:
    """lokt's opportunistic sweep of locks/ and freezes/ before acquiring."""
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
    line = lockfile.audit_line(
        "auto-prune", path.name[: -len(".json")], owner=me.owner, host=me.host, pid=me.pid, extra=extra
    )
    append_audit(root, line)


def active_freeze(root: Path, name: str, me: Claimant) -> Optional[LockData]:
    """The unexpired freeze of name, after logging freeze-deny; else None.

    Expired and corrupt freezes are removed. Raises UnsupportedVersion for a
    freeze written by a newer lokt (lokt refuses to guard then, too).
    """
    for path in (lockfile.freeze_path(root, name), lockfile.legacy_freeze_path(root, name)):
        try:
            text = lockfile.read_text(path)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        try:
            freeze = lockfile.parse_lock(text)
        except CorruptLockFile:
            lockfile.remove_if_unchanged(path, text)
            return None
        except EmptyLockFile:
            return None
        if freeze.expired():
            lockfile.remove_if_unchanged(path, text)
            return None
        extra = {"freeze_owner": freeze.owner, "freeze_host": freeze.host, "freeze_pid": freeze.pid}
        me.audit(root, "freeze-deny", name, lock_id=freeze.lock_id, extra=extra)
        return freeze
    return None


def acquire_once(root: Path, name: str, me: Claimant, ttl_sec: int) -> LockTry:
    """One non-blocking try, as lokt's Acquire (but never re-entrant)."""
    path = lockfile.lock_path(root, name)
    if lockfile.create_exclusive(path):
        return _write_new(root, path, name, me, ttl_sec)
    try:
        text = lockfile.read_text(path)
        existing = lockfile.parse_lock(text)
    except FileNotFoundError:
        return _retry_create(root, path, name, me, ttl_sec)
    except UnsupportedVersion as error:
        return LockTry(error=f"lock {name!r}: {error}")
    except CorruptLockFile:
        if lockfile.remove_if_unchanged(path, text):
            me.audit(root, "corrupt-break", name)
            return _retry_create(root, path, name, me, ttl_sec)
        return LockTry()
    except (OSError, EmptyLockFile):
        return LockTry()  # being written by another acquirer: held
    if lockfile.pid_status(existing, me.host) == "dead":
        if lockfile.remove_if_unchanged(path, text):
            extra = {"pruned_owner": existing.owner, "pruned_host": existing.host, "pruned_pid": existing.pid}
            me.audit(root, "auto-prune", name, lock_id=existing.lock_id, extra=extra)
            retry = _retry_create(root, path, name, me, ttl_sec)
            if retry.acquired is not None:
                return retry
            existing = _read_or(path, existing) or existing
    extra = {"holder_owner": existing.owner, "holder_host": existing.host, "holder_pid": existing.pid}
    me.audit(root, "deny", name, ttl_sec=ttl_sec, extra=extra)
    return LockTry(holder=existing)


def _retry_create(root: Path, path: Path, name: str, me: Claimant, ttl_sec: int) -> LockTry:
    if lockfile.create_exclusive(path):
        return _write_new(root, path, name, me, ttl_sec)
    return LockTry(holder=_read_or(path, None))


def _read_or(path: Path, fallback: Optional[LockData]) -> Optional[LockData]:
    try:
        return lockfile.read_lock(path)
    except (OSError, LockFileError):
        return fallback


def _write_new(root: Path, path: Path, name: str, me: Claimant, ttl_sec: int) -> LockTry:
    """Fill the empty file we created; give the name back if that fails."""
    lock = me.new_lock(name, ttl_sec, lockfile.now_ns())
    try:
        lockfile.write_lock(path, lock)
    except OSError as error:
        lockfile.remove_file(path)
        return LockTry(error=f"cannot write lock file {path}: {error}")
    me.audit(root, "acquire", name, lock_id=lock.lock_id, ttl_sec=ttl_sec)
    return LockTry(acquired=lock)


def break_stale(root: Path, name: str, me: Claimant) -> None:
    """Between waits: free a corrupt lock, or an expired one from another host.

    Dead holders on this host are pruned by ``acquire_once`` itself.
    """
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


def renew(root: Path, name: str, me: Claimant) -> Optional[bool]:
    """Heartbeat: True renewed, False no longer ours (stop), None failed (retry)."""
    path = lockfile.lock_path(root, name)
    try:
        existing = lockfile.read_lock(path)
    except FileNotFoundError:
        return False
    except (OSError, LockFileError):
        return None
    if (existing.owner, existing.host, existing.pid) != (me.owner, me.host, me.pid):
        return False
    renewed = existing.renewed(lockfile.now_ns())
    try:
        lockfile.write_lock(path, renewed)
    except OSError:
        return None
    me.audit(root, "renew", name, lock_id=renewed.lock_id, ttl_sec=renewed.ttl_sec)
    return True


def release(root: Path, name: str, me: Claimant, lock_id: str) -> bool:
    """Remove our lock, and only ours (same owner and lock_id)."""
    path = lockfile.lock_path(root, name)
    try:
        existing = lockfile.read_lock(path)
    except (OSError, LockFileError):
        return False
    if existing.owner != me.owner or existing.lock_id != lock_id:
        return False
    if not lockfile.remove_file(path):
        return False
    me.audit(root, "release", name, lock_id=existing.lock_id, ttl_sec=existing.ttl_sec)
    return True


def backoff(attempt: int) -> float:
    """50 ms doubling to 2 s, with ±25% jitter so waiters do not move in step."""
    interval = min(BACKOFF_START * 2 ** min(attempt, 6), BACKOFF_MAX)
    return interval * random.uniform(0.75, 1.25)


class Heartbeat:
    """Renews a lock in a thread while the command runs."""

    def __init__(self, root: Path, name: str, me: Claimant, interval: float) -> None:
        self.root = root
        self.name = name
        self.me = me
        self.interval = interval
        self.lost = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lokt-heartbeat-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            if renew(self.root, self.name, self.me) is False:
                self.lost = True
                print(
                    f"lokt-tasks: warning: lock {self.name!r} is no longer ours; not renewing it",
                    file=sys.stderr,
                )
                return


class Watchdog:
    """Our line to ``watchdog.py``: it stops the commands we started if we die.

    Started at the first command, once per engine, in a session of its own;
    it ends when we do (see watchdog.py). Tell it of each command once it
    runs (``watch``) and again once it is reaped (``forget``).
    """

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._lock = threading.Lock()
        #: The write end of the watchdog's stdin: ours alone, closed when we
        #: are (or when this object is collected), which ends the watchdog.
        self._pipe: Optional[BinaryIO] = None
        self._unavailable = False

    def prepare(self) -> None:
        """Have the watchdog running before a command starts, so that the
        command is told to it at once (an empty line, which it ignores)."""
        self._send("\n")

    def watch(self, pid: int) -> None:
        start = system.process_start_time(pid) if sys.platform.startswith("linux") else None
        self._send(f"+{pid} {'-' if start is None else start}\n")

    def forget(self, pid: int) -> None:
        self._send(f"-{pid}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            for _ in range(2):  # a watchdog that died is started again, once
                if self._unavailable:
                    return
                if self._pipe is None:
                    try:
                        self._pipe = self._start()
                    except OSError as error:
                        self._unavailable = True
                        print(
                            f"lokt-tasks: warning: cannot start the watchdog ({error.strerror or error}):"
                            " if this agent is killed, its commands will run on",
                            file=sys.stderr,
                        )
                        return
                try:
                    self._pipe.write(line.encode("ascii"))
                    self._pipe.flush()
                    return
                except OSError:
                    self._pipe.close()
                    self._pipe = None

    def _start(self) -> BinaryIO:
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
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        # Reaped by a thread of ours once it exits, so that no zombie is left.
        threading.Thread(target=process.wait, name="lokt-tasks-watchdog", daemon=True).start()
        return os.fdopen(write_end, "wb")


class EmbeddedEngine(Engine):
    name = "embedded"
    holds_lock_in_process = True

    def __init__(self, identity: Identity, root: Path, *, grace: float = STOP_GRACE) -> None:
        super().__init__(identity, root, grace=grace)
        self._watchdog: Optional[Watchdog] = None

    @property
    def watchdog(self) -> Watchdog:
        """This engine's watchdog, given the grace the engine has when it first runs a command."""
        if self._watchdog is None:
            self._watchdog = Watchdog(self.grace)
        return self._watchdog

    def describe(self) -> str:
        return "embedded engine"

    def _guard(
        self,
        lock_name: str,
        attempt: Attempt,
        ttl: float,
        wait: bool,
        timeout: Optional[float],
        env: Dict[str, str],
        cwd: Optional[Path],
        stop: StopRequest,
    ) -> GuardResult:
        lifetime = effective_ttl(ttl)
        heartbeat = None
        with ExitStack() as cleanup:  # unwinds in reverse: heartbeat, then the lock
            me = Claimant.current(self.identity.owner, self.identity.agent, self.identity.host)
            try:
                claim = self._acquire(lock_name, me, int(lifetime), wait, timeout, stop)
            except OSError as error:
                return GuardResult(GuardState.ERROR, message=f"lock root {self.root} is unusable: {error}")
            if isinstance(claim, GuardResult):
                return claim
            cleanup.callback(release, self.root, lock_name, me, claim.lock_id)
            if lifetime > 0:
                heartbeat = Heartbeat(self.root, lock_name, me, max(lifetime / 2, 0.5))
                heartbeat.start()
                cleanup.callback(heartbeat.stop)
            if stop.is_set():
                return interrupted_before_start(stop)
            try:
                result = self._attempt(attempt, env, cwd, stop)
            except OSError as error:  # from begin or finish: the record
                return GuardResult(GuardState.ERROR, message=f"cannot write {attempt.record}: {error.strerror or error}")
        if heartbeat is not None and heartbeat.lost:
            result = replace(result, message=f"lock {lock_name!r} was taken over while the command ran")
        return result

    def _attempt(self, attempt: Attempt, env: Dict[str, str], cwd: Optional[Path],
                 stop: StopRequest) -> GuardResult:
        """The attempt, in this process, under the lock we hold."""
        if not attempt.begin():
            return GuardResult(GuardState.SKIPPED, message="nothing to run")
        if stop.is_set():
            attempt.finish(None, stop.asked())
            return interrupted_before_start(stop)
        # NOTE: an agent killed between starting the command and telling the
        # watchdog would leave it running; starting the watchdog first keeps
        # that window to one write.
        self.watchdog.prepare()
        child = attempt.start(env=env, cwd=str(cwd) if cwd else None)
        if isinstance(child, int):
            attempt.finish(child, None)
            return ran(child)
        try:
            self.watchdog.watch(child.pid)
            ended = attempt.wait(child, stopped=stop.asked, grace=self.grace)
        except BaseException:
            child.kill_group()
            child.wait()
            raise
        finally:
            if child.returncode is not None:
                self.watchdog.forget(child.pid)
        assert ended is not None  # never abandoned here
        attempt.finish(*ended)
        return ran(*ended)

    def _acquire(
        self,
        name: str,
        me: Claimant,
        ttl_sec: int,
        wait: bool,
        timeout: Optional[float],
        stop: Optional[StopRequest],
    ) -> Union[LockData, GuardResult]:
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
            tried = acquire_once(self.root, name, me, ttl_sec)
            if tried.acquired is not None:
                return tried.acquired
            if tried.error:
                return GuardResult(GuardState.ERROR, message=tried.error)
            remaining = deadline - time.monotonic()
            if not wait or remaining <= 0:
                holder = self._holder_of(name, tried.holder)
                return GuardResult(GuardState.HELD, holder=holder, message=held_message(name, holder, wait, timeout))
            pause = min(backoff(tries), remaining)
            tries += 1
            if stop is not None:
                if stop.wait(pause):
                    return interrupted_before_start(stop)
            else:
                time.sleep(pause)
            break_stale(self.root, name, me)

    def _holder_of(self, name: str, seen: Optional[LockData]) -> Optional[Holder]:
        """The holder to report; an empty file is read again for a moment,
        as its writer is normally between create and rename."""
        if seen is not None:
            return holder_from_lock(seen, name)
        for _ in range(SETTLE_TRIES):
            holder = self.holder(name)
            if holder is not None:
                return holder
            time.sleep(SETTLE_PAUSE)
        return None
