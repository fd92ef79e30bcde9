"""Per-item timings: the durations file, and reading them out of JUnit XML.

The durations file, what ``split = "timings"`` balances by, is meant to be
committed, so its format makes small, stable diffs: a JSON object ``{item:
seconds}`` with sorted keys, two-space indent, a trailing newline and seconds
rounded to milliseconds. A merge rewrites only the given items.

How JUnit test cases map onto items (:func:`durations_from_junit`):

- A ``<testcase>`` is located by the first of: its ``file`` attribute, its
  ``<testsuite>``'s ``file`` or ``filepath``, or its dotted ``classname``
  read as a path (pytest writes ``tests.test_x.TestY`` for
  ``tests/test_x.py``; the longest prefix that names an item's file wins).
- A file item gets the sum of the times of its tests; a directory item
  (``tests/unit``, ``tests/unit/``, ``./pkg/...``) the sum of those below it;
  a pytest node id (``tests/test_x.py::TestY::test_a[1]``) its test's time.
- An item equal to a test case's ``name`` (``TestFoo`` from ``go test -list``)
  or ``classname`` (a Go package path, as gotestsum writes it), or to a
  ``<testsuite>`` name, gets the sum of the matching test cases.
- Items no test case maps onto are left out: the plan gives them the mean.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from .config import display_path
from .errors import ConfigError
from .system import read_file, write_atomically

#: Decimals of the seconds stored: milliseconds are plenty, and fewer digits make fewer diffs.
DECIMALS = 3


def load_durations(path: Path) -> Dict[str, float]:
    """The timings in ``path``; {} when the file does not exist yet, else ConfigError if bad."""
    try:
        text = read_file(path).decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConfigError(
            f"{display_path(path)}: cannot read durations file: {error.strerror or error}"
        ) from None

    def corrupt(problem: str) -> ConfigError:
        return ConfigError(
            f"{display_path(path)}: corrupt durations file ({problem}); fix or delete it"
        )

    try:
        data = json.loads(text)
    except ValueError as error:
        raise corrupt(f"not JSON: {error}") from None
    if not isinstance(data, dict):
        raise corrupt("expected a JSON object of item: seconds")
    for item, seconds in data.items():
        if not _is_seconds(seconds):
            raise corrupt(f"'{item}' has {json.dumps(seconds)}, expected seconds")
    return {item: float(seconds) for item, seconds in data.items()}


def pin_durations(durations_file: Path, pinned: Path) -> Dict[str, float]:
    """The timings a run plans with, the same for every command of that run.

    Shards record timings as they finish: a later command of the run planning
    from the updated file could find every record outdated. So the first
    command copies them to ``pinned`` with a hard link that fails if it exists
    (two agents starting at once agree), and every later one plans from that.
    """
    pinned = Path(pinned)
    if pinned.exists():
        return load_durations(pinned)
    durations = load_durations(durations_file)
    pinned.parent.mkdir(parents=True, exist_ok=True)
    data = dump_durations(durations).encode("utf-8")
    try:
        write_atomically(pinned, data, mode=None, exclusive=True)
    except FileExistsError:
        return load_durations(pinned)
    return durations


def dump_durations(durations: Mapping[str, float]) -> str:
    """The file text for ``durations``: sorted, indented, rounded, newline-terminated."""
    rounded = {item: _round(seconds) for item, seconds in durations.items()}
    return json.dumps(rounded, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def merge_durations(path: Path, new: Mapping[str, float]) -> None:
    """Record ``new`` timings in ``path``, keeping every other entry as it is.

    For shards finishing at once, an exclusive ``flock`` on ``<file>.lock``
    spans the read, the merge and the atomic replace: no reader sees half a
    file, no writer loses another's entries. The file keeps its mode, and is
    not rewritten when nothing changes.
    """
    path = Path(path)
    for item, seconds in new.items():
        if not _is_seconds(seconds):
            raise ValueError(f"duration of '{item}' must be a non-negative number, got {seconds!r}")
    with open(path.with_name(path.name + ".lock"), "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)  # released when the file closes
        current = load_durations(path)
        merged = {**current, **{item: _round(seconds) for item, seconds in new.items()}}
        if path.exists() and merged == current:
            return
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        data = dump_durations(merged).encode("utf-8", errors="surrogateescape")
        write_atomically(path, data, mode=mode)


def durations_from_junit(
    xml_path: Path, items: Iterable[str], root: Optional[Path] = None
) -> Dict[str, float]:
    """Seconds per item from a JUnit XML report; ValueError if it is missing or not JUnit.

    ``root``, the directory items are relative to, turns absolute ``file`` attributes into items.
    """
    try:
        top = ElementTree.parse(str(xml_path)).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise ValueError(f"cannot read JUnit XML {xml_path}: {error}") from None
    if top.tag not in ("testsuites", "testsuite"):
        raise ValueError(
            f"cannot read JUnit XML {xml_path}: root element is <{top.tag}>, "
            "not <testsuites> or <testsuite>"
        )
    items = list(items)
    item_files = {_normal_path(item.partition("::")[0]) for item in items}
    keyed: Dict[str, float] = {}
    for suite_name, suite_file, case in _test_cases(top, None, None):
        seconds = _case_seconds(case)
        for key in _case_keys(case, suite_name, suite_file, item_files, root):
            keyed[key] = keyed.get(key, 0.0) + seconds
    found = {item: _item_seconds(item, keyed) for item in items}
    return {item: _round(seconds) for item, seconds in found.items() if seconds is not None}


def _is_seconds(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


def _round(seconds: float) -> float:
    return round(float(seconds), DECIMALS)


def _test_cases(
    element: ElementTree.Element, suite_name: Optional[str], suite_file: Optional[str]
) -> Iterator[Tuple[Optional[str], Optional[str], ElementTree.Element]]:
    """Every <testcase> with the name and file of its nearest <testsuite>."""
    if element.tag == "testsuite":
        suite_name = element.get("name") or suite_name
        suite_file = element.get("file") or element.get("filepath") or suite_file
    for child in element:
        if child.tag == "testcase":
            yield suite_name, suite_file, child
        elif child.tag in ("testsuite", "testsuites"):
            yield from _test_cases(child, suite_name, suite_file)


def _case_seconds(case: ElementTree.Element) -> float:
    try:
        seconds = float(case.get("time") or 0)
    except ValueError:
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _case_keys(
    case: ElementTree.Element,
    suite_name: Optional[str],
    suite_file: Optional[str],
    item_files: set,
    root: Optional[Path],
) -> List[str]:
    """Names a test case answers to: its file, node id, name, classname, suite."""
    name = case.get("name") or ""
    classname = case.get("classname") or ""
    file, class_parts = None, []
    attribute_file = case.get("file") or suite_file
    if attribute_file:
        if root is not None and os.path.isabs(attribute_file):
            try:
                attribute_file = os.path.relpath(attribute_file, root)
            except ValueError:
                pass
        file = _normal_path(attribute_file)
        dotted_file = file[: -len(".py")].replace("/", ".") if file.endswith(".py") else None
        if dotted_file and classname.startswith(dotted_file + "."):
            class_parts = classname[len(dotted_file) + 1 :].split(".")
    elif classname:
        file, class_parts = _file_from_classname(classname, item_files)
    keys = []
    if file:
        keys.append("file:" + file)
        if name:
            keys.append("node:" + "::".join([file, *class_parts, name]))
    keys += ["name:" + key for key in (name, classname, suite_name) if key]
    return list(dict.fromkeys(keys))


def _file_from_classname(classname: str, item_files: set) -> Tuple[Optional[str], List[str]]:
    parts = classname.split(".")
    for length in range(len(parts), 0, -1):
        candidate = "/".join(parts[:length]) + ".py"
        if candidate in item_files:
            return candidate, parts[length:]
    return None, []


def _item_seconds(item: str, keyed: Mapping[str, float]) -> Optional[float]:
    if "::" in item:
        file, _, rest = item.partition("::")
        return keyed.get("node:" + _normal_path(file) + "::" + rest)
    path = _normal_path(item)
    if "file:" + path in keyed:
        return keyed["file:" + path]
    prefix = "file:" + path + "/" if path else "file:"
    # math.fsum rounds the exact sum: the order of the keys does not matter.
    below = [seconds for key, seconds in keyed.items() if key.startswith(prefix)]
    return math.fsum(below) if below else keyed.get("name:" + item)


def _normal_path(text: str) -> str:
    """``./a//b/`` and ``a/b/...`` -> ``a/b``, to compare items with report paths."""
    if text.endswith("/..."):
        text = text[: -len("/...")]
    return "/".join(part for part in text.replace("\\", "/").split("/") if part not in ("", "."))
