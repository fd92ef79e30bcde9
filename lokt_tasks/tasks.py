"""The invoke tasks: plan, shard, shard-all, verify, status.

Thin on purpose: each task reads its options, asks the layers below, prints
and picks the exit code. A LoktTasksError (or an OSError on a path) becomes
one line on stderr and its exit code (see lokt_tasks.errors).
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from json import dumps
from pathlib import Path
from typing import Callable, Optional

from invoke import Collection, Exit, task

from . import errors
from .ci import shard_from_env, touch_bazel_status_file
from .config import (
    DEFAULT_LEASE_PREFIX,
    SLOTS_ENV,
    Config,
    TaskConfig,
    find_config,
    get_task,
    load_config,
    parse_duration,
    slot_budget,
)
from .console import Console, LiveBoard
from .durations import pin_durations
from .engine import DEFAULT_WAIT_TIMEOUT, Engine, StopRequest, find_lock_root, make_identity
from .errors import LoktTasksError, UsageError
from .leases import slot_lock
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
    Progress,
    RunOutcome,
    ShardState,
    ordered,
)
from .status import gather, render_status, status_to_json
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
    "run": "Run key that groups the records of one run"
    " (default: $LOKT_TASKS_RUN, else the git commit).",
    "results": "Directory of shard records"
    " (default: shared by every worktree, beside lokt's lock root).",
    "engine": "Lock engine: auto (lokt if found, else embedded), lokt or embedded.",
    "agent": "Name of this agent (default: $LOKT_AGENT_ID, else generated)."
    " Each agent gets its own lokt owner.",
    "slots": f"The machine's slot budget: N or 'cpus' (default: ${SLOTS_ENV},"
    " else slots in shards.toml; unset: no budget).",
}

#: The states ``shard-all --failed`` runs again, for its help and its messages.
RERUN_WORDS = word_list(ordered(RERUN_BY_FAILED))


def _command(common: str, name: Optional[str] = None, **specific: str) -> Callable:
    """An invoke task of the decorated body behind user_errors, with the help of
    ``specific`` options and COMMON_HELP's for the names in ``common``."""
    shared = {option: COMMON_HELP[option] for option in common.split()}
    texts = {"task": "Task name from shards.toml.", **specific, **shared}

    def decorate(body):
        takes = inspect.signature(body).parameters  # status takes no task
        return task(name=name, help={k: v for k, v in texts.items() if k in takes})(
            user_errors(body)
        )

    return decorate


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def user_errors(body):
    """Turn LoktTasksError into invoke.Exit: one line on stderr and its exit code."""
    command = body.__name__.replace("_", "-")

    @functools.wraps(body)
    def wrapper(c, *args, **kwargs):
        task = args[0] if args else kwargs.get("task", "")  # "": a command without one
        # invoke hands an unfilled positional the next word, even "--help".
        if task in ("-h", "--help"):
            print(
                f"usage: invoke {command} TASK [options]\n\n  {body.__doc__}\n\n"
                f"'invoke --help {command}' lists the options."
            )
            return
        try:
            if task and task.startswith("-"):
                raise UsageError(
                    f"{command}: expected a task name before {task!r};"
                    f" see 'invoke --help {command}'"
                )
            return body(c, *args, **kwargs)
        except BrokenPipeError:
            # The reader went away (`verify --json | head`): stop quietly, as
            # other command-line tools do, without a traceback at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=128 + signal.SIGPIPE) from None
        except (LoktTasksError, OSError) as error:  # an OSError: a path we could not use
            failure = error if isinstance(error, LoktTasksError) else errors.storage_error(error)
            raise Exit(f"lokt-tasks: error: {failure}", code=failure.exit_code) from None

    return wrapper


@dataclass
class Setup:
    """What every command needs: the task's config, its plan, where records go."""

    task: TaskConfig
    plan: Plan
    store: RecordStore
    run_key: str
    lock_root: Path
    config: Optional[Config] = None


