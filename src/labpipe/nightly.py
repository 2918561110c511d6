"""The scheduled run and the repairs: run lock, status file, ``verify`` and ``rebuild``.

Run lock
    ``data/processed/.labpipe.lock`` is locked with ``flock`` through
    ``filelock.FileLock(timeout=0, fallback_to_soft=False)``: a second run fails at once
    (exit 3), the kernel releases the lock when its holder dies (even by SIGKILL), and a
    filesystem without ``flock`` is an error, never a silent downgrade to a marker file.
    After taking the lock the holder writes ``{pid, host, started, command, run_id}`` to
    ``.labpipe.lock.info`` (atomically), which the message of a refused run quotes.
    Worker processes forked while the lock is held close their inherited copy of the lock
    descriptor, so a pool worker that outlives a killed run cannot keep the lab locked.
    ``ingest``, ``nightly``, ``rebuild`` and ``verify`` take the lock; use :func:`locked`
    for any other command that writes the lab folder.

Status file
    ``data/processed/status.json`` is written atomically at the end of every run that held
    the lock, failed runs included (a run refused by the lock changes nothing, not even the
    status file). Its fields are documented in ``docs/nightly.md``.

Nightly
    Recover what a crashed run left (an interrupted rebuild, temporary files of a killed
    report), ingest, rebuild the report only when the stored data changed since the report
    was last built (a fingerprint of ``sessions.parquet``, the parts, the set-aside files
    and the config, kept in the catalog), write the status file.

Verify
    Every part listed in the catalog is checked against its sha256 and read back with parquet
    page checksums on; a part in a table folder that the catalog does not list is named too
    (readers would see its rows); ``sessions.parquet`` is read back and compared with what
    the catalog says it must hold; the catalog passes ``PRAGMA integrity_check``.

Rebuild
    The new state is derived from ``data/raw`` into ``data/.processed.rebuild`` (beside
    ``data/processed``, on the same filesystem), then the two folders are exchanged in one
    atomic ``renameat2(RENAME_EXCHANGE)`` (Linux); the old state is then deleted. A crash
    before the exchange leaves the old state in place, a crash after it the new one; the
    next locked run removes the leftover folder. Where the exchange is not available the
    swap is two renames, and the next run finishes a swap cut in the middle.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import filelock

from labpipe import fsio, store
from labpipe import ingest as ingest_mod
from labpipe.catalog import Catalog
from labpipe.config import Experiment
from labpipe.errors import (
    DataError,
    EnvironmentFailure,
    LabpipeError,
    LockedError,
)

logger = logging.getLogger(__name__)

LOCK_NAME = ".labpipe.lock"
INFO_NAME = ".labpipe.lock.info"
STATUS_NAME = "status.json"
#: Folder beside ``data/processed`` where ``rebuild`` derives the new state.
REBUILD_NAME = ".processed.rebuild"
#: Where the old state sits during a two-rename swap (no atomic exchange available).
OLD_NAME = ".processed.old"
#: Written into the rebuild folder once the new state is complete.
COMPLETE_NAME = ".rebuild-complete"
#: Catalog meta key: fingerprint of the stored data the report was last built from.
REPORT_KEY = "report_built_from"
STATUS_SCHEMA = 1

#: Default settle window of ``labpipe nightly`` (seconds): a file changed more recently is
#: left pending, because a chamber or a copy may still be writing it.
NIGHTLY_SETTLE_SECONDS = 120.0

_OUTCOMES = {
    0: "ok",
    1: "input_set_aside",
    2: "usage_or_config_error",
    3: "locked",
    4: "environment_failure",
    5: "bug",
}

# ---- the run lock ----------------------------------------------------------------------

#: Lock descriptors this process holds; closed in forked children (see _close_in_child).
_HELD_FDS: set[int] = set()


def _close_in_child() -> None:
    """Close inherited lock descriptors in a forked child.

    ``flock`` belongs to the open file description, which a forked child shares: a pool
    worker that outlives its killed parent would otherwise keep the lab locked forever.
    Closing the child's copy leaves the parent's lock untouched.
    """
    for fd in list(_HELD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the run lock (the content of ``.labpipe.lock.info``)."""

    pid: int
    host: str
    started: str
    command: str
    run_id: str

    def describe(self) -> str:
        """Return 'pid 4242 on lab-pc, `labpipe nightly`, started 2026-03-02T02:00:13+00:00'."""
        return f"pid {self.pid} on {self.host}, `labpipe {self.command}`, started {self.started}"


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_holder(processed: Path) -> Holder | None:
    """Return the holder recorded in ``.labpipe.lock.info`` (None when unreadable)."""
    try:
        data = json.loads((processed / INFO_NAME).read_text(encoding="utf-8"))
        return Holder(
            pid=int(data["pid"]),
            host=str(data["host"]),
            started=str(data["started"]),
            command=str(data["command"]),
            run_id=str(data.get("run_id", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _new_lock(path: Path, fds: list[int]) -> filelock.BaseFileLock:
    params = inspect.signature(filelock.FileLock.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "fallback_to_soft" in params:
        kwargs["fallback_to_soft"] = False  # fail closed on a filesystem without flock

    if "on_acquired" in params:

        def remember(fd: int) -> None:
            fds.append(fd)
            _HELD_FDS.add(fd)

        kwargs["on_acquired"] = remember
    return filelock.FileLock(str(path), timeout=0, **kwargs)


def _acquire(processed: Path, command: str, run_id: str) -> tuple[filelock.BaseFileLock, list[int]]:
    """Take the lock of ``processed`` or raise LockedError / EnvironmentFailure."""
    path = processed / LOCK_NAME
    fds: list[int] = []
    lock = _new_lock(path, fds)
    try:
        lock.acquire(timeout=0, blocking=False)
    except filelock.Timeout:
        holder = read_holder(processed)
        logger.warning(
            "another run holds the lock",
            extra={"event": "lock.busy", "holder": holder.describe() if holder else None},
        )
        if holder is None:
            raise LockedError(
                f"Another labpipe run holds the lock of {processed} (its pid and start time "
                f"are not recorded yet in {INFO_NAME}). Nothing was changed.",
                hint="Try again later.",
            ) from None
        raise LockedError(
            f"Another labpipe run ({holder.describe()}) is working on this lab folder "
            f"({processed}). Nothing was changed.",
            hint="Try again when it has finished.",
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            raise EnvironmentFailure(
                f"The filesystem holding {processed} does not support file locks, so two "
                "labpipe runs could not be kept apart.",
                path=str(path),
                hint="Keep data/processed on a local disk.",
            ) from exc
        raise fsio.environment_failure(exc, path) from exc
    if not fds:  # filelock without on_acquired: find the descriptor ourselves
        fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        if isinstance(fd, int):
            fds.append(fd)
            _HELD_FDS.add(fd)
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now_iso(),
            "command": command,
            "run_id": run_id,
        }
        fsio.write_text(processed / INFO_NAME, json.dumps(info) + "\n")
    except BaseException:
        _release(lock, fds)
        raise
    logger.info("lock acquired", extra={"event": "lock.acquired", "command": command})
    return lock, fds


def _release(lock: filelock.BaseFileLock, fds: list[int]) -> None:
    for fd in fds:
        _HELD_FDS.discard(fd)
    lock.release(force=True)


@contextlib.contextmanager
def locked(processed: Path, *, command: str, run_id: str | None = None) -> Iterator[None]:
    """Hold the run lock of a lab folder for the duration of a block.

    Parameters
    ----------
    processed
        ``data/processed`` (created when missing; the lock file lives there).
    command
        The command, quoted to a run that is refused.
    run_id
        The run's id, recorded beside the pid.

    Raises
    ------
    LockedError
        At once, when another run holds the lock (exit code 3).
    EnvironmentFailure
        When the folder cannot be created or locked.
    """
    _finish_interrupted_swap(processed)
    try:
        processed.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fsio.environment_failure(exc, processed) from exc
    lock, fds = _acquire(processed, command, run_id or uuid.uuid4().hex[:12])
    try:
        yield
    finally:
        _release(lock, fds)


# ---- status file -----------------------------------------------------------------------


def read_status(processed: Path) -> dict[str, Any] | None:
    """Return the last ``status.json`` (None when missing or unreadable)."""
    try:
        data = json.loads((processed / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_status(processed: Path, status: dict[str, Any]) -> Path:
    """Atomically replace ``status.json`` (crash point ``mid_status`` in the middle)."""
    data = (json.dumps(status, indent=2, ensure_ascii=False, default=str) + "\n").encode()
    dest = processed / STATUS_NAME
    with fsio.atomic_write(dest) as fh:
        half = len(data) // 2
        fh.write(data[:half])
        fsio.crash_point("mid_status")
        fh.write(data[half:])
    return dest


def _labpipe_version() -> str:
    try:
        return importlib.metadata.version("labpipe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _exit_code_of(exc: BaseException) -> int:
    if isinstance(exc, LabpipeError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 5


@dataclass(slots=True)
class _Run:
    """One locked run: collects what goes into ``status.json``."""

    cfg: Experiment
    command: str
    run_id: str
    started: str = field(default_factory=now_iso)
    t0: float = field(default_factory=time.monotonic)
    status: dict[str, Any] = field(default_factory=dict)
    last_success: str | None = None

    def begin(self) -> None:
        """Remember the last success before anything (a rebuild swap) moves status.json."""
        previous = read_status(self.cfg.processed_dir) or {}
        self.last_success = previous.get("last_success")

    def finish(self, exit_code: int, error: BaseException | None = None) -> Path:
        processed = self.cfg.processed_dir
        last_success = self.last_success
        finished = now_iso()
        if exit_code in (0, 1):
            last_success = finished
        message = None
        if error is not None:
            message = str(error) if isinstance(error, LabpipeError) else repr(error)
        status: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "run_id": self.run_id,
            "command": self.command,
            "experiment": self.cfg.experiment,
            "lab_dir": str(self.cfg.lab_dir),
            "started": self.started,
            "finished": finished,
            "duration_s": round(time.monotonic() - self.t0, 3),
            "exit_code": exit_code,
            "outcome": _OUTCOMES.get(exit_code, "interrupted"),
            "error": message,
            **self.status,
            "free_disk_bytes": fsio.free_bytes(processed),
            "labpipe_version": _labpipe_version(),
            "last_success": last_success,
        }
        path = write_status(processed, status)
        logger.info(
            "run finished",
            extra={"event": f"{self.command}.done", "exit_code": exit_code, "status": str(path)},
        )
        return path


def _set_summary(status: dict[str, Any], summary: ingest_mod.IngestSummary) -> None:
    status["counts"] = {
        "files_seen": summary.files_seen,
        "files_read": summary.files_read,
        "ingested": len(summary.ingested),
        "duplicates": len(summary.duplicates),
        "set_aside_this_run": len(summary.set_aside),
        "set_aside": len(summary.still_set_aside),
        "pending": len(summary.pending),
        "sessions_added": summary.sessions_added,
        "sessions_total": summary.sessions_total,
    }
    status["set_aside"] = [
        {
            "file": i.file,
            "block": i.block,
            "session_id": i.session_id,
            "subject": i.subject_raw,
            "reason_code": str(i.reason_code),
            "reason": i.reason,
        }
        for i in summary.still_set_aside
    ]
    status["pending"] = list(summary.pending)
    status["duplicates"] = [{"file": f, "same_as": of} for f, of in summary.duplicates]
    status["recovered_from_crash"] = list(summary.recovered)
    status["rederived"] = summary.rederived


def _locked_run(
    cfg: Experiment, command: str, run_id: str | None, body: Callable[[_Run], int]
) -> tuple[int, Path]:
    """Run ``body`` under the lock; write the status file whatever happens."""
    run = _Run(cfg, command, run_id or uuid.uuid4().hex[:12])
    logger.info("run started", extra={"event": f"{command}.start", "command": command})
    with locked(cfg.processed_dir, command=command, run_id=run.run_id):
        try:
            run.begin()
            _recover_lab(cfg)
            code = body(run)
        except BaseException as exc:
            code = _exit_code_of(exc)
            try:
                run.finish(code, exc)
            except Exception as again:  # the disk may be full: the first error matters more
                logger.warning("status.json not written either: %s", again)
                logger.debug("status.json not written", exc_info=True)
            raise
        path = run.finish(code)
    return code, path


# ---- recovery of a crashed run ---------------------------------------------------------


def _recover_lab(cfg: Experiment) -> list[str]:
    """Remove what a killed run left outside ingest's reach (under the lock)."""
    done: list[str] = []
    done += _cleanup_rebuild_leftovers(cfg.processed_dir)
    for folder in (cfg.processed_dir, cfg.reports_dir):
        if not folder.exists():
            continue
        for path in folder.rglob(".*.tmp"):
            if path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                done.append(f"removed {path}")
    if done:
        logger.info("recovered", extra={"event": "recover.cleanup", "items": done})
    return done


# ---- nightly ---------------------------------------------------------------------------


@dataclass(slots=True)
class ReportOutcome:
    """Whether the nightly run rebuilt the report, and why (not)."""

    built: bool = False
    reason: str = ""
    path: Path | None = None
    files: int = 0

    def as_json(self) -> dict[str, Any]:
        """Return the ``report`` entry of ``status.json``."""
        return {
            "built": self.built,
            "reason": self.reason,
            "index": str(self.path) if self.path is not None else None,
            "files": self.files,
        }


@dataclass(slots=True)
class NightlyResult:
    """What ``labpipe nightly`` did."""

    run_id: str
    exit_code: int
    summary: ingest_mod.IngestSummary
    report: ReportOutcome
    status_path: Path
    ready_for_test: list[dict[str, Any]]


def data_state(cfg: Experiment) -> str:
    """Fingerprint of everything the report is built from.

    The config (roster, corrections), the bytes of ``sessions.parquet``, every committed
    part with its sha256, the set-aside files and the file counts, and labpipe's version.
    """
    processed = cfg.processed_dir
    h = hashlib.sha256()
    h.update(f"{cfg.fingerprint}|{_labpipe_version()}|".encode())
    sessions = processed / "sessions.parquet"
    h.update(store.file_sha256(sessions).encode() if sessions.exists() else b"-")
    with Catalog(processed / "catalog.sqlite") as cat:
        state = [sorted(cat.parts().items()), cat.set_aside_rows(), sorted(cat.counts().items())]
    h.update(json.dumps(state, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _stored_state(cfg: Experiment) -> str | None:
    with Catalog(cfg.processed_dir / "catalog.sqlite") as cat:
        return cat.meta(REPORT_KEY)


def _remember_state(cfg: Experiment, state: str) -> None:
    with Catalog(cfg.processed_dir / "catalog.sqlite") as cat, cat.transaction() as con:
        cat.set_meta(con, REPORT_KEY, state)


def build_report_if_changed(cfg: Experiment, *, force: bool = False) -> ReportOutcome:
    """Rebuild ``reports/<experiment>/`` when the stored data changed since the last build.

    Parameters
    ----------
    cfg
        The experiment.
    force
        Build even when nothing changed.

    Returns
    -------
    ReportOutcome
        Whether it was built and why.
    """
    out = ReportOutcome()
    with Catalog(cfg.processed_dir / "catalog.sqlite") as cat:
        n_sessions = cat.counts()["sessions"]
    if n_sessions == 0:
        out.reason = "no session is stored yet"
        return out
    state = data_state(cfg)
    index = cfg.reports_dir / "index.html"
    if not force and _stored_state(cfg) == state and index.exists():
        out.reason = "the stored data did not change since the last report"
        out.path = index
        return out
    logger.info("building the report", extra={"event": "report.start"})
    from labpipe import pipeline  # the analysis stack: seconds to import, not for ingest

    written = pipeline.build_report(cfg)
    fsio.crash_point("mid_report")
    _remember_state(cfg, state)
    out.built = True
    out.reason = "forced" if force else "the stored data changed"
    out.path = index
    out.files = len(written) if hasattr(written, "__len__") else 0
    logger.info("report built", extra={"event": "report.built", "files": out.files})
    return out


def ready_for_test(cfg: Experiment) -> tuple[list[dict[str, Any]], str]:
    """Animals ready for a reinstatement test, with a note on how that was decided.

    An animal is ready when it met the extinction criterion, is not excluded, and its last
    stored session is an extinction session (no test since).

    Returns
    -------
    animals, note
        One dict per ready animal (subject, group, extinction sessions to criterion), and
        a sentence saying how the list was made (or why it is empty).
    """
    from labpipe import pipeline  # the analysis stack: seconds to import, not for ingest

    try:
        if store.read_sessions(cfg.processed_dir).empty:
            return [], "no session is stored yet"
        progress = pipeline.animal_progress(cfg)
    except LabpipeError:
        raise
    except Exception:  # informative only: never fail the nightly run over it
        logger.error("ready-for-test list failed", exc_info=True, extra={"event": "ready.bug"})
        return [], "could not be computed (a bug in labpipe; the traceback is in the log)"
    out: list[dict[str, Any]] = []
    for row in progress[progress["ready_for_test"]].to_dict("records"):
        n_ext = row.get("extinction_sessions_to_criterion")
        out.append(
            {
                "subject": str(row["subject"]),
                "group": None if _missing(row.get("group")) else str(row["group"]),
                "extinction_sessions_to_criterion": None if _missing(n_ext) else int(n_ext),
            }
        )
    note = pipeline.READY_RULE
    return out, note


def _missing(value: Any) -> bool:
    try:
        return bool(value is None or value != value or str(value) == "<NA>")
    except (TypeError, ValueError):
        return True


def nightly(
    cfg: Experiment,
    *,
    workers: int | None = None,
    settle_seconds: float = NIGHTLY_SETTLE_SECONDS,
    progress: ingest_mod.Progress | None = None,
    run_id: str | None = None,
    report: bool = True,
) -> NightlyResult:
    """Run the scheduled job: locked ingest, the report when anything changed, status file.

    Parameters
    ----------
    cfg
        The experiment.
    workers
        Parsing processes (default: all cores).
    settle_seconds
        Files changed in the last this-many seconds stay pending.
    progress
        Progress callback of the ingest.
    run_id
        The run's id (generated when omitted).
    report
        Whether to rebuild the report when the data changed.

    Returns
    -------
    NightlyResult
        Exit code (0 done, 1 some input set aside), ingest summary, report outcome, status.

    Raises
    ------
    LockedError
        Another run holds the lock (exit 3); nothing was changed.
    EnvironmentFailure
        The disk failed (exit 4); ``status.json`` says so when it could be written.
    """
    result: dict[str, Any] = {}

    def body(run: _Run) -> int:
        summary = ingest_mod.ingest(
            cfg,
            workers=workers,
            settle_seconds=settle_seconds,
            progress=progress,
            run_id=run.run_id,
            command="nightly",
        )
        result["summary"] = summary
        _set_summary(run.status, summary)
        outcome = ReportOutcome(reason="skipped (--no-report)")
        run.status["report"] = outcome.as_json()
        if report:
            outcome = build_report_if_changed(cfg)
            run.status["report"] = outcome.as_json()
        result["report"] = outcome
        ready, note = ready_for_test(cfg)
        run.status["ready_for_test"] = ready
        run.status["ready_for_test_note"] = note
        result["ready"] = ready
        return summary.exit_code

    code, path = _locked_run(cfg, "nightly", run_id, body)
    return NightlyResult(
        run_id=result["summary"].run_id,
        exit_code=code,
        summary=result["summary"],
        report=result["report"],
        status_path=path,
        ready_for_test=result["ready"],
    )


def locked_ingest(
    cfg: Experiment,
    *,
    workers: int | None = None,
    settle_seconds: float = 0.0,
    progress: ingest_mod.Progress | None = None,
    run_id: str | None = None,
    scheduler: str | None = None,
) -> ingest_mod.IngestSummary:
    """``labpipe ingest`` under the run lock, with the status file.

    ``scheduler`` is a Dask scheduler address to parse on (see :mod:`labpipe.distributed`).

    Raises
    ------
    LockedError
        Another run holds the lock (exit 3); nothing was changed.
    """
    result: dict[str, ingest_mod.IngestSummary] = {}

    def body(run: _Run) -> int:
        summary = ingest_mod.ingest(
            cfg,
            workers=workers,
            settle_seconds=settle_seconds,
            progress=progress,
            run_id=run.run_id,
            command="ingest",
            scheduler=scheduler,
        )
        result["summary"] = summary
        _set_summary(run.status, summary)
        return summary.exit_code

    _locked_run(cfg, "ingest", run_id, body)
    return result["summary"]


# ---- verify ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Damage:
    """One damaged file under ``data/processed``."""

    path: str
    problem: str


@dataclass(slots=True)
class VerifyReport:
    """What ``labpipe verify`` found."""

    parts_checked: int = 0
    damaged: list[Damage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    catalog_ok: bool = True

    @property
    def exit_code(self) -> int:
        """0 when everything is sound, 1 when something is damaged."""
        return 1 if self.damaged else 0


def _check_catalog(path: Path, report: VerifyReport) -> Catalog | None:
    if not path.exists():
        report.damaged.append(Damage(path.name, "missing"))
        report.catalog_ok = False
        return None
    if path.stat().st_size == 0:
        report.damaged.append(Damage(path.name, "empty (0 bytes)"))
        report.catalog_ok = False
        return None
    try:
        cat = Catalog(path)
    except (DataError, EnvironmentFailure) as exc:
        report.damaged.append(Damage(path.name, f"unreadable ({exc.message})"))
        report.catalog_ok = False
        return None
    except Exception as exc:  # sqlite3 errors the catalog does not translate
        report.damaged.append(Damage(path.name, f"unreadable ({exc})"))
        report.catalog_ok = False
        return None
    lines = cat.integrity_check()
    if lines != ["ok"]:
        report.damaged.append(Damage(path.name, "integrity check: " + "; ".join(lines[:5])))
        report.catalog_ok = False
    return cat


def _check_parts(
    processed: Path, parts: dict[str, tuple[str, int]] | None, report: VerifyReport
) -> None:
    on_disk = {
        f"{d}/{p.name}"
        for d in store.DATASETS
        if (processed / d).is_dir()
        for p in (processed / d).iterdir()
        if p.is_file()
    }
    if parts is None:  # no catalog to compare with: at least read every page
        for name in sorted(on_disk):
            report.parts_checked += 1
            problem = store.check_part(processed / name, store.file_sha256(processed / name))
            if problem is not None:
                report.damaged.append(Damage(name, problem))
        return
    for name, (sha, published) in sorted(parts.items()):
        path = processed / name
        if not published and not path.exists() and (processed / store.STAGING / name).exists():
            report.notes.append(f"{name}: committed, not yet moved into place (the next run does)")
            continue
        report.parts_checked += 1
        problem = store.check_part(path, sha)
        if problem is not None:
            report.damaged.append(Damage(name, problem))
    for name in sorted(on_disk - set(parts)):
        base = name.rsplit("/", 1)[-1]
        if base.startswith("."):
            continue
        report.damaged.append(
            Damage(name, "not in the catalog: readers of the dataset would count its rows")
        )


def _check_sessions(cfg: Experiment, cat: Catalog | None, report: VerifyReport) -> None:
    processed = cfg.processed_dir
    path = processed / "sessions.parquet"
    if not path.exists():
        if cat is not None and cat.counts()["sessions"]:
            report.damaged.append(Damage(path.name, "missing"))
        return
    try:
        store.read_sessions(processed)
    except LabpipeError:
        raise
    except Exception as exc:  # pyarrow's errors: damaged pages, bad footer, truncation
        report.damaged.append(Damage(path.name, f"unreadable ({type(exc).__name__}: {exc})"))
        return
    if cat is None or not report.catalog_ok:
        return
    if cat.meta("sessions_built_with") != cfg.fingerprint:
        report.notes.append(
            "sessions.parquet was built with another config; the next ingest rewrites it"
        )
        return
    expected = store.sessions_sha256(ingest_mod.catalog_sessions_frame(cfg, cat), cfg.timezone)
    if store.file_sha256(path) != expected:
        report.damaged.append(Damage(path.name, "differs from what the catalog says it must hold"))


def verify(cfg: Experiment, *, run_id: str | None = None) -> VerifyReport:
    """Check every output part, ``sessions.parquet`` and the catalog; name what is damaged.

    Parameters
    ----------
    cfg
        The experiment.
    run_id
        Id of the run (for the lock's holder record).

    Returns
    -------
    VerifyReport
        Every damaged file by name; ``exit_code`` is 1 when there is any.

    Raises
    ------
    LockedError
        Another run is writing the lab folder (its half-done work would look damaged).
    DataError
        Nothing has been ingested yet.
    """
    processed = cfg.processed_dir
    report = VerifyReport()
    with locked(processed, command="verify", run_id=run_id):
        has_data = (processed / "catalog.sqlite").exists() or any(
            (processed / d).is_dir() and any((processed / d).iterdir()) for d in store.DATASETS
        )
        if not has_data:
            raise DataError(
                f"{processed} holds no catalog and no dataset: nothing has been ingested yet.",
                hint="Run `labpipe ingest` first.",
            )
        cat = _check_catalog(processed / "catalog.sqlite", report)
        try:
            parts = cat.parts() if cat is not None and report.catalog_ok else None
            _check_parts(processed, parts, report)
            _check_sessions(cfg, cat, report)
        finally:
            if cat is not None:
                cat.close()
    for d in report.damaged:
        extra = {"event": "verify.damaged", "path": d.path, "problem": d.problem}
        logger.warning("damaged output", extra=extra)
    return report


# ---- rebuild ---------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with ``renameat2(RENAME_EXCHANGE)``.

    Returns
    -------
    bool
        False when the system cannot (not Linux, old kernel, filesystem without support).
    """
    if os.environ.get("LABPIPE_REBUILD_NO_EXCHANGE"):  # test hook: the two-rename path
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _swap_in(processed: Path, new: Path) -> None:
    """Make ``new`` the live ``processed`` folder; the old state ends up at ``new``."""
    if _exchange(processed, new):
        fsio.fsync_dir(processed.parent)
        return
    old = processed.parent / OLD_NAME
    if old.exists():
        shutil.rmtree(old)
    fsio.write_text(new / COMPLETE_NAME, "complete\n")
    os.rename(processed, old)
    fsio.crash_point("mid_swap")
    os.rename(new, processed)
    os.rename(old, new)
    (processed / COMPLETE_NAME).unlink()
    fsio.fsync_dir(processed.parent)


def _finish_interrupted_swap(processed: Path) -> None:
    """Finish a two-rename swap cut between its renames.

    Then ``data/processed`` is missing, or holds no catalog (only the log folder the
    command line has just made); the complete new state, or else the old one, is put back.
    """
    old = processed.parent / OLD_NAME
    new = processed.parent / REBUILD_NAME
    if not old.is_dir() or (processed / "catalog.sqlite").exists():
        return
    src = new if (new / COMPLETE_NAME).exists() else old
    with contextlib.suppress(OSError):
        if processed.exists():
            for entry in list(processed.iterdir()):
                if entry.name in (LOCK_NAME, INFO_NAME):
                    entry.unlink()
                else:
                    _merge_into(entry, src / entry.name)
            processed.rmdir()
        os.rename(src, processed)
        (processed / COMPLETE_NAME).unlink(missing_ok=True)
        fsio.fsync_dir(processed.parent)
        logger.info("finished an interrupted swap", extra={"event": "recover.swap"})


def _merge_into(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, merging folders; a clashing file keeps both copies."""
    if not dest.exists():
        os.rename(src, dest)
    elif src.is_dir() and dest.is_dir():
        for child in list(src.iterdir()):
            _merge_into(child, dest / child.name)
        src.rmdir()
    else:
        os.rename(src, dest.with_name(f"post-crash-{dest.name}"))


def _move_logs(src_root: Path, processed: Path) -> None:
    """Carry ``logs/`` over from the old state to the live folder."""
    src = src_root / "logs"
    if not src.is_dir():
        return
    dest = processed / "logs"
    if not dest.exists():
        os.rename(src, dest)
        return
    for path in sorted(src.iterdir()):
        target = dest / path.name
        if target.exists():
            target = dest / f"pre-rebuild-{path.name}"
        if not target.exists():
            os.rename(path, target)


def _cleanup_rebuild_leftovers(processed: Path) -> list[str]:
    """Under the lock: remove the state a finished or killed rebuild left beside us."""
    done: list[str] = []
    (processed / COMPLETE_NAME).unlink(missing_ok=True)
    for name in (REBUILD_NAME, OLD_NAME):
        folder = processed.parent / name
        if folder.is_dir():
            _move_logs(folder, processed)
            shutil.rmtree(folder)
            done.append(f"removed {folder}")
    return done


class _Relocated:
    """The experiment with another ``processed_dir`` (where rebuild derives the new state).

    Every other attribute (``raw_dir`` included) is the experiment's own.
    """

    def __init__(self, cfg: Experiment, processed: Path) -> None:
        self._cfg = cfg
        self.processed_dir = processed

    def __getattr__(self, name: str) -> Any:
        if name == "_cfg":  # during unpickling, before __init__ state is restored
            raise AttributeError(name)
        return getattr(self._cfg, name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Relocated, (self._cfg, self.processed_dir))


def _relocated(cfg: Experiment, processed: Path) -> Experiment:
    """Return ``cfg`` writing its processed data to ``processed`` (raw_dir unchanged)."""
    return cast(Experiment, _Relocated(cfg, processed))


@dataclass(slots=True)
class RebuildResult:
    """What ``labpipe rebuild`` did."""

    run_id: str
    exit_code: int
    summary: ingest_mod.IngestSummary
    status_path: Path


def rebuild(
    cfg: Experiment,
    *,
    workers: int | None = None,
    settle_seconds: float = 0.0,
    progress: ingest_mod.Progress | None = None,
    run_id: str | None = None,
) -> RebuildResult:
    """Re-derive ``data/processed`` from ``data/raw`` beside the old state, then swap.

    Parameters
    ----------
    cfg
        The experiment.
    workers
        Parsing processes (default: all cores).
    settle_seconds
        Files changed in the last this-many seconds stay pending.
    progress
        Progress callback of the ingest.
    run_id
        The run's id.

    Returns
    -------
    RebuildResult
        Exit code (0, or 1 when input is set aside) and the ingest summary of the new state.

    Raises
    ------
    LockedError
        Another run holds the lock.
    EnvironmentFailure
        The disk failed; the old state is untouched.
    """
    result: dict[str, Any] = {}
    processed = cfg.processed_dir

    def body(run: _Run) -> int:
        live = processed.resolve()
        if os.path.ismount(live):
            raise EnvironmentFailure(
                f"{processed} is a mount point, so rebuild cannot build the new state beside "
                "it and swap the two.",
                path=str(processed),
                hint="Mount the disk one folder higher (data/) or remove data/processed "
                "by hand and run `labpipe ingest`.",
            )
        new = live.parent / REBUILD_NAME
        try:
            if new.exists():
                shutil.rmtree(new)
            new.mkdir()
        except OSError as exc:
            raise fsio.environment_failure(exc, new) from exc
        logger.info("rebuilding", extra={"event": "rebuild.start", "into": str(new)})
        summary = ingest_mod.ingest(
            _relocated(cfg, new),
            workers=workers,
            settle_seconds=settle_seconds,
            progress=progress,
            run_id=run.run_id,
            command="rebuild",
        )
        result["summary"] = summary
        fsio.crash_point("rebuild_built")
        # Hold the new folder's lock too: once swapped in, it is the lab's lock.
        lock, fds = _acquire(new, "rebuild", run.run_id)
        try:
            try:
                fsio.fsync_dir(new)
                _swap_in(live, new)
            except OSError as exc:
                raise fsio.environment_failure(exc, live) from exc
            fsio.crash_point("after_swap")
            logger.info("swapped in", extra={"event": "rebuild.swapped"})
            _move_logs(new, live)
            shutil.rmtree(new, ignore_errors=True)
        finally:
            _release(lock, fds)
        _set_summary(run.status, summary)
        return summary.exit_code

    code, path = _locked_run(cfg, "rebuild", run_id, body)
    return RebuildResult(
        run_id=result["summary"].run_id, exit_code=code, summary=result["summary"], status_path=path
    )
