"""The lock engine: run one command under a lokt lock.

Two engines speak the same on-disk protocol (see ``lockfile``), so agents
using either exclude each other: ``lokt`` drives the real binary
(``lokt guard``), ``embedded`` implements the protocol in Python for machines
without lokt. ``select_engine`` picks one: ``auto`` takes lokt when it is
found (``$LOKT_BIN``, else ``lokt`` on PATH) and the embedded engine otherwise.

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
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from . import lockfile
from .errors import EngineError, UsageError
from .lockfile import LockData, LockFileError, validate_lock_name

__all__ = [
    "ENGINE_CHOICES",
    "Engine",
    "GuardRequest",
    "GuardResult",
    "Holder",
    "Identity",
    "InsideLock",
    "LoktEngine",
    "StopRequest",
    "find_lock_root",
    "find_lokt_binary",
    "format_duration",
    "make_identity",
    "select_engine",
    "validate_lock_name",
]

ENGINE_CHOICES = ("auto", "lokt", "embedded")

#: How long --wait waits when no timeout is given (lokt's default too).
DEFAULT_WAIT_TIMEOUT = 600.0
#: After forwarding a stop signal, how long the command gets before SIGKILL.
STOP_GRACE = 10.0
#: How often a guard looks at the stop request and the command.
POLL_INTERVAL = 0.025

LAUNCHER = Path(__file__).with_name("launcher.py")


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
    """What happened when we asked to run a command under a lock.

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
    - "skipped": the lock was ours, but ``InsideLock.begin`` said to run nothing.
    - "error": the engine failed before the command started; ``message`` says why.
    ``interrupted`` is the signal number (SIGINT/SIGTERM) of a stop request
    that came while the command ran, forwarded to it unless it had just
    ended, or None.
    """

    state: str
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    holder: Optional[Holder] = None
    message: str = ""
    interrupted: Optional[int] = None

    @property
    def ran(self) -> bool:
        return self.state == "ran"


@dataclass(frozen=True)
class InsideLock:
    """What the caller does itself while the lock is held, around the command,
    with an engine that holds its locks in this process
    (``Engine.holds_lock_in_process``): the run layer writes a shard's
    records here, so that they are written under the lock.

    ``begin()`` runs once the lock is ours; if it returns False nothing runs
    and the guard's state is "skipped". Otherwise ``end(result)`` runs once
    the command has ended, or was stopped before it started, before the lock
    is released.
    """

    begin: Callable[[], bool]
    end: Callable[[GuardResult], None]


@dataclass(frozen=True)
class GuardRequest:
    """One call of ``Engine.guard``, its arguments checked: what an engine's
    ``_guard`` gets (see ``Engine.guard`` for what each one means)."""

    lock_name: str
    command: List[str]
    ttl: float
    wait: bool = False
    timeout: Optional[float] = None
    log: Optional[Path] = None
    env: Optional[Mapping[str, str]] = None
    cwd: Optional[Path] = None
    on_start: Optional[Callable[[int], None]] = None
    stop: Optional[StopRequest] = None
    started: Optional[Callable[[], bool]] = None
    inside: Optional[InsideLock] = None


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
            universal_newlines=True,
        )
    except OSError:
        git = None
    if git is not None and git.returncode == 0 and git.stdout.strip():
        return Path(os.path.normpath(os.path.join(base, git.stdout.strip()))) / "lokt"
    return Path(base) / ".lokt"


def format_duration(seconds: float) -> str:
    """A lokt (Go) duration: "600s", "1.5s". lokt refuses bare numbers."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text or '0'}s"


def effective_ttl(ttl: float) -> float:
    """0 (no TTL) or at least one second: lokt stores whole seconds."""
    if ttl <= 0:
        return 0.0
    return max(float(ttl), 1.0)


def heartbeat_interval(ttl: float) -> float:
    return max(ttl / 2, 0.5)


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


def describe_holder(holder: Holder) -> str:
    """lokt's way of naming a holder: owner (agent: A)@host (pid N)."""
    agent = f" (agent: {holder.agent_id})" if holder.agent_id else ""
    return f"{holder.owner}{agent}@{holder.host} (pid {holder.pid})"


def held_message(name: str, holder: Optional[Holder]) -> str:
    if holder is None:
        return f'lock "{name}" is held by another agent (its lock file is being written)'
    return f'lock "{name}" held by {describe_holder(holder)} for {int(holder.age_sec)}s'


def timeout_message(timeout: Optional[float], message: str) -> str:
    limit = timeout if timeout is not None and timeout > 0 else DEFAULT_WAIT_TIMEOUT
    return f"timeout after {limit:g}s waiting: {message}"


