"""This repository's own tasks: lokt-tasks, dogfooded (see shards.toml)."""

from lokt_tasks.tasks import durations, plan, shard, shard_all, status, verify  # noqa: F401
