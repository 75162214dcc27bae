"""What ``tlsquant info`` reports about a file: each fact, where it came from, what is missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import PixelSizeError
from ..markers import find_marker

# stands in for a missing pixel size so the rest of the file can still be described
_PROBE_PIXEL_SIZE_UM = 1.0


def describe_slide(
    path: str | Path,
    *,
    pixel_size_um=None,
    channel_names: Sequence[str] | None = None,
    marker_map: Mapping[str, str] | None = None,
    roles: Mapping[str, str] | None = None,
    required_roles: Sequence[str] = (),
) -> dict[str, Any]:
    """Open ``path`` and describe it, naming what the user must still supply.

    A missing or unusable pixel size does not stop the description: it is listed under
    ``missing`` with the reason. Other errors propagate.

    Returns
    -------
    dict
        ``info`` (``Slide.info()``, pixel size fields None when missing), ``missing``
        (list of str), ``pixel_size_problem`` (str or None).
    """
    from .reader import open_slide

    problem = None
    try:
        slide = open_slide(path, pixel_size_um=pixel_size_um, channel_names=channel_names, marker_map=marker_map)
    except PixelSizeError as exc:
        problem = str(exc).split("; pass ")[0]
        slide = open_slide(path, pixel_size_um=_PROBE_PIXEL_SIZE_UM, channel_names=channel_names,
                           marker_map=marker_map)
    info = slide.info()
    missing: list[str] = []
    if problem:
        for key in ("pixel_size_um", "pixel_size_x_um", "pixel_size_y_um"):
            info[key] = None
        info["metadata"] = {k: v for k, v in info["metadata"].items() if not k.startswith("pixel_size")}
        missing.append("the pixel size (--pixel-size UM, open_slide(pixel_size_um=...) or a pixel_size_um "
                       "manifest column)")
    source = info["metadata"].get("channel_names_source", "")
    if source.startswith("placeholder"):
        missing.append("channel names (--channels 'DAPI,CD20,...' or a file, or a markers.csv beside the image)")
    for role, marker in (roles or {}).items():
        if marker and find_marker(slide.channel_names, marker) is None:
            needed = "needed" if role in required_roles else "optional"
            missing.append(f"a channel for {role} ({marker!r}, {needed}): rename with --channels, map a "
                           f"fluorophore in [channels.fluorophores], or set channels.{role}")
    return {"info": info, "missing": missing, "pixel_size_problem": problem}


def format_description(description: Mapping[str, Any]) -> list[str]:
    """Text lines for one described slide, each fact with its source."""
    info = description["info"]
    meta = info["metadata"]
    lines = [str(info["path"]), f"  format        {info['format']}"]
    if info["pixel_size_x_um"] is None:
        lines.append(f"  pixel size    none usable: {description['pixel_size_problem']}")
    else:
        lines.append(f"  pixel size    {info['pixel_size_x_um']:.5g} x {info['pixel_size_y_um']:.5g} µm/px "
                     f"({meta.get('pixel_size_source')})")
        width_mm = info["shape"][2] * info["pixel_size_x_um"] / 1000
        height_mm = info["shape"][1] * info["pixel_size_y_um"] / 1000
        lines.append(f"  extent        {width_mm:.2f} x {height_mm:.2f} mm")
    for key, label in (("pixel_size_disagreement", "file says"), ("pixel_size_file_problem", "file's size")):
        if meta.get(key):
            lines.append(f"    {label}: {meta[key]}")
    lines.append(f"  shape (C,Y,X) {tuple(info['shape'])}  {info['dtype']}")
    if meta.get("dtype_conversion"):
        lines.append(f"    note: {meta['dtype_conversion']}")
    lines.append(f"  tiles         {info['tile_shape']}  compression {info['compression']}")
    lines.append(f"  levels        {', '.join('x'.join(map(str, lv[1:])) for lv in info['levels'])}")
    lines.append(f"  channels      {', '.join(info['channels'])}  ({meta.get('channel_names_source')})")
    if meta.get("channel_names_file"):
        lines.append(f"    file names: {', '.join(meta['channel_names_file'])} "
                     f"({meta.get('channel_names_file_source')})")
    if meta.get("channel_names_sidecar_ignored"):
        lines.append(f"    ignored: {meta['channel_names_sidecar_ignored']}")
    if meta.get("field_positions_source"):
        lines.append(f"  fields        {meta['fields']} placed by {meta['field_positions_source']}")
    for warning in meta.get("reader_warnings", []):
        lines.append(f"  warning       {warning}")
    for item in description["missing"]:
        lines.append(f"  supply: {item}")
    return lines
