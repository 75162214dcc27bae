"""agreement.html / agreement.md: how far the automatic TLS agree with a pathologist's, in one page.

What ``tlsquant validate`` measured, laid out for a lab meeting: detection (precision,
recall, F1 with the matching rule), outline overlap (Dice), stage agreement (confusion
matrix and Cohen's κ), and for density and area % across slides the Bland–Altman bias and
limits, Lin's concordance and the ICC(2,1); then one row per slide. Figures are embedded,
so the HTML file stands alone.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ._version import __version__
from .io.atomic import write_text_atomic
from .outcome_report import embed_images, md_escape
from .report import table_parts

# published inter-observer agreement of pathologists scoring TLS, for context (not a target)
REFERENCE_AGREEMENT = ("Published agreement between pathologists scoring TLS on H&E/IHC: Fleiss κ about 0.65 for "
                       "presence and about 0.90 for maturity.")
METRICS = (("tls_density_per_mm2", "TLS density (/mm² tumour)"), ("tls_area_pct", "TLS area (% of tumour)"))
SLIDE_COLUMNS = (("slide_id", "slide"), ("n_auto", "auto TLS"), ("n_manual", "manual TLS"), ("true_positives", "matched"),
                 ("precision", "precision"), ("recall", "recall"), ("f1", "F1"), ("mean_dice", "mean Dice"),
                 ("tumour_dice", "tumour Dice"), ("tls_density_per_mm2_auto", "density auto"),
                 ("tls_density_per_mm2_manual", "density manual"), ("tls_area_pct_auto", "area % auto"),
                 ("tls_area_pct_manual", "area % manual"))


def _text(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def agreement_sections(cohort: dict[str, Any], slides: pd.DataFrame,
                       confusion: pd.DataFrame) -> list[tuple[str, list[str], str]]:
    """(title, Markdown lines, HTML) per section of the agreement page."""
    matching = cohort.get("matching", {})
    sections = []
    detection = [["slides compared", _text(cohort.get("slides"))],
                 ["TLS found automatically / manually", f"{cohort.get('n_auto')} / {cohort.get('n_manual')}"],
                 ["matched (true positives)", _text(cohort.get("true_positives"))],
                 ["precision", _text(cohort.get("precision"))], ["recall", _text(cohort.get("recall"))],
                 ["F1", _text(cohort.get("f1"))], ["mean Dice of matched outlines", _text(cohort.get("mean_dice"))],
                 ["Cohen's κ of stages (matched TLS)", f"{_text(cohort.get('stage_kappa'))} "
                                                       f"({cohort.get('stage_pairs', 0)} pairs)"]]
    md, page = table_parts(["measure", "value"], detection, row_headers=True)
    rule = (f"An automatic and a manual TLS match when their outlines, rasterised on the analysis's fine grid, overlap "
            f"with IoU of at least {matching.get('min_iou', '?')}; pairs are chosen one to one to maximise total IoU "
            f"({matching.get('method', 'Hungarian on IoU')}).")
    sections.append(("Detection and stage", md + ["", md_escape(rule)], page + f"<p>{html.escape(rule)}</p>"))

    rows = []
    for key, label in METRICS:
        m = cohort.get(key) or {}
        rows.append([label, _text(m.get("n")), _text(m.get("bias")),
                     f"{_text(m.get('loa_low'))} to {_text(m.get('loa_high'))}", _text(m.get("lins_ccc")),
                     _text(m.get("icc_2_1"))])
    md, page = table_parts(["metric", "slides", "bias (auto − manual)", "95 % limits of agreement", "Lin's CCC",
                       "ICC(2,1)"], rows, row_headers=True)
    sections.append(("Density and area % across slides", md, page))

    if len(confusion):
        labels = [str(c) for c in confusion.columns]
        rows = [[f"auto: {index}", *(str(int(v)) for v in confusion.loc[index])] for index in confusion.index]
        md, page = table_parts(["", *(f"manual: {label}" for label in labels)], rows, row_headers=True)
        sections.append(("Stage confusion (matched TLS)", md, page))

    rows = [[_text(row.get(key)) for key, _ in SLIDE_COLUMNS] for row in slides.to_dict("records")]
    md, page = table_parts([label for _, label in SLIDE_COLUMNS], rows)
    missing = cohort.get("slides_without_manual") or []
    if missing:
        note = f"No manual annotations for: {', '.join(missing)} (not compared)."
        md, page = md + ["", md_escape(note)], page + f"<p>{html.escape(note)}</p>"
    sections.append(("Per slide", md, page))
    return sections


def write_agreement_report(cohort: dict[str, Any], slides: pd.DataFrame, confusion: pd.DataFrame,
                           outdir: str | Path, *, figures: list[Path] = ()) -> dict[str, Path]:
    """Write agreement.md and a self-contained agreement.html into ``outdir``; returns their paths."""
    outdir = Path(outdir)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = (f"tlsquant {__version__}, {stamp}: automatic TLS compared with manual annotations on "
             f"{cohort.get('slides', 0)} slide(s). {REFERENCE_AGREEMENT}")
    sections = agreement_sections(cohort, slides, confusion)
    md = ["# Agreement with manual scoring", "", md_escape(intro), ""]
    body = [f"<h1>Agreement with manual scoring</h1><p>{html.escape(intro)}</p>"]
    for title, lines, page in sections:
        md += [f"## {title}", "", *lines, ""]
        body.append(f"<h2>{html.escape(title)}</h2>{page}")
    if figures:
        md += ["## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures] + [""]
        body.append("<h2>Figures</h2>" + "".join(
            f'<figure><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"></figure>' for p in figures))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Agreement with manual scoring</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    paths = {"md": outdir / "agreement.md", "html": outdir / "agreement.html"}
    write_text_atomic(paths["md"], "\n".join(md))
    write_text_atomic(paths["html"], embed_images(page, outdir))
    return paths
