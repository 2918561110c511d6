"""Ingest: raw files -> catalog + parquet, with every kind of bad input the issue lists."""

from __future__ import annotations

import os
import sqlite3
import time

import numpy as np
import pandas as pd
import pytest

from labpipe import store
from labpipe.config import load_config
from labpipe.ingest import ingest

from labfolder import Lab, event_session, make_lab, session


@pytest.fixture
def lab(tmp_path) -> Lab:
    return make_lab(tmp_path / "lab")


def run(lab: Lab, **kw):
    return ingest(load_config(lab.config), workers=1, **kw)


def test_sessions_are_mapped_to_active_and_inactive_per_rat(lab):
    # R1's active lever is left, R2's is right (roster): the same program, mirrored.
    lab.add("r1", [session("R1", left=[10, 20, 30.5], right=[15], infusions=[10, 30.5], timeout=1)])
    lab.add("r2", [session("R2", box=2, left=[12], right=[5, 6, 7, 8], infusions=[5, 8])])
    summary = run(lab)
    assert summary.exit_code == 0
    assert summary.sessions_added == 2
    s = store.read_sessions(lab.processed).set_index("subject")
    assert s.loc["R1", ["active", "inactive", "reinforcers", "timeout_active"]].tolist() == [
        3,
        1,
        2,
        1,
    ]
    assert s.loc["R2", ["active", "inactive", "reinforcers"]].tolist() == [4, 1, 2]
    assert s.loc["R1", "intake_mg_kg"] == pytest.approx(1.0)  # 2 infusions x 0.5 mg/kg
    assert s.loc["R1", "phase"] == "acquisition"
    assert s.loc["R1", "day_in_phase"] == 1
    assert s.loc["R1", "duration_min"] == pytest.approx(120.0)
    assert str(s["start"].dtype) == "datetime64[us, America/New_York]"
    assert s.loc["R1", "start"] == pd.Timestamp("2026-03-02 09:00", tz="America/New_York")

    ev = store.read_events(lab.processed)
    r1 = ev[ev.session_id == s.loc["R1", "session_id"]]
    assert r1.groupby("event").size().to_dict() == {
        "active_press": 3,
        "inactive_press": 1,
        "reinforcer": 2,
    }
    assert r1[r1.event == "active_press"].t_s.tolist() == [10.0, 20.0, 30.5]


def test_every_raw_variable_is_stored_losslessly_padding_included(lab):
    lab.add("r1", [session("R1", left=[1.5, -0.0], right=[2.25], pad=7)])
    run(lab)
    var = store.read_variables(lab.processed)
    left = var[var.variable == "L"]
    assert left["index"].tolist() == list(range(2 + 7))
    assert left["value"].tolist()[:1] == [1.5]
    scalars = var[var["index"].isna()]
    assert set(scalars.variable) == {"A", "B", "C", "D"}


def test_day_in_phase_counts_sessions_per_subject_and_phase_in_start_order(lab):
    lab.add("d2", [session("R1", date="03/03/26", left=[1])])
    lab.add("d1", [session("R1", date="03/02/26", left=[1])])
    lab.add("e1", [session("R1", date="03/04/26", msn="EXT_2h")])
    run(lab)
    s = store.read_sessions(lab.processed).sort_values("start")
    assert s["day_in_phase"].tolist() == [1, 2, 1]
    assert s["session_index"].tolist() == [1, 2, 3]
    assert s["phase"].tolist() == ["acquisition", "acquisition", "extinction"]


def test_rerun_on_unchanged_input_reads_nothing_and_rewrites_nothing(lab):
    lab.add("r1", [session("R1", left=[1, 2])])
    lab.add("r2", [session("R2", box=2, right=[3])])
    first = run(lab)
    before = lab.outputs()
    time.sleep(0.01)
    second = run(lab)
    assert second.files_read == 0
    assert second.sessions_added == 0
    assert second.exit_code == 0
    assert lab.outputs() == before
    assert first.sessions_total == second.sessions_total == 2


