"""Publication figures from labpipe's tidy tables.

The only module that imports matplotlib and seaborn. Figures are built on
``matplotlib.figure.Figure`` with the Agg canvas (never pyplot, so no global backend
and no figure manager), styled inside :func:`style` (an ``rc_context``: nothing global
changes at import), and saved as SVG, PDF and 300-dpi PNG through labpipe's atomic writes.

Conventions (domain research, section 5):

* mean +/- SEM per group; every animal's points where the figure is about animals;
* active lever: filled marker, solid line; inactive lever: open marker, dashed line, so
  the figure survives greyscale; groups differ by colour *and* marker;
* seaborn's ``colorblind`` palette in a fixed group order shared by every figure;
* n per group in the legend (or under the group's name on the axis);
* journal widths: 3.5 in (single column) or 7 in (double column), 7-8 pt sans-serif;
* text stays text: ``pdf.fonttype`` 42 (TrueType embedded), ``svg.fonttype`` ``none``;
* identical bytes for identical input: fixed ``svg.hashsalt`` (one per figure, so the
  ids of figures inlined in one HTML page never clash), no dates in SVG/PDF metadata,
  no random jitter (ties are spread by rank).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from labpipe import fsio, measures

__all__ = ["FORMATS", "FigureInfo", "make_figures", "style"]

#: Every figure is written in these formats, in this order.
FORMATS: tuple[str, ...] = ("svg", "pdf", "png")

SINGLE_COLUMN_IN = 3.5
DOUBLE_COLUMN_IN = 7.0
PNG_DPI = 300

_RC: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": ["Arial", "Helvetica", "Liberation Sans", "Nimbus Sans", "DejaVu Sans"],
    "font.size": 7.5,
    "axes.titlesize": 8,
    "axes.labelsize": 7.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 3,
    "ytick.major.size": 3,
    "lines.linewidth": 1.0,
    "lines.markersize": 4,
    "errorbar.capsize": 1.5,
    "figure.dpi": 100,
    "savefig.dpi": PNG_DPI,
    "savefig.transparent": False,
    "savefig.facecolor": "white",
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "svg.hashsalt": "labpipe",
    "path.simplify": False,
    "axes.unicode_minus": True,
}

_METADATA: dict[str, dict[str, Any]] = {
    "svg": {"Date": None},
    "pdf": {"CreationDate": None, "ModDate": None},
    "png": {},
}

_TEST_WORDS = {"cue": "Cue", "drug_prime": "Drug prime", "stress": "Stress"}
_TEST_ORDER = ("cue", "drug_prime", "stress")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
_PHASE_WORDS = {
    "acquisition": "Acquisition",
    "extinction": "Extinction",
    "reinstatement": "Reinstatement tests",
}
_INACTIVE_GREY = "0.45"


@dataclass(frozen=True, slots=True)
class FigureInfo:
    """One figure as written to disk.

    Attributes
    ----------
    key
        File stem and stable identifier (``timeline``, ``reinstatement``, ...).
    title
        A short title in words.
    caption
        The legend a paper would print: what is plotted, error bars, n, exclusions.
    phase
        Report section: ``overview``, ``acquisition``, ``extinction`` or ``reinstatement``.
    paths
        Format (``svg``, ``pdf``, ``png``) -> written file.
    svg
        The SVG markup ready to inline in HTML (no XML prologue or DOCTYPE). Text in it
        is escaped by matplotlib.
    """

    key: str
    title: str
    caption: str
    phase: str
    paths: Mapping[str, Path]
    svg: str


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply labpipe's figure style for the duration of a ``with`` block.

    Yields
    ------
    None
        Inside the block, rcParams hold the style; they are restored afterwards.
    """
    with mpl.rc_context(_RC):
        yield


def make_figures(
    tables: Mapping[str, pd.DataFrame],
    events: pd.DataFrame,
    *,
    out_dir: Path,
    group_order: Sequence[str] | None = None,
    cumulative_sessions: Sequence[str] | None = None,
) -> list[FigureInfo]:
    """Draw every figure the data allow and write each as SVG, PDF and PNG.

    Parameters
    ----------
    tables
        labpipe's analysis tables; used here: ``sessions``, ``time_bins``, ``subjects``,
        ``tests``. A missing or empty table skips the figures built on it.
    events
        ``session_id, t_s, event`` rows, for cumulative records.
    out_dir
        Folder for the files (created when missing); each figure is ``<key>.<format>``.
    group_order
        Groups in legend and colour order. Default: sorted group names found in the data.
        The same order gives every group the same colour in every figure.
    cumulative_sessions
        Session ids to draw as cumulative records. Default: for each group, the animal
        with the median acquisition reinforcers, its first and last acquisition session.

    Returns
    -------
    list of FigureInfo
        In report order: ``timeline``, ``intake``, ``cumulative_records``, ``criteria``,
        ``reinstatement``, ``time_course``; a figure without data is left out.

    Notes
    -----
    Only analyzable sessions of animals not excluded are drawn; reinstatement tests use
    the ``tests`` rows with ``included`` true. Means and SEMs are computed across animals
    (SEM = SD / sqrt(n), ddof 1; no error bar where n = 1).
    """
    sessions = _usable_sessions(tables.get("sessions"))
    groups = _group_order(group_order, tables)
    palette = _palette(groups)
    builders = (
        lambda: _timeline(sessions, groups, palette),
        lambda: _intake(sessions, groups, palette),
        lambda: _cumulative(sessions, events, groups, palette, cumulative_sessions),
        lambda: _criteria(tables.get("subjects"), groups, palette),
        lambda: _reinstatement(tables.get("tests"), groups, palette),
        lambda: _time_course(tables.get("time_bins"), sessions, groups, palette),
    )
    out: list[FigureInfo] = []
    for build in builders:
        with style():
            drawn = build()
            if drawn is None:
                continue
            fig, key, title, caption, phase = drawn
            out.append(_save(fig, key, title, caption, phase, out_dir))
    return out


