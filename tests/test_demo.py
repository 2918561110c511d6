"""The demo generator: determinism, a self-consistent truth, real MED-PC file layout."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labpipe import demo
from labpipe.errors import ConfigError
from labpipe.model import RawSession, Reason


def _medpc(*names: str) -> Any:
    """labpipe.medpc, or skip while the functions a test needs are not written yet."""
    module = pytest.importorskip("labpipe.medpc")
    for name in names:
        if not hasattr(module, name):  # pragma: no cover - only while medpc is incomplete
            pytest.skip(f"labpipe.medpc.{name} not written yet")
    return module


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, demo.DemoTruth]:
    lab_dir = tmp_path_factory.mktemp("demo")
    return lab_dir, demo.write_demo(lab_dir)


def _raw(lab_dir: Path) -> Path:
    return lab_dir / "data" / "raw"


def _files(lab_dir: Path) -> dict[str, bytes]:
    root = _raw(lab_dir)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _defect(truth: demo.DemoTruth, kind: str) -> demo.DefectTruth:
    (d,) = [d for d in truth.defects if d.kind == kind]
    return d


# --- determinism and the lab folder ---------------------------------------------------------


def test_same_seed_same_bytes(tmp_path: Path, lab: tuple[Path, demo.DemoTruth]) -> None:
    first_dir, first = lab
    again = demo.write_demo(tmp_path)
    assert _files(tmp_path) == _files(first_dir)
    for rel in ("configs/experiment.toml", "configs/roster.csv"):
        assert (tmp_path / rel).read_bytes() == (first_dir / rel).read_bytes()
    assert again.to_json() == first.to_json()


def test_another_seed_other_numbers(tmp_path: Path, lab: tuple[Path, demo.DemoTruth]) -> None:
    other = demo.write_demo(tmp_path, seed=7)
    assert [s.active for s in other.sessions] != [s.active for s in lab[1].sessions]
    # The design (defects, flags, exclusions) does not depend on the seed.
    assert [(d.kind, d.reason) for d in other.defects] == [
        (d.kind, d.reason) for d in lab[1].defects
    ]
    assert {a.subject for a in other.animals if a.excluded} == {"R07", "R12", "R21"}


def test_skeleton_and_refusal(lab: tuple[Path, demo.DemoTruth]) -> None:
    lab_dir, truth = lab
    for sub in ("configs", "data/raw", "data/processed", "reports"):
        assert (lab_dir / sub).is_dir()
    assert sorted(_files(lab_dir)) == list(truth.files)
    with pytest.raises(ConfigError, match="already exists"):
        demo.write_demo(lab_dir)


def test_roster(lab: tuple[Path, demo.DemoTruth]) -> None:
    lab_dir, truth = lab
    lines = (lab_dir / "configs" / "roster.csv").read_text().splitlines()
    assert lines[0] == "subject,sex,group,active_lever,cohort,body_weight_kg,exclude"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 24
    assert sorted(r[1] for r in rows).count("F") == 12
    for col in (2, 3, 4):  # group, lever and cohort balanced 12/12
        assert sorted({r[col]: sum(x[col] == r[col] for x in rows) for r in rows}.values()) == [
            12,
            12,
        ]
    excluded = {r[0]: r[6] for r in rows if r[6]}
    assert excluded == {"R07": "catheter failure day 9"}
    assert [a.subject for a in truth.animals] == [r[0] for r in rows]


# --- the truth is internally consistent -------------------------------------------------------


def test_sessions_counts_and_times(lab: tuple[Path, demo.DemoTruth]) -> None:
    _, truth = lab
    assert len(truth.sessions) > 500
    lever = {a.subject: a.active_lever for a in truth.animals}
    for s in truth.sessions:
        left_active = lever[s.subject] == "left"
        assert (s.active, s.inactive) == ((s.left, s.right) if left_active else (s.right, s.left))
        assert s.n_events["active_press"] == s.active
        assert s.n_events["inactive_press"] == s.inactive
        assert s.n_events["reinforcer"] == s.reinforcers
        assert s.end - s.start == timedelta(minutes=s.duration_min)
        assert s.start.tzinfo is not None
        if s.phase == "acquisition":
            # FR1: every active press outside time-out is reinforced.
            assert s.active == s.reinforcers + s.timeout_active
        elif s.phase == "extinction":
            assert s.reinforcers == s.timeout_active == 0
        else:
            assert s.reinforcers == 0  # tests run under extinction conditions
            assert s.n_events["timeout_press"] == s.timeout_active
            if s.test != "cue":
                assert s.timeout_active == s.n_events["cue_on"] == 0
            else:
                assert s.n_events["cue_on"] + s.timeout_active == s.active
        if "aborted" in s.flags:
            assert 30 <= s.duration_min < 40
        else:
            assert s.duration_min == 120
        if "equipment_failure" in s.flags:
            assert s.left == s.right == s.reinforcers == 0


def test_day_in_phase_and_identity(lab: tuple[Path, demo.DemoTruth]) -> None:
    _, truth = lab
    seen: dict[tuple[str, str], list[int]] = defaultdict(list)
    for s in truth.sessions:  # sorted by subject and start
        seen[(s.subject, s.phase)].append(s.day_in_phase)
    assert all(days == list(range(1, len(days) + 1)) for days in seen.values())
    identities = {(s.subject, s.start, s.box) for s in truth.sessions}
    assert len(identities) == len(truth.sessions)
    places = {(s.file, s.block) for s in truth.sessions}
    assert len(places) == len(truth.sessions)


def _acq(reinf: list[int], active: list[int], inactive: list[int]) -> tuple[bool, int | None]:
    ok = [r >= 10 and a >= 2 * i for r, a, i in zip(reinf, active, inactive, strict=True)]
    runs = [d for d in range(3, len(ok) + 1) if all(ok[d - 3 : d])]
    return ok[-3:] == [True] * 3, (runs[0] if runs else None)


def test_criteria_derive_from_counts(lab: tuple[Path, demo.DemoTruth]) -> None:
    _, truth = lab
    for a in truth.animals:
        mine = [s for s in truth.sessions if s.subject == a.subject]
        acq = [s for s in mine if s.phase == "acquisition"]
        met, first = _acq(
            [s.reinforcers for s in acq], [s.active for s in acq], [s.inactive for s in acq]
        )
        assert (a.acquisition_met, a.acquisition_session) == (met, first), a.subject
        ext = [s.active for s in mine if s.phase == "extinction"]
        threshold = 0.25 * float(np.mean([s.active for s in acq[-3:]]))
        crit = next((d + 1 for d in range(1, len(ext)) if ext[d - 1] <= threshold >= ext[d]), None)
        assert a.extinction_sessions_to_criterion == crit, a.subject
        if a.kind == "acquirer":
            assert not a.excluded and a.acquisition_met
            assert crit is not None and crit >= 3
            assert ext[0] > threshold  # extinction burst: day 1 stays high
            assert ext[0] >= 0.8 * float(np.mean([s.active for s in acq[-3:]]))
            # Once acquired, stays acquired (no ambiguity about "when").
            assert all(s.reinforcers >= 10 for s in acq[first - 3 :])
        else:
            assert a.excluded and not ext
    kinds = {a.subject: (a.kind, a.exclusion_source) for a in truth.animals if a.excluded}
    assert kinds == {
        "R07": ("catheter_failure", "roster"),
        "R12": ("non_acquirer", "acquisition_criterion"),
        "R21": ("non_acquirer", "acquisition_criterion"),
    }
    for s in truth.sessions:
        if s.subject in ("R12", "R21"):
            assert s.reinforcers < 10


def test_flagged_sessions_are_outside_criterion_windows(lab: tuple[Path, demo.DemoTruth]) -> None:
    _, truth = lab
    flagged = [s for s in truth.sessions if s.flags]
    assert sorted(f for s in flagged for f in s.flags) == ["aborted", "equipment_failure"]
    for s in flagged:
        a = truth.animal(s.subject)
        assert s.phase == "acquisition" and a.kind == "acquirer"
        assert a.acquisition_session is not None
        # The first 3-session window that meets the criterion starts after the flag.
        assert a.acquisition_session - 2 > s.day_in_phase
        # The rat responds normally otherwise.
        others = [x for x in truth.sessions if x.subject == s.subject and x.phase == s.phase]
        assert np.median([x.active for x in others]) >= 10


def test_tests_baselines_and_effects(lab: tuple[Path, demo.DemoTruth]) -> None:
    _, truth = lab
    rats = [a for a in truth.animals if not a.excluded]
    assert len(truth.tests) == 3 * len(rats)
    by_rat: dict[str, list[demo.TestTruth]] = defaultdict(list)
    for t in truth.tests:
        by_rat[t.subject].append(t)
        ext = [
            s
            for s in truth.sessions
            if s.subject == t.subject and s.phase == "extinction" and s.start < t.start
        ]
        assert t.baseline_active == pytest.approx(np.mean([s.active for s in ext[-2:]]))
        assert t.baseline_inactive == pytest.approx(np.mean([s.inactive for s in ext[-2:]]))
        (session,) = [s for s in truth.sessions if s.subject == t.subject and s.start == t.start]
        assert (session.test, session.active, session.inactive) == (
            t.test,
            t.test_active,
            t.test_inactive,
        )
        assert len(ext) >= 2
    orders = {tuple(t.test for t in ts) for ts in by_rat.values()}
    assert len(orders) == 3  # Latin square
    for ts in by_rat.values():
        for prev, nxt in zip(ts, ts[1:], strict=False):
            between = [
                s
                for s in truth.sessions
                if s.subject == prev.subject and prev.start < s.start < nxt.start
            ]
            assert len(between) >= 2 and all(s.phase == "extinction" for s in between)
    group = {a.subject: a.group for a in truth.animals}
    for test in ("cue", "drug_prime", "stress"):
        rise = {
            g: np.mean(
                [
                    t.test_active - t.baseline_active
                    for t in truth.tests
                    if t.test == test and group[t.subject] == g
                ]
            )
            for g in ("vehicle", "nac")
        }
        assert rise["vehicle"] > 1.25 * rise["nac"] > 0  # NAC reduces reinstatement
    inactive = {
        test: np.mean([t.test_inactive for t in truth.tests if t.test == test])
        for test in ("cue", "drug_prime", "stress")
    }
    assert inactive["stress"] > 2 * max(inactive["cue"], inactive["drug_prime"])


def test_defects_and_json(lab: tuple[Path, demo.DemoTruth]) -> None:
    lab_dir, truth = lab
    assert {(d.kind, d.reason) for d in truth.defects} == {
        ("duplicate_copy", Reason.DUPLICATE_FILE),
        ("unknown_subject", Reason.UNKNOWN_SUBJECT),
        ("truncated", Reason.TRUNCATED_BLOCK),
    }
    files = _files(lab_dir)
    copy = _defect(truth, "duplicate_copy")
    assert copy.file.split("/")[-1].startswith("Copy of !")
    assert files[copy.file] == files[str(copy.duplicate_of)]
    typo = _defect(truth, "unknown_subject")
    assert (typo.subject, typo.subject_raw) == ("R10", "R1O")
    assert b"Subject: R1O\r\n" in files[typo.file]
    stored_files = {s.file for s in truth.sessions}
    assert typo.file not in stored_files and copy.file not in stored_files
    cut = _defect(truth, "truncated")
    assert cut.file in stored_files  # its complete blocks are stored
    assert not any(s.file == cut.file and s.block == cut.block for s in truth.sessions)
    import json

    data = json.loads(truth.to_json())
    assert set(data) == {"experiment", "seed", "files", "animals", "sessions", "tests", "defects"}
    assert data["defects"][0]["reason"] in {r.value for r in Reason}
    assert data["sessions"][0]["start"].endswith("-05:00")


# --- file layout -----------------------------------------------------------------------------


def test_file_layout(lab: tuple[Path, demo.DemoTruth]) -> None:
    lab_dir, truth = lab
    files = _files(lab_dir)
    cut = _defect(truth, "truncated").file
    for rel, data in files.items():
        assert data.startswith(b"File: C:\\MED-PC IV\\DATA\\"), rel
        assert b"\n\r\r\nStart Date: " in data  # the real files' block framing
        body = data.replace(b"\n\r\r\n", b"")
        assert body.count(b"\n") == body.count(b"\r\n"), rel  # CRLF everywhere else
        assert body.count(b"\r") == body.count(b"\r\n"), rel
        assert b"\xe2\x80\x93" not in data and b"\x96 NAC" in data  # cp1252 en dash
        if rel != cut:
            assert data.endswith(b"\r\n"), rel
    assert not files[cut].endswith(b"\n")
    with pytest.raises(UnicodeDecodeError):
        files[truth.files[0]].decode("utf-8")
    multi = [rel for rel, data in files.items() if data.count(b"Start Date:") > 1]
    assert multi and all("_EXT_" in rel for rel in multi)
    names = [rel.split("/")[-1] for rel in files]
    assert sum(bool(re.fullmatch(r"!\d{4}-\d\d-\d\d_\d\dh\d\dm\.Subject R\w\w", n)) for n in names)
    assert re.search(rb"Start Time:  \d:", files[truth.files[0]])  # MED-PC pads the hour


def _array(data: bytes, letter: str) -> np.ndarray:
    """Read one array from the first block of a file (test helper, not a parser)."""
    text = data.decode("cp1252")
    m = re.search(rf"\r\n{letter}:\r\n((?:\s+\d+:[^\r]*\r\n)+)", text)
    assert m
    rows = [line.split(":", 1)[1].split() for line in m.group(1).splitlines()]
    return np.array([float(v) for row in rows for v in row])


def test_time_code_array_logs_timeout_presses_twice(lab: tuple[Path, demo.DemoTruth]) -> None:
    lab_dir, truth = lab
    cue = [s for s in truth.sessions if s.test == "cue" and s.timeout_active > 0]
    assert cue
    s = cue[0]
    e = _array((_raw(lab_dir) / s.file).read_bytes(), "E")
    e = e[e > 0]
    ticks = np.floor(e).astype(np.int64)
    codes = np.round((e - ticks) * 1000).astype(np.int64)
    lever = {"left": 1, "right": 2}[truth.animal(s.subject).active_lever]
    assert int(np.sum(codes == 5)) == s.timeout_active
    assert int(np.sum(codes == lever)) == s.active  # a time-out press is still one press
    assert int(np.sum(codes == 4)) == s.n_events["cue_on"]
    to_ticks = set(ticks[codes == 5].tolist())
    assert to_ticks <= set(ticks[codes == lever].tolist())
    cue_t = ticks[codes == 4] / 100
    for t in ticks[codes == 5] / 100:
        assert 0 < t - cue_t[cue_t <= t].max() < demo.TIMEOUT_S
    assert np.all(np.diff(ticks) >= 0)
    assert ticks.max() < 100 * 60 * s.duration_min


# --- the parser reads back exactly the truth --------------------------------------------------


def _counts(values: np.ndarray) -> int:
    return int(np.count_nonzero(values))


def test_parsed_files_equal_truth(lab: tuple[Path, demo.DemoTruth]) -> None:
    medpc = _medpc("parse_medpc")
    lab_dir, truth = lab
    defects = {d.file: d for d in truth.defects}
    by_place = {(s.file, s.block): s for s in truth.sessions}
    lever = {a.subject: a.active_lever for a in truth.animals}
    n_checked = 0
    for rel in truth.files:
        parsed = medpc.parse_medpc((_raw(lab_dir) / rel).read_bytes(), source=rel)
        d = defects.get(rel)
        if d is not None and d.kind == "truncated":
            assert [p.reason for p in parsed.problems] == [Reason.TRUNCATED_BLOCK]
            assert parsed.problems[0].block == d.block
            assert len(parsed.sessions) == d.block
        else:
            assert parsed.problems == ()
        assert parsed.newline in ("CRLF", "mixed")
        for raw in parsed.sessions:
            if d is not None and d.kind != "truncated":
                assert raw.subject == d.subject_raw
                continue
            s = by_place[(rel, raw.block)]
            n_checked += 1
            v = raw.variables
            assert raw.subject == s.subject and raw.msn == s.msn
            assert raw.header["Box"] == str(s.box)
            assert raw.header["Start Date"] == s.start.strftime("%m/%d/%y")
            assert raw.header["Start Time"].rjust(8) == demo._medpc_time(s.start)
            assert raw.header["End Time"].rjust(8) == demo._medpc_time(s.end)
            assert raw.header["Experiment"] == demo.EXPERIMENT_FIELD
            assert (v["A"], v["B"], v["C"], v["D"]) == (
                s.left,
                s.right,
                s.reinforcers,
                s.timeout_active,
            )
            if "E" in v:
                e = v["E"][v["E"] > 0]
                codes = np.round((e - np.floor(e)) * 1000).astype(int)
                assert [int(np.sum(codes == c)) for c in (1, 2, 3, 5)] == [
                    s.left,
                    s.right,
                    s.reinforcers,
                    s.timeout_active,
                ]
                assert np.floor(e).max() < s.duration_min * 6000
            else:
                for letter, n in (("L", s.left), ("R", s.right), ("I", s.reinforcers)):
                    times = v[letter]
                    assert _counts(times) == n and np.all(times[n:] == 0)
                    assert np.all(np.diff(times[:n]) > 0)
                    assert np.all((times[:n] > 0) & (times[:n] < s.duration_min * 60))
                    assert np.all(np.round(times[:n], 2) == times[:n])
                active = v["L"] if lever[s.subject] == "left" else v["R"]
                active = active[: s.active]
                inf = v["I"][: s.reinforcers]
                # Time-out presses: active presses within 20 s after an infusion.
                after = active[:, None] - inf[None, :]
                in_to = np.any((after > 0) & (after < demo.TIMEOUT_S), axis=1)
                assert int(in_to.sum()) == s.timeout_active
                assert set(inf.tolist()) <= set(active.tolist())
    assert n_checked == len(truth.sessions)


def test_fast_writer_matches_format_medpc(lab: tuple[Path, demo.DemoTruth]) -> None:
    """The scaled lab's writer lays bytes out exactly as format_medpc does."""
    medpc = _medpc("parse_medpc", "format_medpc")
    lab_dir, truth = lab
    for rel in truth.files[:40] + truth.files[-40:]:
        data = (_raw(lab_dir) / rel).read_bytes()
        parsed = medpc.parse_medpc(data, source=rel)
        if parsed.problems:
            continue
        file_line = str(parsed.sessions[0].header["File"])
        sessions = [
            RawSession(header=_as_written(r.header), variables=dict(r.variables))
            for r in parsed.sessions
        ]
        fast = demo._fast_file(
            file_line,
            [
                (demo._fast_header(dict(r.header)), demo._fast_body(dict(r.variables)))
                for r in sessions
            ],
        )
        assert fast == medpc.format_medpc(sessions, file_line=file_line) == data, rel


