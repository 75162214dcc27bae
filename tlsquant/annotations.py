"""QuPath annotations in: tumour bed, exclusions and a region of interest on the analysis grids.

Classes map to roles by ``config.annotations`` (names matched case-insensitively, ``*``
wildcards, a derived class such as ``Tumor: edge`` also by its base name). Polygons are
rasterised onto the coarse (tissue, tumour) and fine (TLS) grids: a grid bin belongs to a
polygon when its centre lies inside (:func:`tlsquant.polygons.rasterise`).

What is done with bad geometry, and recorded:

- a self-intersecting ring is filled by the even-odd rule (a bow-tie gives its two lobes), noted;
- a polygon partly outside the slide is clipped to it, noted;
- a polygon wholly outside the slide, or one reaching more than 10 % beyond it that fits the
  slide when read as µm, is an :class:`~tlsquant.qupath.AnnotationError` (QuPath exports level-0 pixels);
- a file whose outlines all fit within the top-left ``pixel size`` share of the slide (µm on a
  slide finer than 1 µm/px) gets a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Annotations as AnnotationSettings
from .polygons import cell_pixels, rasterise, self_intersects
from .qupath import Annotation, AnnotationError, class_matches, read_features

MAX_CHECKED_VERTICES = 20000  # rings longer than this are not checked for self-intersection (quadratic)


@dataclass
class RegionMasks:
    """Annotated regions on the analysis grids; None where no annotation has that role."""

    source: str
    coarse_factor: int
    fine_factor: int
    tumour: np.ndarray | None = None  # coarse
    exclude_coarse: np.ndarray | None = None
    exclude_fine: np.ndarray | None = None
    roi_coarse: np.ndarray | None = None
    roi_fine: np.ndarray | None = None
    tumour_mode: str = "replace"
    counts: dict[str, int] = field(default_factory=dict)  # features per role
    ignored: dict[str, int] = field(default_factory=dict)  # class -> features with no role
    notes: list[str] = field(default_factory=list)
    excluded_area_mm2: float = 0.0

    def apply_coarse(self, tissue: np.ndarray, tumour: np.ndarray, *, pixel_area_um2: float = 0.0,
                     coarse_pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tissue and tumour masks with the annotations applied (the inputs are not modified)."""
        keep = np.ones(tissue.shape, bool)
        if self.exclude_coarse is not None:
            keep &= ~self.exclude_coarse
            if coarse_pixels is not None:
                self.excluded_area_mm2 = float(coarse_pixels[self.exclude_coarse & tissue].sum() * pixel_area_um2 / 1e6)
        if self.roi_coarse is not None:
            keep &= self.roi_coarse
        if self.tumour is not None:
            tumour = (self.tumour & tissue) if self.tumour_mode == "replace" else (tumour & self.tumour)
        return tissue & keep, tumour & keep

    def apply_fine(self, labels: np.ndarray) -> np.ndarray:
        """TLS labels with excluded cells (and cells outside the ROI) removed, renumbered 1..n in order."""
        drop = np.zeros(labels.shape, bool)
        if self.exclude_fine is not None:
            drop |= self.exclude_fine
        if self.roi_fine is not None:
            drop |= ~self.roi_fine
        if not drop.any():
            return labels
        labels = np.where(drop, 0, labels)
        kept = np.unique(labels[labels > 0])
        lookup = np.zeros(int(labels.max()) + 1, labels.dtype)
        lookup[kept] = np.arange(1, len(kept) + 1, dtype=labels.dtype)
        return lookup[labels]

    def record(self) -> dict[str, Any]:
        """Which source each region came from, for summary.json."""
        if self.tumour is None:
            tumour = "automatic"
        elif self.tumour_mode == "replace":
            tumour = "annotation (replaces the automatic tumour bed; tissue only)"
        else:
            tumour = "automatic, restricted to the annotation"
        extra = []
        if self.exclude_coarse is not None:
            extra.append("annotated exclusions removed")
        if self.roi_coarse is not None:
            extra.append("limited to the annotated region of interest")
        suffix = f" ({'; '.join(extra)})" if extra else ""
        return {"annotations": self.source, "tissue": "automatic" + suffix, "tumour": tumour + suffix,
                "tls": "automatic" + suffix, "features": dict(self.counts), "ignored_classes": dict(self.ignored),
                "excluded_area_mm2": round(self.excluded_area_mm2, 6), "notes": list(self.notes)}


def role_of(item: Annotation, settings: AnnotationSettings) -> str | None:
    """tumour, exclude, roi or tls by the item's class; None for any other class."""
    for role, patterns in (("exclude", settings.exclude_classes), ("roi", settings.roi_classes),
                           ("tumour", settings.tumour_classes), ("tls", settings.tls_classes)):
        if class_matches(item.names, patterns):
            return role
    return None


