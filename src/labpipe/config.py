"""The experiment config, the roster and the corrections: loading, validation, messages.

A lab folder holds ``configs/experiment.toml`` (the experiment), ``configs/roster.csv``
(one row per animal) and, optionally, ``configs/corrections.csv`` (session id -> the
subject it really belongs to). :func:`load_config` reads all three and returns one frozen
:class:`Experiment`, or raises one :class:`~labpipe.errors.ConfigError` that lists every
problem found, one per line, each naming the file, the key path or line, and what was
expected::

    configs/experiment.toml: phases[2].msn: invalid regular expression 'SA_(': missing ), ...
    configs/experiment.toml: analysis.time_bin_minuts: unknown key (did you mean ...?)
    configs/roster.csv, line 5: subject 'R12' appears twice (also line 3)

The TOML is read with :mod:`tomllib` and validated with pydantic models that forbid
unknown keys (a typo must not pass silently) and do not coerce types (``"15"`` is not
``15``). Names that end up in output paths, spreadsheets or HTML (the experiment, subjects,
groups, cohorts, reinstatement tests) are checked against allow-lists here, once, so no
later layer meets ``../x``, ``CON``, ``=HYPERLINK(...)`` or ``<script>``.

This module is the only home of pydantic and tomllib in labpipe.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import io
import json
import math
import os
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from labpipe import fsio
from labpipe.errors import ConfigError
from labpipe.model import Phase

__all__ = [
    "AcquisitionCriteria",
    "Analysis",
    "Animal",
    "Criteria",
    "Drug",
    "Events",
    "Experiment",
    "ExtinctionCriteria",
    "Levers",
    "PhaseRule",
    "Source",
    "load_config",
    "machine_timezone",
    "write_skeleton",
]

#: Subjects, groups and cohorts: what real IDs look like ("R12", "OO M1", "C1.b").
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,63}")
#: The experiment name: it becomes the folder ``reports/<experiment>/``.
EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9._-]+")
#: Event names of ``[events].codes``.
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
#: Reinstatement test types (``cue``, ``drug_prime``, ``stress``): they label tables and
#: figure files.
TEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: Event names labpipe derives itself; a code may not be called so.
DERIVED_EVENTS = frozenset({"active_press", "inactive_press"})
#: File names Windows reserves for devices, with or without an extension.
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(10)} | {f"LPT{i}" for i in range(10)}
)
_ROSTER_REQUIRED = ("subject", "sex", "group", "active_lever")
_ROSTER_OPTIONAL = ("cohort", "body_weight_kg", "exclude")
_CORRECTIONS_REQUIRED = ("session_id", "subject")
_CORRECTIONS_OPTIONAL = ("reason",)
_SESSION_ID = re.compile(r"[0-9a-f]{16}")
_NUMBER = re.compile(r"[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SEX = {"f": "F", "female": "F", "m": "M", "male": "M"}
_TIMEZONE_TOKEN = "@TIMEZONE@"


# ---------------------------------------------------------------------------------------
# Small helpers for values and messages
# ---------------------------------------------------------------------------------------


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


def _show(value: object) -> str:
    """Quote a value for a message: control characters escaped, long text cut."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        text = "".join(
            (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") if _is_control(c) else c
            for c in text
        )
        return f"'{text}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return _show(str(value))


def _kind(value: object) -> str:
    """Name the TOML type of a value in words."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a subject, group or cohort name, or None when it can."""
    if not value:
        return "is empty"
    if any(_is_control(c) for c in value):
        return "contains a control character"
    if value[0] in "=+-@":
        return f"starts with '{value[0]}', which a spreadsheet would run as a formula"
    if any(c in "<>&\"'`" for c in value):
        return "contains markup characters (< > & quotes), which are not allowed"
    if "/" in value or "\\" in value or value.startswith("."):
        return "looks like a file path (/, \\ or a leading dot), which is not allowed"
    if len(value) > 64:
        return "is longer than 64 characters"
    if not SAFE_NAME.fullmatch(value):
        return (
            "may hold only letters A-Z, digits, spaces and . _ + - and must start with a "
            "letter or digit"
        )
    if value[-1] in ". ":
        return "ends with a dot or a space, which Windows drops from file names"
    if value.split(".")[0].strip().upper() in WINDOWS_RESERVED:
        return "is a device name Windows reserves (CON, NUL, COM1, ...), not a file name"
    return None


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return "expected one of " + ", ".join(known)


