"""Outcome figures (Kaplan–Meier with at-risk table, ROC), CSVs and report sections (Markdown, HTML)."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .io.atomic import atomic_path, write_text_atomic
from .outcomes import OutcomeResult

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")  # inline specials; cells never start a line


def md_escape(text) -> str:
    """A user-supplied string made inert in Markdown: HTML characters escaped, Markdown ones backslashed."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=True))


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def _percent(rate, low, high) -> str:
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "–"
    return f"{100 * rate:.1f} % ({100 * low:.1f}–{100 * high:.1f} %)"


def km_figure(curves: pd.DataFrame, medians: pd.DataFrame, tests: pd.DataFrame, endpoint: str, *, time_unit: str = "months"):
    """Kaplan–Meier curves by group with their 95 % bands and the numbers at risk under the plot."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = [g for g in medians.loc[medians.endpoint == endpoint, "group"] if g != "all"] or ["all"]
    data = curves[curves.endpoint == endpoint]
    horizon = float(data["time"].max()) if len(data) else 1.0
    ticks = np.linspace(0, horizon, 6)
    figure, (axes, table_axes) = plt.subplots(2, 1, figsize=(5.6, 4.6), dpi=150, height_ratios=[4, 1], sharex=True)
    for index, group in enumerate(groups):
        curve = data[data.group == group]
        times = np.r_[0.0, curve["time"].to_numpy(float)]
        survival = np.r_[1.0, curve["survival"].to_numpy(float)]
        colour = f"C{index}"
        axes.step(times, survival, where="post", color=colour, label=str(group))
        axes.fill_between(times, np.r_[1.0, curve["ci_low"]], np.r_[1.0, curve["ci_high"]], step="post", color=colour, alpha=0.12)
        at_risk = curve["at_risk"].to_numpy(int)
        counts = [int(at_risk[np.searchsorted(curve["time"].to_numpy(float), t)]) if t <= times[-1] else 0 for t in ticks]
        for tick, count in zip(ticks, counts):
            table_axes.text(tick, len(groups) - 1 - index, str(count), ha="center", va="center", fontsize=7, color=colour)
    logrank = tests[(tests.endpoint == endpoint) & (tests.test == "log-rank")]
    title = endpoint if logrank.empty else f"{endpoint}: log-rank p = {logrank['p'].iloc[0]:.3g}"
    if not logrank.empty and "exploratory" in str(logrank["note"].iloc[0]):
        title += " (uncorrected, optimal cut: exploratory)"
    axes.set_title(title, fontsize=9)
    axes.set_ylabel(f"{endpoint} probability")
    axes.set_ylim(0, 1.02)
    axes.legend(fontsize=7, frameon=False)
    table_axes.set_yticks(range(len(groups)), [str(g) for g in reversed(groups)], fontsize=7)
    table_axes.set_ylim(-0.6, len(groups) - 0.4)
    table_axes.set_xticks(ticks, [f"{t:.0f}" for t in ticks])
    table_axes.set_xlabel(f"time ({time_unit}); numbers at risk")
    for side in ("top", "right", "left"):
        table_axes.spines[side].set_visible(False)
    table_axes.tick_params(axis="y", length=0)
    figure.tight_layout()
    return figure


def roc_figure(curves: pd.DataFrame, table: pd.DataFrame):
    """ROC curve of each metric with its AUC (95 % CI) in the legend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.2, 4.2), dpi=150)
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
    for index, row in enumerate(table.itertuples(index=False)):
        curve = curves[curves.metric == row.metric]
        if curve.empty:
            continue
        interval = "" if row.auc_ci_low is None or pd.isna(row.auc_ci_low) else f" ({row.auc_ci_low:.2f}–{row.auc_ci_high:.2f})"
        axes.plot(curve["fpr"], curve["tpr"], color=f"C{index}",  # ties give the diagonal segments
                  label=f"{row.metric}: AUC {row.auc:.2f}{interval}")
    axes.set_xlabel("1 − specificity")
    axes.set_ylabel("sensitivity")
    axes.set_title("Response (ORR) by metric", fontsize=9)
    axes.legend(fontsize=6, frameon=False, loc="lower right")
    figure.tight_layout()
    return figure


