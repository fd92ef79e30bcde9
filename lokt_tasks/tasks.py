"""The invoke tasks: plan, shard, shard-all, verify, durations, status.

Thin on purpose: each task reads its options, asks the layers below, prints
and picks the exit code. A LoktTasksError (or an OSError on a path) becomes
one line on stderr and its exit code (see lokt_tasks.errors).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from json import dumps
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional

from invoke import Collection, Exit, task

from . import errors
from .ci import shard_from_env, touch_bazel_status_file
from .config import (
    DEFAULT_LEASE_PREFIX,
    Config,
    TaskConfig,
    display_path,
    find_config,
    get_task,
    load_config,
    parse_duration,
    slot_budget,
)
from .console import Console, LiveBoard
from .durations import (
    DurationsError,
    ShardReport,
    TaskTimings,
    fold_reports,
    fold_warnings,
    pin_timings,
    read_durations,
    read_task_timings,
)
from .engine import DEFAULT_WAIT_TIMEOUT, Engine, StopRequest, find_lock_root, make_identity
from .errors import LoktTasksError, RerunError, UsageError
from .flags import CONFIG_KEY, FLAGS, Command, configured_defaults, long_flag, unknown_option
from .junit import runner_items
from .leases import slot_lock
from .plan import (
    Plan,
    build_plan,
    check_python_modules,
    plan_to_json,
    render_plan,
    rerun_groups,
    rerun_plan,
    takes_whole_items,
)
from .report import render_html, render_timeline
from .results import (
    Record,
    RecordStore,
    current_run_key,
    default_results_dir,
    head_commit,
    parse_time,
    rerun_key,
)
from .run import RunSettings, ShardOutcome, TimingsStore, run_shard, select_engine
from .schedule import is_finished, run_all, run_queue, stop_on_signals
from .states import (
    FAILED_OUTCOMES,
    LOCKED_OUT,
    PASSED_OUTCOMES,
    RAN_OUTCOMES,
    RERUN_BY_FAILED,
    SHOW_LOG_OUTCOMES,
    WAITED_ON,
    Progress,
    RecordOutcome,
    RunOutcome,
    ShardState,
    ordered,
)
from .status import gather, render_status, status_to_json
from .system import reader_gone, untrusted_directory, write_atomically
from .text import word_list
from .verdict import (
    Rerun,
    Verdict,
    holder_is_live,
    judge_live,
    plan_test_ids,
    render_table,
    tail,
    verdict_to_json,
    verdict_to_junit,
    with_reruns,
)

#: The states ``shard-all --failed`` runs again, for its messages.
RERUN_WORDS = word_list(ordered(RERUN_BY_FAILED))
#: Lines of a failed shard's log that ``shard-all`` shows.
LOG_TAIL_LINES = 20


def _command(name: Optional[str] = None) -> Callable:
    """An invoke task of the decorated body behind user_errors, whose flags and
    their help come from flags.FLAGS (see flags.Command)."""
    return lambda body: task(name=name, klass=Command)(user_errors(body))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def user_errors(body):
    """Turn LoktTasksError into invoke.Exit: one line on stderr and its exit code."""
    command = body.__name__.replace("_", "-")
    options = [long_flag(name) for name in inspect.signature(body).parameters if name in FLAGS]

    @functools.wraps(body)
    def wrapper(c, *args, **kwargs):
        task = args[0] if args else kwargs.get("task", "")  # "": a command without one (status)
        try:
            if task.startswith("-"):  # an unfilled positional takes the next word
                unknown = unknown_option(task, options)
                raise UsageError(f"{command}: {unknown}; the task name comes first")
            for name, value in kwargs.items():  # NOTE: --results "" is no directory
                if value == "" and name in FLAGS and FLAGS[name].value:
                    raise UsageError(f"{long_flag(name)} needs a value ({FLAGS[name].value})")
            return body(c, *args, **kwargs)
        except BrokenPipeError:
            # The reader went away (`verify --json | head`): stop quietly, as
            # other command-line tools do, without a traceback at exit.
            raise Exit(code=reader_gone()) from None
        except (LoktTasksError, OSError) as error:  # an OSError: a path we could not use
            failure = error if isinstance(error, LoktTasksError) else errors.storage_error(error)
            raise Exit(f"lokt-tasks: error: {failure}", code=failure.exit_code) from None

    return wrapper


@dataclass
class Setup:
    """What every command needs: the task's config, its plan, where records go,
    the defaults invoke's configuration gives (flags.configured_defaults) and
    the whole of shards.toml (reruns of failed tests are planned from it)."""

    task: TaskConfig
    plan: Plan
    store: RecordStore
    run_key: str
    lock_root: Path
    defaults: Dict[str, Any]
    config: Config
    #: Where this run's shards record their times (None: the task has no durations file).
    timings: Optional[TimingsStore] = None
    #: Durations files the command already warned are unreadable.
    warned: FrozenSet[Path] = frozenset()


#: How a command takes a ``timings`` task's times: pin them for the run (or
#: use the run's pinned copy), only use a pinned copy that exists (plan), or
#: use the current times (plan --current).
PIN, PEEK, CURRENT = "pin", "peek", "current"


def _setup(
    c,
    task_name: str,
    *,
    config: Optional[str],
    shards: Optional[str],
    run: Optional[str],
    results: Optional[str],
    timings: str = PIN,
    runs: bool = False,
) -> Setup:
    """Load the config and plan the task (see PIN, PEEK and CURRENT); with
    ``runs`` (the command runs shards), check first that ``{python}`` can.
    Prints the plan's warnings on stderr, except for ``plan``, which shows
    them itself."""
    defaults = configured_defaults(c.config.get(CONFIG_KEY))
    loaded = load_config(Path(config) if config else find_config(Path.cwd()))
    task_config = get_task(loaded, task_name)
    lock_root = find_lock_root(loaded.root)
    results_dir = _results_dir(results, loaded, lock_root, defaults)
    for directory, what in ((lock_root, "lock root"), (results_dir, "results directory")):
        problem = untrusted_directory(directory)
        if problem:
            raise errors.StorageError(f"{what}: {problem}; its records and locks cannot be trusted")
    store = RecordStore(results_dir)
    written_by_runs = [t.durations for t in loaded.tasks.values() if t.durations]
    run_key = current_run_key(loaded.root, explicit=run, ignore=written_by_runs)
    check_python_modules(loaded, task_config, run=runs)
    warnings: List[str] = []
    durations: Optional[TaskTimings] = None
    committed = TaskTimings()
    warned = set()
    if task_config.durations is not None:
        committed, warning = read_task_timings(task_config.durations, task_name)
        local_path = store.local_durations_path(task_name)
        local, local_warning = read_task_timings(local_path, task_name)
        for path, said in ((task_config.durations, warning), (local_path, local_warning)):
            if said:
                warnings.append(said)
                warned.add(path)
        durations = local.over(committed)
        pinned = store.pinned_durations_path(task_name, run_key)
        if task_config.split == "timings" and timings != CURRENT:
            current = durations
            try:
                if timings == PIN:
                    durations = pin_timings(pinned, task_name, run_key, lambda: current)
                elif pinned.exists():
                    durations = read_durations(pinned).task(task_name, pinned_by=run_key)
            except DurationsError as error:
                # NOTE: every agent of the run reads the same bad copy, so all plan alike.
                warnings.append(f"{error}; the run plans without timings")
                durations = TaskTimings(pinned_by=run_key)
    plan = build_plan(loaded, task_name, shards=_count(shards, "--shards"), durations=durations)
    plan = replace(plan, warnings=tuple(warnings) + plan.warnings)
    if timings != PIN:
        return Setup(task_config, plan, store, run_key, lock_root, defaults, loaded)
    # NOTE: never in silence: a lowered shard count, items in no shard or in two
    for warning in plan.warnings:
        _warn(warning)
    recorder = None
    if task_config.durations is not None:
        recorder = TimingsStore(store.local_durations_path(task_name), task_name, committed)
    return Setup(
        task_config,
        plan,
        store,
        run_key,
        lock_root,
        defaults,
        loaded,
        recorder,
        frozenset(warned),
    )


def _results_dir(
    flag: Optional[str], loaded: Optional[Config], lock_root: Path, defaults: Dict[str, Any]
) -> Path:
    """Where records go: ``--results``, else results in shards.toml (``loaded``,
    None without one), else invoke's configuration, else beside the lock root."""
    # NOTE: shards.toml (the project's) above invoke's configuration (the user's,
    # the machine's), a flag above both: README, invoke configuration.
    if flag:
        return Path(flag).resolve()
    if loaded is not None and loaded.results:
        return loaded.results
    if not defaults.get("results"):
        return default_results_dir(lock_root)
    # relative to shards.toml, as results there is (else to the current directory)
    base = loaded.root if loaded is not None else Path.cwd()
    return Path(os.path.normpath(base / defaults["results"]))


