"""The words a shard's state is told in, the policies built on them, and their colours.

A shard's state is told in several vocabularies, one per layer that looks at it:

- :class:`GuardState`: what the lock engine did with a request to run a command
  under a lock (``engine.GuardResult.state``);
- :class:`RecordOutcome`: what a shard's record says (``outcome`` in its JSON file);
- :class:`RunOutcome`: what one agent's run of a shard came to (``run.ShardOutcome``);
- :class:`Progress`: what the live board shows before a run has an outcome;
- :class:`ShardState`: the state ``verify`` gives one planned shard;
- :class:`OverallVerdict`: the state ``verify`` gives the whole run.

Every member is a ``str`` whose value is the word written to records and JSON
and printed, so members compare equal to those words, and ``str()``, f-strings,
``%s`` and ``json`` all give the plain word. A word means the same in every
vocabulary it appears in ("passed" is a pass wherever it is written), so one
colour map serves them all.

The attempt process (``attempt.py``) starts once per shard without
site-packages and imports next to nothing, so it writes record outcomes as
literals rather than import this module; ``tests/test_states.py`` pins the
values it relies on.

The policy sets below name the decisions that are taken on these words in more
than one place (a command, its help text, the docs), so that they cannot drift
apart. They are frozensets; :func:`ordered` lists one in the order its states
are declared, for text and command lines.
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType
from typing import FrozenSet, Iterable, Mapping, Tuple, TypeVar

from colorama import Fore, Style


class Word(str, Enum):
    """A state whose value is the plain word it is written and printed as."""

    # NOTE: str()/format() of a str-mixin enum changed between Python 3.10,
    # 3.11 and 3.12 (the value, "Class.MEMBER", or a deprecation warning).
    # Defining both here keeps every printed word and f-string the plain
    # value on every supported version.
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class GuardState(Word):
    """What the lock engine did with a request to run a command under a lock."""

    #: The command started; its exit code or signal tells how it ended.
    RAN = "ran"
    #: Another agent holds the lock. Nothing ran.
    HELD = "held"
    #: The lock name is frozen. Nothing ran.
    FROZEN = "frozen"
    #: A stop request came before the command started. Nothing ran.
    INTERRUPTED = "interrupted"
    #: The lock was ours, but the shard was already done. Nothing ran.
    SKIPPED = "skipped"
    #: The engine failed before the command started.
    ERROR = "error"


class RecordOutcome(Word):
    """What a shard's record says. "running" is the start record."""

    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    #: Stopped by SIGINT/SIGTERM before it finished.
    INTERRUPTED = "interrupted"
    #: The lock engine failed before the command could run.
    ERROR = "error"


class RunOutcome(Word):
    """What one agent's run of a shard came to, from that agent's point of view."""

    PASSED = "passed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    #: Another agent holds the shard's lock. Nothing ran.
    HELD = "held"
    #: The shard's lock is frozen. Nothing ran.
    FROZEN = "frozen"
    #: The engine failed, or a record could not be written. Nothing ran.
    ERROR = "error"
    #: Another agent had already finished the shard under this plan. Nothing ran.
    DONE = "done"
    #: The attempt died before it wrote the final record (the start record stays).
    LOST = "lost"


class Progress(Word):
    """What the live board shows for a shard that has no run outcome yet."""

    #: Not started by this agent yet.
    WAITING = "waiting"
    #: Started by this agent: the engine was asked for the lock.
    RUNNING = "running"


class ShardState(Word):
    """The state ``verify`` gives one planned shard, in the order the README explains them."""

    #: The record says passed, for this plan (same fingerprint).
    PASSED = "passed"
    #: The command failed (exit code or signal), or the engine failed before it ran.
    FAILED = "failed"
    #: A live agent holds the shard's lock, whatever the record says.
    RUNNING = "running"
    #: A start record for this plan exists but nobody holds the lock any more.
    CRASHED = "crashed"
    #: The run was stopped by SIGINT/SIGTERM before it finished.
    INTERRUPTED = "interrupted"
    #: No record at all, and nobody running it.
    MISSING = "missing"
    #: A record exists but for another plan (its fingerprint differs).
    OUTDATED = "outdated"
    #: The record file could not be read.
    CORRUPT = "corrupt"


