"""The command line's vocabulary: every flag of every command, defined once.

``FLAGS`` is the one table of flags: a flag has one short form (or none), one
help text, one kind of value and one default, whichever command takes it, so
``-j`` never means ``--jobs`` in one command and ``--json`` in another. A
command takes the flags its function has parameters for (:class:`Command`
refuses a parameter that is not in the table); adding a flag is one line here
and a parameter there. The same table renders every command's help, for
``lokt-tasks`` and for invoke alike, and says which flags take a default from
invoke's configuration (the ``lokt_tasks`` key, see README: invoke
configuration).

Short forms are kept for the flags typed most, and never one of invoke's own
core short flags (``-e``, ``-f``, ``-w``...), so none reads two ways.
"""

from __future__ import annotations

import inspect
import shutil
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from invoke import Task

from .config import ENGINES, parse_duration
from .engine import DEFAULT_WAIT_TIMEOUT
from .errors import UsageError
from .states import RERUN_BY_FAILED, WAITED_ON, ordered
from .text import close_match, word_list

#: The key of invoke's configuration that holds lokt-tasks' defaults.
CONFIG_KEY = "lokt_tasks"


@dataclass(frozen=True)
class Flag:
    """One flag: its help, its short form, what its value is (a word for
    help, such as ``N``; None for a switch), its default as help shows it,
    and whether invoke's configuration may give that default."""

    help: str
    short: Optional[str] = None
    value: Optional[str] = None
    default: Optional[str] = None
    configurable: bool = False

    @property
    def text(self) -> str:
        """The help text with its default."""
        if not self.default:
            return self.help
        return f"{self.help.rstrip('.')} (default: {self.default})."


#: How help names a default that invoke's configuration may set.
IN_CONFIG = "{key} in invoke's configuration"


def _configured(key: str) -> str:
    return IN_CONFIG.format(key=f"{CONFIG_KEY}.{key}")


#: Every flag, by its parameter name (``wait_timeout`` is ``--wait-timeout``).
FLAGS: Dict[str, Flag] = {
    "config": Flag(
        "Path of shards.toml.",
        value="PATH",
        default="the nearest shards.toml in the current directory or above",
    ),
    "id": Flag(
        "The shard to run: its number (from 1), next (queue mode: claim unfinished shards"
        " until none is left) or auto (from the CI's variables).",
        short="i",
        value="N|next|auto",
    ),
    "total": Flag(
        "The shard count the CI expects: a dynamic task is re-planned to it,"
        " an explicit one must match.",
        value="N",
    ),
    "shards": Flag(
        "Override the task's shard count (dynamic tasks only; the plan's fingerprint covers it).",
        short="s",
        value="N",
    ),
    "run": Flag(
        "Run key that groups the records of one run.",
        value="KEY",
        default="$LOKT_TASKS_RUN, else the git commit",
    ),
    "results": Flag(
        "Directory of shard records.",
        value="DIR",
        default=f"results in shards.toml, else {_configured('results')}, else beside lokt's"
        " lock root, shared by every worktree",
        configurable=True,
    ),
    "engine": Flag(
        "Lock engine: auto (lokt if found, else embedded), lokt or embedded.",
        value="|".join(ENGINES),
        default=f"the task's engine unless auto, else {_configured('engine')}, else auto",
        configurable=True,
    ),
    "agent": Flag(
        "Name of this agent; each agent gets its own lokt owner.",
        short="a",
        value="NAME",
        default=f"$LOKT_AGENT_ID, else {_configured('agent')}, else generated",
        configurable=True,
    ),
    "jobs": Flag(
        "How many shards run at once.",
        short="j",
        value="N",
        default=f"the task's jobs, else {_configured('jobs')}, else the CPU count",
        configurable=True,
    ),
    "force": Flag("Run shards that already passed in this run (under this plan) again."),
    "failed": Flag(f"Run only the shards that are {word_list(ordered(RERUN_BY_FAILED))}."),
    "failed_tests": Flag(
        "Run only the tests that failed in this run (from the shards' JUnit reports),"
        " spread over --jobs shards of a rerun; verify folds their outcomes in."
    ),
    "wait": Flag(
        "Wait instead of giving up: shard waits for a lock another agent holds"
        f" (--id next always does); verify, until no shard is {word_list(ordered(WAITED_ON))}.",
    ),
    "wait_timeout": Flag(
        "How long --wait, or --id next for shards other agents hold, waits:"
        " a duration with a unit, such as 90s or 10m; 0s: do not wait.",
        value="DURATION",
        default=f"{_configured('wait_timeout')}, else {DEFAULT_WAIT_TIMEOUT / 60:g}m",
        configurable=True,
    ),
    "log": Flag("Write the command's output to the shard's log file instead of the terminal."),
    "json": Flag("Print JSON instead of text: the plan, the verdict or the status (see README)."),
    "junit": Flag(
        "Also write the verdict as one JUnit XML file: every test of every shard"
        " (a testsuite per shard), and a failing testcase for a shard that did not"
        " pass otherwise.",
        value="FILE",
    ),
    "html": Flag(
        "Also write a picture of the run to this file: one self-contained HTML page"
        " (timeline, balance, what broke, slowest tests).",
        value="FILE",
    ),
    "timeline": Flag("Add the run's timeline to the table: one lane per agent, a bar per shard."),
    "slots": Flag(
        "The machine's slot budget: at most N shards run at once, of every agent and"
        " worktree sharing the lock root; a number, or cpus (the CPU count).",
        value="N|cpus",
        default="$LOKT_TASKS_SLOTS, else slots in shards.toml, else no budget",
    ),
    "current": Flag(
        "Plan from the current timings, not from the copy this run pinned when it started."
    ),
}

