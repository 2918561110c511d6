"""The ingest worker: one chunk of raw files -> staged parquet parts + small metadata.

A worker (a local process, or a Dask worker for ``ingest --scheduler``) reads, hashes,
parses and maps every file of its chunk, builds the chunk's events and variables tables
and *stages* them (``data/processed/.staging``, fsynced, outside every table folder). It
returns only what the committing process needs to decide and record: per file its size,
sha256, problems and per session its keys and catalog record. The committing process
alone decides duplicates and conflicts, commits to the catalog and publishes
(research/reliability.md §5.3: many data writers, one committer).

A staged part holds every session of the chunk that mapped cleanly (the *candidates*).
When the committing process stores exactly those sessions (the usual case: nothing is a
duplicate), the staged parts are committed as they are; otherwise it re-stages a filtered
copy (:func:`labpipe.store.restage_part`). Parts are named after the sessions they hold,
so a chunk processed twice (a retried Dask task, a rerun after a crash) writes the same
bytes under the same name: harmless.

This module sits below :mod:`labpipe.ingest` and :mod:`labpipe.distributed` so that both
can run it without importing each other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from labpipe import medpc, sessions, store
from labpipe.config import Experiment
from labpipe.errors import MedPCFormatError, SessionError
from labpipe.fsio import read_unchanged
from labpipe.model import Reason

__all__ = ["ChunkResult", "FileResult", "SessionResult", "StagedPart", "process_chunk"]

#: One raw file to do: (absolute path, path relative to data/raw, size, mtime_ns).
Item = tuple[str, str, int, int]


@dataclass(slots=True)
class SessionResult:
    """The keys and catalog record of one parsed session (no values: those are staged)."""

    block: int
    line: int
    session_id: str
    key: str
    slot: str
    fingerprint: str
    subject_raw: str
    #: (reason code, message) when the session could not be mapped.
    error: tuple[str, str] | None = None
    #: The mapped subject and the JSON record (None when ``error`` is set).
    subject: str | None = None
    record: str | None = None


@dataclass(slots=True)
class FileResult:
    """What a worker found in one raw file."""

    rel: str
    size: int
    mtime_ns: int
    sha256: str | None = None
    #: (reason code, message) when the whole file was set aside.
    error: tuple[str, str] | None = None
    #: The file changed while it was read: left pending.
    unstable: bool = False
    sessions: list[SessionResult] = field(default_factory=list)
    #: Blocks that could not be read: (block, reason code, message, subject as typed).
    problems: list[tuple[int, str, str, str | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StagedPart:
    """A part written to the staging folder: its name, sha256 and number of rows."""

    name: str
    sha256: str
    n_rows: int


@dataclass(slots=True)
class ChunkResult:
    """What a worker did with one chunk: per-file results and the staged parts.

    ``candidates`` are the session ids the staged parts hold (sorted); ``parts`` is empty
    when no session mapped cleanly.
    """

    files: list[FileResult]
    candidates: list[str] = field(default_factory=list)
    parts: dict[str, StagedPart] = field(default_factory=dict)


def read_file(item: Item, cfg: Experiment) -> tuple[FileResult, list[_Values]]:
    """Read, hash, parse and map one raw file.

    Parameters
    ----------
    item
        (path, relative path, size, mtime_ns) as discovered.
    cfg
        The experiment.

    Returns
    -------
    FileResult, list
        The file's metadata, and the values of each session that mapped cleanly.
    """
    path_txt, rel, size, mtime_ns = item
    out = FileResult(rel=rel, size=size, mtime_ns=mtime_ns)
    values: list[_Values] = []
    limits = medpc.DEFAULT_LIMITS
    if size > limits.max_file_bytes:
        out.error = (
            Reason.TOO_LARGE,
            f"{rel} is {size / 2**20:.0f} MiB; no MED-PC data file is larger than "
            f"{limits.max_file_bytes / 2**20:.0f} MiB, so it is not read.",
        )
        return out, values
    # Opened read-only; the bytes are hashed and parsed from one read.
    data = read_unchanged(path_txt, size, mtime_ns)
    if data is None:
        out.unstable = True
        return out, values
    out.sha256 = hashlib.sha256(data).hexdigest()
    try:
        parsed = medpc.parse_medpc(data, source=rel, limits=limits)
    except MedPCFormatError as exc:
        out.error = (exc.reason_code, _without_source(str(exc), rel))
        return out, values
    for problem in parsed.problems:
        out.problems.append(
            (
                problem.block,
                problem.reason,
                _without_source(problem.message, rel),
                problem.header.get("Subject"),
            )
        )
    for raw in parsed.sessions:
        ident = sessions.identify(raw)
        res = SessionResult(
            block=raw.block,
            line=raw.line,
            session_id=ident.session_id,
            key=ident.key,
            slot=ident.slot,
            fingerprint=ident.fingerprint,
            subject_raw=raw.subject.strip(),
        )
        try:
            mapped = sessions.map_session(raw, cfg, source_file=rel, identity=ident)
        except SessionError as exc:
            res.error = (exc.reason_code, f"line {raw.line}: {exc}")
        else:
            res.subject = mapped.record["subject"]
            res.record = _RECORD_JSON.encode(mapped.record)
            values.append(_Values(ident.session_id, mapped.event_t, mapped.event_name, raw))
        out.sessions.append(res)
    return out, values


#: ``json.dumps(record, sort_keys=True)``, with one encoder for every session. A record is
#: one flat dict of strings, numbers, booleans and None: it cannot refer to itself, so the
#: circular-reference check (the only difference) has nothing to find.
_RECORD_JSON = json.JSONEncoder(sort_keys=True, check_circular=False)


def _without_source(message: str, rel: str) -> str:
    """Drop a leading ``<file>: `` from a message stored beside its file's name."""
    prefix = f"{rel}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


