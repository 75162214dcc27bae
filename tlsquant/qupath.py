"""QuPath GeoJSON objects: building features QuPath 0.4-0.6 imports, and reading QuPath exports.

What QuPath's reader (``qupath.lib.io.QuPathTypeAdapters`` and ``GsonTools.PathClassTypeAdapter``,
v0.4.0 to v0.7) accepts, and so what is written here:

- ``id``: a UUID string becomes the object's id (anything else is dropped and a random id given),
  so ids are UUID-5 of the slide id and the object: a re-import is recognised as the same object.
- ``classification``: a string (``"TLS: mature"``, split at ``:``) or an object with ``name``
  or ``names`` *and* ``color`` (an object without ``color`` is a parse error in QuPath);
  derived classes are written as QuPath writes them, ``{"names": ["TLS", "mature"], "color": [...]}``.
- ``measurements``: an object of numbers (or the pre-0.4 list of ``{name, value}``); QuPath 0.4
  reads it as ``Map<String, Double>``, so a null or a boolean breaks the import: neither is
  ever written (booleans become 0/1, missing values are left out).
- ``metadata``: an object of primitives, stored as strings.
- geometry: ``Polygon`` / ``MultiPolygon`` with holes (exterior first), via JTS.
"""

from __future__ import annotations

import fnmatch
import json
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TLSQuantError

# all tlsquant object ids live under this namespace: uuid5(NAMESPACE, "<slide id>/<object>")
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/tlsquant/tlsquant/objects")


class AnnotationError(TLSQuantError, ValueError):
    """An annotation file cannot be read or its geometry cannot be used."""


def object_id(slide_id: str, key: str) -> str:
    """The stable UUID of object ``key`` (``tls/3``, ``tumour``...) of slide ``slide_id``."""
    return str(uuid.uuid5(NAMESPACE, f"{slide_id}/{key}"))


def classification(names: tuple[str, ...] | list[str], colour: tuple[int, int, int]) -> dict[str, Any]:
    """A QuPath classification: ``name`` for a base class, ``names`` for a derived one; always a colour."""
    names = [str(n) for n in names]
    key = {"name": names[0]} if len(names) == 1 else {"names": names}
    return {**key, "color": [int(c) for c in colour]}


def measurement_values(values: dict[str, Any]) -> dict[str, float]:
    """Numbers only: booleans as 0/1, None, NaN, infinities and text left out (QuPath 0.4 needs doubles)."""
    out = {}
    for name, value in values.items():
        if isinstance(value, bool):
            out[name] = 1.0 if value else 0.0
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                out[name] = value
        elif hasattr(value, "item"):  # numpy scalars
            out.update(measurement_values({name: value.item()}))
    return out


def feature(*, object_id: str, polygons: list, names: tuple[str, ...], colour: tuple[int, int, int], name: str,
            measurements: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
            locked: bool = False) -> dict[str, Any]:
    """One QuPath annotation as a GeoJSON Feature (``polygons``: ``[[exterior, *holes], ...]``, level-0 px)."""
    geometry = ({"type": "Polygon", "coordinates": polygons[0]} if len(polygons) == 1
                else {"type": "MultiPolygon", "coordinates": polygons})
    properties: dict[str, Any] = {"objectType": "annotation", "name": name,
                                  "classification": classification(names, colour)}
    if locked:
        properties["isLocked"] = True
    values = measurement_values(measurements or {})
    if values:
        properties["measurements"] = values
    if metadata:
        properties["metadata"] = {k: ("true" if v is True else "false" if v is False else str(v))
                                  for k, v in metadata.items() if v is not None}
    return {"type": "Feature", "id": object_id, "geometry": geometry, "properties": properties}


# -- reading ----------------------------------------------------------------------------------


@dataclass
class Annotation:
    """One area object read from a GeoJSON file."""

    index: int  # position in the file (0-based)
    names: tuple[str, ...]  # classification parts: ("TLS", "mature"); () when unclassified
    polygons: list  # [[exterior, *holes], ...] in level-0 px
    name: str = ""
    object_id: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        """The class as QuPath shows it: ``TLS: mature``."""
        return ": ".join(self.names)

    def label(self) -> str:
        """How messages name this object: feature number, name and class."""
        parts = [f"feature {self.index}"]
        if self.name:
            parts.append(repr(self.name))
        parts.append(f"class {self.class_name!r}" if self.names else "unclassified")
        return " ".join(parts)


def class_matches(names: tuple[str, ...], patterns) -> bool:
    """Whether a class (or its base class) matches any pattern (case-insensitive, ``*`` wildcards)."""
    if not names:
        return False
    candidates = {": ".join(names).casefold(), names[0].casefold()}
    return any(fnmatch.fnmatchcase(c, p.casefold()) for p in patterns for c in candidates)


def _class_names(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(":") if part.strip())
    if isinstance(value, dict):
        if isinstance(value.get("names"), list):
            return tuple(str(n).strip() for n in value["names"] if str(n).strip())
        if isinstance(value.get("name"), str):
            return _class_names(value["name"], where)
        if not value:
            return ()
    raise AnnotationError(f"{where}: classification must be a string or an object with 'name' or 'names', "
                          f"found {json.dumps(value)[:80]}")


