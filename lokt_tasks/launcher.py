"""Run a command inside ``lokt guard`` and leave proof of how it went.

``lokt guard`` exits 2 both when the lock is held and when the command itself
exits 2, and 255 for every command killed by a signal. So the lokt engine
does not give lokt the command itself but this script, which writes
``STATE_DIR/started`` (the command's pid) once the command runs, and
``STATE_DIR/ended`` (its exit code or signal) when it ends. A ``started`` or
``ended`` file is the proof that the command ran, whatever lokt's exit code.

Usage: python launcher.py STATE_DIR MERGE_STDERR ARGV...
(MERGE_STDERR "1": the command's stderr goes to its stdout, i.e. the log.)

It runs as a plain script, without the package on sys.path, so it imports
nothing but the standard library; and as it starts once per shard, only the
modules it cannot do without (not subprocess or json, which cost more than
the rest of its start-up). SIGINT, SIGTERM and SIGHUP reaching it (lokt
forwards the first two) are passed on to the command.
"""
import os
import signal
import sys

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Signals Python ignores for itself; the command gets their default back.
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


class Forwarder:
    """Pass signals to the command; hold them while it is not started yet."""

    def __init__(self):
        self.pid = None
        self.ended = False
        self.pending = []

    def __call__(self, signum, frame):
        if self.pid is None:
            self.pending.append(signum)
        else:
            self.send(signum)

    def attach(self, pid):
        self.pid = pid
        for signum in self.pending:
            self.send(signum)

    def send(self, signum):
        if self.ended:  # reaped: its pid may belong to another process now
            return
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass


def write_atomically(path, text):
    temp = path + ".tmp"
    with open(temp, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


def end_like(returncode):
    """Leave with the command's exit code, or die of the command's signal."""
    if returncode >= 0:
        return returncode
    signum = -returncode
    try:
        signal.signal(signum, signal.SIG_DFL)
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), signum)
    return 128 + signum


def main(argv):
    state_dir, merge_stderr, command = argv[0], argv[1] == "1", argv[2:]
    forwarder = Forwarder()
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forwarder)
    ended = os.path.join(state_dir, "ended")
    file_actions = [(os.POSIX_SPAWN_DUP2, 1, 2)] if merge_stderr else []
    try:
        pid = os.posix_spawnp(command[0], command, os.environ, file_actions=file_actions, setsigdef=RESTORED_SIGNALS)
    except OSError as error:
        code = 127 if isinstance(error, FileNotFoundError) else 126
        reason = "command not found" if code == 127 else error.strerror
        stream = sys.stdout if merge_stderr else sys.stderr
        print(f"lokt-tasks: {command[0]}: {reason}", file=stream, flush=True)
        write_atomically(ended, '{"exit_code": %d}' % code)
        return code
    write_atomically(os.path.join(state_dir, "started"), str(pid))
    forwarder.attach(pid)
    _, status = os.waitpid(pid, 0)
    forwarder.ended = True
    returncode = os.waitstatus_to_exitcode(status)
    if returncode >= 0:
        write_atomically(ended, '{"exit_code": %d}' % returncode)
    else:
        write_atomically(ended, '{"signal": %d}' % -returncode)
    return end_like(returncode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