def _setup(
    task_name: str,
    *,
    config: Optional[str],
    shards: Optional[str],
    run: Optional[str],
    results: Optional[str],
    pin: bool = True,
) -> Setup:
    """Load the config and plan the task. With ``pin``, a ``timings`` task plans
    from the timings pinned for this run (see durations.pin_durations)."""
    loaded = load_config(Path(config) if config else find_config(Path.cwd()))
    task_config = get_task(loaded, task_name)
    lock_root = find_lock_root(loaded.root)
    results_dir = (
        Path(results).resolve() if results else loaded.results or default_results_dir(lock_root)
    )
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
    if pin:  # NOTE: never in silence: a lowered shard count, items in no shard or in two
        for warning in plan.warnings:
            print(f"lokt-tasks: warning: {warning}", file=sys.stderr)
    return Setup(task_config, plan, store, run_key, lock_root, loaded)


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
    setup: Setup,
    *,
    engine: Optional[str],
    agent: Optional[str],
    wait=False,
    timeout=None,
    slots: Optional[str] = None,
) -> RunSettings:
    identity = make_identity(agent)
    config = setup.config
    return RunSettings(
        cwd=setup.plan.cwd,
        store=setup.store,
        run_key=setup.run_key,
        engine=select_engine(engine or setup.task.engine, identity, root=setup.lock_root),
        identity=identity,
        ttl=setup.task.ttl,
        durations_file=setup.task.durations,
        wait=wait,
        timeout=timeout,
        slots=slot_budget(config.slots if config else None, slots),
        lease_prefix=config.lease_prefix if config else DEFAULT_LEASE_PREFIX,
    )


def _budget_note(settings: RunSettings) -> str:
    """``; slot budget 2 (lokt-tasks-slot-1..2)``, or "" without a budget."""
    if settings.slots is None:
        return ""
    first = slot_lock(settings.lease_prefix, 1)
    return f"; slot budget {settings.slots} ({first}..{settings.slots})"


def _lease_note(console: Console, lock_name: str, what: str) -> None:
    """Tell a wait for a lease, and its end."""
    console.note(f"{lock_name}: waiting for {what}" if what else f"{lock_name}: leases taken")


def _judge(setup: Setup, engine) -> Verdict:
    return judge_live(setup.plan, setup.store, engine.holder, run_key=setup.run_key)


def _interrupted(stop: StopRequest, message: str) -> Exit:
    return Exit(f"lokt-tasks: {message}", code=128 + (stop.signum or signal.SIGINT))


@_command("config shards", json="Print the plan as JSON.")
def plan(c, task, json=False, shards=None, config=None):
    """Show what each shard would run, and how balanced the shards are."""
    setup = _setup(task, config=config, shards=shards, run="plan", results=None, pin=False)
    if json:
        print(dumps(plan_to_json(setup.plan), indent=2))
        return
    console = Console()
    console.say(render_plan(setup.plan))
    for warning in setup.plan.warnings:
        console.say(console.paint(f"warning: {warning}", WARNING))


