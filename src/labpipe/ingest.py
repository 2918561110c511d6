"""Ingest: new raw files -> catalog + parquet datasets, safely and incrementally.

One run:

1. **Recover** what a crashed run left: committed staged parts are published (rolled
   forward), uncommitted ones and temporary files removed, committed parts that vanished
   are forgotten so their raw files are read again.
2. **Re-derive** everything when the derivation key changed (parser or mapping version,
   time zone, lever/event mapping, phase rules, an animal's active lever, corrections):
   stored events depend on those, so they are derived again from ``data/raw`` and the run
   says so.
3. **Discover** files under ``data/raw`` (hidden files skipped). A file whose size and
   mtime match what the catalog recorded is not read again. A file whose mtime is younger
   than ``settle_seconds`` is *pending*: a chamber may still be writing it.
4. **Parse and map** new files, in worker processes when there are many. Each file is read
   once: hashed and parsed from the same bytes.
5. **Decide** per session, in path order: store it, or record it as a duplicate (same
   identity, same data), or set it aside — conflict (same identity, other data), relabel
   (same box, start and data under another subject), box clash, or the mapping's reason.
6. **Commit** a batch of files: stage the parts (fsynced, outside the table folders), write
   every catalog row of the batch in one ``BEGIN IMMEDIATE`` transaction, then move the
   parts into place. The catalog COMMIT is the one point where a batch becomes real.
7. Rewrite ``sessions.parquet`` from the catalog when anything changed.

Raw files are opened read-only and never modified, renamed or removed.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import itertools
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labpipe import medpc, sessions, store, worker
from labpipe.catalog import Catalog, FileRow, StoredSession
from labpipe.config import Experiment
from labpipe.errors import DataError, LabpipeError
from labpipe.fsio import crash_point, environment_failure, is_environment_error
from labpipe.model import Reason

#: Version of the raw reader as far as stored data are concerned.
PARSER_VERSION = getattr(medpc, "PARSER_VERSION", "1")

#: Files committed per catalog transaction (and per parquet part) in a small run; see
#: :func:`chunk_files` for large ones.
BATCH_FILES = 256

#: Most files in one chunk (a large first ingest).
MAX_CHUNK_FILES = 4096

#: Below this many files a run parses in-process (starting workers costs more).
_POOL_MIN_FILES = 64

#: Whether a run from an empty catalog decides from memory (see :class:`_Stored`); tests
#: switch it off to compare with the catalog look-ups.
_MEMO = True

Progress = Callable[[int, int], None]
Item = worker.Item


@dataclass(frozen=True, slots=True)
class SetAsideItem:
    """A raw file, or one session of it, that needs a human."""

    file: str
    block: int | None
    reason_code: str
    reason: str
    session_id: str | None = None
    subject_raw: str | None = None


@dataclass(slots=True)
class IngestSummary:
    """What one ingest run did.

    Attributes
    ----------
    run_id
        The run's id (also in the catalog's ``runs`` table and the log).
    files_seen
        Raw files found under ``data/raw``.
    files_read
        Files hashed and parsed this run (0 on an unchanged folder).
    ingested
        Files whose sessions were stored this run.
    duplicates
        (file, what it duplicates) for files holding nothing new.
    set_aside
        Files or sessions set aside this run, with reasons.
    pending
        Files left for a later run (still being written).
    sessions_added
        Sessions stored this run.
    sessions_total
        Sessions in the catalog after the run.
    still_set_aside
        Every file or session set aside in the catalog after the run (this run's and
        earlier ones not yet fixed).
    recovered
        What was finished or cleaned up from a crashed run.
    rederived
        Why stored sessions were derived again, or None.
    """

    run_id: str
    files_seen: int = 0
    files_read: int = 0
    ingested: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    set_aside: list[SetAsideItem] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    sessions_added: int = 0
    sessions_total: int = 0
    still_set_aside: list[SetAsideItem] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    rederived: str | None = None

    @property
    def exit_code(self) -> int:
        """0 when everything is in; 1 when some input remains set aside."""
        return 1 if self.still_set_aside else 0

    @property
    def changed(self) -> bool:
        """Whether this run changed the stored data."""
        return bool(self.sessions_added or self.rederived or self.recovered)


# ---- worker side -----------------------------------------------------------------------

_CFG: Experiment | None = None
_PROCESSED: str = ""


def _init_worker(cfg: Experiment) -> None:
    global _CFG, _PROCESSED
    _CFG = cfg
    _PROCESSED = str(cfg.processed_dir)


def _init_pool_worker(cfg: Experiment, parent: int) -> None:
    """Initialise a pool worker that dies with its run.

    A worker outlives a run killed with SIGKILL (it waits for work forever, holding its
    memory and the pipes of the run) unless the kernel kills it with its parent: Linux's
    ``PR_SET_PDEATHSIG``. Elsewhere the worker exits when it next finds its parent gone.
    """
    if os.uname().sysname == "Linux":
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the run died before prctl took effect
        os._exit(1)
    # Forked while the committing process pauses its cycle collector: a worker collects
    # its own garbage, but never walks (and so never copies) the objects it inherited.
    gc.enable()
    gc.freeze()
    _init_worker(cfg)


def _work_chunk(items: list[tuple[str, str, int, int]]) -> worker.ChunkResult:
    """Read, parse, map and stage one chunk of raw files (runs in a worker process)."""
    assert _CFG is not None, "worker not initialised"
    return worker.process_chunk(_CFG, _PROCESSED, items)


# ---- main side -------------------------------------------------------------------------


def _scan(raw_dir: Path) -> list[tuple[str, str, int, int]]:
    """Return (path, relative path with '/', size, mtime_ns) of every raw file, sorted.

    Plain strings: a nightly run scans the whole history (10⁵ files), and building a
    ``Path`` per file cost more than the scan itself.
    """
    found: list[tuple[str, str, int, int]] = []
    stack = [(os.fspath(raw_dir), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, f"{prefix}{entry.name}/"))
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                found.append((entry.path, prefix + entry.name, st.st_size, st.st_mtime_ns))
    found.sort(key=lambda f: f[1])
    return found


def ingest(
    cfg: Experiment,
    *,
    workers: int | None = None,
    settle_seconds: float = 0.0,
    progress: Progress | None = None,
    run_id: str | None = None,
    command: str = "ingest",
    scheduler: str | None = None,
) -> IngestSummary:
    """Take every new raw file of the lab folder into the catalog and datasets.

    Parameters
    ----------
    cfg
        The experiment (its ``raw_dir`` and ``processed_dir`` are used).
    workers
        Worker processes for parsing (default: the machine's cores; 1 parses in-process).
    settle_seconds
        A file modified less than this many seconds ago is left pending.
    progress
        Called with (files done, files to do) as the run goes.
    run_id
        Id of the run (generated when omitted).
    command
        Name of the command, recorded in the catalog's run table.
    scheduler
        Address of a Dask distributed scheduler (``tls://...`` or a local address) to
        parse on instead of local worker processes; see :mod:`labpipe.distributed`.

    Returns
    -------
    IngestSummary
        What the run did; ``exit_code`` is 1 when input remains set aside.

    Raises
    ------
    EnvironmentFailure
        When the disk fails (full, read-only); nothing committed is lost.
    """
    summary = IngestSummary(run_id=run_id or uuid.uuid4().hex[:12])
    processed = cfg.processed_dir
    try:
        processed.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise environment_failure(exc, processed) from exc
    with Catalog(processed / "catalog.sqlite") as cat:
        cat.start_run(summary.run_id, command)
        try:
            _run(
                cfg,
                cat,
                summary,
                workers=workers,
                settle=settle_seconds,
                progress=progress,
                scheduler=scheduler,
            )
        except OSError as exc:
            if is_environment_error(exc):
                raise environment_failure(exc, processed) from exc
            raise
        summary.sessions_total = cat.counts()["sessions"]
        summary.still_set_aside = set_aside_items(cat)
        cat.finish_run(summary.run_id, summary.exit_code, _counts(summary))
    return summary


def set_aside_items(cat: Catalog) -> list[SetAsideItem]:
    """Return every file or session the catalog holds as set aside."""
    return [
        SetAsideItem(
            file=r["file"],
            block=None if r["block"] < 0 else r["block"],
            reason_code=r["reason_code"],
            reason=r["reason"],
            session_id=r["session_id"],
            subject_raw=r["subject_raw"],
        )
        for r in cat.set_aside_rows()
    ]


def _counts(s: IngestSummary) -> dict[str, int]:
    return {
        "files_seen": s.files_seen,
        "files_read": s.files_read,
        "ingested": len(s.ingested),
        "duplicates": len(s.duplicates),
        "set_aside": len(s.set_aside),
        "pending": len(s.pending),
        "sessions_added": s.sessions_added,
        "sessions_total": s.sessions_total,
    }


@contextlib.contextmanager
def _no_cycle_collection(active: bool = True) -> Iterator[None]:
    """Pause Python's cycle collector while a run decides and commits (when ``active``).

    A large run keeps 10⁵ file rows, sessions and results alive at once; every full
    collection walks all of them, and a first ingest of 10⁵ files spent about 2 s of its
    committing process's CPU in collections that found nothing: the loop makes no
    reference cycles (plain rows, tuples and dataclasses). Reference counting still frees
    everything as usual; the collector runs again afterwards.
    """
    if not active or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _run(
    cfg: Experiment,
    cat: Catalog,
    summary: IngestSummary,
    *,
    workers: int | None,
    settle: float,
    progress: Progress | None,
    scheduler: str | None = None,
) -> None:
    processed = cfg.processed_dir
    rolled, removed = store.recover(processed, cat.parts())
    if rolled:
        cat.mark_published(rolled)
    summary.recovered = [f"published {n}" for n in rolled] + [f"removed {n}" for n in removed]
    lost = store.missing_parts(processed, cat.parts())
    if lost:
        _forget_parts(cat, lost)
        summary.recovered += [f"re-reading the raw files of lost part {n}" for n in lost]

    key = _derivation_key(cfg, cat)
    if cat.meta("derivation_key") != key:
        had = cat.counts()["sessions"]
        with cat.transaction() as con:
            if had:
                cat.forget_derived(con)
            cat.set_meta(con, "derivation_key", key)
        if had:
            store.remove_published(processed)
            summary.rederived = (
                f"the parser, the lever/event mapping, the phases, the time zone, an animal's "
                f"active lever or the corrections changed: {had} stored sessions are derived "
                "again from data/raw"
            )
    with cat.transaction() as con:
        cat.replace_corrections(con, cfg.corrections)
        # Missing only when a first ingest stopped before it built them (see below).
        cat.create_lookup_indexes(con)

    settled = cat.settled_files(cfg.fingerprint, PARSER_VERSION)
    todo: list[tuple[str, str, int, int]] = []
    now_ns = time.time_ns()
    pending_rows: list[dict[str, Any]] = []
    for path, rel, size, mtime_ns in _scan(cfg.raw_dir):
        summary.files_seen += 1
        if settled.get(rel) == (size, mtime_ns):
            continue  # unchanged since it was read
        if settle > 0 and (now_ns - mtime_ns) < settle * 1e9:
            summary.pending.append(rel)
            pending_rows.append(
                {"path": rel, "size": size, "mtime_ns": mtime_ns, "status": "pending"}
            )
            continue
        todo.append((path, rel, size, mtime_ns))
    # A first ingest (or a re-derivation) starts from a catalog that stores nothing: what
    # the run stores is all there is to compare with, and is kept in memory. A catalog
    # with settled files (a nightly run) is not counted: it is not empty.
    empty = fresh = False
    if not settled:
        counts = cat.counts()
        empty = not sum(counts.values())
        fresh = not (counts["sessions"] or counts.get("ingested") or counts.get("partial"))
    del settled
    # What the catalog already knows of the files to do (new, changed, pending, or set
    # aside with another config): rows to update rather than insert.
    known: dict[str, FileRow] = {}
    if not empty:
        known = cat.files([t[1] for t in todo] + [p["path"] for p in pending_rows])
    if pending_rows:
        with cat.transaction() as con:
            for prow in pending_rows:
                if known.get(prow["path"]) is None or known[prow["path"]].status == "pending":
                    cat.put_file(con, prow, summary.run_id)

    memo = _Stored() if fresh and _MEMO else None
    done = 0
    if progress is not None:
        progress(0, len(todo))
    with _no_cycle_collection(scheduler is None), _lookup_indexes_deferred(cat, memo):
        for chunk in _parse_all(cfg, todo, workers, scheduler):
            _commit_batch(cfg, cat, chunk, summary, known, memo)
            done += len(chunk.files)
            if progress is not None:
                progress(done, len(todo))
    if todo:
        # A worker that died mid-write (its chunk was redone by another) left a temporary.
        summary.recovered += [f"removed {n}" for n in store.remove_staged_temporaries(processed)]

    # The key describes what is stored now (it covers the active lever of every stored
    # subject), so it is recorded after the new sessions are in.
    final_key = _derivation_key(cfg, cat)
    if final_key != key:
        with cat.transaction() as con:
            cat.set_meta(con, "derivation_key", final_key)

    if (
        summary.changed
        or not (processed / "sessions.parquet").exists()
        or (cat.meta("sessions_built_with") != cfg.fingerprint)
    ):
        write_sessions_table(cfg, cat, None if memo is None else memo.records)


@contextlib.contextmanager
def _lookup_indexes_deferred(cat: Catalog, memo: _Stored | None) -> Iterator[None]:
    """Without the catalog's look-up indexes while a first ingest commits, then with them.

    A run that decides from its memo (it started from a catalog storing nothing) never
    queries those indexes; kept, the index on sha256 (random keys) alone is written out
    again whole by every commit, about a third of the catalog's cost of a first ingest.
    Built at the end, each is sorted once. A run that stops in between leaves them
    missing (every query answers the same, only slower) until the next ingest's start.
    """
    if memo is None:
        yield
        return
    with cat.transaction() as con:
        cat.drop_lookup_indexes(con)
    try:
        yield
    except BaseException:
        with contextlib.suppress(LabpipeError), cat.transaction() as con:
            cat.create_lookup_indexes(con)  # or at the next ingest's start
        raise
    with cat.transaction() as con:
        cat.create_lookup_indexes(con)


def write_sessions_table(
    cfg: Experiment, cat: Catalog, stored: list[pd.DataFrame] | None = None
) -> None:
    """Rewrite ``sessions.parquet`` from the catalog and the config.

    The records of the sessions the current file was built from are taken from the file
    itself when the catalog shows they are all still stored, unchanged (see
    :meth:`labpipe.catalog.Catalog.sessions_state`, and the file's sha256 as written), so
    a nightly run decodes only the new sessions' records; otherwise every record is read
    from the catalog. Either way the file is byte-identical to one built from scratch.

    ``stored`` (a run that started from a catalog storing nothing) holds the records of
    every session the run stored, decoded as it committed them: all the catalog holds.
    """
    processed = cfg.processed_dir
    state = cat.sessions_state()
    if stored is not None:
        records = pd.concat(stored, ignore_index=True) if stored else store.records_frame([])
    elif (base := _sessions_base(cfg, cat)) is None:
        records = store.records_frame(cat.session_records())
    else:
        old, last = base
        new = store.records_frame(cat.session_records(after=last))
        records = pd.concat([old, new], ignore_index=True) if len(new) else old
    frame = sessions_frame(records, cfg)
    sha256 = store.write_sessions(processed, frame, cfg.timezone)
    built = {"epoch": state.epoch, "rows": state.rows, "last": state.last, "sha256": sha256}
    crash_point("sessions_written")
    with cat.transaction() as con:
        cat.set_meta(con, "sessions_built_with", cfg.fingerprint)
        cat.set_meta(con, "sessions_built_from", json.dumps(built, sort_keys=True))


def catalog_sessions_frame(cfg: Experiment, cat: Catalog) -> pd.DataFrame:
    """Build ``sessions.parquet``'s rows from every record in the catalog (no shortcut).

    What :func:`write_sessions_table` writes when it cannot extend the file, and what
    ``labpipe verify`` compares the file with.
    """
    return sessions_frame(store.records_frame(cat.session_records()), cfg)


def _sessions_base(cfg: Experiment, cat: Catalog) -> tuple[pd.DataFrame, int] | None:
    """Return the current ``sessions.parquet``'s records and the last rowid it covers.

    None when the file cannot be extended and must be rebuilt.
    """
    try:
        built = json.loads(cat.meta("sessions_built_from") or "null")
    except ValueError:
        return None
    if not isinstance(built, dict) or not {"epoch", "rows", "last", "sha256"} <= set(built):
        return None
    now = cat.sessions_state(upto=int(built["last"]))
    path = cfg.processed_dir / "sessions.parquet"
    if (now.epoch, now.rows) != (built["epoch"], built["rows"]) or not path.exists():
        return None
    if store.file_sha256(path) != built["sha256"]:
        return None  # rewritten or damaged since (a crash between the write and the record)
    frame = store.read_sessions(cfg.processed_dir)[list(store.RECORD_FIELDS)]
    for col in ("start", "end"):
        frame[col] = frame[col].dt.tz_convert("UTC")
    return frame, int(built["last"])


def _derivation_key(cfg: Experiment, cat: Catalog) -> str:
    sides = {
        subject: cfg.roster[subject].active_lever
        for subject in cat.stored_subjects()
        if subject in cfg.roster
    }
    return sessions.derivation_key(cfg, sides, parser_version=PARSER_VERSION)


def _forget_parts(cat: Catalog, names: Sequence[str]) -> None:
    stems = {n.split("/", 1)[1] for n in names}
    with cat.transaction() as con:
        paths = set()
        for stem in stems:
            for (path,) in con.execute(
                "SELECT DISTINCT source_path FROM sessions WHERE part = ?", (f"events/{stem}",)
            ):
                paths.add(path)
        for path in paths:
            con.execute("DELETE FROM sessions WHERE source_path = ?", (path,))
            con.execute("DELETE FROM files WHERE path = ?", (path,))
        for stem in stems:
            for dataset in store.DATASETS:
                con.execute("DELETE FROM parts WHERE name = ?", (f"{dataset}/{stem}",))


def chunk_files(n_todo: int) -> int:
    """Return how many files go into one chunk (one worker task, one commit, one part).

    Depends on the number of files to do only, never on the number of workers, so that
    parts (named after their sessions) are byte-identical whatever ``--workers`` is. Small
    runs keep 256-file chunks; a large first ingest uses up to 4096 files a chunk (at
    least about 16 chunks, so that two workers stay busy), which keeps the number of
    fsyncs and transactions (a few per chunk) small.
    """
    return max(BATCH_FILES, min(MAX_CHUNK_FILES, -(-n_todo // 16)))


def split_chunks(todo: list[Item]) -> list[list[Item]]:
    """Cut the files to do into chunks (in path order) of :func:`chunk_files` files.

    The files of the last two chunks go into chunks a quarter that size instead (at least
    :data:`BATCH_FILES`): the run ends when the last chunk is done, and a worker finishing
    a large chunk alone at the end leaves the other cores idle for as long. Like the
    chunk size, the cut depends on the number of files only.
    """
    n = len(todo)
    size = chunk_files(n)
    small = min(size, max(BATCH_FILES, size // 4))
    tail_from = max(0, n - 2 * size) if n > 4 * size else n
    tail_from -= tail_from % size  # the large chunks stay whole
    bounds = list(range(0, tail_from, size)) + list(range(tail_from, n, small)) + [n]
    return [todo[a:b] for a, b in itertools.pairwise(bounds)]


def _parse_all(
    cfg: Experiment,
    todo: list[Item],
    workers: int | None,
    scheduler: str | None = None,
) -> Iterator[worker.ChunkResult]:
    chunks = split_chunks(todo)
    if scheduler is not None:
        # Imported here: labpipe.distributed (and the distributed package) is optional.
        from labpipe import distributed

        yield from distributed.process_chunks(scheduler, cfg, chunks)
        return
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers <= 1 or len(todo) < _POOL_MIN_FILES:
        _init_worker(cfg)
        for chunk in chunks:
            yield _work_chunk(chunk)
        return
    # Smaller tasks than chunks would not help: a chunk's parts are staged by one worker.
    with ProcessPoolExecutor(
        max_workers=n_workers, initializer=_init_pool_worker, initargs=(cfg, os.getpid())
    ) as pool:
        yield from pool.map(_work_chunk, chunks)


@dataclass(slots=True)
class _Stored:
    """What a run has stored so far, for a run that started from an empty catalog.

    Holds exactly what the catalog's look-ups (:meth:`Catalog.by_identity`,
    :meth:`Catalog.by_slot`, :meth:`Catalog.sha_owners`) would return, so a first ingest
    of 10⁵ files decides without querying SQLite three times a chunk.
    """

    identity: dict[str, StoredSession] = field(default_factory=dict)
    slot: dict[str, list[StoredSession]] = field(default_factory=dict)
    #: sha256 -> paths of the ingested or partial files with that content, sorted.
    sha: dict[str, list[str]] = field(default_factory=dict)
    #: The records of the sessions stored, one frame a commit (``sessions.parquet`` is
    #: built from them, decoded while the workers still parse, not at the end of the run).
    records: list[pd.DataFrame] = field(default_factory=list)


def _commit_batch(
    cfg: Experiment,
    cat: Catalog,
    chunk: worker.ChunkResult,
    summary: IngestSummary,
    known: Any = None,
    memo: _Stored | None = None,
) -> None:
    """Decide every session of a chunk, finish its staged parts, commit, publish.

    ``memo`` (a run that started from an empty catalog) replaces the catalog look-ups and
    is updated as sessions are decided and files committed.
    """
    processed = cfg.processed_dir
    results = chunk.files
    if memo is None:
        stored = cat.by_identity([s.key for r in results for s in r.sessions])
        by_slot = cat.by_slot([s.slot for r in results for s in r.sessions])
        owners = cat.sha_owners([r.sha256 for r in results if r.sha256 and r.error is None])
    else:
        stored, by_slot, owners = memo.identity, memo.slot, memo.sha

    file_rows: list[dict[str, Any]] = []
    session_rows: list[dict[str, Any]] = []
    aside_rows: list[dict[str, Any]] = []
    dup_rows: list[dict[str, Any]] = []
    new_ids: list[str] = []

    for res in results:
        summary.files_read += 1
        base = {"path": res.rel, "size": res.size, "mtime_ns": res.mtime_ns}
        if res.unstable:
            summary.pending.append(res.rel)
            file_rows.append({**base, "status": "pending"})
            continue
        common = {
            **base,
            "sha256": res.sha256,
            "parser_version": PARSER_VERSION,
            "config_fingerprint": cfg.fingerprint,
        }
        if res.error is not None:
            code, message = res.error
            item = SetAsideItem(res.rel, None, code, message)
            summary.set_aside.append(item)
            file_rows.append(
                {**common, "status": "quarantined", "reason_code": code, "reason": message}
            )
            aside_rows.append(_aside_row(item))
            continue
        owner = _first_other(owners.get(res.sha256 or ""), res.rel)
        if owner is not None:
            summary.duplicates.append((res.rel, owner))
            file_rows.append(
                {
                    **common,
                    "status": "duplicate",
                    "reason_code": Reason.DUPLICATE_FILE,
                    "reason": f"same content as {owner}",
                    "duplicate_of": owner,
                }
            )
            continue
        n_new = n_dup = n_already = 0
        dup_of: set[str] = set()
        file_aside: list[SetAsideItem] = [
            SetAsideItem(
                file=res.rel, block=block, reason_code=code, reason=message, subject_raw=subj
            )
            for block, code, message, subj in res.problems
        ]
        for s in res.sessions:
            verdict, detail = _decide(s, res.rel, stored, by_slot)
            if verdict == "store":
                assert s.subject is not None and s.record is not None
                n_new += 1
                new_ids.append(s.session_id)
                entry = StoredSession(
                    s.session_id, s.key, s.slot, s.fingerprint, res.rel, s.block, s.subject
                )
                stored[s.key] = entry
                by_slot.setdefault(s.slot, []).append(entry)
                session_rows.append(_session_row(s, res.rel, summary.run_id))
            elif verdict == "already":
                n_already += 1
            elif verdict == "duplicate":
                n_dup += 1
                dup_of.add(detail)
                dup_rows.append({"path": res.rel, "block": s.block, "session_id": s.session_id})
            else:
                file_aside.append(
                    SetAsideItem(res.rel, s.block, verdict, detail, s.session_id, s.subject_raw)
                )
        summary.set_aside.extend(file_aside)
        aside_rows.extend(_aside_row(i) for i in file_aside)
        n_sessions = n_new + n_already
        if file_aside:
            status = "partial" if n_sessions or n_dup else "quarantined"
            codes = sorted({i.reason_code for i in file_aside})
            reason = (
                f"{len(file_aside)} of {len(res.sessions) + len(res.problems)} sessions set "
                f"aside ({', '.join(codes)})"
            )
            file_rows.append(
                {
                    **common,
                    "status": status,
                    "reason_code": codes[0],
                    "reason": reason,
                    "n_sessions": n_sessions,
                }
            )
        elif n_new == 0 and n_already == 0 and n_dup:
            summary.duplicates.append((res.rel, ", ".join(sorted(dup_of))))
            file_rows.append(
                {
                    **common,
                    "status": "duplicate",
                    "reason_code": Reason.DUPLICATE_SESSION,
                    "reason": f"every session is already stored from {', '.join(sorted(dup_of))}",
                    "duplicate_of": sorted(dup_of)[0],
                }
            )
        elif not res.sessions:
            item = SetAsideItem(res.rel, None, Reason.NOT_MEDPC, f"{res.rel}: no session found")
            summary.set_aside.append(item)
            aside_rows.append(_aside_row(item))
            file_rows.append(
                {
                    **common,
                    "status": "quarantined",
                    "reason_code": item.reason_code,
                    "reason": item.reason,
                }
            )
        else:
            if n_new:
                summary.ingested.append(res.rel)
            file_rows.append({**common, "status": "ingested", "n_sessions": n_sessions})

    parts = _finish_parts(processed, chunk, sorted(new_ids), summary.run_id)
    if parts:
        for row in session_rows:
            row["part"] = parts[0]["name"]

    crash_point("after_stage")
    with cat.transaction() as con:
        new_rows = [r for r in file_rows if known is not None and r["path"] not in known]
        if new_rows:
            cat.put_new_files(con, new_rows, summary.run_id)
        for row in file_rows:
            if known is None or row["path"] in known:
                cat.put_file(con, row, summary.run_id)
        cat.put_parts(con, parts)
        cat.put_sessions(con, session_rows)
        cat.put_set_aside(con, aside_rows)
        cat.put_duplicates(con, dup_rows)
        if session_rows:
            # sessions.parquet is stale from this commit until it is rewritten: a run that
            # dies (or meets a full disk) in between leaves the next run a reason to redo it.
            cat.set_meta(con, "sessions_built_with", "")
        crash_point("in_txn")
    crash_point("after_commit")
    if memo is not None:
        for row in file_rows:
            if row["status"] in ("ingested", "partial"):
                bisect.insort(memo.sha.setdefault(row["sha256"], []), row["path"])
        if session_rows:
            memo.records.append(store.records_frame([r["record"] for r in session_rows]))
    if parts:
        for p in parts:
            store.publish_part(processed, p["name"])
        crash_point("after_publish")
        cat.mark_published([p["name"] for p in parts])
    summary.sessions_added += len(new_ids)


def _first_other(paths: list[str] | None, rel: str) -> str | None:
    """Return the first of ``paths`` that is not ``rel`` (None when there is none)."""
    for path in paths or ():
        if path != rel:
            return path
    return None


def _finish_parts(
    processed: Path, chunk: worker.ChunkResult, keep: list[str], run_id: str
) -> list[dict[str, Any]]:
    """Return the catalog rows of the chunk's parts, holding exactly the ``keep`` sessions.

    The worker staged the chunk's candidate sessions; when every candidate is kept (the
    usual case) those parts are used as they are, otherwise a filtered copy is staged
    here (and the worker's staged parts are removed).
    """
    staged = [chunk.parts[d] for d in store.DATASETS if d in chunk.parts]
    if keep and keep == chunk.candidates:
        crash_point("mid_stage")
        return [
            {
                "name": p.name,
                "dataset": ds,
                "sha256": p.sha256,
                "n_rows": p.n_rows,
                "run_id": run_id,
            }
            for ds, p in zip(store.DATASETS, staged, strict=True)
        ]
    if not keep:
        store.discard_staged(processed, [p.name for p in staged])
        return []
    rows = []
    for i, (ds, p) in enumerate(zip(store.DATASETS, staged, strict=True)):
        name = store.part_name(ds, keep)
        sha, n_rows = store.restage_part(processed, p.name, keep, name)
        if i == 0:
            crash_point("mid_stage")
        rows.append(
            {"name": name, "dataset": ds, "sha256": sha, "n_rows": n_rows, "run_id": run_id}
        )
    return rows


def _decide(
    s: worker.SessionResult,
    rel: str,
    stored: dict[str, StoredSession],
    by_slot: dict[str, list[StoredSession]],
) -> tuple[str, str]:
    """Return ("store" | "already" | "duplicate" | a reason code, detail)."""
    same = stored.get(s.key)
    if same is not None:
        if same.fingerprint == s.fingerprint:
            if same.source_path == rel and same.source_block == s.block:
                return "already", ""
            return "duplicate", same.source_path
        return (
            Reason.CONFLICT,
            f"the session of subject '{s.subject_raw}' in box {s.slot.split('|')[0]} "
            f"started {s.slot.split('|', 1)[1].replace('|', ' ')} is already stored from "
            f"{same.source_path} with different data. labpipe never overwrites a stored "
            "session: if the new file is the right one, remove the old file from data/raw "
            "and run `labpipe rebuild`.",
        )
    if s.error is not None:
        return s.error
    assert s.subject is not None
    for other in by_slot.get(s.slot, []):
        if other.fingerprint == s.fingerprint:
            if other.subject == s.subject:
                return "duplicate", other.source_path
            return (
                Reason.RELABEL,
                f"this session has the same box, start and data as session "
                f"{other.session_id} of subject '{other.subject}' (from {other.source_path}); "
                f"only the Subject differs ('{s.subject_raw}'). If '{s.subject}'"
                f" is right, add the line '{other.session_id},{s.subject},"
                "<why>' to configs/corrections.csv and run ingest again.",
            )
        return (
            Reason.BOX_CLASH,
            f"box {s.slot.split('|')[0]} already has another session starting at "
            f"the same second (session {other.session_id}, subject '{other.subject}', from "
            f"{other.source_path}). One box cannot run two sessions at once: is one of the "
            "files from another chamber computer?",
        )
    return "store", ""


def _aside_row(item: SetAsideItem) -> dict[str, Any]:
    return {
        "path": item.file,
        "block": -1 if item.block is None else item.block,
        "session_id": item.session_id,
        "subject_raw": item.subject_raw,
        "reason_code": str(item.reason_code),
        "reason": item.reason,
    }


def _session_row(s: worker.SessionResult, rel: str, run_id: str) -> dict[str, Any]:
    return {
        "session_id": s.session_id,
        "identity": s.key,
        "slot": s.slot,
        "fingerprint": s.fingerprint,
        "source_path": rel,
        "source_block": s.block,
        "subject": s.subject,
        "record": s.record,
        "part": "",
        "run_id": run_id,
    }


def sessions_frame(records: pd.DataFrame, cfg: Experiment) -> pd.DataFrame:
    """Assemble ``sessions.parquet`` from stored records and the current config.

    Roster attributes (sex, group, cohort), phase and test (from the MSN rules),
    day_in_phase, session_index and intake come from the config as it is now, so a fixed
    group in the roster shows up without reading raw files again.

    Parameters
    ----------
    records
        The :data:`labpipe.store.RECORD_FIELDS` of every stored session (as
        :func:`labpipe.store.records_frame` gives them), in any order.
    cfg
        The experiment.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`labpipe.store.sessions_schema`, sorted by subject and start.
    """
    schema_cols = [f.name for f in store.sessions_schema(cfg.timezone)]
    if records.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in schema_cols})
    df = records.reset_index(drop=True)
    roster = cfg.roster
    df["experiment"] = cfg.experiment
    # Looked up once a distinct subject or MSN, not once a session.
    codes, subjects = pd.factorize(df["subject"])
    for attr in ("sex", "group", "cohort"):
        per = [getattr(roster[s], attr) if s in roster else None for s in subjects]
        df[attr] = np.array(per + [None], dtype=object)[codes]
    codes, msns = pd.factorize(df["msn"], use_na_sentinel=True)
    rules = [cfg.match_phase(m) for m in msns]
    phase = [str(r.phase) if r is not None else None for r in rules]
    test = [r.test if r is not None else None for r in rules]
    df["phase"] = np.array(phase + [None], dtype=object)[codes]
    df["test"] = np.array(test + [None], dtype=object)[codes]
    tz = cfg.timezone
    for col in ("start", "end"):
        df[col] = df[col].dt.tz_convert(tz).astype(f"datetime64[us, {tz}]")
    df = df.sort_values(["subject", "start", "session_id"], kind="stable").reset_index(drop=True)
    df["day_in_phase"] = df.groupby(["subject", "phase"], dropna=False).cumcount() + 1
    df["session_index"] = df.groupby("subject").cumcount() + 1
    dose = cfg.drug.dose_mg_per_kg if cfg.drug is not None else None
    for col in ("box", "active", "inactive", "reinforcers", "timeout_active"):
        df[col] = df[col].astype("Int64")
    if dose is None:
        df["intake_mg_kg"] = np.nan
    else:
        df["intake_mg_kg"] = (df["reinforcers"].astype("Float64") * dose).astype("float64")
    return df[schema_cols]


@dataclass(frozen=True, slots=True)
class LabStatus:
    """What is ingested and set aside, and where each animal is.

    Attributes
    ----------
    files
        Number of raw files per catalog status.
    sessions
        Sessions stored.
    set_aside
        Every set-aside file or session with its reason.
    animals
        One row per roster animal: subject, sex, group, phase (of its last session),
        n_acquisition, n_extinction, n_reinstatement, last_session (date), excluded.
    """

    files: dict[str, int]
    sessions: int
    set_aside: list[SetAsideItem]
    animals: pd.DataFrame


def lab_status(cfg: Experiment) -> LabStatus:
    """Summarise the catalog and the sessions table for ``labpipe status``.

    Parameters
    ----------
    cfg
        The experiment.

    Returns
    -------
    LabStatus
        Counts, set-aside items and the per-animal table.
    """
    path = cfg.processed_dir / "catalog.sqlite"
    if not path.exists():
        raise DataError(
            f"{path} does not exist: nothing has been ingested yet.",
            hint="Run `labpipe ingest` first.",
        )
    with Catalog(path) as cat:
        counts = cat.counts()
        aside = set_aside_items(cat)
    n_sessions = counts.pop("sessions")
    table = store.read_sessions(cfg.processed_dir)
    roster = pd.DataFrame(
        [
            {"subject": a.subject, "sex": a.sex, "group": a.group, "excluded": a.exclude or ""}
            for a in cfg.roster.values()
        ]
    )
    if table.empty:
        per = pd.DataFrame(columns=["subject"])
    else:
        table = table.assign(date=table["start"].dt.strftime("%Y-%m-%d"))
        n = table.pivot_table(
            index="subject", columns="phase", values="session_id", aggfunc="count", fill_value=0
        )
        last = table.sort_values("start").groupby("subject").tail(1).set_index("subject")
        per = pd.DataFrame(
            {
                "phase": last["phase"],
                "last_session": last["date"],
            }
        ).join(n.rename(columns=lambda c: f"n_{c}"), how="left")
        per = per.reset_index()
    animals = roster.merge(per, on="subject", how="left")
    for col in ("n_acquisition", "n_extinction", "n_reinstatement"):
        animals[col] = animals[col].fillna(0).astype("int64") if col in animals else 0
    cols = [
        "subject",
        "sex",
        "group",
        "phase",
        "n_acquisition",
        "n_extinction",
        "n_reinstatement",
        "last_session",
        "excluded",
    ]
    for col in cols:
        if col not in animals:
            animals[col] = None
    return LabStatus(files=counts, sessions=n_sessions, set_aside=aside, animals=animals[cols])
