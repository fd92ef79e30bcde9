"""--id auto: each CI's variables, and the 0-based / 1-based difference."""

import pytest

from lokt_tasks.ci import shard_from_env, touch_bazel_status_file
from lokt_tasks.errors import USAGE, UsageError


@pytest.mark.parametrize(
    "env, provider, index, total",
    [
        ({"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "3"}, "GitLab CI", 1, 3),
        ({"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "3"}, "GitLab CI", 3, 3),
        ({"CIRCLE_NODE_INDEX": "0", "CIRCLE_NODE_TOTAL": "4"}, "CircleCI", 1, 4),
        ({"CIRCLE_NODE_INDEX": "3", "CIRCLE_NODE_TOTAL": "4"}, "CircleCI", 4, 4),
        ({"BUILDKITE_PARALLEL_JOB": "0", "BUILDKITE_PARALLEL_JOB_COUNT": "2"}, "Buildkite", 1, 2),
        ({"BUILDKITE_PARALLEL_JOB": "1", "BUILDKITE_PARALLEL_JOB_COUNT": "2"}, "Buildkite", 2, 2),
        ({"TEST_SHARD_INDEX": "0", "TEST_TOTAL_SHARDS": "5"}, "Bazel", 1, 5),
        ({"TEST_SHARD_INDEX": "4", "TEST_TOTAL_SHARDS": "5"}, "Bazel", 5, 5),
        ({"LOKT_TASKS_SHARD_INDEX": "0", "LOKT_TASKS_SHARD_TOTAL": "2"}, "lokt-tasks", 1, 2),
        ({"LOKT_TASKS_SHARD_INDEX": "1", "LOKT_TASKS_SHARD_TOTAL": "2"}, "lokt-tasks", 2, 2),
    ],
)
def test_each_ci_maps_to_a_one_based_shard(env, provider, index, total):
    found = shard_from_env(env)
    assert (found.provider, found.index, found.total) == (provider, index, total)


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"CI_NODE_INDEX": "0", "CI_NODE_TOTAL": "3"}, "CI_NODE_INDEX=0 is outside 1..3"),
        (
            {"CIRCLE_NODE_INDEX": "4", "CIRCLE_NODE_TOTAL": "4"},
            "CIRCLE_NODE_INDEX=4 is outside 0..3",
        ),
        ({"CIRCLE_NODE_INDEX": "1"}, "CIRCLE_NODE_TOTAL is not"),
        (
            {"TEST_SHARD_INDEX": "x", "TEST_TOTAL_SHARDS": "2"},
            "TEST_SHARD_INDEX='x' is not a whole number",
        ),
        ({"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "0"}, "CI_NODE_TOTAL=0 must be at least 1"),
        ({}, "no CI shard index in the environment"),
    ],
)
def test_bad_or_missing_ci_variables_are_usage_errors(env, fragment):
    with pytest.raises(UsageError) as caught:
        shard_from_env(env)
    assert fragment in str(caught.value)
    assert caught.value.exit_code == USAGE


def test_bazel_status_file_is_touched(tmp_path):
    status = tmp_path / "status"
    touch_bazel_status_file({"TEST_SHARD_STATUS_FILE": str(status)})
    assert status.exists()
    touch_bazel_status_file({})  # no variable: nothing to do, no error