@_command(
    "agent engine run shards config results slots",
    id="Shard to run: a number from 1, 'next' (queue mode: claim shards until none is left)"
    " or 'auto' (from the CI environment).",
    total="The shard count the CI expects; a dynamic task is re-planned to it,"
    " an explicit one must match.",
    wait="Wait for the shard's lock instead of giving up when another agent holds it"
    " (--id next always waits).",
    timeout="With --wait, or with --id next for shards other agents hold: how long to wait,"
    " as a duration with a unit (default 10m; 0s: do not wait).",
    log="Write the command's output to the shard's log file instead of the terminal.",
)
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
    slots=None,
):
    """Run one shard of TASK under its lock (or, with --id next, every unclaimed one)."""
    if id is None:
        raise UsageError(
            "shard needs --id: a shard number, 'next' (queue mode)"
            " or 'auto' (from the CI environment)"
        )
    if id == "auto":
        found = shard_from_env(os.environ)
        shards, index = str(found.total), found.index
        touch_bazel_status_file(os.environ)
    else:
        shards, index = total or shards, None if id == "next" else _shard_id(id)
    try:
        setup = _setup(task, config=config, shards=shards, run=run, results=results)
    except UsageError as error:
        if id != "auto":
            raise
        # The shard count came from the CI, not from the command line: say so.
        raise UsageError(f"--id auto ({found.provider}, {found.total} shards): {error}") from None
    wait_timeout = parse_duration(timeout) if timeout else None
    settings = _settings(
        setup, engine=engine, agent=agent, wait=wait, timeout=wait_timeout, slots=slots
    )
    console = Console()
    console.note(
        f"{settings.engine.describe()}; agent {settings.identity.agent}; run {setup.run_key}"
        + _budget_note(settings)
    )
    stop = StopRequest()
    if index is None:
        patience = DEFAULT_WAIT_TIMEOUT if wait_timeout is None else wait_timeout
        _shard_queue(setup, settings, console, stop, to_log=log, patience=patience)
        return
    count = len(setup.plan.shards)
    asked = _count(shards, "--total") or count
    if count < index <= asked:  # NOTE: a spare CI runner: fewer items than runners
        console.say(
            f"no shard to run: task '{task}' has {_plural(count, 'shard')} of the {asked} asked"
            f" for (one item each at most), so runner {index} of {asked} has nothing to do"
        )
        return
    if not 1 <= index <= count:
        raise UsageError(
            f"--id {index} is out of range: task '{task}' has {_plural(count, 'shard')}"
            f" (1..{count})"
        )
    chosen = setup.plan.shards[index - 1]
    console.note(f"{chosen.lock_name}: {_plural(len(chosen.items), 'item')}")
    with stop_on_signals(stop):
        waits = functools.partial(_lease_note, console, chosen.lock_name)
        outcome = run_shard(chosen, settings, to_log=log, stop=stop, on_wait=waits)
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
    """Run shards until every one is finished (see schedule.run_queue), then say
    how many this agent ran and which shards, if any, are left to others. Exits
    0 when every shard it ran passed (or it ran none), 3 when one failed, 4 when
    one was lost or stopped by a signal sent to it alone, 6 on an engine error,
    130/143 when this agent was interrupted."""

    def finished(shard) -> bool:
        return is_finished(setup.store.read(shard.task, setup.run_key, shard.index), shard)

    def on_change(shard, state, outcome):
        if outcome is None:
            console.note(f"{shard.lock_name}: claiming")
        else:
            painted = console.paint(state, state)
            console.say(f"{shard.lock_name}: {painted}{_outcome_detail(outcome)}")

    def on_wait(held):
        console.note(f"queue: waiting for {_held_list(held, settings.engine)}")

    def on_lease_wait(shard, what):
        _lease_note(console, shard.lock_name, what)

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
            on_lease_wait=on_lease_wait,
        )
    if stop.is_set():
        raise _interrupted(stop, "interrupted")
    # NOTE: a lost shard counts as run: its command may well have run, only
    # its final record is missing.
    tallied = ordered(RAN_OUTCOMES | {RunOutcome.LOST})
    ran = Counter(o.state for o in outcomes if o.state in tallied)
    tally = ", ".join(f"{ran[state]} {state}" for state in tallied if ran[state])
    summary = f"queue: agent {settings.identity.agent} ran {_plural(sum(ran.values()), 'shard')}"
    summary += f" ({tally})" if tally else ""
    left = [s for s in setup.plan.shards if not finished(s)]
    if not left:
        console.say(f"{summary}; every shard is finished")
    else:
        are = "are" if len(left) != 1 else "is"
        held = _held_list(left, settings.engine)
        console.say(f"{summary}; {_plural(len(left), 'shard')} {are} not finished: {held}")
    states = {o.state for o in outcomes}
    if RunOutcome.ERROR in states:
        raise Exit(code=errors.ENGINE)
    if RunOutcome.FAILED in states:
        raise Exit(code=errors.FAILED)
    if states & {RunOutcome.LOST, RunOutcome.INTERRUPTED}:
        raise Exit(code=errors.INCOMPLETE)


