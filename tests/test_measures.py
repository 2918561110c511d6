"""Measures, flags, criteria, baselines and tests: hand-built tables with known answers."""

from __future__ import annotations

import datetime as dt
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from labpipe import measures as m

TZ = "America/New_York"
MSN = {"acquisition": "SA_FR1_2h", "extinction": "EXT_2h", "reinstatement": "REIN_{}"}


# ---------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------


def animal(subject: str, *, group: str = "vehicle", sex: str = "F", exclude: str | None = None):
    return SimpleNamespace(
        subject=subject,
        sex=sex,
        group=group,
        active_lever="left",
        cohort="C1",
        body_weight_kg=None,
        exclude=exclude,
    )


def make_cfg(
    subjects,
    *,
    acquisition=True,
    extinction=True,
    fraction=0.25,
    consecutive=2,
    min_sessions=1,
    max_active=None,
    baseline_sessions=2,
    bin_minutes=15,
    session_minutes=None,
):
    acq = (
        SimpleNamespace(last_sessions=3, min_reinforcers=10, min_active_to_inactive=2.0)
        if acquisition
        else None
    )
    ext = (
        SimpleNamespace(
            fraction_of_acquisition=fraction,
            acquisition_sessions=3,
            consecutive=consecutive,
            min_sessions=min_sessions,
            max_active=max_active,
        )
        if extinction
        else None
    )
    roster = {}
    for s in subjects:
        a = s if isinstance(s, SimpleNamespace) else animal(s)
        roster[a.subject] = a

    def match_phase(msn: str):
        minutes = (session_minutes or {}).get(msn)
        return SimpleNamespace(msn=re.compile(re.escape(msn)), session_minutes=minutes)

    return SimpleNamespace(
        criteria=SimpleNamespace(acquisition=acq, extinction=ext),
        analysis=SimpleNamespace(
            baseline_sessions=baseline_sessions,
            time_bin_minutes=bin_minutes,
            factors=["group", "sex"],
            aborted_fraction=0.8,
        ),
        roster=roster,
        match_phase=match_phase,
    )


def S(
    phase,
    active,
    inactive=2,
    reinforcers=None,
    *,
    test=None,
    duration=120.0,
    events=False,
    timeout=0,
    msn=None,
):
    """One session spec; reinforcers default to active // 2 in acquisition, 0 otherwise."""
    if reinforcers is None:
        reinforcers = active // 2 if phase == "acquisition" else 0
    return dict(
        phase=phase,
        test=test,
        active=active,
        inactive=inactive,
        reinforcers=reinforcers,
        duration_min=duration,
        has_events=events,
        timeout=timeout,
        msn=msn,
    )


def make_sessions(plan: dict[str, list[dict]], *, first_day=dt.date(2026, 1, 5)) -> pd.DataFrame:
    """Sessions in the dtypes of sessions.parquet: one session a day per subject."""
    rows = []
    for subject, specs in plan.items():
        day_in_phase: dict[str, int] = {}
        for i, spec in enumerate(specs):
            phase = spec["phase"]
            day_in_phase[phase] = day_in_phase.get(phase, 0) + 1
            start = pd.Timestamp(dt.datetime.combine(first_day + dt.timedelta(days=i), dt.time(9)))
            start = start.tz_localize(TZ)
            msn = spec["msn"] or MSN[phase].format((spec["test"] or "").upper())
            rows.append(
                dict(
                    session_id=f"{subject}-{i + 1:03d}",
                    experiment="exp",
                    subject=subject,
                    subject_raw=subject,
                    sex="F",
                    group="vehicle",
                    cohort="C1",
                    active_lever="left",
                    box=1,
                    msn=msn,
                    phase=phase,
                    test=spec["test"],
                    day_in_phase=day_in_phase[phase],
                    session_index=i + 1,
                    start=start,
                    end=start + pd.Timedelta(minutes=spec["duration_min"]),
                    duration_min=float(spec["duration_min"]),
                    dst_crossing=False,
                    active=spec["active"],
                    inactive=spec["inactive"],
                    reinforcers=spec["reinforcers"],
                    timeout_active=spec["timeout"],
                    intake_mg_kg=None if spec["reinforcers"] is None else 0.5 * spec["reinforcers"],
                    has_events=spec["has_events"],
                    source_file=f"{subject}.txt",
                    source_block=i,
                )
            )
    df = pd.DataFrame(rows)
    for col in ("box", "day_in_phase", "session_index", "active", "inactive", "reinforcers"):
        df[col] = df[col].astype("Int64")
    for col in ("timeout_active", "source_block"):
        df[col] = df[col].astype("Int64")
    for col in ("session_id", "subject", "msn", "phase", "test", "group", "sex", "cohort"):
        df[col] = df[col].astype("str")
    df["intake_mg_kg"] = df["intake_mg_kg"].astype("float64")
    df["start"] = df["start"].astype(f"datetime64[us, {TZ}]")
    df["end"] = df["end"].astype(f"datetime64[us, {TZ}]")
    return df


