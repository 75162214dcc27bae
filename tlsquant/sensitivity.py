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

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .classify import BINARY_STAGES, SILINA_STAGES
from .config import LOCATIONS, Config
from .measure import empty_tls_table, slide_metrics
from .segment.aggregates import Candidates, Seeds, debris_zone, detect_aggregates, same_growth
from .segment.evidence import EvidenceMaps
from .segment.regions import disk, smooth, smooth_reach
from .steps import FoundTLS, Grid, TumourBed, artefact_zone, b_occupancy, staged_tls, tissue_and_tumour
from .steps.measures import stage_items
from .steps.regions import RegionOutlines, region_outlines
from .steps.tls import FractionMap, aggregate_options, tls_candidates, tls_seeds

SENSITIVITY_COLUMNS = ["parameter", "role", "channel", "scale", "tls_count", "tls_counted", "tls_mature_count",
                       "tls_counted_mature_count", "tls_density_per_mm2", "tls_area_pct", "tumour_area_mm2"]
SENSITIVITY_METRICS = ("tls_density_per_mm2", "tls_area_pct", "tls_mature_count")
COHORT_SENSITIVITY_COLUMNS = ["parameter", "role", "channel", "scale", "metric", "n_a", "n_b", "median_a", "median_b",
                              "p", "effect_size", "significant", "holds"]


TILE = 128  # fine bins a side of the tiles in which a scenario's changes are recomputed
WHOLE_SHARE = 0.3  # past this share of the tiles a step is recomputed on the whole grid instead


@dataclass
class _Baseline:
    """The analysis's own results, what the scenarios reuse of them, and the run's settings."""

    evidence: EvidenceMaps
    config: Config
    grids: Grid
    regions: object  # drawn regions (tlsquant.annotations.RegionMasks) or None
    has_t_cells: bool
    bed: TumourBed
    found: FoundTLS
    metrics: dict
    outlines: RegionOutlines  # coarse half-level masks, the tumour's closed
    occupancy: np.ndarray  # B-cell occupancy, artefacts cleared
    density: np.ndarray  # the occupancy smoothed
    candidates: Candidates  # TLS candidates of ``density`` (before drawn regions)
    seeds: Seeds  # the seeds they grew from
    screened: dict  # each candidate's filters on the baseline maps (see detect_aggregates)
    kept: list  # candidate numbers of the TLS
    staged: list  # staged_tls of the TLS


def _baseline(evidence: EvidenceMaps, config: Config, grids: Grid, regions, has_t_cells: bool, bed: TumourBed,
              found: FoundTLS, metrics: dict) -> _Baseline:
    occupancy = b_occupancy(evidence, found.debris)
    density = smooth(occupancy, sigma_um=config.tls.sigma_um, bin_um=grids.fine_um)
    candidates = tls_candidates(density, config, grids)
    screened, kept = {}, []
    _detect(evidence, config, grids, has_t_cells, found.debris, occupancy, candidates=candidates, screened=screened,
            kept=kept)
    return _Baseline(evidence, config, grids, regions, has_t_cells, bed, found, metrics,
                     region_outlines(evidence, config, grids, closed=True), occupancy, density, candidates,
                     tls_seeds(density, config, grids), screened, kept,
                     staged_tls(evidence, found.labels, found.debris, bed.distance, config, grids))


