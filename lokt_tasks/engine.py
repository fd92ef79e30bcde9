"""What both lock engines share: acquire a lock, hold it while an attempt
runs, release it; and who we are in lock files. lokt lets a caller re-enter
a lock whose owner is its own, so every agent gets an owner of its own::

    agent = --agent, else $LOKT_AGENT_ID, else lokt_tasks.agent in invoke's
            configuration, else "agent-" + 8 random hex digits
    owner = "<base>/<agent>", base = $LOKT_OWNER, else the OS user name

and its commands run with LOKT_OWNER, LOKT_AGENT_ID and LOKT_ROOT set.
"""

from __future__ import annotations

import getpass
import os
import pwd
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from . import lockfile
from .attempt import POLL_INTERVAL, STOP_GRACE, Attempt
from .errors import EngineError, UsageError
from .lockfile import LockData, LockFileError, validate_lock_name
from .states import GuardState

#: How long --wait waits when no timeout is given (lokt's default too).
DEFAULT_WAIT_TIMEOUT = 600.0
#: Re-reads of an empty (being written) lock file before reporting "held by ?".
SETTLE_TRIES = 20
SETTLE_PAUSE = 0.01


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
    """What became of an attempt under a lock: how the command ended (127/126:
    it could not start; ``signal``: the one that killed it), who holds or
    froze the lock (None if unreadable), the stop signal that came."""

    state: GuardState
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    holder: Optional[Holder] = None
    message: str = ""
    interrupted: Optional[int] = None

    @property
    def ran(self) -> bool:
        return self.state == GuardState.RAN


@dataclass(frozen=True)
class GuardRequest:
    """The arguments of :meth:`Engine.guard`, checked, for an engine's ``_guard``."""

    lock_name: str
    attempt: Attempt
    ttl: float
    wait: bool
    timeout: Optional[float]
    env: Dict[str, str]
    cwd: Optional[str]
    stop: StopRequest
    #: Told what the attempt waits for ("a slot", "resource 'db'") when it starts
    #: to wait for a lease, and "" once its command starts after such a wait.
    on_wait: Optional[Callable[[str], None]] = None


class StopRequest:
    """A stop asked for (Ctrl-C, SIGTERM), polled by every guard. It takes no
    lock, so a signal handler may call ``request`` while the main thread is
    in ``wait`` (a threading.Event could deadlock there)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    def request(self, signum: int = signal.SIGINT) -> None:
        if self.signum is None:
            self.signum = signum or signal.SIGINT

    def is_set(self) -> bool:
        return self.signum is not None

    def asked(self) -> Optional[int]:
        """The signal of the stop asked for, or None: what ``Attempt.wait`` polls."""
        return self.signum

    def wait(self, timeout: float) -> bool:
        """Sleep up to timeout seconds; True as soon as a stop is requested."""
        deadline = time.monotonic() + timeout
        while self.signum is None:
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


def make_identity(
    agent: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    *,
    default: Optional[str] = None,
) -> Identity:
    """The agent and its own lokt owner (see the module docstring); ``default``
    is the configured name, below $LOKT_AGENT_ID."""
    environ = os.environ if env is None else env
    name = (agent or "").strip() or environ.get("LOKT_AGENT_ID", "").strip()
    name = name or (default or "").strip()
    if not name:
        name = "agent-" + secrets.token_hex(4)
    base = environ.get("LOKT_OWNER", "").strip() or os_user_name()
    return Identity(agent=name, owner=f"{base}/{name}")


def os_user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        pass
    try:
        return getpass.getuser()
    except Exception:  # getuser raises whatever its last lookup raised
        return "unknown"


def find_lock_root(cwd: Path) -> Path:
    """Where locks live, for both engines: $LOKT_ROOT, else <git common
    dir>/lokt (shared by all worktrees), else cwd/.lokt; always absolute."""
    base = os.path.abspath(cwd)
    configured = os.environ.get("LOKT_ROOT", "")
    if configured:
        return Path(os.path.normpath(os.path.join(base, configured)))
    command = ["git", "rev-parse", "--git-common-dir"]
    try:
        git = subprocess.run(command, cwd=base, capture_output=True, text=True)
        common = git.stdout.strip() if git.returncode == 0 else ""
    except OSError:
        common = ""
    if common:
        return Path(os.path.normpath(os.path.join(base, common))) / "lokt"
    return Path(base) / ".lokt"


def effective_ttl(ttl: float) -> float:
    """0 (a lock that never expires) or at least one second: lokt stores whole
    seconds, and writes an already-expired lock for a TTL under one second."""
    return 0.0 if ttl <= 0 else max(float(ttl), 1.0)


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


def _who(holder: Holder) -> str:
    """A holder as lokt names it: owner (agent: A)@host."""
    agent = f" (agent: {holder.agent_id})" if holder.agent_id else ""
    return f"{holder.owner}{agent}@{holder.host}"


def held_message(name: str, holder: Optional[Holder], wait: bool, timeout: Optional[float]) -> str:
    """lokt's words for a lock it could not take; after a wait, how long it waited."""
    if holder is None:
        message = f'lock "{name}" is held by another agent (its lock file is being written)'
    else:
        age = int(holder.age_sec)
        message = f'lock "{name}" held by {_who(holder)} (pid {holder.pid}) for {age}s'
    if not wait:
        return message
    limit = timeout if timeout is not None and timeout > 0 else DEFAULT_WAIT_TIMEOUT
    return f"timeout after {limit:g}s waiting: {message}"


