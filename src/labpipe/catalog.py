"""The SQLite catalog: what was seen, ingested, set aside, and which parts hold it.

``data/processed/catalog.sqlite`` is the source of truth of an ingest. The parquet parts
are derived from the raw files and listed here with their sha256; a part not listed here is
not committed and is removed by the next run.

Connection settings (research/reliability.md §3.4): autocommit mode with explicit
``BEGIN IMMEDIATE`` (deferred transactions that read then write hit SQLITE_BUSY under two
writers), ``foreign_keys=ON`` (off by default, and ignored inside a transaction), WAL with
``synchronous=FULL`` (a commit survives a power loss). WAL needs every process on one
host: keep ``data/processed`` on a local disk.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from labpipe.errors import DataError, EnvironmentFailure
from labpipe.fsio import free_bytes

SCHEMA_VERSION = 2

#: The indexes that serve look-ups only (no constraint): name -> table (columns). A first
#: ingest drops them while it inserts and builds them once at the end (see
#: :meth:`Catalog.drop_lookup_indexes`): an index on random keys (a sha256) takes a
#: few rows on every one of its pages at each commit, and so is written out again whole
#: by every commit; built at the end, it is sorted once.
_LOOKUP_INDEXES = {
    "files_sha256": "files (sha256)",
    "sessions_slot": "sessions (slot)",
    "sessions_subject": "sessions (subject)",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,              -- relative to data/raw, '/' separators
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,                        -- NULL while pending
    status TEXT NOT NULL
        CHECK (status IN ('ingested', 'partial', 'quarantined', 'duplicate', 'pending')),
    reason_code TEXT,
    reason TEXT,
    duplicate_of TEXT,
    n_sessions INTEGER NOT NULL DEFAULT 0,
    parser_version TEXT,
    config_fingerprint TEXT,
    first_seen TEXT NOT NULL,
    updated TEXT NOT NULL,
    run_id TEXT
) STRICT;
{files_sha256};
CREATE TABLE IF NOT EXISTS parts (
    name TEXT PRIMARY KEY,              -- '<dataset>/<file>.parquet' under data/processed
    dataset TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    n_rows INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    run_id TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,      -- subject as typed | start date | start time | box
    slot TEXT NOT NULL,                 -- box | start date | start time
    fingerprint TEXT NOT NULL,          -- hash of the parsed values
    source_path TEXT NOT NULL REFERENCES files (path),
    source_block INTEGER NOT NULL,
    subject TEXT NOT NULL,
    record TEXT NOT NULL,               -- JSON: the mapped session (sessions.MappedSession)
    part TEXT NOT NULL,                 -- events part holding its events
    run_id TEXT
) STRICT;
{sessions_slot};
{sessions_subject};
CREATE TABLE IF NOT EXISTS set_aside (
    path TEXT NOT NULL REFERENCES files (path) ON DELETE CASCADE,
    block INTEGER NOT NULL,             -- -1: the whole file
    session_id TEXT,
    subject_raw TEXT,
    reason_code TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (path, block)
) STRICT;
CREATE TABLE IF NOT EXISTS duplicates (
    path TEXT NOT NULL REFERENCES files (path) ON DELETE CASCADE,
    block INTEGER NOT NULL,
    session_id TEXT NOT NULL,
    PRIMARY KEY (path, block)
) STRICT;
CREATE TABLE IF NOT EXISTS corrections (
    session_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    exit_code INTEGER,
    counts TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
-- A stored session changed or went: sessions.parquet cannot be extended, only rebuilt.
CREATE TRIGGER IF NOT EXISTS sessions_deleted AFTER DELETE ON sessions BEGIN {bump} END;
CREATE TRIGGER IF NOT EXISTS sessions_updated AFTER UPDATE ON sessions BEGIN {bump} END;
""".format(
    **{name: f"CREATE INDEX IF NOT EXISTS {name} ON {on}" for name, on in _LOOKUP_INDEXES.items()},
    bump="INSERT INTO meta (key, value) VALUES ('sessions_epoch', '1') ON CONFLICT (key)"
    " DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT);",
)


