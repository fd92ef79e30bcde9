"""Shard records: one JSON file per task, run key and shard, written atomically.

A reader never sees half a record (every write is a rename over the old file),
and a file that cannot be understood reads as a :class:`CorruptRecord`, never as
a pass. Below the results directory, with task and run key as escaped by
:func:`safe_component`::

    <task>/<run key>/shard-<N>.json        the record
    <task>/<run key>/shard-<N>.log         the shard's output
    <task>/<run key>/shard-<N>.junit.xml   the command's JUnit report
    <task>/<run key>/shard-<N>.retry-<K>.junit.xml   the report of its retry K
    <task>/<run key>/rerun-<K>/            rerun K of the run's failed tests:
        plan.json                          its shards' items (test ids)
        shard-<N>.json ...                 its records, logs and reports

A rerun of failed tests (``shard-all --failed-tests``) is a run of its own,
whose key is ``<run key>/rerun-<K>`` (:func:`rerun_key`); user run keys never
hold a slash.
    <task>/<run key>/durations.json        the run's pinned timings (durations.pin_timings)
    <task>/<run key>/durations-folded.json the attempts folded into durations files
    <task>/.durations.json                 times recorded by runs here (never committed)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, PIPE
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .attempt import STAMPED_FIELDS, digest, record_text, retry_report
from .errors import LoktTasksError, UsageError
from .states import STARTED_OUTCOMES, RecordOutcome
from .system import read_file, utc_now, write_atomically

if TYPE_CHECKING:
    from .plan import Shard

RECORD_VERSION = 1
OUTCOMES: Tuple[RecordOutcome, ...] = tuple(RecordOutcome)  # "running": a start record
RUN_ENV = "LOKT_TASKS_RUN"  # names the run key when --run is not given
LOCAL_RUN_KEY = "local"  # outside a git repository, or in one without commits
MAX_RUN_KEY_LENGTH = 128  # from --run or the environment
MAX_COMPONENT_BYTES = 255  # the longest file name most file systems take (NAME_MAX)
MAX_RECORD_BYTES = 1024 * 1024  # records are a few hundred bytes: a larger file is not one
#: Seconds an agent's start record may lag its taking the shard's lock (see running_for).
RECORD_LAG = 1.0
_RECORD_NAME = re.compile(r"shard-([1-9][0-9]*)\.json")
_RERUN_NAME = re.compile(r"rerun-([1-9][0-9]*)")
#: In a rerun's directory: its shards' items.
RERUN_PLAN = "plan.json"


@dataclass
class Record:
    task: str
    shard: int
    total: int
    fingerprint: str
    run_key: str
    lock_name: str
    agent: str
    owner: str
    host: str
    pid: int
    engine: str
    #: RFC 3339 UTC timestamps; ``ended_at`` is None in the start record.
    started_at: str
    outcome: str = RecordOutcome.RUNNING
    ended_at: Optional[str] = None
    duration: Optional[float] = None
    exit_code: Optional[int] = None
    #: Name of the signal that ended the command ("SIGKILL"), or None.
    signal: Optional[str] = None
    #: Path of the shard's log file, or None when output went to the terminal.
    log: Optional[str] = None
    items: int = 0
    message: str = ""
    version: int = RECORD_VERSION
    #: Random id of one attempt at the shard, the same in its start and final
    #: record: tells "my record" from one another agent wrote meanwhile.
    attempt: str = ""
    #: Retries of the failing tests that ran (the task's ``retries`` at most).
    retries: int = 0
    #: Per run of this attempt (the command, then each retry): the SHA-256 hex
    #: digest of the JUnit report it left, or None when it left none; [] when
    #: the command writes no report, and in a start record.
    reports: List[Optional[str]] = dataclasses.field(default_factory=list)
    #: The slot the command ran in (``{slot}``), or None when it took none.
    slot: Optional[int] = None
    #: Seconds the attempt waited for its leases (slot, resources) before its
    #: command started; None when it had none to take.
    waited: Optional[float] = None
    #: The named resources the command held (``resources`` in shards.toml).
    resources: List[str] = dataclasses.field(default_factory=list)
    #: The directory the command ran in (the worktree's directory of shards.toml).
    cwd: Optional[str] = None
    #: The plan's estimate of the shard's seconds, when it had timings.
    estimate: Optional[float] = None


@dataclass(frozen=True)
class CorruptRecord:
    """A record file that could not be read: never counted as passed."""

    path: str
    reason: str


AnyRecord = Union[Record, CorruptRecord]


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def parse_time(text: str) -> datetime.datetime:
    """An RFC 3339 timestamp (``Z`` or an offset; lokt writes nanoseconds, cut to
    microseconds) as an aware UTC datetime; raises ValueError."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp: %r" % (text,))
    *date_and_time, fraction, zulu, sign, off_h, off_m = match.groups()
    zone = datetime.timezone.utc
    if not zulu:
        offset = datetime.timedelta(hours=int(off_h), minutes=int(off_m))
        zone = datetime.timezone(-offset if sign == "-" else offset)
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    year, month, day, hour, minute, second = map(int, date_and_time)
    moment = datetime.datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone)
    return moment.astimezone(datetime.timezone.utc)