def _ring(value, where: str) -> list[list[float]]:
    if not isinstance(value, list) or not all(isinstance(p, list) and len(p) >= 2 for p in value):
        raise AnnotationError(f"{where}: a ring must be a list of [x, y] positions, found {json.dumps(value)[:80]}")
    try:
        ring = [[float(p[0]), float(p[1])] for p in value]
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: ring positions must be numbers, found {json.dumps(value)[:80]}") from None
    if not all(math.isfinite(c) for p in ring for c in p):
        raise AnnotationError(f"{where}: ring positions must be finite numbers (found NaN or infinity)")
    if ring and ring[0] != ring[-1]:
        ring.append(list(ring[0]))
    if len(ring) < 4:
        raise AnnotationError(f"{where}: a ring needs at least 3 distinct positions, found {len(ring) - 1}")
    return ring


def _polygons(geometry, where: str) -> list | None:
    """``[[exterior, *holes], ...]``; None for geometries that enclose no area (points, lines)."""
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise AnnotationError(f"{where}: geometry must be a GeoJSON geometry object, found {json.dumps(geometry)[:80]}")
    kind = geometry["type"]
    if kind in ("Point", "MultiPoint", "LineString", "MultiLineString"):
        return None
    if kind == "GeometryCollection":
        parts = [_polygons(g, f"{where} part {k}") for k, g in enumerate(geometry.get("geometries") or [])]
        return [p for part in parts if part for p in part] or None
    coordinates = geometry.get("coordinates")
    if kind == "Polygon":
        coordinates = [coordinates]
    elif kind != "MultiPolygon":
        raise AnnotationError(f"{where}: geometry type {kind!r} is not supported; expected Polygon or MultiPolygon")
    if not isinstance(coordinates, list) or not all(isinstance(p, list) and p for p in coordinates):
        raise AnnotationError(f"{where}: {kind} coordinates must be lists of rings")
    return [[_ring(ring, f"{where} polygon {k} ring {r}") for r, ring in enumerate(polygon)]
            for k, polygon in enumerate(coordinates)]


def _measurements(value) -> dict[str, float]:
    if isinstance(value, list):  # QuPath before 0.4: [{"name": ..., "value": ...}]
        value = {item.get("name"): item.get("value") for item in value if isinstance(item, dict)}
    if not isinstance(value, dict):
        return {}
    out = {}
    for name, number in value.items():
        if isinstance(number, str) and number.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            continue  # how QuPath 0.5+ writes non-finite values
        if isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number):
            out[str(name)] = float(number)
    return out


def parse_features(data, source: str) -> tuple[list[Annotation], list[str]]:
    """Area objects of a parsed GeoJSON document (FeatureCollection, a list of features, or one feature).

    Returns the annotations and notes on what was skipped (points, lines, empty geometries).
    """
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        items = data.get("features")
        if not isinstance(items, list):
            raise AnnotationError(f"{source}: a FeatureCollection needs a 'features' list")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        items = [data]
    elif isinstance(data, list):
        items = data
    else:
        found = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise AnnotationError(f"{source}: expected a GeoJSON FeatureCollection or a list of features "
                              f"(QuPath: File > Export objects as GeoJSON), found {found!r}")
    annotations, notes = [], []
    for index, item in enumerate(items):
        where = f"{source}: feature {index}"
        if not isinstance(item, dict) or item.get("type") not in ("Feature", None) or "geometry" not in item:
            raise AnnotationError(f"{where}: expected a GeoJSON Feature with a geometry")
        properties = item.get("properties") or {}
        if not isinstance(properties, dict):
            raise AnnotationError(f"{where}: properties must be an object")
        name = properties.get("name") if isinstance(properties.get("name"), str) else ""
        where = f"{where}{f' ({name!r})' if name else ''}"
        names = _class_names(properties.get("classification"), where)
        if item["geometry"] is None:
            notes.append(f"{where}: no geometry, skipped")
            continue
        polygons = _polygons(item["geometry"], where)
        if polygons is None:
            notes.append(f"{where}: a {item['geometry'].get('type')} encloses no area, skipped")
            continue
        metadata = properties.get("metadata") if isinstance(properties.get("metadata"), dict) else {}
        identifier = item.get("id")
        annotations.append(Annotation(
            index=index, names=names, polygons=polygons, name=name,
            object_id=str(identifier) if isinstance(identifier, (str, int)) else None,
            measurements=_measurements(properties.get("measurements")),
            metadata={str(k): str(v) for k, v in metadata.items() if isinstance(v, (str, int, float, bool))},
        ))
    return annotations, notes


def read_features(path: str | Path) -> tuple[list[Annotation], list[str]]:
    """Read a GeoJSON file of QuPath objects; see :func:`parse_features`."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not a text file; expected GeoJSON exported from QuPath") from None
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                              "expected GeoJSON exported from QuPath") from None
    return parse_features(data, str(path))
