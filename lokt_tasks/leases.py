"""The leases a shard holds for its command's life besides its own lock: a
slot of the machine's budget and named exclusive resources. Each is an
ordinary lokt lock in the lock root, written with lokt's protocol
(``lockfile``), so ``lokt status`` lists it and a dead holder's lease is
pruned like any lock, by either engine::

    <prefix>-resource-<name>   one per name in the task's ``resources``
    <prefix>-slot-<K>          K from 1 to the budget N (or unbounded, see below)

**Lock order**, the same for every agent: the shard's own lock (taken by the
engine, so two agents never wait for a slot for the same shard), then the
resources sorted by name, then a slot. A shard waits for a lease only while
holding those before it in that order, and a shard holding a slot waits for
nothing but its command, so no cycle of waits can form: no deadlock.

**The holder** is the process that outlives the shard's command, not the
agent: with the embedded engine the agent's watchdog (the holder of its
shard locks, which stops the command when the agent dies, then exits), with
lokt the attempt process inside ``lokt guard`` (:func:`main`, which stops the
command when the agent dies, releases, then exits). ``lokt lock`` cannot
hold one: the lock it writes names its own pid, and it exits at once.

**Slots.** The lowest free number is taken, so ``{slot}`` stays small. A
shard takes one when a budget is set (``slots``), or when its command or
environment uses ``{slot}``: without a budget the numbers are unbounded, so
``{slot}`` still tells concurrent shards apart, and nothing waits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from . import attempt, lockfile, system

#: Seconds between two tries while a lease is held by another (±25% jitter).
POLL_INTERVAL = 0.025
#: Seconds between two full looks at the leases we wait for, which prune a
#: lease whose holder died; in between, only a missing lock file is tried.
PRUNE_INTERVAL = 0.5
#: Seconds between two checks that the leases we hold are still ours.
CHECK_INTERVAL = 0.5


def slot_lock(prefix: str, number: int) -> str:
    """``<prefix>-slot-<number>``: the lock of one slot."""
    return f"{prefix}-slot-{number}"


def resource_lock(prefix: str, resource: str) -> str:
    """``<prefix>-resource-<name>``: the lock of one named resource."""
    return f"{prefix}-resource-{resource}"


def parse_lease_lock(prefix: str, name: str):
    """``("slot", K)`` or ``("resource", NAME)`` for a lease lock name of
    ``prefix``, else None."""
    head = f"{prefix}-slot-"
    if name.startswith(head) and name[len(head) :].isdigit():
        return "slot", int(name[len(head) :])
    head = f"{prefix}-resource-"
    if name.startswith(head) and len(name) > len(head):
        return "resource", name[len(head) :]
    return None


class Leases:
    """The leases of one attempt: ``resources`` (taken sorted by name), a slot
    when ``slot`` is true (from 1 to ``budget``, or unbounded for None), each a
    lock of ``ttl`` seconds (renewed at half of it) under ``root``. Once the
    slot is known, ``{slot}`` is filled into the command's arguments at
    ``slot_args`` and the environment's ``slot_env`` (``str.format`` templates
    with ``slot`` their only field: see ``plan.expand_argv``)."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        prefix: str,
        owner: str,
        agent: str,
        ttl: float,
        slot: bool = False,
        budget: int | None = None,
        resources: tuple = (),
        slot_args: tuple = (),
        slot_env: tuple = (),
    ) -> None:
        self.root = Path(root)
        self.prefix, self.owner, self.agent, self.ttl = prefix, owner, agent, float(ttl)
        self.wants_slot, self.budget = bool(slot), budget
        self.resources = tuple(sorted(set(resources)))
        self.slot_args, self.slot_env = tuple(slot_args), tuple(slot_env)
        #: The process named in our lease files: set by :meth:`take` (or :func:`main`).
        self.holder: lockfile.Claimant | None = None
        #: The slot we hold, once taken.
        self.slot: int | None = None
        self.held: list = []  # (lock name, lock_id), in the order taken
        self.lost = False
        self._next_check = self._next_renew = 0.0

    def to_json(self) -> str:
        """What :meth:`from_json` reads: how the attempt process gets its leases."""
        spec = {
            "root": str(self.root),
            "prefix": self.prefix,
            "owner": self.owner,
            "agent": self.agent,
            "ttl": self.ttl,
            "slot": self.wants_slot,
            "budget": self.budget,
            "resources": list(self.resources),
            "slot_args": list(self.slot_args),
            "slot_env": list(self.slot_env),
        }
        return json.dumps(spec, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Leases:
        """The leases :meth:`to_json` wrote; ValueError (or TypeError, KeyError) if malformed."""
        spec = json.loads(text)
        root = spec.pop("root")
        return cls(root, **spec)

    def argv(self) -> list:
        """The head of the attempt process's command line with these leases (:func:`main`)."""
        return system.bootstrap("leases") + [self.to_json()]

    def take(self, holder=None, *, stopped, abandoned=None, on_wait=None) -> bool:
        """Take every lease in lock order, for ``holder`` (a ``lockfile.Claimant``;
        None: the one :func:`main` set), waiting while another holds one and
        telling ``on_wait`` what for ("a slot", "resource 'db'") each time a wait
        begins. True once all are ours; False, none held, as soon as
        ``stopped()`` or ``abandoned()`` (any but None) says so or a lease we
        hold is lost. OSError (none held) if a lock file cannot be written."""
        self.holder = holder or self.holder
        if self.holder is None:
            raise ValueError("leases need a holder")
        now = time.monotonic()
        self.lost, self._next_check = False, now + CHECK_INTERVAL
        self._next_renew = now + max(self._ttl_sec() / 2, 0.5)
        wanted = [(resource_lock(self.prefix, r), f"resource '{r}'") for r in self.resources]
        try:
            lockfile.ensure_dirs(self.root)
            for name, what in wanted:
                if not self._wait(
                    lambda full, name=name: self._try(name, full), what, stopped, abandoned, on_wait
                ):
                    self.release()
                    return False
            if self.wants_slot and not self._wait(
                self._try_slot, "a slot", stopped, abandoned, on_wait
            ):
                self.release()
                return False
        except BaseException:
            self.release()
            raise
        return True

    def _wait(self, take_one, what: str, stopped, abandoned, on_wait) -> bool:
        told, next_full = False, 0.0
        while True:
            now = time.monotonic()
            full = now >= next_full
            if full:
                next_full = now + PRUNE_INTERVAL
            if take_one(full):
                return True
            if not told and on_wait is not None:
                on_wait(what)
            told = True
            gone = abandoned is not None and abandoned() is not None
            if stopped() or gone or not self.keep():
                return False
            # NOTE: jitter from os.urandom: the random module costs the attempt process its start.
            time.sleep(POLL_INTERVAL * (0.75 + os.urandom(1)[0] / 510))

    def _try(self, name: str, full: bool) -> bool:
        """One try at ``name``; without ``full``, only if its lock file is missing."""
        if not full and os.path.lexists(lockfile.lock_path(self.root, name)):
            return False
        assert self.holder is not None
        lock = lockfile.take_lock(self.root, name, self.holder, self._ttl_sec())
        if lock is None:
            return False
        self.held.append((name, lock.lock_id))
        return True

    def _try_slot(self, full: bool) -> bool:
        """One try at the lowest free slot: every number up to the budget, or,
        without one, every number until one is ours (one always is free)."""
        try:
            present = set(os.listdir(lockfile.locks_dir(self.root)))
        except OSError:
            present = set()
        number = 0
        while self.budget is None or number < self.budget:
            number += 1
            name = slot_lock(self.prefix, number)
            if not full and name + ".json" in present:
                continue
            if self._try(name, True):
                self.slot = number
                return True
        return False

    def _ttl_sec(self) -> int:
        return int(max(self.ttl, 1.0)) if self.ttl > 0 else 0

    def keep(self) -> bool:
        """Renew our leases at half their TTL and look, every CHECK_INTERVAL
        seconds, whether they are still ours; False once one is lost (taken
        over or removed): its command must stop, as for a lost shard lock."""
        now = time.monotonic()
        if self.lost or now < self._next_check or not self.held:
            return not self.lost
        self._next_check = now + CHECK_INTERVAL
        renewing = self._ttl_sec() > 0 and now >= self._next_renew
        if renewing:
            self._next_renew = now + max(self._ttl_sec() / 2, 0.5)
        assert self.holder is not None
        for name, lock_id in self.held:
            if renewing and lockfile.renew(self.root, name, self.holder) is False:
                self.lost = True
            elif not lockfile.holds(lockfile.lock_path(self.root, name), lock_id):
                self.lost = True
        return not self.lost

    def release(self) -> None:
        """Give back every lease we hold, the last taken first (idempotent)."""
        held, self.held = self.held, []
        for name, lock_id in reversed(held):
            if self.holder is not None:
                lockfile.release(self.root, name, self.holder, lock_id)

    def fill(self, command: list, env: dict | None) -> tuple:
        """``command`` and ``env`` (None: ours) with the slot number filled in."""
        if self.slot is None:
            return command, env
        value = str(self.slot)
        args = set(self.slot_args)
        command = [
            word.format(slot=value) if at in args else word for at, word in enumerate(command)
        ]
        if self.slot_env:
            env = dict(os.environ if env is None else env)
            for name in self.slot_env:
                if name in env:
                    env[name] = env[name].format(slot=value)
        return command, env


def main(argv: list) -> int:
    """The attempt process of a shard with leases (:meth:`Leases.argv`)::

        LEASES RECORD FIELDS --agent PID ... -- CMD...

    LEASES is :meth:`Leases.to_json`; the rest is ``attempt.main``'s. This
    process holds the leases, so they are freed once it has stopped the command."""
    try:
        leases = Leases.from_json(argv[0])
    except (IndexError, ValueError, TypeError, KeyError, AttributeError):
        usage = attempt.USAGE_LINE.replace("attempt", "leases LEASES", 1)
        print(usage, file=sys.stderr)
        return attempt.USAGE
    pid = os.getpid()
    started = system.process_start_time(pid) or 0
    leases.holder = lockfile.Claimant(
        leases.owner, lockfile.host_name(), pid, leases.agent, started
    )
    return attempt.main(argv[1:], leases=leases)
