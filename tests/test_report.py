"""The picture of a run: ``verify --html`` and ``verify --timeline``.

The page is checked as a user would see it: opened in headless Chromium
(``tests/browser.py``), whose rendered DOM and layout a probe script reads
back, whose screenshot holds the states' colours, and whose NetLog shows that
the page made no request. The run drawn is real (``tests/report_demo.py``: 3
shards over two agents, one failing test and one flaky test). Without
Chromium the browser tests skip and say why; ``.ci/run`` installs it.
"""

from __future__ import annotations

import datetime
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import report_demo
from browser import colour_counts, dump_dom, find_chromium, page_requests, screenshot
from scratch import FAIL, PASS, cli, make_project

from lokt_tasks.plan import Plan, Shard
from lokt_tasks.report import (
    CSP,
    MAX_LISTED,
    html_color,
    listed_tests,
    render_html,
    render_timeline,
    timeline,
)
from lokt_tasks.results import Record
from lokt_tasks.verdict import judge, verdict_to_json

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found: install Debian's chromium package"
    " (.ci/run does so when it runs as root with apt-get)",
)
RUN = "run-1"
BASE = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
#: Attributes through which a page loads or sends something.
URL_ATTRIBUTES = {"src", "href", "xlink:href", "action", "formaction", "poster", "data", "srcset"}
URL_IN_CSS = re.compile(r"url\(\s*['\"]?([^'\")]*)|@import", re.IGNORECASE)


# --- Documents to draw --------------------------------------------------------