def no_events() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "session_id": pd.Series([], dtype="str"),
            "t_s": pd.Series([], dtype="float64"),
            "event": pd.Series([], dtype="str"),
        }
    )


def events_of(rows: list[tuple[str, float, str]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["session_id", "t_s", "event"])
    return df.astype({"session_id": "str", "t_s": "float64", "event": "str"})


def acquirer(n: int = 5, active: int = 40) -> list[dict]:
    """n good acquisition sessions (20 reinforcers, 40 active vs 2 inactive)."""
    return [S("acquisition", active, 2, 20) for _ in range(n)]


def run(plan, cfg, events=None):
    sessions = make_sessions(plan)
    per = m.session_measures(sessions, no_events() if events is None else events, cfg)
    subj = m.subject_table(per, cfg)
    tests = m.test_table(per, subj, cfg)
    return per, subj.set_index("subject", drop=False), tests


def row(per: pd.DataFrame, session_id: str) -> pd.Series:
    return per.set_index("session_id").loc[session_id]


# ---------------------------------------------------------------------------------------
# Per-session measures
# ---------------------------------------------------------------------------------------


def test_rates_use_real_duration_and_fraction_is_nan_at_zero():
    plan = {
        "R1": [
            S("acquisition", 30, 10, 12, duration=60.0),  # an hour: 30/h
            S("acquisition", 40, 0, 20, duration=180.0),  # 3 h: 40/3 per h, fraction 1
            S("acquisition", 0, 0, 0, duration=120.0),  # 0/0 -> NaN
        ]
    }
    per, _, _ = run(plan, make_cfg(["R1"]))
    assert per["active_per_h"].tolist()[:2] == pytest.approx([30.0, 40 / 3])
    assert per["inactive_per_h"].iloc[0] == pytest.approx(10.0)
    assert per["reinforcers_per_h"].iloc[1] == pytest.approx(20 / 3)
    assert per["active_fraction"].iloc[0] == pytest.approx(0.75)
    assert per["active_fraction"].iloc[1] == pytest.approx(1.0)
    assert math.isnan(per["active_fraction"].iloc[2])
    assert per["active_fraction"].dtype == np.float64


def test_latency_is_first_active_press_and_nan_without_one():
    plan = {
        "R1": [
            S("acquisition", 2, 1, 1, events=True),
            S("acquisition", 0, 1, 0, events=True),  # events but no active press
            S("acquisition", 5, 0, 2, events=False),  # counts only
        ]
    }
    ev = events_of(
        [
            ("R1-001", 3.5, "inactive_press"),
            ("R1-001", 12.25, "active_press"),
            ("R1-001", 12.25, "reinforcer"),
            ("R1-001", 40.0, "active_press"),
            ("R1-002", 7.0, "inactive_press"),
        ]
    )
    per, _, _ = run(plan, make_cfg(["R1"]), ev)
    lat = per.set_index("session_id")["latency_active_s"]
    assert lat["R1-001"] == pytest.approx(12.25)
    assert math.isnan(lat["R1-002"])  # never the session length
    assert math.isnan(lat["R1-003"])


def test_aborted_against_phase_rule_length_or_msn_median():
    plan = {
        "R1": [S("acquisition", 40, 2, 20, duration=d) for d in (120, 121, 119, 95, 97)],
        "R2": [S("extinction", 30, 2, duration=d) for d in (60, 60, 61, 47, 49)],
    }
    # acquisition: programmed 120 from the rule -> < 96 is aborted; extinction: no rule,
    # the MSN's median (60) -> < 48 is aborted
    cfg = make_cfg(["R1", "R2"], session_minutes={"SA_FR1_2h": 120.0})
    per, _, _ = run(plan, cfg)
    aborted = per.set_index("session_id")["flag_aborted"]
    assert aborted[aborted].index.tolist() == ["R1-004", "R2-004"]
    assert row(per, "R1-004")["flags"] == "aborted"
    assert not row(per, "R1-004")["analyzable"]
    assert row(per, "R1-005")["flags"] == ""
    assert per["flag_aborted"].dtype == bool


def test_equipment_failure_only_where_the_rat_normally_responds():
    plan = {
        # responder: median active of the other acquisition sessions 40 -> flagged
        "R1": [*acquirer(2), S("acquisition", 0, 0, 0), *acquirer(2)],
        # low responder: median of the others 3 (< 5) -> a real zero, not a failure
        "R2": [S("acquisition", a, 1, 1) for a in (3, 4, 0, 2, 3)],
        # extinguished rat: zero in extinction is behaviour
        "R3": [*acquirer(3), S("extinction", 60, 5), S("extinction", 30, 2), S("extinction", 0, 0)],
        # a zero session with a time-out press... no: inactive press -> not all-zero
        "R4": [*acquirer(2), S("acquisition", 0, 1, 0), *acquirer(2)],
    }
    per, _, _ = run(plan, make_cfg(["R1", "R2", "R3", "R4"]))
    eq = per.set_index("session_id")["flag_equipment_failure"]
    assert eq[eq].index.tolist() == ["R1-003"]
    assert row(per, "R1-003")["flags"] == "equipment_failure"
    assert not row(per, "R1-003")["analyzable"]
    assert per.loc[per["subject"].isin(["R2", "R3", "R4"]), "analyzable"].all()


def test_upstream_flags_are_kept_and_joined():
    sessions = make_sessions({"R1": [*acquirer(3), S("acquisition", 40, 2, 20, duration=50)]})
    sessions["flags"] = pd.Series(["", "catheter_failure", "", "bounce"], dtype="str")
    per = m.session_measures(sessions, no_events(), make_cfg(["R1"]))
    assert per["flags"].tolist() == ["", "catheter_failure", "", "bounce;aborted"]
    assert per["analyzable"].tolist() == [True, False, True, False]
    # measures in, measures out: the same flags, not doubled
    again = m.session_measures(per, no_events(), make_cfg(["R1"]))
    assert again["flags"].tolist() == per["flags"].tolist()


def test_session_measures_keeps_every_row_and_does_not_mutate_input():
    sessions = make_sessions({"R1": acquirer(3), "R9": acquirer(2)})  # R9 not in roster
    before = sessions.copy()
    per = m.session_measures(sessions, no_events(), make_cfg(["R1"]))
    pd.testing.assert_frame_equal(sessions, before)
    assert len(per) == 5
    assert list(per.columns) == list(sessions.columns) + list(m.MEASURE_COLUMNS)
    r9 = per[per["subject"] == "R9"]
    assert r9["excluded_subject"].all()
    assert (r9["exclusion_reason"] == "not in roster").all()


# ---------------------------------------------------------------------------------------
# Criteria
# ---------------------------------------------------------------------------------------


EXT = [90, 40, 30, 20, 18, 22]  # domain.md §8.3, SA baseline 100


def ext_plan(**kw) -> dict:
    return {"R1": [*acquirer(3, active=100), *[S("extinction", a, 2) for a in EXT]]}


def test_extinction_domain_values_pct_rule():
    per, subj, _ = run(ext_plan(), make_cfg(["R1"]))
    r1 = subj.loc["R1"]
    assert r1["acquisition_baseline_active"] == pytest.approx(100.0)
    # <= 25% of 100: sessions 4, 5, 6; the second of 2 consecutive is session 5
    assert r1["extinction_sessions_to_criterion"] == 5
    assert r1["extinction_met"] is True or r1["extinction_met"] == True  # noqa: E712
    ext = per[per["phase"] == "extinction"]
    assert ext["baseline_active"].tolist() == pytest.approx([100.0] * 6)
    assert ext["pct_baseline"].tolist() == pytest.approx([float(a) for a in EXT])
    assert not r1["excluded"]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"max_active": 25, "consecutive": 3}, 6),  # abs <= 25 with k = 3 -> session 6
        ({"consecutive": 3}, 6),
        ({"min_sessions": 6}, 6),  # criterion may not be met before session 6
        ({"fraction": 0.19}, pd.NA),  # only 18 qualifies: never 2 in a row
    ],
)
def test_extinction_rule_variants(kw, expected):
    _, subj, _ = run(ext_plan(), make_cfg(["R1"], **kw))
    got = subj.loc["R1", "extinction_sessions_to_criterion"]
    if expected is pd.NA:
        assert pd.isna(got)
        assert subj.loc["R1", "extinction_met"] == False  # noqa: E712
        assert subj.loc["R1", "exclusion_reason"] == "not extinguished"
    else:
        assert got == expected


