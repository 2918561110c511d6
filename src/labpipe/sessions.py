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
import string
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
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
    get = raw.header.get
    subject = " ".join(get("Subject", "").split())
    start_date = get("Start Date", "").strip()
    start_time = get("Start Time", "").strip()
    box = get("Box", "").strip()
    key = f"{subject}|{start_date}|{start_time}|{box}"
    ident = _new(Identity)
    _set_session_id(ident, _SHA256(key.encode("utf-8")).hexdigest()[:16])
    _set_key(ident, key)
    _set_slot(ident, f"{box}|{start_date}|{start_time}")
    _set_fingerprint(ident, fingerprint(raw.variables))
    return ident


# Frozen dataclasses set each field with object.__setattr__ in __init__; identify() and
# map_session() make one of each per session, by setting the slots directly: the same
# objects (equal, hashable, frozen), made in half the time.
_new = object.__new__
_set_session_id = Identity.session_id.__set__  # type: ignore[attr-defined]
_set_key = Identity.key.__set__  # type: ignore[attr-defined]
_set_slot = Identity.slot.__set__  # type: ignore[attr-defined]
_set_fingerprint = Identity.fingerprint.__set__  # type: ignore[attr-defined]
_set_identity = MappedSession.identity.__set__  # type: ignore[attr-defined]
_set_record = MappedSession.record.__set__  # type: ignore[attr-defined]
_set_event_t = MappedSession.event_t.__set__  # type: ignore[attr-defined]
_set_event_name = MappedSession.event_name.__set__  # type: ignore[attr-defined]


def fingerprint(variables: Mapping[str, float | np.ndarray]) -> str:
    """Hash parsed values independently of line endings, encoding and header text.

    Parameters
    ----------
    variables
        Letter -> scalar or array, as the parser returns them.

    Returns
    -------
    str
        sha256 hex digest over the sorted letters, their kind and their exact float64 bytes:
        ``A=`` and 8 bytes for a scalar, ``L[10]`` and 80 bytes for an array of 10.
    """
    # The parser gives letters A-Z, Python floats and float64 arrays (views of one buffer
    # per block): their bytes go into the digest as they are, with the letter tags made
    # once. Anything else (another name, a strided view, another dtype) takes the general
    # path, which converts.
    parts: list[bytes | np.ndarray] = []
    append = parts.append
    try:
        for letter in sorted(variables):
            value = variables[letter]
            if type(value) is float:
                append(_SCALAR_TAGS[letter])
                append(_PACK_F8(value))
            elif type(value) is np.ndarray and value.dtype is _F8:
                sizes = _ARRAY_TAGS[letter]
                size = value.size
                append(sizes.get(size) or _array_tag(sizes, letter, size))
                append(value)
            else:
                return _fingerprint_any(variables)
        return _SHA256(b"".join(parts)).hexdigest()
    except (KeyError, TypeError):  # a name other than A-Z; an array not in one buffer
        return _fingerprint_any(variables)


def _fingerprint_any(variables: Mapping[str, float | np.ndarray]) -> str:
    """Return :func:`fingerprint` of any letters and values (converting what must be)."""
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


def _array_tag(sizes: dict[int, bytes], letter: str, size: int) -> bytes:
    if len(sizes) > _TAG_MEMORY:
        sizes.clear()
    tag = sizes[size] = f"{letter}[{size}]".encode()
    return tag


_PACK_F8 = struct.Struct("<d").pack
_SHA256 = hashlib.sha256
#: The dtype the fingerprint hashes: float64, little-endian (the parser's, on x86 and ARM).
_F8 = np.dtype("<f8")
#: ``b"A="`` per letter, and letter -> size -> ``b"L[10]"`` (a lab's arrays have few sizes).
_SCALAR_TAGS: dict[str, bytes] = {c: f"{c}=".encode() for c in string.ascii_uppercase}
_ARRAY_TAGS: dict[str, dict[int, bytes]] = {c: {} for c in string.ascii_uppercase}
_TAG_MEMORY = 1024


