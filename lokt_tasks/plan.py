"""Turn a task's configuration into shards: items, argv, lock name, fingerprint.

A plan must come out the same on every machine and in every worktree, for the
same files and the same durations file: agents that plan separately must
agree on which shard holds which item, or items would run twice or not at
all. So items are sorted by their text (POSIX-style paths relative to the
directory of shards.toml), every tie is broken by name and then by shard
number, and nothing depends on this machine (CPU count, file order on disk).

Items
    ``glob``: files only (directories are skipped, symlinks to files count),
    relative to the directory of shards.toml; wcmatch gives the patterns
    their meaning (see :mod:`lokt_tasks.globs`). ``*``, ``?`` and ``[abc]``
    match within one path segment; ``**`` as a whole segment matches any
    number of segments, including none. Wildcards do not match names that
    start with a dot (``.git``, ``.venv``, ``.lokt``) unless the pattern
    segment itself starts with a dot. Every pattern must match at least one
    file. ``exclude`` uses the same patterns; an item is excluded when a
    pattern matches its path or one of its parent directories, so
    ``tests/fixtures`` and ``tests/fixtures/**`` both drop everything below
    ``tests/fixtures``.

    ``collect``: the command is split with shlex (``{python}`` is the
    interpreter running lokt-tasks, as in ``run``) and run without a shell in
    the directory of shards.toml; each non-empty output line, stripped, is
    an item (duplicates are dropped). The list ends at the first blank line
    after an item, where runners print their summary (``pytest
    --collect-only -q`` ends with a blank line and "5 tests collected").
    ``exclude`` applies to these items too. A failing command is a
    configuration error naming ``tasks.NAME.collect``.

    Explicit ``[[tasks.NAME.shard]]`` tables: the literal ``items`` as written
    plus the files their ``glob`` patterns match, sorted, one shard per table.

Splitting (dynamic tasks; the shard count never exceeds the item count: with
fewer items than shards, the count is lowered to the item count and the plan
carries a warning, because an empty shard would run its command with no
items, which for most test runners means "run everything")

    ``name``: sorted items cut into contiguous chunks of near-equal count;
    the first ``items % shards`` shards get one item more. Neighbouring files
    stay together, and adding one file moves few others.

    ``size``: longest-processing-time first with the file size in bytes as
    the weight: items from the heaviest (ties: by name) go one by one to the
    shard with the smallest load so far (ties: the one with fewer items, then
    the lower number). Items that are not files weigh the mean file size.

    ``timings``: the same, weighted by seconds from the durations file; an
    item without a recorded time weighs the mean of the recorded ones. With no
    recorded time for any item, the split falls back to file sizes.

    ``shards = "per-item"``: one shard per item, in sorted order.

    ``size`` and ``timings`` move items when files or timings change; every
    agent must plan from the same commit and the same durations file. The
    fingerprint makes a mismatch visible instead of silent.

Commands
    ``run`` is split with shlex, then in each argument: ``{items}`` (a whole
    argument) becomes one argument per item; ``{items:SEP}`` becomes the
    items joined by SEP; ``{shard}``, ``{total}`` and ``{task}`` become the
    shard number, the shard count and the task name; ``{python}`` becomes
    the interpreter running lokt-tasks (so a venv's tools are found without
    activating it); ``{junit}`` is left as it is for the run layer; ``{{`` and ``}}`` are literal braces. Items are
    always single arguments, never seen by a shell. An item that starts with
    ``-`` and names an existing path is passed as ``./<item>`` through
    ``{items}``, so the command reads it as a file and not as an option.
    A shard whose command line the system could not start (over ARG_MAX,
    with the environment) is a configuration error at plan time.

Estimates and balance (``PlanStats.unit``) are in seconds when the
durations file knows any of the task's items, whatever the split: looking
times up costs nothing per file, and ``shard-all`` starts the shards with the
largest estimate first. Without timings, a split by name counts items: it
places items by name alone, so it never reads file sizes (a ``stat`` per
file would be most of the time a plan of 100,000 files takes). The other
splits, explicit shards and ``"per-item"`` count bytes when items are files,
else items.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import shlex
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .config import (
    MAX_SHARDS,
    Config,
    Placeholder,
    TaskConfig,
    config_error,
    display_path,
    get_task,
    key_path,
    parse_run_template,
)
from .durations import load_durations
from .errors import ConfigError, UsageError
from .globs import glob_files, normal_path, without_excluded
from .text import format_seconds, shorten, table

#: Left in a shard's argv by the plan; the run layer replaces it with the
#: path where the command should write its JUnit XML report.
JUNIT_PLACEHOLDER = "{junit}"
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
    #: Estimated seconds from the durations file (an item without a recorded
    #: time counts as the mean of the recorded ones), or None when no item of
    #: the task has a recorded time.
    estimate: Optional[float] = None
    #: Estimated work in the plan's unit (``PlanStats.unit``): seconds, bytes
    #: or items.
    weight: float = 0.0

    @property
    def wants_junit(self) -> bool:
        return any(JUNIT_PLACEHOLDER in arg for arg in self.argv)


@dataclass(frozen=True)
class PlanStats:
    """How evenly the work is spread, in ``unit`` ("seconds", "bytes" or "items")."""

    unit: str
    items: int
    #: All shards together.
    total: float
    #: ``total / shards``: every shard's load if the split were perfect.
    ideal: float
    #: No split can finish faster: ``max(ideal, heaviest single item)``.
    lower_bound: float
    #: The heaviest shard.
    largest: float
    #: ``largest / ideal``; 1.0 is a perfect split.
    balance: float
    heaviest_item: Optional[str] = None


@dataclass(frozen=True)
class Plan:
    task: str
    #: Directory the commands run in (the directory of shards.toml).
    cwd: Path
    shards: Tuple[Shard, ...]
    split: str = "name"
    warnings: Tuple[str, ...] = ()
    stats: Optional[PlanStats] = None


def build_plan(
    config: Config,
    task_name: str,
    *,
    shards: Optional[int] = None,
    durations: Optional[Mapping[str, float]] = None,
) -> Plan:
    """The shards of ``task_name``.

    ``shards`` overrides the count of a dynamic task; for a task with
    explicit shards it must equal their number. ``durations`` maps items to
    seconds; when None, the task's durations file is read (a missing file
    means no timings).
    """
    task = get_task(config, task_name)
    tokens = parse_run_template(task.run)
    warnings: List[str] = []
    if durations is None:
        durations = _task_durations(task, warnings)

    if task.explicit:
        groups = _explicit_groups(config, task, warnings)
        if shards is not None and shards != len(groups):
            raise UsageError(
                f"task '{task.name}' has {len(groups)} explicit shards in {display_path(config.path)}; "
                f"a shard count of {shards} cannot change that"
            )
        all_items = sorted({item for group in groups for item in group})
        split = "explicit"
        costs, unit = _item_costs(all_items, config.root, durations, split)
    else:
        items = (
            _collect_items(config, task)
            if task.collect is not None
            else _glob_task_items(config, task)
        )
        count = _shard_count(config, task, shards, len(items), warnings)
        split = "per-item" if task.per_item and shards is None else task.split
        costs, unit = _item_costs(items, config.root, durations, split)
        groups = _split(items, count, split, config.root, costs, unit)

    total = len(groups)
    built = []
    for index, group in enumerate(groups, start=1):
        items_tuple = tuple(group)
        weight = math.fsum(map(costs.__getitem__, items_tuple))
        built.append(
            Shard(
                task=task.name,
                index=index,
                total=total,
                items=items_tuple,
                argv=expand_argv(
                    tokens, items_tuple, task=task.name, index=index, total=total, root=config.root
                ),
                lock_name=lock_name(task.name, index),
                fingerprint=fingerprint(task.run, total, index, items_tuple),
                estimate=weight if unit == "seconds" else None,
                weight=weight,
            )
        )
        size_key = (
            key_path("tasks", task.name, "shard", index)
            if task.explicit
            else key_path("tasks", task.name, "shards")
        )
        check_command_size(built[-1], config, size_key)
    return Plan(
        task=task.name,
        cwd=config.root,
        shards=tuple(built),
        split=split,
        warnings=tuple(warnings),
        stats=_stats(built, costs, unit),
    )


def _task_durations(task: TaskConfig, warnings: List[str]) -> Mapping[str, float]:
    """The task's durations file; only ``split = "timings"`` fails on a corrupt one.

    Other splits read it for estimates alone, which are not worth stopping a
    run for.
    """
    if task.durations is None:
        return {}
    try:
        return load_durations(task.durations)
    except ConfigError as error:
        if task.split == "timings" and not task.explicit and not task.per_item:
            raise
        warnings.append(f"{error}; estimates are left out")
        return {}


def lock_name(task: str, index: int) -> str:
    return f"{task}-shard-{index}"


def fingerprint(run: str, total: int, index: int, items: Sequence[str]) -> str:
    """16 hex digits of sha256 over what a shard runs: a changed plan changes it."""
    payload = json.dumps(
        {"run": run, "total": total, "index": index, "items": list(items)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def expand_argv(
    tokens, items: Sequence[str], *, task: str, index: int, total: int, root: Path
) -> Tuple[str, ...]:
    """The argv of one shard from a parsed run template (see the module docstring)."""
    argv: List[str] = []
    for token in tokens:
        if token == (Placeholder("items"),):
            argv.extend(_as_arguments(items, root))
            continue
        text = ""
        for part in token:
            if isinstance(part, str):
                text += part
            elif part.name == "items":
                text += part.separator.join(items)
            elif part.name == "shard":
                text += str(index)
            elif part.name == "total":
                text += str(total)
            elif part.name == "task":
                text += task
            elif part.name == "python":
                text += sys.executable
            else:
                text += JUNIT_PLACEHOLDER
        argv.append(text)
    return tuple(argv)


#: Room kept on the command line for what runs in front of the shard's
#: command with the lokt engine: lokt guard, and the attempt process with the
#: fields of the shard's record.
COMMAND_LINE_HEADROOM = 16 * 1024


def check_command_size(shard: Shard, config: Config, key: str) -> None:
    """Refuse a shard whose command the system could not start.

    exec fails with E2BIG when the arguments and the environment together
    (each string with its NUL and its pointer) pass ARG_MAX, or, on Linux,
    when one argument passes 32 pages ({items:SEP} joins every item into
    one). Said here, before anything runs, it is one clear error rather than
    a shard that cannot start inside its lock.
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
    size += sum(
        len(os.fsencode(f"{name}={value}")) + 1 + pointer for name, value in os.environ.items()
    )
    where = (
        f"shard {shard.index} of {shard.total} of task '{shard.task}' ({len(shard.items)} items)"
    )
    if size + COMMAND_LINE_HEADROOM > limit:
        raise config_error(
            config.path,
            key,
            f"{where} needs a command line of {size:,} bytes with the environment, over this system's limit "
            f"of {limit - COMMAND_LINE_HEADROOM:,} (ARG_MAX less {COMMAND_LINE_HEADROOM:,} kept for the attempt process); "
            f"use more shards",
        )
    if sys.platform.startswith("linux"):
        one_argument = 32 * os.sysconf("SC_PAGE_SIZE")
        if max(arguments, default=0) > one_argument:
            raise config_error(
                config.path,
                key,
                f"{where} has an argument of {max(arguments):,} bytes, over Linux's limit of {one_argument:,} "
                f"for one argument; use more shards, or {{items}} instead of {{items:SEP}}",
            )


