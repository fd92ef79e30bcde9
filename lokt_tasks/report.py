"""A picture of a run: the verdict document drawn as one HTML page, and as a
compact timeline for the terminal.

Both are views of the document ``verdict.verdict_to_json`` gives (``verify
--json``), never of records or locks: whatever the page shows, the JSON holds.

The page is one self-contained file: inline CSS and SVG, no script (the
document it was drawn from rides along as an inert ``application/json``
block), and a Content-Security-Policy that forbids every request, so it
opens offline from a CI artifact. Its sections:

- the verdict, its counts, run key, commit, engines, hosts and agents;
- a timeline: one lane per agent, split into one lane per job when an agent
  ran shards at once (``shard-all``), one bar per shard from its start to its
  end coloured by state; a lane's waits (hatched: from the run's first start
  to its first shard, and between its shards) are the time it ran no shard
  of this run: waiting for a lock, for a job slot, for work, or started
  late; the run's wall time and lower bound are marked;
- balance: each shard's time against the ideal (work / shards) and against
  its estimate;
- what broke: failing and flaky tests with their message, and each shard
  that did not pass (or holds a flaky test) with why and its log's tail;
- the slowest tests, or items when the document has no per-test results.

Every piece of text is escaped (``html.escape``); lists are cut at
MAX_LISTED rows so that the page stays small whatever the run.
"""

from __future__ import annotations

import datetime
import html
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from colorama import Fore, Style

from .results import parse_time
from .states import COLORS, ShardState, TestOutcome
from .text import format_seconds, paint, shorten
from .verdict import TIMED_STATES

#: Rows of a list (failing tests, flaky tests, shards) shown before "N more".
MAX_LISTED = 200
#: How many of the slowest tests or items the page lists.
SLOWEST = 20
#: Shards drawn in the balance chart (the longest); the table lists them all.
MAX_CHARTED = 60
#: The page forbids itself every request (inline styles only).
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
#: Timeline characters in the terminal, per state; ``.`` is a lane's wait.
BAR_CHARS: Mapping[str, str] = {
    ShardState.PASSED: "=",
    ShardState.FAILED: "!",
    ShardState.TIMED_OUT: "x",
    ShardState.RUNNING: ">",
    ShardState.CRASHED: "?",
    ShardState.INTERRUPTED: "/",
}
WAIT_CHAR = "."
#: The terminal's colours (states.COLORS) as the page draws them.
_HTML_COLORS = {
    Fore.GREEN: "#2e7d32",
    Fore.RED: "#c62828",
    Fore.YELLOW: "#b26a00",
    Fore.CYAN: "#00838f",
    Style.DIM: "#8a8a8a",
}
_FAILING = (TestOutcome.FAILED, TestOutcome.ERROR)


def html_color(state: str) -> str:
    """The page's colour of a state word: the terminal's colour (states.COLORS)."""
    return _HTML_COLORS[COLORS.get(state, Style.DIM)]


class ListedTest(NamedTuple):
    """One test (or, without per-test results, one shard's items) as the page lists it."""

    id: str
    shard: int
    outcome: str  # a TestOutcome word; a ShardState word for a shard's items
    seconds: float
    message: str
    flaky: bool


def listed_tests(doc: Mapping[str, Any]) -> Tuple[bool, List[ListedTest]]:
    """``(per_test, entries)``: the document's per-test results, each
    ``{"id", "shard", "outcome", "seconds", "message", "flaky"}`` under
    ``tests`` (see ``verdict.TEST_KEYS``); without them (``tests`` null),
    ``per_test`` is False and each shard that ran stands for its items: its
    item when it has one, else ``shard N (K items)``, with its state, time
    and detail. The one place the page reads per-test data."""
    tests = doc.get("tests")
    if tests is not None:
        return True, [
            ListedTest(
                str(test["id"]),
                int(test["shard"]),
                str(test["outcome"]),
                float(test["seconds"] or 0.0),
                str(test["message"] or ""),
                bool(test["flaky"]),
            )
            for test in tests
        ]
    entries = []
    for shard in doc["shards"]:
        if shard["duration"] is None:
            continue
        items = shard["items"]
        name = items[0] if len(items) == 1 else "shard %d (%d items)" % (shard["shard"], len(items))
        entry = ListedTest(
            name, shard["shard"], shard["state"], shard["duration"], shard["detail"], False
        )
        entries.append(entry)
    return False, entries