def test_extinction_counts_only_the_first_run_before_the_first_test():
    plan = {
        "R1": [
            *acquirer(3, active=100),
            *[S("extinction", a, 2) for a in (90, 60, 40)],
            S("reinstatement", 70, 3, test="cue"),
            *[S("extinction", a, 2) for a in (10, 10)],  # would meet it, but after a test
        ]
    }
    _, subj, _ = run(plan, make_cfg(["R1"]))
    assert subj.loc["R1", "extinction_met"] == False  # noqa: E712
    assert pd.isna(subj.loc["R1", "extinction_sessions_to_criterion"])


def test_re_extinction_marks_extinction_after_the_first_test_even_a_flagged_one():
    plan = {
        "R1": [
            *acquirer(3),
            *[S("extinction", a) for a in (30, 12)],
            S("reinstatement", 40, test="cue", duration=10.0),  # aborted: still a test
            *[S("extinction", a) for a in (15, 9)],
            S("reinstatement", 30, test="stress"),
            S("extinction", 8),
        ],
        "R2": [*acquirer(3), *[S("extinction", a) for a in (25, 10, 6)]],  # never tested
    }
    per, _, _ = run(plan, make_cfg(["R1", "R2"]))
    r1 = per[per["subject"] == "R1"]
    assert r1["re_extinction"].tolist() == [False] * 5 + [False, True, True, False, True]
    assert not per.loc[per["subject"] == "R2", "re_extinction"].any()
    assert per["re_extinction"].dtype == bool
    # The extinction curve is the first run: R1's days 1-2 and R2's 1-3.
    curve = m.phase_curve(per, "extinction")
    assert curve[["subject", "day_in_phase"]].values.tolist() == [
        ["R1", 1],
        ["R1", 2],
        ["R2", 1],
        ["R2", 2],
        ["R2", 3],
    ]
    # A table without the column (made by hand) is taken whole; acquisition is untouched.
    assert len(m.phase_curve(per.drop(columns="re_extinction"), "extinction")) == 8
    assert len(m.phase_curve(per, "acquisition")) == 6


