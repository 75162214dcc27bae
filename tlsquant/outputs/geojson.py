"""tls.geojson: TLS outlines as QuPath annotations (level-0 pixel coordinates).

Each TLS is classified ``TLS: <stage>`` (a derived QuPath class), carries a stable UUID
(:func:`tlsquant.qupath.object_id` of the slide id and ``tls/<id>``), its ``tls_id``,
``stage``, ``location`` and ``counted`` as QuPath metadata, and every numeric tls.csv column
as a measurement (never a null). The tumour bed and the other regions are in annotations.geojson.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..classify import BINARY_STAGES, SILINA_STAGES
from ..config import LOCATIONS
from ..polygons import mask_polygons
from ..qupath import feature, object_id
from .geometry import STAGE_COLOURS

TLS_CLASS = "TLS"
TEXT_COLUMNS = ("stage", "location")


def stage_code(stage: str) -> int:
    """0, 1 (binary: primary, mature) or 0, 1, 2 (Silina: early, primary follicle, secondary follicle)."""
    for stages in (BINARY_STAGES, SILINA_STAGES):
        if stage in stages:
            return stages.index(stage)
    return -1


def tls_measurements(row: dict) -> dict[str, Any]:
    """The numeric tls.csv columns of one TLS under their column names, plus codes for the text ones."""
    values = {k: v for k, v in row.items() if k not in TEXT_COLUMNS}
    values["stage_code"] = stage_code(row["stage"])
    values["mature"] = row["stage"] in ("mature", "secondary_follicle")
    values["location_code"] = LOCATIONS.index(row["location"]) if row["location"] in LOCATIONS else -1
    return values


def tls_feature(slide_id: str, row: dict, polygons: list) -> dict[str, Any]:
    """One TLS as a QuPath annotation (``row``: a tls.csv row as a dict)."""
    tls_id = int(row["tls_id"])
    item = feature(
        object_id=object_id(slide_id, f"tls/{tls_id}"), polygons=polygons, names=(TLS_CLASS, row["stage"]),
        colour=STAGE_COLOURS.get(row["stage"], (255, 255, 0)), name=f"TLS {tls_id}",
        measurements=tls_measurements(row),
        metadata={"slide_id": slide_id, "tls_id": tls_id, "stage": row["stage"], "location": row["location"],
                  "counted": bool(row["counted"])},
    )
    # the same four as plain properties, for GeoJSON readers other than QuPath
    item["properties"].update({"tls_id": tls_id, "stage": row["stage"], "location": row["location"],
                               "counted": bool(row["counted"])})
    return item


def geojson_features(result) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the TLS QuPath imports over the slide (level-0 pixel coordinates)."""
    features = []
    labels = result.tls_labels
    boxes = ndi.find_objects(labels)
    for row in result.tls.to_dict("records"):
        tls_id = int(row["tls_id"])
        box = boxes[tls_id - 1] if tls_id - 1 < len(boxes) else None
        if box is None:
            continue
        polygons = mask_polygons(labels[box] == tls_id, result.fine_factor, offset=(box[0].start, box[1].start))
        if polygons:
            row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            features.append(tls_feature(result.slide_id, row, polygons))
    return {"type": "FeatureCollection", "features": features}
