"""One agent running one command under a lock engine, as a real process.

Used by the engine tests to race agents, kill them and signal them:

    python tests/engine_agent.py --engine embedded --root DIR --name NAME
        --agent A --result FILE [--started FILE] [--ttl S] [--wait]
        [--timeout S] [--log FILE] [--grace S] -- ARGV...

The GuardResult goes to --result as JSON; --started receives the command's
pid once it runs (the command is started through a shell that writes its
own pid, then execs it). SIGINT and SIGTERM become a stop request, as in the
run layer. The module also holds the helpers the tests use to drive agents.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
#: Every lock owner in the tests is "tester/<agent>".
OWNER_BASE = "tester"


def write_json(path: Path, value: object) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(value))
    os.replace(temp, path)


#: Writes its own pid to "$0" (atomically), then becomes the command.
REPORT_PID = 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"'


def attempt_for(directory: Path, command: Sequence[str], log: Optional[Path] = None):
    """A bare attempt at running ``command``: its record in ``directory``."""
    from lokt_tasks.attempt import Attempt

    directory.mkdir(parents=True, exist_ok=True)
    attempt_id = uuid.uuid4().hex
    fields = json.dumps({"attempt": attempt_id}, indent=2)
    return Attempt(
        directory / f"{attempt_id}.json", fields, list(command), log=str(log) if log else None
    )


class Guarding:
    """An engine whose ``guard`` takes a command, as the tests want to write it."""

    def __init__(self, engine, directory: Path) -> None:
        self.engine = engine
        self.directory = directory

    def guard(self, name, command, *, log=None, **options):
        return self.engine.guard(name, attempt_for(self.directory, command, log), **options)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def main(argv: Sequence[str]) -> int:
    sys.path.insert(0, str(REPO))
    from lokt_tasks.engine import StopRequest, make_identity
    from lokt_tasks.errors import LoktTasksError
    from lokt_tasks.run import select_engine

    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--agent")
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument("--started", type=Path)
    parser.add_argument("--ttl", type=float, default=5.0)
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--grace", type=float)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    stop = StopRequest()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.request(number))

    if args.started is not None:
        command = ["/bin/sh", "-c", REPORT_PID, str(args.started), *command]
    try:
        engine = select_engine(args.engine, make_identity(args.agent), root=args.root)
        if args.grace is not None:
            engine.grace = args.grace
        result = engine.guard(
            args.name,
            attempt_for(args.result.parent / "attempts", command, args.log),
            ttl=args.ttl,
            wait=args.wait,
            timeout=args.timeout,
            stop=stop,
        )
    except LoktTasksError as error:
        write_json(args.result, {"exception": type(error).__name__, "message": str(error)})
        return error.exit_code
    write_json(args.result, dataclasses.asdict(result))
    return 0


# Helpers for the tests -------------------------------------------------------


def agent_env() -> Dict[str, str]:
    env = dict(os.environ)
    for key in ("LOKT_ROOT", "LOKT_AGENT_ID", "LOKT_BIN", "LOKT_NO_SWEEP"):
        env.pop(key, None)
    env["LOKT_OWNER"] = OWNER_BASE
    return env


class Agent:
    """A running engine_agent.py process."""

    def __init__(
        self,
        workdir: Path,
        engine: str,
        root: Path,
        name: str,
        command: Sequence[str],
        *,
        agent: str,
        ttl: float = 5.0,
        wait: bool = False,
        timeout: Optional[float] = None,
        log: Optional[Path] = None,
        grace: Optional[float] = None,
    ) -> None:
        self.agent = agent
        self.result_path = workdir / f"{agent}.result.json"
        self.started_path = workdir / f"{agent}.started.json"
        argv: List[str] = [sys.executable, str(SCRIPT), "--engine", engine, "--root", str(root)]
        argv += ["--name", name, "--agent", agent, "--ttl", str(ttl)]
        argv += ["--result", str(self.result_path), "--started", str(self.started_path)]
        if wait:
            argv.append("--wait")
        if timeout is not None:
            argv += ["--timeout", str(timeout)]
        if log is not None:
            argv += ["--log", str(log)]
        if grace is not None:
            argv += ["--grace", str(grace)]
        self.process = subprocess.Popen(argv + ["--", *command], env=agent_env(), cwd=str(workdir))
        self.command_pid: Optional[int] = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_started(self, limit: float = 20.0) -> int:
        """The command's pid, once the agent reports it started."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.started_path.exists():
                self.command_pid = json.loads(self.started_path.read_text())
                return self.command_pid
            if self.process.poll() is not None:
                raise AssertionError(
                    f"agent {self.agent} ended before its command started: {self.read_result()}"
                )
            time.sleep(0.02)
        raise AssertionError(f"agent {self.agent}: command did not start")

    def result(self, limit: float = 30.0) -> dict:
        self.process.wait(timeout=limit)
        return self.read_result()

    def read_result(self) -> dict:
        try:
            return json.loads(self.result_path.read_text())
        except FileNotFoundError:
            return {}

    def kill_everything(self) -> None:
        """Leave no process behind: the agent and its command's whole group."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.started_path.exists():
            kill_process_group_of(json.loads(self.started_path.read_text()))


def kill_process_group_of(pid: int) -> None:
    """SIGKILL the group of pid (a command runs in its own), never our own."""
    try:
        group = os.getpgid(pid)
        if group != os.getpgrp():
            os.killpg(group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