def test_acquisition_met_at_the_end_and_first_day_it_held():
    reinf = [5, 12, 12, 12, 8, 15, 15, 15]
    plan = {
        "R1": [S("acquisition", 40, 2, r) for r in reinf],
        # held on days 2-4, fails at the end: session reported, not met -> non-acquirer
        "R2": [S("acquisition", 40, 2, r) for r in reinf[:5]],
        # enough reinforcers but active < 2 x inactive
        "R3": [S("acquisition", 30, 20, 15) for _ in range(5)],
    }
    _, subj, _ = run(plan, make_cfg(["R1", "R2", "R3"]))
    assert subj.loc["R1", "acquisition_met"] == True  # noqa: E712
    assert subj.loc["R1", "acquisition_session"] == 4
    assert subj.loc["R2", "acquisition_met"] == False  # noqa: E712
    assert subj.loc["R2", "acquisition_session"] == 4
    assert subj.loc["R2", "exclusion_reason"] == "non-acquirer"
    assert subj.loc["R3", "acquisition_met"] == False  # noqa: E712
    assert pd.isna(subj.loc["R3", "acquisition_session"])
    assert subj.loc["R3", "exclusion_reason"] == "non-acquirer"
    assert not subj.loc["R1", "excluded"]
    assert subj["acquisition_met"].dtype == "boolean"