def test_bad_files_are_set_aside_with_reasons_and_do_not_stop_the_others(lab):
    good = session("R1", left=[1, 2])
    lab.add("good", [good])
    lab.add_bytes("empty.txt", b"")
    lab.add_bytes("notes.csv", b"subject,presses\nR1,12\nR2,30\n")
    lab.add("unknown_subject", [session("R9", box=3)])
    lab.add("unknown_msn", [session("R2", box=2, msn="FOOD_TRAINING")])
    # A multi-box file whose last session was cut off mid-array by a power loss.
    whole = lab_bytes(
        [
            session("R2", box=2, date="03/05/26", left=[1]),
            session("R3", box=3, date="03/05/26", right=[4, 5, 6], pad=40),
        ]
    )
    lab.add_bytes("multi_cut", whole[: len(whole) - 120])
    summary = run(lab)
    codes = {(i.file, i.reason_code) for i in summary.still_set_aside}
    assert ("empty.txt", "EMPTY_FILE") in codes
    assert ("notes.csv", "NOT_MEDPC") in codes
    assert ("unknown_subject", "UNKNOWN_SUBJECT") in codes
    assert ("unknown_msn", "UNKNOWN_PHASE") in codes
    assert ("multi_cut", "TRUNCATED_BLOCK") in codes
    assert summary.exit_code == 1
    stored = store.read_sessions(lab.processed)
    # The good file and the complete session of the cut file are in.
    assert sorted(stored.subject) == ["R1", "R2"]
    reasons = {i.file: i.reason for i in summary.still_set_aside}
    assert "R9" in reasons["unknown_subject"] and "roster" in reasons["unknown_subject"]
    assert "FOOD_TRAINING" in reasons["unknown_msn"]


def lab_bytes(sessions):
    from labpipe.medpc import format_medpc

    return format_medpc(sessions)


def test_fixing_the_roster_takes_the_set_aside_session_in(lab):
    lab.add("multi", [session("R1", box=1, left=[1]), session("R9", box=9, left=[2, 3])])
    first = run(lab)
    assert [i.reason_code for i in first.still_set_aside] == ["UNKNOWN_SUBJECT"]
    assert first.sessions_added == 1
    with open(lab.root / "configs" / "roster.csv", "a", encoding="utf-8") as fh:
        fh.write("R9,M,nac,left,C1\n")
    second = run(lab)
    assert second.still_set_aside == []
    assert second.exit_code == 0
    stored = store.read_sessions(lab.processed)
    assert sorted(stored.subject) == ["R1", "R9"]
    assert stored.session_id.is_unique


def test_a_copied_or_renamed_file_is_a_duplicate_and_stored_once(lab):
    lab.add("orig", [session("R1", left=[1, 2])])
    run(lab)
    lab.add_bytes("Copy of orig", lab.written["orig"])
    summary = run(lab)
    assert summary.duplicates == [("Copy of orig", "orig")]
    assert summary.exit_code == 0
    assert len(store.read_sessions(lab.processed)) == 1


def test_the_same_session_in_another_file_is_a_duplicate_even_with_other_line_ends(lab):
    a = session("R1", left=[1, 2])
    b = session("R2", box=2, right=[3])
    lab.add("multi_box", [a, b])
    run(lab)
    lab.add("single_r2_lf", [b], newline="\n")
    summary = run(lab)
    assert [d[0] for d in summary.duplicates] == ["single_r2_lf"]
    assert len(store.read_sessions(lab.processed)) == 2
    con = sqlite3.connect(lab.processed / "catalog.sqlite")
    assert con.execute("SELECT count(*) FROM duplicates").fetchone()[0] == 1


