"""TLS candidates: dense CD20+ B-cell aggregates, labelled over the whole slide at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..config import TLS
from .regions import bins, disk, fill_holes, footprint_dilation, smooth, smooth_reach


def debris_level(min_fraction: float) -> float:
    """The artefact share a bin must exceed to be artefact: ``min_fraction``, and any artefact pixel without one."""
    return min_fraction if min_fraction > 0 else 0.0


def debris_zone(debris_fraction: np.ndarray, *, bin_um: float, dilate_um: float, min_fraction: float = 0.0) -> np.ndarray:
    """Grid cells where artefact pixels (debris, red blood cells) exceed ``min_fraction``, grown by ``dilate_um``.

    The floor keeps stray pixels (two touching cells of different lineages) out; the
    dilation covers an artefact's dim rim.
    """
    return grown_zone(debris_fraction > debris_level(min_fraction), bin_um=bin_um, dilate_um=dilate_um)


def grown_zone(zone: np.ndarray, *, bin_um: float, dilate_um: float) -> np.ndarray:
    """``zone`` (bool) grown by a disc of ``dilate_um``."""
    if dilate_um > 0 and zone.any():
        zone = footprint_dilation(zone, disk(dilate_um, bin_um))
    return zone


def _disk_radius(radius_um: float, bin_um: float) -> int:
    """The radius in whole bins of :func:`disk` (``radius_um`` rounded): the same neighbourhood, as a distance."""
    return max(0, int(round(bins(radius_um, bin_um))))


class SmoothedDensity:
    """``smooth(occupancy)`` read box by box (``density[box]``) and thresholded band by band
    (:meth:`above`), never made whole (a float32 map of ~0.3 GB at 40k x 30k px and 2 µm bins).

    The filter's output at a bin reads only the input within :func:`smooth_reach` of it, so
    a box smoothed with that margin (or up to the slide edge) holds bit for bit the whole
    map's values: the seeds and outlines are those of the whole map.
    """

    def __init__(self, occupancy: np.ndarray, *, sigma_um: float, bin_um: float, band_rows: int = 512,
                 threads: int = 1):
        self.occupancy, self.sigma_um, self.bin_um, self.band_rows = occupancy, sigma_um, bin_um, band_rows
        self.threads = threads
        self.reach = smooth_reach(sigma_um=sigma_um, bin_um=bin_um)
        self.shape = occupancy.shape

    def __getitem__(self, box) -> np.ndarray:
        (r0, r1, _), (c0, c1, _) = (s.indices(n) for s, n in zip(box, self.shape))
        p0, p1 = max(0, r0 - self.reach), min(self.shape[0], r1 + self.reach)
        q0, q1 = max(0, c0 - self.reach), min(self.shape[1], c1 + self.reach)
        padded = smooth(self.occupancy[p0:p1, q0:q1], sigma_um=self.sigma_um, bin_um=self.bin_um)
        return padded[r0 - p0 : r1 - p0, c0 - q0 : c1 - q0]

    def above(self, level: float) -> np.ndarray:
        """Bins whose density exceeds ``level`` (bool)."""
        out = np.empty(self.shape, bool)

        def band(start: int) -> None:
            rows = slice(start, min(start + self.band_rows, self.shape[0]))
            np.greater(self[rows, :], level, out=out[rows])

        starts = range(0, self.shape[0], self.band_rows)
        if self.threads > 1 and len(starts) > 1:  # bands are independent; scipy's filter releases the GIL
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.threads, len(starts))) as pool:
                list(pool.map(band, starts))
        else:
            for start in starts:
                band(start)
        return out


def _above(density, level: float) -> np.ndarray:
    return density.above(level) if isinstance(density, SmoothedDensity) else density > level


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndi.label`` of a whole-slide mask, in uint16 while the labels fit (half int32's memory), else int32."""
    try:
        return ndi.label(mask, output=np.uint16)
    except RuntimeError:  # more than 65,535 pieces
        return ndi.label(mask)


def _reject(rejected: list | None, reason: str, box, region) -> None:
    if rejected is not None:
        rejected.append((reason, box, region))


def _plateau(density_in_box: np.ndarray, inside: np.ndarray) -> float:
    """A seed's plateau: the upper quartile of the density inside it (its edge pulls the median down)."""
    return float(np.percentile(density_in_box[inside], 75))


def _edge_level(level: float, *, edge_fraction: float, seed: float) -> float:
    return max(edge_fraction * level, 0.5 * seed)


