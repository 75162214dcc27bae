"""Marker names as instruments write them, matched to the names a config asks for.

Files spell one marker many ways: ``CD20``, ``cd-20``, ``CD20 (164)`` (MIBI mass tag),
``164Dy_CD20`` (IMC metal tag), ``CD20 Opal 520`` (fluorophore). :func:`marker_key`
reduces each to one comparable key; :func:`find_marker` picks the channel for a wanted
marker, exact (case-insensitive) matches first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# a trailing fluorophore: Opal 520, Opal520, Alexa Fluor 488, AF647, FITC, Cy5, ...
_FLUOROPHORE = (
    r"(?:opal\s*\d{3}|alexa(?:\s*fluor)?\s*\d{3}|af\s*\d{3}|atto\s*\d{3}|cy\s*[2357](?:\.5)?|fitc|tritc"
    r"|texas\s*red|pe|apc|bv\s*\d{3}|dylight\s*\d{3}|cf\s*\d{3}|efluor\s*\d{3})"
)
# metals of mass-cytometry tags (IMC, MIBI): "164Dy", "Dy164", "191Ir"
_ELEMENTS = "Y|In|La|Ce|Pr|Nd|Sm|Eu|Gd|Tb|Dy|Ho|Er|Tm|Yb|Lu|Hf|Ta|Ir|Pt|Au|Bi|Cd|Pd|Rh|Ba|Cs|Fe|Na|Ru|Sn|Ag"
_METAL = r"(?:\d{2,3}(?:" + _ELEMENTS + r")|(?:" + _ELEMENTS + r")\d{2,3})"
# a trailing "(164)", "(Dy164)", "[Opal 520]" or "_164Dy" mass/fluorophore tag
_TRAILING_TAG = re.compile(
    r"[\s_]*(?:[(\[][^()\[\]]*[)\]]|_" + _METAL
    + r"|[\s_-]+(?i:" + _FLUOROPHORE + r"))\s*$"
)
# a leading IMC metal tag: "164Dy_CD20", "Dy164-CD20"
_LEADING_METAL = re.compile(r"^\s*" + _METAL + r"[_\s-]+(?=\S)")
_SEPARATORS = re.compile(r"[\s_\-.]+")


def marker_key(name: str) -> str:
    """A comparable key for a marker name: case, separators and tags removed.

    ``"CD-20"``, ``"cd20 (164)"``, ``"CD20 Opal 520"`` and ``"164Dy_CD20"`` all give ``"cd20"``.
    A name that is only a tag (``"Opal 520"``) keeps it, so fluorophore channels stay distinct.
    """
    text = str(name).strip()
    previous = None
    while text != previous:
        previous = text
        stripped = _TRAILING_TAG.sub("", text)
        text = stripped if stripped.strip() else text
    stripped = _LEADING_METAL.sub("", text)
    text = stripped if stripped.strip() else text
    return _SEPARATORS.sub("", text).casefold()


def find_marker(names: Sequence[str], wanted: str) -> int | None:
    """Index of the channel in ``names`` that is marker ``wanted``, or None.

    A case-insensitive exact match wins; otherwise the single channel with the same
    :func:`marker_key`. Two channels sharing that key are ambiguous: None.
    """
    exact = wanted.strip().casefold()
    for index, candidate in enumerate(names):
        if candidate.strip().casefold() == exact:
            return index
    key = marker_key(wanted)
    hits = [index for index, candidate in enumerate(names) if marker_key(candidate) == key]
    return hits[0] if len(hits) == 1 else None


def rename_markers(names: Sequence[str], mapping: Mapping[str, str]) -> list[str]:
    """Names with each channel that matches a key of ``mapping`` renamed to its value.

    Used for fluorophore -> marker maps (``{"Opal 520": "CD20"}``) on inForm exports,
    which name their components by fluorophore only.
    """
    renamed = list(names)
    for source, marker in mapping.items():
        index = find_marker(names, source)
        if index is not None:
            renamed[index] = str(marker).strip()
    return renamed
