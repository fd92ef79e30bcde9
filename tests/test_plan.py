"""Plans: which items, in which shard, with which command, the same everywhere."""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Iterable, Optional

import pytest

from lokt_tasks.attempt import fill_template
from lokt_tasks.config import load_config
from lokt_tasks.errors import ConfigError, UsageError
from lokt_tasks.plan import (
    build_plan,
    fingerprint,
    glob_files,
    plan_to_json,
    render_plan,
    rerun_groups,
    rerun_plan,
    takes_whole_items,
)

PYTHON = shlex.quote(sys.executable)
#: A run template that prints the argv it receives as JSON.
PRINT_ARGV = f"{PYTHON} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"


def make_files(root: Path, files: Iterable[str], sizes: Optional[Dict[str, int]] = None) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (sizes or {}).get(name, 1))


def plan_for(root: Path, toml: str, task: str = "test", **options):
    (root / "shards.toml").write_text(textwrap.dedent(toml), encoding="utf-8")
    return build_plan(load_config(root / "shards.toml"), task, **options)


def groups(plan):
    return [list(shard.items) for shard in plan.shards]


TEN = [f"tests/test_{letter}.py" for letter in "abcdefghij"]


def test_name_split_is_contiguous_sorted_chunks(tmp_path):
    make_files(tmp_path, reversed(TEN))
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest -q {items}"
        glob = "tests/test_*.py"
        shards = 3
    """,
    )
    assert groups(plan) == [TEN[0:4], TEN[4:7], TEN[7:10]]
    assert [shard.argv for shard in plan.shards][0] == ("pytest", "-q", *TEN[0:4])
    assert [(shard.index, shard.total, shard.lock_name) for shard in plan.shards] == [
        (1, 3, "test-shard-1"),
        (2, 3, "test-shard-2"),
        (3, 3, "test-shard-3"),
    ]
    assert plan.split == "name"
    assert plan.cwd == tmp_path
    assert plan.warnings == ()


def test_name_split_counts_items_without_timings_and_seconds_with_them(tmp_path):
    make_files(tmp_path, TEN, {name: 100 * (index + 1) for index, name in enumerate(TEN)})
    toml = """\
        [tasks.test]
        run = "pytest {items}"
        glob = "tests/test_*.py"
        shards = 3
        split = "%s"
    """
    by_count = plan_for(tmp_path, toml % "name", durations={"tests/unrelated.py": 5.0})
    assert [shard.weight for shard in by_count.shards] == [4.0, 3.0, 3.0]
    assert [shard.estimate for shard in by_count.shards] == [None, None, None]
    assert (by_count.stats.unit, by_count.stats.total, by_count.stats.largest) == (
        "items",
        10.0,
        4.0,
    )
    assert by_count.stats.balance == pytest.approx(4 / (10 / 3))
    text = render_plan(by_count)
    assert "  shard  items  lock" in text and "  1/3        4  test-shard-1" in text
    assert (
        "total 10 items; ideal 3.3 items per shard; lower bound 3.3 items;"
        " balance 1.20 (1.00 is even)" in text
    )
    data = plan_to_json(by_count)
    assert data["stats"]["unit"] == "items" and [shard["weight"] for shard in data["shards"]] == [
        4.0,
        3.0,
        3.0,
    ]

    by_time = plan_for(
        tmp_path, toml % "name", durations={"tests/test_a.py": 8.0, "tests/test_j.py": 2.0}
    )
    assert groups(by_time) == groups(by_count)
    # Items without a time weigh the mean (5 s): 8+5+5+5, 5+5+5, 5+5+2.
    assert [shard.estimate for shard in by_time.shards] == [23.0, 15.0, 12.0]
    assert by_time.stats.unit == "seconds"
    assert "  shard  items  estimate  lock" in render_plan(by_time)

    by_size = plan_for(tmp_path, toml % "size")
    assert by_size.stats.unit == "bytes"
    assert by_size.stats.total == sum(100 * (index + 1) for index in range(10))


def test_same_plan_in_another_checkout_created_in_another_order(tmp_path):
    toml = """\
        [tasks.test]
        run = "pytest -q {items} --junitxml={junit}"
        glob = ["tests/**/*.py", "lib/*.py"]
        exclude = ["tests/fixtures"]
        shards = 4
        split = "size"
    """
    names = TEN + ["tests/unit/z.py", "tests/unit/deep/y.py", "lib/m.py", "tests/fixtures/skip.py"]
    sizes = {name: 10 + 7 * index for index, name in enumerate(names)}
    first, second = tmp_path / "one", tmp_path / "two"
    make_files(first, names, sizes)
    make_files(second, reversed(names), sizes)

    plan_one = plan_for(first, toml)
    plan_two = plan_for(second, toml)
    assert plan_to_json(plan_one)["shards"] == plan_to_json(plan_two)["shards"]
    assert plan_for(first, toml) == plan_one
    assert "tests/fixtures/skip.py" not in {
        item for shard in plan_one.shards for item in shard.items
    }


def test_size_split_is_longest_first(tmp_path):
    sizes = {"a.py": 40, "b.py": 100, "c.py": 10, "d.py": 60, "e.py": 50}
    make_files(tmp_path, sizes, sizes)
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items}"
        glob = "*.py"
        shards = 2
        split = "size"
    """,
    )
    # b(100) -> 1; d(60) -> 2; e(50) -> 2 (110); a(40) -> 1 (140); c(10) -> 2 (120)
    assert groups(plan) == [["a.py", "b.py"], ["c.py", "d.py", "e.py"]]
    assert [shard.weight for shard in plan.shards] == [140.0, 120.0]
    assert plan.stats.unit == "bytes"
    assert [shard.estimate for shard in plan.shards] == [None, None]