def _warn(warning: str) -> None:
    print(f"lokt-tasks: warning: {warning}", file=sys.stderr)


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
    identity = make_identity(agent, default=setup.defaults.get("agent"))
    # NOTE: the task's "auto" (its default) leaves the choice to this machine.
    chosen = engine or (setup.task.engine if setup.task.engine != "auto" else None)
    return RunSettings(
        cwd=setup.plan.cwd,
        store=setup.store,
        run_key=setup.run_key,
        engine=select_engine(
            chosen or setup.defaults.get("engine", "auto"), identity, root=setup.lock_root
        ),
        identity=identity,
        ttl=setup.task.ttl,
        timings=setup.timings,
        wait=wait,
        timeout=timeout,
        shard_timeout=setup.task.timeout,
        shard_timeout_text=setup.task.timeout_text or "",
        retries=setup.task.retries,
        flaky=setup.task.flaky,
        slots=slot_budget(setup.config.slots, slots),
        lease_prefix=setup.config.lease_prefix,
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


def _wait_timeout(setup: Setup, raw: Optional[str]) -> Optional[float]:
    """--wait-timeout in seconds, else the configured one, else None (the default)."""
    return parse_duration(raw) if raw else setup.defaults.get("wait_timeout")


def _refuse_dry_run(c) -> None:
    """invoke's --dry promises to echo commands instead of running them; lokt-tasks
    runs its commands itself, so it cannot keep that promise and runs nothing."""
    if c.config.get("run", {}).get("dry"):
        raise UsageError(
            "invoke's --dry (echo commands instead of running them) does not apply:"
            " lokt-tasks runs its shards itself; 'plan TASK' shows what each shard would run"
        )


def _judge(setup: Setup, engine) -> Verdict:
    """The run's verdict, with the reruns of its failed tests folded in."""
    verdict = judge_live(setup.plan, setup.store, engine.holder, run_key=setup.run_key)
    reruns = []
    for number, groups in setup.store.reruns(setup.plan.task, setup.run_key):
        key = rerun_key(setup.run_key, number)
        if groups is None:
            reruns.append(Rerun(number, key, None, "its plan.json cannot be read; not counted"))
            continue
        plan = rerun_plan(setup.config, setup.plan.task, groups)
        reruns.append(Rerun(number, key, judge_live(plan, setup.store, engine.holder, run_key=key)))
    return with_reruns(verdict, reruns, flaky=setup.task.flaky)


def _interrupted(stop: StopRequest, message: str) -> Exit:
    return Exit(f"lokt-tasks: {message}", code=128 + (stop.signum or signal.SIGINT))


@_command()
def plan(c, task, json=False, shards=None, config=None, current=False, run=None, results=None):
    """Show what each shard would run, and how balanced the shards are.

    Inside a run whose timings are pinned, the plan is made from the pinned
    copy, as the run's shards are, and says so; --current plans from the
    current timings."""
    mode = CURRENT if current else PEEK
    setup = _setup(c, task, config=config, shards=shards, run=run, results=results, timings=mode)
    if json:
        print(dumps(plan_to_json(setup.plan), indent=2))
        return
    # NOTE: the plan's warnings are part of what it shows (render_plan), once.
    Console().say(render_plan(setup.plan))


@_command()
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
    wait_timeout=None,
    log=False,
    force=False,
    config=None,
    results=None,
    slots=None,
):
    """Run one shard of TASK under its lock (or, with --id next, every unclaimed one).

    A shard that already passed in this run (under the same plan) is not run
    again, as in shard-all, unless --force."""
    if id is None:
        raise UsageError(
            "shard needs --id: a shard number, 'next' (queue mode)"
            " or 'auto' (from the CI environment)"
        )
    if id == "next" and force:
        raise UsageError("--force does not apply to --id next: queue mode runs unfinished shards")
    _refuse_dry_run(c)
    if id == "auto":
        found = shard_from_env(os.environ)
        shards, index = str(found.total), found.index
        touch_bazel_status_file(os.environ)
    else:
        shards, index = total or shards, None if id == "next" else _shard_id(id)
    try:
        setup = _setup(c, task, config=config, shards=shards, run=run, results=results, runs=True)
        _make_results(setup)
    except UsageError as error:
        if id != "auto":
            raise
        # The shard count came from the CI, not from the command line: say so.
        raise UsageError(f"--id auto ({found.provider}, {found.total} shards): {error}") from None
    patience = _wait_timeout(setup, wait_timeout)
    settings = _settings(
        setup, engine=engine, agent=agent, wait=wait, timeout=patience, slots=slots
    )
    console = Console()
    banner = f"{settings.engine.describe()}; agent {settings.identity.agent}; run {setup.run_key}"
    banner += _budget_note(settings)
    stop = StopRequest()
    if index is None:
        console.note(banner)
        queue_patience = DEFAULT_WAIT_TIMEOUT if patience is None else patience
        _shard_queue(setup, settings, console, stop, to_log=log, patience=queue_patience)
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
    if not force and _passed(setup, chosen):
        console.say(_already_passed(chosen, setup.run_key))
        return
    console.note(banner)
    console.note(f"{chosen.lock_name}: {_plural(len(chosen.items), 'item')}")
    skip = () if force else ordered(PASSED_OUTCOMES)
    with stop_on_signals(stop):
        waits = functools.partial(_lease_note, console, chosen.lock_name)
        outcome = run_shard(chosen, settings, to_log=log, skip=skip, stop=stop, on_wait=waits)
    _warn_about_timings(setup, [outcome])
    if outcome.state == RunOutcome.DONE:  # passed meanwhile, by another agent
        console.say(_already_passed(chosen, setup.run_key))
        return
    _finish_one(outcome, console, stop)


