"""Parquet datasets under ``data/processed``: staged, checksummed, atomically published.

Layout::

    data/processed/
      catalog.sqlite          # the manifest (labpipe.catalog)
      sessions.parquet        # one row per session; rewritten whole, atomically
      events/part-<h>.parquet     # one row per event;   parts only ever added
      variables/part-<h>.parquet  # every raw variable;  parts only ever added
      .staging/               # parts written but not yet committed (never read)

A part is first written to ``.staging`` (outside every table folder: DuckDB's ``**`` glob
does not skip dot-folders inside a table folder), fsynced, then committed in the catalog,
and only then moved into its table folder with ``os.replace``. A reader of ``events/``
therefore never sees a half-written or uncommitted file.

Every part is written with parquet page checksums (``write_page_checksum=True``; without
them most bit flips read back silently wrong) and read back with verification on. Its
sha256 is in the catalog, which catches damage the page checksums do not cover (footer).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from labpipe.errors import DataError
from labpipe.fsio import atomic_write, fsync_dir, publish

SCHEMA_VERSION = "1"
STAGING = ".staging"
DATASETS = ("events", "variables")

EVENTS_SCHEMA = pa.schema(
    [("session_id", pa.string()), ("t_s", pa.float64()), ("event", pa.string())]
)
VARIABLES_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("variable", pa.string()),
        ("index", pa.int64()),
        ("value", pa.float64()),
    ]
)


def sessions_schema(timezone: str) -> pa.Schema:
    """Return the Arrow schema of ``sessions.parquet`` (timestamps in the lab's zone)."""
    ts = pa.timestamp("us", tz=timezone)
    return pa.schema(
        [
            ("session_id", pa.string()),
            ("experiment", pa.string()),
            ("subject", pa.string()),
            ("subject_raw", pa.string()),
            ("sex", pa.string()),
            ("group", pa.string()),
            ("cohort", pa.string()),
            ("active_lever", pa.string()),
            ("box", pa.int64()),
            ("msn", pa.string()),
            ("phase", pa.string()),
            ("test", pa.string()),
            ("day_in_phase", pa.int64()),
            ("session_index", pa.int64()),
            ("start", ts),
            ("end", ts),
            ("duration_min", pa.float64()),
            ("dst_crossing", pa.bool_()),
            ("active", pa.int64()),
            ("inactive", pa.int64()),
            ("reinforcers", pa.int64()),
            ("timeout_active", pa.int64()),
            ("intake_mg_kg", pa.float64()),
            ("has_events", pa.bool_()),
            ("source_file", pa.string()),
            ("source_block", pa.int64()),
        ]
    )


#: The columns of ``sessions.parquet`` copied from each stored session record (the JSON
#: the catalog keeps, :attr:`labpipe.sessions.MappedSession.record`); the others
#: (roster, phase, day numbers, intake) are computed from the config when it is written.
RECORD_FIELDS = (
    "session_id",
    "subject",
    "subject_raw",
    "active_lever",
    "box",
    "msn",
    "start",
    "end",
    "duration_min",
    "dst_crossing",
    "active",
    "inactive",
    "reinforcers",
    "timeout_active",
    "has_events",
    "source_file",
    "source_block",
)


def records_frame(records: Sequence[str]) -> pd.DataFrame:
    """Parse stored session records (JSON objects) into the :data:`RECORD_FIELDS` columns.

    Parsed by Arrow's JSON reader against the sessions schema (no Python per record);
    ``start`` and ``end`` become UTC timestamps (the records carry their UTC offsets).

    Parameters
    ----------
    records
        One JSON object a session.

    Returns
    -------
    pandas.DataFrame
        One row a record, in order.
    """
    utc = sessions_schema("UTC")
    fields = [
        pa.field(name, pa.string() if name in ("start", "end") else utc.field(name).type)
        for name in RECORD_FIELDS
    ]
    schema = pa.schema(fields)
    if not records:
        table = schema.empty_table()
    else:
        table = pa_json.read_json(
            io.BytesIO("\n".join(records).encode()),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    frame = table.to_pandas()
    for col in ("start", "end"):
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601").astype(
            "datetime64[us, UTC]"
        )
    return frame


def _metadata(dataset: str) -> dict[bytes, bytes]:
    return {
        b"labpipe.schema_version": SCHEMA_VERSION.encode(),
        b"labpipe.dataset": dataset.encode(),
    }


def _parquet_bytes(table: pa.Table) -> memoryview:
    """Return ``table`` as the bytes of a labpipe parquet file (built in memory)."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        write_page_checksum=True,
        write_statistics=True,
    )
    return memoryview(sink.getvalue())


def _write_parquet(table: pa.Table, dest: Path) -> str:
    """Write ``table`` to ``dest`` atomically; return the sha256 of the bytes written.

    The file is built in memory (a part or the sessions table: a few MB) and hashed there,
    rather than read back from disk for its hash.
    """
    data = _parquet_bytes(table)
    with atomic_write(dest) as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def _repeated(values: Sequence[str], counts: np.ndarray) -> pa.Array:
    """Return a string column holding ``values[i]`` ``counts[i]`` times, in order.

    Built by Arrow from the few distinct strings (a chunk's session ids, its sessions'
    variable names), not from one Python string per row.
    """
    codes = np.repeat(np.arange(len(values), dtype=np.int32), counts)
    return pa.array(values, type=pa.string()).take(pa.array(codes))


def events_table(
    session_ids: Sequence[str], counts: np.ndarray, t_s: np.ndarray, event: np.ndarray
) -> pa.Table:
    """Build an events table (see :data:`EVENTS_SCHEMA`) from aligned columns.

    ``session_ids[i]`` owns the next ``counts[i]`` rows of ``t_s`` and ``event``.
    """
    table = pa.table(
        {
            "session_id": _repeated(session_ids, counts),
            "t_s": pa.array(t_s, type=pa.float64()),
            "event": pa.array(event, type=pa.string()),
        },
        schema=EVENTS_SCHEMA,
    )
    return table.replace_schema_metadata(_metadata("events"))


def variables_table(
    session_ids: Sequence[str],
    session_rows: np.ndarray,
    variables: Sequence[str],
    variable_rows: np.ndarray,
    index: np.ndarray,
    value: np.ndarray,
) -> pa.Table:
    """Build a variables table (see :data:`VARIABLES_SCHEMA`) from aligned columns.

    ``session_ids[i]`` owns the next ``session_rows[i]`` rows and ``variables[j]`` the
    next ``variable_rows[j]`` rows of ``index`` and ``value``; ``index`` is -1 for a
    scalar (stored as null).
    """
    idx = pa.array(index, type=pa.int64(), mask=index < 0)
    table = pa.table(
        {
            "session_id": _repeated(session_ids, session_rows),
            "variable": _repeated(variables, variable_rows),
            "index": idx,
            "value": pa.array(value, type=pa.float64()),
        },
        schema=VARIABLES_SCHEMA,
    )
    return table.replace_schema_metadata(_metadata("variables"))


def part_name(dataset: str, session_ids: Iterable[str]) -> str:
    """Name a part after the sessions it holds: ``events/part-<16 hex>.parquet``."""
    digest = hashlib.sha256("\n".join(sorted(session_ids)).encode()).hexdigest()[:16]
    return f"{dataset}/part-{digest}.parquet"


def stage_part(processed: Path, name: str, table: pa.Table) -> str:
    """Write a part into the staging folder (fsynced) and return its sha256.

    Parameters
    ----------
    processed
        ``data/processed``.
    name
        The part's name, e.g. ``events/part-<h>.parquet``.
    table
        Its rows.

    Returns
    -------
    str
        sha256 hex of the file's bytes, for the catalog.
    """
    return _write_parquet(table, processed / STAGING / name)


def restage_part(
    processed: Path, name: str, session_ids: Sequence[str], new_name: str
) -> tuple[str, int]:
    """Stage a copy of a staged part that keeps only some sessions' rows.

    A worker stages every session of its chunk that mapped cleanly; when the committing
    process keeps fewer (duplicates, conflicts), it stages the rows it keeps under their
    own name. The rows keep their order, so the copy is byte-identical to a part built
    from those sessions directly. The original staged part is removed.

    Parameters
    ----------
    processed
        ``data/processed``.
    name
        The staged part, e.g. ``events/part-<h>.parquet``.
    session_ids
        The sessions to keep.
    new_name
        The copy's name.

    Returns
    -------
    tuple of (str, int)
        The copy's sha256 and number of rows.
    """
    source = processed / STAGING / name
    dataset = name.split("/", 1)[0]
    schema = EVENTS_SCHEMA if dataset == "events" else VARIABLES_SCHEMA
    table = pq.read_table(source, page_checksum_verification=True, schema=schema)
    keep = pc.is_in(table["session_id"], value_set=pa.array(list(session_ids), pa.string()))
    table = table.filter(keep).combine_chunks().replace_schema_metadata(_metadata(dataset))
    sha = stage_part(processed, new_name, table)
    if new_name != name:
        discard_staged(processed, [name])
    return sha, table.num_rows


def discard_staged(processed: Path, names: Iterable[str]) -> None:
    """Remove staged parts that will not be committed (a missing one is fine)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(processed / STAGING / name)


def publish_part(processed: Path, name: str) -> None:
    """Move a committed part from staging into its table folder."""
    publish(processed / STAGING / name, processed / name)


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def remove_staged_temporaries(processed: Path) -> list[str]:
    """Remove the temporary files in the staging folder (``.<part>.<hex>.tmp``).

    Called when every worker of a run has returned: such a file is what a worker that
    died while writing a part left behind (its task ran again elsewhere), and no writer
    of the run is left to finish it. Returns the names removed, relative to
    ``data/processed``.
    """
    staging = processed / STAGING
    removed: list[str] = []
    if staging.exists():
        for path in sorted(staging.rglob(".*.tmp")):
            path.unlink(missing_ok=True)
            removed.append(f"{STAGING}/{path.relative_to(staging).as_posix()}")
    return removed


def recover(processed: Path, committed: dict[str, tuple[str, int]]) -> tuple[list[str], list[str]]:
    """Finish or undo what a crashed run left behind.

    Parameters
    ----------
    processed
        ``data/processed``.
    committed
        Part name -> (sha256, published) from the catalog.

    Returns
    -------
    rolled_forward, removed
        Staged parts that were committed and are now published; files removed because no
        commit refers to them (staged parts, temporary files, stray published parts).
    """
    rolled: list[str] = []
    removed: list[str] = []
    staging = processed / STAGING
    if staging.exists():
        for path in sorted(staging.rglob("*")):
            if not path.is_file():
                continue
            name = path.relative_to(staging).as_posix()
            if (
                name in committed
                and not path.name.startswith(".")
                and file_sha256(path) == committed[name][0]
            ):
                publish_part(processed, name)
                rolled.append(name)
                continue
            path.unlink()
            removed.append(f"{STAGING}/{name}")
    for dataset in DATASETS:
        folder = processed / dataset
        if not folder.exists():
            continue
        for path in sorted(folder.iterdir()):
            name = f"{dataset}/{path.name}"
            if path.name.startswith(".") or name not in committed:
                path.unlink()
                removed.append(name)
    for path in processed.glob(".*.tmp"):
        path.unlink()
        removed.append(path.name)
    if removed or rolled:
        for dataset in DATASETS:
            if (processed / dataset).exists():
                fsync_dir(processed / dataset)
    return rolled, removed


def missing_parts(processed: Path, committed: Iterable[str]) -> list[str]:
    """Return committed part names whose file is in neither the table folder nor staging."""
    return [
        name
        for name in committed
        if not (processed / name).exists() and not (processed / STAGING / name).exists()
    ]


def check_part(path: Path, sha256: str) -> str | None:
    """Return what is wrong with a stored part, or None when it is sound.

    Checks the file's sha256 against the catalog and reads every page with checksum
    verification on.
    """
    if not path.exists():
        return "missing"
    if file_sha256(path) != sha256:
        return "sha256 differs from the catalog"
    try:
        pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        return f"unreadable ({exc})"
    return None


def write_sessions(processed: Path, frame: pd.DataFrame, timezone: str) -> str:
    """Atomically replace ``sessions.parquet`` with ``frame`` under the fixed schema.

    Returns the sha256 of the file written.
    """
    return _write_parquet(_sessions_table(frame, timezone), processed / "sessions.parquet")


def sessions_sha256(frame: pd.DataFrame, timezone: str) -> str:
    """Return the sha256 of the ``sessions.parquet`` that ``frame`` makes (nothing written)."""
    return hashlib.sha256(_parquet_bytes(_sessions_table(frame, timezone))).hexdigest()


def _sessions_table(frame: pd.DataFrame, timezone: str) -> pa.Table:
    table = pa.Table.from_pandas(frame, schema=sessions_schema(timezone), preserve_index=False)
    return table.replace_schema_metadata(_metadata("sessions"))


def read_sessions(processed: Path) -> pd.DataFrame:
    """Read ``sessions.parquet`` (page checksums verified).

    Raises
    ------
    DataError
        When nothing has been ingested yet.
    """
    path = processed / "sessions.parquet"
    if not path.exists():
        raise DataError(
            f"{path} does not exist: nothing has been ingested yet.",
            hint="Run `labpipe ingest` first.",
        )
    return pq.read_table(path, page_checksum_verification=True).to_pandas()


def _dataset_files(processed: Path, dataset: str) -> list[Path]:
    folder = processed / dataset
    if not folder.exists():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def read_dataset(
    processed: Path, dataset: str, session_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read the events or variables dataset, optionally for some sessions only.

    Parameters
    ----------
    processed
        ``data/processed``.
    dataset
        ``"events"`` or ``"variables"``.
    session_ids
        Keep only these sessions (filtered while reading).

    Returns
    -------
    pandas.DataFrame
        The rows, sorted by session_id then time (events) or variable and index.
    """
    schema = EVENTS_SCHEMA if dataset == "events" else VARIABLES_SCHEMA
    files = _dataset_files(processed, dataset)
    if not files:
        return schema.empty_table().to_pandas()
    filters = [("session_id", "in", list(session_ids))] if session_ids is not None else None
    tables = [
        pq.read_table(f, filters=filters, page_checksum_verification=True, schema=schema)
        for f in files
    ]
    table = pa.concat_tables(tables)
    keys = ["session_id", "t_s", "event"] if dataset == "events" else ["session_id", "variable"]
    if dataset == "variables":
        keys.append("index")
    table = table.sort_by([(k, "ascending") for k in keys])
    return table.to_pandas()


def read_events(processed: Path, session_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Read the events dataset (``session_id, t_s, event``)."""
    return read_dataset(processed, "events", session_ids)


def read_variables(processed: Path, session_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Read the variables dataset (``session_id, variable, index, value``)."""
    return read_dataset(processed, "variables", session_ids)


def remove_published(processed: Path) -> None:
    """Delete every part of the events and variables datasets (for re-derivation)."""
    for dataset in DATASETS:
        for path in _dataset_files(processed, dataset):
            os.unlink(path)
