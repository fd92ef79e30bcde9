"""lokt's on-disk format, byte for byte as lokt writes it, so that each
engine understands (never breaks) a lock the other took. Under the root::

    locks/NAME.json      one lock (0700 directory; files 0600 via temp + rename)
    freezes/NAME.json    one freeze, same structure as a lock
    audit.log            one compact JSON object per line, appended
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from . import system
from .errors import UsageError

LOCK_VERSION = 1

#: Seconds after which an empty lock file is abandoned (see ``prune_abandoned``).
EMPTY_LOCK_ABANDONED_AFTER = 10.0

_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9._-]+\Z")

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?"
    r"(?:[Zz]|([+-])(\d\d):(\d\d))\Z"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

#: Characters Go's encoding/json escapes inside strings and Python's does not.
_GO_ESCAPES = {character: "\\u%04x" % ord(character) for character in "<>&\u2028\u2029"}


def validate_lock_name(name: str) -> None:
    """Refuse names lokt refuses, with the reason, before anything runs; and
    one more: a leading '-', which ``lokt guard`` would read as a flag."""
    if not name:
        raise UsageError("invalid lock name: name cannot be empty")
    if name.startswith("/"):
        raise UsageError(f"invalid lock name {name!r}: absolute paths not allowed")
    if ".." in name:
        raise UsageError(f"invalid lock name {name!r}: path traversal ('..') not allowed")
    if name.startswith("-"):
        raise UsageError(f"invalid lock name {name!r}: must not start with '-'")
    if not _NAME_CHARACTERS.match(name):
        raise UsageError(f"invalid lock name {name!r}: use only letters, digits, '.', '_' and '-'")


def locks_dir(root: Path) -> Path:
    return root / "locks"


def freezes_dir(root: Path) -> Path:
    return root / "freezes"


def lock_path(root: Path, name: str) -> Path:
    return locks_dir(root) / f"{name}.json"


def freeze_path(root: Path, name: str) -> Path:
    return freezes_dir(root) / f"{name}.json"


def legacy_freeze_path(root: Path, name: str) -> Path:
    """Where older lokt versions kept freezes; lokt still reads it."""
    return locks_dir(root) / f"freeze-{name}.json"


def ensure_dirs(root: Path) -> None:
    """Create locks/ and freezes/ with lokt's mode (owner only)."""
    for directory in (locks_dir(root), freezes_dir(root)):
        os.makedirs(directory, mode=0o700, exist_ok=True)


def now_ns() -> int:
    return time.time_ns()


