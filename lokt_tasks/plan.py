"""Turn a task's configuration into shards: items, argv, lock name, fingerprint.

Agents that plan separately must agree on which shard holds which item, or
items would run twice or not at all. So a plan depends on the files and the
durations file only, never on the machine (CPU count, file order on disk):
items are sorted by their text (POSIX-style paths relative to the directory
of shards.toml), and every tie is broken by name, then by shard number.

Items come from ``glob`` (see :mod:`lokt_tasks.globs`; every pattern must
match a file), from ``collect`` (the stripped, non-empty lines its command
prints, up to the first blank line after an item), or from explicit
``[[tasks.NAME.shard]]`` tables (their literal ``items`` plus the files their
globs match, one shard per table). ``exclude`` drops items of every kind.

A dynamic task gets at most one shard per item: an empty shard would run its
command with no items, which most test runners take for "run everything".
``name`` cuts the sorted items into contiguous chunks of near-equal count
(the first ``items % shards`` one item longer): neighbouring files stay
together. ``size`` and ``timings`` are longest-processing-time first: items
from the heaviest (ties: by name) go one by one to the shard with the
smallest load so far (ties: fewer items, then the lower number), weighed in
bytes or in recorded seconds (bytes when no item has a time). Both move
items when files or timings change, so every agent must plan from the same
commit and durations file; the fingerprint makes a mismatch visible.
``shards = "per-item"`` is one shard per item.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib.machinery
import importlib.util
import json
import math
import os
import shlex
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from itertools import dropwhile, takewhile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .attempt import JUNIT_PLACEHOLDER, SLOT_PLACEHOLDER, escape_braces, fill_template
from .config import (
    MAX_SHARDS,
    Config,
    Placeholder,
    TaskConfig,
    config_error,
    display_path,
    get_task,
    key_path,
    parse_placeholders,
    parse_run_template,
)
from .durations import TaskTimings, read_task_timings
from .errors import SetupError, UsageError
from .globs import glob_files, normal_path, without_excluded
from .text import format_seconds, shorten, table

PLAN_JSON_VERSION = 1
#: How many items a warning lists before "and N more".
_SHOWN_IN_WARNINGS = 5


@dataclass(frozen=True)
class Shard:
    task: str
    #: 1-based, as in ``--id`` and in the lock name.
    index: int
    total: int
    items: Tuple[str, ...]
    #: The command, placeholders expanded except ``{junit}``.
    argv: Tuple[str, ...]
    #: ``<task>-shard-<index>``.
    lock_name: str
    #: Hex digest over the command template, the shard count and the items:
    #: a record with another fingerprint belongs to another plan.
    fingerprint: str
    #: Estimated seconds, or None when no item of the task has a recorded time.
    estimate: Optional[float] = None
    #: Estimated work in the plan's unit (``PlanStats.unit``): seconds, bytes or items.
    weight: float = 0.0
    #: The command as a template for other items (JSON, ``attempt.fill_template``):
    #: what retries of its failing tests run.
    template: str = ""
    #: The command's extra environment (``env``), expanded as ``argv`` is.
    env: Tuple[Tuple[str, str], ...] = ()
    #: Named exclusive resources the shard holds while its command runs.
    resources: Tuple[str, ...] = ()
    #: Positions in ``argv``, and names in ``env``, of ``str.format`` templates
    #: whose one field is ``{slot}`` (their other braces doubled; ``{junit}`` left).
    slot_args: Tuple[int, ...] = ()
    slot_env: Tuple[str, ...] = ()

    @property
    def wants_junit(self) -> bool:
        return any(JUNIT_PLACEHOLDER in arg for arg in self.argv) or any(
            JUNIT_PLACEHOLDER in value for _, value in self.env
        )

    @property
    def uses_slot(self) -> bool:
        """Whether its command or environment says ``{slot}``."""
        return bool(self.slot_args or self.slot_env)


@dataclass(frozen=True)
class PlanStats:
    """How evenly the work is spread, in ``unit`` ("seconds", "bytes" or "items")."""

    unit: str
    items: int
    total: float
    #: ``total / shards``: every shard's load if the split were perfect.
    ideal: float
    #: No split can finish faster: ``max(ideal, heaviest single item)``.
    lower_bound: float
    largest: float
    #: ``largest / ideal``; 1.0 is a perfect split.
    balance: float
    heaviest_item: Optional[str] = None
    #: The heaviest single item's estimated work, in ``unit``.
    heaviest: float = 0.0


@dataclass(frozen=True)
class Plan:
    task: str
    #: Directory the commands run in (the directory of shards.toml).
    cwd: Path
    shards: Tuple[Shard, ...]
    split: str = "name"
    warnings: Tuple[str, ...] = ()
    stats: Optional[PlanStats] = None
    #: Files the task's globs match that no explicit shard covers.
    uncovered: Tuple[str, ...] = ()
    #: Explicit items that more than one shard covers, with those shards.
    overlaps: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()
    #: The run whose pinned timings the plan was made from, or None.
    pinned_by: Optional[str] = None


#: Seconds per item, or a task's recorded times (estimates come from those).
Durations = Union[Mapping[str, float], TaskTimings]


def build_plan(
    config: Config,
    task_name: str,
    *,
    shards: Optional[int] = None,
    durations: Optional[Durations] = None,
) -> Plan:
    """The shards of ``task_name``.

    ``shards`` overrides the count of a dynamic task; for a task with
    explicit shards it must equal their number. ``durations`` maps items to
    seconds, or is the task's recorded times; when None, the task's
    durations file is read (a missing file means no timings; a corrupt one
    is a warning, and no timings).
    """
    task = get_task(config, task_name)
    tokens = parse_run_template(task.run)
    warnings: List[str] = []
    if durations is None:
        durations = _task_durations(task, warnings)
    uncovered: List[str] = []
    overlaps: List[Tuple[str, Tuple[int, ...]]] = []
    if task.explicit:
        groups = _explicit_groups(config, task, warnings, uncovered, overlaps)
        if shards is not None and shards != len(groups):
            raise UsageError(
                f"task '{task.name}' has {len(groups)} explicit shards in "
                f"{display_path(config.path)}; a shard count of {shards} cannot change that"
            )
        split = "explicit"
        all_items = sorted({item for group in groups for item in group})
        costs, unit = _item_costs(all_items, config.root, durations, split)
    else:
        items = (_collect_items if task.collect is not None else _glob_task_items)(config, task)
        count = _shard_count(task, shards, len(items), warnings)
        split = "per-item" if task.per_item and shards is None else task.split
        costs, unit = _item_costs(items, config.root, durations, split)
        groups = _split(items, count, split, config.root, costs, unit)

    total = len(groups)
    built = []
    for index, items_tuple in enumerate(map(tuple, groups), start=1):
        weight = math.fsum(map(costs.__getitem__, items_tuple))
        shard = _shard(
            config,
            task,
            tokens,
            index=index,
            total=total,
            items=items_tuple,
            lock=lock_name(task.name, index),
            estimate=weight if unit == "seconds" else None,
            weight=weight,
        )
        where = ("shard", index) if task.explicit else ("shards",)
        check_command_size(shard, config, key_path("tasks", task.name, *where))
        built.append(shard)
    return Plan(
        task=task.name,
        cwd=config.root,
        shards=tuple(built),
        split=split,
        warnings=tuple(warnings),
        stats=_stats(built, costs, unit),
        uncovered=tuple(uncovered),
        overlaps=tuple(overlaps),
        pinned_by=durations.pinned_by if isinstance(durations, TaskTimings) else None,
    )


def _shard(
    config: Config,
    task: TaskConfig,
    tokens,
    *,
    index: int,
    total: int,
    items: Tuple[str, ...],
    lock: str,
    estimate: Optional[float] = None,
    weight: float,
) -> Shard:
    """One shard of ``task`` running ``items`` under the lock ``lock``: its
    command and environment expanded, its retry template, its fingerprint."""
    template = command_template(tokens, task=task.name, index=index, total=total)
    argv = tuple(fill_template(template, items, str(config.root)))
    env_args = [
        (name, _template_arg(parse_placeholders(value), _values(task.name, index, total)))
        for name, value in task.env
    ]
    env = tuple((name, fill_template([arg], items, str(config.root))[0]) for name, arg in env_args)
    return Shard(
        task=task.name,
        index=index,
        total=total,
        items=items,
        argv=argv,
        lock_name=lock,
        fingerprint=fingerprint(task.run, total, index, items, env),
        estimate=estimate,
        weight=weight,
        template=json.dumps(template),
        env=env,
        resources=task.resources,
        slot_args=_slot_positions(template, len(items)),
        slot_env=tuple(name for name, arg in env_args if isinstance(arg, dict)),
    )


def _task_durations(task: TaskConfig, warnings: List[str]) -> TaskTimings:
    """The task's times in its durations file; a corrupt one is a warning."""
    if task.durations is None:
        return TaskTimings()
    timings, warning = read_task_timings(task.durations, task.name)
    if warning:
        warnings.append(warning)
    return timings


