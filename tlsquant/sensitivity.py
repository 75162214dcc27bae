"""Threshold sensitivity: TLS metrics with each channel's threshold scaled, per slide and for the cohort.

Per slide (:func:`threshold_sensitivity`, run by :func:`tlsquant.analyze_slide` with
``sensitivity.enabled``): the counting pass counted every scenario channel at each of
``sensitivity.scales`` alongside the baseline (:mod:`tlsquant.segment.evidence`), so here
only the coarse-map steps run again, and only those whose inputs a scenario changed.
Each scenario's numbers equal those of a separate analysis with
``thresholds.<role>.scale`` (or ``tls.min_area_um2``) set to the scenario's value.

For the cohort (:func:`cohort_sensitivity`, :func:`sensitivity_figure`): the group
comparison repeated per scenario, and whether its conclusion holds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .classify import BINARY_STAGES, SILINA_STAGES
from .config import LOCATIONS, Config
from .measure import empty_tls_table, slide_metrics
from .segment.evidence import EvidenceMaps
from .segment.regions import smooth
from .steps import FoundTLS, Grid, TumourBed, artefact_zone, b_occupancy, find_tls, staged_tls, tissue_and_tumour

SENSITIVITY_COLUMNS = ["parameter", "role", "channel", "scale", "tls_count", "tls_counted", "tls_mature_count",
                       "tls_counted_mature_count", "tls_density_per_mm2", "tls_area_pct", "tumour_area_mm2"]
SENSITIVITY_METRICS = ("tls_density_per_mm2", "tls_area_pct", "tls_mature_count")
COHORT_SENSITIVITY_COLUMNS = ["parameter", "role", "channel", "scale", "metric", "n_a", "n_b", "median_a", "median_b",
                              "p", "effect_size", "significant", "holds"]


def _scenario_metrics(evidence: EvidenceMaps, found: FoundTLS, bed: TumourBed, config: Config, grids: Grid) -> dict:
    """Slide metrics of the TLS in ``found`` staged on ``evidence``: the columns tls.csv would give them."""
    staged = staged_tls(evidence, found.labels, found.debris, bed.distance, config, grids)
    keys = ("area_um2", "stage", "location", "counted")
    table = pd.DataFrame([{k: t[k] for k in keys} for t in staged]) if staged else empty_tls_table()
    stages = BINARY_STAGES if config.maturation.scheme == "binary" else SILINA_STAGES
    return slide_metrics(table, tissue_area_mm2=bed.tissue_area_mm2, tumour_area_mm2=bed.tumour_area_mm2,
                         stages=stages, locations=LOCATIONS)


def _tls_unchanged(found: FoundTLS, changed: np.ndarray, density: np.ndarray | None,
                   scenario_density: np.ndarray | None, config: Config, grids: Grid) -> bool:
    """Whether TLS detection on a scenario's maps must give the baseline's TLS, so it need not run.

    ``changed`` marks fine bins whose B-cell occupancy, artefact zone, nuclear or
    T-cell map differ; ``density`` / ``scenario_density`` are the smoothed occupancies
    (None: occupancy unchanged). It holds when (1) the smoothed density moved only
    where it stays at or below half the seed level in both (there no aggregate can
    start or reach: :func:`tlsquant.segment.aggregates.grow_to_half_level`), so the
    candidates are the same, and (2) no changed cell lies in the padded box in which
    a candidate's filters read the maps. Mirrors detect_aggregates; the oracle test
    in tests/test_sensitivity.py guards the two against drifting apart.
    """
    if density is not None:
        floor = 0.5 * config.tls.min_b_fraction
        moved = density != scenario_density
        if (density[moved] > floor).any() or (scenario_density[moved] > floor).any():
            return False
    pad = int(np.ceil(max(config.tls.t_zone_width_um, 40.0) / grids.fine_um)) + 1
    boxes = [box for _, box, _ in found.rejected]
    boxes += [tuple(slice(max(0, s.start - pad), s.stop + pad) for s in box)
              for box in ndi.find_objects(found.labels) if box is not None]
    return not any(changed[box].any() for box in boxes)


def _row(parameter: str, role: str, channel: str, scale: float, metrics: dict) -> dict:
    return {"parameter": parameter, "role": role, "channel": channel, "scale": scale,
            **{k: metrics[k] for k in SENSITIVITY_COLUMNS[4:]}}


def threshold_sensitivity(evidence: EvidenceMaps, config: Config, grids: Grid, regions=None, *,
                          groups: Sequence[tuple[str, ...]], roles: dict[str, str], has_t_cells: bool,
                          baseline: tuple[TumourBed, FoundTLS, dict], workers: int | None = None) -> pd.DataFrame:
    """TLS metrics per sensitivity scenario, the baseline first (columns ``SENSITIVITY_COLUMNS``).

    ``evidence`` holds the scenario counts of ``groups`` (roles scaled together, one
    channel each) at ``config.sensitivity.scales``; ``baseline`` is the analysis's own
    tumour bed, TLS and slide metrics. A step is redone only when a map it reads
    changed: tissue and tumour for the coarse nuclei and tumour maps; TLS detection when
    the artefact zone, the B-cell occupancy, the nuclear map (or the T-cell map, with
    ``tls.require_t_cell_zone``) changed; staging and metrics whenever anything did.
    Scenarios run on ``workers`` threads (default: one per core).
    """
    bed, found, metrics = baseline
    occupancy = b_occupancy(evidence, found.debris)
    density = smooth(occupancy, sigma_um=config.tls.sigma_um, bin_um=grids.fine_um)
    tls_inputs = {"nuclei"} | ({"t_cells"} if has_t_cells and config.tls.require_t_cell_zone else set())

    def threshold_scenario(g: int, k: int) -> dict:
        changed = evidence.changed_maps(g, k)
        if not changed:
            return metrics
        maps = evidence.scenario(g, k)
        coarse = {name for grid, name in changed if grid == "coarse"}
        fine = {name for grid, name in changed if grid == "fine"}
        scenario_bed = tissue_and_tumour(maps, config, grids, regions) if coarse & {"nuclei", "tumour"} else bed
        scenario_tls = found
        if fine & ({"b_cells", "debris"} | tls_inputs):
            debris = artefact_zone(maps, config, grids) if "debris" in fine else found.debris
            scenario_occupancy = b_occupancy(maps, debris)
            moved = scenario_occupancy != occupancy
            changed_cells = moved | (debris != found.debris)
            for name in fine & tls_inputs:
                changed_cells |= maps.fine[name] != evidence.fine[name]
            if changed_cells.any():
                scenario_density = (smooth(scenario_occupancy, sigma_um=config.tls.sigma_um, bin_um=grids.fine_um)
                                    if moved.any() else None)
                if regions is not None or not _tls_unchanged(found, changed_cells, density if moved.any() else None,
                                                             scenario_density, config, grids):
                    scenario_tls = find_tls(maps, config, grids, regions, has_t_cells=has_t_cells, debris=debris,
                                            b_fraction=scenario_occupancy,
                                            density=scenario_density if scenario_density is not None else density)
        return _scenario_metrics(maps, scenario_tls, scenario_bed, config, grids)

    def area_scenario(scale: float) -> dict:
        scenario_tls = find_tls(evidence, config, grids, regions, has_t_cells=has_t_cells, debris=found.debris,
                                b_fraction=occupancy, density=density, min_area_um2=config.tls.min_area_um2 * scale)
        return _scenario_metrics(evidence, scenario_tls, bed, config, grids)

    # scenarios are independent and their filters release the GIL: threads, results in a fixed order
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        threshold_runs = [(group, scale, pool.submit(threshold_scenario, g, k)) for g, group in enumerate(groups)
                          for k, scale in enumerate(config.sensitivity.scales)]
        area_runs = [(scale, pool.submit(area_scenario, scale)) for scale in config.sensitivity.min_area_scales]
        rows = [_row("baseline", "", "", 1.0, metrics)]
        rows += [_row("threshold", "+".join(group), roles[group[0]], scale, run.result())
                 for group, scale, run in threshold_runs]
        rows += [_row("min_tls_area", "", "", scale, run.result()) for scale, run in area_runs]
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def sensitivity_summary(table: pd.DataFrame) -> dict:
    """The ``sensitivity`` block of summary.json: every scenario, and each metric's range over them."""
    values = table.astype(object).where(table.notna(), None)
    block = {"scenarios": values.to_dict("records"), "range": {}}
    for metric in SENSITIVITY_METRICS:
        numbers = pd.to_numeric(table[metric], errors="coerce").dropna()
        block["range"][metric] = None if numbers.empty else [float(numbers.min()), float(numbers.max())]
    return block


