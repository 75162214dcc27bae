"""Figures and a short report for a group comparison (stats.csv, PNG/SVG per metric, Markdown/HTML)."""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .batch import is_safe_id
from .io.atomic import atomic_path, write_text_atomic
from .outcome_report import embed_images, md_escape
from .stats import B_CELL_METRIC

METRIC_LABELS = {
    "tls_density_per_mm2": "TLS density (per mm² tumour)",
    "tls_area_pct": "TLS area (% of tumour)",
    "tls_mature_density_per_mm2": "Mature TLS density (per mm² tumour)",
    "tls_count": "TLS count",
    "tls_mature_count": "Mature TLS count",
    B_CELL_METRIC: "B cells (% of all cells)",
}


def metric_label(metric: str) -> str:
    """A cohort column as an axis or table label: ``cd8_pct`` -> ``CD8+ cells (%)``."""
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    if metric.endswith("_pct") and metric.count("_") == 1:  # <marker>_pct: percent positive of all cells
        return f"{metric[: -len('_pct')].upper()}+ cells (%)"
    return metric


def _format_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def file_stem(name) -> str:
    """A column or slide name as a file name that stays in its folder (no separators, no leading dot)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".")
    return stem[:100] or "_"


COUNT_METRICS = ("tls_count", "tls_counted", "tls_mature_count", "tls_primary_count", "tls_early_count",
                 "tls_primary_follicle_count", "tls_secondary_follicle_count")
# per-slide table of the report: (column, heading), those present are shown
SLIDE_COLUMNS = (("tumour_area_mm2", "tumour mm²"), ("tls_count", "TLS"), ("tls_mature_count", "mature"),
                 ("tls_primary_count", "primary"), ("tls_early_count", "early"),
                 ("tls_primary_follicle_count", "primary follicle"), ("tls_count_by_location_intratumoral", "intratumoral"),
                 ("tls_count_by_location_peritumoral", "peritumoral"), ("tls_count_by_location_distal", "distal"),
                 ("tls_counted", "counted"), ("tls_density_per_mm2", "density /mm²"),
                 ("tls_area_pct", "area %"), (B_CELL_METRIC, "B cells %"), ("warnings", "warnings"))
POINTS_ONLY_BELOW = 6  # a box of fewer points hides more than it shows


def metric_figure(df: pd.DataFrame, group: str, metric: str, groups: list[str], p, outdir: Path) -> list[Path]:
    """Every slide as a point per group (a box behind them from 6 slides up), p in the title; PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    values = [pd.to_numeric(df.loc[df[group].astype(str) == g, metric], errors="coerce").dropna().to_numpy() for g in groups]
    figure, axes = plt.subplots(figsize=(1.4 + 1.0 * len(groups), 3.6), dpi=150)
    if min((v.size for v in values), default=0) >= POINTS_ONLY_BELOW:
        axes.boxplot(values, widths=0.5, showfliers=False, medianprops={"color": "black"})
    else:  # a median bar only
        for index, points in enumerate(values, start=1):
            if points.size:
                axes.hlines(np.median(points), index - 0.25, index + 0.25, color="black", linewidth=1.5)
    jitter = np.random.default_rng(0)  # fixed: the same figure every run
    for index, points in enumerate(values, start=1):
        axes.scatter(index + jitter.uniform(-0.12, 0.12, points.size), points, s=18, alpha=0.8, zorder=3)
    axes.set_xticks(range(1, len(groups) + 1), [f"{g}\n(n={v.size})" for g, v in zip(groups, values)])
    axes.set_xlim(0.4, len(groups) + 0.6)
    if metric in COUNT_METRICS:
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(metric_label(metric))
    test = "Kruskal–Wallis" if len(groups) > 2 else "Mann–Whitney"
    axes.set_title(f"{test} p = {_format_p(p)}", fontsize=9)
    figure.tight_layout()
    written = []
    for suffix in ("png", "svg"):
        path = outdir / f"{file_stem(metric)}.{suffix}"
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=suffix)
        written.append(path)
    plt.close(figure)
    return written


