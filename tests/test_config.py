"""shards.toml: what is accepted, and how everything else is refused."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from lokt_tasks.config import (
    DEFAULT_DURATIONS,
    ExplicitShard,
    Placeholder,
    find_config,
    format_duration,
    get_task,
    load_config,
    parse_duration,
    parse_run_template,
)
from lokt_tasks.errors import USAGE, ConfigError, UsageError
from lokt_tasks.plan import build_plan

CONFIGS = Path(__file__).parent / "configs"
BAD = sorted((CONFIGS / "bad").glob("*.toml"))


def expected_fragment(path: Path) -> str:
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <fragment>'"
    return first[len("# expect: "):]


def write_config(directory: Path, text: str) -> Path:
    path = directory / "shards.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_corpus_is_large_and_every_expectation_is_distinct():
    assert len(BAD) >= 30
    fragments = [expected_fragment(path) for path in BAD]
    assert len(set(fragments)) == len(fragments)


@pytest.mark.parametrize("bad", BAD, ids=[path.stem for path in BAD])
def test_malformed_config_is_one_line_naming_file_and_key(bad, tmp_path, monkeypatch):
    shutil.copytree(CONFIGS / "tree", tmp_path, dirs_exist_ok=True)
    shutil.copy(bad, tmp_path / "shards.toml")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as raised:
        config = load_config(Path("shards.toml"))
        for name in config.tasks:
            build_plan(config, name)

    message = str(raised.value)
    assert raised.value.exit_code == USAGE == 2
    assert "\n" not in message
    assert message.startswith("shards.toml")
    assert expected_fragment(bad) in message


def test_full_config_with_defaults(tmp_path):
    path = write_config(tmp_path, """\
        version = 1

        [defaults]
        ttl = "1h30m"
        engine = "embedded"
        jobs = 3
        split = "size"
        shards = 4
        exclude = ["tests/fixtures/**"]
        results = "out/results"

        [tasks.test]
        run = "pytest -q {items}"
        glob = "tests/**/test_*.py"

        [tasks.lint]
        run = "ruff check {items}"
        glob = ["src/**/*.py", "tests/**/*.py"]
        exclude = "src/generated/**"
        shards = "per-item"
        ttl = "90s"
        engine = "lokt"
        jobs = 1
        durations = "ci/lint-durations.json"

        [tasks.go]
        run = "go test {items}"
        [[tasks.go.shard]]
        items = ["./internal/...", "./pkg/..."]
        [[tasks.go.shard]]
        glob = "cmd/*"
    """)
    config = load_config(path)

    assert config.path == path
    assert config.root == tmp_path
    assert config.results == tmp_path / "out" / "results"
    assert list(config.tasks) == ["test", "lint", "go"]

    test = config.tasks["test"]
    assert test.glob == ("tests/**/test_*.py",)
    assert test.exclude == ("tests/fixtures/**",)
    assert (test.shards, test.per_item, test.split) == (4, False, "size")
    assert (test.ttl, test.ttl_text, test.engine, test.jobs) == (5400.0, "1h30m", "embedded", 3)
    assert test.durations == tmp_path / DEFAULT_DURATIONS

    lint = config.tasks["lint"]
    assert lint.exclude == ("src/generated/**",)
    assert (lint.shards, lint.per_item) == (None, True)
    assert (lint.ttl, lint.ttl_text, lint.engine, lint.jobs) == (90.0, "90s", "lokt", 1)
    assert lint.durations == tmp_path / "ci" / "lint-durations.json"

    go = config.tasks["go"]
    assert go.shards is None
    assert go.explicit == (
        ExplicitShard(items=("./internal/...", "./pkg/..."), glob=()),
        ExplicitShard(items=(), glob=("cmd/*",)),
    )


def test_defaults_when_nothing_is_set(tmp_path):
    path = write_config(tmp_path, """\
        [tasks.unit]
        run = "pytest {items}"
        collect = "pytest --collect-only -q"
        shards = 2
    """)
    task = load_config(path).tasks["unit"]
    assert (task.ttl, task.ttl_text, task.engine, task.jobs, task.split) == (600.0, "10m", "auto", None, "name")
    assert task.collect == "pytest --collect-only -q"
    assert load_config(path).results is None


def test_task_names_may_use_dots_dashes_and_underscores(tmp_path):
    path = write_config(tmp_path, """\
        [tasks."unit.fast-1_a"]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = 1
    """)
    assert list(load_config(path).tasks) == ["unit.fast-1_a"]


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "ünï", "a b", ""])
def test_task_names_that_are_not_lock_names_are_refused(tmp_path, name):
    path = write_config(tmp_path, f"""\
        [tasks."{name}"]
        run = "pytest {{items}}"
        glob = "tests/*.py"
        shards = 1
    """)
    with pytest.raises(ConfigError, match="task names may only use"):
        load_config(path)


def test_error_names_the_absolute_file_outside_the_current_directory(tmp_path, monkeypatch):
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    path = write_config(project, """\
        [tasks.test]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = "2"
    """)
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}: tasks.test.shards: ")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "shards.toml")
    (tmp_path / "shards.toml").write_bytes(b"\xff\xfe[tasks]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "shards.toml")


def test_find_config_walks_up(tmp_path):
    path = write_config(tmp_path, "")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_config(deep) == path
    assert find_config(tmp_path) == path


def test_find_config_says_where_it_looked(tmp_path):
    start = tmp_path / "no" / "config" / "here"
    start.mkdir(parents=True)
    with pytest.raises(ConfigError) as raised:
        find_config(start)
    assert str(raised.value) == (
        f"no shards.toml found in {start} or any parent directory (use --config PATH)"
    )
    assert raised.value.exit_code == 2


def test_get_task_lists_the_known_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, """\
        [tasks.unit]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = 1
        [tasks.lint]
        run = "ruff {items}"
        glob = "src/*.py"
        shards = 1
    """)
    config = load_config(Path("shards.toml"))
    assert get_task(config, "lint").name == "lint"
    with pytest.raises(UsageError) as raised:
        get_task(config, "tset")
    assert str(raised.value) == "unknown task 'tset' in shards.toml; known tasks: unit, lint"
    assert raised.value.exit_code == 2


@pytest.mark.parametrize("text, seconds", [
    ("10m", 600.0),
    ("1h30m", 5400.0),
    ("90s", 90.0),
    ("1.5s", 1.5),
    ("500ms", 0.5),
    ("250us", 0.00025),
    ("250\u00b5s", 0.00025),
    ("7ns", 7e-9),
    ("1h0m0.5s", 3600.5),
    (".5h", 1800.0),
    ("2h45m30s", 9930.0),
    ("0", 0.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text, fragment", [
    ("600", "has no unit"),
    ("1.5", "has no unit"),
    ("", "is not a duration"),
    ("5 m", "is not a duration"),
    ("1x", "is not a duration"),
    ("-1s", "is not a duration"),
    ("1.5.5s", "is not a duration"),
    ("m", "is not a duration"),
    ("10min", "is not a duration"),
])
def test_parse_duration_refuses(text, fragment):
    with pytest.raises(ValueError, match=fragment) as raised:
        parse_duration(text)
    assert isinstance(raised.value, UsageError)
    assert raised.value.exit_code == 2


@pytest.mark.parametrize("seconds, text", [
    (600, "600s"),
    (600.0, "600s"),
    (1.5, "1500ms"),
    (0.25, "250ms"),
    (0.0000015, "2us"),
    (5400, "5400s"),
])
def test_format_duration_is_what_lokt_reads(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, rel=0.5)


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan")])
def test_format_duration_refuses_nonsense(seconds):
    with pytest.raises(ValueError):
        format_duration(seconds)


def test_run_template_tokens():
    tokens = parse_run_template("go test -run '^({items:|})$' --out={junit} {{literal}} ./pkg/{task}-{shard}of{total}")
    assert tokens == (
        ("go",),
        ("test",),
        ("-run",),
        ("^(", Placeholder("items", "|"), ")$"),
        ("--out=", Placeholder("junit")),
        ("{literal}",),
        ("./pkg/", Placeholder("task"), "-", Placeholder("shard"), "of", Placeholder("total")),
    )
    assert parse_run_template("pytest {items} ''") == (("pytest",), (Placeholder("items"),), ("",))
