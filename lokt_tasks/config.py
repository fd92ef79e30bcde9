"""Read and validate shards.toml (its format: README.md) into plain dataclasses.

Everything is checked before any command starts, so a typo costs a one-line error
naming the file, the key path (``tasks.test.shards``) and what was expected.

Rules that are choices rather than facts: ``glob``, ``exclude`` and ``items`` read a
single string as a one-element list; a task's ``exclude`` replaces the one from
``[defaults]``; a dynamic task (``glob`` or ``collect``) needs a shard count, never
guessed from this machine's CPUs, because every machine must compute the same plan.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import ConfigError, UsageError
from .text import close_match

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9 / 3.10 only
    import tomli as tomllib

CONFIG_NAME = "shards.toml"
CONFIG_VERSION = 1
SPLITS = ("name", "size", "timings")
#: ``flaky``: whether a test that passed only on a retry (or a rerun) passes or fails.
FLAKY = ("pass", "fail")
#: ``retries``: more is almost surely a typo.
MAX_RETRIES = 100
ENGINES = ("auto", "lokt", "embedded")
PER_ITEM = "per-item"
MAX_SHARDS = 10000  #: Far beyond any real suite; a larger count is almost surely a typo.
#: Go's longest time.Duration (2^63 - 1 ns) in whole hours: lokt refuses a longer --ttl
#: or --timeout (exit 64), and the embedded engine could write no expiry lokt reads.
MAX_DURATION = 2_562_047 * 3600.0
#: Room for "-shard-10000.json" (lock names) and ".junit.xml" in a file name of 255
#: bytes, the longest most file systems take.
MAX_TASK_NAME = 200
DEFAULT_TTL = "10m"
DEFAULT_DURATIONS = "shard-durations.json"

#: The tables a key of KEYS may be set in: [defaults], [tasks.NAME], [[tasks.NAME.shard]].
DEFAULTS, TASK, SHARD = "defaults", "task", "shard"
#: Placeholders ``run`` may use, as they are listed in error messages.
PLACEHOLDERS = (
    "{items}",
    "{items:SEP}",
    "{shard}",
    "{total}",
    "{task}",
    "{junit}",
    "{python}",
    "{slot}",
)
#: ``slots = "cpus"``: a budget of os.cpu_count() slots.
CPUS = "cpus"
#: Overrides ``[defaults] slots``; ``--slots`` overrides both.
SLOTS_ENV = "LOKT_TASKS_SLOTS"
#: Slot and resource locks are named ``<lease_prefix>-slot-<K>`` and
#: ``<lease_prefix>-resource-<name>`` in the lock root (see leases.py).
DEFAULT_LEASE_PREFIX = "lokt-tasks"
#: Variables the command gets from lokt-tasks itself: the agent's lokt identity.
RESERVED_ENV = ("LOKT_OWNER", "LOKT_AGENT_ID", "LOKT_ROOT")

_TASK_NAME = re.compile(r"[A-Za-z0-9._-]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: In a run template's argument: a literal brace, a placeholder, or a stray brace.
_BRACES = re.compile(r"\{\{|\}\}|\{([^}]*)\}|[{}]")


@dataclass(frozen=True)
class ExplicitShard:
    """One ``[[tasks.NAME.shard]]`` entry: literal items and/or globs."""

    items: Tuple[str, ...] = ()
    glob: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskConfig:
    name: str
    run: str  #: The command template, as written (split into argv with shlex by plan).
    glob: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    collect: Optional[str] = None  #: A command whose non-empty output lines are the items.
    #: Shard count of a dynamic task; None for explicit shards or per_item ("per-item").
    shards: Optional[int] = None
    per_item: bool = False
    explicit: Tuple[ExplicitShard, ...] = ()
    split: str = "name"
    #: Lock TTL in seconds, and as written (a lokt duration such as "10m").
    ttl: float = 600.0
    ttl_text: str = "10m"
    engine: str = "auto"
    jobs: Optional[int] = None  #: Parallel shards for shard-all; None means the CPU count.
    durations: Optional[Path] = None  #: Absolute path of the file split = "timings" reads.
    #: How long a shard's command may run, in seconds, and as written ("15m"); None: no limit.
    timeout: Optional[float] = None
    timeout_text: Optional[str] = None
    retries: int = 0  #: Reruns of a shard's failing tests inside its lock.
    flaky: str = "pass"  #: One of FLAKY: the verdict on a test that passed only on a retry.
    #: The command's extra environment, (name, template) in file order: placeholders as in run.
    env: Tuple[Tuple[str, str], ...] = ()
    #: Named exclusive resources each shard holds while its command runs (leases.py).
    resources: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    path: Path  #: Absolute path of shards.toml.
    root: Path  #: The directory of shards.toml: globs are relative to it; commands run in it.
    tasks: Mapping[str, TaskConfig] = field(default_factory=dict)
    results: Optional[Path] = None  #: ``[defaults] results``, absolute, or None.
    #: ``[defaults] slots`` as written: a count, "cpus", or None (no budget); see slot_budget.
    slots: Optional[Union[int, str]] = None
    lease_prefix: str = DEFAULT_LEASE_PREFIX  #: ``[defaults] lease_prefix``.


@dataclass(frozen=True)
class Placeholder:
    """A ``{name}`` in a run template; ``separator`` is set for ``{items:SEP}``."""

    name: str
    separator: Optional[str] = None


#: One argv token of a run template: literal text and placeholders, in order.
Token = Tuple[Union[str, Placeholder], ...]
#: A key path as parts, for key_path: ``("tasks", "go", "shard", 2, "items")``.
Where = Tuple[Union[str, int], ...]


def find_config(start: Path) -> Path:
    """The nearest shards.toml in ``start`` or a parent directory, absolute."""
    start = Path(start).absolute()
    for directory in (start, *start.parents):
        if (directory / CONFIG_NAME).is_file():
            return directory / CONFIG_NAME
    raise ConfigError(
        f"no {CONFIG_NAME} found in {start} or any parent directory (use --config PATH)"
    )


def get_task(config: Config, name: str) -> TaskConfig:
    try:
        return config.tasks[name]
    except KeyError:
        close = close_match(name, config.tasks)
        hint = f"did you mean '{close}'?" if close else "known tasks: " + ", ".join(config.tasks)
        raise UsageError(f"unknown task '{name}' in {display_path(config.path)}; {hint}") from None


def display_path(path: Path) -> str:
    """``path`` relative to the current directory when it is below it, else absolute."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def key_path(*parts: Union[str, int]) -> str:
    """A TOML key path for messages: ``tasks.test.shards``, ``tasks."a b".run``, ``shard[2]``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            if not _BARE_KEY.fullmatch(part):
                part = '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
            text = f"{text}.{part}" if text else part
    return text


def config_error(path: Path, key: str, problem: str) -> ConfigError:
    """The one-line error for a bad value: ``shards.toml: tasks.test.shards: <problem>``."""
    return ConfigError(f"{display_path(path)}: {key}: {' '.join(problem.split())}")


class DurationError(UsageError, ValueError):
    """A duration lokt would refuse: a UsageError (``--wait-timeout 10``: exit 2), a ValueError."""


#: Seconds per unit; Go reads "us" with either micro sign too.
_DURATION_UNITS = dict(ns=1e-9, us=1e-6, ms=1e-3, s=1.0, m=60.0, h=3600.0)
_DURATION_UNITS.update({"\u00b5s": 1e-6, "\u03bcs": 1e-6})
_BARE_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_DURATION_PART = re.compile(rf"({_BARE_NUMBER.pattern})(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("10m", "1h30m", "1.5s", "500ms"), as lokt reads it.

    Units are required, as lokt refuses a bare number (accepting one would only move the
    error to the moment the lock is taken), and signs are refused. Raises DurationError.
    """
    if not isinstance(text, str):
        raise DurationError(f'expected a duration string such as "10m", got {text!r}')
    if text == "0":
        return 0.0
    if _BARE_NUMBER.fullmatch(text):
        raise DurationError(
            f"'{text}' has no unit; write '{text}s' for seconds (units: h, m, s, ms, us, ns)"
        )
    if not _DURATION.fullmatch(text):
        raise DurationError(
            f'\'{text}\' is not a duration; expected e.g. "10m", "90s", "1h30m" or "500ms"'
        )
    seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    if seconds > MAX_DURATION:
        raise DurationError(
            f"'{text}' is longer than lokt can hold (2562047h, Go's longest duration)"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """A duration lokt accepts (``600s``, ``1500ms``) for a positive number of seconds."""
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration: it must be positive and finite")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    micros = max(round(seconds * 1_000_000), 1)
    if micros % 1000 == 0:
        return f"{micros // 1000}ms"
    return f"{micros}us"


def parse_run_template(run: str) -> Tuple[Token, ...]:
    """Split ``run`` with shlex and find the placeholders in each argv token.

    ``{items}`` must be a whole token (one argv element per item); ``{items:SEP}`` may
    sit anywhere in one (the items joined by SEP). Raises ValueError (one line).
    """
    tokens = tuple(_parse_token(word) for word in _split_command(run))
    for token in tokens:
        if len(token) > 1 and Placeholder("items") in token:
            raise ValueError(
                "{items} must be a whole argument (it expands to one argument per item); "
                "to put the items inside an argument use {items:SEP}, e.g. '-run=^({items:|})$'"
            )
    return tokens


def _split_command(command: str) -> List[str]:
    """``command`` as arguments, split with shlex; raises ValueError with a one-line message."""
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise ValueError(f"cannot split into arguments: {error}") from None
    if not words:
        raise ValueError("empty command")
    return words


def parse_placeholders(text: str) -> Token:
    """The literal text and placeholders of one argument or ``env`` value
    (``{{`` and ``}}`` are literal braces); ValueError (one line)."""
    return _parse_token(text)


def _parse_token(word: str) -> Token:
    parts: List[Union[str, Placeholder]] = []
    literal, end = "", 0
    for brace in _BRACES.finditer(word):
        literal += word[end : brace.start()]
        end = brace.end()
        if brace.group() in ("{{", "}}"):
            literal += brace.group()[0]
        elif brace.group() == "{":
            raise ValueError(f"unclosed '{{' in '{word}'; write '{{{{' for a literal brace")
        elif brace.group() == "}":
            raise ValueError(f"single '}}' in '{word}'; write '}}}}' for a literal brace")
        else:
            if literal:
                parts.append(literal)
            parts.append(_placeholder(brace.group(1)))
            literal = ""
    literal += word[end:]
    if literal or not parts:
        parts.append(literal)
    return tuple(parts)


def _placeholder(body: str) -> Placeholder:
    if body.startswith("items:"):
        return Placeholder("items", body[len("items:") :])
    if f"{{{body}}}" in PLACEHOLDERS:
        return Placeholder(body)
    known = ", ".join(PLACEHOLDERS)
    raise ValueError(
        f"unknown placeholder '{{{body}}}'; known placeholders: {known} "
        "(write {{ and }} for literal braces)"
    )


def pattern_problem(pattern: str) -> Optional[str]:
    """Why a glob or exclude pattern cannot be used, or None: it must stay below the
    directory of shards.toml, to mean the same files on every machine and worktree."""
    if not pattern:
        return "empty pattern"
    if pattern.startswith("/") or pattern.startswith("~") or re.match(r"[A-Za-z]:[\\/]", pattern):
        return f"'{pattern}' is absolute; patterns are relative to the directory of {CONFIG_NAME}"
    segments = pattern.split("/")
    if ".." in segments:
        return f"'{pattern}' uses '..'; patterns may not leave the directory of {CONFIG_NAME}"
    if any("**" in segment and segment != "**" for segment in segments):
        return f"'{pattern}': '**' must be a whole path segment, as in 'tests/**/test_*.py'"
    if all(segment in ("", ".") for segment in segments):
        return f"'{pattern}' names no files"
    return None


@dataclass(frozen=True)
class Key:
    """A key of [defaults], [tasks.NAME] or [[tasks.NAME.shard]]: how it is read, and where.
    A task takes each key of [defaults] it does not set; a key set in neither has ``default``."""

    #: (path of shards.toml, value as written, key path) -> value as used, or ValueError.
    read: Callable[[Path, Any, Where], Any]
    places: Tuple[str, ...]
    default: Any = None
    misplaced: str = ""  #: The error for a task's key in [defaults], or a [defaults] key in a task.
    missing: str = ""  #: The error when the key is not set; without one the key is optional.


def _read_run(path: Path, value: Any, where: Where) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string (the command), got {_describe(value)}")
    parse_run_template(value)
    return value


def _read_collect(path: Path, value: Any, where: Where) -> str:
    if not isinstance(value, str):
        problem = "expected a string (a command whose output lines are the items)"
        raise ValueError(f"{problem}, got {_describe(value)}")
    _split_command(value)
    return value


def _read_strings(path: Path, value: Any, where: Where) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise ValueError(f"expected a list of strings, got {_describe(value)}")
    if "" in value:
        raise ValueError("contains an empty string")
    return tuple(value)


def _read_patterns(path: Path, value: Any, where: Where) -> Tuple[str, ...]:
    patterns = _read_strings(path, value, where)
    if not patterns:
        raise ValueError("empty list; give at least one pattern or remove the key")
    for pattern in patterns:
        if problem := pattern_problem(pattern):
            raise ValueError(problem)
    return patterns


def _read_shard_count(path: Path, value: Any, where: Where) -> Union[int, str]:
    expected = f'expected an integer from 1 to {MAX_SHARDS} or "{PER_ITEM}"'
    if isinstance(value, list) and value and all(isinstance(entry, dict) for entry in value):
        tables = key_path(*where[:-1], "shard")
        raise ValueError(f"{expected}, got an array of tables (explicit shards are [[{tables}]])")
    if value == PER_ITEM:
        return PER_ITEM
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{expected}, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"{expected}, got {value}: a task needs at least one shard")
    if value > MAX_SHARDS:
        hint = f'for one shard per item use "{PER_ITEM}"'
        raise ValueError(f"{expected}, got {value}: too many ({hint})")
    return value


