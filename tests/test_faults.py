"""Disk full and files still being written, with real processes and real files.

* ``LABPIPE_FAIL_WRITE_AT=k`` makes the k-th atomic write of a run fail with ENOSPC, for
  every k of a run: exit 4, a message naming the path and the free space, nothing
  committed lost, and after "freeing space" a re-run equals a clean run.
* A real full filesystem: ``data/processed`` on a tiny tmpfs (root allowed to ``mount``
  needed, skipped otherwise).
* A file still being written is pending, never ingested half, then ingested exactly once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runlab
from labpipe.fsio import read_unchanged
from labpipe.medpc import format_medpc

from labfolder import Lab, session

# ---- ENOSPC at every write -------------------------------------------------------------


class Night:
    """Night 1 ingested; night 2 (days 2-3) is the run that meets the full disk."""

    def __init__(self, root: Path, command: tuple[str, ...]) -> None:
        self.root = root
        self.command = command
        base = runlab.small_lab(root / "base", n_days=2)
        assert runlab.nightly(base, "--no-report").returncode == 0
        self.base = base
        self.before = runlab.state(base)
        ref = self.copy("ref")
        done = self.run(ref)
        assert done.returncode == 0, done.stderr
        self.clean = runlab.state(ref)

    def copy(self, name: str) -> Lab:
        dest = self.root / name
        shutil.copytree(self.base.root, dest)
        lab = Lab(dest, dict(self.base.written))
        runlab.add_days(lab, range(2, 4))
        return lab

    def run(self, lab: Lab, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return runlab.run(lab, *self.command, env=env)


def _sweep(night: Night, max_k: int) -> int:
    """Fail write k = 1, 2, ... until a run no longer meets a failure; return the count."""
    for k in range(1, max_k + 1):
        lab = night.copy(f"k{k}")
        raw = lab.raw_manifest()
        failed = night.run(lab, env={"LABPIPE_FAIL_WRITE_AT": str(k)})
        if failed.returncode == 0:
            assert k > 1
            return k - 1
        assert failed.returncode == 4, (k, failed.stderr)
        assert "is full" in failed.stderr and "MB free" in failed.stderr, failed.stderr
        assert str(lab.processed) in failed.stderr or str(lab.root) in failed.stderr
        assert "Traceback" not in failed.stderr
        # Nothing committed before is lost; the catalog is sound; no half-written file.
        con = sqlite3.connect(f"file:{lab.processed / 'catalog.sqlite'}?mode=ro", uri=True)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            ids = {r[0] for r in con.execute("SELECT session_id FROM sessions")}
        finally:
            con.close()
        assert set(night.before.session_ids) <= ids
        assert not [p for p in lab.root.rglob("*.tmp")]
        # Space is back: the next run completes the work.
        again = night.run(lab)
        assert again.returncode == 0, (k, again.stderr)
        assert runlab.state(lab) == night.clean
        runlab.assert_sound(lab)
        assert lab.raw_manifest() == raw
    raise AssertionError(f"still failing at write {max_k}")


def test_disk_full_at_every_write_of_ingest(tmp_path):
    failures = _sweep(Night(tmp_path, ("ingest",)), max_k=20)
    # the holder file, two staged parts, sessions.parquet, status.json
    assert failures >= 5


@pytest.mark.slow
def test_disk_full_at_every_write_of_nightly_without_the_report(tmp_path):
    _sweep(Night(tmp_path, ("nightly", "--settle-seconds", "0", "--no-report")), max_k=20)


@pytest.mark.slow
@pytest.mark.parametrize("k", [6, 9, 14, 20])
def test_disk_full_while_writing_the_report(tmp_path, k):
    """Writes 1-5 are the ingest's; later ones are figures, tables and index.html."""
    night = Night(tmp_path, ("nightly", "--settle-seconds", "0"))
    lab = night.copy("lab")
    failed = night.run(lab, env={"LABPIPE_FAIL_WRITE_AT": str(k)})
    assert failed.returncode == 4, failed.stderr
    assert "is full" in failed.stderr and "Traceback" not in failed.stderr
    assert runlab.state(lab) == night.clean  # the ingest before the report is whole
    assert not [p for p in lab.root.rglob("*.tmp")]
    again = night.run(lab)
    assert again.returncode == 0, again.stderr
    assert runlab.read_status(lab)["report"]["built"]
    runlab.assert_sound(lab)


