"""Phase statistics: mixed ANOVA, linear mixed model, paired and post hoc tests, count model.

:func:`phase_statistics` turns the per-session table and the reinstatement-test table of
:mod:`labpipe.measures` into one tidy table: a row per tested term (or per comparison),
with its degrees of freedom, statistic, p value, effect size, how many animals it used and
dropped, the warnings the libraries raised, and an APA-style sentence.

What runs (``factors`` are the config's between-subject factors, default group and sex):

==============  ==========================================================================
phase           analyses
==============  ==========================================================================
acquisition     active, inactive, reinforcers, intake_mg_kg: mixed ANOVA factor x session,
                per factor and on the combined cell factor (``group × sex``); LMM
                ``measure ~ factors * day_in_phase + (1 | subject)``; NB GEE (counts only)
extinction      the same on active and inactive
reinstatement   per test type, on active and inactive: mixed ANOVA factor x period
                (baseline/test); the LMM with period coded 0/1; paired baseline-vs-test
                t-tests per level of each factor (Holm); post hoc pairwise tests (Holm);
                NB GEE
==============  ==========================================================================

pingouin's ``mixed_anova`` takes one between factor, so with several factors it runs once
per factor and once on the cell factor whose levels are the factor combinations (a
one-way between design over cells: its F tests whether any cell differs, it does not split
main effects from interactions). The LMM and the GEE take all factors at once, fully
crossed.

Every library warning raised inside an analysis is recorded in that row's ``warnings``
column (not printed, not filtered away); deprecation notices about library code
(``DeprecationWarning``, ``FutureWarning``) say nothing about the data and are left out.
An analysis that cannot run (too few animals, one level, a singular fit) gives a row with
the reason in ``warnings`` instead of an exception.

The analyses are independent of each other. With 100 animals or more they run in as many
processes as there are CPUs, this one and worker processes (in one process, the mixed
models of a 500-animal experiment take most of a minute); the table is the same. The
workers are started with ``spawn``, so a script that calls :func:`phase_statistics` (or
``labpipe.pipeline.build_report``) at top level needs the usual
``if __name__ == "__main__":`` guard.

This is the only module of labpipe that imports pingouin and statsmodels.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pingouin as pg
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.regression.mixed_linear_model import MixedLM

from labpipe import measures
from labpipe.errors import ConfigError, InternalError

__all__ = [
    "COLUMNS",
    "POOL_MIN_ANIMALS",
    "format_chi2",
    "format_df",
    "format_f",
    "format_p",
    "format_t",
    "partial_eta_squared",
    "phase_statistics",
    "satterthwaite_anova",
]

#: The columns of the statistics table, in order.
COLUMNS: tuple[str, ...] = (
    "analysis",
    "phase",
    "test",
    "measure",
    "effect",
    "df1",
    "df2",
    "statistic",
    "p",
    "p_adjusted",
    "effect_size",
    "effect_size_kind",
    "n_subjects",
    "n_excluded",
    "warnings",
    "sentence",
    "note",
)

#: Measures analysed per session phase.
SESSION_MEASURES: dict[str, tuple[str, ...]] = {
    "acquisition": ("active", "inactive", "reinforcers", "intake_mg_kg"),
    "extinction": ("active", "inactive"),
}
#: Measures analysed per reinstatement test (``baseline_<m>`` and ``test_<m>`` columns).
TEST_MEASURES: tuple[str, ...] = ("active", "inactive")
#: Measures that are counts (the NB GEE runs on these only).
COUNT_MEASURES: frozenset[str] = frozenset({"active", "inactive", "reinforcers"})
#: Measures a lab may not record (no reinforcer variable, no dose): all-empty means no rows.
OPTIONAL_MEASURES: frozenset[str] = frozenset({"reinforcers", "intake_mg_kg"})
#: MixedLM optimizers, tried in this order (lbfgs often hits a singular Hessian).
OPTIMIZERS: tuple[str, ...] = ("lbfgs", "bfgs", "powell")
#: Convergence tolerances passed to MixedLM.fit per optimizer.
_OPTIMIZER_OPTIONS: dict[str, dict[str, float]] = {
    "lbfgs": {"pgtol": 1e-10, "factr": 10.0},
    "bfgs": {"gtol": 1e-10},
    "powell": {"xtol": 1e-10, "ftol": 1e-12},
}
#: Order in which test types are reported; others follow alphabetically.
TEST_ORDER: tuple[str, ...] = ("cue", "drug_prime", "stress")

_SESSION_COLUMNS = ("subject", "phase", "day_in_phase", "analyzable", "excluded_subject")
_TEST_COLUMNS = ("subject", "test", "included")
_RESERVED = frozenset({"subject", "phase", "test", "day_in_phase", "period", "value", "cell"})
_CELL = "__cell__"
_TIME_SESSION = "day_in_phase"
_TIME_TEST = "period"
#: Warning categories about library code rather than the data.
_LIBRARY_NOTICES = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)


# ---------------------------------------------------------------------------- APA formatting


def _num(x: float, decimals: int = 2) -> str:
    """Format with a leading zero (statistics that can exceed 1: F, t, d, χ²)."""
    return f"{x:.{decimals}f}"


def _no_zero(x: float, decimals: int = 2) -> str:
    """Format without the leading zero (quantities bounded by 1: p, ηp², r)."""
    text = f"{x:.{decimals}f}"
    if text.startswith("0."):
        return text[1:]
    if text.startswith("-0."):
        return "-" + text[2:]
    return text


def _missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _unusable(*values: Any) -> bool:
    """Return True when any value is missing or infinite (no sentence can be written)."""
    return any(_missing(v) or not math.isfinite(float(v)) for v in values)


def format_df(df: float, *, corrected: bool | None = None) -> str:
    """Format degrees of freedom the APA way.

    Parameters
    ----------
    df
        Degrees of freedom.
    corrected
        True for corrected (Greenhouse–Geisser) or Satterthwaite df: always two decimals.
        False: an integer. None: an integer when ``df`` is one (within 1e-9), else two
        decimals.

    Returns
    -------
    str
        ``"44"`` or ``"51.35"``.
    """
    if corrected is None:
        corrected = abs(df - round(df)) > 1e-9
    return f"{df:.2f}" if corrected else f"{round(df):d}"


def format_p(p: float, *, label: str = "p") -> str:
    """Format a p value the APA way: exact to three decimals without the leading zero.

    Parameters
    ----------
    p
        The p value.
    label
        The symbol written before it (``"p"``, ``"p_Holm"``).

    Returns
    -------
    str
        ``"p = .010"``; ``"p < .001"`` below .001 (never ``p = .000``); ``"p > .999"`` when
        it would round to 1.
    """
    if p < 0.001:
        return f"{label} < .001"
    if round(p, 3) >= 1.0:
        return f"{label} > .999"
    return f"{label} = {_no_zero(p, 3)}"


def partial_eta_squared(f: float, df1: float, df2: float) -> float:
    """Return ηp² = F·df1 / (F·df1 + df2) (= SS_effect / (SS_effect + SS_error)).

    Parameters
    ----------
    f, df1, df2
        The F statistic and its uncorrected degrees of freedom.

    Returns
    -------
    float
        Partial eta squared.
    """
    return f * df1 / (f * df1 + df2)


def format_f(
    df1: float,
    df2: float,
    f: float,
    p: float,
    eta_p2: float | None = None,
    *,
    corrected: bool | tuple[bool | None, bool | None] | None = None,
) -> str:
    """Format an F test: ``F(2, 44) = 5.10, p = .010, ηp² = .19``.

    Parameters
    ----------
    df1, df2
        Numerator and denominator degrees of freedom.
    f
        The F statistic.
    p
        Its p value.
    eta_p2
        Partial eta squared, if reported.
    corrected
        Passed to :func:`format_df`: one value for both df (True for Greenhouse–Geisser
        corrected df), or a pair (``(False, True)`` for an integer numerator and a
        Satterthwaite denominator).

    Returns
    -------
    str
        The APA string; empty when ``f`` or ``p`` is missing.
    """
    if _unusable(f, p, df1, df2):
        return ""
    c1, c2 = corrected if isinstance(corrected, tuple) else (corrected, corrected)
    text = (
        f"F({format_df(df1, corrected=c1)}, {format_df(df2, corrected=c2)}) "
        f"= {_num(f)}, {format_p(p)}"
    )
    if not _missing(eta_p2):
        text += f", ηp² = {_no_zero(float(eta_p2))}"  # type: ignore[arg-type]
    return text


def format_t(
    df: float,
    t: float,
    p: float,
    effect_size: float | None = None,
    kind: str = "d_z",
    *,
    p_adjusted: float | None = None,
    adjustment: str = "Holm",
    corrected: bool | None = None,
) -> str:
    """Format a t test: ``t(21) = 5.57, p < .001, d_z = 1.19``.

    Parameters
    ----------
    df
        Degrees of freedom (Welch df are fractional and get two decimals).
    t
        The t statistic.
    p
        The unadjusted p value.
    effect_size
        The effect size, written with its leading zero (d can exceed 1).
    kind
        Its symbol: ``"d_z"``, ``"g"``, ``"d"``.
    p_adjusted
        The adjusted p value, written after the unadjusted one.
    adjustment
        Name of the adjustment, used as ``p_<adjustment>``.
    corrected
        Passed to :func:`format_df`.

    Returns
    -------
    str
        The APA string; empty when ``t`` or ``p`` is missing.
    """
    if _unusable(t, p, df):
        return ""
    text = f"t({format_df(df, corrected=corrected)}) = {_num(t)}, {format_p(p)}"
    if not _missing(p_adjusted):
        text += f", {format_p(float(p_adjusted), label=f'p_{adjustment}')}"  # type: ignore[arg-type]
    if not _missing(effect_size):
        text += f", {kind} = {_num(float(effect_size))}"  # type: ignore[arg-type]
    return text


def format_chi2(df: float, chi2: float, p: float, rate_ratio: float | None = None) -> str:
    """Format a Wald χ² test: ``χ²(1) = 11.48, p < .001, RR = 1.35``.

    Parameters
    ----------
    df
        Degrees of freedom of the test.
    chi2
        The Wald χ² statistic.
    p
        Its p value.
    rate_ratio
        The rate ratio of a 1-df term of a count model, if reported.

    Returns
    -------
    str
        The APA string; empty when ``chi2`` or ``p`` is missing.
    """
    if _unusable(chi2, p, df):
        return ""
    text = f"χ²({format_df(df)}) = {_num(chi2)}, {format_p(p)}"
    if not _missing(rate_ratio):
        text += f", RR = {_num(float(rate_ratio))}"  # type: ignore[arg-type]
    return text


# ---------------------------------------------------------------------------- warnings


class _Caught:
    """Record the warnings raised inside a ``with`` block (none reach the caller)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._cm = warnings.catch_warnings(record=True)
        self._caught: list[warnings.WarningMessage] = []

    def __enter__(self) -> _Caught:
        log = self._cm.__enter__()
        # record=True returns the (empty, hence falsy) list the warnings are appended to.
        self._caught = log if log is not None else []
        warnings.simplefilter("always")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cm.__exit__(exc_type, exc, tb)
        for w in self._caught:
            if issubclass(w.category, _LIBRARY_NOTICES):
                continue
            text = f"{w.category.__name__}: {str(w.message).strip()}"
            if text not in self.messages:
                self.messages.append(text)