def check_geometry(items: list[Annotation], *, slide_shape: tuple[int, int], pixel_size_um: float,
                   source: str) -> list[str]:
    """Errors for outlines off the slide or in µm; notes for repairs (clipping, self-intersections)."""
    height, width = slide_shape
    notes = []
    boxes = []
    for item in items:
        xy = np.concatenate([np.asarray(ring) for polygon in item.polygons for ring in polygon])
        x0, y0 = xy.min(axis=0)
        x1, y1 = xy.max(axis=0)
        boxes.append((x0, y0, x1, y1))
        outside = x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1
        fits_as_um = x0 >= -1 and y0 >= -1 and x1 / pixel_size_um <= width + 1 and y1 / pixel_size_um <= height + 1
        far_outside = x1 > 1.1 * width or y1 > 1.1 * height  # a small overhang is a drawing past the edge
        if far_outside and fits_as_um and pixel_size_um > 1:
            raise AnnotationError(
                f"{source}: {item.label()} reaches x {x1:.0f}, y {y1:.0f}, beyond the slide ({width} x {height} "
                f"level-0 px) but within it in µm ({width * pixel_size_um:.0f} x {height * pixel_size_um:.0f} µm): "
                "the coordinates look like µm; export level-0 pixel coordinates (QuPath's GeoJSON export does)")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise AnnotationError(
                f"{source}: {item.label()} lies outside the slide (x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}; "
                f"the slide is {width} x {height} level-0 px): is it from another image?")
        if outside:
            notes.append(f"{item.label()}: partly outside the slide, clipped to it")
        for polygon in item.polygons:
            for ring in polygon:
                if len(ring) <= MAX_CHECKED_VERTICES and self_intersects(ring):
                    notes.append(f"{item.label()}: a ring crosses itself; filled by the even-odd rule "
                                 "(fix it in QuPath with Objects > Annotations > Make ... valid, or redraw)")
                    break
    if boxes and pixel_size_um < 0.9:
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
        scaled_w, scaled_h = width * pixel_size_um, height * pixel_size_um
        if x1 <= scaled_w and y1 <= scaled_h and x1 - x0 > 0.5 * scaled_w and y1 - y0 > 0.5 * scaled_h:
            notes.append(f"warning: all outlines lie within the top-left {pixel_size_um:g} of the slide and span most "
                         "of it: the coordinates may be µm, not level-0 pixels")
    return notes


def region_masks(annotations: list[Annotation] | str | Path, settings: AnnotationSettings, *,
                 slide_shape: tuple[int, int], pixel_size_um: float, fine_factor: int, coarse_factor: int,
                 source: str | None = None) -> RegionMasks:
    """Rasterise annotations by role onto the coarse and fine grids of a slide.

    Parameters
    ----------
    annotations : list of Annotation, or a path to a GeoJSON file
    settings : config.annotations
    slide_shape : (height, width) of level 0 in px
    pixel_size_um : level-0 pixel size (µm), to recognise µm coordinates
    fine_factor, coarse_factor : level-0 px per fine / coarse grid bin

    Returns
    -------
    RegionMasks
    """
    notes: list[str] = []
    if not isinstance(annotations, list):
        source = source or str(annotations)
        annotations, notes = read_features(annotations)
    source = source or "annotations"
    coarse_shape = tuple(-(-s // coarse_factor) for s in slide_shape)
    fine_shape = tuple(-(-s // fine_factor) for s in slide_shape)
    by_role: dict[str, list[Annotation]] = {"tumour": [], "exclude": [], "roi": []}
    ignored: dict[str, int] = {}
    for item in annotations:
        role = role_of(item, settings)
        if role in by_role:
            by_role[role].append(item)
        else:
            ignored[item.class_name or "(unclassified)"] = ignored.get(item.class_name or "(unclassified)", 0) + 1
    used = [item for items in by_role.values() for item in items]
    notes += check_geometry(used, slide_shape=slide_shape, pixel_size_um=pixel_size_um, source=source)
    regions = RegionMasks(source=source, coarse_factor=coarse_factor, fine_factor=fine_factor,
                          tumour_mode=settings.tumour_mode, counts={k: len(v) for k, v in by_role.items()},
                          ignored=ignored, notes=notes)

    def polygons(items):
        return [polygon for item in items for polygon in item.polygons]

    if by_role["tumour"]:
        regions.tumour = rasterise(polygons(by_role["tumour"]), coarse_shape, coarse_factor)
    if by_role["exclude"]:
        regions.exclude_coarse = rasterise(polygons(by_role["exclude"]), coarse_shape, coarse_factor)
        regions.exclude_fine = rasterise(polygons(by_role["exclude"]), fine_shape, fine_factor)
    if by_role["roi"]:
        regions.roi_coarse = rasterise(polygons(by_role["roi"]), coarse_shape, coarse_factor)
        regions.roi_fine = rasterise(polygons(by_role["roi"]), fine_shape, fine_factor)
    for role, mask in (("tumour", regions.tumour), ("exclude", regions.exclude_coarse), ("roi", regions.roi_coarse)):
        if mask is not None and not mask.any():
            regions.notes.append(f"warning: the {role} annotations cover no {coarse_factor}-px grid bin centre")
    return regions


def area_mm2(mask: np.ndarray, factor: int, slide_shape: tuple[int, int], pixel_size_um: tuple[float, float]) -> float:
    """Area of a grid mask in mm², cells cut by the slide's edges counted as cut."""
    return float(cell_pixels(mask.shape, factor, slide_shape)[mask].sum() * pixel_size_um[0] * pixel_size_um[1] / 1e6)