def test_timings_split_uses_durations_and_the_mean_for_unknown_items(tmp_path):
    make_files(tmp_path, ["a.py", "b.py", "c.py", "d.py"])
    toml = """\
        [tasks.test]
        run = "pytest {items}"
        glob = "*.py"
        shards = 2
        split = "timings"
    """
    plan = plan_for(tmp_path, toml, durations={"a.py": 30.0, "b.py": 10.0, "c.py": 2.0})
    # d.py has no time: it weighs the mean, 14 s. a(30) -> 1; d(14) -> 2; b(10) -> 2; c(2) -> 2.
    assert groups(plan) == [["a.py"], ["b.py", "c.py", "d.py"]]
    assert [shard.estimate for shard in plan.shards] == [30.0, 26.0]
    assert plan.stats.unit == "seconds"
    assert plan.stats.total == 56.0
    assert plan.stats.ideal == 28.0
    assert plan.stats.lower_bound == 30.0
    assert plan.stats.heaviest_item == "a.py"
    assert plan.stats.balance == pytest.approx(30.0 / 28.0)


def test_timings_are_read_from_the_durations_file(tmp_path):
    make_files(tmp_path, ["a.py", "b.py", "c.py"])
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "times.json").write_text(json.dumps({"c.py": 9.0, "a.py": 1.0, "b.py": 1.0}))
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items}"
        glob = "*.py"
        shards = 2
        split = "timings"
        durations = "ci/times.json"
    """,
    )
    assert groups(plan) == [["c.py"], ["a.py", "b.py"]]


def test_a_corrupt_durations_file_costs_its_timings_with_a_warning(tmp_path):
    make_files(tmp_path, ["a.py", "b.py"])
    (tmp_path / "shard-durations.json").write_text("<<<<<<< HEAD\n{}\n=======\n")
    toml = """\
        [tasks.test]
        run = "pytest {items}"
        glob = "*.py"
        shards = 2
        split = "%s"
    """
    for split in ("timings", "name"):
        plan = plan_for(tmp_path, toml % split)
        assert groups(plan) == [["a.py"], ["b.py"]]
        assert len(plan.warnings) == 1, plan.warnings
        assert plan.warnings[0].startswith(f"{tmp_path}/shard-durations.json: corrupt durations")
        assert plan.warnings[0].endswith("its timings are left out")
        assert plan.shards[0].estimate is None


def test_timings_without_any_known_time_fall_back_to_sizes(tmp_path):
    sizes = {"a.py": 5, "b.py": 500, "c.py": 400, "d.py": 90}
    make_files(tmp_path, sizes, sizes)
    toml = """\
        [tasks.test]
        run = "pytest {items}"
        glob = "*.py"
        shards = 2
        split = "%s"
    """
    by_timings = plan_for(tmp_path, toml % "timings", durations={"unrelated.py": 3.0})
    by_size = plan_for(tmp_path, toml % "size")
    # b(500) -> 1; c(400) -> 2; d(90) -> 2 (490); a(5) -> 2 (495)
    assert groups(by_timings) == groups(by_size) == [["b.py"], ["a.py", "c.py", "d.py"]]
    assert by_timings.stats.unit == "bytes"


def test_zero_weights_still_fill_every_shard(tmp_path):
    make_files(tmp_path, ["a.py", "b.py", "c.py", "d.py", "e.py"], {})
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items}"
        glob = "*.py"
        shards = 3
        split = "timings"
    """,
        durations={name: 0.0 for name in ["a.py", "b.py", "c.py", "d.py", "e.py"]},
    )
    assert groups(plan) == [["a.py", "d.py"], ["b.py", "e.py"], ["c.py"]]


