"""Shard records: one JSON file per task, run key and shard, written atomically.

IMPLEMENTATION PENDING (results/verdict helper): see the contract below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

RECORD_VERSION = 1

#: Outcomes a record can hold. "running" is the start record.
OUTCOMES = ("running", "passed", "failed", "interrupted", "error")


@dataclass
class Record:
    task: str
    shard: int
    total: int
    fingerprint: str
    run_key: str
    lock_name: str
    agent: str
    owner: str
    host: str
    pid: int
    engine: str
    #: RFC 3339 UTC timestamps; ``ended_at`` is None in the start record.
    started_at: str
    outcome: str = "running"
    ended_at: Optional[str] = None
    duration: Optional[float] = None
    exit_code: Optional[int] = None
    #: Name of the signal that ended the command ("SIGKILL"), or None.
    signal: Optional[str] = None
    #: Path of the shard's log file, or None when output went to the terminal.
    log: Optional[str] = None
    items: int = 0
    message: str = ""
    version: int = RECORD_VERSION


@dataclass(frozen=True)
class CorruptRecord:
    """A record file that could not be read: never counted as passed."""

    path: str
    reason: str