def _join(messages: Iterable[str]) -> str:
    out: list[str] = []
    for m in messages:
        if m and m not in out:
            out.append(m)
    return "; ".join(out)


# ---------------------------------------------------------------------------- rows


@dataclass
class _Scope:
    """Where a row belongs and which animals it started from."""

    phase: str
    test: str | None
    measure: str
    #: Every animal seen in this phase/test, mapped to why it was dropped ("" = kept).
    dropped: dict[str, str] = field(default_factory=dict)
    #: Factor values (and the cell) of every animal seen, dropped or not, by subject.
    levels: pd.DataFrame = field(default_factory=pd.DataFrame)

    def row(self, analysis: str, **values: Any) -> dict[str, Any]:
        row: dict[str, Any] = {c: np.nan for c in COLUMNS}
        row.update(
            analysis=analysis,
            phase=self.phase,
            test=self.test,
            measure=self.measure,
            effect=None,
            effect_size_kind=None,
            warnings="",
            sentence="",
            note="",
        )
        row.update(values)
        return row

    def exclusions(
        self,
        used: Iterable[str],
        extra: dict[str, str] | None = None,
        among: Iterable[str] | None = None,
    ) -> tuple[int, str]:
        """Return (n_excluded, note) for an analysis that used the animals ``used``.

        ``extra`` adds reasons of this analysis (listwise deletion); ``among`` restricts the
        count to the animals it could have used (one group's paired test).
        """
        used_set = set(used)
        pool = {**self.dropped, **(extra or {})}
        if among is not None:
            keep = set(among)
            pool = {s: why for s, why in pool.items() if s in keep}
        reasons: dict[str, list[str]] = {}
        for subject, why in pool.items():
            if subject in used_set:
                continue
            reasons.setdefault(why or "not used", []).append(subject)
        n = sum(len(v) for v in reasons.values())
        if not n:
            return 0, ""
        text = "; ".join(f"{why}: {', '.join(sorted(s))}" for why, s in sorted(reasons.items()))
        return n, f"dropped {n} animal{'s' if n != 1 else ''} ({text})"


def _failure(
    scope: _Scope, analysis: str, reason: str, *, n: int, note: str = ""
) -> dict[str, Any]:
    n_excluded, why = scope.exclusions([])
    return scope.row(
        analysis,
        n_subjects=n,
        n_excluded=n_excluded if n == 0 else np.nan,
        warnings=reason,
        note=_join([note, why if n == 0 else ""]),
    )


# ---------------------------------------------------------------------------- design


def _sum_coding(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Sum-to-zero (effects) coding, R's ``contr.sum``: level j -> column j, last level -> -1."""
    levels = sorted(values.unique())
    out = np.zeros((len(values), len(levels) - 1))
    arr = values.to_numpy()
    for j, level in enumerate(levels[:-1]):
        out[arr == level, j] = 1.0
    out[arr == levels[-1], :] = -1.0
    return out, levels


@dataclass
class _Design:
    """A fixed-effects design matrix with the column slice of every term."""

    X: np.ndarray
    terms: dict[str, slice]
    levels: dict[str, list[str]]
    components: dict[str, tuple[str, ...]]


def _design(data: pd.DataFrame, factors: Sequence[str], time: str) -> _Design:
    """Build ``1 + factors * time`` with sum-coded factors and a numeric time column.

    Terms are ordered as R orders them: main effects, then two-way interactions, ...; a
    term's columns are the row-wise products of its components' columns.
    """
    parts: dict[str, np.ndarray] = {}
    levels: dict[str, list[str]] = {}
    for f in factors:
        parts[f], levels[f] = _sum_coding(data[f].astype(str))
    parts[time] = data[time].to_numpy(dtype=float)[:, None]
    names = [*factors, time]
    blocks = [np.ones((len(data), 1))]
    terms: dict[str, slice] = {}
    components: dict[str, tuple[str, ...]] = {}
    col = 1
    for k in range(1, len(names) + 1):
        for combo in itertools.combinations(names, k):
            block = parts[combo[0]]
            for name in combo[1:]:
                block = np.einsum("ni,nj->nij", block, parts[name]).reshape(len(data), -1)
            terms[":".join(combo)] = slice(col, col + block.shape[1])
            components[":".join(combo)] = combo
            blocks.append(block)
            col += block.shape[1]
    return _Design(np.hstack(blocks), terms, levels, components)


def _drop_terms(design: _Design, names: Iterable[str]) -> _Design:
    drop = set(names)
    keep_cols = [0]
    terms: dict[str, slice] = {}
    col = 1
    for name, sl in design.terms.items():
        if name in drop:
            continue
        width = sl.stop - sl.start
        keep_cols.extend(range(sl.start, sl.stop))
        terms[name] = slice(col, col + width)
        col += width
    comps = {k: v for k, v in design.components.items() if k in terms}
    return _Design(design.X[:, keep_cols], terms, design.levels, comps)


def _full_rank(design: _Design, factors: Sequence[str]) -> tuple[_Design, list[str]]:
    """Leave out factor-by-factor interactions, highest order first, until X has full rank.

    Empty factor cells (e.g. no female in one group) make the full factorial inestimable.
    """
    notes: list[str] = []
    fset = set(factors)
    while np.linalg.matrix_rank(design.X) < design.X.shape[1]:
        multi = [t for t, c in design.components.items() if len(fset.intersection(c)) >= 2]
        if not multi:
            break
        worst = max(multi, key=lambda t: (len(design.components[t]), list(design.terms).index(t)))
        notes.append(f"term {worst} left out: empty factor cells make it inestimable")
        design = _drop_terms(design, [worst])
    return design, notes


# ---------------------------------------------------------------------------- Satterthwaite


@dataclass(frozen=True)
class SatterthwaiteTerm:
    """One row of :func:`satterthwaite_anova`.

    Attributes
    ----------
    term
        The term's name.
    num_df
        q, the number of coefficients tested.
    den_df
        Satterthwaite denominator degrees of freedom.
    f
        Wald F = Wald χ² / q (= (b/SE)² when q = 1).
    p
        Upper tail of F(q, den_df).
    """

    term: str
    num_df: int
    den_df: float
    f: float
    p: float


def _ddf_from_nu(nu: np.ndarray) -> float:
    """Combine, as lmerTest does, the q one-df Satterthwaite dfs into one F denominator df."""
    if len(nu) == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < 1e-8):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    e = float(np.sum(nu / (nu - 2)))
    return 2 * e / (e - len(nu))