def _not_a_clock(
    field: str, date_text: str, time_text: str, exc: ValueError | None = None
) -> SessionError:
    """Return the error for a date and time that cannot be read (``exc``: not real)."""
    if exc is None:
        return SessionError(
            f"{field} Date/Time '{date_text} {time_text}' is not MM/DD/YY HH:MM:SS.",
            reason_code=Reason.BAD_DATE,
        )
    return SessionError(
        f"{field} Date/Time '{date_text} {time_text}' is not a real date or time "
        f"({exc}); MED-PC writes dates as MM/DD/YY.",
        reason_code=Reason.BAD_DATE,
    )


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


# ---- The clock of a session ---------------------------------------------------------------
#
# map_session() wants a session's start and end as ISO texts, its real duration and
# whether the UTC offset changed: datetime(), astimezone() and isoformat() per session
# would cost more than all the rest of it. A lab's sessions share their dates (one a day)
# and a zone has a handful of UTC offsets, so the local time is the date's midnight plus
# the time of day, and the ISO text is pieced together from the texts of the date, the
# time and the offset, each made once.


class _Day:
    """The midnights of dates in one time zone, as :func:`_clock` uses them.

    Parameters
    ----------
    tz
        The chambers' time zone.
    """

    __slots__ = ("midnights", "tz")

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        #: Date text -> aware midnight of that date.
        self.midnights: dict[str, datetime] = {}


def _session_clock(
    header: Mapping[str, str], start_date: str, start_time: str, day: _Day
) -> tuple[str, str, float, bool]:
    """Return a session's start and end (ISO 8601), real duration and DST crossing.

    Without an ``End Date`` the session ends on its start date, or the next day when the
    end time is earlier than the start time (a session past midnight).

    Parameters
    ----------
    header
        The session's header.
    start_date, start_time
        Its ``Start Date`` and ``Start Time`` as written (the header's, already read).
    day
        The time zone and its midnights.

    Returns
    -------
    tuple
        Start and end (``datetime.isoformat()`` of the aware local times, ``fold=0`` in an
        ambiguous hour), the duration in minutes (UTC difference) and whether the UTC
        offset changed.

    Raises
    ------
    SessionError
        ``BAD_DATE`` for an unreadable or unreal date or time (e.g. 02/29/23, 13/01/24)
        or an end before the start; ``BAD_HEADER`` without an ``End Time``.
    """
    start, start_us, start_off, start_iso = _clock(start_date, start_time, "Start", day)
    end_date = header.get("End Date", "").strip()
    end_time = header.get("End Time", "").strip()
    if not end_time:
        raise SessionError("the session has no End Time.", reason_code=Reason.BAD_HEADER)
    if end_date:
        end, end_us, end_off, end_iso = _clock(end_date, end_time, "End", day)
    else:
        end, end_us, end_off, end_iso = _clock(start_date, end_time, "End", day)
        if end_us < start_us:
            # Past midnight: the end is on the next day (on the wall clock).
            end = (end.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=day.tz)
            end_us, end_off, end_iso = _instant(end)
    if end_us < start_us:
        raise SessionError(
            f"End ({end:%m/%d/%y %H:%M:%S}) is before Start ({start:%m/%d/%y %H:%M:%S}).",
            reason_code=Reason.BAD_DATE,
            hint="Is the chamber PC's clock wrong?",
        )
    # timedelta.total_seconds() is microseconds / 10**6 (int / int): the same float.
    return start_iso, end_iso, (end_us - start_us) / 1_000_000 / 60.0, start_off != end_off


def _clock(date_text: str, time_text: str, field: str, day: _Day) -> _Clock:
    """Read a MED-PC ``MM/DD/YY`` date and ``HH:MM:SS`` time (hours may be space-padded).

    Returns (local aware datetime, UTC instant in microseconds, UTC offset in
    microseconds, ISO text).
    """
    date_info = _DAYS.get(date_text) or _date_info(date_text)
    time_info = _TIMES_OF_DAY.get(time_text) or _time_info(time_text)
    if not date_info or not time_info:
        raise _not_a_clock(field, date_text, time_text)
    ymd, ordinal, date_iso = date_info
    hms, seconds, time_iso, since_midnight = time_info
    midnight = day.midnights.get(date_text)
    if midnight is not None and since_midnight is not None:
        # The same datetime as datetime(*ymd, *hms, tzinfo=tz), fold 0.
        local = midnight + since_midnight
    else:
        try:
            # Checks the date, then the time, with the messages of date() and time().
            local = datetime(*ymd, *hms, tzinfo=day.tz)
        except ValueError as exc:
            raise _not_a_clock(field, date_text, time_text, exc) from exc
        if len(day.midnights) > _CLOCK_MEMORY:
            day.midnights.clear()
        day.midnights[date_text] = datetime(*ymd, tzinfo=day.tz)
    off_us, suffix = _OFFSETS.get(local.utcoffset()) or _offset(local)  # type: ignore[arg-type]
    utc_us = (ordinal * 86400 + seconds) * 1_000_000 - off_us
    return local, utc_us, off_us, f"{date_iso}T{time_iso}{suffix}"