def scenario_label(parameter: str, role: str, channel: str, scale: float) -> str:
    """Short name of a scenario: ``CD20 x0.8``, ``min TLS area x1.25``, ``baseline``."""
    if parameter == "baseline":
        return "baseline"
    name = "min TLS area" if parameter == "min_tls_area" else channel or role
    return f"{name} x{scale:g}"


def cohort_sensitivity(slides: pd.DataFrame, group: str, *, groups: Sequence[str] | None = None,
                       metrics: Sequence[str] = SENSITIVITY_METRICS, alpha: float = 0.05) -> pd.DataFrame:
    """Whether the group comparison holds across the sensitivity scenarios.

    Parameters
    ----------
    slides : DataFrame
        Every slide's sensitivity.csv rows with a ``slide_id`` column and the group column
        (``group``): one row per slide and scenario.
    group : str
        Column holding the group label.
    groups : (a, b), optional
        The two labels compared, a first (default: the two present, sorted).
    metrics : list of str
        Columns compared (default: TLS density, area % and mature count).
    alpha : float
        Significance level of the conclusion.

    Returns
    -------
    DataFrame with ``COHORT_SENSITIVITY_COLUMNS``: per scenario (baseline first) and metric
    the Mann–Whitney p and rank-biserial effect size (:func:`tlsquant.compare_groups`),
    ``significant`` (p <= alpha) and ``holds``: the baseline's conclusion stands, that is
    the same significance and, when significant, the same direction.
    """
    from .errors import TLSQuantError
    from .stats import compare_groups

    keys = ["parameter", "role", "channel", "scale"]
    missing = [c for c in keys + ["slide_id", group, *metrics] if c not in slides.columns]
    if missing:
        raise TLSQuantError(f"sensitivity table lacks column(s) {', '.join(missing)}")
    # read back from CSV, the baseline's and min-area rows' empty role and channel are NaN, which equals nothing
    slides = slides.assign(role=slides["role"].fillna("").astype(str), channel=slides["channel"].fillna("").astype(str))
    scenarios = slides[keys].drop_duplicates()
    baseline_first = scenarios["parameter"].ne("baseline").to_numpy().argsort(kind="stable")
    rows = []
    reference = {}
    for _, scenario in scenarios.iloc[baseline_first].iterrows():
        selected = (slides[keys] == scenario[keys]).all(axis=1) | (
            slides[keys[:3]].eq(scenario[keys[:3]]).all(axis=1) & np.isclose(slides["scale"], scenario["scale"]))
        stats = compare_groups(slides[selected], group, metrics=list(metrics), groups=groups)
        for _, stat in stats.iterrows():
            p, effect = stat["p"], stat["effect_size"]
            significant = bool(p is not None and not pd.isna(p) and p <= alpha)
            direction = 0 if effect is None or pd.isna(effect) else int(np.sign(effect))
            if scenario["parameter"] == "baseline":
                reference[stat["metric"]] = (significant, direction)
            base_significant, base_direction = reference.get(stat["metric"], (significant, direction))
            holds = significant == base_significant and (not significant or direction == base_direction)
            rows.append({**scenario[keys].to_dict(), "metric": stat["metric"], "n_a": stat["n_a"], "n_b": stat["n_b"],
                         "median_a": stat["median_a"], "median_b": stat["median_b"], "p": p, "effect_size": effect,
                         "significant": significant, "holds": holds})
    return pd.DataFrame(rows, columns=COHORT_SENSITIVITY_COLUMNS)


