"""shards.toml: what is accepted, and how everything else is refused."""

from __future__ import annotations

import re
import shutil
import textwrap
import types
from pathlib import Path

import pytest

from lokt_tasks import config as config_module
from lokt_tasks.config import (
    DEFAULT_DURATIONS,
    DEFAULTS,
    KEYS,
    SHARD,
    TASK,
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
    return first[len("# expect: ") :]


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
    path = write_config(
        tmp_path,
        """\
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
    """,
    )
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
    path = write_config(
        tmp_path,
        """\
        [tasks.unit]
        run = "pytest {items}"
        collect = "pytest --collect-only -q"
        shards = 2
    """,
    )
    task = load_config(path).tasks["unit"]
    assert (task.ttl, task.ttl_text, task.engine, task.jobs, task.split) == (
        600.0,
        "10m",
        "auto",
        None,
        "name",
    )
    assert (task.timeout, task.timeout_text) == (None, None)  # no limit
    assert task.collect == "pytest --collect-only -q"
    assert load_config(path).results is None


def test_task_names_may_use_dots_dashes_and_underscores(tmp_path):
    path = write_config(
        tmp_path,
        """\
        [tasks."unit.fast-1_a"]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = 1
    """,
    )
    assert list(load_config(path).tasks) == ["unit.fast-1_a"]


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "ünï", "a b", ""])
def test_task_names_that_are_not_lock_names_are_refused(tmp_path, name):
    path = write_config(
        tmp_path,
        f"""\
        [tasks."{name}"]
        run = "pytest {{items}}"
        glob = "tests/*.py"
        shards = 1
    """,
    )
    with pytest.raises(ConfigError, match="task names may only use"):
        load_config(path)


def test_error_names_the_absolute_file_outside_the_current_directory(tmp_path, monkeypatch):
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    path = write_config(
        project,
        """\
        [tasks.test]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = "2"
    """,
    )
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
    write_config(
        tmp_path,
        """\
        [tasks.unit]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = 1
        [tasks.lint]
        run = "ruff {items}"
        glob = "src/*.py"
        shards = 1
    """,
    )
    config = load_config(Path("shards.toml"))
    assert get_task(config, "lint").name == "lint"
    with pytest.raises(UsageError) as raised:
        get_task(config, "tset")
    assert str(raised.value) == "unknown task 'tset' in shards.toml; known tasks: unit, lint"
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    "text, seconds",
    [
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
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("600", "has no unit"),
        ("1.5", "has no unit"),
        ("", "is not a duration"),
        ("5 m", "is not a duration"),
        ("1x", "is not a duration"),
        ("-1s", "is not a duration"),
        ("1.5.5s", "is not a duration"),
        ("m", "is not a duration"),
        ("10min", "is not a duration"),
    ],
)
def test_parse_duration_refuses(text, fragment):
    with pytest.raises(ValueError, match=fragment) as raised:
        parse_duration(text)
    assert isinstance(raised.value, UsageError)
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    "seconds, text",
    [
        (600, "600s"),
        (600.0, "600s"),
        (1.5, "1500ms"),
        (0.25, "250ms"),
        (0.0000015, "2us"),
        (5400, "5400s"),
    ],
)
def test_format_duration_is_what_lokt_reads(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, rel=0.5)


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), float("nan")])
def test_format_duration_refuses_nonsense(seconds):
    with pytest.raises(ValueError):
        format_duration(seconds)


def test_run_template_tokens():
    tokens = parse_run_template(
        "go test -run '^({items:|})$' --out={junit} {{literal}} ./pkg/{task}-{shard}of{total}"
    )
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


# --- the table of keys ----------------------------------------------------------

README = Path(__file__).parent.parent / "README.md"
README_PLACES = {"defaults": DEFAULTS, "task": TASK, "explicit shard": SHARD}


def test_the_readme_says_where_each_key_may_be_set_as_the_table_does():
    rows = re.findall(r"^\| `([a-z_]+)` \| ([a-z ,]+) \|", README.read_text(encoding="utf-8"), re.M)
    documented = {
        key: {README_PLACES[place.strip()] for place in where.split(",")} for key, where in rows
    }
    # NOTE: [[tasks.NAME.shard]] tables have a section of their own rather than a row.
    assert documented == {name: set(key.places) for name, key in KEYS.items() if name != "shard"}


def task_config(table: str, defaults: str = "") -> str:
    """A shards.toml with ``defaults`` in [defaults] and ``table`` in a valid task."""
    task = 'run = "pytest {items}"\nglob = "a.py"'
    return f"[defaults]\n{defaults}\n[tasks.test]\n{task}\n{table}"