_INSERT_FILE = (
    "INSERT INTO files (path, size, mtime_ns, sha256, status, reason_code, reason,"
    " duplicate_of, n_sessions, parser_version, config_fingerprint, first_seen,"
    " updated, run_id)"
    " VALUES (:path, :size, :mtime_ns, :sha256, :status, :reason_code, :reason,"
    " :duplicate_of, :n_sessions, :parser_version, :config_fingerprint, :now, :now,"
    " :run_id)"
)
_FILE_DEFAULTS: dict[str, Any] = {
    "sha256": None,
    "duplicate_of": None,
    "reason_code": None,
    "reason": None,
    "n_sessions": 0,
    "parser_version": None,
    "config_fingerprint": None,
}


def _file_values(row: Mapping[str, Any], now: str, run_id: str) -> dict[str, Any]:
    return {**_FILE_DEFAULTS, **row, "now": now, "run_id": run_id}


def now_iso() -> str:
    """Return the current UTC time as ISO 8601 (run bookkeeping only, never in outputs)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class FileRow(NamedTuple):
    """One raw file as the catalog knows it (a tuple: a nightly run loads 10⁵ of them)."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    status: str
    reason_code: str | None
    reason: str | None
    config_fingerprint: str | None
    parser_version: str | None


@dataclass(frozen=True, slots=True)
class SessionsState:
    """Where the stored sessions stand (see :meth:`Catalog.sessions_state`)."""

    epoch: int
    rows: int
    last: int


@dataclass(frozen=True, slots=True)
class StoredSession:
    """The keys of a stored session, for duplicate / conflict / relabel decisions."""

    session_id: str
    identity: str
    slot: str
    fingerprint: str
    source_path: str
    source_block: int
    subject: str


