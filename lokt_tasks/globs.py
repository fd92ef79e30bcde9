"""Glob and exclude patterns: which files a ``glob`` names, which items an ``exclude`` drops.

Patterns are wcmatch's glob with ``GLOBSTAR``: ``*``, ``?`` and ``[abc]``
(``[!abc]``, ``[a-z]``) match within one path segment, ``**`` as a whole
segment matches any number of segments, including none; a backslash, ``^``
and ``:`` are plain characters. Wildcards skip names that start with a dot
unless the pattern segment does too, and ``**`` does not enter such
directories. Matching is case-sensitive, ``/`` the only separator: items are
POSIX-style paths relative to the directory of shards.toml.

Every path is matched as a directory (wcmatch's way: with a ``/`` appended),
so a trailing ``**`` also matches nothing: ``tests/fixtures/**`` matches
``tests/fixtures``. An item is excluded when an ``exclude`` pattern matches
its path or one of its parent directories. ``glob_files`` lists files only:
symlinks to files count, broken symlinks do not, and symlinked directories
are not entered (except in the leading literal part of a pattern).
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from wcmatch import glob as wcglob

# NOTE: FORCEUNIX and CASE keep "/" the only separator and matching case-sensitive, as on
# Linux: a plan must name the same items on a Mac (whose file system ignores case) as in CI.
_FLAGS = wcglob.GLOBSTAR | wcglob.CASE | wcglob.FORCEUNIX
_MAGIC = re.compile(r"[*?[]")  # a segment with one of these is a pattern, not a name


def path_segments(path: str) -> List[str]:
    """The segments of ``path``, without empty and ``.`` segments."""
    return [segment for segment in path.split("/") if segment not in ("", ".")]


def normal_path(path: str) -> str:
    """``path`` with empty and ``.`` segments dropped: ``./src//a.py`` is ``src/a.py``."""
    return "/".join(path_segments(path))


def _wcmatch_pattern(pattern: str) -> str:
    # NOTE: the patterns have always taken literally (as fnmatch does) three
    # things wcmatch gives a meaning, so they are escaped: a backslash (not an
    # escape), "^" in "[^a]" (a member, not a negation: that is "[!a]") and
    # "[:" (two members, not a POSIX class such as "[:alpha:]"). In a set or
    # not, "[\^" and "[\:" mean what "[^" and "[:" meant.
    escaped = normal_path(pattern).replace("\\", "\\\\")
    return escaped.replace("[^", "[\\^").replace("[:", "[\\:")


_NameTest = Callable[[str], Optional["re.Match[str]"]]


@functools.lru_cache(maxsize=256)
def _matcher(*patterns: str) -> _NameTest:
    """A test of a path and "/" (or "" for the root) against any of ``patterns``."""
    expressions = [
        expression
        for pattern in patterns
        for expression in wcglob.translate(_wcmatch_pattern(pattern), flags=_FLAGS)[0]
    ]
    return re.compile("|".join(expressions) if expressions else "(?!)").fullmatch


def _directory_matcher(segments: Sequence[str]) -> Callable[[str], bool]:
    """A test of a directory ("" for the root, else its path and "/") against ``segments``."""
    if not segments:
        return lambda directory: directory == ""
    matches = _matcher("/".join(segments))
    return lambda directory: matches(directory) is not None


class _Exclusion:
    """Which paths a list of ``exclude`` patterns drops: those it matches, and everything below."""

    def __init__(self, exclude: Sequence[str]) -> None:
        self._matches = _matcher(*exclude)
        # NOTE: a trailing "**" adds nothing here (what lies below a dropped
        # directory goes with it). Without it, the last segment matches exactly
        # a path's last name: a path costs one match of its name against the
        # patterns whose other segments match its directory (found once per directory).
        self._parts = []
        for pattern in exclude:
            segments = path_segments(pattern)
            while len(segments) > 1 and segments[-1] == "**":
                segments.pop()
            self._parts.append((_directory_matcher(segments[:-1]), _matcher(*segments[-1:])))
        self._names: Dict[str, Optional[List[_NameTest]]] = {}

    def names_in(self, directory: str) -> Optional[List[_NameTest]]:
        """None if ``directory`` ("" or a path and "/") is dropped, else the tests of its names."""
        if directory not in self._names:
            above = directory[:-1].rpartition("/")[0]
            above = above + "/" if above else ""
            if directory and (self.names_in(above) is None or self._matches(directory)):
                self._names[directory] = None
            else:
                self._names[directory] = [
                    name for directory_matches, name in self._parts if directory_matches(directory)
                ]
        return self._names[directory]

    def drops(self, path: str) -> bool:
        """Whether ``path`` (normalized, see :func:`normal_path`) is dropped."""
        if not path:
            return False
        directory, _, name = path.rpartition("/")
        names = self.names_in(directory + "/" if directory else "")
        return names is None or any(matches(name) for matches in names)