# ---------------------------------------------------------------------------- helpers


def _text(value: object) -> str:
    """Return ``value`` as literal text: a ``$`` would otherwise start mathtext."""
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    text = text.replace("$", r"\$")
    # a legend label starting with "_" is hidden by matplotlib
    return "\u200b" + text if text.startswith("_") else text


def _test_words(test: str) -> str:
    return _TEST_WORDS.get(test, str(test).replace("_", " ").capitalize())


def _test_sort(tests: Sequence[str]) -> list[str]:
    known = [t for t in _TEST_ORDER if t in tests]
    return known + sorted(t for t in set(tests) if t not in _TEST_ORDER)


def _bool(col: pd.Series) -> pd.Series:
    return col.astype("boolean").fillna(False).astype(bool)


def _usable_sessions(sessions: pd.DataFrame | None) -> pd.DataFrame:
    if sessions is None or sessions.empty:
        return pd.DataFrame(columns=["session_id", "subject", "group", "phase", "test"])
    keep = pd.Series(True, index=sessions.index)
    if "analyzable" in sessions:
        keep &= _bool(sessions["analyzable"])
    if "excluded_subject" in sessions:
        keep &= ~_bool(sessions["excluded_subject"])
    return sessions[keep].copy()


def _group_order(order: Sequence[str] | None, tables: Mapping[str, pd.DataFrame]) -> list[str]:
    found: set[str] = set()
    for name in ("sessions", "subjects", "tests"):
        df = tables.get(name)
        if df is not None and "group" in df:
            found |= {str(g) for g in df["group"].dropna().unique()}
    if order is None:
        return sorted(found)
    listed = [str(g) for g in order]
    return listed + sorted(found - set(listed))


