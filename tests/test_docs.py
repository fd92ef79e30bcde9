"""Every shell example in README.md and docs/*.md, run for real.

People copy the first example they find, so each fenced ```bash / ```sh
block is run as a script (``bash -e -o pipefail``) in a scratch git
repository holding a tiny pytest suite and a shards.toml (see
``PYTHON_PROJECT``), with the current interpreter's bin directory first on
PATH, so ``invoke``, ``lokt-tasks`` and ``python`` are the ones under test.
A block that shows a failing command captures its exit code itself
(``code=0; cmd || code=$?``). One pytest test per block, named FILE:LINE
after the line of its opening fence; the blocks run a few at once.

A block may be preceded by marks, one HTML comment per line, directly above
the fence:

    <!-- docs-test: skip (REASON) -->  not run here; reported as skipped with REASON
    <!-- docs-test: needs TOOL... -->  run only when every TOOL is on PATH
                                        (e.g. lokt, go); skipped with the reason otherwise
    <!-- docs-test: setup STATE -->     prepare the scratch project first (see SETUPS)
    <!-- docs-test: expect TEXT -->     the block's output must contain TEXT

Besides running blocks, two checks read every fenced block and inline code
span (any language): no ``lokt guard`` invocation puts a flag after the
lock name or gives a duration without a unit, and every ```toml example
loads as a shards.toml.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from invoke.util import yaml

from lokt_tasks.config import load_config
from lokt_tasks.plan import Plan, PlanStats, Shard
from lokt_tasks.results import Record
from lokt_tasks.states import (
    INCOMPLETE_STATES,
    RERUN_BY_FAILED,
    WAITED_ON,
    GuardState,
    OverallVerdict,
    ShardState,
    ordered,
)
from lokt_tasks.verdict import judge, verdict_to_json

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = ("bash", "sh", "shell")
MARK = re.compile(r"^\s*<!--\s*docs-test:\s*(\w[\w-]*)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
BLOCK_TIMEOUT = 120.0

SETUPS = {
    "fail-shard-2": (
        "the first run of shard 2 of task test fails (tests/test_models.py),"
        " later runs pass, as after a fix"
    ),
    "busy-shard-1": (
        "agent-1 is running shard 1 of task test, holding test-shard-1, until the block ends"
    ),
    "crashed-shard-1": (
        "agent-1 was killed (its whole process tree, SIGKILL) in the middle of shard 1;"
        " agents 2 and 3 passed shards 2 and 3"
    ),
    "go-project": (
        "the scratch project is a Go module (internal/, cmd/, pkg/)"
        " whose task test has explicit shards"
    ),
}

# The scratch projects. Test files are named so that task "test" (3 shards,
# split by name) puts test_api and test_cli in shard 1, test_db and
# test_models in shard 2, test_utils and test_views in shard 3.
PLAIN_TEST = "def test_{name}():\n    assert True\n"
HELD_TEST = """\
import os
import time


def test_{name}():
    # The docs test holds shard 1 here to play a busy or crashing agent.
    if os.path.exists("hold-shard-1"):
        open("shard-1.running", "w").close()
    while os.path.exists("hold-shard-1"):
        time.sleep(0.05)
"""
FAIL_ONCE_TEST = """\
import os


def test_{name}():
    # Fails once when the docs test asks for it, like a test that is then fixed.
    if os.path.exists("fail-shard-2"):
        os.remove("fail-shard-2")
        raise AssertionError("failed on purpose")
"""
PYTHON_PROJECT = {
    "shards.toml": """\
[tasks.test]
run = "{python} -m pytest -q --junitxml={junit} {items}"
glob = ["tests/test_*.py"]
shards = 3

[tasks.cases]
run = "{python} -m pytest -q {items}"
collect = "{python} -m pytest --collect-only --verbosity=-1 --rootdir=."
shards = 4