def format_timestamp(ns: int) -> str:
    """Go's RFC3339Nano in local time: trailing zeros of the fraction dropped."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    local = time.localtime(seconds)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", local)
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    offset_minutes = (local.tm_gmtoff or 0) // 60
    if offset_minutes == 0:
        return text + "Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def parse_timestamp(text: str) -> int:
    """RFC 3339 (with up to nine fraction digits) to nanoseconds since the epoch."""
    match = _TIMESTAMP.match(text)
    if not match:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = map(int, match.group(1, 2, 3, 4, 5, 6))
    delta = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc) - _EPOCH
    ns = (delta.days * 86400 + delta.seconds) * 1_000_000_000
    ns += int((match.group(7) or "0").ljust(9, "0"))
    if match.group(8):
        offset = (int(match.group(9)) * 60 + int(match.group(10))) * 60 * 1_000_000_000
        ns -= offset if match.group(8) == "+" else -offset
    return ns


class LockFileError(Exception):
    """A lock file that cannot be used as it is."""


class EmptyLockFile(LockFileError):
    """Created but not yet written: another process is mid-acquire. Held."""


class CorruptLockFile(LockFileError):
    """Not valid lock JSON: nobody holds it, so it may be removed."""


class UnsupportedVersion(LockFileError):
    """Written by a newer lokt: never touched."""


@dataclass(frozen=True)
class LockData:
    """The content of a lock (or freeze) file, version 1. Times are
    nanoseconds since the epoch; ``expires_ns`` is None without TTL."""

    name: str
    owner: str
    host: str
    pid: int
    version: int = LOCK_VERSION
    lock_id: str = ""
    pid_start_ns: int = 0
    agent_id: str = ""
    acquired_ns: int = 0
    ttl_sec: int = 0
    expires_ns: Optional[int] = None

    def expired(self, at_ns: Optional[int] = None) -> bool:
        """lokt's rule: expires_at when present, else acquired + ttl_sec."""
        moment = now_ns() if at_ns is None else at_ns
        if self.expires_ns is not None:
            return moment > self.expires_ns
        return self.ttl_sec > 0 and moment - self.acquired_ns > self.ttl_sec * 1_000_000_000

    def renewed(self, at_ns: int) -> LockData:
        """The same lock, acquired again now (what a heartbeat writes)."""
        expires = at_ns + self.ttl_sec * 1_000_000_000 if self.ttl_sec > 0 else self.expires_ns
        return replace(self, version=LOCK_VERSION, acquired_ns=at_ns, expires_ns=expires)

    def to_json(self) -> str:
        """Two-space indented JSON in lokt's field order, empty fields left out."""
        fields: Dict[str, Any] = {"version": self.version, "name": self.name}
        if self.lock_id:
            fields["lock_id"] = self.lock_id
        fields.update(owner=self.owner, host=self.host, pid=self.pid)
        if self.pid_start_ns:
            fields["pid_start_ns"] = self.pid_start_ns
        if self.agent_id:
            fields["agent_id"] = self.agent_id
        fields["acquired_ts"] = format_timestamp(self.acquired_ns)
        if self.ttl_sec:
            fields["ttl_sec"] = self.ttl_sec
        if self.expires_ns is not None:
            fields["expires_at"] = format_timestamp(self.expires_ns)
        return go_json(fields, indent=2) + "\n"


_STRING_FIELDS = ("name", "lock_id", "owner", "host", "agent_id")
_INT_FIELDS = ("version", "pid", "pid_start_ns", "ttl_sec")


def parse_lock(text: str, *, allow_newer: bool = False) -> LockData:
    """Parse lock JSON the way lokt does; raise the matching LockFileError."""
    if text == "":
        raise EmptyLockFile("empty lock file")
    try:
        fields = json.loads(text)
    except ValueError as error:
        raise CorruptLockFile(f"corrupted lock file: {error}") from None
    if not isinstance(fields, dict):
        raise CorruptLockFile("corrupted lock file: not a JSON object")
    values: Dict[str, Any] = {}
    for key in _STRING_FIELDS:
        value = fields.get(key)
        if value is not None and not isinstance(value, str):
            raise CorruptLockFile(f"corrupted lock file: {key} is not a string")
        values[key] = value or ""
    for key in _INT_FIELDS:
        value = fields.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise CorruptLockFile(f"corrupted lock file: {key} is not an integer")
        values[key] = value or 0
    try:
        acquired = fields.get("acquired_ts")
        values["acquired_ns"] = parse_timestamp(acquired) if acquired else 0
        expires = fields.get("expires_at")
        values["expires_ns"] = parse_timestamp(expires) if expires is not None else None
    except (TypeError, ValueError) as error:
        raise CorruptLockFile(f"corrupted lock file: {error}") from None
    if values["version"] > LOCK_VERSION and not allow_newer:
        raise UnsupportedVersion(
            f"lock file version {values['version']} is not supported (max: {LOCK_VERSION});"
            " it was written by a newer lokt"
        )
    return LockData(**values)


def read_text(path: Path) -> str:
    return system.read_file(path).decode("utf-8", "replace")


def read_lock(path: Path, *, allow_newer: bool = False) -> LockData:
    """One lock file; FileNotFoundError when there is none."""
    return parse_lock(read_text(path), allow_newer=allow_newer)