def frozen_message(name: str, holder: Optional[Holder]) -> str:
    if holder is None:
        return f'lock "{name}" is frozen'
    agent = f" (agent: {holder.agent_id})" if holder.agent_id else ""
    return f'lock "{name}" is frozen by {holder.owner}{agent}@{holder.host}'


def ran_result(returncode: int, interrupted: Optional[int] = None, message: str = "") -> GuardResult:
    """A finished command: Popen's negative return code means killed by a signal."""
    if returncode < 0:
        return GuardResult("ran", signal=-returncode, interrupted=interrupted, message=message)
    return GuardResult("ran", exit_code=returncode, interrupted=interrupted, message=message)


def interrupted_before_start(stop: StopRequest) -> GuardResult:
    return GuardResult(
        "interrupted",
        interrupted=stop.signum or signal.SIGINT,
        message="stopped before the command started",
    )


def kill_group(pid: int) -> None:
    """SIGKILL a command's whole process group (it runs in its own session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def open_log(log: Optional[Path], files: ExitStack) -> Optional[BinaryIO]:
    """The command's log, opened for appending (closed with files), or None."""
    if log is None:
        return None
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    return files.enter_context(open(log, "ab"))


def supervise(
    process: "subprocess.Popen[bytes]",
    stop: Optional[StopRequest],
    grace: float,
    send_stop: Callable[[int], None],
    watch: Optional[Callable[[], None]] = None,
) -> Optional[int]:
    """Wait for process to end. Forward a stop request once; SIGKILL its
    process group if it outlives the grace period. Returns the signal of a
    stop request that came while the process ran (forwarded, unless the
    process ended first: a Ctrl-C at the terminal can reach both at once),
    or None. ``watch`` is called at every poll."""
    forwarded: Optional[int] = None
    kill_at: Optional[float] = None
    with exit_waiter(process) as has_exited:
        while not has_exited(POLL_INTERVAL):
            if watch is not None:
                watch()
            if forwarded is None and stop is not None and stop.is_set():
                forwarded = stop.signum or signal.SIGINT
                send_stop(forwarded)
                kill_at = time.monotonic() + grace
            if kill_at is not None and time.monotonic() >= kill_at:
                kill_group(process.pid)
                kill_at = None
    if forwarded is None and stop is not None and stop.is_set():
        return stop.signum or signal.SIGINT
    return forwarded


