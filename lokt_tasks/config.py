"""Read and validate shards.toml into plain dataclasses.

Everything a run depends on is checked here, before any command starts, so a
typo costs a one-line error instead of a half-finished run. Every error names
the file, the key path (``tasks.test.shards``) and what was expected.

The file, version 1::

    version = 1                  # optional; anything else is refused

    [defaults]                   # applies to every task that does not set the key
    ttl = "10m"                  # lock lifetime, a lokt (Go) duration with a unit
    engine = "auto"              # auto | lokt | embedded
    jobs = 4                     # parallel shards for shard-all (default: CPU count)
    split = "name"               # name | size | timings
    shards = 4                   # an integer from 1 to 10000, or "per-item"
    exclude = ["tests/fixtures/**"]
    durations = "shard-durations.json"
    results = ".lokt-results"    # only here: one results directory per project

    [tasks.test]
    run = "pytest -q {items}"
    glob = ["tests/**/test_*.py"]
    shards = 3

    [tasks.go]                   # explicit shards: one table per shard
    run = "go test {items}"
    [[tasks.go.shard]]
    items = ["./internal/..."]
    [[tasks.go.shard]]
    glob = ["cmd/*"]

Rules that are choices rather than facts:

- ``glob``, ``exclude`` and ``items`` take a list of strings; a single string
  is read as a one-element list.
- A task's ``exclude`` replaces the one from ``[defaults]``; it does not add to it.
- A dynamic task (``glob`` or ``collect``) needs a shard count, from the task or
  from ``[defaults]``: the count is never guessed from this machine's CPUs,
  because every machine must compute the same plan.
- ``durations`` and ``results`` are paths relative to the directory holding
  shards.toml. ``durations`` defaults to ``shard-durations.json``, a file meant
  to be committed so that every machine splits by the same timings.
- Task names become lock names (``<task>-shard-<N>``), so they may only use
  letters, digits, ``.``, ``_`` and ``-``.
"""
from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import ConfigError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9 / 3.10 only
    import tomli as tomllib

CONFIG_NAME = "shards.toml"
CONFIG_VERSION = 1
SPLITS = ("name", "size", "timings")
ENGINES = ("auto", "lokt", "embedded")
PER_ITEM = "per-item"
#: Far beyond any real suite; a larger count is almost surely a typo.
MAX_SHARDS = 10000
DEFAULT_TTL = "10m"
DEFAULT_DURATIONS = "shard-durations.json"

TOP_KEYS = ("version", "defaults", "tasks")
DEFAULT_KEYS = ("ttl", "engine", "jobs", "split", "shards", "exclude", "durations", "results")
TASK_KEYS = ("run", "glob", "exclude", "collect", "shards", "shard", "split", "ttl", "engine", "jobs", "durations")
SHARD_KEYS = ("items", "glob")
#: Placeholders ``run`` may use, as they are listed in error messages.
PLACEHOLDERS = ("{items}", "{items:SEP}", "{shard}", "{total}", "{task}", "{junit}", "{python}")