def satterthwaite_anova(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    beta: np.ndarray,
    sigma: float,
    theta: float,
    terms: dict[str, slice],
) -> list[SatterthwaiteTerm]:
    """Wald F tests with Satterthwaite df for a random-intercept model fitted by ML.

    The model is ``y = X b + u[group] + e`` with u ~ N(0, (σθ)²), e ~ N(0, σ²); the
    parameters are those of an ML fit. This reproduces ``anova(lmer(..., REML = FALSE))``
    of lmerTest (type III, ``ddf = "Satterthwaite"``) when X is coded with sum-to-zero
    contrasts, because each term's hypothesis is then "all its coefficients are zero".

    Parameters
    ----------
    X
        Fixed-effects design (n x p), full column rank.
    y
        Response (n).
    groups
        Subject of each row (n).
    beta
        ML estimates of the fixed effects (p).
    sigma
        Residual standard deviation σ (ML).
    theta
        Random-intercept SD relative to σ (lme4's θ; 0 on the boundary).
    terms
        Term name -> its columns of X.

    Returns
    -------
    list of SatterthwaiteTerm
        One per term, in the order given.

    Notes
    -----
    Follows lmerTest (Kuznetsova, Brockhoff & Christensen 2017): the variance parameters
    are (θ, σ); Cov(b̂) = C(θ, σ) = (X'V⁻¹X)⁻¹ with V = σ²(I + θ²ZZ'); their asymptotic
    covariance A is the inverse of the observed information of the log-likelihood profiled
    over b (lmerTest: twice the inverse Hessian of the deviance), here in closed form rather
    than by numerical differentiation. A 1-df contrast l has df = 2 (l'Cl)² / (g'Ag) with
    g_k = l'(∂C/∂φ_k)l. A q-df term is split into the eigenvectors of LCL' (q one-df tests
    with dfs ν_m); F = Σ t_m²/q and the denominator df is 2E/(E - q) with E = Σ ν_m/(ν_m - 2)
    (lmerTest's ``contest`` / ``get_Fstat_ddf``). Within-subject terms of a balanced design
    get df = N_obs − N_subjects; with θ = 0 every df becomes N_obs.
    """
    p = X.shape[1]
    s2 = sigma**2
    t2 = theta**2
    M = np.zeros((p, p))
    G = [np.zeros((p, p)), np.zeros((p, p))]
    H = np.zeros((2, 2))
    h = [np.zeros(p), np.zeros(p)]
    for g in pd.unique(groups):
        idx = groups == g
        Xi = X[idx]
        ri = y[idx] - Xi @ beta
        n = Xi.shape[0]
        eye = np.eye(n)
        J = np.ones((n, n))
        Vinv = np.linalg.inv(s2 * (eye + t2 * J))
        # First and second derivatives of V = σ²I + σ²θ²J with respect to (θ, σ).
        dV = [2 * s2 * theta * J, 2 * sigma * (eye + t2 * J)]
        d2V = [[2 * s2 * J, 4 * sigma * theta * J], [4 * sigma * theta * J, 2 * (eye + t2 * J)]]
        XV = Xi.T @ Vinv
        M += XV @ Xi
        Vr = Vinv @ ri
        for j in range(2):
            Pj = Vinv @ dV[j]
            G[j] += XV @ dV[j] @ Vinv @ Xi
            h[j] += XV @ dV[j] @ Vr
            for k in range(2):
                Pk = Vinv @ dV[k]
                H[j, k] += (
                    0.5 * np.trace(Pj @ Pk)
                    - 0.5 * np.trace(Vinv @ d2V[j][k])
                    - Vr @ dV[j] @ Vinv @ dV[k] @ Vr
                    + 0.5 * Vr @ d2V[j][k] @ Vr
                )
    C = np.linalg.inv(M)
    # Profiling b out adds H_φb C H_bφ (H_bφ_j = -X'V⁻¹V_jV⁻¹r).
    Hp = H + np.array([[h[j] @ C @ h[k] for k in range(2)] for j in range(2)])
    if theta <= 1e-8 or Hp[0, 0] >= 0:
        # θ on the boundary (a zero random-intercept variance): θ is not an interior
        # estimate, so its curvature says nothing about its sampling variance. Only σ is
        # free, as in lmerTest and MATLAB, whose df then all equal N_obs under ML.
        A = np.zeros((2, 2))
        A[1, 1] = 1.0 / -Hp[1, 1] if Hp[1, 1] < 0 else 0.0
    else:
        A = np.linalg.pinv(-Hp)
    dC = [C @ G[j] @ C for j in range(2)]

    def one_df(contrast: np.ndarray) -> tuple[float, float]:
        var = float(contrast @ C @ contrast)
        grad = np.array([contrast @ d @ contrast for d in dC])
        denom = float(grad @ A @ grad)
        nu = 2 * var**2 / denom if denom > 0 else math.inf
        return var, nu

    out: list[SatterthwaiteTerm] = []
    for name, sl in terms.items():
        L = np.zeros((sl.stop - sl.start, p))
        L[:, sl] = np.eye(sl.stop - sl.start)
        d, P = np.linalg.eigh(L @ C @ L.T)
        order = np.argsort(d)[::-1]
        d, P = d[order], P[:, order]
        keep = d > max(np.sqrt(np.finfo(float).eps) * d[0], 0.0)
        PtL = (P.T @ L)[keep]
        q = int(keep.sum())
        t2s = (PtL @ beta) ** 2 / d[keep]
        nu = np.array([one_df(row)[1] for row in PtL])
        f = float(t2s.sum() / q)
        ddf = _ddf_from_nu(nu)
        out.append(SatterthwaiteTerm(name, q, ddf, f, float(sps.f.sf(f, q, ddf))))
    return out


# ---------------------------------------------------------------------------- inputs


