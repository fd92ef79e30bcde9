"""Glob and exclude patterns: which files a ``glob`` names, which items an ``exclude`` drops.

The patterns are wcmatch's glob patterns with ``GLOBSTAR``: ``*``, ``?`` and
``[abc]`` (``[!abc]``, ``[a-z]``) match within one path segment, and ``**``
as a whole segment matches any number of segments, including none. A
backslash, ``^`` and ``:`` are plain characters (wcmatch's escapes,
``[^abc]`` and ``[[:alpha:]]`` are not part of the language).
Wildcards do not match a name that starts with a dot unless the pattern
segment itself starts with a dot, and ``**`` does not pass through such
directories. Matching is case-sensitive on every system, and ``/`` is the
only separator: items are POSIX-style paths relative to the directory of
shards.toml, the same on every machine.

A pattern matches a path, or the directory of that path: a trailing
``**`` also matches nothing, so ``tests/fixtures/**`` matches the directory
``tests/fixtures``. In wcmatch's terms a pattern matches the path with a
``/`` appended (a directory), which is how every path is matched here.

``glob_files`` lists files only: directories are skipped, symlinks to
files count, broken symlinks do not, and symlinked directories are not
entered (except in the leading literal part of a pattern). An item is
excluded when an ``exclude`` pattern matches its path or one of its parent
directories.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Pattern, Sequence, Tuple

from wcmatch import glob as wcglob

# NOTE: FORCEUNIX and CASE keep "/" the only separator and matching
# case-sensitive on every system, as on Linux: a plan must name the same
# items on a Mac, where the file system ignores case, as on a Linux CI runner.
_FLAGS = wcglob.GLOBSTAR | wcglob.CASE | wcglob.FORCEUNIX


def path_segments(path: str) -> List[str]:
    """The segments of ``path``, without empty and ``.`` segments."""
    return [segment for segment in path.split("/") if segment not in ("", ".")]


def normal_path(path: str) -> str:
    """``path`` with empty and ``.`` segments dropped: ``./src//a.py`` is ``src/a.py``."""
    return "/".join(path_segments(path))


def _has_magic(segment: str) -> bool:
    return any(char in segment for char in "*?[")


def _wcmatch_pattern(pattern: str) -> str:
    # NOTE: wcmatch gives meaning to three things that the patterns here
    # have always taken literally (as Python's fnmatch does), so they are
    # escaped: a backslash is a character of the name, not an escape; in
    # "[^a]" the "^" is a member, not a negation (that is "[!a]"); "[:" is
    # two members, not the start of a POSIX class such as "[:alpha:]".
    # Inside and outside a set, "[\^" and "[\:" mean what "[^" and "[:" meant.
    escaped = normal_path(pattern).replace("\\", "\\\\")
    return escaped.replace("[^", "[\\^").replace("[:", "[\\:")


@functools.lru_cache(maxsize=256)
def _compile(patterns: Tuple[str, ...]) -> Pattern[str]:
    """One regular expression for ``patterns``.

    It is matched against a path with ``/`` appended, or "" for the root.
    """
    expressions = [
        expression
        for pattern in patterns
        for expression in wcglob.translate(_wcmatch_pattern(pattern), flags=_FLAGS)[0]
    ]
    return re.compile("|".join(expressions) if expressions else "(?!)")


_NameTest = Callable[[str], Optional["re.Match[str]"]]


def _matcher(patterns: Sequence[str]) -> _NameTest:
    return _compile(tuple(patterns)).fullmatch


def _directory_matcher(segments: Sequence[str]) -> Callable[[str], bool]:
    """A test of a directory ("" for the root, else its path and "/") against ``segments``."""
    if not segments:
        return lambda directory: directory == ""
    matches = _matcher(["/".join(segments)])
    return lambda directory: matches(directory) is not None


