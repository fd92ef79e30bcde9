"""The command line as users meet it: ``lokt-tasks`` without a tasks.py, the
same tasks mounted in invoke, one flag vocabulary, one voice in errors, and
defaults from invoke's configuration.

Help and parse errors run in this process through the console script's entry
point (fast, and the exit code is the one ``sys.exit`` gets); whatever runs a
shard runs as a real process in a scratch git repository (tests/scratch.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Set, Tuple

import pytest
from invoke import Program
from scratch import (
    FAIL,
    PASS,
    WAIT,
    checks,
    cli,
    cli_env,
    commit_new_repository,
    lock_files,
    make_project,
    open_gate,
    ran,
    start_cli,
    wait_for,
)

from lokt_tasks import errors
from lokt_tasks.cli import _invoke_only, program
from lokt_tasks.flags import ARGUMENTS, FLAGS, long_flag
from lokt_tasks.tasks import ns

REPO = Path(__file__).resolve().parent.parent
COMMANDS = sorted(ns.task_names)
INVOKE = str(Path(sys.executable).parent / "invoke")
#: invoke's core options that do something in lokt-tasks, as its help shows them.
KEPT_CORE = {"--config", "--invoke-config", "--help", "--version", "--print-completion-script"}


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A scratch project with no tasks.py, as the current directory, no LOKT_ variables."""
    root = make_project(tmp_path / "p", checks(["check_1.py", "check_2.py"]), shards=2)
    monkeypatch.chdir(root)
    for name in [name for name in os.environ if name.startswith("LOKT_")]:
        monkeypatch.delenv(name)
    return root