def _passed(setup: Setup, shard) -> bool:
    """Whether ``shard``'s record says passed, in this run and under this plan."""
    record = setup.store.read(shard.task, setup.run_key, shard.index)
    return (
        isinstance(record, Record)
        and record.fingerprint == shard.fingerprint
        and record.outcome in PASSED_OUTCOMES
    )


def _already_passed(shard, run_key: str) -> str:
    return (
        f"{shard.lock_name}: already passed in run {run_key} under this plan; nothing ran"
        " (--force runs it again)"
    )


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
    0 when every shard it ran passed (or it ran none), 3 when one failed or
    timed out, 4 when one was lost or stopped by a signal sent to it alone, 6 on
    an engine error, 130/143 when this agent was interrupted."""

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
    _warn_about_timings(setup, outcomes)
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
    if states & FAILED_OUTCOMES:
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
    if outcome.state == RunOutcome.TIMED_OUT and record is not None:
        return f" ({record.message})"
    if record is None or not (record.signal or record.exit_code):
        return ""
    return f" ({record.signal})" if record.signal else f" (exit {record.exit_code})"


def _warn_about_timings(setup: Setup, outcomes: Iterable[ShardOutcome]) -> None:
    """One warning per problem with recording the shards' times (see durations.fold_warnings)."""
    for warning in fold_warnings((o.timings for o in outcomes), named=setup.warned):
        _warn(warning)


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
        how = "timed out" if outcome.state == RunOutcome.TIMED_OUT else "failed"
        raise Exit(f"lokt-tasks: {label} {how}{detail}", code=errors.FAILED)