def _check_inputs(sessions: pd.DataFrame, tests: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    if isinstance(factors, str):
        raise ConfigError(
            f"analysis.factors must be a list of column names, not the string {factors!r}.",
            hint='Write factors = ["group", "sex"].',
        )
    names = [str(f) for f in factors]
    if len(set(names)) != len(names):
        raise ConfigError(f"analysis.factors names a factor twice: {names}.")
    for f in names:
        if f in _RESERVED or f.startswith("__"):
            raise ConfigError(
                f"analysis.factors names {f!r}, which labpipe uses itself and cannot be a "
                "between-subject factor."
            )
        if len(sessions) and f not in sessions.columns:
            raise ConfigError(
                f"analysis.factors names {f!r}, which is not a column of the session table.",
                hint="Use roster columns such as group, sex or cohort.",
            )
        if len(tests) and f not in tests.columns:
            raise ConfigError(
                f"analysis.factors names {f!r}, which is not a column of the tests table."
            )
    if len(sessions):
        missing = [c for c in _SESSION_COLUMNS if c not in sessions.columns]
        if missing:
            raise InternalError(f"The session table lacks the columns {missing}.")
    if len(tests):
        missing = [c for c in _TEST_COLUMNS if c not in tests.columns]
        if missing:
            raise InternalError(f"The tests table lacks the columns {missing}.")
    return names


def _flag(series: pd.Series) -> pd.Series:
    """Return a boolean column with missing read as False."""
    return series.astype("boolean").fillna(False).astype(bool)


def _usable_factors(subjects: pd.DataFrame, factors: Sequence[str]) -> tuple[list[str], list[str]]:
    """Return the factors with at least two levels among ``subjects``, and notes on the rest."""
    usable: list[str] = []
    notes: list[str] = []
    for f in factors:
        levels = sorted(subjects[f].dropna().astype(str).unique())
        if len(levels) >= 2:
            usable.append(f)
        elif levels:
            notes.append(f"factor {f} has one level ({levels[0]}): left out")
        else:
            notes.append(f"factor {f} has no values: left out")
    return usable, notes


def _levels_of(part: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """Each animal's factor levels (as text) and cell, indexed by subject."""
    first = part.groupby("subject")[list(factors)].first() if factors else None
    if first is None:
        return pd.DataFrame(index=pd.Index(sorted(part["subject"].unique()), name="subject"))
    first = first.astype(str)
    return _add_cell(first, factors)


def _add_cell(data: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    data = data.copy()
    if factors:
        # joined per row over plain lists: a row-wise DataFrame.agg costs ~0.1 ms a row
        text = data[list(factors)].astype(str)
        columns = [text[f].tolist() for f in factors]
        data[_CELL] = [" × ".join(parts) for parts in zip(*columns, strict=True)]
    return data


# ---------------------------------------------------------------------------- analyses


def _between_specs(factors: Sequence[str]) -> list[tuple[str, str]]:
    """(effect name, column) for each between factor, plus the cell factor when > 1."""
    specs = [(f, f) for f in factors]
    if len(factors) > 1:
        specs.append((" × ".join(factors), _CELL))
    return specs


def _complete_window(data: pd.DataFrame, time: str) -> tuple[list[Any], list[str], dict[str, str]]:
    """Choose the sessions 1..K and the animals complete over them, keeping the most data.

    Returns (time levels, complete subjects, subject -> reason for the others). K maximises
    K × (animals with a value on each of the first K levels); ties go to the longer window.
    """
    levels = sorted(data[time].unique())
    have = data.groupby("subject")[time].agg(set)
    best = (0, 0, [])  # (score, K, subjects)
    for k in range(1, len(levels) + 1):
        need = set(levels[:k])
        subs = sorted(s for s, got in have.items() if need <= got)
        score = k * len(subs)
        if (score, k) >= (best[0], best[1]):
            best = (score, k, subs)
    _, k, subs = best
    window = levels[:k]
    span = f"{window[0]}–{window[-1]}" if window else ""
    reasons = {
        s: f"a missing or flagged session within sessions {span} (listwise deletion)"
        for s in have.index
        if s not in subs
    }
    return window, subs, reasons


def _mixed_anova_rows(
    scope: _Scope,
    data: pd.DataFrame,
    factors: Sequence[str],
    time: str,
    time_note: str,
) -> list[dict[str, Any]]:
    """Mixed ANOVA (between factor x ``time``), GG-corrected, per factor and on cells.

    ``data``: one row per subject x time level with the value in ``value``.
    """
    rows: list[dict[str, Any]] = []
    if time == _TIME_SESSION:
        window, subs, listwise = _complete_window(data, time)
        data = data[data["subject"].isin(subs) & data[time].isin(window)]
        span = f"sessions {window[0]}–{window[-1]}" if window else "no sessions"
    else:
        listwise, span = {}, time_note
    if not factors:
        return [_rm_anova_row(scope, data, time, listwise, span)]
    for effect, column in _between_specs(factors):
        rows.extend(_one_mixed_anova(scope, data, effect, column, time, listwise, span))
    return rows


def _rm_anova_row(
    scope: _Scope, data: pd.DataFrame, time: str, listwise: dict[str, str], span: str
) -> dict[str, Any]:
    subs = sorted(data["subject"].unique())
    n_excl, why = scope.exclusions(subs, listwise)
    note = _join([f"no between factor with two levels; {span}; one-way repeated measures", why])
    if len(subs) < 2 or data[time].nunique() < 2:
        return scope.row(
            "rm_anova",
            effect=time,
            n_subjects=len(subs),
            n_excluded=n_excl,
            warnings="fewer than 2 complete animals or 2 sessions: not computed",
            note=note,
        )
    with _Caught() as caught:
        aov = pg.rm_anova(
            data=data, dv="value", within=time, subject="subject", correction=True, effsize="np2"
        )
    r = aov.iloc[0]
    eps = float(r["eps"]) if "eps" in aov and not _missing(r["eps"]) else 1.0
    p = float(r["p_GG_corr"]) if "p_GG_corr" in aov and not _missing(r["p_GG_corr"]) else None
    corrected = eps < 1 - 1e-12 and p is not None
    df1 = float(r["ddof1"]) * (eps if corrected else 1.0)
    df2 = float(r["ddof2"]) * (eps if corrected else 1.0)
    pval = p if corrected else float(r["p_unc"])
    es = float(r["np2"])
    if corrected:
        note = _join([note, f"Greenhouse–Geisser ε = {_no_zero(eps, 3)}"])
    return scope.row(
        "rm_anova",
        effect=time,
        df1=df1,
        df2=df2,
        statistic=float(r["F"]),
        p=pval,
        effect_size=es,
        effect_size_kind="np2",
        n_subjects=len(subs),
        n_excluded=n_excl,
        warnings=_join(caught.messages),
        sentence=format_f(df1, df2, float(r["F"]), pval, es, corrected=corrected or None),
        note=note,
    )


def _one_mixed_anova(
    scope: _Scope,
    data: pd.DataFrame,
    effect: str,
    column: str,
    time: str,
    listwise: dict[str, str],
    span: str,
) -> list[dict[str, Any]]:
    subs = sorted(data["subject"].unique())
    n_excl, why = scope.exclusions(subs, listwise)
    kind = (
        f"between factor {effect}"
        if column != _CELL
        else f"between factor: the cells of {effect} (one-way over cells)"
    )
    note = _join([f"{kind}; {span}; Greenhouse–Geisser correction", why])
    per_level = data.groupby(column)["subject"].nunique()
    small = [f"{lvl} (n = {n})" for lvl, n in per_level.items() if n < 2]
    problem = ""
    if len(per_level) < 2:
        problem = f"{effect} has fewer than 2 levels among the complete animals"
    elif small:
        problem = f"fewer than 2 complete animals in {', '.join(small)}"
    elif data[time].nunique() < 2:
        problem = "fewer than 2 sessions complete for every animal"
    if problem:
        return [
            scope.row(
                "mixed_anova",
                effect=effect,
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=f"{problem}: mixed ANOVA not computed",
                note=note,
            )
        ]
    with _Caught() as caught:
        aov = pg.mixed_anova(
            data=data,
            dv="value",
            within=time,
            between=column,
            subject="subject",
            correction=True,
            effsize="np2",
        )
    # On degenerate data (e.g. no variance at all) pingouin drops the columns it could not
    # compute instead of raising; that is a row with a warning, not a crash.
    absent = sorted({"DF1", "DF2", "F", "p_unc", "np2"} - set(aov.columns))
    if absent:
        return [
            scope.row(
                "mixed_anova",
                effect=effect,
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=_join(
                    [
                        *caught.messages,
                        f"pingouin returned no {', '.join(absent)} (degenerate data, e.g. no "
                        "variance): mixed ANOVA not computed",
                    ]
                ),
                note=note,
            )
        ]
    rows = []
    names = [effect, time, f"{effect}:{time}"]
    for i, name in enumerate(names):
        r = aov.iloc[i]
        df1, df2, f = float(r["DF1"]), float(r["DF2"]), float(r["F"])
        p = float(r["p_unc"])
        es = float(r["np2"])
        row_note = note
        corrected = False
        eps = r.get("eps")
        if i > 0 and not _missing(eps) and not _missing(r.get("p_GG_corr")):
            eps = float(eps)
            # pingouin 0.7 computes ε from the pooled within-group covariance (as SPSS, afex)
            # and applies the same ε to the within factor and the interaction.
            if eps < 1 - 1e-12:
                corrected = True
                df1, df2, p = df1 * eps, df2 * eps, float(r["p_GG_corr"])
                row_note = _join([note, f"ε = {_no_zero(eps, 3)}"])
                if not _missing(r.get("p_spher")):
                    row_note += (
                        f", Mauchly W = {_no_zero(float(r['W_spher']), 3)}, "
                        f"{format_p(float(r['p_spher']))}"
                    )
        rows.append(
            scope.row(
                "mixed_anova",
                effect=name,
                df1=df1,
                df2=df2,
                statistic=f,
                p=p,
                effect_size=es,
                effect_size_kind="np2",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=_join(caught.messages),
                sentence=format_f(df1, df2, f, p, es, corrected=corrected or None),
                note=row_note,
            )
        )
    return rows


def _fit_mixedlm(
    y: np.ndarray, X: np.ndarray, groups: np.ndarray
) -> tuple[Any | None, str | None, list[str]]:
    """Fit a random-intercept model by ML, trying lbfgs, bfgs, powell in turn.

    Returns (result or None, the optimizer that worked, warnings and failures).
    """
    messages: list[str] = []
    fallback: tuple[Any, str, list[str]] | None = None
    for method in OPTIMIZERS:
        caught = _Caught()
        try:
            with caught:
                model = MixedLM(y, X, groups=groups, exog_re=np.ones((len(y), 1)))
                # Tight tolerances: the default gtol stops ~1e-4 short of lme4's optimum,
                # which moves Satterthwaite df in the 5th digit.
                res = model.fit(reml=False, method=method, **_OPTIMIZER_OPTIONS[method])
                ok = np.all(np.isfinite(res.fe_params)) and np.isfinite(res.scale)
        # The Hessian inversion after optimisation raises LinAlgError on near-singular fits;
        # a list of methods passed to fit() would not catch it, so each is tried here.
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError) as exc:
            messages.append(f"optimizer {method} failed ({type(exc).__name__}: {exc})")
            continue
        if not ok:
            messages.append(f"optimizer {method} gave non-finite estimates")
            continue
        if not res.converged:
            messages.append(f"optimizer {method} did not converge")
            if fallback is None:
                fallback = (res, method, caught.messages)
            continue
        return res, method, [*messages, *caught.messages]
    if fallback is not None:
        res, method, extra = fallback
        return res, method, [*messages, *extra, f"using the unconverged {method} fit"]
    return None, None, messages


def _lmm_rows(
    scope: _Scope, data: pd.DataFrame, factors: Sequence[str], time: str
) -> list[dict[str, Any]]:
    """``value ~ factors * time + (1 | subject)`` by ML, Wald F with Satterthwaite df."""
    data = data.sort_values(["subject", time], kind="stable").reset_index(drop=True)
    subs = sorted(data["subject"].unique())
    n_excl, why = scope.exclusions(subs)
    design = _design(data, factors, time)
    design, rank_notes = _full_rank(design, factors)
    base_note = _join(
        [
            "ML fit (reml=False), random intercept per animal, sum-to-zero coded factors; "
            f"factor effects are at {time} = 0; Wald F with Satterthwaite df (lmerTest method)",
            *rank_notes,
            why,
        ]
    )
    n_par = design.X.shape[1]
    if len(subs) < 3 or len(data) <= n_par + 2:
        return [
            scope.row(
                "lmm",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=f"{len(subs)} animals, {len(data)} observations for {n_par} fixed "
                "effects: too few, linear mixed model not fitted",
                note=base_note,
            )
        ]
    if np.linalg.matrix_rank(design.X) < n_par:
        return [
            scope.row(
                "lmm",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings="the design matrix is singular: linear mixed model not fitted",
                note=base_note,
            )
        ]
    y = data["value"].to_numpy(dtype=float)
    groups = data["subject"].to_numpy()
    res, method, messages = _fit_mixedlm(y, design.X, groups)
    if res is None:
        return [
            scope.row(
                "lmm",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=_join([*messages, "no optimizer fitted the model"]),
                note=base_note,
            )
        ]
    sigma = math.sqrt(float(res.scale))
    tau2 = max(float(np.asarray(res.cov_re)[0, 0]), 0.0)
    theta = math.sqrt(tau2) / sigma
    beta = np.asarray(res.fe_params, dtype=float)
    with _Caught() as caught:
        try:
            table = satterthwaite_anova(design.X, y, groups, beta, sigma, theta, design.terms)
        except np.linalg.LinAlgError as exc:
            table = []
            messages.append(f"Satterthwaite df failed ({exc})")
    if theta < 1e-3:
        messages.append(
            "random-intercept variance estimated at or near zero (boundary, singular fit)"
        )
    fallbacks = [m for m in messages if m.startswith("optimizer ")]
    messages = [m for m in messages if not m.startswith("optimizer ")]
    note = _join(
        [
            *fallbacks,
            f"fitted with optimizer {method}; random-intercept SD = {_num(math.sqrt(tau2))}, "
            f"residual SD = {_num(sigma)}; {len(data)} observations",
            base_note,
        ]
    )
    if not table:
        return [
            scope.row(
                "lmm",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=_join([*messages, *caught.messages]),
                note=note,
            )
        ]
    rows = []
    warn = _join([*messages, *caught.messages])
    for t in table:
        sl = design.terms[t.term]
        extra = ""
        if t.num_df == 1:
            b = beta[sl.start]
            extra = f"b = {_num(b)}"
        rows.append(
            scope.row(
                "lmm",
                effect=t.term,
                df1=float(t.num_df),
                df2=t.den_df,
                statistic=t.f,
                p=t.p,
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=warn,
                sentence=format_f(t.num_df, t.den_df, t.f, t.p, corrected=(False, True)),
                note=_join([extra, note]),
            )
        )
    return rows


def _nb_alpha(y: np.ndarray, X: np.ndarray) -> tuple[float | None, list[str]]:
    """ML estimate of the NB2 dispersion α (Var = μ + αμ²) from a negative binomial GLM.

    The same estimate as ``1 / MASS::glm.nb(...)$theta``; GEE needs α fixed.
    """
    with _Caught() as caught:
        try:
            res = sm.NegativeBinomial(y, X, loglike_method="nb2").fit(disp=0, maxiter=300)
            alpha = float(res.params[-1])
        except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError) as exc:
            return None, [f"NB dispersion not estimated ({type(exc).__name__}: {exc})"]
    if not np.isfinite(alpha) or alpha <= 0:
        return None, [*caught.messages, "NB dispersion not estimated (non-positive)"]
    return alpha, caught.messages


def _fit_gee(
    y: np.ndarray, X: np.ndarray, groups: np.ndarray, family: sm.families.Family
) -> tuple[Any, list[str]]:
    """GEE with an exchangeable working correlation and robust (sandwich) SEs."""
    with _Caught() as caught:
        res = sm.GEE(
            y, X, groups=groups, family=family, cov_struct=sm.cov_struct.Exchangeable()
        ).fit(maxiter=100)
    return res, caught.messages


def _rate_ratio_note(design: _Design, term: str, beta: float) -> tuple[float, str]:
    """Rate ratio of a 1-df term and what it compares.

    A two-level factor coded +1/-1 differs by 2 units between its levels, so the log rate
    ratio of the first level over the second is 2b (per factor in the term).
    """
    comps = design.components[term]
    scale = 1.0
    words = []
    for c in comps:
        if c in design.levels:
            lv = design.levels[c]
            scale *= 2.0
            words.append(f"{lv[0]} over {lv[1]}")
        elif c == _TIME_TEST:
            words.append("test over baseline")
        else:
            words.append(f"per unit of {c}")
    if len(words) == 1:
        return math.exp(scale * beta), f"rate ratio, {words[0]}"
    return math.exp(scale * beta), "interaction rate ratio: " + " × ".join(words)


def _gee_rows(
    scope: _Scope, data: pd.DataFrame, factors: Sequence[str], time: str
) -> list[dict[str, Any]]:
    """Negative binomial GEE (log link, exchangeable, robust SEs): Wald χ² per term."""
    data = data.sort_values(["subject", time], kind="stable").reset_index(drop=True)
    subs = sorted(data["subject"].unique())
    n_excl, why = scope.exclusions(subs)
    design, rank_notes = _full_rank(_design(data, factors, time), factors)
    y = data["value"].to_numpy(dtype=float)
    groups = data["subject"].to_numpy()
    n_par = design.X.shape[1]
    note = _join(
        [
            "negative binomial GEE, log link, exchangeable working correlation, robust SEs, "
            "subject clusters; NB2 dispersion fixed at its GLM ML estimate; sum-to-zero coded "
            "factors",
            f"only {len(subs)} clusters: robust SEs are biased downwards with few clusters"
            if len(subs) < 30
            else "",
            *rank_notes,
            why,
        ]
    )
    if time == _TIME_TEST:
        note = _join([note, "baselines are means of sessions (quasi-likelihood, not counts)"])
    if len(subs) <= n_par:
        return [
            scope.row(
                "gee_nb",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=f"{len(subs)} animals for {n_par} coefficients: the robust (sandwich) "
                "covariance needs more animals than coefficients, GEE not fitted",
                note=note,
            )
        ]
    if len(data) <= n_par + 1 or np.linalg.matrix_rank(design.X) < n_par:
        return [
            scope.row(
                "gee_nb",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings="too few animals or observations for the model: GEE not fitted",
                note=note,
            )
        ]
    if np.any(y < 0) or y.sum() == 0:
        return [
            scope.row(
                "gee_nb",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings="all values zero (or negative): count model not fitted",
                note=note,
            )
        ]
    alpha, messages = _nb_alpha(y, design.X)
    if alpha is None:
        return [
            scope.row(
                "gee_nb",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=_join(messages),
                note=note,
            )
        ]
    try:
        res, gee_messages = _fit_gee(y, design.X, groups, sm.families.NegativeBinomial(alpha=alpha))
    except (np.linalg.LinAlgError, ValueError, ZeroDivisionError, FloatingPointError) as exc:
        return [
            scope.row(
                "gee_nb",
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=_join([*messages, f"GEE failed ({type(exc).__name__}: {exc})"]),
                note=note,
            )
        ]
    note = _join([f"α = {alpha:.3g}", note])
    beta = np.asarray(res.params, dtype=float)
    cov = np.asarray(res.cov_params(), dtype=float)
    warn = _join([*messages, *gee_messages])
    rows = []
    for term, sl in design.terms.items():
        q = sl.stop - sl.start
        b = beta[sl]
        try:
            chi2 = float(b @ np.linalg.solve(cov[sl, sl], b))
        except np.linalg.LinAlgError:
            chi2 = math.nan
        p = float(sps.chi2.sf(chi2, q)) if np.isfinite(chi2) else math.nan
        rr, rr_note = (math.nan, "")
        if q == 1:
            rr, rr_note = _rate_ratio_note(design, term, float(b[0]))
        rows.append(
            scope.row(
                "gee_nb",
                effect=term,
                df1=float(q),
                statistic=chi2,
                p=p,
                effect_size=rr,
                effect_size_kind="rate_ratio" if q == 1 else None,
                n_subjects=len(subs),
                n_excluded=n_excl,
                warnings=warn,
                sentence=format_chi2(q, chi2, p, rr if q == 1 else None),
                note=_join([rr_note, note]),
            )
        )
    return rows


def _paired_rows(scope: _Scope, wide: pd.DataFrame, factors: Sequence[str]) -> list[dict[str, Any]]:
    """Paired t (test vs baseline) per level of each factor, Holm over the levels of a factor."""
    families: list[tuple[str, str | None]] = [(f, f) for f in factors]
    if not families:
        families = [("all animals", None)]
    rows: list[dict[str, Any]] = []
    for name, column in families:
        levels = sorted(wide[column].unique()) if column else [None]
        family_rows: list[dict[str, Any]] = []
        for level in levels:
            part = wide if column is None else wide[wide[column] == level]
            label = "all animals" if column is None else f"{name} = {level}"
            subs = sorted(part["subject"])
            among = None
            if column is not None and column in scope.levels:
                among = scope.levels.index[scope.levels[column] == level]
            n_excl, why = scope.exclusions(subs, among=among)
            note = _join(
                [
                    f"{label}; test minus baseline; d_z = mean difference / SD of differences; "
                    f"Holm over the levels of {name}",
                    why,
                ]
            )
            if len(subs) < 2:
                family_rows.append(
                    scope.row(
                        "ttest_paired",
                        effect=_TIME_TEST,
                        n_subjects=len(subs),
                        n_excluded=n_excl,
                        warnings=f"{label}: fewer than 2 animals, paired t-test not computed",
                        note=note,
                    )
                )
                continue
            with _Caught() as caught:
                t = pg.ttest(part["test"], part["baseline"], paired=True)
                dz = pg.compute_effsize(
                    part["test"], part["baseline"], paired=True, eftype="cohen_dz"
                )
            r = t.iloc[0]
            family_rows.append(
                scope.row(
                    "ttest_paired",
                    effect=_TIME_TEST,
                    df1=float(r["dof"]),
                    statistic=float(r["T"]),
                    p=float(r["p_val"]),
                    effect_size=float(dz),
                    effect_size_kind="d_z",
                    n_subjects=len(subs),
                    n_excluded=n_excl,
                    warnings=_join(caught.messages),
                    note=note,
                )
            )
        ps = [r["p"] for r in family_rows if not _missing(r["p"])]
        if ps:
            with _Caught() as caught:
                _, adj = pg.multicomp(np.asarray(ps, dtype=float), method="holm")
            it = iter(adj)
            for r in family_rows:
                if not _missing(r["p"]):
                    r["p_adjusted"] = float(next(it))
                    r["warnings"] = _join([r["warnings"], *caught.messages])
        for r in family_rows:
            if not _missing(r["statistic"]):
                label = r["note"].split(";")[0]
                text = format_t(
                    r["df1"],
                    r["statistic"],
                    r["p"],
                    r["effect_size"],
                    "d_z",
                    p_adjusted=r["p_adjusted"],
                )
                r["sentence"] = f"{label}: {text}" if text else ""
                if not math.isfinite(r["statistic"]):
                    r["warnings"] = _join(
                        [r["warnings"], "the differences have zero variance: t is not finite"]
                    )
        rows.extend(family_rows)
    return rows


def _posthoc_rows(
    scope: _Scope, long: pd.DataFrame, factors: Sequence[str]
) -> list[dict[str, Any]]:
    """Run pingouin's pairwise tests (mixed design), Holm within each contrast, Hedges' g."""
    rows: list[dict[str, Any]] = []
    subs = sorted(long["subject"].unique())
    n_excl, why = scope.exclusions(subs)
    # Per factor only: over the cells of several factors the comparisons multiply (15 pairs
    # and 30 per-period pairs for 6 cells) with 2-3 animals per cell.
    specs: list[tuple[str | None, str | None]] = [(f, f) for f in factors] or [(None, None)]
    period_done = False
    for effect, column in specs:
        if column is not None:
            per_level = long.groupby(column)["subject"].nunique()
            small = [f"{lvl} (n = {n})" for lvl, n in per_level.items() if n < 2]
            if small or len(per_level) < 2:
                rows.append(
                    scope.row(
                        "posthoc",
                        effect=effect,
                        n_subjects=len(subs),
                        n_excluded=n_excl,
                        warnings=f"fewer than 2 animals in {', '.join(small) or 'a second level'}: "
                        "pairwise tests not computed",
                        note=why,
                    )
                )
                continue
        if len(subs) < 2:
            rows.append(
                scope.row(
                    "posthoc",
                    effect=effect or _TIME_TEST,
                    n_subjects=len(subs),
                    n_excluded=n_excl,
                    warnings="fewer than 2 animals: pairwise tests not computed",
                    note=why,
                )
            )
            continue
        with _Caught() as caught:
            kwargs: dict[str, Any] = {} if column is None else {"between": column}
            res = pg.pairwise_tests(
                data=long,
                dv="value",
                within=_TIME_TEST,
                subject="subject",
                padjust="holm",
                effsize="hedges",
                **kwargs,
            )
        for _, r in res.iterrows():
            contrast = str(r["Contrast"])
            if contrast == _TIME_TEST:
                if period_done:
                    continue
                period_done = True
                name, where = _TIME_TEST, f"{r['A']} vs {r['B']}, all animals"
            elif contrast == column:
                name = effect
                where = f"{effect}: {r['A']} vs {r['B']}, means over baseline and test"
            else:
                name = f"{effect}:{_TIME_TEST}"
                where = f"{effect}: {r['A']} vs {r['B']} at {r[_TIME_TEST]}"
            p = float(r["p_unc"])
            padj = r.get("p_corr")
            # A contrast with one comparison has no adjustment: Holm leaves a single p as is.
            padj = p if _missing(padj) else float(padj)
            df = float(r["dof"])
            t = float(r["T"])
            g = float(r["hedges"])
            corrected = abs(df - round(df)) > 1e-9
            rows.append(
                scope.row(
                    "posthoc",
                    effect=name,
                    df1=df,
                    statistic=t,
                    p=p,
                    p_adjusted=padj,
                    effect_size=g,
                    effect_size_kind="hedges",
                    n_subjects=len(subs),
                    n_excluded=n_excl,
                    warnings=_join(caught.messages),
                    sentence=f"{where}: "
                    + format_t(df, t, p, g, "g", p_adjusted=padj, corrected=corrected or None),
                    note=_join(
                        [
                            where,
                            "paired"
                            if bool(r["Paired"])
                            else "independent samples" + (", Welch" if corrected else ""),
                            "Holm within the contrast",
                            why,
                        ]
                    ),
                )
            )
    return rows


def _guarded(scope: _Scope, analysis: str, n: int, fn: Any, *args: Any) -> list[dict[str, Any]]:
    """Run one analysis; a numerical failure of the libraries becomes a row, not a crash."""
    try:
        return fn(scope, *args)
    except (
        np.linalg.LinAlgError,
        ValueError,
        ZeroDivisionError,
        FloatingPointError,
        AssertionError,
    ) as exc:
        # pingouin checks its inputs with assert and statsmodels raises ValueError or
        # LinAlgError on degenerate data; the rest of the table must still be produced.
        return [_failure(scope, analysis, f"not computed ({type(exc).__name__}: {exc})", n=n)]
    except KeyError as exc:
        # On degenerate data (no variance, one observation per cell) pingouin leaves out
        # the result columns it could not compute instead of raising.
        return [
            _failure(
                scope,
                analysis,
                f"not computed (pingouin returned no {exc} column: degenerate data)",
                n=n,
            )
        ]


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True)
class _Task:
    """One analysis of one measure: ``fn(scope, *args)`` run by :func:`_guarded`.

    ``notes`` (factors left out) are added to the warnings of every row it gives,
    ``context`` (which sessions the analysis takes) to the start of every row's note.
    """

    scope: _Scope
    analysis: str
    n: int
    fn: Callable[..., list[dict[str, Any]]]
    args: tuple[Any, ...]
    notes: tuple[str, ...] = ()
    context: str = ""