def lock_name(task: str, index: int) -> str:
    return f"{task}-shard-{index}"


def fingerprint(
    run: str, total: int, index: int, items: Sequence[str], env: Sequence[Tuple[str, str]] = ()
) -> str:
    """16 hex digits of sha256 over what a shard runs (its ``env`` too, when it
    has one): a changed plan changes it."""
    payload: Dict[str, Any] = {"run": run, "total": total, "index": index, "items": list(items)}
    if env:
        payload["env"] = [list(pair) for pair in env]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def expand_argv(
    tokens, items: Sequence[str], *, task: str, index: int, total: int, root: Path
) -> Tuple[str, ...]:
    """The argv of one shard from a parsed run template (``config.parse_run_template``).

    ``{items}`` becomes one argument per item (``./<item>`` for one that starts
    with ``-`` and names a path, so it is not read as an option), ``{items:SEP}``
    the items joined by SEP, ``{python}`` the interpreter running lokt-tasks (a
    venv's tools are found without activating it); ``{junit}`` is left as it is,
    and so is ``{slot}``, in an argument that is then a ``str.format`` template
    (its other braces doubled: see ``Shard.slot_args``).
    """
    template = command_template(tokens, task=task, index=index, total=total)
    return tuple(fill_template(template, items, str(root)))