def _decode_text(data: bytes) -> tuple[str, str]:
    """Decode CSV bytes: UTF-8 (with or without BOM), else cp1252. Return text, codec."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        # The five bytes cp1252 leaves undefined become control characters, which the
        # checks of each field then name.
        return data.decode("latin-1"), "latin-1"


def _valid_zone(name: str) -> bool:
    if not name or name in ("localtime", "posixrules", "Factory"):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _zone_from_path(path: str) -> str | None:
    marker = "zoneinfo/"
    if marker not in path:
        return None
    name = path.rsplit(marker, 1)[1]
    for prefix in ("posix/", "right/"):
        name = name.removeprefix(prefix)
    return name


def machine_timezone() -> str:
    """Return the IANA name of this machine's time zone, or ``"UTC"`` when unknown.

    The ``TZ`` environment variable wins (``TZ=Europe/Berlin`` or ``TZ=:/usr/share/
    zoneinfo/Europe/Berlin``), then the target of the ``/etc/localtime`` link, then
    ``/etc/timezone``. Only names :mod:`zoneinfo` can load are returned.

    Returns
    -------
    str
        An IANA time-zone name.
    """
    candidates: list[str | None] = []
    tz_env = os.environ.get("TZ", "").strip().removeprefix(":")
    if tz_env:
        candidates.append(_zone_from_path(tz_env) if tz_env.startswith("/") else tz_env)
    with contextlib.suppress(OSError):
        candidates.append(_zone_from_path(os.path.realpath("/etc/localtime")))
    with contextlib.suppress(OSError, UnicodeDecodeError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        if name and _valid_zone(name):
            return name
    return "UTC"


# ---------------------------------------------------------------------------------------
# Validators of single values (pydantic runs them; a ValueError becomes one message)
# ---------------------------------------------------------------------------------------


def _letter(value: object) -> object:
    if isinstance(value, str) and len(value) == 1 and "A" <= value <= "Z":
        return value
    raise ValueError(f"expected a single variable letter A-Z, got {_show(value)}")


def _event_code(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        code = value
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+", value):
        code = int(value)
    else:
        raise ValueError(
            f"key {_show(value)} is not an integer event code "
            '(write codes = { "1" = "left_press", ... })'
        )
    if not 0 <= code <= 999:
        raise ValueError(f"key {_show(value)} is not an event code 0-999 (TIME.CODE)")
    return code


def _event_name(value: object) -> object:
    if not isinstance(value, str) or not SNAKE_CASE.fullmatch(value):
        raise ValueError(f"expected a snake_case event name such as cue_on, got {_show(value)}")
    if value in DERIVED_EVENTS:
        raise ValueError(
            f"'{value}' is derived from the roster's active_lever; "
            "name the code left_press or right_press"
        )
    return value


def _compile_msn(value: object) -> object:
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a regular expression in quotes, got {_show(value)}")
    if not value:
        raise ValueError("expected a regular expression, got an empty string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {_show(value)}: {exc}") from None


def _experiment_name(value: str) -> str:
    if not EXPERIMENT_NAME.fullmatch(value) or len(value) > 64:
        raise ValueError(
            "expected 1-64 letters, digits and . _ - (it names the report folder "
            f"reports/<experiment>/), got {_show(value)}"
        )
    if value[0] in ".-" or value[-1] == ".":
        raise ValueError(
            f"expected a name that starts with a letter, digit or _ and does not end with "
            f"a dot (it names a folder), got {_show(value)}"
        )
    if value.split(".")[0].upper() in WINDOWS_RESERVED:
        raise ValueError(f"{_show(value)} is a device name Windows reserves, not a folder name")
    return value


def _relative_file(value: str) -> str:
    if not value.strip():
        raise ValueError('expected a file name such as "roster.csv", got an empty string')
    if any(_is_control(c) for c in value):
        raise ValueError(f"the file name {_show(value)} contains a control character")
    return value


def _free_text(value: str) -> str:
    if any(_is_control(c) for c in value):
        raise ValueError(f"{_show(value)} contains a control character")
    return value.strip()


def _timezone(value: str) -> str:
    if _valid_zone(value):
        return value
    hint = ""
    if "/" in value or value[:1].isupper():
        try:
            import zoneinfo

            hint = " (" + _did_you_mean(value, zoneinfo.available_timezones()) + ")"
        except (OSError, ValueError):
            hint = ""
        if hint.startswith(" (expected"):
            hint = ""
    raise ValueError(
        f"unknown time zone {_show(value)}{hint}; expected an IANA name such as "
        '"America/New_York" or "Europe/Berlin"'
    )


Letter = Annotated[str, BeforeValidator(_letter)]
EventCode = Annotated[int, BeforeValidator(_event_code)]
EventName = Annotated[str, BeforeValidator(_event_name)]


# ---------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Source(_Model):
    """Where one measure lives in a session: a scalar count and/or an array of times.

    Attributes
    ----------
    count
        Letter of the scalar variable holding the count, or None.
    times
        Letter of the array variable holding the event times (s from start), or None.
    """

    count: Letter | None = None
    times: Letter | None = None

    @model_validator(mode="after")
    def _something(self) -> Source:
        if self.count is None and self.times is None:
            raise ValueError(
                'expected count and/or times, each a variable letter (e.g. count = "A")'
            )
        if self.count is not None and self.count == self.times:
            raise ValueError(
                f"count and times both name variable {self.count}; a count is a scalar "
                "and times are an array"
            )
        return self


class Levers(_Model):
    """The two levers of the chamber, as the chamber names them.

    Attributes
    ----------
    left, right
        Where each lever's presses live; the roster's ``active_lever`` makes one active.
    """

    left: Source
    right: Source


class Events(_Model):
    """An event-coded ``TIME.CODE`` array.

    Attributes
    ----------
    array
        Letter of the array variable.
    tick_seconds
        Length of one tick in seconds (> 0).
    codes
        Integer event code (0-999) -> snake_case event name. ``left_press``,
        ``right_press``, ``reinforcer`` and ``timeout_press`` have meaning; any other name
        is kept as an event of its own.
    """

    array: Letter
    tick_seconds: float = Field(gt=0)
    codes: dict[EventCode, EventName] = Field(min_length=1)

    @field_validator("codes", mode="before")
    @classmethod
    def _no_same_code_twice(cls, value: object) -> object:
        # Only when every key and name is otherwise valid: the per-key messages come first.
        if (
            isinstance(value, dict)
            and all(isinstance(k, str) and re.fullmatch(r"[0-9]+", k) for k in value)
            and all(isinstance(v, str) and SNAKE_CASE.fullmatch(v) for v in value.values())
        ):
            seen: dict[int, object] = {}
            for key in value:
                if isinstance(key, str) and re.fullmatch(r"[0-9]+", key):
                    if int(key) in seen:
                        raise ValueError(
                            f"keys {_show(seen[int(key)])} and {_show(key)} are the same event code"
                        )
                    seen[int(key)] = key
        return value


class PhaseRule(_Model):
    """One ``[[phases]]`` rule: MSN program names matching ``msn`` belong to ``phase``.

    Attributes
    ----------
    msn
        Compiled regular expression; it must match the whole MSN name.
    phase
        The phase of matching sessions.
    test
        The reinstatement test type (``cue``, ``drug_prime``, ``stress``, ...); set for
        reinstatement rules and only for them.
    session_minutes
        The programmed session length, or None.
    """

    msn: Annotated[re.Pattern[str], BeforeValidator(_compile_msn)]
    phase: Annotated[Phase, Field(strict=False)]
    test: str | None = Field(default=None, validate_default=True)
    session_minutes: float | None = Field(default=None, gt=0)

    @field_validator("test")
    @classmethod
    def _test_iff_reinstatement(cls, value: str | None, info: ValidationInfo) -> str | None:
        phase = info.data.get("phase")
        if value is not None and not TEST_NAME.fullmatch(value):
            raise ValueError(
                'expected a test type of letters, digits, _ and - (e.g. "cue", '
                f'"drug_prime"), got {_show(value)}'
            )
        if phase is None:
            return value
        if phase == Phase.REINSTATEMENT and value is None:
            raise ValueError('required for a reinstatement rule: the test type, e.g. test = "cue"')
        if phase != Phase.REINSTATEMENT and value is not None:
            raise ValueError(f"only reinstatement rules have a test; this rule is {phase}")
        return value


class Drug(_Model):
    """The self-administered drug.

    Attributes
    ----------
    name
        Free text for the report, or None.
    dose_mg_per_kg
        Dose per infusion (> 0), or None: then intake is left empty.
    """

    name: Annotated[str, AfterValidator(_free_text)] | None = None
    dose_mg_per_kg: float | None = Field(default=None, gt=0)


class AcquisitionCriteria(_Model):
    """Acquisition criterion: the last sessions must each show self-administration.

    Attributes
    ----------
    last_sessions
        How many of the last acquisition sessions are checked (default 3).
    min_reinforcers
        Minimum reinforcers in each (default 10).
    min_active_to_inactive
        Minimum ratio of active to inactive presses in each (default 2.0).
    """

    last_sessions: int = Field(default=3, ge=1)
    min_reinforcers: int = Field(default=10, ge=0)
    min_active_to_inactive: float = Field(default=2.0, ge=0)


class ExtinctionCriteria(_Model):
    """Extinction criterion: active presses fall below a fraction of acquisition.

    Attributes
    ----------
    fraction_of_acquisition
        Active presses at most this fraction (0-1] of the mean active presses of the last
        ``acquisition_sessions`` acquisition sessions (default 0.25).
    acquisition_sessions
        Number of final acquisition sessions forming that mean (default 3).
    consecutive
        On this many consecutive extinction sessions (default 2).
    min_sessions
        Not before this many extinction sessions (default 1).
    max_active
        Optionally also at most this many active presses (default None).
    """

    fraction_of_acquisition: float = Field(default=0.25, gt=0, le=1)
    acquisition_sessions: int = Field(default=3, ge=1)
    consecutive: int = Field(default=2, ge=1)
    min_sessions: int = Field(default=1, ge=1)
    max_active: float | None = Field(default=None, ge=0)


class Criteria(_Model):
    """The criteria; a criterion that is None excludes no animal.

    Attributes
    ----------
    acquisition
        From ``[criteria.acquisition]``, or None when the table is absent.
    extinction
        From ``[criteria.extinction]``, or None when the table is absent.
    """

    acquisition: AcquisitionCriteria | None = None
    extinction: ExtinctionCriteria | None = None


Factor = Literal["group", "sex", "cohort"]


class Analysis(_Model):
    """Settings of the analysis.

    Attributes
    ----------
    baseline_sessions
        Extinction sessions before a reinstatement test forming its baseline (default 2).
    time_bin_minutes
        Width of within-session time bins in minutes (default 15).
    factors
        Between-subject factors, a subset of group, sex, cohort (default group, sex).
    aborted_fraction
        A session shorter than this fraction (0-1] of its rule's ``session_minutes`` is
        flagged aborted (default 0.8).
    """

    baseline_sessions: int = Field(default=2, ge=1)
    time_bin_minutes: int = Field(default=15, ge=1)
    factors: list[Factor] = Field(default_factory=lambda: ["group", "sex"])
    aborted_fraction: float = Field(default=0.8, gt=0, le=1)

    @field_validator("factors")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        twice = sorted({f for f in value if value.count(f) > 1})
        if twice:
            raise ValueError(f"{', '.join(repr(f) for f in twice)} listed twice")
        return value


class Animal(_Model):
    """One row of the roster.

    Attributes
    ----------
    subject
        The subject ID as in the roster.
    sex
        ``"F"`` or ``"M"``.
    group
        The experimental group.
    active_lever
        ``"left"`` or ``"right"``.
    cohort
        The cohort (squad), or None.
    body_weight_kg
        Body weight in kg, or None.
    exclude
        Why the animal is left out of the statistics, or None.
    """

    subject: str
    sex: Literal["F", "M"]
    group: str
    active_lever: Literal["left", "right"]
    cohort: str | None = None
    body_weight_kg: float | None = None
    exclude: str | None = None


class _ConfigFile(_Model):
    """What ``experiment.toml`` may hold, exactly."""

    experiment: Annotated[str, AfterValidator(_experiment_name)]
    roster: Annotated[str, AfterValidator(_relative_file)]
    timezone: Annotated[str, AfterValidator(_timezone)] | None = None
    drug: Drug = Field(default_factory=Drug)
    levers: Levers | None = None
    reinforcers: Source | None = None
    timeout_presses: Source | None = None
    events: Events | None = None
    phases: list[PhaseRule] = Field(min_length=1)
    criteria: Criteria = Field(default_factory=Criteria)
    analysis: Analysis = Field(default_factory=Analysis)


class Experiment(_Model):
    """A loaded, validated experiment: config, roster and corrections.

    Attributes
    ----------
    path
        The config file (absolute).
    experiment
        The experiment name, ``[A-Za-z0-9._-]+``.
    timezone
        IANA name of the chambers' clock.
    timezone_is_default
        True when the config gives no timezone and the machine's zone is used.
    drug
        The drug; ``Drug(None, None)`` when the config has no ``[drug]``.
    levers
        Lever sources, or None (then ``events`` gives the presses).
    reinforcers, timeout_presses
        Sources of reinforcers and of time-out presses, or None.
    events
        The event-coded array, or None.
    phases
        MSN rules in config order; see :meth:`match_phase`.
    criteria
        Acquisition and extinction criteria (each None when absent).
    analysis
        Analysis settings.
    roster
        Subject -> :class:`Animal`, in roster order.
    corrections
        Session id -> corrected subject (as spelt in the roster).
    fingerprint
        sha256 hex of the config, roster and corrections bytes.
    lab_dir, raw_dir, processed_dir, reports_dir
        The lab folder and its ``data/raw``, ``data/processed``, ``reports/<experiment>``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    experiment: str
    timezone: str
    timezone_is_default: bool = False
    drug: Drug = Field(default_factory=Drug)
    levers: Levers | None = None
    reinforcers: Source | None = None
    timeout_presses: Source | None = None
    events: Events | None = None
    phases: list[PhaseRule]
    criteria: Criteria = Field(default_factory=Criteria)
    analysis: Analysis = Field(default_factory=Analysis)
    roster: dict[str, Animal]
    corrections: dict[str, str] = Field(default_factory=dict)
    fingerprint: str

    _by_key: dict[str, Animal] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        """Index the roster by case-folded subject for :meth:`find_subject`."""
        self._by_key = {s.casefold(): a for s, a in self.roster.items()}

    @property
    def lab_dir(self) -> Path:
        """The lab folder: the config's grandparent when it sits in ``configs/``."""
        parent = self.path.parent
        return parent.parent if parent.name == "configs" else parent

    @property
    def raw_dir(self) -> Path:
        """``lab_dir/data/raw``: the MED-PC files as the chambers wrote them."""
        return self.lab_dir / "data" / "raw"

    @property
    def processed_dir(self) -> Path:
        """``lab_dir/data/processed``: the catalog and the parquet datasets."""
        return self.lab_dir / "data" / "processed"

    @property
    def reports_dir(self) -> Path:
        """``lab_dir/reports/<experiment>``: figures, tables and the HTML report."""
        return self.lab_dir / "reports" / self.experiment

    def find_subject(self, raw: str) -> Animal | None:
        """Return the roster animal a raw ``Subject:`` field names.

        Parameters
        ----------
        raw
            The subject as typed at the chamber.

        Returns
        -------
        Animal or None
            The animal whose subject equals ``raw`` trimmed, ignoring case; None if none.
        """
        return self._by_key.get(raw.strip().casefold())

    def match_phase(self, msn: str) -> PhaseRule | None:
        """Return the first phase rule whose pattern matches the whole MSN name.

        Parameters
        ----------
        msn
            The ``MSN:`` program name of a session.

        Returns
        -------
        PhaseRule or None
            The first full match in config order; None if no rule matches.
        """
        name = msn.strip()
        for rule in self.phases:
            if rule.msn.fullmatch(name):
                return rule
        return None


