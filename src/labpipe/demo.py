"""A realistic synthetic experiment, written as real MED-PC IV data files, and its truth.

``labpipe demo`` and the test suite need an experiment whose every number is known.
:func:`write_demo` simulates one: 24 rats (12 F, 12 M; vehicle vs N-acetylcysteine; two
squads of 12 run in the same 12 boxes, morning and afternoon) through cocaine
self-administration (0.5 mg/kg/infusion, FR1, 20-s time-out with cue, 2-h sessions),
extinction to criterion and three counterbalanced reinstatement tests (cue, cocaine
prime 10 mg/kg i.p., yohimbine 2 mg/kg i.p.), each after re-extinction. It writes the
config, the roster and the raw files exactly as the chambers would, with the problems
real lab data have (a failed box, an aborted session, a copied file, a mistyped subject,
a file cut off by a power loss, a cp1252 byte), and returns a :class:`DemoTruth`: what
was simulated and what labpipe must make of every file and session.

:func:`write_scaled_lab` writes many cohorts of the same kind, fast, for benchmarks.

Lab and format facts used throughout:

* MED-PC IV names a one-box data file ``!YYYY-MM-DD_HHhMMm.Subject <subject>`` (start of
  the session, subject as typed); a "save all boxes" file holds one block per box.
* Press and infusion times are stored in seconds with 2 decimals (10-ms clock); arrays are
  padded with zeros up to the program's DIM; scalars A-D hold the counts.
* The REIN programs log events in one ``TIME.CODE`` array ``E`` (tick 0.01 s, value =
  tick + code/1000). A press during time-out is logged twice, as its lever's code and as
  code 5 at the same tick: it is one press.
* Under FR1 every active press outside the 20-s time-out is reinforced, so active presses
  = reinforced presses + time-out presses; the infusion starts at the reinforced press.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from labpipe.errors import ConfigError
from labpipe.model import RawSession, Reason

__all__ = [
    "AnimalTruth",
    "DefectTruth",
    "DemoTruth",
    "SessionTruth",
    "TestTruth",
    "write_demo",
    "write_scaled_lab",
]

#: Experiment name (used in output paths) and the chambers' clock zone.
EXPERIMENT = "coc-rein-2026"
TIMEZONE = "America/New_York"
#: Free text in every file's ``Experiment:`` field; the en dash is byte 0x96 in cp1252,
#: the code page the MED-PC PC writes in.
EXPERIMENT_FIELD = "Coc 0.5 mg/kg \u2013 NAC"
#: Programmed session length (2-h sessions) and the post-infusion time-out.
SESSION_S = 7200
TIMEOUT_S = 20.0
DOSE_MG_PER_KG = 0.5

MSN_SA = "SA_FR1_2h"
MSN_EXT = "EXT_2h"
MSN_REIN: dict[str, str] = {
    "cue": "REIN_CUE_2h",
    "drug_prime": "REIN_PRIME_2h",
    "stress": "REIN_YOH_2h",
}
#: Event codes of the REIN programs' ``E`` array.
EVENT_CODES: dict[int, str] = {
    1: "left_press",
    2: "right_press",
    3: "reinforcer",
    4: "cue_on",
    5: "timeout_press",
}
_CODE = {name: code for code, name in EVENT_CODES.items()}
#: DIM of the press/infusion arrays of the SA and EXT programs and of the REIN ``E``
#: array in the demo ("a modest DIM"); the scaled lab pads only to the next full row.
DEMO_DIM = 200
DEMO_EVENT_DIM = 500
#: The MED-PC PC's data folder, as written in every ``File:`` line.
MEDPC_DIR = "C:\\MED-PC IV\\DATA\\"

#: Latin square of test orders (each test once in each position).
_TEST_ORDERS: tuple[tuple[str, str, str], ...] = (
    ("cue", "drug_prime", "stress"),
    ("drug_prime", "stress", "cue"),
    ("stress", "cue", "drug_prime"),
)
#: Reinstated active presses above baseline, vehicle rats (typical cocaine values);
#: N-acetylcysteine before the test scales them by NAC_EFFECT.
_REIN_ACTIVE = {"cue": 26.0, "drug_prime": 30.0, "stress": 22.0}
NAC_EFFECT = 0.4
#: Mean of the (truncated exponential) time of presses within a session, in seconds:
#: extinction and reinstatement responding is concentrated early in the session.
_PRESS_MEAN_S = {"ext1": 600.0, "ext": 900.0, "cue": 1800.0, "drug_prime": 1200.0, "stress": 1800.0}


# ---------------------------------------------------------------------------------------
# Truth records
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnimalTruth:
    """What happened to one rat, and the criteria outcomes labpipe must derive.

    Attributes
    ----------
    subject, sex, group, cohort, active_lever
        As in the roster.
    box
        The chamber the rat ran in every day.
    kind
        ``"acquirer"``, ``"non_acquirer"`` or ``"catheter_failure"``.
    acquisition_met
        Whether the last 3 stored acquisition sessions each had >= 10 reinforcers and
        active >= 2 x inactive.
    acquisition_session
        ``day_in_phase`` of the session completing the first run of 3 such sessions.
    extinction_sessions_to_criterion
        ``day_in_phase`` of the extinction session completing the first 2 consecutive
        sessions with active <= 25% of the mean active of the last 3 acquisition sessions
        (``None``: never reached, or no extinction).
    excluded, exclusion_reason, exclusion_source
        Excluded from drug-seeking analyses, why (plain words; the roster's text when the
        roster excludes it) and by what (``"roster"`` or ``"acquisition_criterion"``).
    """

    subject: str
    sex: str
    group: str
    cohort: str
    active_lever: str
    box: int
    kind: str
    acquisition_met: bool
    acquisition_session: int | None
    extinction_sessions_to_criterion: int | None
    excluded: bool
    exclusion_reason: str | None
    exclusion_source: str | None


@dataclass(frozen=True, slots=True)
class SessionTruth:
    """One session labpipe must store (the set-aside ones are in :class:`DefectTruth`).

    Attributes
    ----------
    subject
        The roster subject (as typed in the file: no stored session needs a correction).
    file, block
        Raw file (path relative to ``data/raw``, ``/`` separators) and 0-based block.
    box, msn, phase, test
        ``test`` is ``None`` outside reinstatement.
    day_in_phase
        1, 2, ... per subject and phase over the stored sessions, in start order.
    start, end
        Aware datetimes in the experiment's zone; ``duration_min`` their difference.
    left, right, active, inactive, reinforcers, timeout_active
        Counts (scalars A, B, C, D; active/inactive through the roster's active lever).
    n_events
        Events labpipe derives from the session's time arrays or event array, by event
        name (``active_press`` includes time-out presses; ``timeout_press`` and
        ``cue_on`` exist only in event-coded sessions).
    flags
        Quality flags: ``"aborted"`` (ended early), ``"equipment_failure"`` (no press on
        either lever and no reinforcer in a rat that otherwise responds).
    """

    subject: str
    file: str
    block: int
    box: int
    msn: str
    phase: str
    test: str | None
    day_in_phase: int
    start: datetime
    end: datetime
    duration_min: float
    left: int
    right: int
    active: int
    inactive: int
    reinforcers: int
    timeout_active: int
    n_events: dict[str, int]
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class TestTruth:
    """One reinstatement test and its extinction baseline.

    Attributes
    ----------
    subject, test
        ``test`` is ``"cue"``, ``"drug_prime"`` or ``"stress"``.
    start
        Start of the test session.
    order
        1, 2 or 3: the test's position in the rat's counterbalanced sequence.
    baseline_active, baseline_inactive
        Mean presses of the 2 stored extinction sessions just before the test.
    test_active, test_inactive
        Presses in the test session.
    """

    subject: str
    test: str
    start: datetime
    order: int
    baseline_active: float
    baseline_inactive: float
    test_active: int
    test_inactive: int


@dataclass(frozen=True, slots=True)
class DefectTruth:
    """A designed defect: a raw file, or one block of it, labpipe must set aside.

    Attributes
    ----------
    file
        Raw file (relative to ``data/raw``).
    kind
        ``"duplicate_copy"``, ``"unknown_subject"`` or ``"truncated"``.
    reason
        The :class:`~labpipe.model.Reason` code labpipe must record.
    block
        0-based block at fault (``None``: the whole file).
    subject
        The rat the data belong to (for a mistyped subject: the intended one).
    subject_raw
        The subject as typed in the file.
    duplicate_of
        For a copy: the original file.
    lost_session
        Whether the session is missing from the stored sessions because of this defect
        (``False`` for a copy: its session is stored from the original).
    detail
        Plain words.
    """

    file: str
    kind: str
    reason: Reason
    block: int | None
    subject: str | None
    subject_raw: str | None
    duplicate_of: str | None
    lost_session: bool
    detail: str


@dataclass(frozen=True, slots=True)
class DemoTruth:
    """Everything the demo generator simulated, for tests to compare labpipe against.

    Attributes
    ----------
    experiment, seed
        The experiment name and the generator's seed.
    files
        Every raw file written (relative to ``data/raw``), sorted.
    animals, sessions, tests, defects
        See the record types. ``sessions`` is sorted by subject and start.
    """

    experiment: str
    seed: int
    files: tuple[str, ...]
    animals: tuple[AnimalTruth, ...]
    sessions: tuple[SessionTruth, ...]
    tests: tuple[TestTruth, ...]
    defects: tuple[DefectTruth, ...]

    def to_json(self, *, indent: int | None = 2) -> str:
        """Serialise the truth as JSON.

        Parameters
        ----------
        indent
            Passed to :func:`json.dumps`.

        Returns
        -------
        str
            Datetimes as ISO 8601 with offset, flag sets as sorted lists, reasons as codes.
        """
        return json.dumps(_jsonable(self), indent=indent, ensure_ascii=False, sort_keys=False)

    def animal(self, subject: str) -> AnimalTruth:
        """Return the truth of one rat.

        Parameters
        ----------
        subject
            Roster subject.

        Returns
        -------
        AnimalTruth
            The rat's record (``KeyError`` if unknown).
        """
        for a in self.animals:
            if a.subject == subject:
                return a
        raise KeyError(subject)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Reason):
        return obj.value
    if isinstance(obj, frozenset | set):
        return sorted(obj)
    if isinstance(obj, tuple | list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "__dataclass_fields__"):
        return {name: _jsonable(getattr(obj, name)) for name in obj.__dataclass_fields__}
    return obj


# ---------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rat:
    subject: str
    sex: str
    group: str
    cohort: str
    box: int
    active_lever: str
    body_weight_kg: float
    kind: str  # acquirer / non_acquirer / catheter_failure
    exclude: str | None = None


@dataclass(slots=True)
class _Sim:
    """One simulated session before it is written (times in seconds, 2 decimals)."""

    rat: _Rat
    subject_raw: str
    msn: str
    phase: str
    test: str | None
    start: datetime
    duration_s: int
    left: np.ndarray
    right: np.ndarray
    reinf: np.ndarray
    timeout_count: int
    event_coded: bool
    cue: np.ndarray = field(default_factory=lambda: np.empty(0))
    timeout_times: np.ndarray = field(default_factory=lambda: np.empty(0))
    flags: frozenset[str] = frozenset()
    file: str = ""
    block: int = 0
    stored: bool = True

    @property
    def active(self) -> np.ndarray:
        return self.left if self.rat.active_lever == "left" else self.right

    @property
    def inactive(self) -> np.ndarray:
        return self.right if self.rat.active_lever == "left" else self.left

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration_s)


def _spread(
    rng: np.random.Generator,
    n: int,
    lo: float,
    hi: float,
    *,
    gap: float = 0.3,
    mean: float | None = None,
) -> np.ndarray:
    """Return ``n`` sorted times in ``[lo, hi)``, at least ``gap`` apart, 2 decimals.

    Draw ``n`` points from a uniform (or, with ``mean``, a truncated exponential) density
    on a shortened interval, sort them and push the i-th one ``i * gap`` later: the
    spacing constraint holds exactly and the shape of the density is kept.
    """
    if n <= 0:
        return np.empty(0)
    span = hi - lo - gap * n
    if span <= 0:
        raise ValueError(f"{n} presses do not fit in {hi - lo:.0f} s")
    if mean is None:
        u = rng.random(n) * span
    else:
        u = -mean * np.log1p(-rng.random(n) * (1.0 - math.exp(-span / mean)))
    u.sort()
    return np.round(lo + u + gap * np.arange(n), 2)


def _sa_times(
    rng: np.random.Generator, n_inf: int, n_to: int, n_inact: int, duration: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Infusion, time-out press and inactive press times of one FR1 session.

    Cocaine self-administration: a fast "loading" of 2-4 infusions at the start, then
    regularly spaced infusions (the rat titrates its blood level). Infusions are > 20.5 s
    apart, so each reinforced press falls outside the previous time-out. Time-out presses
    fall strictly inside (infusion, infusion + 20 s).
    """
    if n_inf == 0:
        inf = np.empty(0)
    else:
        k = min(n_inf, int(rng.integers(2, 5)))
        first = rng.uniform(10.0, 180.0)
        load = first + np.concatenate(([0.0], np.cumsum(rng.uniform(25.0, 75.0, k - 1))))
        rest = n_inf - k
        if rest > 0:
            lo = load[-1] + 30.0
            hi = duration - 30.0
            spacing = (hi - lo) / rest
            if spacing < 21.5:
                raise ValueError(f"{n_inf} infusions do not fit in {duration} s")
            jitter = min(0.3 * spacing, (spacing - 21.5) / 2.0)
            grid = lo + spacing * (np.arange(rest) + 0.5) + rng.uniform(-jitter, jitter, rest)
            inf = np.concatenate((load, grid))
        else:
            inf = load
        inf = np.round(inf, 2)
    if n_to:
        # Time-out presses cluster after the loading infusions (multinomial weights).
        w = np.ones(n_inf)
        w[: min(n_inf, 4)] = 3.0
        per = rng.multinomial(n_to, w / w.sum())
        parts = [
            inf[i] + 0.3 + _spread(rng, int(m), 0.0, 19.4, gap=0.3) for i, m in enumerate(per) if m
        ]
        to = np.round(np.sort(np.concatenate(parts)), 2)
    else:
        to = np.empty(0)
    inact = _spread(rng, n_inact, 1.0, duration - 1.0, mean=1800.0)
    return inf, to, inact


def _classify_cue(active: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Split cue-test active presses into cue-producing and time-out presses.

    Returns ``None`` when a press falls within 15 ms of the end of a time-out (the demo
    never writes such a boundary case; the caller draws again).
    """
    cue: list[float] = []
    to: list[float] = []
    last = -1e9
    for t in active.tolist():
        d = t - last
        if abs(d - TIMEOUT_S) < 0.015:
            return None
        if d < TIMEOUT_S:
            to.append(t)
        else:
            cue.append(t)
            last = t
    return np.array(cue), np.array(to)


def _rats() -> list[_Rat]:
    """Return the design table: 2 squads x 12 boxes, sex, group and lever counterbalanced."""
    groups = ("vehicle", "nac", "nac", "vehicle", "vehicle", "nac")
    rats = []
    for c, cohort in enumerate(("C1", "C2")):
        seen: dict[tuple[str, str], int] = {}
        for k in range(12):
            n = c * 12 + k + 1
            subject = f"R{n:02d}"
            sex = "F" if k % 2 == 0 else "M"
            group = groups[k // 2]
            g = seen.get((sex, group), 0)
            seen[(sex, group)] = g + 1
            lever = ("left", "right", "left")[g] if c == 0 else ("right", "left", "right")[g]
            kind = {"R07": "catheter_failure", "R12": "non_acquirer", "R21": "non_acquirer"}
            exclude = "catheter failure day 9" if subject == "R07" else None
            weight = (0.27 if sex == "F" else 0.37) + 0.005 * ((n * 7) % 9)
            rats.append(
                _Rat(
                    subject,
                    sex,
                    group,
                    cohort,
                    k + 1,
                    lever,
                    round(weight, 3),
                    kind.get(subject, "acquirer"),
                    exclude,
                )
            )
    return rats


def _session_times(
    rng: np.random.Generator, start_day: date, base: time, n_days: int, boxes: int
) -> list[list[datetime]]:
    """Start datetimes [day][box]: the tech starts the boxes one after another."""
    tz = ZoneInfo(TIMEZONE)
    out = []
    for d in range(n_days):
        day_start = datetime.combine(start_day + timedelta(days=d), base, tzinfo=tz)
        day_start += timedelta(minutes=int(rng.integers(-4, 9)))
        offs = np.arange(boxes) * 20 + rng.integers(0, 12, boxes)
        out.append([day_start + timedelta(seconds=int(s)) for s in offs])
    return out


@dataclass(slots=True)
class _Plan:
    """Per-rat schedule after acquisition: ("ext", None) or ("rein", test) per day."""

    days: list[tuple[str, str | None]]
    ext_active: list[int]
    order: tuple[str, str, str]


def _simulate_squad(
    rng: np.random.Generator,
    rats: Sequence[_Rat],
    *,
    start_day: date,
    base: time,
    n_acq: int,
    special: dict[str, tuple[str, int]],
) -> list[_Sim]:
    """Simulate one squad (up to 12 rats sharing the boxes) through all phases.

    ``special`` maps subject -> (event, acquisition day) for the designed quality
    problems: ``"equipment_failure"``, ``"aborted"``, ``"typo"``, ``"catheter"``.
    """
    n_days = n_acq + 40
    starts = _session_times(rng, start_day, base, n_days, 12)
    sims: list[_Sim] = []
    # Individual differences: stable intake (lognormal), time-out responding, the day from
    # which the rat takes >= 10 infusions with good discrimination.
    for order_idx, rat in enumerate(rats):
        mu = float(np.clip(rng.lognormal(math.log(20.0), 0.3), 12.0, 45.0))
        to_rate = float(rng.uniform(0.2, 0.8))
        first_ok = int(rng.integers(2, 6))
        ev, ev_day = special.get(rat.subject, ("", 0))
        if ev in ("equipment_failure", "aborted"):
            first_ok = max(first_ok, ev_day + 1)
        last_day = 9 if rat.kind == "catheter_failure" else n_acq
        acq_active: list[int] = []
        for d in range(1, last_day + 1):
            start = starts[d - 1][rat.box - 1]
            duration = SESSION_S
            flags: frozenset[str] = frozenset()
            if rat.kind == "non_acquirer":
                n_inf = int(rng.integers(1, 8))
                n_to = int(rng.poisson(0.3 * n_inf))
                n_in = int(rng.poisson(0.9 * (n_inf + n_to) + 3))
                n_in = max(n_in, (n_inf + n_to) // 2 + 1)
            elif d < first_ok:
                n_inf = int(np.clip(round(mu * (0.15 + 0.3 * d / first_ok)), 1, 9))
                n_to = int(rng.poisson(0.5 * to_rate * n_inf))
                n_in = int(rng.poisson(4.0 + 3.0 * rng.random()))
            elif rat.kind == "catheter_failure" and d >= 8:
                # Catheter failure signature under FR1: the drug no longer arrives, the rat
                # presses on, "infusions" (pump runs) and time-out presses soar.
                n_inf = round(min(mu, 25.0) * rng.uniform(1.8, 2.4))
                n_to = min(int(rng.poisson(1.5 * n_inf)), DEMO_DIM - 20 - n_inf)
                n_in = min(int(rng.poisson(4.0)), (n_inf + n_to) // 2)
            else:
                ramp = min(1.0, 0.75 + 0.1 * (d - first_ok))
                n_inf = max(10, round(mu * ramp * rng.lognormal(0.0, 0.15)))
                n_to = int(rng.poisson(to_rate * n_inf))
                n_in = int(rng.poisson(max(1.0, 6.0 * math.exp(-(d - first_ok) / 3.0))))
                n_in = min(n_in, (n_inf + n_to) // 2)
            if ev == "equipment_failure" and d == ev_day:
                # Lever/pump interface dead: the program ran its 2 h, nothing registered.
                n_inf = n_to = n_in = 0
                flags = frozenset({"equipment_failure"})
            if ev == "aborted" and d == ev_day:
                duration = int(rng.integers(30 * 60, 40 * 60))
                n_inf = int(rng.integers(2, 5))
                n_to = int(rng.poisson(0.5 * n_inf))
                n_in = int(rng.poisson(2.0))
                flags = frozenset({"aborted"})
            inf, to, inact = _sa_times(rng, n_inf, n_to, n_in, duration)
            active = np.round(np.sort(np.concatenate((inf, to))), 2)
            left, right = (active, inact) if rat.active_lever == "left" else (inact, active)
            raw = rat.subject
            stored = True
            if ev == "typo" and d == ev_day:
                raw = rat.subject.replace("0", "O")  # R10 typed as R1O
                stored = False
            sims.append(
                _Sim(
                    rat,
                    raw,
                    MSN_SA,
                    "acquisition",
                    None,
                    start,
                    duration,
                    left,
                    right,
                    inf,
                    len(to),
                    False,
                    timeout_times=to,
                    flags=flags,
                    stored=stored,
                )
            )
            if stored:
                acq_active.append(len(active))
        if rat.kind != "acquirer":
            continue
        # Extinction to criterion, then the three tests with re-extinction in between.
        mean_acq = float(np.mean(acq_active[-3:]))
        thr = 0.25 * mean_acq
        low_max = math.floor(thr)
        to_crit = int(rng.integers(4, 10))
        day1 = max(low_max + 1, round(mean_acq * rng.uniform(0.85, 1.3)))
        ext: list[int] = [day1]
        for i in range(2, to_crit - 1):
            frac = (i - 1) / max(1, to_crit - 2)
            v = day1 * (1.3 * thr / day1) ** frac * rng.lognormal(0.0, 0.2)
            ext.append(max(low_max + 1, round(v)))
        ext += [int(rng.integers(max(0, low_max - 3), low_max + 1)) for _ in range(2)]
        plan: list[tuple[str, str | None, int]] = [("ext", None, v) for v in ext]
        order = _TEST_ORDERS[order_idx % 3]
        for j, test in enumerate(order):
            plan.append(("rein", test, j + 1))
            if j < 2:
                if rng.random() < 0.4:
                    plan.append(("ext", None, max(low_max + 1, round(thr * rng.uniform(1.3, 2.5)))))
                for _ in range(2):
                    plan.append(("ext", None, int(rng.integers(max(0, low_max - 3), low_max + 1))))
        propensity = float(np.clip(rng.lognormal(0.0, 0.25), 0.6, 1.6))
        recent: list[int] = []
        for k, (what, test, value) in enumerate(plan):
            start = starts[n_acq + k][rat.box - 1]
            if what == "ext":
                n_act = value
                n_in = int(rng.poisson(1.0 + 0.25 * n_act))
                mean_t = _PRESS_MEAN_S["ext1"] if k == 0 else _PRESS_MEAN_S["ext"]
                act = _spread(rng, n_act, 1.0, SESSION_S - 1.0, mean=mean_t)
                inact = _spread(rng, n_in, 1.0, SESSION_S - 1.0, mean=1500.0)
                left, right = (act, inact) if rat.active_lever == "left" else (inact, act)
                sims.append(
                    _Sim(
                        rat, rat.subject, MSN_EXT, "extinction", None, start, SESSION_S,
                        left, right, np.empty(0), 0, False,
                    )
                )  # fmt: skip
                recent.append(n_act)
                continue
            assert test is not None
            base_active = float(np.mean(recent[-2:]))
            effect = _REIN_ACTIVE[test] * (NAC_EFFECT if rat.group == "nac" else 1.0)
            noise = float(np.clip(rng.lognormal(0.0, 0.3), 0.5, 2.0))
            n_act = max(2, round(base_active + effect * propensity * noise))
            # Yohimbine raises responding on both levers (non-specific activation).
            n_in = int(rng.poisson(13.0 if test == "stress" else 3.0))
            inact = _spread(rng, n_in, 1.0, SESSION_S - 1.0, mean=1500.0)
            while True:
                act = _spread(rng, n_act, 1.0, SESSION_S - 1.0, mean=_PRESS_MEAN_S[test])
                if test != "cue":
                    cue, to = np.empty(0), np.empty(0)
                    break
                split = _classify_cue(act)
                if split is not None:
                    cue, to = split
                    break
            left, right = (act, inact) if rat.active_lever == "left" else (inact, act)
            sims.append(
                _Sim(
                    rat, rat.subject, MSN_REIN[test], "reinstatement", test, start, SESSION_S,
                    left, right, np.empty(0), len(to), True, cue=cue, timeout_times=to,
                )
            )  # fmt: skip
    return sims


# ---------------------------------------------------------------------------------------
# Raw sessions and files
# ---------------------------------------------------------------------------------------


def _medpc_date(dt: datetime) -> str:
    return dt.strftime("%m/%d/%y")


def _medpc_time(dt: datetime) -> str:
    # MED-PC writes the hour space-padded (" 9:01:12"), as in real files.
    return f"{dt.hour:2d}:{dt.minute:02d}:{dt.second:02d}"


def _default_name(sim: _Sim) -> str:
    """MED-PC IV's default one-box file name: start date and time, subject as typed."""
    return f"!{sim.start:%Y-%m-%d_%Hh%Mm}.Subject {sim.subject_raw}"


def _padded(values: np.ndarray, dim: int | None) -> np.ndarray:
    """Zero-pad an array to its DIM (``None``: to the next full row, at least one zero)."""
    n = len(values)
    size = dim if dim is not None else (n // 5 + 1) * 5
    if n >= size:
        raise ValueError(f"{n} values exceed the array's DIM of {size}")
    out = np.zeros(size)
    out[:n] = values
    return out


def _event_array(sim: _Sim) -> np.ndarray:
    """Return the ``E`` array: ``tick + code/1000`` per event, by time, then code."""
    parts = []
    for times, name in (
        (sim.left, "left_press"),
        (sim.right, "right_press"),
        (sim.reinf, "reinforcer"),
        (sim.cue, "cue_on"),
        (sim.timeout_times, "timeout_press"),
    ):
        if len(times):
            ticks = np.round(np.asarray(times) * 100.0).astype(np.int64)
            parts.append(np.stack((ticks, np.full(len(ticks), _CODE[name]))))
    if not parts:
        return np.empty(0)
    ev = np.concatenate(parts, axis=1)
    ev = ev[:, np.lexsort((ev[1], ev[0]))]
    return ev[0].astype(np.float64) + ev[1] / 1000.0


def _header(
    start: datetime, end: datetime, subject: str, group: str, box: int, msn: str
) -> dict[str, str]:
    """Return a block's header fields, in the order MED-PC writes them."""
    return {
        "Start Date": _medpc_date(start),
        "End Date": _medpc_date(end),
        "Subject": subject,
        "Experiment": EXPERIMENT_FIELD,
        "Group": group,
        "Box": str(box),
        "Start Time": _medpc_time(start),
        "End Time": _medpc_time(end),
        "MSN": msn,
    }


def _raw_session(sim: _Sim, *, dim: int | None, event_dim: int | None) -> RawSession:
    """Return the session block as the MSN program writes it."""
    header = _header(sim.start, sim.end, sim.subject_raw, sim.rat.cohort, sim.rat.box, sim.msn)
    variables: dict[str, float | np.ndarray] = {
        "A": float(len(sim.left)),
        "B": float(len(sim.right)),
        "C": float(len(sim.reinf)),
        "D": float(sim.timeout_count),
    }
    if sim.event_coded:
        variables["E"] = _padded(_event_array(sim), event_dim)
    else:
        variables["I"] = _padded(sim.reinf, dim)
        variables["L"] = _padded(sim.left, dim)
        variables["R"] = _padded(sim.right, dim)
    return RawSession(header=header, variables=variables)


def _format(sessions: Sequence[RawSession], file_line: str) -> bytes:
    """Write sessions with labpipe's MED-PC writer (the scaled lab's fast path as fallback)."""
    try:
        from labpipe.medpc import format_medpc
    except ImportError:  # the writer is not in this build: same layout, written here
        blocks = [(_fast_header(dict(s.header)), _fast_body(dict(s.variables))) for s in sessions]
        return _fast_file(file_line, blocks)
    return format_medpc(sessions, file_line=file_line)


# ---------------------------------------------------------------------------------------
# Config and roster
# ---------------------------------------------------------------------------------------

CONFIG_TOML = """\
# The demo experiment written by `labpipe demo`: intravenous cocaine self-administration,
# extinction and reinstatement in 24 rats (12 F, 12 M), vehicle vs N-acetylcysteine (NAC,
# given before each reinstatement test), two squads (C1 morning, C2 afternoon) in 12 boxes.
experiment = "{experiment}"
roster = "roster.csv"
timezone = "{timezone}"

[drug]
name = "cocaine"
dose_mg_per_kg = {dose}              # per infusion, FR1, 20-s time-out with cue light + tone
# Tests: cocaine prime 10 mg/kg i.p.; yohimbine 2 mg/kg i.p. 30 min before the session.

# SA_FR1_2h and EXT_2h: A = left presses, B = right presses, C = infusions,
# D = active presses during time-out; arrays L, R, I = their times (s, padded with zeros).
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

# REIN_* programs: scalars A-D as above, events in one TIME.CODE array E (10-ms ticks).
# A press during time-out is logged twice (lever code and code 5): it is one press.
[events]
array = "E"
tick_seconds = 0.01
codes = {{ "1" = "left_press", "2" = "right_press", "3" = "reinforcer", "4" = "cue_on", \
"5" = "timeout_press" }}

[[phases]]
msn = "SA_FR1_.*"
phase = "acquisition"
[[phases]]
msn = "EXT_.*"
phase = "extinction"
[[phases]]
msn = "REIN_CUE.*"
phase = "reinstatement"
test = "cue"
[[phases]]
msn = "REIN_PRIME.*"
phase = "reinstatement"
test = "drug_prime"
[[phases]]
msn = "REIN_YOH.*"
phase = "reinstatement"
test = "stress"

[criteria.acquisition]
last_sessions = 3
min_reinforcers = 10
min_active_to_inactive = 2.0
[criteria.extinction]
fraction_of_acquisition = 0.25
acquisition_sessions = 3
consecutive = 2

[analysis]
baseline_sessions = 2
time_bin_minutes = 15
factors = ["group", "sex"]
"""


def _config_text(experiment: str) -> str:
    # TOML has no line continuation inside an inline table: join the codes line back.
    text = CONFIG_TOML.format(experiment=experiment, timezone=TIMEZONE, dose=DOSE_MG_PER_KG)
    return text.replace("\\\n", "")


def _roster_text(rats: Iterable[_Rat]) -> str:
    lines = ["subject,sex,group,active_lever,cohort,body_weight_kg,exclude"]
    for r in rats:
        lines.append(
            f"{r.subject},{r.sex},{r.group},{r.active_lever},{r.cohort},"
            f"{r.body_weight_kg:.3f},{r.exclude or ''}"
        )
    return "\n".join(lines) + "\n"


def _start_lab(lab_dir: Path) -> Path:
    """Create the lab-folder skeleton; refuse to overwrite an existing experiment."""
    config = lab_dir / "configs" / "experiment.toml"
    if config.exists():
        raise ConfigError(
            f"{config} already exists; the demo does not overwrite an experiment.",
            path=str(config),
            hint="Choose an empty folder.",
        )
    for sub in ("configs", "data/raw", "data/processed", "reports"):
        (lab_dir / sub).mkdir(parents=True, exist_ok=True)
    return config


# ---------------------------------------------------------------------------------------
# Truth
# ---------------------------------------------------------------------------------------


def _acquisition_outcome(
    reinf: Sequence[int], active: Sequence[int], inactive: Sequence[int]
) -> tuple[bool, int | None]:
    """(met on the last 3 sessions, day completing the first run of 3 good sessions)."""
    ok = [r >= 10 and a >= 2.0 * i for r, a, i in zip(reinf, active, inactive, strict=True)]
    first = next((d + 1 for d in range(2, len(ok)) if all(ok[d - 2 : d + 1])), None)
    return len(ok) >= 3 and all(ok[-3:]), first


def _extinction_outcome(acq_active: Sequence[int], ext_active: Sequence[int]) -> int | None:
    """Day completing the first 2 consecutive sessions <= 25% of the last-3 SA mean."""
    if len(acq_active) < 3:
        return None
    thr = 0.25 * float(np.mean(acq_active[-3:]))
    return next(
        (d + 1 for d in range(1, len(ext_active)) if max(ext_active[d - 1 : d + 1]) <= thr),
        None,
    )


def _truth(
    seed: int, rats: Sequence[_Rat], sims: Sequence[_Sim], files: Sequence[str],
    defects: Sequence[DefectTruth],
) -> DemoTruth:  # fmt: skip
    stored = sorted((s for s in sims if s.stored), key=lambda s: (s.rat.subject, s.start))
    sessions: list[SessionTruth] = []
    day: dict[tuple[str, str], int] = {}
    for s in stored:
        key = (s.rat.subject, s.phase)
        day[key] = day.get(key, 0) + 1
        n_events = {
            "active_press": len(s.active),
            "inactive_press": len(s.inactive),
            "reinforcer": len(s.reinf),
        }
        if s.event_coded:
            n_events["cue_on"] = len(s.cue)
            n_events["timeout_press"] = len(s.timeout_times)
        sessions.append(
            SessionTruth(
                subject=s.rat.subject,
                file=s.file,
                block=s.block,
                box=s.rat.box,
                msn=s.msn,
                phase=s.phase,
                test=s.test,
                day_in_phase=day[key],
                start=s.start,
                end=s.end,
                duration_min=s.duration_s / 60.0,
                left=len(s.left),
                right=len(s.right),
                active=len(s.active),
                inactive=len(s.inactive),
                reinforcers=len(s.reinf),
                timeout_active=s.timeout_count,
                n_events=n_events,
                flags=s.flags,
            )
        )
    animals: list[AnimalTruth] = []
    tests: list[TestTruth] = []
    for r in rats:
        mine = [s for s in sessions if s.subject == r.subject]
        acq = [s for s in mine if s.phase == "acquisition"]
        met, first = _acquisition_outcome(
            [s.reinforcers for s in acq], [s.active for s in acq], [s.inactive for s in acq]
        )
        ext = [s for s in mine if s.phase == "extinction"]
        to_crit = _extinction_outcome([s.active for s in acq], [s.active for s in ext])
        if r.exclude:
            excluded, reason, source = True, r.exclude, "roster"
        elif not met:
            excluded, reason, source = (
                True,
                "acquisition criterion not met",
                "acquisition_criterion",
            )
        else:
            excluded, reason, source = False, None, None
        animals.append(
            AnimalTruth(
                subject=r.subject,
                sex=r.sex,
                group=r.group,
                cohort=r.cohort,
                active_lever=r.active_lever,
                box=r.box,
                kind=r.kind,
                acquisition_met=met,
                acquisition_session=first,
                extinction_sessions_to_criterion=to_crit,
                excluded=excluded,
                exclusion_reason=reason,
                exclusion_source=source,
            )
        )
        n_test = 0
        for s in mine:
            if s.phase != "reinstatement":
                continue
            n_test += 1
            before = [e for e in ext if e.start < s.start][-2:]
            tests.append(
                TestTruth(
                    subject=r.subject,
                    test=str(s.test),
                    start=s.start,
                    order=n_test,
                    baseline_active=float(np.mean([e.active for e in before])),
                    baseline_inactive=float(np.mean([e.inactive for e in before])),
                    test_active=s.active,
                    test_inactive=s.inactive,
                )
            )
    return DemoTruth(
        experiment=EXPERIMENT,
        seed=seed,
        files=tuple(sorted(files)),
        animals=tuple(animals),
        sessions=tuple(sessions),
        tests=tuple(tests),
        defects=tuple(defects),
    )


# ---------------------------------------------------------------------------------------
# The demo lab
# ---------------------------------------------------------------------------------------

#: Designed quality problems: subject -> (event, acquisition day).
_SPECIAL: dict[str, tuple[str, int]] = {
    "R03": ("equipment_failure", 2),
    "R10": ("typo", 1),
    "R16": ("aborted", 3),
}
_DUPLICATED = ("R05", 4)  # this rat's acquisition day-4 file is copied ("Copy of ...")
_TRUNCATED = ("C2", 2)  # this squad's extinction day-2 file is cut by a power loss
_SQUADS = (
    ("C1", date(2026, 3, 2), time(9, 0), 12),
    ("C2", date(2026, 3, 2), time(12, 30), 10),
)


def _truncate(data: bytes) -> bytes:
    """Cut a file inside an array row of its last block, as a power loss does (no EOL)."""
    last = data.rfind(b"Start Date:")
    arr = data.find(b"\r\nL:", last)
    row2 = data.find(b"\r\n", data.find(b"\r\n", arr + 4) + 2)  # end of the first L row
    dot = data.find(b".", row2 + 2 + 20)  # inside the second row's 2nd/3rd value
    return data[: dot + 2]


def write_demo(lab_dir: Path, *, seed: int = 20260302) -> DemoTruth:
    """Write the demo experiment into ``lab_dir`` and return what was simulated.

    Parameters
    ----------
    lab_dir
        The lab folder; created if missing. ``configs/experiment.toml``,
        ``configs/roster.csv`` and the raw MED-PC files under ``data/raw/C1`` and
        ``data/raw/C2`` are written; ``data/processed`` and ``reports`` are created.
    seed
        Seed of the simulation; the same seed writes byte-identical files.

    Returns
    -------
    DemoTruth
        The animals, stored sessions, reinstatement tests and designed defects, with the
        outcomes labpipe must derive.

    Raises
    ------
    labpipe.errors.ConfigError
        If ``lab_dir/configs/experiment.toml`` already exists.
    """
    lab_dir = Path(lab_dir)
    config = _start_lab(lab_dir)
    rng = np.random.default_rng(seed)
    rats = _rats()
    sims: list[_Sim] = []
    for cohort, day0, base, n_acq in _SQUADS:
        squad = [r for r in rats if r.cohort == cohort]
        sims += _simulate_squad(
            rng, squad, start_day=day0, base=base, n_acq=n_acq, special=_SPECIAL
        )
    raw_dir = lab_dir / "data" / "raw"
    outputs: dict[str, bytes] = {}
    defects: list[DefectTruth] = []
    # Extinction days: one "save all boxes" file per squad and day.
    ext_days: dict[tuple[str, date], list[_Sim]] = {}
    for s in sims:
        if s.phase == "extinction":
            ext_days.setdefault((s.rat.cohort, s.start.date()), []).append(s)
        else:
            name = _default_name(s)
            s.file = f"{s.rat.cohort}/{name}"
            outputs[s.file] = _format(
                [_raw_session(s, dim=DEMO_DIM, event_dim=DEMO_EVENT_DIM)], MEDPC_DIR + name
            )
            if not s.stored:
                defects.append(
                    DefectTruth(
                        file=s.file,
                        kind="unknown_subject",
                        reason=Reason.UNKNOWN_SUBJECT,
                        block=0,
                        subject=s.rat.subject,
                        subject_raw=s.subject_raw,
                        duplicate_of=None,
                        lost_session=True,
                        detail=(
                            f"Subject typed as {s.subject_raw!r} for {s.rat.subject} "
                            f"(box {s.rat.box}, acquisition day 1); not in the roster. "
                            "A corrections.csv row takes it in."
                        ),
                    )
                )
    first_ext: dict[str, date] = {}
    for (cohort, day), blocks in sorted(ext_days.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        blocks.sort(key=lambda s: s.rat.box)
        first_ext.setdefault(cohort, day)
        name = f"{cohort}_EXT_{day:%Y-%m-%d}"
        path = f"{cohort}/{name}"
        for i, s in enumerate(blocks):
            s.file, s.block = path, i
        data = _format(
            [_raw_session(s, dim=DEMO_DIM, event_dim=DEMO_EVENT_DIM) for s in blocks],
            MEDPC_DIR + name,
        )
        if (cohort, (day - first_ext[cohort]).days + 1) == _TRUNCATED:
            data = _truncate(data)
            lost = blocks[-1]
            lost.stored = False
            defects.append(
                DefectTruth(
                    file=path,
                    kind="truncated",
                    reason=Reason.TRUNCATED_BLOCK,
                    block=len(blocks) - 1,
                    subject=lost.rat.subject,
                    subject_raw=lost.subject_raw,
                    duplicate_of=None,
                    lost_session=True,
                    detail=(
                        f"Power loss while saving: the file ends inside array L of its last "
                        f"block (box {lost.rat.box}, {lost.rat.subject}), with no final "
                        f"newline; blocks 0-{len(blocks) - 2} are complete and stored."
                    ),
                )
            )
        outputs[path] = data
    # A copy made while sorting files on the lab PC: same bytes, another name.
    subject, acq_day = _DUPLICATED
    original = [s for s in sims if s.rat.subject == subject and s.phase == "acquisition"][
        acq_day - 1
    ]
    copy = f"{original.rat.cohort}/Copy of {original.file.split('/', 1)[1]}"
    outputs[copy] = outputs[original.file]
    defects.append(
        DefectTruth(
            file=copy,
            kind="duplicate_copy",
            reason=Reason.DUPLICATE_FILE,
            block=None,
            subject=subject,
            subject_raw=subject,
            duplicate_of=original.file,
            lost_session=False,
            detail=f"Byte-identical copy of {original.file}; its session is stored once.",
        )
    )
    for rel, data in sorted(outputs.items()):
        target = raw_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (lab_dir / "configs" / "roster.csv").write_bytes(_roster_text(rats).encode("ascii"))
    config.write_bytes(_config_text(EXPERIMENT).encode("utf-8"))
    return _truth(seed, rats, sims, list(outputs), defects)


# ---------------------------------------------------------------------------------------
# The scaled lab (benchmarks)
# ---------------------------------------------------------------------------------------

_NL = b"\r\n"
#: Real MED-PC files open every session block with a bare LF line and a CR CR LF line.
_BLOCK_LEAD = b"\n\r\r\n"


def _fast_body(variables: dict[str, float | np.ndarray]) -> bytes:
    """Format a block's variables exactly as :func:`labpipe.medpc.format_medpc` does."""
    out: list[str] = []
    for letter, value in variables.items():
        if isinstance(value, np.ndarray):
            out.append(f"{letter}:")
            vals = value.tolist()
            n = len(vals)
            full = n - n % 5
            row5 = "%13.3f%13.3f%13.3f%13.3f%13.3f"
            out.extend(f"{i:6d}:" + row5 % tuple(vals[i : i + 5]) for i in range(0, full, 5))
            if full < n:
                out.append(f"{full:6d}:" + "".join(f"{v:13.3f}" for v in vals[full:]))
        else:
            out.append(f"{letter}:{value:12.3f}")
    return ("\r\n".join(out) + "\r\n").encode("cp1252")


def _fast_header(header: dict[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in header.items()).encode("cp1252")


def _fast_file(file_line: str, blocks: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Assemble a file from (header bytes, body bytes) blocks, the writer's layout."""
    parts = [f"File: {file_line}".encode("cp1252"), _NL]
    for head, body in blocks:
        parts += [_BLOCK_LEAD, head, body]
    return b"".join(parts)


#: Scaled lab: share of extinction squad-days saved as one "all boxes" file (the others as
#: one file per box), tuned so that about 3% of the files hold several boxes.
_SCALE_MULTIBOX_P = 0.5
#: Cohort variants simulated in full; further cohorts reuse their data under new subjects,
#: boxes and dates (the files still differ in their headers, hence in their sha256).
_SCALE_VARIANTS = 8
#: Rooms of 12 boxes: cohort k runs in boxes 12*(k % 4) + 1..12, four cohorts at a time,
#: a new set every 6 weeks.
_SCALE_ROOMS = 4
_SCALE_WEEKS = 6


def _scale_templates(seed: int, variant: int) -> list[list[tuple[_Sim, bytes]]]:
    """Simulate one 24-rat cohort; return its files as lists of (session, body bytes)."""
    rng = np.random.default_rng([seed, variant])
    rats = _rats()
    files: list[list[tuple[_Sim, bytes]]] = []
    for cohort, day0, base, n_acq in _SQUADS:
        squad = [r for r in rats if r.cohort == cohort]
        sims = _simulate_squad(rng, squad, start_day=day0, base=base, n_acq=n_acq, special={})
        ext_days: dict[date, list[tuple[_Sim, dict[str, float | np.ndarray]]]] = {}
        for s in sims:
            variables = dict(_raw_session(s, dim=None, event_dim=None).variables)
            if s.phase == "extinction":
                ext_days.setdefault(s.start.date(), []).append((s, variables))
            else:
                files.append([(s, _fast_body(variables))])
        for day in sorted(ext_days):
            blocks = sorted(ext_days[day], key=lambda sv: sv[0].rat.box)
            if rng.random() < _SCALE_MULTIBOX_P:
                # One program wrote every box of the file: its arrays share one DIM.
                dims: dict[str, int] = {}
                for _, variables in blocks:
                    for letter, value in variables.items():
                        if isinstance(value, np.ndarray):
                            dims[letter] = max(dims.get(letter, 0), value.size)
                files.append([(s, _fast_body(_pad_to(v, dims))) for s, v in blocks])
            else:
                files.extend([(s, _fast_body(v))] for s, v in blocks)
    return files


def _pad_to(
    variables: dict[str, float | np.ndarray], dims: dict[str, int]
) -> dict[str, float | np.ndarray]:
    """Pad each array with zeros to ``dims[letter]`` slots (MED-PC writes the whole DIM)."""
    out: dict[str, float | np.ndarray] = {}
    for letter, value in variables.items():
        if isinstance(value, np.ndarray) and value.size < dims.get(letter, 0):
            value = np.concatenate([value, np.zeros(dims[letter] - value.size)])
        out[letter] = value
    return out


def write_scaled_lab(lab_dir: Path, *, n_files: int, seed: int = 1) -> int:
    """Write a large lab of the demo's kind, for benchmarks.

    Cohorts of 24 rats (two squads of 12) go through acquisition, extinction and the three
    reinstatement tests, cohort after cohort (four rooms of 12 boxes, a new set of four
    cohorts every six weeks), until ``n_files`` raw files exist. Arrays are padded to the
    next full row only, so the median file is about 1 KB; about 3% of the files hold
    several boxes. The last cohort may be cut short to hit ``n_files`` exactly. Eight
    cohorts are simulated in full; later cohorts reuse their numbers under new subjects,
    boxes and dates. There are no designed defects.

    Parameters
    ----------
    lab_dir
        The lab folder; gets ``configs/experiment.toml``, ``configs/roster.csv``,
        ``data/raw/K0001/...``, ``data/processed`` and ``reports``.
    n_files
        How many raw files to write.
    seed
        Seed of the simulation; the same seed writes byte-identical files.

    Returns
    -------
    int
        The number of raw files written (``n_files``).

    Raises
    ------
    labpipe.errors.ConfigError
        If ``lab_dir/configs/experiment.toml`` already exists.
    """
    lab_dir = Path(lab_dir)
    config = _start_lab(lab_dir)
    raw_dir = lab_dir / "data" / "raw"
    templates: list[list[list[tuple[_Sim, bytes]]]] = []
    roster = ["subject,sex,group,active_lever,cohort,body_weight_kg,exclude"]
    written = 0
    k = 0
    while written < n_files:
        v = k % _SCALE_VARIANTS
        if v == len(templates):
            templates.append(_scale_templates(seed, v))
        tag = f"K{k + 1:04d}"
        shift = timedelta(weeks=_SCALE_WEEKS * (k // _SCALE_ROOMS))
        box0 = 12 * (k % _SCALE_ROOMS)
        folder = raw_dir / tag
        folder.mkdir(parents=True, exist_ok=True)
        for r in _rats():
            roster.append(
                f"{tag}-{r.subject},{r.sex},{r.group},{r.active_lever},{tag}-{r.cohort},"
                f"{r.body_weight_kg:.3f},{r.exclude or ''}"
            )
        for blocks in templates[v]:
            if written >= n_files:
                break
            parts: list[tuple[bytes, bytes]] = []
            for s, body in blocks:
                start = s.start + shift
                subject = f"{tag}-{s.subject_raw}"
                head = _header(
                    start,
                    start + timedelta(seconds=s.duration_s),
                    subject,
                    f"{tag}-{s.rat.cohort}",
                    s.rat.box + box0,
                    s.msn,
                )
                parts.append((_fast_header(head), body))
            first = blocks[0][0]
            start = first.start + shift
            if len(blocks) == 1:
                name = f"!{start:%Y-%m-%d_%Hh%Mm}.Subject {tag}-{first.subject_raw}"
            else:
                name = f"{tag}-{first.rat.cohort}_EXT_{start:%Y-%m-%d}"
            (folder / name).write_bytes(_fast_file(MEDPC_DIR + name, parts))
            written += 1
        k += 1
    (lab_dir / "configs" / "roster.csv").write_bytes(("\n".join(roster) + "\n").encode("ascii"))
    config.write_bytes(_config_text("coc-rein-scaled").encode("utf-8"))
    return written
