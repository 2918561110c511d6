"""The smallest realistic experiment, end to end: complete tables with warnings, no crash.

3 rats per group, a missed session, an animal that never reached extinction, a
reinstatement test type configured but run by no animal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labpipe import pipeline
from labpipe.config import load_config
from labpipe.ingest import ingest

from labfolder import CONFIG, make_lab, session

ROSTER = """\
subject,sex,group,active_lever,cohort
R1,F,vehicle,left,C1
R2,M,vehicle,left,C1
R3,F,vehicle,left,C1
R4,M,nac,left,C1
R5,F,nac,left,C1
R6,M,nac,left,C1
"""

# A drug-prime test is configured, but no animal ran it.
CONFIG_WITH_PRIME = (
    CONFIG
    + """
[[phases]]
msn = "REIN_PRIME.*"
phase = "reinstatement"
test = "drug_prime"
"""
)


def _presses(rng: np.random.Generator, n: int) -> list[float]:
    return sorted(np.round(rng.uniform(5, 7000, n), 2).tolist())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    lab = make_lab(
        tmp_path_factory.mktemp("small") / "lab", config=CONFIG_WITH_PRIME, roster=ROSTER
    )
    rng = np.random.default_rng(7)
    for i, subject in enumerate(["R1", "R2", "R3", "R4", "R5", "R6"]):
        box = i + 1
        day = 1
        for acq in range(5):
            if subject == "R2" and acq == 2:
                day += 1  # R2 missed its third acquisition session
                continue
            n = 25 + acq * 4 + int(rng.integers(0, 6))
            left = _presses(rng, n)
            lab.add(
                f"{subject}_acq{acq}",
                [
                    session(
                        subject,
                        box=box,
                        date=f"03/{day:02d}/26",
                        left=left,
                        right=_presses(rng, 3),
                        infusions=left[: n - 4],
                    )
                ],
            )
            day += 1
        if subject == "R6":
            continue  # R6 left the study before extinction
        for ext in range(4):
            n = max(1, 30 - ext * 9)
            lab.add(
                f"{subject}_ext{ext}",
                [
                    session(
                        subject,
                        box=box,
                        date=f"03/{day:02d}/26",
                        msn="EXT_2h",
                        left=_presses(rng, n),
                        right=_presses(rng, 2),
                    )
                ],
            )
            day += 1
        if subject in ("R1", "R2", "R4", "R5"):
            n = 12 if subject in ("R1", "R2") else 6
            lab.add(
                f"{subject}_cue",
                [
                    session(
                        subject,
                        box=box,
                        date=f"03/{day:02d}/26",
                        msn="REIN_CUE_2h",
                        left=_presses(rng, n),
                        right=_presses(rng, 2),
                    )
                ],
            )
    cfg = load_config(lab.config)
    summary = ingest(cfg, workers=1)
    assert summary.exit_code == 0
    return cfg, pipeline.analyse(cfg)


def test_every_table_is_complete(small):
    _, analysis = small
    subjects = analysis.tables["subjects"]
    assert sorted(subjects.subject) == ["R1", "R2", "R3", "R4", "R5", "R6"]
    r6 = subjects.set_index("subject").loc["R6"]
    assert r6["n_extinction"] == 0
    assert pd.isna(r6["extinction_sessions_to_criterion"])
    assert set(analysis.tables["tests"].test) == {"cue"}
    sessions = analysis.tables["sessions"]
    assert len(sessions) == 6 * 5 - 1 + 5 * 4 + 4


def test_statistics_run_with_warnings_instead_of_failing(small):
    _, analysis = small
    stats = analysis.tables["stats"]
    assert {"acquisition", "extinction", "reinstatement"} <= set(stats.phase)
    # The drug-prime test was configured but never run: a row says so.
    prime = stats[stats.test == "drug_prime"]
    assert len(prime) >= 1
    assert prime["warnings"].str.len().gt(0).all()
    # R2's missing session drops it from the listwise mixed ANOVA but not from the LMM.
    acq = stats[(stats.phase == "acquisition") & (stats.measure == "active")]
    anova = acq[acq.analysis == "mixed_anova"]
    lmm = acq[acq.analysis == "lmm"]
    assert anova["n_subjects"].min() < lmm["n_subjects"].max()
    assert lmm["n_subjects"].max() == 6


def test_the_report_builds_for_the_small_experiment(small):
    cfg, _ = small
    written = pipeline.build_report(cfg)
    assert (cfg.reports_dir / "index.html") in written
    html = (cfg.reports_dir / "index.html").read_text(encoding="utf-8")
    assert "R6" in html


def test_the_report_is_the_same_from_several_processes(small):
    # Large experiments compute the statistics in worker processes and draw the figures in
    # a process of their own; forced here on the small one, every file must be the same.
    cfg, _ = small
    alone = pipeline.build_report(cfg, workers=1)
    expected = {p: p.read_bytes() for p in alone}
    spread = pipeline.build_report(cfg, workers=2)
    assert spread == alone
    assert {p: p.read_bytes() for p in spread} == expected