[tasks.each]
run = "{python} -m pytest -q {items}"
glob = ["tests/test_*.py"]
shards = "per-item"
""",
    "tasks.py": (
        "from lokt_tasks.tasks import durations, plan, shard, shard_all, status, verify"
        "  # noqa: F401\n"
    ),
    ".gitignore": (
        "hold-*\nfail-*\n*.running\n.pytest_cache/\n__pycache__/\nshard-results/\n*.json.lock\n"
    ),
    "tests/test_api.py": HELD_TEST.format(name="api"),
    "tests/test_cli.py": PLAIN_TEST.format(name="cli"),
    "tests/test_db.py": PLAIN_TEST.format(name="db"),
    "tests/test_models.py": FAIL_ONCE_TEST.format(name="models"),
    "tests/test_utils.py": PLAIN_TEST.format(name="utils"),
    "tests/test_views.py": PLAIN_TEST.format(name="views"),
}


def go_tests(package: str) -> str:
    names = ("Open", "Get", "Put", "Delete", "List", "Close")
    return f'package {package}\n\nimport "testing"\n' + "".join(
        f"\nfunc Test{name}(t *testing.T) {{}}\n" for name in names
    )


GO_PROJECT = {
    "go.mod": "module example.com/shop\n\ngo 1.18\n",
    "internal/store/store_test.go": go_tests("store"),
    "cmd/shop/main.go": "package main\n\nfunc main() {}\n",
    "cmd/shop/main_test.go": go_tests("main"),
    "pkg/money/money_test.go": go_tests("money"),
    "shards.toml": '''\
[tasks.test]
run = "go test {items}"
[[tasks.test.shard]]
items = ["./internal/..."]
[[tasks.test.shard]]
items = ["./cmd/..."]
[[tasks.test.shard]]
items = ["./pkg/..."]

[tasks.unit]
run = "go test -run '^({items:|})$' ./internal/store"
collect = """sh -c "go test -list '^Test' ./internal/store | grep '^Test'" """
shards = 3
''',
    "tasks.py": PYTHON_PROJECT["tasks.py"],
    ".gitignore": "shard-results/\n",
}


@dataclass
class Block:
    """A fenced block of a Markdown file and the marks right above it."""

    path: Path
    line: int
    language: str
    text: str
    marks: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"

    def marked(self, word: str) -> List[str]:
        return [argument for mark, argument in self.marks if mark == word]


def fenced_blocks(path: Path) -> List[Block]:
    """Every fenced block of a Markdown file, with its docs-test marks."""
    blocks: List[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence, language = opening.groups()
        marks = []
        above = index - 1
        while above >= 0 and MARK.match(lines[above]):
            found = MARK.match(lines[above])
            marks.insert(0, (found.group(1), found.group(2)))
            above -= 1
        first_line = index + 1
        body = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(fence):
            body.append(
                lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index]
            )
            index += 1
        blocks.append(Block(path, first_line, language.lower(), "\n".join(body) + "\n", marks))
        index += 1
    return blocks


def all_blocks() -> List[Block]:
    return [block for path in DOCS for block in fenced_blocks(path)]


def inline_code(path: Path) -> Iterator[Tuple[int, str]]:
    """Inline code spans outside fenced blocks, with their line numbers."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            for span in re.findall(r"`([^`]+)`", line):
                yield number, span


# --- the scratch project --------------------------------------------------


def block_env() -> Dict[str, str]:
    """The environment of a block: ours, minus anything that would pick a
    shard, a run key or a lock root for it; the interpreter's bin first."""
    dropped = (
        "LOKT_",
        "CI_NODE",
        "CIRCLE_",
        "BUILDKITE_",
        "TEST_SHARD",
        "TEST_TOTAL",
        "GITHUB_",
        "GITLAB_",
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["NO_COLOR"] = "1"
    return env


def write_project(root: Path, files: Dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    git = ["git", "-c", "user.name=docs", "-c", "user.email=docs@example.com"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "scratch project"]):
        subprocess.run(git + command, cwd=root, check=True, capture_output=True)
    return root


@dataclass(frozen=True)
class Templates:
    """The scratch projects, made once and copied for each block, and the
    environment blocks run in."""

    python: Path
    go: Path
    env: Dict[str, str]


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Templates:
    base = tmp_path_factory.mktemp("docs-projects")
    return Templates(
        python=write_project(base / "python", PYTHON_PROJECT),
        go=write_project(base / "go", GO_PROJECT),
        env=block_env(),
    )


def process_tree(roots: List[int]) -> List[int]:
    """``roots`` and all their descendants now alive."""
    found = list(roots)
    rows = ps_rows("ppid")
    for pid in found:
        found.extend(child for child, parent in rows if parent == pid and child not in found)
    return found


def group_members(pgid: int) -> List[int]:
    return [pid for pid, group in ps_rows("pgid") if group == pgid]


def ps_rows(column: str) -> List[Tuple[int, int]]:
    """(pid, COLUMN) of every process, from POSIX ps (Linux and macOS)."""
    listing = subprocess.run(
        ["ps", "-A", "-o", "pid=", "-o", f"{column}="], capture_output=True, text=True
    ).stdout
    return [
        (int(line.split()[0]), int(line.split()[1]))
        for line in listing.splitlines()
        if line.strip()
    ]


def kill_tree(roots: List[int]) -> None:
    """SIGKILL ``roots`` and every descendant, including the new sessions
    that both lock engines start for a shard's command."""
    for pid in process_tree(roots):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_agent(project: Path, env: Dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lokt_tasks", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(agent: subprocess.Popen, timeout: float = 60) -> str:
    try:
        output, _ = agent.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree([agent.pid])
        output, _ = agent.communicate()
    return output


class Scratch:
    """A copy of a scratch project, set up for one block, cleaned up after it."""

    def __init__(self, template: Path, root: Path, env: Dict[str, str]):
        self.root = root
        self.env = env
        shutil.copytree(template, root, symlinks=True)
        self.busy: List[subprocess.Popen] = []

    def setup(self, state: str) -> None:
        if state == "fail-shard-2":
            (self.root / "fail-shard-2").write_text("")
        elif state == "busy-shard-1":
            self.busy.append(self._hold_shard_1())
        elif state == "crashed-shard-1":
            agent = self._hold_shard_1()
            kill_tree([agent.pid])
            agent.wait()
            (self.root / "hold-shard-1").unlink()
            others = [
                start_agent(
                    self.root, self.env, "shard", "test", "--id", str(n), "--agent", f"agent-{n}"
                )
                for n in (2, 3)
            ]
            for other in others:
                output = finish(other)
                assert other.returncode == 0, output
        elif state != "go-project":
            raise AssertionError(f"unknown setup {state!r}; known: {', '.join(SETUPS)}")

    def _hold_shard_1(self) -> subprocess.Popen:
        (self.root / "hold-shard-1").write_text("")
        agent = start_agent(self.root, self.env, "shard", "test", "--id", "1", "--agent", "agent-1")
        running = self.root / "shard-1.running"
        try:
            wait_until(
                lambda: running.exists() or agent.poll() is not None, 60, "agent-1 to start shard 1"
            )
        except AssertionError:
            kill_tree([agent.pid])
            raise
        assert agent.poll() is None, finish(agent)
        return agent

    def cleanup(self) -> None:
        hold = self.root / "hold-shard-1"
        if hold.exists():
            hold.unlink()
        for agent in self.busy:
            finish(agent)


def run_block(
    block: Block, project: Path, script: Path, env: Dict[str, str]
) -> subprocess.CompletedProcess:
    """Run the block with bash in its own process group; whatever it left
    running is given a moment to end, then killed."""
    script.write_text(block.text, encoding="utf-8")
    process = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", str(script)],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_tree([process.pid, *group_members(process.pid)])
        output, _ = process.communicate()
        output += f"\n[docs test: killed after {BLOCK_TIMEOUT:.0f} s]"
    leftovers = group_members(process.pid)
    if leftovers:
        deadline = time.monotonic() + 10
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = group_members(process.pid)
        kill_tree(leftovers)
    return subprocess.CompletedProcess(process.args, process.returncode, output)


def shell_blocks() -> List:
    params = []
    for block in all_blocks():
        if block.language not in SHELL_LANGUAGES:
            continue
        marks = []
        for reason in block.marked("skip"):
            marks.append(pytest.mark.skip(reason=reason.strip("()") or "marked skip"))
        params.append(pytest.param(block, id=block.name, marks=marks))
    return params


def why_not_run(block: Block) -> Optional[str]:
    """The reason a block cannot run on this machine, or None."""
    path = block_env()["PATH"]
    missing = [
        tool
        for words in block.marked("needs")
        for tool in words.split()
        if not shutil.which(tool, path=path)
    ]
    if missing:
        return f"needs {' and '.join(missing)} on PATH"
    if not shutil.which("invoke", path=path):
        return "invoke is not installed beside the interpreter running the tests"
    return None


def execute(block: Block, templates: Templates, workdir: Path) -> subprocess.CompletedProcess:
    """Set up a scratch project for ``block``, run it, clean up."""
    setups = block.marked("setup")
    template = templates.go if "go-project" in setups else templates.python
    scratch = Scratch(template, workdir / "project", templates.env)
    try:
        for state in setups:
            scratch.setup(state)
        return run_block(block, scratch.root, workdir / "block.sh", templates.env)
    finally:
        scratch.cleanup()


@pytest.fixture(scope="module")
def block_runs(
    request, templates, tmp_path_factory
) -> Iterator[Dict[str, Future[subprocess.CompletedProcess]]]:
    """Start every selected block that can run here, a few at once (one more
    than the CPUs, as blocks also wait on their agents). Each block has its
    own scratch project, lock root and records, so they never meet. Each
    test then waits for its own block."""
    selected = [
        item.callspec.params["block"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_shell_block_runs"
        and not item.get_closest_marker("skip")
    ]
    pool = ThreadPoolExecutor(max_workers=(os.cpu_count() or 1) + 1)
    runs = {}
    for block in selected:
        if why_not_run(block) is None:
            runs[block.name] = pool.submit(
                execute, block, templates, tmp_path_factory.mktemp("block")
            )
    try:
        yield runs
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("block", shell_blocks())
def test_shell_block_runs(block: Block, block_runs):
    reason = why_not_run(block)
    if reason:
        pytest.skip(reason)
    result = block_runs[block.name].result()
    shown = f"--- {block.name} ---\n{block.text}--- output ---\n{result.stdout}"
    print(shown)  # shown by pytest -rP, and on failure
    assert result.returncode == 0, f"exit {result.returncode}\n{shown}"
    for text in block.marked("expect"):
        assert text in result.stdout, f"expected {text!r} in the output\n{shown}"


def test_every_shell_block_is_run_or_says_why_not():
    """A shell block is either run, or skipped with a reason written above it."""
    known = {"skip", "needs", "setup", "expect"}
    problems = []
    for block in all_blocks():
        for word, argument in block.marks:
            if word not in known:
                problems.append(f"{block.name}: unknown mark {word!r}")
            if word == "skip" and not re.fullmatch(r"\(.+\)", argument):
                problems.append(f"{block.name}: skip needs a reason in parentheses")
            if word == "setup" and argument not in SETUPS:
                problems.append(f"{block.name}: unknown setup {argument!r}")
        if block.marks and block.language not in SHELL_LANGUAGES:
            problems.append(f"{block.name}: docs-test marks on a {block.language or 'plain'} block")
    assert not problems, "\n".join(problems)


# --- lokt guard invocations -------------------------------------------------

GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
DURATION_FLAGS = ("--ttl", "-ttl", "--timeout", "-timeout")


def guard_problems(text: str) -> List[str]:
    """What is wrong with each ``lokt guard`` invocation in ``text``."""
    problems = []
    joined = re.sub(r"\\\n", " ", text)
    for match in re.finditer(r"\blokt\s+guard\b([^\n;&|]*)", joined):
        invocation = match.group(0).strip()
        try:
            words = shlex.split(match.group(1), comments=True)
        except ValueError:
            words = match.group(1).split()
        name = None
        position = 0
        while position < len(words):
            word = words[position]
            if word == "--":
                break
            flag, _, inline = word.partition("=")
            if flag in DURATION_FLAGS:
                value = (
                    inline if inline else (words[position + 1] if position + 1 < len(words) else "")
                )
                if not inline:
                    position += 1
                written = re.sub(r"<[^>]*>", "1", value)  # a placeholder such as <N>s in a synopsis
                if "$" not in value and not GO_DURATION.fullmatch(written):
                    problems.append(
                        f"{flag} {value!r} has no unit (write 300s or 5m): {invocation}"
                    )
            if word.startswith("-") and name is not None:
                problems.append(
                    f"flag {word} after the lock name {name!r} (flags go before it): {invocation}"
                )
            if not word.startswith("-") and name is None:
                name = word
            position += 1
    return problems


def test_lokt_guard_examples_put_flags_first_and_give_durations_a_unit():
    problems = []
    for path in DOCS:
        for block in fenced_blocks(path):
            problems += [f"{block.name}: {p}" for p in guard_problems(block.text)]
        for line, span in inline_code(path):
            problems += [
                f"{path.relative_to(REPO).as_posix()}:{line}: {p}" for p in guard_problems(span)
            ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("lokt guard test-shard-1 --ttl 5m -- go test ./...", "after the lock name"),
        ("lokt guard --ttl 300 test-shard-1 -- go test ./...", "no unit"),
        ("lokt guard --wait --timeout=90 test-shard-1 -- make", "no unit"),
        ("LOKT_OWNER=a lokt guard \\\n  test-shard-1 --wait -- make", "after the lock name"),
    ],
)
def test_the_guard_check_catches_lokts_gotchas(text, complaint):
    problems = guard_problems(text)
    assert problems and complaint in problems[0]


def test_the_guard_check_accepts_correct_invocations():
    good = (
        'LOKT_OWNER="agent-$n" lokt guard --ttl 5m --wait --timeout 1m30s "test-shard-$n"'
        " -- go test -run X ./...\n"
        'lokt guard --ttl="$TTL" test-shard-2 -- python -m pytest -q --maxfail 1 tests/a.py\n'
    )
    assert guard_problems(good) == []


# --- shards.toml examples ---------------------------------------------------


def test_every_toml_example_loads_as_a_shards_toml(tmp_path):
    problems = []
    for block in all_blocks():
        if block.language != "toml":
            continue
        config = tmp_path / block.name.replace("/", "_").replace(":", "_") / "shards.toml"
        config.parent.mkdir()
        config.write_text(block.text, encoding="utf-8")
        try:
            load_config(config)
        except Exception as error:  # any failure is a broken example
            problems.append(f"{block.name}: {error}")
    assert not problems, "\n".join(problems)


# --- states named in the docs -----------------------------------------------

VERDICT_MODULE = REPO / "lokt_tasks" / "verdict.py"
#: A state word ("timed-out" has a hyphen), and a list of them.
WORD = r"\w+(?:-\w+)*"
WORDS = rf"{WORD}(?:,\s+{WORD})*"


def prose(path: Path) -> str:
    """The file's text with line breaks and runs of blanks as single spaces."""
    return re.sub(r"\s+", " ", path.read_text(encoding="utf-8"))


def listed_states(pattern: str, paths: List[Path]) -> List[Tuple[str, List[str]]]:
    """Every list of words ``pattern`` finds (group ``words``, "a, b or c"), by file."""
    found = []
    for path in paths:
        for match in re.finditer(pattern, prose(path)):
            words = re.split(r",\s+|\s+or\s+", match.group("words"))
            found.append((path.relative_to(REPO).as_posix(), words))
    return found


def test_the_readme_explains_every_shard_state_in_order():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("**Verdict.**") :]
    table = section[section.index("| state |") :]
    rows = re.findall(rf"^\| ({WORD}) \| .+ \|$", table[: table.index("\n\n")], re.M)
    assert rows[1:] == [str(state) for state in ShardState]


def test_the_verdict_module_explains_every_shard_state_in_order():
    text = VERDICT_MODULE.read_text(encoding="utf-8")
    rows = text[text.index("=" * 12) : text.index("The overall verdict")]
    assert re.findall(rf"^({WORD}) {{2,}}", rows, re.M) == [str(state) for state in ShardState]


@pytest.mark.parametrize("path", [REPO / "README.md", VERDICT_MODULE], ids=lambda p: p.name)
def test_counts_in_the_json_examples_list_every_state_in_order(path):
    counts = re.search(r'"counts": (\{[^}]*\})', path.read_text(encoding="utf-8"))
    assert counts, f"no counts example in {path.name}"
    assert list(json.loads(counts.group(1))) == [str(state) for state in ShardState]


def test_the_verdict_json_example_shows_every_key():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"`verify --json` prints a stable document.*?```json\n(.*?)```", text, re.S)
    assert example, "no verdict JSON example in README.md"
    shown = json.loads(example.group(1))
    shard = Shard("test", 1, 1, ("a",), ("true",), "test-shard-1", "fp", estimate=1.0)
    plan = Plan("test", REPO, (shard,), stats=PlanStats("seconds", 1, 1, 1, 1, 1, 1, "a", 1))
    record = Record(
        "test", 1, 1, "fp", "k", "test-shard-1", "a", "o", "h", 1, "embedded",
        "2026-01-01T00:00:00Z", "passed", "2026-01-01T00:00:01Z", 1.0, 0,
    )  # fmt: skip
    real = verdict_to_json(judge(plan, {1: record}, {}, run_key="k"))
    assert list(shown) == list(real)
    assert list(shown["shards"][0]) == list(real["shards"][0])
    assert list(shown["timing"]) == list(real["timing"])
    assert list(shown["timing"]["heaviest_item"]) == list(real["timing"]["heaviest_item"])


def test_the_overall_verdicts_are_the_documented_ones():
    sentence = re.search(r"The verdict is (\*passed\*.*?) otherwise", prose(REPO / "README.md"))
    assert sentence
    assert re.findall(r"\*(\w+)\*", sentence.group(1)) == [str(word) for word in OverallVerdict]


def test_what_failed_reruns_is_the_same_everywhere():
    found = listed_states(
        rf"--failed`? reruns (?:only )?(?:shards that are )?(?P<words>{WORDS} or {WORD})", DOCS
    )
    assert {path for path, _ in found} >= {"README.md", "docs/patterns.md"}
    wanted = [str(state) for state in ordered(RERUN_BY_FAILED)]
    assert [(path, words) for path, words in found if words != wanted] == []
    in_words = ", ".join(wanted[:-1]) + " or " + wanted[-1]
    assert in_words in command_help("shard-all")


