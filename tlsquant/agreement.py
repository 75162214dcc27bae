"""Agreement with manual scoring: detection, outlines, stages, tumour area and slide metrics.

Matching (documented in docs/outputs.md): automatic and manual TLS are rasterised on the
slide's fine grid; every automatic-manual pair gets its intersection over union (IoU); a
one-to-one assignment maximising the summed IoU (Hungarian algorithm) is taken and pairs with
IoU below ``min_iou`` (default 0.25) dropped. Matched pairs are true positives, unmatched
automatic TLS false positives, unmatched manual TLS false negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import TLSQuantError
from .polygons import rasterise
from .qupath import class_matches, read_features

MIN_IOU = 0.25


class ValidationError(TLSQuantError, ValueError):
    """Results and manual annotations cannot be paired."""


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def match_masks(automatic: list[np.ndarray], manual: list[np.ndarray], *, min_iou: float = MIN_IOU) -> list[tuple]:
    """One-to-one matches ``(i_auto, j_manual, iou, dice)`` maximising summed IoU, IoU >= ``min_iou``."""
    from scipy.optimize import linear_sum_assignment

    if not automatic or not manual:
        return []
    iou = np.zeros((len(automatic), len(manual)))
    for i, a in enumerate(automatic):
        for j, m in enumerate(manual):
            inter = float(np.logical_and(a, m).sum())
            if inter:
                iou[i, j] = inter / float(np.logical_or(a, m).sum())
    rows, cols = linear_sum_assignment(-iou)
    return [(int(i), int(j), float(iou[i, j]), dice(automatic[i], manual[j]))
            for i, j in zip(rows, cols) if iou[i, j] >= min_iou and iou[i, j] > 0]


def detection_scores(true_positives: int, n_automatic: int, n_manual: int) -> dict[str, float | None]:
    """Precision, recall and F1 (None where undefined)."""
    precision = true_positives / n_automatic if n_automatic else None
    recall = true_positives / n_manual if n_manual else None
    f1 = (2 * true_positives / (n_automatic + n_manual)) if n_automatic + n_manual else None
    return {"precision": precision, "recall": recall, "f1": f1}


def cohen_kappa(first, second, *, labels=None) -> float | None:
    """Cohen's κ of two raters' labels: (p_o - p_e) / (1 - p_e); None without pairs, 1.0 if p_e = 1."""
    first, second = list(first), list(second)
    if not first:
        return None
    labels = list(labels) if labels is not None else sorted(set(first) | set(second))
    table = confusion_matrix(first, second, labels=labels).to_numpy(dtype=float)
    n = table.sum()
    observed = np.trace(table) / n
    expected = float((table.sum(axis=1) * table.sum(axis=0)).sum() / n**2)
    return 1.0 if expected == 1 else float((observed - expected) / (1 - expected))


def confusion_matrix(automatic, manual, *, labels) -> pd.DataFrame:
    """Counts with automatic stages as rows and manual stages as columns."""
    table = pd.DataFrame(0, index=pd.Index(labels, name="automatic"), columns=pd.Index(labels, name="manual"))
    for a, m in zip(automatic, manual):
        table.loc[a, m] += 1
    return table


def bland_altman(automatic, manual) -> dict[str, float | None]:
    """Mean difference (automatic - manual), its SD and the 95 % limits of agreement (bias ± 1.96 SD)."""
    a, m = np.asarray(automatic, float), np.asarray(manual, float)
    if len(a) < 2:
        return {"n": len(a), "bias": float(np.mean(a - m)) if len(a) else None, "sd": None,
                "loa_low": None, "loa_high": None}
    difference = a - m
    bias, sd = float(difference.mean()), float(difference.std(ddof=1))
    return {"n": len(a), "bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def lins_ccc(automatic, manual) -> float | None:
    """Lin's concordance correlation coefficient 2 s_xy / (s_x² + s_y² + (mean_x - mean_y)²) (population moments)."""
    x, y = np.asarray(automatic, float), np.asarray(manual, float)
    if len(x) < 2:
        return None
    sxy = float(np.mean((x - x.mean()) * (y - y.mean())))
    denominator = float(x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    return None if denominator == 0 else 2 * sxy / denominator


def icc_agreement(ratings) -> float | None:
    """ICC(2,1) of Shrout & Fleiss: two-way random effects, absolute agreement, single rater.

    ``ratings`` is subjects x raters (here slides x {automatic, manual}).
    """
    y = np.asarray(ratings, float)
    n, k = y.shape
    if n < 2 or k < 2:
        return None
    grand = y.mean()
    ms_rows = k * ((y.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ms_cols = n * ((y.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    residual = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + grand
    ms_error = (residual**2).sum() / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return None if denominator == 0 else float((ms_rows - ms_error) / denominator)


# -- slides -----------------------------------------------------------------------------------


@dataclass
class SlideAgreement:
    row: dict[str, Any]  # one row of agreement_slides.csv
    pairs: pd.DataFrame  # matched TLS: ids, IoU, Dice, stages


def _stage_word(names: tuple[str, ...], stages) -> str | None:
    for name in names[1:]:
        word = name.strip().casefold().replace(" ", "_")
        if word in stages:
            return word
    return None


def compare_slide(folder: str | Path, manual: str | Path, *, min_iou: float = MIN_IOU) -> SlideAgreement:
    """Agreement of one analysed slide folder with a manual QuPath GeoJSON (TLS as ``TLS: <stage>``,
    optionally the tumour bed). The manual metrics are computed as ``tlsquant review`` computes them."""
    from .review import read_slide_folder, review_slide

    grid = read_slide_folder(folder)
    settings = grid.annotation_settings
    shape, factor = grid.fine_shape, grid.fine_factor
    automatic = [(int(i.metadata["tls_id"]), i) for i in read_features(grid.folder / "tls.geojson")[0]
                 if "tls_id" in i.metadata]
    auto_table = pd.read_csv(grid.folder / "tls.csv").set_index("tls_id") if automatic else None
    manual_items, _ = read_features(manual)
    manual_tls = [i for i in manual_items if class_matches(i.names, settings.tls_classes)]
    manual_tumour = [i for i in manual_items if class_matches(i.names, settings.tumour_classes)]
    auto_masks = [rasterise(item.polygons, shape, factor) for _, item in automatic]
    manual_masks = [rasterise(item.polygons, shape, factor) for item in manual_tls]
    matches = match_masks(auto_masks, manual_masks, min_iou=min_iou)
    pairs = pd.DataFrame([{
        "slide_id": grid.slide_id, "auto_tls_id": automatic[i][0], "manual_feature": manual_tls[j].index,
        "iou": iou, "dice": d, "stage_auto": auto_table.loc[automatic[i][0], "stage"],
        "stage_manual": _stage_word(manual_tls[j].names, grid.stages)} for i, j, iou, d in matches],
        columns=["slide_id", "auto_tls_id", "manual_feature", "iou", "dice", "stage_auto", "stage_manual"])
    reviewed = review_slide(grid.folder, manual, annotations=manual if manual_tumour else None,
                            unstaged=grid.stages[0])
    summary = grid.summary
    tumour_dice = None
    if manual_tumour:
        regions = grid.folder / "annotations.geojson"
        auto_tumour = [i for i in read_features(regions)[0] if class_matches(i.names, settings.tumour_classes)] \
            if regions.is_file() else []
        coarse = grid.coarse_shape, grid.coarse_factor
        tumour_dice = dice(rasterise([p for i in auto_tumour for p in i.polygons], *coarse),
                           rasterise([p for i in manual_tumour for p in i.polygons], *coarse))
    row = {"slide_id": grid.slide_id, "n_auto": len(automatic), "n_manual": len(manual_tls),
           "true_positives": len(matches), "false_positives": len(automatic) - len(matches),
           "false_negatives": len(manual_tls) - len(matches),
           **detection_scores(len(matches), len(automatic), len(manual_tls)),
           "mean_dice": float(pairs["dice"].mean()) if len(pairs) else None, "tumour_dice": tumour_dice}
    for key in ("tumour_area_mm2", "tls_counted", "tls_density_per_mm2", "tls_area_pct"):
        row[f"{key}_auto"] = summary.get(key)
        row[f"{key}_manual"] = reviewed.summary.get(key)
    return SlideAgreement(row, pairs)


def cohort_agreement(slides: list[SlideAgreement], *, stages,
                     min_iou: float = MIN_IOU) -> tuple[dict[str, Any], pd.DataFrame]:
    """Pooled detection scores, stage confusion and κ, Bland-Altman, Lin's CCC and ICC for density and area %."""
    table = pd.DataFrame([s.row for s in slides])
    pairs = pd.concat([s.pairs for s in slides], ignore_index=True) if slides else pd.DataFrame()
    staged = pairs.dropna(subset=["stage_auto", "stage_manual"]) if len(pairs) else pairs
    confusion = confusion_matrix(staged.get("stage_auto", []), staged.get("stage_manual", []), labels=list(stages))
    tp, n_auto, n_manual = (int(table[c].sum()) if len(table) else 0 for c in ("true_positives", "n_auto", "n_manual"))
    result: dict[str, Any] = {"slides": len(table), "matching": {"min_iou": min_iou, "method": "Hungarian on IoU"},
                              "true_positives": tp, "n_auto": n_auto, "n_manual": n_manual,
                              **detection_scores(tp, n_auto, n_manual),
                              "mean_dice": float(pairs["dice"].mean()) if len(pairs) else None,
                              "stage_kappa": cohen_kappa(staged.get("stage_auto", []), staged.get("stage_manual", []),
                                                         labels=stages),
                              "stage_pairs": len(staged)}
    for metric in ("tls_density_per_mm2", "tls_area_pct"):
        both = table[[f"{metric}_auto", f"{metric}_manual"]].dropna().astype(float) if len(table) else pd.DataFrame()
        a, m = (both[f"{metric}_auto"].to_numpy(), both[f"{metric}_manual"].to_numpy()) if len(both) else ([], [])
        result[metric] = {**bland_altman(a, m), "lins_ccc": lins_ccc(a, m),
                          "icc_2_1": icc_agreement(np.column_stack([a, m])) if len(both) else None}
    return result, confusion


def write_figures(table: pd.DataFrame, outdir: Path) -> list[Path]:
    """bland_altman.png and agreement_scatter.png for density and area % (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise TLSQuantError("figures need matplotlib: pip install matplotlib") from exc
    from .io.atomic import atomic_path

    written = []
    metrics = (("tls_density_per_mm2", "TLS density (/mm²)"), ("tls_area_pct", "TLS area (%)"))
    for name, kind in (("bland_altman.png", "ba"), ("agreement_scatter.png", "scatter")):
        figure, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, (metric, label) in zip(axes, metrics):
            both = table[[f"{metric}_auto", f"{metric}_manual"]].dropna().astype(float)
            a, m = both[f"{metric}_auto"].to_numpy(), both[f"{metric}_manual"].to_numpy()
            if kind == "ba":
                stats = bland_altman(a, m)
                ax.scatter((a + m) / 2, a - m, s=18)
                for value, style in ((stats["bias"], "-"), (stats["loa_low"], "--"), (stats["loa_high"], "--")):
                    if value is not None:
                        ax.axhline(value, linestyle=style, color="grey")
                ax.set_xlabel(f"mean of automatic and manual {label}")
                ax.set_ylabel("automatic - manual")
            else:
                ax.scatter(m, a, s=18)
                top = max([*a, *m, 1e-9])
                ax.plot([0, top], [0, top], color="grey", linestyle="--")
                ax.set_xlabel(f"manual {label}")
                ax.set_ylabel(f"automatic {label}")
        figure.tight_layout()
        path = outdir / name
        try:
            with atomic_path(path) as temporary:  # a killed run leaves no half-drawn figure under the real name
                figure.savefig(temporary, format="png", dpi=120)
        finally:
            plt.close(figure)
        written.append(path)
    return written


def slide_folders(results: str | Path) -> list[Path]:
    """A slide folder itself, or every slides/<id>/ of a batch output folder that holds a summary.json."""
    results = Path(results)
    if (results / "summary.json").is_file():
        return [results]
    folders = sorted(p.parent for p in (results / "slides").glob("*/summary.json"))
    if not folders:
        raise ValidationError(f"{results}: neither a slide folder (summary.json) nor a batch output folder "
                              "(slides/<id>/summary.json)")
    return folders


def manual_file(manual: str | Path, slide_id: str, *, single: bool) -> Path | None:
    """The manual GeoJSON of a slide: ``manual`` itself for one slide, else ``<manual>/<slide_id>.geojson``."""
    manual = Path(manual)
    if manual.is_file():
        return manual if single else None
    for suffix in (".geojson", ".json"):
        if (manual / f"{slide_id}{suffix}").is_file():
            return manual / f"{slide_id}{suffix}"
    return None


def validate(results: str | Path, manual: str | Path, outdir: str | Path, *, min_iou: float = MIN_IOU,
             figures: bool = True) -> dict[str, Any]:
    """Compare analysed slides with manual annotations; write tables and figures into ``outdir``.

    Writes ``agreement_slides.csv`` (per slide), ``agreement_tls.csv`` (matched TLS),
    ``stage_confusion.csv``, ``agreement.json`` (cohort), ``agreement.html`` (self-contained) and
    ``agreement.md``, and, with ``figures``, ``bland_altman.png`` and ``agreement_scatter.png``.
    Returns the cohort record.
    """
    import json

    from .io.atomic import atomic_path, write_text_atomic

    folders = slide_folders(results)
    single = len(folders) == 1
    slides, missing, stages = [], [], None
    for folder in folders:
        slide_id = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["slide_id"]
        path = manual_file(manual, slide_id, single=single)
        if path is None:
            missing.append(slide_id)
            continue
        slides.append(compare_slide(folder, path, min_iou=min_iou))
        from .review import read_slide_folder

        stages = stages or read_slide_folder(folder).stages
    if not slides:
        raise ValidationError(f"{manual}: no manual annotations for any slide of {results} "
                              f"(expected <slide_id>.geojson files, e.g. {missing[0] if missing else 'S1'}.geojson)")
    cohort, confusion = cohort_agreement(slides, stages=stages, min_iou=min_iou)
    cohort["slides_without_manual"] = missing
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([s.row for s in slides])
    for name, frame, index in (("agreement_slides.csv", table, False),
                               ("agreement_tls.csv", pd.concat([s.pairs for s in slides], ignore_index=True), False),
                               ("stage_confusion.csv", confusion, True)):
        with atomic_path(outdir / name) as temporary:
            frame.to_csv(temporary, index=index, na_rep="")
    write_text_atomic(outdir / "agreement.json", json.dumps(cohort, indent=2, default=float))
    drawn = write_figures(table, outdir) if figures else []
    from .agreement_report import write_agreement_report

    write_agreement_report(cohort, table, confusion, outdir, figures=drawn)
    return cohort