# --- Lanes: the timeline's layout, shared by the page and the terminal -------


@dataclass(frozen=True)
class Bar:
    """One shard on the timeline, in seconds from the run's first start;
    ``end`` is None when unknown (crashed: it never finished)."""

    shard: int
    state: str
    start: float
    end: Optional[float]
    agent: str
    host: str
    duration: Optional[float]


@dataclass(frozen=True)
class Lane:
    name: str
    bars: Tuple[Bar, ...]

    def waits(self, span: float) -> List[Tuple[float, float]]:
        """``(start, end)`` of each stretch before and between its bars when the
        lane ran nothing, within ``[0, span]``."""
        found, free_from = [], 0.0
        for bar in self.bars:
            if bar.start > free_from + 1e-9:
                found.append((free_from, bar.start))
            free_from = max(free_from, span if bar.end is None else bar.end)
        return found


@dataclass(frozen=True)
class Timeline:
    lanes: Tuple[Lane, ...]
    #: Seconds the picture spans: the wall time, or more when the bound or a bar is longer.
    span: float
    wall: Optional[float]
    lower_bound: float
    #: Shards that have no place on it (missing, outdated, corrupt), with their state.
    untimed: Tuple[Tuple[int, str], ...]


def timeline(doc: Mapping[str, Any]) -> Timeline:
    """The lanes of the document's timed shards. A lane per agent (by name);
    an agent that ran shards at once gets one lane per job, each bar
    going to its first lane that is free by then."""
    timing = doc["timing"]
    first = parse_time(timing["started_at"]) if timing["started_at"] else None
    bars, untimed = [], []
    for shard in doc["shards"]:
        start = _offset(shard["started_at"], first)
        if shard["state"] not in TIMED_STATES or start is None:
            untimed.append((shard["shard"], shard["state"]))
            continue
        end = _offset(shard["ended_at"], first)
        if end is None and shard["state"] == ShardState.RUNNING:
            end = start + (shard["duration"] or 0.0)
        agent = shard["agent"] or shard["host"] or "unknown agent"
        bars.append(
            Bar(
                shard["shard"],
                shard["state"],
                start,
                end,
                agent,
                shard["host"] or "",
                shard["duration"],
            )
        )
    known_ends = [bar.end for bar in bars if bar.end is not None]
    span = max([timing["wall"] or 0.0, timing["lower_bound"] or 0.0, *known_ends, 1e-3])
    by_agent: Dict[str, List[List[Bar]]] = {}
    for bar in sorted(bars, key=lambda bar: (bar.start, bar.shard)):
        jobs = by_agent.setdefault(bar.agent, [])
        for job in jobs:
            last_end = job[-1].end
            if last_end is not None and last_end <= bar.start + 1e-6:
                job.append(bar)
                break
        else:
            jobs.append([bar])
    lanes = []
    for agent, jobs in sorted(by_agent.items()):
        for number, job in enumerate(jobs, start=1):
            name = agent if number == 1 else "%s #%d" % (agent, number)
            lanes.append(Lane(name, tuple(job)))
    return Timeline(
        tuple(lanes), span, timing["wall"], timing["lower_bound"] or 0.0, tuple(untimed)
    )


def _offset(stamp: Optional[str], first: Optional[datetime.datetime]) -> Optional[float]:
    if not stamp or first is None:
        return None
    try:
        return max((parse_time(stamp) - first).total_seconds(), 0.0)
    except ValueError:
        return None


# --- The terminal's timeline --------------------------------------------------