def _save(figure, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    written = []
    for suffix in ("png", "svg"):
        path = stem.with_suffix(f".{suffix}")
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=suffix)
        written.append(path)
    plt.close(figure)
    return written


def write_outcome_files(result: OutcomeResult, outdir: str | Path) -> dict[str, Path]:
    """The non-empty tables as ``outcomes_<table>.csv`` and the figures under ``figures/``."""
    outdir = Path(outdir)
    (outdir / "figures").mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in result.tables().items():
        if len(table):
            with atomic_path(outdir / f"outcomes_{name}.csv") as temporary:
                table.to_csv(temporary, index=False)
            written[name] = outdir / f"outcomes_{name}.csv"
    if len(result.survival_medians):
        for endpoint in result.survival_medians["endpoint"].unique():
            figure = km_figure(result.survival_curves, result.survival_medians, result.survival_tests, endpoint)
            written[f"km_{endpoint}"] = _save(figure, outdir / "figures" / f"km_{endpoint}")[0]
    if len(result.roc_curves):
        written["roc_figure"] = _save(roc_figure(result.roc_curves, result.roc), outdir / "figures" / "roc")[0]
    return written


def methods_paragraph(result: OutcomeResult) -> str:
    """Plain-text methods statement of every test used (user names are not included)."""
    settings = result.settings
    parts = []
    if settings.get("response"):
        ci = "Clopper–Pearson (exact)" if settings["ci_method"] == "clopper-pearson" else "Wilson score"
        ne = "excluded from" if settings["exclude_not_evaluable"] else "counted as non-responders in"
        parts.append(f"Objective response rate (ORR: CR + PR) and disease control rate (DCR: CR + PR + SD) were computed "
                     f"from the RECIST best overall response, with not-evaluable patients {ne} the denominator, with "
                     f"{ci} 95 % confidence intervals; groups were compared with Fisher's exact test (two-sided; "
                     f"Freeman–Halton extension for more than two groups). Discrimination of response by each metric "
                     f"was summarised by the ROC curve and its AUC with a DeLong 95 % confidence interval.")
    if settings.get("survival"):
        band = "log-log" if settings["conf_type"] == "log-log" else "log"
        parts.append(f"Survival was estimated by Kaplan–Meier (lifelines), with medians and Brookmeyer–Crowley 95 % "
                     f"confidence intervals from the {band}-transformed Greenwood band; groups were compared with the "
                     f"log-rank test, and hazard ratios with 95 % Wald confidence intervals from Cox proportional-hazards "
                     f"models (Efron ties) for the groups and for the metric per standard deviation.")
    if settings.get("cut") == "optimal":
        correction = ("the permutation distribution of the maximum "
                      f"({settings['n_permutations']} permutations, seed {settings['seed']})"
                      if settings["cut_correction"] == "permutation" else "the Lausen–Schumacher approximation")
        parts.append(f"The cut-point was chosen by maximally selected log-rank statistics (at least "
                     f"{settings['min_share']:.0%} of patients per group), with the p-value corrected for the search by "
                     f"{correction}; this analysis is exploratory and needs validation in an independent cohort.")
    return " ".join(parts)


