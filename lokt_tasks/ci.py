"""``--id auto``: the shard index and count a CI hands each runner (each CI names them
differently and counts from 0 or 1), as our 1-based shard index and a total."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import UsageError


@dataclass(frozen=True)
class CiProvider:
    name: str
    index_var: str
    total_var: str
    base: int  #: 0 when the CI counts runners from 0, 1 when from 1.


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
    index: int  #: 1-based, as in ``--id``.
    total: int


def shard_from_env(env: Mapping[str, str]) -> CiShard:
    """Find this runner's shard in ``env``, or explain which variables we looked for."""
    for ci in PROVIDERS:
        raw_index, raw_total = env.get(ci.index_var), env.get(ci.total_var)
        if not raw_index:
            continue
        if not raw_total:
            raise _refuse(f"{ci.index_var} is set but {ci.total_var} is not ({ci.name})")
        index = _whole_number(raw_index, ci.index_var) - ci.base + 1
        total = _whole_number(raw_total, ci.total_var)
        if total < 1:
            raise _refuse(f"{ci.total_var}={raw_total} must be at least 1 ({ci.name})")
        if not 1 <= index <= total:
            raise _refuse(
                f"{ci.index_var}={raw_index} is outside {ci.base}..{total - 1 + ci.base} "
                f"for {ci.total_var}={raw_total} ({ci.name} counts from {ci.base})"
            )
        return CiShard(ci.name, index, total)
    names = ", ".join(ci.index_var for ci in PROVIDERS)
    raise _refuse(f"no CI shard index in the environment (looked for {names}); pass --id N instead")


def touch_bazel_status_file(env: Mapping[str, str]) -> None:
    """Tell Bazel that this test runner understands sharding, as its protocol asks."""
    if env.get("TEST_SHARD_STATUS_FILE"):
        Path(env["TEST_SHARD_STATUS_FILE"]).touch()


def _whole_number(raw: str, variable: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise _refuse(f"{variable}={raw!r} is not a whole number") from None


def _refuse(problem: str) -> UsageError:
    return UsageError(f"--id auto: {problem}")
