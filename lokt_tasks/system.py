"""What lokt-tasks asks of the operating system, defined once. The attempt
and watchdog processes use it too, so it imports at module level only what
Python loads at start-up.
"""

from __future__ import annotations

import os
import stat
import sys
import time

try:
    import _signal  # type: ignore[import-not-found]  # wrapped in enums by ``signal``: cheap
except ImportError:  # not CPython
    import signal as _signal

SIGHUP, SIGINT, SIGTERM, SIGKILL = _signal.SIGHUP, _signal.SIGINT, _signal.SIGTERM, _signal.SIGKILL
#: The signals that ask a run to stop: Ctrl-C, and what CI systems send.
STOP_SIGNALS = (SIGINT, SIGTERM)
#: Signals Python ignores for itself; a command gets their default back.
RESTORED_SIGNALS = (_signal.SIGPIPE, _signal.SIGXFSZ)

#: The shell's exit codes for a command that could not start.
NOT_FOUND = 127
NOT_EXECUTABLE = 126


def _signalled(send, target: int, signum: int) -> bool:
    """``send(target, signum)``; False if there is no such process (EPERM: there is)."""
    try:
        send(target, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def pid_alive(pid: int) -> bool:
    """kill(pid, 0), as lokt checks a holder (a pid <= 0 is never dead for lokt)."""
    return pid <= 0 or _signalled(os.kill, pid, 0)


def is_zombie(pid: int) -> bool:
    """Exited but not yet reaped (Linux only): lokt calls it alive; in containers, for seconds."""
    fields = _linux_stat_fields(pid) if sys.platform.startswith("linux") else []
    return bool(fields) and fields[0] in (b"Z", b"X")


def process_gone(pid: int) -> bool:
    """Dead or a zombie: a process that will run no more code."""
    return not pid_alive(pid) or (pid > 0 and is_zombie(pid))


def process_start_time(pid: int) -> int | None:
    """What lokt stores as ``pid_start_ns``, or None: field 22 of /proc/PID/stat
    (clock ticks since boot), or p_starttime from sysctl on macOS (ns)."""
    if sys.platform.startswith("linux"):
        try:
            return int(_linux_stat_fields(pid)[19])
        except (IndexError, ValueError):
            return None
    if sys.platform == "darwin":
        return _darwin_start_time(pid)
    return None


def _linux_stat_fields(pid: int) -> list:
    """/proc/PID/stat after the command name (which may hold ")"); [] if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return []
    return data[data.rfind(b")") + 2 :].split()


def _darwin_start_time(pid: int) -> int | None:
    import ctypes  # macOS only, and slow to import
    from ctypes import POINTER, c_int, c_size_t, c_uint, c_void_p

    try:
        sysctl = ctypes.CDLL(None, use_errno=True).sysctl
        sysctl.argtypes = [POINTER(c_int), c_uint, c_void_p, POINTER(c_size_t), c_void_p, c_size_t]
        sysctl.restype = c_int
        mib = (ctypes.c_int * 4)(1, 14, 1, pid)  # CTL_KERN, KERN_PROC, KERN_PROC_PID
        size = ctypes.c_size_t(0)
        if sysctl(mib, 4, None, ctypes.byref(size), None, 0) != 0 or size.value == 0:
            return None
        buffer = ctypes.create_string_buffer(size.value)
        if sysctl(mib, 4, buffer, ctypes.byref(size), None, 0) != 0 or size.value < 16:
            return None
    except (OSError, AttributeError, ctypes.ArgumentError):
        return None
    # kinfo_proc starts with p_starttime, a timeval: a 64-bit tv_sec, then a
    # 32-bit tv_usec and 4 bytes of padding, which lokt does not read either.
    seconds = int.from_bytes(buffer.raw[0:8], "little", signed=True)
    microseconds = int.from_bytes(buffer.raw[8:12], "little", signed=True)
    return seconds * 1_000_000_000 + microseconds * 1_000


def signal_group(group: int, signum: int) -> bool:
    """Send ``signum`` to a process group; False once it has no process left."""
    return _signalled(os.killpg, group, signum)


def group_alive(group: int) -> bool:
    """Whether process group ``group`` has a process left, zombies not counted on Linux."""
    if not signal_group(group, 0):
        return False
    if not sys.platform.startswith("linux"):
        return True
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return True
    stats = (_linux_stat_fields(pid) for pid in pids)  # state, ppid, pgrp, ...
    return any(len(f) > 2 and f[2] == b"%d" % group and f[0] not in (b"Z", b"X") for f in stats)


def stop_groups(groups: list, grace: float) -> bool:
    """SIGTERM ``groups``, SIGKILL what is left ``grace`` s later; True once none is left."""
    for signum, limit in ((SIGTERM, grace), (SIGKILL, 5.0)):
        for group in groups:
            signal_group(group, signum)
        deadline = time.monotonic() + limit
        while (groups := [g for g in groups if group_alive(g)]) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not groups:
            return True
    return False


def on_signals(signums: tuple, handler=None) -> dict:
    """Handle ``signums`` with ``handler`` (None: ignore); the previous handlers."""
    action = _signal.SIG_IGN if handler is None else handler
    return {signum: _signal.signal(signum, action) for signum in signums}


def restore_signals(previous: dict, *, ignore: bool = False) -> None:
    """Put back the handlers :func:`on_signals` returned (or ignore the signals)."""
    for signum, handler in previous.items():
        _signal.signal(signum, _signal.SIG_IGN if ignore else handler)


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9: how records name the signal that ended a command."""
    import signal  # the full module, with names: only when a signal is named

    try:
        return signal.Signals(signum).name
    except ValueError:
        return "SIG%d" % signum


def signal_number(name: str) -> int | None:
    """9 for ``SIGKILL`` (or ``SIG9``), the inverse of :func:`signal_name`."""
    import signal

    try:
        return int(signal.Signals[name])
    except KeyError:
        digits = name[3:] if name.startswith("SIG") else ""
        return int(digits) if digits.isdigit() else None


class Child:
    """A command started by :func:`start`: its pid (also its process group's)
    and, once reaped, its return code (-N: killed by signal N)."""

    def __init__(self, pid: int, *, keep: object = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        # NOTE: a Popen must live until we reaped its pid: once collected, any
        # thread that starts a process may reap it first, losing its status.
        self._popen = keep

    def wait(self, timeout: float | None = None) -> int | None:
        """The return code; None if still running after ``timeout`` seconds."""
        if timeout is None:
            return self._reap(0)
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while self._reap(os.WNOHANG) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.025)
        return self.returncode

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self._popen is not None:
                    self._popen.returncode = self.returncode  # type: ignore[attr-defined]
        return self.returncode

    def send(self, signum: int) -> None:
        """Signal the command itself, never once reaped (the pid may be reused)."""
        if self.returncode is None:
            _signalled(os.kill, self.pid, signum)

    def kill_group(self, signum: int = SIGKILL) -> None:
        signal_group(self.pid, signum)


def start(
    argv: list,
    *,
    stdout: int | None = None,
    stderr: int | None = None,
    env: dict | None = None,
    cwd: str | None = None,
    new_session: bool = True,
    pass_fds: tuple = (),
) -> Child:
    """Start ``argv`` (no shell) leading a process group, and a session unless
    ``new_session`` is False; ``stdout``: a descriptor for stdout and stderr
    (None: ours), ``stderr``: one for stderr alone; ``pass_fds``: descriptors
    the command inherits as they are (only with ``cwd``). Raises OSError when
    it cannot start (:func:`not_started`)."""
    err = stdout if stderr is None else stderr
    # NOTE: posix_spawn is cheaper than importing subprocess, but cannot
    # change directory; only the agent asks for ``cwd``, with subprocess loaded.
    if cwd is None:
        actions = [] if stdout is None else [(os.POSIX_SPAWN_DUP2, stdout, 1)]
        actions += [] if err is None else [(os.POSIX_SPAWN_DUP2, err, 2)]
        group = {"setsid": True} if new_session else {"setpgroup": 0}
        environ = os.environ if env is None else env
        pid = os.posix_spawnp(
            argv[0], argv, environ, file_actions=actions, setsigdef=RESTORED_SIGNALS, **group
        )
        return Child(pid)
    import subprocess

    assert new_session, "a command in a directory of its own starts a session of its own"
    process = subprocess.Popen(
        argv,
        stdout=stdout,
        stderr=subprocess.STDOUT if stderr is None and stdout is not None else stderr,
        env=env,
        cwd=cwd,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    return Child(process.pid, keep=process)


def not_started(error: OSError) -> tuple:
    """A command that could not start ends as under a shell: (127, "command
    not found") when there is no such program, else (126, the OS's reason)."""
    if isinstance(error, FileNotFoundError):
        return NOT_FOUND, "command not found"
    return NOT_EXECUTABLE, error.strerror or str(error)


def bootstrap(module: str) -> list:
    """The argv that runs ``lokt_tasks.<module>.main(argv)`` in an isolated
    Python (``-I -S``), from cached bytecode, with the package's directory
    last on sys.path so that it cannot hide a standard module."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys; sys.path.append(%r); from lokt_tasks.%s import main; "
        "sys.exit(main(sys.argv[1:]))" % (package_parent, module)
    )
    return [sys.executable or "python3", "-I", "-S", "-c", code]


def open_file(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` for the files we keep: a regular file's descriptor, or
    OSError saying what ``path`` is (never a FIFO, never a symbolic link)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as error:
        import errno  # on failure only: the attempt process starts without it

        if error.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise OSError(
                error.errno, "is a symbolic link, not followed", os.fspath(path)
            ) from None
        if error.errno == errno.ENXIO:  # a FIFO opened for writing, with no reader
            raise OSError(error.errno, "is not a regular file", os.fspath(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "is not a regular file", os.fspath(path))  # EINVAL
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def untrusted_directory(path: str | os.PathLike) -> str | None:
    """Why another user could write under directory ``path``, or None, as ssh
    and git judge it: it (or its nearest existing parent) must be ours or
    root's, and no directory on the way writable by all unless sticky. One
    writable by our group is a team's choice (umask 002), and allowed."""
    current, owner_checked = os.path.abspath(path), False
    while True:
        try:
            status = os.stat(current)
        except FileNotFoundError:
            status = None
        except OSError as error:
            return "%s: %s" % (current, error.strerror)
        if status is not None:
            if not owner_checked and status.st_uid not in (os.getuid(), 0):
                return "%s is owned by another user (uid %d)" % (current, status.st_uid)
            owner_checked = True
            if status.st_mode & 0o002 and not status.st_mode & stat.S_ISVTX:
                mode = stat.S_IMODE(status.st_mode)
                return "%s is writable by every user (mode %04o)" % (current, mode)
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def read_file(path: str | os.PathLike, limit: int = -1) -> bytes:
    """The bytes of a regular file (see :func:`open_file`), at most ``limit``."""
    with open(open_file(path), "rb") as handle:
        return handle.read(limit)


def write_atomically(
    path: str | os.PathLike,
    data: bytes,
    *,
    mode: int | None = 0o644,
    prefix: str | None = None,
    durable: bool = True,
    exclusive: bool = False,
) -> None:
    """Replace ``path`` with ``data``, old or new for readers even after a crash
    (a temporary file, ``prefix`` or ``.<name>.``, fsynced, renamed). ``mode``
    None keeps 0600; ``durable`` False skips fsyncs; ``exclusive`` only creates
    (else FileExistsError)."""
    directory, name = os.path.split(os.fspath(path))
    prefix = prefix or "." + name + "."
    temporary = os.path.join(directory, prefix + os.urandom(6).hex() + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        if exclusive:
            os.link(temporary, path)
            os.unlink(temporary)
        else:
            os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if durable:
        fsync_directory(directory or ".")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a create, rename or remove in ``directory`` survive a crash."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename happened all the same


def utc_now() -> str:
    """Now as RFC 3339 UTC with microseconds: ``2024-05-01T12:00:00.123456Z``."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return stamp + ".%06dZ" % (nanoseconds // 1000)