def render_timeline(doc: Mapping[str, Any], *, width: int = 100, color: bool = False) -> str:
    """The timeline as text (no trailing newline), ``width`` columns at most: a
    line per lane, one character per slice of the run, a bar drawn with its
    shard's number and its state's character (BAR_CHARS), waits as ``.``;
    then where the lower bound falls, and a legend."""
    picture = timeline(doc)
    timing = doc["timing"]
    if not picture.lanes:
        return "timeline: no shard of this run has started"
    label_width = min(max(len(lane.name) for lane in picture.lanes), 24)
    columns = max(20, min(80, width - label_width - 4))
    scale = columns / picture.span

    def column(seconds: float) -> int:
        return min(columns - 1, max(0, int(seconds * scale)))

    lines = [
        "timeline: wall %s, lower bound %s (ideal %s per shard), work %s"
        % (
            format_seconds(picture.wall),
            format_seconds(picture.lower_bound),
            format_seconds(timing["ideal"]),
            format_seconds(timing["work"]),
        )
    ]
    right = "wall %s" % format_seconds(picture.wall) if picture.wall is not None else ""
    lines.append("  %s  %s%s" % (" " * label_width, "0s", right.rjust(columns - 2)))
    for lane in picture.lanes:
        cells: List[Tuple[str, str]] = [(" ", "")] * columns
        for start, end in lane.waits(picture.span):
            for at in range(column(start), max(column(end), column(start) + 1)):
                cells[at] = (WAIT_CHAR, "")
        for bar in lane.bars:
            first = column(bar.start)
            end = picture.span if bar.end is None else bar.end
            last = max(first + 1, min(columns, int(math.ceil(end * scale))))
            fill = BAR_CHARS.get(bar.state, "#")
            text = str(bar.shard) if len(str(bar.shard)) <= last - first else fill
            text = text + fill * (last - first - len(text))
            tint = COLORS.get(bar.state, "") if color else ""
            for offset, char in enumerate(text):
                cells[first + offset] = (char, tint)
        drawn = "".join(paint(char, tint) for char, tint in cells).rstrip()
        lines.append("  %s  %s" % (shorten(lane.name, label_width).ljust(label_width), drawn))
    bound = column(picture.lower_bound)
    lines.append(
        "  %s  %s^ lower bound %s"
        % (" " * label_width, " " * bound, format_seconds(picture.lower_bound))
    )
    legend = "  ".join("%s %s" % (char, state) for state, char in BAR_CHARS.items())
    lines.append("  %s  %s waiting" % (legend, WAIT_CHAR))
    if picture.untimed:
        lines.append(
            "  not on the timeline: %s"
            % ", ".join("shard %d (%s)" % (number, state) for number, state in picture.untimed)
        )
    return "\n".join(lines)


# --- The page -----------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    """An SVG coordinate: short, no exponent."""
    return ("%.1f" % value).rstrip("0").rstrip(".")


def _percent(value: Optional[float], base: Optional[float]) -> str:
    if value is None or not base:
        return "-"
    return "%+.0f%%" % ((value / base - 1.0) * 100)


def _badge(state: str) -> str:
    return '<span class="badge" style="background:%s">%s</span>' % (html_color(state), _e(state))


def _more(shown: int, total: int, what: str) -> str:
    if total <= shown:
        return ""
    return '<p class="more">and %d more %s (see <code>verify --json</code>)</p>' % (
        total - shown,
        _e(what),
    )


def render_html(doc: Mapping[str, Any]) -> str:
    """The whole page for a verdict document (see the module's docstring)."""
    per_test, tests = listed_tests(doc)
    title = "%s: %s (run %s)" % (doc["task"], str(doc["verdict"]).upper(), doc["run_key"])
    body = "\n".join(
        [
            _header(doc),
            _timeline_section(doc),
            _balance_section(doc),
            _problems_section(doc, per_test, tests),
            _slowest_section(per_test, tests),
        ]
    )
    # NOTE: "<" written as \\u003c keeps the JSON valid and the block unbreakable by "</script>".
    data = json.dumps(doc, separators=(",", ":"), sort_keys=False).replace("<", "\\u003c")
    return _PAGE % {
        "csp": _e(CSP),
        "title": _e(title),
        "style": _STYLE,
        "body": body,
        "data": data,
    }


def _moment(stamp: Optional[str]) -> str:
    """``2024-05-01 12:00:00 UTC`` for an RFC 3339 stamp; ``-`` when none."""
    if not stamp:
        return "-"
    try:
        return parse_time(stamp).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp


