"""The malformed-configuration corpus (tests/configs/bad, see its README)
through the real command line.

Every case must end in exactly one line on stderr that names shards.toml and
contains the case's expected text, exit code 2, no traceback, and nothing
run or written: no record, no lock, no results directory, no file at all.

``shard test --id 1`` runs as a real process for every case (the exit code
is the process's own); the processes of all cases run a few at a time, once
for the module, and each case checks its own result. ``plan test`` runs for
every case in this process, through the same console-script entry point,
and as a real process for a few representative cases.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Set, Tuple

import pytest
from scratch import cli_env

from lokt_tasks import errors
from lokt_tasks.cli import program

CONFIGS = Path(__file__).parent / "configs"
CASES = sorted(path.stem for path in (CONFIGS / "bad").glob("*.toml"))
#: One case per way of failing: TOML syntax, loading, planning (glob), a collect command.
PLAN_PROCESS_CASES = [
    "syntax_unclosed_string",
    "shards_bool",
    "glob_matches_nothing",
    "collect_fails",
]
SHARD = ("shard", "test", "--id", "1")
PLAN = ("plan", "test")


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stderr: str
    stdout: str


@dataclass(frozen=True)
class CaseRun:
    case: str
    root: Path
    #: Every path under root before the command ran.
    before: Set[str]
    outcome: Outcome


def expected_fragment(case: str) -> str:
    first = (CONFIGS / "bad" / f"{case}.toml").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{case}.toml has no '# expect: ' line"
    return first[len("# expect: ") :]


def make_case(root: Path, case: str) -> Path:
    """The fixture tree plus the case as shards.toml, as the corpus README says."""
    shutil.copytree(CONFIGS / "tree", root)
    shutil.copyfile(CONFIGS / "bad" / f"{case}.toml", root / "shards.toml")
    return root


def contents(root: Path) -> Set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def run_process(cwd: Path, args: Tuple[str, ...]) -> Outcome:
    done = subprocess.run(
        [sys.executable, "-m", "lokt_tasks", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Outcome(done.returncode, done.stderr, done.stdout)


@pytest.fixture(scope="module")
def processes(request, tmp_path_factory) -> Dict[Tuple[str, Tuple[str, ...]], CaseRun]:
    """The process of every selected case, run four at a time, by (case, arguments)."""
    wanted = [
        (item.callspec.params["case"], PROCESS_TESTS[item.originalname])
        for item in request.session.items
        if getattr(item, "originalname", "") in PROCESS_TESTS
    ]
    roots = {run: make_case(tmp_path_factory.mktemp("case") / run[0], run[0]) for run in wanted}
    before = {run: contents(root) for run, root in roots.items()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {run: pool.submit(run_process, roots[run], run[1]) for run in wanted}
    return {
        run: CaseRun(run[0], roots[run], before[run], future.result())
        for run, future in futures.items()
    }


#: The tests that read ``processes``, and the arguments of their processes.
PROCESS_TESTS = {
    "test_shard_refuses_a_bad_config_in_one_line_and_runs_nothing": SHARD,
    "test_plan_process_refuses_a_bad_config": PLAN,
}


def check(run: CaseRun) -> None:
    outcome, case, root, before = run.outcome, run.case, run.root, run.before
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr
    message = lines[0]
    assert message.startswith("lokt-tasks: error: shards.toml"), message
    assert expected_fragment(case) in message
    assert outcome.exit_code == errors.USAGE, message
    assert contents(root) == before  # no .lokt, no results, no record, no lock


def test_the_corpus_is_all_there():
    assert len(CASES) >= 70
    assert set(PLAN_PROCESS_CASES) <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_shard_refuses_a_bad_config_in_one_line_and_runs_nothing(processes, case):
    check(processes[(case, SHARD)])


@pytest.mark.parametrize("case", PLAN_PROCESS_CASES)
def test_plan_process_refuses_a_bad_config(processes, case):
    check(processes[(case, PLAN)])


@pytest.mark.parametrize("case", CASES)
def test_plan_refuses_a_bad_config_in_one_line(tmp_path, monkeypatch, capsys, case):
    root = make_case(tmp_path / "case", case)
    before = contents(root)
    monkeypatch.chdir(root)
    for name in [name for name in os.environ if name.startswith("LOKT_")]:
        monkeypatch.delenv(name)
    with pytest.raises(SystemExit) as stopped:
        program.run(["lokt-tasks", *PLAN], exit=True)
    captured = capsys.readouterr()
    check(CaseRun(case, root, before, Outcome(stopped.value.code, captured.err, captured.out)))


def test_a_good_config_in_the_same_tree_plans_and_runs(tmp_path):
    """The harness itself: the fixture tree with a valid shards.toml works."""
    root = tmp_path / "good"
    shutil.copytree(CONFIGS / "tree", root)
    (root / "shards.toml").write_text(
        '[defaults]\nengine = "embedded"\n[tasks.test]\n'
        f'run = "{sys.executable} -c pass {{items}}"\nglob = ["suite/**/*.py"]\nshards = 2\n'
    )
    planned = run_process(root, PLAN)
    assert planned.exit_code == 0, planned.stderr
    ran = run_process(root, SHARD)
    assert ran.exit_code == 0, ran.stderr
    assert (root / ".lokt").is_dir()  # this is what the bad cases must not create