def test_what_verify_waits_on_is_in_its_help():
    wanted = [str(state) for state in ordered(WAITED_ON)]
    assert "no shard is " + ", ".join(wanted[:-1]) + " or " + wanted[-1] in command_help("verify")


def command_help(command: str) -> str:
    """``lokt-tasks --help COMMAND``, its lines joined as one line of prose.

    Read through the command line: invoke takes the help texts off a task
    object while it builds a parser, so they cannot be read from the task.
    """
    shown = subprocess.run(
        [sys.executable, "-m", "lokt_tasks", "--help", command],
        capture_output=True,
        text=True,
        check=True,
        env=block_env(),
    ).stdout
    return re.sub(r"\s+", " ", shown)


def test_exit_code_4_names_every_incomplete_state():
    found = listed_states(rf"some shard is (?P<words>{WORDS} or (?:its record is )?{WORD})", DOCS)
    assert {path for path, _ in found} >= {"README.md", "docs/patterns.md"}
    wanted = [str(state) for state in ordered(INCOMPLETE_STATES)]
    cleaned = [
        (path, [word.replace("its record is ", "") for word in words]) for path, words in found
    ]
    assert [(path, words) for path, words in cleaned if words != wanted] == []


def test_the_engine_results_in_the_architecture_are_the_guard_states():
    text = prose(REPO / "docs" / "architecture.md")
    sentence = re.search(r"The engine reports what happened: (.*?)\.", text)
    assert sentence
    without_asides = re.sub(r" \([^)]*\)", "", sentence.group(1))
    assert re.split(r",\s+|\s+or\s+", without_asides) == [str(state) for state in GuardState]