def thumbnail(qc_png: Path, out: Path, *, width: int = 320) -> Path | None:
    """A small copy of a slide's qc.png, averaged down (not strided: outlines stay visible)."""
    if not qc_png.is_file():
        return None
    import matplotlib.image as mpimg
    from skimage.transform import downscale_local_mean

    image = mpimg.imread(qc_png)
    factor = max(1, math.ceil(image.shape[1] / width))
    small = downscale_local_mean(image, (factor, factor, 1)) if factor > 1 else image
    with atomic_path(out) as temporary:
        mpimg.imsave(temporary, np.clip(small, 0, 1), format="png")
    return out


def _run_facts(df: pd.DataFrame, slides_dir: Path | None) -> dict:
    """Version, config highlights and thresholds of the run, from one slide's summary.json and the cohort."""
    facts: dict = {}
    if slides_dir is not None and "slide_id" in df.columns:
        for slide_id in df["slide_id"].astype(str):
            summary_path = Path(slides_dir) / slide_id / "summary.json" if is_safe_id(slide_id) else None
            if summary_path is not None and summary_path.is_file():
                import json

                summary = json.loads(summary_path.read_text(encoding="utf-8"))
                config = summary.get("config", {})
                facts.update(version=summary.get("tlsquant_version"), config=config,
                             config_hash=(summary.get("provenance") or {}).get("config_hash"))
                break
    thresholds = {c[len("threshold_"):]: pd.to_numeric(df[c], errors="coerce").median()
                  for c in df.columns if str(c).startswith("threshold_")}
    facts["thresholds"] = {k: v for k, v in thresholds.items() if pd.notna(v)}
    return facts


def methods_paragraph(facts: dict, *, n_slides: int, omnibus: bool) -> str:
    """What was done, in words a methods section can take, from the run's own settings."""
    config = facts.get("config", {})
    tls, maturation, location = config.get("tls", {}), config.get("maturation", {}), config.get("location", {})
    channels = config.get("channels", {})
    scheme = maturation.get("scheme", "binary")
    staging = ("mature (a CD23+ follicular dendritic cell network or germinal centre) or primary (Tan et al., "
               "Clin Cancer Res 2024)" if scheme == "binary" else
               "early, primary follicle-like (CD21+ network) or secondary follicle-like (CD23+ germinal centre) "
               "(Silina et al., Cancer Res 2018)")
    if not config:
        parts = [f"{n_slides} slides; the analysis settings are not beside this cohort file (run compare on the cohort.csv of a batch, "
                 "next to its slides/ folder, to have them described here)."]
    else:
        parts = _analysis_sentences(facts, config, n_slides, staging, tls, location, channels)
    if facts.get("thresholds"):
        shown = ", ".join(f"{role} {value:.4g}" for role, value in sorted(facts["thresholds"].items()))
        parts.append(f"Median thresholds on tissue across slides (intensity units): {shown}.")
    parts.append("Groups were compared per metric with a Kruskal–Wallis test and pairwise two-sided Mann–Whitney "
                 "U tests" if omnibus else "Groups were compared per metric with a two-sided Mann–Whitney U test")
    parts[-1] += (" (exact p in small samples, given ties where present), Hodges–Lehmann shifts with 95 % "
                  "confidence intervals, and Benjamini–Hochberg q-values.")
    return " ".join(parts)


