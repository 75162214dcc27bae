"""Outcome statistics: response rates, Fisher, groups, ROC, survival and maxstat against independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tlsquant.errors import TLSQuantError
from tlsquant.groups import assign_groups, parse_cut
from tlsquant.response import fisher_exact_2xk, proportion_ci, recist_categories, response_rates, response_tests


@pytest.mark.parametrize("k, n, method, expected", [
    (23, 28, "clopper-pearson", (82.1, 63.1, 93.9)),  # the seed trials' intervals
    (16, 52, "clopper-pearson", (30.8, 18.7, 45.1)),
    (43, 52, "clopper-pearson", (82.7, 69.7, 91.8)),
    (6, 13, "wilson", (46.2, 23.2, 70.9)),
    (13, 13, "wilson", (100.0, 77.2, 100.0)),
])
def test_proportion_intervals_reproduce_published_values(k, n, method, expected):
    rate, low, high = proportion_ci(k, n, method=method)
    assert tuple(round(100 * v, 1) for v in (rate, low, high)) == expected


def test_clopper_pearson_matches_beta_quantiles_and_wilson_the_score_formula():
    k, n = 7, 19
    _, low, high = proportion_ci(k, n)
    assert low == pytest.approx(scipy_stats.beta.ppf(0.025, k, n - k + 1))
    assert high == pytest.approx(scipy_stats.beta.ppf(0.975, k + 1, n - k))
    z, p = scipy_stats.norm.ppf(0.975), k / n
    centre, half = (p + z**2 / (2 * n)) / (1 + z**2 / n), z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert proportion_ci(k, n, method="wilson")[1:] == pytest.approx((centre - half, centre + half))
    assert proportion_ci(0, 0) == (None, None, None)
    with pytest.raises(TLSQuantError, match="agresti"):
        proportion_ci(1, 2, method="agresti")


def _brute_fisher(responders, totals):
    """Enumerate every 2 x k table with the observed margins (plain Python)."""
    hits, grand = sum(responders), sum(totals)

    def prob(counts):
        return math.prod(math.comb(t, c) for t, c in zip(totals, counts)) / math.comb(grand, hits)

    observed = prob(responders)
    return sum(prob(c) for c in itertools.product(*[range(t + 1) for t in totals])
               if sum(c) == hits and prob(c) <= observed * (1 + 1e-7))


@pytest.mark.parametrize("responders, totals", [([3, 9], [10, 12]), ([0, 5], [6, 6]), ([2, 5, 7], [8, 9, 9]), ([1, 1, 4, 2], [4, 5, 6, 3])])
def test_fisher_matches_scipy_and_enumeration(responders, totals):
    p = fisher_exact_2xk(responders, totals)
    assert p == pytest.approx(_brute_fisher(responders, totals), rel=1e-9)
    if len(totals) == 2:
        table = [[responders[0], totals[0] - responders[0]], [responders[1], totals[1] - responders[1]]]
        assert p == pytest.approx(scipy_stats.fisher_exact(table).pvalue, rel=1e-9)


def _cohort():
    return pd.DataFrame({
        "response": ["CR", "PR", "PR", "SD", "PD", "pd", "NE", None, "SD", "PR"],
        "tls_density_per_mm2": [0.3, 0.2, 0.25, 0.02, 0.0, 0.01, 0.0, 0.1, 0.15, 0.05],
        "tls_mature_count": [2, 1, 0, 0, 0, 0, 0, 1, 1, 0],
    })


def test_response_rates_overall_and_by_group():
    df = _cohort()
    groups, rule = assign_groups(df, "tls_density_per_mm2", cut="median")
    assert "median (0.075)" in rule
    table = response_rates(df, "response", groups=groups, group_by="tls_density_per_mm2")
    overall = table[(table.group == "all")].set_index("endpoint")
    # 9 with a response (one missing); ORR = CR + PR = 4/9; DCR adds SD: 6/9; NE stays in the denominator
    assert (overall.loc["ORR", "responders"], overall.loc["ORR", "n"], overall.loc["ORR", "excluded"]) == (4, 9, 1)
    assert overall.loc["DCR", "responders"] == 6
    high = table[(table.endpoint == "ORR") & (table.group == "high")].iloc[0]
    assert (high.responders, high.n) == (3, 4)  # above 0.075: CR, PR, PR, SD (0.1 has no response)
    excluded = response_rates(df, "response", exclude_not_evaluable=True)
    assert excluded.loc[excluded.endpoint == "ORR", "n"].iloc[0] == 8
    tests = response_tests(df, "response", groups, group_by="tls_density_per_mm2")
    row = tests.set_index("endpoint").loc["ORR"]
    assert row.groups == "low/high" and row.responders == "1/3" and row.n == "5/4"
    assert row.p == pytest.approx(scipy_stats.fisher_exact([[1, 4], [3, 1]]).pvalue)


def test_response_labels_are_configurable_and_unknown_labels_named():
    df = pd.DataFrame({"best": ["responder", "non-responder", "Responder"]})
    cats = recist_categories(df["best"], categories={"PR": "responder", "PD": ["non-responder"]}, column="best")
    assert list(cats) == ["PR", "PD", "PR"]
    with pytest.raises(TLSQuantError, match=r"column 'best'.*responder.*not recognised"):
        recist_categories(df["best"], column="best")


def test_groups_from_cut_points():
    df = _cohort()
    labels, _ = assign_groups(df, "tls_mature_count", cut="present")
    assert list(labels) == ["present", "present", "absent", "absent", "absent", "absent", "absent", "present", "present", "absent"]
    labels, rule = assign_groups(df, "tls_density_per_mm2", cut="tertiles")
    assert labels.value_counts().to_dict() == {"T1": 4, "T2": 3, "T3": 3} and "T1 ≤" in rule
    labels, _ = assign_groups(df, "tls_density_per_mm2", cut=0.1)
    assert (labels == "high").sum() == 4
    labels, _ = assign_groups(pd.DataFrame({"arm": ["x", "y", None]}), "arm")
    assert list(labels) == ["x", "y", None]
    assert parse_cut("0.05") == 0.05 and parse_cut("Median") == "median"
    with pytest.raises(TLSQuantError, match="cut-point 'top'"):
        parse_cut("top")
    with pytest.raises(TLSQuantError, match="holds labels"):
        assign_groups(pd.DataFrame({"arm": ["x", "y", "z"]}), "arm", cut="median")


# --- survival: lifelines against R's published output on the NCCTG lung data lifelines ships -------------

def _lung():
    datasets = pytest.importorskip("lifelines.datasets")
    df = datasets.load_lung()
    return df.assign(sex_label=df["sex"].map({1: "male", 2: "female"}))


def test_kaplan_meier_medians_match_r_survfit_on_lung():
    from tlsquant.survival import survival_by_group

    df = _lung()
    result = survival_by_group(df, time="time", event="status", groups=df["sex_label"], group_by="sex", conf_type="log")
    medians = result["medians"].set_index("group")
    # R: survfit(Surv(time, status) ~ sex, lung): median (0.95LCL, 0.95UCL); overall 310 (285, 363)
    expected = {"all": (228, 165, 310, 285, 363), "male": (138, 112, 270, 212, 310), "female": (90, 53, 426, 348, 550)}
    for group, values in expected.items():
        row = medians.loc[group]
        assert (row.n, row.events, row["median"], row.median_ci_low, row.median_ci_high) == values
    tests = result["tests"].set_index("test")
    # R survdiff: Chisq = 10.3 on 1 df, p = 0.00131; coxph(~ sex): exp(coef) 0.588 (0.424, 0.816), p = 0.00149
    assert tests.loc["log-rank", "statistic"] == pytest.approx(10.33, abs=0.005)
    assert tests.loc["log-rank", "p"] == pytest.approx(0.00131, rel=5e-3)
    cox = tests.loc["Cox PH (groups)"]
    assert cox.comparison == "male vs female"  # the reverse of R's female vs male: invert
    assert (1 / cox.hr, 1 / cox.hr_ci_high, 1 / cox.hr_ci_low) == pytest.approx((0.588, 0.4237, 0.816), rel=1e-3)
    assert cox.p == pytest.approx(0.00149, rel=5e-3)


def _hand_kaplan_meier(times, events):
    """Product-limit estimate, Greenwood sum and log-log band, plain numpy."""
    grid = np.unique(times)
    survival, greenwood, s, g = [], [], 1.0, 0.0
    for t in grid:
        n, d = (times >= t).sum(), events[times == t].sum()
        s *= 1 - d / n
        g += d / (n * (n - d)) if n > d else 0.0
        survival.append(s)
        greenwood.append(g)
    survival, greenwood = np.array(survival), np.array(greenwood)
    z = scipy_stats.norm.ppf(0.975)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = z * np.sqrt(greenwood) / np.log(survival)
    return grid, survival, survival ** np.exp(-spread), survival ** np.exp(spread)


def test_log_log_median_interval_and_log_rank_match_a_hand_computation():
    from tlsquant.survival import survival_by_group

    df = _lung()
    male = df[df.sex == 1]
    grid, survival, lower, upper = _hand_kaplan_meier(male.time.to_numpy(float), male.status.to_numpy(float))
    # Brookmeyer–Crowley: the times whose pointwise interval contains 0.5
    inside = grid[(lower <= 0.5) & (upper >= 0.5)]
    medians = survival_by_group(df, time="time", event="status", groups=df["sex_label"])["medians"].set_index("group")
    assert medians.loc["male", "median"] == grid[np.argmax(survival <= 0.5)]
    assert medians.loc["male", "median_ci_low"] == inside.min()
    assert medians.loc["male", "median_ci_high"] == pytest.approx(grid[np.argmax(upper < 0.5)], rel=1e-3)
    # log-rank by hand: observed minus expected and the hypergeometric variance over event times
    times, events, is_male = df.time.to_numpy(float), df.status.to_numpy(float), (df.sex == 1).to_numpy()
    o_minus_e = variance = 0.0
    for t in np.unique(times[events == 1]):
        at_risk = times >= t
        n, n1 = at_risk.sum(), (at_risk & is_male).sum()
        d, d1 = ((times == t) & (events == 1)).sum(), ((times == t) & (events == 1) & is_male).sum()
        o_minus_e += d1 - d * n1 / n
        variance += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1) if n > 1 else 0.0
    tests = survival_by_group(df, time="time", event="status", groups=df["sex_label"])["tests"].set_index("test")
    assert tests.loc["log-rank", "statistic"] == pytest.approx(o_minus_e**2 / variance, rel=1e-3)


def test_cox_per_sd_and_survival_input_errors():
    from tlsquant.survival import survival_by_group

    df = _lung().dropna(subset=["age"])
    groups, _ = assign_groups(df, "age", cut="median")
    tests = survival_by_group(df, time="time", event="status", groups=groups, group_by="age", metric="age")["tests"]
    per_sd = tests[tests.test == "Cox PH (continuous)"].iloc[0]
    # R: coxph(Surv(time, status) ~ age, lung): exp(coef) = 1.0189 per year, p = 0.0419
    assert per_sd.hr == pytest.approx(1.0189 ** df.age.std(), rel=1e-3) and per_sd.p == pytest.approx(0.0419, rel=1e-2)
    with pytest.raises(TLSQuantError, match="'pfs_event'.*found"):
        survival_by_group(df.assign(pfs_event=2), time="time", event="pfs_event", groups=groups)
    with pytest.raises(TLSQuantError, match="'os' not found"):
        survival_by_group(df, time="os", event="status", groups=groups)
    # text that is not a number is named, not dropped (n would change without a word); blanks stay missing
    times = df["time"].astype(object)
    times.iloc[[3, 7]] = ["12mo", "n/a"]
    with pytest.raises(TLSQuantError, match=r"'time': survival times must be numbers.*1 other value.*'12mo'"):
        survival_by_group(df.assign(time=times), time="time", event="status", groups=groups)
    with pytest.raises(TLSQuantError, match=r"'yes_no': events .* must be numbers.*'yes'"):
        survival_by_group(df.assign(yes_no=np.where(df.status == 1, "yes", "no")), time="time", event="yes_no", groups=groups)
    times.iloc[3] = ""
    medians = survival_by_group(df.assign(time=times), time="time", event="status", groups=groups)["medians"]
    assert medians.loc[medians.group == "all", "n"].iloc[0] == len(df) - 2


# --- maximally selected log-rank statistics -----------------------------------------------------------------

def _maxstat_sample(n=40, seed=3):
    rng = np.random.default_rng(seed)
    x = np.round(rng.gamma(1.0, 0.1, n), 2)  # ties in the metric, as TLS densities have
    t = np.round(rng.exponential(np.where(x > 0.12, 14.0, 7.0)), 1)
    e = (rng.random(n) < 0.75).astype(float)
    return x, t, e


def test_logrank_scores_and_statistic_match_direct_formulas():
    from tlsquant.maxstat import logrank_scores, maxstat_cutpoint

    x, t, e = _maxstat_sample()
    # a_i = δ_i − Σ_{j: t_j ≤ t_i} δ_j / #{k: t_k ≥ t_j}, summed over individuals (ties share the risk set)
    direct = np.array([e[i] - sum(e[j] / (t >= t[j]).sum() for j in range(t.size) if t[j] <= t[i]) for i in range(t.size)])
    assert logrank_scores(t, e) == pytest.approx(direct)
    result = maxstat_cutpoint(x, t, e, method="lausen-schumacher")
    low = x <= result["cut"]
    n, m = x.size, low.sum()
    s = direct[low].sum()
    mean, var = m / n * direct.sum(), m * (n - m) / (n * (n - 1)) * ((direct - direct.mean()) ** 2).sum()
    assert result["statistic"] == pytest.approx(abs(s - mean) / math.sqrt(var))
    assert min(result["n_low"], result["n_high"]) >= 0.1 * n
    assert result["statistic"] == pytest.approx(result["candidates"]["statistic"].max())


def test_maxstat_corrected_p_agrees_with_an_independent_permutation_estimate():
    from tlsquant.maxstat import maxstat_cutpoint

    x, t, e = _maxstat_sample()
    result = maxstat_cutpoint(x, t, e, n_permutations=1000, seed=1)
    # independent estimate: shuffle the metric against (time, event), redo the whole search in plain loops
    rng = np.random.default_rng(99)
    scores = lambda tt, ee: np.array([ee[i] - sum(ee[j] / (tt >= tt[j]).sum() for j in range(tt.size) if tt[j] <= tt[i])  # noqa: E731
                                      for i in range(tt.size)])
    a = scores(t, e)
    cuts = [c for c in np.unique(x)[:-1] if 4 <= (x <= c).sum() <= x.size - 4]

    def max_z(values):
        best = 0.0
        for c in cuts:
            low = values <= c
            m, n = low.sum(), values.size
            var = m * (n - m) / (n * (n - 1)) * ((a - a.mean()) ** 2).sum()
            best = max(best, abs(a[low].sum() - m / n * a.sum()) / math.sqrt(var))
        return best

    assert max_z(x) == pytest.approx(result["statistic"])
    draws = 400
    independent = (sum(max_z(rng.permutation(x)) >= result["statistic"] - 1e-10 for _ in range(draws)) + 1) / (draws + 1)
    p = result["p_corrected"]
    assert abs(p - independent) <= 4 * math.sqrt(p * (1 - p) * (1 / 1000 + 1 / draws))
    assert p > result["p_uncorrected"]  # the search costs
    assert 0 < result["p_uncorrected"] < 1


def test_lausen_schumacher_formula():
    from tlsquant.maxstat import lausen_schumacher_p

    b = 3.0
    phi = math.exp(-b * b / 2) / math.sqrt(2 * math.pi)
    assert lausen_schumacher_p(b) == pytest.approx(4 * phi / b + phi * (b - 1 / b) * math.log(0.9 * 0.9 / (0.1 * 0.1)))
    assert lausen_schumacher_p(0.5) == lausen_schumacher_p(1.0) > 0.95  # no dip below the formula's peak
    assert lausen_schumacher_p(2.0) > lausen_schumacher_p(2.5)


# --- ROC --------------------------------------------------------------------------------------------------

def test_auc_equals_mann_whitney_and_the_curve_area():
    from tlsquant.roc import auc_delong, roc_curve

    rng = np.random.default_rng(7)
    scores = np.round(np.concatenate([rng.normal(1, 1, 15), rng.normal(0, 1, 20)]), 1)
    positive = np.r_[np.ones(15, bool), np.zeros(20, bool)]
    auc, low, high = auc_delong(scores, positive)
    assert auc == pytest.approx(scipy_stats.mannwhitneyu(scores[positive], scores[~positive]).statistic / (15 * 20))
    curve = roc_curve(scores, positive)
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(auc)  # ties -> diagonal steps -> the ½ credit
    assert low < auc < high


def test_delong_standard_error_matches_the_bootstrap():
    from tlsquant.roc import auc_delong

    rng = np.random.default_rng(11)
    pos, neg = rng.normal(0.8, 1, 30), rng.normal(0, 1, 30)
    scores, positive = np.r_[pos, neg], np.r_[np.ones(30, bool), np.zeros(30, bool)]
    auc, low, high = auc_delong(scores, positive)
    se_delong = (high - low) / (2 * scipy_stats.norm.ppf(0.975))
    # stratified bootstrap of U / (n1 n0), vectorised
    boot_pos = pos[rng.integers(0, 30, (2000, 30))]
    boot_neg = neg[rng.integers(0, 30, (2000, 30))]
    boot = (boot_pos[:, :, None] > boot_neg[:, None, :]).mean(axis=(1, 2))
    assert se_delong == pytest.approx(boot.std(ddof=1), rel=0.1)


# --- the whole analysis, report and CLI ------------------------------------------------------------------

def test_outcomes_command_writes_tables_figures_and_an_escaped_report(tmp_path, capsys):
    pytest.importorskip("lifelines")
    from tlsquant.cli import main
    from tlsquant.synthetic_outcomes import synthetic_outcome_cohort

    cohort = synthetic_outcome_cohort(40, seed=1)
    cohort["arm"] = np.where(cohort.index % 2, "<b>A|x</b>", "B_y")  # hostile labels end up inert
    path = tmp_path / "cohort.csv"
    cohort.to_csv(path, index=False)
    out = tmp_path / "out"
    assert main(["outcomes", str(path), "--response", "response", "--pfs", "pfs_months,pfs_event", "--cut", "optimal",
                 "--permutations", "200", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "optimal cut-point (exploratory)" in printed and "report:" in printed
    for name in ("response_rates", "response_tests", "roc", "roc_curves", "survival_medians", "survival_tests",
                 "survival_curves", "cutpoints"):
        assert (out / f"outcomes_{name}.csv").is_file()
    assert (out / "figures" / "km_PFS.png").is_file() and (out / "figures" / "roc.svg").is_file()
    cut = pd.read_csv(out / "outcomes_cutpoints.csv").iloc[0]
    assert cut.p_corrected > cut.p_uncorrected and min(cut.n_low, cut.n_high) >= 4
    tests = pd.read_csv(out / "outcomes_survival_tests.csv")
    grouped = tests.test != "Cox PH (continuous)"
    assert tests.loc[grouped, "note"].str.contains("exploratory").all()
    assert not tests.loc[~grouped, "note"].str.contains("exploratory").any()
    assert 'src="figures/' not in (out / "outcomes.html").read_text()  # figures inlined: the page stands alone
    assert main(["outcomes", str(path), "--response", "response", "--group-by", "arm", "-o", str(out / "arm")]) == 0
    page = (out / "arm" / "outcomes.html").read_text()
    markdown = (out / "arm" / "outcomes.md").read_text()
    assert "<b>" not in page and "&lt;b&gt;A|x&lt;/b&gt;" in page
    assert "&lt;b&gt;A\\|x&lt;/b&gt;" in markdown and "B\\_y" in markdown
    assert "Methods" in markdown and "Clopper–Pearson" in markdown


@pytest.mark.slow
def test_cohort_report_embeds_the_outcome_section(tmp_path):
    pytest.importorskip("lifelines")
    from tlsquant.outcomes import SurvivalEndpoint, analyze_outcomes
    from tlsquant.report import write_report
    from tlsquant.stats import compare_groups
    from tlsquant.synthetic_outcomes import synthetic_outcome_cohort

    cohort = synthetic_outcome_cohort(30, seed=2)
    cohort["orr"] = np.where(cohort.response.isin(["CR", "PR"]), "responder", "non-responder")
    stats = compare_groups(cohort, "orr", metrics=["tls_density_per_mm2"])
    outcomes = analyze_outcomes(cohort, response="response", survival=[SurvivalEndpoint("PFS", "pfs_months", "pfs_event")])
    written = write_report(cohort, stats, "orr", tmp_path, outcomes=outcomes)
    markdown, page = written["markdown"].read_text(), written["html"].read_text()
    assert "## Clinical outcomes" in markdown and "figures/km_PFS.png" in markdown and "Brookmeyer–Crowley" in markdown
    assert "<h2>Clinical outcomes</h2>" in page and (tmp_path / "outcomes_survival_tests.csv").is_file()