def format_time(moment: datetime.datetime) -> str:
    """An aware datetime as the records write time: RFC 3339 UTC with microseconds."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_start_record(
    shard: Shard,
    *,
    run_key: str,
    agent: str,
    owner: str,
    host: str,
    pid: int,
    engine: str,
    log: Optional[str] = None,
    started_at: Optional[str] = None,
    attempt: Optional[str] = None,
    cwd: Optional[str] = None,
) -> Record:
    """The record written just before a shard's command starts (outcome "running",
    a fresh random ``attempt`` unless given): if the agent dies, it stays behind
    and ``verify`` reports the shard as crashed rather than missing."""
    return Record(
        task=shard.task,
        shard=shard.index,
        total=shard.total,
        fingerprint=shard.fingerprint,
        run_key=run_key,
        lock_name=shard.lock_name,
        agent=agent,
        owner=owner,
        host=host,
        pid=pid,
        engine=engine,
        started_at=started_at or utc_now(),
        log=log,
        items=len(shard.items),
        attempt=attempt or uuid.uuid4().hex,
        resources=list(shard.resources),
        cwd=cwd,
        estimate=None if shard.estimate is None else round(shard.estimate, 3),
    )


def finish(
    record: Record,
    *,
    outcome: str,
    exit_code: Optional[int] = None,
    signal: Optional[str] = None,
    message: str = "",
    ended_at: Optional[str] = None,
) -> Record:
    """A copy of a start record with how the shard ended and how long it took."""
    if outcome not in OUTCOMES or outcome in STARTED_OUTCOMES:
        raise ValueError("not a final outcome: %r" % (outcome,))
    ended_at = ended_at or utc_now()
    duration = (parse_time(ended_at) - parse_time(record.started_at)).total_seconds()
    return dataclasses.replace(
        record,
        outcome=outcome,
        ended_at=ended_at,
        duration=round(max(duration, 0.0), 6),
        exit_code=exit_code,
        signal=signal,
        message=message,
    )


def record_to_dict(record: Record) -> Dict[str, object]:
    """The record as the JSON object stored on disk."""
    return dataclasses.asdict(record)


def record_to_json(record: Record) -> str:
    """The exact text of a record file, as an attempt writes it: the stamped
    fields (``attempt.STAMPED_FIELDS``), then the others sorted."""
    data = record_to_dict(record)
    return record_text({name: data[name] for name in STAMPED_FIELDS}, unstamped_json(record))


def unstamped_json(record: Record) -> str:
    """The fields of ``record`` that an attempt does not stamp, as the JSON
    object (two-space indent, ASCII) it puts the stamped ones in front of."""
    data = record_to_dict(record)
    unstamped = {name: data[name] for name in sorted(data) if name not in STAMPED_FIELDS}
    return json.dumps(unstamped, indent=2, allow_nan=False)


#: The JSON types a Record field accepts, by its annotation (or the one inside
#: ``Optional[...]``, which accepts null too), and their name in errors. A bool
#: is never one of them, though Python counts it as an int.
_JSON_TYPES = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "List[str]": ((list,), "a list of strings"),
}
#: Fields a record file may leave out (written by an earlier release), with
#: the value they then take.
_FIELD_DEFAULTS: Dict[str, Any] = {
    "attempt": "",
    "retries": 0,
    "reports": (),
    "slot": None,
    "waited": None,
    "resources": (),
    "cwd": None,
    "estimate": None,
}
#: The annotation of a list field, and its entries' types.
_LIST_OF_DIGESTS = "List[Optional[str]]"


def record_from_dict(data: object) -> Record:
    """A Record from decoded JSON, checking shape, types and version; ValueError
    with a short reason. Unknown keys are ignored, so a later release may add
    fields; a change that older readers must not misread bumps ``version``."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object, found %s" % _json_type(data))
    version = data.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version != RECORD_VERSION:
        raise ValueError(
            "record version %d, this lokt-tasks reads version %d" % (version, RECORD_VERSION)
        )
    values: Dict[str, Any] = {}
    for field in dataclasses.fields(Record):
        name, annotation = field.name, str(field.type)
        if annotation == _LIST_OF_DIGESTS:
            entries = data.get(name, _FIELD_DEFAULTS.get(name))
            if not isinstance(entries, (list, tuple)) or not all(
                entry is None or isinstance(entry, str) for entry in entries
            ):
                raise ValueError(
                    "field %r should be a list of strings and nulls, found %s"
                    % (name, _json_type(entries))
                )
            values[name] = list(entries)
            continue
        optional = annotation.startswith("Optional[")
        types, type_name = _JSON_TYPES[
            annotation[len("Optional[") : -1] if optional else annotation
        ]
        if name not in data and name not in _FIELD_DEFAULTS:
            raise ValueError("field %r is missing" % name)
        value = data.get(name, _FIELD_DEFAULTS.get(name))
        wrong_type = isinstance(value, bool) or not isinstance(value, types)
        if name in _FIELD_DEFAULTS and value is _FIELD_DEFAULTS[name]:
            wrong_type = False  # left out: its default
        if wrong_type and not (value is None and optional):
            raise ValueError(
                "field %r should be %s, found %s" % (name, type_name, _json_type(value))
            )
        values[name] = value
    if not all(isinstance(resource, str) for resource in values["resources"]):
        raise ValueError("field 'resources' should be a list of strings")
    values["resources"] = list(values["resources"])
    if values["outcome"] not in OUTCOMES:
        raise ValueError("unknown outcome %r" % values["outcome"])
    if values["shard"] < 1:
        raise ValueError("shard number %d is below 1" % values["shard"])
    if values["retries"] < 0:
        raise ValueError("retries %d is below 0" % values["retries"])
    if values["duration"] is not None:
        values["duration"] = float(values["duration"])
    for name in ("started_at", "ended_at"):
        if values[name] is not None:
            try:
                parse_time(values[name])
            except ValueError:
                raise ValueError(
                    "field %r is not an RFC 3339 time: %r" % (name, values[name])
                ) from None
    return Record(**values)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"), (list, "an array"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "an object")


