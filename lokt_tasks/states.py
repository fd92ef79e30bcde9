"""The words a shard's state is told in, the policies built on them, and their colours.

One ``str`` enum per layer that looks at a shard, whose values are the words written to
records and JSON and printed; a word means the same in each. ``attempt.py`` writes record
outcomes as literals (``tests/test_states.py`` pins them). The policy sets name decisions
taken in several places (a command, its help, the docs), so that they cannot drift apart.
Standard library only: the attempt process, started without site-packages, imports it
(through ``junit``) to read a shard's JUnit report.
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType, SimpleNamespace
from typing import Iterable, Mapping, Tuple, TypeVar

# NOTE: the ANSI codes colorama's Fore and Style hold (tests/test_states.py compares them),
# written out so that this module needs the standard library only (see the docstring).
Fore = SimpleNamespace(GREEN="\x1b[32m", RED="\x1b[31m", YELLOW="\x1b[33m", CYAN="\x1b[36m")
Style = SimpleNamespace(DIM="\x1b[2m")


class Word(str, Enum):
    """A state whose value is the plain word it is written and printed as."""

    # NOTE: str()/format() of a str-mixin enum changed between Python 3.10, 3.11 and
    # 3.12 ("Class.MEMBER", or a warning); both defined here give the plain word on each.
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class GuardState(Word):
    """What the lock engine did with a request to run a command under a lock."""

    RAN = "ran"  #: The command started; its exit code or signal tells how it ended.
    HELD = "held"  #: Another agent holds the lock. Nothing ran.
    FROZEN = "frozen"  #: The lock name is frozen. Nothing ran.
    INTERRUPTED = "interrupted"  #: A stop request came before the command started. Nothing ran.
    SKIPPED = "skipped"  #: The lock was ours, but the shard was already done. Nothing ran.
    ERROR = "error"  #: The engine failed before the command started.


class RecordOutcome(Word):
    """What a shard's record says. "running" is the start record."""

    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  #: Stopped by SIGINT/SIGTERM before it finished.
    ERROR = "error"  #: The lock engine failed before the command could run.
    #: Ran past the task's ``timeout`` and was stopped (its process group); ``message``
    #: names the limit. Added after the first records: older readers call it corrupt.
    TIMED_OUT = "timed-out"
    #: The shard's lock is held; its attempt waits for a slot or a resource (leases.py).
    WAITING = "waiting"


class TestOutcome(Word):
    """How one JUnit testcase ended, as a report says it."""

    __test__ = False  # NOTE: a name pytest would otherwise try to collect as tests

    PASSED = "passed"
    FAILED = "failed"  #: An assertion failed (JUnit ``<failure>``).
    ERROR = "error"  #: The test could not run to its end (JUnit ``<error>``).
    SKIPPED = "skipped"  #: Skipped, or an expected failure (JUnit ``<skipped>``).


class RunOutcome(Word):
    """What one agent's run of a shard came to, from that agent's point of view."""

    PASSED = "passed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    HELD = "held"  #: Another agent holds the shard's lock. Nothing ran.
    FROZEN = "frozen"  #: The shard's lock is frozen. Nothing ran.
    ERROR = "error"  #: The engine failed, or a record could not be written. Nothing ran.
    DONE = "done"  #: Another agent had already finished the shard under this plan. Nothing ran.
    LOST = "lost"  #: The attempt died before it wrote the final record (the start record stays).
    TIMED_OUT = "timed-out"  #: The command ran past the task's timeout and was stopped.


class Progress(Word):
    """What the live board shows for a shard that has no run outcome yet."""

    #: Not started by this agent yet, or (said in the detail) waiting for a slot or a resource.
    WAITING = "waiting"
    RUNNING = "running"  #: Started by this agent: the engine was asked for the lock.


class ShardState(Word):
    """The state ``verify`` gives one planned shard, in the order the README explains them."""

    PASSED = "passed"  #: The record says passed, for this plan (same fingerprint).
    FAILED = "failed"  #: The command failed (exit code or signal), or the engine before it ran.
    TIMED_OUT = "timed-out"  #: The command ran past the task's timeout and was stopped.
    RUNNING = "running"  #: A live agent holds the shard's lock, whatever the record says.
    CRASHED = "crashed"  #: A start record for this plan exists but nobody holds the lock any more.
    INTERRUPTED = "interrupted"  #: The run was stopped by SIGINT/SIGTERM before it finished.
    MISSING = "missing"  #: No record at all, and nobody running it.
    OUTDATED = "outdated"  #: A record exists but for another plan (its fingerprint differs).
    CORRUPT = "corrupt"  #: The record file could not be read.
    #: A live agent holds the shard's lock and waits for a slot or a resource to start it.
    WAITING = "waiting"