def readme_table(heading: str) -> List[List[str]]:
    """The rows (cells stripped) of the first table after ``heading`` in the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    table = section[section.index("\n|") + 1 :]
    lines = table[: table.index("\n\n")].splitlines()[2:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in lines]


def test_the_readme_documents_every_flag_as_the_commands_take_it():
    from lokt_tasks.flags import FLAGS, long_flag
    from lokt_tasks.tasks import ns

    takers = {
        name: sorted(command for command in ns.task_names if name in ns[command].parameters())
        for name in FLAGS
    }
    rows = {row[0].strip("`"): row for row in readme_table("### Flags")}
    assert set(rows) == {long_flag(name) for name in FLAGS}
    for name, flag in FLAGS.items():
        _, short, _, commands, _ = rows[long_flag(name)]
        assert short == (f"`-{flag.short}`" if flag.short else ""), name
        listed = sorted(ns.task_names) if commands == "all" else sorted(commands.split(", "))
        assert listed == takers[name], name


def test_the_readme_configuration_example_sets_every_configurable_flag():
    from lokt_tasks.flags import FLAGS, configured_defaults

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### invoke configuration") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    example = yaml.safe_load(section[start : section.index("```\n", start)])["lokt_tasks"]
    assert set(example) == {name for name, flag in FLAGS.items() if flag.configurable}
    assert set(configured_defaults(example)) == set(example)


def test_the_readme_explains_every_exit_code():
    from lokt_tasks import errors

    codes = {int(code) for row in readme_table("## Exit codes") for code in row[0].split(" / ")}
    defined = {value for name, value in vars(errors).items() if name.isupper()}
    assert codes == defined


# --- JSON documents --------------------------------------------------------------


def readme_json(opening: str) -> dict:
    """The README's example JSON document that follows ``opening``."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(opening) :]
    body = after[after.index("```json\n") + len("```json\n") :]
    return json.loads(body[: body.index("\n```")])