def _held_list(shards, engine) -> str:
    """``a-shard-1 (held by agent x, pid 1 on h), a-shard-2 (frozen by o)``: who has each shard."""
    described = []
    for shard in shards:
        frozen, holder = engine.frozen_by(shard.lock_name), engine.holder(shard.lock_name)
        if frozen is not None:
            described.append(f"{shard.lock_name} (frozen by {frozen.owner})")
        elif holder_is_live(holder):
            who = f"agent {holder.agent_id}, pid {holder.pid} on {holder.host}"
            described.append(f"{shard.lock_name} (held by {who})")
        else:
            described.append(shard.lock_name)
    return ", ".join(described)


def _outcome_detail(outcome: ShardOutcome) -> str:
    guard, record = outcome.guard, outcome.record
    if outcome.state in LOCKED_OUT:
        holder = guard.holder
        if holder is None:
            return f" ({guard.message})" if guard.message else ""
        return (
            f" by {holder.owner} (agent {holder.agent_id}, pid {holder.pid} on {holder.host},"
            f" for {holder.age_sec:.0f}s)"
        )
    if outcome.state == RunOutcome.ERROR:
        return f": {guard.message}"
    if record is None or not (record.signal or record.exit_code):
        return ""
    return f" ({record.signal})" if record.signal else f" (exit {record.exit_code})"


def _finish_one(outcome: ShardOutcome, console: Console, stop: StopRequest) -> None:
    label, detail = outcome.shard.lock_name, _outcome_detail(outcome)
    if outcome.state == RunOutcome.PASSED:
        console.say(f"{label}: {console.paint(outcome.state, outcome.state)}")
    elif outcome.state in LOCKED_OUT:
        raise Exit(f"lokt-tasks: {label} is {outcome.state}{detail}; nothing ran", code=errors.HELD)
    elif outcome.state == RunOutcome.ERROR:
        raise Exit(f"lokt-tasks: error: {label}{detail}", code=errors.ENGINE)
    elif outcome.state == RunOutcome.INTERRUPTED or stop.is_set():
        raise _interrupted(stop, f"{label} interrupted")
    elif outcome.state == RunOutcome.LOST:
        why = outcome.guard.message or "its attempt died"
        message = f"lokt-tasks: {label}: ended without its final record ({why})"
        raise Exit(message, code=errors.INCOMPLETE)
    else:
        raise Exit(f"lokt-tasks: {label} failed{detail}", code=errors.FAILED)


