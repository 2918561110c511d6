"""The demo experiment through ingest and the analysis: criteria and baselines vs the truth."""

from __future__ import annotations

import pandas as pd
import pytest

from labpipe import pipeline
from labpipe.config import load_config
from labpipe.demo import write_demo
from labpipe.ingest import ingest


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_report") / "lab"
    truth = write_demo(root)
    cfg = load_config(root / "configs" / "experiment.toml")
    ingest(cfg, workers=1)
    return truth, cfg, pipeline.analyse(cfg)


def test_criteria_and_exclusions_equal_what_the_generator_simulated(analysed):
    truth, _, analysis = analysed
    subjects = analysis.tables["subjects"].set_index("subject")
    assert len(subjects) == len(truth.animals)
    for a in truth.animals:
        row = subjects.loc[a.subject]
        assert bool(row["excluded"]) == a.excluded, a.subject
        if a.exclusion_source == "acquisition_criterion":
            assert row["exclusion_reason"] == "non-acquirer"
        if a.exclusion_source == "roster":
            assert row["exclusion_reason"].startswith("roster:")
        if a.excluded:
            continue
        assert bool(row["acquisition_met"]) == a.acquisition_met, a.subject
        assert row["acquisition_session"] == a.acquisition_session, a.subject
        assert row["extinction_sessions_to_criterion"] == a.extinction_sessions_to_criterion


def test_reinstatement_baselines_equal_the_simulation(analysed):
    truth, _, analysis = analysed
    tests = analysis.tables["tests"]
    got = tests.set_index(["subject", "test"])
    excluded = {a.subject for a in truth.animals if a.excluded}
    checked = 0
    for t in truth.tests:
        row = got.loc[(t.subject, t.test)]
        assert row["baseline_active"] == pytest.approx(t.baseline_active), (t.subject, t.test)
        assert row["baseline_inactive"] == pytest.approx(t.baseline_inactive)
        assert row["test_active"] == t.test_active
        assert bool(row["included"]) == (t.subject not in excluded)
        if t.baseline_active:
            assert row["pct_baseline"] == pytest.approx(100 * t.test_active / t.baseline_active)
        checked += 1
    assert checked == 63


def test_flagged_sessions_are_marked_and_kept_out_of_statistics(analysed):
    truth, _, analysis = analysed
    sessions = analysis.tables["sessions"]
    flagged = {(s.subject, pd.Timestamp(s.start)): s.flags for s in truth.sessions if s.flags}
    assert flagged
    for (subject, start), flags in flagged.items():
        row = sessions[(sessions.subject == subject) & (sessions.start == start)].iloc[0]
        assert not row["analyzable"]
        if "aborted" in flags:
            assert row["flag_aborted"]
        if "equipment_failure" in flags:
            assert row["flag_equipment_failure"]
    assert sessions["analyzable"].sum() == len(sessions) - len(flagged)


def test_the_simulated_catheter_failure_is_the_only_catheter_signature(analysed):
    truth, _, analysis = analysed
    sessions = analysis.tables["sessions"]
    failing = {a.subject for a in truth.animals if a.kind == "catheter_failure"}
    assert failing
    got = sessions[sessions["flag_catheter_signature"]]
    # The generator fails the catheter from acquisition day 8 (demo._simulate_squad): the
    # rat presses on, infusions and time-out presses soar, and its record ends on day 9.
    assert set(zip(got["subject"], got["day_in_phase"], strict=True)) == {
        (s, d) for s in failing for d in (8, 9)
    }
    assert got["phase"].eq("acquisition").all() and got["analyzable"].all()


def test_re_extinction_is_the_extinction_between_the_simulated_tests(analysed):
    truth, _, analysis = analysed
    sessions = analysis.tables["sessions"]
    # The generator's schedule: extinction to criterion, then 3 tests with re-extinction
    # in between (demo._simulate_squad).
    first_test = {}
    for t in truth.tests:
        first_test[t.subject] = min(first_test.get(t.subject, t.start), t.start)
    expected = {
        (s.subject, pd.Timestamp(s.start))
        for s in truth.sessions
        if s.phase == "extinction" and s.subject in first_test and s.start > first_test[s.subject]
    }
    got = sessions[sessions["re_extinction"]]
    assert set(zip(got["subject"], got["start"], strict=True)) == expected
    assert len(expected) > 50
    # The extinction statistics take the first run and say how many sessions that leaves.
    ext = analysis.tables["stats"]
    ext = ext[(ext["phase"] == "extinction") & ext["analysis"].isin(["mixed_anova", "lmm"])]
    assert ext["note"].str.startswith(f"first extinction run: {len(expected)} re-extinction").all()


def test_statistics_table_has_a_row_per_analysis_with_sentences(analysed):
    _, _, analysis = analysed
    stats = analysis.tables["stats"]
    assert {"mixed_anova", "lmm", "ttest_paired", "posthoc", "gee_nb"} <= set(stats.analysis)
    assert {"acquisition", "extinction", "reinstatement"} <= set(stats.phase)
    lmm = stats[(stats.analysis == "lmm") & (stats.phase == "acquisition")]
    assert "day_in_phase" in set(lmm.effect)
    ok = stats[stats.p.notna()]
    assert ok["sentence"].str.contains(r"p [<=] ", regex=True).all()