def _read_shard_tables(path: Path, value: Any, where: Where) -> Tuple[ExplicitShard, ...]:
    here = key_path(*where)
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ValueError(f"expected [[{here}]] tables (an array of tables), got {_describe(value)}")
    if not value:
        raise ValueError(f"no shards; add [[{here}]] tables with items or glob")
    shards = []
    first_seen: Dict[str, str] = {}
    for number, entry in enumerate(value, start=1):
        shard = ExplicitShard(**_read_keys(path, entry, SHARD, where + (number,), {}))
        owner = key_path(*where, number)
        if not shard.items and not shard.glob:
            raise config_error(path, owner, "shard has no items; set items = [...] or glob = [...]")
        for item in shard.items:
            if item in first_seen:
                other = first_seen[item]
                place = "twice in this shard" if other == owner else f"also in {other}"
                problem = f"'{item}' is listed {place}; an item belongs to one shard"
                raise config_error(path, f"{owner}.items", problem)
            first_seen[item] = owner
        shards.append(shard)
    return tuple(shards)


def _read_jobs(path: Path, value: Any, where: Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer of at least 1, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"expected an integer of at least 1, got {value}")
    return value


def _read_retries(path: Path, value: Any, where: Where) -> int:
    expected = f"expected an integer from 0 to {MAX_RETRIES}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{expected}, got {_describe(value)}")
    if not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"{expected}, got {value}")
    return value


