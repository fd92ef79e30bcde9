"""Text for people: seconds, aligned tables, shortened lines, lists of words. Pure
functions shared by the plan, the live board and the verdict table, so they read alike."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Collection, Iterable, List, Optional, Sequence, Union

from colorama import Style


def format_seconds(seconds: Optional[float]) -> str:
    """``4.2s``, ``2m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    # NOTE: compared once rounded as shown, so 59.96 reads "1m00s", not "60.0s".
    if round(seconds, 1) < 60:
        return "%.1fs" % seconds
    whole = int(round(seconds))
    if whole < 3600:
        return "%dm%02ds" % (whole // 60, whole % 60)
    return "%dh%02dm" % (whole // 3600, (whole % 3600) // 60)


def shorten(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters, ending in ``...`` when cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def word_list(words: Sequence[str], last: str = "or") -> str:
    """``a, b or c``: words for a sentence (help texts name states this way)."""
    written = [str(word) for word in words]
    if len(written) < 2:
        return "".join(written)
    return "%s %s %s" % (", ".join(written[:-1]), last, written[-1])


def close_match(word: str, choices: Iterable[str]) -> Optional[str]:
    """The one choice ``word`` is most likely a typo of, or None: what a
    "did you mean" names, for shards.toml keys and values and the command line."""
    found = difflib.get_close_matches(word, list(choices), n=1)
    return found[0] if found else None


def paint(text: str, color: str) -> str:
    """``text`` in ``color`` (a colorama code), reset after; as is when ``color`` is ""."""
    return "%s%s%s" % (color, text, Style.RESET_ALL) if color else text


@dataclass(frozen=True)
class Cell:
    """A cell painted in ``color`` (colorama, or "") after padding: colour takes no width."""

    text: str
    color: str = ""


def table(
    rows: Sequence[Sequence[Union[str, Cell]]],
    *,
    right: Collection[int] = (),
    widths: Sequence[int] = (),
    indent: str = "  ",
    gap: str = "  ",
) -> List[str]:
    """``rows`` as lines of aligned columns (the first row is usually the header).

    Each column is as wide as its widest cell, or ``widths[column]`` if more; columns
    in ``right`` are right-aligned. A left-aligned last cell is not padded and trailing
    spaces are dropped.
    """
    cells = [[cell if isinstance(cell, Cell) else Cell(cell) for cell in row] for row in rows]
    width = list(widths) + [0] * max((len(row) for row in cells), default=0)
    for row in cells:
        for column, cell in enumerate(row):
            width[column] = max(width[column], len(cell.text))
    lines = []
    for row in cells:
        shown = []
        for column, cell in enumerate(row):
            text = cell.text
            if column in right:
                text = text.rjust(width[column])
            elif column < len(row) - 1:
                text = text.ljust(width[column])
            shown.append(paint(text, cell.color))
        lines.append((indent + gap.join(shown)).rstrip())
    return lines
