"""The experiment config, roster and corrections: valid input loads, bad input is named."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from labpipe import config
from labpipe.config import (
    AcquisitionCriteria,
    Analysis,
    Drug,
    ExtinctionCriteria,
    load_config,
    write_skeleton,
)
from labpipe.errors import ConfigError
from labpipe.model import Phase

CONFIG = """\
experiment = "coc-rein-2026"
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
codes = { "1" = "left_press", "2" = "right_press", "3" = "reinforcer", "4" = "cue_on" }

[[phases]]
msn = "SA_FR1_.*"
phase = "acquisition"
session_minutes = 120
[[phases]]
msn = "EXT_.*"
phase = "extinction"
[[phases]]
msn = "REIN_CUE.*"
phase = "reinstatement"
test = "cue"
[[phases]]
msn = "REIN_.*"
phase = "reinstatement"
test = "drug_prime"

[criteria.acquisition]
last_sessions = 4
min_reinforcers = 12
min_active_to_inactive = 2.5
[criteria.extinction]
fraction_of_acquisition = 0.3
acquisition_sessions = 2
consecutive = 3
min_sessions = 5
max_active = 20

[analysis]
baseline_sessions = 3
time_bin_minutes = 10
factors = ["group", "sex", "cohort"]
aborted_fraction = 0.75
"""

MINIMAL = """\
experiment = "minimal"
roster = "roster.csv"

[levers.left]
count = "A"
[levers.right]
times = "R"

[[phases]]
msn = "SA.*"
phase = "acquisition"
"""

ROSTER = """\
subject,sex,group,active_lever,cohort,body_weight_kg,exclude
R1,F,vehicle,left,C1,0.25,
OO M1,male,nac,RIGHT,C1,,
R3,f,nac,Left,C2,0.31,  catheter failure day 9
"""

HEADER = "subject,sex,group,active_lever,cohort,body_weight_kg,exclude\n"


def make_lab(
    root: Path,
    *,
    text: str = CONFIG,
    roster: str | bytes = ROSTER,
    corrections: str | None = None,
) -> Path:
    """Write configs/experiment.toml and roster.csv (and corrections.csv) under root."""
    configs = root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    path = configs / "experiment.toml"
    path.write_text(text, encoding="utf-8")
    roster_path = configs / "roster.csv"
    if isinstance(roster, bytes):
        roster_path.write_bytes(roster)
    else:
        roster_path.write_text(roster, encoding="utf-8", newline="")
    if corrections is not None:
        (configs / "corrections.csv").write_text(corrections, encoding="utf-8")
    return path


def edited(*pairs: tuple[str, str], text: str = CONFIG) -> str:
    """CONFIG with each (old, new) replaced once; fails if an old text is absent."""
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def problems(path: Path) -> list[str]:
    """Load a config that must fail; return the problem lines."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = info.value.message
    assert "Traceback" not in message
    assert "pydantic" not in message.lower() and "errors.pydantic.dev" not in message
    return message.splitlines()


def one_problem(path: Path) -> str:
    (line,) = problems(path)
    return line


# --- valid input --------------------------------------------------------------------------------


def test_a_full_config_loads_with_every_value(tmp_path: Path) -> None:
    path = make_lab(tmp_path / "lab")
    exp = load_config(path)
    assert exp.path == path.absolute()
    assert exp.lab_dir == (tmp_path / "lab").absolute()
    assert exp.raw_dir == exp.lab_dir / "data" / "raw"
    assert exp.processed_dir == exp.lab_dir / "data" / "processed"
    assert exp.reports_dir == exp.lab_dir / "reports" / "coc-rein-2026"
    assert exp.experiment == "coc-rein-2026"
    assert (exp.timezone, exp.timezone_is_default) == ("America/New_York", False)
    assert exp.drug == Drug(name="cocaine", dose_mg_per_kg=0.5)
    assert exp.levers is not None
    assert (exp.levers.left.count, exp.levers.left.times) == ("A", "L")
    assert (exp.levers.right.count, exp.levers.right.times) == ("B", "R")
    assert exp.reinforcers is not None and exp.reinforcers.times == "I"
    assert exp.timeout_presses is not None
    assert (exp.timeout_presses.count, exp.timeout_presses.times) == ("D", None)
    assert exp.events is not None
    assert exp.events.array == "E" and exp.events.tick_seconds == 0.01
    assert exp.events.codes == {1: "left_press", 2: "right_press", 3: "reinforcer", 4: "cue_on"}
    assert all(isinstance(k, int) for k in exp.events.codes)
    assert [r.phase for r in exp.phases] == [
        Phase.ACQUISITION,
        Phase.EXTINCTION,
        Phase.REINSTATEMENT,
        Phase.REINSTATEMENT,
    ]
    assert all(isinstance(r.msn, re.Pattern) for r in exp.phases)
    assert [r.test for r in exp.phases] == [None, None, "cue", "drug_prime"]
    assert exp.phases[0].session_minutes == 120
    assert exp.criteria.acquisition == AcquisitionCriteria(
        last_sessions=4, min_reinforcers=12, min_active_to_inactive=2.5
    )
    assert exp.criteria.extinction == ExtinctionCriteria(
        fraction_of_acquisition=0.3,
        acquisition_sessions=2,
        consecutive=3,
        min_sessions=5,
        max_active=20,
    )
    assert exp.analysis == Analysis(
        baseline_sessions=3,
        time_bin_minutes=10,
        factors=["group", "sex", "cohort"],
        aborted_fraction=0.75,
    )
    assert list(exp.roster) == ["R1", "OO M1", "R3"]
    r1, oo, r3 = exp.roster.values()
    assert (r1.sex, r1.group, r1.active_lever, r1.cohort, r1.body_weight_kg, r1.exclude) == (
        "F",
        "vehicle",
        "left",
        "C1",
        0.25,
        None,
    )
    assert (oo.sex, oo.active_lever, oo.body_weight_kg) == ("M", "right", None)
    assert (r3.sex, r3.active_lever, r3.cohort) == ("F", "left", "C2")
    assert r3.exclude == "catheter failure day 9"
    assert exp.corrections == {}
    assert re.fullmatch(r"[0-9a-f]{64}", exp.fingerprint)