def documented_keys(heading_key: str) -> List[str]:
    """Keys the README's key table (the one whose first row names ``heading_key``) lists."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| `%s`" % heading_key) :]
    rows = re.findall(r"^\| ((?:`\w+`(?:, )?)+) \|", table[: table.index("\n\n")], re.M)
    return [key for row in rows for key in re.findall(r"`(\w+)`", row)]


def test_the_verdict_json_example_and_table_have_every_key_the_code_writes(tmp_path):
    from lokt_tasks.plan import Plan, Shard
    from lokt_tasks.results import RecordStore
    from lokt_tasks.verdict import judge_live, verdict_to_json

    shard = Shard("test", 1, 1, ("a",), ("true",), "test-shard-1", "f")
    verdict = judge_live(
        Plan("test", tmp_path, (shard,)), RecordStore(tmp_path), lambda _: None, run_key="k"
    )
    written = verdict_to_json(verdict)
    example = readme_json("`verify --json` prints")
    assert list(example) == list(written) == documented_keys("version")
    assert list(example["shards"][0]) == list(written["shards"][0])
    assert list(example["tests"][0]) == [
        "id", "shard", "outcome", "flaky", "runs", "rerun", "seconds", "message", "name",
        "classname", "file",
    ]  # fmt: skip
    assert list(example["test_counts"]) == list(written["test_counts"])
    assert list(example["reruns"][0]) == [
        "rerun", "run_key", "problem", "verdict", "counts", "shards",
    ]  # fmt: skip
    assert example["version"] == written["version"]


def test_the_plan_json_example_and_table_have_every_key_the_code_writes(tmp_path):
    (tmp_path / "a.py").write_text("")
    (tmp_path / "shards.toml").write_text(
        '[tasks.test]\nrun = "pytest {items}"\nglob = "a.py"\nshards = 1\n'
    )
    from lokt_tasks.plan import build_plan, plan_to_json

    written = plan_to_json(build_plan(load_config(tmp_path / "shards.toml"), "test"))
    example = readme_json("`plan --json` prints")
    assert list(example) == list(written) == documented_keys("version`, `task`, `cwd")
    assert list(example["shards"][0]) == list(written["shards"][0])
    assert list(example["stats"]) == list(written["stats"])