_TASK_NAME = re.compile(r"[A-Za-z0-9._-]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SIMPLE_PLACEHOLDERS = ("items", "shard", "total", "task", "junit", "python")


@dataclass(frozen=True)
class ExplicitShard:
    """One ``[[tasks.NAME.shard]]`` entry: literal items and/or globs."""

    items: Tuple[str, ...] = ()
    glob: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskConfig:
    name: str
    #: The command template, as written (split into argv with shlex by plan).
    run: str
    glob: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    #: A command whose non-empty output lines are the items.
    collect: Optional[str] = None
    #: Shard count for dynamic tasks; None for explicit shards.
    shards: Optional[int] = None
    #: ``shards = "per-item"``: one shard per item.
    per_item: bool = False
    explicit: Tuple[ExplicitShard, ...] = ()
    split: str = "name"
    #: Lock TTL in seconds, and as written (a lokt duration such as "10m").
    ttl: float = 600.0
    ttl_text: str = "10m"
    engine: str = "auto"
    #: Parallel shards for shard-all; None means the CPU count.
    jobs: Optional[int] = None
    #: Absolute path of the durations file used by split = "timings".
    durations: Optional[Path] = None


@dataclass(frozen=True)
class Config:
    #: Absolute path of shards.toml.
    path: Path
    #: The directory holding shards.toml: globs are relative to it, and
    #: commands run in it.
    root: Path
    tasks: Mapping[str, TaskConfig] = field(default_factory=dict)
    #: Results directory from ``[defaults] results``, absolute, or None.
    results: Optional[Path] = None


@dataclass(frozen=True)
class Placeholder:
    """A ``{name}`` in a run template; ``separator`` is set for ``{items:SEP}``."""

    name: str
    separator: Optional[str] = None


#: One argv token of a run template: literal text and placeholders, in order.
Token = Tuple[Union[str, Placeholder], ...]


# ---------------------------------------------------------------- finding

def find_config(start: Path) -> Path:
    """The nearest shards.toml in ``start`` or a parent directory, absolute."""
    start = Path(start).absolute()
    for directory in (start, *start.parents):
        candidate = directory / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no {CONFIG_NAME} found in {start} or any parent directory (use --config PATH)")


def get_task(config: Config, name: str) -> TaskConfig:
    try:
        return config.tasks[name]
    except KeyError:
        known = ", ".join(config.tasks)
        raise UsageError(f"unknown task '{name}' in {display_path(config.path)}; known tasks: {known}") from None


# ---------------------------------------------------------------- errors

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
            continue
        shown = part if _BARE_KEY.fullmatch(part) else '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
        text = f"{text}.{shown}" if text else shown
    return text


def config_error(path: Path, key: str, problem: str) -> ConfigError:
    """The one-line error for a bad value: ``shards.toml: tasks.test.shards: <problem>``."""
    problem = " ".join(problem.split())
    return ConfigError(f"{display_path(path)}: {key}: {problem}")


# ---------------------------------------------------------------- durations

class DurationError(UsageError, ValueError):
    """A duration that lokt would refuse.

    A UsageError, so that a bad command-line value (``verify --timeout 10``)
    exits 2 with its one-line message; also a ValueError, so that callers
    parsing other sources can treat it as a plain parse error.
    """


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_BARE_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ("10m", "1h30m", "1.5s", "500ms"), as lokt reads it.

    Units are required, because lokt refuses a bare number: accepting one here
    would only move the error to the moment the lock is taken. Signs are not
    accepted (a lock lifetime or a timeout is never negative). Raises
    DurationError (a UsageError and a ValueError) with a one-line message.
    """
    if not isinstance(text, str):
        raise DurationError(f"expected a duration string such as \"10m\", got {text!r}")
    if text == "0":
        return 0.0
    if _BARE_NUMBER.fullmatch(text):
        raise DurationError(f"'{text}' has no unit; write '{text}s' for seconds (units: h, m, s, ms, us, ns)")
    position = 0
    seconds = 0.0
    while position < len(text):
        part = _DURATION_PART.match(text, position)
        if part is None:
            break
        seconds += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        position = part.end()
    if position == 0 or position < len(text):
        raise DurationError(f"'{text}' is not a duration; expected e.g. \"10m\", \"90s\", \"1h30m\" or \"500ms\"")
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


# ---------------------------------------------------------------- run templates

def parse_run_template(run: str) -> Tuple[Token, ...]:
    """Split ``run`` with shlex and find the placeholders in each argv token.

    ``{items}`` must be a whole token (it becomes one argv element per item);
    ``{items:SEP}`` may sit anywhere inside a token (the items joined by SEP);
    ``{{`` and ``}}`` are literal braces. Raises ValueError with a one-line
    message.
    """
    try:
        words = shlex.split(run)
    except ValueError as error:
        raise ValueError(f"cannot split into arguments: {error}") from None
    if not words:
        raise ValueError("empty command")
    tokens = tuple(_parse_token(word) for word in words)
    for token in tokens:
        if len(token) > 1 and Placeholder("items") in token:
            raise ValueError(
                "{items} must be a whole argument (it expands to one argument per item); "
                "to put the items inside an argument use {items:SEP}, e.g. '-run=^({items:|})$'"
            )
    return tokens


def _parse_token(word: str) -> Token:
    parts: List[Union[str, Placeholder]] = []
    literal = ""
    position = 0
    while position < len(word):
        char = word[position]
        if word.startswith("{{", position) or word.startswith("}}", position):
            literal += char
            position += 2
        elif char == "{":
            end = word.find("}", position)
            if end < 0:
                raise ValueError(f"unclosed '{{' in '{word}'; write '{{{{' for a literal brace")
            if literal:
                parts.append(literal)
                literal = ""
            parts.append(_placeholder(word[position + 1:end]))
            position = end + 1
        elif char == "}":
            raise ValueError(f"single '}}' in '{word}'; write '}}}}' for a literal brace")
        else:
            literal += char
            position += 1
    if literal or not parts:
        parts.append(literal)
    return tuple(parts)


def _placeholder(body: str) -> Placeholder:
    if body in _SIMPLE_PLACEHOLDERS:
        return Placeholder(body)
    if body.startswith("items:"):
        return Placeholder("items", body[len("items:"):])
    known = ", ".join(PLACEHOLDERS)
    raise ValueError(f"unknown placeholder '{{{body}}}'; known placeholders: {known} (write {{{{ and }}}} for literal braces)")


def uses_items(tokens: Tuple[Token, ...]) -> bool:
    return any(isinstance(part, Placeholder) and part.name == "items" for token in tokens for part in token)


# ---------------------------------------------------------------- glob patterns

def pattern_problem(pattern: str) -> Optional[str]:
    """Why a glob or exclude pattern cannot be used, or None.

    Patterns are relative to the directory of shards.toml and may not leave
    it: a plan must mean the same files on every machine and in every worktree.
    """
    if not pattern:
        return "empty pattern"
    if pattern.startswith("/") or pattern.startswith("~") or re.match(r"[A-Za-z]:[\\/]", pattern):
        return f"'{pattern}' is absolute; patterns are relative to the directory of {CONFIG_NAME}"
    segments = pattern.split("/")
    if ".." in segments:
        return f"'{pattern}' uses '..'; patterns may not leave the directory of {CONFIG_NAME}"
    for segment in segments:
        if "**" in segment and segment != "**":
            return f"'{pattern}': '**' must be a whole path segment, as in 'tests/**/test_*.py'"
    if not [segment for segment in segments if segment not in ("", ".")]:
        return f"'{pattern}' names no files"
    return None


# ---------------------------------------------------------------- loading

def load_config(path: Path) -> Config:
    """Read and validate shards.toml; raises ConfigError with a one-line message."""
    path = Path(path).absolute()
    root = path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{display_path(path)}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"{display_path(path)}: cannot read: {error.strerror or error}") from None
    data = _parse_toml(text, path)

    _check_known_keys(path, data, TOP_KEYS, ())
    if "version" in data:
        version = data["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version != CONFIG_VERSION:
            raise config_error(path, "version", f"expected {CONFIG_VERSION}, got {_describe(version)}; this lokt-tasks reads version 1")

    defaults_table = data.get("defaults", {})
    if not isinstance(defaults_table, dict):
        raise config_error(path, "defaults", f"expected a table ([defaults]), got {_describe(defaults_table)}")
    defaults = _read_defaults(path, defaults_table, root)

    tasks_table = data.get("tasks")
    if tasks_table is None or tasks_table == {}:
        raise ConfigError(f"{display_path(path)}: tasks: no tasks defined; add a [tasks.NAME] table with run and glob")
    if not isinstance(tasks_table, dict):
        raise config_error(path, "tasks", f"expected tables ([tasks.NAME]), got {_describe(tasks_table)}")
    tasks = {name: _read_task(path, name, table, defaults, root) for name, table in tasks_table.items()}
    return Config(path=path, root=root, tasks=tasks, results=defaults.get("results"))


def _parse_toml(text: str, path: Path) -> Dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if where:
            line, column = where.group(1), where.group(2)
            message = message[:where.start()]
        else:
            end = re.search(r"\s*\(at end of document\)$", message)
            if end:
                message = message[:end.start()] + " at end of file"
            lines = text.split("\n")
            line, column = str(len(lines)), str(len(lines[-1]) + 1)
        raise ConfigError(f"{display_path(path)}:{line}:{column}: invalid TOML: {message}") from None


def _read_defaults(path: Path, table: Dict[str, Any], root: Path) -> Dict[str, Any]:
    task_only = {"run": "the command", "glob": "the files", "collect": "the items command", "shard": "explicit shards"}
    for key in table:
        if key in task_only:
            raise config_error(path, key_path("defaults", key), f"{task_only[key]} can only be set in a [tasks.NAME] table")
    _check_known_keys(path, table, DEFAULT_KEYS, ("defaults",))
    values: Dict[str, Any] = {}
    where = ("defaults",)
    if "ttl" in table:
        values["ttl"] = _read_ttl(path, table["ttl"], where)
    if "engine" in table:
        values["engine"] = _read_choice(path, table["engine"], where + ("engine",), ENGINES)
    if "jobs" in table:
        values["jobs"] = _read_jobs(path, table["jobs"], where)
    if "split" in table:
        values["split"] = _read_choice(path, table["split"], where + ("split",), SPLITS)
    if "shards" in table:
        values["shards"] = _read_shard_count(path, table["shards"], where)
    if "exclude" in table:
        values["exclude"] = _read_patterns(path, table["exclude"], where + ("exclude",))
    if "durations" in table:
        values["durations"] = _read_path(path, table["durations"], where + ("durations",), root)
    if "results" in table:
        values["results"] = _read_path(path, table["results"], where + ("results",), root)
    return values


def _read_task(path: Path, name: str, table: Any, defaults: Dict[str, Any], root: Path) -> TaskConfig:
    where = ("tasks", name)
    here = key_path(*where)
    if not _TASK_NAME.fullmatch(name) or ".." in name:
        raise config_error(
            path, here,
            "task names may only use letters, digits, '.', '_' and '-' (no '..'), because they become lock names",
        )
    if not isinstance(table, dict):
        raise config_error(path, here, f"expected a table ([{here}]), got {_describe(table)}")
    if not table:
        raise config_error(path, here, f"empty task; set run and one of glob, collect or [[{here}.shard]]")
    if "results" in table:
        raise config_error(path, key_path(*where, "results"), "results can only be set in [defaults] (one results directory per project)")
    _check_known_keys(path, table, TASK_KEYS, where)

    if "run" not in table:
        raise config_error(path, key_path(*where, "run"), "missing; set the command to run, e.g. run = \"pytest -q {items}\"")
    run = table["run"]
    if not isinstance(run, str):
        raise config_error(path, key_path(*where, "run"), f"expected a string (the command), got {_describe(run)}")
    try:
        tokens = parse_run_template(run)
    except ValueError as error:
        raise config_error(path, key_path(*where, "run"), str(error)) from None

    glob = _read_patterns(path, table["glob"], where + ("glob",)) if "glob" in table else ()
    exclude = _read_patterns(path, table["exclude"], where + ("exclude",)) if "exclude" in table else defaults.get("exclude", ())
    collect = None
    if "collect" in table:
        collect = _read_collect(path, table["collect"], where + ("collect",))
    explicit = _read_explicit_shards(path, table["shard"], where + ("shard",)) if "shard" in table else ()
    split = _read_choice(path, table["split"], where + ("split",), SPLITS) if "split" in table else defaults.get("split", "name")
    shard_count = _read_shard_count(path, table["shards"], where) if "shards" in table else defaults.get("shards")
    ttl, ttl_text = _read_ttl(path, table["ttl"], where) if "ttl" in table else defaults.get("ttl", (parse_duration(DEFAULT_TTL), DEFAULT_TTL))
    engine = _read_choice(path, table["engine"], where + ("engine",), ENGINES) if "engine" in table else defaults.get("engine", "auto")
    jobs = _read_jobs(path, table["jobs"], where) if "jobs" in table else defaults.get("jobs")
    if "durations" in table:
        durations = _read_path(path, table["durations"], where + ("durations",), root)
    else:
        durations = defaults.get("durations", root / DEFAULT_DURATIONS)

    if not glob and collect is None and not explicit:
        raise config_error(
            path, here,
            f"nothing to shard; set glob (files), collect (a command listing items) or [[{here}.shard]] tables",
        )
    if glob and collect is not None:
        raise config_error(path, key_path(*where, "collect"), "a task takes its items from glob or from collect, not both")
    if explicit and collect is not None:
        raise config_error(path, key_path(*where, "collect"), f"collect cannot be combined with explicit [[{here}.shard]] tables")
    if explicit and "shards" in table:
        raise config_error(
            path, key_path(*where, "shards"),
            f"set either a shard count or explicit [[{here}.shard]] tables, not both (explicit tables make the count)",
        )
    if explicit and "split" in table:
        raise config_error(path, key_path(*where, "split"), f"has no effect with explicit [[{here}.shard]] tables; remove it")
    if not uses_items(tokens):
        raise config_error(
            path, key_path(*where, "run"),
            "has no {items} or {items:SEP}; without it every shard would run the same command",
        )

    per_item = False
    if explicit:
        shard_count = None
    elif shard_count is None:
        raise config_error(
            path, key_path(*where, "shards"),
            "missing; set a shard count (shards = 4) or shards = \"per-item\", here or in [defaults]",
        )
    elif shard_count == PER_ITEM:
        per_item, shard_count = True, None

    return TaskConfig(
        name=name,
        run=run,
        glob=glob,
        exclude=exclude,
        collect=collect,
        shards=shard_count,
        per_item=per_item,
        explicit=explicit,
        split=split,
        ttl=ttl,
        ttl_text=ttl_text,
        engine=engine,
        jobs=jobs,
        durations=durations,
    )


def _read_explicit_shards(path: Path, value: Any, where: Tuple[Union[str, int], ...]) -> Tuple[ExplicitShard, ...]:
    here = key_path(*where)
    if isinstance(value, dict) or not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise config_error(path, here, f"expected [[{here}]] tables (an array of tables), got {_describe(value)}")
    if not value:
        raise config_error(path, here, f"no shards; add [[{here}]] tables with items or glob")
    shards = []
    first_seen: Dict[str, str] = {}
    for number, entry in enumerate(value, start=1):
        entry_where = where + (number,)
        _check_known_keys(path, entry, SHARD_KEYS, entry_where)
        items = _read_strings(path, entry["items"], entry_where + ("items",)) if "items" in entry else ()
        glob = _read_patterns(path, entry["glob"], entry_where + ("glob",)) if "glob" in entry else ()
        if not items and not glob:
            raise config_error(path, key_path(*entry_where), "shard has no items; set items = [...] or glob = [...]")
        for item in items:
            owner = key_path(*entry_where)
            if item in first_seen:
                other = first_seen[item]
                place = "twice in this shard" if other == owner else f"also in {other}"
                raise config_error(path, key_path(*entry_where, "items"), f"'{item}' is listed {place}; an item belongs to one shard")
            first_seen[item] = owner
        shards.append(ExplicitShard(items=items, glob=glob))
    return tuple(shards)


def _read_strings(path: Path, value: Any, where: Tuple[Union[str, int], ...]) -> Tuple[str, ...]:
    here = key_path(*where)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise config_error(path, here, f"expected a list of strings, got {_describe(value)}")
    if any(entry == "" for entry in value):
        raise config_error(path, here, "contains an empty string")
    return tuple(value)


def _read_patterns(path: Path, value: Any, where: Tuple[Union[str, int], ...]) -> Tuple[str, ...]:
    patterns = _read_strings(path, value, where)
    if not patterns:
        raise config_error(path, key_path(*where), "empty list; give at least one pattern or remove the key")
    for pattern in patterns:
        problem = pattern_problem(pattern)
        if problem:
            raise config_error(path, key_path(*where), problem)
    return patterns


def _read_collect(path: Path, value: Any, where: Tuple[Union[str, int], ...]) -> str:
    here = key_path(*where)
    if not isinstance(value, str):
        raise config_error(path, here, f"expected a string (a command whose output lines are the items), got {_describe(value)}")
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise config_error(path, here, f"cannot split into arguments: {error}") from None
    if not words:
        raise config_error(path, here, "empty command")
    return value


def _read_shard_count(path: Path, value: Any, where: Tuple[Union[str, int], ...]) -> Union[int, str]:
    here = key_path(*where, "shards")
    expected = f"expected an integer from 1 to {MAX_SHARDS} or \"{PER_ITEM}\""
    if isinstance(value, list) and value and all(isinstance(entry, dict) for entry in value):
        raise config_error(path, here, f"{expected}, got an array of tables (explicit shards are [[{key_path(*where, 'shard')}]])")
    if value == PER_ITEM:
        return PER_ITEM
    if isinstance(value, bool) or not isinstance(value, int):
        raise config_error(path, here, f"{expected}, got {_describe(value)}")
    if value < 1:
        raise config_error(path, here, f"{expected}, got {value}: a task needs at least one shard")
    if value > MAX_SHARDS:
        raise config_error(path, here, f"{expected}, got {value}: too many (for one shard per item use \"{PER_ITEM}\")")
    return value


def _read_jobs(path: Path, value: Any, where: Tuple[Union[str, int], ...]) -> int:
    here = key_path(*where, "jobs")
    if isinstance(value, bool) or not isinstance(value, int):
        raise config_error(path, here, f"expected an integer of at least 1, got {_describe(value)}")
    if value < 1:
        raise config_error(path, here, f"expected an integer of at least 1, got {value}")
    return value


def _read_ttl(path: Path, value: Any, where: Tuple[Union[str, int], ...]) -> Tuple[float, str]:
    here = key_path(*where, "ttl")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise config_error(path, here, f"{value} has no unit; write a string with a unit, e.g. \"{value}s\" or \"10m\"")
    if not isinstance(value, str):
        raise config_error(path, here, f"expected a duration string such as \"10m\", got {_describe(value)}")
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise config_error(path, here, str(error)) from None
    if seconds <= 0:
        raise config_error(path, here, f"'{value}' must be longer than zero")
    return seconds, value


def _read_choice(path: Path, value: Any, where: Tuple[Union[str, int], ...], choices: Tuple[str, ...]) -> str:
    here = key_path(*where)
    allowed = ", ".join(f'"{choice}"' for choice in choices)
    if not isinstance(value, str):
        raise config_error(path, here, f"expected one of {allowed}, got {_describe(value)}")
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise config_error(path, here, f"expected one of {allowed}, got \"{value}\"{hint}")
    return value


def _read_path(path: Path, value: Any, where: Tuple[Union[str, int], ...], root: Path) -> Path:
    here = key_path(*where)
    if not isinstance(value, str) or not value:
        raise config_error(path, here, f"expected a path (a non-empty string), got {_describe(value)}")
    return Path(os.path.normpath(root / value))


def _check_known_keys(path: Path, table: Dict[str, Any], known: Tuple[str, ...], where: Tuple[Union[str, int], ...]) -> None:
    for key in table:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "known keys: " + ", ".join(known)
        raise config_error(path, key_path(*where, key), f"unknown key; {hint}")


def _describe(value: Any) -> str:
    """A value and its TOML type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a float)"
    if isinstance(value, str):
        return f"\"{value}\" (a string)"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__.replace('datetime', 'date-time')}"
