"""Exit codes and the errors that carry them: a public contract (README.md), so that a
script can tell "the tests failed" from "another agent holds this shard" by the code."""

import errno

PASSED = 0
#: lokt-tasks itself failed: an unexpected error, or invoke's own parser rejected
#: the command line (invoke exits 1 for an unknown task or flag).
INTERNAL = 1
USAGE = 2  #: Bad shards.toml, bad command-line value, unknown task.
#: At least one shard ran and failed: its command (non-zero exit or signal), or its
#: tests (a failing test in its JUnit report, a flaky one with ``flaky = "fail"``).
FAILED = 3
#: Not every shard passed under the current plan: missing, running, crashed,
#: interrupted, outdated or corrupt records.
INCOMPLETE = 4
HELD = 5  #: The shard's lock is held (or frozen) by another agent; nothing ran.
#: The lock engine or storage failed: lokt missing or erroring, the lock root, the
#: results directory or a log unusable (read-only, full, not a regular file, a symlink).
ENGINE = 6
#: The environment cannot run a task as shards.toml writes it: ``{python} -m MODULE``
#: names a module the interpreter running lokt-tasks cannot import. Nothing ran.
SETUP = 7
#: ``--failed-tests``: the failing tests cannot be given back to the task's command
#: (a test without a file for a command that takes whole items). Nothing ran.
CANNOT_RERUN = 8
#: Stopped by SIGINT / SIGTERM (128 + signal number, as shells do).
INTERRUPTED_SIGINT = 130
INTERRUPTED_SIGTERM = 143


class LoktTasksError(Exception):
    """An error meant for the user: one line, and the exit code to leave with."""

    exit_code = INTERNAL

    def __init__(self, message: str, exit_code: "int | None" = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(LoktTasksError):
    """shards.toml is unreadable or invalid. The message names file and key."""

    exit_code = USAGE


class UsageError(LoktTasksError):
    """A command-line value is wrong (unknown task, --id out of range...)."""

    exit_code = USAGE


class EngineError(LoktTasksError):
    """The lock engine could not do its job."""

    exit_code = ENGINE


class StorageError(LoktTasksError):
    """A file or directory we read or write is unusable. Names the path."""

    exit_code = ENGINE


class SetupError(LoktTasksError):
    """This environment cannot run the task (``{python}`` lacks its runner)."""

    exit_code = SETUP


def storage_error(error: OSError) -> LoktTasksError:
    """The one-line error for an OSError on a path: a UsageError when the path is too
    long (a task name or run key made it so), else a StorageError."""
    where = error.filename if error.filename is not None else "a file"
    if error.errno == errno.ENAMETOOLONG:
        return UsageError(f"{where}: path too long (shorten the task name or the run key)")
    return StorageError(f"{where}: {error.strerror or error}")


class RerunError(LoktTasksError):
    """The failed tests of a run cannot be run again by the task's command."""

    exit_code = CANNOT_RERUN