def test_same_identity_with_other_data_is_a_conflict_and_never_overwrites(lab):
    lab.add("orig", [session("R1", left=[1, 2])])
    run(lab)
    lab.add("edited", [session("R1", left=[1, 2, 3])])
    summary = run(lab)
    assert [(i.file, i.reason_code) for i in summary.set_aside] == [("edited", "CONFLICT")]
    assert "orig" in summary.set_aside[0].reason
    assert store.read_sessions(lab.processed).active.tolist() == [2]


def test_a_retyped_subject_is_a_relabel_until_a_correction_says_which_is_right(lab):
    lab.add("orig", [session("R1", left=[1, 2])])
    run(lab)
    # The tech re-exported the file with the Subject corrected to R3 (same box, start, data).
    lab.add("retyped", [session("R3", left=[1, 2])])
    summary = run(lab)
    (item,) = summary.set_aside
    assert item.reason_code == "RELABEL"
    old_id = store.read_sessions(lab.processed).session_id.item()
    assert old_id in item.reason and "corrections.csv" in item.reason
    (lab.root / "configs" / "corrections.csv").write_text(
        f"session_id,subject,reason\n{old_id},R3,typed R1 at the chamber\n", encoding="utf-8"
    )
    fixed = run(lab)
    assert fixed.still_set_aside == []
    stored = store.read_sessions(lab.processed)
    assert stored.subject.tolist() == ["R3"]
    assert stored.subject_raw.tolist() == ["R1"]
    # R3's active lever is the right one: the stored session was derived again.
    assert (stored.active.tolist(), stored.inactive.tolist()) == ([0], [2])


def test_a_file_still_being_written_is_pending_then_ingested_once(lab):
    lab.add("fresh", [session("R1", left=[1])])
    summary = run(lab, settle_seconds=3600)
    assert summary.pending == ["fresh"]
    assert summary.sessions_added == 0
    old = time.time() - 7200
    os.utime(lab.raw / "fresh", (old, old))
    later = run(lab, settle_seconds=3600)
    assert later.sessions_added == 1
    assert run(lab, settle_seconds=3600).sessions_added == 0


def test_time_out_press_logged_twice_is_one_press(lab):
    # R1: left is active. Tick 0.01 s. A reinforced press at 1 s, a time-out press at 5 s
    # logged as code 1 and code 5 at the same tick, and one time-out press logged only
    # with code 5 at 7 s.
    events = [(100, 1), (100, 3), (500, 1), (500, 5), (700, 5), (900, 2), (950, 4)]
    lab.add("rein", [event_session("R1", events=events)])
    run(lab)
    s = store.read_sessions(lab.processed).iloc[0]
    assert (s.active, s.inactive, s.reinforcers, s.timeout_active) == (3, 1, 1, 2)
    assert s.phase == "reinstatement" and s.test == "cue"
    ev = store.read_events(lab.processed)
    assert ev[ev.event == "active_press"].t_s.tolist() == [1.0, 5.0, 7.0]
    assert ev[ev.event == "cue_on"].t_s.tolist() == [9.5]


def test_durations_are_real_elapsed_time_across_dst_and_midnight(lab):
    # 12-h sessions over the night clocks go back (2026-11-01) and forward (2026-03-08).
    lab.add(
        "fall",
        [session("R1", date="10/31/26", end_date="11/01/26", start="20:00:00", end="08:00:00")],
    )
    lab.add(
        "spring",
        [
            session(
                "R2", box=2, date="03/07/26", end_date="03/08/26", start="20:00:00", end="08:00:00"
            )
        ],
    )
    lab.add(
        "plain",
        [
            session(
                "R3", box=3, date="04/07/26", end_date="04/08/26", start="20:00:00", end="08:00:00"
            )
        ],
    )
    run(lab)
    s = store.read_sessions(lab.processed).set_index("subject")
    assert s.loc["R1", "duration_min"] == 13 * 60
    assert s.loc["R2", "duration_min"] == 11 * 60
    assert s.loc["R3", "duration_min"] == 12 * 60
    assert s["dst_crossing"].to_dict() == {"R1": True, "R2": True, "R3": False}