def test_flagged_session_never_enters_criterion_or_baseline():
    plan = {
        "R1": [
            S("acquisition", 60, 2, 20),
            S("acquisition", 60, 2, 20),
            S("acquisition", 60, 2, 20),
            S("acquisition", 3, 1, 2, duration=30),  # aborted: would break the criterion
            *[S("extinction", a, 2) for a in (50, 14)],
            S("extinction", 2, 0, duration=20),  # aborted: would complete 2 consecutive
            *[S("extinction", a, 2) for a in (12, 10)],
            S("reinstatement", 40, 3, test="cue"),
        ]
    }
    per, subj, tests = run(plan, make_cfg(["R1"]))
    r1 = subj.loc["R1"]
    # the aborted session is skipped: last 3 analyzable = 60, 60, 60
    assert r1["acquisition_met"] == True  # noqa: E712
    assert r1["acquisition_baseline_active"] == pytest.approx(60.0)
    # criterion 15: 14, (aborted 2 skipped), 12 -> met at the 12 session (day 4)
    assert r1["extinction_sessions_to_criterion"] == 4
    # the test's baseline: the last 2 analyzable extinction sessions (12, 10)
    t = tests.iloc[0]
    assert t["baseline_active"] == pytest.approx(11.0)
    assert t["baseline_sessions"] == 2
    assert t["included"]
    assert row(per, "R1-010")["baseline_active"] == pytest.approx(11.0)
    assert r1["n_acquisition"] == 4  # stored sessions, flagged ones included


def test_baseline_is_re_extinction_aware():
    plan = {
        "R1": [
            *acquirer(3, active=80),
            *[S("extinction", a, i) for a, i in ((50, 4), (20, 3), (10, 2), (8, 6))],
            S("reinstatement", 45, 5, test="cue"),
            *[S("extinction", a, i) for a, i in ((30, 1), (12, 3), (6, 1))],
            S("reinstatement", 36, 9, test="drug_prime"),
        ]
    }
    per, _, tests = run(plan, make_cfg(["R1"]))
    t = tests.set_index("test")
    assert t.loc["cue", "baseline_active"] == pytest.approx(9.0)  # (10 + 8) / 2
    assert t.loc["cue", "baseline_inactive"] == pytest.approx(4.0)
    assert t.loc["drug_prime", "baseline_active"] == pytest.approx(9.0)  # (12 + 6) / 2
    assert t.loc["drug_prime", "baseline_inactive"] == pytest.approx(2.0)
    assert t.loc["cue", "pct_baseline"] == pytest.approx(500.0)
    assert t.loc["drug_prime", "pct_baseline"] == pytest.approx(400.0)
    assert t.loc["drug_prime", "delta_active"] == pytest.approx(27.0)
    assert t.loc["cue", "baseline_dates"] == "2026-01-10;2026-01-11"
    assert t.loc["drug_prime", "baseline_dates"] == "2026-01-14;2026-01-15"
    assert t.loc["cue", "test_date"] == dt.date(2026, 1, 12)
    assert t["included"].all()
    assert list(tests.columns) == list(m.TEST_COLUMNS)
    # the session table carries the same baselines
    rein = per[per["phase"] == "reinstatement"].set_index("test")
    assert rein.loc["drug_prime", "pct_baseline"] == pytest.approx(400.0)


def test_too_few_baseline_sessions_and_flagged_test_are_not_included():
    plan = {
        "R1": [
            *acquirer(3),
            S("extinction", 8, 1),
            S("reinstatement", 30, 2, test="cue"),
        ],
        "R2": [
            *acquirer(3),
            *[S("extinction", a, 1) for a in (20, 8, 6)],
            S("reinstatement", 30, 2, test="cue", duration=30),  # aborted test
        ],
    }
    _, subj, tests = run(plan, make_cfg(["R1", "R2"], extinction=False))
    t = tests.set_index("subject")
    assert t.loc["R1", "baseline_sessions"] == 1
    assert t.loc["R1", "baseline_active"] == pytest.approx(8.0)
    assert not t.loc["R1", "included"]
    assert t.loc["R1", "exclusion_reason"] == "too few baseline sessions (1 of 2)"
    assert not t.loc["R2", "included"]
    assert t.loc["R2", "exclusion_reason"] == "test session flagged: aborted"
    assert not subj["excluded"].any()


def test_zero_baseline_gives_nan_percent_but_a_delta():
    ext = [S("extinction", 0, 1) for _ in range(2)]
    plan = {"R1": [*acquirer(3), *ext, S("reinstatement", 12, 1, test="cue")]}
    _, _, tests = run(plan, make_cfg(["R1"]))
    assert math.isnan(tests.loc[0, "pct_baseline"])
    assert tests.loc[0, "delta_active"] == pytest.approx(12.0)


# ---------------------------------------------------------------------------------------
# Exclusions and missing data
# ---------------------------------------------------------------------------------------