def _read_slots(path: Path, value: Any, where: Where) -> Union[int, str]:
    return parse_slots(value)


def parse_slots(value: Any) -> Union[int, str]:
    """A slot budget as written: a whole number of at least 1, or "cpus"; ValueError."""
    expected = f'expected a whole number of at least 1 or "{CPUS}"'
    if value == CPUS:
        return CPUS
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{expected}, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"{expected}, got {value}; leave slots unset for no budget")
    return value


def slot_budget(
    configured: Optional[Union[int, str]],
    flag: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> Optional[int]:
    """The machine's slot budget: ``--slots`` (``flag``), else $LOKT_TASKS_SLOTS,
    else ``configured`` (``Config.slots``); None when none is set (no budget);
    "cpus" is os.cpu_count(). UsageError naming the flag or the variable when
    malformed."""
    environ = os.environ if environ is None else environ
    value: Any = configured
    for given, where in (
        (flag, "--slots"),
        (environ.get(SLOTS_ENV, "").strip() or None, SLOTS_ENV),
    ):
        if given is not None:
            try:
                value = parse_slots(given)
            except ValueError as error:
                raise UsageError(f"{where}: {error}") from None
            break
    if value == CPUS:
        return os.cpu_count() or 1
    return value


def _read_lease_prefix(path: Path, value: Any, where: Where) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string (a lock name prefix), got {_describe(value)}")
    if not _TASK_NAME.fullmatch(value) or ".." in value or value.startswith("-"):
        problem = "use only letters, digits, '.', '_' and '-' (no '..', no leading '-')"
        raise ValueError(f'"{value}": {problem}, because it starts lock names')
    if len(value) > MAX_TASK_NAME:
        raise ValueError(f"longer than {MAX_TASK_NAME} characters")
    return value


def _read_resources(path: Path, value: Any, where: Where) -> Tuple[str, ...]:
    names = _read_strings(path, value, where)
    for name in names:
        if not _TASK_NAME.fullmatch(name) or ".." in name:
            problem = "use only letters, digits, '.', '_' and '-' (no '..')"
            raise ValueError(f"'{name}': {problem}, because it ends a lock name")
        if names.count(name) > 1:
            raise ValueError(f"'{name}' is listed twice")
    return names


def _read_env(path: Path, value: Any, where: Where) -> Tuple[Tuple[str, str], ...]:
    if not isinstance(value, dict):
        example = '{ TEST_DB = "app_test_{slot}" }'
        raise ValueError(f"expected a table of strings such as {example}, got {_describe(value)}")
    for name, text in value.items():
        here = key_path(*where, name)
        if not _ENV_NAME.fullmatch(name):
            problem = "not a variable name (letters, digits and '_', not starting with a digit)"
            raise config_error(path, here, problem)
        if name in RESERVED_ENV:
            raise config_error(path, here, "set by lokt-tasks itself (the agent's lokt identity)")
        if not isinstance(text, str):
            hint = f'; write "{text}"' if isinstance(text, (int, float)) else ""
            raise config_error(path, here, f"expected a string, got {_describe(text)}{hint}")
        try:
            parts = parse_placeholders(text) if text else ()
        except ValueError as error:
            raise config_error(path, here, str(error)) from None
        if Placeholder("items") in parts:
            problem = "{items} is one argument per item; in a variable use {items:SEP}"
            raise config_error(path, here, problem)
    return tuple(value.items())


def _read_ttl(path: Path, value: Any, where: Where) -> Tuple[float, str]:
    """A positive duration with a unit (``ttl``, ``timeout``): seconds, and the text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        example = f'"{value}s" or "10m"'
        raise ValueError(f"{value} has no unit; write a string with a unit, e.g. {example}")
    if not isinstance(value, str):
        raise ValueError(f'expected a duration string such as "10m", got {_describe(value)}')
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"'{value}' must be longer than zero")
    return seconds, value


def _read_choice(path: Path, value: Any, where: Where, choices: Tuple[str, ...]) -> str:
    allowed = ", ".join(f'"{choice}"' for choice in choices)
    if not isinstance(value, str):
        raise ValueError(f"expected one of {allowed}, got {_describe(value)}")
    if value not in choices:
        close = close_match(value, choices)
        hint = f"; did you mean '{close}'?" if close else ""
        raise ValueError(f'expected one of {allowed}, got "{value}"{hint}')
    return value


def _read_path(path: Path, value: Any, where: Where) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a path (a non-empty string), got {_describe(value)}")
    return Path(os.path.normpath(path.parent / value))


_IN_TASKS = "can only be set in a [tasks.NAME] table"
_NO_RUN = 'missing; set the command to run, e.g. run = "pytest -q {items}"'
_RESULTS_IN_TASK = "results can only be set in [defaults] (one results directory per project)"
_LEASES_IN_TASK = "can only be set in [defaults] (one budget for every task of the lock root)"

#: Every key, in the order keys are read and listed in errors.
KEYS: Dict[str, Key] = {
    "run": Key(_read_run, (TASK,), misplaced=f"the command {_IN_TASKS}", missing=_NO_RUN),
    "items": Key(_read_strings, (SHARD,), default=()),
    "glob": Key(_read_patterns, (TASK, SHARD), default=(), misplaced=f"the files {_IN_TASKS}"),
    "exclude": Key(_read_patterns, (DEFAULTS, TASK), default=()),
    "collect": Key(_read_collect, (TASK,), misplaced=f"the items command {_IN_TASKS}"),
    # NOTE: no default, see the module docstring: _read_task says when a task needs one.
    "shards": Key(_read_shard_count, (DEFAULTS, TASK)),
    "shard": Key(_read_shard_tables, (TASK,), default=(), misplaced=f"explicit shards {_IN_TASKS}"),
    "split": Key(partial(_read_choice, choices=SPLITS), (DEFAULTS, TASK), default="name"),
    "ttl": Key(_read_ttl, (DEFAULTS, TASK), default=(parse_duration(DEFAULT_TTL), DEFAULT_TTL)),
    # NOTE: unset, a shard runs as long as it takes (the lock is renewed meanwhile).
    "timeout": Key(_read_ttl, (DEFAULTS, TASK), default=(None, None)),
    "engine": Key(partial(_read_choice, choices=ENGINES), (DEFAULTS, TASK), default="auto"),
    "jobs": Key(_read_jobs, (DEFAULTS, TASK)),
    # NOTE: relative: _read_task joins it to the directory of shards.toml (absolute stays as is).
    "durations": Key(_read_path, (DEFAULTS, TASK), default=Path(DEFAULT_DURATIONS)),
    "results": Key(_read_path, (DEFAULTS,), misplaced=_RESULTS_IN_TASK),
    "retries": Key(_read_retries, (DEFAULTS, TASK), default=0),
    "flaky": Key(partial(_read_choice, choices=FLAKY), (DEFAULTS, TASK), default="pass"),
    "slots": Key(_read_slots, (DEFAULTS,), misplaced=f"slots {_LEASES_IN_TASK}"),
    "lease_prefix": Key(
        _read_lease_prefix,
        (DEFAULTS,),
        default=DEFAULT_LEASE_PREFIX,
        misplaced=f"lease_prefix {_LEASES_IN_TASK}",
    ),
    "env": Key(_read_env, (TASK,), default=(), misplaced=f"the command's environment {_IN_TASKS}"),
    "resources": Key(_read_resources, (TASK,), default=(), misplaced=f"resources {_IN_TASKS}"),
}


def load_config(path: Path) -> Config:
    """Read and validate shards.toml; raises ConfigError with a one-line message."""
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{display_path(path)}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{display_path(path)}: cannot read: {error.strerror or error}") from None
    data = _parse_toml(text, path)
    _refuse_unknown(path, data, ("version", "defaults", "tasks"), ())
    version = data.get("version", CONFIG_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version != CONFIG_VERSION:
        problem = f"expected {CONFIG_VERSION}, got {_describe(version)}"
        raise config_error(path, "version", f"{problem}; this lokt-tasks reads version 1")
    defaults = _read_keys(path, data.get("defaults", {}), DEFAULTS, ("defaults",), {})
    tasks = data.get("tasks")
    if tasks is None or tasks == {}:
        problem = "no tasks defined; add a [tasks.NAME] table with run and glob"
        raise config_error(path, "tasks", problem)
    if not isinstance(tasks, dict):
        raise config_error(path, "tasks", f"expected tables ([tasks.NAME]), got {_describe(tasks)}")
    tasks = {name: _read_task(path, name, table, defaults) for name, table in tasks.items()}
    return Config(
        path=path,
        root=path.parent,
        tasks=tasks,
        results=defaults["results"],
        slots=defaults["slots"],
        lease_prefix=defaults["lease_prefix"],
    )


def _parse_toml(text: str, path: Path) -> Dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # NOTE: tomllib from Python 3.14 and tomli from 2.1 give the position as fields; older
        # ones only at the end of the message, and none at the end of the document.
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
        message = str(error)
        position = re.search(r"\s*\(at (?:line (\d+), column (\d+)|(end of document))\)$", message)
        if position:
            message = message[: position.start()] + (" at end of file" if position.group(3) else "")
            line, column = int(position.group(1) or line), int(position.group(2) or column)
        line, column = getattr(error, "lineno", line), getattr(error, "colno", column)
        where = f"{display_path(path)}:{line}:{column}"
        raise ConfigError(f"{where}: invalid TOML: {message}") from None


def _read_task(path: Path, name: str, table: Any, defaults: Mapping[str, Any]) -> TaskConfig:
    here = key_path("tasks", name)
    if not _TASK_NAME.fullmatch(name) or ".." in name:
        problem = "task names may only use letters, digits, '.', '_' and '-' (no '..')"
        raise config_error(path, here, f"{problem}, because they become lock names")
    if len(name) > MAX_TASK_NAME:
        problem = f"task names are at most {MAX_TASK_NAME} characters"
        raise config_error(path, here, f"{problem}, because they become lock and file names")
    if table == {}:
        problem = f"empty task; set run and one of glob, collect or [[{here}.shard]]"
        raise config_error(path, here, problem)
    task = _read_keys(path, table, TASK, ("tasks", name), defaults)

    explicit, glob, collect = task["shard"], task["glob"], task["collect"]
    if not glob and collect is None and not explicit:
        problem = "nothing to shard; set glob (files), collect (a command listing items)"
        raise config_error(path, here, f"{problem} or [[{here}.shard]] tables")
    if glob and collect is not None:
        problem = "a task takes its items from glob or from collect, not both"
        raise config_error(path, f"{here}.collect", problem)
    tables = f"explicit [[{here}.shard]] tables"
    if explicit and collect is not None:
        raise config_error(path, f"{here}.collect", f"collect cannot be combined with {tables}")
    if explicit and "shards" in table:
        problem = f"set either a shard count or {tables}, not both"
        raise config_error(path, f"{here}.shards", f"{problem} (explicit tables make the count)")
    if explicit and "split" in table:
        raise config_error(path, f"{here}.split", f"has no effect with {tables}; remove it")
    parts = [part for token in parse_run_template(task["run"]) for part in token]
    if not any(isinstance(part, Placeholder) and part.name == "items" for part in parts):
        problem = "has no {items} or {items:SEP}; without it every shard would run the same command"
        raise config_error(path, f"{here}.run", problem)
    if task["retries"] and not any(isinstance(p, Placeholder) and p.name == "junit" for p in parts):
        problem = "needs {junit} in run: the failing tests are read from the command's JUnit report"
        where = f"{here}.retries" if "retries" in table else "defaults.retries"
        raise config_error(path, where, f"{problem} (task '{name}')")
    if not explicit and task["shards"] is None:
        problem = 'missing; set a shard count (shards = 4) or shards = "per-item"'
        raise config_error(path, f"{here}.shards", f"{problem}, here or in [defaults]")
    count = None if explicit else task["shards"]
    ttl, ttl_text = task["ttl"]
    timeout, timeout_text = task["timeout"]
    return TaskConfig(
        name=name,
        run=task["run"],
        glob=glob,
        exclude=task["exclude"],
        collect=collect,
        shards=None if count == PER_ITEM else count,
        per_item=count == PER_ITEM,
        explicit=explicit,
        split=task["split"],
        ttl=ttl,
        ttl_text=ttl_text,
        engine=task["engine"],
        jobs=task["jobs"],
        durations=path.parent / task["durations"],
        timeout=timeout,
        timeout_text=timeout_text,
        retries=task["retries"],
        flaky=task["flaky"],
        env=task["env"],
        resources=task["resources"],
    )


def _read_keys(
    path: Path, table: Any, place: str, where: Where, inherited: Mapping[str, Any]
) -> Dict[str, Any]:
    """Each key ``place`` takes: its value in ``table``, else in ``inherited``, else its default."""
    here = key_path(*where)
    if not isinstance(table, dict):
        raise config_error(path, here, f"expected a table ([{here}]), got {_describe(table)}")
    # NOTE: a task's key in [defaults], or results in a task, is a misunderstanding rather
    # than a typo: the error says where the key belongs. In a shard table it is just unknown.
    for name in table:
        key = KEYS.get(name)
        if key and key.misplaced and place != SHARD and place not in key.places:
            raise config_error(path, key_path(*where, name), key.misplaced)
    known = {name: key for name, key in KEYS.items() if place in key.places}
    _refuse_unknown(path, table, list(known), where)
    values = {}
    for name, key in known.items():
        if name in table:
            try:
                values[name] = key.read(path, table[name], where + (name,))
            except ValueError as error:
                raise config_error(path, key_path(*where, name), str(error)) from None
        elif key.missing:
            raise config_error(path, key_path(*where, name), key.missing)
        else:
            values[name] = inherited.get(name, key.default)
    return values


def _refuse_unknown(path: Path, table: Dict[str, Any], known: Sequence[str], where: Where) -> None:
    for key in table:
        if key not in known:
            close = close_match(key, known)
            hint = f"did you mean '{close}'?" if close else "known keys: " + ", ".join(known)
            raise config_error(path, key_path(*where, key), f"unknown key; {hint}")


def _describe(value: Any) -> str:
    """A value and its TOML type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value} ({'an integer' if isinstance(value, int) else 'a float'})"
    if isinstance(value, str):
        return f'"{value}" (a string)'
    if isinstance(value, (list, dict)):
        return "an array" if isinstance(value, list) else "a table"
    return f"a {type(value).__name__.replace('datetime', 'date-time')}"
