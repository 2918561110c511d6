"""The messages and reason codes of sessions that cannot be mapped, and a few exact records.

Each bad session below has the one defect its name says (or several, to pin which one is
reported first: subject, program, header fields, dates, then the values in config order).
The expected messages are literal: a lab tech reads them, and monitors match the codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from labpipe.config import Experiment, load_config
from labpipe.model import RawSession
from labpipe.sessions import Identity, identify, map_session

from labfolder import event_session, make_lab, session


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Experiment:
    return load_config(make_lab(tmp_path_factory.mktemp("msg") / "lab").config)


def _header(raw: RawSession, **fields: str | None) -> RawSession:
    """``raw`` with header fields set (``Start_Date`` -> ``Start Date``) or removed (None)."""
    header = dict(raw.header)
    for key, value in fields.items():
        name = key.replace("_", " ")
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return RawSession(header=header, variables=raw.variables, block=raw.block)


def _values(raw: RawSession, **letters: float | np.ndarray | None) -> RawSession:
    """``raw`` with variables set or removed (None)."""
    variables = dict(raw.variables)
    for letter, value in letters.items():
        if value is None:
            variables.pop(letter, None)
        else:
            variables[letter] = value
    return RawSession(header=raw.header, variables=variables, block=raw.block)


#: Case name -> the session.
BAD: dict[str, Callable[[], RawSession]] = {
    "unknown_slip": lambda: session("R1O"),
    "unknown_none": lambda: session("Q77"),
    "unknown_case": lambda: session("r 2"),
    "unknown_phase": lambda: session("R1", msn="FOO"),
    "no_box": lambda: _header(session("R1"), Box=""),
    "no_start_time": lambda: _header(session("R1"), Start_Time=None),
    "no_start_date": lambda: _header(session("R1"), Start_Date="  "),
    "bad_date_format": lambda: session("R1", date="2026-03-02"),
    "bad_date_real": lambda: session("R1", date="02/29/23"),
    "bad_time_real": lambda: session("R1", start="24:00:00"),
    "bad_end": lambda: session("R1", end="99:00:00"),
    "no_end_time": lambda: _header(session("R1"), End_Time=None),
    "end_before_start": lambda: session("R1", date="03/02/26", end_date="03/01/26"),
    "missing_vars": lambda: RawSession(header=session("R1").header, variables={"Z": 1.0}),
    "missing_vars_none": lambda: RawSession(header=session("R1").header, variables={}),
    "count_array": lambda: _values(session("R1"), A=np.array([1.0])),
    "count_negative": lambda: _values(session("R1"), A=-2.0),
    "count_fraction": lambda: _values(session("R1"), B=1.5),
    "times_scalar": lambda: _values(session("R1"), L=4.0),
    "events_scalar": lambda: _values(event_session("R1", events=[(1, 1)]), E=2.0),
    "events_negative": lambda: _values(
        event_session("R1", events=[(1, 1)]), E=np.array([1.001, -2.002])
    ),
    "count_nan": lambda: _values(session("R1"), C=float("nan")),
    "count_inf": lambda: _values(session("R1"), C=float("inf")),
    "subject_before_phase_and_date": lambda: session("Q77", msn="FOO", date="99/99/99"),
    "phase_before_header": lambda: _header(session("R1", msn="FOO"), Box=""),
    "header_before_date": lambda: _header(session("R1", date="x"), Box=""),
    "date_before_values": lambda: _values(session("R1", date="02/30/26"), A=-1.0),
    "events_before_counts": lambda: _values(
        event_session("R1", events=[(1, 1)], counts=True),
        E=np.array([-1.0]),
        A=np.array([2.0]),
    ),
    "left_before_right": lambda: _values(session("R1"), B=np.array([2.0]), L=3.0),
    "count_before_times": lambda: _values(session("R1"), A=0.5, L=3.0),
}

#: Case name -> (exception type, reason code, message, hint).
EXPECTED: dict[str, tuple[str, str, str, str | None]] = {
    "unknown_slip": (
        "SessionError",
        "UNKNOWN_SUBJECT",
        (
            "session of subject 'R1O', box 1, started 03/02/26 09:00:00: the subject "
            "is not in the roster. Did you mean R1?"
        ),
        (
            "Add the animal to configs/roster.csv, or map this session to the right "
            "animal with a line 'e37b3a2fd3b040d4,<subject>,<why>' in "
            "configs/corrections.csv, then run ingest again."
        ),
    ),
    "unknown_none": (
        "SessionError",
        "UNKNOWN_SUBJECT",
        (
            "session of subject 'Q77', box 1, started 03/02/26 09:00:00: the subject "
            "is not in the roster."
        ),
        (
            "Add the animal to configs/roster.csv, or map this session to the right "
            "animal with a line 'eca6671e8f1055ac,<subject>,<why>' in "
            "configs/corrections.csv, then run ingest again."
        ),
    ),
    "unknown_case": (
        "SessionError",
        "UNKNOWN_SUBJECT",
        (
            "session of subject 'r 2', box 1, started 03/02/26 09:00:00: the subject "
            "is not in the roster. Did you mean R2?"
        ),
        (
            "Add the animal to configs/roster.csv, or map this session to the right "
            "animal with a line '9856fcf2bfebceb3,<subject>,<why>' in "
            "configs/corrections.csv, then run ingest again."
        ),
    ),
    "unknown_phase": (
        "SessionError",
        "UNKNOWN_PHASE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: MSN 'FOO' "
            "matches no [[phases]] rule in the config."
        ),
        "Add a [[phases]] rule whose msn pattern matches it, then run ingest again.",
    ),
    "no_box": (
        "SessionError",
        "BAD_HEADER",
        "session of subject 'R1', box , started 03/02/26 09:00:00: the header has no Box.",
        None,
    ),
    "no_start_time": (
        "SessionError",
        "BAD_HEADER",
        "session of subject 'R1', box 1, started 03/02/26 ?: the header has no Start Time.",
        None,
    ),
    "no_start_date": (
        "SessionError",
        "BAD_HEADER",
        "session of subject 'R1', box 1, started    09:00:00: the header has no Start Date.",
        None,
    ),
    "bad_date_format": (
        "SessionError",
        "BAD_DATE",
        (
            "session of subject 'R1', box 1, started 2026-03-02 09:00:00: Start "
            "Date/Time '2026-03-02 09:00:00' is not MM/DD/YY HH:MM:SS."
        ),
        None,
    ),
    "bad_date_real": (
        "SessionError",
        "BAD_DATE",
        (
            "session of subject 'R1', box 1, started 02/29/23 09:00:00: Start "
            "Date/Time '02/29/23 09:00:00' is not a real date or time (day is out of "
            "range for month); MED-PC writes dates as MM/DD/YY."
        ),
        None,
    ),
    "bad_time_real": (
        "SessionError",
        "BAD_DATE",
        (
            "session of subject 'R1', box 1, started 03/02/26 24:00:00: Start "
            "Date/Time '03/02/26 24:00:00' is not a real date or time (hour must be "
            "in 0..23); MED-PC writes dates as MM/DD/YY."
        ),
        None,
    ),
    "bad_end": (
        "SessionError",
        "BAD_DATE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: End Date/Time"
            " '03/02/26 99:00:00' is not a real date or time (hour must be in 0..23);"
            " MED-PC writes dates as MM/DD/YY."
        ),
        None,
    ),
    "no_end_time": (
        "SessionError",
        "BAD_HEADER",
        ("session of subject 'R1', box 1, started 03/02/26 09:00:00: the session has no End Time."),
        None,
    ),
    "end_before_start": (
        "SessionError",
        "BAD_DATE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: End (03/01/26"
            " 11:00:00) is before Start (03/02/26 09:00:00)."
        ),
        "Is the chamber PC's clock wrong?",
    ),
    "missing_vars": (
        "SessionError",
        "MISSING_VARIABLE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: none of the "
            "variables the config names for the levers is in the session (found Z)."
        ),
        "Check [levers] / [events] in configs/experiment.toml against `labpipe inspect`.",
    ),
    "missing_vars_none": (
        "SessionError",
        "MISSING_VARIABLE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: none of the "
            "variables the config names for the levers is in the session (found no "
            "variables)."
        ),
        "Check [levers] / [events] in configs/experiment.toml against `labpipe inspect`.",
    ),
    "count_array": (
        "SessionError",
        "BAD_VALUE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: count "
            "variable A is an array in this session; the config expects a scalar."
        ),
        None,
    ),
    "count_negative": (
        "SessionError",
        "BAD_VALUE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: count "
            "variable A holds -2.0, which is not a count."
        ),
        None,
    ),
    "count_fraction": (
        "SessionError",
        "BAD_VALUE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: count "
            "variable B holds 1.5, which is not a count."
        ),
        None,
    ),
    "times_scalar": (
        "SessionError",
        "BAD_VALUE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: times "
            "variable L is a scalar in this session; the config expects an array."
        ),
        None,
    ),
    "events_scalar": (
        "SessionError",
        "BAD_VALUE",
        (
            "session of subject 'R1', box 1, started 03/20/26 09:00:00: events.array "
            "'E' is a scalar in this session, not an array."
        ),
        None,
    ),
    "events_negative": (
        "SessionError",
        "BAD_EVENT_CODE",
        (
            "session of subject 'R1', box 1, started 03/20/26 09:00:00: the event "
            "array holds negative values; it is not TIME.CODE."
        ),
        None,
    ),
    "count_nan": (
        "ValueError",
        "None",
        "cannot convert float NaN to integer",
        None,
    ),
    "count_inf": (
        "OverflowError",
        "None",
        "cannot convert float infinity to integer",
        None,
    ),
    "subject_before_phase_and_date": (
        "SessionError",
        "UNKNOWN_SUBJECT",
        (
            "session of subject 'Q77', box 1, started 99/99/99 09:00:00: the subject "
            "is not in the roster."
        ),
        (
            "Add the animal to configs/roster.csv, or map this session to the right "
            "animal with a line '82643552e7968535,<subject>,<why>' in "
            "configs/corrections.csv, then run ingest again."
        ),
    ),
    "phase_before_header": (
        "SessionError",
        "UNKNOWN_PHASE",
        (
            "session of subject 'R1', box , started 03/02/26 09:00:00: MSN 'FOO' "
            "matches no [[phases]] rule in the config."
        ),
        "Add a [[phases]] rule whose msn pattern matches it, then run ingest again.",
    ),
    "header_before_date": (
        "SessionError",
        "BAD_HEADER",
        "session of subject 'R1', box , started x 09:00:00: the header has no Box.",
        None,
    ),
    "date_before_values": (
        "SessionError",
        "BAD_DATE",
        (
            "session of subject 'R1', box 1, started 02/30/26 09:00:00: Start "
            "Date/Time '02/30/26 09:00:00' is not a real date or time (day is out of "
            "range for month); MED-PC writes dates as MM/DD/YY."
        ),
        None,
    ),
    "events_before_counts": (
        "SessionError",
        "BAD_EVENT_CODE",
        (
            "session of subject 'R1', box 1, started 03/20/26 09:00:00: the event "
            "array holds negative values; it is not TIME.CODE."
        ),
        None,
    ),
    "left_before_right": (
        "SessionError",
        "BAD_VALUE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: times "
            "variable L is a scalar in this session; the config expects an array."
        ),
        None,
    ),
    "count_before_times": (
        "SessionError",
        "BAD_VALUE",
        (
            "session of subject 'R1', box 1, started 03/02/26 09:00:00: count "
            "variable A holds 0.5, which is not a count."
        ),
        None,
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_session_message(cfg: Experiment, case: str) -> None:
    kind, reason, message, hint = EXPECTED[case]
    raw = BAD[case]()
    with pytest.raises(Exception) as caught:  # noqa: B017 - the type is checked below
        map_session(raw, cfg, source_file="x")
    exc = caught.value
    assert type(exc).__name__ == kind
    assert str(getattr(exc, "reason_code", None)) == reason
    assert getattr(exc, "message", str(exc)) == message
    assert getattr(exc, "hint", None) == hint
    # The same with the identity computed beforehand, as the worker calls it.
    with pytest.raises(type(exc)) as again:
        map_session(raw, cfg, source_file="x", identity=identify(raw))
    assert str(again.value) == str(exc)


def _no_end_date(raw: RawSession) -> RawSession:
    return _header(raw, End_Date=None)


#: Sessions that map, with their exact record and events.
GOOD: list[tuple[RawSession, dict[str, Any], list[float], list[str]]] = [
    (
        session("R1", left=[10, 20, 30.5], right=[15], infusions=[10, 30.5], timeout=1, block=2),
        {
            "session_id": "60dd75b31a9fb1ef",
            "subject_raw": "R1",
            "subject": "R1",
            "active_lever": "left",
            "box": 1,
            "msn": "SA_FR1_2h",
            "start": "2026-03-02T09:00:00-05:00",
            "end": "2026-03-02T11:00:00-05:00",
            "duration_min": 120.0,
            "dst_crossing": False,
            "active": 3,
            "inactive": 1,
            "reinforcers": 2,
            "timeout_active": 1,
            "has_events": True,
            "source_file": "d/f",
            "source_block": 2,
        },
        [10.0, 10.0, 15.0, 20.0, 30.5, 30.5],
        ["active_press", "reinforcer", "inactive_press", "active_press", "active_press"]
        + ["reinforcer"],
    ),
    (
        # Past midnight with no End Date, across the autumn DST change: 5 h on the wall
        # clock, 6 h real.
        RawSession(
            header=_no_end_date(
                session("r2 ", date="10/31/26", start="22:00:00", end=" 3:00:00", box=3)
            ).header,
            variables=session("r2 ", left=[1.5], right=[3.25, 2.0]).variables,
        ),
        {
            "session_id": "8a00f01edd9b4c34",
            "subject_raw": "r2",
            "subject": "R2",
            "active_lever": "right",
            "box": 3,
            "msn": "SA_FR1_2h",
            "start": "2026-10-31T22:00:00-04:00",
            "end": "2026-11-01T03:00:00-05:00",
            "duration_min": 360.0,
            "dst_crossing": True,
            "active": 2,
            "inactive": 1,
            "reinforcers": 0,
            "timeout_active": 0,
            "has_events": True,
            "source_file": "d/f",
            "source_block": 0,
        },
        [1.5, 2.0, 3.25],
        ["inactive_press", "active_press", "active_press"],
    ),
    (
        event_session(
            "R2", events=[(100, 1), (100, 5), (50, 2), (50, 5), (70, 9), (20, 3)], counts=True
        ),
        {
            "session_id": "c921c7052503effe",
            "subject_raw": "R2",
            "subject": "R2",
            "active_lever": "right",
            "box": 1,
            "msn": "REIN_CUE_2h",
            "start": "2026-03-20T09:00:00-04:00",
            "end": "2026-03-20T11:00:00-04:00",
            "duration_min": 120.0,
            "dst_crossing": False,
            "active": 0,
            "inactive": 0,
            "reinforcers": 1,
            "timeout_active": 2,
            "has_events": True,
            "source_file": "d/f",
            "source_block": 0,
        },
        [0.2, 0.5, 0.5, 0.7000000000000001, 1.0, 1.0, 1.0],
        ["reinforcer", "active_press", "timeout_press", "code_9", "active_press"]
        + ["inactive_press", "timeout_press"],
    ),
]


@pytest.mark.parametrize("i", range(len(GOOD)))
def test_good_session_record(cfg: Experiment, i: int) -> None:
    raw, record, event_t, event_name = GOOD[i]
    mapped = map_session(raw, cfg, source_file="d/f")
    assert list(mapped.record) == list(record)
    assert [(k, type(v), v) for k, v in mapped.record.items()] == [
        (k, type(v), v) for k, v in record.items()
    ]
    assert mapped.event_t.dtype == np.float64 and mapped.event_t.tolist() == event_t
    assert mapped.event_name.dtype == object and mapped.event_name.tolist() == event_name
    assert all(type(n) is str for n in mapped.event_name.tolist())


def test_identity_of_a_session() -> None:
    raw = _header(session(" R1 ", box=1), Subject=" R  1 ", Box=" 1 ", Start_Time=" 9:00:00")
    assert identify(raw) == Identity(
        session_id="c7c1987deb9a8713",
        key="R 1|03/02/26|9:00:00|1",
        slot="1|03/02/26|9:00:00",
        fingerprint="3e24ea4192564e0162d5643202dbe864db52ad6cc578678f4e50be54e64a674a",
    )