def _as_arguments(items: Sequence[str], root: Path) -> List[str]:
    return [
        "./" + item if item.startswith("-") and os.path.lexists(root / item) else item
        for item in items
    ]


# ---------------------------------------------------------------- items


def _glob_task_items(config: Config, task: TaskConfig) -> List[str]:
    # A dict keeps each pattern's files in the sorted order they come in, so
    # sorting the union is nearly free when one pattern found them all.
    items: Dict[str, None] = {}
    for pattern in task.glob:
        items.update(
            dict.fromkeys(
                _glob_key(config, pattern, task.exclude, key_path("tasks", task.name, "glob"))
            )
        )
    if not items:
        raise config_error(
            config.path,
            key_path("tasks", task.name, "exclude"),
            "excludes every file the glob patterns match; nothing is left to run",
        )
    return sorted(items)


def _glob_key(config: Config, pattern: str, exclude: Sequence[str], key: str) -> List[str]:
    """Files matching ``pattern`` minus ``exclude``; an error if the pattern matches no file at all."""
    matched = glob_files(config.root, pattern, exclude)
    if not matched and exclude and glob_files(config.root, pattern):
        return []
    if not matched:
        hint = ""
        if (config.root / pattern).is_dir():
            hint = f" ('{pattern}' is a directory; for the files below it write '{pattern.rstrip('/')}/**')"
        raise config_error(config.path, key, f"'{pattern}' matches no files{hint}")
    return matched