def lokt_tasks(capsys, *args: str) -> Outcome:
    """``lokt-tasks ARGS`` in this process: its exit code and what it printed."""
    try:
        program.run(["lokt-tasks", *args], exit=True)
        code = 0
    except SystemExit as stopped:
        code = stopped.code if isinstance(stopped.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def one_error_line(outcome: Outcome, code: int = errors.USAGE) -> str:
    """The single ``lokt-tasks: error: ...`` line of a refused command line."""
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.code == code, outcome
    lines = outcome.err.splitlines()
    assert len(lines) == 1, outcome.err
    assert lines[0].startswith("lokt-tasks: error: "), lines[0]
    return lines[0]


# -- help, without a tasks.py -------------------------------------------------------------------


def test_the_program_help_lists_every_command_and_only_options_that_apply(project, capsys):
    shown = lokt_tasks(capsys, "--help")
    assert shown.code == 0 and shown.err == ""
    for command in [*COMMANDS, "help"]:
        assert re.search(rf"^  {command} ", shown.out, re.M), command
    options = set(re.findall(r"(--[\w-]+)", shown.out.split("Options:")[1]))
    assert options == KEPT_CORE
    for asked in (("help",), ("-h",), ()):
        assert lokt_tasks(capsys, *asked) == shown


@pytest.mark.parametrize("command", COMMANDS)
def test_every_way_to_ask_for_a_commands_help_gives_the_same_help(project, capsys, command):
    helped = lokt_tasks(capsys, "help", command)
    assert helped.code == 0 and helped.err == ""
    takes_task = "task" in ns[command].parameters()  # status takes none
    usage = f"Usage: lokt-tasks {command}{' TASK' if takes_task else ''} [options]"
    assert helped.out.startswith(usage)
    assert ("\nArguments:\n" in helped.out) == takes_task
    for asked in (
        (command, "--help"),
        (command, "-h"),
        ("--help", command),
        *([(command, "checks", "--help")] if takes_task else []),
    ):
        assert lokt_tasks(capsys, *asked) == helped, asked
    assert not (project / ".lokt").exists()


def help_rows(text: str) -> Dict[str, Tuple[str, str, str]]:
    """Each flag of a help text: long flag -> (short flag, value, help joined in one line)."""
    rows: Dict[str, Tuple[str, str, str]] = {}
    options = text.split("Options:\n")[1].split("\n\n")[0]
    for entry in re.split(r"\n(?=  -)", options):
        parts = re.split(r"\s{3,}", entry.strip(), maxsplit=1)
        spec, said = parts[0], " ".join(parts[1].split()) if len(parts) > 1 else ""
        short = re.match(r"-(\w)\b", spec)
        long = re.search(r"(--[\w-]+)(?:\[?=([^\]\s,]+))?", spec)
        assert long, entry
        rows[long.group(1)] = (short.group(1) if short else "", long.group(2) or "", said)
    return rows


def test_every_flag_has_one_meaning_across_every_command(project, capsys):
    """Commands and flags are found, not listed: a new one is checked as it comes."""
    seen: Dict[str, Set[Tuple[str, str, str]]] = {}
    shorts: Dict[str, Set[str]] = {}
    program_help = help_rows(lokt_tasks(capsys, "--help").out)
    for command in COMMANDS:
        rows = help_rows(lokt_tasks(capsys, "help", command).out)
        expected = {long_flag(name) for name in ns[command].parameters() if name in FLAGS}
        assert set(rows) == expected, command
        for long, row in {**rows, **program_help}.items():
            seen.setdefault(long, set()).add(row)
    for long, rows in seen.items():
        assert len(rows) == 1, f"{long} reads differently in different commands: {rows}"
        short = next(iter(rows))[0]
        if short:
            shorts.setdefault(short, set()).add(long)
    assert {short: longs for short, longs in shorts.items() if len(longs) > 1} == {}
    used = {name for command in COMMANDS for name in ns[command].parameters()}
    assert set(FLAGS) | set(ARGUMENTS) == used, "a flag in flags.FLAGS that no command takes"
    for name, flag in FLAGS.items():
        ((short, value, said),) = seen[long_flag(name)]
        assert (short, value, said) == (flag.short or "", flag.value or "", flag.text), name
        assert flag.configurable == (f"lokt_tasks.{name}" in flag.text), name


def test_invokes_own_parser_gets_only_the_tables_short_flags(project):
    """Through invoke (``invoke --help shard``), invoke builds the flags itself:
    no automatic short flag (first free letter) may slip in."""
    for command in COMMANDS:
        for argument in ns[command].get_arguments():
            short = FLAGS[argument.name].short if argument.name in FLAGS else None
            expected = {argument.name.replace("_", "-"), *([short] if short else [])}
            assert set(argument.names) == expected, (command, argument.names)
            assert argument.help, (command, argument.name)
        # NOTE: invoke takes help texts off a task while building its parser: twice works.
        assert all(argument.help for argument in ns[command].get_arguments())
    invokes = {name for a in Program().core_args() + Program().task_args() for name in a.names}
    assert {flag.short for flag in FLAGS.values()} & invokes == set()


# -- mistakes: one line, exit 2, "did you mean" -------------------------------------------------


@pytest.mark.parametrize(
    "args, wanted",
    [
        (["sharf", "checks"], "unknown command 'sharf'; did you mean 'shard'?"),
        (["help", "verfy"], "unknown command 'verfy'; did you mean 'verify'?"),
        (["shard", "checks", "--idd", "1"], "shard: unknown option '--idd'; did you mean '--id'?"),
        (["shard", "--idd", "1", "checks"], "shard: unknown option '--idd'; did you mean '--id'?"),
        (["verify", "checks", "--timeout", "1s"], "did you mean '--wait-timeout'?"),
        (["plan", "chekcs"], "unknown task 'chekcs' in shards.toml; did you mean 'checks'?"),
        (["--jobs", "2", "shard-all", "checks"], "--jobs is an option of shard-all"),
        (["shard", "checks", "--id"], "--id needs a value (N|next|auto)"),
        (["--dry", "shard", "checks", "--id", "1"], "--dry is an option of invoke's"),
        (["shard", "checks", "--id", "1", "-R"], "plan TASK' shows what would run"),
        (["-f", "shards.toml", "plan", "checks"], "the path of shards.toml goes to --config"),
        (["shard", "checks", "--id", "next", "--force"], "--force does not apply to --id next"),
    ],
)
def test_a_mistake_is_one_line_that_says_what_was_meant(project, capsys, args, wanted):
    line = one_error_line(lokt_tasks(capsys, *args))
    assert wanted in line
    assert ran(project) == [] and not (project / ".lokt").exists()


@pytest.mark.parametrize("option", sorted(_invoke_only()))
def test_every_invoke_option_that_does_nothing_here_is_refused_by_name(project, capsys, option):
    line = one_error_line(lokt_tasks(capsys, option, "plan", "checks"))
    assert f"{option} is an option of invoke's" in line


@pytest.mark.parametrize(
    "args", [["shard"], ["shard", "--id", "1"], ["plan"], ["verify", "--json"]]
)
def test_a_command_without_a_task_lists_the_tasks_of_shards_toml(project, capsys, args):
    line = one_error_line(lokt_tasks(capsys, *args))
    assert line.endswith("needs a task name: one of checks (the tasks of shards.toml)")


def test_the_tasks_listed_are_those_of_the_shards_toml_given(project, capsys):
    other = project / "other.toml"
    other.write_text('[tasks.lint]\nrun = "true {items}"\nglob = ["checks/*.py"]\nshards = 1\n')
    for args in (["--config", "other.toml", "plan"], ["plan", "--config", "other.toml"]):
        line = one_error_line(lokt_tasks(capsys, *args))
        assert line.endswith("one of lint (the tasks of other.toml)"), line
    planned = lokt_tasks(capsys, "--config", "other.toml", "plan", "lint")
    assert planned.code == 0, planned.err
    assert "lint-shard-1" in planned.out


#: Odd command lines: each must end in its exit code and at most one line on stderr.
FUZZ = [
    ["--config"],
    ["--config", ".", "plan", "checks"],
    ["--config", "missing.toml", "plan", "checks"],
    ["-f", "missing.yaml", "plan", "checks"],
    ["-f", ".", "plan", "checks"],
    ["--invoke-config=shards.toml", "plan", "checks"],
    ["shard", "checks", "--id", ""],
    ["shard", "checks", "--id", "-1"],
    ["shard", "checks", "--id", "0"],
    ["shard", "checks", "--id", "1.5"],
    ["shard", "checks", "--id", "9"],
    ["shard", "checks", "--id", "1", "--wait-timeout", "-1s"],
    ["shard", "checks", "--id", "1", "--engine", "lokd"],
    ["shard-all", "checks", "--jobs=-3"],
    ["shard-all", "checks", "--jobs", "x"],
    ["plan", "checks", "--shards", "1e3"],
    ["plan", "checks", "--json=yes"],
    ["plan", ""],
    ["plan", "ch\u00e9cks"],
    ["plan", "checks", "checks"],
    ["verify", "checks", "--results", ""],
    ["shard", "checks", "--id", "1", "--agent", ""],
    ["plan", "checks", "--config="],
    ["help", "help"],
    ["help", "shard", "extra"],
    ["--help=nosuch"],
    ["-h", ""],
    ["--print-completion-script"],
    ["--print-completion-script", "tcsh"],
    ["--"],
    ["--", "plan", "checks"],
    ["-", "plan"],
    ["---", "plan"],
    ["plan", "checks", "-"],
    ["plan", "checks", "--"],
    ["-V", "sharf"],
    ["shard-all", "checks", "--force", "--failed", "--engine"],
]


@pytest.mark.parametrize("args", FUZZ, ids=lambda args: " ".join(args) or "(none)")
def test_no_command_line_ends_in_a_traceback(project, capsys, args):
    outcome = lokt_tasks(capsys, *args)
    assert "Traceback" not in outcome.err + outcome.out
    assert outcome.code in (0, errors.USAGE), outcome
    if outcome.code:
        lines = outcome.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lokt-tasks: "), outcome.err
    assert ran(project) == []


def test_tab_completion_names_commands_and_flags(project, capsys):
    commands = lokt_tasks(capsys, "--complete", "--", "lokt-tasks", "sha")
    assert {"shard", "shard-all"} <= set(commands.out.split())
    flags = lokt_tasks(capsys, "--complete", "--", "lokt-tasks", "shard", "checks", "--")
    assert "--wait-timeout" in flags.out.split() and "--dry" not in flags.out.split()


# -- what runs: banners, the already-passed rule, {python}, lokt's own lines ----------------------


def test_banners_show_only_when_something_runs(project):
    refused = cli(project, "shard", "checks", "--id", "9")
    assert (refused.returncode, refused.stdout) == (errors.USAGE, "")
    assert cli(project, "shard-all", "checks").returncode == 0
    again = cli(project, "shard-all", "checks")
    assert again.returncode == 0
    assert "lokt-tasks:" not in again.stdout  # no engine line: nothing ran
    assert "nothing to run" in again.stdout


def test_shard_id_skips_a_shard_that_passed_in_this_run_unless_forced(project):
    env = {"LOKT_TASKS_RUN": "r1"}
    first = cli(project, "shard", "checks", "--id", "1", env=env)
    assert first.returncode == 0, first.stderr
    assert ran(project) == ["check_1.py"]
    record = (project / ".git" / "lokt-tasks" / "checks" / "r1" / "shard-1.json").read_text()

    again = cli(project, "shard", "checks", "--id", "1", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        "checks-shard-1: already passed in run r1 under this plan; nothing ran"
        " (--force runs it again)"
    )
    assert ran(project) == ["check_1.py"]
    assert (project / ".git" / "lokt-tasks" / "checks" / "r1" / "shard-1.json").read_text() == (
        record
    )

    other_run = cli(project, "shard", "checks", "--id", "1", env={"LOKT_TASKS_RUN": "r2"})
    assert other_run.returncode == 0 and ran(project) == ["check_1.py"] * 2
    forced = cli(project, "shard", "checks", "--id", "1", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert ran(project) == ["check_1.py"] * 3


def test_a_failed_shard_runs_again_without_force(tmp_path):
    project = make_project(tmp_path / "p", {"check_1.py": FAIL, "check_2.py": PASS}, shards=2)
    env = {"LOKT_TASKS_RUN": "r1"}
    assert cli(project, "shard", "checks", "--id", "1", env=env).returncode == errors.FAILED
    assert cli(project, "shard", "checks", "--id", "1", env=env).returncode == errors.FAILED
    assert ran(project) == ["check_1.py"] * 2


def test_a_python_without_the_runner_is_a_set_up_error_before_any_shard_runs(tmp_path):
    project = make_project(
        tmp_path / "p",
        checks(["check_1.py"]),
        shards=1,
        extra_toml='\n[tasks.unit]\nrun = "{python} -m no_such_runner_xyz -q {items}"\n'
        'glob = ["checks/*.py"]\nshards = 1\n',
    )
    for args in (
        ["shard", "unit", "--id", "1"],
        ["shard-all", "unit"],
        ["shard", "unit", "--id", "next"],
    ):
        result = cli(project, *args)
        assert result.returncode == errors.SETUP, result.stderr
        assert result.stdout == ""
        assert result.stderr.strip() == (
            "lokt-tasks: error: shards.toml: tasks.unit.run: {python} is"
            f" {sys.executable}, which has no module 'no_such_runner_xyz'; install"
            " no_such_runner_xyz into that environment, or lokt-tasks into the one that has it"
        )
    assert lock_files(project) == []
    assert not (project / ".git" / "lokt-tasks").exists()
    assert cli(project, "plan", "unit").returncode == 0  # plan runs nothing: it may show it


def test_a_module_beside_shards_toml_is_found_as_python_m_finds_it(tmp_path):
    project = make_project(
        tmp_path / "p",
        checks(["check_1.py"]),
        shards=1,
        extra_toml='\n[tasks.local]\nrun = "{python} -m local_runner {items}"\n'
        'glob = ["checks/*.py"]\nshards = 1\n',
    )
    (project / "local_runner.py").write_text("import runpy, sys\nrunpy.run_path(sys.argv[1])\n")
    commit_new_repository(project, "runner")  # NOTE: a second commit in the same repository
    result = cli(project, "shard", "local", "--id", "1")
    assert result.returncode == 0, result.stderr
    assert ran(project) == ["check_1.py"]


@pytest.mark.skipif(shutil.which("lokt") is None, reason="lokt not on PATH")
def test_with_lokt_a_held_shard_is_one_line_and_a_commands_stderr_still_shows(tmp_path):
    project = make_project(tmp_path / "p", {"check_1.py": WAIT, "check_2.py": PASS}, shards=2)
    lokt = {"LOKT_TASKS_RUN": "r1"}
    holder = start_cli(project, "shard", "checks", "--id", "1", "--engine", "lokt", env=lokt)
    try:
        wait_for(lambda: "checks-shard-1.json" in lock_files(project))
        wait_for(lambda: ran(project) == ["check_1.py"])
        held = cli(project, "shard", "checks", "--id", "1", "--engine", "lokt", env=lokt)
        assert held.returncode == errors.HELD
        lines = held.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lokt-tasks: checks-shard-1 is held by"), (
            held.stderr
        )
    finally:
        open_gate(project, "check_1.py")
        holder.communicate(timeout=60)
    assert holder.returncode == 0

    (project / "checks" / "check_2.py").write_text(
        "import sys\nprint('to stderr', file=sys.stderr)\n"
    )
    noisy = cli(project, "shard", "checks", "--id", "2", "--engine", "lokt", "--force", env=lokt)
    assert noisy.returncode == 0, noisy.stderr
    assert "to stderr" in noisy.stderr and "to stderr" not in noisy.stdout


# -- invoke's configuration ---------------------------------------------------------------------


def banner(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stdout.splitlines() if line.startswith("lokt-tasks: ")]
    assert lines, result.stdout + result.stderr
    return lines[0]


def test_invoke_configuration_gives_defaults_below_flags_and_the_environment(project):
    (project / "invoke.yaml").write_text("lokt_tasks:\n  agent: from-yaml\n")
    shard = ("shard", "checks", "--id", "1", "--force")
    assert "; agent from-yaml;" in banner(cli(project, *shard))
    (project / "more.yml").write_text("lokt_tasks:\n  agent: from-f\n")
    assert "; agent from-f;" in banner(cli(project, "-f", "more.yml", *shard))
    assert "; agent from-env;" in banner(cli(project, *shard, env={"LOKT_AGENT_ID": "from-env"}))
    assert "; agent from-flag;" in banner(
        cli(project, *shard, "--agent", "from-flag", env={"LOKT_AGENT_ID": "from-env"})
    )


def test_shards_toml_comes_before_invoke_configuration(project):
    (project / "invoke.yaml").write_text("lokt_tasks:\n  jobs: 3\n  engine: lokt\n")
    # make_project's shards.toml sets engine = "embedded" and no jobs.
    everything = cli(project, "shard-all", "checks")
    assert everything.returncode == 0, everything.stderr
    assert banner(everything).endswith("; 3 at once") and "embedded engine" in banner(everything)
    toml = (project / "shards.toml").read_text()
    (project / "shards.toml").write_text(toml.replace("[defaults]\n", "[defaults]\njobs = 1\n"))
    forced = cli(project, "shard-all", "checks", "--force")
    assert banner(forced).endswith("; 1 at once")
    flagged = cli(project, "shard-all", "checks", "--force", "--jobs", "2")
    assert banner(flagged).endswith("; 2 at once")


def test_an_engine_of_auto_in_shards_toml_leaves_the_choice_to_invoke_configuration(project):
    toml = (project / "shards.toml").read_text()
    (project / "shards.toml").write_text(toml.replace('engine = "embedded"', 'engine = "auto"'))
    (project / "invoke.yaml").write_text("lokt_tasks:\n  engine: lokt\n")
    path = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and shutil.which("lokt", path=entry) is None
    )
    result = cli(project, "shard", "checks", "--id", "1", env={"PATH": path})
    assert result.returncode == errors.ENGINE, result.stderr
    assert 'engine "lokt" chosen but no lokt binary found' in result.stderr
    assert ran(project) == []