def _header(doc: Mapping[str, Any]) -> str:
    shards, timing = doc["shards"], doc["timing"]

    def distinct(key: str) -> str:
        found = sorted({str(shard[key]) for shard in shards if shard[key]})
        return ", ".join(found) if found else "-"

    counts = " ".join(
        '<span class="count" data-state="%s">%s %d</span>' % (_e(state), _badge(state), count)
        for state, count in doc["counts"].items()
        if count
    )
    commit = doc.get("commit")
    facts = [
        ("run key", _e(doc["run_key"])),
        ("commit", '<code title="%s">%s</code>' % (_e(commit), _e(commit[:12])) if commit else "-"),
        ("judged at", _e(_moment(doc.get("judged_at")))),
        ("shards", "%d" % len(shards)),
        ("wall time", _e(format_seconds(timing["wall"]))),
        ("lower bound", _e(format_seconds(timing["lower_bound"]))),
        ("engines", _e(distinct("engine"))),
        ("hosts", _e(distinct("host"))),
        ("agents", _e(distinct("agent"))),
    ]
    rows = "".join(
        '<div><dt>%s</dt><dd data-fact="%s">%s</dd></div>' % (_e(k), _e(k), v) for k, v in facts
    )
    return (
        '<header><h1>%s <span class="verdict" id="verdict" data-verdict="%s" style="background:%s">'
        "%s</span></h1>\n"
        '<p class="counts" id="counts">%s</p>\n<dl class="facts">%s</dl></header>'
        % (
            _e(doc["task"]),
            _e(doc["verdict"]),
            html_color(doc["verdict"]),
            _e(str(doc["verdict"]).upper()),
            counts or "no shards",
            rows,
        )
    )


_LANE_HEIGHT, _BAR_HEIGHT, _LABEL_WIDTH, _PLOT_WIDTH = 30, 20, 170, 800


def _ticks(span: float) -> List[float]:
    """Round seconds for the axis: 4 to 10 of them across ``span``."""
    raw = span / 6
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [step * n for n in range(int(span / step) + 1)]


