"""Build small lab folders with real MED-PC files for ingest tests."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
from click.testing import CliRunner

from labpipe.cli import main
from labpipe.medpc import format_medpc
from labpipe.model import RawSession

CONFIG = """\
experiment = "test-exp"
roster = "roster.csv"
timezone = "America/New_York"

[drug]
name = "cocaine"
dose_mg_per_kg = 0.5

[levers.left]
count = "A"
times = "L"
[levers.right]
count = "B"
times = "R"
[reinforcers]
count = "C"
times = "I"
[timeout_presses]
count = "D"

[events]
array = "E"
tick_seconds = 0.01
codes = { "1" = "left_press", "2" = "right_press", "3" = "reinforcer", "4" = "cue_on", \
"5" = "timeout_press" }

[[phases]]
msn = "SA_FR1_.*"
phase = "acquisition"
[[phases]]
msn = "EXT_.*"
phase = "extinction"
[[phases]]
msn = "REIN_CUE.*"
phase = "reinstatement"
test = "cue"
"""

ROSTER = """\
subject,sex,group,active_lever,cohort
R1,F,vehicle,left,C1
R2,M,vehicle,right,C1
R3,F,nac,right,C1
"""


@dataclass
class Lab:
    """A lab folder under a tmp path, with helpers to add raw files."""

    root: Path
    written: dict[str, bytes] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.root / "configs" / "experiment.toml"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    def add(self, name: str, sessions: list[RawSession], **kw: object) -> Path:
        data = format_medpc(sessions, **kw)  # type: ignore[arg-type]
        return self.add_bytes(name, data)

    def add_bytes(self, name: str, data: bytes) -> Path:
        path = self.raw / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.written[name] = data
        return path

    def raw_manifest(self) -> dict[str, tuple[int, int, str]]:
        out = {}
        for p in sorted(self.raw.rglob("*")):
            if p.is_file():
                st = p.stat()
                out[p.relative_to(self.raw).as_posix()] = (
                    st.st_size,
                    st.st_mtime_ns,
                    hashlib.sha256(p.read_bytes()).hexdigest(),
                )
        return out

    def catalog_rows(self) -> dict[str, list[tuple]]:
        """Every decision the catalog holds (files, sessions, parts, set-aside blocks,
        duplicates), without run ids and times: equal for two runs that decided alike."""
        con = sqlite3.connect(f"file:{self.processed / 'catalog.sqlite'}?mode=ro", uri=True)
        try:
            return {
                "files": con.execute(
                    "SELECT path, size, sha256, status, reason_code, reason, duplicate_of,"
                    " n_sessions FROM files ORDER BY path"
                ).fetchall(),
                "sessions": con.execute(
                    "SELECT session_id, identity, slot, fingerprint, source_path, source_block,"
                    " subject, record, part FROM sessions ORDER BY session_id"
                ).fetchall(),
                "parts": con.execute(
                    "SELECT name, sha256, n_rows FROM parts ORDER BY name"
                ).fetchall(),
                "set_aside": con.execute("SELECT * FROM set_aside ORDER BY path, block").fetchall(),
                "duplicates": con.execute(
                    "SELECT * FROM duplicates ORDER BY path, block"
                ).fetchall(),
            }
        finally:
            con.close()

    def outputs(self) -> dict[str, tuple[int, str]]:
        """mtime_ns and sha256 of every parquet output."""
        out = {}
        for p in sorted(self.processed.rglob("*.parquet")):
            out[p.relative_to(self.processed).as_posix()] = (
                p.stat().st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
        return out


def make_lab(root: Path, *, config: str = CONFIG, roster: str = ROSTER) -> Lab:
    (root / "configs").mkdir(parents=True)
    (root / "data" / "raw").mkdir(parents=True)
    (root / "configs" / "experiment.toml").write_text(config, encoding="utf-8")
    (root / "configs" / "roster.csv").write_text(roster, encoding="utf-8")
    return Lab(root)


def session(
    subject: str = "R1",
    *,
    box: int = 1,
    date: str = "03/02/26",
    start: str = "09:00:00",
    end: str = "11:00:00",
    end_date: str | None = None,
    msn: str = "SA_FR1_2h",
    left: list[float] | None = None,
    right: list[float] | None = None,
    infusions: list[float] | None = None,
    timeout: int = 0,
    pad: int = 10,
    block: int = 0,
) -> RawSession:
    """A session in the SA/EXT program layout: A/B/C/D counts, L/R/I time arrays."""
    left = [] if left is None else left
    right = [] if right is None else right
    infusions = [] if infusions is None else infusions

    def arr(values: list[float]) -> np.ndarray:
        return np.array(values + [0.0] * pad, dtype=np.float64)

    header = {
        "Start Date": date,
        "End Date": end_date or date,
        "Subject": subject,
        "Experiment": "test",
        "Group": "1",
        "Box": str(box),
        "Start Time": start,
        "End Time": end,
        "MSN": msn,
    }
    variables = {
        "A": float(len(left)),
        "B": float(len(right)),
        "C": float(len(infusions)),
        "D": float(timeout),
        "I": arr(infusions),
        "L": arr(left),
        "R": arr(right),
    }
    return RawSession(header=header, variables=variables, block=block)


def event_session(
    subject: str = "R1",
    *,
    box: int = 1,
    date: str = "03/20/26",
    start: str = "09:00:00",
    end: str = "11:00:00",
    msn: str = "REIN_CUE_2h",
    events: list[tuple[int, int]] | None = None,
    counts: bool = False,
) -> RawSession:
    """A session with a TIME.CODE array E (tick 0.01 s): events = [(tick, code), ...]."""
    events = [] if events is None else events
    values = np.array([t + c / 1000 for t, c in events] + [0.0] * 5, dtype=np.float64)
    header = {
        "Start Date": date,
        "End Date": date,
        "Subject": subject,
        "Experiment": "test",
        "Group": "1",
        "Box": str(box),
        "Start Time": start,
        "End Time": end,
        "MSN": msn,
    }
    variables: dict[str, float | np.ndarray] = {"E": values}
    if counts:
        variables = {"A": 0.0, "B": 0.0, **variables}
    return RawSession(header=header, variables=variables)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args: tuple[str, ...]) -> None:
    main(list(args))


def invoke(args: list[str]) -> tuple[int, str, str]:
    """Run labpipe's real entry point in-process (exit codes come from main())."""
    result = CliRunner().invoke(_entry, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr
