"""Merge records and live lock state into one verdict per shard and overall.

IMPLEMENTATION PENDING (results/verdict helper).
"""
from __future__ import annotations

#: Per-shard states, in the order they are explained in the README.
STATES = ("passed", "failed", "running", "crashed", "interrupted", "missing", "outdated", "corrupt")