def test_find_subject_is_trimmed_and_case_insensitive(tmp_path: Path) -> None:
    exp = load_config(make_lab(tmp_path))
    assert exp.find_subject("R1") is exp.roster["R1"]
    assert exp.find_subject("  r1 \t") is exp.roster["R1"]
    assert exp.find_subject("oo m1") is exp.roster["OO M1"]
    assert exp.find_subject("R2") is None
    assert exp.find_subject("") is None


def test_match_phase_is_a_full_match_and_the_first_wins(tmp_path: Path) -> None:
    exp = load_config(make_lab(tmp_path))
    rule = exp.match_phase("SA_FR1_2h")
    assert rule is not None and rule.phase == Phase.ACQUISITION
    cue = exp.match_phase("REIN_CUE_2h")
    assert cue is not None and cue.test == "cue"  # also matches REIN_.*, but comes first
    prime = exp.match_phase("REIN_PRIME")
    assert prime is not None and prime.test == "drug_prime"
    assert exp.match_phase("XSA_FR1_2h") is None  # a search would find SA_FR1_ inside
    assert exp.match_phase("EXT") is None
    assert exp.match_phase("") is None


def test_the_experiment_is_frozen(tmp_path: Path) -> None:
    exp = load_config(make_lab(tmp_path))
    with pytest.raises(pydantic.ValidationError):
        exp.experiment = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        exp.analysis.time_bin_minutes = 5  # type: ignore[misc]


def test_defaults_when_optional_tables_are_absent(tmp_path: Path) -> None:
    exp = load_config(make_lab(tmp_path / "lab", text=MINIMAL))
    assert exp.drug == Drug(name=None, dose_mg_per_kg=None)
    assert exp.criteria.acquisition is None and exp.criteria.extinction is None
    assert exp.analysis == Analysis()
    assert (
        exp.analysis.baseline_sessions,
        exp.analysis.time_bin_minutes,
        exp.analysis.factors,
        exp.analysis.aborted_fraction,
    ) == (2, 15, ["group", "sex"], 0.8)
    assert exp.reinforcers is None and exp.timeout_presses is None and exp.events is None
    assert exp.levers is not None and exp.levers.left.times is None
    assert exp.phases[0].test is None and exp.phases[0].session_minutes is None
    assert exp.timezone_is_default is True
    assert exp.timezone == config.machine_timezone()


def test_empty_criteria_tables_give_the_documented_defaults(tmp_path: Path) -> None:
    text = MINIMAL + "[criteria.acquisition]\n[criteria.extinction]\n[analysis]\n"
    exp = load_config(make_lab(tmp_path, text=text))
    assert exp.criteria.acquisition == AcquisitionCriteria(
        last_sessions=3, min_reinforcers=10, min_active_to_inactive=2.0
    )
    assert exp.criteria.extinction == ExtinctionCriteria(
        fraction_of_acquisition=0.25,
        acquisition_sessions=3,
        consecutive=2,
        min_sessions=1,
        max_active=None,
    )


def test_events_alone_are_enough(tmp_path: Path) -> None:
    text = edited(
        ('[levers.left]\ncount = "A"\ntimes = "L"\n[levers.right]\ncount = "B"\ntimes = "R"\n', "")
    )
    exp = load_config(make_lab(tmp_path, text=text))
    assert exp.levers is None and exp.events is not None