# ---------------------------------------------------------------------------------------
# pydantic errors -> one line each
# ---------------------------------------------------------------------------------------


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """Find the model class holding the keys at ``loc`` (None past a plain value)."""
    model: type[BaseModel] | None = _ConfigFile
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _model_in(model.model_fields[part].annotation)
    return model


def _key_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out += ("." if out else "") + key
    return out


def _table_name(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc if isinstance(p, str))


_TYPE_WORDS = {
    "string_type": "a string in double quotes",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_BOUND_WORDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _error_line(error: Any) -> tuple[str, str]:
    """Return (key path, message) for one pydantic error of the config file."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    kind: str = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if loc and loc[-1] == "[key]":
        loc = loc[:-2]
    where = _key_path(loc)
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = parent.model_fields if parent is not None else {}
        return where, f"unknown key ({_did_you_mean(str(loc[-1]), known)})"
    if kind == "missing":
        parent = _model_at(loc[:-1])
        field = parent.model_fields.get(str(loc[-1])) if parent is not None else None
        if field is not None and _model_in(field.annotation) is not None:
            if get_origin(field.annotation) is list:
                return where, f"missing: at least one [[{_table_name(loc)}]] table is required"
            return where, f"missing: the table [{_table_name(loc)}] is required"
        return where, "missing: this key is required"
    if kind in _TYPE_WORDS:
        return where, f"expected {_TYPE_WORDS[kind]}, got {_show(value)} ({_kind(value)})"
    if kind in _BOUND_WORDS:
        key, words = _BOUND_WORDS[kind]
        bound = ctx.get(key)
        shown = f"{bound:g}" if isinstance(bound, int | float) else str(bound)
        return where, f"expected a number {words} {shown}, got {_show(value)}"
    if kind in ("literal_error", "enum"):
        return where, f"expected {ctx.get('expected')}, got {_show(value)}"
    if kind == "too_short":
        if where == "phases":
            return where, "at least one [[phases]] table is required"
        return where, f"expected at least {ctx.get('min_length')} item(s), got none"
    if kind == "finite_number":
        return where, f"expected a finite number, got {_show(value)}"
    if kind == "value_error" and "error" in ctx:
        return where, str(ctx["error"])
    message: str = error.get("msg", kind)
    return where, f"{message[:1].lower()}{message[1:]}, got {_show(value)}"


def _pydantic_problems(exc: ValidationError, label: str) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        where, message = _error_line(error)
        lines.append(f"{label}: {where}: {message}" if where else f"{label}: {message}")
    return list(dict.fromkeys(lines))


# ---------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------


def _read_config_bytes(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{label}: no such config file.",
            path=label,
            hint="Run `labpipe init DIR` to write an example lab folder, or pass "
            "--config PATH to the experiment.toml of yours.",
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{label}: is a folder; expected the experiment.toml file.", path=label
        ) from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot be read ({exc.strerror or exc}).", path=label) from None


def _parse_toml(data: bytes, label: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{label}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
            "save the file as UTF-8.",
            path=label,
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        what = message[: match.start()] if match else re.sub(r"\s*\(at .*\)$", "", message)
        what = what[:1].lower() + what[1:]
        if match:
            line_no, col = int(match.group(1)), int(match.group(2))
            lines = text.splitlines()
            shown = lines[line_no - 1].strip() if 0 < line_no <= len(lines) else ""
            where = f"{label}, line {line_no}, column {col}"
            detail = f" in `{shown[:80]}`" if shown else ""
        else:
            where, detail = f"{label}, at the end of the file", ""
        hint = None
        if what.startswith("invalid value"):
            hint = 'Text values need double quotes, e.g. phase = "acquisition".'
        raise ConfigError(
            f"{where}: TOML syntax error: {what}{detail}.", path=label, hint=hint
        ) from None


def _read_table(
    data: bytes, label: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """Read a small CSV with a header; return (line number, row) pairs and problems.

    Cells are stripped; blank rows are skipped; missing trailing cells are empty.
    """
    text, _codec = _decode_text(data)
    text = text.lstrip("\ufeff")
    spec = ",".join(required) + "".join(f"[,{c}]" for c in optional)
    first = text.split("\n", 1)[0]
    delimiter = ";" if ";" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records: list[tuple[int, list[str]]] = []
    problems: list[str] = []
    previous = 0
    try:
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if any(cell.strip() for cell in row):
                records.append((start, [cell.strip() for cell in row]))
    except csv.Error as exc:
        problems.append(f"{label}, line {reader.line_num}: not valid CSV ({exc})")
        return [], problems
    if not records:
        problems.append(f"{label}: the file is empty; expected the header line {spec}")
        return [], problems
    header_line, header = records[0]
    columns = [c.lower() for c in header]
    known = required + optional
    for col in columns:
        if col and col not in known:
            problems.append(
                f"{label}, line {header_line}: unknown column {_show(col)} "
                f"({_did_you_mean(col, known)}); the header must be {spec}"
            )
    for col in sorted({c for c in columns if c and columns.count(c) > 1}):
        problems.append(f"{label}, line {header_line}: column {_show(col)} appears twice")
    for col in required:
        if col not in columns:
            problems.append(
                f"{label}, line {header_line}: missing column {_show(col)}; "
                f"the header must be {spec}"
            )
    if problems:
        return [], problems
    rows: list[tuple[int, dict[str, str]]] = []
    for line, cells in records[1:]:
        if len(cells) > len(columns) and any(cells[len(columns) :]):
            problems.append(
                f"{label}, line {line}: {len(cells)} fields, but the header has "
                f"{len(columns)} columns"
            )
            continue
        cells = cells + [""] * (len(columns) - len(cells))
        row: dict[str, str] = {}
        for col, cell in zip(columns, cells, strict=False):
            if col:
                row[col] = cell
            elif cell:
                problems.append(f"{label}, line {line}: value {_show(cell)} has no column name")
        rows.append((line, row))
    return rows, problems


def _read_roster(data: bytes, label: str) -> tuple[dict[str, Animal], list[str]]:
    rows, problems = _read_table(data, label, _ROSTER_REQUIRED, _ROSTER_OPTIONAL)
    if not rows and not problems:
        problems.append(f"{label}: no animals; expected one row per animal under the header")
    roster: dict[str, Animal] = {}
    exact: dict[str, int] = {}
    folded: dict[str, tuple[str, int]] = {}
    for line, row in rows:
        where = f"{label}, line {line}"
        bad: list[str] = []
        subject = row["subject"]
        problem = _name_problem(subject)
        if problem:
            bad.append(f"{where}: subject {_show(subject)} {problem}")
        elif subject in exact:
            bad.append(
                f"{where}: subject {_show(subject)} appears twice (also line {exact[subject]})"
            )
        elif subject.casefold() in folded:
            other, other_line = folded[subject.casefold()]
            bad.append(
                f"{where}: subject {_show(subject)} differs from {_show(other)} (line "
                f"{other_line}) only by case; they would share file names on Windows and macOS"
            )
        sex = _SEX.get(row["sex"].lower())
        if sex is None:
            bad.append(f"{where}: sex must be F or M (or female/male), got {_show(row['sex'])}")
        group = row["group"]
        problem = _name_problem(group)
        if problem:
            bad.append(f"{where}: group {_show(group)} {problem}")
        lever = row["active_lever"].lower()
        if lever not in ("left", "right"):
            bad.append(
                f"{where}: active_lever must be left or right, got {_show(row['active_lever'])}"
            )
        cohort = row.get("cohort") or None
        problem = _name_problem(cohort) if cohort is not None else None
        if problem:
            bad.append(f"{where}: cohort {_show(cohort)} {problem}")
        weight_text = row.get("body_weight_kg", "")
        weight: float | None = None
        if weight_text:
            weight = float(weight_text) if _NUMBER.fullmatch(weight_text) else None
            if weight is None or not math.isfinite(weight) or weight <= 0:
                bad.append(
                    f"{where}: body_weight_kg must be a positive number or empty, "
                    f"got {_show(weight_text)}"
                )
        exclude = row.get("exclude", "")
        if any(_is_control(c) for c in exclude):
            bad.append(f"{where}: exclude {_show(exclude)} contains a control character")
        if not _name_problem(subject) and subject not in exact:
            exact[subject] = line
            folded.setdefault(subject.casefold(), (subject, line))
        if bad:
            problems.extend(bad)
            continue
        roster[subject] = Animal(
            subject=subject,
            sex=sex,  # type: ignore[arg-type]
            group=group,
            active_lever=lever,  # type: ignore[arg-type]
            cohort=cohort,
            body_weight_kg=weight,
            exclude=exclude or None,
        )
    return roster, problems


def _read_corrections(
    data: bytes, label: str, find: Callable[[str], str | None] | None
) -> tuple[dict[str, str], list[str]]:
    if not data.strip():
        return {}, []
    rows, problems = _read_table(data, label, _CORRECTIONS_REQUIRED, _CORRECTIONS_OPTIONAL)
    corrections: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line, row in rows:
        where = f"{label}, line {line}"
        session_id = row["session_id"].lower()
        subject = row["subject"]
        bad: list[str] = []
        if not _SESSION_ID.fullmatch(session_id):
            bad.append(
                f"{where}: session_id must be the 16-character hex id labpipe reports "
                f"(e.g. 3f2a9c01d4e5b678), got {_show(row['session_id'])}"
            )
        elif session_id in seen:
            bad.append(
                f"{where}: session_id {_show(session_id)} appears twice (also line "
                f"{seen[session_id]})"
            )
        else:
            seen[session_id] = line
        problem = _name_problem(subject)
        canonical: str | None = subject
        if problem:
            bad.append(f"{where}: subject {_show(subject)} {problem}")
        elif find is not None:
            canonical = find(subject)
            if canonical is None:
                bad.append(f"{where}: subject {_show(subject)} is not in the roster")
        reason = row.get("reason", "")
        if any(_is_control(c) for c in reason):
            bad.append(f"{where}: reason {_show(reason)} contains a control character")
        if bad:
            problems.extend(bad)
        elif canonical is not None:
            corrections[session_id] = canonical
    return corrections, problems


def _fingerprint(parts: Iterable[bytes | None]) -> str:
    digest = hashlib.sha256(b"labpipe-config-v1\0")
    for part in parts:
        if part is None:
            digest.update(b"-\0")
        else:
            digest.update(f"{len(part)}\0".encode("ascii"))
            digest.update(part)
    return digest.hexdigest()


def _read_optional(path: Path, label: str, problems: list[str], what: str) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        problems.append(f"{label}: is a folder; expected the {what} file")
    except OSError as exc:
        problems.append(f"{label}: cannot be read ({exc.strerror or exc})")
    return None


# ---------------------------------------------------------------------------------------
# The public functions
# ---------------------------------------------------------------------------------------


def load_config(path: Path) -> Experiment:
    """Load and validate an experiment config, its roster and its corrections.

    Parameters
    ----------
    path
        The ``experiment.toml`` file. The roster path in it is relative to its folder;
        ``corrections.csv`` (``session_id,subject,reason``) beside it is optional.

    Returns
    -------
    Experiment
        The validated experiment.

    Raises
    ------
    labpipe.errors.ConfigError
        Listing every problem found, one per line, each naming the file and the key path
        or line. A missing config file, unreadable bytes or a TOML syntax error stop
        early (nothing else can be checked without the config).
    """
    path = Path(path)
    label = str(path)
    config_bytes = _read_config_bytes(path, label)
    raw = _parse_toml(config_bytes, label)
    problems: list[str] = []
    if "levers" not in raw and "events" not in raw:
        problems.append(
            f"{label}: neither [levers] nor [events] is given; labpipe needs one of them "
            "to find the lever presses"
        )
    parsed: _ConfigFile | None = None
    bad_roster_key = False
    try:
        parsed = _ConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, label))
        bad_roster_key = any(e["loc"][:1] == ("roster",) for e in exc.errors())

    roster: dict[str, Animal] = {}
    roster_bytes: bytes | None = None
    roster_ok = False
    roster_rel = raw.get("roster")
    if isinstance(roster_rel, str) and not bad_roster_key:
        roster_path = path.parent / roster_rel
        roster_label = str(roster_path)
        roster_bytes = _read_optional(
            roster_path, f"{label}: roster: {roster_label}", problems, "roster CSV"
        )
        if roster_bytes is None and not roster_path.exists():
            problems.append(
                f"{label}: roster: the file {roster_label} does not exist (the path is "
                "relative to the config's folder)"
            )
        elif roster_bytes is not None:
            roster, roster_problems = _read_roster(roster_bytes, roster_label)
            problems.extend(roster_problems)
            roster_ok = not roster_problems

    corrections_path = path.parent / "corrections.csv"
    corrections_bytes = _read_optional(
        corrections_path, str(corrections_path), problems, "corrections CSV"
    )
    corrections: dict[str, str] = {}
    if corrections_bytes is not None:
        by_key = {s.casefold(): s for s in roster}
        find = (lambda s: by_key.get(s.casefold())) if roster_ok else None
        corrections, corr_problems = _read_corrections(
            corrections_bytes, str(corrections_path), find
        )
        problems.extend(corr_problems)

    if parsed is not None and roster_ok and "cohort" in parsed.analysis.factors:
        missing = [s for s, a in roster.items() if a.cohort is None]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            problems.append(
                f"{label}: analysis.factors: 'cohort' is a factor, but the roster gives no "
                f"cohort for {shown}"
            )

    if problems or parsed is None:
        files = [label, str(path.parent / str(roster_rel)), str(corrections_path)]
        first = next((f for f in files if any(p.startswith(f) for p in problems)), label)
        raise ConfigError("\n".join(problems), path=first)

    timezone = parsed.timezone
    try:
        return Experiment(
            path=Path(os.path.abspath(path)),
            experiment=parsed.experiment,
            timezone=timezone if timezone is not None else machine_timezone(),
            timezone_is_default=timezone is None,
            drug=parsed.drug,
            levers=parsed.levers,
            reinforcers=parsed.reinforcers,
            timeout_presses=parsed.timeout_presses,
            events=parsed.events,
            phases=parsed.phases,
            criteria=parsed.criteria,
            analysis=parsed.analysis,
            roster=roster,
            corrections=corrections,
            fingerprint=_fingerprint([config_bytes, roster_bytes, corrections_bytes]),
        )
    except ValidationError as exc:  # pragma: no cover - the parts were validated above
        raise ConfigError("\n".join(_pydantic_problems(exc, label)), path=label) from None


def _template(name: str) -> str:
    return (resources.files("labpipe") / "templates" / name).read_text(encoding="utf-8")


def write_skeleton(lab_dir: Path) -> list[Path]:
    """Write a lab-folder skeleton with a commented example config (``labpipe init``).

    Writes ``configs/experiment.toml`` (every key explained; the timezone set to this
    machine's zone), ``configs/roster.csv`` (a few example animals; an existing roster is
    kept) and creates ``data/raw/``, ``data/processed/`` and ``reports/``.

    Parameters
    ----------
    lab_dir
        The lab folder; created when missing.

    Returns
    -------
    list of Path
        The files written, then the folders created.

    Raises
    ------
    labpipe.errors.ConfigError
        When ``configs/experiment.toml`` already exists (it is never overwritten), or a
        path that should be a folder is a file.
    labpipe.errors.EnvironmentFailure
        When the disk refuses the writes (permission denied, disk full).
    """
    lab_dir = Path(lab_dir)
    configs = lab_dir / "configs"
    config = configs / "experiment.toml"
    roster = configs / "roster.csv"
    if config.exists() or config.is_symlink():
        raise ConfigError(
            f"{config} already exists; `labpipe init` never overwrites an experiment.",
            path=str(config),
            hint="Choose another folder, or move the existing experiment.toml away first.",
        )
    folders = [configs, lab_dir / "data" / "raw", lab_dir / "data" / "processed"]
    folders.append(lab_dir / "reports")
    created: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(
                f"{folder} cannot be created: a file of that name (or of a parent's name) "
                "is in the way.",
                path=str(folder),
            ) from None
        except OSError as exc:
            raise fsio.environment_failure(exc, folder) from exc
        created.append(folder)
    text = _template("experiment.toml").replace(_TIMEZONE_TOKEN, machine_timezone())
    written = [config]
    fsio.write_text(config, text)
    if not roster.exists():
        fsio.write_text(roster, _template("roster.csv"))
        written.append(roster)
    return written + created