def _timeline_section(doc: Mapping[str, Any]) -> str:
    picture = timeline(doc)
    if not picture.lanes:
        nothing = "<p>No shard of this run has started.</p>"
        return '<section id="timeline"><h2>Timeline</h2>%s</section>' % nothing
    top, height = 26, 26 + _LANE_HEIGHT * len(picture.lanes)
    total = height + 46
    scale = _PLOT_WIDTH / picture.span

    def x(seconds: float) -> float:
        return _LABEL_WIDTH + seconds * scale

    parts = [
        '<svg id="timeline-chart" role="img" viewBox="0 0 %d %d" width="100%%" '
        'xmlns="http://www.w3.org/2000/svg" aria-label="timeline">'
        % (_LABEL_WIDTH + _PLOT_WIDTH + 40, total),
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f3f3f3"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#b8b8b8" stroke-width="2"/></pattern></defs>',
    ]
    for tick in _ticks(picture.span):
        parts.append(
            '<line class="tick" x1="%s" y1="%d" x2="%s" y2="%d"/>'
            '<text class="axis" x="%s" y="16">%s</text>'
            % (
                _num(x(tick)),
                top - 4,
                _num(x(tick)),
                height,
                _num(x(tick)),
                _e(format_seconds(tick)),
            )
        )
    for number, lane in enumerate(picture.lanes):
        y = top + number * _LANE_HEIGHT
        parts.append('<g class="lane" data-lane="%s">' % _e(lane.name))
        parts.append(
            '<rect class="lane-bg" x="0" y="%d" width="%d" height="%d"/>'
            '<text class="lane-name" x="6" y="%d">%s</text>'
            % (y, _LABEL_WIDTH + _PLOT_WIDTH + 40, _LANE_HEIGHT, y + 19, _e(shorten(lane.name, 24)))
        )
        for start, end in lane.waits(picture.span):
            parts.append(
                '<rect class="wait" x="%s" y="%d" width="%s" height="%d" fill="url(#hatch)">'
                "<title>%s waited %s (from %s to %s)</title></rect>"
                % (
                    _num(x(start)),
                    y + 5,
                    _num(max((end - start) * scale, 0.5)),
                    _BAR_HEIGHT,
                    _e(lane.name),
                    _e(format_seconds(end - start)),
                    _e(format_seconds(start)),
                    _e(format_seconds(end)),
                )
            )
        for bar in lane.bars:
            end = picture.span if bar.end is None else bar.end
            width = max((end - bar.start) * scale, 2.0)
            dashed = ' stroke-dasharray="4 3" fill-opacity="0.45"' if bar.end is None else ""
            tip = "shard %d %s, %s, started at %s%s (%s%s)" % (
                bar.shard,
                bar.state,
                format_seconds(bar.duration) if bar.end is not None else "never finished",
                format_seconds(bar.start),
                ", ended at %s" % format_seconds(bar.end) if bar.end is not None else "",
                bar.agent,
                " on %s" % bar.host if bar.host else "",
            )
            label = (
                '<text class="bar-label" x="%s" y="%d">%d</text>'
                % (_num(x(bar.start) + 4), y + 19, bar.shard)
                if width >= 8 * len(str(bar.shard)) + 6
                else ""
            )
            parts.append(
                '<g class="bar" data-shard="%d" data-state="%s">'
                '<rect x="%s" y="%d" width="%s" height="%d" rx="2" fill="%s" stroke="%s"%s/>'
                "%s<title>%s</title></g>"
                % (
                    bar.shard,
                    _e(bar.state),
                    _num(x(bar.start)),
                    y + 5,
                    _num(width),
                    _BAR_HEIGHT,
                    html_color(bar.state),
                    html_color(bar.state),
                    dashed,
                    label,
                    _e(tip),
                )
            )
        parts.append("</g>")
    for name, seconds, row in (("wall", picture.wall, 0), ("lower-bound", picture.lower_bound, 1)):
        if seconds is None:
            continue
        words = "wall time %s" if name == "wall" else "lower bound %s"
        anchor = "end" if seconds > picture.span * 0.7 else "start"
        parts.append(
            '<g class="marker" data-marker="%s"><line x1="%s" y1="%d" x2="%s" y2="%d"/>'
            '<text x="%s" y="%d" text-anchor="%s">%s</text></g>'
            % (
                name,
                _num(x(seconds)),
                top - 4,
                _num(x(seconds)),
                height + 8 + 16 * row,
                _num(x(seconds) + (-4 if anchor == "end" else 4)),
                height + 18 + 16 * row,
                anchor,
                _e(words % format_seconds(seconds)),
            )
        )
    parts.append("</svg>")
    legend = " ".join(
        '<span><i style="background:%s"></i>%s</span>' % (html_color(state), _e(state))
        for state in BAR_CHARS
    )
    legend += ' <span><i class="hatched"></i>waiting: the lane ran no shard of this run</span>'
    untimed = ""
    if picture.untimed:
        untimed = '<p class="note">Not on the timeline: %s.</p>' % ", ".join(
            '<a href="#shard-%d">shard %d</a> (%s)' % (number, number, _e(state))
            for number, state in picture.untimed
        )
    timing = doc["timing"]
    summary = (
        "<p>Wall time <b>%s</b> from the first shard's start to the last one's end; "
        "lower bound <b>%s</b> (no split into %d shards finishes sooner: "
        "the ideal %s per shard%s); "
        "%s of work.</p>"
        % (
            _e(format_seconds(timing["wall"])),
            _e(format_seconds(timing["lower_bound"])),
            len(doc["shards"]),
            _e(format_seconds(timing["ideal"])),
            _heaviest_words(timing),
            _e(format_seconds(timing["work"])),
        )
    )
    return '<section id="timeline"><h2>Timeline</h2>%s%s<p class="legend">%s</p>%s</section>' % (
        summary,
        "".join(parts),
        legend,
        untimed,
    )


def _heaviest_words(timing: Mapping[str, Any]) -> str:
    heaviest = timing.get("heaviest_item")
    if not heaviest:
        return ""
    how = "measured" if heaviest["measured"] else "estimated"
    return ", or the heaviest item, %s at %s, <code>%s</code>" % (
        how,
        _e(format_seconds(heaviest["seconds"])),
        _e(heaviest["item"]),
    )


_SHARD_ROW = (
    '<tr data-shard="%d"><td class="num">%d</td><td>%s</td><td class="num">%d</td>'
    + '<td class="num">%s</td>' * 5
    + "<td>%s</td><td>%s</td><td>%s</td></tr>"
)


