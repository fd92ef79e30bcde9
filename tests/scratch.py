"""A scratch git repository with a tiny suite, and a way to run lokt-tasks in it.

Each "check" is a small Python file: it appends its name to ``ran.log`` (so a
test can count how often it ran), then passes, fails, or waits, depending on
its content. ``run_checks.py`` runs the checks given as arguments, like a test
runner would, and fails if any of them fails.

``pytest_project`` makes a real pytest suite instead (``SUITE``: 14 tests,
classes, parametrized ids, one with a space), whose conftest appends each
test's node id to ``ran.log``, with the task ``unit`` split into 3 shards.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

PYTHON = shlex.quote(sys.executable)

RUNNER = """\
import subprocess, sys
failed = 0
for path in sys.argv[1:]:
    failed |= subprocess.call([sys.executable, path]) != 0
sys.exit(1 if failed else 0)
"""

CHECK = """\
import os, sys, time
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ran.log"), "a") as log:
    log.write(os.path.basename(__file__) + "\\n")
{body}
"""

PASS = "sys.exit(0)"
FAIL = "print('check failed on purpose'); sys.exit(1)"
#: Waits until a file named "<check>.go" appears beside ran.log (or 60 s).
#: (The backslash joins the next line to it: the check's line is unbroken.)
WAIT = """\
gate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", \
os.path.basename(__file__) + ".go")
deadline = time.time() + 60
while not os.path.exists(gate) and time.time() < deadline:
    time.sleep(0.05)
sys.exit(0)
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_project(
    root: Path,
    checks: Dict[str, str],
    *,
    shards: int = 3,
    extra_toml: str = "",
    task: str = "checks",
) -> Path:
    """Create and commit a project whose task runs ``checks`` in ``shards`` shards."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "checks").mkdir(exist_ok=True)
    (root / "run_checks.py").write_text(RUNNER)
    for name, body in checks.items():
        (root / "checks" / name).write_text(CHECK.format(body=body))
    (root / "shards.toml").write_text(
        f'[defaults]\nengine = "embedded"\nttl = "30s"\n\n'
        f'[tasks.{task}]\nrun = "{PYTHON} run_checks.py {{items}}"\n'
        f'glob = ["checks/check_*.py"]\nshards = {shards}\n{extra_toml}'
    )
    (root / ".gitignore").write_text("ran.log\n*.go\n")
    commit_new_repository(root)
    return root


def commit_new_repository(root: Path, message: str = "scratch") -> None:
    """Make ``root`` a git repository with everything in it committed."""
    git(root, "init", "-q")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "test")
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)


def set_check(root: Path, name: str, body: str) -> None:
    (root / "checks" / name).write_text(CHECK.format(body=body))


def cli_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("LOKT_", "CI_NODE", "CIRCLE_", "BUILDKITE_", "TEST_SHARD", "TEST_TOTAL")
        )
    }
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


def cli(
    cwd: Path, *args: str, env: Optional[Dict[str, str]] = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run ``lokt-tasks ARGS`` in ``cwd`` and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "lokt_tasks", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(cwd: Path, *args: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Start ``lokt-tasks ARGS`` in its own process group, as a separate agent."""
    return subprocess.Popen(
        [sys.executable, "-m", "lokt_tasks", *args],
        cwd=cwd,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def verdict(
    cwd: Path, task: str = "checks", *args: str, env: Optional[Dict[str, str]] = None
) -> dict:
    result = cli(cwd, "verify", task, "--json", *args, env=env)
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def states(report: dict) -> List[str]:
    return [row["state"] for row in report["shards"]]


def ran(root: Path) -> List[str]:
    log = root / "ran.log"
    return log.read_text().split() if log.exists() else []


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def lock_files(root: Path) -> List[str]:
    locks = Path(git(root, "rev-parse", "--git-common-dir"))
    if not locks.is_absolute():
        locks = root / locks
    directory = locks / "lokt" / "locks"
    return sorted(p.name for p in directory.glob("*.json")) if directory.exists() else []


def open_gate(root: Path, check: str) -> None:
    (root / f"{check}.go").write_text("")


def checks(names: Iterable[str], body: str = PASS) -> Dict[str, str]:
    return {name: body for name in names}


SUITE = {
    "conftest.py": """\
import pytest

@pytest.fixture(autouse=True)
def note_the_run(request):
    with open(request.config.rootpath / "ran.log", "a") as log:
        log.write(request.node.nodeid + "\\n")
""",
    "tests/test_alpha.py": """\
import pytest

def test_one():
    pass

def test_two():
    pass

@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_numbers(n):
    assert n > 0
""",
    "tests/test_beta.py": """\
import pytest

class TestBeta:
    def test_first(self):
        pass

    @pytest.mark.parametrize("word", ["a b", "x-y", "[z]"], ids=["a b", "x-y", "z"])
    def test_words(self, word):
        assert word
""",
    "tests/test_gamma.py": """\
import pytest

@pytest.mark.parametrize("left, right", [(1, 1), (2, 2)])
def test_pairs(left, right):
    assert left == right

def test_three():
    pass

def test_four():
    pass
""",
}

SHARDS_TOML = f"""\
[defaults]
engine = "embedded"
ttl = "30s"

[tasks.unit]
collect = "{PYTHON} -m pytest --collect-only -q -p no:cacheprovider"
run = "{{python}} -m pytest -q -p no:cacheprovider --junitxml={{junit}} {{items}}"
shards = 3
"""


def pytest_project(root: Path, extra: Optional[Dict[str, str]] = None, toml: str = "") -> Path:
    """Create and commit the pytest suite (SUITE, and ``extra`` files) with
    SHARDS_TOML and ``toml`` after it; files named ``*.flag`` are ignored."""
    for name, text in {**SUITE, **(extra or {})}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "shards.toml").write_text(SHARDS_TOML + toml)
    (root / ".gitignore").write_text("ran.log\n__pycache__/\n*.flag\n")
    commit_new_repository(root, "pytest suite")
    return root