def test_lab_dir_is_the_config_folder_outside_configs(tmp_path: Path) -> None:
    (tmp_path / "roster.csv").write_text(ROSTER, encoding="utf-8")
    (tmp_path / "exp.toml").write_text(CONFIG, encoding="utf-8")
    exp = load_config(tmp_path / "exp.toml")
    assert exp.lab_dir == tmp_path.absolute()
    assert exp.reports_dir == tmp_path.absolute() / "reports" / "coc-rein-2026"


def test_roster_path_is_relative_to_the_config(tmp_path: Path) -> None:
    path = make_lab(tmp_path, text=edited(('roster = "roster.csv"', 'roster = "rats/all.csv"')))
    (path.parent / "rats").mkdir()
    (path.parent / "rats" / "all.csv").write_text(ROSTER, encoding="utf-8")
    assert set(load_config(path).roster) == {"R1", "OO M1", "R3"}


def test_fingerprint_changes_with_config_roster_and_corrections(tmp_path: Path) -> None:
    path = make_lab(tmp_path)
    first = load_config(path).fingerprint
    assert load_config(path).fingerprint == first
    path.write_text(CONFIG + "\n# a comment\n", encoding="utf-8")
    second = load_config(path).fingerprint
    assert second != first
    (path.parent / "roster.csv").write_text(ROSTER + "R9,F,nac,left,C2,,\n", encoding="utf-8")
    third = load_config(path).fingerprint
    assert third != second
    (path.parent / "corrections.csv").write_text("session_id,subject,reason\n", encoding="utf-8")
    fourth = load_config(path).fingerprint
    assert fourth != third  # an (empty) corrections file is a change too
    (path.parent / "corrections.csv").write_text(
        "session_id,subject,reason\n0123456789abcdef,R9,typo\n", encoding="utf-8"
    )
    assert load_config(path).fingerprint not in (first, second, third, fourth)


def test_roster_encodings_bom_cp1252_and_semicolons(tmp_path: Path) -> None:
    bom = ("\ufeff" + ROSTER).encode("utf-8")
    assert set(load_config(make_lab(tmp_path / "a", roster=bom)).roster) == {"R1", "OO M1", "R3"}
    cp = (HEADER + "R1,F,veh,left,,,caf\u00e9 \u2013 lost\r\n").encode("cp1252")
    exp = load_config(make_lab(tmp_path / "b", text=MINIMAL, roster=cp))
    assert exp.roster["R1"].exclude == "caf\u00e9 \u2013 lost"
    semi = "subject;sex;group;active_lever\r\nR1;F;veh;left\r\n"
    assert set(load_config(make_lab(tmp_path / "c", text=MINIMAL, roster=semi)).roster) == {"R1"}


def test_roster_tolerates_blank_rows_short_rows_and_header_case(tmp_path: Path) -> None:
    roster = "Subject , SEX,group,active_lever,cohort\nR1,F,veh,left\n,,,,\n\nR2,M,veh,right,C1\n"
    exp = load_config(make_lab(tmp_path, text=MINIMAL, roster=roster))
    assert exp.roster["R1"].cohort is None and exp.roster["R2"].cohort == "C1"


def test_corrections_are_loaded_with_the_roster_spelling(tmp_path: Path) -> None:
    corrections = "session_id,subject,reason\n0123456789ABCDEF, r3 ,typed R1 at the chamber\n"
    exp = load_config(make_lab(tmp_path, corrections=corrections))
    assert exp.corrections == {"0123456789abcdef": "R3"}


def test_machine_timezone_reads_tz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    assert config.machine_timezone() == "Europe/Berlin"
    monkeypatch.setenv("TZ", ":/usr/share/zoneinfo/Asia/Tokyo")
    assert config.machine_timezone() == "Asia/Tokyo"
    monkeypatch.setenv("TZ", "Not/AZone")
    fallback = config.machine_timezone()
    assert fallback != "Not/AZone" and config._valid_zone(fallback)


# --- bad config values: each names the file and the key path ------------------------------------