def _balance_section(doc: Mapping[str, Any]) -> str:
    shards, timing = doc["shards"], doc["timing"]
    ideal = timing["ideal"] or 0.0
    charted = sorted(
        (shard for shard in shards if shard["duration"] is not None),
        key=lambda shard: -shard["duration"],
    )[:MAX_CHARTED]
    charted.sort(key=lambda shard: shard["shard"])
    parts = []
    if charted:
        longest = max(
            [ideal, *(s["duration"] for s in charted), *(s["estimate"] or 0.0 for s in charted)]
        )
        scale = _PLOT_WIDTH / (longest or 1.0)
        row_height, top = 22, 8
        height = top + row_height * len(charted) + 24
        parts.append(
            '<svg id="balance-chart" role="img" viewBox="0 0 %d %d" width="100%%" '
            'xmlns="http://www.w3.org/2000/svg" aria-label="balance">'
            % (_LABEL_WIDTH + _PLOT_WIDTH + 40, height)
        )
        for number, shard in enumerate(charted):
            y = top + number * row_height
            parts.append(
                '<g class="balance" data-shard="%d">'
                '<text class="lane-name" x="6" y="%d">shard %d</text>'
                '<rect x="%d" y="%d" width="%s" height="14" rx="2" fill="%s"><title>shard %d: %s, '
                "%s the ideal, %s its estimate</title></rect>"
                % (
                    shard["shard"],
                    y + 13,
                    shard["shard"],
                    _LABEL_WIDTH,
                    y + 2,
                    _num(max(shard["duration"] * scale, 1.0)),
                    html_color(shard["state"]),
                    shard["shard"],
                    _e(format_seconds(shard["duration"])),
                    _e(_percent(shard["duration"], ideal)),
                    _e(_percent(shard["duration"], shard["estimate"])),
                )
            )
            if shard["estimate"] is not None:
                at = _LABEL_WIDTH + shard["estimate"] * scale
                parts.append(
                    '<line class="estimate" x1="%s" y1="%d" x2="%s" y2="%d">'
                    "<title>estimate %s</title></line>"
                    % (_num(at), y, _num(at), y + 18, _e(format_seconds(shard["estimate"])))
                )
            parts.append("</g>")
        at = _LABEL_WIDTH + ideal * scale
        parts.append(
            '<g class="marker" data-marker="ideal"><line x1="%s" y1="2" x2="%s" y2="%d"/>'
            '<text x="%s" y="%d">ideal %s</text></g></svg>'
            % (_num(at), _num(at), height - 20, _num(at + 4), height - 6, _e(format_seconds(ideal)))
        )
    rows = []
    for shard in shards[: MAX_LISTED * 5]:
        rows.append(
            _SHARD_ROW
            % (
                shard["shard"],
                shard["shard"],
                _badge(shard["state"]),
                len(shard["items"]),
                _e(format_seconds(shard["duration"])),
                _e(format_seconds(shard["estimate"])),
                _e(_percent(shard["duration"], ideal)),
                _e(_percent(shard["duration"], shard["estimate"])),
                _e(format_seconds(shard["waited"])),
                _e(shard["agent"] or "-"),
                _e(shard["host"] or "-"),
                _e(shard["engine"] or "-"),
            )
        )
    note = (
        "<p>Each shard's time against the ideal, %s (the work, %s, over %d shards), "
        "and against its estimate (a tick; none without timings). Balance %s (the longest "
        "shard over the ideal; 1.00 is even). <i>Waited</i>: from the run's first start to the "
        "shard's.</p>"
        % (
            _e(format_seconds(ideal)),
            _e(format_seconds(timing["work"])),
            len(shards),
            "-" if timing["balance"] is None else "%.2f" % timing["balance"],
        )
    )
    table = (
        '<table id="balance-table"><thead><tr><th>shard</th><th>state</th><th>items</th>'
        "<th>time</th><th>estimate</th><th>vs ideal</th><th>vs estimate</th><th>waited</th>"
        "<th>agent</th><th>host</th><th>engine</th></tr></thead><tbody>%s</tbody></table>"
        % "".join(rows)
    )
    return '<section id="balance"><h2>Balance</h2>%s%s%s%s</section>' % (
        note,
        "".join(parts),
        table,
        _more(min(len(shards), MAX_LISTED * 5), len(shards), "shards"),
    )