def skewed_durations():
    """A few long items (named to sort together) among many short ones."""
    generator = random.Random(7)
    durations = {f"tests/a_long_{index}.py": generator.uniform(25, 50) for index in range(6)}
    durations.update(
        {f"tests/b_short_{index:03d}.py": generator.uniform(0.2, 2.5) for index in range(200)}
    )
    return durations


@pytest.mark.parametrize("count", [2, 4, 8])
def test_timings_split_is_near_the_lower_bound_and_beats_name_split(tmp_path, count):
    durations = skewed_durations()
    make_files(tmp_path, durations)
    toml = f"""\
        [tasks.test]
        run = "pytest {{items}}"
        glob = "tests/*.py"
        shards = {count}
        split = "%s"
    """
    by_timings = plan_for(tmp_path, toml % "timings", durations=durations)
    by_name = plan_for(tmp_path, toml % "name", durations=durations)

    assert by_timings.stats.lower_bound == pytest.approx(
        max(sum(durations.values()) / count, max(durations.values()))
    )
    assert by_timings.stats.largest <= 1.05 * by_timings.stats.lower_bound
    assert by_name.stats.largest > 1.3 * by_timings.stats.largest
    assert sorted(item for shard in by_timings.shards for item in shard.items) == sorted(durations)


def test_per_item_makes_one_shard_per_item(tmp_path):
    make_files(tmp_path, ["b.py", "a.py", "c.py"])
    plan = plan_for(
        tmp_path,
        """\
        [tasks.lint]
        run = "ruff check {items}"
        glob = "*.py"
        shards = "per-item"
    """,
        task="lint",
    )
    assert [shard.argv for shard in plan.shards] == [
        ("ruff", "check", "a.py"),
        ("ruff", "check", "b.py"),
        ("ruff", "check", "c.py"),
    ]
    assert plan.split == "per-item"
    assert [shard.lock_name for shard in plan.shards] == [
        "lint-shard-1",
        "lint-shard-2",
        "lint-shard-3",
    ]


def test_shard_count_override(tmp_path):
    make_files(tmp_path, TEN)
    toml = """\
        [tasks.test]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = 3
    """
    assert len(plan_for(tmp_path, toml, shards=5).shards) == 5
    assert len(plan_for(tmp_path, toml, shards=1).shards) == 1
    for wrong in (0, -1, 10001, True):
        with pytest.raises(UsageError) as raised:
            plan_for(tmp_path, toml, shards=wrong)
        assert raised.value.exit_code == 2


