"""The lock engine: acquire a lock, hold it while an attempt runs, release it.

Two engines speak the same on-disk protocol (see ``lockfile``), so agents
using either exclude each other: ``lokt`` drives the real binary
(``lokt guard``, in ``lokt_engine``), ``embedded`` implements the protocol in
Python for machines without lokt (``embedded``). This module holds what they
share; ``run.select_engine`` picks one. An engine runs an
:class:`~lokt_tasks.attempt.Attempt` and never calls back into the run layer:
whether the command started is told by the attempt's own record.

Identity. lokt lets a caller whose owner equals the lock's owner re-enter the
lock, so two agents of one OS user would both "acquire" it. Every agent
therefore gets its own owner::

    agent = --agent, else $LOKT_AGENT_ID, else "agent-" + 8 random hex digits
    owner = "<base>/<agent>", base = $LOKT_OWNER, else the OS user name

The command runs with LOKT_OWNER, LOKT_AGENT_ID and LOKT_ROOT set to these
values, with either engine.

Lock root (where locks live), the same for both engines: ``$LOKT_ROOT``, else
``<git common dir>/lokt`` (shared by all worktrees of a repository), else
``.lokt`` in the working directory. The lokt engine passes it to lokt
explicitly, so both always agree.

TTL. A lock expires TTL seconds after its last renewal; while the command
runs, the lock is renewed every max(TTL/2, 0.5 s). lokt stores whole seconds,
and writes an already-expired lock for a TTL under one second, so both
engines round a positive TTL below one second up to one second. A TTL of 0
means a lock that never expires (and no renewal).
"""

from __future__ import annotations

import getpass
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from . import lockfile
from .attempt import STOP_GRACE, Attempt
from .errors import EngineError, UsageError
from .lockfile import LockData, LockFileError, validate_lock_name
from .states import GuardState