def _instant(local: datetime) -> tuple[int, int, str]:
    """Return (UTC microseconds, offset microseconds, ISO text) of an aware datetime."""
    off_us, _ = _OFFSETS.get(local.utcoffset()) or _offset(local)  # type: ignore[arg-type]
    wall = local.toordinal() * 86400 + local.hour * 3600 + local.minute * 60 + local.second
    return wall * 1_000_000 + local.microsecond - off_us, off_us, local.isoformat()


#: (local datetime, UTC instant in microseconds, UTC offset in microseconds, ISO text).
_Clock = tuple[datetime, int, int, str]
#: Date text -> ((year, month, day), proleptic ordinal or -1 if no such date,
#: ``YYYY-MM-DD``); ``()`` when the text is not a date.
_DAYS: dict[str, tuple[tuple[int, int, int], int, str] | tuple[()]] = {}
#: Time text -> ((hour, minute, second), seconds of the day, ``HH:MM:SS``, time since
#: midnight or None if no such time); ``()`` when the text is not a time.
_TIMES_OF_DAY: dict[str, tuple[tuple[int, int, int], int, str, timedelta | None] | tuple[()]] = {}
#: UTC offset -> (microseconds, its ISO text such as ``-05:00``).
_OFFSETS: dict[timedelta, tuple[int, str]] = {}
#: Texts remembered before starting over (a lab has a date a day, times per box and day).
_CLOCK_MEMORY = 8192


def _date_info(text: str) -> tuple[tuple[int, int, int], int, str] | tuple[()]:
    ymd = _date_fields(text)
    if ymd is None:
        return ()
    year, month, day = ymd
    try:
        ordinal = date(year, month, day).toordinal()
    except ValueError:
        ordinal = -1  # no such date: datetime() says why before the ordinal is used
    if len(_DAYS) > _CLOCK_MEMORY:
        _DAYS.clear()
    found = _DAYS[text] = (ymd, ordinal, f"{year:04d}-{month:02d}-{day:02d}")
    return found


def _time_info(
    text: str,
) -> tuple[tuple[int, int, int], int, str, timedelta | None] | tuple[()]:
    hms = _time_fields(text)
    if hms is None:
        return ()
    hour, minute, second = hms
    seconds = hour * 3600 + minute * 60 + second
    # No such time (24:00:00, 9:60:00): datetime() says why.
    real = hour < 24 and minute < 60 and second < 60
    if len(_TIMES_OF_DAY) > _CLOCK_MEMORY:
        _TIMES_OF_DAY.clear()
    found = _TIMES_OF_DAY[text] = (
        hms,
        seconds,
        f"{hour:02d}:{minute:02d}:{second:02d}",
        timedelta(seconds=seconds) if real else None,
    )
    return found