BAD_CONFIG = [
    pytest.param(
        [('roster = "roster.csv"', 'roster = "roster.csv"\nrostr = "x.csv"')],
        "rostr: unknown key (did you mean roster?)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        [("time_bin_minutes = 10", "time_bin_minuts = 10")],
        "analysis.time_bin_minuts: unknown key (did you mean time_bin_minutes?)",
        id="unknown-nested-key",
    ),
    pytest.param(
        [("[levers.left]\n", "[levers.left]\ncolor = 1\n")],
        "levers.left.color: unknown key",
        id="unknown-key-in-levers",
    ),
    pytest.param(
        [('phase = "extinction"', 'phase = "extinction"\nsession_minute = 1')],
        "phases[1].session_minute: unknown key (did you mean session_minutes?)",
        id="unknown-key-in-a-phase",
    ),
    pytest.param(
        [("time_bin_minutes = 10", 'time_bin_minutes = "10"')],
        "analysis.time_bin_minutes: expected an integer, got '10' (a string)",
        id="string-for-integer",
    ),
    pytest.param(
        [("last_sessions = 4", "last_sessions = 4.5")],
        "criteria.acquisition.last_sessions: expected an integer, got 4.5",
        id="float-for-integer",
    ),
    pytest.param(
        [('experiment = "coc-rein-2026"', "experiment = 2026")],
        "experiment: expected a string in double quotes, got 2026 (an integer)",
        id="integer-for-string",
    ),
    pytest.param(
        [
            ('[drug]\nname = "cocaine"\ndose_mg_per_kg = 0.5\n', ""),
            ('roster = "roster.csv"', 'roster = "roster.csv"\ndrug = "cocaine"'),
        ],
        "drug: expected a table, got 'cocaine' (a string)",
        id="value-for-table",
    ),
    pytest.param(
        [("dose_mg_per_kg = 0.5", "dose_mg_per_kg = -0.5")],
        "drug.dose_mg_per_kg: expected a number greater than 0, got -0.5",
        id="negative-dose",
    ),
    pytest.param(
        [("dose_mg_per_kg = 0.5", "dose_mg_per_kg = nan")],
        "drug.dose_mg_per_kg: expected a finite number",
        id="nan-dose",
    ),
    pytest.param(
        [('msn = "REIN_CUE.*"', 'msn = "SA_("')],
        "phases[2].msn: invalid regular expression 'SA_(': "
        "missing ), unterminated subpattern at position 3",
        id="bad-regex",
    ),
    pytest.param(
        [('test = "cue"\n', "")],
        "phases[2].test: required for a reinstatement rule",
        id="reinstatement-without-test",
    ),
    pytest.param(
        [('phase = "acquisition"', 'phase = "acquisition"\ntest = "cue"')],
        "phases[0].test: only reinstatement rules have a test",
        id="test-outside-reinstatement",
    ),
    pytest.param(
        [('test = "cue"', 'test = "../cue"')],
        "phases[2].test: expected a test type",
        id="hostile-test-name",
    ),
    pytest.param(
        [('phase = "extinction"', 'phase = "Extinction"')],
        "phases[1].phase: expected 'acquisition', 'extinction' or 'reinstatement', "
        "got 'Extinction'",
        id="bad-phase",
    ),
    pytest.param(
        [('count = "A"', 'count = "AA"')],
        "levers.left.count: expected a single variable letter A-Z, got 'AA'",
        id="two-letters",
    ),
    pytest.param(
        [('times = "R"', 'times = "r"')],
        "levers.right.times: expected a single variable letter A-Z, got 'r'",
        id="lowercase-letter",
    ),
    pytest.param(
        [('array = "E"', "array = 5")],
        "events.array: expected a single variable letter A-Z, got 5",
        id="number-for-letter",
    ),
    pytest.param(
        [('[timeout_presses]\ncount = "D"\n', "[timeout_presses]\n")],
        "timeout_presses: expected count and/or times",
        id="source-without-letters",
    ),
    pytest.param(
        [('[levers.right]\ncount = "B"\ntimes = "R"\n', "")],
        "levers.right: missing: the table [levers.right] is required",
        id="one-lever-missing",
    ),
    pytest.param(
        [('times = "L"', 'times = "A"')],
        "levers.left: count and times both name variable A",
        id="count-and-times-same-letter",
    ),
    pytest.param(
        [('"1" = "left_press"', '"x1" = "left_press"')],
        "events.codes: key 'x1' is not an integer event code",
        id="events-code-not-integer",
    ),
    pytest.param(
        [('"1" = "left_press"', '"1000" = "left_press"')],
        "events.codes: key '1000' is not an event code 0-999",
        id="events-code-too-big",
    ),
    pytest.param(
        [('"4" = "cue_on"', '"4" = "Cue On"')],
        "events.codes.\"4\": expected a snake_case event name such as cue_on, got 'Cue On'",
        id="events-name-not-snake-case",
    ),
    pytest.param(
        [('"1" = "left_press"', '"1" = "active_press"')],
        "events.codes.\"1\": 'active_press' is derived from the roster's active_lever",
        id="events-name-derived",
    ),
    pytest.param(
        [("tick_seconds = 0.01", "tick_seconds = 0")],
        "events.tick_seconds: expected a number greater than 0, got 0",
        id="events-zero-tick",
    ),
    pytest.param(
        [("codes = {", 'codes = { "01" = "left_press", ')],
        "events.codes: keys '01' and '1' are the same event code",
        id="events-same-code-twice",
    ),
    pytest.param(
        [('timezone = "America/New_York"', 'timezone = "America/New_Yrok"')],
        "timezone: unknown time zone 'America/New_Yrok' (did you mean America/New_York?)",
        id="bad-timezone",
    ),
    pytest.param(
        [('timezone = "America/New_York"', 'timezone = "../../etc/passwd"')],
        "timezone: unknown time zone '../../etc/passwd'",
        id="hostile-timezone",
    ),
    pytest.param(
        [('experiment = "coc-rein-2026"', 'experiment = "coc rein"')],
        "experiment: expected 1-64 letters, digits and . _ -",
        id="experiment-with-space",
    ),
    pytest.param(
        [('experiment = "coc-rein-2026"', 'experiment = "../x"')],
        "experiment: expected 1-64 letters, digits and . _ -",
        id="experiment-traversal",
    ),
    pytest.param(
        [('experiment = "coc-rein-2026"', 'experiment = ".."')],
        "experiment: expected a name that starts with a letter, digit or _",
        id="experiment-dot-dot",
    ),
    pytest.param(
        [('experiment = "coc-rein-2026"', 'experiment = "CON"')],
        "experiment: 'CON' is a device name Windows reserves",
        id="experiment-reserved",
    ),
    pytest.param(
        [('experiment = "coc-rein-2026"\n', "")],
        "experiment: missing: this key is required",
        id="experiment-missing",
    ),
    pytest.param(
        [('factors = ["group", "sex", "cohort"]', 'factors = ["group", "Sex"]')],
        "analysis.factors[1]: expected 'group', 'sex' or 'cohort', got 'Sex'",
        id="unknown-factor",
    ),
    pytest.param(
        [('factors = ["group", "sex", "cohort"]', 'factors = ["group", "group"]')],
        "analysis.factors: 'group' listed twice",
        id="duplicate-factor",
    ),
    pytest.param(
        [("aborted_fraction = 0.75", "aborted_fraction = 1.5")],
        "analysis.aborted_fraction: expected a number at most 1, got 1.5",
        id="fraction-above-one",
    ),
    pytest.param(
        [('roster = "roster.csv"', 'roster = ""')],
        "roster: expected a file name",
        id="empty-roster-name",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), BAD_CONFIG)
