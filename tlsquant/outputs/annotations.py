"""annotations.geojson: the regions behind the numbers, as QuPath annotations (level-0 pixels).

One feature per region, each a Polygon or MultiPolygon with holes, a stable UUID and its
area as a measurement:

========================  ===============  ==============================================
class                     colour (RGB)     what
========================  ===============  ==============================================
``Tissue``                150, 150, 150    tissue outline (nuclear stain)
``Tumor``                 200, 0, 0        tumour bed (QuPath's own tumour class)
``Peritumoral margin``    250, 170, 40     tissue within ``location.margin_um`` outside the tumour bed
``Artefact (automatic)``  255, 0, 255      artefacts excluded by the analysis (debris, blood, edge rims)
``TLS candidate: <why>``  120, 120, 120    B-cell aggregates rejected as TLS, with the reason
========================  ===============  ==============================================

Re-imported with ``--annotations``, ``Tumor`` maps to the tumour bed under the default
``annotations.tumour_classes``; the other classes match no default mapping and are left alone
(the automatic artefacts are excluded by the analysis anyway).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..polygons import mask_pixels, mask_polygons
from ..qupath import feature, object_id

TISSUE = ("Tissue", (150, 150, 150))
TUMOUR = ("Tumor", (200, 0, 0))
MARGIN = ("Peritumoral margin", (250, 170, 40))
ARTEFACT = ("Artefact (automatic)", (255, 0, 255))
CANDIDATE = ("TLS candidate", (120, 120, 120))
MAX_CANDIDATES = 2000  # the largest rejected candidates written (small noise blobs can be many)


def _on_tissue(fine_mask: np.ndarray, tissue_mask: np.ndarray, ratio: int) -> np.ndarray:
    """The cells of ``fine_mask`` inside ``tissue_mask`` (``ratio`` fine cells per coarse cell side).

    Looked up cell by set cell: the tissue mask blown up to the fine grid would be two
    whole-grid copies (0.3 s on a whole slide) for the few set cells of an artefact mask.
    """
    cells = np.flatnonzero(fine_mask)  # a 2-d nonzero of a whole-slide grid costs ten times more
    rows, cols = np.divmod(cells, fine_mask.shape[1])
    inside = tissue_mask[rows // ratio, cols // ratio]
    if inside.all():
        return fine_mask
    kept = np.zeros(fine_mask.shape, bool)
    kept.flat[cells[inside]] = True
    return kept


def margin_band(result) -> np.ndarray:
    """Coarse cells of tissue outside the tumour bed and within ``location.margin_um`` of it."""
    distance = result.tumour_distance_um
    if distance is None:
        return np.zeros(result.tumour_mask.shape, bool)
    return (distance > 0) & (distance <= result.config.location.margin_um) & result.tissue_mask


def annotation_features(result, *, slide_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """The region annotations of one analysed slide as a GeoJSON FeatureCollection.

    ``slide_shape`` (level-0 height, width) sizes the grid cells cut by the slide's edges;
    without it they count whole.
    """
    py, px = result.pixel_size
    slide_id = result.slide_id
    coarse, fine = result.coarse_factor, result.fine_factor
    if slide_shape is None:
        slide_shape = result.slide_shape if all(result.slide_shape) else (result.tissue_mask.shape[0] * coarse,
                                                                            result.tissue_mask.shape[1] * coarse)
    def area_mm2(mask, factor, offset=(0, 0)):
        return round(float(mask_pixels(mask, factor, slide_shape, offset=offset) * px * py / 1e6), 6)

    features = []

    def add(key, cls, mask, factor, *, names=None, name=None, offset=(0, 0), metadata=None, locked=True):
        polygons = mask_polygons(mask, factor, offset=offset)
        if not polygons:
            return
        area = area_mm2(mask, factor, offset)
        features.append(feature(
            object_id=object_id(slide_id, key), polygons=polygons, names=names or (cls[0],), colour=cls[1],
            name=name or cls[0], measurements={"Area mm^2": area, "Area um^2": round(area * 1e6, 1)},
            metadata={"slide_id": slide_id, "region": key.split("/")[0], **(metadata or {})}, locked=locked,
        ))

    add("tissue", TISSUE, result.tissue_mask, coarse)
    add("tumour", TUMOUR, result.tumour_mask, coarse, name="Tumour bed", locked=False)
    add("margin", MARGIN, margin_band(result), coarse, metadata={"margin_um": result.config.location.margin_um})
    if result.debris_mask is not None:
        add("artefacts", ARTEFACT, _on_tissue(result.debris_mask, result.tissue_mask, coarse // fine), fine)
    candidates = sorted(result.rejected_candidates, key=lambda item: -int(item[2].sum()))[:MAX_CANDIDATES]
    for number, (reason, box, region) in enumerate(candidates, start=1):
        rows, cols = box[0].start, box[1].start
        add(f"candidate/{reason}/{rows}/{cols}", CANDIDATE, region, fine,
            names=(CANDIDATE[0], reason), name=f"Rejected candidate {number} ({reason.replace('_', ' ')})",
            offset=(rows, cols), metadata={"reason": reason})
    return {"type": "FeatureCollection", "features": features}