#: What a phase contributes, in table order: analyses to run, and rows already made.
_Plan = list[_Task | list[dict[str, Any]]]

#: From this many animals in the largest analysis, the analyses run in worker processes
#: too; below it they run in the calling process only: starting workers (each imports
#: pingouin and statsmodels) would cost more than it saves.
POOL_MIN_ANIMALS = 100


def _run_task(task: _Task) -> list[dict[str, Any]]:
    rows = _guarded(task.scope, task.analysis, task.n, task.fn, *task.args)
    for r in rows:
        r["warnings"] = _join([r["warnings"], *task.notes])
        r["note"] = _join([task.context, r["note"]])
    return rows


def _pool_size(tasks: Sequence[_Task], workers: int | None) -> int:
    if workers is None:
        if max((t.n for t in tasks), default=0) < POOL_MIN_ANIMALS:
            return 1
        workers = os.cpu_count() or 1
    return max(1, min(workers, len(tasks)))


def _execute(plan: _Plan, workers: int | None) -> list[dict[str, Any]]:
    """Run the analyses of ``plan`` and return every row, in plan order."""
    tasks = [item for item in plan if isinstance(item, _Task)]
    n = _pool_size(tasks, workers)
    results = [_run_task(t) for t in tasks] if n == 1 else _run_spread(tasks, n)
    it = iter(results)
    rows: list[dict[str, Any]] = []
    for item in plan:
        rows += next(it) if isinstance(item, _Task) else item
    return rows