def test_more_shards_than_items_is_clamped_with_a_warning(tmp_path):
    make_files(tmp_path, ["a.py", "b.py"])
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items}"
        glob = "*.py"
        shards = 5
    """,
    )
    assert groups(plan) == [["a.py"], ["b.py"]]
    assert [shard.total for shard in plan.shards] == [2, 2]
    assert plan.warnings == (
        "task 'test' has 2 item(s) for 5 shards; using 2 shard(s),"
        " since an empty shard would have nothing to run",
    )


HOSTILE = [
    "tests/with space.py",
    "tests/single'quote.py",
    'tests/double"quote.py',
    "tests/$(touch PWNED).py",
    "tests/`touch PWNED`.py",
    "tests/semi;colon && rm -rf x.py",
    "tests/glob*[ab]?.py",
    "tests/{items}.py",
    "tests/ünïcödé €.py",
    "tests/new\nline.py",
    "-rf.py",
    "--help.py",
]


def test_hostile_names_arrive_as_single_arguments(tmp_path):
    make_files(tmp_path, HOSTILE)
    plan = plan_for(
        tmp_path,
        f"""\
        [tasks.test]
        run = {json.dumps(PRINT_ARGV + " {items}")}
        glob = ["tests/*.py", "*.py"]
        shards = 2
    """,
    )
    sent = sorted(item for shard in plan.shards for item in shard.items)
    assert sent == sorted(HOSTILE)

    received = []
    for shard in plan.shards:
        output = subprocess.run(
            shard.argv, cwd=plan.cwd, capture_output=True, text=True, check=True
        ).stdout
        received.extend(json.loads(output))
    assert sorted(received) == sorted(
        "./" + item if item.startswith("-") else item for item in HOSTILE
    )
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "tests" / "PWNED").exists()


def test_leading_dash_is_only_prefixed_for_existing_paths(tmp_path):
    make_files(tmp_path, ["-v.py"])
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items}"
        [[tasks.test.shard]]
        items = ["-v.py", "-k"]
    """,
    )
    assert plan.shards[0].items == ("-k", "-v.py")
    assert plan.shards[0].argv == ("pytest", "-k", "./-v.py")


def test_items_joined_inside_an_argument_and_other_placeholders(tmp_path):
    collect = (
        f"{PYTHON} -c 'print(\"\\n  TestB\\n  TestA  \\nTestC\\nTestA\\n\\nok example.com/pkg\")'"
    )
    run = "go test -run '^({items:|})$' -json={junit} -tag={task}-{shard}of{total} {{x}} ./pkg"
    plan = plan_for(
        tmp_path,
        f"""\
        [tasks.go]
        run = {json.dumps(run)}
        collect = {json.dumps(collect)}
        shards = 2
    """,
        task="go",
    )
    assert [shard.argv for shard in plan.shards] == [
        ("go", "test", "-run", "^(TestA|TestB)$", "-json={junit}", "-tag=go-1of2", "{x}", "./pkg"),
        ("go", "test", "-run", "^(TestC)$", "-json={junit}", "-tag=go-2of2", "{x}", "./pkg"),
    ]
    assert all(shard.wants_junit for shard in plan.shards)
    # The template a retry fills with other items: the same command, slots for the items.
    assert json.loads(plan.shards[1].template) == [
        *("go", "test", "-run", ["^(", ["|"], ")$"], "-json={junit}", "-tag=go-2of2", "{x}"),
        "./pkg",
    ]
    assert fill_template(json.loads(plan.shards[1].template), ["TestZ", "TestY"], ".")[3] == (
        "^(TestZ|TestY)$"
    )


