"""Raw MED-PC sessions + the experiment config -> session records and events.

This is where a block of numbers becomes a rat's session: which animal it was (roster,
corrections), which lever was active for that animal, what the counts and press times
are, when it started and how long it really lasted.

Three keys decide what is new (DESIGN.md, *Data on disk*):

* the **identity** — subject as typed, start date and time as written, box — names a
  session; ``session_id`` is a hash of it, so it never changes when a subject is corrected;
* the **slot** — box and start as written — a physical box cannot start two sessions in
  the same second, so two identities in one slot are a relabel or a clash;
* the **fingerprint** — a hash of the parsed values only (no header text), the same
  whatever the line endings or encoding of the file — tells a duplicate from a conflict.

Lab facts the code relies on:

* MED-PC pads arrays with zeros up to their DIM size. A press-time array holds as many
  real times as its count scalar says; without a count, trailing zeros are padding (a
  press at exactly 0.000 s cannot be told from padding, and does not happen in practice).
* ``TIME.CODE`` event arrays hold ``tick + code / 1000`` (``53600.011`` = tick 53600,
  code 11). The tick length is a property of the MSN program, not of the file.
* Many programs log a time-out press twice: as its lever's code and as the time-out code,
  at the same tick. It is one press.
* Start/End times are the chamber PC's wall clock. Durations are computed in UTC, so a
  12-h session across the autumn DST change lasts 13 h.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from labpipe.errors import SessionError
from labpipe.model import RawSession, Reason

if TYPE_CHECKING:
    from labpipe.config import Animal, Events, Experiment, Source

#: Bumped whenever the mapping of a raw session to its record or events changes; part of
#: the derivation key, so a new version re-derives stored sessions.
MAPPING_VERSION = "1"

_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})$")
_TIME = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class Identity:
    """The keys of a raw session, computable without any config.

    Attributes
    ----------
    session_id
        16 hex characters of sha256(identity key).
    key
        ``subject|start date|start time|box`` as written (trimmed).
    slot
        ``box|start date|start time``.
    fingerprint
        sha256 hex of the parsed variables (letters and exact float64 values).
    """

    session_id: str
    key: str
    slot: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class MappedSession:
    """A session ready to be stored.

    Attributes
    ----------
    identity
        Its keys.
    record
        The config-dependent facts of the session, JSON-serialisable: ``subject_raw``,
        ``subject``, ``box``, ``msn``, ``start`` / ``end`` (ISO 8601 with UTC offset),
        ``duration_min``, ``dst_crossing``, ``active``, ``inactive``, ``reinforcers``,
        ``timeout_active``, ``has_events``, ``source_file``, ``source_block``.
    event_t
        Event times in seconds from session start, sorted.
    event_name
        Event names, aligned with ``event_t``.
    """

    identity: Identity
    record: dict[str, Any]
    event_t: np.ndarray
    event_name: np.ndarray


def identify(raw: RawSession) -> Identity:
    """Compute the identity, slot and data fingerprint of a raw session.

    Parameters
    ----------
    raw
        A parsed session block.

    Returns
    -------
    Identity
        Its keys.
    """
    h = raw.header
    subject = " ".join(h.get("Subject", "").split())
    start_date = h.get("Start Date", "").strip()
    start_time = h.get("Start Time", "").strip()
    box = h.get("Box", "").strip()
    key = f"{subject}|{start_date}|{start_time}|{box}"
    slot = f"{box}|{start_date}|{start_time}"
    return Identity(
        session_id=hashlib.sha256(key.encode("utf-8")).hexdigest()[:16],
        key=key,
        slot=slot,
        fingerprint=fingerprint(raw.variables),
    )


def fingerprint(variables: Mapping[str, float | np.ndarray]) -> str:
    """Hash parsed values independently of line endings, encoding and header text.

    Parameters
    ----------
    variables
        Letter -> scalar or array, as the parser returns them.

    Returns
    -------
    str
        sha256 hex digest over the sorted letters, their kind and their exact float64 bytes.
    """
    # One digest over the parts joined: the same bytes as hashing them one by one.
    parts: list[bytes | np.ndarray] = []
    for letter in sorted(variables):
        value = variables[letter]
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value, dtype="<f8")
            parts.append(f"{letter}[{arr.size}]".encode())
            parts.append(arr)
        else:
            parts.append(f"{letter}=".encode())
            parts.append(_PACK_F8(float(value)))
    return hashlib.sha256(b"".join(parts)).hexdigest()


_PACK_F8 = struct.Struct("<d").pack


def parse_clock(
    date_text: str, time_text: str, *, field: str, tz: ZoneInfo
) -> tuple[datetime, datetime]:
    """Read a MED-PC ``MM/DD/YY`` date and ``HH:MM:SS`` time into aware datetimes.

    Parameters
    ----------
    date_text, time_text
        The header values as written (hours may be padded with a space).
    field
        ``"Start"`` or ``"End"``, for messages.
    tz
        The chambers' time zone.

    Returns
    -------
    tuple of datetime
        The local time (aware, ``fold=0`` for an ambiguous hour) and the same instant in UTC.

    Raises
    ------
    SessionError
        ``BAD_DATE`` when the text is not a real date or time (e.g. 02/29/23, 13/01/24).
    """
    ymd = _date_fields(date_text)
    hms = _time_fields(time_text)
    if ymd is None or hms is None:
        raise SessionError(
            f"{field} Date/Time '{date_text} {time_text}' is not MM/DD/YY HH:MM:SS.",
            reason_code=Reason.BAD_DATE,
        )
    try:
        # Checks the date, then the time, with the messages of date() and time().
        local = datetime(*ymd, *hms, tzinfo=tz)
    except ValueError as exc:
        raise SessionError(
            f"{field} Date/Time '{date_text} {time_text}' is not a real date or time "
            f"({exc}); MED-PC writes dates as MM/DD/YY.",
            reason_code=Reason.BAD_DATE,
        ) from exc
    return local, local.astimezone(UTC)


# A lab's sessions share their dates (one a day), and start and end times recur across
# boxes and days: each text is read once, whatever number of sessions carry it.
@functools.lru_cache(maxsize=4096)
def _date_fields(text: str) -> tuple[int, int, int] | None:
    """Return (year, month, day) of ``MM/DD/YY`` or ``MM/DD/YYYY`` text, unchecked."""
    dm = _DATE.match(text.strip())
    if dm is None:
        return None
    year_txt = dm.group(3)
    year = int(year_txt)
    if len(year_txt) == 2:
        # MED-PC writes two-digit years; the usual strptime pivot: 69-99 -> 19xx, else 20xx.
        year += 1900 if year >= 69 else 2000
    return year, int(dm.group(1)), int(dm.group(2))


@functools.lru_cache(maxsize=4096)
def _time_fields(text: str) -> tuple[int, int, int] | None:
    """Return (hour, minute, second) of ``HH:MM:SS`` text, unchecked."""
    tm = _TIME.match(text.strip())
    if tm is None:
        return None
    return int(tm.group(1)), int(tm.group(2)), int(tm.group(3))


def session_times(raw: RawSession, tz: ZoneInfo) -> tuple[datetime, datetime, float, bool]:
    """Return start, end (local, aware), real duration in minutes, and DST crossing.

    Without an ``End Date`` the session ends on its start date, or the next day when the
    end time is earlier than the start time (a session past midnight).

    Raises
    ------
    SessionError
        ``BAD_DATE`` for unreadable dates or an end before the start.
    """
    h = raw.header
    start, start_utc = parse_clock(
        h.get("Start Date", ""), h.get("Start Time", ""), field="Start", tz=tz
    )
    end_date = h.get("End Date", "").strip()
    end_time = h.get("End Time", "").strip()
    if not end_time:
        raise SessionError("the session has no End Time.", reason_code=Reason.BAD_HEADER)
    if end_date:
        end, end_utc = parse_clock(end_date, end_time, field="End", tz=tz)
    else:
        end, end_utc = parse_clock(h.get("Start Date", ""), end_time, field="End", tz=tz)
        if end_utc < start_utc:
            end = (end.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=tz)
            end_utc = end.astimezone(UTC)
    if end_utc < start_utc:
        raise SessionError(
            f"End ({end:%m/%d/%y %H:%M:%S}) is before Start ({start:%m/%d/%y %H:%M:%S}).",
            reason_code=Reason.BAD_DATE,
            hint="Is the chamber PC's clock wrong?",
        )
    duration_min = (end_utc - start_utc).total_seconds() / 60.0
    return start, end, duration_min, start.utcoffset() != end.utcoffset()


def suggest_subjects(typed: str, known: list[str]) -> list[str]:
    """Return roster subjects the tech probably meant by ``typed``.

    Chamber keyboards produce letter-for-digit slips (``R1O`` for ``R10``, ``Rl2`` for
    ``R12``), case and spacing slips; those are tried first, then close spellings.
    """

    def canon(text: str) -> str:
        text = "".join(text.upper().split())
        return text.translate(str.maketrans({"O": "0", "I": "1", "L": "1"}))

    slips = [k for k in known if canon(k) == canon(typed)]
    if slips:
        return slips
    return difflib.get_close_matches(typed, known, n=3, cutoff=0.6)


def describe(raw: RawSession) -> str:
    """Name a session for messages: ``subject 'R1', box 3, started 03/02/26 09:01:00``."""
    h = raw.header
    return (
        f"subject '{h.get('Subject', '')}', box {h.get('Box', '?')}, "
        f"started {h.get('Start Date', '?')} {h.get('Start Time', '?')}"
    )


def map_session(
    raw: RawSession,
    cfg: Experiment,
    *,
    source_file: str,
    identity: Identity | None = None,
) -> MappedSession:
    """Map one raw session onto the experiment: subject, levers, counts, events, times.

    Parameters
    ----------
    raw
        A parsed session block.
    cfg
        The experiment config (roster, lever mapping, events, timezone, dose).
    source_file
        The raw file's path relative to ``data/raw``, stored with the record.
    identity
        Precomputed :func:`identify` result, to avoid hashing twice.

    Returns
    -------
    MappedSession
        The record and the events of the session.

    Raises
    ------
    SessionError
        With reason ``UNKNOWN_SUBJECT``, ``UNKNOWN_PHASE``, ``BAD_DATE``, ``BAD_HEADER``,
        ``MISSING_VARIABLE`` or ``BAD_VALUE``, and a message naming the session and the fix.
    """
    ident = identity or identify(raw)
    try:
        return _map(raw, _plan(cfg), source_file=source_file, ident=ident)
    except SessionError as exc:
        raise SessionError(
            f"session of {describe(raw)}: {exc.message}",
            reason_code=exc.reason_code,
            hint=exc.hint,
        ) from None


#: (count letter, times letter) of one measure; None where the config names none.
_Letters = tuple[str | None, str | None]

#: Event names with a meaning of their own; any other event name is kept as it is.
_KNOWN_EVENTS = frozenset({"left_press", "right_press", "reinforcer", "timeout_press"})


class _Plan:
    """What mapping needs from one config, read once instead of once per session.

    Subjects and MSN names repeat in every file of a lab (a few dozen animals, a few
    programs), so their roster and phase look-ups are remembered per config.
    """

    __slots__ = (
        "_animals",
        "_phased",
        "cfg",
        "corrections",
        "event_names",
        "events",
        "left",
        "reinforcers",
        "right",
        "timeout",
        "timezone",
    )

    def __init__(self, cfg: Experiment) -> None:
        self.cfg = cfg
        self.corrections = cfg.corrections
        self.timezone = cfg.timezone
        levers = cfg.levers
        self.left = _letters(levers.left if levers is not None else None)
        self.right = _letters(levers.right if levers is not None else None)
        self.reinforcers = _letters(cfg.reinforcers)
        self.timeout = _letters(cfg.timeout_presses)
        self.events = cfg.events
        self.event_names = (
            frozenset(cfg.events.codes.values()) if cfg.events is not None else frozenset()
        )
        self._animals: dict[str, Animal | None] = {}
        self._phased: dict[str, bool] = {}

    def animal(self, subject: str) -> Animal | None:
        """Return ``cfg.find_subject(subject)``."""
        try:
            return self._animals[subject]
        except KeyError:
            if len(self._animals) > _PLAN_MEMORY:
                self._animals.clear()
            found = self._animals[subject] = self.cfg.find_subject(subject)
            return found

    def has_phase(self, msn: str) -> bool:
        """Return whether ``cfg.match_phase(msn)`` finds a rule."""
        try:
            return self._phased[msn]
        except KeyError:
            if len(self._phased) > _PLAN_MEMORY:
                self._phased.clear()
            found = self._phased[msn] = self.cfg.match_phase(msn) is not None
            return found


#: Look-ups a plan remembers before it starts over (typed subjects are few; typos too).
_PLAN_MEMORY = 4096

_last_plan: _Plan | None = None


def _plan(cfg: Experiment) -> _Plan:
    """Return the plan of ``cfg``: the last one made while the same config is in use."""
    global _last_plan
    plan = _last_plan
    if plan is None or plan.cfg is not cfg:
        plan = _last_plan = _Plan(cfg)
    return plan


def _letters(source: Source | None) -> _Letters:
    if source is None:
        return None, None
    return source.count or None, source.times or None


def _map(raw: RawSession, plan: _Plan, *, source_file: str, ident: Identity) -> MappedSession:
    header = raw.header
    subject_raw = header.get("Subject", "").strip()
    subject = plan.corrections.get(ident.session_id)
    animal = plan.animal(subject if subject is not None else subject_raw)
    if animal is None:
        close = suggest_subjects(subject_raw, sorted(plan.cfg.roster))
        suggestion = f" Did you mean {' or '.join(close)}?" if close else ""
        raise SessionError(
            f"the subject is not in the roster.{suggestion}",
            reason_code=Reason.UNKNOWN_SUBJECT,
            hint=(
                "Add the animal to configs/roster.csv, or map this session to the right "
                f"animal with a line '{ident.session_id},<subject>,<why>' in "
                "configs/corrections.csv, then run ingest again."
            ),
        )
    msn = raw.msn
    if not plan.has_phase(msn):
        raise SessionError(
            f"MSN '{msn}' matches no [[phases]] rule in the config.",
            reason_code=Reason.UNKNOWN_PHASE,
            hint="Add a [[phases]] rule whose msn pattern matches it, then run ingest again.",
        )
    for field in ("Start Date", "Start Time", "Box"):
        if not header.get(field, "").strip():
            raise SessionError(f"the header has no {field}.", reason_code=Reason.BAD_HEADER)
    box_txt = header["Box"].strip()
    box = int(box_txt) if box_txt.isdigit() else None

    tz = ZoneInfo(plan.timezone)
    start, end, duration_min, dst = session_times(raw, tz)

    active_side = animal.active_lever
    inactive_side = "right" if active_side == "left" else "left"
    variables = raw.variables
    events = _session_events(variables, plan.events)
    configured = plan.event_names
    # The measures whose count is the number of their events (no count variable).
    counted: set[str] = set()
    counts: dict[str, int | None] = {}
    times: dict[str, np.ndarray | None] = {}
    for key, letters, event in (
        ("left", plan.left, "left_press"),
        ("right", plan.right, "right_press"),
        ("reinforcers", plan.reinforcers, "reinforcer"),
        ("timeout", plan.timeout, "timeout_press"),
    ):
        counts[key], times[key] = _take(variables, letters, events, configured, event, counted)

    # A time-out press logged only with the time-out code is still a press on the active
    # lever; one logged twice (lever code + time-out code at the same tick) counts once.
    if events is not None and times["timeout"] is not None and times[active_side] is not None:
        extra = times["timeout"][~_isin(times["timeout"], times[active_side])]
        if extra.size:
            times[active_side] = np.sort(np.concatenate([times[active_side], extra]))
            if f"{active_side}_press" in counted:
                counts[active_side] = int(times[active_side].size)

    if counts["left"] is None and counts["right"] is None:
        raise SessionError(
            "none of the variables the config names for the levers is in the session "
            f"(found {', '.join(variables) or 'no variables'}).",
            reason_code=Reason.MISSING_VARIABLE,
            hint="Check [levers] / [events] in configs/experiment.toml against `labpipe inspect`.",
        )

    streams: list[tuple[str, np.ndarray]] = []
    for key, event in (
        (active_side, "active_press"),
        (inactive_side, "inactive_press"),
        ("reinforcers", "reinforcer"),
        ("timeout", "timeout_press"),
    ):
        t = times[key]
        if t is not None and t.size:
            streams.append((event, t))
    if events:
        streams.extend((k, v) for k, v in events.items() if k not in _KNOWN_EVENTS and v.size)
    has_events = times["left"] is not None or times["right"] is not None
    if streams:
        # Events are ordered by time, events at the same time by name, then as listed above.
        # Laying the streams out by name (a stable sort) and then sorting the times stably
        # gives exactly that order without comparing name strings per event.
        streams.sort(key=_stream_name)
        stamps = np.concatenate([t for _, t in streams])
        order = stamps.argsort(kind="stable")
        event_t = stamps[order]
        names: list[str] = []
        for name, t in streams:
            names += [name] * t.size
        event_name = np.array(names, dtype=object)[order]
    else:
        event_t, event_name = np.empty(0, dtype=np.float64), np.empty(0, dtype=object)

    record: dict[str, Any] = {
        "session_id": ident.session_id,
        "subject_raw": subject_raw,
        "subject": animal.subject,
        "active_lever": active_side,
        "box": box,
        "msn": msn,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "duration_min": duration_min,
        "dst_crossing": bool(dst),
        "active": counts[active_side],
        "inactive": counts[inactive_side],
        "reinforcers": counts["reinforcers"],
        "timeout_active": counts["timeout"],
        "has_events": bool(has_events),
        "source_file": source_file,
        "source_block": raw.block,
    }
    return MappedSession(ident, record, event_t, event_name)


def _stream_name(stream: tuple[str, np.ndarray]) -> str:
    return stream[0]


def _session_events(
    variables: Mapping[str, float | np.ndarray], ev: Events | None
) -> dict[str, np.ndarray] | None:
    """Decode the session's event array; None when the config or the session has none."""
    if ev is None or ev.array not in variables:
        return None
    values = variables[ev.array]
    if not isinstance(values, np.ndarray):
        raise SessionError(
            f"events.array '{ev.array}' is a scalar in this session, not an array.",
            reason_code=Reason.BAD_VALUE,
        )
    return _decode_time_code(values, ev.tick_seconds, ev.codes)


