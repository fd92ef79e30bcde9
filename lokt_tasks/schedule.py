"""Which shard runs next: every shard in parallel (shard-all), or a queue.

Both modes hand shards out longest first, so the slowest shard starts as
early as possible, and both claim a shard only through its lock: another
agent holding it is never run over. The check for "already done" is made
again by the shard's attempt inside the lock, so two agents racing for the same
shard never both run it.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Collection, Iterator, List, Optional, Sequence, Set, Tuple

from .engine import StopRequest
from .plan import Plan, Shard
from .results import Record
from .run import RunSettings, ShardOutcome, run_shard
from .states import FINISHED_OUTCOMES, PASSED_OUTCOMES, Progress, RunOutcome, ordered
from .verdict import holder_is_live

#: Called as on_change(shard, state, outcome_or_None) when a shard starts
#: (Progress.RUNNING) or ends (its RunOutcome). Called from worker threads.
OnChange = Callable[[Shard, str, Optional[ShardOutcome]], None]

#: Queue mode looks again at shards held by other agents after this many
#: seconds, doubling up to QUEUE_POLL_MAX: a dead holder's shard is picked
#: up within about a second, and polling costs only a few file reads.
QUEUE_POLL_START = 0.1
QUEUE_POLL_MAX = 1.0


def longest_first(shards: Sequence[Shard]) -> List[Shard]:
    """Shards with the largest estimate first; unknown estimates keep plan order."""
    return sorted(shards, key=lambda s: (-(s.estimate or 0.0), s.index))


def run_all(
    shards: Sequence[Shard],
    settings: RunSettings,
    *,
    jobs: int,
    stop: StopRequest,
    on_change: OnChange,
    skip: Collection[str] = ordered(PASSED_OUTCOMES),
) -> List[ShardOutcome]:
    """Run every shard, at most ``jobs`` at once, each output to its log file.

    Once ``stop`` is set no new shard starts; running ones are stopped by
    their engine, which forwards the signal and releases the lock.
    """
    pending = longest_first(shards)
    lock = threading.Lock()
    outcomes: List[ShardOutcome] = []

    def worker() -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                shard = pending.pop(0)
            on_change(shard, Progress.RUNNING, None)
            outcome = run_shard(shard, settings, to_log=True, skip=skip, stop=stop)
            with lock:
                outcomes.append(outcome)
            on_change(shard, outcome.state, outcome)

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(pending) or 1))) as pool:
        futures = [pool.submit(worker) for _ in range(min(jobs, len(pending)) or 1)]
        for future in futures:
            future.result()
    return sorted(outcomes, key=lambda o: o.shard.index)


def run_queue(
    plan: Plan,
    settings: RunSettings,
    *,
    stop: StopRequest,
    on_change: OnChange,
    finished: Callable[[Shard], bool],
    to_log: bool = False,
    patience: Optional[float] = None,
    on_wait: Optional[Callable[[List[Shard]], None]] = None,
) -> List[ShardOutcome]:
    """Queue mode (``--id next``): claim and run unfinished shards until none is left.

    ``finished(shard)`` tells from the records whether a shard already has a
    final outcome (passed or failed) under this plan. Every time the agent
    looks for work it goes through all unfinished shards again, longest
    first, and claims the first one nobody holds:

    - A shard held by a live agent (see verdict.holder_is_live) is left to
      it for now. It is looked at again on every later pass, so when its
      holder dies the shard is claimable again: the engine prunes a dead
      holder's lock (and an expired one from another host), and the
      attempt runs the shard because its record has no final outcome.
    - A frozen shard is left alone and not waited for.
    - A shard this agent already ran is not run by it again, whatever came
      of it: a failure is final, and a shard whose attempt died ("lost")
      or that was stopped by a signal is left to another agent or a rerun,
      so that one agent never loops on a shard that cannot finish.

    When nothing is claimable but other agents still hold unfinished shards,
    the agent waits and looks again (every 0.1 s at first, backing off to
    1 s) instead of leaving: as long as one queue agent is alive, a crashed
    agent's shard is run again. It waits at most ``patience`` seconds in a
    row (None: until those shards finish); ``on_wait`` is told which shards
    it waits for whenever that list changes. The check for "already done"
    is made again by the attempt inside the lock, so two agents racing for
    a shard never both run it. Returns the outcomes of the shards this agent
    ran, in the order it ran them; an engine error ends the queue.
    """
    settings = replace(settings, wait=False)  # the queue waits itself, never on one lock
    outcomes: List[ShardOutcome] = []
    ran_here: Set[int] = set()
    pause = QUEUE_POLL_START
    deadline: Optional[float] = None
    announced: List[Shard] = []
    while not stop.is_set():
        outcome, held = _claim_next(
            plan,
            settings,
            ran_here,
            stop=stop,
            on_change=on_change,
            finished=finished,
            to_log=to_log,
        )
        if outcome is not None:
            outcomes.append(outcome)
            ran_here.add(outcome.shard.index)
            if outcome.state == RunOutcome.ERROR:
                break
            pause, deadline, announced = QUEUE_POLL_START, None, []
            continue
        if not held:
            break
        now = time.monotonic()
        if deadline is None:
            deadline = now + patience if patience is not None else None
        if deadline is not None and now >= deadline:
            break
        if on_wait is not None and held != announced:
            on_wait(held)
            announced = held
        if stop.wait(pause if deadline is None else min(pause, deadline - now)):
            break
        pause = min(pause * 2, QUEUE_POLL_MAX)
    return outcomes


def _claim_next(
    plan: Plan,
    settings: RunSettings,
    ran_here: Set[int],
    *,
    stop: StopRequest,
    on_change: OnChange,
    finished: Callable[[Shard], bool],
    to_log: bool,
) -> Tuple[Optional[ShardOutcome], List[Shard]]:
    """One pass over the unfinished shards: the outcome of the first one this
    agent ran (None if none), and the shards other live agents hold."""
    held: List[Shard] = []
    for shard in longest_first(plan.shards):
        if stop.is_set():
            break
        if shard.index in ran_here or finished(shard):
            continue
        if settings.engine.frozen(shard.lock_name):
            continue
        if holder_is_live(settings.engine.holder(shard.lock_name)):
            held.append(shard)  # looked at without trying: no deny line, no process
            continue
        on_change(shard, Progress.RUNNING, None)
        skip = ordered(FINISHED_OUTCOMES)
        outcome = run_shard(shard, settings, to_log=to_log, skip=skip, stop=stop)
        on_change(shard, outcome.state, outcome)
        if outcome.state == RunOutcome.HELD:
            held.append(shard)  # another agent took it between our look and our try
        elif outcome.state not in (RunOutcome.FROZEN, RunOutcome.DONE):
            return outcome, held
    return None, held


def is_finished(record: object, shard: Shard) -> bool:
    """Whether ``record`` gives ``shard`` a final outcome under this plan."""
    return (
        isinstance(record, Record)
        and record.fingerprint == shard.fingerprint
        and record.outcome in FINISHED_OUTCOMES
    )


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Turn SIGINT, SIGTERM and SIGHUP into a stop request for the duration of a run.

    The handler only records the signal: cleanup (forwarding, releasing
    locks, writing records) happens in the normal flow of the code, so a
    second Ctrl-C during cleanup cannot cut a record or a release in half.
    SIGHUP (the terminal went away) stops the run as SIGTERM would, so the
    commands are stopped and their locks released rather than orphaned.
    Once a stop was requested, these signals are ignored from then on: the
    process is already stopping, and one more Ctrl-C while the verdict is
    printed, or while Python shuts down (which puts back the default
    handlers), must not end it with a traceback or another exit status.
    Nothing is started after a stopped run, so no command inherits that.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, _frame):
        stop.request(signal.SIGTERM if signum == signal.SIGHUP else signum)

    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    }
    for sig in previous:
        signal.signal(sig, request)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if stop.is_set() else handler)