def _number(value) -> str:
    """6000.0 -> "6,000"; 0.5 -> "0.5"; unknown -> "?"."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "?"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,g}"


def _analysis_sentences(facts, config, n_slides, staging, tls, location, channels) -> list[str]:
    import datetime

    return [
        f"{n_slides} slides were analysed with tlsquant {facts.get('version', '?')} "
        f"(config {facts.get('config_hash', '?')}; report made {datetime.date.today().isoformat()}).",
        f"The tumour bed was segmented from {channels.get('tumour', 'the tumour marker')}; TLS were found as dense "
        f"{channels.get('b_cells', 'B-cell')}+ aggregates of at least {_number(tls.get('min_area_um2'))} µm² "
        "(published minimum sizes are 5,000–6,500 µm² or about 50 lymphocytes; e.g. Buisseret et al., Mod Pathol "
        "2017; Vanhersecke et al., Nat Cancer 2021) and staged as " + staging + ".",
        f"TLS within {_number(location.get('margin_um'))} µm of the tumour border count as peritumoral; density is the "
        "number of counted TLS per mm² of tumour and area % their area over the tumour area.",
        "Each channel's positive pixels were decided against its local background (glass, tissue "
        "autofluorescence and illumination estimated per slide) plus a margin from the slide's own noise and "
        "positive signal.",
    ]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def _readable_stats(stats: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "groups", "n", "median", "p", "effect size", "HL shift (95 % CI)", "q", "method"]
    rows = []
    for r in stats.itertuples(index=False):
        no_ci = any(v is None or pd.isna(v) for v in (r.hl_ci_low, r.hl_ci_high))
        shift = "–" if r.hl_shift is None or pd.isna(r.hl_shift) else (
            f"{r.hl_shift:.3g} (no 95 % CI: too few slides)" if no_ci
            else f"{r.hl_shift:.3g} ({_cell(r.hl_ci_low)} to {_cell(r.hl_ci_high)})")
        rows.append([metric_label(r.metric), f"{r.group_a} vs {r.group_b}", f"{r.n_a} vs {r.n_b}",
                     f"{_cell(r.median_a)} vs {_cell(r.median_b)}", _format_p(r.p), _cell(r.effect_size), shift,
                     _format_p(r.q), str(r.method)])
    return header, rows


def table_parts(header: list[str], rows: list[list[str]], *, row_headers: bool = False) -> tuple[list[str], str]:
    """(Markdown lines, HTML) of one table; every cell escaped. ``row_headers``: the first column as headers."""
    md = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]

    def cells(row):
        return "".join(f"<th>{html.escape(c)}</th>" if row_headers and k == 0 else f"<td>{html.escape(c)}</td>"
                       for k, c in enumerate(row))

    page = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join(f"<tr>{cells(row)}</tr>" for row in rows) + "</table>")
    return md, page


def _sensitivity_section(sensitivity, outdir: Path, section, md: list[str], page: list[str]) -> None:
    """One row per threshold scenario: p of each metric's comparison, marked where the conclusion changes."""
    from .sensitivity import scenario_label

    table, figure = sensitivity
    metrics = list(dict.fromkeys(table["metric"]))
    keys = ["parameter", "role", "channel", "scale"]
    rows, changed = [], 0
    for _, scenario in table[keys].drop_duplicates().fillna("").iterrows():
        selected = table[(table[keys].fillna("") == scenario).all(axis=1)].set_index("metric")
        cells = [scenario_label(*scenario)]
        for metric in metrics:
            if metric not in selected.index:
                cells.append("–")
                continue
            holds = bool(selected.loc[metric, "holds"])
            changed += not holds
            cells.append(_format_p(selected.loc[metric, "p"]) + ("" if holds else " (changes)"))
        rows.append(cells)
    note = ("Each channel's threshold scaled (margin above background x0.8-1.25) and the minimum TLS area x0.75 and "
            "x1.25, counted in the same pass; Mann-Whitney p per scenario. "
            + (f"The baseline's conclusion changes in {changed} scenario comparison(s), marked." if changed
               else "The baseline's conclusion holds in every scenario.") + " Full table: sensitivity_comparison.csv.")
    section("Threshold sensitivity", ["scenario", *(metric_label(m) for m in metrics)], rows, note)
    if figure is not None:
        relative = Path(figure).relative_to(outdir)
        md += [f"![threshold sensitivity]({relative})", ""]
        page.append(f'<img src="{html.escape(str(relative))}" alt="threshold sensitivity">')


