"""Steps 3 and 4: each channel's background and threshold, then the full-resolution counting pass."""

from __future__ import annotations

import copy
import os

import numpy as np

from ..background import SignalModel, build_signal_model
from ..config import Config
from ..segment.evidence import EvidenceCounting, EvidenceMaps, EvidencePlan, count_chunks
from ..slide import Slide
from ..thresholds import ScaledThresholds, positive_threshold, sample_windows, scaled_level, scaled_thresholds
from .channels import ChannelPlan
from .grid import Grid

CROSSTALK_ROLES = ("tumour", "b_cells", "fdc", "germinal_centre", "t_cells")  # channels whose crosstalk is removed


def model_signal(slide: Slide, config: Config, plan: ChannelPlan, grid: Grid, *, scheduler=None,
                 num_workers: int | None = None) -> SignalModel:
    """Each channel's background on the coarse grid (glass, autofluorescence, illumination) and how far
    above it stain begins, from a low-resolution level and a deterministic sample of level-0 windows read
    through tile-sized chunks."""
    tile = max(slide.tile_shape or (1, 1)) if slide.tile_shape and slide.tile_shape[1] < slide.shape[2] else 1
    window_px = max(tile, -(-config.thresholds.window_px // tile) * tile) if tile > 1 else config.thresholds.window_px
    # windows grown to whole tiles are fewer, so the sample keeps the configured size
    windows = max(1, config.thresholds.sample_windows * config.thresholds.window_px**2 // window_px**2)
    boxes = sample_windows(slide.shape[1:], windows=windows, window_px=window_px, align=tile)
    roles, role_of = plan.roles, plan.role_of
    rules = {name: config.thresholds.marker_rule(name, role_of.get(name)) for name in plan.channels}
    return build_signal_model(
        slide, list(plan.channels), rules, factor=grid.coarse_factor, autofluorescence=roles.get("autofluorescence"),
        nuclei=roles["nuclei"], crosstalk_targets=tuple(roles[r] for r in CROSSTALK_ROLES if r in roles),
        sample_boxes=boxes, window_px=window_px, tile=tile, opening_um=config.signal.opening_um,
        max_crosstalk=config.signal.max_crosstalk, min_crosstalk=config.signal.min_crosstalk,
        scheduler=scheduler, num_workers=num_workers,
    )


def threshold_record(config: Config, plan: ChannelPlan, signal: SignalModel, *,
                     num_workers: int | None = None) -> dict[str, dict]:
    """The thresholds used, per role, as summary.json records them (``scale`` where it is not 1).

    Each channel's summary takes medians over the whole coarse grid (~0.1 s a channel on a
    whole slide): they run in ``num_workers`` threads (numpy's selection releases the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    channels = list(dict.fromkeys(plan.roles.values()))
    with ThreadPoolExecutor(max(1, min(num_workers or os.cpu_count() or 1, len(channels)))) as pool:
        summaries = dict(zip(channels, pool.map(signal.summary, channels)))
    record = {}
    for role, channel in plan.roles.items():
        record[role] = {"channel": channel, **copy.deepcopy(summaries[channel])}
        scale = config.thresholds.marker_rule(channel, plan.role_of.get(channel)).scale
        if scale != 1.0:
            record[role]["scale"] = scale
    return record


def artefact_threshold(signal: SignalModel, channel: str, *, ratio: float, scale: float = 1.0) -> np.ndarray:
    """Where the AF channel marks an artefact: above its local AF by ``ratio`` of that AF (and by its margin).

    The unmixed AF channel is bright over all tissue; only AF well above the local level
    (red blood cells, debris) is an artefact. ``scale`` multiplies the part above the
    background (``thresholds.autofluorescence.scale``).
    """
    model = signal.channels[channel]
    background = signal.background(channel)
    if scale != 1.0:
        parts = artefact_thresholds(signal, channel, ratio=ratio, scales=(scale,))
        return scaled_level(parts.base, parts.spread, scale, 0.0, background.shape)
    local_af = np.clip(background - np.float32(model.glass_level), 0, None)
    return background + np.float32(model.offset) + np.maximum(np.float32(model.margin), np.float32(ratio) * local_af)


def artefact_thresholds(signal: SignalModel, channel: str, *, ratio: float, scales) -> ScaledThresholds:
    """:func:`artefact_threshold` at each of ``scales``, as the counting pass evaluates them."""
    model = signal.channels[channel]
    background = signal.background(channel)
    local_af = np.clip(background - np.float32(model.glass_level), 0, None)
    return ScaledThresholds(background + np.float32(model.offset),
                            np.maximum(np.float32(model.margin), np.float32(ratio) * local_af),
                            tuple(scales), (0.0,) * len(scales))


def sensitivity_groups(scenario_roles, roles: dict[str, str]) -> tuple[tuple[str, ...], ...]:
    """Roles scaled together per sensitivity scenario: one slide channel each, in the order of ``scenario_roles``."""
    groups, seen = [], set()
    for role in scenario_roles:
        if role in roles and roles[role] not in seen:
            seen.add(roles[role])
            groups.append(tuple(r for r in roles if roles[r] == roles[role]))
    return tuple(groups)


def count_evidence(slide: Slide, config: Config, plan: ChannelPlan, grid: Grid, signal: SignalModel, *,
                   scheduler=None, num_workers: int | None = None) -> EvidenceMaps:
    """The full-resolution counting pass: each role's positive pixels (crosstalk and AF removed) into the
    evidence maps; with ``sensitivity.enabled`` also each scenario channel at every scale, in the same read.
    (With cells, :func:`tlsquant.steps.cells.count_evidence_and_cells` counts in the cell pass's read.)"""
    counting = evidence_counting(slide, config, plan, grid, signal)
    arrays = [slide.channel(name) for name in counting.plan.channels]
    return count_chunks(arrays, counting, scheduler=scheduler, num_workers=num_workers)


def evidence_counting(slide: Slide, config: Config, plan: ChannelPlan, grid: Grid,
                      signal: SignalModel, *, packed: bool = False) -> EvidenceCounting:
    """What the counting pass counts with: the evidence plan (``.plan.channels``: the channel of each role),
    each role's threshold map, the crosstalk sources' backgrounds and the scenarios' scaled thresholds."""
    roles, role_of = plan.roles, plan.role_of
    role_names = tuple(roles)
    scale_of = {role: config.thresholds.marker_rule(roles[role], role_of.get(roles[role])).scale for role in role_names}
    threshold_maps = {role: positive_threshold(signal, roles[role], scale=scale_of[role]) for role in role_names}
    ratio = config.debris.autofluorescence_ratio
    if "autofluorescence" in roles:
        threshold_maps["autofluorescence"] = artefact_threshold(signal, roles["autofluorescence"], ratio=ratio,
                                                                scale=scale_of["autofluorescence"])
    groups = sensitivity_groups(config.sensitivity.roles, roles) if config.sensitivity.enabled else ()
    scaled = {}
    for group in groups:
        for role in group:
            factors = tuple(scale_of[role] * s for s in config.sensitivity.scales)
            scaled[role] = (artefact_thresholds(signal, roles[role], ratio=ratio, scales=factors)
                            if role == "autofluorescence" else scaled_thresholds(signal, roles[role], factors))
    crosstalk, backgrounds = [], {}
    for role in role_names:
        sources = tuple((role_of[source], kappa) for source, kappa in signal.crosstalk.get(roles[role], ())
                        if source in role_of)
        if sources:
            crosstalk.append((role, sources))
            for source, _ in sources:
                backgrounds[source] = signal.background(roles[source]) + np.float32(signal.channels[roles[source]].offset)
    pixel_af = tuple((role, signal.pixel_af[roles[role]]) for role in role_names
                     if role != "autofluorescence" and roles[role] in signal.pixel_af)
    af_glass = signal.channels[roles["autofluorescence"]].glass_level if pixel_af else 0.0
    evidence_plan = EvidencePlan(role_names, grid.fine_factor, grid.coarse_factor, grid.coarse_factor,
                                 config.debris.min_positive_channels, tuple(crosstalk), pixel_af, af_glass,
                                 tuple(roles[r] for r in role_names), scenarios=groups)
    return EvidenceCounting(evidence_plan, slide.shape[1:], thresholds=threshold_maps, backgrounds=backgrounds,
                            scaled=scaled, packed=packed)
