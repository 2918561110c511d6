"""Figures: files, formats, fonts as text, words and n, empty data.

Determinism and escaping of hostile names are checked on whole report runs in
``test_report.py`` (every figure file is compared there).

``simulate_tables`` builds the analysis tables of a small, realistic experiment (12 rats,
two groups, both sexes, acquisition -> extinction to criterion -> cue, drug-prime and
stress tests with re-extinction between them). ``test_report.py`` reuses it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labpipe import figures

TZ = "America/New_York"
GROUPS = ("vehicle", "treated")
TESTS = ("cue", "drug_prime", "stress")
SESSION_MIN = 120.0
BIN_MIN = 15.0
DOSE = 0.5


def simulate_tables(
    n_rats: int = 12,
    *,
    seed: int = 7,
    subject_names: list[str] | None = None,
    group_names: tuple[str, str] = GROUPS,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Return (tables, events) of a simulated self-administration experiment."""
    rng = np.random.default_rng(seed)
    subjects = subject_names or [f"R{i + 1:02d}" for i in range(n_rats)]
    t0 = pd.Timestamp("2026-01-05 09:00", tz=TZ)
    sess_rows: list[dict] = []
    bin_rows: list[dict] = []
    ev_rows: list[dict] = []
    subj_rows: list[dict] = []
    test_rows: list[dict] = []
    for i, subject in enumerate(subjects):
        group = group_names[i % 2]
        sex = "F" if (i // 2) % 2 == 0 else "M"
        # R03 (index 2) never acquires; R06 (index 5) loses its catheter on the 2nd test
        non_acquirer = i == 2
        treated = group == group_names[1]
        n_acq = 10
        n_ext = int(rng.integers(6, 12))
        plan: list[tuple[str, str | None]] = [("acquisition", None)] * n_acq
        if not non_acquirer:
            plan += [("extinction", None)] * n_ext
            for t in TESTS:
                plan.append(("reinstatement", t))
                plan += [("extinction", None)] * 2
        day = {"acquisition": 0, "extinction": 0, "reinstatement": 0}
        acq_active: list[int] = []
        ext_active: list[int] = []
        ext_inactive: list[int] = []
        for k, (phase, test) in enumerate(plan):
            day[phase] += 1
            d = day[phase]
            sid = hashlib.sha256(f"{subject}-{k}".encode()).hexdigest()[:16]
            if phase == "acquisition":
                lam = (8 + 4 * d) if not non_acquirer else 3
                inact_lam = 4.0
            elif phase == "extinction":
                lam = max(3.0, 45 * 0.72**d) * (0.8 if treated else 1.0)
                inact_lam = 3.0
            else:
                base = {"cue": 30, "drug_prime": 38, "stress": 22}[test]
                lam = base * (0.55 if treated else 1.0)
                inact_lam = 4.0
            active = int(rng.poisson(lam))
            inactive = int(rng.poisson(inact_lam))
            catheter = i == 5 and test == "drug_prime"
            reinforcers = min(active, int(active * 0.8)) if phase == "acquisition" else 0
            start = t0 + pd.Timedelta(days=k)
            flags = "catheter_failure" if catheter else ""
            if phase == "acquisition":
                acq_active.append(active)
            elif phase == "extinction":
                ext_active.append(active)
                ext_inactive.append(inactive)
            baseline = float(np.mean(ext_active[-2:])) if ext_active else np.nan
            sess_rows.append(
                {
                    "session_id": sid,
                    "subject": subject,
                    "sex": sex,
                    "group": group,
                    "cohort": "C1" if i < 6 else "C2",
                    "phase": phase,
                    "test": test,
                    "day_in_phase": d,
                    "session_index": k + 1,
                    "start": start,
                    "duration_min": SESSION_MIN,
                    "active": active,
                    "inactive": inactive,
                    "reinforcers": reinforcers,
                    "timeout_active": int(active * 0.2),
                    "intake_mg_kg": reinforcers * DOSE,
                    "active_per_h": active / 2,
                    "active_fraction": active / max(1, active + inactive),
                    "latency_active_s": float(rng.uniform(5, 600)),
                    "baseline_active": baseline if phase != "acquisition" else np.nan,
                    "pct_baseline": (
                        100 * active / baseline
                        if phase != "acquisition" and baseline and baseline > 0
                        else np.nan
                    ),
                    "flags": flags,
                    "analyzable": not catheter,
                    "excluded_subject": non_acquirer,
                    "exclusion_reason": "did not meet the acquisition criterion"
                    if non_acquirer
                    else None,
                }
            )
            # presses spread over the session, front-loaded in extinction (burst)
            n_bins = int(SESSION_MIN // BIN_MIN)
            weights = np.linspace(2.0, 0.5, n_bins) if phase != "acquisition" else np.ones(n_bins)
            weights = weights / weights.sum()
            a_bins = rng.multinomial(active, weights)
            i_bins = rng.multinomial(inactive, np.ones(n_bins) / n_bins)
            r_bins = rng.multinomial(reinforcers, np.ones(n_bins) / n_bins)
            for b in range(n_bins):
                bin_rows.append(
                    {
                        "session_id": sid,
                        "subject": subject,
                        "phase": phase,
                        "test": test,
                        "bin": b + 1,
                        "bin_start_min": b * BIN_MIN,
                        "bin_end_min": (b + 1) * BIN_MIN,
                        "active": int(a_bins[b]),
                        "inactive": int(i_bins[b]),
                        "reinforcers": int(r_bins[b]),
                        "partial": False,
                    }
                )
            if phase == "acquisition":
                times = np.sort(rng.uniform(0, SESSION_MIN * 60, active))
                for t in times:
                    ev_rows.append({"session_id": sid, "t_s": float(t), "event": "active_press"})
                for t in times[:reinforcers]:
                    ev_rows.append({"session_id": sid, "t_s": float(t), "event": "reinforcer"})
                for t in np.sort(rng.uniform(0, SESSION_MIN * 60, inactive)):
                    ev_rows.append({"session_id": sid, "t_s": float(t), "event": "inactive_press"})
            if phase == "reinstatement":
                bl_i = float(np.mean(ext_inactive[-2:]))
                test_rows.append(
                    {
                        "subject": subject,
                        "group": group,
                        "sex": sex,
                        "cohort": "C1" if i < 6 else "C2",
                        "test": test,
                        "test_session_id": sid,
                        "test_date": start.date(),
                        "baseline_active": baseline,
                        "baseline_inactive": bl_i,
                        "baseline_sessions": 2,
                        "baseline_dates": "; ".join(
                            str((start - pd.Timedelta(days=j)).date()) for j in (2, 1)
                        ),
                        "test_active": active,
                        "test_inactive": inactive,
                        "pct_baseline": 100 * active / baseline if baseline > 0 else np.nan,
                        "delta_active": active - baseline,
                        "included": not catheter,
                        "exclusion_reason": "catheter failure" if catheter else None,
                    }
                )
        ext_to_crit = None
        if not non_acquirer:
            ext_to_crit = n_ext if i not in (1, 8) else None
        subj_rows.append(
            {
                "subject": subject,
                "sex": sex,
                "group": group,
                "cohort": "C1" if i < 6 else "C2",
                "active_lever": "left" if i % 3 else "right",
                "n_acquisition": n_acq,
                "n_extinction": 0 if non_acquirer else n_ext + 2 * len(TESTS),
                "n_tests": 0 if non_acquirer else len(TESTS),
                "acquisition_met": not non_acquirer,
                "acquisition_session": None if non_acquirer else int(rng.integers(4, 9)),
                "acquisition_baseline_active": float(np.mean(acq_active[-3:])),
                "extinction_met": ext_to_crit is not None,
                "extinction_sessions_to_criterion": ext_to_crit,
                "excluded": non_acquirer,
                "exclusion_reason": "did not meet the acquisition criterion"
                if non_acquirer
                else None,
            }
        )
    sessions = pd.DataFrame(sess_rows)
    for col in ("active", "inactive", "reinforcers", "timeout_active"):
        sessions[col] = sessions[col].astype("Int64")
    subjects_df = pd.DataFrame(subj_rows)
    for col in ("acquisition_session", "extinction_sessions_to_criterion"):
        subjects_df[col] = subjects_df[col].astype("Int64")
    stats = _simulate_stats()
    set_aside = pd.DataFrame(
        {
            "file": ["2026-01-12_box3.txt", "notes.txt"],
            "block": pd.array([1, pd.NA], dtype="Int64"),
            "subject_raw": ["R99", None],
            "reason_code": ["UNKNOWN_SUBJECT", "NOT_MEDPC"],
            "reason": [
                "Subject R99 is not in the roster.",
                "This file is not a MED-PC data file.",
            ],
        }
    )
    tables = {
        "sessions": sessions,
        "time_bins": pd.DataFrame(bin_rows),
        "subjects": subjects_df,
        "tests": pd.DataFrame(test_rows),
        "stats": stats,
        "set_aside": set_aside,
    }
    events = pd.DataFrame(ev_rows, columns=["session_id", "t_s", "event"])
    events = events.sort_values(["session_id", "t_s"], kind="stable").reset_index(drop=True)
    return tables, events


def _simulate_stats() -> pd.DataFrame:
    rows = [
        ("mixed_anova", "acquisition", None, "active", "group", 1, 9, 4.51, 0.062, None),
        ("mixed_anova", "acquisition", None, "active", "day_in_phase", 3.1, 27.9, 41.2, 1e-5, None),
        ("mixed_anova", "extinction", None, "active", "group", 1, 9, 2.05, 0.186, None),
        ("mixed_anova", "reinstatement", "cue", "active", "phase", 1, 9, 25.3, 0.0007, None),
        ("paired_t", "reinstatement", "cue", "active", "vehicle", 5, None, 5.57, 0.002, 0.004),
        ("mixed_anova", "reinstatement", "drug_prime", "active", "phase", 1, 8, 30.1, 0.0006, None),
        ("mixed_anova", "reinstatement", "stress", "active", "phase", 1, 9, 8.2, 0.019, None),
    ]
    out = pd.DataFrame(
        rows,
        columns=[
            "analysis",
            "phase",
            "test",
            "measure",
            "effect",
            "df1",
            "df2",
            "statistic",
            "p",
            "p_adjusted",
        ],
    )
    out["effect_size"] = [0.33, 0.82, 0.19, 0.74, 2.27, 0.79, 0.48]
    out["effect_size_kind"] = ["np2", "np2", "np2", "np2", "d_z", "np2", "np2"]
    out["n_subjects"] = [11, 11, 11, 11, 6, 10, 11]
    out["n_excluded"] = [1, 1, 1, 1, 0, 2, 1]
    out["warnings"] = ["", "sphericity violated; Greenhouse-Geisser applied", "", "", "", "", ""]
    out["sentence"] = [
        "F(1, 9) = 4.51, p = .062, ηp² = .33",
        "F(3.10, 27.90) = 41.20, p < .001, ηp² = .82",
        "F(1, 9) = 2.05, p = .186, ηp² = .19",
        "F(1, 9) = 25.30, p < .001, ηp² = .74",
        "t(5) = 5.57, p = .002, d_z = 2.27",
        "F(1, 8) = 30.10, p < .001, ηp² = .79",
        "F(1, 9) = 8.20, p = .019, ηp² = .48",
    ]
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[figures.FigureInfo]]:
    tables, events = simulate_tables()
    out = tmp_path_factory.mktemp("figs")
    infos = figures.make_figures(tables, events, out_dir=out, group_order=list(GROUPS))
    return out, infos


def test_every_figure_in_three_formats(made: tuple[Path, list[figures.FigureInfo]]) -> None:
    out, infos = made
    keys = [f.key for f in infos]
    assert keys == [
        "timeline",
        "intake",
        "cumulative_records",
        "criteria",
        "reinstatement",
        "time_course",
    ]
    for info in infos:
        assert set(info.paths) == {"svg", "pdf", "png"}
        for fmt, path in info.paths.items():
            assert path.parent == out
            assert path.name == f"{info.key}.{fmt}"
            assert path.stat().st_size > 1000
        assert info.svg.startswith("<svg")
        assert info.title and info.caption
        assert info.phase in {"overview", "acquisition", "extinction", "reinstatement"}
    # no temporary files left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_png_is_300_dpi_at_journal_width(made: tuple[Path, list[figures.FigureInfo]]) -> None:
    from PIL import Image

    _, infos = made
    for info in infos:
        with Image.open(info.paths["png"]) as im:
            dpi = im.info["dpi"]
            assert round(dpi[0]) == 300
            width_in = im.size[0] / 300
            assert 3.3 <= width_in <= 7.2, (info.key, width_in)


def test_text_stays_text(made: tuple[Path, list[figures.FigureInfo]]) -> None:
    _, infos = made
    for info in infos:
        svg = info.paths["svg"].read_text(encoding="utf-8")
        assert "<text" in svg
        # svg.fonttype none: no glyph outlines
        assert '<path id="DejaVuSans' not in svg
        pdf = info.paths["pdf"].read_bytes()
        assert b"/FontFile2" in pdf  # TrueType embedded (fonttype 42)
        assert b"/Type3" not in pdf


def test_words_not_codes_and_n_in_legends(made: tuple[Path, list[figures.FigureInfo]]) -> None:
    _, infos = made
    by_key = {f.key: f for f in infos}
    rein = by_key["reinstatement"].svg
    assert "Drug prime" in rein and "drug_prime" not in rein
    timeline = by_key["timeline"].svg
    # R03 is excluded: 5 vehicle... group sizes after exclusion
    assert "vehicle (n = 5)" in timeline
    assert "treated (n = 6)" in timeline
    assert "Acquisition" in timeline and "Extinction" in timeline
    assert "Active lever" in timeline and "Inactive lever" in timeline


def test_style_does_not_leak(made: tuple[Path, list[figures.FigureInfo]]) -> None:
    import matplotlib as mpl

    assert mpl.rcParams["svg.fonttype"] == "path"  # matplotlib's default, untouched
    assert mpl.rcParams["pdf.fonttype"] == 3
    with figures.style():
        assert mpl.rcParams["svg.fonttype"] == "none"
        assert mpl.rcParams["pdf.fonttype"] == 42


def test_svg_ids_unique_across_figures(made: tuple[Path, list[figures.FigureInfo]]) -> None:
    _, infos = made
    ids: list[str] = []
    for info in infos:
        ids += re.findall(r'\bid="([^"]+)"', info.svg)
    assert len(ids) == len(set(ids))


def test_no_data_is_skipped_not_a_crash(tmp_path: Path) -> None:
    tables, events = simulate_tables()
    tables = dict(tables)
    tables["tests"] = tables["tests"].iloc[0:0]
    tables["sessions"] = tables["sessions"][tables["sessions"]["phase"] != "reinstatement"]
    tables["time_bins"] = tables["time_bins"].iloc[0:0]
    tables["sessions"] = tables["sessions"].assign(intake_mg_kg=np.nan)
    infos = figures.make_figures(tables, events.iloc[0:0], out_dir=tmp_path)
    keys = {f.key for f in infos}
    assert keys == {"timeline", "criteria"}


def test_empty_tables_give_no_figures(tmp_path: Path) -> None:
    tables, events = simulate_tables()
    empty = {k: v.iloc[0:0] for k, v in tables.items()}
    assert figures.make_figures(empty, events.iloc[0:0], out_dir=tmp_path) == []


def test_one_test_type_and_one_group(tmp_path: Path) -> None:
    tables, events = simulate_tables()
    tables = dict(tables)
    tables["tests"] = tables["tests"][tables["tests"]["test"] == "cue"]
    keep = tables["sessions"]["group"] == GROUPS[0]
    tables["sessions"] = tables["sessions"][keep]
    infos = figures.make_figures(tables, events, out_dir=tmp_path)
    rein = next(f for f in infos if f.key == "reinstatement")
    assert "Cue" in rein.svg and "Stress" not in rein.svg