@_command(name="shard-all")
def shard_all(
    c,
    task,
    jobs=None,
    force=False,
    failed=False,
    failed_tests=False,
    agent=None,
    engine=None,
    run=None,
    shards=None,
    config=None,
    results=None,
    slots=None,
):
    """Run every shard of TASK in parallel on this machine, then print the verdict.

    Shards that already passed in this run (under the same plan) are skipped
    unless --force; --failed runs only the ones that did not pass."""
    _refuse_dry_run(c)
    if failed and failed_tests:
        raise UsageError("--failed and --failed-tests cannot be combined: use one, then the other")
    setup = _setup(c, task, config=config, shards=shards, run=run, results=results, runs=True)
    _make_results(setup)
    settings = _settings(setup, engine=engine, agent=agent, slots=slots)
    workers = (
        _count(jobs, "--jobs") or setup.task.jobs or setup.defaults.get("jobs") or os.cpu_count()
    )
    workers = workers or 1
    console = Console()
    verdict, running = _judge(setup, settings.engine), settings
    if failed_tests:
        running, todo, why = _failed_tests(setup, settings, verdict, workers, console)
    else:
        if failed:
            wanted, why = RERUN_BY_FAILED, f"no shard is {RERUN_WORDS}"
        else:
            wanted = {state for state in ShardState if force or state != ShardState.PASSED}
            why = (
                "every shard already passed under this run and plan (use --force to run them again)"
            )
        todo = [shard for shard, row in zip(setup.plan.shards, verdict.rows) if row.state in wanted]
    if not todo:
        console.say(f"nothing to run: {why}")
    else:
        console.note(
            f"{settings.engine.describe()}; run {setup.run_key}; {workers} at once"
            + _budget_note(settings)
        )
        stop = StopRequest()
        labels, estimates = [s.lock_name for s in todo], [s.estimate for s in todo]
        board = LiveBoard(console, labels, estimates=estimates, jobs=workers)

        def on_change(shard, state, outcome):
            detail = _outcome_detail(outcome) if outcome else ""
            board.update(shard.lock_name, state, detail, report=_log_report(outcome, console))

        def on_lease_wait(shard, what):
            waiting = (Progress.WAITING, f"for {what}") if what else (Progress.RUNNING, "")
            board.update(shard.lock_name, *waiting)

        with stop_on_signals(stop), board:
            skip = () if force else ordered(PASSED_OUTCOMES)
            outcomes = run_all(
                todo,
                running,
                jobs=workers,
                stop=stop,
                on_change=on_change,
                skip=skip,
                on_lease_wait=on_lease_wait,
            )
        _warn_about_timings(setup, outcomes)
        if stop.is_set():
            raise _interrupted(
                stop, "interrupted; running shards were stopped and their locks released"
            )
    verdict = _judge(setup, settings.engine)  # with a rerun of failed tests folded in
    console.say(render_table(verdict, color=console.color))
    if verdict.exit_code:
        raise Exit(code=verdict.exit_code)


