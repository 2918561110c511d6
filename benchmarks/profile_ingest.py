"""Where the time of a cold ingest goes: the committing process, and one worker's chunk.

Usage::

    .venv/bin/python benchmarks/profile_ingest.py            # the 100 000-file lab
    .venv/bin/python benchmarks/profile_ingest.py --quick    # the 10 000-file lab
    .venv/bin/python benchmarks/profile_ingest.py --quick --stages   # step costs only

The lab is the one ``benchmarks/run.py`` generates (``benchmarks/_data/lab100k`` or
``lab10k``; run that first). Two profiles are printed:

0. the CPU cost of each step a worker takes per file (process time, best of three);
1. the committing (main) process of ``ingest --workers 2`` on a fresh copy of the lab,
   under cProfile: time in its own work (scan, decisions, SQLite, fsync, the sessions
   table) versus waiting for the workers;
2. one worker chunk (4 000 files) processed in this process, under cProfile: reading,
   hashing, parsing, mapping and staging, per file.

cProfile adds its own overhead (calls are counted): read the shares, not the totals.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"


def _top(prof: cProfile.Profile, n: int, sort: str) -> str:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats(sort).print_stats(n)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return "\n".join(line[:150] for line in lines[start:] if line.strip())


def main_process(lab: Path) -> None:
    from labpipe import config, ingest

    work = Path(tempfile.mkdtemp(prefix="labpipe-prof-", dir=DATA))
    try:
        shutil.copytree(lab, work, dirs_exist_ok=True)
        cfg = config.load_config(work / "configs" / "experiment.toml")
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        summary = ingest.ingest(cfg, workers=2)
        prof.disable()
        wall = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = summary.files_read
    print(f"\n== Committing process of ingest --workers 2: {n} files, {wall:.1f} s ==")
    print("(the lock 'acquire' line is time spent waiting for the workers' results)")
    print(_top(prof, 25, "tottime"))


def one_chunk(lab: Path, n: int = 4000) -> None:
    from labpipe import config, ingest, worker

    cfg = config.load_config(lab / "configs" / "experiment.toml")
    todo = ingest._scan(lab / "data" / "raw")[:n]
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        (Path(tmp) / ".staging").mkdir()
        t = time.perf_counter()
        worker.process_chunk(cfg, tmp, todo)
        plain = time.perf_counter() - t
        prof = cProfile.Profile()
        prof.enable()
        worker.process_chunk(cfg, tmp, todo)
        prof.disable()
    print(
        f"\n== One worker chunk of {len(todo)} files: {plain:.2f} s without the profiler, "
        f"{plain / len(todo) * 1e3:.2f} ms a file =="
    )
    print(_top(prof, 30, "cumtime"))


def _cpu_ms(fn, n: int, repeat: int = 3) -> float:
    """Best process time of ``fn()`` over ``repeat`` runs, in ms per item of ``n``."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best / n * 1e3


def stages(lab: Path, n: int = 3000) -> None:
    """Print the CPU cost of each step of a worker, per file (CPU time: robust to load)."""
    import hashlib
    import os

    from labpipe import config, ingest, medpc, sessions, worker

    cfg = config.load_config(lab / "configs" / "experiment.toml")
    todo = ingest._scan(lab / "data" / "raw")[:n]
    blobs = [Path(t[0]).read_bytes() for t in todo]

    def read() -> None:
        for path, *_ in todo:
            with open(path, "rb") as fh:
                fh.read()
                os.fstat(fh.fileno())

    raws = [r for b in blobs for r in medpc.parse_medpc(b).sessions]
    idents = [sessions.identify(r) for r in raws]
    mapped = [
        sessions.map_session(r, cfg, source_file="x", identity=i)
        for r, i in zip(raws, idents, strict=True)
    ]
    rows = [
        ("open, read, fstat", read),
        ("sha256", lambda: [hashlib.sha256(b).hexdigest() for b in blobs]),
        ("parse_medpc", lambda: [medpc.parse_medpc(b) for b in blobs]),
        ("identify", lambda: [sessions.identify(r) for r in raws]),
        (
            "map_session",
            lambda: [
                sessions.map_session(r, cfg, source_file="x", identity=i)
                for r, i in zip(raws, idents, strict=True)
            ],
        ),
        ("record JSON", lambda: [worker._RECORD_JSON.encode(m.record) for m in mapped]),
        ("read_file (all of the above)", lambda: [worker.read_file(t, cfg) for t in todo]),
    ]
    print(f"\n== CPU per file of a worker's steps ({len(todo)} files, {len(raws)} sessions) ==")
    for label, fn in rows:
        print(f"  {label:30} {_cpu_ms(fn, len(todo)):7.4f} ms")
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        (Path(tmp) / ".staging").mkdir()
        chunk = _cpu_ms(lambda: worker.process_chunk(cfg, tmp, todo), len(todo), 1)
    print(f"  {'process_chunk (+ tables, staging)':30} {chunk:7.4f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 10 000-file lab")
    ap.add_argument("--stages", action="store_true", help="only the CPU cost of each step")
    args = ap.parse_args()
    lab = DATA / ("lab10k" if args.quick else "lab100k")
    if not (lab / "configs" / "experiment.toml").exists():
        raise SystemExit(f"{lab} is missing: run benchmarks/run.py first")
    stages(lab)
    if args.stages:
        return
    one_chunk(lab)
    main_process(lab)


if __name__ == "__main__":
    main()
