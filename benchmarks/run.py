"""labpipe benchmarks: parse speed, ingest throughput, nightly cost, report time.

One command regenerates the data (under benchmarks/_data/, git-ignored) and runs
everything, printing each figure beside the same work done by a plain-Python reference
reader (below) and, when installed (``pip install -e ".[bench]"``), neuroconv's MED-PC
reader, as ratios::

    .venv/bin/python benchmarks/run.py            # 10 000- and 100 000-file labs
    .venv/bin/python benchmarks/run.py --quick    # 10 000-file lab only

Timings are wall-clock on whatever else the machine is doing: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data"
CORPUS = Path("/work/shared/corpus/medpc")
LARGE_REAL = [
    CORPUS / "3c-lab__operant-data-pipeline" / "SF1_MedPC_example_txt",
    CORPUS / "Palmer-Lab-UCSD__pmedpc" / "test",
]


# ---- the reference reader ------------------------------------------------------------


def reference_read(data: bytes) -> list[dict[str, object]]:
    """A plain-Python line reader: header fields, scalars and arrays, no checks."""
    text = data.decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
    sessions: list[dict[str, object]] = []
    cur: dict[str, object] | None = None
    arr: list[float] | None = None
    for line in text.split("\n"):
        if not line.strip() or line.startswith("\\"):
            continue
        head, _, rest = line.partition(":")
        key = head.strip()
        if key == "Start Date":
            cur = {"Start Date": rest.strip()}
            sessions.append(cur)
            arr = None
        elif cur is None:
            continue
        elif len(key) == 1 and key.isalpha():
            if rest.strip():
                cur[key] = float(rest)
                arr = None
            else:
                arr = []
                cur[key] = arr
        elif key.isdigit() and arr is not None:
            arr.extend(map(float, rest.split()))
        else:
            cur[key] = rest.strip()
    return sessions


# ---- neuroconv's reader ----------------------------------------------------------------


def neuroconv_reader():
    """Return a function reading every session of a file with neuroconv, or None."""
    try:
        from neuroconv.datainterfaces.behavior.medpc import medpc_helpers as mh
    except ImportError:
        return None

    def read(path: Path, arrays: dict[str, bool]) -> int:
        # neuroconv reads one session per call, found by its Start Date and Start Time.
        info = {k: {"name": k, "is_array": v} for k, v in arrays.items()}
        found = mh._get_medpc_variables(path, ["Start Date", "Start Time"])
        n = 0
        for d, t in zip(found["Start Date"], found["Start Time"], strict=True):
            mh._read_medpc_file(path, info, {"Start Date": d, "Start Time": t}, "Start Date")
            n += 1
        return n

    return read


# ---- data -----------------------------------------------------------------------------


def make_data(quick: bool) -> dict[str, Path]:
    from labpipe import demo
    from labpipe.medpc import format_medpc
    from labpipe.model import RawSession

    DATA.mkdir(exist_ok=True)
    out: dict[str, Path] = {}
    rng = np.random.default_rng(1)

    def session(i: int, n_slots: int) -> RawSession:
        times = np.zeros(n_slots)
        k = min(n_slots, 40_000)
        times[:k] = np.sort(np.round(rng.uniform(0, 40000, k), 2))
        return RawSession(
            header={
                "Start Date": "11/02/23",
                "End Date": "11/03/23",
                "Subject": f"M{i}",
                "Experiment": "0",
                "Group": "0",
                "Box": str(i + 1),
                "Start Time": "15:28:23",
                "End Time": "03:38:59",
                "MSN": "OXYGWAS 12h",
            },
            variables={"A": 0.0, "B": float(k), "H": times, "L": np.zeros(11)},
            block=i,
            line=1,
        )

    big = DATA / "multibox_4MB.txt"
    if not big.exists():
        big.write_bytes(format_medpc([session(i, 100_001) for i in range(3)], file_line="X"))
    out["multibox"] = big
    for n in (1, 256):
        p = DATA / f"sessions_{n}.txt"
        if not p.exists():
            p.write_bytes(format_medpc([session(i, 200) for i in range(n)], file_line="X"))
        out[f"s{n}"] = p
    sizes = [10_000] if quick else [10_000, 100_000]
    for n in sizes:
        lab = DATA / f"lab{n // 1000}k"
        if not (lab / "configs" / "experiment.toml").exists():
            shutil.rmtree(lab, ignore_errors=True)
            demo.write_scaled_lab(lab, n_files=n, seed=1)
        out[f"lab{n}"] = lab
    return out


# ---- measurements ---------------------------------------------------------------------


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def ratio(a: float, b: float | None) -> str:
    return "n/a" if not b else f"{a / b:5.1f}x"


def parse_speed(files: list[Path], nc) -> None:
    from labpipe import medpc

    print("\n== Parsing large files, one process (MB/s; ratio = labpipe / other) ==")
    print(f"{'file':28} {'MB':>6} {'labpipe':>9} {'reference':>10} {'neuroconv':>10}  ratios")
    for p in files:
        data = p.read_bytes()
        mb = len(data) / 1e6
        parsed = medpc.parse_medpc(data)
        lp = mb / best_of(lambda d=data: medpc.parse_medpc(d))
        ref = mb / best_of(lambda d=data: reference_read(d))
        ncs = None
        if nc is not None:
            arrays = {
                k: hasattr(v, "size") for s in parsed.sessions for k, v in s.variables.items()
            }
            try:
                ncs = mb / best_of(lambda p=p, a=arrays: nc(p, a), repeat=1)
            except (UnicodeDecodeError, ValueError) as exc:
                print(f"  neuroconv failed on {p.name}: {type(exc).__name__}")
        print(
            f"{p.name[:28]:28} {mb:6.2f} {lp:9.1f} {ref:10.1f} {ncs or 0:10.1f}  "
            f"vs ref {ratio(lp, ref)}, vs neuroconv {ratio(lp, ncs)}"
        )


def linearity(s1: Path, s256: Path, nc) -> None:
    from labpipe import medpc

    print("\n== Linearity: cost of a 256-session file / 256 x a 1-session file ==")
    for name, fn in (
        ("labpipe", lambda p: medpc.parse_medpc(p.read_bytes())),
        ("reference", lambda p: reference_read(p.read_bytes())),
    ):
        one = best_of(lambda f=fn: f(s1), 20)
        many = best_of(lambda f=fn: f(s256), 3)
        print(f"  {name:10} {many / (256 * one):5.2f} (1.0 = linear)")
    if nc is not None:
        arrays = {"A": False, "B": False, "H": True, "L": True}
        one = best_of(lambda: nc(s1, arrays), 5)
        many = best_of(lambda: nc(s256, arrays), 1)
        print(f"  {'neuroconv':10} {many / (256 * one):5.2f} (1.0 = linear)")


def small_files(lab: Path, nc, n: int = 3000) -> None:
    from labpipe import medpc

    files = sorted(p for p in (lab / "data" / "raw").rglob("*") if p.is_file())[:n]
    blobs = [(p, p.read_bytes()) for p in files]
    print(f"\n== Parsing {len(files)} small per-session files, one process (files/s) ==")
    lp = len(blobs) / best_of(lambda: [medpc.parse_medpc(d) for _, d in blobs], 1)
    ref = len(blobs) / best_of(lambda: [reference_read(d) for _, d in blobs], 1)
    line = f"  labpipe {lp:7.0f}   reference {ref:7.0f} ({ratio(lp, ref)})"
    if nc is not None:
        arrays = {"A": False, "B": False, "C": False, "D": False, "E": True}
        arrays |= {"I": True, "L": True, "R": True}
        # neuroconv reads UTF-8 only: files with a cp1252 byte (MED-PC's code page) fail.
        sub = [p for p, d in blobs[:1500] if _utf8(d)][:500]
        ncs = len(sub) / best_of(lambda: [nc(p, arrays) for p in sub], 1)
        line += f"   neuroconv {ncs:7.0f} ({ratio(lp, ncs)})"
    print(line)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def ingest_child(lab: str, workers: int) -> None:
    """Run one ingest and print a JSON line (run in a fresh process)."""
    from labpipe import config, ingest

    cfg = config.load_config(Path(lab) / "configs" / "experiment.toml")
    t = time.perf_counter()
    s = ingest.ingest(cfg, workers=workers)
    dt = time.perf_counter() - t
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "seconds": dt,
                "cpu_main_s": me.ru_utime + me.ru_stime,
                "cpu_workers_s": kids.ru_utime + kids.ru_stime,
                "files_read": s.files_read,
                "files_seen": s.files_seen,
                "sessions_added": s.sessions_added,
                "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def run_ingest(lab: Path, workers: int = 2) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--ingest-child", str(lab), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_ingest(lab: Path) -> float:
    """Reference: read + sha256 + reference_read of every file, 2 processes, no outputs."""
    import hashlib
    from concurrent.futures import ProcessPoolExecutor

    files = sorted(str(p) for p in (lab / "data" / "raw").rglob("*") if p.is_file())
    t = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_ref_one, files, chunksize=512))
    _ = hashlib
    return len(files) / (time.perf_counter() - t)


def _ref_one(path: str) -> int:
    import hashlib

    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    return len(reference_read(data))


def ingest_bench(lab: Path, label: str) -> None:
    work = DATA / f"work_{label}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(lab, work)
    print(f"\n== Cold ingest --workers 2 of the {label} lab ==")
    r = run_ingest(work)
    fps = r["files_read"] / r["seconds"]
    ref = reference_ingest(work)
    print(
        f"  labpipe {r['seconds']:6.1f} s = {fps:6.0f} files/s, {r['sessions_added']} sessions; "
        f"peak RSS main {r['rss_main_mb']:.0f} MB, largest worker {r['rss_worker_mb']:.0f} MB"
    )
    print(
        f"  CPU: committing process {r['cpu_main_s']:.1f} s (imports included), "
        f"workers {r['cpu_workers_s']:.1f} s = {r['cpu_workers_s'] / r['files_read'] * 1e3:.2f}"
        " ms a file"
    )
    print(f"  reference (read + sha256 + parse only, 2 processes) {ref:6.0f} files/s")
    # Nightly: one new file on this history.
    raw = work / "data" / "raw"
    src = sorted(p for p in raw.rglob("*") if p.is_file())[-1]
    new = raw / "ZZ-new" / "one new session"
    new.parent.mkdir(exist_ok=True)
    # The same session in box 9<n>: a new identity and slot, so it is stored.
    new.write_bytes(src.read_bytes().replace(b"Box: ", b"Box: 9", 1))
    r2 = run_ingest(work)
    print(
        f"  nightly with 1 new file: {r2['seconds']:.2f} s, files read {r2['files_read']}, "
        f"sessions added {r2['sessions_added']} (of {r2['files_seen']} files seen)"
    )
    r3 = run_ingest(work)
    print(f"  nightly with nothing new: {r3['seconds']:.2f} s, files read {r3['files_read']}")


def report_bench(lab: Path) -> None:
    from labpipe import config, pipeline

    work = DATA / "work_10k"
    cfg = config.load_config(work / "configs" / "experiment.toml")
    print("\n== report on the 10 000-file lab ==")
    t = time.perf_counter()
    pipeline.build_report(cfg)
    print(f"  build_report: {time.perf_counter() - t:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 000-file lab only")
    ap.add_argument("--no-report", action="store_true", help="skip the report timing")
    ap.add_argument("--ingest-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ingest_child:
        ingest_child(args.ingest_child[0], int(args.ingest_child[1]))
        return
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    data = make_data(args.quick)
    nc = neuroconv_reader()
    if nc is None:
        print('neuroconv not installed (pip install -e ".[bench]"): its column is empty')
    parse_speed([p for p in LARGE_REAL if p.exists()] + [data["multibox"]], nc)
    linearity(data["s1"], data["s256"], nc)
    small_files(data["lab10000"], nc)
    ingest_bench(data["lab10000"], "10k")
    if not args.quick:
        ingest_bench(data["lab100000"], "100k")
    if not args.no_report:
        report_bench(data["lab10000"])


if __name__ == "__main__":
    main()
