"""lokt-tasks: split a test suite into shards, run them under lokt locks, get one verdict.

The invoke collection lives in :mod:`lokt_tasks.tasks` (imported on demand so
that the attempt process, which starts once per shard, stays light).
"""

__version__ = "0.2.0"