def test_configured_results_and_wait_timeout(project):
    (project / "invoke.yaml").write_text("lokt_tasks:\n  results: recs\n  wait_timeout: 0s\n")
    assert cli(project, "shard", "checks", "--id", "1", env={"LOKT_TASKS_RUN": "r"}).returncode == 0
    assert (project / "recs" / "checks" / "r" / "shard-1.json").is_file()
    # Shard 2 is missing: with the default of 10m this would wait; 0s gives up at once.
    waited = cli(project, "verify", "checks", "--wait", env={"LOKT_TASKS_RUN": "r"}, timeout=30)
    assert waited.returncode == errors.INCOMPLETE, waited.stderr


@pytest.mark.parametrize(
    "text, wanted",
    [
        ("lokt_tasks:\n  jbos: 2\n", "lokt_tasks.jbos: unknown key; did you mean 'jobs'?"),
        ("lokt_tasks:\n  jobs: two\n", "lokt_tasks.jobs: expected a whole number"),
        ("lokt_tasks:\n  engine: lokd\n", "did you mean 'lokt'?"),
        ("lokt_tasks:\n  wait_timeout: 10\n", "lokt_tasks.wait_timeout:"),
        ("lokt_tasks: 3\n", "lokt_tasks: expected a mapping"),
        ("lokt_tasks: [1\n", "invoke configuration beside shards.toml: "),
    ],
)
def test_a_bad_invoke_configuration_is_one_line(project, text, wanted):
    (project / "invoke.yaml").write_text(text)
    result = cli(project, "shard", "checks", "--id", "1")
    assert result.returncode == errors.USAGE
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert wanted in result.stderr and "Traceback" not in result.stderr
    assert ran(project) == []


