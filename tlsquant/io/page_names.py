"""What a TIFF's pages say about themselves: channel names, and whether it is brightfield.

Writers keep channel names in many places: the ``PageName`` tag (Ionpath MIBItiff writes
``"CD20 (164)"``), a per-page JSON description (MIBItiff ``channel.target``), a per-page
XML description (``<Name>``, ``<Biomarker>``, ``<Marker>``), or ImageJ ``Labels``.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from .xmlsafe import UnsafeXMLError, parse_xml

_JSON_NAME_KEYS = (
    "channel.target", "target", "marker", "marker_name", "biomarker", "channel_name",
    "channel.name", "name", "channel", "label", "stain",
)
_XML_NAME_TAGS = ("Biomarker", "Marker", "MarkerName", "ChannelName", "Name", "Channel", "Stain")
_RGB_PHOTOMETRIC = ("RGB", "YCBCR")


def _json_name(text: str) -> str | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    lowered = {str(k).lower(): v for k, v in data.items()}
    for key in _JSON_NAME_KEYS:
        value = lowered.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, dict):  # {"channel": {"name": ...}}
            nested = _json_name(json.dumps(value))
            if nested:
                return nested
    return None


def _xml_name(text: str) -> str | None:
    try:
        root = parse_xml(text)
    except (ET.ParseError, UnsafeXMLError):
        return None
    elements = [root, *list(root)]
    for tag in _XML_NAME_TAGS:
        for element in elements:
            local = element.tag.rsplit("}", 1)[-1]
            if local == tag and element.text and element.text.strip() and len(element) == 0:
                return element.text.strip()
            if element.get(tag):
                return element.get(tag).strip()
    return None


def page_channel_name(page) -> tuple[str | None, str | None]:
    """(name, where it was found) for one TIFF page, or (None, None)."""
    if not hasattr(page, "tags"):  # a TiffFrame shares its keyframe's tags
        page = page.aspage()
    tag = page.tags.get("PageName")
    if tag is not None and str(tag.value).strip():
        return str(tag.value).strip(), "TIFF PageName tags"
    description = (page.description or "").strip()
    if description.startswith("{"):
        name = _json_name(description)
        if name:
            return name, "per-page JSON descriptions"
    elif description.startswith("<") and "<OME" not in description[:500]:
        name = _xml_name(description)
        if name:
            return name, "per-page XML descriptions"
    return None, None


def page_channel_names(tif, pages) -> tuple[list[str] | None, str | None]:
    """Names of ``pages`` (one per channel) when every page has a distinct one."""
    labels = (tif.imagej_metadata or {}).get("Labels") if tif.is_imagej else None
    if labels and len(labels) == len(pages) and all(str(v).strip() for v in labels):
        names, source = [str(v).strip() for v in labels], "ImageJ Labels"
    else:
        found = [page_channel_name(page) for page in pages]
        if not found or any(name is None for name, _ in found):
            return None, None
        names, source = [name for name, _ in found], found[0][1]
    if len(names) > 1 and len({n.casefold() for n in names}) == 1:
        return None, None  # one name on every page names the file, not its channels
    return names, source


def aperio_mpp(description: str) -> float | None:
    """Aperio SVS ``MPP`` (µm/px) from the first page's description, or None."""
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def brightfield_refusal(tif, page, source: str, *, kind: str | None = None) -> str | None:
    """A message refusing a brightfield RGB image (Aperio SVS, H&E, RGB TIFF, QPTIFF), or None.

    ``page`` is the image's first full-resolution page (a series' keyframe); ``kind`` names the
    format in the message when the caller knows it. Photometric RGB is refused whatever its
    bit depth (8- or 16-bit colour samples).
    """
    photometric = getattr(page.photometric, "name", str(page.photometric))
    samples = int(getattr(page, "samplesperpixel", 1) or 1)
    if photometric not in _RGB_PHOTOMETRIC or samples not in (3, 4):
        return None
    kind = kind or ("Aperio SVS" if tif.is_svs else f"{photometric} TIFF")
    mpp = aperio_mpp(tif.pages[0].description) if tif.is_svs else None
    size = f", {mpp:g} µm/px from Aperio MPP" if mpp else ""
    return (
        f"{source}: this is a brightfield RGB image ({kind}, {samples} x {page.dtype.name} colour samples per pixel"
        f"{size}); tlsquant needs multiplex fluorescence channels (one grayscale image per marker), "
        f"not a colour rendering such as H&E or IHC"
    )