def _log_report(outcome: Optional[ShardOutcome], console: Console) -> str:
    """For a shard that ended failed, timed out, lost or in error: a heading and
    the last lines of its log, shown as soon as it ends; else ""."""
    if outcome is None or outcome.state not in SHOW_LOG_OUTCOMES or not outcome.log:
        return ""
    heading = (
        f"--- {outcome.shard.lock_name} {outcome.state}{_outcome_detail(outcome)}:"
        f" last lines of {outcome.log}"
    )
    log_tail = tail(Path(outcome.log), LOG_TAIL_LINES).rstrip("\n")
    return f"\n{console.paint(heading, outcome.state)}\n{log_tail}"


def _failed_tests(
    setup: Setup, settings: RunSettings, verdict: Verdict, jobs: int, console: Console
) -> tuple:
    """For ``shard-all --failed-tests``: the settings of a rerun of the run's
    failing tests (a run of its own, ``<run>/rerun-<K>``, under the locks
    ``<task>-rerun-<N>``), the shards of it to run, and why there are none.
    RerunError when the tests cannot be given back to the task's command."""
    if not any(shard.wants_junit for shard in setup.plan.shards):
        raise RerunError(
            f"task '{setup.plan.task}' writes no JUnit report ({{junit}} in run), so its"
            f" failed tests are not known; 'shard-all {setup.plan.task} --failed' reruns shards"
        )
    failing = [(row.shard, test) for row in verdict.rows if row.tests for test in row.tests.failing]
    for row in verdict.rows:
        if row.state in RERUN_BY_FAILED and not (row.tests and row.tests.failing):
            console.say(
                f"note: shard {row.shard} is {row.state} and names no failed test:"
                f" only 'shard-all {setup.plan.task} --failed' runs it again"
            )
    if not failing:
        return settings, [], "no test failed in this run (by the shards' JUnit reports)"
    try:
        items = runner_items(
            [test.case for _, test in failing],
            plan_test_ids(setup.plan),
            whole=takes_whole_items(setup.task),
        )
    except ValueError as error:
        raise RerunError(
            f"cannot rerun the failed tests of task '{setup.plan.task}': {error}"
        ) from None
    # NOTE: a rerun made before the failures' records ended ran an older failure.
    ended = [
        row.record.ended_at
        for row in verdict.rows
        if row.record is not None and row.tests and row.tests.failing
    ]
    since = max((moment for moment in ended if moment), key=parse_time, default="")
    number, groups = setup.store.new_rerun(
        setup.plan.task, setup.run_key, rerun_groups(items, jobs), since=since
    )
    key = rerun_key(setup.run_key, number)
    plan = rerun_plan(setup.config, setup.plan.task, groups)
    console.say(
        f"rerun {number}: {_plural(len(failing), 'failed test')} as"
        f" {_plural(len(items), 'item')} in {_plural(len(plan.shards), 'shard')} (run {key})"
    )
    judged = judge_live(plan, setup.store, settings.engine.holder, run_key=key)
    todo = [shard for shard, row in zip(plan.shards, judged.rows) if row.state in RERUN_BY_FAILED]
    why = f"every shard of rerun {number} passed or is running"
    # NOTE: no timings from reruns: their items are tests, not the task's items.
    return dataclasses.replace(settings, run_key=key, timings=None), todo, why