def _offset(local: datetime) -> tuple[int, str]:
    """Remember the UTC offset of ``local``: microseconds and the ISO text of it."""
    offset = local.utcoffset()
    assert offset is not None  # a ZoneInfo always has an offset
    # isoformat() of a time without microseconds is 19 characters, then the offset.
    whole = local.replace(microsecond=0).isoformat()
    if len(_OFFSETS) > _CLOCK_MEMORY:
        _OFFSETS.clear()
    found = _OFFSETS[offset] = (offset // _MICROSECOND, whole[19:])
    return found


_MICROSECOND = timedelta(microseconds=1)


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
        "animals",
        "cfg",
        "codes",
        "corrections",
        "day",
        "event_array",
        "event_names",
        "events",
        "left",
        "measures",
        "phased",
        "reinforcers",
        "right",
        "tick_seconds",
        "timeout",
        "timezone",
    )

    def __init__(self, cfg: Experiment) -> None:
        self.cfg = cfg
        self.corrections = cfg.corrections
        self.timezone = cfg.timezone
        #: The time zone (ZoneInfo(timezone)) and its midnights, made when first needed.
        self.day: _Day | None = None
        levers = cfg.levers
        self.left = _letters(levers.left if levers is not None else None)
        self.right = _letters(levers.right if levers is not None else None)
        self.reinforcers = _letters(cfg.reinforcers)
        self.timeout = _letters(cfg.timeout_presses)
        #: (count letter, times letter, event name) of each measure, in the order mapped.
        self.measures: tuple[tuple[str | None, str | None, str], ...] = (
            (*self.left, "left_press"),
            (*self.right, "right_press"),
            (*self.reinforcers, "reinforcer"),
            (*self.timeout, "timeout_press"),
        )
        self.events = cfg.events
        ev = cfg.events
        self.event_array = ev.array if ev is not None else None
        self.tick_seconds = ev.tick_seconds if ev is not None else 0.0
        self.codes: dict[int, str] = dict(ev.codes) if ev is not None else {}
        self.event_names = frozenset(ev.codes.values()) if ev is not None else frozenset()
        self.animals: dict[str, Animal | None] = {}
        self.phased: dict[str, bool] = {}

    def animal(self, subject: str) -> Animal | None:
        """Return ``cfg.find_subject(subject)``."""
        try:
            return self.animals[subject]
        except KeyError:
            if len(self.animals) > _PLAN_MEMORY:
                self.animals.clear()
            found = self.animals[subject] = self.cfg.find_subject(subject)
            return found

    def has_phase(self, msn: str) -> bool:
        """Return whether ``cfg.match_phase(msn)`` finds a rule."""
        try:
            return self.phased[msn]
        except KeyError:
            if len(self.phased) > _PLAN_MEMORY:
                self.phased.clear()
            found = self.phased[msn] = self.cfg.match_phase(msn) is not None
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
    get = header.get
    subject_raw = get("Subject", "").strip()
    subject = plan.corrections.get(ident.session_id)
    typed = subject if subject is not None else subject_raw
    animal = plan.animals.get(typed, _UNSEEN)
    if animal is _UNSEEN:
        animal = plan.animal(typed)
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
    msn = get("MSN", "")
    phased = plan.phased.get(msn)
    if phased is None:
        phased = plan.has_phase(msn)
    if not phased:
        raise SessionError(
            f"MSN '{msn}' matches no [[phases]] rule in the config.",
            reason_code=Reason.UNKNOWN_PHASE,
            hint="Add a [[phases]] rule whose msn pattern matches it, then run ingest again.",
        )
    start_date = get("Start Date", "")
    start_time = get("Start Time", "")
    box_txt = get("Box", "").strip()
    for field, text in (("Start Date", start_date), ("Start Time", start_time), ("Box", box_txt)):
        if not text.strip():
            raise SessionError(f"the header has no {field}.", reason_code=Reason.BAD_HEADER)
    box = int(box_txt) if box_txt.isdigit() else None

    day = plan.day
    if day is None:
        day = plan.day = _Day(ZoneInfo(plan.timezone))
    start, end, duration_min, dst = _session_clock(header, start_date, start_time, day)

    active_side = animal.active_lever
    variables = raw.variables
    measured = _measures(variables, plan, active_side)
    if measured is None:
        measured = _measures_numpy(variables, plan, active_side)
    active, inactive, reinforcers, timeout, has_events, event_t, event_name = measured

    record: dict[str, Any] = {
        "session_id": ident.session_id,
        "subject_raw": subject_raw,
        "subject": animal.subject,
        "active_lever": active_side,
        "box": box,
        "msn": msn,
        "start": start,
        "end": end,
        "duration_min": duration_min,
        "dst_crossing": dst,
        "active": active,
        "inactive": inactive,
        "reinforcers": reinforcers,
        "timeout_active": timeout,
        "has_events": has_events,
        "source_file": source_file,
        "source_block": raw.block,
    }
    mapped = _new(MappedSession)
    _set_identity(mapped, ident)
    _set_record(mapped, record)
    _set_event_t(mapped, event_t)
    _set_event_name(mapped, event_name)
    return mapped


#: A subject or program the plan has not looked up yet (None means "not in the config").
_UNSEEN: Any = object()

