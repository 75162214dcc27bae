"""Marker names as instruments write them, matched to the names a config asks for.

Files spell one marker many ways: ``CD20``, ``cd-20``, ``CD20 (164)`` (MIBI mass tag),
``164Dy_CD20`` (IMC metal tag), ``CD20 Opal 520``, ``Opal 520 CD20``, ``Cy5_CD20`` or
``CD20 : Opal 520`` (fluorophore), ``CD20 - BX007`` (CODEX/PhenoCycler barcode).
:func:`marker_key` reduces each to one comparable key; :func:`find_marker` picks the
channel for a wanted marker, exact (case-insensitive) matches first. A file that repeats a
name (per-cycle DAPI, PhenoCycler ``Blank``) gets unique names from :func:`unique_names`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# a fluorophore: Opal 520, Opal520, Alexa Fluor 488, AF647, FITC, Cy5, ...
_FLUOROPHORE = (
    r"(?:opal\s*\d{3}|alexa(?:\s*fluor)?\s*\d{3}|af\s*\d{3}|atto\s*\d{3}|cy\s*[2357](?:\.5)?|fitc|tritc"
    r"|texas\s*red|pe|apc|bv\s*\d{3}|dylight\s*\d{3}|cf\s*\d{3}|efluor\s*\d{3})"
)
# CODEX / PhenoCycler barcode and reporter ids: "BX007", "RX021"
_BARCODE = r"(?:[br]x\d{2,3})"
# metals of mass-cytometry tags (IMC, MIBI): "164Dy", "Dy164", "191Ir"
_ELEMENTS = "Y|In|La|Ce|Pr|Nd|Sm|Eu|Gd|Tb|Dy|Ho|Er|Tm|Yb|Lu|Hf|Ta|Ir|Pt|Au|Bi|Cd|Pd|Rh|Ba|Cs|Fe|Na|Ru|Sn|Ag"
_METAL = r"(?:\d{2,3}(?:" + _ELEMENTS + r")|(?:" + _ELEMENTS + r")\d{2,3})"
# a trailing "(164)", "(Dy164)", "[Opal 520]", "_164Dy", " Opal 520", " : Opal 520" or " - BX007" tag
_TRAILING_TAG = re.compile(
    r"[\s_]*(?:[(\[][^()\[\]]*[)\]]|_" + _METAL
    + r"|[\s_:-]+(?i:" + _FLUOROPHORE + r"|" + _BARCODE + r"))\s*$"
)
# a leading IMC metal tag ("164Dy_CD20", "Dy164-CD20") or fluorophore ("Opal 520 CD20", "Cy5_CD20")
_LEADING_TAG = re.compile(r"^\s*(?:" + _METAL + r"|(?i:" + _FLUOROPHORE + r"))[\s_:-]+(?=\S)")
_SEPARATORS = re.compile(r"[\s_\-.]+")
# the suffix unique_names gives the second, third ... channel of a repeated name
_REPEAT = re.compile(r"^(?P<name>.*\S) \((?P<count>\d+)\)$")


def marker_key(name: str) -> str:
    """A comparable key for a marker name: case, separators and tags removed.

    ``"CD-20"``, ``"cd20 (164)"``, ``"CD20 Opal 520"``, ``"Opal 520 CD20"``, ``"164Dy_CD20"`` and
    ``"CD20 - BX007"`` all give ``"cd20"``. A name that is only a tag (``"Opal 520"``) keeps it,
    so fluorophore channels stay distinct.
    """
    text = str(name).strip()
    previous = None
    while text != previous:
        previous = text
        stripped = _TRAILING_TAG.sub("", text)
        text = stripped if stripped.strip() else text
    stripped = _LEADING_TAG.sub("", text)
    text = stripped if stripped.strip() else text
    return _SEPARATORS.sub("", text).casefold()


def _repeats_of_others(names: Sequence[str], hits: list[int]) -> list[int]:
    """``hits`` without the channels :func:`unique_names` renamed as repeats of another hit."""
    folded = {names[index].strip().casefold() for index in hits}
    kept = []
    for index in hits:
        match = _REPEAT.match(names[index].strip())
        if not (match and match.group("name").casefold() in folded):
            kept.append(index)
    return kept


def find_marker(names: Sequence[str], wanted: str) -> int | None:
    """Index of the channel in ``names`` that is marker ``wanted``, or None.

    A case-insensitive exact match wins; otherwise the single channel with the same
    :func:`marker_key`. Two channels sharing that key are ambiguous: None, unless the
    others are repeats of the first (``"DAPI (2)"`` beside ``"DAPI"``, see :func:`unique_names`).
    """
    exact = wanted.strip().casefold()
    for index, candidate in enumerate(names):
        if candidate.strip().casefold() == exact:
            return index
    key = marker_key(wanted)
    hits = [index for index, candidate in enumerate(names) if marker_key(candidate) == key]
    if len(hits) > 1:
        hits = _repeats_of_others(names, hits)
    return hits[0] if len(hits) == 1 else None


def unique_names(names: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Names made unique (ignoring case) in file order, and how often each repeated name occurs.

    The first keeps its name, later ones get `` (2)``, `` (3)`` ...: ``["DAPI", "CD20", "DAPI"]``
    gives ``["DAPI", "CD20", "DAPI (2)"]`` and ``{"DAPI": 2}``. Marker matching still finds
    the first ``DAPI``.
    """
    names = [str(name).strip() for name in names]
    counts: dict[str, int] = {}
    for name in names:
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    taken = {name.casefold() for name in names}
    seen: dict[str, int] = {}
    result = []
    for name in names:
        folded = name.casefold()
        seen[folded] = seen.get(folded, 0) + 1
        if seen[folded] == 1:
            result.append(name)
            continue
        number = seen[folded]
        while f"{name} ({number})".casefold() in taken:
            number += 1
        renamed = f"{name} ({number})"
        taken.add(renamed.casefold())
        result.append(renamed)
    first_spelling: dict[str, str] = {}
    for name in names:
        first_spelling.setdefault(name.casefold(), name)
    return result, {first_spelling[folded]: count for folded, count in counts.items() if count > 1}


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