def outcome_sections(result: OutcomeResult, figures: dict[str, Path], outdir: Path) -> tuple[str, str]:
    """(Markdown, HTML) sections: grouping, tables, figures and the methods paragraph."""
    md: list[str] = ["## Clinical outcomes", "", f"Groups: {md_escape(result.group_rule)}.", ""]
    page: list[str] = ["<h2>Clinical outcomes</h2>", f"<p>Groups: {html.escape(result.group_rule)}.</p>"]

    def add_table(title: str, header: list[str], rows: list[list[str]]):
        md.extend([f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
        md.extend("| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows)
        md.append("")
        page.append(f"<h3>{html.escape(title)}</h3><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                    + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
                    + "</table>")

    def add_figure(key: str, alt: str):
        if key in figures:
            relative = str(figures[key].relative_to(outdir))
            md.extend([f"![{md_escape(alt)}]({relative.replace(' ', '%20')})", ""])
            page.append(f'<img src="{html.escape(relative)}" alt="{html.escape(alt)}">')

    if len(result.response_rates):
        add_table("Response rates (95 % CI)", ["endpoint", "group", "responders / n", "rate (95 % CI)", "excluded"],
                  [[r.endpoint, r.group, f"{r.responders} / {r.n}", _percent(r.rate, r.ci_low, r.ci_high), str(r.excluded)]
                   for r in result.response_rates.itertuples(index=False)])
        add_table("Response by group: Fisher's exact test", ["endpoint", "groups", "responders", "n", "odds ratio", "p"],
                  [[r.endpoint, r.groups, r.responders, r.n, _cell(r.odds_ratio), _cell(r.p)]
                   for r in result.response_tests.itertuples(index=False)])
    if len(result.roc):
        add_table("ROC: metric predicting response", ["metric", "responders", "non-responders", "AUC", "95 % CI"],
                  [[r.metric, str(r.n_responders), str(r.n_non_responders), _cell(r.auc),
                    f"{_cell(r.auc_ci_low)}–{_cell(r.auc_ci_high)}"] for r in result.roc.itertuples(index=False)])
        add_figure("roc_figure", "ROC curves")
    if len(result.survival_medians):
        add_table("Survival: medians (95 % CI)", ["endpoint", "group", "n", "events", "median", "95 % CI"],
                  [[r.endpoint, r.group, str(r.n), str(r.events), _cell(r.median),
                    f"{_cell(r.median_ci_low)}–{_cell(r.median_ci_high)}"] for r in result.survival_medians.itertuples(index=False)])
        add_table("Survival: tests", ["endpoint", "test", "comparison", "HR (95 % CI)", "statistic", "p"],
                  [[r.endpoint, r.test, r.comparison,
                    "–" if pd.isna(r.hr) else f"{r.hr:.3g} ({r.hr_ci_low:.3g}–{r.hr_ci_high:.3g})", _cell(r.statistic), _cell(r.p)]
                   for r in result.survival_tests.itertuples(index=False)])
        for endpoint in result.survival_medians["endpoint"].unique():
            add_figure(f"km_{endpoint}", f"Kaplan–Meier {endpoint}")
    if len(result.cutpoints):
        add_table("Optimal cut-point (exploratory)", ["metric", "endpoint", "cut", "max abs Z", "n low / high",
                                                      "p uncorrected", "p corrected", "correction"],
                  [[r.metric, r.endpoint, _cell(r.cut), _cell(r.statistic), f"{r.n_low} / {r.n_high}",
                    _cell(r.p_uncorrected), _cell(r.p_corrected), r.method] for r in result.cutpoints.itertuples(index=False)])
    methods = methods_paragraph(result)
    md.extend(["### Methods", "", methods, ""])
    page.append(f"<h3>Methods</h3><p>{html.escape(methods)}</p>")
    return "\n".join(md), "\n".join(page)


def embed_images(page: str, outdir: Path) -> str:
    """Every <img src="relative path"> inlined as a data URI: the page stands alone (e-mail, archive)."""
    import base64

    def inline(match):
        source = html.unescape(match.group(1))
        path = (outdir / source).resolve()
        if source.startswith(("data:", "http:", "https:")) or outdir.resolve() not in path.parents or not path.is_file():
            return match.group(0)
        kind = "image/svg+xml" if path.suffix == ".svg" else "image/png"
        return f'src="data:{kind};base64,{base64.b64encode(path.read_bytes()).decode("ascii")}"'

    return re.sub(r'src="([^"]+)"', inline, page)


def write_outcome_report(result: OutcomeResult, outdir: str | Path, *, title: str = "TLS and clinical outcomes") -> dict[str, Path]:
    """CSVs, figures, ``outcomes.md`` and ``outcomes.html`` in ``outdir``."""
    outdir = Path(outdir)
    written = write_outcome_files(result, outdir)
    markdown, page = outcome_sections(result, written, outdir)
    written["markdown"] = write_text_atomic(outdir / "outcomes.md", f"# {md_escape(title)}\n\n{markdown}")
    written["html"] = write_text_atomic(outdir / "outcomes.html", embed_images(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}img{{margin:4px;max-width:560px}}</style>
</head><body><h1>{html.escape(title)}</h1>
{page}
</body></html>
""", outdir))
    return written
