"""Orchestration of the analysis half: stored data -> measures -> statistics -> report.

``build_report`` is what ``labpipe report`` (and the nightly run, when something changed)
calls. It reads the committed datasets, computes the tables once, and hands the same
tables to the figures and to the report writer, so the figures show exactly the numbers
of the tables.

A large experiment (:data:`labpipe.stats.POOL_MIN_ANIMALS` animals or more) uses every
CPU: the statistics run in this process and worker processes, then the figures are drawn
in a process of their own while this one writes the tables. The files are the same as
from one process.
"""

from __future__ import annotations

import functools
import importlib.metadata
import multiprocessing
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from labpipe import figures, measures, report, stats, store
from labpipe.catalog import Catalog
from labpipe.config import Experiment


@dataclass(frozen=True, slots=True)
class Analysis:
    """Every table of an experiment's analysis.

    Attributes
    ----------
    tables
        ``sessions`` (per-session measures), ``time_bins``, ``subjects``, ``tests``,
        ``stats``, ``set_aside``.
    events
        The events of the stored sessions (for cumulative records).
    """

    tables: Mapping[str, pd.DataFrame]
    events: pd.DataFrame


def analyse(cfg: Experiment, *, workers: int | None = None) -> Analysis:
    """Compute measures, criteria, baselines and statistics from the stored datasets.

    Parameters
    ----------
    cfg
        The experiment.
    workers
        Processes for the statistics (see :func:`labpipe.stats.phase_statistics`); the
        tables are the same for any number.

    Returns
    -------
    Analysis
        The tables and the events.

    Raises
    ------
    DataError
        When nothing has been ingested yet.
    """
    processed = cfg.processed_dir
    sessions = store.read_sessions(processed)
    events = store.read_events(processed)
    per_session = measures.session_measures(sessions, events, cfg)
    bins = measures.time_bins(per_session, events, cfg)
    subjects = measures.subject_table(per_session, cfg)
    tests = measures.test_table(per_session, subjects, cfg)
    statistics = stats.phase_statistics(
        per_session,
        tests,
        factors=cfg.analysis.factors,
        test_types=[r.test for r in cfg.phases if r.test is not None],
        workers=workers,
    )
    with Catalog(processed / "catalog.sqlite") as cat:
        aside = pd.DataFrame(
            cat.set_aside_rows(),
            columns=["file", "block", "session_id", "subject_raw", "reason_code", "reason"],
        )
    aside["block"] = aside["block"].where(aside["block"] >= 0).astype("Int64")
    return Analysis(
        tables={
            "sessions": per_session,
            "time_bins": bins,
            "subjects": subjects,
            "tests": tests,
            "stats": statistics,
            "set_aside": aside,
        },
        events=events,
    )


#: When an animal counts as ready for its next reinstatement test.
READY_RULE = (
    "extinction criterion met, not excluded, and the last session is an extinction "
    "session (no test since)"
)


def animal_progress(cfg: Experiment) -> pd.DataFrame:
    """Where each animal stands: criteria met, exclusion, ready for a test.

    Parameters
    ----------
    cfg
        The experiment.

    Returns
    -------
    pandas.DataFrame
        One row per roster animal: ``subject, group, acquisition_met, extinction_met,
        extinction_sessions_to_criterion, excluded, exclusion_reason, ready_for_test``
        (see :data:`READY_RULE`). Computed from the measures only, without statistics.
    """
    sessions = store.read_sessions(cfg.processed_dir)
    events = store.read_events(cfg.processed_dir)
    per_session = measures.session_measures(sessions, events, cfg)
    subjects = measures.subject_table(per_session, cfg)
    last_phase = (
        sessions.sort_values(["subject", "start"]).groupby("subject")["phase"].last()
        if len(sessions)
        else pd.Series(dtype="str")
    )
    out = subjects[
        [
            "subject",
            "group",
            "acquisition_met",
            "extinction_met",
            "extinction_sessions_to_criterion",
            "excluded",
            "exclusion_reason",
        ]
    ].copy()
    out["ready_for_test"] = (
        out["extinction_met"].fillna(False).astype(bool)
        & ~out["excluded"].astype(bool)
        & out["subject"].map(last_phase).eq("extinction")
    )
    return out