#: How long --wait waits when no timeout is given (lokt's default too).
DEFAULT_WAIT_TIMEOUT = 600.0
#: How often a stop request is looked at while waiting.
POLL_INTERVAL = 0.025


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as read from its lock file."""

    name: str
    owner: str
    agent_id: str
    host: str
    pid: int
    age_sec: float
    #: "alive", "dead" or "unknown" (another host, or no way to tell).
    pid_status: str
    expired: bool = False


@dataclass(frozen=True)
class GuardResult:
    """What happened when we asked to run an attempt under a lock.

    ``state`` is one of:
    - "ran": the command started; ``exit_code`` (or ``signal``, the number of
      the signal that killed it, with ``exit_code`` None) tells how it ended.
      A command that could not be executed ran like under a shell: 127 when
      not found, 126 when not executable.
    - "held": another agent holds the lock; ``holder`` says who (None when the
      holder could not be read, e.g. it was being written). Nothing ran.
    - "frozen": the lock name is frozen; ``holder`` is who froze it. Nothing ran.
    - "interrupted": a stop request came before the command started. Nothing
      ran; ``interrupted`` is the signal number.
    - "skipped": the lock was ours, but the attempt found its shard done.
    - "error": the engine failed, or a record could not be written; ``message``
      says why.
    ``interrupted`` is the signal number (SIGINT/SIGTERM) of a stop request
    that came while the command ran, or None.
    """

    state: GuardState
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    holder: Optional[Holder] = None
    message: str = ""
    interrupted: Optional[int] = None

    @property
    def ran(self) -> bool:
        return self.state == GuardState.RAN


class StopRequest:
    """A stop asked for from outside (Ctrl-C, SIGTERM), shared with workers.

    The main thread records the signal; every guard polls it and forwards the
    signal to its command, then releases its lock. ``request`` takes no lock,
    so a signal handler may call it while the main thread is in ``wait``
    (a threading.Event could deadlock there).
    """

    def __init__(self) -> None:
        self._requested = False
        self.signum: Optional[int] = None

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum
        self._requested = True

    def is_set(self) -> bool:
        return self._requested

    def asked(self) -> Optional[int]:
        """The signal of the stop asked for, or None: what ``Attempt.wait`` polls."""
        return (self.signum or signal.SIGINT) if self._requested else None

    def wait(self, timeout: float) -> bool:
        """Sleep up to timeout seconds; True as soon as a stop is requested."""
        deadline = time.monotonic() + timeout
        while not self._requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, POLL_INTERVAL))
        return True


@dataclass(frozen=True)
class Identity:
    """Who we are in lock files: the agent name and its lokt owner."""

    agent: str
    owner: str
    host: str = field(default_factory=lockfile.host_name)


def make_identity(agent: Optional[str] = None, env: Optional[Mapping[str, str]] = None) -> Identity:
    """The agent (argument, $LOKT_AGENT_ID or random) and its own lokt owner."""
    environ = os.environ if env is None else env
    name = (agent or "").strip() or environ.get("LOKT_AGENT_ID", "").strip()
    if not name:
        name = "agent-" + secrets.token_hex(4)
    base = environ.get("LOKT_OWNER", "").strip() or os_user_name()
    return Identity(agent=name, owner=f"{base}/{name}")


def os_user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        pass
    try:
        return getpass.getuser()
    except Exception:  # getuser raises whatever its last lookup raised
        return "unknown"


def find_lock_root(cwd: Path) -> Path:
    """$LOKT_ROOT, else <git common dir>/lokt, else cwd/.lokt (always absolute)."""
    base = os.path.abspath(cwd)
    configured = os.environ.get("LOKT_ROOT", "")
    if configured:
        return Path(os.path.normpath(os.path.join(base, configured)))
    try:
        git = subprocess.run(
            ["git", "rev-parse", "--git-common-dir"],
            cwd=base,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        git = None
    if git is not None and git.returncode == 0 and git.stdout.strip():
        return Path(os.path.normpath(os.path.join(base, git.stdout.strip()))) / "lokt"
    return Path(base) / ".lokt"


def effective_ttl(ttl: float) -> float:
    """0 (no TTL) or at least one second: lokt stores whole seconds."""
    if ttl <= 0:
        return 0.0
    return max(float(ttl), 1.0)


def holder_from_lock(lock: LockData, name: str) -> Holder:
    age = (lockfile.now_ns() - lock.acquired_ns) / 1e9 if lock.acquired_ns else 0.0
    return Holder(
        name=lock.name or name,
        owner=lock.owner,
        agent_id=lock.agent_id,
        host=lock.host,
        pid=lock.pid,
        age_sec=max(age, 0.0),
        pid_status=lockfile.pid_status(lock),
        expired=lock.expired(),
    )


def held_message(name: str, holder: Optional[Holder], wait: bool, timeout: Optional[float]) -> str:
    """lokt's words for a lock it could not take, naming the holder as lokt does:
    owner (agent: A)@host (pid N); after a wait, how long it waited."""
    if holder is None:
        message = f'lock "{name}" is held by another agent (its lock file is being written)'
    else:
        agent = f" (agent: {holder.agent_id})" if holder.agent_id else ""
        message = (
            f'lock "{name}" held by {holder.owner}{agent}@{holder.host} (pid {holder.pid})'
            f" for {int(holder.age_sec)}s"
        )
    if not wait:
        return message
    limit = timeout if timeout is not None and timeout > 0 else DEFAULT_WAIT_TIMEOUT
    return f"timeout after {limit:g}s waiting: {message}"


def frozen_message(name: str, holder: Optional[Holder]) -> str:
    if holder is None:
        return f'lock "{name}" is frozen'
    agent = f" (agent: {holder.agent_id})" if holder.agent_id else ""
    return f'lock "{name}" is frozen by {holder.owner}{agent}@{holder.host}'


def interrupted_before_start(stop: StopRequest) -> GuardResult:
    return GuardResult(
        GuardState.INTERRUPTED,
        interrupted=stop.signum or signal.SIGINT,
        message="stopped before the command started",
    )


def ran(returncode: int, interrupted: Optional[int] = None) -> GuardResult:
    """A finished command: a negative return code means killed by that signal."""
    if returncode < 0:
        return GuardResult(GuardState.RAN, signal=-returncode, interrupted=interrupted)
    return GuardResult(GuardState.RAN, exit_code=returncode, interrupted=interrupted)


class Engine:
    """What the run layer needs from a lock engine.

    Reading lock state (``holder``, ``frozen_by``, ``held_locks``) reads the
    files directly for both engines: it never removes or rewrites anything,
    unlike ``lokt status``, which sweeps the root first.
    """

    name = ""

    def __init__(self, identity: Identity, root: Path, *, grace: float = STOP_GRACE) -> None:
        self.identity = identity
        self.root = Path(root)
        self.grace = grace

    def describe(self) -> str:
        raise NotImplementedError

    def guard(
        self,
        lock_name: str,
        attempt: Attempt,
        *,
        ttl: float,
        wait: bool = False,
        timeout: Optional[float] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[Path] = None,
        stop: Optional[StopRequest] = None,
    ) -> GuardResult:
        """Run ``attempt`` while holding lock_name.

        ``ttl`` in seconds (0: a lock that never expires); ``timeout`` (with
        ``wait``): None or <= 0 means 10 minutes. The command runs in a
        session of its own with ``env`` (default ours) and lokt's identity
        variables, in ``cwd``, so a Ctrl-C at the terminal reaches only us.
        When ``stop`` is set, its signal is sent once to the command (as lokt
        guard does: to the process started, which passes it on to its own
        children); after ``self.grace`` seconds the command's whole process
        group is killed. The lock is released either way.

        Raises UsageError for a bad lock name or a missing cwd.
        """
        validate_lock_name(lock_name)
        if cwd is not None and not Path(cwd).is_dir():
            raise UsageError(f"working directory does not exist: {cwd}")
        if stop is not None and stop.is_set():
            return interrupted_before_start(stop)
        return self._guard(
            lock_name, attempt, ttl, wait, timeout, self.child_env(env), cwd, stop or StopRequest()
        )

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
        """The engine's own part of ``guard``, its arguments checked."""
        raise NotImplementedError

    def holder(self, lock_name: str) -> Optional[Holder]:
        """Who holds lock_name now, or None (no lock, or no readable holder)."""
        validate_lock_name(lock_name)
        try:
            lock = lockfile.read_lock(lockfile.lock_path(self.root, lock_name), allow_newer=True)
        except (FileNotFoundError, LockFileError):
            return None
        except OSError as error:
            raise EngineError(f"cannot read lock {lock_name!r} in {self.root}: {error}")
        return holder_from_lock(lock, lock_name)

    def frozen_by(self, lock_name: str) -> Optional[Holder]:
        """Who froze lock_name, while the freeze lasts; else None."""
        validate_lock_name(lock_name)
        for path in (
            lockfile.freeze_path(self.root, lock_name),
            lockfile.legacy_freeze_path(self.root, lock_name),
        ):
            try:
                freeze = lockfile.read_lock(path, allow_newer=True)
            except FileNotFoundError:
                continue
            except (LockFileError, OSError):
                return None
            return None if freeze.expired() else holder_from_lock(freeze, lock_name)
        return None

    def frozen(self, lock_name: str) -> bool:
        return self.frozen_by(lock_name) is not None

    def held_locks(self) -> List[Holder]:
        """Every readable lock under the root, by name."""
        try:
            paths = sorted(lockfile.locks_dir(self.root).glob("*.json"))
        except OSError:
            return []
        holders = []
        for path in paths:
            try:
                lock = lockfile.read_lock(path, allow_newer=True)
            except (OSError, LockFileError):
                continue
            holders.append(holder_from_lock(lock, path.name[: -len(".json")]))
        return holders

    def child_env(self, env: Optional[Mapping[str, str]]) -> Dict[str, str]:
        """The command's environment: ours (or env) plus our lokt identity."""
        merged = dict(os.environ if env is None else env)
        merged.update(
            LOKT_OWNER=self.identity.owner,
            LOKT_AGENT_ID=self.identity.agent,
            LOKT_ROOT=str(self.root),
        )
        return merged
