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
import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from labpipe.errors import SessionError
from labpipe.model import RawSession, Reason

if TYPE_CHECKING:
    from labpipe.config import Experiment, Source

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
    digest = hashlib.sha256()
    for letter in sorted(variables):
        value = variables[letter]
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value, dtype="<f8")
            digest.update(f"{letter}[{arr.size}]".encode())
            digest.update(arr.tobytes())
        else:
            digest.update(f"{letter}=".encode())
            digest.update(struct.pack("<d", float(value)))
    return digest.hexdigest()


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
    dm = _DATE.match(date_text.strip())
    tm = _TIME.match(time_text.strip())
    if dm is None or tm is None:
        raise SessionError(
            f"{field} Date/Time '{date_text} {time_text}' is not MM/DD/YY HH:MM:SS.",
            reason_code=Reason.BAD_DATE,
        )
    month, day, year_txt = int(dm.group(1)), int(dm.group(2)), dm.group(3)
    year = int(year_txt)
    if len(year_txt) == 2:
        # MED-PC writes two-digit years; the usual strptime pivot: 69-99 -> 19xx, else 20xx.
        year += 1900 if year >= 69 else 2000
    try:
        local = datetime.combine(
            date(year, month, day),
            time(int(tm.group(1)), int(tm.group(2)), int(tm.group(3))),
            tzinfo=tz,
        )
    except ValueError as exc:
        raise SessionError(
            f"{field} Date/Time '{date_text} {time_text}' is not a real date or time "
            f"({exc}); MED-PC writes dates as MM/DD/YY.",
            reason_code=Reason.BAD_DATE,
        ) from exc
    return local, local.astimezone(UTC)


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
    where = describe(raw)
    try:
        return _map(raw, cfg, source_file=source_file, ident=ident)
    except SessionError as exc:
        raise SessionError(
            f"session of {where}: {exc.message}", reason_code=exc.reason_code, hint=exc.hint
        ) from None