def at(seconds: float) -> str:
    return (BASE + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record(shard: int, start: float, end, agent: str, outcome: str = "passed", **changes):
    fields = dict(
        task="t",
        shard=shard,
        total=0,
        fingerprint="fp-%d" % shard,
        run_key=RUN,
        lock_name="t-shard-%d" % shard,
        agent=agent,
        owner="o/" + agent,
        host="box",
        pid=100 + shard,
        engine="embedded",
        started_at=at(start),
        outcome=outcome,
        ended_at=None if end is None else at(end),
        duration=None if end is None else end - start,
        exit_code=None if end is None else (0 if outcome == "passed" else 1),
    )
    fields.update(changes)
    return Record(**fields)


def plan_of(count: int, items_per_shard: int = 1) -> Plan:
    shards = tuple(
        Shard(
            task="t",
            index=index,
            total=count,
            items=tuple("tests/test_%d_%d.py" % (index, n) for n in range(items_per_shard)),
            argv=("pytest",),
            lock_name="t-shard-%d" % index,
            fingerprint="fp-%d" % index,
            estimate=float(index),
        )
        for index in range(1, count + 1)
    )
    return Plan(task="t", cwd=Path("."), shards=shards)


def document(records: Dict[int, Record], count: int, tests=None, **options) -> dict:
    """The verdict document of ``records``; ``tests``, per-test entries in the
    shape ``verdict_to_json`` writes, stand in for the reports' (the page is a
    view of the document, whatever made it)."""
    verdict = judge(plan_of(count), records, {}, run_key=RUN, now=BASE)
    doc = json.loads(json.dumps(verdict_to_json(verdict, **options)))
    if tests is not None:
        doc["tests"] = json.loads(json.dumps(tests))
    return doc


# --- What the page may load: nothing --------------------------------------------


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: List[Tuple[str, str]] = []
        self.scripts: List[str] = []
        self._style = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name.lower() in URL_ATTRIBUTES and value is not None:
                self.found.append((f"<{tag} {name}>", value))
            if name.lower() == "style" and value:
                self._css(f"<{tag} style>", value)
        if tag == "script":
            self.scripts.append(dict(attrs).get("type") or "")
        self._style = tag == "style"

    def handle_endtag(self, tag):
        self._style = False

    def handle_data(self, data):
        if self._style:
            self._css("<style>", data)

    def _css(self, where: str, text: str) -> None:
        for match in URL_IN_CSS.finditer(text):
            self.found.append((where, match.group(1) if match.group(1) is not None else "@import"))


def outside_references(page: str) -> List[Tuple[str, str]]:
    """Every URL of the page that is neither a fragment (``#x``) nor ``data:``."""
    parser = _Links()
    parser.feed(page)
    return [
        (where, url)
        for where, url in parser.found
        if not (url.startswith("#") or url.lower().startswith("data:"))
    ]


def scripts(page: str) -> List[str]:
    parser = _Links()
    parser.feed(page)
    return parser.scripts


def test_the_reference_check_finds_what_would_load():
    page = (
        '<html><head><link rel="stylesheet" href="https://cdn.example/x.css">'
        "<style>body{background:url('http://example.invalid/a.png')} @import 'b.css';</style>"
        '</head><body><img src="pic.png"><a href="#ok">x</a><svg><use xlink:href="s.svg#i"/>'
        '<rect fill="url(#hatch)"/></svg><div style="background:url(c.png)"></div>'
        '<img src="data:image/png;base64,AAAA"></body></html>'
    )
    assert sorted(url for _, url in outside_references(page)) == [
        "@import",
        "c.png",
        "http://example.invalid/a.png",
        "https://cdn.example/x.css",
        "pic.png",
        "s.svg#i",
    ]


def test_the_page_refers_to_nothing_outside_itself_and_runs_no_script():
    records = {
        1: record(1, 0, 4, "agent-1"),
        2: record(2, 1, 9, "agent-2", "failed", log="/nonexistent/shard-2.log"),
    }
    page = render_html(document(records, 3, commit="c" * 40))
    assert outside_references(page) == []
    assert scripts(page) == ["application/json"]  # the document it carries, inert
    assert f'content="{html.escape(CSP)}"' in page


# --- The page's content ------------------------------------------------------


def test_every_text_is_escaped_and_the_carried_document_is_the_one_drawn(tmp_path):
    log = tmp_path / "shard-1.log"
    log.write_text("<script>alert(1)</script>\n</script><b>bold</b>\n", encoding="utf-8")
    records = {1: record(1, 0, 2, 'agent-"<i>', "failed", log=str(log))}
    tests = [
        {
            "id": "tests/x.py::test_<b>[a&b]",
            "shard": 1,
            "outcome": "failed",
            "seconds": 1.5,
            "message": 'assert "<img src=x>" == 1',
            "flaky": False,
        }
    ]
    doc = document(records, 1, tests=tests)
    page = render_html(doc)

    assert "<img src=x>" not in page and "<b>bold" not in page and '"<i>' not in page
    assert "agent-&quot;&lt;i&gt;" in page
    assert "tests/x.py::test_&lt;b&gt;[a&amp;b]" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    carried = re.search(r'<script type="application/json" id="verdict-json">(.*?)</script>', page)
    assert carried and json.loads(carried.group(1)) == doc
    assert outside_references(page) == []


def test_without_per_test_results_items_stand_for_tests():
    records = {
        1: record(1, 0, 4, "agent-1"),
        2: record(2, 0, 7, "agent-2", "failed"),
        3: record(3, 4, None, "agent-1", "running"),  # crashed: a start record, no holder
    }
    verdict = judge(plan_of(3, items_per_shard=1), records, {}, run_key=RUN, now=BASE)
    doc = json.loads(json.dumps(verdict_to_json(verdict)))
    per_test, entries = listed_tests(doc)
    assert not per_test
    assert [(e.id, e.shard, e.outcome, e.seconds) for e in entries] == [
        ("tests/test_1_0.py", 1, "passed", 4.0),
        ("tests/test_2_0.py", 2, "failed", 7.0),
    ]
    wide = judge(plan_of(2, items_per_shard=3), records, {}, run_key=RUN, now=BASE)
    _, entries = listed_tests(json.loads(json.dumps(verdict_to_json(wide))))
    assert [e.id for e in entries] == ["shard 1 (3 items)", "shard 2 (3 items)"]

    page = render_html(doc)
    assert "The 2 slowest items" in page and "no per-test results" in page
    assert 'id="failing-tests"' not in page
    assert 'id="shard-2" data-shard="2" data-state="failed"' in page
    assert 'id="shard-3" data-shard="3" data-state="crashed"' in page


def test_lanes_one_per_agent_and_one_per_job_of_an_agent():
    records = {
        1: record(1, 0, 5, "a"),
        2: record(2, 0, 3, "a"),  # at once with shard 1: a second job of agent a
        3: record(3, 3, 6, "a"),  # after shard 2, in its lane
        4: record(4, 2, 4, "b"),
        5: record(5, 7, None, "b", "running"),  # crashed: never ended
    }
    picture = timeline(document(records, 6))
    lanes = [(lane.name, [bar.shard for bar in lane.bars]) for lane in picture.lanes]
    assert lanes == [("a", [1]), ("a #2", [2, 3]), ("b", [4, 5])]
    b = picture.lanes[2]
    assert picture.span == 6.0  # the wall time: the crashed shard's end is unknown
    assert b.waits(picture.span) == [(0.0, 2.0), (4.0, 7.0)]
    assert picture.untimed == ((6, "missing"),)


def test_a_run_of_1000_tests_makes_a_page_under_1_mb(tmp_path):
    shards, per_shard = 8, 125
    logs = []
    for index in range(1, shards + 1):
        log = tmp_path / ("shard-%d.log" % index)
        log.write_text("".join("%s\n" % ("x" * 150) for _ in range(500)), encoding="utf-8")
        logs.append(log)
    records = {
        i: record(i, i, 60 + i * 5, "agent-%d" % (i % 3), "failed", log=str(logs[i - 1]))
        for i in range(1, shards + 1)
    }
    plan = plan_of(shards, items_per_shard=20)
    tests = [
        {
            "id": "tests/test_%d_%d.py::TestSuite::test_case_number_%04d[param-%d]"
            % (n % shards + 1, n % 20, n, n),
            "shard": n % shards + 1,
            "outcome": "failed" if n % 4 == 0 else "passed",
            "seconds": (n * 7919 % 1000) / 100.0,
            "message": "AssertionError: " + "expected something else here " * 10,
            "flaky": n % 10 == 1,
        }
        for n in range(shards * per_shard)
    ]
    verdict = judge(plan, records, {}, run_key=RUN, now=BASE)
    doc = json.loads(json.dumps(verdict_to_json(verdict)))
    doc["tests"] = tests
    page = render_html(doc)
    size = len(page.encode("utf-8"))
    assert size < 1_000_000, size
    assert page.count('<td class="test-id">') == MAX_LISTED + 100 + 20  # failing, flaky, slowest
    assert "and 50 more tests" in page


# --- The terminal's timeline ----------------------------------------------------


def test_the_terminal_timeline_has_a_line_per_lane_and_marks_the_bound():
    records = {
        1: record(1, 0, 10, "agent-1"),
        2: record(2, 0, 4, "agent-2", "failed"),
        3: record(3, 6, 10, "agent-2"),
    }
    text = render_timeline(document(records, 4), width=60)
    lines = text.splitlines()
    assert lines[0] == "timeline: wall 10.0s, lower bound 4.5s (ideal 4.5s per shard), work 18.0s"
    lane_1 = next(line for line in lines if line.startswith("  agent-1"))
    lane_2 = next(line for line in lines if line.startswith("  agent-2"))
    plot = lane_2[len("  agent-1  ") :]
    columns = len(lines[1]) - len("  agent-1  ")  # the scale line spans the plot
    assert plot.startswith("2!!!") and plot.rstrip().endswith("=")
    gap = plot[int(4 / 10 * columns) + 1 : int(6 / 10 * columns) - 1]
    assert gap and set(gap) == {"."}, plot  # agent-2 waited from 4 s to 6 s
    assert lane_1[len("  agent-1  ") :].startswith("1=====")
    bound = next(line for line in lines if "^ lower bound 4.5s" in line)
    assert bound.index("^") - len("  agent-1  ") == int(4.5 / 10 * columns)
    assert "not on the timeline: shard 4 (missing)" in text
    assert "\x1b[" not in text
    assert "\x1b[" in render_timeline(document(records, 4), width=60, color=True)


def test_a_timeline_before_any_shard_started():
    assert render_timeline(document({}, 2)) == "timeline: no shard of this run has started"
    assert "No shard of this run has started." in render_html(document({}, 2))


# --- Through the command line -------------------------------------------------


def test_verify_writes_the_page_and_prints_the_timeline(tmp_path):
    root = make_project(
        tmp_path / "p",
        {"check_a.py": PASS, "check_b.py": FAIL, "check_c.py": PASS},
        extra_toml="jobs = 2\n",
    )
    cli(root, "shard-all", "checks", "--agent", "ci-1")
    page = tmp_path / "out" / "deeper" / "report.html"

    result = cli(root, "verify", "checks", "--html", str(page), "--timeline")

    assert result.returncode == 3, result.stderr
    assert "timeline: wall" in result.stdout and "^ lower bound" in result.stdout
    assert re.search(r"^  ci-1 +[123]", result.stdout, re.MULTILINE)
    text = page.read_text(encoding="utf-8")
    assert text.count('<g class="bar"') == 3
    assert 'data-lane="ci-1"' in text and 'data-lane="ci-1 #2"' in text  # two jobs at once
    assert 'id="shard-2" data-shard="2" data-state="failed"' in text
    assert "check failed on purpose" in text  # the failed shard's log tail
    assert outside_references(text) == []

    both = cli(root, "verify", "checks", "--json", "--timeline")
    assert both.returncode == 2 and "--timeline" in both.stderr
    doc = json.loads(cli(root, "verify", "checks", "--json").stdout)
    assert doc["commit"] and re.fullmatch(r"[0-9a-f]{40}", doc["commit"])
    assert doc["timing"]["wall"] > 0 and doc["tests"] is None


# --- In a real browser ----------------------------------------------------------

#: Reads the rendered page back: boxes of lanes and bars, what is visible.
PROBE = """
<script>
(function () {
  function box(e) { var r = e.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height}; }
  function shown(e) { var r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden'; }
  function texts(selector) { return Array.prototype.map.call(
    document.querySelectorAll(selector), function (e) {
      return {text: e.textContent, shown: shown(e)}; }); }
  var out = {lanes: [], bars: [], waits: 0, markers: {}, facts: {}};
  document.querySelectorAll('#timeline-chart .lane').forEach(function (lane) {
    out.lanes.push({name: lane.dataset.lane, box: box(lane.querySelector('.lane-bg'))});
    out.waits += lane.querySelectorAll('.wait').length;
    lane.querySelectorAll('.bar').forEach(function (bar) {
      var rect = bar.querySelector('rect');
      out.bars.push({lane: lane.dataset.lane, shard: +bar.dataset.shard,
        state: bar.dataset.state, box: box(rect), fill: getComputedStyle(rect).fill});
    });
  });
  document.querySelectorAll('.marker').forEach(function (m) {
    out.markers[m.dataset.marker] = {box: box(m.querySelector('line')),
      text: m.textContent, shown: shown(m.querySelector('text'))};
  });
  document.querySelectorAll('[data-fact]').forEach(function (d) {
    out.facts[d.dataset.fact] = d.textContent; });
  out.verdict = document.getElementById('verdict').textContent;
  out.counts = document.getElementById('counts').textContent;
  out.failing = texts('#failing-tests td.test-id');
  out.failing_messages = texts('#failing-tests td.message');
  out.flaky = texts('#flaky-tests td.test-id');
  out.flaky_messages = texts('#flaky-tests td.message');
  out.logs = texts('.shard-problem pre.log');
  out.problems = Array.prototype.map.call(document.querySelectorAll('.shard-problem'),
    function (e) { var log = e.querySelector('pre.log');
      return {shard: +e.dataset.shard, state: e.dataset.state, shown: shown(e),
        why: e.querySelector('h4').textContent, log: log ? log.textContent : null}; });
  out.balance = Array.prototype.map.call(document.querySelectorAll('#balance-chart .balance'),
    function (g) { return {shard: +g.dataset.shard, bar: box(g.querySelector('rect')),
      estimate: g.querySelector('.estimate') ? box(g.querySelector('.estimate')) : null}; });
  out.balance_rows = document.querySelectorAll('#balance-table tbody tr').length;
  out.slowest = texts('#slowest-table td.test-id');
  var pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
})();
</script>
"""


def probe(binary: str, page: str, where: Path) -> dict:
    """What Chromium rendered of ``page``: PROBE's findings."""
    meta = '<meta http-equiv="Content-Security-Policy" content="%s">' % html.escape(CSP)
    assert meta in page
    # NOTE: the page's policy forbids every script; the probe is ours, added to a copy.
    where.write_text(page.replace(meta, "").replace("</body>", PROBE + "</body>"), "utf-8")
    dom = dump_dom(binary, where)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def rgb(colour: str) -> str:
    return "rgb(%d, %d, %d)" % tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo run's document and page: 3 shards, 2 agents, a failing and a flaky test."""
    root = tmp_path_factory.mktemp("demo") / "shop"
    doc = json.loads(json.dumps(report_demo.run_demo(root)))
    page = root.parent / "report.html"
    page.write_text(render_html(doc), encoding="utf-8")
    return doc, page


@needs_chromium
def test_the_demo_run_is_what_the_browser_tests_need(demo):
    doc, _ = demo
    assert doc["verdict"] == "failed" and doc["counts"]["failed"] == 1
    assert {shard["agent"] for shard in doc["shards"]} == {"agent-1", "agent-2"}
    failing = [t["id"] for t in doc["tests"] if t["outcome"] == "failed"]
    flaky = [t["id"] for t in doc["tests"] if t["flaky"]]
    assert (failing, flaky) == ([report_demo.FAILING_TEST], [report_demo.FLAKY_TEST])


@needs_chromium
def test_the_browser_renders_every_part_of_the_page(demo, tmp_path):
    doc, page = demo
    seen = probe(CHROMIUM, page.read_text(encoding="utf-8"), tmp_path / "probe.html")

    # the verdict, its counts, run key, commit, engines, hosts, agents
    assert seen["verdict"] == "FAILED"
    assert "passed 2" in seen["counts"] and "failed 1" in seen["counts"]
    facts = seen["facts"]
    assert facts["run key"] == report_demo.RUN and facts["commit"] == doc["commit"][:12]
    assert (facts["engines"], facts["agents"]) == ("embedded", "agent-1, agent-2")
    assert facts["hosts"] == doc["shards"][0]["host"]

    # a lane per agent, a bar per shard inside its lane, coloured by state
    lanes = {lane["name"]: lane["box"] for lane in seen["lanes"]}
    assert sorted(lanes) == ["agent-1", "agent-2"]
    assert sorted(bar["shard"] for bar in seen["bars"]) == [1, 2, 3]
    by_shard = {shard["shard"]: shard for shard in doc["shards"]}
    for bar in seen["bars"]:
        lane, box = lanes[bar["lane"]], bar["box"]
        assert bar["lane"] == by_shard[bar["shard"]]["agent"]
        assert bar["state"] == by_shard[bar["shard"]]["state"]
        assert box["w"] > 5 and box["h"] > 5
        assert lane["y"] <= box["y"] and box["y"] + box["h"] <= lane["y"] + lane["h"]
        assert bar["fill"] == rgb(html_color(bar["state"]))
    # the later a shard started, the further right its bar
    starts = sorted(seen["bars"], key=lambda bar: by_shard[bar["shard"]]["waited"])
    assert [bar["box"]["x"] for bar in starts] == sorted(bar["box"]["x"] for bar in starts)
    # agent-2 started later than agent-1: its lane waits before its first shard
    assert seen["waits"] >= 1
    # the wall time and the lower bound are marked, each where its seconds fall
    wall, bound = seen["markers"]["wall"], seen["markers"]["lower-bound"]
    assert wall["shown"] and bound["shown"]
    assert "wall time" in wall["text"] and "lower bound" in bound["text"]
    ratio = doc["timing"]["lower_bound"] / doc["timing"]["wall"]
    left = min(bar["box"]["x"] for bar in seen["bars"])
    measured = (bound["box"]["x"] - left) / (wall["box"]["x"] - left)
    assert abs(measured - ratio) < 0.02

    # balance: each shard against the ideal and its estimate (a tick where it falls)
    assert [row["shard"] for row in seen["balance"]] == [1, 2, 3]
    assert seen["markers"]["ideal"]["shown"] and seen["balance_rows"] == 3
    for row in seen["balance"]:
        shard = by_shard[row["shard"]]
        assert row["bar"]["w"] > 0 and row["estimate"] is not None
        per_second = row["bar"]["w"] / shard["duration"]
        tick = row["estimate"]["x"] - row["bar"]["x"]
        assert abs(tick - shard["estimate"] * per_second) < 2.0

    # failing and flaky tests, with their messages and the failing shard's log
    assert [(t["text"], t["shown"]) for t in seen["failing"]] == [(report_demo.FAILING_TEST, True)]
    assert "2.675 should round to 2.68" in seen["failing_messages"][0]["text"]
    assert [(t["text"], t["shown"]) for t in seen["flaky"]] == [(report_demo.FLAKY_TEST, True)]
    assert "cold start" in seen["flaky_messages"][0]["text"]
    assert any("AssertionError" in log["text"] and log["shown"] for log in seen["logs"])
    flaky_shard = next(t["shard"] for t in doc["tests"] if t["flaky"])
    problems = {(p["shard"], p["state"]): p for p in seen["problems"]}
    failed = [p for p in seen["problems"] if p["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["shown"] and failed[0]["log"]
    assert problems[(flaky_shard, "passed")]["shown"] and problems[(flaky_shard, "passed")]["log"]

    # the slowest tests: all 10 of the demo, the slowest first
    slowest = [row["text"] for row in seen["slowest"]]
    assert len(slowest) == len(doc["tests"]) == 10
    assert slowest[0] == "tests/test_catalog.py::test_list_products"


@needs_chromium
def test_the_page_makes_no_request_and_its_screenshot_shows_the_states(demo, tmp_path):
    _, page = demo
    text = page.read_text(encoding="utf-8")
    meta = '<meta http-equiv="Content-Security-Policy" content="%s">' % html.escape(CSP)
    # NOTE: without its policy too: the page itself must ask for nothing.
    bare = tmp_path / "bare.html"
    bare.write_text(text.replace(meta, ""), encoding="utf-8")
    for opened in (page, bare):
        net_log, png = tmp_path / (opened.stem + ".netlog.json"), tmp_path / (opened.stem + ".png")
        screenshot(CHROMIUM, opened, png, width=1100, height=900, net_log=net_log)
        assert page_requests(net_log) == []
    counts = colour_counts(tmp_path / "report.png", [html_color("passed"), html_color("failed")])
    assert counts[html_color("passed")] > 2000 and counts[html_color("failed")] > 1000, counts
    print(f"screenshot: {tmp_path / 'report.png'}")


@needs_chromium
def test_the_request_check_sees_a_page_that_loads_something(tmp_path):
    page = tmp_path / "loads.html"
    page.write_text(
        '<html><head><link rel="stylesheet" href="http://styles.invalid/a.css">'
        "<style>body{background:url(http://images.invalid/b.png)}</style></head>"
        '<body><img src="https://images.invalid/c.png"></body></html>',
        encoding="utf-8",
    )
    net_log = tmp_path / "netlog.json"
    screenshot(CHROMIUM, page, tmp_path / "loads.png", width=400, height=300, net_log=net_log)
    assert set(page_requests(net_log)) >= {
        "http://styles.invalid/a.css",
        "https://images.invalid/c.png",
    }


@needs_chromium
def test_the_browser_draws_a_page_verify_wrote(tmp_path):
    root = make_project(tmp_path / "p", {"check_a.py": PASS, "check_b.py": FAIL})
    cli(root, "shard", "checks", "--id", "1", "--agent", "one", "--shards", "2", "--log")
    cli(root, "shard", "checks", "--id", "2", "--agent", "two", "--shards", "2", "--log")
    page = tmp_path / "report.html"
    result = cli(root, "verify", "checks", "--shards", "2", "--html", str(page))
    assert result.returncode == 3, result.stderr

    seen = probe(CHROMIUM, page.read_text(encoding="utf-8"), tmp_path / "probe.html")
    assert sorted(lane["name"] for lane in seen["lanes"]) == ["one", "two"]
    assert sorted((bar["shard"], bar["state"]) for bar in seen["bars"]) == [
        (1, "passed"),
        (2, "failed"),
    ]
    assert [t["text"] for t in seen["slowest"]] in (
        ["checks/check_a.py", "checks/check_b.py"],
        ["checks/check_b.py", "checks/check_a.py"],
    )
    assert any("check failed on purpose" in log["text"] for log in seen["logs"])


@needs_chromium
def test_the_browser_shows_why_shards_crashed_went_missing_or_are_outdated(tmp_path):
    log = tmp_path / "shard-1.log"
    log.write_text("collected 3 items\nKilled\n", encoding="utf-8")
    records = {
        1: record(1, 0, None, "agent-1", "running", log=str(log)),  # no holder: crashed
        2: record(2, 0, 3, "agent-2", fingerprint="another-plan"),
        3: record(3, 0, 5, "agent-2"),
    }
    page = tmp_path / "report.html"
    page.write_text(render_html(document(records, 4)), encoding="utf-8")
    seen = probe(CHROMIUM, page.read_text(encoding="utf-8"), tmp_path / "probe.html")

    problems = {p["shard"]: p for p in seen["problems"]}
    assert sorted(problems) == [1, 2, 4] and all(p["shown"] for p in problems.values())
    assert problems[1]["state"] == "crashed" and "never finished" in problems[1]["why"]
    assert "its lock is free" in problems[1]["why"] and "Killed" in problems[1]["log"]
    assert problems[2]["state"] == "outdated" and "another plan" in problems[2]["why"]
    assert problems[4]["state"] == "missing" and "no record" in problems[4]["why"]
    # the crashed shard is on the timeline, its bar running to the end; the others are not
    bars = {bar["shard"]: bar for bar in seen["bars"]}
    assert sorted(bars) == [1, 3] and bars[1]["state"] == "crashed"
    assert bars[1]["box"]["x"] + bars[1]["box"]["w"] >= seen["markers"]["wall"]["box"]["x"] - 1


def test_verify_says_which_html_path_it_cannot_write(tmp_path):
    root = make_project(tmp_path / "p", {"check_a.py": PASS}, shards=1)
    cli(root, "shard-all", "checks")
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("", encoding="utf-8")

    into_directory = cli(root, "verify", "checks", "--html", str(tmp_path / "a-directory"))
    assert into_directory.returncode == 2
    assert into_directory.stderr == (
        f"lokt-tasks: error: --html {tmp_path / 'a-directory'}: is a directory, not a file\n"
    )
    under_a_file = cli(root, "verify", "checks", "--html", str(tmp_path / "a-file" / "r.html"))
    assert under_a_file.returncode == 6
    assert under_a_file.stderr.startswith(f"lokt-tasks: error: --html {tmp_path / 'a-file'}/")
    assert "Traceback" not in under_a_file.stderr and len(under_a_file.stderr.splitlines()) == 1
    assert list((tmp_path / "a-directory").iterdir()) == []