def write_report(df: pd.DataFrame, stats: pd.DataFrame, group: str, outdir: str | Path, *,
                 slides_dir: Path | None = None, title: str = "TLS group comparison", outcomes=None,
                 omnibus: pd.DataFrame | None = None, failures: pd.DataFrame | None = None,
                 sensitivity: tuple[pd.DataFrame, Path | None] | None = None) -> dict[str, Path]:
    """stats.csv, figures/<metric>.{png,svg}, thumbnails/, report.md and a self-contained report.html in ``outdir``.

    ``stats``: :func:`tlsquant.stats.compare_groups` rows (or the pairwise rows of
    :func:`tlsquant.stats.compare_many`, whose omnibus table goes in ``omnibus``);
    ``failures``: the batch's failures.csv, listed with their reasons; ``outcomes``: an
    :class:`tlsquant.outcomes.OutcomeResult`, added as a clinical-outcomes section;
    ``sensitivity``: (:func:`tlsquant.sensitivity.compare_sensitivity`'s table, its figure),
    added as a threshold-sensitivity section.
    Every string from the cohort is escaped; report.html embeds its images.
    """
    outdir = Path(outdir)
    (outdir / "figures").mkdir(parents=True, exist_ok=True)
    with atomic_path(outdir / "stats.csv") as temporary:
        stats.to_csv(temporary, index=False)
    if omnibus is not None:
        with atomic_path(outdir / "omnibus.csv") as temporary:
            omnibus.to_csv(temporary, index=False)
    labels = df[group].astype(str)
    if omnibus is not None:
        groups_shown = [g.strip() for g in str(omnibus["groups"].iloc[0]).split(",")]
        p_of = dict(zip(omnibus["metric"], omnibus["p"]))
    else:
        groups_shown = [str(stats["group_a"].iloc[0]), str(stats["group_b"].iloc[0])]
        p_of = dict(zip(stats["metric"], stats["p"]))
    figures = {metric: metric_figure(df, group, metric, groups_shown, p, outdir / "figures") for metric, p in p_of.items()}

    thumbs = []
    if slides_dir is not None and "slide_id" in df.columns:
        (outdir / "thumbnails").mkdir(exist_ok=True)
        for slide_id, label in zip(df["slide_id"].astype(str), labels):
            if not is_safe_id(slide_id):  # a cohort file is data, never a path: no "../" out of slides/
                continue
            qc_png = Path(slides_dir) / slide_id / "qc.png"
            made = thumbnail(qc_png, outdir / "thumbnails" / f"{slide_id}.png")
            if made:
                thumbs.append((slide_id, label, made.relative_to(outdir), Path(os.path.relpath(qc_png, outdir))))

    facts = _run_facts(df, slides_dir)
    methods = methods_paragraph(facts, n_slides=len(df), omnibus=omnibus is not None)
    md = [f"# {md_escape(title)}", "", f"Groups from column {md_escape(group)}: "
          + ", ".join(f"**{md_escape(g)}** (n = {int((labels == g).sum())})" for g in groups_shown) + ".", ""]
    page = [f"<h1>{html.escape(title)}</h1>", f"<p>Groups from column <code>{html.escape(group)}</code>: "
            + ", ".join(f"<b>{html.escape(g)}</b> (n = {int((labels == g).sum())})" for g in groups_shown) + ".</p>"]

    def section(heading: str, header: list[str], rows: list[list[str]], note: str = ""):
        table_md, table_html = table_parts(header, rows)
        md.extend([f"## {heading}", ""] + ([note, ""] if note else []) + table_md + [""])
        page.append(f"<h2>{html.escape(heading)}</h2>" + (f"<p>{html.escape(note)}</p>" if note else "") + table_html)

    if omnibus is not None:
        section("Kruskal–Wallis across groups", ["metric", "n", "medians", "H", "p", "q"],
                [[metric_label(r.metric), r.n, r.medians, _cell(r.h), _format_p(r.p), _format_p(r.q)]
                 for r in omnibus.itertuples(index=False)])
    header, rows = _readable_stats(stats)
    section("Pairwise comparisons" if omnibus is not None else "Comparison", header, rows,
            "Two-sided Mann–Whitney U; effect size = rank-biserial correlation (+1: every value of the first group "
            "above every value of the second); HL = Hodges–Lehmann shift; q = Benjamini–Hochberg. "
            "Full table: stats.csv.")
    md += ["## Figures", ""] + [f"![{md_escape(m)}]({paths[0].relative_to(outdir)})" for m, paths in figures.items()] + [""]
    page.append("<h2>Figures</h2>" + "".join(f'<img src="{html.escape(str(p[0].relative_to(outdir)))}" '
                                             f'alt="{html.escape(m)}">' for m, p in figures.items()))

    present = [(c, h) for c, h in SLIDE_COLUMNS if c in df.columns]
    slide_rows, notes = [], {}  # a warning many slides share is written once, below the table
    for _, row in df.iterrows():
        cells = [str(row.get("slide_id", "")), str(row[group])]
        for column, _ in present:
            value = row[column]
            if column == "warnings":
                texts = [] if pd.isna(value) or not str(value) else str(value).split("; ")
                cells.append(", ".join(f"[{notes.setdefault(text[:300], len(notes) + 1)}]" for text in texts))
            else:
                cells.append(_cell(value))
        slide_rows.append(cells)
    section("Slides", ["slide", group] + [h for _, h in present], slide_rows,
            " ".join(f"[{k}] {text}" for text, k in notes.items()))
    if failures is not None and len(failures):
        section("Failed slides (not in the statistics)", ["slide", "error type", "reason"],
                [[str(r.slide_id), str(r.error_type), str(r.error)[:300]] for r in failures.itertuples(index=False)])
    excluded = stats[(stats["excluded_a"] > 0) | (stats["excluded_b"] > 0)]
    if len(excluded):
        md.extend(["Slides without a value of a metric (e.g. no tumour found) are left out of that metric: "
                   + "; ".join(f"{md_escape(r.metric)}: {r.excluded_a} + {r.excluded_b}"
                               for r in excluded.itertuples(index=False)), ""])
    if sensitivity is not None and len(sensitivity[0]):
        _sensitivity_section(sensitivity, outdir, section, md, page)
    if outcomes is not None:
        from .outcome_report import outcome_sections, write_outcome_files

        outcome_md, outcome_html = outcome_sections(outcomes, write_outcome_files(outcomes, outdir), outdir)
        md += ["", outcome_md]
        page.append(outcome_html)
    if thumbs:
        md += ["## Slides (QC)", ""]
        md += [f"- {md_escape(slide_id)} ({md_escape(label)}): ![{md_escape(slide_id)}]({path})"
               for slide_id, label, path, _ in thumbs]
        md.append("")
        page.append("<h2>Slides (QC)</h2>" + "".join(
            f'<figure><a href="{html.escape(str(full))}"><img src="{html.escape(str(path))}" alt="{html.escape(s)}"></a>'
            f"<figcaption>{html.escape(s)} ({html.escape(label)})</figcaption></figure>" for s, label, path, full in thumbs))
    md += ["## Methods", "", md_escape(methods), ""]
    page.append(f"<h2>Methods</h2><p>{html.escape(methods)}</p>")
    markdown = write_text_atomic(outdir / "report.md", "\n".join(md) + "\n")
    body = "\n".join(page)
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:13px;margin:0.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{background:#f3f3f3}}img{{margin:4px;max-width:100%}}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){{text-align:left}}
figure{{display:inline-block;margin:4px}}figcaption{{font-size:12px}}</style>
</head><body>
{body}
</body></html>
"""
    page_path = write_text_atomic(outdir / "report.html", embed_images(document, outdir))
    return {"stats": outdir / "stats.csv", "markdown": markdown, "html": page_path}