def _take(
    variables: Mapping[str, float | np.ndarray],
    letters: _Letters,
    events: dict[str, np.ndarray] | None,
    configured: frozenset[str],
    event: str,
    counted: set[str],
) -> tuple[int | None, np.ndarray | None]:
    """Return (count, times) for one measure: its variables first, then the event array.

    A count taken from the events (no count variable) is noted in ``counted``.
    """
    count_letter, times_letter = letters
    count: int | None = None
    stamps: np.ndarray | None = None
    if count_letter is not None and count_letter in variables:
        count = _scalar_count(variables[count_letter], count_letter)
    if times_letter is not None and times_letter in variables:
        stamps = _press_times(variables[times_letter], times_letter, count)
    elif events is not None and event in events:
        stamps = events[event]
    elif events is not None and event in configured:
        stamps = np.empty(0, dtype=np.float64)
    if count is None and stamps is not None:
        count = int(stamps.size)
        counted.add(event)
    return count, stamps


def _isin(values: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Return ``np.isin(values, test)`` (plain float equality), cheaply for short arrays."""
    if values.size * test.size <= 1 << 14:
        # A session's time-out presses and lever presses number tens: comparing every pair
        # costs microseconds, np.isin's set-up tens of microseconds.
        return (values[:, np.newaxis] == test).any(axis=1)
    return np.isin(values, test)


def _scalar_count(value: float | np.ndarray, letter: str) -> int:
    if isinstance(value, np.ndarray):
        raise SessionError(
            f"count variable {letter} is an array in this session; the config expects a scalar.",
            reason_code=Reason.BAD_VALUE,
        )
    if value < 0 or value != int(value):
        raise SessionError(
            f"count variable {letter} holds {value}, which is not a count.",
            reason_code=Reason.BAD_VALUE,
        )
    return int(value)


def _press_times(value: float | np.ndarray, letter: str, count: int | None) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise SessionError(
            f"times variable {letter} is a scalar in this session; the config expects an array.",
            reason_code=Reason.BAD_VALUE,
        )
    if count is not None and count <= value.size:
        # The count scalar says how many slots are real; the rest is DIM padding.
        real = value[:count]
    else:
        nonzero = np.flatnonzero(value)
        real = value[: nonzero[-1] + 1] if nonzero.size else value[:0]
    out = real.astype(np.float64)  # a copy: sorted in place
    out.sort()
    return out


def _decode_time_code(
    values: np.ndarray, tick_seconds: float, codes: Mapping[int, str]
) -> dict[str, np.ndarray]:
    nonzero = np.flatnonzero(values)
    values = values[: nonzero[-1] + 1] if nonzero.size else values[:0]
    # Work in integer thousandths so 53600.011 is tick 53600, code 11, with no float drift.
    packed = np.rint(values * 1000.0).astype(np.int64)
    if (packed < 0).any():
        raise SessionError(
            "the event array holds negative values; it is not TIME.CODE.",
            reason_code=Reason.BAD_EVENT_CODE,
        )
    ticks, code = np.divmod(packed, 1000)
    t = ticks.astype(np.float64) * tick_seconds
    out: dict[str, np.ndarray] = {}
    for value in np.unique(code):
        name = codes.get(int(value), f"code_{int(value)}")
        sel = t[code == value]
        out[name] = np.sort(np.concatenate([out[name], sel])) if name in out else sel
    return out


def derivation_key(cfg: Experiment, subjects: Mapping[str, str], *, parser_version: str) -> str:
    """Hash everything stored events and records depend on, besides the raw bytes.

    Parameters
    ----------
    cfg
        The experiment config.
    subjects
        Subject -> active lever, for the animals that have stored sessions.
    parser_version
        Version of the raw reader that produced the stored values.

    Returns
    -------
    str
        sha256 hex. When it changes, stored sessions are re-derived from the raw files.
    """
    parts = [
        f"parser={parser_version}",
        f"mapping={MAPPING_VERSION}",
        f"tz={cfg.timezone}",
        f"levers={_dump(cfg.levers)}",
        f"reinforcers={_dump(cfg.reinforcers)}",
        f"timeout={_dump(cfg.timeout_presses)}",
        f"events={_dump(cfg.events)}",
        "sides=" + ",".join(f"{s}:{side}" for s, side in sorted(subjects.items())),
        "corrections=" + ",".join(f"{k}:{v}" for k, v in sorted(cfg.corrections.items())),
        "phases=" + ";".join(f"{r.msn.pattern}->{r.phase}/{r.test}" for r in cfg.phases),
    ]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _dump(obj: object) -> str:
    if obj is None:
        return "-"
    dump = getattr(obj, "model_dump", None)
    data = dump(mode="json") if dump is not None else obj
    return repr(sorted(data.items()) if isinstance(data, dict) else data)