# -- through invoke ------------------------------------------------------------------------------


def invoke(cwd: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [INVOKE, *args], cwd=cwd, env=cli_env(env), capture_output=True, text=True, timeout=60
    )


def test_through_invoke_help_dry_and_invoke_yaml(project):
    (project / "tasks.py").write_text(
        "from lokt_tasks.tasks import plan, shard, shard_all, verify\n"
    )
    helped = invoke(project, "shard", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("Usage: invoke shard TASK [options]")
    dry = invoke(project, "--dry", "shard-all", "checks")
    assert dry.returncode == errors.USAGE and "invoke's --dry" in dry.stderr
    assert ran(project) == []
    (project / "invoke.yaml").write_text("lokt_tasks:\n  jobs: 1\n")
    everything = invoke(project, "shard-all", "checks")
    assert everything.returncode == 0, everything.stderr
    assert banner(everything).endswith("; 1 at once")


def test_the_tasks_mounted_under_a_namespace(project):
    (project / "tasks.py").write_text(
        "from invoke import Collection\nimport lokt_tasks.tasks\n\n"
        "ns = Collection()\nns.add_collection(lokt_tasks.tasks.ns, name='lokt')\n"
    )
    listed = invoke(project, "--list")
    assert "lokt.shard-all" in listed.stdout, listed.stderr
    result = invoke(project, "lokt.shard", "checks", "--id", "1")
    assert result.returncode == 0, result.stderr
    assert ran(project) == ["check_1.py"]


@pytest.mark.parametrize("args", [["--help"], ["help", "shard-all"]])
def test_help_into_a_reader_that_went_away_exits_quietly(tmp_path, args):
    """`lokt-tasks --help | true`: the pipe's reader is gone before the help is
    written; the program ends as a shell command killed by SIGPIPE (141)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "lokt_tasks", *args],
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


@pytest.mark.parametrize("command", ["verify", "durations"])
def test_a_results_directory_that_does_not_exist_is_named_not_reported_missing(tmp_path, command):
    (tmp_path / "shards.toml").write_text(
        '[tasks.t]\nrun = "true --junit={junit} {items}"\n[[tasks.t.shard]]\nitems = ["a"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "lokt_tasks", command, "t", "--results", "artifacts"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == errors.USAGE, result.stdout + result.stderr
    assert result.stderr == (
        "lokt-tasks: error: --results artifacts: no such directory; nothing was recorded there\n"
    )


def test_a_results_directory_that_cannot_be_made_is_named_before_any_shard_runs(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be\n")
    (tmp_path / "shards.toml").write_text(
        '[defaults]\nresults = "blocker/results"\n'
        '[tasks.t]\nrun = "touch ran-{shard} {items}"\n[[tasks.t.shard]]\nitems = ["a"]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "lokt_tasks", "shard-all", "t", "--engine", "embedded"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == errors.ENGINE, result.stdout + result.stderr
    assert result.stderr.startswith("lokt-tasks: error: results directory")
    assert str(tmp_path / "blocker" / "results") in result.stderr
    assert result.stdout == "" and not (tmp_path / "ran-1").exists()
