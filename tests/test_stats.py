"""Phase statistics checked against independent references.

Every reference number below was computed in R 4.2 by ``tests/reference/reference.R``
from the CSV files in ``tests/reference/`` (written once by ``make_data.py``); its output is
kept in ``tests/reference/reference_values.txt``. Sources: lmerTest 3.1-3
(``anova(lmer(..., REML = FALSE), type = 3)``, Satterthwaite), afex 1.2-1 (``aov_ez``, GG),
``t.test(paired = TRUE)``, ``p.adjust(method = "holm")``, geepack 1.3-9 (``geeglm``),
MASS 7.3-58.2 (``glm.nb``). APA strings and ηp² are checked by hand computation.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from labpipe import stats
from labpipe.errors import ConfigError, InternalError

REF = Path(__file__).parent / "reference"


# ---------------------------------------------------------------------------- builders


def sessions_from(csv: str, phase: str = "acquisition", *, lean: bool = False) -> pd.DataFrame:
    """Sessions of one phase; ``lean`` leaves reinforcers and intake empty (not analysed)."""
    d = pd.read_csv(REF / csv)
    if lean:
        return d.assign(
            phase=phase,
            test=None,
            cohort="1",
            reinforcers=pd.NA,
            intake_mg_kg=np.nan,
            analyzable=True,
            excluded_subject=False,
        )
    return d.assign(
        phase=phase,
        test=None,
        cohort="1",
        reinforcers=d["active"] // 2,
        intake_mg_kg=d["active"] * 0.5 / 0.3,
        analyzable=True,
        excluded_subject=False,
    )


def rein_tests_from(csv: str = "reinstatement.csv", test: str = "cue") -> pd.DataFrame:
    return pd.read_csv(REF / csv).assign(test=test, included=True, cohort="1")


NO_TESTS = pd.DataFrame(
    columns=[
        "subject",
        "sex",
        "group",
        "cohort",
        "test",
        "baseline_active",
        "test_active",
        "baseline_inactive",
        "test_inactive",
        "included",
    ]
)


def rows(table: pd.DataFrame, **where: object) -> pd.DataFrame:
    mask = pd.Series(True, index=table.index)
    for col, value in where.items():
        mask &= table[col] == value
    return table[mask]


def one(table: pd.DataFrame, **where: object) -> pd.Series:
    found = rows(table, **where)
    assert len(found) == 1, (where, found)
    return found.iloc[0]


@pytest.fixture(scope="module")
def balanced() -> pd.DataFrame:
    return stats.phase_statistics(
        sessions_from("lmm_balanced.csv"), NO_TESTS, factors=["group", "sex"]
    )


@pytest.fixture(scope="module")
def balanced_group() -> pd.DataFrame:
    return stats.phase_statistics(
        sessions_from("lmm_balanced.csv", lean=True), NO_TESTS, factors=["group"]
    )


@pytest.fixture(scope="module")
def unbalanced() -> pd.DataFrame:
    return stats.phase_statistics(
        sessions_from("lmm_unbalanced.csv", lean=True), NO_TESTS, factors=["group", "sex"]
    )


@pytest.fixture(scope="module")
def unbalanced_group() -> pd.DataFrame:
    return stats.phase_statistics(
        sessions_from("lmm_unbalanced.csv", lean=True), NO_TESTS, factors=["group"]
    )


@pytest.fixture(scope="module")
def reinstatement() -> pd.DataFrame:
    empty = sessions_from("lmm_balanced.csv").iloc[0:0]
    return stats.phase_statistics(empty, rein_tests_from(), factors=["group"])


# ---------------------------------------------------------------------------- APA (by hand)


def test_format_f_design_example() -> None:
    # ηp² = F·df1 / (F·df1 + df2) = 10.2 / 54.2 = 0.1882 -> ".19"
    assert stats.partial_eta_squared(5.1, 2, 44) == pytest.approx(10.2 / 54.2)
    assert (
        stats.format_f(2, 44, 5.1, 0.0100, stats.partial_eta_squared(5.1, 2, 44))
        == "F(2, 44) = 5.10, p = .010, ηp² = .19"
    )


def test_format_rules() -> None:
    assert (
        stats.format_f(2.57, 51.35, 13.47, 1e-7, 0.40)
        == "F(2.57, 51.35) = 13.47, p < .001, ηp² = .40"
    )
    assert (
        stats.format_f(1, 308.0, 8.97, 0.003, corrected=(False, True))
        == "F(1, 308.00) = 8.97, p = .003"
    )
    assert stats.format_t(21, 5.57, 1e-5, 1.19) == "t(21) = 5.57, p < .001, d_z = 1.19"
    assert stats.format_t(6, -2.34, 0.0578, -1.44, "g", p_adjusted=0.17351) == (
        "t(6) = -2.34, p = .058, p_Holm = .174, g = -1.44"
    )
    assert stats.format_chi2(1, 11.48, 0.0007, 1.35) == "χ²(1) = 11.48, p < .001, RR = 1.35"
    assert stats.format_p(0.001) == "p = .001"
    assert stats.format_p(0.00099) == "p < .001"
    assert stats.format_p(0.9996) == "p > .999"
    assert stats.format_df(44.0) == "44"
    assert stats.format_df(51.349) == "51.35"
    assert stats.format_df(48.0, corrected=True) == "48.00"
    assert stats.format_f(2, 44, float("nan"), 0.5) == ""
    assert stats.format_t(2, float("inf"), 0.0) == ""


# ---------------------------------------------------------------------------- LMM vs lmerTest

# lmerTest: anova(lmer(active ~ group * sex * day_in_phase + (1 | subject), REML = FALSE))
# -> (NumDF, DenDF, F); identical under contr.sum and contr.treatment (type III).
LMER_BAL_GxS = {
    "group": (2, 42.5048297628, 4.727945918431),
    "sex": (1, 42.5048297681, 2.390041538708),
    "day_in_phase": (1, 48.0000004927, 64.650739409767),
    "group:sex": (2, 42.5048297628, 3.339832235719),
    "group:day_in_phase": (2, 48.0000004911, 0.836818584317),
    "sex:day_in_phase": (1, 48.0000004927, 1.257757120904),
    "group:sex:day_in_phase": (2, 48.0000004911, 0.647486573012),
}
LMER_BAL_G = {
    "group": (2, 22.4377466654, 2.333580246792),
    "day_in_phase": (1, 48.0000002502, 61.386110325149),
    "group:day_in_phase": (2, 48.0000002454, 0.794562264994),
}
LMER_UNB_GxS = {
    "group": (2, 44.9692244393, 4.700036141799),
    "sex": (1, 44.9797735869, 2.363316359935),
    "day_in_phase": (1, 43.7124542350, 55.534816380705),
    "group:sex": (2, 44.9692244376, 3.542873468432),
    "group:day_in_phase": (2, 43.7033077816, 0.676772847727),
    "sex:day_in_phase": (1, 43.7124542335, 1.138207639722),
    "group:sex:day_in_phase": (2, 43.7033077853, 0.566420200546),
}
LMER_UNB_G = {
    "group": (2, 23.4919899642, 2.351945293820),
    "day_in_phase": (1, 44.2128861215, 53.008813710212),
    "group:day_in_phase": (2, 44.2102817393, 0.726479764455),
}


@pytest.mark.parametrize(
    ("fixture", "reference"),
    [
        ("balanced", LMER_BAL_GxS),
        ("balanced_group", LMER_BAL_G),
        ("unbalanced", LMER_UNB_GxS),
        ("unbalanced_group", LMER_UNB_G),
    ],
)
def test_lmm_matches_lmertest(
    fixture: str, reference: dict, request: pytest.FixtureRequest
) -> None:
    table = request.getfixturevalue(fixture)
    lmm = rows(table, analysis="lmm", measure="active")
    assert list(lmm["effect"]) == list(reference)
    for effect, (num_df, den_df, f) in reference.items():
        r = one(lmm, effect=effect)
        assert r["df1"] == num_df
        # statsmodels' ML optimum agrees with lme4's to ~1e-6. For q > 1 lmerTest splits the
        # hypothesis along eigenvectors of L C L' with L from treatment coding mapped to the
        # model's coding; labpipe's L selects the sum-coded coefficients. Same row space, so F
        # is identical, but the combined ddf depends on the basis: equal in balanced data,
        # within 1e-4 relative in the unbalanced one.
        assert r["statistic"] == pytest.approx(f, rel=1e-5)
        assert r["df2"] == pytest.approx(den_df, rel=1e-5 if num_df == 1 else 1e-4)
        assert r["p"] == pytest.approx(
            float(__import__("scipy").stats.f.sf(f, num_df, den_df)), rel=1e-3
        )
        assert r["n_subjects"] == 12
        assert r["sentence"].startswith(f"F({num_df}, {den_df:.2f}) = {f:.2f}")


def test_lmm_within_rat_df_balanced_is_nobs_minus_nrats(balanced: pd.DataFrame) -> None:
    # Domain fact (Coffey et al./MATLAB, lmerTest above): balanced, random intercept, ML ->
    # within-rat terms have df = N_obs - N_rats = 60 - 12.
    lmm = rows(balanced, analysis="lmm", measure="active")
    within = lmm[lmm["effect"].str.contains("day_in_phase")]
    assert len(within) == 4
    assert np.allclose(within["df2"], 48.0, atol=1e-3)
    assert (lmm.loc[~lmm.index.isin(within.index), "df2"] < 48).all()


def test_lmm_boundary_fit_reinstatement(reinstatement: pd.DataFrame) -> None:
    # lmerTest, active ~ group * period + (1 | subject), REML = FALSE: singular fit (θ = 0),
    # every df = N_obs = 24.
    ref = {
        "group": (2, 0.0100761245675),
        "period": (1, 11.6132318339207),
        "group:period": (2, 0.8138961937716),
    }
    lmm = rows(reinstatement, analysis="lmm", measure="active")
    for effect, (q, f) in ref.items():
        r = one(lmm, effect=effect)
        assert r["df1"] == q
        assert r["statistic"] == pytest.approx(f, rel=1e-5)
        assert r["df2"] == pytest.approx(24.0, abs=1e-3)
        assert "boundary" in r["warnings"]


def test_satterthwaite_function_direct() -> None:
    # The public helper at lme4's own ML estimates (σ, θ) reproduces lmerTest to 1e-7.
    d = pd.read_csv(REF / "lmm_balanced.csv").sort_values(["subject", "day_in_phase"])
    design = stats._design(d, ["group"], "day_in_phase")
    y = d["active"].to_numpy(float)
    sigma, theta = 4.9284991565, 1.44441065066
    groups = d["subject"].to_numpy()
    # GLS estimate of b at lme4's (σ, θ).
    xtvx = np.zeros((design.X.shape[1],) * 2)
    xtvy = np.zeros(design.X.shape[1])
    for g in np.unique(groups):
        idx = groups == g
        n = idx.sum()
        vinv = np.linalg.inv(sigma**2 * (np.eye(n) + theta**2 * np.ones((n, n))))
        xtvx += design.X[idx].T @ vinv @ design.X[idx]
        xtvy += design.X[idx].T @ vinv @ y[idx]
    beta = np.linalg.solve(xtvx, xtvy)
    out = stats.satterthwaite_anova(design.X, y, groups, beta, sigma, theta, design.terms)
    for t in out:
        num_df, den_df, f = LMER_BAL_G[t.term]
        assert t.num_df == num_df
        assert t.f == pytest.approx(f, rel=1e-7)
        assert t.den_df == pytest.approx(den_df, rel=1e-6)


# ---------------------------------------------------------------------------- mixed ANOVA vs afex

# afex::aov_ez(..., anova_table = list(correction = "GG", es = "pes")):
# effect -> (num Df, den Df, F, pes, p)
AFEX_BAL_G = {
    "group": (2, 9, 3.460925542451, 0.434739092081, 7.67574048345e-02),
    "day_in_phase": (
        2.42519906572,
        21.8267915915,
        13.833316445435,
        0.605839124531,
        6.46085005122e-05,
    ),
    "group:day_in_phase": (
        4.85039813144,
        21.8267915915,
        0.874556692674,
        0.162721642487,
        0.511646001441,
    ),
}
AFEX_BAL_CELL = {
    "group × sex": (5, 6, 5.558799923562, 0.822453687996, 0.0296597610899),
    "day_in_phase": (
        1.79952715385,
        10.7971629231,
        11.662480779088,
        0.660296870239,
        0.0023853660334,
    ),
    "group × sex:day_in_phase": (
        8.99763576923,
        10.7971629231,
        0.612455151205,
        0.337914651735,
        0.7643304958748,
    ),
}
AFEX_UNB_G = {
    "group": (2, 6, 2.587599519637, 0.463096811170, 0.15477041607748),
    "day_in_phase": (
        1.86813609531,
        11.2088165719,
        9.684669319689,
        0.617460854436,
        0.00400546431533,
    ),
    "group:day_in_phase": (
        3.73627219062,
        11.2088165719,
        0.818267955278,
        0.214303439377,
        0.53246423955179,
    ),
}
AFEX_REIN_G = {
    "group": (2, 9, 0.811419535112, 0.152768865225, 0.4742513572729),
    "period": (1, 9, 7.928987223748, 0.468367488199, 0.0201834517039),
    "group:period": (2, 9, 0.555691353980, 0.109914018692, 0.5921664860510),
}


def _check_anova(block: pd.DataFrame, reference: dict, n: int) -> None:
    assert list(block["effect"]) == list(reference)
    for effect, (df1, df2, f, pes, p) in reference.items():
        r = one(block, effect=effect)
        assert r["df1"] == pytest.approx(df1, rel=1e-9)
        assert r["df2"] == pytest.approx(df2, rel=1e-9)
        assert r["statistic"] == pytest.approx(f, rel=1e-9)
        assert r["effect_size"] == pytest.approx(pes, rel=1e-9)
        assert r["effect_size_kind"] == "np2"
        assert r["p"] == pytest.approx(p, rel=1e-8)
        assert r["n_subjects"] == n


def test_mixed_anova_group_matches_afex(balanced: pd.DataFrame) -> None:
    block = rows(balanced, analysis="mixed_anova", measure="active").iloc[0:3]
    _check_anova(block, AFEX_BAL_G, 12)
    assert "ε = .606" in block.iloc[1]["note"]
    assert block.iloc[1]["sentence"] == "F(2.43, 21.83) = 13.83, p < .001, ηp² = .61"
    assert block.iloc[0]["sentence"] == "F(2, 9) = 3.46, p = .077, ηp² = .43"


def test_mixed_anova_cell_factor_matches_afex(balanced: pd.DataFrame) -> None:
    block = rows(balanced, analysis="mixed_anova", measure="active").iloc[6:9]
    _check_anova(block, AFEX_BAL_CELL, 12)
    assert "cells of group × sex" in block.iloc[0]["note"]


def test_mixed_anova_listwise_matches_afex(unbalanced_group: pd.DataFrame) -> None:
    block = rows(unbalanced_group, analysis="mixed_anova", measure="active")
    _check_anova(block, AFEX_UNB_G, 9)
    assert (block["n_excluded"] == 3).all()
    assert "R02, R07, R11" in block.iloc[0]["note"]
    assert "listwise" in block.iloc[0]["note"]
    # ... while the LMM keeps all 12 animals.
    assert (rows(unbalanced_group, analysis="lmm", measure="active")["n_subjects"] == 12).all()


def test_mixed_anova_reinstatement_matches_afex(reinstatement: pd.DataFrame) -> None:
    block = rows(reinstatement, analysis="mixed_anova", measure="active")
    _check_anova(block, AFEX_REIN_G, 12)


def test_eta_p2_is_f_df1_over_f_df1_plus_df2(balanced: pd.DataFrame) -> None:
    # By hand, with the uncorrected df (GG multiplies both df by ε, which cancels).
    for _, r in rows(balanced, analysis="mixed_anova").iterrows():
        assert r["effect_size"] == pytest.approx(
            stats.partial_eta_squared(r["statistic"], r["df1"], r["df2"]), rel=1e-9
        )


# ---------------------------------------------------------------------------- paired t, post hoc


def test_paired_t_matches_r_t_test_and_holm(reinstatement: pd.DataFrame) -> None:
    # R: t.test(test, baseline, paired = TRUE) per group; d_z = mean(diff)/sd(diff);
    # p.adjust(c(pA, pB, pC), "holm").
    ref = {
        "A": (1.39941929211, 3, 0.256163545911, 0.699709646056, 0.256163545911),
        "B": (6.71015229267, 3, 0.00675454381507, 3.35507614634, 0.0202636314452),
        "C": (5.04059764645, 3, 0.01505475572, 2.52029882323, 0.0301095114401),
    }
    block = rows(reinstatement, analysis="ttest_paired", measure="active")
    assert len(block) == 3
    for (_, r), (group, (t, df, p, dz, holm)) in zip(block.iterrows(), ref.items(), strict=True):
        assert r["note"].startswith(f"group = {group}")
        assert r["statistic"] == pytest.approx(t, rel=1e-9)
        assert r["df1"] == df
        assert r["p"] == pytest.approx(p, rel=1e-8)
        assert r["p_adjusted"] == pytest.approx(holm, rel=1e-8)
        assert r["effect_size"] == pytest.approx(dz, rel=1e-9)
        assert r["effect_size_kind"] == "d_z"
        assert r["n_subjects"] == 4
    assert (
        block.iloc[1]["sentence"] == "group = B: t(3) = 6.71, p = .007, p_Holm = .020, d_z = 3.36"
    )


def test_posthoc_matches_r(reinstatement: pd.DataFrame) -> None:
    # R: per-animal mean of baseline and test; t.test(var.equal = TRUE) per pair;
    # p.adjust(..., "holm"); Hedges g = d * (1 - 3 / (4 (n1 + n2) - 9)).
    ref = [
        (1.04010420772, 6, 0.338377227148, 0.676754454296, 0.639534555147),
        (0.635284830761, 6, 0.548688889425, 0.676754454296, 0.390621053753),
        (-2.34011549605, 6, 0.0578348039226, 0.173504411768, -1.43887959654),
    ]
    block = rows(reinstatement, analysis="posthoc", measure="active", effect="group")
    assert len(block) == 3
    for (_, r), (t, df, p, holm, g) in zip(block.iterrows(), ref, strict=True):
        assert r["statistic"] == pytest.approx(t, rel=1e-9)
        assert r["df1"] == df
        assert r["p"] == pytest.approx(p, rel=1e-8)
        assert r["p_adjusted"] == pytest.approx(holm, rel=1e-8)
        assert r["effect_size"] == pytest.approx(g, rel=1e-9)
        assert r["effect_size_kind"] == "hedges"
    assert "B vs C" in block.iloc[2]["sentence"]
    # Period (baseline vs test, all animals): the paired t over 12 animals, reported once.
    period = one(reinstatement, analysis="posthoc", measure="active", effect="period")
    assert period["df1"] == 11
    interaction = rows(reinstatement, analysis="posthoc", measure="active", effect="group:period")
    assert len(interaction) == 6


# ---------------------------------------------------------------------------- count model


def test_poisson_gee_matches_geepack() -> None:
    # geepack::geeglm(active ~ group * day_in_phase, id = subject, family = poisson,
    # corstr = "exchangeable"), contr.sum. labpipe fits the NB family through the same GEE
    # code; geepack has no NB family, so the comparable check is the Poisson GEE. The two
    # packages estimate the exchangeable correlation with different moment formulas
    # (statsmodels .619, geepack .653), so estimates agree to ~1e-3, not to 1e-8.
    d = pd.read_csv(REF / "lmm_balanced.csv").sort_values(["subject", "day_in_phase"])
    design = stats._design(d, ["group"], "day_in_phase")
    res, messages = stats._fit_gee(
        d["active"].to_numpy(float), design.X, d["subject"].to_numpy(), sm.families.Poisson()
    )
    assert messages == []
    coef = [
        3.0700849083887,
        -0.3903332959799,
        0.1951088848153,
        0.1151239337912,
        0.0227482703017,
        -0.0234448790494,
    ]
    se = [
        0.0801294046566,
        0.1002130742648,
        0.0864252405982,
        0.0113486417668,
        0.0184097132931,
        0.0120568058593,
    ]
    assert np.allclose(res.params, coef, rtol=2e-3, atol=1e-4)
    assert np.allclose(res.bse, se, rtol=2e-3)
    cov = np.asarray(res.cov_params())
    wald = {}
    for term, sl in design.terms.items():
        b = np.asarray(res.params)[sl]
        wald[term] = float(b @ np.linalg.solve(cov[sl, sl], b))
    # geepack: Wald chi2 from vcov(g): group 24.836, day 102.907, group:day 3.9585
    assert wald["group"] == pytest.approx(24.8358001164, rel=5e-3)
    assert wald["day_in_phase"] == pytest.approx(102.906656437, rel=5e-3)
    assert wald["group:day_in_phase"] == pytest.approx(3.95854191199, rel=5e-3)


def test_nb_dispersion_matches_mass_glm_nb() -> None:
    # MASS::glm.nb(active ~ group * day_in_phase): theta = 25.7136730765 -> alpha = 1/theta.
    d = pd.read_csv(REF / "lmm_balanced.csv")
    design = stats._design(d, ["group"], "day_in_phase")
    alpha, messages = stats._nb_alpha(d["active"].to_numpy(float), design.X)
    assert alpha == pytest.approx(0.038889815431, rel=1e-5)


def test_gee_nb_rows(balanced_group: pd.DataFrame) -> None:
    block = rows(balanced_group, analysis="gee_nb", measure="active")
    assert list(block["effect"]) == ["group", "day_in_phase", "group:day_in_phase"]
    assert list(block["df1"]) == [2, 1, 2]
    day = one(block, effect="day_in_phase")
    assert day["effect_size_kind"] == "rate_ratio"
    # RR per session = exp(b_day), about +12% per session in this dataset.
    assert 1.05 < day["effect_size"] < 1.2
    assert day["sentence"].startswith("χ²(1) = ")
    assert "α = 0.0389" in day["note"]
    assert rows(balanced_group, analysis="gee_nb", measure="intake_mg_kg").empty


# ---------------------------------------------------------------------------- table shape


def test_columns_and_measures(balanced: pd.DataFrame) -> None:
    assert tuple(balanced.columns) == stats.COLUMNS
    assert set(balanced["measure"]) == {"active", "inactive", "reinforcers", "intake_mg_kg"}
    assert set(balanced["analysis"]) == {"mixed_anova", "lmm", "gee_nb"}
    assert balanced["n_subjects"].dtype == "Int64"
    assert balanced["test"].isna().all()


def test_deterministic() -> None:
    s = sessions_from("lmm_unbalanced.csv", lean=True)
    a = stats.phase_statistics(s, rein_tests_from(), factors=["group", "sex"])
    b = stats.phase_statistics(s, rein_tests_from(), factors=["group", "sex"])
    pd.testing.assert_frame_equal(a, b)


def test_worker_processes_give_the_same_table() -> None:
    # Large experiments run the analyses in worker processes: the same rows, same order.
    s = pd.concat(
        [
            sessions_from("lmm_unbalanced.csv"),
            sessions_from("lmm_balanced.csv", "extinction", lean=True),
        ],
        ignore_index=True,
    )
    t = pd.concat([rein_tests_from(), rein_tests_from(test="stress")], ignore_index=True)
    serial = stats.phase_statistics(s, t, factors=["group", "sex"], workers=1)
    parallel = stats.phase_statistics(s, t, factors=["group", "sex"], workers=2)
    pd.testing.assert_frame_equal(serial, parallel)
    assert set(serial["analysis"]) >= {"mixed_anova", "lmm", "gee_nb", "posthoc"}


# ---------------------------------------------------------------- missing data, edge cases


def test_flagged_sessions_and_excluded_animals_never_enter() -> None:
    clean = sessions_from("lmm_balanced.csv", lean=True)
    noisy = clean.copy()
    # A flagged session with absurd counts, and an excluded animal.
    noisy.loc[0, "analyzable"] = False
    noisy.loc[0, "active"] = 10_000
    extra = clean[clean["subject"] == "R01"].assign(
        subject="R99", active=5000, excluded_subject=True
    )
    noisy = pd.concat([noisy, extra], ignore_index=True)
    reference = clean.drop(index=0)
    a = stats.phase_statistics(noisy, NO_TESTS, factors=["group"])
    b = stats.phase_statistics(reference, NO_TESTS, factors=["group"])
    la, lb = rows(a, analysis="lmm", measure="active"), rows(b, analysis="lmm", measure="active")
    assert np.allclose(la["statistic"], lb["statistic"], rtol=1e-6)
    assert (la["n_subjects"] == 12).all()
    assert (la["n_excluded"] == 1).all()
    assert "excluded animal: R99" in la.iloc[0]["note"]
    # The mixed ANOVA drops R01 (a flagged session) listwise and says so.
    anova = rows(a, analysis="mixed_anova", measure="active")
    assert (anova["n_subjects"] == 11).all()
    assert "R01" in anova.iloc[0]["note"] and "R99" in anova.iloc[0]["note"]


def test_extinction_statistics_use_the_first_run_and_say_so() -> None:
    first = sessions_from("lmm_balanced.csv", "extinction", lean=True).assign(re_extinction=False)
    # Re-extinction after a test: later days with counts that would swamp the curve.
    later = first[first["day_in_phase"] <= 2].assign(
        day_in_phase=lambda d: d["day_in_phase"] + first["day_in_phase"].max(),
        active=400,
        re_extinction=True,
    )
    a = stats.phase_statistics(pd.concat([first, later]), NO_TESTS, factors=["group"])
    b = stats.phase_statistics(first, NO_TESTS, factors=["group"])
    for analysis in ("mixed_anova", "lmm"):
        ra, rb = rows(a, analysis=analysis), rows(b, analysis=analysis)
        assert np.allclose(ra["statistic"], rb["statistic"], rtol=1e-9)
        assert (ra["n_subjects"] == rb["n_subjects"]).all()
        note = f"first extinction run: {len(later)} re-extinction sessions"
        assert ra["note"].str.startswith(note).all()
        assert not rb["note"].str.contains("re-extinction").any()


def test_three_animals_per_group_small_cells() -> None:
    s = sessions_from("lmm_balanced.csv")
    s = s[~s["subject"].isin(["R04", "R08", "R12"])]  # 3 per group, cells of 1-2
    s = s[~((s["subject"] == "R05") & (s["day_in_phase"] == 2))]  # a missing session
    t = rein_tests_from()
    t = t[~t["subject"].isin(["S04", "S08", "S12"])]
    out = stats.phase_statistics(s, t, factors=["group", "sex"])
    assert tuple(out.columns) == stats.COLUMNS
    cell = rows(
        out, analysis="mixed_anova", measure="active", effect="group × sex", phase="acquisition"
    )
    assert len(cell) == 1 and "fewer than 2 complete animals" in cell.iloc[0]["warnings"]
    assert rows(out, analysis="lmm", phase="acquisition")["statistic"].notna().any()
    gee = rows(out, analysis="gee_nb", phase="reinstatement", measure="active")
    assert len(gee) == 1 and "more animals than coefficients" in gee.iloc[0]["warnings"]
    assert rows(out, analysis="ttest_paired", measure="active")["statistic"].notna().all()


def test_test_type_with_no_animals() -> None:
    s = sessions_from("lmm_balanced.csv", lean=True)
    stress = s.iloc[:2].assign(phase="reinstatement", test="stress", day_in_phase=1)
    t = pd.concat([rein_tests_from(), rein_tests_from(test="drug_prime").assign(included=False)])
    out = stats.phase_statistics(pd.concat([s, stress]), t, factors=["group"])
    assert list(dict.fromkeys(out["test"].dropna())) == ["cue", "drug_prime", "stress"]
    for test, words in (("stress", "no animal took"), ("drug_prime", "no included animal")):
        block = rows(out, test=test)
        assert len(block) == 2  # one row per measure
        assert block["warnings"].str.contains(words).all()
        assert block["statistic"].isna().all()
    assert one(out, test="drug_prime", measure="active")["n_excluded"] == 12


def test_factor_with_one_level() -> None:
    s = sessions_from("lmm_balanced.csv", lean=True).assign(sex="M")
    t = rein_tests_from().assign(sex="M")
    out = stats.phase_statistics(s, t, factors=["group", "sex"])
    assert not out["effect"].fillna("").str.contains("sex").any()
    assert out["warnings"].str.contains("factor sex has one level").all()
    lmm = rows(out, analysis="lmm", measure="active", phase="acquisition")
    ref = LMER_BAL_G  # sex dropped -> the group-only model
    assert list(lmm["effect"]) == list(ref)
    assert one(lmm, effect="group")["statistic"] == pytest.approx(ref["group"][2], rel=2e-5)


def test_no_factors_runs_repeated_measures() -> None:
    out = stats.phase_statistics(
        sessions_from("lmm_balanced.csv", lean=True), rein_tests_from(), factors=[]
    )
    rm = one(out, analysis="rm_anova", measure="active", phase="acquisition")
    assert rm["effect"] == "day_in_phase" and rm["n_subjects"] == 12
    # Same within effect F as the mixed ANOVA's (the between factor does not change it
    # when there is none) — and GG-corrected df.
    assert rm["df1"] < 4
    t = rows(out, analysis="ttest_paired", measure="active")
    assert len(t) == 1 and t.iloc[0]["note"].startswith("all animals")
    assert rows(out, analysis="lmm", phase="reinstatement", measure="active")[
        "effect"
    ].tolist() == ["period"]


def test_group_with_one_animal_gives_warning_row() -> None:
    s = sessions_from("lmm_balanced.csv", lean=True)
    s.loc[s["subject"] == "R12", "group"] = "D"
    out = stats.phase_statistics(s, NO_TESTS, factors=["group"])
    r = one(out, analysis="mixed_anova", measure="active", effect="group")
    assert "D (n = 1)" in r["warnings"] and math.isnan(r["statistic"])


def test_library_warnings_recorded_not_emitted() -> None:
    # Identical baseline-test differences: pingouin divides by a zero SD (RuntimeWarning).
    t = rein_tests_from()
    t["test_active"] = t["baseline_active"] + 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = stats.phase_statistics(NO_TESTS.iloc[0:0], t, factors=["group"])
    assert [
        w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))
    ] == []
    paired = rows(out, analysis="ttest_paired", measure="active")
    assert paired["warnings"].str.contains("RuntimeWarning").all()
    assert (paired["sentence"] == "").all()


def test_empty_inputs_give_empty_table() -> None:
    out = stats.phase_statistics(pd.DataFrame(), pd.DataFrame(), factors=["group", "sex"])
    assert out.empty and tuple(out.columns) == stats.COLUMNS


def test_caller_mistakes_raise_labpipe_errors() -> None:
    s = sessions_from("lmm_balanced.csv")
    with pytest.raises(ConfigError, match="strain"):
        stats.phase_statistics(s, NO_TESTS, factors=["group", "strain"])
    with pytest.raises(ConfigError, match="list"):
        stats.phase_statistics(s, NO_TESTS, factors="group")
    with pytest.raises(ConfigError, match="twice"):
        stats.phase_statistics(s, NO_TESTS, factors=["group", "group"])
    with pytest.raises(InternalError, match="analyzable"):
        stats.phase_statistics(s.drop(columns="analyzable"), NO_TESTS, factors=["group"])
