"""Figures and a short report for a group comparison (stats.csv, PNG/SVG per metric, Markdown/HTML)."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .batch import is_safe_id
from .io.atomic import atomic_path, write_text_atomic
from .outcome_report import md_escape

METRIC_LABELS = {
    "tls_density_per_mm2": "TLS density (per mm² tumour)",
    "tls_area_pct": "TLS area (% of tumour)",
    "tls_mature_density_per_mm2": "Mature TLS density (per mm² tumour)",
    "tls_count": "TLS count",
    "cd20_pct": "CD20+ cells (%)",
}


def _format_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def file_stem(name) -> str:
    """A column or slide name as a file name that stays in its folder (no separators, no leading dot)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".")
    return stem[:100] or "_"


def metric_figure(df: pd.DataFrame, group: str, metric: str, row: pd.Series, outdir: Path) -> list[Path]:
    """Box plot with every slide as a point, p in the title; written as PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups = [row["group_a"], row["group_b"]]
    values = [pd.to_numeric(df.loc[df[group].astype(str) == g, metric], errors="coerce").dropna().to_numpy() for g in groups]
    figure, axes = plt.subplots(figsize=(3.2, 3.6), dpi=150)
    axes.boxplot(values, widths=0.5, showfliers=False, medianprops={"color": "black"})
    jitter = np.random.default_rng(0)  # fixed: the same figure every run
    for index, points in enumerate(values, start=1):
        axes.scatter(index + jitter.uniform(-0.12, 0.12, points.size), points, s=18, alpha=0.8, zorder=3)
    axes.set_xticks([1, 2], [f"{g}\n(n={v.size})" for g, v in zip(groups, values)])
    axes.set_ylabel(METRIC_LABELS.get(metric, metric))
    axes.set_title(f"Mann–Whitney p = {_format_p(row['p'])}", fontsize=9)
    figure.tight_layout()
    written = []
    for suffix in ("png", "svg"):
        path = outdir / f"{file_stem(metric)}.{suffix}"
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=suffix)
        written.append(path)
    plt.close(figure)
    return written


def thumbnail(qc_png: Path, out: Path, *, width: int = 240) -> Path | None:
    if not qc_png.is_file():
        return None
    import matplotlib.image as mpimg

    image = mpimg.imread(qc_png)
    step = max(1, image.shape[1] // width)
    with atomic_path(out) as temporary:
        mpimg.imsave(temporary, image[::step, ::step], format="png")
    return out


def write_report(df: pd.DataFrame, stats: pd.DataFrame, group: str, outdir: str | Path, *,
                 slides_dir: Path | None = None, title: str = "TLS group comparison", outcomes=None) -> dict[str, Path]:
    """stats.csv, figures/<metric>.{png,svg}, thumbnails/, report.md and report.html in ``outdir``.

    ``outcomes``: an :class:`tlsquant.outcomes.OutcomeResult` of the same cohort, added as a
    clinical-outcomes section (its CSVs and figures written beside the report).
    """
    outdir = Path(outdir)
    (outdir / "figures").mkdir(parents=True, exist_ok=True)
    with atomic_path(outdir / "stats.csv") as temporary:
        stats.to_csv(temporary, index=False)
    figures = {}
    for _, row in stats.iterrows():
        figures[row["metric"]] = metric_figure(df, group, row["metric"], row, outdir / "figures")
    thumbs = []
    if slides_dir is not None and "slide_id" in df.columns:
        (outdir / "thumbnails").mkdir(exist_ok=True)
        for slide_id, label in zip(df["slide_id"], df[group].astype(str)):
            if not is_safe_id(str(slide_id)):  # a cohort file is data, never a path: no "../" out of slides/
                continue
            made = thumbnail(Path(slides_dir) / str(slide_id) / "qc.png", outdir / "thumbnails" / f"{slide_id}.png")
            if made:
                thumbs.append((str(slide_id), label, made.relative_to(outdir)))
    shown = ["metric", "n_a", "n_b", "median_a", "median_b", "iqr_a", "iqr_b", "u", "p", "q", "method",
             "effect_size", "hl_shift", "hl_ci_low", "hl_ci_high", "excluded_a", "excluded_b"]

    def cell(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    a, b = stats["group_a"].iloc[0], stats["group_b"].iloc[0]
    method = ("two-sided Mann–Whitney U per metric, "
             "exact p in small samples (up to 50 per group; with ties the exact permutation distribution given "
             "the ties), otherwise the normal approximation with tie correction, as stated per row; "
             "effect size = rank-biserial correlation (+1: every a above every b); Hodges–Lehmann shift a − b "
             "with its 95 % confidence interval from inverting the same test (– when the samples are too small "
             "to reach 95 %); "
             "q = Benjamini–Hochberg across metrics.")
    intro = f"Groups from column {md_escape(group)}: **{md_escape(a)}** (a) vs **{md_escape(b)}** (b); {method}"
    intro_html = (f"Groups from column <code>{html.escape(str(group))}</code>: <b>{html.escape(str(a))}</b> (a) vs "
                  f"<b>{html.escape(str(b))}</b> (b); {html.escape(method)}")
    lines = [f"# {md_escape(title)}", "", intro, "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for _, row in stats.iterrows():
        lines.append("| " + " | ".join(md_escape(cell(row[c])) for c in shown) + " |")
    lines += ["", "## Figures", ""]
    for metric, paths in figures.items():
        lines.append(f"![{md_escape(metric)}]({paths[0].relative_to(outdir)})")
    outcome_md = outcome_html = ""
    if outcomes is not None:
        from .outcome_report import outcome_sections, write_outcome_files

        outcome_md, outcome_html = outcome_sections(outcomes, write_outcome_files(outcomes, outdir), outdir)
        lines += ["", outcome_md]
    if thumbs:
        lines += ["", "## Slides (QC)", ""]
        lines += [f"- {md_escape(slide_id)} ({md_escape(label)}): ![{md_escape(slide_id)}]({path})"
                  for slide_id, label, path in thumbs]
    markdown = write_text_atomic(outdir / "report.md", "\n".join(lines) + "\n")

    rows_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(row[c]))}</td>" for c in shown) + "</tr>" for _, row in stats.iterrows()
    )
    figures_html = "".join(f'<img src="{html.escape(str(p[0].relative_to(outdir)))}" alt="{html.escape(m)}">'
                           for m, p in figures.items())
    thumbs_html = "".join(
        f'<figure><img src="{html.escape(str(p))}" alt="{html.escape(s)}"><figcaption>{html.escape(s)} '
        f"({html.escape(label)})</figcaption></figure>" for s, label, p in thumbs
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}img{{margin:4px}}figure{{display:inline-block}}</style>
</head><body><h1>{html.escape(title)}</h1><p>{intro_html}</p>
<table><tr>{''.join(f'<th>{html.escape(c)}</th>' for c in shown)}</tr>{rows_html}</table>
<h2>Figures</h2>{figures_html}{outcome_html}<h2>Slides (QC)</h2>{thumbs_html}</body></html>
"""
    page_path = write_text_atomic(outdir / "report.html", page)
    return {"stats": outdir / "stats.csv", "markdown": markdown, "html": page_path}