def test_bad_config_value_names_file_key_and_expectation(
    tmp_path: Path, edits: list[tuple[str, str]], expected: str
) -> None:
    path = make_lab(tmp_path / "lab", text=edited(*edits))
    line = one_problem(path)
    assert line.startswith(f"{path}: "), line
    assert expected in line, line


def test_phases_are_required(tmp_path: Path) -> None:
    text = MINIMAL.split("[[phases]]")[0]
    line = one_problem(make_lab(tmp_path, text=text))
    path = tmp_path / "configs" / "experiment.toml"
    assert line == f"{path}: phases: missing: at least one [[phases]] table is required"
    line = one_problem(make_lab(tmp_path, text="phases = []\n" + text))
    assert "phases: at least one [[phases]] table is required" in line


def test_levers_or_events_are_required(tmp_path: Path) -> None:
    text = MINIMAL.replace('[levers.left]\ncount = "A"\n[levers.right]\ntimes = "R"\n', "")
    path = make_lab(tmp_path, text=text)
    line = one_problem(path)
    assert line.startswith(f"{path}: ") and "neither [levers] nor [events]" in line


def test_cohort_factor_needs_a_cohort_for_every_animal(tmp_path: Path) -> None:
    roster = HEADER + "R1,F,veh,left,C1,,\nR2,M,veh,right,,,\n"
    path = make_lab(tmp_path, roster=roster)
    line = one_problem(path)
    assert line.startswith(f"{path}: analysis.factors: 'cohort' is a factor")
    assert "R2" in line and "R1" not in line


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    text = edited(('phase = "extinction"', "phase = extinction"))
    line_no = text.splitlines().index("phase = extinction") + 1
    path = make_lab(tmp_path, text=text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.message.startswith(
        f"{path}, line {line_no}, column 9: TOML syntax error: invalid value"
    )
    assert "`phase = extinction`" in err.message
    assert err.hint is not None and "double quotes" in err.hint
    assert err.path == str(path)


def test_duplicate_toml_key_is_a_syntax_error(tmp_path: Path) -> None:
    path = make_lab(tmp_path, text='experiment = "first"\n' + MINIMAL)
    line = one_problem(path)
    assert line.startswith(f"{path}, line 2, column ") and "TOML syntax error" in line


def test_config_not_utf8(tmp_path: Path) -> None:
    path = make_lab(tmp_path)
    path.write_bytes(CONFIG.replace("cocaine", "coca\xefne").encode("cp1252"))
    line = one_problem(path)
    assert line.startswith(f"{path}, line 6: not UTF-8 text")


def test_missing_config_names_the_path_and_suggests_init(tmp_path: Path) -> None:
    path = tmp_path / "configs" / "experiment.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "labpipe init" in str(info.value)
    assert info.value.path == str(path)


def test_config_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


def test_missing_roster_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    path = make_lab(tmp_path, text=edited(('roster = "roster.csv"', 'roster = "rats.csv"')))
    line = one_problem(path)
    assert line.startswith(f"{path}: roster: ")
    assert str(path.parent / "rats.csv") in line and "does not exist" in line


def test_roster_that_is_a_folder(tmp_path: Path) -> None:
    path = make_lab(tmp_path, text=edited(('roster = "roster.csv"', 'roster = "."')))
    line = one_problem(path)
    assert line.startswith(f"{path}: roster: ") and "is a folder" in line


# --- the roster ---------------------------------------------------------------------------------


def roster_problems(tmp_path: Path, roster: str | bytes) -> tuple[Path, list[str]]:
    path = make_lab(tmp_path, text=MINIMAL, roster=roster)
    return path.parent / "roster.csv", problems(path)


@pytest.mark.parametrize(
    ("roster", "expected"),
    [
        pytest.param(
            "subject,sex,active_lever\nR1,F,left\n",
            "line 1: missing column 'group'; the header must be "
            "subject,sex,group,active_lever[,cohort][,body_weight_kg][,exclude]",
            id="missing-column",
        ),
        pytest.param(
            "subject,sex,grp,active_lever,group\nR1,F,x,left,veh\n",
            "line 1: unknown column 'grp' (did you mean group?)",
            id="unknown-column",
        ),
        pytest.param(
            "subject,sex,group,group,active_lever\nR1,F,a,b,left\n",
            "line 1: column 'group' appears twice",
            id="column-twice",
        ),
        pytest.param(
            "R1,F,veh,left\nR2,M,veh,right\n",
            "line 1: missing column 'subject'",
            id="no-header",
        ),
        pytest.param(
            HEADER + "R1,F,veh,left,,,\nR2,M,veh,right,,,\nR1,F,veh,left,,,\n",
            "line 4: subject 'R1' appears twice (also line 2)",
            id="duplicate-subject",
        ),
        pytest.param(
            HEADER + "R12,F,veh,left,,,\nr12,M,veh,right,,,\n",
            "line 3: subject 'r12' differs from 'R12' (line 2) only by case",
            id="case-duplicate",
        ),
        pytest.param(
            HEADER + "R1,F,veh,lft,,,\n",
            "line 2: active_lever must be left or right, got 'lft'",
            id="bad-active-lever",
        ),
        pytest.param(
            HEADER + "R1,F,veh,,,,\n",
            "line 2: active_lever must be left or right, got ''",
            id="empty-active-lever",
        ),
        pytest.param(
            HEADER + "R1,X,veh,left,,,\n",
            "line 2: sex must be F or M (or female/male), got 'X'",
            id="bad-sex",
        ),
        pytest.param(
            HEADER + "R1,F,veh,left,,-0.3,\n",
            "line 2: body_weight_kg must be a positive number or empty, got '-0.3'",
            id="negative-weight",
        ),
        pytest.param(
            HEADER + "R1,F,veh,left,,heavy,\n",
            "line 2: body_weight_kg must be a positive number or empty, got 'heavy'",
            id="text-weight",
        ),
        pytest.param(
            HEADER + "R1,F,veh,left,,,sick\x07\n",
            "line 2: exclude 'sick\\x07' contains a control character",
            id="exclude-control-character",
        ),
        pytest.param(
            HEADER + "R1,F,../g,left,,,\n",
            "line 2: group '../g' looks like a file path",
            id="hostile-group",
        ),
        pytest.param(
            HEADER + "R1,F,veh,left,=cmd|' /C calc'!A0,,\n",
            "line 2: cohort \"=cmd|' /C calc'!A0\"",
            id="hostile-cohort",
        ),
        pytest.param(
            HEADER + "R1,F,,left,,,\n",
            "line 2: group '' is empty",
            id="empty-group",
        ),
        pytest.param(
            HEADER + "R1,F,veh,left,,,,extra\n",
            "line 2: 8 fields, but the header has 7 columns",
            id="too-many-fields",
        ),
        pytest.param(
            HEADER,
            "no animals; expected one row per animal under the header",
            id="header-only",
        ),
        pytest.param(
            "",
            "the file is empty; expected the header line",
            id="empty-file",
        ),
        pytest.param(
            b"subject,sex,group,active_lever\nR\x81\x8d,F,veh,left\n",
            "subject 'R\\x81\\x8d' contains a control character",
            id="undecodable-bytes",
        ),
    ],
)
def test_bad_roster_names_file_line_and_rule(
    tmp_path: Path, roster: str | bytes, expected: str
) -> None:
    roster_path, lines = roster_problems(tmp_path, roster)
    assert any(expected.replace('"', "'") in line.replace('"', "'") for line in lines), lines
    assert all(line.startswith(f"{roster_path}") for line in lines), lines


HOSTILE = [
    ("../evil", "looks like a file path"),
    ("/etc/passwd", "looks like a file path"),
    ("..\\evil", "looks like a file path"),
    ("CON", "device name Windows reserves"),
    ("nul.txt", "device name Windows reserves"),
    ("COM1", "device name Windows reserves"),
    ("<script>alert(1)</script>", "markup characters"),
    ('=HYPERLINK("x")', "starts with '=', which a spreadsheet would run as a formula"),
    ("+1", "starts with '+'"),
    ("-1", "starts with '-'"),
    ("@SUM(A1)", "starts with '@'"),
    ("R1.", "ends with a dot or a space"),
    ("a\x00b", "contains a control character"),
    ("R\u202e1", "contains a control character"),
    ("R" * 65, "longer than 64 characters"),
    ("Ratt\u00e9", "may hold only letters A-Z, digits, spaces and . _ + -"),
]


@pytest.mark.parametrize(("subject", "rule"), HOSTILE, ids=[repr(s)[1:-1][:20] for s, _ in HOSTILE])
def test_hostile_subject_names_are_refused(tmp_path: Path, subject: str, rule: str) -> None:
    cell = '"' + subject.replace('"', '""') + '"'
    roster = HEADER + "R1,F,veh,left,,,\n" + f"{cell},M,veh,right,,,\n"
    roster_path, lines = roster_problems(tmp_path, roster)
    (line,) = lines
    assert line.startswith(f"{roster_path}, line 3: subject '"), line
    assert rule in line, line
    assert "\x00" not in line and "\u202e" not in line


def test_names_real_labs_use_are_accepted(tmp_path: Path) -> None:
    roster = (
        HEADER + "OO M1,F,veh 1,left,C1.b,,\nR-12,M,nac+,right,2026_spring,,\nr.2,M,a,left,,,\n"
    )
    exp = load_config(make_lab(tmp_path, text=MINIMAL, roster=roster))
    assert list(exp.roster) == ["OO M1", "R-12", "r.2"]


def test_a_trailing_space_in_a_cell_is_trimmed_not_kept(tmp_path: Path) -> None:
    exp = load_config(make_lab(tmp_path, text=MINIMAL, roster=HEADER + "R1 ,F,veh ,left,,,\n"))
    assert list(exp.roster) == ["R1"] and exp.roster["R1"].group == "veh"


# --- corrections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("corrections", "expected"),
    [
        pytest.param(
            "session_id,subject,reason\n0123456789abcdef,R9,typo\n",
            "line 2: subject 'R9' is not in the roster",
            id="unknown-subject",
        ),
        pytest.param(
            "session_id,subject,reason\nnot-an-id,R1,typo\n",
            "line 2: session_id must be the 16-character hex id",
            id="bad-session-id",
        ),
        pytest.param(
            "session_id,subject,reason\n0123456789abcdef,R1,a\n0123456789abcdef,R3,b\n",
            "line 3: session_id '0123456789abcdef' appears twice (also line 2)",
            id="session-twice",
        ),
        pytest.param(
            "session,subject\n0123456789abcdef,R1\n",
            "line 1: unknown column 'session' (did you mean session_id?)",
            id="bad-header",
        ),
        pytest.param(
            "session_id,subject,reason\n0123456789abcdef,../R1,a\n",
            "line 2: subject '../R1' looks like a file path",
            id="hostile-subject",
        ),
    ],
)
def test_bad_corrections_name_file_and_line(
    tmp_path: Path, corrections: str, expected: str
) -> None:
    path = make_lab(tmp_path, corrections=corrections)
    lines = problems(path)
    label = str(path.parent / "corrections.csv")
    assert any(line.startswith(label) and expected in line for line in lines), lines


