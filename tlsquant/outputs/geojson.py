"""tls.geojson: TLS outlines and the tumour bed as QuPath annotations (level-0 pixel coordinates)."""

from __future__ import annotations

from typing import Any

from .geometry import STAGE_COLOURS, TUMOUR_COLOUR, outline_polygons


def geojson_features(result) -> dict[str, Any]:
    """A GeoJSON FeatureCollection QuPath imports over the slide (level-0 pixel coordinates)."""
    features = []
    labels = result.tls_labels
    for row in result.tls.itertuples(index=False):
        region = labels == row.tls_id
        rings = outline_polygons(region, result.fine_factor)
        if not rings:
            continue
        colour = STAGE_COLOURS.get(row.stage, (255, 255, 0))
        features.append({
            "type": "Feature",
            "id": f"tls-{row.tls_id}",
            "geometry": {"type": "Polygon", "coordinates": [rings[0]]},
            "properties": {
                "objectType": "annotation",
                "name": f"TLS {row.tls_id}",
                "classification": {"name": f"TLS {row.stage}", "color": list(colour)},
                "isLocked": False,
                "measurements": {
                    "Area um^2": row.area_um2,
                    "Distance to tumour um": row.distance_to_tumour_um,
                    "CD20 fraction": row.b_cell_fraction,
                },
                "tls_id": int(row.tls_id),
                "stage": row.stage,
                "location": row.location,
                "counted": bool(row.counted),
            },
        })
    tumour_rings = outline_polygons(result.tumour_mask, result.coarse_factor, tolerance=0.6)
    if tumour_rings:
        features.append({
            "type": "Feature",
            "id": "tumour",
            "geometry": {"type": "MultiPolygon", "coordinates": [[ring] for ring in tumour_rings]},
            "properties": {
                "objectType": "annotation",
                "name": "Tumour bed",
                "classification": {"name": "Tumor", "color": list(TUMOUR_COLOUR)},
                "isLocked": True,
                "measurements": {"Area mm^2": result.summary["tumour_area_mm2"]},
            },
        })
    return {"type": "FeatureCollection", "features": features}