def _test_table(table_id: str, entries: Sequence[ListedTest]) -> str:
    rows = "".join(
        '<tr><td class="test-id"><code>%s</code></td>'
        '<td class="num"><a href="#shard-%d">%d</a></td>'
        '<td class="num">%s</td><td class="message">%s</td></tr>'
        % (
            _e(entry.id),
            entry.shard,
            entry.shard,
            _e(format_seconds(entry.seconds)),
            _e(entry.message or "-"),
        )
        for entry in entries[:MAX_LISTED]
    )
    return (
        '<table id="%s"><thead><tr><th>test</th><th>shard</th><th>time</th><th>message</th>'
        "</tr></thead><tbody>%s</tbody></table>%s"
        % (table_id, rows, _more(min(len(entries), MAX_LISTED), len(entries), "tests"))
    )


def _log_line(path: Optional[str]) -> str:
    """The log's file name, its full path (on the machine that ran it) in the tooltip."""
    if not path:
        return ""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return '<p>log: <code class="log-path" title="%s">%s</code></p>' % (_e(path), _e(name))


def _problems_section(doc: Mapping[str, Any], per_test: bool, tests: Sequence[ListedTest]) -> str:
    parts = []
    failing = [t for t in tests if per_test and t.outcome in _FAILING]
    flaky = [t for t in tests if per_test and t.flaky]
    if per_test:
        parts.append("<h3>Failing tests (%d)</h3>" % len(failing))
        parts.append(_test_table("failing-tests", failing) if failing else "<p>None.</p>")
        parts.append("<h3>Flaky tests (%d)</h3>" % len(flaky))
        parts.append(
            "<p>Failed, then passed when run again.</p>" + _test_table("flaky-tests", flaky)
            if flaky
            else "<p>None.</p>"
        )
    else:
        parts.append(
            '<p class="note">This document has no per-test results: the shards below, '
            "and their logs, say what failed.</p>"
        )
    flaky_shards = {t.shard for t in flaky}
    shown = [
        shard
        for shard in doc["shards"]
        if shard["state"] != ShardState.PASSED or shard["shard"] in flaky_shards
    ]
    failed = sum(shard["state"] != ShardState.PASSED for shard in doc["shards"])
    heading = "Shards that did not pass (%d)" % failed
    if len(shown) > failed:
        heading += " or hold a flaky test (%d)" % (len(shown) - failed)
    parts.append("<h3>%s</h3>" % heading)
    if not shown:
        parts.append("<p>None.</p>")
    for shard in shown[:MAX_LISTED]:
        items = shard["items"]
        listed = ", ".join(items[:5]) + (
            " and %d more" % (len(items) - 5) if len(items) > 5 else ""
        )
        why = shard["detail"] or ("passed, with flaky tests" if shard["state"] == "passed" else "")
        tail = shard.get("log_tail")
        parts.append(
            '<div class="shard-problem" id="shard-%d" data-shard="%d" data-state="%s">'
            "<h4>shard %d %s %s</h4><p>items: <code>%s</code></p>%s%s</div>"
            % (
                shard["shard"],
                shard["shard"],
                _e(shard["state"]),
                shard["shard"],
                _badge(shard["state"]),
                _e(why),
                _e(listed or "-"),
                _log_line(shard["log"]),
                '<pre class="log">%s</pre>' % _e(tail) if tail else "",
            )
        )
    parts.append(_more(min(len(shown), MAX_LISTED), len(shown), "shards"))
    plan = []
    if doc["uncovered_items"]:
        plan.append(
            "<li>%d item(s) in no shard: <code>%s</code></li>"
            % (len(doc["uncovered_items"]), _e(", ".join(doc["uncovered_items"][:20])))
        )
    for item, numbers in list(doc["overlapping_items"].items())[:MAX_LISTED]:
        plan.append(
            "<li><code>%s</code> is in shards %s: it runs more than once</li>"
            % (_e(item), _e(", ".join(map(str, numbers))))
        )
    if doc["stray_shards"]:
        plan.append(
            "<li>ignored records for shards not in the plan: %s</li>"
            % _e(", ".join(map(str, doc["stray_shards"])))
        )
    if plan:
        parts.append('<h3>The plan</h3><ul id="plan-problems">%s</ul>' % "".join(plan))
    return '<section id="problems"><h2>What broke</h2>%s</section>' % "".join(parts)