class Catalog:
    """A connection to ``catalog.sqlite`` with labpipe's settings and queries.

    Parameters
    ----------
    path
        The database file; created with its schema when missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                # SQLite creates a new database 0644 whatever the umask (and its -wal and
                # -shm files with the database's mode); an empty file made here honours the
                # umask (0664 under 002, so the lab's group can run ingest too).
                with open(path, "ab"):
                    pass
            self.con = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.con.execute("PRAGMA foreign_keys=ON")
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=FULL")
            version = self.con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise DataError(
                    f"{path} was written by a newer labpipe (catalog schema {version}).",
                    hint="Upgrade labpipe, or run `labpipe rebuild` with this version.",
                )
            if version < SCHEMA_VERSION:
                with self.transaction() as con:
                    # executescript() would COMMIT the open transaction first: one by one.
                    for statement in _SCHEMA.split(";\n"):
                        if statement.strip():
                            con.execute(statement)
                    con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise translate(exc, path) from exc

    def close(self) -> None:
        """Close the connection."""
        self.con.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction."""
        try:
            self.con.execute("BEGIN IMMEDIATE")
            try:
                yield self.con
            except BaseException:
                # SQLite has already rolled back after SQLITE_FULL; ROLLBACK would raise.
                if self.con.in_transaction:
                    self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            raise translate(exc, self.path) from exc

    # ---- reads -------------------------------------------------------------------------

    def files(self, paths: Sequence[str]) -> dict[str, FileRow]:
        """Return the known raw files among ``paths``, by path."""
        rows = self._select_in(
            "SELECT path, size, mtime_ns, sha256, status, reason_code, reason,"
            " config_fingerprint, parser_version FROM files WHERE path IN ({marks})",
            paths,
        )
        return {row.path: row for row in map(FileRow._make, rows)}

    def _select_in(self, sql: str, keys: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """Run ``sql`` over ``keys`` in chunks; ``{marks}`` in it stands for the IN list.

        Chunks of 500 stay under the host-parameter limit of older SQLite builds (999).
        """
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            yield from self.con.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)

    def settled_files(
        self, config_fingerprint: str, parser_version: str
    ) -> dict[str, tuple[int, int]]:
        """Return path -> (size, mtime_ns) of the files a run need not read while unchanged.

        Those are the ingested and duplicate files, and the set-aside ones read with this
        config and parser (reading them again would set them aside again). Plain tuples: a
        nightly run compares 10⁵ of them with what it finds on disk.
        """
        rows = self.con.execute(
            "SELECT path, size, mtime_ns FROM files WHERE status IN ('ingested', 'duplicate')"
            " OR (status IN ('quarantined', 'partial') AND config_fingerprint = ?"
            " AND parser_version = ?)",
            (config_fingerprint, parser_version),
        )
        return {path: (size, mtime_ns) for path, size, mtime_ns in rows}

    def by_identity(self, identities: Sequence[str]) -> dict[str, StoredSession]:
        """Return stored sessions whose identity is among ``identities``."""
        return self._stored("identity", identities)

    def by_slot(self, slots: Sequence[str]) -> dict[str, list[StoredSession]]:
        """Return stored sessions whose slot is among ``slots``, grouped by slot."""
        out: dict[str, list[StoredSession]] = {}
        for s in self._stored_rows("slot", slots):
            out.setdefault(s.slot, []).append(s)
        return out

    def _stored(self, column: str, keys: Sequence[str]) -> dict[str, StoredSession]:
        return {getattr(s, column): s for s in self._stored_rows(column, keys)}

    def _stored_rows(self, column: str, keys: Sequence[str]) -> list[StoredSession]:
        rows = self._select_in(
            "SELECT session_id, identity, slot, fingerprint, source_path, source_block,"
            f" subject FROM sessions WHERE {column} IN ({{marks}})",
            list(dict.fromkeys(keys)),
        )
        return [StoredSession(*r) for r in rows]

    def session_records(self, after: int = 0) -> list[str]:
        """Return the stored session records (JSON text) inserted after rowid ``after``."""
        rows = self.con.execute("SELECT record FROM sessions WHERE rowid > ?", (after,))
        return [r[0] for r in rows]

    def sessions_state(self, upto: int | None = None) -> SessionsState:
        """Describe the stored sessions, so that a table built from them can be extended.

        ``epoch`` grows whenever a stored session is deleted or updated; ``rows`` counts
        the sessions with a rowid up to ``upto`` (all when None), the greatest of which is
        ``last``. While ``epoch`` stays and ``rows`` up to ``last`` stays, the sessions a
        table was built from are all still there, unchanged, and every newer one has a
        greater rowid (SQLite gives a new row the greatest rowid plus one).
        """
        epoch = int(self.meta("sessions_epoch") or 0)
        where = "" if upto is None else f" WHERE rowid <= {int(upto)}"
        rows, last = self.con.execute(
            f"SELECT count(*), coalesce(max(rowid), 0) FROM sessions{where}"  # noqa: S608
        ).fetchone()
        return SessionsState(epoch=epoch, rows=rows, last=last)

    def stored_sides(self) -> dict[str, str]:
        """Return subject -> active lever as recorded for subjects with stored sessions."""
        rows = self.con.execute("SELECT DISTINCT subject, record FROM sessions GROUP BY subject")
        return {s: json.loads(rec).get("active_lever", "") for s, rec in rows}

    def stored_subjects(self) -> set[str]:
        """Return the subjects that have stored sessions."""
        return {r[0] for r in self.con.execute("SELECT DISTINCT subject FROM sessions")}

    def parts(self) -> dict[str, tuple[str, int]]:
        """Return part name -> (sha256, published)."""
        rows = self.con.execute("SELECT name, sha256, published FROM parts")
        return {name: (sha, pub) for name, sha, pub in rows}

    def set_aside_rows(self) -> list[dict[str, Any]]:
        """Return every set-aside file or session, with the file's status."""
        rows = self.con.execute(
            "SELECT s.path, s.block, s.session_id, s.subject_raw, s.reason_code, s.reason"
            " FROM set_aside s ORDER BY s.path, s.block"
        )
        keys = ("file", "block", "session_id", "subject_raw", "reason_code", "reason")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def counts(self) -> dict[str, int]:
        """Return the number of files per status and of stored sessions."""
        out = {
            status: n
            for status, n in self.con.execute("SELECT status, count(*) FROM files GROUP BY status")
        }
        out["sessions"] = self.con.execute("SELECT count(*) FROM sessions").fetchone()[0]
        return out

    def meta(self, key: str) -> str | None:
        """Return a bookkeeping value (e.g. the derivation key)."""
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def integrity_check(self) -> list[str]:
        """Return SQLite's ``PRAGMA integrity_check`` lines (``['ok']`` when sound)."""
        try:
            return [r[0] for r in self.con.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            return [str(exc)]

    # ---- writes (inside a transaction) -------------------------------------------------

    @staticmethod
    def put_file(con: sqlite3.Connection, row: Mapping[str, Any], run_id: str) -> None:
        """Insert or update a file row; clears its set-aside and duplicate rows."""
        con.execute(
            _INSERT_FILE + " ON CONFLICT (path) DO UPDATE SET size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256,"
            " status = excluded.status, reason_code = excluded.reason_code,"
            " reason = excluded.reason, duplicate_of = excluded.duplicate_of,"
            " n_sessions = excluded.n_sessions, parser_version = excluded.parser_version,"
            " config_fingerprint = excluded.config_fingerprint, updated = excluded.updated,"
            " run_id = excluded.run_id",
            _file_values(row, now_iso(), run_id),
        )
        con.execute("DELETE FROM set_aside WHERE path = ?", (row["path"],))
        con.execute("DELETE FROM duplicates WHERE path = ?", (row["path"],))

    @staticmethod
    def put_new_files(
        con: sqlite3.Connection, rows: Sequence[Mapping[str, Any]], run_id: str
    ) -> None:
        """Insert files the catalog has never seen, in one statement (no rows to clear)."""
        now = now_iso()
        con.executemany(_INSERT_FILE, [_file_values(r, now, run_id) for r in rows])

    def sha_owners(self, shas: Sequence[str]) -> dict[str, list[str]]:
        """Return sha256 -> paths already ingested with that content (sorted), in bulk."""
        out: dict[str, list[str]] = {}
        rows = self._select_in(
            "SELECT sha256, path FROM files WHERE sha256 IN ({marks})"
            " AND status IN ('ingested', 'partial') ORDER BY path",
            sorted(set(shas)),
        )
        for sha, path in rows:
            out.setdefault(sha, []).append(path)
        return out

    @staticmethod
    def put_sessions(con: sqlite3.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Insert stored sessions."""
        con.executemany(
            "INSERT INTO sessions (session_id, identity, slot, fingerprint, source_path,"
            " source_block, subject, record, part, run_id) VALUES (:session_id, :identity,"
            " :slot, :fingerprint, :source_path, :source_block, :subject, :record, :part,"
            " :run_id)",
            rows,
        )

    @staticmethod
    def put_set_aside(con: sqlite3.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Record set-aside files (block -1) or sessions."""
        con.executemany(
            "INSERT OR REPLACE INTO set_aside (path, block, session_id, subject_raw,"
            " reason_code, reason) VALUES (:path, :block, :session_id, :subject_raw,"
            " :reason_code, :reason)",
            rows,
        )

    @staticmethod
    def put_duplicates(con: sqlite3.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Record sessions seen again in another file."""
        con.executemany(
            "INSERT OR REPLACE INTO duplicates (path, block, session_id)"
            " VALUES (:path, :block, :session_id)",
            rows,
        )

    @staticmethod
    def put_parts(con: sqlite3.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Record committed (not yet published) parts."""
        con.executemany(
            "INSERT OR REPLACE INTO parts (name, dataset, sha256, n_rows, published, run_id)"
            " VALUES (:name, :dataset, :sha256, :n_rows, 0, :run_id)",
            rows,
        )

    def mark_published(self, names: Sequence[str]) -> None:
        """Mark parts as moved into their table folders (bookkeeping only)."""
        with self.transaction() as con:
            con.executemany("UPDATE parts SET published = 1 WHERE name = ?", [(n,) for n in names])

    def set_meta(self, con: sqlite3.Connection, key: str, value: str) -> None:
        """Set a bookkeeping value inside the caller's transaction."""
        con.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def replace_corrections(self, con: sqlite3.Connection, corrections: Mapping[str, str]) -> None:
        """Mirror ``configs/corrections.csv`` into the catalog."""
        con.execute("DELETE FROM corrections")
        con.executemany(
            "INSERT INTO corrections (session_id, subject) VALUES (?, ?)",
            sorted(corrections.items()),
        )

    @staticmethod
    def drop_lookup_indexes(con: sqlite3.Connection) -> None:
        """Drop the indexes that serve look-ups only, before bulk inserts into a new catalog.

        The catalog answers every query the same without them, only slower: the run that
        drops them builds them again when it is done (:meth:`create_lookup_indexes`), and
        so does the start of every ingest, in case a run stopped in between.
        """
        for name in _LOOKUP_INDEXES:
            con.execute(f"DROP INDEX IF EXISTS {name}")

    @staticmethod
    def create_lookup_indexes(con: sqlite3.Connection) -> None:
        """Build the look-up indexes that are missing (none is, but after a bulk insert)."""
        for name, on in _LOOKUP_INDEXES.items():
            con.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {on}")

    def forget_derived(self, con: sqlite3.Connection) -> None:
        """Drop every derived row so the raw files are ingested again (re-derivation)."""
        for table in ("duplicates", "set_aside", "sessions", "parts"):
            con.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        con.execute("DELETE FROM files")

    def start_run(self, run_id: str, command: str) -> None:
        """Record the start of a run."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO runs (run_id, command, started) VALUES (?, ?, ?)",
                (run_id, command, now_iso()),
            )

    def finish_run(self, run_id: str, exit_code: int, counts: Mapping[str, Any]) -> None:
        """Record the end of a run with its counts and exit code."""
        with self.transaction() as con:
            con.execute(
                "UPDATE runs SET finished = ?, exit_code = ?, counts = ? WHERE run_id = ?",
                (now_iso(), exit_code, json.dumps(dict(counts), sort_keys=True), run_id),
            )


def translate(exc: sqlite3.DatabaseError, path: Path) -> Exception:
    """Map an SQLite error onto labpipe's errors (disk full -> EnvironmentFailure)."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_FULL", "SQLITE_IOERR_WRITE") or "disk is full" in str(exc):
        free = free_bytes(path)
        free_txt = f"{free / 1e6:.1f} MB free" if free is not None else "free space unknown"
        return EnvironmentFailure(
            f"The disk holding {path} is full ({free_txt}); the catalog rolled back the "
            "current file and nothing already ingested was lost.",
            path=str(path),
            hint="Free some space and run the command again.",
        )
    if (
        name in ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")
        or isinstance(exc, sqlite3.OperationalError)
        and "readonly" in str(exc)
    ):
        return EnvironmentFailure(
            f"labpipe cannot write the catalog {path} ({exc}).",
            path=str(path),
            hint="Check the folder's permissions.",
        )
    if name == "SQLITE_BUSY" or "locked" in str(exc):
        return EnvironmentFailure(
            f"The catalog {path} stayed locked by another program for 30 s.",
            path=str(path),
            hint="Close any program that has the catalog open and run again.",
        )
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return DataError(
            f"The catalog {path} is damaged ({exc}).",
            hint="Run `labpipe rebuild` to re-derive it from data/raw.",
        )
    return exc
