"""Headless Chromium, driven from the standard library: the rendered DOM of a
page, a screenshot, and every request the page made.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it when
missing). Each run gets a fresh profile directory, and the flags that keep
the browser's own background traffic (updates, sync, field trials) quiet,
since that traffic would only be refused on a closed network; host names
resolve to nothing, so no request can leave the machine whatever a page asks.

Requests are read from Chromium's NetLog (``--log-net-log``): every
``URL_REQUEST_START_JOB`` whose initiator is an origin (the page's; the
browser's own requests have none) is a request the page made. ``file:`` and
``data:`` loads do not pass through the network stack and are not logged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",  # NOTE: as root (CI here), Chromium refuses to start with its sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
TIMEOUT = 90.0


def find_chromium() -> Optional[str]:
    """The path of a Chromium binary, or None: ``$LOKT_TASKS_CHROMIUM``, else PATH."""
    explicit = os.environ.get("LOKT_TASKS_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def run(binary: str, page: Path, *args: str, net_log: Optional[Path] = None) -> str:
    """Open ``page`` in headless Chromium with ``args``; its stdout. Raises
    RuntimeError (with Chromium's stderr) when it fails or hangs."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        argv = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        if net_log is not None:
            argv.append(f"--log-net-log={net_log}")
        argv.append(page.resolve().as_uri())
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            message = f"chromium did not finish in {TIMEOUT:.0f}s:\n{err[-3000:]}"
            raise RuntimeError(message) from None
        finally:
            try:  # NOTE: helpers Chromium left in its group (zygote, utility processes)
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
    if process.returncode != 0:
        raise RuntimeError(f"chromium exited {process.returncode}:\n{err[-3000:]}")
    return out


def dump_dom(binary: str, page: Path, *, width: int = 1200, height: int = 900) -> str:
    """The page's DOM as Chromium serialises it once loaded (scripts run)."""
    return run(binary, page, f"--window-size={width},{height}", "--dump-dom")


def screenshot(
    binary: str,
    page: Path,
    png: Path,
    *,
    width: int = 1200,
    height: int = 900,
    net_log: Optional[Path] = None,
) -> None:
    """Save a ``width`` x ``height`` screenshot of the page's top to ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    run(
        binary,
        page,
        f"--window-size={width},{height}",
        f"--screenshot={png.resolve()}",
        net_log=net_log,
    )
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")


def page_requests(net_log: Path) -> List[str]:
    """The URLs of the requests pages made, from a NetLog file."""
    data = json.loads(net_log.read_text(encoding="utf-8", errors="replace"))
    types = {number: name for name, number in data["constants"]["logEventTypes"].items()}
    found = []
    for event in data.get("events", []):
        params = event.get("params") or {}
        if types.get(event.get("type")) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        if params.get("initiator", "not an origin") != "not an origin":
            found.append(params["url"])
    return found


def read_png(path: Path) -> Tuple[int, int, List[bytes]]:
    """``(width, height, rows)`` of an 8-bit RGB or RGBA PNG without interlace,
    each row as RGB bytes: enough to count the colours of a screenshot."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or color_type not in (2, 6) or interlace:
        raise ValueError(f"{path}: only 8-bit RGB(A) PNGs without interlace are read here")
    channels = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows: List[bytes] = []
    previous = bytearray(stride)
    for row_number in range(height):
        start = row_number * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - up_left
                near = min(
                    (abs(estimate - left), 0, left),
                    (abs(estimate - up), 1, up),
                    (abs(estimate - up_left), 2, up_left),
                )
                line[i] = (line[i] + near[2]) & 0xFF
        previous = line
        rgb = bytes(line) if channels == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3)
        rows.append(rgb)
    return width, height, rows


def colour_counts(path: Path, colours: Sequence[str]) -> Dict[str, int]:
    """How many pixels of the PNG at ``path`` have each ``#rrggbb`` colour exactly."""
    _, _, rows = read_png(path)
    wanted = {bytes.fromhex(colour[1:]): colour for colour in colours}
    counts = dict.fromkeys(colours, 0)
    for row in rows:
        for at in range(0, len(row), 3):
            hit = wanted.get(row[at : at + 3])
            if hit:
                counts[hit] += 1
    return counts