def _run_spread(tasks: Sequence[_Task], n: int) -> list[list[dict[str, Any]]]:
    """Run ``tasks`` in ``n`` processes: this one and ``n - 1`` workers (``spawn``).

    The analyses are independent of each other, so where one runs does not change its rows.
    Each process takes the next analysis when it is free, the mixed models (most of the
    time) first. After a failure no further analysis is started, and the error is raised.
    """
    pending = deque(sorted(range(len(tasks)), key=lambda i: tasks[i].analysis != "lmm"))
    results: dict[int, list[dict[str, Any]]] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def take() -> int | None:
        with lock:
            return pending.popleft() if pending and not failures else None

    def fail(exc: BaseException) -> None:
        with lock:
            failures.append(exc)

    pool = ProcessPoolExecutor(max_workers=n - 1, mp_context=multiprocessing.get_context("spawn"))

    def feed() -> None:
        # one thread per worker process, handing it one analysis at a time
        try:
            while (i := take()) is not None:
                results[i] = pool.submit(_run_task, tasks[i]).result()
        except BaseException as exc:
            fail(exc)

    feeders = [threading.Thread(target=feed, daemon=True) for _ in range(n - 1)]
    try:
        for thread in feeders:
            thread.start()
        while (i := take()) is not None:
            results[i] = _run_task(tasks[i])
    except BaseException as exc:
        fail(exc)
        raise
    finally:
        for thread in feeders:
            thread.join()
        pool.shutdown(wait=True)
    if failures:
        raise failures[0]
    return [results[i] for i in range(len(tasks))]