def test_roster_exclusion_marks_sessions_subject_and_tests():
    plan = {
        "R1": [
            *acquirer(3),
            *[S("extinction", a, 1) for a in (20, 5, 4)],
            S("reinstatement", 30, 2, test="cue"),
        ]
    }
    cfg = make_cfg([animal("R1", exclude="catheter failure day 9")])
    per, subj, tests = run(plan, cfg)
    assert subj.loc["R1", "excluded"]
    assert subj.loc["R1", "exclusion_reason"] == "roster: catheter failure day 9"
    # criteria still computed and reported
    assert subj.loc["R1", "acquisition_met"] == True  # noqa: E712
    assert per["excluded_subject"].all()
    assert (per["exclusion_reason"] == "roster: catheter failure day 9").all()
    assert len(per) == 7  # nothing dropped
    assert not tests.loc[0, "included"]
    assert tests.loc[0, "exclusion_reason"] == "roster: catheter failure day 9"


def test_catheter_signature_marks_the_burst_after_stable_intake_and_excludes_nothing():
    stable = [S("acquisition", 30, 2, 20, timeout=5)] * 3
    burst = S("acquisition", 80, 2, 30, timeout=45)  # 2.7x active, 45 >= 2 x 5 + 5 > 30
    plan = {
        # Two failing sessions: the first does not raise the level the second is judged by.
        "R1": [*stable, burst, S("acquisition", 75, 2, 28, timeout=40)],
        "R2": [*stable[:2], burst],  # only 2 stable sessions before: no level yet
        "R3": [*stable, S("acquisition", 80, 2, 40, timeout=20)],  # pauses after infusions
        "R4": [*stable, S("acquisition", 150, 2, 30, timeout=45, msn="SA_FR5_2h")],  # new FR
        "R5": [*[S("acquisition", 30, 2, 20, timeout=None)] * 3, burst],  # time-outs unknown
        # Ramp-up: sessions under min_reinforcers (10) set no level.
        "R6": [*[S("acquisition", 8, 2, 6, timeout=1)] * 3, burst],
    }
    per = m.session_measures(make_sessions(plan), no_events(), make_cfg(list(plan)))
    flagged = per.loc[per["flag_catheter_signature"], "session_id"].tolist()
    assert flagged == ["R1-004", "R1-005"]
    assert per["analyzable"].all()  # a signature prompts a patency test; it excludes nothing
    assert per["flags"].eq("").all()


def test_equipment_failure_exclusion_when_too_few_sessions_remain():
    # 3 acquisition sessions, one a dead box: only 2 analyzable for a 3-session criterion
    plan = {"R1": [*acquirer(1), S("acquisition", 0, 0, 0), *acquirer(1)]}
    _, subj, _ = run(plan, make_cfg(["R1"]))
    assert subj.loc["R1", "acquisition_met"] == False  # noqa: E712
    assert subj.loc["R1", "exclusion_reason"] == "equipment failure"


def test_animals_without_sessions_or_extinction_get_complete_rows():
    plan = {"R1": acquirer(4)}  # acquired, never extinguished (yet)
    per, subj, tests = run(plan, make_cfg(["R1", "R2"]))
    assert list(subj.columns) == list(m.SUBJECT_COLUMNS)
    assert subj["subject"].tolist() == ["R1", "R2"]
    r1, r2 = subj.loc["R1"], subj.loc["R2"]
    assert r1["n_extinction"] == 0 and r1["n_tests"] == 0
    assert pd.isna(r1["extinction_met"])
    assert pd.isna(r1["extinction_sessions_to_criterion"])
    assert not r1["excluded"]
    assert r2["n_acquisition"] == 0
    assert pd.isna(r2["acquisition_session"])
    assert math.isnan(r2["acquisition_baseline_active"])
    assert r2["excluded"] and r2["exclusion_reason"] == "no sessions"
    assert tests.empty and list(tests.columns) == list(m.TEST_COLUMNS)


def test_absent_criteria_exclude_nobody():
    plan = {"R1": [S("acquisition", 5, 9, 1) for _ in range(3)] + [S("extinction", 50, 1)]}
    per, subj, _ = run(plan, make_cfg(["R1"], acquisition=False, extinction=False))
    r1 = subj.loc["R1"]
    assert pd.isna(r1["acquisition_met"]) and pd.isna(r1["extinction_met"])
    assert not r1["excluded"]
    # acquisition baseline still the mean of the last 3 acquisition sessions
    assert row(per, "R1-004")["baseline_active"] == pytest.approx(5.0)
    assert row(per, "R1-004")["pct_baseline"] == pytest.approx(1000.0)