def create_lock(path: Path, lock: LockData) -> None:
    """Create the lock file, complete, only if there is none (else
    FileExistsError): never empty, as lokt's is until written."""
    data = lock.to_json().encode("utf-8")
    system.write_atomically(path, data, mode=None, prefix=".lock-", exclusive=True)


def write_lock(path: Path, lock: LockData) -> None:
    """Replace the file atomically, with lokt's temporary name and mode (0600)."""
    system.write_atomically(path, lock.to_json().encode("utf-8"), mode=None, prefix=".lock-")


def remove_file(path: Path) -> bool:
    """Remove a lock or freeze file, durably; False if there was none."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    system.fsync_directory(path.parent)
    return True


def holds(path: Path, lock_id: str) -> bool:
    """Whether the lock file at ``path`` is still the lock ``lock_id``."""
    try:
        return f'"lock_id": "{lock_id}"' in read_text(path)
    except OSError:
        return False


def prune_abandoned(
    root: Path, name: str, *, owner: str, host: str, pid: int, agent_id: str = ""
) -> bool:
    """Remove the lock ``name`` if nobody can hold it, auditing the break as
    lokt does; True when the name is free to take now. Nobody holds a corrupt
    file or an empty one older than ``EMPTY_LOCK_ABANDONED_AFTER`` (lokt
    writes it within milliseconds, but never breaks it): "corrupt-break"; or
    one whose holder here is dead, a zombie or its pid reused: "auto-prune".
    """
    path = lock_path(root, name)
    try:
        text = read_text(path)
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return True
    except OSError:
        return False
    lock_id, extra = "", {}  # type: str, Dict[str, Any]
    try:
        lock = parse_lock(text)
    except EmptyLockFile:
        if age < EMPTY_LOCK_ABANDONED_AFTER:
            return False
        event, extra = "corrupt-break", {"reason": "empty for %ds" % age}
    except CorruptLockFile:
        event = "corrupt-break"
    except LockFileError:
        return False
    else:
        if pid_status(lock, host) != "dead":
            return False
        event, lock_id = "auto-prune", lock.lock_id
        extra = {"pruned_owner": lock.owner, "pruned_host": lock.host, "pruned_pid": lock.pid}
    if not remove_if_unchanged(path, text):
        return False
    who: Dict[str, Any] = {"owner": owner, "host": host, "pid": pid, "agent_id": agent_id}
    append_audit(root, audit_line(event, name, lock_id=lock_id, extra=extra, **who))
    return True


@dataclass(frozen=True)
class Claimant:
    """This process as it appears in lock files and audit lines."""

    owner: str
    host: str
    pid: int
    agent_id: str
    pid_start_ns: int

    def new_lock(self, name: str, ttl_sec: int, at_ns: int) -> LockData:
        """A lock of ours on ``name``, with a new lock_id, acquired at ``at_ns``."""
        lock_id, started = os.urandom(16).hex(), self.pid_start_ns
        fresh = LockData(name, lock_id=lock_id, pid_start_ns=started, ttl_sec=ttl_sec, **self.who())
        return fresh.renewed(at_ns)

    def who(self) -> Dict[str, Any]:
        return {"owner": self.owner, "host": self.host, "pid": self.pid, "agent_id": self.agent_id}

    def audit(self, root: Path, event: str, name: str, **fields) -> None:
        append_audit(root, audit_line(event, name, **{**self.who(), **fields}))


def take_lock(root: Path, name: str, me: Claimant, ttl_sec: int) -> Optional[LockData]:
    """One try at ``name``, never re-entrant and without a deny line: our new
    lock (audited as an acquire), or None while another holds it. A lock
    nobody can hold any more is pruned first (``prune_abandoned``); OSError
    when the file cannot be written."""
    path = lock_path(root, name)
    for _ in range(3):  # the name is taken again and again only under a race
        lock = me.new_lock(name, ttl_sec, now_ns())
        try:
            create_lock(path, lock)
        except FileExistsError:
            if prune_abandoned(root, name, **me.who()):
                continue
            return None
        me.audit(root, "acquire", name, lock_id=lock.lock_id, ttl_sec=ttl_sec)
        return lock
    return None


def renew(root: Path, name: str, me: Claimant) -> Optional[bool]:
    """Heartbeat: True renewed, False no longer ours (stop), None failed (retry)."""
    path = lock_path(root, name)
    try:
        existing = read_lock(path)
    except FileNotFoundError:
        return False
    except (OSError, LockFileError):
        return None
    if (existing.owner, existing.host, existing.pid) != (me.owner, me.host, me.pid):
        return False
    renewed = existing.renewed(now_ns())
    try:
        write_lock(path, renewed)
    except OSError:
        return None
    me.audit(root, "renew", name, lock_id=renewed.lock_id, ttl_sec=renewed.ttl_sec)
    return True


def release(root: Path, name: str, me: Claimant, lock_id: str) -> bool:
    """Remove our lock, and only ours (same owner and lock_id)."""
    path = lock_path(root, name)
    try:
        existing = read_lock(path)
    except (OSError, LockFileError):
        return False
    if (existing.owner, existing.lock_id) != (me.owner, lock_id) or not remove_file(path):
        return False
    me.audit(root, "release", name, lock_id=existing.lock_id, ttl_sec=existing.ttl_sec)
    return True


def remove_if_unchanged(path: Path, seen: str) -> bool:
    """Remove a stale or corrupt file only if it still holds what we judged
    (another agent may have pruned it and taken the lock meanwhile)."""
    try:
        unchanged = read_text(path) == seen
    except OSError:
        return False
    return unchanged and remove_file(path)


def go_json(value: Any, *, indent: Optional[int] = None) -> str:
    """JSON as Go's encoding/json writes it (HTML characters escaped)."""
    separators = (",", ":") if indent is None else None
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    for character, escape in _GO_ESCAPES.items():
        text = text.replace(character, escape)
    return text


