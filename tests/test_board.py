"""shard-all's live board: elapsed time against estimates, the ETA, failures shown
as they end, and a redraw that stays in place in a narrow terminal.

The terminal test runs ``lokt-tasks shard-all`` on a real pseudo-terminal of 40
columns and replays what the terminal got through pyte, a terminal emulator, to
assert on the screen a person would see.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pyte
import pytest
from scratch import FAIL, PASS, cli_env, make_project

from lokt_tasks import errors
from lokt_tasks.console import Console, LiveBoard
from lokt_tasks.states import Progress, RunOutcome

posix_terminal = pytest.mark.skipif(
    not sys.platform.startswith(("linux", "darwin")), reason="pseudo-terminals"
)

#: Colours and cursor controls (CSI sequences).
CONTROLS = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ESTIMATED = re.compile(r"\b\d+\.\ds/\d+\.\ds\b")


def run_on_terminal(cwd: Path, argv: List[str], columns: int, lines: int) -> tuple:
    """Run ``argv`` with a pseudo-terminal of ``columns`` x ``lines`` as its
    stdin, stdout and stderr: (exit code, every byte the terminal got)."""
    import fcntl
    import struct
    import termios

    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = cli_env({"TERM": "xterm"})
    for name in ("NO_COLOR", "COLUMNS", "LINES"):
        env.pop(name, None)
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    received = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                break
            if not chunk:
                break
            received += chunk
        code = process.wait(timeout=60)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, received.decode("utf-8", "replace")


def screen_of(output: str, columns: int, lines: int) -> List[str]:
    """The screen after ``output`` (a newline also returns the cursor, as a terminal's does)."""
    screen = pyte.Screen(columns, lines)
    pyte.Stream(screen).feed(re.sub(r"\r?\n", "\r\n", output))
    return [row.rstrip() for row in screen.display]


@posix_terminal
def test_at_40_columns_the_board_redraws_in_place_with_estimates_eta_and_failures(tmp_path):
    suite = {
        "check_1.py": "time.sleep(1.5)\n" + PASS,
        "check_2.py": FAIL,
        "check_3.py": "time.sleep(0.3)\n" + PASS,
    }
    timings = '\nsplit = "timings"\ndurations = "durations.json"\njobs = 2\n'
    project = make_project(tmp_path / "p", suite, task="integration", extra_toml=timings)
    times = {"checks/check_1.py": 2.0, "checks/check_2.py": 1.0, "checks/check_3.py": 0.5}
    (project / "durations.json").write_text(json.dumps(times))
    columns, rows = 40, 60

    code, output = run_on_terminal(
        project, [sys.executable, "-m", "lokt_tasks", "shard-all", "integration"], columns, rows
    )

    assert code == errors.FAILED, output
    labels = [f"integration-shard-{n}" for n in (1, 2, 3)]
    # Every line of the board, each time it was drawn, fits in 39 columns.
    drawn = [CONTROLS.sub("", line) for line in output.split("\r\n")]
    board = [line for line in drawn if line.startswith((*labels, "eta "))]
    assert board and max(map(len, board)) < columns, max(board, key=len)
    assert any(ESTIMATED.search(line) for line in board)  # elapsed/estimate while running
    assert any(line.startswith("eta ") for line in board)
    assert "\x1b[" in output  # colours: cut lines are painted after the cut
    # What is left on the screen: each shard once, in its final state, nothing stale.
    screen = screen_of(output, columns, rows)
    finals = {label: [row for row in screen if row.startswith(label + " ")] for label in labels}
    assert {label: len(found) for label, found in finals.items()} == dict.fromkeys(labels, 1)
    assert not [row for row in screen if re.search(r"\b(running|waiting)\b", row)]
    assert not [row for row in screen if row.startswith("eta ")]
    # The failure, reported once, above the final board, with its log's last lines.
    heading = "--- integration-shard-"
    assert output.count(heading) == 1 and "failed (exit 1): last lines of" in output
    row_of = {row: number for number, row in reversed(list(enumerate(screen)))}
    board_at = min(row_of[found[0]] for found in finals.values())
    heading_at = next(number for number, row in enumerate(screen) if row.startswith(heading))
    assert heading_at < row_of["check failed on purpose"] < board_at


class TerminalBuffer(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_the_eta_spreads_the_work_left_over_the_jobs():
    board = LiveBoard(Console(io.StringIO()), ["a", "b", "c"], estimates=[30.0, 20.0, 10.0], jobs=2)
    assert board.eta(now=0.0) == 30.0  # 60 s of work on 2 jobs
    board.update("a", Progress.RUNNING)
    started = board.started["a"]
    board.update("b", Progress.RUNNING)
    board.started["b"] = started
    assert board.eta(now=started + 5) == pytest.approx(25.0)  # the longest part left: a's 25 s
    board.update("b", RunOutcome.FAILED)
    board.update("c", Progress.RUNNING)
    board.started["c"] = started + 5
    assert board.eta(now=started + 10) == pytest.approx(20.0)  # a has 20 s left, c 5 s
    board.update("a", RunOutcome.PASSED)
    board.update("c", RunOutcome.PASSED)
    assert board.eta() is None  # nothing left


def test_without_estimates_there_is_no_eta_and_elapsed_stands_alone():
    stream = io.StringIO()
    board = LiveBoard(Console(stream, color=False), ["t-shard-1", "t-shard-2"], jobs=2)
    assert board.eta() is None
    with board:
        board.update("t-shard-1", Progress.RUNNING)
        board.update("t-shard-1", RunOutcome.PASSED)
    lines = stream.getvalue().splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["t-shard-1", "running"],
        ["t-shard-1", "passed"],
    ]
    assert not ESTIMATED.search(stream.getvalue()) and "eta" not in stream.getvalue()


def test_off_a_terminal_a_failure_s_report_follows_its_line_once():
    stream = io.StringIO()
    board = LiveBoard(Console(stream, color=False), ["t-shard-1"], estimates=[4.0])
    with board:
        board.update("t-shard-1", Progress.RUNNING)
        board.update("t-shard-1", RunOutcome.FAILED, " (exit 1)", report="--- tail\nboom")
    lines = stream.getvalue().splitlines()
    assert lines[0].split() == ["t-shard-1", "running", "0.0s/4.0s"]
    assert lines[1].split()[:2] == ["t-shard-1", "failed"] and lines[1].endswith("(exit 1)")
    assert lines[2:] == ["--- tail", "boom"]


def test_on_a_short_terminal_running_shards_come_first_and_the_rest_is_counted(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("LINES", "6")
    stream = TerminalBuffer()
    labels = [f"task-shard-{n}" for n in range(1, 9)]
    board = LiveBoard(Console(stream, color=True), labels, estimates=[1.0] * 8, jobs=2)
    with board:
        for label in labels[:3]:
            board.update(label, Progress.RUNNING)
            board.update(label, RunOutcome.PASSED)
        for label in labels[5:7]:
            board.update(label, Progress.RUNNING)
        board._draw()
        board._draw()
        screen = screen_of(stream.getvalue(), 40, 6)
    shown = [row for row in screen if row]
    # 6 lines: the board's 5 (3 shards, a count, the ETA) and the cursor's.
    assert [row.split()[:2] for row in shown[:3]] == [
        ["task-shard-1", "passed"],
        ["task-shard-6", "running"],
        ["task-shard-7", "running"],
    ]
    assert shown[3] == "5 more: 2 passed, 3 waiting"
    assert shown[4].startswith("eta ")
