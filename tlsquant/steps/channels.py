"""Step 1: which slide channel plays which role, and which markers are scored per cell."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import Channels, Config
from ..errors import ChannelError, ConfigError
from ..slide import Slide

AF_NAMES = ("autofluorescence", "af", "sample af", "sample autofluorescence", "autofluo")  # names of the AF channel
ROLE_ORDER = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells", "autofluorescence")


@dataclass(frozen=True)
class CellMarker:
    """A channel scored per cell: where it is measured and its column key (``cd20`` -> ``cd20_pct``)."""

    channel: str
    compartment: str  # nucleus | ring | cell
    key: str


@dataclass(frozen=True)
class ChannelPlan:
    """The channel of each role, every channel the passes read, and the markers scored per cell."""

    roles: dict[str, str]  # role -> slide channel name, in ROLE_ORDER
    channels: tuple[str, ...]  # every channel read: the roles' and the cell markers'
    cell_markers: tuple[CellMarker, ...]
    measure_cells: bool
    cells_skipped: str  # why cells are not counted ("" when they are)
    warnings: tuple[str, ...]

    @property
    def role_of(self) -> dict[str, str]:
        """Slide channel -> its first role."""
        found: dict[str, str] = {}
        for role, channel in self.roles.items():
            found.setdefault(channel, role)
        return found

    @property
    def b_cell_key(self) -> str | None:
        """Column key of the B-cell channel among the cell markers (``cd20``), or None."""
        channel = self.roles.get("b_cells")
        return next((m.key for m in self.cell_markers if m.channel == channel), None)


def resolve_channels(slide: Slide, channels: Channels) -> tuple[dict[str, str], list[str]]:
    """Role -> slide channel name; a missing required marker is an error naming the role."""
    found: dict[str, str] = {}
    warnings: list[str] = []
    for role in ROLE_ORDER:
        marker = getattr(channels, role).strip()
        if not marker:
            continue
        if slide.has_channel(marker):
            found[role] = slide.channel_names[slide.channel_index(marker)]
        elif role in Channels.REQUIRED:
            raise ChannelError(
                f"{slide.path}: config channels.{role} = {marker!r} but the slide has no such channel; "
                f"channels present: {', '.join(slide.channel_names)}"
            )
        elif role == "t_cells":
            warnings.append(f"no T-cell channel {marker!r}: T-cell fractions are not measured")
        elif role == "autofluorescence" and marker.casefold() in AF_NAMES:
            # exports name the unmixed AF component in several ways: take whichever the slide uses
            alias = next((name for name in slide.channel_names if name.strip().casefold() in AF_NAMES), None)
            if alias is not None:
                found[role] = alias
    return found, warnings


def check_marker_rules(slide: Slide, thresholds) -> None:
    """A ``[thresholds.markers.NAME]`` rule must name a channel of the slide: a typo would silently not apply."""
    unknown = [name for name in thresholds.markers if not slide.has_channel(name)]
    if unknown:
        raise ChannelError(f"{slide.path}: config thresholds.markers names {', '.join(map(repr, unknown))}, "
                           f"no channel of this slide; channels present: {', '.join(slide.channel_names)}")


def column_key(channel: str) -> str:
    """Column-safe lower-case key of a marker name: ``MUM-1`` -> ``mum1``, ``PD-L1`` -> ``pdl1``."""
    return re.sub(r"[^0-9a-z]+", "", channel.casefold()) or "marker"


def resolve_cell_markers(slide: Slide, config: Config, roles: dict[str, str], *,
                         unplaced: list[str] | None = None) -> list[CellMarker]:
    """The channels scored per cell, each with its compartment.

    Markers named in ``cells.markers`` must exist and have a known compartment (an error
    otherwise). Without that list every channel but the nuclear and AF ones is scored;
    a channel in none of the compartment lists is then left out (appended to ``unplaced``
    when given: :func:`plan_channels` warns, naming the settings that would score it):
    guessing would misjudge a nuclear or cytoplasmic marker.
    """
    cells = config.cells
    explicit = bool(cells.markers)
    if explicit:
        missing = [m for m in cells.markers if not slide.has_channel(m)]
        if missing:
            raise ChannelError(
                f"{slide.path}: config cells.markers names {', '.join(map(repr, missing))} but the slide has no "
                f"such channel; channels present: {', '.join(slide.channel_names)}"
            )
        names = [slide.channel_names[slide.channel_index(m)] for m in cells.markers]
    else:
        skip = {roles[r].casefold() for r in ("nuclei", "autofluorescence") if r in roles}
        names = [name for name in slide.channel_names if name.casefold() not in skip]
    markers, keys = [], set()
    unplaced = unplaced if unplaced is not None else []
    for name in dict.fromkeys(names):
        try:
            compartment = cells.compartment(name)
        except ConfigError as exc:
            if explicit:
                raise ConfigError(f"{slide.path}: {exc}") from None
            unplaced.append(name)
            continue
        key = base = column_key(name)
        suffix = 2
        while key in keys:  # "MUM1" and "MUM-1" on one slide stay apart
            key, suffix = f"{base}_{suffix}", suffix + 1
        keys.add(key)
        markers.append(CellMarker(name, compartment, key))
    return markers


def plan_channels(slide: Slide, config: Config) -> ChannelPlan:
    """Resolve the roles and cell markers, and decide whether cells can be counted at this pixel size."""
    roles, warnings = resolve_channels(slide, config.channels)
    pixel_um = max(slide.pixel_size)
    measure_cells = config.cells.enabled and pixel_um <= config.cells.max_pixel_size_um
    cell_markers: list[CellMarker] = []
    if measure_cells:
        cell_markers = resolve_cell_markers(slide, config, roles, unplaced=(unplaced := []))
        if unplaced:
            warnings.append(f"not scored per cell: {', '.join(unplaced)} (compartment unknown: name them in "
                            "cells.nuclear_markers, cells.ring_markers or cells.whole_cell_markers)")
    cells_skipped = "cells.enabled is false" if not config.cells.enabled else ""
    if config.cells.enabled and not measure_cells:
        cells_skipped = (f"cells not measured: pixel size {pixel_um:g} µm is coarser than cells.max_pixel_size_um "
                         f"({config.cells.max_pixel_size_um:g} µm), too coarse to separate nuclei")
        warnings.append(cells_skipped)
    channels = tuple(dict.fromkeys([*roles.values(), *(m.channel for m in cell_markers)]))
    return ChannelPlan(roles, channels, tuple(cell_markers), measure_cells, cells_skipped, tuple(warnings))