def test_a_rerun_plan_takes_test_ids_under_locks_of_its_own(tmp_path):
    make_files(tmp_path, ["tests/test_a.py", "-dash.py"])
    toml = """\
        [tasks.test]
        run = "pytest -q --junitxml={junit} {items}"
        glob = ["tests/*.py"]
        shards = 1
    """
    plan_for(tmp_path, toml)
    config = load_config(tmp_path / "shards.toml")
    assert takes_whole_items(config.tasks["test"])
    ids = ["tests/test_a.py::test_b", "-dash.py", "tests/test_a.py::test_a[x y]"]
    assert rerun_groups(ids, 2) == [
        ["-dash.py", "tests/test_a.py::test_a[x y]"],
        ["tests/test_a.py::test_b"],
    ]
    assert rerun_groups(ids, 9) == [[item] for item in sorted(ids)]
    rerun = rerun_plan(config, "test", rerun_groups(ids, 2))
    assert [(s.index, s.total, s.lock_name) for s in rerun.shards] == [
        (1, 2, "test-rerun-1"),
        (2, 2, "test-rerun-2"),
    ]
    assert rerun.shards[0].argv == (
        *("pytest", "-q", "--junitxml={junit}"),
        *("./-dash.py", "tests/test_a.py::test_a[x y]"),
    )
    run = config.tasks["test"].run
    assert rerun.shards[1].fingerprint == fingerprint(run, 2, 2, ["tests/test_a.py::test_b"])


def test_collect_runs_in_the_config_directory_and_honours_exclude(tmp_path, monkeypatch):
    make_files(tmp_path, ["tests/test_a.py", "tests/e2e/test_b.py", "tests/test_c.py"])
    monkeypatch.chdir(tmp_path.parent)
    lister = (
        "import pathlib; [print(str(p) + '::test_x') for p in pathlib.Path('tests').rglob('*.py')]"
    )
    plan = plan_for(
        tmp_path,
        f"""\
        [tasks.test]
        run = "pytest {{items}}"
        collect = {json.dumps(PYTHON + " -c " + shlex.quote(lister))}
        exclude = "tests/e2e/**"
        shards = 1
    """,
    )
    assert plan.shards[0].items == ("tests/test_a.py::test_x", "tests/test_c.py::test_x")


def test_collect_from_pytest_stops_before_its_summary(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n"
        "def test_a(): pass\n"
        "class TestK:\n    def test_b(self): pass\n"
        "@pytest.mark.parametrize('x', [1, 2])\ndef test_p(x): pass\n"
    )
    plan = plan_for(
        tmp_path,
        f"""\
        [tasks.test]
        run = "pytest {{items}}"
        collect = {json.dumps(PYTHON + " -m pytest --collect-only -q -p no:cacheprovider tests")}
        shards = "per-item"
    """,
    )
    assert [shard.items for shard in plan.shards] == [
        ("tests/test_x.py::TestK::test_b",),
        ("tests/test_x.py::test_a",),
        ("tests/test_x.py::test_p[1]",),
        ("tests/test_x.py::test_p[2]",),
    ]


def test_glob_rules(tmp_path):
    make_files(
        tmp_path,
        [
            "a.py",
            "src/b.py",
            "src/deep/er/c.py",
            "src/.hidden/d.py",
            ".venv/lib/e.py",
            "src/.f.py",
            "node_modules/pkg/g.py",
            "src/data.txt",
        ],
    )
    (tmp_path / "src" / "dir.py").mkdir()
    os.symlink(tmp_path / "a.py", tmp_path / "src" / "link.py")
    os.symlink(tmp_path / "missing.py", tmp_path / "src" / "broken.py")

    assert glob_files(tmp_path, "**/*.py") == [
        "a.py",
        "node_modules/pkg/g.py",
        "src/b.py",
        "src/deep/er/c.py",
        "src/link.py",
    ]
    assert glob_files(tmp_path, "src/**/*.py") == ["src/b.py", "src/deep/er/c.py", "src/link.py"]
    assert glob_files(tmp_path, "src/*.py") == ["src/b.py", "src/link.py"]
    assert glob_files(tmp_path, "./src//b.py") == ["src/b.py"]
    assert glob_files(tmp_path, "src/.*.py") == ["src/.f.py"]
    assert glob_files(tmp_path, "src/.hidden/*.py") == ["src/.hidden/d.py"]
    assert glob_files(tmp_path, ".venv/**") == [".venv/lib/e.py"]
    assert glob_files(tmp_path, "src/**") == [
        "src/b.py",
        "src/data.txt",
        "src/deep/er/c.py",
        "src/link.py",
    ]
    assert glob_files(tmp_path, "**/*.py", exclude=["node_modules"]) == [
        "a.py",
        "src/b.py",
        "src/deep/er/c.py",
        "src/link.py",
    ]
    assert glob_files(tmp_path, "src/[bc].py") == ["src/b.py"]
    assert glob_files(tmp_path, "src/?.py") == ["src/b.py"]


