"""The demo experiment ingested end to end, checked against the generator's own record."""

from __future__ import annotations

import pandas as pd
import pytest

from labpipe import store
from labpipe.config import load_config
from labpipe.demo import write_demo
from labpipe.ingest import ingest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "lab"
    truth = write_demo(root)
    cfg = load_config(root / "configs" / "experiment.toml")
    summary = ingest(cfg, workers=2)
    return truth, cfg, summary


def _truth_frame(truth) -> pd.DataFrame:
    rows = [
        {
            "subject": s.subject,
            "start": pd.Timestamp(s.start),
            "file": s.file,
            "block": s.block,
            "box": s.box,
            "msn": s.msn,
            "phase": s.phase,
            "test": s.test,
            "day_in_phase": s.day_in_phase,
            "duration_min": s.duration_min,
            "active": s.active,
            "inactive": s.inactive,
            "reinforcers": s.reinforcers,
            "timeout_active": s.timeout_active,
        }
        for s in truth.sessions
    ]
    return pd.DataFrame(rows)


def test_every_simulated_session_is_stored_once_with_its_counts(demo):
    truth, cfg, summary = demo
    stored = store.read_sessions(cfg.processed_dir)
    expected = _truth_frame(truth)
    assert len(stored) == len(expected)
    assert stored.session_id.is_unique
    merged = expected.merge(
        stored.assign(start=stored.start.dt.tz_convert("UTC")),
        left_on=[expected.subject, expected.start.dt.tz_convert("UTC")],
        right_on=["subject", "start"],
        how="left",
        suffixes=("_truth", ""),
        indicator=True,
    )
    assert (merged["_merge"] == "both").all()
    for col in ("active", "inactive", "reinforcers", "timeout_active", "day_in_phase", "box"):
        assert merged[col].astype("int64").tolist() == merged[f"{col}_truth"].tolist(), col
    assert merged["phase"].tolist() == merged["phase_truth"].tolist()
    assert merged["test"].fillna("").tolist() == merged["test_truth"].fillna("").tolist()
    assert merged["msn"].tolist() == merged["msn_truth"].tolist()
    assert merged["source_file"].tolist() == merged["file"].tolist()
    assert merged["source_block"].tolist() == merged["block"].tolist()
    assert merged["duration_min"].tolist() == pytest.approx(merged["duration_min_truth"].tolist())
    dose = cfg.drug.dose_mg_per_kg
    acq = merged[merged.phase == "acquisition"]
    assert acq["intake_mg_kg"].tolist() == pytest.approx((acq["reinforcers"] * dose).tolist())


def test_events_per_session_match_the_simulation(demo):
    truth, cfg, _ = demo
    stored = store.read_sessions(cfg.processed_dir)
    events = store.read_events(cfg.processed_dir)
    counts = events.groupby(["session_id", "event"]).size()
    key = {(r.subject, r.start.tz_convert("UTC")): r.session_id for r in stored.itertuples()}
    checked = 0
    for s in truth.sessions:
        sid = key[(s.subject, pd.Timestamp(s.start).tz_convert("UTC"))]
        for event, n in s.n_events.items():
            assert counts.get((sid, event), 0) == n, (s.subject, s.file, event)
            checked += 1
    assert checked > 1000


def test_designed_defects_are_set_aside_or_recorded_with_their_reason(demo):
    truth, _, summary = demo
    aside = {(i.file, i.block): i.reason_code for i in summary.still_set_aside}
    dup_files = {f for f, _ in summary.duplicates}
    assert truth.defects, "the demo must contain file defects"
    for d in truth.defects:
        if d.kind == "duplicate_copy":
            assert d.file in dup_files
        else:
            assert aside.get((d.file, d.block)) == d.reason, d
    assert summary.exit_code == 1


def test_rerunning_the_demo_ingest_reads_nothing(demo):
    _, cfg, first = demo
    again = ingest(cfg, workers=2)
    assert again.files_read == 0
    assert again.sessions_added == 0
    assert again.sessions_total == first.sessions_total
