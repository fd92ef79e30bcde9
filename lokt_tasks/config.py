"""Read and validate shards.toml into plain dataclasses.

IMPLEMENTATION PENDING (config/plan helper): see the contract below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Tuple

CONFIG_NAME = "shards.toml"
SPLITS = ("name", "size", "timings")
ENGINES = ("auto", "lokt", "embedded")


@dataclass(frozen=True)
class ExplicitShard:
    """One ``[[tasks.NAME.shard]]`` entry: literal items and/or globs."""

    items: Tuple[str, ...] = ()
    glob: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskConfig:
    name: str
    #: The command template, as written (split into argv with shlex by plan).
    run: str
    glob: Tuple[str, ...] = ()
    exclude: Tuple[str, ...] = ()
    #: A command whose non-empty output lines are the items.
    collect: Optional[str] = None
    #: Shard count for dynamic tasks; None for explicit shards.
    shards: Optional[int] = None
    #: ``shards = "per-item"``: one shard per item.
    per_item: bool = False
    explicit: Tuple[ExplicitShard, ...] = ()
    split: str = "name"
    #: Lock TTL in seconds, and as written (a lokt duration such as "10m").
    ttl: float = 600.0
    ttl_text: str = "10m"
    engine: str = "auto"
    #: Parallel shards for shard-all; None means the CPU count.
    jobs: Optional[int] = None
    #: Absolute path of the durations file used by split = "timings".
    durations: Optional[Path] = None


@dataclass(frozen=True)
class Config:
    #: Absolute path of shards.toml.
    path: Path
    #: The directory holding shards.toml: globs are relative to it, and
    #: commands run in it.
    root: Path
    tasks: Mapping[str, TaskConfig] = field(default_factory=dict)
    #: Results directory from ``[defaults] results``, absolute, or None.
    results: Optional[Path] = None
