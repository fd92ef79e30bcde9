"""Per-item timings: the durations file, and reading them out of JUnit XML.

The durations file is what ``split = "timings"`` balances by. It is meant to
be committed, so its format is chosen for small, stable diffs: a JSON object
``{item: seconds}`` with sorted keys, two-space indent, a trailing newline and
seconds rounded to milliseconds. Updating it rewrites only the given items;
the rest of the file stays byte for byte the same.

Several shards may finish at once and record their timings into the same
file, so :func:`merge_durations` holds an exclusive ``flock`` on a sidecar
file (``<file>.lock``) around read-modify-write, and replaces the file
atomically: a reader never sees half a file, and no writer loses another's
entries.

How JUnit test cases map onto items (:func:`durations_from_junit`):

- Each ``<testcase>`` has a time, and is located by the first of: its
  ``file`` attribute, its enclosing ``<testsuite>``'s ``file`` or
  ``filepath`` attribute, or its dotted ``classname`` read as a path
  (pytest writes ``tests.test_x.TestY`` for ``tests/test_x.py``; the longest
  prefix that names an item's file wins).
- An item that is a file path gets the sum of the times of the tests in
  that file; an item that is a directory (``tests/unit``, ``tests/unit/``,
  ``./pkg/...``) gets the sum of the tests in files below it.
- An item that is a pytest node id (``tests/test_x.py::TestY::test_a[1]``)
  gets the time of that test case.
- An item equal to a test case's ``name`` (``TestFoo`` from ``go test -list``)
  or ``classname`` (a Go package path, as gotestsum writes it), or to a
  ``<testsuite>`` name, gets the sum of the matching test cases.
- Items no test case maps onto are left out, so the plan estimates them
  from the mean of the known ones.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from .config import display_path
from .errors import ConfigError
from .system import read_file, write_atomically

#: Seconds are stored with this many decimals: milliseconds are plenty for
#: balancing, and fewer digits mean fewer meaningless diffs.
DECIMALS = 3


def load_durations(path: Path) -> Dict[str, float]:
    """The timings in ``path``; {} when the file does not exist yet."""
    try:
        text = read_file(path).decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConfigError(
            f"{display_path(path)}: cannot read durations file: {error.strerror or error}"
        ) from None
    return _parse_durations(text, path)


def pin_durations(durations_file: Path, pinned: Path) -> Dict[str, float]:
    """The timings a run plans with, the same for every command of that run.

    Shards record their timings into ``durations_file`` as they finish. If
    later commands of the same run (another agent's ``shard``, ``verify``)
    planned from the updated file, their plan could differ from the first
    one and every record would look outdated. So the first command of a run
    copies the timings to ``pinned`` (in the run's results directory), and
    every later one plans from that copy. The copy is published with a hard
    link, which fails if it exists: two agents starting at once agree.
    """
    pinned = Path(pinned)
    if pinned.exists():
        return load_durations(pinned)
    durations = load_durations(durations_file)
    pinned.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{pinned.name}.", suffix=".tmp", dir=pinned.parent
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(dump_durations(durations))
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, pinned)
    except FileExistsError:
        return load_durations(pinned)
    finally:
        os.unlink(temporary)
    return durations


def dump_durations(durations: Mapping[str, float]) -> str:
    """The file text for ``durations``: sorted, indented, rounded, newline-terminated."""
    rounded = {item: _round(seconds) for item, seconds in durations.items()}
    return json.dumps(rounded, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def merge_durations(path: Path, new: Mapping[str, float]) -> None:
    """Record ``new`` timings in ``path``, keeping every other entry as it is.

    Safe against concurrent callers (other threads or processes on this
    machine). The file is not rewritten when nothing changes.
    """
    path = Path(path)
    for item, seconds in new.items():
        if not _is_seconds(seconds):
            raise ValueError(f"duration of '{item}' must be a non-negative number, got {seconds!r}")
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            current = load_durations(path)
            merged = dict(current)
            merged.update({item: _round(seconds) for item, seconds in new.items()})
            if path.exists() and merged == current:
                return
            _write_atomically(path, dump_durations(merged))
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def durations_from_junit(
    xml_path: Path, items: Iterable[str], root: Optional[Path] = None
) -> Dict[str, float]:
    """Seconds per item, read from a JUnit XML report (see the module docstring).

    ``root`` is the directory items are relative to; it turns absolute
    ``file`` attributes into item paths. Raises ValueError with a one-line
    message when the report is missing or is not JUnit XML.
    """
    try:
        tree = ElementTree.parse(str(xml_path))
    except (OSError, ElementTree.ParseError) as error:
        raise ValueError(f"cannot read JUnit XML {xml_path}: {error}") from None
    top = tree.getroot()
    if top.tag not in ("testsuites", "testsuite"):
        raise ValueError(
            f"cannot read JUnit XML {xml_path}: root element is <{top.tag}>, not <testsuites> or <testsuite>"
        )

    items = list(items)
    item_files = {_normal_path(_file_part(item)) for item in items}
    keyed: Dict[str, float] = {}
    for suite_name, suite_file, case in _test_cases(top, None, None):
        seconds = _case_seconds(case)
        for key in _case_keys(case, suite_name, suite_file, item_files, root):
            keyed[key] = keyed.get(key, 0.0) + seconds

    found: Dict[str, float] = {}
    for item in items:
        item_seconds = _item_seconds(item, keyed)
        if item_seconds is not None:
            found[item] = _round(item_seconds)
    return found


# ---------------------------------------------------------------- file format


def _parse_durations(text: str, path: Path) -> Dict[str, float]:
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(
            f"{display_path(path)}: corrupt durations file (not JSON: {error}); fix or delete it"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{display_path(path)}: corrupt durations file (expected a JSON object of item: seconds); fix or delete it"
        )
    for item, seconds in data.items():
        if not _is_seconds(seconds):
            raise ConfigError(
                f"{display_path(path)}: corrupt durations file ('{item}' has {json.dumps(seconds)}, expected seconds); fix or delete it"
            )
    return {item: float(seconds) for item, seconds in data.items()}


def _is_seconds(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _round(seconds: float) -> float:
    return round(float(seconds), DECIMALS)


def _write_atomically(path: Path, text: str) -> None:
    try:
        mode = os.stat(path).st_mode & 0o777  # keep the committed file's mode
    except FileNotFoundError:
        mode = 0o644
    write_atomically(path, text.encode("utf-8", errors="surrogateescape"), mode=mode)


# ---------------------------------------------------------------- JUnit


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
    keys = []
    file, class_parts = None, []
    attribute_file = case.get("file") or suite_file
    if attribute_file:
        file = _relative_file(attribute_file, root)
        dotted_file = file[: -len(".py")].replace("/", ".") if file.endswith(".py") else None
        if dotted_file and classname.startswith(dotted_file + "."):
            class_parts = classname[len(dotted_file) + 1 :].split(".")
    elif classname:
        file, class_parts = _file_from_classname(classname, item_files)
    if file:
        keys.append("file:" + file)
        if name:
            keys.append("node:" + "::".join([file, *class_parts, name]))
    if name:
        keys.append("name:" + name)
    if classname:
        keys.append("name:" + classname)
    if suite_name:
        keys.append("name:" + suite_name)
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
    below = [seconds for key, seconds in sorted(keyed.items()) if key.startswith(prefix)]
    if below:
        return math.fsum(below)
    return keyed.get("name:" + item)


def _file_part(item: str) -> str:
    return item.partition("::")[0]


def _normal_path(text: str) -> str:
    """``./a//b/`` and ``a/b/...`` -> ``a/b``, to compare items with report paths."""
    if text.endswith("/..."):
        text = text[: -len("/...")]
    parts = [part for part in text.replace("\\", "/").split("/") if part not in ("", ".")]
    return "/".join(parts)


def _relative_file(file: str, root: Optional[Path]) -> str:
    if root is not None and os.path.isabs(file):
        try:
            file = os.path.relpath(file, root)
        except ValueError:
            pass
    return _normal_path(file)