def _palette(groups: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    colours = sns.color_palette("colorblind", n_colors=10)
    return {g: tuple(colours[i % len(colours)]) for i, g in enumerate(groups)}


def _marker(groups: Sequence[str], group: str) -> str:
    return _MARKERS[list(groups).index(group) % len(_MARKERS)]


def _mean_sem(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Mean, SEM (ddof 1) and n of ``value`` per ``by`` (rows with a value only)."""
    vals = df[by + [value]].copy()
    vals[value] = pd.to_numeric(vals[value], errors="coerce").astype("float64")
    vals = vals.dropna(subset=[value])
    if vals.empty:
        return pd.DataFrame(columns=by + ["mean", "sem", "n"])
    agg = vals.groupby(by, sort=True, observed=True)[value].agg(["mean", "std", "count"])
    agg = agg.reset_index().rename(columns={"count": "n"})
    agg["sem"] = agg["std"] / np.sqrt(agg["n"])
    return agg.drop(columns="std")


def _errorbar(ax: Axes, x: Any, agg: pd.DataFrame, **kw: Any) -> None:
    """Draw mean +/- SEM; where SEM is undefined (n = 1) the point has no bar."""
    yerr = agg["sem"].to_numpy(dtype=float)
    yerr = np.where(np.isfinite(yerr), yerr, 0.0)
    ax.errorbar(x, agg["mean"].to_numpy(dtype=float), yerr=yerr, **kw)


def _n_per_group(df: pd.DataFrame) -> dict[str, int]:
    if df.empty:
        return {}
    return {
        str(g): int(n) for g, n in df.groupby("group", observed=True)["subject"].nunique().items()
    }


def _tick_label(group: str, n: int) -> str:
    """Group name wrapped to short lines (long names would run into the next tick), then n."""
    lines = textwrap.wrap(str(group), width=11, break_long_words=True) or [""]
    return "\n".join(_text(line) for line in lines) + f"\n(n = {n})"


def _group_label(group: str, n: int | None) -> str:
    return _text(group) if n is None else f"{_text(group)} (n = {n})"


def _spread(values: np.ndarray, y_span: float, step: float = 0.07) -> np.ndarray:
    """Horizontal offsets so that points with close values sit side by side.

    A deterministic beeswarm: points are placed in value order at the offset nearest the
    centre (0, +step, -step, +2 step, ...) that keeps them at least 4% of ``y_span``
    away from every point already placed at that offset.
    """
    vals = values.astype(float)
    offsets = np.zeros(len(vals))
    near = 0.04 * y_span if y_span > 0 else 0.0
    placed_x = np.empty(len(vals))
    placed_y = np.empty(len(vals))
    n_placed = 0
    candidates = [0.0] + [s * k * step for k in range(1, 6) for s in (1, -1)]
    for i in np.argsort(vals, kind="stable"):
        if not np.isfinite(vals[i]):
            continue
        # offsets of the placed points whose values are too close to this one
        close = placed_x[:n_placed][np.abs(vals[i] - placed_y[:n_placed]) < near]
        for dx in candidates:
            if not np.any(np.abs(dx - close) <= step / 2):
                break
        offsets[i] = dx
        placed_x[n_placed], placed_y[n_placed] = dx, vals[i]
        n_placed += 1
    return offsets


def _lever_handles() -> list[Line2D]:
    return [
        Line2D([], [], color="0.2", marker="o", linestyle="-", label="Active lever"),
        Line2D(
            [],
            [],
            color="0.2",
            marker="o",
            markerfacecolor="white",
            linestyle="--",
            label="Inactive lever",
        ),
    ]


def _group_handles(
    groups: Sequence[str], palette: Mapping[str, Any], n: Mapping[str, int]
) -> list[Line2D]:
    return [
        Line2D(
            [],
            [],
            color=palette[g],
            marker=_marker(groups, g),
            linestyle="-",
            label=_group_label(g, n.get(g)),
        )
        for g in groups
        if g in n
    ]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(w_pad=0.03, h_pad=0.03, wspace=0.04, hspace=0.06)
    return fig


def _save(fig: Figure, key: str, title: str, caption: str, phase: str, out_dir: Path) -> FigureInfo:
    paths: dict[str, Path] = {}
    svg_text = ""
    # constrained layout once, then frozen: the three formats share one geometry and the
    # layout is not recomputed per format
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    # one salt per figure: ids stay stable across runs and unique within the HTML page
    with mpl.rc_context({"svg.hashsalt": f"labpipe-{key}"}):
        for fmt in FORMATS:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=PNG_DPI, metadata=_METADATA[fmt])
            data = buf.getvalue()
            path = out_dir / f"{key}.{fmt}"
            fsio.write_bytes(path, data)
            paths[fmt] = path
            if fmt == "svg":
                svg_text = data.decode("utf-8")
    return FigureInfo(
        key=key, title=title, caption=caption, phase=phase, paths=paths, svg=_inline(svg_text, key)
    )


def _inline(svg: str, key: str) -> str:
    """Return SVG markup for inlining in HTML: no prologue, ids prefixed with ``key``.

    matplotlib numbers its element ids per figure (``figure_1``, ``axes_1``), so several
    figures in one page would repeat them. Text content cannot match these patterns:
    matplotlib escapes ``"`` in text as ``&quot;``.
    """
    start = svg.find("<svg")
    body = svg[start:].strip() if start >= 0 else svg
    body = re.sub(r'\bid="([^"]+)"', rf'id="{key}-\1"', body)
    body = re.sub(r'href="#([^"]+)"', rf'href="#{key}-\1"', body)
    return re.sub(r'"url\(#([^)"]+)\)"', rf'"url(#{key}-\1)"', body)


def _days_with_enough_animals(agg: pd.DataFrame, n_group: Mapping[str, int]) -> pd.DataFrame:
    """Keep days on which at least half of the group's animals (and 2) contribute."""
    need = agg["group"].map(lambda g: max(2, math.ceil(n_group.get(g, 0) / 2)))
    return agg[agg["n"] >= need]


# ---------------------------------------------------------------------------- figures

_Drawn = tuple[Figure, str, str, str, str] | None


def _timeline(sessions: pd.DataFrame, groups: list[str], palette: dict[str, Any]) -> _Drawn:
    need = {"phase", "day_in_phase", "active", "inactive", "group", "subject"}
    if sessions.empty or not need <= set(sessions.columns):
        return None
    n_group = _n_per_group(sessions)
    fig = _new_figure(DOUBLE_COLUMN_IN, 2.7)
    ax = fig.add_subplot()
    gap = 2.0
    x0 = 0.0
    segments: list[tuple[str, float, float]] = []
    ticks: list[float] = []
    labels: list[str] = []
    dropped = False
    for phase in ("acquisition", "extinction"):
        ph = measures.phase_curve(sessions, phase)
        if ph.empty:
            continue
        frames = {
            lever: _mean_sem(ph, ["group", "day_in_phase"], lever)
            for lever in ("active", "inactive")
        }
        shown = {lev: _days_with_enough_animals(a, n_group) for lev, a in frames.items()}
        dropped |= len(shown["active"]) < len(frames["active"])
        if shown["active"].empty:
            continue
        last_day = int(shown["active"]["day_in_phase"].max())
        for g in groups:
            for lever, agg in shown.items():
                sub = agg[agg["group"] == g].sort_values("day_in_phase")
                if sub.empty:
                    continue
                active = lever == "active"
                _errorbar(
                    ax,
                    x0 + sub["day_in_phase"].to_numpy(dtype=float),
                    sub,
                    color=palette[g],
                    marker=_marker(groups, g),
                    markerfacecolor=palette[g] if active else "white",
                    linestyle="-" if active else "--",
                    linewidth=1.0 if active else 0.8,
                    elinewidth=0.6,
                    zorder=3 if active else 2,
                )
        segments.append((_PHASE_WORDS[phase], x0 + 0.5, x0 + last_day + 0.5))
        for d in range(1, last_day + 1):
            if d == 1 or d % 5 == 0:
                ticks.append(x0 + d)
                labels.append(str(d))
        x0 += last_day + gap
    tests_col = sessions["test"] if "test" in sessions else pd.Series(pd.NA, index=sessions.index)
    rein = sessions[(sessions["phase"] == "reinstatement") & tests_col.notna()]
    if not rein.empty:
        tests = _test_sort([str(t) for t in rein["test"].unique()])
        start = x0
        for j, test in enumerate(tests):
            xt = x0 + 1 + 2.2 * j
            one = rein[rein["test"] == test]
            k = len(groups)
            for gi, g in enumerate(groups):
                dx = (gi - (k - 1) / 2) * 0.25
                for lever in ("active", "inactive"):
                    agg = _mean_sem(one[one["group"] == g], ["group"], lever)
                    if agg.empty:
                        continue
                    active = lever == "active"
                    _errorbar(
                        ax,
                        [xt + dx],
                        agg,
                        color=palette[g],
                        marker=_marker(groups, g),
                        markerfacecolor=palette[g] if active else "white",
                        linestyle="none",
                        elinewidth=0.6,
                        zorder=3 if active else 2,
                    )
            ticks.append(xt)
            labels.append(_test_words(test).replace(" ", "\n"))
        x0 = start + 1 + 2.2 * (len(tests) - 1)
        segments.append(("Reinstatement tests", start + 0.3, x0 + 0.7))
    if not segments:
        return None
    for i, (name, lo, hi) in enumerate(segments):
        if i:
            ax.axvline(lo - gap / 2 + 0.5, color="0.75", linewidth=0.6, linestyle=":", zorder=0)
        ax.text(
            (lo + hi) / 2,
            1.0,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=7.5,
        )
    ax.set_xticks(ticks, labels)
    ax.set_xlim(0, x0 + 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("Session (day within phase)")
    ax.set_ylabel("Lever presses per session")
    handles = _group_handles(groups, palette, n_group) + _lever_handles()
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    caption = (
        "Active (filled, solid) and inactive (open, dashed) lever presses per session, "
        "mean ± SEM per group, through acquisition, extinction and the reinstatement tests. "
        "Excluded animals and sessions flagged as not analyzable are left out."
    )
    if "re_extinction" in sessions and sessions["re_extinction"].astype("boolean").any():
        caption += (
            " Extinction is the first run: re-extinction sessions between tests (which give "
            "the tests' baselines) are not drawn."
        )
    if dropped:
        caption += (
            " Days on which fewer than half of a group's animals (or fewer than 2) had a "
            "session are not drawn."
        )
    return fig, "timeline", "Acquisition, extinction and reinstatement", caption, "overview"


def _intake(sessions: pd.DataFrame, groups: list[str], palette: dict[str, Any]) -> _Drawn:
    if sessions.empty or "intake_mg_kg" not in sessions:
        return None
    acq = sessions[sessions["phase"] == "acquisition"].copy()
    acq["intake_mg_kg"] = pd.to_numeric(acq["intake_mg_kg"], errors="coerce").astype("float64")
    acq = acq.dropna(subset=["intake_mg_kg"])
    if acq.empty:
        return None
    n_group = _n_per_group(acq)
    fig = _new_figure(DOUBLE_COLUMN_IN, 2.4)
    ax_day, ax_tot = fig.subplots(1, 2, width_ratios=[2.6, 1])
    daily = _days_with_enough_animals(
        _mean_sem(acq, ["group", "day_in_phase"], "intake_mg_kg"), n_group
    )
    for g in groups:
        sub = daily[daily["group"] == g].sort_values("day_in_phase")
        if sub.empty:
            continue
        _errorbar(
            ax_day,
            sub["day_in_phase"].to_numpy(dtype=float),
            sub,
            color=palette[g],
            marker=_marker(groups, g),
            elinewidth=0.6,
        )
    ax_day.set_xlabel("Acquisition session")
    ax_day.set_ylabel("Intake per session (mg/kg)")
    ax_day.set_ylim(bottom=0)
    ax_day.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    ax_day.legend(handles=_group_handles(groups, palette, n_group), loc="upper left")
    total = acq.groupby(["group", "subject"], observed=True)["intake_mg_kg"].sum().reset_index()
    shown = [g for g in groups if g in set(total["group"])]
    _points_and_mean(ax_tot, total, "intake_mg_kg", shown, groups, palette)
    ax_tot.set_ylabel("Total acquisition intake (mg/kg)")
    ax_tot.set_ylim(bottom=0)
    ax_day.set_title("Per session", loc="left")
    ax_tot.set_title("Per animal", loc="left")
    caption = (
        "Drug intake during acquisition (reinforcers × dose). Left: mean ± SEM per session "
        "and group. Right: each animal's total acquisition intake (points) with the group "
        "mean ± SEM."
    )
    return fig, "intake", "Drug intake during acquisition", caption, "acquisition"


def _points_and_mean(
    ax: Axes,
    df: pd.DataFrame,
    value: str,
    shown: Sequence[str],
    groups: Sequence[str],
    palette: Mapping[str, Any],
    *,
    open_mask: pd.Series | None = None,
) -> None:
    """Each animal as a point over a group mean +/- SEM bar; x tick = group (n)."""
    all_vals = df[value].to_numpy(dtype=float)
    y_span = float(np.nanmax(all_vals)) if np.isfinite(all_vals).any() else 0.0
    for gi, g in enumerate(shown):
        sub = df[df["group"] == g]
        vals = sub[value].to_numpy(dtype=float)
        x = gi + _spread(vals, y_span)
        hollow = (
            open_mask.loc[sub.index].to_numpy(dtype=bool)
            if open_mask is not None
            else np.zeros(len(sub), dtype=bool)
        )
        solid = ~hollow
        agg = _mean_sem(sub[solid] if open_mask is not None else sub, ["group"], value)
        if not agg.empty:
            ax.bar(gi, agg["mean"].iloc[0], width=0.6, color=palette[g], alpha=0.3, zorder=1)
            _errorbar(ax, [gi], agg, color="0.15", linestyle="none", elinewidth=0.8, zorder=4)
        ax.scatter(
            x[solid],
            vals[solid],
            s=9,
            color=palette[g],
            marker=_marker(groups, g),
            edgecolors="white",
            linewidths=0.3,
            zorder=3,
        )
        if hollow.any():
            ax.scatter(
                x[hollow],
                vals[hollow],
                s=9,
                facecolors="white",
                edgecolors=palette[g],
                marker=_marker(groups, g),
                linewidths=0.7,
                zorder=3,
            )
    counts = df.groupby("group", observed=True)["subject"].nunique()
    ax.set_xticks(range(len(shown)), [_tick_label(g, int(counts.get(g, 0))) for g in shown])
    ax.set_xlim(-0.6, len(shown) - 0.4)


def _representative_sessions(sessions: pd.DataFrame, groups: Sequence[str]) -> list[str]:
    acq = sessions[sessions["phase"] == "acquisition"]
    if acq.empty or "reinforcers" not in acq:
        return []
    chosen: list[str] = []
    for g in groups:
        sub = acq[acq["group"] == g]
        if sub.empty:
            continue
        totals = (
            pd.to_numeric(sub["reinforcers"], errors="coerce")
            .astype("float64")
            .groupby(sub["subject"])
            .sum()
            .sort_index()
        )
        ranked = totals.sort_values(kind="stable")
        subject = ranked.index[(len(ranked) - 1) // 2]  # lower median, ties by name
        mine = sub[sub["subject"] == subject].sort_values("day_in_phase")
        ids = [mine["session_id"].iloc[0], mine["session_id"].iloc[-1]]
        chosen += list(dict.fromkeys(ids))
    return chosen


def _cumulative(
    sessions: pd.DataFrame,
    events: pd.DataFrame,
    groups: list[str],
    palette: dict[str, Any],
    chosen: Sequence[str] | None,
) -> _Drawn:
    if sessions.empty or events is None or events.empty:
        return None
    ids = list(chosen) if chosen else _representative_sessions(sessions, groups)
    have = set(events["session_id"].unique())
    meta = sessions.set_index("session_id")
    ids = [s for s in ids if s in have and s in meta.index]
    if not ids:
        return None
    ncol = 2 if len(ids) > 1 else 1
    nrow = math.ceil(len(ids) / ncol)
    width = DOUBLE_COLUMN_IN if ncol > 1 else SINGLE_COLUMN_IN
    fig = _new_figure(width, 0.5 + 1.55 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, sharey=True, squeeze=False)).ravel()
    ev = events[events["session_id"].isin(ids)]
    x_max = 0.0
    for ax, sid in zip(axes, ids, strict=False):
        row = meta.loc[sid]
        colour = palette.get(str(row["group"]), "0.2")
        duration = pd.to_numeric(pd.Series([row.get("duration_min")]), errors="coerce").iloc[0]
        duration = float(duration) if pd.notna(duration) else 0.0
        mine = ev[ev["session_id"] == sid]
        for name, kw in (
            ("inactive_press", {"color": _INACTIVE_GREY, "linestyle": "--", "linewidth": 0.8}),
            ("active_press", {"color": colour, "linestyle": "-", "linewidth": 1.0}),
        ):
            t = np.sort(mine.loc[mine["event"] == name, "t_s"].to_numpy(dtype=float)) / 60
            y = np.arange(1, len(t) + 1)
            end = max(float(t[-1]) if len(t) else 0.0, duration)
            # the record runs flat from the last press to the end of the session
            ax.step(np.r_[0.0, t, end], np.r_[0, y, len(t)], where="post", **kw)
            x_max = max(x_max, end)
            if name == "active_press":
                rt = np.sort(mine.loc[mine["event"] == "reinforcer", "t_s"].to_numpy(float)) / 60
                if len(rt) and len(t):
                    at = np.searchsorted(t, rt, side="right")
                    ax.plot(
                        rt,
                        at,
                        linestyle="none",
                        marker=(2, 0, -45),
                        markersize=3.5,
                        markeredgewidth=0.7,
                        color="0.1",
                    )
        phase = str(row["phase"])
        day = row.get("day_in_phase")
        where = _PHASE_WORDS.get(phase, phase).lower()
        if phase == "reinstatement" and pd.notna(row.get("test")):
            where = f"{_test_words(str(row['test'])).lower()} test"
        elif pd.notna(day):
            where = f"{where} session {int(day)}"
        ax.set_title(f"{_text(row['group'])}: {_text(row['subject'])}, {where}", loc="left")
    for ax in axes[len(ids) :]:
        ax.set_visible(False)
    axes[0].set_xlim(0, x_max if x_max > 0 else 1)
    if x_max >= 60:
        axes[0].xaxis.set_major_locator(mpl.ticker.MultipleLocator(30))
    axes[0].set_ylim(bottom=0)
    fig.supxlabel("Time in session (min)", fontsize=7.5)
    fig.supylabel("Cumulative presses", fontsize=7.5)
    handles = [
        Line2D([], [], color="0.2", linestyle="-", label="Active lever"),
        Line2D([], [], color=_INACTIVE_GREY, linestyle="--", label="Inactive lever"),
        Line2D(
            [],
            [],
            color="0.1",
            linestyle="none",
            marker=(2, 0, -45),
            markersize=4,
            markeredgewidth=0.7,
            label="Reinforcer",
        ),
    ]
    fig.legend(handles=handles, loc="outside upper right", ncols=3)
    caption = (
        "Cumulative records: every active (solid) and inactive (dashed) lever press over "
        "session time; ticks mark reinforcers. "
    )
    caption += (
        "Sessions chosen by the user."
        if chosen
        else "For each group, the animal with the median number of acquisition reinforcers, "
        "first and last acquisition session."
    )
    return fig, "cumulative_records", "Cumulative records", caption, "acquisition"


def _criteria(subjects: pd.DataFrame | None, groups: list[str], palette: dict[str, Any]) -> _Drawn:
    need = {"subject", "group", "extinction_met", "extinction_sessions_to_criterion"}
    if subjects is None or subjects.empty or not need <= set(subjects.columns):
        return None
    subj = subjects.copy()
    if "excluded" in subj:
        subj = subj[~_bool(subj["excluded"])]
    panels: list[tuple[str, str, str, str]] = []
    if {"acquisition_met", "acquisition_session", "n_acquisition"} <= set(subj.columns):
        panels.append(
            ("acquisition_met", "acquisition_session", "n_acquisition", "Acquisition criterion")
        )
    panels.append(
        (
            "extinction_met",
            "extinction_sessions_to_criterion",
            "n_extinction",
            "Extinction criterion",
        )
    )
    frames = []
    for met_col, value_col, run_col, title in panels:
        met = _bool(subj[met_col])
        value = pd.to_numeric(subj[value_col], errors="coerce").astype("float64")
        if run_col in subj:
            ran = pd.to_numeric(subj[run_col], errors="coerce").astype("float64")
            value = value.where(met, ran)
        df = subj[["subject", "group"]].assign(value=value, met=met).dropna(subset=["value"])
        if not df.empty:
            frames.append((df, title))
    if not frames:
        return None
    shown = [g for g in groups if g in set(subj["group"].astype(str))]
    width = SINGLE_COLUMN_IN if len(frames) * len(shown) <= 6 else DOUBLE_COLUMN_IN
    fig = _new_figure(width, 2.5)
    axes = np.atleast_1d(fig.subplots(1, len(frames)))
    any_unmet = False
    for ax, (df, title) in zip(axes, frames, strict=True):
        df = df.reset_index(drop=True)
        _points_and_mean(ax, df, "value", shown, groups, palette, open_mask=~df["met"])
        any_unmet |= bool((~df["met"]).any())
        ax.set_title(title, loc="left")
        ax.set_ylabel("Sessions to criterion")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    if any_unmet:
        fig.legend(
            handles=[
                Line2D([], [], color="0.3", marker="o", linestyle="none", label="Met"),
                Line2D(
                    [],
                    [],
                    color="0.3",
                    marker="o",
                    markerfacecolor="white",
                    linestyle="none",
                    label="Not met (sessions run)",
                ),
            ],
            loc="outside upper right",
            ncols=2,
        )
    caption = (
        "Sessions each animal needed to meet the acquisition and extinction criteria "
        "(points); bars: mean ± SEM of the animals that met it. Open points: criterion not "
        "met, drawn at the number of sessions run. Excluded animals are left out."
    )
    return fig, "criteria", "Sessions to criterion", caption, "extinction"


def _reinstatement(
    tests: pd.DataFrame | None, groups: list[str], palette: dict[str, Any]
) -> _Drawn:
    need = {"test", "group", "subject", "baseline_active", "test_active"}
    if tests is None or tests.empty or not need <= set(tests.columns):
        return None
    df = tests.copy()
    if "included" in df:
        df = df[_bool(df["included"])]
    df = df[df["test"].notna()]
    if df.empty:
        return None
    kinds = _test_sort([str(t) for t in df["test"].unique()])
    levers = [("active", "Active lever presses")]
    if {"baseline_inactive", "test_inactive"} <= set(df.columns):
        levers.append(("inactive", "Inactive lever presses"))
    width = SINGLE_COLUMN_IN if len(kinds) == 1 else DOUBLE_COLUMN_IN
    fig = _new_figure(width, 1.0 + 1.6 * len(levers))
    axes = fig.subplots(len(levers), len(kinds), sharey=True, squeeze=False)
    y_top = 0.0
    for ci, test in enumerate(kinds):
        one = df[df["test"] == test]
        shown = [g for g in groups if g in set(one["group"].astype(str))]
        for ri, (lever, ylabel) in enumerate(levers):
            ax = axes[ri, ci]
            for gi, g in enumerate(shown):
                sub = one[one["group"] == g].sort_values("subject")
                base = pd.to_numeric(sub[f"baseline_{lever}"], errors="coerce").to_numpy(float)
                test_v = pd.to_numeric(sub[f"test_{lever}"], errors="coerce").to_numpy(float)
                xb, xt = gi - 0.2, gi + 0.2
                for k, (x, vals, filled) in enumerate(((xb, base, False), (xt, test_v, True))):
                    agg = _mean_sem(pd.DataFrame({"group": g, "v": vals}), ["group"], "v")
                    if agg.empty:
                        continue
                    y_top = max(
                        y_top,
                        float(np.nanmax(vals)),
                        float(agg["mean"].iloc[0] + np.nan_to_num(agg["sem"].iloc[0])),
                    )
                    ax.bar(
                        x,
                        agg["mean"].iloc[0],
                        width=0.36,
                        color=palette[g] if filled else "white",
                        alpha=0.55 if filled else 1.0,
                        edgecolor=palette[g],
                        linewidth=0.8,
                        zorder=1 + k,
                    )
                    _errorbar(
                        ax, [x], agg, color="0.15", linestyle="none", elinewidth=0.8, zorder=5
                    )
                jitter = np.linspace(-0.06, 0.06, len(sub)) if len(sub) > 1 else np.zeros(1)
                ok = np.flatnonzero(np.isfinite(base) & np.isfinite(test_v))
                if len(ok):
                    _animal_lines(
                        ax, xb + jitter[ok], base[ok], xt + jitter[ok], test_v[ok], groups, g
                    )
            n = one.groupby("group", observed=True)["subject"].nunique()
            ax.set_xticks(range(len(shown)), [_tick_label(g, int(n.get(g, 0))) for g in shown])
            ax.set_xlim(-0.6, len(shown) - 0.4)
            if ci == 0:
                ax.set_ylabel(ylabel)
            if ri == 0:
                ax.set_title(f"{_test_words(test)} test", loc="left")
            if ri < len(levers) - 1:
                ax.tick_params(labelbottom=False)
    # one scale for every panel, set once after drawing (sharey)
    axes[0, 0].set_ylim(0, y_top * 1.05 if y_top > 0 else 1)
    fig.legend(
        handles=[
            Patch(facecolor="white", edgecolor="0.3", linewidth=0.8, label="Extinction baseline"),
            Patch(facecolor="0.55", edgecolor="0.3", linewidth=0.8, label="Test"),
            Line2D(
                [], [], color="0.35", linewidth=0.45, marker="o", markersize=2.4, label="One animal"
            ),
        ],
        loc="outside upper right",
        ncols=3,
    )
    caption = (
        "Lever presses on the extinction baseline (open bars; mean of the extinction "
        "sessions before the test) and on each reinstatement test (filled bars), mean ± SEM "
        "per group; lines join each animal's baseline and test. n under each group; animals "
        "excluded from a test (e.g. catheter failure) are left out of that test. The same "
        "y-axis scale in every panel."
    )
    return fig, "reinstatement", "Reinstatement: baseline vs test", caption, "reinstatement"


def _animal_lines(
    ax: Axes,
    x0: np.ndarray,
    y0: np.ndarray,
    x1: np.ndarray,
    y1: np.ndarray,
    groups: Sequence[str],
    group: str,
) -> None:
    """Join each animal's (x0, y0) and (x1, y1) by a line with a marker at both ends.

    Two artists for all the animals of a group, not one per animal: the segments as one
    collection (each segment still its own path, so crossings blend as separate lines) and
    the end points as one marker-only line. Lines and markers share colour and alpha, so
    the order in which they are painted does not change the picture.
    """
    style: dict[str, Any] = {"color": "0.35", "alpha": 0.85, "zorder": 4}
    segments = np.stack([np.column_stack([x0, y0]), np.column_stack([x1, y1])], axis=1)
    ax.add_collection(
        LineCollection(
            segments,
            linewidths=0.45,
            linestyles="solid",
            capstyle=mpl.rcParams["lines.solid_capstyle"],
            joinstyle=mpl.rcParams["lines.solid_joinstyle"],
            **style,
        ),
        autolim=True,
    )
    ax.plot(
        np.column_stack([x0, x1]).ravel(),
        np.column_stack([y0, y1]).ravel(),
        linestyle="none",
        marker=_marker(groups, group),
        markersize=2.4,
        markerfacecolor="0.35",
        markeredgewidth=0,
        **style,
    )


def _time_course(
    bins: pd.DataFrame | None,
    sessions: pd.DataFrame,
    groups: list[str],
    palette: dict[str, Any],
) -> _Drawn:
    need = {"session_id", "bin_start_min", "bin_end_min", "active"}
    if bins is None or bins.empty or sessions.empty or not need <= set(bins.columns):
        return None
    cols = ["session_id", "subject", "group", "phase", "test", "day_in_phase"]
    meta = sessions[[c for c in cols if c in sessions.columns]]
    df = bins.drop(columns=[c for c in ("subject", "phase", "test") if c in bins.columns])
    df = df.merge(meta, on="session_id", how="inner", validate="many_to_one")
    dropped_partial = False
    if "partial" in df:
        partial = _bool(df["partial"])
        dropped_partial = bool(partial.any())
        df = df[~partial]
    if df.empty:
        return None
    df = df.assign(mid=(df["bin_start_min"].astype(float) + df["bin_end_min"].astype(float)) / 2)
    panels: list[tuple[str, pd.DataFrame]] = []
    acq = df[df["phase"] == "acquisition"]
    if not acq.empty:
        last = acq.groupby("subject")["day_in_phase"].transform("max")
        panels.append(("Acquisition, last session", acq[acq["day_in_phase"] == last]))
    ext = df[(df["phase"] == "extinction") & (df["day_in_phase"] == 1)]
    if not ext.empty:
        panels.append(("Extinction, first session", ext))
    rein = df[(df["phase"] == "reinstatement") & df["test"].notna()]
    for test in _test_sort([str(t) for t in rein["test"].unique()]):
        one = rein[rein["test"] == test]
        # a repeated test type: each animal's first one
        first = one.groupby("subject")["day_in_phase"].transform("min")
        panels.append((f"{_test_words(test)} test", one[one["day_in_phase"] == first]))
    if not panels:
        return None
    widths = df["bin_end_min"].astype(float) - df["bin_start_min"].astype(float)
    bin_words = f"{widths.median():g}-min bin" if widths.nunique() == 1 else "bin"
    width = DOUBLE_COLUMN_IN if len(panels) > 2 else SINGLE_COLUMN_IN
    fig = _new_figure(width, 2.3)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, sharex=True))
    n_max: dict[str, int] = {}
    n_note: list[str] = []
    for ax, (title, pdf_) in zip(axes, panels, strict=True):
        n_here = _n_per_group(pdf_)
        for g, k in n_here.items():
            n_max[g] = max(n_max.get(g, 0), k)
        for g in groups:
            for lever in ("active", "inactive"):
                if lever not in pdf_:
                    continue
                sub = _mean_sem(pdf_[pdf_["group"] == g], ["group", "mid"], lever)
                if sub.empty:
                    continue
                active = lever == "active"
                _errorbar(
                    ax,
                    sub["mid"].to_numpy(dtype=float),
                    sub,
                    color=palette[g],
                    marker=_marker(groups, g),
                    markersize=3,
                    markerfacecolor=palette[g] if active else "white",
                    linestyle="-" if active else "--",
                    linewidth=1.0 if active else 0.7,
                    elinewidth=0.5,
                    zorder=3 if active else 2,
                )
        ax.set_title(title, loc="left", fontsize=7.5)
        n_note.append((title, n_here))
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel(f"Presses per {bin_words}")
    ends = df["bin_end_min"].astype(float)
    axes[0].set_xlim(0, float(ends.max()))
    if float(ends.max()) >= 60:
        axes[0].xaxis.set_major_locator(mpl.ticker.MultipleLocator(30))
    fig.supxlabel("Time in session (min)", fontsize=7.5)
    fig.legend(
        handles=_group_handles(groups, palette, n_max) + _lever_handles(),
        loc="outside upper right",
        ncols=len(n_max) + 2,
    )
    caption = (
        "Presses per time bin within a session, mean ± SEM per group: active (filled, "
        "solid) and inactive (open, dashed) lever."
    )
    if any(n != n_max for _, n in n_note):
        caption += (
            " n per panel: "
            + "; ".join(
                f"{t}: " + ", ".join(f"{g} {n[g]}" for g in groups if g in n) for t, n in n_note
            )
            + "."
        )
    if dropped_partial:
        caption += " Incomplete bins (session ended early) are left out."
    return fig, "time_course", "Within-session time course", caption, "reinstatement"
