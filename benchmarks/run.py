#!/usr/bin/env python3
"""Benchmarks for lokt-tasks: orchestration overhead, balance, scale, end to end, slots.

    pip install -e .
    python benchmarks/run.py                 # full run: a few minutes on 2 cores
    python benchmarks/run.py --quick         # smoke run: smaller sizes, about 20 s
    python benchmarks/run.py --json out.json

It prints one table per section, then each goal with PASS or FAIL, and writes
every figure (with the raw samples) as JSON, by default to
benchmarks/results/latest.json. The rows for the lokt engine appear when
``lokt`` is on PATH (or $LOKT_BIN names it). docs/performance.md explains what
each number means.

Only the standard library and lokt-tasks itself are used, so it runs from a
fresh ``pip install -e .``. Everything happens in a temporary directory that
is removed at the end; locks go to a lock root of their own there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import lokt_tasks
from lokt_tasks.attempt import Attempt
from lokt_tasks.config import load_config
from lokt_tasks.durations import read_durations
from lokt_tasks.engine import make_identity
from lokt_tasks.lokt_engine import find_lokt_binary
from lokt_tasks.plan import build_plan
from lokt_tasks.results import RecordStore, finish, new_start_record, unstamped_json
from lokt_tasks.run import RunSettings, run_shard, select_engine
from lokt_tasks.verdict import judge_live, render_table, verdict_to_json

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

#: The goals the project set itself.
OVERHEAD_GOAL_MS = 50.0
PLAN_GOAL_S = 1.0
VERIFY_GOAL_S = 0.5
BALANCE_GOAL = 1.05
#: Four agents sharing a slot budget take at most this much longer than one agent.
SLOTS_GOAL = 1.10


@dataclass(frozen=True)
class Sizes:
    """How big each section is: the full run, or the quick smoke run."""

    repeat: int
    shard_counts: Tuple[int, int]
    balance_shards: Tuple[int, ...]
    scale_files: int
    verify_records: int
    e2e_files: int
    e2e_sleep: float
    #: Seconds each shard's command sleeps in the slots section.
    slots_sleep: float
    full: bool


FULL = Sizes(
    repeat=3,
    shard_counts=(8, 32),
    balance_shards=(2, 4, 8, 32),
    scale_files=100_000,
    verify_records=1_000,
    e2e_files=40,
    e2e_sleep=20.0,
    slots_sleep=1.0,
    full=True,
)
QUICK = Sizes(
    repeat=1,
    shard_counts=(2, 6),
    balance_shards=(2, 4, 8, 32),
    scale_files=5_000,
    verify_records=100,
    e2e_files=12,
    e2e_sleep=3.0,
    slots_sleep=0.2,
    full=False,
)


@dataclass
class Goal:
    name: str
    #: What the measured figure is compared against, in words.
    measured_as: str
    value: Optional[float]
    limit: float
    unit: str
    #: None when the goal was not judged (quick run, or lokt not on PATH).
    passed: Optional[bool]
    note: str = ""


@dataclass
class Report:
    machine: Dict[str, Any]
    settings: Dict[str, Any]
    sections: Dict[str, Any] = field(default_factory=dict)
    goals: List[Goal] = field(default_factory=list)


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Measured:
    wall: float
    #: User + system seconds of the process and every child it waited for.
    cpu: float
    max_rss_mib: float
    returncode: int
    stderr: str


def run_measured(argv: Sequence[str], *, cwd: Path, env: Dict[str, str]) -> Measured:
    """Run a command to its end; its wall time, CPU time and peak memory.

    ``os.wait4`` gives the resource usage of this one child (with its own
    waited-for children), so concurrent measurements cannot mix.
    """
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
    return Measured(
        wall,
        usage.ru_utime + usage.ru_stime,
        max_rss_mib(usage.ru_maxrss),
        process.returncode,
        stderr,
    )


def run_checked(
    argv: Sequence[str], *, cwd: Path, env: Dict[str, str], expect: int = 0
) -> Measured:
    measured = run_measured(argv, cwd=cwd, env=env)
    if measured.returncode != expect:
        raise SystemExit(
            "benchmark command failed (exit %d, expected %d): %s\n%s"
            % (measured.returncode, expect, " ".join(argv), measured.stderr[-2000:])
        )
    return measured


def run_parallel(
    commands: Sequence[Sequence[str]], *, jobs: int, cwd: Path, env: Dict[str, str]
) -> Tuple[float, float]:
    """Start ``commands`` with ``jobs`` at once, as shard-all does; wall and CPU seconds."""

    def run_one(argv: Sequence[str]) -> int:
        return subprocess.run(
            list(argv),
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(run_one, commands))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if any(codes):
        raise SystemExit(
            "baseline command failed: %s (exit codes %s)"
            % (" ".join(commands[0]), sorted(set(codes)))
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


@dataclass(frozen=True)
class Timed:
    #: Median wall seconds of the calls, and of this process's CPU seconds.
    wall: float
    cpu: float
    samples: List[float]
    result: Any


def time_call(function: Callable[[], Any], repeat: int) -> Timed:
    """Median wall and CPU seconds of ``repeat`` calls, with every wall sample.

    CPU time (this process only) is shown next to wall time because it
    hardly moves when other work competes for the machine.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return Timed(statistics.median(walls), statistics.median(cpus), walls, result)


def traced_peak_mib(function: Callable[[], Any]) -> float:
    """Peak of Python allocations during one call (tracemalloc; slows the call down)."""
    tracemalloc.start()
    try:
        function()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (1024 * 1024)


def max_rss_mib(value: int) -> float:
    """ru_maxrss in MiB: Linux reports KiB, macOS bytes."""
    return value / (1024 * 1024) if sys.platform == "darwin" else value / 1024