class _PatchedMaps(Mapping):
    """One grid's maps in a scenario: the baseline's, those the scenario changed patched on first read
    (most steps read few of them)."""

    def __init__(self, base: dict[str, np.ndarray], patches: dict[str, tuple[np.ndarray, np.ndarray]]):
        self._base, self._patches, self._built = base, patches, {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._patches:
            return self._base[name]
        if name not in self._built:
            cells, delta = self._patches[name]
            counts = self._base[name].copy()
            # in the counts' own unsigned type, so modulo 2**bits: exact, as every true count fits it
            np.add.at(counts.reshape(-1), cells, delta.astype(counts.dtype))
            self._built[name] = counts
        return self._built[name]

    def __iter__(self):
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


def _scenario_maps(evidence: EvidenceMaps, group: int, scale: int) -> tuple[EvidenceMaps, dict]:
    """The maps as counted in scenario ``group`` at scale index ``scale``, and the cells each changed map may differ in.

    The same counts as :meth:`EvidenceMaps.scenario`, each changed map made when first
    read. Returns (maps, {(grid, name): (rows, cols)}).
    """
    patches = {"fine": {}, "coarse": {}}
    changed = {}
    for grid, maps in evidence.scenario_deltas[group].items():
        width = (evidence.fine if grid == "fine" else evidence.coarse)[next(iter(maps))].shape[1] if maps else 0
        for name, (cells, deltas) in maps.items():
            listed = deltas[scale] != 0
            if listed.any():
                patches[grid][name] = (cells[listed], deltas[scale][listed])
                changed[grid, name] = np.divmod(cells[listed], width)
    maps = dataclasses.replace(evidence, fine=_PatchedMaps(evidence.fine, patches["fine"]),
                               coarse=_PatchedMaps(evidence.coarse, patches["coarse"]), scenario_deltas=[])
    return maps, changed


def _cells(*parts: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every cell in ``parts`` (None: none)."""
    parts = [part for part in parts if part is not None]
    if not parts:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


def _touches(box: tuple[slice, slice], cells: tuple[np.ndarray, np.ndarray]) -> bool:
    rows, cols = cells
    return bool(((rows >= box[0].start) & (rows < box[0].stop) & (cols >= box[1].start) & (cols < box[1].stop)).any())


def _tile_boxes(cells: tuple[np.ndarray, np.ndarray], halo: int, shape: tuple[int, int]) -> list | None:
    """Boxes covering every cell within ``halo`` bins of ``cells``: runs of TILE x TILE tiles along each tile row.

    None when they would cover more than WHOLE_SHARE of the grid.
    """
    rows, cols = cells
    tiles = np.zeros((-(-shape[0] // TILE), -(-shape[1] // TILE)), bool)
    if rows.size:
        low_y, high_y = np.clip((rows - halo) // TILE, 0, None), np.minimum((rows + halo) // TILE, tiles.shape[0] - 1)
        low_x, high_x = np.clip((cols - halo) // TILE, 0, None), np.minimum((cols + halo) // TILE, tiles.shape[1] - 1)
        for dy in range(int((high_y - low_y).max()) + 1):
            for dx in range(int((high_x - low_x).max()) + 1):
                tiles[np.minimum(low_y + dy, high_y), np.minimum(low_x + dx, high_x)] = True
    if tiles.mean() > WHOLE_SHARE:
        return None
    boxes = []
    for ty in np.flatnonzero(tiles.any(axis=1)):
        marked = np.r_[False, tiles[ty], False].view(np.int8)
        edges = np.flatnonzero(np.diff(marked))
        for first, stop in zip(edges[0::2], edges[1::2]):
            boxes.append((slice(ty * TILE, min((ty + 1) * TILE, shape[0])),
                          slice(first * TILE, min(stop * TILE, shape[1]))))
    return boxes


def _recomputed(base: np.ndarray, boxes: list, reach: int, compute) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``base`` with each box replaced by ``compute`` of the box grown by ``reach`` bins (cut to the grid)
    and cropped back, and the cells where that changed it.

    Exact when an output bin reads only inputs within ``reach`` bins and the slide edge
    alone is read as empty: the grown box then holds all of what each bin in the box reads.
    Returns ``base`` itself when nothing changed.
    """
    out = base
    rows, cols = [], []
    for box in boxes:
        grown = tuple(slice(max(0, s.start - reach), min(n, s.stop + reach)) for s, n in zip(box, base.shape))
        inner = tuple(slice(s.start - g.start, s.stop - g.start) for s, g in zip(box, grown))
        values = compute(grown)[inner]
        differ = values != base[box]
        if differ.any():
            if out is base:
                out = base.copy()
            out[box] = values
            y, x = np.nonzero(differ)
            rows.append(y + box[0].start)
            cols.append(x + box[1].start)
    return out, _cells(*zip(rows, cols))


def _updated(base: np.ndarray, cells: tuple[np.ndarray, np.ndarray], reach: int, compute,
             whole) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A map whose bins change only within ``reach`` bins of ``cells`` (and read inputs within ``reach``),
    recomputed in tiles around them (:func:`_recomputed`), or whole by ``whole()`` when they spread
    over the slide. Returns (map, changed cells); ``base`` itself when nothing changed."""
    if cells[0].size == 0:
        return base, cells
    boxes = _tile_boxes(cells, reach, base.shape)
    if boxes is not None:
        return _recomputed(base, boxes, reach, compute)
    out = whole()
    differ = out != base
    return (out, np.nonzero(differ)) if differ.any() else (base, _cells())


def _metrics_of(staged: list[dict], bed: TumourBed, config: Config) -> dict:
    keys = ("area_um2", "stage", "location", "counted")
    table = pd.DataFrame([{k: t[k] for k in keys} for t in staged]) if staged else empty_tls_table()
    stages = BINARY_STAGES if config.maturation.scheme == "binary" else SILINA_STAGES
    return slide_metrics(table, tissue_area_mm2=bed.tissue_area_mm2, tumour_area_mm2=bed.tumour_area_mm2,
                         stages=stages, locations=LOCATIONS)


def _row(parameter: str, role: str, channel: str, scale: float, metrics: dict) -> dict:
    return {"parameter": parameter, "role": role, "channel": channel, "scale": scale,
            **{k: metrics[k] for k in SENSITIVITY_COLUMNS[4:]}}


def threshold_sensitivity(evidence: EvidenceMaps, config: Config, grids: Grid, regions=None, *,
                          groups: Sequence[tuple[str, ...]], roles: dict[str, str], has_t_cells: bool,
                          baseline: tuple[TumourBed, FoundTLS, dict], workers: int | None = None) -> pd.DataFrame:
    """TLS metrics per sensitivity scenario, the baseline first (columns ``SENSITIVITY_COLUMNS``).

    ``evidence`` holds the scenario counts of ``groups`` (roles scaled together, one
    channel each) at ``config.sensitivity.scales``; ``baseline`` is the analysis's own
    tumour bed, TLS and slide metrics. A scenario changes a few scattered bins, so each
    step is redone only where its inputs changed, and a result equal to the baseline's
    lets the steps after it reuse the baseline's (:func:`_threshold_scenario`): every
    scenario's numbers equal those of a separate analysis. Scenarios run on ``workers``
    threads (default: one per core).
    """
    base = _baseline(evidence, config, grids, regions, has_t_cells, *baseline)
    # scenarios are independent and their filters release the GIL: threads, results in a fixed order
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        threshold_runs = [(group, scale, pool.submit(_threshold_scenario, base, g, k))
                          for g, group in enumerate(groups) for k, scale in enumerate(config.sensitivity.scales)]
        area_runs = [(scale, pool.submit(_area_scenario, base, scale)) for scale in config.sensitivity.min_area_scales]
        rows = [_row("baseline", "", "", 1.0, base.metrics)]
        rows += [_row("threshold", "+".join(group), roles[group[0]], scale, run.result())
                 for group, scale, run in threshold_runs]
        rows += [_row("min_tls_area", "", "", scale, run.result()) for scale, run in area_runs]
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def _detect(evidence: EvidenceMaps, config: Config, grids: Grid, has_t_cells: bool, debris: np.ndarray,
            occupancy: np.ndarray, *, regions=None, density: np.ndarray | None = None,
            candidates: Candidates | None = None, screened: dict | None = None, kept: list | None = None,
            min_area_um2: float | None = None) -> FoundTLS:
    """:func:`find_tls` on maps whose artefact zone and B-cell occupancy are known, reading the other maps
    box by box; ``candidates``, ``screened`` and ``kept`` as in detect_aggregates."""
    t_fraction = (FractionMap(evidence, "fine", "t_cells") if has_t_cells and config.tls.require_t_cell_zone
                  else None)
    labels, info = detect_aggregates(
        occupancy, **aggregate_options(config, grids, min_area_um2=min_area_um2), debris=debris,
        t_fraction=t_fraction, nuclei_fraction=FractionMap(evidence, "fine", "nuclei"), rejected=(rejected := []),
        density=density, candidates=candidates, screened=screened, kept=kept,
    )
    if regions is not None:
        labels = regions.apply_fine(labels)
    return FoundTLS(debris, labels, info, rejected)


def _area_scenario(base: _Baseline, scale: float) -> dict:
    """Slide metrics with ``tls.min_area_um2`` scaled by ``scale``: the baseline's candidates, filtered again."""
    kept = []
    found = _detect(base.evidence, base.config, base.grids, base.has_t_cells, base.found.debris, base.occupancy,
                    candidates=base.candidates, screened=dict(base.screened), kept=kept, regions=base.regions,
                    min_area_um2=base.config.tls.min_area_um2 * scale)
    if kept == base.kept:
        return base.metrics
    return _restaged_metrics(base, base.evidence, found.labels, base.found.debris, base.bed, _cells())


@dataclass
class _Scenario:
    """A threshold scenario's maps and results, as far as they differ from the baseline's."""

    maps: EvidenceMaps
    bed: TumourBed
    zone: np.ndarray  # artefact zone
    labels: np.ndarray | None  # TLS labels; None: the baseline's
    staging: tuple[np.ndarray, np.ndarray] | None  # cells where maps staging reads changed; None: all (distance moved)


def _threshold_scenario(base: _Baseline, group: int, scale: int) -> dict:
    """Slide metrics of threshold scenario ``group`` at scale index ``scale`` (:func:`_scenario`)."""
    scenario = _scenario(base, group, scale)
    if scenario is None:
        return base.metrics
    return _restaged_metrics(base, scenario.maps, scenario.labels, scenario.zone, scenario.bed, scenario.staging)


def _scenario(base: _Baseline, group: int, scale: int) -> _Scenario | None:
    """Threshold scenario ``group`` at scale index ``scale``; None when it changes no map.

    Each map of the TLS step changes only near the cells whose counts changed, so it is
    recomputed in tiles around them (:func:`_updated`): the artefact zone within its
    dilation radius of changed debris counts, the B-cell occupancy where its counts or the
    zone changed, the density within the smoothing kernel's radius of a changed
    occupancy. Then: (1) where the density moved only at or below half the seed level in
    both, no aggregate can start or reach there (:func:`grow_to_half_level`), or else
    no moved cell changes a seed, its plateau or which side of its edge level it lies
    on (:func:`same_growth`): the candidates are the baseline's, and only those whose
    padded box (all a candidate's filters read) holds a changed cell are screened
    again; otherwise TLS detection runs whole on the new density; (2) the baseline's
    TLS keep their staging unless a map staging reads changed in their box or the
    distance map changed (:func:`_restaged_metrics`); (3) tissue and tumour are redone
    from their half-level masks, each later step taken from the baseline's where its
    inputs are equal (:func:`tissue_and_tumour` with ``like``).
    """
    evidence, bed, found = base.evidence, base.bed, base.found
    config, grids, regions, has_t_cells = base.config, base.grids, base.regions, base.has_t_cells
    maps, changed = _scenario_maps(evidence, group, scale)
    if not changed:
        return None
    scenario_bed = bed
    if ("coarse", "nuclei") in changed or ("coarse", "tumour") in changed:
        drawn = copy.copy(regions)  # applying drawn regions records the excluded area on them: not the analysis's
        scenario_bed = tissue_and_tumour(maps, config, grids, drawn, outlines=region_outlines(maps, config, grids),
                                         like=(base.outlines, bed))
    zone, zone_changed = found.debris, _cells()
    if ("fine", "debris") in changed:
        reach = disk(config.debris.dilate_um, grids.fine_um).shape[0] // 2
        zone, zone_changed = _updated(
            found.debris, changed["fine", "debris"], reach,
            lambda box: debris_zone(maps.fraction("fine", "debris", box), bin_um=grids.fine_um,
                                    dilate_um=config.debris.dilate_um, min_fraction=config.debris.min_fraction),
            lambda: artefact_zone(maps, config, grids))
    occupancy, moved = _updated(base.occupancy, _cells(changed.get(("fine", "b_cells")), zone_changed), 0,
                                lambda box: b_occupancy(maps, zone[box], box), lambda: b_occupancy(maps, zone))
    tls_inputs = [changed.get(("fine", "nuclei"))]
    if has_t_cells and config.tls.require_t_cell_zone:
        tls_inputs.append(changed.get(("fine", "t_cells")))
    touched = _cells(moved, zone_changed, *tls_inputs)  # cells whose TLS inputs changed
    scenario_tls, same_tls = found, True
    if touched[0].size:
        sigma_um = config.tls.sigma_um
        density, density_moved = _updated(
            base.density, moved, smooth_reach(sigma_um=sigma_um, bin_um=grids.fine_um) + 1,
            lambda box: smooth(occupancy[box], sigma_um=sigma_um, bin_um=grids.fine_um),
            lambda: smooth(occupancy, sigma_um=sigma_um, bin_um=grids.fine_um))
        # where the density stays at or below half the seed level (the lowest edge) no aggregate starts or
        # reaches: the cheap test; otherwise each seed near a moved cell is checked (same_growth)
        floor = 0.5 * config.tls.min_b_fraction
        same_candidates = not ((base.density[density_moved] > floor).any() or (density[density_moved] > floor).any()) \
            or same_growth(base.seeds, base.density, density, density_moved)
        kept = []
        if same_candidates:
            # the same candidates kept give the same labels, before drawn regions and so after them
            screened = {index: entry for index, entry in base.screened.items()
                        if not _touches(base.candidates.outlines[index - 1][0], touched)}
            scenario_tls = _detect(maps, config, grids, has_t_cells, zone, occupancy, regions=regions,
                                   candidates=base.candidates, screened=screened, kept=kept)
            same_tls = kept == base.kept
        else:
            scenario_tls = _detect(maps, config, grids, has_t_cells, zone, occupancy, regions=regions,
                                   density=density)
            same_tls = np.array_equal(scenario_tls.labels, found.labels)
    distance_same = scenario_bed.distance is bed.distance or (
        scenario_bed.distance is not None and bed.distance is not None
        and np.array_equal(scenario_bed.distance, bed.distance))
    staging = _cells(changed.get(("fine", "germinal_centre")), changed.get(("fine", "fdc")), zone_changed)
    return _Scenario(maps, scenario_bed, zone, scenario_tls.labels if not same_tls else None,
                     staging if distance_same else None)


def _restaged_metrics(base: _Baseline, maps: EvidenceMaps, labels: np.ndarray | None, zone: np.ndarray,
                      bed: TumourBed, staging: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """Slide metrics of the TLS in ``labels`` (None: the baseline's) staged on ``maps``, ``zone`` and ``bed``.

    A TLS with the baseline's box and region keeps its baseline staging unless a cell
    of ``staging`` (where the maps staging reads changed: germinal-centre, FDC, artefact
    zone) lies in its box; ``staging`` None: the distance map changed, restage all.
    """
    known = {tuple((s.start, s.stop) for s in tls["box"]): tls for tls in base.staged}
    if labels is None:
        tls_boxes = [(tls["tls_id"], tls["box"], tls["region"]) for tls in base.staged]
    else:
        tls_boxes = [(tls_id, box, labels[box] == tls_id)
                     for tls_id, box in enumerate(ndi.find_objects(labels), start=1) if box is not None]
    staged, items = [], []
    for tls_id, box, region in tls_boxes:
        old = known.get(tuple((s.start, s.stop) for s in box))
        if old is not None and staging is not None and np.array_equal(old["region"], region) \
                and not _touches(box, staging):
            staged.append(old)
        else:
            staged.append(None)
            items.append((len(staged) - 1, (tls_id, box, region, zone[box])))
    if labels is None and not items and bed.tissue_area_mm2 == base.bed.tissue_area_mm2 \
            and bed.tumour_area_mm2 == base.bed.tumour_area_mm2:
        return base.metrics
    restaged = stage_items(maps, [item for _, item in items], bed.distance, base.config, base.grids)
    for (position, _), tls in zip(items, restaged):
        staged[position] = tls
    return _metrics_of(staged, bed, base.config)


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