def test_missing_counts_and_missing_days():
    sessions = make_sessions({"R1": acquirer(4)})
    sessions["inactive"] = pd.array([2, 2, 2, pd.NA], dtype="Int64")  # no source that day
    # a missed day: the stored sessions are days 1, 2, 4, 5 of the calendar
    sessions = sessions.drop(index=2).reset_index(drop=True)
    per = m.session_measures(sessions, no_events(), make_cfg(["R1"]))
    assert math.isnan(per["inactive_per_h"].iloc[-1])
    assert math.isnan(per["active_fraction"].iloc[-1])
    assert per["analyzable"].all()
    subj = m.subject_table(per, make_cfg(["R1"])).set_index("subject")
    # the window of the last 3 holds an unknown count: met is unknown, nobody excluded
    assert pd.isna(subj.loc["R1", "acquisition_met"])
    assert not subj.loc["R1", "excluded"]


def test_test_type_with_no_animals_and_empty_input():
    plan = {"R1": [*acquirer(3), *[S("extinction", 5, 1)] * 2, S("reinstatement", 20, test="cue")]}
    _, _, tests = run(plan, make_cfg(["R1"]))
    assert tests["test"].tolist() == ["cue"]  # no drug_prime / stress rows, no error
    empty = make_sessions({"R1": acquirer(1)}).iloc[0:0]
    cfg = make_cfg(["R1"])
    per = m.session_measures(empty, no_events(), cfg)
    assert per.empty and list(per.columns)[-len(m.MEASURE_COLUMNS) :] == list(m.MEASURE_COLUMNS)
    subj = m.subject_table(per, cfg)
    assert subj["exclusion_reason"].tolist() == ["no sessions"]
    assert m.test_table(per, subj, cfg).empty
    assert m.time_bins(per, no_events(), cfg).empty


def test_output_dtypes_follow_the_policy():
    plan = {"R1": [*acquirer(3), *[S("extinction", 5, 1)] * 2, S("reinstatement", 20, test="cue")]}
    per, subj, tests = run(plan, make_cfg(["R1"]))
    for col in ("active_per_h", "active_fraction", "latency_active_s", "pct_baseline"):
        assert per[col].dtype == np.float64, col
    flags = ("flag_aborted", "flag_equipment_failure", "flag_catheter_signature")
    for col in (*flags, "analyzable", "excluded_subject"):
        assert per[col].dtype == bool, col
    assert pd.api.types.is_string_dtype(per["flags"])
    assert subj["n_acquisition"].dtype == "Int64"
    assert subj["extinction_sessions_to_criterion"].dtype == "Int64"
    assert subj["excluded"].dtype == bool
    assert tests["baseline_sessions"].dtype == "Int64"
    assert tests["test_active"].dtype == "Int64"
    assert tests["included"].dtype == bool


# ---------------------------------------------------------------------------------------
# Time bins
# ---------------------------------------------------------------------------------------


def test_time_bins_edges_partial_zeros_and_sums():
    plan = {
        "R1": [
            S("acquisition", 4, 1, 2, duration=50.0, events=True),  # 15-min bins: 4, last partial
            S("acquisition", 1, 0, 0, duration=60.0, events=True),  # exactly 4 full bins
            S("acquisition", 9, 9, 4, duration=60.0, events=False),  # no press times: no rows
        ]
    }
    ev = events_of(
        [
            ("R1-001", 10.0, "active_press"),
            ("R1-001", 10.0, "reinforcer"),
            ("R1-001", 899.99, "active_press"),  # just before the 15-min edge
            ("R1-001", 900.0, "active_press"),  # on the edge: the next bin
            ("R1-001", 900.0, "reinforcer"),
            ("R1-001", 2950.0, "inactive_press"),
            ("R1-001", 3000.4, "active_press"),  # stamped after the end: last bin
            ("R1-001", 3000.4, "cue_on"),  # not a binned event
            ("R1-002", 3599.0, "active_press"),
        ]
    )
    sessions = make_sessions(plan)
    cfg = make_cfg(["R1"])
    per = m.session_measures(sessions, ev, cfg)
    bins = m.time_bins(per, ev, cfg)
    assert list(bins.columns) == list(m.TIME_BIN_COLUMNS)
    one = bins[bins["session_id"] == "R1-001"]
    assert one["bin"].tolist() == [1, 2, 3, 4]
    assert one["bin_start_min"].tolist() == [0.0, 15.0, 30.0, 45.0]
    assert one["bin_end_min"].tolist() == [15.0, 30.0, 45.0, 50.0]
    assert one["partial"].tolist() == [False, False, False, True]
    assert one["active"].tolist() == [2, 1, 0, 1]  # the empty bin is 0, not missing
    assert one["inactive"].tolist() == [0, 0, 0, 1]
    assert one["reinforcers"].tolist() == [1, 1, 0, 0]
    two = bins[bins["session_id"] == "R1-002"]
    assert len(two) == 4 and not two["partial"].any()
    assert two["active"].tolist() == [0, 0, 0, 1]
    assert "R1-003" not in set(bins["session_id"])
    # the bins of a session sum to its events
    totals = bins.groupby("session_id")[["active", "inactive", "reinforcers"]].sum()
    assert totals.loc["R1-001"].tolist() == [4, 1, 2]
    assert bins["active"].dtype == "Int64"
    assert bins["partial"].dtype == bool


