"""Which shard runs next: every shard in parallel (shard-all), or a queue.

Both modes hand shards out longest first, so the slowest shard starts as
early as possible, and claim a shard only through its lock, never running
over another agent. The shard's attempt checks "already done" again inside
the lock, so two agents racing for a shard never both run it.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Collection, Iterator, List, Optional, Sequence, Tuple

from .engine import StopRequest
from .plan import Plan, Shard
from .results import Record
from .run import RunSettings, ShardOutcome, run_shard
from .states import FINISHED_OUTCOMES, PASSED_OUTCOMES, Progress, RunOutcome, ordered
from .verdict import holder_is_live

#: Called as on_change(shard, state, outcome_or_None) when a shard starts
#: (Progress.RUNNING) or ends (its RunOutcome). Called from worker threads.
OnChange = Callable[[Shard, str, Optional[ShardOutcome]], None]
#: Called as on_lease_wait(shard, what) when a shard's attempt starts to wait for
#: a lease ("a slot", "resource 'db'"), and with "" once its command starts after it.
OnLeaseWait = Callable[[Shard, str], None]

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
    on_lease_wait: Optional[OnLeaseWait] = None,
) -> List[ShardOutcome]:
    """Run every shard, at most ``jobs`` at once (this agent's limit; slots are
    the machine's), each output to its log file.

    Once ``stop`` is set no new shard starts; running ones are stopped by
    their engine, which forwards the signal and releases the lock.
    """

    def run_one(shard: Shard) -> Optional[ShardOutcome]:
        if stop.is_set():
            return None
        on_change(shard, Progress.RUNNING, None)
        waits = _told(on_lease_wait, shard)
        outcome = run_shard(shard, settings, to_log=True, skip=skip, stop=stop, on_wait=waits)
        on_change(shard, outcome.state, outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(shards)))) as pool:
        outcomes = [o for o in pool.map(run_one, longest_first(shards)) if o is not None]
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
    on_lease_wait: Optional[OnLeaseWait] = None,
) -> List[ShardOutcome]:
    """Queue mode (``--id next``): run unfinished shards until none is left, and
    return the outcomes of those this agent ran, in order (an engine error ends it).

    Each pass runs the longest shard that is not ``finished`` (a final outcome
    under this plan, by the records), not frozen, not held by a live agent, and
    not already run by this agent, whatever came of it: no agent loops on a
    shard that cannot finish. A held shard is looked at again on every pass, so
    when its holder dies (its lock pruned) it is run here. While only held
    shards are left, the agent polls (backing off from QUEUE_POLL_START to
    QUEUE_POLL_MAX seconds) for at most ``patience`` seconds in a row (None:
    until they finish), telling ``on_wait`` the shards whenever they change.
    """
    settings = replace(settings, wait=False)  # the queue waits itself, never on one lock
    engine = settings.engine
    outcomes: List[ShardOutcome] = []
    pause = QUEUE_POLL_START
    deadline: Optional[float] = None
    announced: List[Shard] = []

    def claim_next() -> Tuple[Optional[ShardOutcome], List[Shard]]:
        """One pass: the outcome of the shard this agent ran (None if none),
        and the shards other live agents hold."""
        held: List[Shard] = []
        ran_here = {outcome.shard.index for outcome in outcomes}
        for shard in longest_first(plan.shards):
            if stop.is_set():
                break
            if shard.index in ran_here or finished(shard) or engine.frozen(shard.lock_name):
                continue
            if holder_is_live(engine.holder(shard.lock_name)):
                held.append(shard)  # looked at without trying: no deny line, no process
                continue
            on_change(shard, Progress.RUNNING, None)
            skip = ordered(FINISHED_OUTCOMES)
            waits = _told(on_lease_wait, shard)
            outcome = run_shard(shard, settings, to_log=to_log, skip=skip, stop=stop, on_wait=waits)
            on_change(shard, outcome.state, outcome)
            if outcome.state == RunOutcome.HELD:
                held.append(shard)  # another agent took it between our look and our try
            elif outcome.state not in (RunOutcome.FROZEN, RunOutcome.DONE):
                return outcome, held
        return None, held

    while not stop.is_set():
        outcome, held = claim_next()
        if outcome is not None:
            outcomes.append(outcome)
            if outcome.state == RunOutcome.ERROR:
                break
            pause, deadline, announced = QUEUE_POLL_START, None, []
            continue
        if not held:
            break
        now = time.monotonic()
        if deadline is None and patience is not None:
            deadline = now + patience
        if deadline is not None and now >= deadline:
            break
        if on_wait is not None and held != announced:
            on_wait(held)
            announced = held
        if stop.wait(pause if deadline is None else min(pause, deadline - now)):
            break
        pause = min(pause * 2, QUEUE_POLL_MAX)
    return outcomes


def _told(on_lease_wait: Optional[OnLeaseWait], shard: Shard) -> Optional[Callable[[str], None]]:
    if on_lease_wait is None:
        return None
    return lambda what: on_lease_wait(shard, what)


def is_finished(record: object, shard: Shard) -> bool:
    """Whether ``record`` gives ``shard`` a final outcome under this plan."""
    return (
        isinstance(record, Record)
        and record.fingerprint == shard.fingerprint
        and record.outcome in FINISHED_OUTCOMES
    )


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Turn SIGINT, SIGTERM and SIGHUP (the terminal went away: as SIGTERM) into a
    stop request while a run lasts.

    The handler only records the signal, so a second Ctrl-C cannot cut a record
    or a release in half. Once a stop was requested these signals stay ignored:
    one more Ctrl-C while the verdict is printed, or while Python shuts down,
    must not end the process with a traceback or another exit status (nothing
    is started after a stopped run, so no command inherits that).
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, _frame):
        stop.request(signal.SIGTERM if signum == signal.SIGHUP else signum)

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, request) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if stop.is_set() else handler)
