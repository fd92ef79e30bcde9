"""``--id auto``: the shard index and count that a CI system hands each runner.

Each CI names them differently and counts from 0 or from 1; this module
turns them into our 1-based shard index and a total. GitHub Actions has no
variable of its own: pass ``--id ${{ strategy.job-index }}`` style values
through LOKT_TASKS_SHARD_INDEX / LOKT_TASKS_SHARD_TOTAL (0-based), or use
``--id`` and ``--total`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from .errors import UsageError


@dataclass(frozen=True)
class CiProvider:
    name: str
    index_var: str
    total_var: str
    #: 0 when the CI counts runners from 0, 1 when from 1.
    base: int


#: Checked in this order; the first whose index variable is set wins.
PROVIDERS = (
    CiProvider("lokt-tasks", "LOKT_TASKS_SHARD_INDEX", "LOKT_TASKS_SHARD_TOTAL", 0),
    CiProvider("GitLab CI", "CI_NODE_INDEX", "CI_NODE_TOTAL", 1),
    CiProvider("CircleCI", "CIRCLE_NODE_INDEX", "CIRCLE_NODE_TOTAL", 0),
    CiProvider("Buildkite", "BUILDKITE_PARALLEL_JOB", "BUILDKITE_PARALLEL_JOB_COUNT", 0),
    CiProvider("Bazel", "TEST_SHARD_INDEX", "TEST_TOTAL_SHARDS", 0),
)


@dataclass(frozen=True)
class CiShard:
    provider: str
    #: 1-based, as in ``--id``.
    index: int
    total: int


def shard_from_env(env: Mapping[str, str]) -> CiShard:
    """Find this runner's shard in ``env``, or explain which variables we looked for."""
    for provider in PROVIDERS:
        raw_index = env.get(provider.index_var)
        if raw_index is None or raw_index == "":
            continue
        raw_total = env.get(provider.total_var)
        if not raw_total:
            raise UsageError(
                f"--id auto: {provider.index_var} is set but {provider.total_var} is not ({provider.name})"
            )
        index = _whole_number(raw_index, provider.index_var)
        total = _whole_number(raw_total, provider.total_var)
        if total < 1:
            raise UsageError(
                f"--id auto: {provider.total_var}={raw_total} must be at least 1 ({provider.name})"
            )
        one_based = index - provider.base + 1
        if not 1 <= one_based <= total:
            first, last = provider.base, total - 1 + provider.base
            raise UsageError(
                f"--id auto: {provider.index_var}={raw_index} is outside {first}..{last} "
                f"for {provider.total_var}={raw_total} ({provider.name} counts from {provider.base})"
            )
        return CiShard(provider.name, one_based, total)
    names = ", ".join(p.index_var for p in PROVIDERS)
    raise UsageError(
        f"--id auto: no CI shard index in the environment (looked for {names}); pass --id N instead"
    )


def touch_bazel_status_file(env: Mapping[str, str]) -> None:
    """Tell Bazel that this test runner understands sharding, as its protocol asks."""
    status_file: Optional[str] = env.get("TEST_SHARD_STATUS_FILE")
    if status_file:
        Path(status_file).touch()


def _whole_number(raw: str, variable: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise UsageError(f"--id auto: {variable}={raw!r} is not a whole number") from None
