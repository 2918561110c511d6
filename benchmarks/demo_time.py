"""Time `labpipe demo` (write the synthetic experiment, ingest, report) stage by stage.

Usage::

    .venv/bin/python benchmarks/demo_time.py [--repeat 3]

Prints the wall time of each stage and of the whole demo, best of ``--repeat`` runs, in a
fresh temporary lab folder each time. The target (issue: figure-ready reports) is "well
under a minute" on the 2-core reference machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from labpipe import pipeline
from labpipe.config import load_config
from labpipe.demo import write_demo
from labpipe.ingest import ingest


def run_once(root: Path) -> dict[str, float]:
    """Run the demo's three stages in ``root`` and return their wall times in seconds."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    write_demo(root)
    times["write raw files"] = time.perf_counter() - t0
    cfg = load_config(root / "configs" / "experiment.toml")
    t1 = time.perf_counter()
    ingest(cfg)
    times["ingest"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    pipeline.build_report(cfg)
    times["report"] = time.perf_counter() - t2
    times["total"] = time.perf_counter() - t0
    return times


def main() -> None:
    """Parse arguments, run the demo, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_once(Path(tmp) / "lab"))
    print(f"labpipe demo, best of {args.repeat} runs (seconds):")
    for stage in runs[0]:
        best = min(r[stage] for r in runs)
        print(f"  {stage:<16} {best:7.2f}")
    total = min(r["total"] for r in runs)
    print(f"  target: well under 60 s -> {'met' if total < 45 else 'NOT met'}")


if __name__ == "__main__":
    main()
