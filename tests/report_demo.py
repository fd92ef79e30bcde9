"""A real run to draw: a small pytest suite, 3 shards, two agents, one failing
test and one flaky one; its verdict document, with per-test results read
from the shards' JUnit reports, and the page ``verify --html`` draws from it.

Run as a script, it writes the page and a screenshot (this is how
docs/report.png is made)::

    python tests/report_demo.py --html report.html --png docs/report.png

The suite is split by timings an earlier run left, the shards' estimates.
How the run goes: agents ``agent-1`` and, half a second later, ``agent-2``
run ``shard demo --id next``, so they share the 3 shards between them. The
task has ``retries = 1``: the flaky test fails the first time it runs and
passes on its shard's retry; the failing test fails on both. Per-test
results are what ``verify`` reads: the JUnit reports each shard's record
names.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lokt_tasks.config import load_config  # noqa: E402
from lokt_tasks.durations import pin_timings, read_durations  # noqa: E402
from lokt_tasks.plan import build_plan  # noqa: E402
from lokt_tasks.report import render_html  # noqa: E402
from lokt_tasks.results import RecordStore, head_commit  # noqa: E402
from lokt_tasks.verdict import judge_live, verdict_to_json  # noqa: E402

TASK, RUN = "demo", "demo-run"
FAILING_TEST = "tests/test_billing.py::test_refund_rounds_to_cents"
FLAKY_TEST = "tests/test_users.py::test_session_cache_is_warm"
#: file -> its source. Sleeps give the shards different lengths.
SUITE = {
    "tests/test_auth.py": """
import time

def test_login():
    time.sleep(0.6)

def test_logout():
    time.sleep(0.2)
""",
    "tests/test_billing.py": """
import time

def test_invoice_total():
    time.sleep(0.3)

def test_refund_rounds_to_cents():
    time.sleep(0.1)
    assert round(2.675, 2) == 2.68, "a refund of 2.675 should round to 2.68"
""",
    "tests/test_catalog.py": """
import time

def test_list_products():
    time.sleep(0.9)

def test_product_page():
    time.sleep(0.4)
""",
    "tests/test_orders.py": """
import time

def test_place_order():
    time.sleep(0.5)
""",
    "tests/test_search.py": """
import time

def test_query():
    time.sleep(0.2)
""",
    "tests/test_users.py": """
import os
import time

STATE = os.path.join(os.path.dirname(__file__), "..", "cache.warm")

def test_profile():
    time.sleep(0.3)

def test_session_cache_is_warm():
    # Flaky on purpose: the first run finds a cold cache.
    if not os.path.exists(STATE):
        open(STATE, "w").close()
        raise AssertionError("session cache still warming up (cold start)")
""",
}
SHARDS_TOML = """\
[defaults]
engine = "embedded"
ttl = "1m"
results = ".results"

[tasks.demo]
run = "{python} -m pytest -q -p no:cacheprovider --junitxml={junit} {items}"
glob = ["tests/test_*.py"]
shards = 3
split = "timings"
retries = 1
"""
#: The timings an earlier run left (seconds per file): the shards' estimates.
DURATIONS = """\
{"tests/test_auth.py": 0.9, "tests/test_billing.py": 0.5, "tests/test_catalog.py": 1.4,
 "tests/test_orders.py": 0.6, "tests/test_search.py": 0.3, "tests/test_users.py": 0.4}
"""


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def make_project(root: Path) -> Path:
    """The demo suite as a committed git repository at ``root``."""
    for name, source in SUITE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source.lstrip(), encoding="utf-8")
    (root / "shards.toml").write_text(SHARDS_TOML, encoding="utf-8")
    (root / "shard-durations.json").write_text(DURATIONS, encoding="utf-8")
    (root / ".gitignore").write_text(".results/\ncache.warm\n", encoding="utf-8")
    git(root, "init", "-q")
    git(root, "config", "user.email", "demo@example.com")
    git(root, "config", "user.name", "demo")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "demo suite")
    return root


def lokt_tasks(*args: str) -> List[str]:
    return [sys.executable, "-m", "lokt_tasks", *args, "--run", RUN]


def run_demo(root: Path) -> Dict[str, Any]:
    """Make the project at ``root``, run it as the module docstring says, and
    return its verdict document with per-test results."""
    make_project(root)
    env = {**_clean_env(), "PYTHONPATH": str(REPO)}
    agents = []
    for name in ("agent-1", "agent-2"):
        command = lokt_tasks("shard", TASK, "--id", "next", "--agent", name, "--log")
        agents.append(
            subprocess.Popen(
                command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
        time.sleep(0.5)  # NOTE: a lane that starts later shows its wait
    for agent in agents:
        agent.communicate(timeout=120)
    config = load_config(root / "shards.toml")
    store = RecordStore(config.results or root / ".results")
    # NOTE: as verify does: a timings split plans from the timings pinned at the run's start.
    durations_file = config.tasks[TASK].durations
    assert durations_file is not None
    pinned = pin_timings(
        store.pinned_durations_path(TASK, RUN),
        TASK,
        RUN,
        lambda: read_durations(durations_file).task(TASK),
    )
    plan = build_plan(config, TASK, durations=pinned)
    verdict = judge_live(plan, store, lambda name: None, run_key=RUN)
    return verdict_to_json(verdict, commit=head_commit(root))


def _clean_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOKT_")}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=Path("report.html"), help="page to write")
    parser.add_argument("--png", type=Path, help="also save a screenshot of the page here")
    parser.add_argument("--height", type=int, default=1180, help="screenshot height (pixels)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lokt-tasks-demo-") as scratch:
        document = run_demo(Path(scratch) / "shop")
    options.html.write_text(render_html(document), encoding="utf-8")
    print(f"wrote {options.html} (verdict {document['verdict']})")
    if options.png:
        from browser import find_chromium, screenshot

        binary = find_chromium()
        if binary is None:
            print("no Chromium found: install Debian's chromium package", file=sys.stderr)
            return 1
        screenshot(binary, options.html, options.png, width=1100, height=options.height)
        print(f"wrote {options.png}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