def _refuse_constant(name: str) -> object:
    raise ValueError("%s is not valid JSON" % name)


def write_record(path: Path, record: Record) -> Path:
    """Write ``record`` to ``path`` (whose directory must exist) atomically.

    Only a final record is fsynced to survive a machine crash: for a start
    record the fsyncs would cost more than the rest of a shard's bookkeeping,
    and without it ``verify`` says missing instead of crashed: not a pass either.
    """
    durable = record.outcome != RecordOutcome.RUNNING
    write_atomically(path, record_to_json(record).encode("ascii"), durable=durable)
    return Path(path)


def read_record(path: Path) -> Optional[AnyRecord]:
    """A Record, a CorruptRecord naming the file and why (empty, truncated, wrong
    shape, another version...: never raises for bad content), or None if absent."""
    path = Path(path)

    def corrupt(reason: str) -> CorruptRecord:
        return CorruptRecord(str(path), reason)

    try:
        raw = read_file(path, MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        return corrupt("cannot read: %s" % (error.strerror or error))
    if len(raw) > MAX_RECORD_BYTES:
        return corrupt("larger than %d bytes" % MAX_RECORD_BYTES)
    if not raw.strip():
        return corrupt("empty file")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        return corrupt("not UTF-8 text")
    except ValueError as error:
        return corrupt("invalid JSON (truncated?): %s" % error)
    try:
        return record_from_dict(data)
    except ValueError as error:
        return corrupt(str(error))


def safe_component(name: str) -> str:
    """``name`` as one readable path component, reversibly: characters outside
    ``A-Z a-z 0-9 - _ .``, and a leading ``.`` (a hidden directory, or ``..``),
    become ``%XX`` per UTF-8 byte, so two names never share a directory."""
    if not name:
        raise ValueError("empty name")
    return re.sub(r"^\.|[^A-Za-z0-9_.-]", _percent_escape, name)


def _percent_escape(match: re.Match[str]) -> str:
    return "".join("%%%02X" % byte for byte in match.group().encode("utf-8", "surrogatepass"))


def unsafe_component(component: str) -> str:
    """Undo :func:`safe_component`."""
    data = re.sub(
        rb"%([0-9A-Fa-f]{2})",
        lambda match: bytes([int(match.group(1), 16)]),
        component.encode("utf-8", "surrogatepass"),
    )
    return data.decode("utf-8", "surrogatepass")


def default_results_dir(lock_root: Path) -> Path:
    """Where records live when shards.toml and the command line do not say: beside
    the lock root, never inside it (lokt sweeps files it does not know), as
    ``<git common dir>/lokt-tasks`` (shared by every worktree, never tracked),
    ``./.lokt-tasks`` or ``/srv/locks-tasks`` for ``$LOKT_ROOT=/srv/locks``."""
    lock_root = Path(os.path.abspath(lock_root))
    if not lock_root.name:
        return lock_root / "lokt-tasks"
    return lock_root.parent / (lock_root.name + "-tasks")


class RecordStore:
    """Shard records, logs and JUnit reports below one results directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return "RecordStore(%r)" % (str(self.root),)

    def task_dir(self, task: str) -> Path:
        return self.root / safe_component(task)

    def run_dir(self, task: str, run_key: str) -> Path:
        """``<task>/<run key>``; a rerun's key ``<run>/rerun-<K>`` a directory below its run's."""
        return self.task_dir(task).joinpath(*map(safe_component, run_key.split("/")))

    def record_path(self, task: str, run_key: str, shard: int) -> Path:
        return self.run_dir(task, run_key) / ("shard-%d.json" % shard)

    def log_path(self, task: str, run_key: str, shard: int) -> Path:
        return self.run_dir(task, run_key) / ("shard-%d.log" % shard)

    def junit_path(self, task: str, run_key: str, shard: int, run: int = 0) -> Path:
        """The report of a shard's command, or (``run`` K) of its retry K."""
        first = str(self.run_dir(task, run_key) / ("shard-%d.junit.xml" % shard))
        return Path(retry_report(first, run))

    def reruns(self, task: str, run_key: str) -> List[Tuple[int, Optional[List[List[str]]]]]:
        """The reruns of a run's failed tests, oldest first: their numbers K and
        each shard's items, from ``rerun-<K>/plan.json`` (None when unreadable)."""
        try:
            names = os.listdir(self.run_dir(task, run_key))
        except (FileNotFoundError, NotADirectoryError):
            return []
        numbers = sorted(
            int(match.group(1)) for match in map(_RERUN_NAME.fullmatch, names) if match
        )
        return [(number, self._rerun_plan(task, run_key, number)) for number in numbers]

    def _rerun_made_since(self, task: str, run_key: str, number: int, since: str) -> bool:
        """Whether rerun ``number``'s plan was made at or after ``since`` (always, without)."""
        if not since:
            return True
        path = self.run_dir(task, rerun_key(run_key, number)) / RERUN_PLAN
        try:
            made = json.loads(read_file(path, MAX_RECORD_BYTES * 64)).get("made_at")
            return parse_time(made) >= parse_time(since)
        except (OSError, ValueError, AttributeError, TypeError):
            return False

    def _rerun_plan(self, task: str, run_key: str, number: int) -> Optional[List[List[str]]]:
        path = self.run_dir(task, rerun_key(run_key, number)) / RERUN_PLAN
        try:
            data = json.loads(read_file(path, MAX_RECORD_BYTES * 64))
        except (OSError, ValueError):
            return None
        groups = data.get("shards") if isinstance(data, dict) else None
        valid = (
            isinstance(groups, list)
            and groups
            and all(
                isinstance(group, list) and group and all(isinstance(item, str) for item in group)
                for group in groups
            )
        )
        return groups if valid and data.get("version") == 1 else None

    def new_rerun(
        self, task: str, run_key: str, groups: Sequence[Sequence[str]], since: str = ""
    ) -> Tuple[int, List[List[str]]]:
        """The number and shards of the rerun that runs the items of ``groups``
        (each shard's items): the last rerun when it holds the same items,
        however split, and was made at or after ``since`` (RFC 3339: when the
        records of the failures ended; a second agent rerunning the same tests
        joins it, a rerun older than the failures does not), else a new one,
        its plan written exclusively (two agents starting one at once agree)."""
        wanted = _all_items(groups)
        rounds = self.reruns(task, run_key)
        if rounds and rounds[-1][1] is not None and _all_items(rounds[-1][1]) == wanted:
            if self._rerun_made_since(task, run_key, rounds[-1][0], since):
                return rounds[-1][0], rounds[-1][1]
        last = rounds[-1][0] if rounds else 0
        plan = {"version": 1, "made_at": utc_now(), "shards": [list(group) for group in groups]}
        data = json.dumps(plan, indent=2)
        for number in range(last + 1, last + 100):
            directory = self.run_dir(task, rerun_key(run_key, number))
            directory.mkdir(parents=True, exist_ok=True)
            try:
                write_atomically(directory / RERUN_PLAN, data.encode("utf-8"), exclusive=True)
                return number, [list(group) for group in groups]
            except FileExistsError:
                theirs = self._rerun_plan(task, run_key, number)
                fresh = self._rerun_made_since(task, run_key, number, since)
                if theirs is not None and _all_items(theirs) == wanted and fresh:
                    return number, theirs
        raise LoktTasksError("cannot find a free rerun number in %s" % self.run_dir(task, run_key))

    def pinned_durations_path(self, task: str, run_key: str) -> Path:
        return self.run_dir(task, run_key) / "durations.json"

    def fold_ledger_path(self, task: str, run_key: str) -> Path:
        return self.run_dir(task, run_key) / "durations-folded.json"

    def local_durations_path(self, task: str) -> Path:
        """The task's times recorded by the runs that keep records here, in the
        durations file's format. Its name starts with a dot, which no escaped
        run key does (see :func:`safe_component`)."""
        return self.task_dir(task) / ".durations.json"

    def counted_reports(
        self, task: str, run_key: str, shards: Sequence[Shard]
    ) -> List[Tuple[Shard, Record, Path]]:
        """The JUnit reports of a run that count for timings, with their shard and record.

        A shard's report counts when the record beside it is final (not a
        start record, not an engine error: the command ran), is of the
        shard's plan (its fingerprint), and the report is the one its command
        left in that attempt: its SHA-256 is the first the record names
        (``Record.reports``), so a report another attempt left is never read
        as this one's, wherever the results directory was copied.
        """
        counted = []
        for shard in shards:
            record = self.read(task, run_key, shard.index)
            if not isinstance(record, Record) or record.fingerprint != shard.fingerprint:
                continue
            if record.outcome in (RecordOutcome.RUNNING, RecordOutcome.ERROR):
                continue
            if not record.reports or record.reports[0] is None:
                continue
            report = self.junit_path(task, run_key, shard.index)
            try:
                data = read_file(report)
            except OSError:
                continue
            if digest(data) == record.reports[0]:
                counted.append((shard, record, report))
        return counted

    def write(self, record: Record) -> Path:
        """Write ``record`` in its place, atomically (see :func:`write_record`)."""
        path = self.record_path(record.task, record.run_key, record.shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_record(path, record)

    def read(self, task: str, run_key: str, shard: int) -> Optional[AnyRecord]:
        """The record of one shard, a CorruptRecord, or None if there is none.
        A record naming another task, run key or shard than its place is corrupt:
        a file copied to the wrong place must not stand in for the shard it names."""
        path = self.record_path(task, run_key, shard)
        record = read_record(path)
        if not isinstance(record, Record):
            return record
        for field, expected in (("task", task), ("run_key", run_key), ("shard", shard)):
            found = getattr(record, field)
            if found != expected:
                return CorruptRecord(
                    str(path), "holds %s %r, expected %r (file moved?)" % (field, found, expected)
                )
        return record

    def read_run(self, task: str, run_key: str) -> Dict[int, AnyRecord]:
        """Every shard record of one run, by shard number. Temp files are ignored."""
        try:
            names = sorted(os.listdir(self.run_dir(task, run_key)))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        shards = [int(match.group(1)) for match in map(_RECORD_NAME.fullmatch, names) if match]
        records = {shard: self.read(task, run_key, shard) for shard in shards}
        return {shard: record for shard, record in records.items() if record is not None}

    def running_for(
        self, task: str, shard: int, owner: str, *, rerun: bool = False
    ) -> Optional[str]:
        """The run in which ``owner`` last started ``shard`` and has not
        finished it (its start record is the newest of theirs), or None;
        ``rerun``: shard ``shard`` of a rerun of failed tests (see newest_for)."""
        newest = self.newest_for(task, shard, owner, rerun=rerun)
        return newest[0] if newest and newest[1] in STARTED_OUTCOMES else None

    def newest_for(
        self, task: str, shard: int, owner: str, *, patience: float = 0.0, rerun: bool = False
    ) -> Optional[Tuple[str, str]]:
        """The run key and outcome of the newest record ``owner`` wrote for
        ``shard`` in any run (with ``rerun``, in any run's reruns of failed
        tests, whose lock is ``<task>-rerun-N``), or None. An agent writes it a
        moment after it took the shard's lock: for a lock taken ``patience``
        seconds ago or less, look again until one is found or that time has passed."""
        deadline = time.monotonic() + patience
        while True:
            found = []
            keys = self.runs(task)
            if rerun:
                keys = [rerun_key(run, n) for run in keys for n, _ in self.reruns(task, run)]
            for run_key in keys:
                record = self.read(task, run_key, shard)
                if isinstance(record, Record) and record.owner == owner:
                    found.append((record.started_at, record.outcome, run_key))
            if found or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not found:
            return None
        _, outcome, run_key = max(found)
        return run_key, outcome

    def runs(self, task: str) -> List[str]:
        """Run keys that have records for ``task``, oldest first by last write."""
        try:
            entries = list(os.scandir(self.task_dir(task)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                found.append((entry.stat().st_mtime, entry.name))
            except FileNotFoundError:
                continue
        return [unsafe_component(name) for _, name in sorted(found)]


def _all_items(groups: Sequence[Sequence[str]]) -> List[str]:
    return sorted(item for group in groups for item in group)


def rerun_key(run_key: str, number: int) -> str:
    """The run key of rerun ``number`` of a run's failed tests."""
    return "%s/rerun-%d" % (run_key, number)


def validate_run_key(key: str, source: str = "--run") -> str:
    """Check a run key given by the user; UsageError naming ``source`` if unusable."""

    def refuse(problem: str) -> UsageError:
        return UsageError("%s: the run key %s" % (source, problem))

    if not key:
        raise refuse("is empty")
    if len(key) > MAX_RUN_KEY_LENGTH:
        raise refuse("is longer than %d characters" % MAX_RUN_KEY_LENGTH)
    if "/" in key or "\\" in key:
        raise refuse("%r must not contain a slash" % key)
    if ".." in key:
        raise refuse("%r must not contain '..'" % key)
    if not key.isprintable() or key != key.strip():
        raise refuse("%r must be printable, without leading or trailing space" % key)
    if len(safe_component(key)) > MAX_COMPONENT_BYTES:
        limit = "(%d bytes at most)" % MAX_COMPONENT_BYTES
        raise refuse("%r is too long once escaped for a directory name %s" % (key, limit))
    return key


def current_run_key(
    cwd: Path,
    explicit: Optional[str] = None,
    env: Mapping[str, str] = os.environ,
    ignore: Sequence[Path] = (),
) -> str:
    """Which run the records of this invocation belong to: ``explicit`` (``--run``),
    else ``$LOKT_TASKS_RUN`` if not empty, else from git in ``cwd``: 12 hex digits
    of HEAD, plus, when tracked files differ from HEAD (staged or not), ``-dirty-``
    and 8 hex digits of a SHA-256 over that diff; ``"local"`` outside a work tree
    or before the first commit. Untracked and ignored files never change the key
    (logs, reports), nor do the tracked files in ``ignore``, which the run itself
    rewrites (the durations file)."""
    if explicit is not None:
        return validate_run_key(explicit, "--run")
    from_env = env.get(RUN_ENV, "")
    if from_env:
        return validate_run_key(from_env, "$" + RUN_ENV)
    return git_run_key(Path(cwd), ignore)


def git_run_key(cwd: Path, ignore: Sequence[Path] = ()) -> str:
    """The run key git gives ``cwd`` (see :func:`current_run_key`)."""
    top = _git_output(cwd, "rev-parse", "--show-toplevel")
    if top is None:
        return LOCAL_RUN_KEY
    head = _git_output(cwd, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head is None or not re.match(r"^[0-9a-f]{12,}$", head):
        return LOCAL_RUN_KEY
    inside = [_relative_to(Path(path), Path(top)) for path in ignore]
    digest = _tracked_changes_digest(Path(top), [":(exclude,top)" + p for p in inside if p])
    return head[:12] if digest is None else "%s-dirty-%s" % (head[:12], digest[:8])


def head_commit(cwd: Path) -> Optional[str]:
    """The full hex id of the commit checked out in ``cwd``, or None outside a
    git work tree or before its first commit."""
    head = _git_output(cwd, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    return head if head and re.match(r"^[0-9a-f]{40,64}$", head) else None


def _start_git(cwd: Path, args: Sequence[str], stderr: Any) -> subprocess.Popen[bytes]:
    # Reading the key must not take the index lock other git commands need
    # (for git diff, see _DIFF_ARGS).
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    command = ["git", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdin=DEVNULL, stdout=PIPE, stderr=stderr)


def _git_output(cwd: Path, *args: str) -> Optional[str]:
    try:
        with _start_git(cwd, args, DEVNULL) as process:
            output, _ = process.communicate()
    except OSError:
        return None
    return output.decode("utf-8", "replace").strip() if process.returncode == 0 else None


# Options that pin the diff's text against personal git configuration, so the
# same tree gives the same digest in every shell and worktree. Without
# diff.autoRefreshIndex=false, git diff rewrites the index (under its lock)
# after a file was touched but not changed, whatever GIT_OPTIONAL_LOCKS says.
_DIFF_ARGS = tuple(
    "-c diff.autoRefreshIndex=false diff HEAD --binary --full-index --no-color --no-ext-diff"
    " --no-textconv --no-renames --ignore-submodules=untracked --src-prefix=a/ --dst-prefix=b/"
    " --".split()
)


def _relative_to(path: Path, top: Path) -> str:
    """``path`` relative to the work tree's top, or "" when it lies outside it."""
    try:
        return Path(os.path.realpath(path)).relative_to(os.path.realpath(top)).as_posix()
    except ValueError:
        return ""


def _tracked_changes_digest(top: Path, excludes: Sequence[str] = ()) -> Optional[str]:
    """SHA-256 hex of ``git diff HEAD`` in ``top``, or None when it is empty."""
    digest = hashlib.sha256()
    seen_any = False
    # The diff can be large, so it is hashed as it streams; stderr goes to a
    # file so that a chatty git cannot block on a full pipe meanwhile.
    with tempfile.TemporaryFile() as errors:
        try:
            process = _start_git(top, [*_DIFF_ARGS, *excludes], errors)
        except OSError as error:
            raise LoktTasksError("cannot run git to compute the run key: %s" % error) from None
        with process:
            stdout = process.stdout
            assert stdout is not None
            for chunk in iter(lambda: stdout.read(65536), b""):
                seen_any = True
                digest.update(chunk)
        errors.seek(0)
        stderr = errors.read(4096)
    if process.returncode != 0:
        detail = stderr.decode("utf-8", "replace").strip().splitlines()
        raise LoktTasksError(
            "git diff failed in %s while computing the run key%s"
            % (top, (": " + detail[0]) if detail else "")
        )
    return digest.hexdigest() if seen_any else None