def _as_written(header: Mapping[str, str]) -> dict[str, str]:
    """Header without the file line, times space-padded again as MED-PC writes them."""
    out = {k: v for k, v in header.items() if k != "File"}
    for key in ("Start Time", "End Time"):
        out[key] = out[key].rjust(8)
    return out


# --- config ----------------------------------------------------------------------------------


def test_config_loads(lab: tuple[Path, demo.DemoTruth]) -> None:
    config = pytest.importorskip("labpipe.config")
    lab_dir, truth = lab
    exp = config.load_config(lab_dir / "configs" / "experiment.toml")
    assert exp.experiment == demo.EXPERIMENT
    assert exp.timezone == demo.TIMEZONE
    assert exp.drug.dose_mg_per_kg == demo.DOSE_MG_PER_KG
    assert exp.events.codes == demo.EVENT_CODES
    assert exp.events.tick_seconds == 0.01
    assert exp.levers.left.count == "A" and exp.levers.right.times == "R"
    assert exp.reinforcers.times == "I" and exp.timeout_presses.count == "D"
    assert exp.analysis.baseline_sessions == 2
    assert set(exp.roster) == {a.subject for a in truth.animals}
    assert exp.roster["R07"].exclude == "catheter failure day 9"
    for s in truth.sessions:
        rule = exp.match_phase(s.msn)
        assert rule is not None and (str(rule.phase), rule.test) == (s.phase, s.test)
    assert exp.find_subject("R1O") is None