def test_exclude_by_directory_or_pattern(tmp_path):
    make_files(
        tmp_path,
        ["tests/test_a.py", "tests/fixtures/test_b.py", "tests/slow/test_c.py", "tests/test_d.py"],
    )
    toml = """\
        [defaults]
        exclude = ["tests/fixtures"]
        shards = 1
        [tasks.test]
        run = "pytest {items}"
        glob = "tests/**/test_*.py"
        [tasks.fast]
        run = "pytest {items}"
        glob = "tests/**/test_*.py"
        exclude = ["**/slow/**", "tests/test_d.py"]
    """
    assert plan_for(tmp_path, toml).shards[0].items == (
        "tests/slow/test_c.py",
        "tests/test_a.py",
        "tests/test_d.py",
    )
    assert plan_for(tmp_path, toml, task="fast").shards[0].items == (
        "tests/fixtures/test_b.py",
        "tests/test_a.py",
    )


def test_explicit_shards_pass_items_as_written(tmp_path):
    make_files(tmp_path, ["cmd/tool/main.go", "cmd/other/main.go", "internal/x.go"])
    plan = plan_for(
        tmp_path,
        """\
        [tasks.go]
        run = "go test {items}"
        [[tasks.go.shard]]
        items = ["./pkg/...", "./internal/..."]
        [[tasks.go.shard]]
        glob = ["cmd/*/main.go"]
        items = ["./cmd/..."]
    """,
        task="go",
    )
    assert [shard.argv for shard in plan.shards] == [
        ("go", "test", "./internal/...", "./pkg/..."),
        ("go", "test", "./cmd/...", "cmd/other/main.go", "cmd/tool/main.go"),
    ]
    assert plan.split == "explicit"
    assert plan.warnings == ()


def test_explicit_shard_count_cannot_be_overridden(tmp_path):
    toml = """\
        [tasks.go]
        run = "go test {items}"
        [[tasks.go.shard]]
        items = ["./a/..."]
        [[tasks.go.shard]]
        items = ["./b/..."]
    """
    assert len(plan_for(tmp_path, toml, task="go", shards=2).shards) == 2
    with pytest.raises(UsageError, match="has 2 explicit shards"):
        plan_for(tmp_path, toml, task="go", shards=3)