def command_template(tokens, *, task: str, index: int, total: int) -> List[Any]:
    """A shard's command with every placeholder expanded but the items (left as
    places, see ``attempt.fill_template``), ``{junit}`` (left as it is) and
    ``{slot}`` (its argument a ``str.format`` template)."""
    values = _values(task, index, total)
    return [_template_arg(token, values) for token in tokens]


def _values(task: str, index: int, total: int) -> Dict[str, str]:
    """What the placeholders but ``{items}``, ``{junit}`` and ``{slot}`` stand for."""
    return {"shard": str(index), "total": str(total), "task": task, "python": sys.executable}


def _template_arg(token, values: Mapping[str, str]) -> Any:
    """One argument (or ``env`` value) of a command template (``attempt.fill_template``)."""
    if token == (Placeholder("items"),):
        return None
    if Placeholder("slot") in token:  # a str.format template: literal braces doubled
        parts: List[Any] = [""]
        for part in token:
            if isinstance(part, Placeholder) and part.name in ("slot", "junit"):
                parts[-1] += SLOT_PLACEHOLDER if part.name == "slot" else JUNIT_PLACEHOLDER
            elif isinstance(part, str):
                parts[-1] += escape_braces(part)
            elif part.name == "items":
                parts += [[part.separator], ""]
            else:
                parts[-1] += escape_braces(values[part.name])
        return {"slot": [part for part in parts if part != ""]}
    parts = [""]
    for part in token:
        if isinstance(part, str):
            parts[-1] += part
        elif part.name == "items":
            parts += [[part.separator], ""]
        else:
            parts[-1] += values.get(part.name, JUNIT_PLACEHOLDER)
    return parts[0] if len(parts) == 1 else [part for part in parts if part != ""]


