"""The cohort report: three or more groups, a self-contained page, per-slide and failure tables, methods."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from tlsquant.cli import main
from tlsquant.stats import compare_many


@pytest.fixture
def three_arms(tmp_path):
    rng = np.random.default_rng(7)
    rows = []
    for arm, centre in (("CR", 0.3), ("PR", 0.2), ("PD", 0.05)):
        for k in range(5):
            rows.append({"slide_id": f"{arm}{k}", "arm": arm, "tls_density_per_mm2": max(0.0, rng.normal(centre, 0.05)),
                         "tls_area_pct": max(0.0, rng.normal(2 * centre, 0.1)), "tls_count": int(rng.integers(0, 6)),
                         "tumour_area_mm2": 2.5, "warnings": "low nuclear cover" if k == 0 else ""})
    rows[3]["tls_density_per_mm2"] = np.nan  # a slide without tumour: left out of that metric
    cohort = pd.DataFrame(rows)
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    pd.DataFrame([{"slide_id": "broken", "path": "b.tif", "error_type": "CorruptSlideError",
                   "error": "b.tif: the file is truncated"}]).to_csv(tmp_path / "failures.csv", index=False)
    return tmp_path, cohort


def test_three_groups_get_kruskal_wallis_and_pairwise_tests(three_arms):
    _, cohort = three_arms
    omnibus, pairwise = compare_many(cohort, "arm", metrics=["tls_density_per_mm2", "tls_count"])
    labels = cohort["arm"]
    for row in omnibus.itertuples(index=False):
        values = [cohort.loc[labels == g, row.metric].dropna() for g in ("CR", "PD", "PR")]
        expected = scipy_stats.kruskal(*values)
        assert row.h == pytest.approx(expected.statistic) and row.p == pytest.approx(expected.pvalue)
    assert omnibus.loc[0, "n"] == "4, 5, 5" and omnibus.loc[0, "excluded"] == "1, 0, 0"
    assert len(pairwise) == 6 and set(zip(pairwise.group_a, pairwise.group_b)) == {("CR", "PD"), ("CR", "PR"), ("PD", "PR")}
    # q within each metric's family of three pairs
    density = pairwise[pairwise.metric == "tls_density_per_mm2"].sort_values("p")
    m = len(density)
    expected_q = np.minimum.accumulate((density["p"] * m / np.arange(1, m + 1)).to_numpy()[::-1])[::-1]
    np.testing.assert_allclose(density["q"], np.minimum(expected_q, 1))


def test_the_report_stands_alone_and_lists_slides_failures_and_methods(three_arms, capsys):
    root, cohort = three_arms
    assert main(["compare", str(root / "cohort.csv"), "--group", "arm", "-o", str(root / "stats")]) == 0
    assert "report:" in capsys.readouterr().out
    page = (root / "stats" / "report.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)  # no external files to lose
    markdown = (root / "stats" / "report.md").read_text()
    for text in ("Kruskal–Wallis across groups", "Pairwise comparisons", "## Slides", "PD4", "low nuclear cover",
                 "Failed slides", "b.tif: the file is truncated", "## Methods", "Mann–Whitney"):
        assert text in markdown and (text.lstrip("# ") in page or text == "## Slides")
    assert markdown.count("low nuclear cover") == 1 and "[1] low nuclear cover" in markdown  # once, as a note
    assert (root / "stats" / "omnibus.csv").is_file()
    # two groups chosen among three: the two-group comparison
    assert main(["compare", str(root / "cohort.csv"), "--group", "arm", "--groups", "CR,PD", "-o",
                 str(root / "two")]) == 0
    stats = pd.read_csv(root / "two" / "stats.csv")
    assert set(stats["group_a"]) == {"CR"} and not (root / "two" / "omnibus.csv").exists()