# --- several problems at once -------------------------------------------------------------------


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = edited(
        ("time_bin_minutes = 10", "time_bin_minuts = 10"),
        ('count = "A"', 'count = "AA"'),
        ('msn = "REIN_CUE.*"', 'msn = "SA_("'),
        ('"1" = "left_press"', '"x1" = "left_press"'),
        ('timezone = "America/New_York"', 'timezone = "Mars/Olympus"'),
    )
    roster = HEADER + "R1,F,veh,left,C1,,\nR1,F,veh,lft,C1,,\n../evil,F,veh,left,C1,,\n"
    corrections = "session_id,subject\nzz,R1\n"
    path = make_lab(tmp_path, text=text, roster=roster, corrections=corrections)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = info.value.message.splitlines()
    config_lines = [line for line in lines if line.startswith(f"{path}: ")]
    roster_lines = [line for line in lines if line.startswith(f"{path.parent / 'roster.csv'}, ")]
    corr_lines = [line for line in lines if line.startswith(f"{path.parent / 'corrections.csv'}")]
    assert len(config_lines) == 5, lines
    for key in (
        "analysis.time_bin_minuts",
        "levers.left.count",
        "phases[2].msn",
        "events.codes",
        "timezone",
    ):
        assert any(f": {key}: " in line for line in config_lines), key
    assert len(roster_lines) == 3, lines  # twice, bad lever (same line), hostile name
    assert len(corr_lines) == 1, lines
    assert len(lines) == 9
    assert info.value.path == str(path)