@_command()
def verify(
    c,
    task,
    json=False,
    junit=None,
    html=None,
    timeline=False,
    wait=False,
    wait_timeout=None,
    engine=None,
    run=None,
    shards=None,
    config=None,
    results=None,
):
    """Merge every shard's record into one verdict; exit 0 only if all passed."""
    if json and timeline:
        raise UsageError("--timeline adds to the table; --json carries the same data (timing)")
    setup = _setup(c, task, config=config, shards=shards, run=run, results=results)
    _results_exist(setup, results)
    settings = _settings(setup, engine=engine, agent=None)
    patience = _wait_timeout(setup, wait_timeout)
    deadline = time.monotonic() + (DEFAULT_WAIT_TIMEOUT if patience is None else patience)
    verdict = _judge(setup, settings.engine)
    while (
        wait and any(row.state in WAITED_ON for row in verdict.rows) and time.monotonic() < deadline
    ):
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        verdict = _judge(setup, settings.engine)
    if junit:
        _write_output(junit, verdict_to_junit(verdict), "--junit")
    # NOTE: the document (a git call for its commit, log tails) only when shown.
    document = None
    if json or html or timeline:
        document = verdict_to_json(verdict, commit=head_commit(setup.plan.cwd))
    if html:
        _write_output(html, render_html(document), "--html")
    if json:
        print(dumps(document, indent=2))
    else:
        console = Console()
        console.say(render_table(verdict, color=console.color))
        if timeline:
            width = shutil.get_terminal_size((100, 24)).columns
            console.say(render_timeline(document, width=width, color=console.color))
    if verdict.exit_code:
        raise Exit(code=verdict.exit_code)


def _make_results(setup: Setup) -> None:
    """For commands that run shards, once the plan holds: make the results
    directory, or say which one is unusable before any shard starts."""
    try:
        setup.store.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        where = f"results directory {setup.store.root}"
        raise errors.StorageError(f"{where}: {error.strerror or error}") from None


