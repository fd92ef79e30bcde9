"""Text for people: seconds, tables, shortening, lists of words."""

from __future__ import annotations

import re

import pytest

from lokt_tasks.text import Cell, format_seconds, paint, shorten, table, word_list


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "-"),
        (0, "0.0s"),
        (0.04, "0.0s"),
        (4.25, "4.2s"),
        (59.9, "59.9s"),
        # Shown rounded, 59.96 would read "60.0s"; it is a minute.
        (59.96, "1m00s"),
        (60, "1m00s"),
        (125, "2m05s"),
        (3599.4, "59m59s"),
        (3599.6, "1h00m"),
        (3725, "1h02m"),
        (360000, "100h00m"),
    ],
)
def test_seconds_read_easily(seconds, text):
    assert format_seconds(seconds) == text


@pytest.mark.parametrize(
    "text, width, shown",
    [("short", 10, "short"), ("exactly10!", 10, "exactly10!"), ("one too long", 11, "one too ...")],
)
def test_shorten_cuts_to_the_width_with_an_ellipsis(text, width, shown):
    assert shorten(text, width) == shown
    assert len(shorten(text, width)) <= width


@pytest.mark.parametrize(
    "words, text",
    [([], ""), (["a"], "a"), (["a", "b"], "a or b"), (["a", "b", "c"], "a, b or c")],
)
def test_word_list(words, text):
    assert word_list(words) == text


def test_word_list_with_and():
    assert word_list(["x", "y", "z"], "and") == "x, y and z"


def test_table_aligns_columns_and_leaves_no_trailing_blanks():
    rows = [["shard", "items", "lock"], ["1/2", "10", "a-shard-1"], ["10/12", "2", "b"]]
    lines = table(rows, right={1})
    assert lines == [
        "  shard  items  lock",
        "  1/2       10  a-shard-1",
        "  10/12      2  b",
    ]


def test_table_widths_are_minimums_and_the_last_column_is_not_padded():
    lines = table([["a", "b", "c"], ["long", "", "x"]], widths=(2, 3), indent="", gap=" ")
    assert lines == ["a    b   c", "long     x"]


def test_colour_never_counts_toward_a_width():
    red = "\x1b[31m"
    lines = table([["state", "n"], [Cell("failed", red), "1"], ["ok", "22"]], right={1})
    plain = table([["state", "n"], ["failed", "1"], ["ok", "22"]], right={1})
    assert [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines] == plain
    assert lines[1] == "  " + paint("failed", red) + "   1"


def test_paint_without_a_colour_is_the_text():
    assert paint("x", "") == "x"
    assert paint("x", "\x1b[32m") == "\x1b[32mx\x1b[0m"


def test_an_empty_table_is_no_lines():
    assert table([]) == []