@contextmanager
def exit_waiter(process: "subprocess.Popen[bytes]") -> Iterator[Callable[[float], bool]]:
    """A function that waits up to a timeout for ``process`` to end, and
    tells whether it has (reaping it).

    On Linux it waits on a pidfd, so it returns the moment the process ends.
    Elsewhere ``Popen.wait`` polls in doubling sleeps, so the end of a short
    command can be noticed some milliseconds late, which every shard pays.
    """
    try:
        pidfd = os.pidfd_open(process.pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # not Linux 5.3+, or already reaped
        yield lambda timeout: _popen_wait(process, timeout)
        return
    try:
        def has_exited(timeout: float) -> bool:
            select.select([pidfd], [], [], timeout)
            return process.poll() is not None

        yield has_exited
    finally:
        os.close(pidfd)


def _popen_wait(process: "subprocess.Popen[bytes]", timeout: float) -> bool:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


class Engine:
    """What the run layer needs from a lock engine.

    Reading lock state (``holder``, ``frozen_by``, ``held_locks``) reads the
    files directly for both engines: it never removes or rewrites anything,
    unlike ``lokt status``, which sweeps the root first.
    """

    name = ""
    #: True when the lock holder is this process (the embedded engine): only
    #: then can ``guard`` run an ``InsideLock`` under the lock.
    holds_lock_in_process = False

    def __init__(self, identity: Identity, root: Path, *, grace: float = STOP_GRACE) -> None:
        self.identity = identity
        self.root = Path(root)
        self.grace = grace

    def describe(self) -> str:
        raise NotImplementedError

    def guard(
        self,
        lock_name: str,
        argv: Sequence[str],
        *,
        ttl: float,
        wait: bool = False,
        timeout: Optional[float] = None,
        log: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[Path] = None,
        on_start: Optional[Callable[[int], None]] = None,
        stop: Optional[StopRequest] = None,
        started: Optional[Callable[[], bool]] = None,
        inside: Optional[InsideLock] = None,
    ) -> GuardResult:
        """Run argv (never through a shell) while holding lock_name.

        ``log``: None lets the command write to our stdout/stderr; a path
        gets both appended. ``on_start(pid)`` is called once the command
        runs. ``timeout`` (with ``wait``): None or <= 0 means 10 minutes.

        ``started``: for a command that leaves its own proof of having
        started (the recorder writes its start record), a check of that
        proof. An engine that cannot see the command start by itself (lokt)
        then runs argv as it is, not wrapped in its launcher, and takes the
        exit code it gets as the command's. Not with ``on_start``.

        ``inside``: steps to take under the lock before and after the
        command (see InsideLock); only where ``holds_lock_in_process``.

        The command runs in its own session, so a Ctrl-C at the terminal
        reaches only us. When ``stop`` is set, its signal is sent once to the
        command (as lokt guard does: to the process started, which passes it
        on to its own children); after ``self.grace`` seconds the command's
        whole process group is killed. The lock is released either way.

        Raises UsageError for a bad lock name, empty argv or missing cwd.
        """
        validate_lock_name(lock_name)
        command = [str(arg) for arg in argv]
        if not command:
            raise UsageError(f"no command to run under lock {lock_name!r}")
        if cwd is not None and not Path(cwd).is_dir():
            raise UsageError(f"working directory does not exist: {cwd}")
        if inside is not None and not self.holds_lock_in_process:
            raise ValueError(f"the {self.name} engine holds its locks in another process: no InsideLock")
        if stop is not None and stop.is_set():
            return interrupted_before_start(stop)
        request = GuardRequest(
            lock_name=lock_name,
            command=command,
            ttl=ttl,
            wait=wait,
            timeout=timeout,
            log=log,
            env=env,
            cwd=cwd,
            on_start=on_start,
            stop=stop,
            started=started,
            inside=inside,
        )
        return self._guard(request)

    def _guard(self, request: GuardRequest) -> GuardResult:
        """The engine's own part of ``guard``."""
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


class StartWatcher:
    """Notice the launcher's ``started`` file and report the pid once."""

    def __init__(self, path: Path, on_start: Optional[Callable[[int], None]]) -> None:
        self.path = path
        self.on_start = on_start
        self.started = False

    def check(self) -> None:
        if self.started:
            return
        try:
            pid = int(self.path.read_text())
        except (OSError, ValueError):
            return
        self.started = True
        if self.on_start is not None:
            self.on_start(pid)


class LoktEngine(Engine):
    """``lokt guard`` runs the command; lokt owns the lock, its renewal and release.

    The command is wrapped in ``launcher.py``, whose ``started``/``ended``
    files say whether it ran and how it ended: lokt's exit code 2 cannot tell
    "held" from "the command exited 2", and 255 hides the signal. A command
    that proves its own start (``started``, the recorder) runs unwrapped,
    which saves starting a second Python per shard.
    """

    name = "lokt"

    def __init__(self, identity: Identity, root: Path, binary: str, *, grace: float = STOP_GRACE) -> None:
        super().__init__(identity, root, grace=grace)
        self.binary = binary
        self._version: Optional[str] = None

    def describe(self) -> str:
        if self._version is None:
            try:
                output = subprocess.run(
                    [self.binary, "version"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    universal_newlines=True,
                    timeout=10,
                ).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                output = ""
            self._version = output.splitlines()[0] if output else "lokt (version unknown)"
        return f"{self._version} at {self.binary}"

    def guard_command(self, lock_name: str, ttl: float, wait: bool, timeout: Optional[float]) -> List[str]:
        """``lokt guard`` with its flags before the name (Go's flag parsing
        stops at the first non-flag word) and durations with units."""
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
        if request.started is not None and request.on_start is not None:
            raise ValueError("on_start needs the launcher: not with started")
        state_dir = Path(tempfile.mkdtemp(prefix="lokt-tasks-"))
        try:
            return self._guard_in(state_dir, request)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)

    def _guard_in(self, state_dir: Path, request: GuardRequest) -> GuardResult:
        lock_name, log, started = request.lock_name, request.log, request.started
        full_command = self.guard_command(lock_name, request.ttl, request.wait, request.timeout)
        if started is None:
            full_command += [sys.executable or "python3", "-I", "-S", str(LAUNCHER), str(state_dir)]
            full_command.append("1" if log is not None else "0")
        full_command += request.command
        lokt_stderr = state_dir / "lokt-stderr"
        watcher = StartWatcher(state_dir / "started", request.on_start)
        with ExitStack() as files:
            try:
                stdout = open_log(log, files)
            except OSError as error:
                return GuardResult("error", message=f"cannot open log {log}: {error.strerror or error}")
            # With a log, lokt's own messages are kept apart from the command's output.
            stderr = files.enter_context(open(lokt_stderr, "wb")) if log is not None else None
            try:
                process = subprocess.Popen(
                    full_command,
                    stdout=stdout,
                    stderr=stderr,
                    env=self.child_env(request.env),
                    cwd=request.cwd,
                    start_new_session=True,
                )
            except OSError as error:
                return GuardResult("error", message=f"cannot run {self.binary}: {error.strerror or error}")
            try:
                forwarded = supervise(process, request.stop, self.grace, process.send_signal, watcher.check)
                watcher.check()
            except BaseException:
                kill_group(process.pid)
                process.wait()
                self._remove_leftover(lock_name, process.pid)
                raise
        if process.returncode < 0:
            # lokt guard was killed: what it ran would go on, no longer locked.
            kill_group(process.pid)
            self._remove_leftover(lock_name, process.pid)
        lokt_message = _read_text(lokt_stderr)
        ended = state_dir / "ended"
        if started is None:
            ran = watcher.started or ended.exists()
        else:  # lokt exits 0 only with the command's own 0
            ran = process.returncode == 0 or started()
        if ran:
            if lokt_message and log is not None:
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(lokt_message + "\n")
            return self._ran(ended, process.returncode, forwarded)
        if forwarded is not None:
            return GuardResult("interrupted", interrupted=forwarded, message="stopped before the command started")
        message = _last_error_line(lokt_message)
        if process.returncode == 2:
            return self._refused(lock_name, message, request.wait, request.timeout)
        if process.returncode < 0:
            message = f"lokt guard was killed by signal {-process.returncode} before the command started"
        elif not message:
            message = f"lokt guard failed with exit code {process.returncode} before the command started"
        return GuardResult("error", message=message)

    def _ran(self, ended: Path, returncode: int, forwarded: Optional[int]) -> GuardResult:
        """How the command ended, from the launcher; from lokt if it could not say."""
        text = _read_text(ended)
        if text:
            outcome = json.loads(text)
            if outcome.get("signal"):
                return GuardResult("ran", signal=int(outcome["signal"]), interrupted=forwarded)
            return GuardResult("ran", exit_code=int(outcome["exit_code"]), interrupted=forwarded)
        return ran_result(returncode, forwarded)

    def _refused(self, lock_name: str, lokt_message: str, wait: bool, timeout: Optional[float]) -> GuardResult:
        """Exit 2 and no sign of the command: held or frozen, said by the files.

        With --wait, lokt only gives up with 2 when frozen or timed out.
        """
        freeze = self.frozen_by(lock_name)
        if "frozen" in lokt_message or (not lokt_message and freeze is not None):
            return GuardResult("frozen", holder=freeze, message=frozen_message(lock_name, freeze))
        holder = self.holder(lock_name)
        message = held_message(lock_name, holder)
        if wait:
            message = timeout_message(timeout, message)
        return GuardResult("held", holder=holder, message=message)

    def _remove_leftover(self, lock_name: str, lokt_pid: int) -> None:
        """lokt was killed before it could release: remove its lock, ours only."""
        path = lockfile.lock_path(self.root, lock_name)
        try:
            lock = lockfile.read_lock(path)
        except (OSError, LockFileError):
            return
        if lock.owner == self.identity.owner and lock.pid == lokt_pid and lock.host == self.identity.host:
            lockfile.remove_file(path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _last_error_line(text: str) -> str:
    """lokt's one-line reason ("error: ..."), without the prefix."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: ") :]
    return lines[-1] if lines else ""


def find_lokt_binary(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """$LOKT_BIN if set (it must be an executable file), else lokt on PATH."""
    environ = os.environ if env is None else env
    configured = environ.get("LOKT_BIN", "")
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return os.path.abspath(configured)
        raise EngineError(f"LOKT_BIN={configured} is not an executable file")
    return shutil.which("lokt", path=environ.get("PATH"))


def select_engine(choice: str, identity: Identity, *, root: Optional[Path] = None) -> Engine:
    """The engine for choice "auto", "lokt" or "embedded", on one lock root."""
    if choice not in ENGINE_CHOICES:
        raise UsageError(f"unknown engine {choice!r}: use one of " + ", ".join(ENGINE_CHOICES))
    lock_root = Path(root) if root is not None else find_lock_root(Path.cwd())
    if choice in ("auto", "lokt"):
        binary = find_lokt_binary()
        if binary is not None:
            return LoktEngine(identity, lock_root, binary)
        if choice == "lokt":
            raise EngineError(
                'engine "lokt" chosen but no lokt binary found (set LOKT_BIN or put lokt on PATH),'
                ' or use engine = "embedded"'
            )
    # Imported here: the embedded engine is built on this module.
    from .embedded import EmbeddedEngine

    return EmbeddedEngine(identity, lock_root)