# ---------------------------------------------------------------------------- per phase


def _session_phase(sessions: pd.DataFrame, phase: str, factors: Sequence[str]) -> _Plan:
    part = measures.phase_curve(sessions, phase).copy()
    if part.empty:
        return []
    n_later = int((sessions["phase"].astype(str) == phase).sum()) - len(part)
    # Re-extinction sessions follow a test, not the extinction days: the curve is the first
    # run (measures.phase_curve), and the note says how many sessions that leaves out.
    context = (
        f"first extinction run: {n_later} re-extinction session{'s' if n_later > 1 else ''} "
        "(after an animal's first reinstatement test) left out"
        if n_later
        else ""
    )
    part["subject"] = part["subject"].astype(str)
    plan: _Plan = []
    for measure in SESSION_MEASURES[phase]:
        empty = measure not in part.columns or part[measure].isna().all()
        if empty and measure in OPTIONAL_MEASURES:
            continue
        scope = _Scope(phase, None, measure)
        dropped: dict[str, str] = {}
        excluded = _flag(part["excluded_subject"])
        analyzable = _flag(part["analyzable"])
        values = (
            pd.to_numeric(part[measure], errors="coerce")
            if measure in part.columns
            else pd.Series(np.nan, index=part.index)
        )
        for s in part.loc[excluded, "subject"].unique():
            dropped[s] = "excluded animal"
        keep = ~excluded & analyzable & values.notna()
        kept = set(part.loc[keep, "subject"])
        for s in part.loc[~excluded, "subject"].unique():
            if s not in kept:
                dropped.setdefault(s, "no analyzable session with a value")
        data = part.loc[keep, ["subject", _TIME_SESSION, *factors]].copy()
        data["value"] = values[keep].astype(float)
        data[_TIME_SESSION] = pd.to_numeric(data[_TIME_SESSION]).astype(int)
        # A session counted twice for one animal and day would double its weight.
        data = data.groupby(["subject", _TIME_SESSION], as_index=False).agg(
            {**{f: "first" for f in factors}, "value": "mean"}
        )
        subjects = data.drop_duplicates("subject")
        usable, factor_notes = _usable_factors(subjects, factors)
        for f in usable:
            for s in subjects.loc[subjects[f].isna(), "subject"]:
                dropped[s] = f"no value for {f}"
        data = data.dropna(subset=usable)
        data = _add_cell(data, usable)
        scope.dropped = {s: dropped.get(s, "") for s in part["subject"].unique()}
        scope.levels = _levels_of(part, usable)
        n = data["subject"].nunique()
        if n == 0:
            plan.append([_failure(scope, "mixed_anova", f"no animal has {measure} values", n=0)])
            continue
        notes = tuple(factor_notes)
        args = (data, usable, _TIME_SESSION)
        plan.append(_Task(scope, "mixed_anova", n, _mixed_anova_rows, (*args, ""), notes, context))
        plan.append(_Task(scope, "lmm", n, _lmm_rows, args, notes, context))
        if measure in COUNT_MEASURES:
            plan.append(_Task(scope, "gee_nb", n, _gee_rows, args, notes, context))
    return plan