def _slot_positions(template: Sequence[Any], items: int) -> Tuple[int, ...]:
    """Where the ``{slot}`` templates of ``template`` land in its argv for ``items`` items."""
    positions, at = [], 0
    for arg in template:
        if isinstance(arg, dict):
            positions.append(at)
        at += items if arg is None else 1
    return tuple(positions)


def takes_whole_items(task: TaskConfig) -> bool:
    """Whether the task's command takes its items as whole arguments (``{items}``),
    rather than only joined inside one (``{items:SEP}``)."""
    return (Placeholder("items"),) in parse_run_template(task.run)


def rerun_lock_name(task: str, index: int) -> str:
    return f"{task}-rerun-{index}"


def rerun_groups(items: Sequence[str], jobs: int) -> List[List[str]]:
    """Failed tests to rerun, sorted and cut into at most ``jobs`` contiguous shards."""
    ordered = sorted(set(items))
    return _split(ordered, max(1, min(jobs, len(ordered))), "name", Path("."), {}, "items")


def rerun_plan(config: Config, task_name: str, groups: Sequence[Sequence[str]]) -> Plan:
    """The plan of a rerun of failed tests: a shard per group of items (test
    ids, as ``junit.runner_items`` gives them), each under the lock
    ``<task>-rerun-<N>``, with the task's command and fingerprints."""
    task = get_task(config, task_name)
    tokens = parse_run_template(task.run)
    total, shards = len(groups), []
    for index, items in enumerate(map(tuple, groups), start=1):
        shard = _shard(
            config,
            task,
            tokens,
            index=index,
            total=total,
            items=items,
            lock=rerun_lock_name(task.name, index),
            weight=float(len(items)),
        )
        check_command_size(shard, config, key_path("tasks", task.name, "run"))
        shards.append(shard)
    return Plan(task=task.name, cwd=config.root, shards=tuple(shards), split="rerun")


