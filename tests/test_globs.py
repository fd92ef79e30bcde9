"""Glob and exclude patterns: the edges where wcmatch alone would answer otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lokt_tasks.globs import glob_files, without_excluded


def make_files(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_wcmatch_extensions_stay_literal(tmp_path):
    make_files(
        tmp_path,
        "t/x\\b.py",
        "t/xb.py",
        "t/^.py",
        "t/a.py",
        "t/c.py",
        "t/1.py",
        "t/{a,b}.py",
        "t/@(a).py",
        "t/x|y.py",
    )
    # A backslash is a character, not an escape.
    assert glob_files(tmp_path, "t/*\\b.py") == ["t/x\\b.py"]
    # "[^a]" is the set of "^" and "a"; "[!a]" is the negation.
    assert glob_files(tmp_path, "t/[^a].py") == ["t/^.py", "t/a.py"]
    assert glob_files(tmp_path, "t/[!a].py") == ["t/1.py", "t/^.py", "t/c.py"]
    # No POSIX classes, braces, extended globs or "|" alternatives.
    assert glob_files(tmp_path, "t/[[:digit:]].py") == []
    assert glob_files(tmp_path, "t/{a,b}*") == ["t/{a,b}.py"]
    assert glob_files(tmp_path, "t/@(a)*") == ["t/@(a).py"]
    assert glob_files(tmp_path, "t/x|y*") == ["t/x|y.py"]


def test_matching_is_case_sensitive_on_every_system():
    items = ["Tests/a.py", "tests/A.py", "tests/a.py"]
    assert without_excluded(items, ["tests/a.py"]) == ["Tests/a.py", "tests/A.py"]
    assert without_excluded(items, ["tests/*.PY"]) == items


def test_an_excluded_directory_takes_its_dot_files_along(tmp_path):
    make_files(tmp_path, "tests/.h.py", "tests/fixtures/.h.py", "tests/fixtures/.cfg/.x.py")
    for exclude in (["tests/fixtures/**"], ["tests/fixtures"], ["**/fixtures"]):
        assert glob_files(tmp_path, "tests/**/.*.py", exclude) == ["tests/.h.py"]
        assert glob_files(tmp_path, "tests/fixtures/.cfg/.*", exclude) == []


def test_wildcards_in_exclude_skip_dot_names_as_globs_do(tmp_path):
    make_files(tmp_path, "tests/.cfg/y.py", "tests/a.py")
    assert glob_files(tmp_path, "tests/.cfg/*.py", ["tests/*"]) == ["tests/.cfg/y.py"]
    assert glob_files(tmp_path, "tests/.cfg/*.py", ["tests/.*"]) == []
    items = ["tests/.cfg/y.py", "tests/a.py"]
    assert without_excluded(items, ["tests/*"]) == ["tests/.cfg/y.py"]
    assert without_excluded(items, ["**/y.py"]) == items
    assert without_excluded(items, ["tests/.cfg/**"]) == ["tests/a.py"]


def test_a_trailing_globstar_also_matches_nothing(tmp_path):
    make_files(tmp_path, "a.py", "src/b.py", ".h/c.py")
    assert glob_files(tmp_path, "*/**") == ["a.py", "src/b.py"]
    assert glob_files(tmp_path, "**") == ["a.py", "src/b.py"]
    assert without_excluded(["src", "src/b.py", "srcs/c.py"], ["src/**"]) == ["srcs/c.py"]


def test_files_only_and_symlinked_directories_not_entered(tmp_path):
    make_files(tmp_path, "src/real/x.py")
    os.symlink(tmp_path / "src" / "real", tmp_path / "src" / "link")
    os.symlink(tmp_path / "src" / "missing.py", tmp_path / "src" / "real" / "broken.py")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "src" / "real" / "pipe.py")
    assert glob_files(tmp_path, "src/*/x.py") == ["src/real/x.py"]
    assert glob_files(tmp_path, "src/**/x.py") == ["src/real/x.py"]
    assert glob_files(tmp_path, "src/real/*") == ["src/real/x.py"]
    # The leading literal segments of a pattern are followed like any path.
    assert glob_files(tmp_path, "src/link/*.py") == ["src/link/x.py"]
    assert glob_files(tmp_path, "src/link/x.py") == ["src/link/x.py"]


@pytest.mark.parametrize(
    "exclude, kept",
    [
        (["tests/e2e"], ["tests/a.py::test_x[a/b]", "./tests/c.py::t"]),
        (["**/c.py::*"], ["tests/a.py::test_x[a/b]", "tests/e2e/b.py::test_y"]),
        (["tests/a.py::test_x[[]a"], ["tests/e2e/b.py::test_y", "./tests/c.py::t"]),
    ],
)
def test_exclude_applies_to_collected_items(exclude, kept):
    items = ["tests/a.py::test_x[a/b]", "tests/e2e/b.py::test_y", "./tests/c.py::t"]
    assert without_excluded(items, exclude) == kept