@_command(
    "agent engine run shards config results slots",
    name="shard-all",
    jobs="How many shards run at once (default: the task's jobs, else the CPU count).",
    force="Run shards that already passed under this run key and plan too.",
    failed=f"Run only the shards that are {RERUN_WORDS} (see verify).",
)
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
    slots=None,
):
    """Run every shard of TASK in parallel on this machine, then print the verdict."""
    setup = _setup(task, config=config, shards=shards, run=run, results=results)
    settings = _settings(setup, engine=engine, agent=agent, slots=slots)
    workers = _count(jobs, "--jobs") or setup.task.jobs or os.cpu_count() or 1
    console = Console()
    console.note(
        f"{settings.engine.describe()}; run {setup.run_key}; {workers} at once"
        + _budget_note(settings)
    )
    rows = _judge(setup, settings.engine).rows  # one per planned shard, in plan order
    if failed:
        wanted, why = RERUN_BY_FAILED, f"no shard is {RERUN_WORDS}"
    else:
        wanted = {state for state in ShardState if force or state != ShardState.PASSED}
        why = "every shard already passed under this run and plan (use --force to run them again)"
    todo = [shard for shard, row in zip(setup.plan.shards, rows) if row.state in wanted]
    if not todo:
        console.say(f"nothing to run: {why}")
    else:
        stop = StopRequest()
        board = LiveBoard(console, [s.lock_name for s in todo])

        def on_change(shard, state, outcome):
            board.update(shard.lock_name, state, _outcome_detail(outcome) if outcome else "")

        def on_lease_wait(shard, what):
            waiting = (Progress.WAITING, f"for {what}") if what else (Progress.RUNNING, "")
            board.update(shard.lock_name, *waiting)

        with stop_on_signals(stop), board:
            skip = () if force else ordered(PASSED_OUTCOMES)
            outcomes = run_all(
                todo,
                settings,
                jobs=workers,
                stop=stop,
                on_change=on_change,
                skip=skip,
                on_lease_wait=on_lease_wait,
            )
        for outcome in outcomes:
            if outcome.state in SHOW_LOG_OUTCOMES and outcome.log:
                heading = (
                    f"--- {outcome.shard.lock_name} {outcome.state}{_outcome_detail(outcome)}:"
                    f" last lines of {outcome.log}"
                )
                log_tail = tail(Path(outcome.log), 20).rstrip("\n")
                console.say(f"\n{console.paint(heading, outcome.state)}\n{log_tail}")
        if stop.is_set():
            raise _interrupted(
                stop, "interrupted; running shards were stopped and their locks released"
            )
    verdict = _judge(setup, settings.engine)
    console.say(render_table(verdict, color=console.color))
    if verdict.exit_code:
        raise Exit(code=verdict.exit_code)


@_command(
    "engine run shards config results",
    json="Print the verdict as JSON (see README: verdict JSON).",
    junit="Also write the verdict as JUnit XML to this file, one testcase per shard.",
    wait=f"Poll until no shard is {word_list(ordered(WAITED_ON))}, or until --timeout.",
    timeout="With --wait: how long to wait, as a duration with a unit (default 10m).",
)
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
        Path(junit).parent.mkdir(parents=True, exist_ok=True)
        Path(junit).write_text(verdict_to_junit(verdict), encoding="utf-8")
    if json:
        print(dumps(verdict_to_json(verdict), indent=2))
    else:
        console = Console()
        console.say(render_table(verdict, color=console.color))
    if verdict.exit_code:
        raise Exit(code=verdict.exit_code)


@_command(
    "config results slots",
    json="Print the status as JSON (see README: status JSON).",
)
def status(c, json=False, config=None, results=None, slots=None):
    """Show every shard running on this machine now, and the slots in use and free.

    Every task, run, agent and worktree sharing the lock root: each shard's run,
    state, agent, worktree, slot, resources and times, and who holds each lease."""
    found = Path(config) if config else None
    if found is None:
        try:
            found = find_config(Path.cwd())
        except errors.ConfigError:
            found = None  # no shards.toml here: the lock root's defaults
    loaded = load_config(found) if found is not None else None
    lock_root = find_lock_root(loaded.root if loaded else Path.cwd())
    results_dir = (
        Path(results).resolve()
        if results
        else (loaded.results if loaded and loaded.results else default_results_dir(lock_root))
    )
    report = gather(
        Engine(make_identity("status"), lock_root).held_locks(),
        RecordStore(results_dir),
        lock_root=str(lock_root),
        lease_prefix=loaded.lease_prefix if loaded else DEFAULT_LEASE_PREFIX,
        budget=slot_budget(loaded.slots if loaded else None, slots),
    )
    if json:
        print(dumps(status_to_json(report), indent=2))
        return
    console = Console()
    console.say(render_status(report, color=console.color))


ns = Collection(plan, shard, shard_all, verify, status)