# --- the scaled lab ---------------------------------------------------------------------------


def test_scaled_lab(tmp_path: Path) -> None:
    n = demo.write_scaled_lab(tmp_path / "a", n_files=700, seed=3)
    assert n == 700
    files = _files(tmp_path / "a")
    assert len(files) == 700
    sizes = sorted(len(b) for b in files.values())
    assert 600 < sizes[len(sizes) // 2] < 1500  # median about 1 KB
    multi = sum(b.count(b"Start Date:") > 1 for b in files.values())
    assert 0.01 < multi / len(files) < 0.06
    demo.write_scaled_lab(tmp_path / "b", n_files=700, seed=3)
    assert _files(tmp_path / "b") == files
    roster = (tmp_path / "a" / "configs" / "roster.csv").read_text().splitlines()
    assert len(roster) == 1 + 48  # two cohorts started
    subjects = {line.split(",")[0] for line in roster[1:]}
    medpc = _medpc("parse_medpc")
    for rel, data in list(files.items())[:: math.ceil(len(files) / 60)]:
        parsed = medpc.parse_medpc(data, source=rel)
        assert parsed.problems == ()
        for raw in parsed.sessions:
            assert raw.subject in subjects
            a, b = int(raw.variables["A"]), int(raw.variables["B"])
            if "L" in raw.variables:
                assert _counts(raw.variables["L"]) == a and _counts(raw.variables["R"]) == b
    config = pytest.importorskip("labpipe.config")
    exp = config.load_config(tmp_path / "a" / "configs" / "experiment.toml")
    assert len(exp.roster) == 48