#: (active, inactive, reinforcers, timeout_active, has_events, event_t, event_name).
_Measured = tuple[int | None, int | None, int | None, int | None, bool, np.ndarray, np.ndarray]

#: Longest array read with plain Python. A session's arrays hold tens of values: numpy's
#: set-up per call costs more than the work then; past this many, numpy is cheaper.
_SHORT = 256
#: Longest event array decoded with plain Python (its loop costs more per value).
_SHORT_EVENTS = 128
#: TIME.CODE values decoded with plain Python are below this (ticks * 1000 fit an int64).
_HUGE = 1e15


def _measures(
    variables: Mapping[str, float | np.ndarray], plan: _Plan, active_side: str
) -> _Measured | None:
    """Return the counts and events of a session, with Python lists for its short arrays.

    The same results and errors as :func:`_measures_numpy`, or None when a value is not a
    short float64 array, or the session's times hold a NaN or a zero: the caller then takes
    the numpy path from the start.

    The numpy path sorts each measure's times, then sorts all events stably by time. Here
    the times stay in file order and only the final stable sort is made: among equal times
    of one measure the order cannot be seen (same name, same float), unless two of them
    are equal with other bits (``0.0`` and ``-0.0``) or are NaN (which numpy sorts last and
    Python not at all); sessions with a NaN or a zero time are left to numpy.
    """
    get = variables.get
    events: dict[str, list[float]] | None = None
    letter = plan.event_array
    if letter is not None and letter in variables:
        values = variables[letter]
        if not isinstance(values, np.ndarray):
            raise _scalar_events(letter)
        events = _decode_short(values, plan.tick_seconds, plan.codes)
        if events is None:
            return None
    counts: list[int | None] = []
    times: list[list[float] | None] = []
    counted: list[bool] = []
    for count_letter, times_letter, event in plan.measures:
        count: int | None = None
        stamps: list[float] | None = None
        value = get(count_letter, _ABSENT)  # type: ignore[arg-type]
        if value is not _ABSENT:
            if type(value) is float and value >= 0.0 and value.is_integer():
                count = int(value)
            else:
                count = _scalar_count(value, count_letter)  # type: ignore[arg-type]
        value = get(times_letter, _ABSENT)  # type: ignore[arg-type]
        if value is not _ABSENT:
            if type(value) is np.ndarray and value.dtype is _F8 and value.ndim == 1:
                size = value.size
                if count is not None and count <= size:
                    # The count scalar says how many slots are real; the rest is padding.
                    if count > _SHORT:
                        return None
                    stamps = (value[:count] if size > _SHORT else value).tolist()
                    del stamps[count:]
                elif size > _SHORT:
                    return None
                else:
                    # Trailing zeros are padding (as np.flatnonzero: NaN is not zero, -0.0
                    # is).
                    stamps = value.tolist()
                    n = size
                    while n and stamps[n - 1] == 0:
                        n -= 1
                    del stamps[n:]
            elif isinstance(value, np.ndarray):
                return None
            else:
                raise _scalar_times(times_letter)  # type: ignore[arg-type]
        elif events is not None:
            stamps = events.get(event)
            if stamps is None and event in plan.event_names:
                stamps = []
        if count is None and stamps is not None:
            counts.append(len(stamps))
            counted.append(True)
        else:
            counts.append(count)
            counted.append(False)
        times.append(stamps)

    a, i = (0, 1) if active_side == "left" else (1, 0)
    active, inactive, reinforcers, timeout = times[a], times[i], times[2], times[3]
    # A time-out press logged only with the time-out code is still a press on the active
    # lever; one logged twice (lever code + time-out code at the same tick) counts once.
    if events is not None and timeout is not None and active is not None:
        pool: list[float] | set[float] = set(active) if len(active) * len(timeout) > 64 else active
        extra = [t for t in timeout if t not in pool]
        if extra:
            active = active + extra
            if counted[a]:
                counts[a] = len(active)

    if counts[0] is None and counts[1] is None:
        raise _no_lever_variable(variables)

    has_events = times[0] is not None or times[1] is not None
    flat: list[float] = []
    names: list[str] = []
    # The four known names are in order already; other events sort in among them.
    streams = [
        (name, stamps)
        for name, stamps in (
            ("active_press", active),
            ("inactive_press", inactive),
            ("reinforcer", reinforcers),
            ("timeout_press", timeout),
        )
        if stamps
    ]
    if events and not _KNOWN_EVENTS.issuperset(events):
        # Events at the same time are ordered by name, then as listed (a stable sort).
        streams += [(k, v) for k, v in events.items() if k not in _KNOWN_EVENTS and v]
        streams.sort(key=_stream_name)
    for name, stamps in streams:
        flat += stamps
        names += [name] * len(stamps)
    if not flat:
        empty = np.empty(0, dtype=np.float64), np.empty(0, dtype=object)
        return counts[a], counts[i], counts[2], counts[3], has_events, *empty
    total = sum(flat)
    if total != total or 0.0 in flat:  # a NaN, or a zero that may be -0.0
        return None
    stamped = np.array(flat, dtype=np.float64)
    order = stamped.argsort(kind="stable")
    event_t = stamped[order]
    event_name = np.array(names, dtype=object)[order]
    return counts[a], counts[i], counts[2], counts[3], has_events, event_t, event_name