def test_time_bins_width_from_config():
    plan = {"R1": [S("extinction", 1, 0, duration=120.0, events=True)]}
    ev = events_of([("R1-001", 7190.0, "active_press")])
    bins = m.time_bins(make_sessions(plan), ev, make_cfg(["R1"], bin_minutes=30))
    assert bins["bin_end_min"].tolist() == [30.0, 60.0, 90.0, 120.0]
    assert bins["active"].tolist() == [0, 0, 0, 1]


# ---------------------------------------------------------------------------------------
# With a real config file
# ---------------------------------------------------------------------------------------

REAL_CONFIG = """\
experiment = "meas-test"
roster = "roster.csv"
timezone = "America/New_York"

[levers.left]
count = "A"
[levers.right]
count = "B"
[reinforcers]
count = "C"

[[phases]]
msn = "SA_FR1_.*"
phase = "acquisition"
session_minutes = 120
[[phases]]
msn = "EXT_.*"
phase = "extinction"
[[phases]]
msn = "REIN_.*"
phase = "reinstatement"
test = "cue"

[criteria.acquisition]
last_sessions = 3
min_reinforcers = 10
min_active_to_inactive = 2.0
[criteria.extinction]
fraction_of_acquisition = 0.25
acquisition_sessions = 3
consecutive = 2
max_active = 25

[analysis]
baseline_sessions = 2
time_bin_minutes = 30
"""

REAL_ROSTER = """\
subject,sex,group,active_lever,cohort,exclude
R1,F,vehicle,left,C1,
R2,M,nac,left,C1,head cap lost
R3,F,nac,left,C1,
"""


def test_with_a_real_config_file(tmp_path):
    from labpipe.config import load_config

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "experiment.toml").write_text(REAL_CONFIG, encoding="utf-8")
    (configs / "roster.csv").write_text(REAL_ROSTER, encoding="utf-8")
    cfg = load_config(configs / "experiment.toml")
    plan = {
        # baseline 200: 25% = 50, but max_active 25 also applies -> 30 and 40 do not meet
        "R1": [
            *acquirer(3, active=200),
            S("acquisition", 200, 2, 20, duration=90),  # < 0.8 x 120 min: aborted
            *[S("extinction", a, 1) for a in (120, 40, 30, 20, 10)],
            S("reinstatement", 60, 2, test="cue", events=True),
        ],
        "R2": acquirer(3),
    }
    ev = events_of([("R1-010", 100.0, "active_press"), ("R1-010", 3000.0, "active_press")])
    per, subj, tests = run(plan, cfg, ev)
    assert row(per, "R1-004")["flags"] == "aborted"
    assert subj.loc["R1", "acquisition_baseline_active"] == pytest.approx(200.0)
    assert subj.loc["R1", "extinction_sessions_to_criterion"] == 5
    assert subj.loc["R2", "exclusion_reason"] == "roster: head cap lost"
    assert subj.loc["R3", "exclusion_reason"] == "no sessions"
    assert tests.loc[0, "baseline_active"] == pytest.approx(15.0)
    assert tests.loc[0, "pct_baseline"] == pytest.approx(400.0)
    assert bool(tests.loc[0, "included"])
    bins = m.time_bins(per, ev, cfg)
    assert bins["bin_end_min"].tolist() == [30.0, 60.0, 90.0, 120.0]
    assert bins["active"].tolist() == [1, 1, 0, 0]