# ---- a real full filesystem ------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _remount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def _umount(where: Path) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def test_a_really_full_disk_then_freed(tmp_path):
    from labpipe import demo

    lab_dir = tmp_path / "lab"
    demo.write_scaled_lab(lab_dir, n_files=60, seed=9)
    lab = Lab(lab_dir)
    ref_dir = tmp_path / "ref"
    shutil.copytree(lab_dir, ref_dir)
    ref = Lab(ref_dir)
    clean = runlab.run(ref, "ingest", "--workers", "1")
    assert clean.returncode == 0, clean.stderr
    used = sum(p.stat().st_size for p in ref.processed.rglob("*") if p.is_file())
    shutil.rmtree(lab.processed, ignore_errors=True)
    if not _mount_tmpfs(lab.processed, f"{max(64, used // 2 // 1024)}k"):
        # Not installable: a container without CAP_SYS_ADMIN cannot mount, even as root.
        pytest.skip("needs root allowed to `mount -t tmpfs` (ENOSPC injection covers the rest)")
    try:
        raw = lab.raw_manifest()
        full = runlab.run(lab, "ingest", "--workers", "1")
        assert full.returncode == 4, full.stdout + full.stderr
        assert "full" in full.stderr and "MB free" in full.stderr, full.stderr
        assert "Traceback" not in full.stderr
        con = sqlite3.connect(f"file:{lab.processed / 'catalog.sqlite'}?mode=ro", uri=True)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            con.close()
        _remount(lab.processed, "256m")
        again = runlab.run(lab, "ingest", "--workers", "1")
        assert again.returncode == 0, again.stderr
        assert runlab.state(lab) == runlab.state(ref)
        runlab.assert_sound(lab)
        assert lab.raw_manifest() == raw
    finally:
        _umount(lab.processed)


# ---- a file still being written --------------------------------------------------------

WRITER = """
import sys, time
path, chunks_dir, n, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with open(path, "ab", buffering=0) as out:
    for i in range(n):
        data = open(f"{chunks_dir}/{i}", "rb").read()
        half = len(data) // 2
        out.write(data[:half])   # a block cut in the middle, as a chamber flushing it
        time.sleep(pause / 2)
        out.write(data[half:])
        time.sleep(pause / 2)
"""


def test_a_file_being_written_is_pending_then_ingested_exactly_once(tmp_path):
    lab = runlab.small_lab(tmp_path / "lab", n_days=1)
    # The writer pauses 0.2 s between writes; the settle window is 15x that, so a loaded
    # CI machine that stalls the writer for a moment does not make a half file look settled.
    n_blocks = 12
    sessions = [
        session("R1", box=7, date=f"04/{i + 1:02d}/26", left=[1.0 + j for j in range(i + 3)])
        for i in range(n_blocks)
    ]
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    for i, s in enumerate(sessions):
        data = format_medpc([s], file_line=None if i else "C:\\MED-PC\\Data\\growing")
        (chunks / str(i)).write_bytes(data)
    growing = lab.raw / "growing.txt"
    growing.write_bytes(b"")
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(growing), str(chunks), str(n_blocks), "0.4"]
    )
    runs = 0
    try:
        while writer.poll() is None:
            done = runlab.run(lab, "ingest", "--settle-seconds", "3", "--workers", "1")
            runs += 1
            assert done.returncode in (0, 1), done.stderr
            assert "growing.txt" not in _ingested_paths(lab)
            status = _file_status(lab, "growing.txt")
            assert status in (None, "pending"), status  # pending, never set aside
    finally:
        writer.wait(timeout=60)
    assert runs >= 2
    time.sleep(3.1)
    done = runlab.run(lab, "ingest", "--settle-seconds", "3", "--workers", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _file_status(lab, "growing.txt") == "ingested"
    assert _sessions_from(lab, "growing.txt") == n_blocks
    again = runlab.run(lab, "ingest", "--settle-seconds", "3", "--workers", "1")
    assert again.returncode == 0 and "Sessions added: 0" in again.stdout
    assert _sessions_from(lab, "growing.txt") == n_blocks
    runlab.assert_sound(lab)


def test_a_file_that_changed_since_the_scan_is_not_read_as_it_was_seen(tmp_path):
    """fsio.read_unchanged: the bytes of the file as scanned, or None when it moved on."""
    path = tmp_path / "box1.txt"
    path.write_bytes(b"Start Date: 04/01/26\r\n")
    st = path.stat()
    assert read_unchanged(str(path), st.st_size, st.st_mtime_ns) == path.read_bytes()
    with open(path, "ab") as fh:  # the chamber appends the next line
        fh.write(b"End Date: 04/01/26\r\n")
    assert read_unchanged(str(path), st.st_size, st.st_mtime_ns) is None
    path.write_bytes(b"Start")  # cut short
    assert read_unchanged(str(path), st.st_size, st.st_mtime_ns) is None
    same_size = b"X" * st.st_size  # rewritten in place with as many bytes
    path.write_bytes(same_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert read_unchanged(str(path), st.st_size, st.st_mtime_ns) is None
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    st = empty.stat()
    assert read_unchanged(str(empty), 0, st.st_mtime_ns) == b""


def _query(lab: Lab, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(f"file:{lab.processed / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _ingested_paths(lab: Lab) -> set[str]:
    return {r[0] for r in _query(lab, "SELECT DISTINCT source_path FROM sessions")}


def _file_status(lab: Lab, path: str) -> str | None:
    rows = _query(lab, "SELECT status FROM files WHERE path = ?", path)
    return rows[0][0] if rows else None


def _sessions_from(lab: Lab, path: str) -> int:
    return _query(lab, "SELECT count(*) FROM sessions WHERE source_path = ?", path)[0][0]
