"""Which shard runs next: every shard in parallel (shard-all), or a queue.

Both modes hand shards out longest first, so the slowest shard starts as
early as possible, and both claim a shard only through its lock: another
agent holding it is never run over. The check for "already done" is made
again by the recorder inside the lock, so two agents racing for the same
shard never both run it.
"""
from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Collection, Iterator, List, Optional, Sequence

from .engine import StopRequest
from .plan import Plan, Shard
from .results import Record
from .run import RunSettings, ShardOutcome, run_shard

#: Called as on_change(shard, state, outcome_or_None) when a shard starts
#: ("running") or ends (its outcome state). Called from worker threads.
OnChange = Callable[[Shard, str, Optional[ShardOutcome]], None]


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
    skip: Collection[str] = ("passed",),
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
            on_change(shard, "running", None)
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
) -> List[ShardOutcome]:
    """Queue mode (``--id next``): claim and run unfinished shards until none is left.

    ``finished(shard)`` tells from the records whether a shard already has a
    final outcome under this plan. A shard held by a live agent is left to
    it; a crashed agent's shard becomes claimable once its holder is dead or
    its TTL has passed, because the engine then prunes the lock.
    """
    outcomes: List[ShardOutcome] = []
    passed_over = set()
    while not stop.is_set():
        candidates = [s for s in longest_first(plan.shards) if s.index not in passed_over and not finished(s)]
        if not candidates:
            break
        shard = candidates[0]
        on_change(shard, "running", None)
        outcome = run_shard(shard, settings, to_log=to_log, skip=("passed", "failed"), stop=stop)
        on_change(shard, outcome.state, outcome)
        if outcome.ran or outcome.state == "lost":
            outcomes.append(outcome)
        elif outcome.state in ("held", "frozen", "done"):
            passed_over.add(shard.index)
        else:
            outcomes.append(outcome)
            break
    return outcomes


def is_finished(record: object, shard: Shard) -> bool:
    return isinstance(record, Record) and record.fingerprint == shard.fingerprint and record.outcome in ("passed", "failed")


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Turn SIGINT and SIGTERM into a stop request for the duration of a run.

    The handler only records the signal: cleanup (forwarding, releasing
    locks, writing records) happens in the normal flow of the code, so a
    second Ctrl-C during cleanup cannot cut a record or a release in half.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, _frame: stop.request(signum))
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
