"""labpipe nightly / verify / rebuild as real processes: the run lock, status.json, damage
found by name and repaired byte for byte, crash-safe rebuild, hostile names, permissions,
and the raw-folder audit hook itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runlab
from labpipe import nightly
from labpipe.errors import LockedError

from labfolder import Lab, session

# ---- the run lock ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lab, runlab.State, int]:
    """A small lab and the state a single clean nightly run gives it."""
    root = tmp_path_factory.mktemp("nightly")
    lab = runlab.small_lab(root / "template", n_days=4, bad=True)
    ref = runlab.copy_lab(lab, root / "ref")
    done = runlab.nightly(ref, "--no-report")
    assert done.returncode == 1, done.stderr
    return lab, runlab.state(ref), done.returncode


def ingested(template, root: Path) -> Lab:
    """A copy of the template lab after its first nightly run (outputs included)."""
    ref = template[0].root.parent / "ref"
    shutil.copytree(ref, root)
    return Lab(root, dict(template[0].written))


def test_a_second_run_exits_3_at_once_naming_the_holder(template, tmp_path):
    lab = runlab.copy_lab(template[0], tmp_path / "lab")
    with nightly.locked(lab.processed, command="nightly", run_id="holder"):
        before = sorted(p.name for p in lab.processed.iterdir())
        t0 = time.monotonic()
        refused = runlab.nightly(lab)
        elapsed = time.monotonic() - t0
        assert refused.returncode == 3, refused.stderr
        assert f"pid {os.getpid()}" in refused.stderr
        assert "started 20" in refused.stderr and "Nothing was changed" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert elapsed < 15  # at once: no waiting for the lock (interpreter start included)
        # Nothing changed but the log, which records the refusal.
        assert sorted(p.name for p in lab.processed.iterdir() if p.name != "logs") == before
        assert '"lock.busy"' in (lab.processed / "logs" / "labpipe.log").read_text()
        assert not (lab.processed / "status.json").exists()
        for cmd in ("rebuild", "verify"):
            assert runlab.run(lab, cmd).returncode == 3
    # Released: the next run works.
    assert runlab.nightly(lab, "--no-report").returncode == template[2]
    assert runlab.state(lab) == template[1]


def test_the_lock_refuses_in_process_too(tmp_path):
    processed = tmp_path / "data" / "processed"
    with nightly.locked(processed, command="ingest", run_id="a"):
        holder = nightly.read_holder(processed)
        assert holder is not None and holder.pid == os.getpid() and holder.command == "ingest"
        second = nightly.locked(processed, command="nightly")
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"), second:
            pass
    with nightly.locked(processed, command="nightly"):
        pass


def _pair(template, root: Path) -> tuple[list[int], Lab, list[str]]:
    lab = runlab.copy_lab(template[0], root)
    procs = [runlab.start(lab, "nightly", "--settle-seconds", "0", "--no-report") for _ in "ab"]
    outs = [p.communicate(timeout=runlab.TIMEOUT) for p in procs]
    return [p.returncode for p in procs], lab, [e for _, e in outs]


def _two_at_once(template, tmp_path: Path, times: int) -> int:
    overlapped = 0
    for i in range(times):
        codes, lab, errs = _pair(template, tmp_path / f"pair{i}")
        if 3 in codes:
            overlapped += 1
            assert sorted(codes) == [template[2], 3], errs
            assert "pid " in errs[codes.index(3)] and "started" in errs[codes.index(3)]
        else:  # one finished before the other started: both must agree
            assert codes == [template[2]] * 2, errs
        assert runlab.state(lab) == template[1]
        runlab.assert_sound(lab)
    return overlapped


def test_two_runs_started_together(template, tmp_path):
    overlapped = _two_at_once(template, tmp_path, times=3)
    assert overlapped >= 1, "the two runs never overlapped: the test has no teeth"


@pytest.mark.slow
def test_two_runs_started_together_many_times(template, tmp_path):
    overlapped = _two_at_once(template, tmp_path, times=30)
    assert overlapped >= 10


def test_after_kill_9_of_the_holder_the_next_run_gets_the_lock(tmp_path):
    """The holder parses with a worker pool (>= 64 files); its workers outlive the kill."""
    from labpipe import demo

    lab_dir = tmp_path / "lab"
    demo.write_scaled_lab(lab_dir, n_files=120, seed=5)
    lab = Lab(lab_dir)
    ref_dir = tmp_path / "ref"
    shutil.copytree(lab_dir, ref_dir)
    ref = Lab(ref_dir)
    clean = runlab.nightly(ref, "--no-report", "--workers", "2")
    holder = subprocess.Popen(
        runlab.command(lab, "nightly", "--settle-seconds", "0", "--no-report", "--workers", "2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=runlab.env_for(),
        start_new_session=True,
    )
    try:
        info = lab.processed / ".labpipe.lock.info"
        assert runlab.wait_for(lambda: f'"pid": {holder.pid},' in _read(info), timeout=60)
        assert runlab.wait_for(lambda: len(runlab.children_of(holder.pid)) >= 2, timeout=60)
        workers = runlab.children_of(holder.pid)
        os.kill(holder.pid, signal.SIGKILL)  # the holder only: its workers are orphaned
        holder.wait(timeout=120)
        assert holder.returncode == -signal.SIGKILL
        t0 = time.monotonic()
        nxt = runlab.nightly(lab, "--no-report", "--workers", "2")
        assert nxt.returncode == clean.returncode, nxt.stderr
        assert time.monotonic() - t0 < 60
        assert runlab.state(lab) == runlab.state(ref)
        runlab.assert_sound(lab)
        # The killed run's pool workers do not linger.
        assert runlab.wait_for(lambda: not any(_alive(w) for w in workers), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


# ---- status file -----------------------------------------------------------------------


def test_status_json_says_what_the_run_did(template, tmp_path):
    lab = runlab.copy_lab(template[0], tmp_path / "lab")
    first = runlab.nightly(lab, "--no-report")
    assert first.returncode == 1
    st = runlab.read_status(lab)
    assert st["command"] == "nightly" and st["exit_code"] == 1
    assert st["outcome"] == "input_set_aside"
    assert st["counts"]["sessions_added"] == st["counts"]["sessions_total"] == 12
    assert [a["file"] for a in st["set_aside"]] == ["broken/empty.txt"]
    assert st["set_aside"][0]["reason_code"] == "EMPTY_FILE"
    assert st["last_success"] == st["finished"]
    assert isinstance(st["ready_for_test"], list) and st["ready_for_test_note"]
    for key in ("run_id", "started", "duration_s", "free_disk_bytes", "labpipe_version"):
        assert st[key] is not None
    assert st["report"]["built"] is False
    # A failed run keeps the last success and says what failed.
    lab.config.write_text(lab.config.read_text() + "\n[unknown_table]\n", encoding="utf-8")
    bad = runlab.nightly(lab)
    assert bad.returncode == 2  # config error: before the lock, no status written
    assert runlab.read_status(lab)["run_id"] == st["run_id"]


def test_status_json_records_an_environment_failure(template, tmp_path):
    lab = runlab.copy_lab(template[0], tmp_path / "lab")
    assert runlab.nightly(lab, "--no-report").returncode == 1
    last = runlab.read_status(lab)["last_success"]
    lab.add("late.txt", [session("R1", date="03/09/26", left=[1.0])])
    # write 1 is the holder file, write 2 the staged events part
    failed = runlab.nightly(lab, "--no-report", env={"LABPIPE_FAIL_WRITE_AT": "2"})
    assert failed.returncode == 4, failed.stderr
    st = runlab.read_status(lab)
    assert st["exit_code"] == 4 and st["outcome"] == "environment_failure"
    assert "full" in st["error"] and st["last_success"] == last


def test_logs_are_json_lines_with_run_ids(template, tmp_path):
    lab = runlab.copy_lab(template[0], tmp_path / "lab")
    runlab.nightly(lab, "--no-report")
    runlab.run(lab, "verify")
    lines = (lab.processed / "logs" / "labpipe.log").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    events = {r.get("event") for r in records}
    assert {"nightly.start", "lock.acquired", "nightly.done"} <= events
    assert all(r.get("run_id") for r in records)
    assert len({r["run_id"] for r in records}) >= 2


# ---- verify and rebuild ----------------------------------------------------------------


def _flip_bit(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(1, len(data) - 1)])


def _zero(path: Path, rng: random.Random) -> None:
    path.write_bytes(b"")


DAMAGE = {"bit flip": _flip_bit, "truncation": _truncate, "zero length": _zero}


@pytest.mark.parametrize(
    "kinds",
    [("bit flip", "truncation"), ("zero length", "bit flip"), ("truncation", "zero length")],
)
def test_verify_names_every_damaged_part_and_rebuild_restores_it(template, tmp_path, kinds):
    lab = ingested(template, tmp_path / "lab")
    original = runlab.state(lab)
    assert original == template[1]
    rng = random.Random(str(kinds))
    parts = sorted(original.parts)  # events/..., variables/...
    for name, kind in zip(parts, kinds, strict=True):
        DAMAGE[kind](lab.processed / name, rng)
    found = runlab.run(lab, "verify")
    assert found.returncode == 1
    for name in parts:
        assert f"DAMAGED  {name}" in found.stdout
    assert found.stdout.count("DAMAGED") == len(parts)
    fixed = runlab.run(lab, "rebuild")
    assert fixed.returncode == template[2], fixed.stderr
    assert runlab.state(lab) == original  # byte-identical parts and sessions.parquet
    runlab.assert_sound(lab)
    assert runlab.run(lab, "verify").returncode == 0


def test_verify_finds_a_damaged_sessions_table_and_catalog(template, tmp_path):
    lab = ingested(template, tmp_path / "lab")
    original = runlab.state(lab)
    _flip_bit(lab.processed / "sessions.parquet", random.Random(3))
    found = runlab.run(lab, "verify")
    assert found.returncode == 1 and "DAMAGED  sessions.parquet" in found.stdout
    (lab.processed / "catalog.sqlite").unlink()
    found = runlab.run(lab, "verify")
    assert found.returncode == 1 and "DAMAGED  catalog.sqlite: missing" in found.stdout
    assert runlab.run(lab, "rebuild").returncode == template[2]
    assert runlab.state(lab) == original
    runlab.assert_sound(lab)


def test_a_stray_part_in_a_table_folder_is_named(template, tmp_path):
    lab = ingested(template, tmp_path / "lab")
    sound = runlab.run(lab, "verify")
    assert sound.returncode == 0, sound.stdout + sound.stderr
    assert "are sound" in sound.stdout
    part = next((lab.processed / "events").glob("*.parquet"))
    shutil.copyfile(part, part.with_name("part-0000000000000000.parquet"))
    found = runlab.run(lab, "verify")
    assert found.returncode == 1
    assert "events/part-0000000000000000.parquet: not in the catalog" in found.stdout


def test_rebuild_after_several_nights_gives_the_same_rows(tmp_path):
    """Parts of several nights are regrouped by a rebuild; their rows are the same."""
    from labpipe import store

    lab = runlab.small_lab(tmp_path / "lab", n_days=2)
    runlab.nightly(lab, "--no-report")
    runlab.add_days(lab, range(2, 4))
    runlab.nightly(lab, "--no-report")
    before = runlab.state(lab)
    variables = store.read_variables(lab.processed)
    assert runlab.run(lab, "rebuild").returncode == 0
    after = runlab.state(lab)
    assert after.session_ids == before.session_ids
    assert after.events == before.events
    assert after.sessions_sha == before.sessions_sha
    assert store.read_variables(lab.processed).equals(variables)
    runlab.assert_sound(lab)


REBUILD_STEPS = [
    ("in_txn:1", {}),
    pytest.param("rebuild_built:1", {}, marks=pytest.mark.slow),
    ("after_swap:1", {}),
    pytest.param("mid_status:1", {}, marks=pytest.mark.slow),
    ("mid_swap:1", {"LABPIPE_REBUILD_NO_EXCHANGE": "1"}),
]


@pytest.mark.parametrize(("crash", "extra"), REBUILD_STEPS)
def test_a_killed_rebuild_leaves_a_usable_lab_folder(template, tmp_path, crash, extra):
    from labpipe import store

    lab = ingested(template, tmp_path / "lab")
    original = runlab.state(lab)
    killed = runlab.run(lab, "rebuild", env={"LABPIPE_CRASH_AT": crash, **extra})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if not extra:
        # Usable at once, before any repair: a reader sees a whole state, old or new.
        # (Without the atomic exchange, data/processed is missing between the two renames
        # until the next labpipe command puts the complete new state in place.)
        assert len(store.read_sessions(lab.processed)) == len(original.session_ids)
        assert runlab.state(lab) == original
    assert runlab.run(lab, "verify").returncode == 0
    assert runlab.state(lab) == original
    again = runlab.run(lab, "rebuild", env=extra)
    assert again.returncode == template[2], again.stderr
    assert runlab.state(lab) == original
    runlab.assert_sound(lab)
    assert (lab.processed / "logs" / "labpipe.log").exists()


@pytest.mark.slow
def test_every_bit_flip_is_caught_by_the_part_check(template, tmp_path):
    from labpipe import store

    lab = runlab.copy_lab(template[0], tmp_path / "lab")
    runlab.nightly(lab, "--no-report")
    rng = random.Random(7)
    caught = 0
    for name, digest in runlab.state(lab).parts.items():
        good = (lab.processed / name).read_bytes()
        for _ in range(150):
            probe = tmp_path / "probe.parquet"
            probe.write_bytes(good)
            _flip_bit(probe, rng)
            caught += store.check_part(probe, digest) is not None
    assert caught == 300


# ---- hostile names and text ------------------------------------------------------------

HOSTILE_NAMES = [
    "CON",
    "aux.txt",
    "NUL.txt",
    '=HYPERLINK("http:evil").txt',
    "<script>alert(1)<\\script>.txt",
    "a\nb.txt",
    " leading space.txt",
    "trailing dot.",
    "$(touch pwned).txt",
    "`id`.txt",
    "-rf",
    "%s%n%x.txt",
    "ünïcødé ☃.txt",
    "x" * 200,
]

HOSTILE_TEXT = [
    "../../../../tmp/labpipe-evil",
    "/etc/passwd",
    "..",
    "CON",
    "<script>alert(1)</script>",
    '"><svg onload=alert(1)>',
    '=HYPERLINK("http://evil")',
    "+1",
    "@SUM(1)",
]


def test_hostile_file_names_and_header_text_are_data_never_paths(tmp_path):
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    lab = runlab.small_lab(tmp_path / "lab", n_days=1)
    for i, name in enumerate(HOSTILE_NAMES):
        folder = "weird ... dir" if i % 2 else "$dir `x`"
        lab.add(f"{folder}/{name}", [session("R1", box=4, date=f"04/{i + 1:02d}/26", left=[1.0])])
    for i, text in enumerate(HOSTILE_TEXT):
        s = session(text, box=5, date=f"05/{i + 1:02d}/26", left=[2.0])
        s.header["Experiment"] = text
        s.header["Group"] = text
        lab.add(f"hostile_{i}.txt", [s])
    done = runlab.nightly(lab, "--no-report")
    assert done.returncode == 1, done.stderr  # unknown subjects are set aside
    assert "Traceback" not in done.stderr
    st = runlab.read_status(lab)
    aside = {a["file"]: a for a in st["set_aside"]}
    for i in range(len(HOSTILE_TEXT)):
        assert aside[f"hostile_{i}.txt"]["reason_code"] == "UNKNOWN_SUBJECT"
    stored = runlab.state(lab).files
    for i, name in enumerate(HOSTILE_NAMES):
        folder = "weird ... dir" if i % 2 else "$dir `x`"
        assert stored[f"{folder}/{name}"] == "ingested"
    # Nothing was written outside the lab folder, and inside it only where labpipe writes.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*outside_before, "lab"])
    assert not Path("/tmp/labpipe-evil").exists()
    allowed = ("configs/", "data/raw/", "data/processed/", "reports/")
    for path in lab.root.rglob("*"):
        rel = path.relative_to(lab.root).as_posix()
        assert path.resolve().is_relative_to(lab.root.resolve())
        assert rel in (
            "configs",
            "data",
            "data/raw",
            "data/processed",
            "reports",
        ) or rel.startswith(allowed), rel
    for path in lab.processed.rglob("*"):
        rel = path.relative_to(lab.processed).as_posix()
        top = rel.split("/")[0]
        assert top in {
            ".labpipe.lock",
            ".labpipe.lock.info",
            ".staging",
            "catalog.sqlite",
            "catalog.sqlite-wal",
            "catalog.sqlite-shm",
            "events",
            "variables",
            "sessions.parquet",
            "status.json",
            "logs",
        }, rel
        if top in ("events", "variables") and path.is_file():
            assert path.name.startswith("part-") and path.suffix == ".parquet"


# ---- permissions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode", "report"),
    [
        (0o022, 0o644, 0o755, False),
        (0o002, 0o664, 0o775, False),
        pytest.param(0o022, 0o644, 0o755, True, marks=pytest.mark.slow),
    ],
)
def test_outputs_honour_the_umask(tmp_path, umask, file_mode, dir_mode, report):
    lab = runlab.small_lab(tmp_path / "lab", n_days=2)
    args = () if report else ("--no-report",)  # the report is slow to build
    assert runlab.nightly(lab, *args, umask=umask).returncode == 0
    if umask == 0o022:
        assert runlab.run(lab, "rebuild", umask=umask).returncode == 0
    checked = 0
    for top in (lab.processed, lab.root / "reports"):
        if not top.exists():
            continue
        for path in [top, *top.rglob("*")]:
            mode = path.stat().st_mode & 0o777
            if path.is_dir():
                if path != top:
                    assert mode == dir_mode, (path, oct(mode))
            else:
                assert mode == file_mode, (path, oct(mode))
                checked += 1
    assert checked >= 8


# ---- the audit hook has teeth ----------------------------------------------------------


def test_the_raw_audit_hook_catches_labpipe_writing_a_raw_file(tmp_path):
    raw = tmp_path / "lab" / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "f.txt").write_bytes(b"x")
    log = tmp_path / "audit.jsonl"
    code = (
        "from pathlib import Path\n"
        "from labpipe import fsio\n"
        f"p = Path({str(raw / 'f.txt')!r})\n"
        "fsio.write_text(p, 'changed')\n"  # open(x) + os.replace, from labpipe code
        "open(p, 'rb').read()\n"  # a read is fine
        "open(p, 'ab').close()\n"  # not labpipe's call: test set-up
    )
    env = runlab.env_for({"LABPIPE_RAW_AUDIT": str(log)})
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(Path(__file__).parent / "rawaudit"))
    import labpipe_rawaudit

    found = labpipe_rawaudit.read_log(str(log))
    assert {f["event"] for f in found} == {"open", "os.rename"}
    assert all("labpipe" in f["where"] and "fsio.py" in f["where"] for f in found)
