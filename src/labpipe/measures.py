"""Per-session measures, quality flags, criteria, baselines and reinstatement tests.

Pure functions: pandas in, pandas out, no file I/O. The inputs are the stored tables of
``docs/contracts.md`` (``sessions.parquet`` and the ``events/`` dataset) and the
experiment config; the outputs are the analysis tables ``sessions`` (one row per session),
``time_bins`` (one row per session x bin), ``subjects`` (one row per animal) and ``tests``
(one row per animal x reinstatement test session).

Dtypes, the same in every table
-------------------------------
* counts and session numbers: ``Int64`` (nullable; ``<NA>`` = not known);
* continuous measures (rates, fractions, latencies, baselines, percentages): ``float64``
  with ``NaN`` for undefined or unknown (0/0, no press, no baseline);
* flags that are always known: ``bool``; criterion outcomes that may be unknown
  (``acquisition_met``, ``extinction_met``): ``boolean`` with ``<NA>``;
* text: pandas ``str``, missing = ``NaN``, except ``flags`` which is ``""`` when none.

The one rule behind every table: a flagged session (``analyzable`` False) is kept and
shown, but never enters a criterion, a baseline or a statistic; an excluded animal's rows
are kept and marked (``excluded_subject``, ``excluded``, ``included``). No row is dropped.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["session_measures", "subject_table", "test_table", "time_bins"]

#: An all-zero session is an equipment failure only in an animal whose median active
#: presses over its other analyzable sessions of the phase reach this (domain.md §6.2).
EQUIPMENT_MIN_ACTIVE = 5.0

#: Catheter-failure signature (domain.md §6.1-6.2: the drug no longer arrives, so the rat
#: presses on through the time-outs, an extinction-like burst). A self-administration
#: session shows it when its active presses reach CATHETER_FACTOR x, and its time-out
#: presses CATHETER_FACTOR x + CATHETER_MIN_EXTRA_TIMEOUT, the median of the animal's
#: CATHETER_REFERENCE_SESSIONS previous stable sessions of the same program (MSN: a new
#: schedule, FR1 -> FR5, is a new program), with more time-out presses than reinforcers
#: (a rat that gets its drug pauses after most infusions). Stable: analyzable, with at
#: least the acquisition criterion's ``min_reinforcers`` (10 without the criterion), and
#: no signature itself. A signature prompts a patency test; it excludes nothing.
CATHETER_FACTOR = 2.0
CATHETER_MIN_EXTRA_TIMEOUT = 5.0
CATHETER_REFERENCE_SESSIONS = 3
CATHETER_DEFAULT_MIN_REINFORCERS = 10

#: Acquisition sessions forming the acquisition baseline when ``[criteria.extinction]``
#: is absent (the usual "last 3 self-administration days", domain.md §2.5).
DEFAULT_ACQUISITION_SESSIONS = 3

#: Event names of the events dataset -> column of the time-bin table.
BIN_EVENTS: dict[str, str] = {
    "active_press": "active",
    "inactive_press": "inactive",
    "reinforcer": "reinforcers",
}

MEASURE_COLUMNS: tuple[str, ...] = (
    "active_per_h",
    "inactive_per_h",
    "reinforcers_per_h",
    "active_fraction",
    "latency_active_s",
    "re_extinction",
    "baseline_active",
    "pct_baseline",
    "flag_aborted",
    "flag_equipment_failure",
    "flag_catheter_signature",
    "flags",
    "analyzable",
    "excluded_subject",
    "exclusion_reason",
)

TIME_BIN_COLUMNS: tuple[str, ...] = (
    "session_id",
    "subject",
    "phase",
    "test",
    "bin",
    "bin_start_min",
    "bin_end_min",
    "active",
    "inactive",
    "reinforcers",
    "partial",
)

SUBJECT_COLUMNS: tuple[str, ...] = (
    "subject",
    "sex",
    "group",
    "cohort",
    "active_lever",
    "n_acquisition",
    "n_extinction",
    "n_tests",
    "acquisition_met",
    "acquisition_session",
    "acquisition_baseline_active",
    "extinction_met",
    "extinction_sessions_to_criterion",
    "excluded",
    "exclusion_reason",
)

TEST_COLUMNS: tuple[str, ...] = (
    "subject",
    "group",
    "sex",
    "cohort",
    "test",
    "test_session_id",
    "test_date",
    "baseline_active",
    "baseline_inactive",
    "baseline_sessions",
    "baseline_dates",
    "test_active",
    "test_inactive",
    "pct_baseline",
    "delta_active",
    "included",
    "exclusion_reason",
)

# Tolerance for durations that are whole multiples of the bin width but come out of a
# float division a hair above it (120.000000001 min must give 8 bins of 15, not 9).
_EPS = 1e-9


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------


def _float(s: pd.Series) -> pd.Series:
    """Return ``s`` as float64 with NaN for missing (Int64/Float64/object in)."""
    values = pd.to_numeric(s, errors="coerce").astype("Float64")
    return pd.Series(values.to_numpy(dtype="float64", na_value=np.nan), index=s.index)


def _str(values: Any, index: pd.Index | None = None) -> pd.Series:
    """Return a pandas ``str`` Series (missing = NaN)."""
    return pd.Series(values, index=index, dtype="str")


def _lookup(keys: pd.Series, table: pd.Series) -> pd.Series:
    """Return ``table[key]`` for every key (NaN/NaT/NA when absent), indexed like ``keys``.

    ``Series.map(Series)`` casts an empty mapper to float64, which breaks datetimes and
    strings; a reindex keeps the table's dtype.
    """
    return pd.Series(table.reindex(keys.to_numpy()).to_numpy(), index=keys.index, dtype=table.dtype)


def re_extinction(sessions: pd.DataFrame) -> pd.Series:
    """Mark the re-extinction sessions: extinction after the animal's first test.

    Rats tested more than once are extinguished again between tests (domain.md §1.5, §3:
    back to criterion before the next test). Those sessions give the next test its
    baseline; the extinction criterion, curve and statistics are the first run's, the
    extinction sessions before the animal's first reinstatement session (flagged or not:
    once tested, the rat has been reinstated).

    Parameters
    ----------
    sessions
        Sessions with ``subject``, ``phase`` and ``start``.

    Returns
    -------
    pandas.Series
        Boolean, aligned with ``sessions``: True for an extinction session that did not
        start before the same animal's first reinstatement session.
    """
    first_test = (
        sessions.loc[sessions["phase"].eq("reinstatement")].groupby("subject")["start"].min()
    )
    test_start = _lookup(sessions["subject"], first_test)
    after = (sessions["start"] >= test_start).astype("boolean").fillna(False)
    return (sessions["phase"].eq("extinction") & after).astype(bool)


def phase_curve(sessions: pd.DataFrame, phase: str) -> pd.DataFrame:
    """Return the sessions of ``phase`` that form its day-by-day curve.

    Every session of the phase, but for extinction the :func:`re_extinction` sessions,
    whose presses follow a test rather than the extinction days before it. A table
    without the ``re_extinction`` column (made by hand, or older) is taken as it is.

    Parameters
    ----------
    sessions
        The session measures (:func:`session_measures`), or any table with ``phase``.
    phase
        "acquisition" or "extinction".

    Returns
    -------
    pandas.DataFrame
        The rows of the curve, in their order.
    """
    keep = sessions["phase"].astype(str).eq(phase)
    if phase == "extinction" and "re_extinction" in sessions:
        keep &= ~sessions["re_extinction"].astype("boolean").fillna(False).astype(bool)
    return sessions[keep]


def _criteria(cfg: Any) -> tuple[Any, Any]:
    """Return (acquisition criteria, extinction criteria); either may be None."""
    crit = getattr(cfg, "criteria", None)
    if crit is None:
        return None, None
    return getattr(crit, "acquisition", None), getattr(crit, "extinction", None)


def _acquisition_sessions(cfg: Any) -> int:
    """Return how many last acquisition sessions form the acquisition baseline."""
    _, ext = _criteria(cfg)
    n = getattr(ext, "acquisition_sessions", None) if ext is not None else None
    return int(n) if n else DEFAULT_ACQUISITION_SESSIONS


def _ordered(sessions: pd.DataFrame) -> pd.DataFrame:
    """Sessions sorted by subject and start (session_id breaks ties), fresh 0..n-1 index."""
    return sessions.sort_values(["subject", "start", "session_id"], kind="stable").reset_index(
        drop=True
    )


def _window_all(ok: pd.Series, keys: pd.Series, n: int) -> tuple[pd.Series, pd.Series]:
    """Whether the last ``n`` rows of each key (in row order), ending at each row, are all ok.

    ``ok`` is float64: 1 ok, 0 not ok, NaN unknown. Returns (all ok: bool, any unknown in
    the window: bool); rows with fewer than ``n`` rows of their key so far are False/False.
    Vectorised with grouped cumulative sums (a window sum is a difference of two).
    """
    good = ok.fillna(0.0).eq(1.0).astype("int64")
    unknown = ok.isna().astype("int64")
    c_good = good.groupby(keys).cumsum()
    c_unknown = unknown.groupby(keys).cumsum()
    pos = good.groupby(keys).cumcount()
    full = pos >= n - 1
    w_good = c_good - c_good.groupby(keys).shift(n, fill_value=0)
    w_unknown = c_unknown - c_unknown.groupby(keys).shift(n, fill_value=0)
    return (full & w_good.eq(n)), (full & w_unknown.gt(0))


# ---------------------------------------------------------------------------------------
# Session measures
# ---------------------------------------------------------------------------------------


def _programmed_minutes(df: pd.DataFrame, cfg: Any) -> pd.Series:
    """Programmed session length per session: the phase rule's, else the MSN's median."""
    per_msn: dict[Any, float] = {}
    for msn in df["msn"].dropna().unique():  # one lookup per program, not per session
        rule = cfg.match_phase(str(msn))
        minutes = getattr(rule, "session_minutes", None) if rule is not None else None
        per_msn[msn] = float(minutes) if minutes else np.nan
    configured = _float(df["msn"].map(per_msn))
    median = df.groupby("msn", dropna=True)["duration_min"].transform("median")
    return configured.fillna(_float(median))


def _ingest_flags(df: pd.DataFrame) -> pd.Series:
    """Return the flags set upstream (a ``flags`` column, ";"-joined), "" when none."""
    if "flags" not in df.columns:
        return _str([""] * len(df), index=df.index)
    flags = df["flags"].astype("str").fillna("").str.strip()
    # the flags computed here are recomputed, never inherited (measures in, measures out)
    flags = flags.str.replace(r"(?:^|;)(?:aborted|equipment_failure)(?=;|$)", "", regex=True)
    return flags.str.strip(";")


def _join_flags(parts: list[pd.Series]) -> pd.Series:
    """Join flag-name columns ("" = not set) with ";" and no empty items, vectorised."""
    out = parts[0].astype("str")
    for p in parts[1:]:
        out = out.str.cat(p.astype("str"), sep=";")
    return out.str.replace(r";{2,}", ";", regex=True).str.strip(";")


def _equipment_failure(df: pd.DataFrame, usable_reference: pd.Series) -> pd.Series:
    """All-zero sessions of animals that normally respond in that phase (see caller)."""
    active = _float(df["active"])
    inactive = _float(df["inactive"])
    # no reinforcer source configured (NA) says nothing against a dead box
    reinforcers = _float(df["reinforcers"]).fillna(0.0)
    zero = active.eq(0.0) & inactive.eq(0.0) & reinforcers.eq(0.0)
    # In extinction the rat is *meant* to stop pressing: an all-zero extinction session is
    # what a fully extinguished rat does, and counts cannot tell it from a dead box.
    candidates = df.loc[zero & df["phase"].ne("extinction"), ["session_id", "subject", "phase"]]
    if candidates.empty:
        return pd.Series(False, index=df.index)
    ref = df.loc[usable_reference, ["session_id", "subject", "phase"]].assign(
        ref_active=active[usable_reference]
    )
    pairs = candidates.merge(ref, on=["subject", "phase"], suffixes=("", "_ref"))
    pairs = pairs[pairs["session_id"] != pairs["session_id_ref"]]
    median = pairs.groupby("session_id")["ref_active"].median()
    return _float(_lookup(df["session_id"], median)).ge(EQUIPMENT_MIN_ACTIVE)


def _catheter_signature(df: pd.DataFrame, usable: pd.Series, min_reinforcers: float) -> pd.Series:
    """Acquisition sessions with the catheter-failure signature (see CATHETER_FACTOR).

    ``df`` is in subject, start order; ``usable`` marks the sessions that may set an
    animal's stable level (not flagged). Unknown counts never show the signature.
    """
    out = np.zeros(len(df), dtype=bool)
    acq = df["phase"].eq("acquisition").to_numpy()
    if not acq.any():
        return pd.Series(out, index=df.index)
    active = _float(df["active"]).to_numpy()
    timeout = _float(df["timeout_active"]).to_numpy()
    reinforcers = _float(df["reinforcers"]).to_numpy()
    stable = usable.to_numpy(dtype=bool) & (reinforcers >= min_reinforcers)
    k = CATHETER_REFERENCE_SESSIONS
    levels: dict[tuple[str, str], list[tuple[float, float]]] = {}
    keys = zip(df["subject"].astype("str"), df["msn"].astype("str"), strict=True)
    for i, key in enumerate(keys):
        if not acq[i]:
            continue
        last = levels.setdefault(key, [])
        if len(last) >= k:
            ref_active = statistics.median(a for a, _ in last[-k:])
            ref_timeout = statistics.median(t for _, t in last[-k:])
            out[i] = bool(
                ref_active > 0
                and active[i] >= CATHETER_FACTOR * ref_active
                and timeout[i] >= CATHETER_FACTOR * ref_timeout + CATHETER_MIN_EXTRA_TIMEOUT
                and timeout[i] > reinforcers[i]
            )  # (NaN compares False)
        if stable[i] and not out[i] and not np.isnan(active[i]) and not np.isnan(timeout[i]):
            last.append((active[i], timeout[i]))
    return pd.Series(out, index=df.index)


def _catheter_min_reinforcers(cfg: Any) -> float:
    """Reinforcers a session needs to count as stable self-administration."""
    acq, _ = _criteria(cfg)
    n = getattr(acq, "min_reinforcers", None) if acq is not None else None
    return float(n) if n is not None else float(CATHETER_DEFAULT_MIN_REINFORCERS)


def _test_baselines(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Extinction baseline of every reinstatement session (index: the test's session_id).

    The last ``k`` analyzable extinction sessions of the same animal that started before
    the test (re-extinction aware: the sessions just before *this* test). Columns:
    baseline_active, baseline_inactive (float64 means over the sessions available),
    baseline_sessions (Int64, how many were available, 0..k), baseline_dates (str).
    """
    tests = df.loc[df["phase"].eq("reinstatement"), ["session_id", "subject", "start"]]
    ext = df.loc[
        df["phase"].eq("extinction") & df["analyzable"].astype(bool),
        ["subject", "start"],
    ].assign(
        b_active=_float(df["active"]),
        b_inactive=_float(df["inactive"]),
    )
    ext = ext.assign(b_date=ext["start"].dt.strftime("%Y-%m-%d").astype("str"))
    pairs = tests.merge(ext, on="subject", suffixes=("", "_ext"))
    pairs = pairs[pairs["start_ext"] < pairs["start"]]
    pairs = pairs.sort_values(["session_id", "start_ext"], kind="stable")
    last = pairs.groupby("session_id").tail(k)
    grouped = last.groupby("session_id")
    out = pd.DataFrame(
        {
            "baseline_active": grouped["b_active"].mean(),
            "baseline_inactive": grouped["b_inactive"].mean(),
            "baseline_sessions": grouped.size(),
            "baseline_dates": grouped["b_date"].agg(";".join),
        }
    ).reindex(pd.Index(tests["session_id"], name="session_id"))
    out["baseline_active"] = _float(out["baseline_active"])
    out["baseline_inactive"] = _float(out["baseline_inactive"])
    out["baseline_sessions"] = out["baseline_sessions"].fillna(0).astype("Int64")
    out["baseline_dates"] = out["baseline_dates"].astype("str").fillna("")
    return out