def sensitivity_figure(table: pd.DataFrame, path: str | Path, *, alpha: float = 0.05) -> Path:
    """p of the group comparison per scenario and metric (log scale), the alpha line drawn; PNG or SVG by suffix.

    ``table`` is :func:`cohort_sensitivity`'s result. Open markers: the baseline's
    conclusion does not hold.
    """
    import matplotlib

    from .io.atomic import atomic_path

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    labels = list(dict.fromkeys(scenario_label(*row) for row in
                                table[["parameter", "role", "channel", "scale"]].itertuples(index=False)))
    figure, axes = plt.subplots(figsize=(max(4.0, 0.32 * len(labels) + 1.5), 3.8), dpi=150)
    metrics = list(dict.fromkeys(table["metric"]))
    for offset, metric in zip(np.linspace(-0.2, 0.2, len(metrics)) if len(metrics) > 1 else [0.0], metrics):
        rows = table[table["metric"] == metric]
        x = np.array([labels.index(scenario_label(*r)) for r in
                      rows[["parameter", "role", "channel", "scale"]].itertuples(index=False)]) + offset
        p = pd.to_numeric(rows["p"], errors="coerce").to_numpy(float)
        holds = rows["holds"].to_numpy(bool)
        line = axes.scatter(x[holds], p[holds], s=22, label=metric, zorder=3)
        axes.scatter(x[~holds], p[~holds], s=22, facecolors="none", edgecolors=line.get_facecolor(), zorder=3)
    axes.axhline(alpha, color="grey", linestyle="--", linewidth=1, label=f"alpha = {alpha:g}")
    axes.set_yscale("log")
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("Mann–Whitney p")
    axes.set_title("Group comparison under scaled thresholds (open: conclusion changes)", fontsize=8)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".") or "png")
    plt.close(figure)
    return path