def _grown(box, reach: int):
    return tuple(slice(max(0, s.start - reach), s.stop + reach) for s in box)


def grow_to_half_level(density: np.ndarray, *, seed: float, min_plateau: float, edge_fraction: float,
                       reach: int):
    """Seeds above ``seed``, each outlined at ``edge_fraction`` of its own plateau.

    The plateau is the upper quartile of the smoothed density inside the seed (its edge
    pulls the median down). Each aggregate gets its own edge level, so a dimmer or
    sparser aggregate is outlined as faithfully as a bright one. Seeds whose plateau
    stays below ``min_plateau`` are chance clusters in loose infiltrates and are dropped;
    edges never go below half the seed level.
    Returns (mask, plateau of each kept seed).
    """
    seeds, _ = _label(_above(density, seed))
    mask = np.zeros(density.shape, bool)
    levels = []
    for index, box in enumerate(ndi.find_objects(seeds), start=1):
        inside = seeds[box] == index
        level = _plateau(density[box], inside)
        if level < min_plateau:
            continue
        levels.append(level)
        edge = _edge_level(level, edge_fraction=edge_fraction, seed=seed)
        grown_box = _grown(box, reach)
        above, _ = ndi.label(density[grown_box] > edge)
        touching = np.unique(above[(seeds[grown_box] == index) & (above > 0)])
        mask[grown_box] |= np.isin(above, touching)
    return mask, levels


@dataclass
class Seeds:
    """The seeds :func:`grow_to_half_level` grows on a density, and its settings."""

    labels: np.ndarray
    boxes: list
    levels: list  # every seed's plateau, kept or not
    seed: float
    min_plateau: float
    edge_fraction: float
    reach: int


def half_level_seeds(density: np.ndarray, *, seed: float, min_plateau: float, edge_fraction: float,
                     reach: int) -> Seeds:
    """The seeds of ``density`` and their plateaus, as :func:`grow_to_half_level` finds them."""
    labels, _ = _label(_above(density, seed))
    boxes = ndi.find_objects(labels)
    levels = [_plateau(density[box], labels[box] == index) for index, box in enumerate(boxes, start=1)]
    return Seeds(labels, boxes, levels, seed, min_plateau, edge_fraction, reach)