def _test_types(
    sessions: pd.DataFrame, tests: pd.DataFrame, configured: Sequence[str] = ()
) -> list[str]:
    found: set[str] = set(configured)
    if len(tests) and "test" in tests:
        found |= {str(t) for t in tests["test"].dropna().unique()}
    if len(sessions) and "test" in sessions:
        rein = sessions[sessions["phase"].astype(str) == "reinstatement"]
        found |= {str(t) for t in rein["test"].dropna().unique()}
    known = [t for t in TEST_ORDER if t in found]
    return known + sorted(found - set(known))


def _test_rows(
    sessions: pd.DataFrame, tests: pd.DataFrame, test: str, factors: Sequence[str]
) -> _Plan:
    part = tests[tests["test"].astype(str) == test].copy() if len(tests) else pd.DataFrame()
    plan: _Plan = []
    excluded_animals: set[str] = set()
    if len(sessions) and "excluded_subject" in sessions:
        ex = sessions[_flag(sessions["excluded_subject"])]
        excluded_animals = set(ex["subject"].astype(str))
    for measure in TEST_MEASURES:
        scope = _Scope("reinstatement", test, measure)
        if part.empty:
            plan.append(
                [
                    _failure(
                        scope, "mixed_anova", f"no animal took the {test} test: no statistics", n=0
                    )
                ]
            )
            continue
        part["subject"] = part["subject"].astype(str)
        dropped: dict[str, str] = {}
        base_col, test_col = f"baseline_{measure}", f"test_{measure}"
        if base_col not in part or test_col not in part:
            plan.append([_failure(scope, "mixed_anova", f"the tests table has no {measure}", n=0)])
            continue
        included = _flag(part["included"])
        base = pd.to_numeric(part[base_col], errors="coerce")
        tval = pd.to_numeric(part[test_col], errors="coerce")
        for s, inc, b, t in zip(part["subject"], included, base, tval, strict=True):
            if s in excluded_animals:
                dropped[s] = "excluded animal"
            elif not inc:
                dropped[s] = "not included in this test"
            elif pd.isna(b) or pd.isna(t):
                dropped[s] = "no baseline or test value"
        keep = ~part["subject"].isin(list(dropped))
        wide = part.loc[keep, ["subject", *factors]].copy()
        wide["baseline"] = base[keep].astype(float)
        wide["test"] = tval[keep].astype(float)
        wide = wide.drop_duplicates("subject")
        usable, factor_notes = _usable_factors(wide, factors)
        for f in usable:
            for s in wide.loc[wide[f].isna(), "subject"]:
                dropped[s] = f"no value for {f}"
        wide = wide.dropna(subset=usable)
        wide = _add_cell(wide, usable)
        for f in usable:
            wide[f] = wide[f].astype(str)
        scope.dropped = {s: dropped.get(s, "") for s in part["subject"].unique()}
        scope.levels = _levels_of(part, usable)
        n = len(wide)
        if n == 0:
            plan.append(
                [_failure(scope, "mixed_anova", f"no included animal in the {test} test", n=0)]
            )
            continue
        cols = ["subject", *usable, *([_CELL] if len(usable) > 1 else [])]
        long = pd.concat(
            [
                wide[cols].assign(**{_TIME_TEST: "baseline", "value": wide["baseline"]}),
                wide[cols].assign(**{_TIME_TEST: "test", "value": wide["test"]}),
            ],
            ignore_index=True,
        )
        coded = long.assign(**{_TIME_TEST: (long[_TIME_TEST] == "test").astype(int)})
        notes = tuple(factor_notes)
        plan += [
            _Task(
                scope,
                "mixed_anova",
                n,
                _mixed_anova_rows,
                (long, usable, _TIME_TEST, "baseline vs test"),
                notes,
            ),
            _Task(scope, "lmm", n, _lmm_rows, (coded, usable, _TIME_TEST), notes),
            _Task(scope, "ttest_paired", n, _paired_rows, (wide, usable), notes),
            _Task(scope, "posthoc", n, _posthoc_rows, (long, usable), notes),
            _Task(scope, "gee_nb", n, _gee_rows, (coded, usable, _TIME_TEST), notes),
        ]
    return plan


def phase_statistics(
    sessions: pd.DataFrame,
    tests: pd.DataFrame,
    *,
    factors: Sequence[str] = ("group", "sex"),
    test_types: Sequence[str] = (),
    workers: int | None = None,
) -> pd.DataFrame:
    """Compute the statistics of every phase as one tidy table.

    Parameters
    ----------
    sessions
        One row per session: ``subject, phase, test, day_in_phase, active, inactive,
        reinforcers, intake_mg_kg, analyzable, excluded_subject`` and the factor columns.
    tests
        One row per animal x reinstatement test: ``subject, test, baseline_active,
        test_active, baseline_inactive, test_inactive, included`` and the factor columns.
    factors
        Between-subject factors (columns of both tables).
    test_types
        Reinstatement tests the experiment defines; a test no animal took still gets a row
        saying so.
    workers
        Processes to run the analyses in, this one included (they are independent of each
        other); the table is the same for any number. ``None``: one per CPU when the
        largest analysis has at least :data:`POOL_MIN_ANIMALS` animals, else this process
        only.

    Returns
    -------
    pandas.DataFrame
        One row per tested term or comparison, columns:

        - ``analysis``: ``mixed_anova``, ``rm_anova`` (no factor with two levels), ``lmm``,
          ``ttest_paired``, ``posthoc``, ``gee_nb``.
        - ``phase``: acquisition, extinction, reinstatement.
        - ``test``: the reinstatement test type; missing for other phases.
        - ``measure``: active, inactive, reinforcers, intake_mg_kg.
        - ``effect``: the term: a factor (``group``), ``day_in_phase`` or ``period``,
          interactions ``a:b``; the cell factor of several factors is ``group × sex``.
          Missing on rows of analyses that did not run.
        - ``df1``: numerator df (F), df (t), or df of the Wald χ².
        - ``df2``: denominator df of F (Greenhouse–Geisser corrected in mixed ANOVAs,
          Satterthwaite in LMMs); missing for t and χ².
        - ``statistic``: F, t or Wald χ².
        - ``p``: p value (GG-corrected for within terms of mixed ANOVAs).
        - ``p_adjusted``: Holm-adjusted p (paired t per factor, post hoc per contrast).
        - ``effect_size``: the effect size named by ``effect_size_kind``.
        - ``effect_size_kind``: ``np2`` (partial η²), ``d_z`` (paired), ``hedges`` (g),
          ``rate_ratio`` (1-df GEE terms).
        - ``n_subjects``: animals in the analysis.
        - ``n_excluded``: animals of the phase/test left out of this analysis (why: ``note``).
        - ``warnings``: library warnings and reasons an analysis did not run.
        - ``sentence``: the APA-style result (``F(2, 44) = 5.10, p = .010, ηp² = .19``).
        - ``note``: what was compared, corrections, model details, dropped animals.

    Raises
    ------
    ConfigError
        ``factors`` is a string, repeats a name, uses a reserved name, or names a column
        that the tables lack.
    InternalError
        A table lacks a required column.

    Notes
    -----
    Missing data: excluded animals (``excluded_subject``) and sessions that are not
    ``analyzable`` never enter a statistic, nor do tests with ``included`` False. The mixed
    ANOVA needs complete animals: it uses sessions 1..K and the animals with a value on
    each, K chosen to keep the most animal-sessions (ties: the longer span); the others are
    dropped listwise and named in ``note``. The LMM and the GEE keep every analyzable
    session. An animal without a value of a used factor is dropped from that phase.

    The LMM codes factors with sum-to-zero contrasts and the time variable as is
    (``day_in_phase`` from 1; ``period`` 0 = baseline, 1 = test), so a factor's main effect
    is its difference at time 0; tests are type III Wald F with Satterthwaite df, the
    values lmerTest reports for ``anova(lmer(..., REML = FALSE))``.
    """
    names = _check_inputs(sessions, tests, factors)
    plan: _Plan = []
    if len(sessions):
        for phase in ("acquisition", "extinction"):
            plan += _session_phase(sessions, phase, names)
    for test in _test_types(sessions, tests, test_types):
        plan += _test_rows(sessions, tests, test, names)
    rows = _execute(plan, workers)
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in ("df1", "df2", "statistic", "p", "p_adjusted", "effect_size"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    for c in ("n_subjects", "n_excluded"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    return out