class OverallVerdict(Word):
    """The verdict on a whole run."""

    PASSED = "passed"  #: Every shard passed (a plan with no shards is not a pass).
    FAILED = "failed"  #: Some shard failed, even while others still run.
    INCOMPLETE = "incomplete"  #: Neither: some shard has not passed yet.


#: Record outcomes that are a pass: shard-all skips such a shard unless --force.
PASSED_OUTCOMES = frozenset({RecordOutcome.PASSED})
#: Record outcomes that are final under a plan: queue mode (``--id next``) skips such a
#: shard, and leaves when every shard has one. A failure is an outcome, not a crash.
FINISHED_OUTCOMES = frozenset({RecordOutcome.PASSED, RecordOutcome.FAILED, RecordOutcome.TIMED_OUT})
#: Record outcomes of an attempt that has not ended: what its agent wrote once it held the
#: lock (waiting for its leases, then running its command).
STARTED_OUTCOMES = frozenset({RecordOutcome.RUNNING, RecordOutcome.WAITING})
#: Run outcomes for which the command ran (and has a final record).
RAN_OUTCOMES = frozenset(
    {RunOutcome.PASSED, RunOutcome.FAILED, RunOutcome.INTERRUPTED, RunOutcome.TIMED_OUT}
)
#: Run outcomes that fail a run: the command failed or ran past its timeout (exit 3).
FAILED_OUTCOMES = frozenset({RunOutcome.FAILED, RunOutcome.TIMED_OUT})
#: Run outcomes for which the lock was not ours, so nothing ran.
LOCKED_OUT = frozenset({RunOutcome.HELD, RunOutcome.FROZEN})
#: Run outcomes whose log tail shard-all shows as soon as the shard ends.
SHOW_LOG_OUTCOMES = frozenset(
    {RunOutcome.FAILED, RunOutcome.TIMED_OUT, RunOutcome.LOST, RunOutcome.ERROR}
)
#: Shard states that ``shard-all --failed`` runs again: all but a pass and a live run.
RERUN_BY_FAILED = frozenset(ShardState) - {
    ShardState.PASSED,
    ShardState.RUNNING,
    ShardState.WAITING,
}
#: Shard states that ``verify --wait`` waits on: they may still change by themselves.
WAITED_ON = frozenset({ShardState.RUNNING, ShardState.MISSING, ShardState.WAITING})
#: Shard states whose log the verdict table points to.
SHOW_LOG_STATES = frozenset(
    {ShardState.FAILED, ShardState.TIMED_OUT, ShardState.CRASHED, ShardState.INTERRUPTED}
)
#: Shard states that fail the overall verdict (exit 3), even while other shards run.
FAILED_STATES = frozenset({ShardState.FAILED, ShardState.TIMED_OUT})
#: Shard states that make the overall verdict incomplete (neither a pass nor a failure).
INCOMPLETE_STATES = frozenset(ShardState) - {ShardState.PASSED} - FAILED_STATES
#: Test outcomes that are a failure: the tests ``retries`` and ``--failed-tests`` run again.
FAILING_TESTS = frozenset({TestOutcome.FAILED, TestOutcome.ERROR})

W = TypeVar("W", bound=Word)


def ordered(states: Iterable[W]) -> Tuple[W, ...]:
    """``states`` in the order their vocabulary declares them (for text and argv)."""
    return tuple(sorted(states, key=lambda state: list(type(state).__members__).index(state.name)))


#: Warnings (the plan's) are painted like a state that needs a look.
WARNING = "warning"

#: The colour of every word above, wherever shown: green a pass; red a failure, or something
#: broken a human must look at; yellow not finished or not run; cyan in progress; dim not started.
_WORDS_BY_COLOR = (
    (Fore.GREEN, "passed done"),
    (Fore.RED, "failed timed-out crashed corrupt error lost"),
    (Fore.YELLOW, f"held frozen interrupted missing outdated incomplete {WARNING}"),
    (Fore.CYAN, "running"),
    (Style.DIM, "waiting"),
)
COLORS: Mapping[str, str] = MappingProxyType(
    {word: color for color, words in _WORDS_BY_COLOR for word in words.split()}
)