def test_explicit_shards_warn_about_overlaps_and_uncovered_files(tmp_path):
    make_files(
        tmp_path,
        [
            "tests/unit/a.py",
            "tests/unit/b.py",
            "tests/api/c.py",
            "tests/e2e/d.py",
            "tests/e2e/e.py",
        ],
    )
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items}"
        glob = "tests/**/*.py"
        [[tasks.test.shard]]
        items = ["tests/unit/"]
        glob = ["tests/api/*.py"]
        [[tasks.test.shard]]
        glob = ["tests/**/c.py"]
    """,
    )
    assert plan.warnings == (
        "'tests/api/c.py' is in shards 1, 2 of task 'test' (their globs overlap):"
        " it runs more than once",
        "2 file(s) matched by tasks.test.glob are in no shard of task 'test':"
        " 'tests/e2e/d.py', 'tests/e2e/e.py'",
    )


def test_fingerprint_follows_command_count_index_and_items(tmp_path):
    make_files(tmp_path, TEN)
    toml = """\
        [tasks.test]
        run = "%s"
        glob = "tests/*.py"
        shards = %d
    """
    base = plan_for(tmp_path, toml % ("pytest {items}", 2))
    again = plan_for(tmp_path, toml % ("pytest {items}", 2))
    other_command = plan_for(tmp_path, toml % ("pytest -x {items}", 2))
    other_count = plan_for(tmp_path, toml % ("pytest {items}", 3))
    make_files(tmp_path, ["tests/test_k.py"])
    other_items = plan_for(tmp_path, toml % ("pytest {items}", 2))

    prints = [shard.fingerprint for shard in base.shards]
    assert prints == [shard.fingerprint for shard in again.shards]
    assert len(set(prints)) == 2
    assert all(len(value) == 16 and int(value, 16) >= 0 for value in prints)
    for changed in (other_command, other_count, other_items):
        assert not set(prints) & {shard.fingerprint for shard in changed.shards}
    assert fingerprint("pytest {items}", 2, 1, ["a"]) != fingerprint("pytest {items}", 2, 2, ["a"])
    assert fingerprint("pytest {items}", 2, 1, ["a b"]) != fingerprint(
        "pytest {items}", 2, 1, ["a", "b"]
    )


def test_plan_json_and_text(tmp_path):
    make_files(tmp_path, ["a.py", "b.py", "c.py"])
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items} --junitxml={junit}"
        glob = "*.py"
        shards = 2
        split = "timings"
    """,
        durations={"a.py": 61.5, "b.py": 2.0, "c.py": 1.0},
    )
    data = json.loads(json.dumps(plan_to_json(plan)))
    assert sorted(data) == [
        "cwd",
        "overlapping_items",
        "pinned_by_run",
        "shards",
        "split",
        "stats",
        "task",
        "uncovered_items",
        "version",
        "warnings",
    ]
    assert data["shards"][0] == {
        "index": 1,
        "total": 2,
        "lock_name": "test-shard-1",
        "fingerprint": plan.shards[0].fingerprint,
        "items": ["a.py"],
        "argv": ["pytest", "a.py", "--junitxml={junit}"],
        "estimate": 61.5,
        "weight": 61.5,
        "env": {},
        "resources": [],
    }
    assert data["pinned_by_run"] is None
    assert data["stats"] == {
        "unit": "seconds",
        "items": 3,
        "total": 64.5,
        "ideal": 32.25,
        "lower_bound": 61.5,
        "largest": 61.5,
        "balance": 1.907,
        "heaviest_item": "a.py",
    }

    text = render_plan(plan)
    assert "task 'test': 3 item(s) in 2 shard(s), split: timings" in text
    assert "test-shard-2" in text and "1m02s" in text and "balance 1.91" in text
    assert "  2: pytest b.py c.py '--junitxml={junit}'" in text