def same_growth(seeds: Seeds, density: np.ndarray, other: np.ndarray, moved: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether :func:`grow_to_half_level` surely gives the same mask and plateaus on ``other`` as on ``density``.

    ``seeds`` are those of ``density``; the two densities differ only at the cells
    ``moved`` (rows, cols). True when no moved cell crosses the seed level (the seeds
    are the same), no seed holding a moved cell changes plateau (edges and the
    plateau cut are the same), and no moved cell in the growth box of a kept seed
    crosses its edge level: each seed then grows over the same cells.
    """
    rows, cols = moved
    before, after = density[rows, cols], other[rows, cols]
    if ((before > seeds.seed) != (after > seeds.seed)).any():
        return False
    holding = seeds.labels[rows, cols]
    for index in np.unique(holding[holding > 0]):
        box = seeds.boxes[index - 1]
        if _plateau(other[box], seeds.labels[box] == index) != seeds.levels[index - 1]:
            return False
    for box, level in zip(seeds.boxes, seeds.levels):
        if level < seeds.min_plateau:
            continue
        grown = _grown(box, seeds.reach)
        near = (rows >= grown[0].start) & (rows < grown[0].stop) & (cols >= grown[1].start) & (cols < grown[1].stop)
        edge = _edge_level(level, edge_fraction=seeds.edge_fraction, seed=seeds.seed)
        if near.any() and ((before[near] > edge) != (after[near] > edge)).any():
            return False
    return True


def growth_reach(sigma_um: float, grow_um: float, bin_um: float) -> int:
    """How far an outline may reach beyond its seed, in bins."""
    return int(np.ceil(bins(3 * sigma_um + grow_um, bin_um)))


@dataclass
class Candidates:
    """Candidate aggregates of a smoothed B-cell density, before any filter.

    ``outlines`` holds, per candidate (numbered as in ``labels``, 1..n in raster order),
    its box padded by the filters' reach, its region in that box (holes filled) and its
    area in µm².
    """

    labels: np.ndarray
    levels: list
    outlines: list


def aggregate_candidates(density: np.ndarray, *, bin_um: float, sigma_um: float, min_b_fraction: float,
                         min_b_plateau: float, edge_fraction: float, t_zone_width_um: float,
                         grow_um: float = TLS.grow_um,
                         contrast_band_um: tuple[float, float] = TLS.contrast_band_um) -> Candidates:
    """The seeds of ``density`` grown to their half level (:func:`grow_to_half_level`), labelled and outlined."""
    mask, levels = grow_to_half_level(density, seed=min_b_fraction, min_plateau=min_b_plateau,
                                      edge_fraction=edge_fraction, reach=growth_reach(sigma_um, grow_um, bin_um))
    labels, count = _label(mask)
    del mask
    outlines = []
    if count:
        cell_area = bin_um * bin_um
        pad = int(np.ceil(bins(max(t_zone_width_um, contrast_band_um[1]), bin_um))) + 1
        for index, box in enumerate(ndi.find_objects(labels), start=1):
            box = tuple(slice(max(0, s.start - pad), s.stop + pad) for s in box)
            region = fill_holes(labels[box] == index)
            outlines.append((box, region, region.sum() * cell_area))
    return Candidates(labels, levels, outlines)


def _share(values: np.ndarray) -> float:
    """Mean of B-cell occupancy values (bool or float32) as float32 computes it, whichever was given."""
    return float(values.astype(np.float32, copy=False).mean())


def _screen(box, region, *, b_fraction, debris, max_debris_fraction, nuclei_fraction, min_nuclear_fraction,
            min_contrast, contrast_band_um, need_reach, bin_um) -> tuple[str | None, float | None, np.ndarray | None]:
    """A candidate's own filters (debris, nuclei, contrast): (reason it fails or None, B-cell density, reach)."""
    if debris is not None and debris[box][region].mean() > max_debris_fraction:
        return "debris", None, None
    if nuclei_fraction is not None and min_nuclear_fraction > 0 and nuclei_fraction[box][region].mean() < min_nuclear_fraction:
        return "no_nuclei", None, None
    inside = _share(b_fraction[box][region])
    # bins from the outline, Euclidean: a dilation by a disc of radius r is exactly the bins within r
    # (radius rounded to whole bins, as the disc is), at a fraction of a large dilation's cost
    reach = ndi.distance_transform_edt(~region) if need_reach else None
    if min_contrast > 0:
        band_inner_um, band_outer_um = contrast_band_um
        band = (reach > _disk_radius(band_inner_um, bin_um)) & (reach <= _disk_radius(band_outer_um, bin_um))
        if band.any() and inside < min_contrast * _share(b_fraction[box][band]):
            return "low_contrast", inside, reach
    return None, inside, reach


def detect_aggregates(b_fraction: np.ndarray, *, bin_um: float, sigma_um: float, min_b_fraction: float,
                      min_b_plateau: float, edge_fraction: float, min_area_um2: float, max_debris_fraction: float,
                      t_zone_width_um: float, grow_um: float = TLS.grow_um,
                      contrast_band_um: tuple[float, float] = TLS.contrast_band_um, debris: np.ndarray | None = None,
                      t_fraction: np.ndarray | None = None, min_t_fraction: float = 0.0,
                      nuclei_fraction: np.ndarray | None = None, min_nuclear_fraction: float = 0.0,
                      min_contrast: float = 0.0, min_relative_density: float = 0.0,
                      rejected: list | None = None, density: np.ndarray | None = None,
                      candidates: Candidates | None = None, screened: dict | None = None,
                      kept: list | None = None, threads: int = 1) -> tuple[np.ndarray, dict]:
    """Label dense B-cell aggregates.

    ``b_fraction`` is the share of each grid bin's pixels that are CD20+, or whether a bin holds any (bool; debris excluded).
    After smoothing by ``sigma_um`` (large enough that lone B cells and loose infiltrates
    stay low), cells above ``min_b_fraction`` seed aggregates, which grow by hysteresis
    down to ``edge_fraction`` of the typical aggregate density: the outline then sits
    where B cells give way to the T-cell zone or stroma (at most ``3 * sigma_um + grow_um``
    beyond the seed). Holes are filled; aggregates
    smaller than ``min_area_um2``, made mostly of debris, with fewer nuclei than
    ``min_nuclear_fraction`` (a share of pixels: lymphoid aggregates are packed with
    nuclei, red-blood-cell strings and stain precipitate have none) or (when
    ``min_t_fraction`` > 0) without a T-cell zone around them are dropped. With
    ``min_contrast`` > 0 an aggregate's B-cell density must reach that multiple of the
    density in a band around it (``contrast_band_um``: inner and outer distance from its
    outline): a TLS is a bounded aggregate. With
    ``min_relative_density`` > 0 its B-cell density must also reach that share of the densest
    candidate's on the slide: follicles are packed with B cells, a dense patch of a loose
    infiltrate holds a third to a half as many, however sharply it ends (a T-cell zone rich
    in B cells lowers a follicle's contrast; a slide-relative density does not depend on
    stain gain, pixel size or the way membranes are drawn).

    Given a list as ``rejected``, each dropped candidate is appended to it as
    ``(reason, box, region)``: the reason (``small``, ``debris``, ``no_nuclei``,
    ``low_contrast``, ``no_t_zone``), its box (slices) and its cells in that box.

    ``candidates`` (:func:`aggregate_candidates` of the same density) may be given
    instead of ``density``. ``screened`` caches each candidate's filters by candidate
    number: present entries are taken as they stand, missing ones are added (pass only
    entries computed from maps equal to these in the candidate's box). Given a list as
    ``kept``, the candidate number of each accepted aggregate is appended. ``threads``
    smooth the density band by band in parallel (the same values).

    Returns (labels numbered 1..n in raster order of their first cell, info).
    """
    own_candidates = candidates is None
    if candidates is None:
        if density is None:  # given when the caller smoothed the same occupancy already (sensitivity scenarios)
            density = SmoothedDensity(b_fraction, sigma_um=sigma_um, bin_um=bin_um, threads=threads)
        candidates = aggregate_candidates(density, bin_um=bin_um, sigma_um=sigma_um, min_b_fraction=min_b_fraction,
                                          min_b_plateau=min_b_plateau, edge_fraction=edge_fraction,
                                          t_zone_width_um=t_zone_width_um, grow_um=grow_um,
                                          contrast_band_um=contrast_band_um)
        del density
    labels, levels, count = candidates.labels, candidates.levels, len(candidates.outlines)
    info = {"b_density_seed": float(min_b_fraction),
            "b_density_level_median": float(np.median(levels)) if levels else 0.0,
            "candidates": int(count), "rejected_small": 0, "rejected_debris": 0, "rejected_no_nuclei": 0,
            "rejected_no_t_zone": 0, "rejected_low_contrast": 0, "rejected_low_density": 0}
    if count == 0:
        return labels.astype(np.int32), info
    screened = {} if screened is None else screened
    chosen, dense = [], []
    for index, (box, region, area_um2) in enumerate(candidates.outlines, start=1):
        if area_um2 < min_area_um2:
            info["rejected_small"] += 1
            _reject(rejected, "small", box, region)
            continue
        entry = screened.get(index)
        if entry is None:
            entry = screened[index] = {"screen": _screen(
                box, region, b_fraction=b_fraction, debris=debris, max_debris_fraction=max_debris_fraction,
                nuclei_fraction=nuclei_fraction, min_nuclear_fraction=min_nuclear_fraction, min_contrast=min_contrast,
                contrast_band_um=contrast_band_um, need_reach=min_contrast > 0 or min_t_fraction > 0, bin_um=bin_um)}
        reason, inside, reach = entry["screen"]
        if reason is not None:
            info[f"rejected_{reason}"] += 1
            _reject(rejected, reason, box, region)
            continue
        dense.append((index, entry, box, region, inside, reach))
    # the slide's own follicle density: the densest bounded candidate (identical for any chunking:
    # the maps are whole-slide grids)
    reference = max((inside for *_, inside, _ in dense), default=0.0)
    info["b_density_reference"] = round(reference, 4)
    for index, entry, box, region, inside, reach in dense:
        if min_relative_density > 0 and inside < min_relative_density * reference:
            info["rejected_low_density"] += 1
            _reject(rejected, "low_density", box, region)
            continue
        if min_t_fraction > 0 and t_fraction is not None:
            if "t_zone" not in entry:
                rim = (reach > 0) & (reach <= _disk_radius(t_zone_width_um, bin_um))
                entry["t_zone"] = bool(rim.any() and not t_fraction[box][rim].mean() < min_t_fraction)
            if not entry["t_zone"]:
                info["rejected_no_t_zone"] += 1
                _reject(rejected, "no_t_zone", box, region)
                continue
        chosen.append((box, region))
        if kept is not None:
            kept.append(index)
    shape = labels.shape
    if own_candidates:  # nobody else holds them: the candidate labels go before the output is made
        del labels, candidates
    out = np.zeros(shape, np.int32)
    for new_id, (box, region) in enumerate(chosen, start=1):
        out[box][region & (out[box] == 0)] = new_id
    info["accepted"] = len(chosen)
    return out, info
