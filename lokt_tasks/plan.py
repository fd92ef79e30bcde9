"""Turn a task's configuration into shards: items, argv, lock name, fingerprint.

IMPLEMENTATION PENDING (config/plan helper): see the contract below.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

#: Left in a shard's argv by the plan; the run layer replaces it with the
#: path where the command should write its JUnit XML report.
JUNIT_PLACEHOLDER = "{junit}"


@dataclass(frozen=True)
class Shard:
    task: str
    #: 1-based, as in ``--id`` and in the lock name.
    index: int
    total: int
    items: Tuple[str, ...]
    #: The command, placeholders expanded except ``{junit}``.
    argv: Tuple[str, ...]
    #: ``<task>-shard-<index>``.
    lock_name: str
    #: Hex digest over the command template, the shard count and the items:
    #: a record with another fingerprint belongs to another plan.
    fingerprint: str
    #: Estimated seconds (from durations, or a size-based guess), or None.
    estimate: Optional[float] = None

    @property
    def wants_junit(self) -> bool:
        return any(JUNIT_PLACEHOLDER in arg for arg in self.argv)


@dataclass(frozen=True)
class Plan:
    task: str
    #: Directory the commands run in (the directory of shards.toml).
    cwd: Path
    shards: Tuple[Shard, ...]
    split: str = "name"
    warnings: Tuple[str, ...] = ()