@pytest.mark.parametrize(
    "toml, error",
    [
        (
            task_config("zzz = 1"),
            "tasks.test.zzz: unknown key; known keys: run, glob, exclude, collect, shards,"
            " shard, split, ttl, timeout, engine, jobs, durations",
        ),
        (
            task_config("", defaults="zzz = 1"),
            "defaults.zzz: unknown key; known keys: "
            "exclude, shards, split, ttl, timeout, engine, jobs, durations, results",
        ),
        (
            task_config("[[tasks.test.shard]]\nzzz = 1"),
            "tasks.test.shard[1].zzz: unknown key; known keys: items, glob",
        ),
        # NOTE: only [defaults] and a task say where a key of the other belongs.
        (
            task_config('[[tasks.test.shard]]\nrun = "x"'),
            "tasks.test.shard[1].run: unknown key; known keys: items, glob",
        ),
        (
            task_config("", defaults='glob = "a.py"'),
            "defaults.glob: the files can only be set in a [tasks.NAME] table",
        ),
        (
            task_config("", defaults='collect = "ls"'),
            "defaults.collect: the items command can only be set in a [tasks.NAME] table",
        ),
        (
            task_config("", defaults='[[defaults.shard]]\nitems = ["a"]'),
            "defaults.shard: explicit shards can only be set in a [tasks.NAME] table",
        ),
        (task_config('items = ["a"]'), "tasks.test.items: unknown key; known keys: run, glob,"),
        # NOTE: a misplaced key is named before an unknown one, wherever it stands.
        (
            task_config("", defaults='zzz = 1\nrun = "x"'),
            "defaults.run: the command can only be set in a [tasks.NAME] table",
        ),
        (
            task_config('zzz = 1\nresults = "out"'),
            "tasks.test.results: results can only be set in [defaults]",
        ),
    ],
)
def test_keys_are_taken_only_where_the_table_allows_them(tmp_path, monkeypatch, toml, error):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards.toml").write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(Path("shards.toml"))
    assert str(raised.value).startswith(f"shards.toml: {error}")


def test_a_task_takes_each_key_of_defaults_it_does_not_set_and_its_own_replaces_it(tmp_path):
    path = write_config(
        tmp_path,
        """\
        [defaults]
        exclude = ["a/**"]
        shards = 3
        split = "size"
        ttl = "5m"
        timeout = "15m"
        engine = "embedded"
        jobs = 2
        durations = "d.json"

        [tasks.inherits]
        run = "x {items}"
        glob = "*.py"

        [tasks.overrides]
        run = "x {items}"
        glob = "*.py"
        exclude = ["b/**"]
        shards = "per-item"
        split = "name"
        ttl = "1h"
        timeout = "1h30m"
        engine = "lokt"
        jobs = 1
        durations = "e.json"
    """,
    )
    tasks = load_config(path).tasks
    inherits, overrides = tasks["inherits"], tasks["overrides"]
    assert (inherits.exclude, inherits.shards, inherits.split) == (("a/**",), 3, "size")
    assert (inherits.ttl, inherits.ttl_text, inherits.jobs) == (300.0, "5m", 2)
    assert (inherits.timeout, inherits.timeout_text) == (900.0, "15m")
    assert (inherits.engine, inherits.durations) == ("embedded", tmp_path / "d.json")
    assert (overrides.exclude, overrides.shards, overrides.per_item) == (("b/**",), None, True)
    assert (overrides.split, overrides.ttl, overrides.ttl_text) == ("name", 3600.0, "1h")
    assert (overrides.engine, overrides.jobs) == ("lokt", 1)
    assert (overrides.timeout, overrides.timeout_text) == (5400.0, "1h30m")
    assert overrides.durations == tmp_path / "e.json"


def test_defaults_are_read_before_any_task(tmp_path):
    path = write_config(
        tmp_path,
        """\
        [tasks.test]
        run = "pytest {items}"
        glob = "tests/*.py"
        shards = 0

        [defaults]
        ttl = "ten"
    """,
    )
    with pytest.raises(ConfigError, match=r"defaults\.ttl: 'ten' is not a duration"):
        load_config(path)


# --- TOML syntax errors -----------------------------------------------------------


class StubDecodeError(ValueError):
    """A TOML parser's error, with or without the position as fields."""

    def __init__(self, message: str, **fields: int):
        super().__init__(message)
        self.__dict__.update(fields)


def stub_parser(error: StubDecodeError) -> types.SimpleNamespace:
    def loads(text: str):
        raise error

    return types.SimpleNamespace(loads=loads, TOMLDecodeError=StubDecodeError)


@pytest.mark.parametrize(
    "error, where",
    [
        # NOTE: fields, where the parser has them, win over the words of its message.
        (
            StubDecodeError("Invalid value (at line 1, column 1)", lineno=7, colno=3),
            "7:3: invalid TOML: Invalid value",
        ),
        (
            StubDecodeError("Unclosed array (at end of document)", lineno=2, colno=4),
            "2:4: invalid TOML: Unclosed array at end of file",
        ),
        (
            StubDecodeError("Invalid value (at line 2, column 5)"),
            "2:5: invalid TOML: Invalid value",
        ),
        # NOTE: without fields, the end of the document is the end of the file: line 3, column 4.
        (
            StubDecodeError("Unclosed array (at end of document)"),
            "3:4: invalid TOML: Unclosed array at end of file",
        ),
        (StubDecodeError("Something else"), "3:4: invalid TOML: Something else"),
    ],
)
def test_a_toml_error_gives_the_parser_s_line_and_column(tmp_path, monkeypatch, error, where):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "tomllib", stub_parser(error))
    (tmp_path / "shards.toml").write_text("a = 1\nb = [\n  2", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(Path("shards.toml"))
    assert str(raised.value) == f"shards.toml:{where}"
    assert raised.value.exit_code == USAGE


def test_a_toml_error_at_the_end_of_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards.toml").write_text('[tasks.test]\nglob = [\n  "a.py",', encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(Path("shards.toml"))
    assert str(raised.value).startswith("shards.toml:3:10: invalid TOML: ")
    assert str(raised.value).endswith(" at end of file")