def raw_file_count(cfg: Experiment) -> int:
    """Return how many raw files the catalog knows (any status)."""
    with Catalog(cfg.processed_dir / "catalog.sqlite") as cat:
        return sum(n for k, n in cat.counts().items() if k != "sessions")


def build_report(cfg: Experiment, *, workers: int | None = None) -> list[Path]:
    """Write ``reports/<experiment>/``: figures, tables, XLSX, methods and index.html.

    Parameters
    ----------
    cfg
        The experiment.
    workers
        Processes to use. ``None``: every CPU for an experiment of
        :data:`labpipe.stats.POOL_MIN_ANIMALS` animals or more, else this process only;
        1: this process only. The files written are the same for any number.

    Returns
    -------
    list of Path
        Every file written: the figures, the tables, ``methods.md``, ``index.html``.
    """
    analysis = analyse(cfg, workers=workers)
    out_dir = cfg.reports_dir
    groups = sorted({a.group for a in cfg.roster.values()})
    draw = functools.partial(
        figures.make_figures,
        analysis.tables,
        analysis.events,
        out_dir=out_dir / "figures",
        group_order=groups,
    )
    context = report.ReportContext(
        experiment=cfg.experiment,
        drug=cfg.drug.name if cfg.drug is not None else None,
        dose_mg_per_kg=cfg.drug.dose_mg_per_kg if cfg.drug is not None else None,
        timezone=cfg.timezone,
        timezone_is_default=cfg.timezone_is_default,
        factors=list(cfg.analysis.factors),
        criteria=_criteria_text(cfg),
        labpipe_version=importlib.metadata.version("labpipe"),
        config_fingerprint=cfg.fingerprint,
        raw_file_count=raw_file_count(cfg),
        settings={
            "baseline_sessions": cfg.analysis.baseline_sessions,
            "time_bin_minutes": cfg.analysis.time_bin_minutes,
            "aborted_fraction": cfg.analysis.aborted_fraction,
        },
    )
    if not _draw_aside(analysis, workers):
        figs = draw()
        report_files = report.write_report(
            out_dir, tables=analysis.tables, figures=figs, context=context
        )
    else:
        # The figures do not need the tables' files nor the other way round: draw them in a
        # process of their own while this one writes the CSV files and the XLSX.
        spawn = multiprocessing.get_context("spawn")
        aside = ProcessPoolExecutor(max_workers=1, mp_context=spawn)
        try:
            drawing = aside.submit(draw)
            report_files = report.write_tables(out_dir, tables=analysis.tables, context=context)
            figs = drawing.result()
        finally:
            aside.shutdown(wait=True, cancel_futures=True)
        report_files += report.write_pages(
            out_dir, tables=analysis.tables, figures=figs, context=context
        )
    return [p for f in figs for p in f.paths.values()] + report_files


def _draw_aside(analysis: Analysis, workers: int | None) -> bool:
    """Whether to draw the figures in a process of their own (see :func:`build_report`)."""
    if workers is not None:
        return workers > 1
    sessions = analysis.tables["sessions"]
    animals = sessions["subject"].nunique() if "subject" in sessions else 0
    return animals >= stats.POOL_MIN_ANIMALS and (os.cpu_count() or 1) > 1


def _criteria_text(cfg: Experiment) -> list[str]:
    out: list[str] = []
    acq = cfg.criteria.acquisition
    if acq is not None:
        out.append(
            f"Acquisition: each of the last {acq.last_sessions} acquisition sessions with at "
            f"least {acq.min_reinforcers} reinforcers and active presses at least "
            f"{acq.min_active_to_inactive:g} times inactive presses."
        )
    else:
        out.append("Acquisition: no criterion configured; no animal is excluded by it.")
    ext = cfg.criteria.extinction
    if ext is not None:
        out.append(
            f"Extinction: active presses at most {ext.fraction_of_acquisition:.0%} of the mean "
            f"of the last {ext.acquisition_sessions} acquisition sessions on "
            f"{ext.consecutive} consecutive extinction sessions."
        )
    else:
        out.append("Extinction: no criterion configured; no animal is excluded by it.")
    return out