def _collect_items(config: Config, task: TaskConfig) -> List[str]:
    key = key_path("tasks", task.name, "collect")
    command = task.collect or ""
    try:
        completed = subprocess.run(
            [word.replace("{python}", sys.executable) for word in shlex.split(command)],
            cwd=str(config.root),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
        )
    except OSError as error:
        raise config_error(
            config.path, key, f"cannot run '{command}': {error.strerror or error}"
        ) from None
    if completed.returncode != 0:
        stderr_lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
        last = f": {stderr_lines[-1][:200]}" if stderr_lines else " (no error output)"
        if completed.returncode < 0:
            ended = f"was killed by signal {-completed.returncode}"
        else:
            ended = f"exited with code {completed.returncode}"
        raise config_error(config.path, key, f"'{command}' {ended}{last}")
    lines = set(_listed_items(completed.stdout))
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


def _listed_items(output: str) -> List[str]:
    """Non-empty stripped lines, up to the first blank line after an item.

    Test runners print a summary after a blank line (pytest --collect-only -q
    ends with "5 tests collected in 0.01s"); that line is not an item.
    """
    items: List[str] = []
    for line in output.splitlines():
        if line.strip():
            items.append(line.strip())
        elif items:
            break
    return items


def _explicit_groups(config: Config, task: TaskConfig, warnings: List[str]) -> List[List[str]]:
    groups = []
    shard_of: Dict[str, int] = {}
    overlaps: Dict[str, List[int]] = {}
    for number, entry in enumerate(task.explicit, start=1):
        members = set(entry.items)
        for pattern in entry.glob:
            members.update(
                _glob_key(
                    config,
                    pattern,
                    task.exclude,
                    key_path("tasks", task.name, "shard", number, "glob"),
                )
            )
        if not members:
            raise config_error(
                config.path,
                key_path("tasks", task.name, "shard", number),
                "shard has no items left after exclude",
            )
        for item in sorted(members):
            if item in shard_of:
                overlaps.setdefault(item, [shard_of[item]]).append(number)
            else:
                shard_of[item] = number
        groups.append(sorted(members))

    for item, numbers in sorted(overlaps.items()):
        listed = ", ".join(str(number) for number in numbers)
        warnings.append(
            f"'{item}' is in shards {listed} of task '{task.name}' (their globs overlap): it runs more than once"
        )

    if task.glob:
        files = set()
        for pattern in task.glob:
            files.update(
                _glob_key(config, pattern, task.exclude, key_path("tasks", task.name, "glob"))
            )
        covered = {_normal_item(item) for item in shard_of}
        missing = sorted(path for path in files if not _is_covered(path, covered))
        if missing:
            shown = ", ".join(f"'{path}'" for path in missing[:_SHOWN_IN_WARNINGS])
            more = (
                f" and {len(missing) - _SHOWN_IN_WARNINGS} more"
                if len(missing) > _SHOWN_IN_WARNINGS
                else ""
            )
            warnings.append(
                f"{len(missing)} file(s) matched by {key_path('tasks', task.name, 'glob')} are in no shard of task "
                f"'{task.name}': {shown}{more}"
            )
    return groups