def test_long_commands_are_cut_unless_full(tmp_path):
    names = [f"tests/test_{index:03d}.py" for index in range(50)]
    make_files(tmp_path, names)
    plan = plan_for(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = 1
    """,
    )
    assert "tests/test_049.py" not in render_plan(plan)
    assert "tests/test_049.py" in render_plan(plan, full=True)


def test_a_pattern_matching_nothing_is_a_config_error_even_when_others_match(tmp_path):
    make_files(tmp_path, ["tests/test_a.py"])
    with pytest.raises(ConfigError) as raised:
        plan_for(
            tmp_path,
            """\
            [tasks.test]
            run = "pytest {items}"
            glob = ["tests/*.py", "test/*.py"]
            shards = 1
        """,
        )
    assert str(raised.value).endswith("tasks.test.glob: 'test/*.py' matches no files")


def test_collect_expands_python_to_the_running_interpreter(tmp_path):
    (tmp_path / "shards.toml").write_text(
        '[tasks.t]\nrun = "echo {items}"\nshards = 2\n'
        'collect = "{python} -c \'import sys; print(sys.executable); print(\\"second\\")\'"\n'
    )
    from lokt_tasks.config import load_config
    from lokt_tasks.plan import build_plan

    plan = build_plan(load_config(tmp_path / "shards.toml"), "t")
    items = sorted(item for shard in plan.shards for item in shard.items)
    assert items == sorted([sys.executable, "second"])


def test_slot_is_left_for_the_attempt_as_a_template_of_its_argument_only(tmp_path):
    make_files(tmp_path, ["a{x}.py", "b.py"])
    plan = plan_for(
        tmp_path,
        """
        [tasks.test]
        run = "pytest --db=app_{slot}_{shard} -k '{{slot}}' --tag={{t}}-{slot} {items}"
        glob = ["*.py"]
        shards = 1
        resources = ["db", "cache"]

        [tasks.test.env]
        DB = "app_{slot}"
        ONLY = "{items:,}"
        PLAIN = "{task}-{{slot}}"
        JUNIT = "{junit}"
        """,
    )
    (shard,) = plan.shards
    assert shard.argv == (
        "pytest",
        "--db=app_{slot}_1",
        "-k",
        "{slot}",  # a literal, from {{slot}}: no template
        "--tag={{t}}-{slot}",  # a template: its literal braces doubled
        "a{x}.py",
        "b.py",
    )
    assert shard.slot_args == (1, 4) and shard.uses_slot
    assert [shard.argv[at].format(slot=7) for at in shard.slot_args] == [
        "--db=app_7_1",
        "--tag={t}-7",
    ]
    assert shard.env == (
        ("DB", "app_{slot}"),
        ("ONLY", "a{x}.py,b.py"),
        ("PLAIN", "test-{slot}"),
        ("JUNIT", "{junit}"),
    )
    assert shard.slot_env == ("DB",) and shard.wants_junit
    assert shard.resources == ("db", "cache")
    shown = plan_to_json(plan)["shards"][0]
    assert shown["env"]["DB"] == "app_{slot}" and shown["resources"] == ["db", "cache"]
    assert "env: DB='app_{slot}' ONLY=" in render_plan(plan)


def test_env_joins_the_fingerprint_only_when_a_task_has_one(tmp_path):
    make_files(tmp_path, ["a.py"])
    toml = '[tasks.test]\nrun = "pytest {items}"\nglob = ["*.py"]\nshards = 1\n'
    plain = plan_for(tmp_path, toml).shards[0]
    assert plain.fingerprint == fingerprint("pytest {items}", 1, 1, ["a.py"])
    assert not plain.uses_slot and plain.env == () and plain.resources == ()
    with_env = plan_for(tmp_path, toml + 'env = { A = "1" }\n').shards[0]
    other_env = plan_for(tmp_path, toml + 'env = { A = "2" }\n').shards[0]
    assert len({plain.fingerprint, with_env.fingerprint, other_env.fingerprint}) == 3


def test_a_retry_template_keeps_slot_arguments_apart_and_fills_them(tmp_path):
    """A retry (attempt.fill_template) builds its command from the template: an
    argument with {slot} is its own part, so the retry gets the slot filled in
    as the shard's command does (through slot_args), the items' braces kept."""
    make_files(tmp_path, ["a{x}.py", "b.py"])
    plan = plan_for(
        tmp_path,
        """
        [tasks.test]
        run = "pytest --junitxml={junit}.{slot} --tag={{t}}-{slot}-{items:,} {items}"
        glob = ["*.py"]
        shards = 1
        """,
    )
    (shard,) = plan.shards
    template = json.loads(shard.template)
    assert template == [
        "pytest",
        {"slot": ["--junitxml={junit}.{slot}"]},
        {"slot": ["--tag={{t}}-{slot}-", [","]]},
        None,
    ]
    assert tuple(fill_template(template, shard.items, str(tmp_path))) == shard.argv
    assert shard.argv[2] == "--tag={{t}}-{slot}-a{{x}}.py,b.py" and shard.slot_args == (1, 2)
    assert shard.argv[2].format(slot=4) == "--tag={t}-4-a{x}.py,b.py"
    retry = fill_template(template, ["c{y}.py"], str(tmp_path), slot=4)
    assert retry == ["pytest", "--junitxml={junit}.4", "--tag={t}-4-c{y}.py", "c{y}.py"]
