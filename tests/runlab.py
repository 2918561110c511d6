"""Run labpipe as a real process on a lab folder, and compare lab folders.

Used by the crash, fault and nightly tests: every run is ``sys.executable -m labpipe ...``
in its own process, so kill -9, locks and disk errors are the real thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labpipe import store

from labfolder import Lab, event_session, make_lab, session

#: Kill-safe ceiling for one run of a small lab.
TIMEOUT = 180


def env_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("LABPIPE_CRASH_AT", "LABPIPE_FAIL_WRITE_AT", "LABPIPE_REBUILD_NO_EXCHANGE"):
        env.pop(key, None)
    env.update(extra or {})
    return env


def command(lab: Lab, cmd: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "labpipe", cmd, "--config", str(lab.config), *args]


def run(
    lab: Lab,
    cmd: str,
    *args: str,
    env: dict[str, str] | None = None,
    umask: int | None = None,
    timeout: float = TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``labpipe CMD --config ... ARGS`` to its end."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None  # noqa: E731
    return subprocess.run(
        command(lab, cmd, *args),
        capture_output=True,
        text=True,
        env=env_for(env),
        cwd=lab.root,
        timeout=timeout,
        preexec_fn=preexec,
        check=False,
    )


def start(
    lab: Lab, cmd: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``labpipe CMD`` without waiting."""
    return subprocess.Popen(
        command(lab, cmd, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(env),
        cwd=lab.root,
    )


def nightly(lab: Lab, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``labpipe nightly --settle-seconds 0 ARGS``."""
    return run(lab, "nightly", "--settle-seconds", "0", *args, **kw)


# ---- labs ------------------------------------------------------------------------------


def small_lab(root: Path, *, n_days: int = 4, bad: bool = False) -> Lab:
    """A lab with 3 rats over ``n_days`` days, single- and multi-box files, event arrays."""
    lab = make_lab(root)
    add_days(lab, range(n_days))
    if bad:
        lab.add_bytes("broken/empty.txt", b"")
    return lab


def add_days(lab: Lab, days: range) -> None:
    for day in days:
        date = f"03/{day + 2:02d}/26"
        msn = "SA_FR1_2h" if day < 3 else "EXT_2h"
        r1 = session(
            "R1",
            box=1,
            date=date,
            msn=msn,
            left=[10.0 + i * 7.5 for i in range(12 + day)],
            right=[15.0, 300.0],
            infusions=[10.0 + i * 15 for i in range(6)],
            timeout=1,
        )
        r2 = session(
            "R2",
            box=2,
            date=date,
            msn=msn,
            left=[5.0],
            right=[20.0 + i * 3.25 for i in range(9 + day)],
            infusions=[20.0, 60.0, 90.0],
            block=1,
        )
        lab.add(f"day{day:02d}/boxes_1_2.txt", [r1, r2])
        lab.add(
            f"day{day:02d}/R3.txt",
            [
                event_session(
                    "R3",
                    box=3,
                    date=date,
                    msn="REIN_CUE_2h" if day == 3 else msn,
                    events=[(100 * i + 50, 1 + i % 3) for i in range(20 + day)],
                )
            ],
        )


def copy_lab(src: Lab, dest_root: Path) -> Lab:
    """Copy a lab folder's configs and raw files (not its outputs)."""
    (dest_root / "data").mkdir(parents=True)
    shutil.copytree(src.root / "configs", dest_root / "configs")
    shutil.copytree(src.raw, dest_root / "data" / "raw")
    return Lab(dest_root, dict(src.written))


# ---- comparing outputs -----------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """What a lab folder holds, for equality with a clean run."""

    session_ids: tuple[str, ...]
    parts: dict[str, str]
    sessions_sha: str
    events: tuple[tuple[Any, ...], ...]
    files: dict[str, str]


def state(lab: Lab) -> State:
    processed = lab.processed
    con = sqlite3.connect(f"file:{processed / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        ids = tuple(r[0] for r in con.execute("SELECT session_id FROM sessions ORDER BY 1"))
        files = dict(con.execute("SELECT path, status FROM files ORDER BY 1").fetchall())
    finally:
        con.close()
    parts = {
        f"{d}/{p.name}": sha(p)
        for d in store.DATASETS
        if (processed / d).is_dir()
        for p in sorted((processed / d).iterdir())
    }
    ev = store.read_events(processed)
    return State(
        session_ids=ids,
        parts=parts,
        sessions_sha=sha(processed / "sessions.parquet"),
        events=tuple(ev.itertuples(index=False, name=None)),
        files=files,
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: The catalog's indexes other than its keys'. A first ingest builds them at the end of its
#: commits; a run killed before that leaves them to the next ingest, which builds them first.
LOOKUP_INDEXES = {"files_sha256", "sessions_slot", "sessions_subject"}


def catalog_indexes(lab: Lab) -> set[str]:
    """The names of the catalog's indexes, but those SQLite makes for its keys."""
    con = sqlite3.connect(f"file:{lab.processed / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql NOT NULL")
        return {name for (name,) in rows}
    finally:
        con.close()


def assert_sound(lab: Lab) -> None:
    """No temp files, empty staging, integrity ok, indexes, no duplicate session, parts listed."""
    temps = [p for p in lab.root.rglob("*") if p.name.endswith(".tmp")]
    assert not temps, f"temporary files left: {temps}"
    staging = lab.processed / store.STAGING
    staged = [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []
    assert not staged, f"staged files left: {staged}"
    con = sqlite3.connect(f"file:{lab.processed / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        listed = {r[0] for r in con.execute("SELECT name FROM parts")}
        n_ids = con.execute("SELECT count(*), count(DISTINCT session_id) FROM sessions").fetchone()
    finally:
        con.close()
    assert n_ids[0] == n_ids[1]
    assert catalog_indexes(lab) == LOOKUP_INDEXES
    on_disk = {
        f"{d}/{p.name}"
        for d in store.DATASETS
        if (lab.processed / d).is_dir()
        for p in (lab.processed / d).iterdir()
    }
    assert on_disk == listed
    table = store.read_sessions(lab.processed)
    assert table["session_id"].is_unique
    assert not (lab.root / "data" / ".processed.rebuild").exists()


def read_status(lab: Lab) -> dict[str, Any]:
    return json.loads((lab.processed / "status.json").read_text(encoding="utf-8"))


def wait_for(predicate: Any, timeout: float = 30.0, step: float = 0.005) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def children_of(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc), to clean up orphans we started."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out