def compare_sensitivity(scenarios: str | Path | pd.DataFrame, cohort: pd.DataFrame, group: str, outdir: str | Path, *,
                        groups: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                        alpha: float = 0.05) -> tuple[pd.DataFrame, Path | None]:
    """The cohort's group comparison under every threshold scenario, written into ``outdir``.

    ``scenarios`` is a batch's cohort_sensitivity.csv (or its table): every slide's
    sensitivity.csv rows with ``slide_id``; ``cohort`` gives each slide's ``group``.
    Writes ``sensitivity_comparison.csv`` (:func:`cohort_sensitivity`) and ``sensitivity.png``
    (:func:`sensitivity_figure`); ``metrics`` not among the scenario columns are left out.
    Returns (table, figure path or None when there is nothing to draw).
    """
    from .io.atomic import atomic_path

    table = scenarios if isinstance(scenarios, pd.DataFrame) else pd.read_csv(scenarios, dtype={"slide_id": str})
    labels = cohort[["slide_id", group]].astype({"slide_id": str})
    merged = table.merge(labels, on="slide_id", how="inner")
    chosen = [m for m in (metrics or ()) if m in table.columns] or list(SENSITIVITY_METRICS)
    result = cohort_sensitivity(merged, group, groups=groups, metrics=chosen, alpha=alpha)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with atomic_path(outdir / "sensitivity_comparison.csv") as temporary:
        result.to_csv(temporary, index=False)
    figure = sensitivity_figure(result, outdir / "sensitivity.png", alpha=alpha) if len(result) else None
    return result, figure


__all__ = ["COHORT_SENSITIVITY_COLUMNS", "compare_sensitivity", "SENSITIVITY_COLUMNS", "cohort_sensitivity", "sensitivity_figure",
           "sensitivity_summary", "threshold_sensitivity"]