def test_raw_files_are_never_modified(lab):
    lab.add("a", [session("R1", left=[1])])
    lab.add_bytes("junk", b"\x00\x01garbage")
    before = lab.raw_manifest()
    run(lab)
    run(lab)
    assert lab.raw_manifest() == before


def test_parallel_ingest_gives_byte_identical_outputs(tmp_path):
    labs = []
    for name, workers in (("serial", 1), ("parallel", 2)):
        lab = make_lab(tmp_path / name)
        for day in range(1, 29):
            for subject, box in (("R1", 1), ("R2", 2), ("R3", 3)):
                rng = np.random.default_rng(day * 10 + box)
                presses = sorted(np.round(rng.uniform(1, 7000, 20), 2).tolist())
                lab.add(
                    f"{subject}_{day:02d}",
                    [
                        session(
                            subject,
                            box=box,
                            date=f"03/{day:02d}/26",
                            left=presses,
                            right=presses[:3],
                        )
                    ],
                )
        summary = ingest(load_config(lab.config), workers=workers)
        assert summary.sessions_added == 84
        labs.append(lab)
    a, b = ({k: v[1] for k, v in lab.outputs().items()} for lab in labs)
    assert a == b


def test_an_unknown_subject_names_the_likely_animal_and_the_fix(lab):
    # "R2O" is in no roster; R2 is the closest animal the roster has.
    lab.add("typo", [session("R2O", box=2, left=[1])])
    (item,) = run(lab).still_set_aside
    assert item.reason_code == "UNKNOWN_SUBJECT"
    assert "Did you mean R2?" in item.reason
    assert item.reason.startswith("line ")
    assert "typo" not in item.reason  # the file is named beside the reason, not in it
    assert "corrections.csv" in item.reason and item.session_id in item.reason


def test_a_letter_for_digit_slip_is_suggested_first():
    from labpipe.sessions import suggest_subjects

    assert suggest_subjects("R1O", ["R10", "R18", "R19", "R21"]) == ["R10"]
    assert suggest_subjects("rl2", ["R12", "R21"]) == ["R12"]
    assert suggest_subjects("R9", ["R10", "R18"]) == []


# ---- sessions.parquet: extended night after night, rebuilt when it must be -------------


def _sessions_bytes(lab: Lab) -> bytes:
    return (lab.processed / "sessions.parquet").read_bytes()


