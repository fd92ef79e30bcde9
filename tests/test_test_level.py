"""Test-level sharding: items are pytest node ids from a collect command.

A real pytest suite in a scratch repository (classes, parametrized tests,
an id with a space), collected with ``pytest --collect-only -q`` and split
into 3 shards that cut across files. Every collected test must run exactly
once: once by node id in a log the suite writes itself, and by the counts
pytest reports, which must add up to those of a plain unsharded run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter

from scratch import cli, pytest_project


def passed_count(output: str) -> int:
    found = re.search(r"(\d+) passed", output)
    assert found, output
    return int(found.group(1))


def test_every_collected_test_runs_exactly_once_across_three_shards(tmp_path):
    project = pytest_project(tmp_path / "p")
    plain = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert plain.returncode == 0, plain.stdout
    collected = (project / "ran.log").read_text().split("\n")[:-1]
    assert len(collected) == passed_count(plain.stdout) == 14
    (project / "ran.log").unlink()

    results = tmp_path / "results"
    sharded = cli(project, "shard-all", "unit", "--results", str(results))
    assert sharded.returncode == 0, sharded.stdout + sharded.stderr

    assert Counter((project / "ran.log").read_text().split("\n")[:-1]) == Counter(collected)
    logs = sorted(results.glob("unit/*/shard-*.log"))
    assert len(logs) == 3
    assert sum(passed_count(log.read_text()) for log in logs) == 14
    reports = sorted(results.glob("unit/*/shard-*.junit.xml"))
    per_shard = [
        len(list(ElementTree.parse(str(report)).getroot().iter("testcase"))) for report in reports
    ]
    assert sum(per_shard) == 14 and all(per_shard)
    files_per_shard = [
        {
            case.get("classname").split(".")[1]
            for case in ElementTree.parse(str(report)).getroot().iter("testcase")
        }
        for report in reports
    ]
    assert any(
        len(files) > 1 for files in files_per_shard
    )  # shards cut across files, not along them

    # The junit reports also gave every node id its own time for split = "timings".
    folded = cli(project, "durations", "unit", "--results", str(results))
    assert folded.returncode == 0, folded.stderr
    timings = json.loads((project / "shard-durations.json").read_text())["tasks"]["unit"]
    assert sorted(timings) == sorted(collected)
    assert all(isinstance(samples, list) and len(samples) == 1 for samples in timings.values())
