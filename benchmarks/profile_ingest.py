"""Where the time of a cold ingest goes: the committing process, and one worker's chunk.

Usage::

    .venv/bin/python benchmarks/profile_ingest.py            # the 100 000-file lab
    .venv/bin/python benchmarks/profile_ingest.py --quick    # the 10 000-file lab

The lab is the one ``benchmarks/run.py`` generates (``benchmarks/_data/lab100k`` or
``lab10k``; run that first). Two profiles are printed:

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 10 000-file lab")
    args = ap.parse_args()
    lab = DATA / ("lab10k" if args.quick else "lab100k")
    if not (lab / "configs" / "experiment.toml").exists():
        raise SystemExit(f"{lab} is missing: run benchmarks/run.py first")
    one_chunk(lab)
    main_process(lab)


if __name__ == "__main__":
    main()