def _slowest_section(per_test: bool, tests: Iterable[ListedTest]) -> str:
    slowest = sorted(tests, key=lambda t: (-t.seconds, t.id))[:SLOWEST]
    what = "tests" if per_test else "items"
    rows = "".join(
        '<tr><td class="num">%d</td><td class="test-id"><code>%s</code></td>'
        '<td class="num"><a href="#shard-%d">%d</a></td><td>%s</td><td class="num">%s</td></tr>'
        % (
            rank,
            _e(entry.id),
            entry.shard,
            entry.shard,
            _badge(entry.outcome),
            _e(format_seconds(entry.seconds)),
        )
        for rank, entry in enumerate(slowest, start=1)
    )
    note = (
        ""
        if per_test
        else "<p>Without per-test results, a shard's items stand for their tests: "
        "its item when it has one, else the shard.</p>"
    )
    return (
        '<section id="slowest"><h2>The %d slowest %s</h2>%s<table id="slowest-table"><thead><tr>'
        "<th>#</th><th>%s</th><th>shard</th><th>outcome</th><th>time</th></tr></thead>"
        "<tbody>%s</tbody></table></section>"
        % (len(slowest), what, note, "test" if per_test else "item", rows)
    )


_STYLE = """
:root{color-scheme:light}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:#1d1d1d;background:#fff;margin:0 auto;max-width:1120px;padding:16px 24px 40px}
h1{font-size:22px;margin:8px 0 6px}h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}h4{font-size:14px;margin:10px 0 4px}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px}
.verdict{color:#fff;border-radius:4px;padding:1px 10px;font-size:18px;vertical-align:2px}
.badge{color:#fff;border-radius:3px;padding:0 6px;font-size:12px}
.count{margin-right:10px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:4px 18px;
margin:8px 0}.facts div{display:flex;gap:8px}.facts dt{color:#666;min-width:78px}
.facts dd{margin:0;overflow-wrap:anywhere}
svg{display:block;margin:6px 0;font-size:12px}
.lane-bg{fill:#fafafa}.lane:nth-of-type(even) .lane-bg{fill:#f0f0f0}
.lane-name{fill:#333}.axis{fill:#777;text-anchor:middle}.tick{stroke:#e2e2e2}
.bar-label{fill:#fff;font-weight:600}
.marker line{stroke:#1a237e;stroke-width:1.5;stroke-dasharray:5 3}.marker text{fill:#1a237e}
.estimate{stroke:#111;stroke-width:2}
.legend span{margin-right:14px;white-space:nowrap}
.legend i{display:inline-block;width:14px;height:10px;margin-right:4px;border-radius:2px}
.legend i.hatched{background:repeating-linear-gradient(45deg,#f3f3f3 0 3px,#b8b8b8 3px 5px)}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eee;vertical-align:top}
th{background:#f6f6f6;font-weight:600}td.num{text-align:right;white-space:nowrap}
td.test-id{overflow-wrap:anywhere}td.message{color:#8b1a1a;overflow-wrap:anywhere}
.shard-problem{border-left:4px solid #ccc;padding:2px 12px;margin:10px 0;background:#fcfcfc}
.shard-problem[data-state=failed],.shard-problem[data-state=crashed],
.shard-problem[data-state=timed-out],
.shard-problem[data-state=corrupt]{border-color:#c62828}
pre.log{background:#1e1e1e;color:#e8e8e8;padding:8px 10px;overflow-x:auto;white-space:pre-wrap;
overflow-wrap:anywhere;max-height:360px;border-radius:3px}
.note,.more{color:#555}footer{margin-top:30px;color:#777;font-size:12px}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%(csp)s">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%(title)s</title>
<style>%(style)s</style>
</head>
<body>
%(body)s
<footer>Drawn by <code>lokt-tasks verify --html</code> from the <code>verify --json</code>
document, which this file carries in its <code>verdict-json</code> block.</footer>
<script type="application/json" id="verdict-json">%(data)s</script>
</body>
</html>
"""
