"""The invoke tasks: plan, shard, shard-all, verify.

Thin on purpose: each task reads its arguments, asks the layers below, prints
and picks the exit code. Errors meant for the user are LoktTasksError, turned
into one line on stderr and their exit code (see lokt_tasks.errors).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from invoke import Collection, Exit, task

from . import errors
from .ci import shard_from_env, touch_bazel_status_file
from .config import Config, TaskConfig, find_config, get_task, load_config, parse_duration
from .console import Console, LiveBoard
from .durations import pin_durations
from .engine import DEFAULT_WAIT_TIMEOUT, StopRequest, find_lock_root, make_identity
from .errors import LoktTasksError, UsageError
from .plan import Plan, build_plan, plan_to_json, render_plan
from .results import RecordStore, current_run_key, default_results_dir
from .run import RunSettings, ShardOutcome, run_shard, select_engine
from .schedule import is_finished, run_all, run_queue, stop_on_signals
from .states import (
    LOCKED_OUT,
    PASSED_OUTCOMES,
    RAN_OUTCOMES,
    RERUN_BY_FAILED,
    SHOW_LOG_OUTCOMES,
    WAITED_ON,
    WARNING,
    RunOutcome,
    ShardState,
    ordered,
)
from .system import untrusted_directory
from .text import word_list
from .verdict import (
    Verdict,
    holder_is_live,
    judge_live,
    render_table,
    tail,
    verdict_to_json,
    verdict_to_junit,
)

COMMON_HELP = {
    "config": "Path of shards.toml (default: found by walking up from the current directory).",
    "shards": "Override the task's shard count (dynamic tasks only).",
    "run": "Run key that groups the records of one run (default: $LOKT_TASKS_RUN, else the git commit).",
    "results": "Directory of shard records (default: shared by every worktree, beside lokt's lock root).",
    "engine": "Lock engine: auto (lokt if found, else embedded), lokt or embedded.",
    "agent": "Name of this agent (default: $LOKT_AGENT_ID, else generated). Each agent gets its own lokt owner.",
}

#: The states ``shard-all --failed`` runs again, for its help and its messages.
RERUN_WORDS = word_list(ordered(RERUN_BY_FAILED))


def user_errors(body):
    """Turn LoktTasksError into invoke.Exit: one line on stderr and its exit code."""

    command = body.__name__.replace("_", "-")

    @functools.wraps(body)
    def wrapper(c, task, *args, **kwargs):
        # invoke hands an unfilled positional the next word, even "--help".
        if task in ("-h", "--help"):
            print(
                f"usage: invoke {command} TASK [options]\n\n  {body.__doc__}\n\n'invoke --help {command}' lists the options."
            )
            return
        try:
            if task.startswith("-"):
                raise UsageError(
                    f"{command}: expected a task name before {task!r}; see 'invoke --help {command}'"
                )
            return body(c, task, *args, **kwargs)
        except LoktTasksError as error:
            raise Exit(f"lokt-tasks: error: {error}", code=error.exit_code) from None
        except BrokenPipeError:
            # The reader went away (`verify --json | head`): stop quietly, as
            # other command-line tools do, without a traceback at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=128 + signal.SIGPIPE) from None
        except OSError as error:  # a path we could not use: one line, naming it
            failure = errors.storage_error(error)
            raise Exit(f"lokt-tasks: error: {failure}", code=failure.exit_code) from None

    return wrapper


@dataclass
class Setup:
    """What every command needs: the config, the task, its plan, where records go."""

    config: Config
    task: TaskConfig
    plan: Plan
    store: RecordStore
    run_key: str
    lock_root: Path


def _setup(
    task_name: str,
    *,
    config: Optional[str],
    shards: Optional[str],
    run: Optional[str],
    results: Optional[str],
    pin: bool = True,
) -> Setup:
    """Load the config and plan the task.

    With ``pin``, a ``timings`` task plans from the timings pinned for this
    run (see durations.pin_durations); ``plan`` shows the file as it is now.
    """
    path = Path(config) if config else find_config(Path.cwd())
    loaded = load_config(path)
    task_config = get_task(loaded, task_name)
    lock_root = find_lock_root(loaded.root)
    if results:
        results_dir = Path(results).resolve()
    else:
        results_dir = loaded.results or default_results_dir(lock_root)
    for directory, what in ((lock_root, "lock root"), (results_dir, "results directory")):
        problem = untrusted_directory(directory)
        if problem:
            raise errors.StorageError(f"{what}: {problem}; its records and locks cannot be trusted")
    store = RecordStore(results_dir)
    written_by_runs = [t.durations for t in loaded.tasks.values() if t.durations]
    run_key = current_run_key(loaded.root, explicit=run, ignore=written_by_runs)
    durations = None
    if task_config.split == "timings" and pin and task_config.durations is not None:
        pinned = store.run_dir(task_name, run_key) / "durations.json"
        durations = pin_durations(task_config.durations, pinned)
    plan = build_plan(loaded, task_name, shards=_count(shards, "--shards"), durations=durations)
    return Setup(loaded, task_config, plan, store, run_key, lock_root)


def _count(raw: Optional[str], flag: str) -> Optional[int]:
    if raw is None:
        return None
    try:
        value = int(str(raw))
    except ValueError:
        raise UsageError(f"{flag} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value}")
    return value


def _settings(
    setup: Setup, *, engine: Optional[str], agent: Optional[str], wait=False, timeout=None
) -> RunSettings:
    identity = make_identity(agent)
    chosen = select_engine(engine or setup.task.engine, identity, root=setup.lock_root)
    return RunSettings(
        cwd=setup.plan.cwd,
        store=setup.store,
        run_key=setup.run_key,
        engine=chosen,
        identity=identity,
        ttl=setup.task.ttl,
        durations_file=setup.task.durations,
        wait=wait,
        timeout=timeout,
    )


def _judge(setup: Setup, engine) -> Verdict:
    return judge_live(setup.plan, setup.store, engine.holder, run_key=setup.run_key)


@task(
    help={
        "task": "Task name from shards.toml.",
        "json": "Print the plan as JSON.",
        "config": COMMON_HELP["config"],
        "shards": COMMON_HELP["shards"],
    }
)
@user_errors
def plan(c, task, json=False, shards=None, config=None):
    """Show what each shard would run, and how balanced the shards are."""
    setup = _setup(task, config=config, shards=shards, run="plan", results=None, pin=False)
    if json:
        print(_json_dumps(plan_to_json(setup.plan)))
        return
    console = Console()
    console.say(render_plan(setup.plan))
    for warning in setup.plan.warnings:
        console.say(console.paint(f"warning: {warning}", WARNING))


@task(
    help={
        "task": "Task name from shards.toml.",
        "id": "Shard to run: a number from 1, 'next' (queue mode: claim shards until none is left) or 'auto' (from the CI environment).",
        "total": "The shard count the CI expects; a dynamic task is re-planned to it, an explicit one must match.",
        "agent": COMMON_HELP["agent"],
        "engine": COMMON_HELP["engine"],
        "run": COMMON_HELP["run"],
        "shards": COMMON_HELP["shards"],
        "wait": "Wait for the shard's lock instead of giving up when another agent holds it (--id next always waits).",
        "timeout": "With --wait, or with --id next for shards other agents hold: how long to wait, as a duration with a unit (default 10m; 0s: do not wait).",
        "log": "Write the command's output to the shard's log file instead of the terminal.",
        "config": COMMON_HELP["config"],
        "results": COMMON_HELP["results"],
    }
)
@user_errors
def shard(
    c,
    task,
    id=None,
    total=None,
    agent=None,
    engine=None,
    run=None,
    shards=None,
    wait=False,
    timeout=None,
    log=False,
    config=None,
    results=None,
):
    """Run one shard of TASK under its lock (or, with --id next, every unclaimed one)."""
    if id is None:
        raise UsageError(
            "shard needs --id: a shard number, 'next' (queue mode) or 'auto' (from the CI environment)"
        )
    if id == "auto":
        found = shard_from_env(os.environ)
        shards, index = str(found.total), found.index
        touch_bazel_status_file(os.environ)
    elif id == "next":
        shards, index = total or shards, None
    else:
        shards, index = total or shards, _shard_id(id)
    try:
        setup = _setup(task, config=config, shards=shards, run=run, results=results)
    except UsageError as error:
        if id != "auto":
            raise
        # The shard count came from the CI, not from the command line: say so.
        raise UsageError(f"--id auto ({found.provider}, {found.total} shards): {error}") from None
    wait_timeout = parse_duration(timeout) if timeout else None
    settings = _settings(setup, engine=engine, agent=agent, wait=wait, timeout=wait_timeout)
    console = Console()
    console.note(
        f"{settings.engine.describe()}; agent {settings.identity.agent}; run {setup.run_key}"
    )
    stop = StopRequest()
    if index is None:
        _shard_queue(
            setup,
            settings,
            console,
            stop,
            to_log=log,
            patience=DEFAULT_WAIT_TIMEOUT if wait_timeout is None else wait_timeout,
        )
        return
    count = len(setup.plan.shards)
    if not 1 <= index <= count:
        raise UsageError(
            f"--id {index} is out of range: task '{task}' has {count} shard{'s' if count != 1 else ''} (1..{count})"
        )
    chosen = setup.plan.shards[index - 1]
    console.note(
        f"{chosen.lock_name}: {len(chosen.items)} item{'s' if len(chosen.items) != 1 else ''}"
    )
    with stop_on_signals(stop):
        outcome = run_shard(chosen, settings, to_log=log, stop=stop)
    _finish_one(outcome, console, stop)


def _shard_id(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"--id must be a shard number, 'next' or 'auto', got {raw!r}") from None


def _shard_queue(
    setup: Setup,
    settings: RunSettings,
    console: Console,
    stop: StopRequest,
    *,
    to_log: bool,
    patience: float,
) -> None:
    """Run shards until every one is finished (see schedule.run_queue), then
    say how many this agent ran and which shards, if any, are left to others.

    Exit codes: 0 when every shard this agent ran passed (also when it ran
    none), 3 when one failed, 4 when one ended without a final record (its
    attempt died) or was stopped by a signal sent to it alone, 6 on an engine
    error, 130/143 when this agent was interrupted.
    """

    def finished(shard) -> bool:
        return is_finished(setup.store.read(shard.task, setup.run_key, shard.index), shard)

    def on_change(shard, state, outcome):
        if outcome is None:
            console.note(f"{shard.lock_name}: claiming")
        else:
            console.say(
                f"{shard.lock_name}: {console.paint(state, state)}{_outcome_detail(outcome)}"
            )

    def on_wait(held):
        console.note(f"queue: waiting for {_held_list(held, settings.engine)}")

    with stop_on_signals(stop):
        outcomes = run_queue(
            setup.plan,
            settings,
            stop=stop,
            on_change=on_change,
            finished=finished,
            to_log=to_log,
            patience=patience,
            on_wait=on_wait,
        )
    if stop.is_set():
        raise Exit("lokt-tasks: interrupted", code=128 + (stop.signum or signal.SIGINT))
    # NOTE: a lost shard counts as run: its command may well have run, only
    # its final record is missing.
    tallied = ordered(RAN_OUTCOMES | {RunOutcome.LOST})
    ran = [o for o in outcomes if o.state in tallied]
    tally = ", ".join(
        f"{sum(o.state == state for o in ran)} {state}"
        for state in tallied
        if any(o.state == state for o in ran)
    )
    summary = (
        f"queue: agent {settings.identity.agent} ran {len(ran)} shard{'s' if len(ran) != 1 else ''}"
        + (f" ({tally})" if tally else "")
    )
    left = [s for s in setup.plan.shards if not finished(s)]
    if not left:
        console.say(f"{summary}; every shard is finished")
    else:
        console.say(
            f"{summary}; {len(left)} shard{'s are' if len(left) != 1 else ' is'} not finished: {_held_list(left, settings.engine)}"
        )
    if any(o.state == RunOutcome.ERROR for o in outcomes):
        raise Exit(code=errors.ENGINE)
    if any(o.state == RunOutcome.FAILED for o in outcomes):
        raise Exit(code=errors.FAILED)
    if any(o.state in (RunOutcome.LOST, RunOutcome.INTERRUPTED) for o in outcomes):
        raise Exit(code=errors.INCOMPLETE)


def _held_list(shards, engine) -> str:
    """``a-shard-1 (held by agent x), a-shard-2 (frozen)``: who has each shard."""
    described = []
    for shard in shards:
        frozen = engine.frozen_by(shard.lock_name)
        holder = engine.holder(shard.lock_name)
        if frozen is not None:
            described.append(f"{shard.lock_name} (frozen by {frozen.owner})")
        elif holder_is_live(holder):
            described.append(
                f"{shard.lock_name} (held by agent {holder.agent_id}, pid {holder.pid} on {holder.host})"
            )
        else:
            described.append(shard.lock_name)
    return ", ".join(described)


def _outcome_detail(outcome: ShardOutcome) -> str:
    record = outcome.record
    if outcome.state in LOCKED_OUT:
        holder = outcome.guard.holder
        if holder is None:
            return f" ({outcome.guard.message})" if outcome.guard.message else ""
        return f" by {holder.owner} (agent {holder.agent_id}, pid {holder.pid} on {holder.host}, for {holder.age_sec:.0f}s)"
    if outcome.state == RunOutcome.ERROR:
        return f": {outcome.guard.message}"
    if record is None:
        return ""
    if record.signal:
        return f" ({record.signal})"
    if record.exit_code:
        return f" (exit {record.exit_code})"
    return ""


def _finish_one(outcome: ShardOutcome, console: Console, stop: StopRequest) -> None:
    label = outcome.shard.lock_name
    detail = _outcome_detail(outcome)
    if outcome.state == RunOutcome.PASSED:
        console.say(f"{label}: {console.paint(outcome.state, outcome.state)}")
        return
    if outcome.state in LOCKED_OUT:
        message = f"lokt-tasks: {label} is {outcome.state}{detail}; nothing ran"
        raise Exit(message, code=errors.HELD)
    if outcome.state == RunOutcome.ERROR:
        raise Exit(f"lokt-tasks: error: {label}{detail}", code=errors.ENGINE)
    if outcome.state == RunOutcome.INTERRUPTED or stop.is_set():
        raise Exit(f"lokt-tasks: {label} interrupted", code=128 + (stop.signum or signal.SIGINT))
    if outcome.state == RunOutcome.LOST:
        message = f"lokt-tasks: {label}: ended without its final record (its attempt died)"
        raise Exit(message, code=errors.INCOMPLETE)
    raise Exit(f"lokt-tasks: {label} failed{detail}", code=errors.FAILED)


@task(
    name="shard-all",
    help={
        "task": "Task name from shards.toml.",
        "jobs": "How many shards run at once (default: the task's jobs, else the CPU count).",
        "force": "Run shards that already passed under this run key and plan too.",
        "failed": f"Run only the shards that are {RERUN_WORDS} (see verify).",
        "agent": COMMON_HELP["agent"],
        "engine": COMMON_HELP["engine"],
        "run": COMMON_HELP["run"],
        "shards": COMMON_HELP["shards"],
        "config": COMMON_HELP["config"],
        "results": COMMON_HELP["results"],
    },
)
@user_errors
def shard_all(
    c,
    task,
    jobs=None,
    force=False,
    failed=False,
    agent=None,
    engine=None,
    run=None,
    shards=None,
    config=None,
    results=None,
):
    """Run every shard of TASK in parallel on this machine, then print the verdict."""
    setup = _setup(task, config=config, shards=shards, run=run, results=results)
    settings = _settings(setup, engine=engine, agent=agent)
    workers = _count(jobs, "--jobs") or setup.task.jobs or os.cpu_count() or 1
    console = Console()
    console.note(f"{settings.engine.describe()}; run {setup.run_key}; {workers} at once")

    before = _judge(setup, settings.engine)
    wanted = _select(before, failed=failed, force=force)
    todo = [s for s in setup.plan.shards if s.index in wanted]
    if not todo:
        if failed:
            why = f"no shard is {RERUN_WORDS}"
        else:
            why = (
                "every shard already passed under this run and plan (use --force to run them again)"
            )
        console.say(f"nothing to run: {why}")
    else:
        stop = StopRequest()
        labels = {s.index: f"{s.lock_name}" for s in setup.plan.shards}
        board = LiveBoard(console, [labels[s.index] for s in todo])

        def on_change(shard, state, outcome):
            board.update(labels[shard.index], state, _outcome_detail(outcome) if outcome else "")

        with stop_on_signals(stop), board:
            skip = () if force else ordered(PASSED_OUTCOMES)
            outcomes = run_all(
                todo, settings, jobs=workers, stop=stop, on_change=on_change, skip=skip
            )
        _show_failures(outcomes, console)
        if stop.is_set():
            raise Exit(
                "lokt-tasks: interrupted; running shards were stopped and their locks released",
                code=128 + (stop.signum or signal.SIGINT),
            )
    verdict = _judge(setup, settings.engine)
    console.say(render_table(verdict, color=console.color))
    if verdict.exit_code:
        raise Exit(code=verdict.exit_code)


def _select(verdict: Verdict, *, failed: bool, force: bool) -> set:
    if failed:
        return {row.shard for row in verdict.rows if row.state in RERUN_BY_FAILED}
    if force:
        return {row.shard for row in verdict.rows}
    return {row.shard for row in verdict.rows if row.state != ShardState.PASSED}


def _show_failures(outcomes: List[ShardOutcome], console: Console) -> None:
    for outcome in outcomes:
        if outcome.state in SHOW_LOG_OUTCOMES and outcome.log:
            console.say("")
            heading = (
                f"--- {outcome.shard.lock_name} {outcome.state}{_outcome_detail(outcome)}:"
                f" last lines of {outcome.log}"
            )
            console.say(console.paint(heading, outcome.state))
            console.say(tail(Path(outcome.log), 20).rstrip("\n"))


@task(
    help={
        "task": "Task name from shards.toml.",
        "json": "Print the verdict as JSON (see README: verdict JSON).",
        "junit": "Also write the verdict as JUnit XML to this file, one testcase per shard.",
        "wait": f"Poll until no shard is {word_list(ordered(WAITED_ON))}, or until --timeout.",
        "timeout": "With --wait: how long to wait, as a duration with a unit (default 10m).",
        "engine": COMMON_HELP["engine"],
        "run": COMMON_HELP["run"],
        "shards": COMMON_HELP["shards"],
        "config": COMMON_HELP["config"],
        "results": COMMON_HELP["results"],
    }
)
@user_errors
def verify(
    c,
    task,
    json=False,
    junit=None,
    wait=False,
    timeout=None,
    engine=None,
    run=None,
    shards=None,
    config=None,
    results=None,
):
    """Merge every shard's record into one verdict; exit 0 only if all passed."""
    setup = _setup(task, config=config, shards=shards, run=run, results=results)
    settings = _settings(setup, engine=engine, agent=None)
    deadline = time.monotonic() + (parse_duration(timeout) if timeout else 600.0)
    verdict = _judge(setup, settings.engine)
    while (
        wait and any(row.state in WAITED_ON for row in verdict.rows) and time.monotonic() < deadline
    ):
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        verdict = _judge(setup, settings.engine)
    if junit:
        report = Path(junit)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(verdict_to_junit(verdict), encoding="utf-8")
    if json:
        print(_json_dumps(verdict_to_json(verdict)))
    else:
        console = Console()
        console.say(render_table(verdict, color=console.color))
    if verdict.exit_code:
        raise Exit(code=verdict.exit_code)


def _json_dumps(data) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


ns = Collection(plan, shard, shard_all, verify)