def _normal_item(item: str) -> str:
    if item.endswith("/..."):
        item = item[: -len("/...")]
    return normal_path(item)


def _is_covered(path: str, covered: set) -> bool:
    if "" in covered or path in covered:
        return True
    parts = path.split("/")
    return any("/".join(parts[:length]) in covered for length in range(1, len(parts)))


# ---------------------------------------------------------------- splitting


def _shard_count(
    config: Config, task: TaskConfig, override: Optional[int], item_count: int, warnings: List[str]
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
        return _contiguous(items, count)
    if split == "size":
        # Costs not in seconds are already the sizes: no need to stat every file again.
        weights = costs if unit != "seconds" else _item_costs(items, root, {}, split)[0]
        return _longest_first(items, count, weights)
    return _longest_first(items, count, costs)


def _contiguous(items: List[str], count: int) -> List[List[str]]:
    base, extra = divmod(len(items), count)
    groups, start = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        groups.append(items[start : start + size])
        start += size
    return groups


def _longest_first(items: List[str], count: int, weights: Mapping[str, float]) -> List[List[str]]:
    # Heaviest first, ties by name: a stable sort by weight (reverse keeps
    # the order of equal keys) over the items sorted by name.
    order = sorted(sorted(items), key=weights.__getitem__, reverse=True)
    loads = [(0.0, 0, index) for index in range(count)]
    groups: List[List[str]] = [[] for _ in range(count)]
    for item in order:
        load, size, index = loads[0]  # the lightest shard
        groups[index].append(item)
        heapq.heapreplace(loads, (load + weights[item], size + 1, index))
    return [sorted(group) for group in groups]


def _item_costs(
    items: Sequence[str], root: Path, durations: Mapping[str, float], split: str
) -> Tuple[Dict[str, float], str]:
    """Each item's estimated work, and its unit: seconds, else bytes, else items.

    A split by name never reads file sizes: it places items by name alone, so
    sizes would only be shown, and one ``stat`` per file would be most of
    the time a large plan takes. Without timings it counts items instead.
    """
    known = (
        {item: float(durations[item]) for item in items if item in durations} if durations else {}
    )
    if known:
        if len(known) == len(items):
            return known, "seconds"  # every item timed: no mean to fill in
        mean = math.fsum(known.values()) / len(known)
        return {item: known.get(item, mean) for item in items}, "seconds"
    if split == "name":
        return dict.fromkeys(items, 1.0), "items"
    sizes = {}
    root_text = str(root)
    prefix = root_text if root_text.endswith("/") else root_text + "/"
    for item in items:
        size = _file_size(root, prefix, item)
        if size is not None:
            sizes[item] = size
    if sizes:
        mean = math.fsum(sizes.values()) / len(sizes)
        return {item: sizes.get(item, mean) for item in items}, "bytes"
    return {item: 1.0 for item in items}, "items"


def _file_size(root: Path, prefix: str, item: str) -> Optional[float]:
    """Size in bytes of the regular file ``item`` names below ``root`` (symlinks followed), else None.

    ``prefix`` is ``root`` as text ending in "/": joining by hand names the
    same file as ``root / item`` at a fraction of pathlib's cost, which
    counts when a plan has 100,000 items.
    """
    if item.endswith(("/", "/.")):
        path = str(root / item)  # pathlib drops the trailing part: "a.py/" is the file a.py
    elif item.startswith("/"):
        path = item
    else:
        path = prefix + item
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
    )