def test_roster_is_checked_even_when_the_config_has_problems(tmp_path: Path) -> None:
    text = edited(('count = "A"', 'count = "AA"'))
    path = make_lab(tmp_path, text=text, roster=HEADER + "R1,F,veh,sideways,,,\n")
    lines = problems(path)
    assert len(lines) == 2
    assert "levers.left.count" in lines[0] and "active_lever" in lines[1]


def test_config_error_path_is_the_roster_when_only_the_roster_is_wrong(tmp_path: Path) -> None:
    path = make_lab(tmp_path, roster=HEADER + "R1,F,veh,sideways,,,\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path.parent / "roster.csv")


# --- the skeleton ---------------------------------------------------------------------------------


def test_skeleton_writes_a_lab_folder_that_loads(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    written = write_skeleton(lab)
    assert written[:2] == [lab / "configs" / "experiment.toml", lab / "configs" / "roster.csv"]
    for sub in ("data/raw", "data/processed", "reports"):
        assert (lab / sub).is_dir()
        assert lab / sub in written
    exp = load_config(lab / "configs" / "experiment.toml")
    assert exp.lab_dir == lab.absolute()
    assert exp.timezone == config.machine_timezone() and not exp.timezone_is_default
    assert len(exp.roster) >= 4
    assert exp.match_phase("SA_FR1_2h") is not None
    assert exp.criteria.acquisition is not None and exp.criteria.extinction is not None


def test_skeleton_explains_every_key(tmp_path: Path) -> None:
    write_skeleton(tmp_path)
    text = (tmp_path / "configs" / "experiment.toml").read_text(encoding="utf-8")
    comments = "\n".join(line for line in text.splitlines() if "#" in line)
    models = [
        config._ConfigFile,
        config.Drug,
        config.Source,
        config.Events,
        config.PhaseRule,
        config.AcquisitionCriteria,
        config.ExtinctionCriteria,
        config.Analysis,
    ]
    for model in models:
        for name in model.model_fields:
            assert name in text, name
    for key in ("tick_seconds", "codes", "test", "session_minutes", "max_active", "time zone"):
        assert key in comments, key


def test_skeleton_events_block_loads_when_uncommented(tmp_path: Path) -> None:
    write_skeleton(tmp_path)
    path = tmp_path / "configs" / "experiment.toml"
    text = path.read_text(encoding="utf-8")
    for key in ("[events]", 'array = "E"', "tick_seconds = 0.01", "codes = {"):
        text = text.replace(f"# {key}", key, 1)
    path.write_text(text, encoding="utf-8")
    exp = load_config(path)
    assert exp.events is not None and exp.events.codes[4] == "cue_on"


def test_skeleton_never_overwrites_an_experiment(tmp_path: Path) -> None:
    write_skeleton(tmp_path)
    path = tmp_path / "configs" / "experiment.toml"
    path.write_text("# mine\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="already exists") as info:
        write_skeleton(tmp_path)
    assert info.value.path == str(path)
    assert path.read_text(encoding="utf-8") == "# mine\n"


def test_skeleton_keeps_an_existing_roster(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "roster.csv").write_text(ROSTER, encoding="utf-8")
    written = write_skeleton(tmp_path)
    assert tmp_path / "configs" / "roster.csv" not in written
    assert (tmp_path / "configs" / "roster.csv").read_text(encoding="utf-8") == ROSTER
    assert set(load_config(tmp_path / "configs" / "experiment.toml").roster) == {
        "R1",
        "OO M1",
        "R3",
    }


def test_skeleton_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder", encoding="utf-8")
    with pytest.raises(ConfigError, match="a file of that name"):
        write_skeleton(tmp_path)


def test_the_experiment_survives_pickling_for_worker_processes(tmp_path: Path) -> None:
    import pickle

    exp = load_config(make_lab(tmp_path))
    back = pickle.loads(pickle.dumps(exp))
    assert back == exp
    assert back.find_subject(" oo m1 ") is back.roster["OO M1"]
    rule = back.match_phase("REIN_CUE_1")
    assert rule is not None and rule.test == "cue"