def _acquisition_baseline(df: pd.DataFrame, n: int) -> pd.Series:
    """Mean active presses of each animal's last ``n`` analyzable acquisition sessions."""
    acq = df[df["phase"].eq("acquisition") & df["analyzable"].astype(bool)]
    last = acq.groupby("subject").tail(n)
    return _float(last["active"]).groupby(last["subject"]).mean().astype("float64")


def session_measures(sessions: pd.DataFrame, events: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """Compute the per-session measures, quality flags and baselines (``sessions.csv``).

    Parameters
    ----------
    sessions
        ``sessions.parquet`` as read by ``store.read_sessions`` (columns of
        ``docs/contracts.md``). An optional ``flags`` column (";"-joined names) holds
        flags set upstream; they make the session not analyzable like the ones here.
    events
        The events dataset: ``session_id, t_s, event``.
    cfg
        The experiment (``labpipe.config.Experiment`` or an object with the same
        attributes): ``analysis.aborted_fraction``, ``criteria``, ``roster``,
        ``match_phase(msn).session_minutes``.

    Returns
    -------
    pandas.DataFrame
        One row per input session, sorted by subject, start: every input column, then

        - ``active_per_h``, ``inactive_per_h``, ``reinforcers_per_h`` (float64): count per
          hour of the real duration (``duration_min``); NaN when the count is unknown or the
          duration is not positive.
        - ``active_fraction`` (float64): active / (active + inactive); NaN at 0 / 0.
        - ``latency_active_s`` (float64): time of the first active press (events); NaN
          when there is none or the session has no events -- never the session length.
        - ``re_extinction`` (bool): an extinction session after the animal's first
          reinstatement test (re-extinction between tests, :func:`re_extinction`): it
          feeds the next test's baseline, not the extinction criterion, curve or statistics.
        - ``baseline_active`` (float64): extinction sessions: the acquisition baseline (mean
          active of the animal's last ``criteria.extinction.acquisition_sessions``
          analyzable acquisition sessions, 3 without that criterion); reinstatement
          sessions: the test's baseline (mean active of the last
          ``analysis.baseline_sessions`` analyzable extinction sessions before the test,
          over those available); other phases NaN.
        - ``pct_baseline`` (float64): 100 x active / baseline_active; NaN when the baseline
          is 0 or missing.
        - ``flag_aborted``, ``flag_equipment_failure`` (bool): the rules below.
        - ``flag_catheter_signature`` (bool): the catheter-failure signature below; a
          warning (check the catheter's patency), not a flag: it leaves the session
          analyzable, and the animal is excluded only by the roster (after a failed
          patency test, from the day the lab records).
        - ``flags`` (str): upstream flags, then ``aborted``, ``equipment_failure``, joined
          with ";"; ``""`` when none.
        - ``analyzable`` (bool): ``flags == ""``.
        - ``excluded_subject`` (bool), ``exclusion_reason`` (str, NaN when not excluded):
          the animal's exclusion from :func:`subject_table`.

    Notes
    -----
    Aborted: ``duration_min < analysis.aborted_fraction x programmed length``; the
    programmed length is the matching phase rule's ``session_minutes`` when set, else the
    median ``duration_min`` of all sessions of the same MSN in the table. A missing
    duration is not flagged.

    Equipment failure: active = inactive = 0 and no reinforcer (a missing reinforcer count
    counts as none) in a session outside extinction, of an animal whose median active
    presses over its *other* sessions of the same phase that are neither aborted nor
    flagged upstream is at least 5. Extinction sessions are never flagged by this rule:
    an extinguished rat presses nothing, and counts cannot tell that from a dead box.

    Catheter-failure signature: an acquisition session whose active presses are at least
    2 x, and whose time-out presses are at least 2 x + 5, the median of the animal's 3
    previous stable sessions of the same MSN (analyzable, at least the acquisition
    criterion's ``min_reinforcers`` reinforcers -- 10 without it -- and no signature
    themselves), with more time-out presses than reinforcers: the drug stopped arriving
    and the rat presses through the time-outs.

    Missing data: unknown counts (no source in the config) give NaN rates and fractions,
    never 0; a missing session is simply absent (``day_in_phase`` keeps counting stored
    sessions). Flagged sessions are kept, marked, and left out of every baseline and
    criterion.
    """
    df = _ordered(sessions)
    active = _float(df["active"])
    inactive = _float(df["inactive"])
    reinforcers = _float(df["reinforcers"])
    hours = _float(df["duration_min"]) / 60.0
    hours = hours.where(hours > 0)
    df["active_per_h"] = active / hours
    df["inactive_per_h"] = inactive / hours
    df["reinforcers_per_h"] = reinforcers / hours
    presses = active + inactive
    df["active_fraction"] = (active / presses).where(presses > 0)

    first_active = events.loc[events["event"].eq("active_press")].groupby("session_id")["t_s"].min()
    latency = _float(_lookup(df["session_id"], first_active))
    df["latency_active_s"] = latency.where(df["has_events"].astype("boolean").fillna(False))
    df["re_extinction"] = re_extinction(df)

    aborted_fraction = float(cfg.analysis.aborted_fraction)
    programmed = _programmed_minutes(df, cfg)
    df["flag_aborted"] = (_float(df["duration_min"]) < aborted_fraction * programmed).astype(bool)
    upstream = _ingest_flags(df)
    reference = ~df["flag_aborted"] & upstream.eq("")
    df["flag_equipment_failure"] = _equipment_failure(df, reference).astype(bool)
    df["flag_catheter_signature"] = _catheter_signature(
        df, reference & ~df["flag_equipment_failure"], _catheter_min_reinforcers(cfg)
    ).astype(bool)
    df["flags"] = _join_flags(
        [
            upstream,
            _str(np.where(df["flag_aborted"], "aborted", ""), index=df.index),
            _str(np.where(df["flag_equipment_failure"], "equipment_failure", ""), df.index),
        ]
    )
    df["analyzable"] = df["flags"].eq("").astype(bool)

    # Baselines: extinction -> acquisition baseline; reinstatement -> the test's own.
    acq_base = _acquisition_baseline(df, _acquisition_sessions(cfg))
    test_base = _test_baselines(df, int(cfg.analysis.baseline_sessions))["baseline_active"]
    baseline = pd.Series(np.nan, index=df.index, dtype="float64")
    is_ext = df["phase"].eq("extinction")
    is_rein = df["phase"].eq("reinstatement")
    baseline[is_ext] = _float(_lookup(df.loc[is_ext, "subject"], acq_base))
    baseline[is_rein] = _float(_lookup(df.loc[is_rein, "session_id"], test_base))
    df["baseline_active"] = baseline
    df["pct_baseline"] = (100.0 * active / baseline).where(baseline > 0)

    subjects = _subject_outcomes(df, cfg)
    excluded = subjects.set_index("subject")
    df["excluded_subject"] = (
        _lookup(df["subject"], excluded["excluded"]).astype("boolean").fillna(False).astype(bool)
    )
    df["exclusion_reason"] = _str(_lookup(df["subject"], excluded["exclusion_reason"]))
    kept = [c for c in sessions.columns if c not in MEASURE_COLUMNS]
    return df.loc[:, kept + list(MEASURE_COLUMNS)]


# ---------------------------------------------------------------------------------------
# Time bins
# ---------------------------------------------------------------------------------------


def time_bins(sessions: pd.DataFrame, events: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """Count active, inactive and reinforcer events per time bin of every session.

    Parameters
    ----------
    sessions
        Sessions (``sessions.parquet`` or the output of :func:`session_measures`); uses
        ``session_id, subject, phase, test, duration_min, has_events``.
    events
        The events dataset: ``session_id, t_s, event``.
    cfg
        The experiment; uses ``analysis.time_bin_minutes`` (the width w).

    Returns
    -------
    pandas.DataFrame
        Long, one row per session x bin, sorted by session order then bin:

        - ``session_id``, ``subject``, ``phase``, ``test`` (str);
        - ``bin`` (Int64): 1, 2, ...; bin k covers ``[(k-1)w, kw)`` minutes;
        - ``bin_start_min``, ``bin_end_min`` (float64): the bin's edges; the last bin ends
          at the real session end;
        - ``active``, ``inactive``, ``reinforcers`` (Int64): events in the bin (0 when none);
        - ``partial`` (bool): the last bin is shorter than w.

    Notes
    -----
    Bins span the real duration: ``ceil(duration_min / w)`` bins. Sessions without press
    times (``has_events`` False) or with no positive duration get no rows: their bins are
    unknown, not zero. A bin with no event is 0. Events stamped at or after the recorded
    end (header times are whole seconds, press times 10 ms) count in the last bin, and
    negative times in the first, so the bins of a session always sum to its events.
    """
    width = float(cfg.analysis.time_bin_minutes)
    s = _ordered(sessions)
    duration = _float(s["duration_min"])
    keep = s["has_events"].astype("boolean").fillna(False).astype(bool) & duration.gt(0)
    s = s.loc[keep, ["session_id", "subject", "phase", "test"]].assign(duration_min=duration[keep])
    n_bins = np.ceil(s["duration_min"].to_numpy() / width - _EPS).astype("int64")
    grid = s.loc[s.index.repeat(n_bins)].reset_index(drop=True)
    k = grid.groupby("session_id", sort=False).cumcount().to_numpy()
    grid["bin"] = pd.array(k + 1, dtype="Int64")
    grid["bin_start_min"] = k * width
    grid["bin_end_min"] = np.minimum((k + 1) * width, grid["duration_min"].to_numpy())
    grid["partial"] = ((k + 1) * width > grid["duration_min"].to_numpy() + _EPS).astype(bool)

    ev = events.loc[
        events["session_id"].isin(s["session_id"]) & events["event"].isin(BIN_EVENTS),
        ["session_id", "t_s", "event"],
    ]
    last_bin = _lookup(ev["session_id"], pd.Series(n_bins - 1, index=s["session_id"].to_numpy()))
    max_bins = int(n_bins.max()) if len(n_bins) else 1
    edges = np.arange(max_bins + 1, dtype="float64") * width * 60.0
    idx = pd.cut(ev["t_s"], bins=edges, right=False, labels=False)
    # outside [0, last edge): before 0 -> first bin, at/after the end -> last bin
    idx = idx.where(ev["t_s"] >= 0, 0).fillna(max_bins)
    ev = ev.assign(bin=np.minimum(idx.to_numpy(dtype="int64"), last_bin.to_numpy()) + 1)
    counts = (
        ev.assign(column=ev["event"].map(BIN_EVENTS))
        .groupby(["session_id", "bin", "column"])
        .size()
        .unstack("column")
        .reindex(columns=list(BIN_EVENTS.values()))
        .fillna(0)
        .reset_index()
    )
    counts["bin"] = counts["bin"].astype("Int64")
    out = grid.merge(counts, on=["session_id", "bin"], how="left")
    for col in BIN_EVENTS.values():
        out[col] = out[col].fillna(0).astype("int64").astype("Int64")
    for col in ("session_id", "subject", "phase", "test"):
        out[col] = out[col].astype("str")
    return out.loc[:, list(TIME_BIN_COLUMNS)]


# ---------------------------------------------------------------------------------------
# Criteria per animal
# ---------------------------------------------------------------------------------------


def _roster_frame(cfg: Any) -> pd.DataFrame:
    """Return the roster: subject, sex, group, cohort, active_lever, roster_exclude."""
    animals = list(getattr(cfg, "roster", {}).values())
    return pd.DataFrame(
        {
            "subject": _str([a.subject for a in animals]),
            "sex": _str([a.sex for a in animals]),
            "group": _str([a.group for a in animals]),
            "cohort": _str([getattr(a, "cohort", None) for a in animals]),
            "active_lever": _str([a.active_lever for a in animals]),
            "roster_exclude": _str([getattr(a, "exclude", None) for a in animals]),
        }
    )


def _acquisition_outcome(df: pd.DataFrame, acq: Any) -> pd.DataFrame:
    """acquisition_met / acquisition_session per subject with analyzable acquisition data."""
    rows = df[df["phase"].eq("acquisition") & df["analyzable"]]
    n = int(acq.last_sessions)
    reinforcers = _float(rows["reinforcers"])
    active = _float(rows["active"])
    inactive = _float(rows["inactive"])
    ok = (reinforcers >= acq.min_reinforcers) & (
        active >= float(acq.min_active_to_inactive) * inactive
    )
    ok = ok.astype("float64").where(reinforcers.notna() & active.notna() & inactive.notna())
    held, unknown = _window_all(ok, rows["subject"], n)
    first = rows.loc[held, ["subject", "day_in_phase"]].groupby("subject")["day_in_phase"].min()
    last = rows.groupby("subject").tail(1).index
    met = pd.Series(held[last].to_numpy(), index=rows.loc[last, "subject"]).astype("boolean")
    met[unknown[last].to_numpy()] = pd.NA
    return pd.DataFrame({"acquisition_met": met, "acquisition_session": first})


def _extinction_outcome(df: pd.DataFrame, ext: Any, acq_base: pd.Series) -> pd.DataFrame:
    """extinction_met / extinction_sessions_to_criterion per subject.

    Only the first extinction run counts: analyzable extinction sessions that are not
    :func:`re_extinction` sessions.
    """
    rows = df[df["phase"].eq("extinction") & df["analyzable"] & ~re_extinction(df)]
    active = _float(rows["active"])
    fraction = getattr(ext, "fraction_of_acquisition", None)
    max_active = getattr(ext, "max_active", None)
    ok = pd.Series(True, index=rows.index, dtype="boolean")
    known = active.notna()
    if fraction is not None:
        base = _float(_lookup(rows["subject"], acq_base))
        ok &= active <= float(fraction) * base
        known &= base.notna()
    if max_active is not None:
        ok &= active <= float(max_active)
    ok = ok.astype("float64").where(known)
    held, unknown = _window_all(ok, rows["subject"], int(ext.consecutive))
    held &= rows["day_in_phase"].astype("int64") >= int(ext.min_sessions)
    to_crit = rows.loc[held].groupby("subject")["day_in_phase"].min()
    any_known = known.groupby(rows["subject"]).any()
    any_unknown = (~known).groupby(rows["subject"]).any()
    met = pd.Series(False, index=any_known.index, dtype="boolean")
    met[(~any_known) | any_unknown] = pd.NA
    met[to_crit.index] = True
    return pd.DataFrame({"extinction_met": met, "extinction_sessions_to_criterion": to_crit})


def _subject_outcomes(measures: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """Criteria, baselines and exclusions per animal (the body of :func:`subject_table`)."""
    df = _ordered(measures)
    df["analyzable"] = df["analyzable"].astype("boolean").fillna(False).astype(bool)
    acq_crit, ext_crit = _criteria(cfg)

    roster = _roster_frame(cfg)
    # Sessions of a subject no longer in the roster are kept and excluded, not dropped.
    strays = df.loc[~df["subject"].isin(roster["subject"])].groupby("subject", sort=True).first()
    strays = strays.reset_index()[["subject", "sex", "group", "cohort", "active_lever"]]
    strays = strays.assign(roster_exclude=_str([np.nan] * len(strays), index=strays.index))
    table = pd.concat([roster.assign(in_roster=True), strays.assign(in_roster=False)])
    table = table.sort_values("subject", kind="stable").reset_index(drop=True)
    for col in ("subject", "sex", "group", "cohort", "active_lever", "roster_exclude"):
        table[col] = table[col].astype("str")
    table = table.set_index("subject", drop=False)

    counts = df.groupby(["subject", "phase"]).size().unstack("phase")
    counts = counts.reindex(columns=["acquisition", "extinction", "reinstatement"])
    counts = counts.reindex(table.index).fillna(0).astype("int64")
    table["n_acquisition"] = counts["acquisition"].astype("Int64")
    table["n_extinction"] = counts["extinction"].astype("Int64")
    table["n_tests"] = counts["reinstatement"].astype("Int64")
    n_sessions = df.groupby("subject").size().reindex(table.index).fillna(0)

    acq_base = _acquisition_baseline(df, _acquisition_sessions(cfg))
    table["acquisition_met"] = pd.Series(pd.NA, index=table.index, dtype="boolean")
    table["acquisition_session"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    if acq_crit is not None:
        out = _acquisition_outcome(df, acq_crit).reindex(table.index)
        # an animal with no analyzable acquisition session has not met it
        table["acquisition_met"] = out["acquisition_met"].astype("boolean")
        no_data = ~table.index.isin(
            df.loc[df["phase"].eq("acquisition") & df["analyzable"], "subject"]
        )
        table.loc[no_data, "acquisition_met"] = False
        table["acquisition_session"] = out["acquisition_session"].astype("Int64")
    table["acquisition_baseline_active"] = _float(acq_base.reindex(table.index))

    table["extinction_met"] = pd.Series(pd.NA, index=table.index, dtype="boolean")
    table["extinction_sessions_to_criterion"] = pd.Series(pd.NA, index=table.index, dtype="Int64")
    if ext_crit is not None:
        out = _extinction_outcome(df, ext_crit, acq_base).reindex(table.index)
        table["extinction_met"] = out["extinction_met"].astype("boolean")
        table["extinction_sessions_to_criterion"] = out["extinction_sessions_to_criterion"].astype(
            "Int64"
        )

    # Exclusion: the first applicable reason, in this order.
    acq_rows = df[df["phase"].eq("acquisition")]
    n_acq_ok = acq_rows.groupby("subject")["analyzable"].sum().reindex(table.index).fillna(0)
    eq_fail = (
        acq_rows.groupby("subject")["flag_equipment_failure"].any().reindex(table.index)
        if "flag_equipment_failure" in acq_rows
        else pd.Series(False, index=table.index)
    )
    eq_fail = eq_fail.astype("boolean").fillna(False).astype(bool)
    acq_met = table["acquisition_met"]
    not_acquired = acq_met.eq(False).fillna(False).astype(bool)
    need = int(acq_crit.last_sessions) if acq_crit is not None else 0
    too_few = (
        not_acquired
        & (n_acq_ok < need)
        & (table["n_acquisition"].astype("int64") >= need)
        & (table["n_acquisition"].astype("int64") > n_acq_ok)
    )
    roster_text = table["roster_exclude"].fillna("").str.strip()
    conditions = [
        roster_text.ne(""),
        ~table["in_roster"].astype(bool),
        n_sessions.eq(0),
        too_few & eq_fail,
        too_few,
        not_acquired,
        table["extinction_met"].eq(False).fillna(False).astype(bool),
    ]
    reasons = [
        "roster: " + roster_text,
        _str(["not in roster"] * len(table), index=table.index),
        _str(["no sessions"] * len(table), index=table.index),
        _str(["equipment failure"] * len(table), index=table.index),
        _str(["too few analyzable acquisition sessions"] * len(table), index=table.index),
        _str(["non-acquirer"] * len(table), index=table.index),
        _str(["not extinguished"] * len(table), index=table.index),
    ]
    reason = pd.Series(np.nan, index=table.index, dtype="str")
    for cond, text in zip(reversed(conditions), reversed(reasons), strict=True):
        reason = reason.mask(cond.to_numpy(), text)  # earlier conditions win
    table["excluded"] = reason.notna().astype(bool)
    table["exclusion_reason"] = reason.astype("str")
    return table.reset_index(drop=True).loc[:, list(SUBJECT_COLUMNS)]


def subject_table(measures: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """Criteria, acquisition baseline and exclusion per animal (``subjects.csv``).

    Parameters
    ----------
    measures
        The output of :func:`session_measures` (needs ``analyzable`` and
        ``flag_equipment_failure`` beside the session columns).
    cfg
        The experiment; uses ``roster`` and ``criteria.acquisition`` /
        ``criteria.extinction`` (either may be None).

    Returns
    -------
    pandas.DataFrame
        One row per roster animal (also those with no session), then one per subject
        with sessions but not in the roster, sorted by subject:

        - ``subject``, ``sex``, ``group``, ``cohort``, ``active_lever`` (str; from the
          roster);
        - ``n_acquisition``, ``n_extinction``, ``n_tests`` (Int64): stored sessions of
          each phase, flagged ones included;
        - ``acquisition_met`` (boolean): the last ``last_sessions`` analyzable acquisition
          sessions each had >= ``min_reinforcers`` reinforcers and active >=
          ``min_active_to_inactive`` x inactive; False with fewer such sessions (or
          none); NA without the criterion, or when a count it needs is unknown;
        - ``acquisition_session`` (Int64): ``day_in_phase`` of the session completing
          the first run of ``last_sessions`` consecutive analyzable sessions meeting it;
        - ``acquisition_baseline_active`` (float64): mean active of the last
          ``criteria.extinction.acquisition_sessions`` (3 without the criterion)
          analyzable acquisition sessions, over those available;
        - ``extinction_met`` (boolean), ``extinction_sessions_to_criterion`` (Int64): the
          first extinction run (before the first reinstatement test); a session meets
          the criterion when active <= ``fraction_of_acquisition`` x the acquisition
          baseline (and <= ``max_active`` when set); met at the ``day_in_phase`` of the
          last of ``consecutive`` consecutive analyzable sessions meeting it, if that
          day is >= ``min_sessions``. False when not met; NA without the criterion, with
          no analyzable extinction session or no acquisition baseline;
        - ``excluded`` (bool), ``exclusion_reason`` (str, NaN when included).

    Notes
    -----
    Exclusion reasons, the first that applies: ``"roster: <text>"`` (the roster's
    ``exclude``); ``"not in roster"``; ``"no sessions"``; ``"equipment failure"`` (the
    acquisition criterion failed because flagged sessions, one of them an equipment
    failure, left fewer than ``last_sessions`` analyzable ones);
    ``"too few analyzable acquisition sessions"`` (the same with other flags);
    ``"non-acquirer"``; ``"not extinguished"``. A criterion absent from the config
    excludes nobody. Flagged sessions are skipped by every criterion: the analyzable
    sessions on either side of one count as consecutive. Animals still in a phase are
    judged on the sessions so far.
    """
    return _subject_outcomes(measures, cfg)


# ---------------------------------------------------------------------------------------
# Reinstatement tests
# ---------------------------------------------------------------------------------------


def test_table(measures: pd.DataFrame, subjects: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """Baseline and test responding of every reinstatement test (``tests.csv``).

    Parameters
    ----------
    measures
        The output of :func:`session_measures`.
    subjects
        The output of :func:`subject_table` (``subject``, ``excluded``,
        ``exclusion_reason``).
    cfg
        The experiment; uses ``analysis.baseline_sessions`` (k).

    Returns
    -------
    pandas.DataFrame
        One row per animal x reinstatement session, sorted by subject and test start:

        - ``subject``, ``group``, ``sex``, ``cohort``, ``test`` (str);
        - ``test_session_id`` (str), ``test_date`` (``datetime.date``, the lab's date);
        - ``baseline_active``, ``baseline_inactive`` (float64): means over the last k
          analyzable extinction sessions that started before this test (re-extinction
          aware), over those available; NaN when none;
        - ``baseline_sessions`` (Int64): how many were available (0..k);
        - ``baseline_dates`` (str): their ISO dates joined with ";" ("" when none);
        - ``test_active``, ``test_inactive`` (Int64);
        - ``pct_baseline`` (float64): 100 x test_active / baseline_active, NaN when the
          baseline is 0 or missing;
        - ``delta_active`` (float64): test_active - baseline_active;
        - ``included`` (bool), ``exclusion_reason`` (str, NaN when included).

    Notes
    -----
    A test is included when the animal is not excluded, the test session is analyzable
    and k baseline sessions were available. Otherwise the first reason applies: the
    animal's exclusion reason, ``"test session flagged: <flags>"``, ``"too few baseline
    sessions (n of k)"``. A test type no animal ran has no rows; an empty input gives an
    empty table with these columns.
    """
    k = int(cfg.analysis.baseline_sessions)
    df = _ordered(measures)
    df["analyzable"] = df["analyzable"].astype("boolean").fillna(False).astype(bool)
    rein = df[df["phase"].eq("reinstatement")]
    base = _test_baselines(df, k)
    out = pd.DataFrame(
        {
            "subject": rein["subject"].astype("str"),
            "group": rein["group"].astype("str"),
            "sex": rein["sex"].astype("str"),
            "cohort": rein["cohort"].astype("str"),
            "test": rein["test"].astype("str"),
            "test_session_id": rein["session_id"].astype("str"),
            # the lab's calendar date (start is in the config's zone)
            "test_date": rein["start"].dt.date.astype("object"),
        }
    )
    b = base.reindex(pd.Index(rein["session_id"])).set_axis(rein.index)
    for col in ("baseline_active", "baseline_inactive", "baseline_sessions", "baseline_dates"):
        out[col] = b[col]
    out["test_active"] = rein["active"].astype("Int64")
    out["test_inactive"] = rein["inactive"].astype("Int64")
    test_active = _float(rein["active"])
    baseline = out["baseline_active"].astype("float64")
    out["pct_baseline"] = (100.0 * test_active / baseline).where(baseline > 0)
    out["delta_active"] = test_active - baseline

    subj = subjects.set_index("subject")
    subj_excluded = _lookup(rein["subject"], subj["excluded"]).astype("boolean")
    subj_excluded = subj_excluded.fillna(rein["excluded_subject"].astype("boolean"))
    subj_reason = _str(_lookup(rein["subject"], subj["exclusion_reason"]))
    subj_reason = subj_reason.fillna(_str(rein["exclusion_reason"]))
    n_base = out["baseline_sessions"].fillna(0).astype("int64")
    reason = pd.Series(np.nan, index=rein.index, dtype="str")
    few = _str("too few baseline sessions (" + n_base.astype("str") + f" of {k})")
    flagged = _str("test session flagged: " + rein["flags"].astype("str"))
    reason = reason.mask((n_base < k).to_numpy(), few)
    reason = reason.mask((~rein["analyzable"]).to_numpy(), flagged)
    reason = reason.mask(subj_excluded.fillna(False).astype(bool).to_numpy(), subj_reason)
    out["included"] = reason.isna().astype(bool)
    out["exclusion_reason"] = reason.astype("str")
    return out.reset_index(drop=True).loc[:, list(TEST_COLUMNS)]