def _results_exist(setup: Setup, results: Optional[str]) -> None:
    """For commands that read records: a --results directory that does not
    exist is a typo (a CI artifact's path), not a run whose shards are missing."""
    if results and not setup.store.root.is_dir():
        raise UsageError(f"--results {results}: no such directory; nothing was recorded there")


def _write_output(path: str, text: str, flag: str) -> None:
    """Write ``text`` whole (a temporary file renamed) to the file ``flag`` names,
    making its directory; a directory in its place is a usage error, a path that
    cannot be written a storage error, each naming the flag and the path."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, not a file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, text.encode("utf-8"), durable=False)
    except FileExistsError as error:  # NOTE: what mkdir says of a file on the way
        raise errors.StorageError(f"{flag} {path}: {error.filename} is not a directory") from None
    except OSError as error:
        raise errors.StorageError(f"{flag} {path}: {error.strerror or error}") from None


@_command()
def durations(c, task, run=None, shards=None, config=None, results=None):
    """Fold the JUnit reports of this run's shards into TASK's durations file.

    The durations file is the one to commit: runs record their times under
    the results directory, never in the checkout. A report is folded into
    the file once; items no longer in the task's plan are dropped from it."""
    setup = _setup(c, task, config=config, shards=shards, run=run, results=results)
    _results_exist(setup, results)
    path = setup.task.durations
    if path is None or not any(shard.wants_junit for shard in setup.plan.shards):
        raise UsageError(
            f"task '{task}' writes no JUnit report, so there are no times to fold:"
            " give its run a report path, as in --junitxml={junit}"
        )
    counted = setup.store.counted_reports(task, setup.run_key, setup.plan.shards)
    reports = [
        ShardReport(
            shard.lock_name,
            report,
            shard.items,
            record.outcome == RecordOutcome.PASSED,
            record.attempt,
        )
        for shard, record, report in counted
    ]
    summary = fold_reports(
        path,
        task,
        reports,
        root=setup.plan.cwd,
        items={item for shard in setup.plan.shards for item in shard.items},
        ledger=setup.store.fold_ledger_path(task, setup.run_key),
    )
    for warning in fold_warnings([summary], named=setup.warned):
        _warn(warning)
    counted_shards = {shard.index for shard, _, _ in counted}
    without = [str(s.index) for s in setup.plan.shards if s.index not in counted_shards]
    said = [f"{display_path(path)}: run {setup.run_key}"]
    if summary.folded:
        said.append(
            f"{_plural(len(summary.folded), 'report')} folded in"
            f" ({_plural(summary.tests, 'test time')}, {_plural(len(summary.items), 'item')})"
        )
    if summary.already:
        said.append(f"{_plural(len(summary.already), 'report')} already folded in before")
    if summary.dropped:
        said.append(f"{_plural(summary.dropped, 'item')} no longer in task '{task}' dropped")
    if without:
        said.append(f"no report that counts for shard {', '.join(without)}")
    said.append("rewritten" if summary.written else "unchanged")
    Console().say("; ".join(said))


@_command()
def status(c, json=False, config=None, results=None, slots=None):
    """Show every shard running on this machine now, and the slots in use and free.

    Every task, run, agent and worktree sharing the lock root: each shard's run,
    state, agent, worktree, slot, resources and times, and who holds each lease."""
    defaults = configured_defaults(c.config.get(CONFIG_KEY))
    found = Path(config) if config else None
    if found is None:
        try:
            found = find_config(Path.cwd())
        except errors.ConfigError:
            found = None  # no shards.toml here: the lock root's defaults
    loaded = load_config(found) if found is not None else None
    lock_root = find_lock_root(loaded.root if loaded else Path.cwd())
    report = gather(
        Engine(make_identity("status"), lock_root).held_locks(),
        RecordStore(_results_dir(results, loaded, lock_root, defaults)),
        lock_root=str(lock_root),
        lease_prefix=loaded.lease_prefix if loaded else DEFAULT_LEASE_PREFIX,
        budget=slot_budget(loaded.slots if loaded else None, slots),
    )
    if json:
        print(dumps(status_to_json(report), indent=2))
        return
    console = Console()
    console.say(render_status(report, color=console.color))


ns = Collection(plan, shard, shard_all, verify, durations, status)