#: Positional arguments, by parameter name: what help shows, and what it says.
ARGUMENTS: Dict[str, Tuple[str, str]] = {
    "task": ("TASK", "A task of shards.toml (its [tasks.NAME] table)."),
}


def long_flag(name: str) -> str:
    """``--wait-timeout`` for the parameter ``wait_timeout``."""
    return "--" + name.replace("_", "-")


def flag_spec(name: str) -> str:
    """How help shows a flag: ``-j N, --jobs=N``, ``--force``."""
    flag, long = FLAGS[name], long_flag(name)
    if flag.value is None:
        return f"-{flag.short}, {long}" if flag.short else long
    short = f"-{flag.short} {flag.value}, " if flag.short else ""
    return f"{short}{long}={flag.value}"


class Command(Task):
    """An invoke task whose flags come from :data:`FLAGS`: their short forms
    and help texts, never invoke's automatic short flags (first free letter)."""

    def __init__(self, body: Callable, **kwargs) -> None:
        kwargs["auto_shortflags"] = False
        super().__init__(body, **kwargs)
        unknown = [name for name in self.parameters() if name not in {**FLAGS, **ARGUMENTS}]
        if unknown:
            raise ValueError(f"{self.name}: parameters not in flags.FLAGS: {', '.join(unknown)}")

    def __call__(self, *args, **kwargs):
        # NOTE: invoke hands an unfilled positional the next word, even "--help"
        # (``invoke shard --help``): that asks for help, not for a task so named.
        given = [*args[1:], *(kwargs.get(name) for name in ARGUMENTS)]
        if any(value in ("-h", "--help") for value in given):
            print(self.help_text("invoke"))
            return None
        return super().__call__(*args, **kwargs)

    def parameters(self) -> List[str]:
        """The names of the command's arguments and flags, in signature order."""
        return list(self.argspec(self.body).parameters)

    def arg_opts(self, name: str, default: str, taken_names) -> dict:
        opts = super().arg_opts(name, default, taken_names)
        flag = FLAGS.get(name)
        if flag is not None:
            opts["names"] = opts["names"] + ([flag.short] if flag.short else [])
            opts["help"] = flag.text
        else:
            opts["help"] = ARGUMENTS[name][1]
        return opts

    def help_text(self, program: str, width: Optional[int] = None) -> str:
        """The command's help: usage, what it does, its arguments and flags."""
        names = self.parameters()
        positional = [name for name in names if name in ARGUMENTS]
        flags = sorted((name for name in names if name in FLAGS), key=long_flag)
        usage = " ".join([program, self.name, *(ARGUMENTS[n][0] for n in positional), "[options]"])
        doc = inspect.getdoc(self.body) or ""
        rows = [(ARGUMENTS[name][0], ARGUMENTS[name][1]) for name in positional]
        lines = [f"Usage: {usage}", "", *_indented(doc)]
        if rows:  # NOTE: status takes no task
            lines += ["", "Arguments:", *columns(rows, width)]
        lines += ["", "Options:", *columns([(flag_spec(n), FLAGS[n].text) for n in flags], width)]
        return "\n".join(lines)


def unknown_option(word: str, options: List[str]) -> str:
    """``unknown option '--idd'; did you mean '--id'?`` (``options``: long flags)."""
    name = word.split("=", 1)[0]
    close = close_match(name, options) if name.startswith("--") else None
    return f"unknown option '{name}'" + (f"; did you mean '{close}'?" if close else "")


def _indented(text: str) -> List[str]:
    return [f"  {line}" if line.strip() else "" for line in text.splitlines()]


def columns(rows: List[Tuple[str, str]], width: Optional[int] = None) -> List[str]:
    """``(name, help)`` rows as two columns, the help wrapped to the terminal's width."""
    if not rows:
        return []
    total = width or min(shutil.get_terminal_size((100, 24)).columns, 100)
    left = max(len(name) for name, _ in rows)
    wrap = max(total - left - 5, 30)
    lines = []
    for name, text in rows:
        chunks = textwrap.wrap(text, wrap) or [""]
        lines.append(f"  {name.ljust(left)}   {chunks[0]}".rstrip())
        lines += [" " * (left + 5) + chunk for chunk in chunks[1:]]
    return lines


def configured_defaults(values: Any) -> Dict[str, Any]:
    """The defaults under ``lokt_tasks`` in invoke's configuration (``values``,
    None when absent), checked: a UsageError names the key and what was
    expected. ``wait_timeout`` comes back in seconds."""
    if values is None:
        return {}
    where = f"invoke configuration: {CONFIG_KEY}"
    if not hasattr(values, "items"):
        raise UsageError(f"{where}: expected a mapping of flag names to defaults, got {values!r}")
    known = [name for name, flag in FLAGS.items() if flag.configurable]
    found: Dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            close = close_match(str(key), known)
            hint = f"did you mean '{close}'?" if close else "known keys: " + ", ".join(known)
            raise UsageError(f"{where}.{key}: unknown key; {hint}")
        if value is None:
            continue
        try:
            found[key] = _CHECKS[key](value)
        except ValueError as error:
            raise UsageError(f"{where}.{key}: {error}") from None
    return found


def _whole_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def _engine(value: Any) -> str:
    if value not in ENGINES:
        close = close_match(str(value), ENGINES)
        hint = f"; did you mean '{close}'?" if close else ""
        raise ValueError(f"expected one of {', '.join(ENGINES)}, got {value!r}{hint}")
    return str(value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _duration(value: Any) -> float:
    return parse_duration(value)  # NOTE: a DurationError is a ValueError too


_CHECKS: Dict[str, Callable[[Any], Any]] = {
    "jobs": _whole_number,
    "engine": _engine,
    "agent": _name,
    "results": _name,
    "wait_timeout": _duration,
}
