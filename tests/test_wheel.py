"""The package as a user gets it: ``python -m build`` makes the sdist, then the
wheel from the sdist (so a file missing from the sdist breaks the wheel), the
wheel installs into a fresh virtualenv, and its ``lokt-tasks`` runs in a
project that has no tasks.py.

One test, as it takes a while (deselect it with ``-m 'not wheel'``). The
build uses the ``test`` extra's setuptools (no network); the fresh
virtualenv takes the dependencies from pip's index, or from a wheelhouse
through pip's own settings (``PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR``).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from scratch import checks, cli_env, make_project, ran

from lokt_tasks import __version__

pytestmark = pytest.mark.wheel

REPO = Path(__file__).resolve().parent.parent


def run(*argv, cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(word) for word in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_built_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    built = run(
        sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, REPO, cwd=tmp_path
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (sdist,) = dist.glob("lokt_tasks-*.tar.gz")
    (wheel,) = dist.glob("lokt_tasks-*-py3-none-any.whl")
    assert sdist.name == f"lokt_tasks-{__version__}.tar.gz"
    with tarfile.open(sdist) as archive:
        packed = {Path(*Path(name).parts[1:]).as_posix() for name in archive.getnames()}
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "lokt_tasks").glob("*.py")}
    assert modules | {"README.md", "pyproject.toml"} <= packed

    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    installed = run(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--find-links",
        dist,
        wheel,
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    found = run(
        venv / "bin" / "python", "-c", "import lokt_tasks; print(lokt_tasks.__file__)", cwd=tmp_path
    )
    assert Path(found.stdout.strip()).is_relative_to(venv), found.stdout + found.stderr

    project = make_project(tmp_path / "project", checks(["check_1.py", "check_2.py"]), shards=2)
    assert not (project / "tasks.py").exists()
    program = venv / "bin" / "lokt-tasks"
    env = cli_env()
    shown = run(program, "--help", cwd=project, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "shard-all" in shown.stdout and "--dry" not in shown.stdout
    helped = run(program, "help", "shard", cwd=project, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "--id=N|next|auto" in helped.stdout
    asked = run(program, "shard", "--help", cwd=project, env=env)
    assert (asked.returncode, asked.stdout) == (0, helped.stdout), asked.stderr
    version = run(program, "--version", cwd=project, env=env)
    assert version.stdout.strip() == f"lokt-tasks {__version__}"

    everything = run(program, "shard-all", "checks", "--engine", "embedded", cwd=project, env=env)
    assert everything.returncode == 0, everything.stdout + everything.stderr
    assert "passed" in everything.stdout
    assert sorted(ran(project)) == ["check_1.py", "check_2.py"]