def _map(raw: RawSession, cfg: Experiment, *, source_file: str, ident: Identity) -> MappedSession:
    subject_raw = raw.header.get("Subject", "").strip()
    subject = cfg.corrections.get(ident.session_id)
    animal = cfg.find_subject(subject if subject is not None else subject_raw)
    if animal is None:
        close = suggest_subjects(subject_raw, sorted(cfg.roster))
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
    if cfg.match_phase(raw.msn) is None:
        raise SessionError(
            f"MSN '{raw.msn}' matches no [[phases]] rule in the config.",
            reason_code=Reason.UNKNOWN_PHASE,
            hint="Add a [[phases]] rule whose msn pattern matches it, then run ingest again.",
        )
    for field in ("Start Date", "Start Time", "Box"):
        if not raw.header.get(field, "").strip():
            raise SessionError(f"the header has no {field}.", reason_code=Reason.BAD_HEADER)
    box_txt = raw.header["Box"].strip()
    box = int(box_txt) if box_txt.isdigit() else None

    tz = ZoneInfo(cfg.timezone)
    start, end, duration_min, dst = session_times(raw, tz)

    active_side = animal.active_lever
    inactive_side = "right" if active_side == "left" else "left"
    streams = _Streams(raw, cfg)
    levers = cfg.levers
    counts: dict[str, int | None] = {}
    times: dict[str, np.ndarray | None] = {}
    for side in ("left", "right"):
        source = getattr(levers, side) if levers is not None else None
        counts[side], times[side] = streams.take(source, event=f"{side}_press")
    counts["reinforcers"], times["reinforcers"] = streams.take(cfg.reinforcers, event="reinforcer")
    counts["timeout"], times["timeout"] = streams.take(cfg.timeout_presses, event="timeout_press")

    # A time-out press logged only with the time-out code is still a press on the active
    # lever; one logged twice (lever code + time-out code at the same tick) counts once.
    if streams.from_events and times["timeout"] is not None and times[active_side] is not None:
        extra = times["timeout"][~np.isin(times["timeout"], times[active_side])]
        if extra.size:
            times[active_side] = np.sort(np.concatenate([times[active_side], extra]))
            if streams.count_from_events(active_side):
                counts[active_side] = int(times[active_side].size)

    if counts["left"] is None and counts["right"] is None:
        raise SessionError(
            "none of the variables the config names for the levers is in the session "
            f"(found {', '.join(raw.variables) or 'no variables'}).",
            reason_code=Reason.MISSING_VARIABLE,
            hint="Check [levers] / [events] in configs/experiment.toml against `labpipe inspect`.",
        )

    names: list[np.ndarray] = []
    stamps: list[np.ndarray] = []
    for key, event in (
        (active_side, "active_press"),
        (inactive_side, "inactive_press"),
        ("reinforcers", "reinforcer"),
        ("timeout", "timeout_press"),
    ):
        t = times[key]
        if t is not None and t.size:
            stamps.append(t)
            names.append(np.full(t.size, event, dtype=object))
    for event, t in streams.other_events().items():
        stamps.append(t)
        names.append(np.full(t.size, event, dtype=object))
    has_events = any(times[k] is not None for k in ("left", "right"))
    if stamps:
        event_t = np.concatenate(stamps)
        event_name = np.concatenate(names)
        order = np.lexsort((event_name.astype(str), event_t))
        event_t, event_name = event_t[order], event_name[order]
    else:
        event_t, event_name = np.empty(0, dtype=np.float64), np.empty(0, dtype=object)

    record: dict[str, Any] = {
        "session_id": ident.session_id,
        "subject_raw": subject_raw,
        "subject": animal.subject,
        "active_lever": active_side,
        "box": box,
        "msn": raw.msn,
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
    return MappedSession(ident, record, event_t.astype(np.float64), event_name)


class _Streams:
    """Where counts and times come from in one session: variables first, then events."""

    def __init__(self, raw: RawSession, cfg: Experiment) -> None:
        self.raw = raw
        self.cfg = cfg
        self._counted_from_events: set[str] = set()
        self.events: dict[str, np.ndarray] = {}
        self.from_events = False
        ev = cfg.events
        if ev is not None and ev.array in raw.variables:
            values = raw.variables[ev.array]
            if not isinstance(values, np.ndarray):
                raise SessionError(
                    f"events.array '{ev.array}' is a scalar in this session, not an array.",
                    reason_code=Reason.BAD_VALUE,
                )
            self.events = _decode_time_code(values, ev.tick_seconds, ev.codes)
            self.from_events = True

    def take(self, source: Source | None, *, event: str) -> tuple[int | None, np.ndarray | None]:
        """Return (count, times) for one measure, from its variables or the event array."""
        count: int | None = None
        stamps: np.ndarray | None = None
        if source is not None and source.count and source.count in self.raw.variables:
            count = _scalar_count(self.raw.variables[source.count], source.count)
        if source is not None and source.times and source.times in self.raw.variables:
            stamps = _press_times(self.raw.variables[source.times], source.times, count)
        elif self.from_events and event in self.events:
            stamps = self.events[event]
        elif self.from_events and self._event_configured(event):
            stamps = np.empty(0, dtype=np.float64)
        if count is None and stamps is not None:
            count = int(stamps.size)
            self._counted_from_events.add(event)
        return count, stamps

    def count_from_events(self, side: str) -> bool:
        return f"{side}_press" in self._counted_from_events

    def _event_configured(self, event: str) -> bool:
        ev = self.cfg.events
        return ev is not None and event in ev.codes.values()

    def other_events(self) -> dict[str, np.ndarray]:
        known = {"left_press", "right_press", "reinforcer", "timeout_press"}
        return {k: v for k, v in self.events.items() if k not in known and v.size}


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
        return np.sort(value[:count].astype(np.float64))
    nonzero = np.flatnonzero(value)
    real = value[: nonzero[-1] + 1] if nonzero.size else value[:0]
    return np.sort(real.astype(np.float64))


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