#: A letter the session does not have.
_ABSENT: Any = object()


def _decode_short(
    values: np.ndarray, tick_seconds: float, codes: Mapping[int, str]
) -> dict[str, list[float]] | None:
    """Return :func:`_decode_time_code` with lists, or None if numpy must do it.

    The lists hold the times of each event in file order (numpy sorts those of codes that
    share a name; :func:`_measures` sorts all events stably at the end).
    """
    if (
        type(values) is not np.ndarray
        or values.dtype is not _F8
        or values.ndim != 1
        or values.size > _SHORT_EVENTS
    ):
        return None
    stamps: list[float] = values.tolist()
    n = len(stamps)
    while n and stamps[n - 1] == 0:
        n -= 1
    del stamps[n:]
    by_code: dict[int, list[float]] = {}
    if stamps:
        total = sum(stamps)
        lowest = min(stamps)
        if total != total or not (lowest > -_HUGE and max(stamps) < _HUGE):
            return None  # NaN, infinities, or values past an int64 of thousandths
        # round() rounds half to even like np.rint, and never decreases: the smallest
        # value gives the smallest tick.
        if round(lowest * 1000.0) < 0:
            raise _negative_events()
        for value in stamps:
            tick, code = divmod(round(value * 1000.0), 1000)
            # A float64 tick times the tick length: the product numpy computes.
            found = by_code.get(code)
            if found is None:
                by_code[code] = [tick * tick_seconds]
            else:
                found.append(tick * tick_seconds)
    out: dict[str, list[float]] = {}
    for code in sorted(by_code):
        name = codes.get(code, f"code_{code}")
        sel = by_code[code]
        out[name] = out[name] + sel if name in out else sel
    return out


def _measures_numpy(
    variables: Mapping[str, float | np.ndarray], plan: _Plan, active_side: str
) -> _Measured:
    """Return the counts and events of a session, whatever its values (numpy throughout)."""
    inactive_side = "right" if active_side == "left" else "left"
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
        raise _no_lever_variable(variables)

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
    return (
        counts[active_side],
        counts[inactive_side],
        counts["reinforcers"],
        counts["timeout"],
        bool(has_events),
        event_t,
        event_name,
    )


def _no_lever_variable(variables: Mapping[str, float | np.ndarray]) -> SessionError:
    return SessionError(
        "none of the variables the config names for the levers is in the session "
        f"(found {', '.join(variables) or 'no variables'}).",
        reason_code=Reason.MISSING_VARIABLE,
        hint="Check [levers] / [events] in configs/experiment.toml against `labpipe inspect`.",
    )


def _scalar_events(letter: str) -> SessionError:
    return SessionError(
        f"events.array '{letter}' is a scalar in this session, not an array.",
        reason_code=Reason.BAD_VALUE,
    )


def _scalar_times(letter: str) -> SessionError:
    return SessionError(
        f"times variable {letter} is a scalar in this session; the config expects an array.",
        reason_code=Reason.BAD_VALUE,
    )


def _negative_events() -> SessionError:
    return SessionError(
        "the event array holds negative values; it is not TIME.CODE.",
        reason_code=Reason.BAD_EVENT_CODE,
    )


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
        raise _scalar_events(ev.array)
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
        raise _scalar_times(letter)
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
        raise _negative_events()
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