class _Exclusion:
    """Which paths a list of ``exclude`` patterns drops: those it matches, and everything below."""

    def __init__(self, exclude: Sequence[str]) -> None:
        self._matches = _matcher(exclude)
        # NOTE: a trailing "**" adds nothing here: it matches the directory
        # the rest of the pattern matches, and what lies below it, which
        # goes with that directory anyway. Without it, the last segment
        # matches exactly the last name of a path, so a path costs one match
        # of its name against the patterns whose other segments match its
        # directory; that is worked out once per directory.
        self._parts = []
        for pattern in exclude:
            segments = path_segments(pattern)
            while len(segments) > 1 and segments[-1] == "**":
                segments.pop()
            self._parts.append((_directory_matcher(segments[:-1]), _matcher(segments[-1:])))
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

    wcmatch gives the meaning of the pattern; this walk only decides which
    directories to read. It starts below the pattern's leading literal
    segments and does not enter excluded directories (large ignored trees
    such as node_modules cost nothing), nor directories where no file can
    match: those that the pattern's segments before its first ``**`` reject.
    """
    # NOTE: wcmatch.glob.glob would list the same paths, but it cannot tell
    # a regular file from a broken symlink, a socket or a FIFO without one
    # stat per file, and it walks excluded trees: with it and that stat, a
    # plan of 100,000 files took 0.8 to 1 s of CPU instead of 0.2 to 0.3 s
    # (0.6 s without the stat), too close to the 1 s goal. Here os.scandir's
    # file types come free with the listing.
    segments = path_segments(pattern)
    if not segments:
        return []
    literal_length = 0
    while literal_length < len(segments) - 1 and not _has_magic(segments[literal_length]):
        literal_length += 1
    exclusion = _Exclusion(exclude)
    if literal_length == len(segments) - 1 and not _has_magic(segments[-1]):
        relative = "/".join(segments)
        if os.path.isfile(root / relative) and not exclusion.drops(relative):
            return [relative]
        return []

    # Directories are "" (the root) or their relative path and "/", as wcmatch matches them.
    base = "".join(segment + "/" for segment in segments[:literal_length])
    if exclusion.names_in(base) is None or not os.path.isdir(root / base if base else root):
        return []
    first_star = segments.index("**") if "**" in segments else len(segments)
    # A directory at depth d <= first_star must match the first d segments;
    # below a "**" any directory can hold matches, but one whose name starts
    # with a dot only if a later segment starts with one.
    prefix_matchers = {
        depth: _directory_matcher(segments[:depth])
        for depth in range(literal_length + 1, min(first_star, len(segments) - 1) + 1)
    }
    # Without "**", files lie exactly one segment below the deepest directory worth reading.
    deepest = len(segments) - 1 if first_star == len(segments) else None
    enter_hidden = any(segment.startswith(".") for segment in segments[first_star + 1 :])
    # A file matches when its directory matches the segments before the last
    # and its name the last. A last "**" matches every name without a leading
    # dot in a directory that the whole pattern matches; elsewhere the whole
    # path is matched.
    whole = _directory_matcher(segments) if segments[-1] == "**" else None
    directory_matches = _directory_matcher(segments[:-1])
    name_matches = _matcher(segments[-1:])

    found = []
    pending = [(os.path.join(root, base) if base else str(root), base, literal_length)]
    while pending:
        directory, relative_dir, depth = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue  # unreadable or vanished: skipped, as os.walk does
        dropped = exclusion.names_in(relative_dir)
        if whole is None:
            files_match = directory_matches(relative_dir)
        else:
            names_match = whole(relative_dir)
        for entry in entries:
            name = entry.name
            if _is_dir(entry):
                # Symlinked directories are not entered (os.walk's default).
                if entry.is_symlink() or (deepest is not None and depth >= deepest):
                    continue
                relative = relative_dir + name + "/"
                inner = prefix_matchers.get(depth + 1)
                if inner is not None:
                    if not inner(relative):
                        continue
                elif name.startswith(".") and not enter_hidden:
                    continue
                if exclusion.names_in(relative) is not None:
                    pending.append((entry.path, relative, depth + 1))
                continue
            if whole is None:
                if not (files_match and name_matches(name)):
                    continue
            elif not (names_match and not name.startswith(".")):
                if not whole(relative_dir + name + "/"):
                    continue
            if _is_file(entry) and not (dropped and any(matches(name) for matches in dropped)):
                found.append(relative_dir + name)
    return sorted(found)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False