def without_excluded(items: Sequence[str], exclude: Sequence[str]) -> List[str]:
    """``items`` in order, less those that a pattern of ``exclude`` matches or lies above."""
    if not exclude:
        return list(items)
    exclusion = _Exclusion(exclude)
    return [item for item in items if not exclusion.drops(normal_path(item))]


def glob_files(root: Path, pattern: str, exclude: Sequence[str] = ()) -> List[str]:
    """Files below ``root`` that ``pattern`` matches and ``exclude`` keeps, sorted, relative.

    The walk reads no directory above the pattern's leading literal segments,
    none excluded (large ignored trees such as node_modules cost nothing) and
    none that the segments before the first ``**`` reject.
    """
    # NOTE: wcmatch.glob.glob would list the same paths, but it walks excluded trees
    # and needs a stat per file to tell a regular file from a broken symlink, a socket
    # or a FIFO (types os.scandir gives for free): a plan of 100,000 files took 0.8
    # to 1 s of CPU with it, not 0.2 to 0.3 s, too close to the goal of 1 s.
    segments = path_segments(pattern)
    if not segments:
        return []
    last = len(segments) - 1
    literal = next((n for n, segment in enumerate(segments[:last]) if _MAGIC.search(segment)), last)
    exclusion = _Exclusion(exclude)
    if literal == last and not _MAGIC.search(segments[last]):
        path = "/".join(segments)
        return [path] if os.path.isfile(root / path) and not exclusion.drops(path) else []

    # Directories are "" (the root) or their relative path and "/", as wcmatch matches them.
    base = "".join(segment + "/" for segment in segments[:literal])
    if exclusion.names_in(base) is None or not os.path.isdir(root / base):
        return []
    first_star = segments.index("**") if "**" in segments else len(segments)
    # A directory at depth d <= first_star must match the first d segments;
    # below a "**" any directory can hold matches, but one whose name starts
    # with a dot only if a later segment starts with one.
    prefix_matchers = {
        depth: _directory_matcher(segments[:depth])
        for depth in range(literal + 1, min(first_star, last) + 1)
    }
    enter_hidden = any(segment.startswith(".") for segment in segments[first_star + 1 :])
    # Without "**", files lie exactly one segment below the deepest directory worth reading.
    deepest = math.inf if "**" in segments else last
    # A file matches when its directory matches the segments before the last and
    # its name the last. A last "**" matches every name without a leading dot in a
    # directory the whole pattern matches; elsewhere the whole path is matched.
    whole = _directory_matcher(segments) if segments[-1] == "**" else None
    directory_matches = _directory_matcher(segments[:-1])
    name_matches = _matcher(*segments[-1:])

    found = []
    pending = [(os.path.join(root, base), base, literal)]
    while pending:
        directory, relative_dir, depth = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue  # unreadable or vanished: skipped, as os.walk does
        dropped = exclusion.names_in(relative_dir)
        here = (whole or directory_matches)(relative_dir)
        for entry in entries:
            name = entry.name
            if _safely(entry.is_dir):
                relative = relative_dir + name + "/"
                inner = prefix_matchers.get(depth + 1)
                if (
                    not entry.is_symlink()  # not entered, as by os.walk
                    and depth < deepest
                    and (inner(relative) if inner else enter_hidden or not name.startswith("."))
                    and exclusion.names_in(relative) is not None
                ):
                    pending.append((entry.path, relative, depth + 1))
                continue
            if whole is None:
                matched = here and name_matches(name) is not None
            else:
                matched = (here and not name.startswith(".")) or whole(relative_dir + name + "/")
            if matched and _safely(entry.is_file):
                if not (dropped and any(matches(name) for matches in dropped)):
                    found.append(relative_dir + name)
    return sorted(found)


def _safely(test: Callable[[], bool]) -> bool:
    """``test()`` of a directory entry, False if it raises OSError (the entry vanished)."""
    try:
        return test()
    except OSError:
        return False