@dataclass(slots=True)
class _Values:
    session_id: str
    event_t: np.ndarray
    event_name: np.ndarray
    raw: object


def process_chunk(cfg: Experiment, processed: str | Path, items: list[Item]) -> ChunkResult:
    """Read, parse and map a chunk of raw files and stage its parts.

    Parameters
    ----------
    cfg
        The experiment.
    processed
        ``data/processed`` (shared with the committing process).
    items
        The chunk's files, in path order.

    Returns
    -------
    ChunkResult
        Per-file metadata, the candidate session ids and the staged parts.
    """
    files: list[FileResult] = []
    values: list[_Values] = []
    for item in items:
        res, vals = read_file(item, cfg)
        files.append(res)
        values.extend(vals)
    out = ChunkResult(files=files)
    if not values:
        return out
    # One copy of a session id per chunk: a second copy in the same chunk is a duplicate
    # (or a conflict) that the committing process decides; the first one is the candidate.
    seen: set[str] = set()
    unique = []
    for v in values:
        if v.session_id not in seen:
            seen.add(v.session_id)
            unique.append(v)
    unique.sort(key=lambda v: v.session_id)
    out.candidates = [v.session_id for v in unique]
    base = Path(processed)
    ev = _events_columns(unique)
    var = _variables_columns(unique)
    ev_name = store.part_name("events", out.candidates)
    var_name = store.part_name("variables", out.candidates)
    ev_table = store.events_table(out.candidates, *ev)
    var_table = store.variables_table(out.candidates, *var)
    out.parts["events"] = StagedPart(
        ev_name, store.stage_part(base, ev_name, ev_table), ev_table.num_rows
    )
    out.parts["variables"] = StagedPart(
        var_name, store.stage_part(base, var_name, var_table), var_table.num_rows
    )
    return out


def _events_columns(ordered: list[_Values]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (events per session, t_s, event name) of the sessions, in order."""
    sizes = np.fromiter((v.event_t.size for v in ordered), dtype=np.int64, count=len(ordered))
    if not sizes.sum():
        return sizes, np.empty(0, np.float64), np.empty(0, object)
    return (
        sizes,
        np.concatenate([v.event_t for v in ordered]),
        np.concatenate([v.event_name for v in ordered]),
    )


def _variables_columns(
    ordered: list[_Values],
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Return the columns of :func:`labpipe.store.variables_table` after the session ids.

    Every raw variable of every session, in order: a scalar is one row (index -1), an
    array one row a slot, trailing padding included.
    """
    names: list[str] = []
    session_rows: list[int] = []
    sizes: list[int] = []  # per variable: its slots, 1 for a scalar
    arrays: list[np.ndarray] = []
    scalar_at: list[int] = []  # which variables (positions in ``sizes``) are scalars
    scalars: list[float] = []
    for v in ordered:
        variables = v.raw.variables  # type: ignore[attr-defined]
        names.extend(variables)
        rows = 0
        for value in variables.values():
            if isinstance(value, np.ndarray):
                sizes.append(value.size)
                rows += value.size
                arrays.append(value)
            else:
                scalar_at.append(len(sizes))
                sizes.append(1)
                rows += 1
                scalars.append(value)
        session_rows.append(rows)
    counts = np.array(sizes, dtype=np.int64)
    per_session = np.array(session_rows, dtype=np.int64)
    if not names:
        return per_session, names, counts, np.empty(0, np.int64), np.empty(0)
    starts = np.cumsum(counts) - counts
    first = starts[scalar_at]  # the slot of each scalar
    # Each array's slots are numbered from 0; a scalar's index is -1 (stored as null).
    index = np.arange(int(starts[-1] + counts[-1]), dtype=np.int64) - np.repeat(starts, counts)
    index[first] = -1
    values = np.empty(index.size, dtype=np.float64)
    values[first] = np.array(scalars, dtype=np.float64)
    if arrays:
        in_array = np.ones(index.size, dtype=bool)
        in_array[first] = False
        values[in_array] = np.concatenate(arrays, dtype=np.float64, casting="unsafe")
    return per_session, names, counts, index, values