def _records_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy: how many stored records each sessions.parquet build decodes."""
    sizes: list[int] = []
    real = store.records_frame

    def spy(records):
        sizes.append(len(records))
        return real(records)

    monkeypatch.setattr(store, "records_frame", spy)
    return sizes


def _two_nights(root, *, split: bool) -> Lab:
    lab = make_lab(root)
    lab.add("d1/r1", [session("R1", left=[10, 20], infusions=[10])])
    lab.add("d1/r2", [session("R2", box=2, right=[5], infusions=[5])])
    if split:
        run(lab)
    lab.add("d2/r1", [session("R1", date="03/03/26", left=[1, 2, 3], infusions=[1, 2])])
    lab.add("d2/r2", [session("R2", box=2, date="03/03/26", msn="EXT_2h", right=[7])])
    run(lab)
    return lab


def test_a_nightly_run_decodes_only_the_new_records_and_equals_a_fresh_build(tmp_path, monkeypatch):
    sizes = _records_read(monkeypatch)
    nightly = _two_nights(tmp_path / "a", split=True)
    assert sizes == [2, 2]  # night 1: both records; night 2: only the 2 new ones
    once = _two_nights(tmp_path / "b", split=False)
    assert _sessions_bytes(nightly) == _sessions_bytes(once)
    s = store.read_sessions(nightly.processed).set_index(["subject", "session_index"])
    assert s.loc[("R1", 2), "day_in_phase"] == 2 and s.loc[("R2", 2), "phase"] == "extinction"


def test_a_deleted_or_changed_session_makes_the_next_run_rebuild_from_the_catalog(
    tmp_path, monkeypatch
):
    lab = _two_nights(tmp_path / "a", split=True)
    before = _sessions_bytes(lab)
    con = sqlite3.connect(lab.processed / "catalog.sqlite")
    with con:  # what a future labpipe might do: rewrite a stored record in place
        con.execute("UPDATE sessions SET record = record WHERE subject = 'R1'")
    con.close()
    sizes = _records_read(monkeypatch)
    lab.add("d3/r1", [session("R1", date="03/04/26", left=[4], infusions=[4])])
    run(lab)
    assert sizes == [5]  # every record, not only the new one
    assert _sessions_bytes(lab) != before
    assert len(store.read_sessions(lab.processed)) == 5


def test_a_damaged_or_replaced_sessions_file_is_never_extended(tmp_path, monkeypatch):
    lab = _two_nights(tmp_path / "a", split=True)
    good = _sessions_bytes(lab)
    path = lab.processed / "sessions.parquet"
    # Another (valid) table put in its place, e.g. a backup restored by hand.
    frame = store.read_sessions(lab.processed).iloc[:1]
    store.write_sessions(lab.processed, frame, "America/New_York")
    sizes = _records_read(monkeypatch)
    lab.add("d3/r1", [session("R1", date="03/04/26", left=[4], infusions=[4])])
    run(lab)
    assert sizes == [5]
    assert len(store.read_sessions(lab.processed)) == 5
    assert _sessions_bytes(lab) != good and path.exists()


# ---- mapping: the order of events and the time-out rule, whatever the session's size ----


def test_events_at_the_same_tick_are_ordered_by_name_then_as_logged(lab):
    from labpipe.sessions import map_session

    cfg = load_config(lab.config)
    # R1 (left active): five events logged at tick 100 in no particular order, code 9 has
    # no name in the config, then two presses at tick 50 logged after them.
    events = [(100, 4), (100, 9), (100, 3), (100, 2), (100, 1), (50, 2), (50, 1)]
    mapped = map_session(event_session("R1", events=events), cfg, source_file="x")
    assert mapped.event_t.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert mapped.event_name.tolist() == [
        "active_press",
        "inactive_press",
        "active_press",
        "code_9",
        "cue_on",
        "inactive_press",
        "reinforcer",
    ]
    assert mapped.event_t.dtype == np.float64 and mapped.event_name.dtype == object


@pytest.mark.parametrize("n", [3, 400])
def test_time_out_presses_logged_twice_count_once_in_short_and_long_sessions(lab, n):
    from labpipe.sessions import map_session

    cfg = load_config(lab.config)
    # n active presses (code 1) at ticks 10, 20, ...; every other one also logged as a
    # time-out press (code 5) at the same tick; plus n time-out presses logged only as
    # code 5, at ticks 5, 15, ...
    ticks = [10 * (i + 1) for i in range(n)]
    events = [(t, 1) for t in ticks] + [(t, 5) for t in ticks[::2]]
    events += [(t - 5, 5) for t in ticks]
    mapped = map_session(event_session("R1", events=events), cfg, source_file="x")
    assert mapped.record["active"] == 2 * n
    assert mapped.record["timeout_active"] == n + len(ticks[::2])
    active = mapped.event_t[mapped.event_name == "active_press"]
    assert active.tolist() == sorted(t * 0.01 for t in ticks + [t - 5 for t in ticks])


def test_a_first_ingest_decides_from_memory_exactly_as_from_the_catalog(tmp_path, monkeypatch):
    """A first ingest keeps what it stored in memory instead of querying the catalog per
    chunk; with two files a chunk, every kind of decision crosses a chunk boundary and must
    come out as the catalog look-ups decide it."""
    from labpipe import ingest as ingest_mod
    from labpipe.catalog import Catalog

    monkeypatch.setattr(ingest_mod, "chunk_files", lambda n_todo: 2)
    a = session("R1", left=[1, 2])
    b = session("R2", box=2, right=[3])
    calls: list[int] = []
    monkeypatch.setattr(Catalog, "by_identity", _counting(Catalog.by_identity, calls))
    results = {}
    for memo in (False, True):
        monkeypatch.setattr(ingest_mod, "_MEMO", memo)
        lab = make_lab(tmp_path / f"memo_{memo}")
        lab.add("a1_orig", [a])
        lab.add_bytes("a2_copy", lab.written["a1_orig"])  # same bytes: a duplicate file
        lab.add("a3_multi", [a, b])  # a again (duplicate session) and b (new)
        lab.add("a4_edited", [session("R1", left=[1, 2, 3])])  # conflict with a
        lab.add("a5_retyped", [session("R3", left=[1, 2])])  # relabel of a
        lab.add("a6_clash", [session("R3", left=[9])])  # box clash with a
        lab.add("a7_lf_copy", [b], newline="\n")  # duplicate session, other bytes
        lab.add_bytes("a8_copy_of_multi", lab.written["a3_multi"])  # duplicate file
        calls.clear()
        summary = ingest(load_config(lab.config), workers=1)
        assert bool(calls) is not memo  # memory replaces the look-ups
        results[memo] = (
            lab.catalog_rows(),
            summary.duplicates,
            [(i.file, i.block, i.reason_code, i.reason) for i in summary.set_aside],
            {k: v[1] for k, v in lab.outputs().items()},
        )
    assert results[True] == results[False]
    rows = results[True][0]
    statuses = {path: status for path, _, _, status, *_ in rows["files"]}
    assert statuses == {
        "a1_orig": "ingested",
        "a2_copy": "duplicate",
        "a3_multi": "ingested",
        "a4_edited": "quarantined",
        "a5_retyped": "quarantined",
        "a6_clash": "quarantined",
        "a7_lf_copy": "duplicate",
        "a8_copy_of_multi": "duplicate",
    }
    assert {r[4] for r in rows["set_aside"]} == {"CONFLICT", "RELABEL", "BOX_CLASH"}


def _counting(fn, calls: list):
    def wrapped(*args, **kw):
        calls.append(1)
        return fn(*args, **kw)

    return wrapped


@pytest.mark.parametrize("n", [1, 255, 256, 1000, 4097, 10_000, 100_000])
def test_chunks_keep_path_order_and_end_small_so_no_core_waits_on_one_big_chunk(n):
    from labpipe.ingest import BATCH_FILES, chunk_files, split_chunks

    todo = [(f"/raw/{i:06d}", f"{i:06d}", 1, 1) for i in range(n)]
    chunks = split_chunks(todo)
    assert [item for chunk in chunks for item in chunk] == todo  # every file once, in order
    sizes = [len(c) for c in chunks]
    size = chunk_files(n)
    assert max(sizes) <= size
    if n > 4 * size:
        # the last two chunks' worth of files come in chunks of a quarter size
        assert sizes[-2] == max(BATCH_FILES, size // 4) < size
        assert sum(s for s in sizes if s == size) >= n - 3 * size


def test_the_temporaries_of_a_dead_writer_are_swept_from_staging_and_staged_parts_kept(tmp_path):
    staging = tmp_path / store.STAGING / "events"
    staging.mkdir(parents=True)
    (staging / "part-a.parquet").write_bytes(b"staged")  # a part waiting for its commit
    (staging / ".part-b.parquet.1234abcd.tmp").write_bytes(b"half")  # its writer died
    removed = store.remove_staged_temporaries(tmp_path)
    assert removed == [f"{store.STAGING}/events/.part-b.parquet.1234abcd.tmp"]
    assert [p.name for p in staging.iterdir()] == ["part-a.parquet"]
    assert store.remove_staged_temporaries(tmp_path / "nothing here") == []
