"""The report: ``index.html``, ``tables/*.csv``, ``tables/labpipe.xlsx`` and ``methods.md``.

The only module that imports jinja2 and XlsxWriter. It computes nothing: it formats the
tables and figures it is handed and writes them, each file atomically (labpipe.fsio).

Safety rules (reliability research, section 4):

* HTML: jinja2 with autoescape always on; every attribute quoted; no text from raw files
  or the config in ``href``/``src``; a Content-Security-Policy meta that allows no script
  and no network (the page needs neither). Inline SVG comes from matplotlib, which escapes
  its text; :func:`write_report` still refuses markup that could run (a ``<script>``,
  ``<foreignObject>`` or ``on*=`` attribute in a tag).
* XLSX: XlsxWriter with ``strings_to_formulas``, ``strings_to_urls`` and
  ``strings_to_numbers`` off, every cell written by its type (text cells as strings), so
  no cell is ever a formula; numbers stay numbers; missing values are blank cells.
* CSV: UTF-8 (no BOM), RFC 4180 (CRLF), one header row, ``.`` as decimal point; a
  *text* cell whose first character after leading spaces is ``= + - @``, tab, carriage
  return or NUL gets a leading ``'`` (OWASP ASVS 1.2.10, CWE-1236); numeric columns are
  never touched.

Determinism: the same tables give the same bytes. The only time in any output is
``ReportContext.generated_at`` when the caller supplies one, shown in ``index.html``'s
provenance; the XLSX "created" property is fixed.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
import pandas as pd
import xlsxwriter

from labpipe import fsio, measures
from labpipe.errors import ConfigError, InternalError
from labpipe.figures import FigureInfo

__all__ = [
    "TABLE_ORDER",
    "ReportContext",
    "export_tables",
    "write_pages",
    "write_report",
    "write_tables",
]

#: Tables in the order they are written (CSV files, XLSX sheets); others follow by name.
TABLE_ORDER: tuple[str, ...] = ("sessions", "subjects", "tests", "stats", "time_bins", "set_aside")

_TABLE_TITLES = {
    "sessions": "One row per session: counts, rates, intake, baseline, flags",
    "subjects": "One row per animal: criteria, exclusions",
    "tests": "One row per animal and reinstatement test: baseline and test presses",
    "stats": "Every statistical result, with its APA sentence",
    "time_bins": "Presses per time bin within each session",
    "set_aside": "Raw files and sessions set aside, with the reason",
}

#: The XLSX "created" document property. A fixed value keeps the file's bytes identical
#: from run to run (XlsxWriter would otherwise stamp the time of the run).
_XLSX_CREATED = dt.datetime(2000, 1, 1)

_CSV_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_ACTIVE_MARKUP = re.compile(r"<script|<foreignobject|<[^>]*(\son[a-z]+\s*=|javascript:)", re.I)
_SHEET_BAD = re.compile(r"[\[\]:*?/\\']")
_LIBRARIES = ("numpy", "pandas", "scipy", "pingouin", "statsmodels", "matplotlib", "seaborn")

_PHASES = ("acquisition", "extinction", "reinstatement")
_PHASE_WORDS = {
    "acquisition": "Acquisition",
    "extinction": "Extinction",
    "reinstatement": "Reinstatement",
    "overview": "Overview",
}
_TEST_WORDS = {"cue": "cue", "drug_prime": "drug-prime", "stress": "stress"}
_TEST_ORDER = ("cue", "drug_prime", "stress")
_EFFECT_SIZE_WORDS = {
    "np2": "ηp²",
    "eta_p2": "ηp²",
    "ng2": "ηG²",
    "n2": "η²",
    "d_z": "d_z",
    "dz": "d_z",
    "d": "d",
    "hedges_g": "g",
    "g": "g",
    "r": "r",
    "r_rb": "r_rb",
    "rbc": "r_rb",
    "irr": "IRR",
    "rr": "rate ratio",
}
_ANALYSIS_WORDS = {
    "mixed_anova": "mixed ANOVA",
    "rm_anova": "repeated-measures ANOVA",
    "anova": "ANOVA",
    "paired_t": "paired t-test",
    "paired_ttest": "paired t-test",
    "ttest": "t-test",
    "pairwise": "post hoc pairwise tests",
    "pairwise_tests": "post hoc pairwise tests",
    "posthoc": "post hoc pairwise tests",
    "lmm": "linear mixed model",
    "mixedlm": "linear mixed model",
    "gee": "GEE",
    "gee_nb": "negative binomial GEE",
    "nb_gee": "negative binomial GEE",
    "glmm": "generalized linear mixed model",
    "wilcoxon": "Wilcoxon signed-rank test",
    "friedman": "Friedman test",
}
_EFFECT_WORDS = {
    "day_in_phase": "session",
    "session": "session",
    "phase": "baseline vs test",
    "condition": "baseline vs test",
    "period": "baseline vs test",
    "intercept": "intercept",
}
_MEASURE_WORDS = {
    "active": "active lever presses",
    "inactive": "inactive lever presses",
    "reinforcers": "reinforcers",
    "intake_mg_kg": "intake (mg/kg)",
    "active_per_h": "active presses per hour",
    "active_fraction": "fraction of presses on the active lever",
    "pct_baseline": "active presses (% of baseline)",
}


@dataclass(frozen=True, kw_only=True)
class ReportContext:
    """What the report says about the run besides the tables.

    Attributes
    ----------
    experiment
        The experiment's name (from the config).
    drug, dose_mg_per_kg
        The self-administered drug and its dose per infusion, when configured.
    timezone, timezone_is_default
        The chambers' clock zone; whether it was taken from the machine (the report says so).
    factors
        Between-subject factors of the statistics.
    criteria
        The criteria in words, one sentence each.
    labpipe_version, config_fingerprint, raw_file_count
        Provenance.
    generated_at
        When the report was made, supplied by the caller; shown in the HTML provenance
        only. ``None`` leaves it out (outputs then depend on the input only).
    settings
        Analysis settings to list (``baseline_sessions``, ``time_bin_minutes``, ...).
    """

    experiment: str
    drug: str | None = None
    dose_mg_per_kg: float | None = None
    timezone: str = "UTC"
    timezone_is_default: bool = False
    factors: Sequence[str] = ()
    criteria: Sequence[str] = ()
    labpipe_version: str = ""
    config_fingerprint: str = ""
    raw_file_count: int = 0
    generated_at: dt.datetime | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


def write_report(
    out_dir: Path,
    *,
    tables: Mapping[str, pd.DataFrame],
    figures: Sequence[FigureInfo],
    context: ReportContext,
) -> list[Path]:
    """Write ``index.html``, ``methods.md``, ``tables/*.csv`` and ``tables/labpipe.xlsx``.

    The same as :func:`write_tables` then :func:`write_pages`, after checking the figures.

    Parameters
    ----------
    out_dir
        The report folder (``reports/<experiment>/``); created when missing. Figures are
        expected (already written) in ``out_dir / "figures"``.
    tables
        labpipe's analysis tables (``sessions``, ``subjects``, ``tests``, ``stats``,
        ``time_bins``, ``set_aside``); missing ones are left out.
    figures
        The figures, in the order to show them.
    context
        Run and experiment facts for the summary, methods and provenance.

    Returns
    -------
    list of Path
        Every file written: the CSV files, the XLSX, ``methods.md``, ``index.html``
        (last, so a reader never sees a page pointing at tables not yet written).

    Raises
    ------
    InternalError
        When a figure's SVG holds markup that could run in a browser.
    EnvironmentFailure
        When the disk refuses a write.
    """
    _check_figures(figures)
    written = write_tables(out_dir, tables=tables, context=context)
    written += write_pages(out_dir, tables=tables, figures=figures, context=context)
    return written


def write_tables(
    out_dir: Path, *, tables: Mapping[str, pd.DataFrame], context: ReportContext
) -> list[Path]:
    """Write ``tables/*.csv`` and ``tables/labpipe.xlsx``: the first half of the report.

    It needs no figure, so a caller may draw the figures meanwhile; :func:`write_pages`
    then writes the pages that show both.

    Parameters
    ----------
    out_dir
        The report folder (``reports/<experiment>/``); created when missing.
    tables
        labpipe's analysis tables; missing ones are left out.
    context
        Run and experiment facts (the XLSX README sheet).

    Returns
    -------
    list of Path
        The CSV files, then the XLSX.

    Raises
    ------
    EnvironmentFailure
        When the disk refuses a write.
    """
    written = export_tables(tables, "csv", out_dir / "tables")
    written += _write_xlsx(out_dir / "tables" / "labpipe.xlsx", tables, context)
    return written


def write_pages(
    out_dir: Path,
    *,
    tables: Mapping[str, pd.DataFrame],
    figures: Sequence[FigureInfo],
    context: ReportContext,
) -> list[Path]:
    """Write ``methods.md`` and ``index.html``: the second half of the report.

    Call it after :func:`write_tables`: the page links the tables.

    Parameters
    ----------
    out_dir
        The report folder; figures are expected (already written) in ``out_dir / "figures"``.
    tables
        The tables given to :func:`write_tables`.
    figures
        The figures, in the order to show them.
    context
        Run and experiment facts for the summary, methods and provenance.

    Returns
    -------
    list of Path
        ``methods.md``, then ``index.html``.

    Raises
    ------
    InternalError
        When a figure's SVG holds markup that could run in a browser.
    EnvironmentFailure
        When the disk refuses a write.
    """
    _check_figures(figures)
    paragraphs = _methods(tables, context)
    methods_md = out_dir / "methods.md"
    fsio.write_text(methods_md, _methods_markdown(context, paragraphs))
    index = out_dir / "index.html"
    fsio.write_text(index, _render_html(tables, figures, context, paragraphs, out_dir))
    return [methods_md, index]


def _check_figures(figures: Sequence[FigureInfo]) -> None:
    for fig in figures:
        if _ACTIVE_MARKUP.search(fig.svg):
            raise InternalError(f"Figure {fig.key!r} holds markup that could run in a browser.")


def export_tables(
    tables: Mapping[str, pd.DataFrame],
    fmt: Literal["csv", "xlsx", "parquet"] | str,
    out_dir: Path,
) -> list[Path]:
    """Write the tidy tables for R, Prism, Excel or Python (``labpipe export``).

    Parameters
    ----------
    tables
        Table name -> frame.
    fmt
        ``csv``: one ``<name>.csv`` per table (UTF-8, one header row, formula-safe text);
        ``xlsx``: one ``labpipe.xlsx`` with a sheet per table plus Prism-ready sheets;
        ``parquet``: one ``<name>.parquet`` per table.
    out_dir
        Folder to write into (created when missing).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ConfigError
        For an unknown format.
    """
    if fmt == "xlsx":
        return _write_xlsx(out_dir / "labpipe.xlsx", tables, None)
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"Unknown export format {fmt!r}; use csv, xlsx or parquet.")
    written: list[Path] = []
    for name, df in _ordered(tables):
        path = out_dir / f"{_file_stem(name)}.{fmt}"
        if fmt == "csv":
            fsio.write_bytes(path, _csv_bytes(df))
        else:
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            fsio.write_bytes(path, buf.getvalue())
        written.append(path)
    return written


# ---------------------------------------------------------------------------- tables


def _ordered(tables: Mapping[str, pd.DataFrame]) -> list[tuple[str, pd.DataFrame]]:
    names = [n for n in TABLE_ORDER if n in tables]
    names += sorted(n for n in tables if n not in TABLE_ORDER)
    return [(n, tables[n]) for n in names if tables[n] is not None]


def _file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")
    return stem or "table"


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return False


def _as_text(value: Any) -> str:
    """Return a non-scalar cell (list of flags, dates) as text, items joined by ``; ``."""
    if isinstance(value, list | tuple | np.ndarray):
        return "; ".join(str(v) for v in value)
    return str(value)


def _csv_guard(text: str) -> str:
    return "'" + text if text.lstrip(" ").startswith(_CSV_TRIGGERS) else text


def _csv_bytes(df: pd.DataFrame) -> bytes:
    out = df.copy()
    for col in out.columns:
        series = out[col]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series):
            continue
        if isinstance(series.dtype, pd.StringDtype):
            # text only (or missing): the same guard as _csv_guard, for the whole column
            guard = series.str.lstrip(" ").str.startswith(_CSV_TRIGGERS).fillna(False)
            out[col] = series.where(~guard.astype(bool), "'" + series).astype(object)
            continue
        # only text cells are guarded; a number or a date in an object column is left alone
        out[col] = series.map(
            lambda v: (
                v
                if _is_missing(v)
                else _csv_guard(v)
                if isinstance(v, str)
                else _csv_guard(_as_text(v))
                if isinstance(v, list | tuple | np.ndarray)
                else v
            ),
            na_action=None,
        ).astype(object)
    buf = io.StringIO()
    # RFC 4180 line ends (CRLF): the csv writer then also quotes a field holding a lone CR,
    # which with LF line ends would split the row for most readers
    out.to_csv(buf, index=False, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    return buf.getvalue().encode("utf-8")


class _Formats:
    def __init__(self, wb: xlsxwriter.Workbook) -> None:
        self.header = wb.add_format({"bold": True, "bottom": 1})
        self.datetime = wb.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
        self.date = wb.add_format({"num_format": "yyyy-mm-dd"})
        self.wrap = wb.add_format({"text_wrap": True, "valign": "top"})


def _write_cell(ws: Any, row: int, col: int, value: Any, fmt: _Formats) -> None:
    """Write one cell by its type; text is always a string cell, never a formula."""
    if isinstance(value, list | tuple | np.ndarray):
        ws.write_string(row, col, _as_text(value))
    elif _is_missing(value):
        return
    elif isinstance(value, bool | np.bool_):
        ws.write_boolean(row, col, bool(value))
    elif isinstance(value, int | np.integer):
        ws.write_number(row, col, int(value))
    elif isinstance(value, float | np.floating):
        if math.isfinite(value):
            ws.write_number(row, col, float(value))
    elif isinstance(value, pd.Timestamp | dt.datetime):
        ts = pd.Timestamp(value)
        # Excel has no time zones: the wall-clock time of the chambers' zone is written
        # (the README sheet names the zone)
        if ts.tzinfo is not None:
            ts = ts.tz_localize(None)
        ws.write_datetime(row, col, ts.to_pydatetime(), fmt.datetime)
    elif isinstance(value, dt.date):
        ws.write_datetime(row, col, dt.datetime(value.year, value.month, value.day), fmt.date)
    elif isinstance(value, pd.Timedelta | dt.timedelta):
        ws.write_number(row, col, pd.Timedelta(value).total_seconds())
    else:
        ws.write_string(row, col, str(value))


def _sheet_name(name: str, used: set[str]) -> str:
    base = _SHEET_BAD.sub("_", name).strip() or "sheet"
    base = base[:31]
    candidate, k = base, 2
    while candidate.lower() in used:
        suffix = f" {k}"
        candidate = base[: 31 - len(suffix)] + suffix
        k += 1
    used.add(candidate.lower())
    return candidate


def _column_plan(ws: Any, series: pd.Series, fmt: _Formats) -> tuple[Any, list[Any], Any]:
    """How to write one column: (worksheet method or None, values, cell format).

    For the common dtypes the type test of :func:`_write_cell` is made once per column and
    a value of ``None`` means a blank cell; any other column (method None) goes through
    :func:`_write_cell` value by value. Either way each cell gets the same call as before.
    """
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        arr = series.to_numpy()
        finite = np.isfinite(arr).tolist()
        values = [v if ok else None for v, ok in zip(arr.tolist(), finite, strict=True)]
        return ws.write_number, values, None
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        return ws.write_number, series.to_numpy().tolist(), None
    if isinstance(dtype, np.dtype) and dtype.kind == "b":
        return ws.write_boolean, series.to_numpy().tolist(), None
    if isinstance(series.array, pd.arrays.IntegerArray | pd.arrays.BooleanArray):
        write = ws.write_boolean if dtype.kind == "b" else ws.write_number
        return write, [None if v is pd.NA else v for v in series.tolist()], None
    if isinstance(dtype, pd.StringDtype):
        return ws.write_string, [v if isinstance(v, str) else None for v in series.tolist()], None
    if isinstance(dtype, pd.DatetimeTZDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "M"):
        # Excel has no time zones: the wall-clock time of the chambers' zone is written
        wall = series.dt.tz_localize(None) if isinstance(dtype, pd.DatetimeTZDtype) else series
        missing = wall.isna().tolist()
        stamps = [None if m else ts.to_pydatetime() for ts, m in zip(wall, missing, strict=True)]
        return ws.write_datetime, stamps, fmt.datetime
    return None, list(series), None


def _write_frame(ws: Any, df: pd.DataFrame, fmt: _Formats) -> None:
    for c, name in enumerate(df.columns):
        ws.write_string(0, c, str(name), fmt.header)
        ws.set_column(c, c, min(max(len(str(name)) + 2, 10), 40))
    plans = [_column_plan(ws, df.iloc[:, c], fmt) for c in range(df.shape[1])]
    # row by row, as a reader fills the sheet: the shared-string table keeps its order
    for r in range(len(df)):
        for c, (write, values, cell_fmt) in enumerate(plans):
            value = values[r]
            if write is None:
                _write_cell(ws, r + 1, c, value, fmt)
            elif value is not None:
                write(r + 1, c, value, cell_fmt)
    ws.freeze_panes(1, 0)


def _usable_sessions(sessions: pd.DataFrame) -> pd.DataFrame:
    keep = pd.Series(True, index=sessions.index)
    for col, want in (("analyzable", True), ("excluded_subject", False)):
        if col in sessions:
            flag = sessions[col].astype("boolean").fillna(not want).astype(bool)
            keep &= flag if want else ~flag
    return sessions[keep]


def _prism_xy(ws: Any, df: pd.DataFrame, value: str, x_label: str, fmt: _Formats) -> None:
    """Write the Prism XY layout: X column, then a data set per group, animals as replicates.

    Row 0 holds the group (Prism data-set title) above each animal's column, row 1 the
    animal; blank cells are missing values.
    """
    wide = (
        df.drop_duplicates(["subject", "day_in_phase"])
        .pivot(index="day_in_phase", columns="subject", values=value)
        .sort_index()
    )
    columns = df[["group", "subject"]].drop_duplicates().sort_values(["group", "subject"])
    ws.write_string(0, 0, "", fmt.header)
    ws.write_string(1, 0, x_label, fmt.header)
    for c, (group, subject) in enumerate(columns.itertuples(index=False, name=None), start=1):
        ws.write_string(0, c, str(group), fmt.header)
        ws.write_string(1, c, str(subject), fmt.header)
    by_subject = {s: wide[s].tolist() for s in columns["subject"].unique()}
    for i, day in enumerate(wide.index):
        _write_cell(ws, i + 2, 0, day, fmt)
        for c, subject in enumerate(columns["subject"], start=1):
            _write_cell(ws, i + 2, c, by_subject[subject][i], fmt)
    ws.freeze_panes(2, 1)


def _prism_grouped(ws: Any, tests: pd.DataFrame, lever: str, fmt: _Formats) -> None:
    """Write the Prism grouped layout: rows baseline and test, a data set per group.

    Animals are replicate sub-columns, matched across the two rows (repeated measures).
    """
    df = tests.sort_values(["group", "subject"], kind="stable")
    ws.write_string(0, 0, "", fmt.header)
    ws.write_string(1, 0, "", fmt.header)
    ws.write_string(2, 0, "Extinction baseline")
    ws.write_string(3, 0, "Test")
    for c, row in enumerate(df.itertuples(index=False), start=1):
        ws.write_string(0, c, str(row.group), fmt.header)
        ws.write_string(1, c, str(row.subject), fmt.header)
        _write_cell(ws, 2, c, getattr(row, f"baseline_{lever}"), fmt)
        _write_cell(ws, 3, c, getattr(row, f"test_{lever}"), fmt)
    ws.set_column(0, 0, 20)
    ws.freeze_panes(2, 1)


def _prism_sheets(
    tables: Mapping[str, pd.DataFrame],
) -> list[tuple[str, str, Any]]:
    """(sheet title, what it holds, writer) for every Prism-ready sheet the data allow."""
    out: list[tuple[str, str, Any]] = []
    sessions = tables.get("sessions")
    need = {"subject", "group", "phase", "day_in_phase"}
    if sessions is not None and not sessions.empty and need <= set(sessions.columns):
        usable = _usable_sessions(sessions)
        for phase, short in (("acquisition", "acq"), ("extinction", "ext")):
            ph = measures.phase_curve(usable, phase)
            if ph.empty:
                continue
            for value in ("active", "inactive", "reinforcers", "intake_mg_kg"):
                if value not in ph or ph[value].isna().all():
                    continue
                if phase == "extinction" and value in ("reinforcers", "intake_mg_kg"):
                    continue
                label = _MEASURE_WORDS.get(value, value)
                out.append(
                    (
                        f"Prism {short} {value}",
                        f"Prism XY table: {phase} day x group, animals as replicates; {label}",
                        lambda ws, f, ph=ph, value=value: _prism_xy(ws, ph, value, "Day", f),
                    )
                )
    tests = tables.get("tests")
    if tests is not None and not tests.empty and {"test", "group", "subject"} <= set(tests):
        inc = tests
        if "included" in tests:
            inc = tests[tests["included"].astype("boolean").fillna(False).astype(bool)]
        for test in _test_sort(inc["test"].dropna().astype(str).unique()):
            one = inc[inc["test"] == test]
            for lever in ("active", "inactive"):
                if f"baseline_{lever}" not in one or f"test_{lever}" not in one:
                    continue
                out.append(
                    (
                        f"Prism {test} {lever}",
                        f"Prism grouped table: baseline/test x group, animals as replicates; "
                        f"{_test_words(test)} test, {lever} lever presses",
                        lambda ws, f, one=one, lever=lever: _prism_grouped(ws, one, lever, f),
                    )
                )
    return out


def _write_xlsx(
    path: Path, tables: Mapping[str, pd.DataFrame], context: ReportContext | None
) -> list[Path]:
    buf = io.BytesIO()
    wb = xlsxwriter.Workbook(
        buf,
        {
            "in_memory": True,
            "strings_to_formulas": False,
            "strings_to_urls": False,
            "strings_to_numbers": False,
            "nan_inf_to_errors": False,
        },
    )
    wb.set_properties(
        {
            "title": f"labpipe tables: {context.experiment}" if context else "labpipe tables",
            "creator": "labpipe",
            "created": _XLSX_CREATED,
        }
    )
    fmt = _Formats(wb)
    used: set[str] = set()
    readme = wb.add_worksheet(_sheet_name("README", used))
    plan: list[tuple[str, str, Any]] = []
    for name, df in _ordered(tables):
        plan.append((name, _TABLE_TITLES.get(name, "labpipe table"), df))
    prism = _prism_sheets(tables)
    lines: list[tuple[str, str]] = [("labpipe tables", "")]
    if context is not None:
        lines += [
            ("experiment", context.experiment),
            ("labpipe version", context.labpipe_version),
            ("config fingerprint", context.config_fingerprint),
            ("raw files", str(context.raw_file_count)),
        ]
    tz = context.timezone if context else "the experiment's time zone"
    lines += [
        ("times", f"Date-times are wall-clock times in {tz} (Excel has no time zones)."),
        ("missing", "Blank cells are missing values."),
        ("", ""),
        ("sheet", "holds"),
    ]
    sheets: list[tuple[str, str, Any, bool]] = []
    for name, title, df in plan:
        sheets.append((_sheet_name(name, used), title, df, False))
    for title, what, writer in prism:
        sheets.append((_sheet_name(title, used), what, writer, True))
    lines += [(sheet, what) for sheet, what, _, _ in sheets]
    for r, (key, value) in enumerate(lines):
        ws_fmt = fmt.header if r == 0 or key == "sheet" else None
        readme.write_string(r, 0, key, ws_fmt)
        readme.write_string(r, 1, value, fmt.wrap if value else None)
    readme.set_column(0, 0, 22)
    readme.set_column(1, 1, 90)
    for sheet, _, payload, is_prism in sheets:
        ws = wb.add_worksheet(sheet)
        if is_prism:
            payload(ws, fmt)
        else:
            _write_frame(ws, payload, fmt)
    wb.close()
    fsio.write_bytes(path, buf.getvalue())
    return [path]


# ---------------------------------------------------------------------------- words


def _test_sort(tests: Iterable[str]) -> list[str]:
    tests = set(tests)
    return [t for t in _TEST_ORDER if t in tests] + sorted(t for t in tests if t not in _TEST_ORDER)


def _test_words(test: Any) -> str:
    if _is_missing(test):
        return ""
    return _TEST_WORDS.get(str(test), str(test).replace("_", " "))


def _words(code: Any) -> str:
    """Return a snake_case code in words (``mixed_anova`` -> ``mixed anova``)."""
    if _is_missing(code):
        return ""
    return str(code).replace("_", " ")


def _analysis_words(code: Any) -> str:
    if _is_missing(code):
        return ""
    return _ANALYSIS_WORDS.get(str(code).lower(), _words(code))


def _effect_words(code: Any) -> str:
    """Return an effect in words; interactions (``group * day_in_phase``) term by term."""
    if _is_missing(code):
        return ""
    terms = re.split(r"\s*(?:\*|:| x )\s*", str(code))
    return " × ".join(_EFFECT_WORDS.get(t.lower(), t.replace("_", " ")) for t in terms)


def _sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fmt_num(value: Any, decimals: int = 2) -> str:
    if _is_missing(value):
        return ""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return ""
    return f"{x:.{decimals}f}"


def _fmt_df(value: Any) -> str:
    """Degrees of freedom: integers without decimals, corrected df with two (APA)."""
    if _is_missing(value):
        return ""
    x = float(value)
    if not math.isfinite(x):
        return ""
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.2f}"


def _fmt_p(value: Any) -> str:
    """Format p to three decimals without the leading zero; ``< .001`` below (APA)."""
    if _is_missing(value):
        return ""
    x = float(value)
    if not math.isfinite(x):
        return ""
    if x < 0.001:
        return "< .001"
    return f"{x:.3f}".replace("0.", ".", 1) if x < 1 else "1.000"


def _fmt_es(value: Any, kind: Any) -> str:
    if _is_missing(value):
        return ""
    words = _EFFECT_SIZE_WORDS.get(str(kind), _words(kind)) if not _is_missing(kind) else ""
    return f"{words} = {float(value):.2f}".strip(" =") if words else f"{float(value):.2f}"


def _fmt_int(value: Any) -> str:
    return "" if _is_missing(value) else f"{int(value)}"


def _fmt_text(value: Any) -> str:
    return "" if _is_missing(value) else _as_text(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _stats_rows(stats: pd.DataFrame | None) -> list[dict[str, str]]:
    if stats is None or stats.empty:
        return []
    rows = []
    for rec in stats.to_dict("records"):
        rows.append(
            {
                "phase": _fmt_text(rec.get("phase")),
                "test": _fmt_text(rec.get("test")),
                "test_words": _test_words(rec.get("test")),
                "analysis": _analysis_words(rec.get("analysis")),
                "analysis_cap": _sentence_case(_analysis_words(rec.get("analysis"))),
                "measure": _MEASURE_WORDS.get(str(rec.get("measure")), _words(rec.get("measure"))),
                "effect": _effect_words(rec.get("effect")),
                "df1": _fmt_df(rec.get("df1")),
                "df2": _fmt_df(rec.get("df2")),
                "statistic": _fmt_num(rec.get("statistic")),
                "p": _fmt_p(rec.get("p")),
                "p_adjusted": _fmt_p(rec.get("p_adjusted")),
                "effect_size": _fmt_es(rec.get("effect_size"), rec.get("effect_size_kind")),
                "n": _fmt_int(rec.get("n_subjects")),
                "n_excluded": _fmt_int(rec.get("n_excluded")),
                "warnings": _fmt_text(rec.get("warnings")),
                "sentence": _fmt_text(rec.get("sentence")),
            }
        )
    return rows


def _group_counts(subjects: pd.DataFrame | None) -> list[tuple[str, int]]:
    if subjects is None or subjects.empty or "group" not in subjects:
        return []
    counts = subjects.groupby(subjects["group"].astype(str))["subject"].nunique()
    return [(str(g), int(n)) for g, n in counts.sort_index().items()]


def _excluded_list(subjects: pd.DataFrame | None) -> list[tuple[str, str]]:
    if subjects is None or subjects.empty or "excluded" not in subjects:
        return []
    ex = subjects[subjects["excluded"].astype("boolean").fillna(False).astype(bool)]
    reason = ex["exclusion_reason"] if "exclusion_reason" in ex else pd.Series("", index=ex.index)
    return [
        (str(s), _fmt_text(r) or "no reason given")
        for s, r in zip(ex["subject"], reason, strict=True)
    ]


def _methods(tables: Mapping[str, pd.DataFrame], ctx: ReportContext) -> list[tuple[str, str]]:
    """Return the methods and results in words: (heading, paragraph) pairs, plain text."""
    subjects = tables.get("subjects")
    sessions = tables.get("sessions")
    stats = tables.get("stats")
    out: list[tuple[str, str]] = []
    groups = _group_counts(subjects)
    n_total = sum(n for _, n in groups)
    if n_total:
        by_group = "; ".join(f"{g}: n = {n}" for g, n in groups)
        text = f"{n_total} rats entered the experiment ({by_group})."
        if subjects is not None and "sex" in subjects:
            sexes = subjects["sex"].astype(str).value_counts()
            f, m = int(sexes.get("F", 0)), int(sexes.get("M", 0))
            text += f" {f} were female and {m} male."
        excluded = _excluded_list(subjects)
        if excluded:
            text += (
                f" {_plural(len(excluded), 'rat')} {'was' if len(excluded) == 1 else 'were'} "
                "excluded: " + "; ".join(f"{s} ({r})" for s, r in excluded) + "."
            )
        else:
            text += " No rat was excluded."
        out.append(("Subjects", text))
    if ctx.drug:
        dose = (
            f" at {ctx.dose_mg_per_kg:g} mg/kg per infusion"
            if ctx.dose_mg_per_kg is not None
            else ""
        )
        text = f"Rats self-administered {ctx.drug} intravenously{dose}."
        if ctx.dose_mg_per_kg is not None:
            text += " Intake per session is reinforcers × dose."
        out.append(("Drug", text))
    if sessions is not None and not sessions.empty and "phase" in sessions:
        counts = sessions["phase"].astype(str).value_counts()
        parts = [_plural(int(counts[p]), f"{p} session") for p in _PHASES if int(counts.get(p, 0))]
        text = "The analysis used " + ", ".join(parts) + "."
        if "analyzable" in sessions:
            bad = int((~sessions["analyzable"].astype("boolean").fillna(True)).sum())
            if bad:
                text += (
                    f" {_plural(bad, 'session')} flagged by quality checks (e.g. aborted "
                    "sessions, equipment or catheter failure) "
                    f"{'was' if bad == 1 else 'were'} left out of means and statistics."
                )
        tz_note = " (the computer's zone; none was configured)" if ctx.timezone_is_default else ""
        text += f" Session times are in {ctx.timezone}{tz_note}."
        out.append(("Sessions", text))
    if ctx.criteria:
        out.append(("Criteria", " ".join(ctx.criteria)))
    settings = dict(ctx.settings)
    baseline_n = settings.get("baseline_sessions")
    measure_text = []
    if baseline_n is not None:
        measure_text.append(
            "The baseline of each reinstatement test is the mean number of active lever "
            f"presses in the {baseline_n} extinction sessions just before it; test responding "
            "is also given as a percentage of that baseline."
        )
    if sessions is not None and "re_extinction" in sessions:
        n_re = int(sessions["re_extinction"].astype("boolean").fillna(False).sum())
        if n_re:
            measure_text.append(
                f"{_plural(n_re, 'extinction session')} after an animal's first reinstatement "
                f"test (re-extinction between tests) {'gives' if n_re == 1 else 'give'} the "
                "next test's baseline; the extinction criterion, figures and statistics use "
                "the first extinction run."
            )
    if settings.get("time_bin_minutes") is not None:
        measure_text.append(
            f"Within-session time courses use {settings['time_bin_minutes']}-min bins."
        )
    if measure_text:
        out.append(("Measures", " ".join(measure_text)))
    rows = _stats_rows(stats)
    if rows:
        analyses = sorted({r["analysis"] for r in rows if r["analysis"]})
        factors = ", ".join(ctx.factors) if ctx.factors else "none"
        text = (
            f"Between-subject factors: {factors}. Analyses: {', '.join(analyses)}. "
            "Each analysis states how many animals it used; degrees of freedom corrected for "
            "sphericity are given with two decimals, p values as exact values to three "
            "decimals (p < .001 below that), with the effect size."
        )
        out.append(("Statistics", text))
        for phase in [*_PHASES, *sorted({r["phase"] for r in rows} - set(_PHASES))]:
            mine = [r for r in rows if r["phase"] == phase]
            if not mine:
                continue
            sentences = []
            for r in mine:
                where = f"{r['test_words']} test, " if r["test"] else ""
                n = f"; n = {r['n']}" if r["n"] else ""
                if r["n_excluded"] and r["n_excluded"] != "0":
                    n += f", {r['n_excluded']} excluded"
                result = r["sentence"] or _fallback_sentence(r)
                sentences.append(
                    _sentence_case(
                        f"{where}{r['analysis']} on {r['measure']}, {r['effect']}: {result}{n}."
                    )
                )
                if r["warnings"]:
                    sentences.append(f"(Note: {r['warnings']}.)")
            out.append((f"Results: {_PHASE_WORDS.get(phase, phase)}", " ".join(sentences)))
    out.append(
        (
            "Software",
            f"Data were processed with labpipe {ctx.labpipe_version or '(unknown version)'}"
            + "".join(f", {lib} {v}" for lib, v in _library_versions())
            + ". Figures show mean ± SEM (SD/√n) across animals. In the CSV tables, text cells "
            "that begin with =, +, -, @, a tab or a carriage return start with an apostrophe "
            "so that spreadsheets do not read them as formulas; numeric columns are unchanged.",
        )
    )
    return out


def _fallback_sentence(r: Mapping[str, str]) -> str:
    stat = r["statistic"]
    df = ", ".join(x for x in (r["df1"], r["df2"]) if x)
    p = r["p_adjusted"] or r["p"]
    p_txt = f"p {p}" if p.startswith("<") else f"p = {p}"
    es = f", {r['effect_size']}" if r["effect_size"] else ""
    return f"statistic({df}) = {stat}, {p_txt}{es}"


def _library_versions() -> list[tuple[str, str]]:
    out = []
    for lib in _LIBRARIES:
        try:
            out.append((lib, importlib.metadata.version(lib)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


#: What could turn text into markup or a link in a Markdown viewer: backslash, backtick,
#: asterisk, brackets, "<" opening a tag, "&" opening an entity. "p < .001" stays as is.
_MD_SPECIAL = re.compile(r"[\\`*\[\]]|<(?=[A-Za-z/!?])|&(?=#?[A-Za-z0-9]+;)")


def _md(text: str) -> str:
    """Escape Markdown/HTML punctuation so names from raw files render as literal text."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def _methods_markdown(ctx: ReportContext, paragraphs: Sequence[tuple[str, str]]) -> str:
    lines = [f"# Methods and results: {_md(ctx.experiment)}", ""]
    lines.append(
        "Written by labpipe from the analysis tables; adapt the wording for a paper. "
        "The numbers are those of `tables/stats.csv`."
    )
    lines.append("")
    for heading, text in paragraphs:
        lines += [f"## {_md(heading)}", "", _md(text), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- HTML


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("labpipe", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        num=_fmt_num, p=_fmt_p, df=_fmt_df, int=_fmt_int, text=_fmt_text, test=_test_words
    )
    return env


def _records(df: pd.DataFrame | None, columns: Sequence[str]) -> list[dict[str, Any]]:
    if df is None or df.empty:
        return []
    present = [c for c in columns if c in df.columns]
    recs = df[present].to_dict("records")
    return [{c: r.get(c) for c in columns} for r in recs]


def _animal_rows(subjects: pd.DataFrame | None) -> list[dict[str, str]]:
    rows = []
    for r in _records(
        subjects,
        [
            "subject",
            "sex",
            "group",
            "cohort",
            "active_lever",
            "n_acquisition",
            "acquisition_met",
            "acquisition_session",
            "n_extinction",
            "extinction_met",
            "extinction_sessions_to_criterion",
            "n_tests",
            "excluded",
            "exclusion_reason",
        ],
    ):
        acq = "not met"
        if r["acquisition_met"] is True or r["acquisition_met"] is np.True_:
            acq = f"session {_fmt_int(r['acquisition_session'])}".strip()
        elif _is_missing(r["acquisition_met"]):
            acq = ""
        ext = "not met"
        if r["extinction_met"] is True or r["extinction_met"] is np.True_:
            ext = _plural(int(r["extinction_sessions_to_criterion"]), "session")
        elif _is_missing(r["extinction_met"]):
            ext = ""
        excluded = bool(r["excluded"]) if not _is_missing(r["excluded"]) else False
        rows.append(
            {
                "subject": _fmt_text(r["subject"]),
                "sex": {"F": "female", "M": "male"}.get(str(r["sex"]), _fmt_text(r["sex"])),
                "group": _fmt_text(r["group"]),
                "cohort": _fmt_text(r["cohort"]),
                "active_lever": _fmt_text(r["active_lever"]),
                "n_acquisition": _fmt_int(r["n_acquisition"]),
                "acquisition": acq,
                "n_extinction": _fmt_int(r["n_extinction"]),
                "extinction": ext,
                "n_tests": _fmt_int(r["n_tests"]),
                "excluded": excluded,
                "reason": _fmt_text(r["exclusion_reason"]) if excluded else "",
            }
        )
    return rows


def _test_exclusions(tests: pd.DataFrame | None) -> list[dict[str, str]]:
    if tests is None or tests.empty or "included" not in tests:
        return []
    out = tests[~tests["included"].astype("boolean").fillna(True).astype(bool)]
    return [
        {
            "subject": _fmt_text(r["subject"]),
            "test": _test_words(r["test"]),
            "reason": _fmt_text(r.get("exclusion_reason")) or "no reason given",
        }
        for r in _records(out, ["subject", "test", "exclusion_reason"])
    ]


def _flagged_sessions(sessions: pd.DataFrame | None) -> list[dict[str, str]]:
    if sessions is None or sessions.empty or "analyzable" not in sessions:
        return []
    return _session_rows(sessions[~sessions["analyzable"].astype("boolean").fillna(True)])


def _catheter_sessions(sessions: pd.DataFrame | None) -> list[dict[str, str]]:
    if sessions is None or sessions.empty or "flag_catheter_signature" not in sessions:
        return []
    return _session_rows(sessions[sessions["flag_catheter_signature"].astype(bool)])


def _session_rows(chosen: pd.DataFrame) -> list[dict[str, str]]:
    rows = []
    for r in _records(chosen, ["subject", "start", "phase", "test", "day_in_phase", "flags"]):
        start = r["start"]
        rows.append(
            {
                "subject": _fmt_text(r["subject"]),
                "start": ""
                if _is_missing(start)
                else pd.Timestamp(start).strftime("%Y-%m-%d %H:%M"),
                "phase": _fmt_text(r["phase"]),
                "test": _test_words(r["test"]),
                "day": _fmt_int(r["day_in_phase"]),
                "flags": _fmt_text(r["flags"]).replace("_", " "),
            }
        )
    return rows


def _set_aside_rows(aside: pd.DataFrame | None) -> list[dict[str, str]]:
    return [
        {
            "file": _fmt_text(r["file"]),
            "block": "" if _is_missing(r["block"]) else str(int(r["block"]) + 1),
            "subject_raw": _fmt_text(r["subject_raw"]),
            "reason_code": _fmt_text(r["reason_code"]),
            "reason": _fmt_text(r["reason"]),
        }
        for r in _records(aside, ["file", "block", "subject_raw", "reason_code", "reason"])
    ]


def _summary(tables: Mapping[str, pd.DataFrame], ctx: ReportContext) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = [("Experiment", ctx.experiment)]
    if ctx.drug:
        dose = f", {ctx.dose_mg_per_kg:g} mg/kg per infusion" if ctx.dose_mg_per_kg else ""
        items.append(("Drug", f"{ctx.drug}{dose}"))
    groups = _group_counts(tables.get("subjects"))
    if groups:
        items.append(
            (
                "Animals",
                f"{sum(n for _, n in groups)} ("
                + ", ".join(f"{g}: {n}" for g, n in groups)
                + f"); {len(_excluded_list(tables.get('subjects')))} excluded",
            )
        )
    sessions = tables.get("sessions")
    if sessions is not None and not sessions.empty and "phase" in sessions:
        counts = sessions["phase"].astype(str).value_counts()
        items.append(
            (
                "Sessions",
                ", ".join(f"{int(counts.get(p, 0))} {p}" for p in _PHASES),
            )
        )
        if "start" in sessions and sessions["start"].notna().any():
            first = pd.Timestamp(sessions["start"].min()).strftime("%Y-%m-%d")
            last = pd.Timestamp(sessions["start"].max()).strftime("%Y-%m-%d")
            items.append(("Dates", f"{first} to {last}"))
        tests = sessions.loc[sessions["phase"] == "reinstatement", "test"].dropna()
        if "test" in sessions and not tests.empty:
            items.append(
                ("Reinstatement tests", ", ".join(_test_words(t) for t in _test_sort(tests)))
            )
    aside = tables.get("set_aside")
    n_aside = 0 if aside is None else len(aside)
    items.append(
        ("Set aside", f"{n_aside} {'file or session' if n_aside == 1 else 'files or sessions'}")
    )
    tz = ctx.timezone + (
        " (the computer's zone: none configured)" if ctx.timezone_is_default else ""
    )
    items.append(("Time zone", tz))
    if ctx.factors:
        items.append(("Factors", ", ".join(ctx.factors)))
    return items


def _render_html(
    tables: Mapping[str, pd.DataFrame],
    figures: Sequence[FigureInfo],
    ctx: ReportContext,
    paragraphs: Sequence[tuple[str, str]],
    out_dir: Path,
) -> str:
    stats = _stats_rows(tables.get("stats"))
    sections = []
    numbered = {f.key: i for i, f in enumerate(figures, start=1)}
    for phase in ("overview", *_PHASES):
        figs = [f for f in figures if f.phase == phase]
        phase_stats = [s for s in stats if s["phase"] == phase]
        blocks = []
        if phase == "reinstatement":
            tests = _test_sort({s["test"] for s in phase_stats if s["test"]})
            blocks = [
                (f"{_test_words(t).capitalize()} test", [s for s in phase_stats if s["test"] == t])
                for t in tests
            ]
            rest = [s for s in phase_stats if not s["test"]]
            if rest:
                blocks.insert(0, ("All tests", rest))
        elif phase_stats:
            blocks = [("", phase_stats)]
        if figs or blocks:
            sections.append(
                {
                    "id": phase,
                    "title": _PHASE_WORDS[phase],
                    "figures": [
                        {
                            "n": numbered[f.key],
                            "key": f.key,
                            "title": f.title,
                            "caption": f.caption,
                            "svg": f.svg,
                            "max_width": _display_width(f.svg),
                            "files": [
                                (fmt, _relative(p, out_dir)) for fmt, p in sorted(f.paths.items())
                            ],
                        }
                        for f in figs
                    ],
                    "stat_blocks": blocks,
                }
            )
    table_files = [
        (f"{_file_stem(name)}.csv", _TABLE_TITLES.get(name, "")) for name, _ in _ordered(tables)
    ]
    settings = [(str(k), str(v)) for k, v in ctx.settings.items()]
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            csp=_CSP,
            ctx=ctx,
            summary=_summary(tables, ctx),
            animals=_animal_rows(tables.get("subjects")),
            test_exclusions=_test_exclusions(tables.get("tests")),
            flagged=_flagged_sessions(tables.get("sessions")),
            catheter=_catheter_sessions(tables.get("sessions")),
            set_aside=_set_aside_rows(tables.get("set_aside")),
            sections=sections,
            methods=paragraphs,
            table_files=table_files,
            settings=settings,
            libraries=_library_versions(),
            generated_at=ctx.generated_at.isoformat(timespec="seconds")
            if ctx.generated_at
            else None,
        )
    )


def _display_width(svg: str) -> int:
    """Return the widest a figure is drawn on screen, in CSS px: 1.5 x its print width.

    A single-column figure stretched to a wide screen would show 7-pt text at 20 pt.
    """
    found = re.search(r'<svg[^>]*\swidth="([0-9.]+)pt"', svg)
    points = float(found.group(1)) if found else 504.0
    return round(points * 4 / 3 * 1.5)


def _relative(path: Path, root: Path) -> str:
    """Return a figure file's path relative to the report folder (``figures/x.svg``)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return f"figures/{path.name}"