def frozen_message(name: str, holder: Optional[Holder]) -> str:
    return f'lock "{name}" is frozen' + (f" by {_who(holder)}" if holder else "")


def interrupted_before_start(signum: Optional[int]) -> GuardResult:
    """Nothing ran: the stop request ``signum`` (None: SIGINT) came first."""
    message = "stopped before the command started"
    return GuardResult(GuardState.INTERRUPTED, interrupted=signum or signal.SIGINT, message=message)


def ran(returncode: int, interrupted: Optional[int] = None) -> GuardResult:
    """A finished command: a negative return code means killed by that signal."""
    if returncode < 0:
        return GuardResult(GuardState.RAN, signal=-returncode, interrupted=interrupted)
    return GuardResult(GuardState.RAN, exit_code=returncode, interrupted=interrupted)


class Engine:
    """What the run layer needs from a lock engine. Lock state is read from
    the files for both engines: unlike ``lokt status``, it changes nothing."""

    name = ""

    def __init__(self, identity: Identity, root: Path, *, grace: float = STOP_GRACE) -> None:
        self.identity, self.root, self.grace = identity, Path(root), grace

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
        on_wait: Optional[Callable[[str], None]] = None,
    ) -> GuardResult:
        """Run ``attempt`` holding lock_name: ``ttl`` in seconds (0: never
        expires), ``timeout`` with ``wait`` (None or <= 0: 10 minutes), in a
        session of its own with ``env`` (default ours) and our identity. A
        ``stop`` goes to the command, SIGKILL to its group ``self.grace``
        seconds later. The attempt's leases are taken inside the lock, told
        to ``on_wait`` (see GuardRequest). UsageError for a bad lock name or
        a missing ``cwd``."""
        validate_lock_name(lock_name)
        if cwd is not None and not Path(cwd).is_dir():
            raise UsageError(f"working directory does not exist: {cwd}")
        if stop is not None and stop.is_set():
            return interrupted_before_start(stop.signum)
        directory = str(cwd) if cwd else None
        stop = stop or StopRequest()
        return self._guard(
            GuardRequest(
                lock_name,
                attempt,
                ttl,
                wait,
                timeout,
                self.child_env(env),
                directory,
                stop,
                on_wait,
            )
        )

    def _guard(self, request: GuardRequest) -> GuardResult:
        raise NotImplementedError

    def holder(self, lock_name: str) -> Optional[Holder]:
        """Who holds lock_name now, or None (no lock, or no readable holder)."""
        validate_lock_name(lock_name)
        try:
            lock = lockfile.read_lock(lockfile.lock_path(self.root, lock_name), allow_newer=True)
        except (FileNotFoundError, LockFileError):
            return None
        except OSError as error:
            raise EngineError(f"cannot read lock {lock_name!r} in {self.root}: {error}") from None
        return holder_from_lock(lock, lock_name)

    def settled_holder(self, lock_name: str) -> Optional[Holder]:
        """Who holds lock_name now, reading a lock file that is being written
        (lokt creates it empty and fills it a moment later) again for a
        moment; None once the file is gone, or still unreadable."""
        for _ in range(SETTLE_TRIES):
            holder = self.holder(lock_name)
            if holder is not None or not lockfile.lock_path(self.root, lock_name).exists():
                return holder
            time.sleep(SETTLE_PAUSE)
        return None

    def frozen_by(self, lock_name: str) -> Optional[Holder]:
        """Who froze lock_name, while the freeze lasts; else None."""
        validate_lock_name(lock_name)
        for where in (lockfile.freeze_path, lockfile.legacy_freeze_path):
            path = where(self.root, lock_name)
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
        merged.update(LOKT_OWNER=self.identity.owner, LOKT_AGENT_ID=self.identity.agent)
        merged["LOKT_ROOT"] = str(self.root)
        return merged