class OverallVerdict(Word):
    """The verdict on a whole run."""

    #: Every shard passed (a plan with no shards is not a pass).
    PASSED = "passed"
    #: Some shard failed, even while others still run.
    FAILED = "failed"
    #: Neither: some shard has not passed yet.
    INCOMPLETE = "incomplete"


# --- Policies ----------------------------------------------------------------

#: Record outcomes that are a pass: shard-all skips such a shard unless --force.
PASSED_OUTCOMES: FrozenSet[RecordOutcome] = frozenset({RecordOutcome.PASSED})

#: Record outcomes that are final under a plan: queue mode (``--id next``) skips
#: such a shard, and leaves when every shard has one. A failure is an outcome,
#: not a crash, so it is not run again by the queue.
FINISHED_OUTCOMES: FrozenSet[RecordOutcome] = frozenset(
    {RecordOutcome.PASSED, RecordOutcome.FAILED}
)

#: Run outcomes for which the command ran (and has a final record).
RAN_OUTCOMES: FrozenSet[RunOutcome] = frozenset(
    {RunOutcome.PASSED, RunOutcome.FAILED, RunOutcome.INTERRUPTED}
)

#: Run outcomes for which the lock was not ours, so nothing ran.
LOCKED_OUT: FrozenSet[RunOutcome] = frozenset({RunOutcome.HELD, RunOutcome.FROZEN})

#: Run outcomes whose log tail shard-all shows after the board.
SHOW_LOG_OUTCOMES: FrozenSet[RunOutcome] = frozenset(
    {RunOutcome.FAILED, RunOutcome.LOST, RunOutcome.ERROR}
)

#: Shard states that ``shard-all --failed`` runs again: every state but a pass
#: and a shard some live agent is running now.
RERUN_BY_FAILED: FrozenSet[ShardState] = frozenset(
    {
        ShardState.FAILED,
        ShardState.CRASHED,
        ShardState.INTERRUPTED,
        ShardState.MISSING,
        ShardState.OUTDATED,
        ShardState.CORRUPT,
    }
)

#: Shard states that ``verify --wait`` waits on: they may still change by themselves.
WAITED_ON: FrozenSet[ShardState] = frozenset({ShardState.RUNNING, ShardState.MISSING})

#: Shard states whose log the verdict table points to.
SHOW_LOG_STATES: FrozenSet[ShardState] = frozenset(
    {ShardState.FAILED, ShardState.CRASHED, ShardState.INTERRUPTED}
)

#: Shard states that make the overall verdict incomplete (neither a pass nor a failure).
INCOMPLETE_STATES: FrozenSet[ShardState] = frozenset(ShardState) - {
    ShardState.PASSED,
    ShardState.FAILED,
}

W = TypeVar("W", bound=Word)


def ordered(states: Iterable[W]) -> Tuple[W, ...]:
    """``states`` in the order their vocabulary declares them (for text and argv)."""
    return tuple(
        sorted(states, key=lambda state: list(type(state).__members__.values()).index(state))
    )


# --- Colours -----------------------------------------------------------------

#: Warnings (the plan's) are painted like a state that needs a look.
WARNING = "warning"

#: The colour of every word above, wherever it is shown (board, table, summary).
#: Green: a pass. Red: a failure, or something broken that a human must look at.
#: Yellow: not finished, or not run. Cyan: in progress. Dim: not started.
COLORS: Mapping[str, str] = MappingProxyType(
    {
        "passed": Fore.GREEN,
        "done": Fore.GREEN,
        "failed": Fore.RED,
        "crashed": Fore.RED,
        "corrupt": Fore.RED,
        "error": Fore.RED,
        "lost": Fore.RED,
        # NOTE: "running" was cyan on the live board but yellow in the verdict
        # table; one word has one colour now: cyan, in progress.
        "running": Fore.CYAN,
        "waiting": Style.DIM,
        "held": Fore.YELLOW,
        "frozen": Fore.YELLOW,
        "interrupted": Fore.YELLOW,
        "missing": Fore.YELLOW,
        "outdated": Fore.YELLOW,
        "incomplete": Fore.YELLOW,
        WARNING: Fore.YELLOW,
    }
)