def python_module(command: str) -> Optional[str]:
    """The module a ``{python} [OPTIONS] -m MODULE ...`` command runs, or None
    when it does not start with ``{python}`` or runs a script or ``-c``."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or words[0] != "{python}":
        return None
    rest = iter(words[1:])
    for word in rest:
        if word == "-m":
            return next(rest, None)
        if word.startswith("-m"):
            return word[2:]
        if word in ("-X", "-W"):  # options whose value is the next word
            next(rest, None)
        elif word == "-c" or not word.startswith("-"):
            return None
    return None


def check_python_modules(config: Config, task: TaskConfig, *, run: bool) -> None:
    """Raise SetupError when a command of ``task`` (``collect``, and ``run`` if
    asked) is ``{python} -m MODULE`` and that interpreter cannot import MODULE.

    ``{python}`` is this interpreter, so a look-up here answers for it (with the
    directory of shards.toml, where ``-m`` also looks): lokt-tasks installed in
    an environment of its own (as pipx does) lacks the project's test runner,
    and every shard would fail as if its tests had.
    """
    commands = [("collect", task.collect)] + ([("run", task.run)] if run else [])
    for key, command in commands:
        module = python_module(command) if command else None
        if not module or "{" in module:
            continue
        top = module.split(".")[0]
        try:
            found = importlib.util.find_spec(top) or importlib.machinery.PathFinder.find_spec(
                top, [str(config.root)]
            )
        except (ImportError, ValueError):
            found = None
        if found is None:
            where = f"{display_path(config.path)}: {key_path('tasks', task.name, key)}"
            raise SetupError(
                f"{where}: {{python}} is {sys.executable}, which has no module '{top}';"
                f" install {top} into that environment, or lokt-tasks into the one that has it"
            )


#: Room kept on the command line for what runs before the shard's command with the
#: lokt engine: lokt guard, and the attempt process with the fields of the record.
COMMAND_LINE_HEADROOM = 16 * 1024


def check_command_size(shard: Shard, config: Config, key: str) -> None:
    """Raise a ConfigError naming ``key`` now, not inside the lock, for a command that cannot start.

    exec fails with E2BIG when the arguments and the environment (each string
    with its NUL and its pointer) pass ARG_MAX, or, on Linux, when one
    argument passes 32 pages ({items:SEP} joins every item into one).
    """
    try:
        limit = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        return
    if limit <= 0:
        return
    pointer = struct.calcsize("P")
    # ASCII text is as many bytes as characters in any file system encoding.
    arguments = [(len(arg) if arg.isascii() else len(os.fsencode(arg))) + 1 for arg in shard.argv]
    size = sum(arguments) + pointer * len(arguments)
    environment = {**os.environ, **dict(shard.env)}
    size += sum(
        len(os.fsencode(f"{name}={value}")) + 1 + pointer for name, value in environment.items()
    )
    where = (
        f"shard {shard.index} of {shard.total} of task '{shard.task}' ({len(shard.items)} items)"
    )
    room = limit - COMMAND_LINE_HEADROOM
    if size > room:
        raise config_error(
            config.path,
            key,
            f"{where} needs a command line of {size:,} bytes with the environment, "
            f"over this system's limit of {room:,} (ARG_MAX less "
            f"{COMMAND_LINE_HEADROOM:,} kept for the attempt process); use more shards",
        )
    if sys.platform.startswith("linux"):
        one_argument = 32 * os.sysconf("SC_PAGE_SIZE")
        if max(arguments, default=0) > one_argument:
            raise config_error(
                config.path,
                key,
                f"{where} has an argument of {max(arguments):,} bytes, over Linux's limit of "
                f"{one_argument:,} for one argument; use more shards, or {{items}} "
                f"instead of {{items:SEP}}",
            )


def _glob_all(
    config: Config, patterns: Sequence[str], exclude: Sequence[str], key: str
) -> Dict[str, None]:
    """The files ``patterns`` match less ``exclude``, in order; ConfigError if one matches none."""
    files: Dict[str, None] = {}
    for pattern in patterns:
        matched = glob_files(config.root, pattern, exclude)
        if not matched and not (exclude and glob_files(config.root, pattern)):
            hint = ""
            if (config.root / pattern).is_dir():
                hint = (
                    f" ('{pattern}' is a directory; "
                    f"for the files below it write '{pattern.rstrip('/')}/**')"
                )
            raise config_error(config.path, key, f"'{pattern}' matches no files{hint}")
        files.update(dict.fromkeys(matched))
    return files


def _glob_task_items(config: Config, task: TaskConfig) -> List[str]:
    # NOTE: _glob_all keeps each pattern's sorted files in order: sorting them is nearly free.
    items = _glob_all(config, task.glob, task.exclude, key_path("tasks", task.name, "glob"))
    if not items:
        raise config_error(
            config.path,
            key_path("tasks", task.name, "exclude"),
            "excludes every file the glob patterns match; nothing is left to run",
        )
    return sorted(items)


def _collect_items(config: Config, task: TaskConfig) -> List[str]:
    key = key_path("tasks", task.name, "collect")
    command = task.collect or ""
    try:
        completed = subprocess.run(
            [word.replace("{python}", sys.executable) for word in shlex.split(command)],
            cwd=str(config.root),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except OSError as error:
        raise config_error(
            config.path, key, f"cannot run '{command}': {error.strerror or error}"
        ) from None
    code = completed.returncode
    if code != 0:
        stderr_lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
        last = f": {stderr_lines[-1][:200]}" if stderr_lines else " (no error output)"
        ended = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise config_error(config.path, key, f"'{command}' {ended}{last}")
    # Items end at the first blank line after one, before a runner's summary.
    stripped = (line.strip() for line in completed.stdout.splitlines())
    lines = set(takewhile(bool, dropwhile(lambda line: not line, stripped)))
    if not lines:
        raise config_error(config.path, key, f"'{command}' printed no items")
    items = without_excluded(sorted(lines), task.exclude)
    if not items:
        raise config_error(
            config.path,
            key_path("tasks", task.name, "exclude"),
            f"excludes every item '{command}' printed; nothing is left to run",
        )
    return items


def _explicit_groups(
    config: Config,
    task: TaskConfig,
    warnings: List[str],
    uncovered: List[str],
    overlaps: List[Tuple[str, Tuple[int, ...]]],
) -> List[List[str]]:
    """Each explicit shard's sorted items. Fills ``overlaps`` with the items
    that several shards cover (the same item, or one below another's
    directory or Go package pattern: ``pkg/a``, ``./pkg/a/...``,
    ``pkg/a/x``) and ``uncovered`` with the files of the task's globs that
    no shard covers, and warns of both."""
    groups = []
    shards_of: Dict[str, Set[int]] = {}  # by normal path: "./pkg/a/..." is "pkg/a"
    for number, entry in enumerate(task.explicit, start=1):
        glob_key = key_path("tasks", task.name, "shard", number, "glob")
        members = sorted({*entry.items, *_glob_all(config, entry.glob, task.exclude, glob_key)})
        if not members:
            raise config_error(
                config.path,
                key_path("tasks", task.name, "shard", number),
                "shard has no items left after exclude",
            )
        for item in members:
            shards_of.setdefault(_covered_path(item, config.root), set()).add(number)
        groups.append(members)
    for item in sorted({item for group in groups for item in group}):
        above = _above(_covered_path(item, config.root))
        numbers = tuple(sorted(set().union(*(shards_of.get(p, set()) for p in above))))
        if len(numbers) > 1:
            overlaps.append((item, numbers))
            warnings.append(
                f"'{item}' is in shards {', '.join(map(str, numbers))} of task '{task.name}' "
                "(their globs overlap): it runs more than once"
            )
    if task.glob:
        glob_key = key_path("tasks", task.name, "glob")
        files = _glob_all(config, task.glob, task.exclude, glob_key)
        uncovered.extend(
            path
            for path in sorted(files)
            if not any(p in shards_of for p in _above(_covered_path(path, config.root)))
        )
        if uncovered:
            shown = ", ".join(f"'{path}'" for path in uncovered[:_SHOWN_IN_WARNINGS])
            more = len(uncovered) - _SHOWN_IN_WARNINGS
            warnings.append(
                f"{len(uncovered)} file(s) matched by {glob_key} are in no shard of task "
                f"'{task.name}': {shown}" + (f" and {more} more" if more > 0 else "")
            )
    return groups


def _covered_path(item: str, root: Path) -> str:
    """The path below ``root`` that an explicit item covers, one spelling for
    one file: a Go package pattern such as "./pkg/..." covers what is below
    "pkg"; ``..``, an absolute path and a symbolic link on the way are
    resolved when the path exists."""
    path = item[: -len("/...")] if item.endswith("/...") else item
    full = os.path.join(root, path)
    if os.path.lexists(full):
        base = os.path.realpath(root)
        real = os.path.relpath(os.path.realpath(full), base)
        if real != ".." and not real.startswith("../"):
            return normal_path(real)
    return normal_path(os.path.normpath(path) if path else path)


def _above(path: str) -> List[str]:
    """The paths whose items would cover ``path`` (a covered path): its own and
    each directory above it ("" covers everything)."""
    parts = path.split("/")
    return ["/".join(parts[:length]) for length in range(len(parts) + 1)]


def _shard_count(
    task: TaskConfig, override: Optional[int], item_count: int, warnings: List[str]
) -> int:
    if override is not None:
        if (
            isinstance(override, bool)
            or not isinstance(override, int)
            or not 1 <= override <= MAX_SHARDS
        ):
            raise UsageError(
                f"shard count must be an integer from 1 to {MAX_SHARDS}, got {override!r}"
            )
        count = override
    elif task.per_item:
        return item_count
    else:
        count = task.shards or 1
    if count > item_count:
        warnings.append(
            f"task '{task.name}' has {item_count} item(s) for {count} shards; "
            f"using {item_count} shard(s), since an empty shard would have nothing to run"
        )
        count = item_count
    return count


def _split(
    items: List[str], count: int, split: str, root: Path, costs: Mapping[str, float], unit: str
) -> List[List[str]]:
    if split == "per-item":
        return [[item] for item in items]
    if split == "name":
        base, extra = divmod(len(items), count)
        bounds = [index * base + min(index, extra) for index in range(count + 1)]
        return [items[start:end] for start, end in zip(bounds, bounds[1:])]
    if split == "size" and unit == "seconds":
        costs = _item_costs(items, root, {}, split)[0]  # other costs are already the sizes
    # Heaviest first, ties by name: a sort with reverse=True keeps equal weights in order.
    order = sorted(sorted(items), key=costs.__getitem__, reverse=True)
    loads = [(0.0, 0, index) for index in range(count)]
    groups: List[List[str]] = [[] for _ in range(count)]
    for item in order:
        load, size, index = loads[0]  # the lightest shard
        groups[index].append(item)
        heapq.heapreplace(loads, (load + costs[item], size + 1, index))
    return [sorted(group) for group in groups]


def _item_costs(
    items: Sequence[str], root: Path, durations: Durations, split: str
) -> Tuple[Dict[str, float], str]:
    """Each item's estimated work, and its unit: seconds, else bytes, else items.

    Seconds whenever an item has a recorded time, whatever the split (``shard-all``
    starts the longest shards first); an item without one counts as the mean of
    the known ones. A split by name without timings counts items: it never needs
    sizes, and a ``stat`` per file would be most of the time a plan of 100,000 files takes.
    """
    unit = "seconds"
    if isinstance(durations, TaskTimings):
        known = durations.seconds(items)
    else:
        known = {item: float(durations[item]) for item in items if item in durations}
    if not known and split != "name":
        unit, prefix = "bytes", os.path.join(root, "")
        sizes = {item: _file_size(root, prefix, item) for item in items}
        known = {item: size for item, size in sizes.items() if size is not None}
    if not known:
        return dict.fromkeys(items, 1.0), "items"
    mean = math.fsum(known.values()) / len(known)
    return {item: known.get(item, mean) for item in items}, unit


def _file_size(root: Path, prefix: str, item: str) -> Optional[float]:
    """Bytes of the regular file (symlinks followed) ``item`` names below ``root``, else None."""
    if item.endswith(("/", "/.")):
        path = str(root / item)  # pathlib drops the trailing part: "a.py/" is the file a.py
    else:  # prefix + item is root / item at a fraction of pathlib's cost
        path = item if item.startswith("/") else prefix + item
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return float(status.st_size) if stat.S_ISREG(status.st_mode) else None


def _stats(shards: Sequence[Shard], costs: Mapping[str, float], unit: str) -> PlanStats:
    total = math.fsum(shard.weight for shard in shards)
    ideal = total / len(shards) if shards else 0.0
    longest = max(costs.values()) if costs else 0.0
    heaviest_item = min(item for item, cost in costs.items() if cost == longest) if costs else None
    largest = max((shard.weight for shard in shards), default=0.0)
    return PlanStats(
        unit=unit,
        items=len(costs),
        total=total,
        ideal=ideal,
        lower_bound=max(ideal, longest),
        largest=largest,
        balance=largest / ideal if ideal > 0 else 1.0,
        heaviest_item=heaviest_item,
        heaviest=longest,
    )


def plan_to_json(plan: Plan) -> Dict[str, Any]:
    """The plan as JSON-ready data, keys and value shapes a stable contract (version 1).

    ``argv`` keeps ``{junit}``; ``estimate`` is seconds or null; ``weight`` and
    the stats are in the stats' ``unit``, with three decimals.
    """
    stats = plan.stats
    return {
        "version": PLAN_JSON_VERSION,
        "task": plan.task,
        "cwd": str(plan.cwd),
        "split": plan.split,
        "shards": [
            {
                "index": shard.index,
                "total": shard.total,
                "lock_name": shard.lock_name,
                "fingerprint": shard.fingerprint,
                "items": list(shard.items),
                "argv": list(shard.argv),
                "estimate": None if shard.estimate is None else round(shard.estimate, 3),
                "weight": round(shard.weight, 3),
                "env": dict(shard.env),
                "resources": list(shard.resources),
            }
            for shard in plan.shards
        ],
        "stats": None
        if stats is None
        else {
            "unit": stats.unit,
            "items": stats.items,
            "total": round(stats.total, 3),
            "ideal": round(stats.ideal, 3),
            "lower_bound": round(stats.lower_bound, 3),
            "largest": round(stats.largest, 3),
            "balance": round(stats.balance, 3),
            "heaviest_item": stats.heaviest_item,
        },
        "pinned_by_run": plan.pinned_by,
        "warnings": list(plan.warnings),
        "uncovered_items": list(plan.uncovered),
        "overlapping_items": {item: list(shards) for item, shards in plan.overlaps},
    }


def render_plan(plan: Plan, *, full: bool = False, width: int = 160) -> str:
    """The shards' table, the balance, the commands (cut to ``width`` unless ``full``), warnings."""
    stats = plan.stats
    unit = stats.unit if stats else "items"
    item_total = stats.items if stats else sum(len(shard.items) for shard in plan.shards)
    lines = [
        f"task '{plan.task}': {item_total} item(s) in {len(plan.shards)} shard(s), "
        f"split: {plan.split}"
    ]
    header = ["shard", "items", "lock", "fingerprint"]
    rows = [
        [f"{shard.index}/{shard.total}", str(len(shard.items)), shard.lock_name, shard.fingerprint]
        for shard in plan.shards
    ]
    if unit != "items":  # in items, a shard's weight is its item count, already shown
        header.insert(2, {"seconds": "estimate", "bytes": "size"}[unit])
        for row, shard in zip(rows, plan.shards):
            row.insert(2, format_weight(shard.weight, unit))
    lines.extend(table([header, *rows], right={1} if unit == "items" else {1, 2}))
    if stats and plan.shards:
        total, ideal, bound = (
            format_weight(value, unit) for value in (stats.total, stats.ideal, stats.lower_bound)
        )
        lines.append(
            f"total {total}; ideal {ideal} per shard; lower bound {bound}; "
            f"balance {stats.balance:.2f} (1.00 is even)"
        )
    if plan.pinned_by is not None:
        lines.append(
            f"timings: the copy pinned when run {plan.pinned_by} started, which its shards "
            "use (plan --current: from the current timings)"
        )
    lines.append(f"commands (run in {plan.cwd}):")
    for shard in plan.shards:
        command = shlex.join(shard.argv)
        lines.append(f"  {shard.index}: {command if full else shorten(command, width)}")
        if shard.env:
            env = " ".join(f"{name}={shlex.quote(value)}" for name, value in shard.env)
            lines.append(f"     env: {env if full else shorten(env, width)}")
    resources = plan.shards[0].resources if plan.shards else ()
    if resources:
        lines.append(f"each shard holds while it runs: {', '.join(resources)}")
    lines.extend(f"warning: {warning}" for warning in plan.warnings)
    return "\n".join(lines)


def format_weight(value: float, unit: str) -> str:
    """``12.3s``, ``2m05s`` or ``1h02m`` for seconds, ``12.3 KB`` for bytes, ``3.3 items``."""
    if unit == "seconds":
        return format_seconds(value)
    if unit == "bytes":
        for suffix in ("B", "KB", "MB", "GB"):
            if value < 1024 or suffix == "GB":
                return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
            value /= 1024
    count = f"{value:.0f}" if value == round(value) else f"{value:.1f}"
    return "1 item" if count == "1" else f"{count} items"