def audit_line(
    event: str,
    name: str,
    *,
    owner: str,
    host: str,
    pid: int,
    lock_id: str = "",
    agent_id: str = "",
    ttl_sec: int = 0,
    extra: Optional[Mapping[str, Any]] = None,
    at_ns: Optional[int] = None,
) -> str:
    """One audit.log line in lokt's field order; empty optional fields left out."""
    stamp = format_timestamp(now_ns() if at_ns is None else at_ns)
    fields: Dict[str, Any] = {"ts": stamp, "event": event, "name": name}
    if lock_id:
        fields["lock_id"] = lock_id
    fields.update(owner=owner, host=host, pid=pid)
    if agent_id:
        fields["agent_id"] = agent_id
    if ttl_sec:
        fields["ttl_sec"] = ttl_sec
    if extra:
        fields["extra"] = {key: extra[key] for key in sorted(extra)}
    return go_json(fields) + "\n"


def append_audit(root: Path, line: str) -> None:
    """Append one line with O_APPEND + fsync. Never fails the lock operation."""
    try:
        fd = system.open_file(root / "audit.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        print(f"lokt-tasks: audit log write failed: {error}", file=sys.stderr)


def host_name() -> str:
    """The host name lokt records (Go's os.Hostname is the same call)."""
    try:
        return socket.gethostname() or "unknown"
    except OSError:
        return "unknown"


def pid_status(lock: LockData, host: Optional[str] = None) -> str:
    """ "alive", "dead" or "unknown" (another host) for a lock's holder; a
    zombie or a reused pid (another start time) is dead, as lokt prunes."""
    if lock.host != (host or host_name()):
        return "unknown"
    if system.process_gone(lock.pid):
        return "dead"
    started = system.process_start_time(lock.pid) if lock.pid_start_ns else None
    return "alive" if started in (None, lock.pid_start_ns) else "dead"