def own_peak_rss_mib() -> float:
    return max_rss_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def fit_line(points: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
    """Least-squares slope and intercept of y over x."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
    return slope, mean_y - slope * mean_x


def lokt_tasks_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "lokt_tasks", *args]


def bench_env(lock_root: Path) -> Dict[str, str]:
    """Our environment with its own lock root, no colours and no inherited run key."""
    env = dict(os.environ)
    for name in ("LOKT_TASKS_RUN", "LOKT_AGENT_ID"):
        env.pop(name, None)
    env["LOKT_ROOT"] = str(lock_root)
    env["NO_COLOR"] = "1"
    return env


# ---------------------------------------------------------------- machine


def machine_info(lokt: Optional[str]) -> Dict[str, Any]:
    """What the figures were measured on; no paths of this machine."""
    info: Dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "os": "%s %s (%s)" % (platform.system(), platform.release(), platform.machine()),
        "lokt_tasks": lokt_tasks.__version__,
        "lokt": lokt_version(lokt) if lokt else None,
        "load_average_at_start": load_average(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
            ).stdout.strip()
        except OSError:
            pass
    return platform.processor() or "unknown"


def lokt_version(binary: str) -> str:
    try:
        output = subprocess.run(
            [binary, "version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return output.splitlines()[0] if output else "unknown"


def load_average() -> Optional[List[float]]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------- overhead


def bench_overhead(
    work: Path, sizes: Sizes, jobs: int, lokt: Optional[str], say: Callable[[str], None]
) -> Dict[str, Any]:
    """shard-all over N no-op shards against the same N commands started directly.

    Each shard's command is ``true`` with its items as arguments. The
    baselines start the same number of commands with the same parallelism,
    from a thread pool like shard-all's: ``true`` itself, and for the lokt
    engine ``lokt guard --ttl 1m NAME -- true`` as well. Fitting wall time
    over two shard counts separates the one-off cost (interpreter start,
    config, plan, verdict) from the cost each further shard adds.
    """
    project = work / "overhead"
    (project / "items").mkdir(parents=True)
    for number in range(1, max(sizes.shard_counts) + 1):
        (project / "items" / ("item-%03d" % number)).write_text("x\n")
    (project / "shards.toml").write_text(
        '[tasks.noop]\nrun = "true {items}"\nglob = ["items/*"]\nshards = 1\nttl = "1m"\n'
    )
    env = bench_env(work / "locks-overhead")
    results_dir = work / "results-overhead"
    engines = ["embedded"] + (["lokt"] if lokt else [])
    # One untimed run per engine fills the bytecode cache and the OS's caches.
    for engine in engines:
        run_checked(
            lokt_tasks_command(
                "shard-all",
                "noop",
                "--config",
                str(project / "shards.toml"),
                "--shards",
                "2",
                "--engine",
                engine,
                "--run",
                "warm-up-" + engine,
                "--results",
                str(results_dir),
            ),
            cwd=project,
            env=env,
        )

    startup = {
        "python -c pass": [
            run_checked([sys.executable, "-c", "pass"], cwd=project, env=env).wall
            for _ in range(sizes.repeat + 2)
        ],
        "python -I -S -c pass": [
            run_checked([sys.executable, "-I", "-S", "-c", "pass"], cwd=project, env=env).wall
            for _ in range(sizes.repeat + 2)
        ],
        "lokt-tasks --version": [
            run_checked(lokt_tasks_command("--version"), cwd=project, env=env).wall
            for _ in range(sizes.repeat + 2)
        ],
    }
    say(
        "  start-up (median of %d): %s"
        % (
            sizes.repeat + 2,
            "; ".join(
                "%s %.0f ms" % (name, statistics.median(samples) * 1000)
                for name, samples in startup.items()
            ),
        )
    )

    by_engine: Dict[str, Any] = {}
    for engine in engines:
        series: Dict[str, Dict[int, Dict[str, List[float]]]] = {"lokt-tasks": {}, "direct": {}}
        if engine == "lokt":
            series["bare lokt guard"] = {}
        for count in sizes.shard_counts:
            for name in series:
                series[name][count] = {"wall": [], "cpu": []}
            for rep in range(sizes.repeat):
                runs = _overhead_runs(engine, count, rep, jobs, project, results_dir, env, lokt)
                # Rotate the order, so no series always runs on a warm or a cold machine.
                for offset in range(len(runs)):
                    name, run = runs[(rep + offset) % len(runs)]
                    wall, cpu = run()
                    series[name][count]["wall"].append(wall)
                    series[name][count]["cpu"].append(cpu)
            say(
                "  %s, %d shards: %s"
                % (
                    engine,
                    count,
                    ", ".join(
                        "%s %.0f ms" % (name, statistics.median(series[name][count]["wall"]) * 1000)
                        for name in series
                    ),
                )
            )
        by_engine[engine] = _overhead_summary(series, sizes.shard_counts, jobs)
    return {
        "jobs": jobs,
        "repeat": sizes.repeat,
        "shard_counts": list(sizes.shard_counts),
        "startup_ms": {
            name: round(statistics.median(samples) * 1000, 1) for name, samples in startup.items()
        },
        "startup_samples_s": startup,
        "engines": by_engine,
    }


def _overhead_runs(
    engine: str,
    count: int,
    rep: int,
    jobs: int,
    project: Path,
    results_dir: Path,
    env: Dict[str, str],
    lokt: Optional[str],
) -> List[Tuple[str, Callable[[], Tuple[float, float]]]]:
    def lokt_tasks_run() -> Tuple[float, float]:
        measured = run_checked(
            lokt_tasks_command(
                "shard-all",
                "noop",
                "--config",
                str(project / "shards.toml"),
                "--shards",
                str(count),
                "--jobs",
                str(jobs),
                "--engine",
                engine,
                "--run",
                "%s-%d-%d" % (engine, count, rep),
                "--results",
                str(results_dir),
            ),
            cwd=project,
            env=env,
        )
        return measured.wall, measured.cpu

    def direct_run() -> Tuple[float, float]:
        return run_parallel([["true"]] * count, jobs=jobs, cwd=project, env=env)

    def bare_guard_run() -> Tuple[float, float]:
        assert lokt is not None
        commands = [
            [lokt, "guard", "--ttl", "1m", "bare-%d-%d-%d" % (count, rep, index), "--", "true"]
            for index in range(count)
        ]
        return run_parallel(commands, jobs=jobs, cwd=project, env=env)

    runs = [("lokt-tasks", lokt_tasks_run), ("direct", direct_run)]
    if engine == "lokt":
        runs.append(("bare lokt guard", bare_guard_run))
    return runs


def _overhead_summary(
    series: Dict[str, Dict[int, Dict[str, List[float]]]], counts: Sequence[int], jobs: int
) -> Dict[str, Any]:
    medians = {
        name: {
            count: {kind: statistics.median(samples) for kind, samples in values.items()}
            for count, values in by_count.items()
        }
        for name, by_count in series.items()
    }
    fits = {
        name: {
            kind: fit_line([(count, medians[name][count][kind]) for count in counts])
            for kind in ("wall", "cpu")
        }
        for name in series
    }
    summary: Dict[str, Any] = {"samples_s": series, "median_s": medians, "comparisons": {}}
    for baseline in [name for name in series if name != "lokt-tasks"]:
        wall_slope = fits["lokt-tasks"]["wall"][0] - fits[baseline]["wall"][0]
        fixed = fits["lokt-tasks"]["wall"][1] - fits[baseline]["wall"][1]
        cpu_slope = fits["lokt-tasks"]["cpu"][0] - fits[baseline]["cpu"][0]
        summary["comparisons"][baseline] = {
            "ratio": {
                count: medians["lokt-tasks"][count]["wall"] / medians[baseline][count]["wall"]
                for count in counts
            },
            # What each further shard adds to the wall time of the whole run.
            "wall_ms_per_shard": wall_slope * 1000,
            # How much longer each shard keeps one of the `jobs` workers busy.
            "ms_per_shard": wall_slope * jobs * 1000,
            "cpu_ms_per_shard": cpu_slope * 1000,
            "fixed_ms": fixed * 1000,
        }
    return summary


def bench_per_shard(
    work: Path, sizes: Sizes, lokt: Optional[str], say: Callable[[str], None]
) -> Dict[str, Any]:
    """One shard at a time: what each layer adds to a shard whose command is ``true``.

    In-process calls of the engines and of ``run_shard`` (what shard-all does
    for each shard, without the lokt-tasks process around it), next to the
    bare commands, so the per-shard overhead can be taken apart.
    """
    project = work / "overhead"
    config = load_config(project / "shards.toml")
    shard = build_plan(config, "noop", shards=1, durations={}).shards[0]
    identity = make_identity("agent-bench")
    lock_root = work / "locks-per-shard"
    store = RecordStore(work / "results-per-shard")
    env = bench_env(lock_root)
    repeat = 10 if sizes.full else 3

    def spawn(argv: Sequence[str]) -> Callable[[], None]:
        def run() -> None:
            if (
                subprocess.run(
                    list(argv),
                    cwd=str(project),
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ).returncode
                != 0
            ):
                raise SystemExit("per-shard benchmark: %s failed" % " ".join(argv))

        return run

    def guard(engine_name: str) -> Callable[[], None]:
        engine = select_engine(engine_name, identity, root=lock_root)
        fields = unstamped_json(
            new_start_record(
                shard,
                run_key="per-shard-guard",
                agent=identity.agent,
                owner=identity.owner,
                host=identity.host,
                pid=os.getpid(),
                engine=engine_name,
            )
        )
        path = store.record_path(shard.task, "per-shard-guard", shard.index)
        path.parent.mkdir(parents=True, exist_ok=True)

        def run() -> None:
            attempt = Attempt(path, fields, ["true"])
            result = engine.guard("bench-" + engine_name, attempt, ttl=60.0, cwd=project)
            if result.state != "ran" or result.exit_code != 0:
                raise SystemExit("per-shard benchmark: %s guard gave %s" % (engine_name, result))

        return run

    def shard_run(engine_name: str) -> Callable[[], None]:
        settings = RunSettings(
            cwd=project,
            store=store,
            run_key="per-shard-" + engine_name,
            engine=select_engine(engine_name, identity, root=lock_root),
            identity=identity,
            ttl=60.0,
        )

        def run() -> None:
            outcome = run_shard(shard, settings, to_log=True)
            if outcome.state != "passed":
                raise SystemExit("per-shard benchmark: run_shard gave %s" % outcome.state)

        return run

    record_path = store.record_path(shard.task, "per-shard-attempt", shard.index)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    start = new_start_record(
        shard,
        run_key="per-shard-attempt",
        agent=identity.agent,
        owner=identity.owner,
        host=identity.host,
        pid=os.getpid(),
        engine="none",
    )
    attempt_process = Attempt(record_path, unstamped_json(start), ["true"]).argv(os.getpid())

    cases: List[Tuple[str, str, Callable[[], None]]] = [
        ("true", "the command alone, started from Python", spawn(["true"])),
    ]
    if lokt:
        cases.append(
            (
                "lokt guard",
                "`lokt guard --ttl 1m NAME -- true`",
                spawn([lokt, "guard", "--ttl", "1m", "bench-bare", "--", "true"]),
            )
        )
    cases.append(("embedded guard", "embedded engine: lock, run true, release", guard("embedded")))
    if lokt:
        cases.append(
            (
                "lokt engine guard",
                "lokt engine: lokt guard + the attempt process around true",
                guard("lokt"),
            )
        )
    cases.append(("python start", "`python -c pass`", spawn([sys.executable, "-c", "pass"])))
    cases.append(
        (
            "attempt process",
            "the attempt around true, as the lokt engine starts it: two record writes",
            spawn(attempt_process),
        )
    )
    cases.append(
        ("run_shard, embedded", "one whole shard as shard-all runs it", shard_run("embedded"))
    )
    if lokt:
        cases.append(("run_shard, lokt", "one whole shard as shard-all runs it", shard_run("lokt")))
    rows = []
    for name, what, call in cases:
        call()  # warm-up
        timed = time_call(call, repeat)
        rows.append(
            {"name": name, "what": what, "median_ms": timed.wall * 1000, "samples_s": timed.samples}
        )
    say("  " + "; ".join("%s %.0f ms" % (row["name"], row["median_ms"]) for row in rows))
    return {"repeat": repeat, "rows": rows}


# ---------------------------------------------------------------- balance


def synthetic_suite(rng: random.Random) -> List[Tuple[str, float, int]]:
    """(item, seconds, bytes) of a skewed suite: a few long items, many short ones.

    Fast unit tests, slower integration tests, four very slow end-to-end
    files whose names sort together. Sizes follow durations loosely (a
    factor of about two either way), as they do in real suites.
    """
    suite = []
    for number in range(150):
        suite.append(("tests/unit/test_unit_%03d.py" % number, rng.lognormvariate(-0.7, 0.8)))
    for number in range(40):
        suite.append(("tests/integration/test_flow_%02d.py" % number, rng.uniform(2.0, 10.0)))
    for number, seconds in enumerate((60.0, 45.0, 40.0, 30.0)):
        suite.append(("tests/e2e/test_browser_%d.py" % number, seconds))
    return [
        (item, round(seconds, 3), int(300 + seconds * 1500 * rng.lognormvariate(0, 0.6)))
        for item, seconds in suite
    ]


def bench_balance(work: Path, sizes: Sizes, say: Callable[[str], None]) -> Dict[str, Any]:
    """Largest shard over the lower bound, per split, through the plan layer.

    The largest shard is measured in the suite's true seconds whatever the
    split balanced by; the lower bound is max(total / shards, longest item):
    no split can finish sooner. "timings" splits by the true seconds;
    "timings (±20%)" by timings off by up to 20% each, as a previous run's
    would be.
    """
    rng = random.Random(20240501)
    suite = synthetic_suite(rng)
    project = work / "balance"
    for item, _, size in suite:
        path = project / item
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"#" * size)
    (project / "shards.toml").write_text(
        "".join(
            '[tasks.balance-%s]\nrun = "true {items}"\nglob = ["tests/**/*.py"]\n'
            'shards = 2\nsplit = "%s"\n\n' % (split, split)
            for split in ("name", "size", "timings")
        )
    )
    config = load_config(project / "shards.toml")
    seconds = {item: value for item, value, _ in suite}
    noisy = {item: round(value * rng.uniform(0.8, 1.2), 3) for item, value in seconds.items()}
    total = math.fsum(seconds.values())
    longest = max(seconds.values())
    modes = (
        ("name", "balance-name", seconds),
        ("size", "balance-size", seconds),
        ("timings", "balance-timings", seconds),
        ("timings (±20%)", "balance-timings", noisy),
    )
    rows = []
    for count in sizes.balance_shards:
        lower_bound = max(total / count, longest)
        for mode, task, timings in modes:
            plan = build_plan(config, task, shards=count, durations=timings)
            largest = max(math.fsum(seconds[item] for item in shard.items) for shard in plan.shards)
            rows.append(
                {
                    "shards": count,
                    "split": mode,
                    "largest_s": round(largest, 2),
                    "lower_bound_s": round(lower_bound, 2),
                    "ratio": round(largest / lower_bound, 3),
                }
            )
    say("  suite: %d items, %.0f s in all, longest item %.0f s" % (len(suite), total, longest))
    return {"items": len(suite), "total_s": round(total, 2), "longest_s": longest, "rows": rows}


# ---------------------------------------------------------------- scale


def make_tree(project: Path, files: int) -> float:
    """``files`` test files, 100 per directory, plus __init__.py files and an
    excluded fixtures tree (1% more files); seconds it took."""
    start = time.perf_counter()
    per_directory = 100
    for number in range(files):
        directory_number, file_number = divmod(number, per_directory)
        directory = (
            project
            / "tests"
            / ("pkg_%03d" % (directory_number // 10))
            / ("sub_%d" % (directory_number % 10))
        )
        if file_number == 0:
            directory.mkdir(parents=True)
            (directory / "__init__.py").write_bytes(b"")
        (directory / ("test_%03d.py" % file_number)).write_bytes(b"x" * (number % 997))
    fixtures = project / "tests" / "fixtures"
    fixtures.mkdir(parents=True)
    for number in range(max(1, files // 100)):
        (fixtures / ("test_fixture_%d.py" % number)).write_bytes(b"")
    return time.perf_counter() - start


def bench_scale(work: Path, sizes: Sizes, say: Callable[[str], None]) -> Dict[str, Any]:
    """Planning a very large suite, and judging a run with very many shards."""
    env = bench_env(work / "locks-scale")
    repeat = sizes.repeat
    cli_repeat = min(repeat, 2)

    project = work / "scale"
    created = make_tree(project, sizes.scale_files)
    say("  created %d files in %.1f s" % (sizes.scale_files, created))
    (project / "shards.toml").write_text(
        "".join(
            '[tasks.scale-%s]\nrun = "true {items}"\nglob = ["tests/**/test_*.py"]\n'
            'exclude = ["tests/fixtures/**"]\nshards = 8\nsplit = "%s"\n\n' % (split, split)
            for split in ("name", "size", "timings")
        )
    )
    config = load_config(project / "shards.toml")
    build_plan(
        config, "scale-name", durations={}
    )  # warm-up: the first walk after creating the files
    plan_rows = []
    for split in ("name", "size", "timings"):
        durations: Dict[str, float] = {}
        if split == "timings":
            every_item = [
                item
                for shard in build_plan(config, "scale-name", durations={}).shards
                for item in shard.items
            ]
            durations = {item: 0.001 * (1 + index % 1000) for index, item in enumerate(every_item)}
        timed = time_call(
            lambda split=split, durations=durations: build_plan(
                config, "scale-%s" % split, durations=durations
            ),
            repeat,
        )
        items = sum(len(shard.items) for shard in timed.result.shards)
        if items != sizes.scale_files:
            raise SystemExit("scale plan found %d items, expected %d" % (items, sizes.scale_files))
        plan_rows.append(
            {"split": split, "median_s": timed.wall, "cpu_s": timed.cpu, "samples_s": timed.samples}
        )
    plan_peak = traced_peak_mib(lambda: build_plan(config, "scale-name", durations={}))
    cli_plan = [
        run_checked(
            lokt_tasks_command(
                "plan", "scale-name", "--json", "--config", str(project / "shards.toml")
            ),
            cwd=project,
            env=env,
        )
        for _ in range(cli_repeat)
    ]
    say(
        "  plan of %d files: %s"
        % (
            sizes.scale_files,
            ", ".join("%s %.2f s" % (row["split"], row["median_s"]) for row in plan_rows),
        )
    )

    verify = _bench_verify(work, sizes, repeat, cli_repeat, env)
    return {
        "files": sizes.scale_files,
        "create_files_s": created,
        "plan": plan_rows,
        "plan_traced_peak_mib": plan_peak,
        "cli_plan_json": {
            "median_s": statistics.median(m.wall for m in cli_plan),
            "samples_s": [m.wall for m in cli_plan],
            "max_rss_mib": max(m.max_rss_mib for m in cli_plan),
        },
        "verify": verify,
    }


def _bench_verify(
    work: Path, sizes: Sizes, repeat: int, cli_repeat: int, env: Dict[str, str]
) -> Dict[str, Any]:
    """A plan of ``verify_records`` shards (one per item), every record written, then judged."""
    project = work / "verify"
    (project / "items").mkdir(parents=True)
    for number in range(1, sizes.verify_records + 1):
        (project / "items" / ("item-%04d" % number)).write_text("x\n")
    (project / "shards.toml").write_text(
        '[tasks.ver]\nrun = "true {items}"\nglob = ["items/*"]\nshards = "per-item"\n'
    )
    config = load_config(project / "shards.toml")
    plan = build_plan(config, "ver", durations={})
    store = RecordStore(work / "results-verify")
    run_key = "bench"
    host = platform.node() or "localhost"

    def write_one(shard: Any) -> None:
        record = new_start_record(
            shard,
            run_key=run_key,
            agent="agent-bench",
            owner="bench/agent-bench",
            host=host,
            pid=os.getpid(),
            engine="embedded",
        )
        store.write(finish(record, outcome="passed", exit_code=0))

    store.run_dir("ver", run_key).mkdir(parents=True)
    start = time.perf_counter()
    # Four writers at once, as four agents finishing together would be: each
    # write waits for two fsyncs, which is disk time rather than CPU.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write_one, plan.shards))
    write_seconds = time.perf_counter() - start
    engine = select_engine("embedded", make_identity("agent-bench"), root=work / "locks-verify")

    def read_only() -> Any:
        return store.read_run("ver", run_key)

    def judge_and_render() -> Any:
        verdict = judge_live(plan, store, engine.holder, run_key=run_key)
        render_table(verdict, color=False)
        json.dumps(verdict_to_json(verdict))
        return verdict

    read_only_timed = time_call(read_only, repeat)
    timed = time_call(judge_and_render, repeat)
    verdict = timed.result
    if verdict.state != "passed" or len(verdict.rows) != sizes.verify_records:
        raise SystemExit(
            "verify benchmark: expected %d passed shards, got %s"
            % (sizes.verify_records, verdict.counts)
        )
    peak = traced_peak_mib(judge_and_render)
    cli = [
        run_checked(
            lokt_tasks_command(
                "verify",
                "ver",
                "--json",
                "--run",
                run_key,
                "--engine",
                "embedded",
                "--results",
                str(work / "results-verify"),
                "--config",
                str(project / "shards.toml"),
            ),
            cwd=project,
            env=env,
        )
        for _ in range(cli_repeat)
    ]
    return {
        "records": sizes.verify_records,
        "write_records_s": write_seconds,
        "read_run_median_s": read_only_timed.wall,
        "read_run_cpu_s": read_only_timed.cpu,
        "judge_render_median_s": timed.wall,
        "judge_render_cpu_s": timed.cpu,
        "judge_render_samples_s": timed.samples,
        "traced_peak_mib": peak,
        "cli_verify_json": {
            "median_s": statistics.median(m.wall for m in cli),
            "samples_s": [m.wall for m in cli],
            "max_rss_mib": max(m.max_rss_mib for m in cli),
        },
    }


# ---------------------------------------------------------------- end to end

# A backslash at the end of a line inside RUNNER joins the next line to it.
RUNNER = '''\
"""A stand-in test runner: each test file holds the seconds it takes.

Usage: python runner.py --junit REPORT FILE... ; sleeps for each file in
turn and writes a JUnit XML report with the time each one took.
"""
import sys
import time
from xml.sax.saxutils import quoteattr


def main(argv):
    if argv[:1] != ["--junit"] or len(argv) < 2:
        sys.exit("usage: python runner.py --junit REPORT FILE...")
    report, files = argv[1], argv[2:]
    cases = []
    for path in files:
        with open(path) as handle:
            seconds = float(handle.read())
        start = time.monotonic()
        time.sleep(seconds)
        cases.append((path, time.monotonic() - start))
    lines = ['<?xml version="1.0" encoding="utf-8"?>', \
'<testsuite name="sleep" tests="%d">' % len(cases)]
    for path, took in cases:
        lines.append('  <testcase classname="sleep" name=%s file=%s time="%.3f"/>' \
% (quoteattr(path), quoteattr(path), took))
    lines.append("</testsuite>")
    with open(report, "w") as handle:
        handle.write("\\n".join(lines) + "\\n")


if __name__ == "__main__":
    main(sys.argv[1:])
'''


def e2e_suite(files: int, total: float) -> List[Tuple[str, float]]:
    """Skewed sleeps: the first tenth of the files (by name) take half the time."""
    rng = random.Random(7)
    slow = max(1, files // 10)
    weights = [1.0] * slow + [rng.uniform(0.3, 1.7) for _ in range(files - slow)]
    slow_share, fast_share = 0.5 * total, 0.5 * total
    fast_weight = sum(weights[slow:])
    seconds = [slow_share / slow] * slow + [
        fast_share * weight / fast_weight for weight in weights[slow:]
    ]
    return [
        ("tests/test_%02d.py" % number, round(value, 3)) for number, value in enumerate(seconds)
    ]


def bench_end_to_end(
    work: Path, sizes: Sizes, lokt: Optional[str], say: Callable[[str], None]
) -> Dict[str, Any]:
    """shard-all on a sleep-based suite: 4 shards, 4 jobs, split by name, then by
    the timings that name run recorded through {junit}."""
    project = work / "e2e"
    suite = e2e_suite(sizes.e2e_files, sizes.e2e_sleep)
    for item, seconds in suite:
        path = project / item
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("%.3f\n" % seconds)
    (project / "runner.py").write_text(RUNNER)
    config_path = project / "shards.toml"
    results = work / "results-e2e"
    env = bench_env(work / "locks-e2e")
    truth = dict(suite)
    total = math.fsum(truth.values())
    ideal = total / 4
    lower_bound = max(ideal, max(truth.values()))
    rows = []
    # One engine, as "auto" picks it, keeps the run short; the overhead
    # section compares the engines.
    for engine in ["lokt" if lokt else "embedded"]:
        store = RecordStore(results)
        local = store.local_durations_path("e2e")
        if local.exists():
            local.unlink()
        # NOTE: one task whose split changes between the runs: times are kept per task.
        for split in ("name", "timings"):
            config_path.write_text(
                '[defaults]\njobs = 4\nttl = "1m"\n\n'
                '[tasks.e2e]\nrun = "{python} runner.py --junit {junit} {items}"\n'
                'glob = ["tests/test_*.py"]\nshards = 4\nsplit = "%s"\n' % split
            )
            run_key = "%s-%s" % (engine, split)
            measured = run_checked(
                lokt_tasks_command(
                    "shard-all",
                    "e2e",
                    "--config",
                    str(config_path),
                    "--engine",
                    engine,
                    "--run",
                    run_key,
                    "--results",
                    str(results),
                ),
                cwd=project,
                env=env,
            )
            config = load_config(config_path)
            pinned = store.pinned_durations_path("e2e", run_key)
            recorded = read_durations(pinned).task("e2e") if split == "timings" else {}
            plan = build_plan(config, "e2e", durations=recorded)
            planned = max(math.fsum(truth[item] for item in shard.items) for shard in plan.shards)
            rows.append(
                {
                    "engine": engine,
                    "split": split,
                    "wall_s": measured.wall,
                    "largest_shard_sleep_s": planned,
                    "ideal_s": ideal,
                    "lower_bound_s": lower_bound,
                    "wall_over_lower_bound": measured.wall / lower_bound,
                }
            )
            say(
                "  %s, split %s: %.2f s (largest shard sleeps %.2f s)"
                % (engine, split, measured.wall, planned)
            )
        if len(read_durations(local).task("e2e").seconds(truth)) != len(suite):
            raise SystemExit(
                "end-to-end benchmark: the name run did not record a timing for every file"
            )
    return {
        "files": len(suite),
        "total_sleep_s": total,
        "shards": 4,
        "jobs": 4,
        "ideal_s": ideal,
        "lower_bound_s": lower_bound,
        "longest_item_s": max(truth.values()),
        "rows": rows,
    }


# ---------------------------------------------------------------- slots

SLOT_AGENTS, SLOT_SHARDS, SLOT_BUDGET, SLOT_JOBS = 4, 8, 2, 2

#: A shard's command in the slots section: sleeps, noting its start and end.
SLEEPER = """\
import os, sys, time
def note(kind):
    with open(os.environ["BENCH_TRACE"], "a") as trace:
        trace.write("%s %.6f\\n" % (kind, time.time()))
note("start")
time.sleep(float(os.environ["BENCH_SLEEP"]))
note("end")
"""


def git_repository(root: Path, files: Dict[str, str]) -> Path:
    """A committed git repository of ``files`` (path: text) at ``root``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    identity = ["-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "suite"]):
        subprocess.run(["git", *command], cwd=root, check=True, capture_output=True)
    return root


def sleeper_project(root: Path, shards: int, defaults: str) -> Path:
    toml = '[defaults]\nttl = "1m"\n%s\n[tasks.suite]\nrun = "{python} sleeper.py {items}"\n'
    toml += 'glob = ["items/*.txt"]\nshards = %d\n'
    files = {"items/%02d.txt" % number: "" for number in range(shards)}
    files.update({"sleeper.py": SLEEPER, "shards.toml": toml % (defaults, shards)})
    return git_repository(root, files)


def most_at_once(trace: Path) -> int:
    """The most commands running at one moment, as they noted it (an end first at a tie)."""
    events = []
    for line in trace.read_text().splitlines():
        kind, moment = line.split()
        events.append((float(moment), 1 if kind == "start" else -1))
    running = peak = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak


def bench_slots(
    work: Path, sizes: Sizes, lokt: Optional[str], say: Callable[[str], None]
) -> Dict[str, Any]:
    """Four agents, each running shard-all of an 8-shard task in a worktree of
    its own (its own run), under a machine-wide budget of 2 slots, against one
    agent running all 32 shards with 2 jobs and no budget. One run of each."""
    rows = []
    total = SLOT_AGENTS * SLOT_SHARDS
    for engine in ["embedded"] + (["lokt"] if lokt else []):
        base = work / ("slots-" + engine)
        env = bench_env(base / "locks")
        env["BENCH_SLEEP"] = str(sizes.slots_sleep)
        one = sleeper_project(base / "one", total, "")
        env["BENCH_TRACE"] = str(base / "one.trace")
        alone = run_checked(
            lokt_tasks_command("shard-all", "suite", "--jobs", str(SLOT_JOBS), "--engine", engine),
            cwd=one,
            env=env,
        )
        repository = sleeper_project(base / "repo", SLOT_SHARDS, "slots = %d" % SLOT_BUDGET)
        worktrees = [repository]
        for number in range(2, SLOT_AGENTS + 1):
            worktree = base / ("worktree-%d" % number)
            add = ["git", "worktree", "add", "-q", "--detach", str(worktree)]
            subprocess.run(add, cwd=repository, check=True, capture_output=True)
            worktrees.append(worktree)
        env["BENCH_TRACE"] = str(base / "four.trace")
        start = time.perf_counter()
        agents = [
            subprocess.Popen(
                lokt_tasks_command(
                    "shard-all",
                    "suite",
                    "--jobs",
                    str(SLOT_JOBS),
                    "--engine",
                    engine,
                    "--run",
                    "agent-%d" % number,
                    "--agent",
                    "agent-%d" % number,
                ),  # fmt: skip
                cwd=str(worktree),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for number, worktree in enumerate(worktrees, start=1)
        ]
        errors = [agent.communicate()[1] for agent in agents]
        together = time.perf_counter() - start
        if any(agent.returncode for agent in agents):
            codes = [agent.returncode for agent in agents]
            raise SystemExit(
                "slots benchmark: an agent failed (exit codes %s)\n%s" % (codes, errors)
            )
        row = {
            "engine": engine,
            "one_agent_s": alone.wall,
            "four_agents_s": together,
            "ratio": together / alone.wall,
            "most_at_once_one_agent": most_at_once(base / "one.trace"),
            "most_at_once_four_agents": most_at_once(base / "four.trace"),
        }
        rows.append(row)
        say(
            "  %s: one agent %.2f s, four agents %.2f s (x%.3f), at most %d at once"
            % (engine, alone.wall, together, row["ratio"], row["most_at_once_four_agents"])
        )
    return {
        "agents": SLOT_AGENTS,
        "shards_per_agent": SLOT_SHARDS,
        "slots": SLOT_BUDGET,
        "jobs": SLOT_JOBS,
        "sleep_s": sizes.slots_sleep,
        "ideal_s": total * sizes.slots_sleep / SLOT_BUDGET,
        "rows": rows,
    }


# ---------------------------------------------------------------- goals


def judge_goals(report: Report, sizes: Sizes, lokt: Optional[str]) -> List[Goal]:
    goals = []
    overhead = report.sections.get("overhead")
    if overhead:
        jobs = overhead["jobs"]
        comparisons = overhead["engines"]["embedded"]["comparisons"]
        value = comparisons["direct"]["ms_per_shard"]
        goals.append(
            Goal(
                "embedded engine: overhead per shard",
                "shard-all vs the bare command (true), %d jobs" % jobs,
                value,
                OVERHEAD_GOAL_MS,
                "ms",
                value < OVERHEAD_GOAL_MS if sizes.full else None,
            )
        )
        if "lokt" in overhead["engines"]:
            value = overhead["engines"]["lokt"]["comparisons"]["bare lokt guard"]["ms_per_shard"]
            goals.append(
                Goal(
                    "lokt engine: overhead per shard",
                    "shard-all vs bare `lokt guard -- true`, %d jobs" % jobs,
                    value,
                    OVERHEAD_GOAL_MS,
                    "ms",
                    value < OVERHEAD_GOAL_MS if sizes.full else None,
                )
            )
        else:
            goals.append(
                Goal(
                    "lokt engine: overhead per shard",
                    "shard-all vs bare `lokt guard -- true`",
                    None,
                    OVERHEAD_GOAL_MS,
                    "ms",
                    None,
                    "lokt not on PATH",
                )
            )
    scale = report.sections.get("scale")
    if scale:
        value = next(row["median_s"] for row in scale["plan"] if row["split"] == "name")
        goals.append(
            Goal(
                "plan of %d files" % scale["files"],
                "build_plan, split name, in-process",
                value,
                PLAN_GOAL_S,
                "s",
                value < PLAN_GOAL_S if sizes.full else None,
            )
        )
        value = scale["verify"]["judge_render_median_s"]
        goals.append(
            Goal(
                "verify of %d records" % scale["verify"]["records"],
                "judge_live + table + JSON, in-process",
                value,
                VERIFY_GOAL_S,
                "s",
                value < VERIFY_GOAL_S if sizes.full else None,
            )
        )
    slots = report.sections.get("slots")
    for row in slots["rows"] if slots else []:
        compared = "%d agents x %d shards, %d slots, vs 1 agent x %d shards, %d jobs" % (
            slots["agents"],
            slots["shards_per_agent"],
            slots["slots"],
            slots["agents"] * slots["shards_per_agent"],
            slots["jobs"],
        )
        goals.append(
            Goal(
                "%s engine: wall time under a slot budget" % row["engine"],
                compared,
                row["ratio"],
                SLOTS_GOAL,
                "x",
                row["ratio"] <= SLOTS_GOAL if sizes.full else None,
            )
        )
        goals.append(
            Goal(
                "%s engine: never more shards than slots" % row["engine"],
                "most commands running at once, as they noted it",
                row["most_at_once_four_agents"],
                slots["slots"],
                "x",
                row["most_at_once_four_agents"] <= slots["slots"],
            )
        )
    balance = report.sections.get("balance")
    if balance:
        worst = max(row["ratio"] for row in balance["rows"] if row["split"] == "timings")
        goals.append(
            Goal(
                "timings split within 5% of the lower bound",
                "worst largest/lower bound over %s shards"
                % ", ".join(str(count) for count in sizes.balance_shards),
                worst,
                BALANCE_GOAL,
                "x",
                worst <= BALANCE_GOAL,
            )
        )
    return goals


# ---------------------------------------------------------------- output


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(row[column])) for row in [headers, *rows]) for column in range(len(headers))
    ]
    lines = []
    for index, row in enumerate([headers, *rows]):
        cells = [
            str(cell).ljust(widths[column]) if column == 0 else str(cell).rjust(widths[column])
            for column, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
        if index == 0:
            lines.append("  " + "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return "%.0f" % (seconds * 1000)


def print_overhead(section: Dict[str, Any]) -> None:
    counts = section["shard_counts"]
    print(
        "\nOrchestration overhead: shard-all over N no-op shards, %d jobs (the CPU count),"
        " median of %d" % (section["jobs"], section["repeat"])
    )
    for engine, summary in section["engines"].items():
        medians = summary["median_s"]
        rows = []
        for name in medians:
            rows.append(
                [name]
                + [ms(medians[name][count]["wall"]) for count in counts]
                + [ms(medians[name][count]["cpu"]) for count in counts]
            )
        print("engine %s: wall and CPU ms" % engine)
        print(
            table(
                ["run"]
                + ["wall N=%d" % count for count in counts]
                + ["cpu N=%d" % count for count in counts],
                rows,
            )
        )
        rows = []
        for baseline, comparison in summary["comparisons"].items():
            rows.append(
                [baseline]
                + ["%.2fx" % comparison["ratio"][count] for count in counts]
                + [
                    "%.0f" % comparison["ms_per_shard"],
                    "%.0f" % comparison["wall_ms_per_shard"],
                    "%.0f" % comparison["cpu_ms_per_shard"],
                    "%.0f" % comparison["fixed_ms"],
                ]
            )
        print(
            table(
                ["lokt-tasks vs"]
                + ["ratio N=%d" % count for count in counts]
                + ["ms/shard", "wall ms/shard", "cpu ms/shard", "fixed ms"],
                rows,
            )
        )
    print("start-up, ms: " + "; ".join("%s %.0f" % item for item in section["startup_ms"].items()))


def print_per_shard(section: Dict[str, Any]) -> None:
    print("\nPer shard, one at a time (median of %d)" % section["repeat"])
    print(
        table(
            ["step", "ms", "what"],
            [[row["name"], "%.0f" % row["median_ms"], row["what"]] for row in section["rows"]],
        )
    )


def print_balance(section: Dict[str, Any]) -> None:
    print(
        "\nBalance: largest shard / lower bound, in true seconds"
        " (%d items, %.0f s, longest item %.0f s)"
        % (section["items"], section["total_s"], section["longest_s"])
    )
    counts = sorted({row["shards"] for row in section["rows"]})
    splits = list(dict.fromkeys(row["split"] for row in section["rows"]))
    ratio = {(row["split"], row["shards"]): row["ratio"] for row in section["rows"]}
    bound = {row["shards"]: row["lower_bound_s"] for row in section["rows"]}
    rows = [[split] + ["%.3f" % ratio[(split, count)] for count in counts] for split in splits]
    rows.append(["(lower bound, s)"] + ["%.1f" % bound[count] for count in counts])
    print(table(["split"] + ["%d shards" % count for count in counts], rows))


def print_scale(section: Dict[str, Any]) -> None:
    verify = section["verify"]
    print("\nScale (in-process rows: median wall time, and this process's CPU time)")
    rows = [
        [
            "build_plan, %d files, split %s" % (section["files"], row["split"]),
            "%.3f s" % row["median_s"],
            "%.3f s" % row["cpu_s"],
            "",
        ]
        for row in section["plan"]
    ]
    rows.append(
        [
            "  Python allocations, peak (tracemalloc)",
            "",
            "",
            "%.0f MiB" % section["plan_traced_peak_mib"],
        ]
    )
    cli = section["cli_plan_json"]
    rows.append(
        [
            "lokt-tasks plan --json, end to end",
            "%.3f s" % cli["median_s"],
            "",
            "%.0f MiB RSS" % cli["max_rss_mib"],
        ]
    )
    rows.append(
        [
            "write %d records (4 writers, 2 fsyncs each)" % verify["records"],
            "%.3f s" % verify["write_records_s"],
            "",
            "",
        ]
    )
    rows.append(
        [
            "RecordStore.read_run, %d records" % verify["records"],
            "%.3f s" % verify["read_run_median_s"],
            "%.3f s" % verify["read_run_cpu_s"],
            "",
        ]
    )
    rows.append(
        [
            "judge_live + table + JSON, %d records" % verify["records"],
            "%.3f s" % verify["judge_render_median_s"],
            "%.3f s" % verify["judge_render_cpu_s"],
            "%.0f MiB" % verify["traced_peak_mib"],
        ]
    )
    cli = verify["cli_verify_json"]
    rows.append(
        [
            "lokt-tasks verify --json, end to end",
            "%.3f s" % cli["median_s"],
            "",
            "%.0f MiB RSS" % cli["max_rss_mib"],
        ]
    )
    print(table(["what", "wall", "cpu", "memory"], rows))


def print_end_to_end(section: Dict[str, Any]) -> None:
    print(
        "\nEnd to end: %d sleeping test files, %.1f s of sleep, %d shards, %d jobs;"
        " ideal %.2f s, lower bound %.2f s"
        % (
            section["files"],
            section["total_sleep_s"],
            section["shards"],
            section["jobs"],
            section["ideal_s"],
            section["lower_bound_s"],
        )
    )
    rows = [
        [
            row["engine"],
            row["split"],
            "%.2f" % row["wall_s"],
            "%.2f" % row["largest_shard_sleep_s"],
            "%.2f" % row["wall_over_lower_bound"],
        ]
        for row in section["rows"]
    ]
    print(table(["engine", "split", "wall s", "largest shard s", "wall / lower bound"], rows))


def print_slots(section: Dict[str, Any]) -> None:
    print(
        "\nSlots: %d agents x %d shards of %.1f s each, %d slots; ideal %.1f s"
        % (
            section["agents"],
            section["shards_per_agent"],
            section["sleep_s"],
            section["slots"],
            section["ideal_s"],
        )
    )
    rows = [
        [
            row["engine"],
            "%.2f" % row["one_agent_s"],
            "%.2f" % row["four_agents_s"],
            "%.3f" % row["ratio"],
            "%d / %d" % (row["most_at_once_one_agent"], row["most_at_once_four_agents"]),
        ]
        for row in section["rows"]
    ]
    headers = ["engine", "one agent s", "four agents s", "ratio", "most at once (one / four)"]
    print(table(headers, rows))


def print_goals(goals: Sequence[Goal]) -> None:
    print("\nGoals")
    rows = []
    for goal in goals:
        verdict = "n/a" if goal.passed is None else ("PASS" if goal.passed else "FAIL")
        value = (
            "-"
            if goal.value is None
            else (
                "%.0f ms" % goal.value
                if goal.unit == "ms"
                else "%.3f s" % goal.value
                if goal.unit == "s"
                else "%.3f" % goal.value
            )
        )
        limit = (
            "< %.0f ms" % goal.limit
            if goal.unit == "ms"
            else "< %.1f s" % goal.limit
            if goal.unit == "s"
            else "<= %.2f" % goal.limit
        )
        rows.append(
            [
                goal.name,
                value,
                limit,
                verdict,
                goal.measured_as + ("; " + goal.note if goal.note else ""),
            ]
        )
    print(table(["goal", "measured", "target", "", "compared as"], rows))


# ---------------------------------------------------------------- main


SECTIONS = ("overhead", "balance", "scale", "e2e", "slots")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmarks for lokt-tasks (see docs/performance.md)."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes and one repetition: a smoke run of about 20 s",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="where to write the results (default: %(default)s)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="parallel shards in the overhead runs (default: the CPU count)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="repetitions per measurement (default: 3, quick: 1)",
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated sections to run: %(default)s"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error("unknown section(s): %s" % ", ".join(unknown))

    sizes = QUICK if args.quick else FULL
    if args.repeat is not None:
        sizes = Sizes(**{**asdict(sizes), "repeat": max(1, args.repeat)})
    jobs = args.jobs or os.cpu_count() or 1
    lokt = find_lokt_binary()
    report = Report(
        machine=machine_info(lokt),
        settings={"quick": args.quick, "jobs": jobs, "sections": chosen, **asdict(sizes)},
    )
    machine = report.machine
    print("lokt-tasks %s benchmarks%s" % (machine["lokt_tasks"], " (quick)" if args.quick else ""))
    print(
        "machine: %s, %s cores, Python %s, %s; lokt: %s; load average %s"
        % (
            machine["cpu"],
            machine["cores"],
            machine["python"],
            machine["os"],
            machine["lokt"] or "not on PATH",
            machine["load_average_at_start"],
        )
    )

    def say(text: str) -> None:
        print(text, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lokt-tasks-bench-") as temporary:
        work = Path(temporary).resolve()
        # Every Python process started from here (lokt-tasks, its attempt processes)
        # keeps a bytecode cache, in the temporary directory, as a normal
        # install does; with PYTHONDONTWRITEBYTECODE set, each one would
        # compile lokt-tasks from source at every start.
        report.settings["PYTHONDONTWRITEBYTECODE_was_set"] = bool(
            os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        )
        os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        steps = [
            ("overhead", "overhead", lambda: bench_overhead(work, sizes, jobs, lokt, say)),
            ("overhead", "per_shard", lambda: bench_per_shard(work, sizes, lokt, say)),
            ("balance", "balance", lambda: bench_balance(work, sizes, say)),
            ("scale", "scale", lambda: bench_scale(work, sizes, say)),
            ("e2e", "end_to_end", lambda: bench_end_to_end(work, sizes, lokt, say)),
            ("slots", "slots", lambda: bench_slots(work, sizes, lokt, say)),
        ]
        for option, section, run in steps:
            if option not in chosen:
                continue
            say("\n[%s]" % section.replace("_", " "))
            section_start = time.perf_counter()
            report.sections[section] = run()
            say("  (%.0f s)" % (time.perf_counter() - section_start))
        say("\nremoving the temporary files...")
    report.machine["load_average_at_end"] = load_average()
    report.settings["benchmark_seconds"] = round(time.perf_counter() - started, 1)
    report.settings["peak_rss_mib_of_benchmark"] = round(own_peak_rss_mib(), 1)
    report.goals = judge_goals(report, sizes, lokt)

    if "overhead" in report.sections:
        print_overhead(report.sections["overhead"])
    if "per_shard" in report.sections:
        print_per_shard(report.sections["per_shard"])
    if "balance" in report.sections:
        print_balance(report.sections["balance"])
    if "scale" in report.sections:
        print_scale(report.sections["scale"])
    if "end_to_end" in report.sections:
        print_end_to_end(report.sections["end_to_end"])
    if "slots" in report.sections:
        print_slots(report.sections["slots"])
    print_goals(report.goals)
    loads = [report.machine["load_average_at_start"], report.machine["load_average_at_end"]]
    if any(load and load[0] > (os.cpu_count() or 1) / 2 for load in loads):
        print(
            "note: the machine was busy (load average %s at start, %s at end):"
            " the figures are inflated" % tuple(loads)
        )

    args.json.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": 1,
        "machine": report.machine,
        "settings": report.settings,
        **report.sections,
        "goals": [asdict(goal) for goal in report.goals],
    }
    args.json.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    print(
        "\ntook %.0f s; results written to %s" % (report.settings["benchmark_seconds"], args.json)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