# ---------------------------------------------------------------- output


def plan_to_json(plan: Plan) -> Dict[str, Any]:
    """The plan as JSON-ready data; the keys are a stable contract.

    ``version`` (1), ``task``, ``cwd``, ``split`` (name, size, timings,
    per-item or explicit), ``shards`` (list, by index) with ``index``,
    ``total``, ``lock_name``, ``fingerprint``, ``items``, ``argv`` (``{junit}``
    unexpanded), ``estimate`` (seconds or null) and ``weight`` (in the stats'
    ``unit``); ``stats`` with ``unit`` (seconds, bytes or items), ``items``,
    ``total``, ``ideal``, ``lower_bound``, ``largest``, ``balance`` and
    ``heaviest_item``; ``warnings`` (list of strings).
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
        "warnings": list(plan.warnings),
    }


def render_plan(plan: Plan, *, full: bool = False, width: int = 160) -> str:
    """A table of shards, the balance line, each shard's command, then warnings.

    Commands longer than ``width`` characters are cut unless ``full``.
    """
    stats = plan.stats
    unit = stats.unit if stats else "items"
    item_total = stats.items if stats else sum(len(shard.items) for shard in plan.shards)
    lines = [
        f"task '{plan.task}': {item_total} item(s) in {len(plan.shards)} shard(s), split: {plan.split}",
    ]
    header = ["shard", "items", "lock", "fingerprint"]
    rows = [
        [f"{shard.index}/{shard.total}", str(len(shard.items)), shard.lock_name, shard.fingerprint]
        for shard in plan.shards
    ]
    right_aligned = {1}
    if unit != "items":  # in items, a shard's weight is its item count, already shown
        header.insert(2, _WEIGHT_HEADERS[unit])
        for row, shard in zip(rows, plan.shards):
            row.insert(2, format_weight(shard.weight, unit))
        right_aligned = {1, 2}
    lines.extend(table([header, *rows], right=right_aligned))
    if stats and plan.shards:
        lines.append(
            f"total {format_weight(stats.total, unit)}; ideal {format_weight(stats.ideal, unit)} per shard; "
            f"lower bound {format_weight(stats.lower_bound, unit)}; balance {stats.balance:.2f} (1.00 is even)"
        )
    lines.append(f"commands (run in {plan.cwd}):")
    for shard in plan.shards:
        command = shlex.join(shard.argv)
        if not full:
            command = shorten(command, width)
        lines.append(f"  {shard.index}: {command}")
    lines.extend(f"warning: {warning}" for warning in plan.warnings)
    return "\n".join(lines)


_WEIGHT_HEADERS = {"seconds": "estimate", "bytes": "size"}


def format_weight(value: float, unit: str) -> str:
    """``12.3s`` / ``2m05s`` / ``1h02m`` for seconds, ``12.3 KB`` for bytes, ``3.3 items`` for items."""
    if unit == "seconds":
        return format_seconds(value)
    if unit == "bytes":
        for suffix in ("B", "KB", "MB", "GB"):
            if value < 1024 or suffix == "GB":
                return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
            value /= 1024
    count = f"{value:.0f}" if value == round(value) else f"{value:.1f}"
    return "1 item" if count == "1" else f"{count} items"
