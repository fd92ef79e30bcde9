"""Atomic, durable file replacement: the one way every layer rewrites a file.

Records, lock files and the durations file are read by other processes
while they are being rewritten. Each is written to a temporary file in the
same directory, fsynced, renamed over the old one, and then the directory is
fsynced: a reader sees the old content or the new, never a mix, and a
machine crash does not lose the rename.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional


def write_atomically(
    path: Path,
    data: bytes,
    *,
    mode: Optional[int] = 0o644,
    prefix: Optional[str] = None,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data``; its directory must exist.

    ``mode`` None keeps the temporary file's 0600, as lokt's own lock files
    have. ``prefix`` names the temporary file (default ``.<name>.``).
    ``durable`` False skips both fsyncs: still atomic for readers, but a
    machine crash may lose the new content or leave the file empty.
    """
    path = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, str(path))
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a create, rename or remove in ``directory`` survive a crash."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename happened all the same
    finally:
        os.close(fd)
