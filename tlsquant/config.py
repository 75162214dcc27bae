"""Typed, frozen analysis configuration: defaults, TOML loading, overrides, validation.

Every default and its one-line doc live in the dataclasses below (:func:`setting`), and only
there: ``configs/default.toml`` and ``docs/configuration.md`` are generated from them by
``python -m tlsquant.config_docs`` (a test fails when either differs).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import ConfigError

THRESHOLD_METHODS = ("background", "otsu", "triangle", "li", "percentile", "fixed", "mad")
LOCATIONS = ("intratumoral", "peritumoral", "distal")
SENSITIVITY_ROLES = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells", "autofluorescence")


def setting(default: Any, doc: str, *, example: tuple[str, ...] = ()) -> Any:
    """A config field: its default and its one-line ``doc``, the one place both are written.

    ``configs/default.toml`` and ``docs/configuration.md`` are generated from them
    (:mod:`tlsquant.config_docs`); ``example`` holds commented TOML lines shown under a table
    that is empty by default.
    """
    metadata = {"doc": doc, "example": example}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Channels:
    """Marker names in the slide (case-insensitive) for each role."""

    nuclei: str = setting("DAPI", "nuclear counterstain: tissue mask and nuclei")
    tumour: str = setting("TFE3", "tumour marker: the tumour bed (TFE3: the fusion protein of alveolar soft part sarcoma)")
    b_cells: str = setting("CD20", "B cells: TLS are dense aggregates of them")
    fdc: str = setting("CD21", "follicular dendritic cells (primary follicle network)")
    germinal_centre: str = setting("CD23", "germinal-centre FDC network: marks mature TLS")
    t_cells: str = setting("CD3", "optional (\"\" to skip): T-cell fractions and the optional T-zone check")
    autofluorescence: str = setting("Autofluorescence", "optional, used when the slide has it: the unmixed AF channel, "
                                    "the background template and an artefact flag")
    fluorophores: dict[str, str] = setting(
        {}, "rename channels when the slide is opened: fluorophore (or any file name) = marker",
        example=('"Opal 520" = "CD20"  # e.g. inForm component exports, which name channels by fluorophore only',
                 '"Opal 690" = "CD3"'))

    REQUIRED = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre")


@dataclass(frozen=True)
class ThresholdRule:
    """How one channel's positive pixels are decided.

    ``background`` (default): above the local background (glass, autofluorescence,
    illumination) by ``max(k * noise, fraction * typical positive signal)``; the other
    methods give one global threshold from the sampled pixels, glass and tissue together.
    """

    method: str = setting("background", "background: above the local background (glass, autofluorescence, illumination) "
                          "by a margin; otsu | triangle | li | percentile | fixed | mad: one global threshold")
    k: float = setting(3.0, "background: margin at least k robust noise SDs; mad: median + k * 1.4826 * MAD")
    fraction: float = setting(0.2, "background: margin at least this share of the channel's typical positive signal")
    percentile: float = setting(99.0, "percentile: the percentile used as threshold")
    value: float = setting(0.0, "fixed: the threshold in the slide's intensity units")
    scale: float = setting(1.0, "multiplies the margin above background (global methods: the threshold); pixel "
                           "evidence only (tissue, tumour, TLS), not cells; see [sensitivity]")


def _rule(doc: str, **values: Any) -> Any:
    return setting(ThresholdRule(**values), doc)


@dataclass(frozen=True)
class Thresholds:
    """How each channel's positive pixels are decided, once per slide (never per tile)."""

    sample_windows: int = setting(64, "level-0 windows on a regular lattice over the slide: noise and typical positive signal")
    window_px: int = setting(256, "side of each window in level-0 pixels")
    default: ThresholdRule = _rule("rule for any channel without its own table")
    nuclei: ThresholdRule = _rule("nuclei: edges at half the typical nuclear signal (true nuclear size; touching nuclei "
                                  "stay apart)", fraction=0.5)
    tumour: ThresholdRule = _rule("the tumour marker")
    b_cells: ThresholdRule = _rule("the B-cell marker")
    fdc: ThresholdRule = _rule("the FDC marker")
    germinal_centre: ThresholdRule = _rule("the germinal-centre marker")
    t_cells: ThresholdRule = _rule("the T-cell marker")
    autofluorescence: ThresholdRule = _rule("the autofluorescence channel")
    markers: dict[str, ThresholdRule] = setting(
        {}, "rules per channel name, for any marker (\"CD-20\" is CD20); they win over the role's rule and the default",
        example=("[thresholds.markers.CD68]", 'method = "fixed"', "value = 1200.0"))

    def rule(self, role: str) -> ThresholdRule:
        return getattr(self, role, self.default)

    def marker_rule(self, channel: str, role: str | None = None) -> ThresholdRule:
        """The rule for slide channel ``channel``: by name, else by its role, else the default."""
        from .markers import find_marker

        for name, rule in self.markers.items():  # matched as channel names are: "CD-20" is CD20
            if find_marker([channel], name) is not None:
                return rule
        return self.rule(role) if role else self.default


@dataclass(frozen=True)
class Evidence:
    """The fine grid of the counting pass."""

    grid_um: float = setting(2.0, "fine grid (TLS, networks): positive pixels are counted per bin of about this side")


@dataclass(frozen=True)
class Signal:
    """The background model behind ``method = "background"``."""

    opening_um: float = setting(24.0, "bright things narrower than this (red-blood-cell strings, debris, the edge rim) "
                                "are not background")
    max_crosstalk: float = setting(0.15, "spectral crosstalk is removed when a channel carries up to this share of "
                                   "another; above it is co-expression (0: off)")
    min_crosstalk: float = setting(0.01, "smaller shares are ignored")


@dataclass(frozen=True)
class Tissue:
    """The tissue outline, from the nuclear stain on the coarse grid."""

    sigma_um: float = setting(20.0, "smoothing of the nuclei density before thresholding")
    edge_fraction: float = setting(0.5, "edge at this fraction of the typical in-tissue density (half: unbiased edge)")
    min_fraction: float = setting(0.03, "floor for the tissue edge (share of DAPI+ pixels)")
    min_area_mm2: float = setting(0.01, "tissue pieces smaller than this are dropped")


@dataclass(frozen=True)
class Tumour:
    """The tumour bed, from the tumour marker on the coarse grid."""

    grid_um: float = setting(8.0, "coarse grid for tissue and tumour (a multiple of the fine grid)")
    sigma_um: float = setting(20.0, "smoothing that turns separate tumour nuclei into a density")
    edge_fraction: float = setting(0.5, "edge at this fraction of the typical in-tumour density (half: unbiased edge)")
    min_positive_fraction: float = setting(0.04, "floor: below this share of tumour-marker+ pixels there is no tumour")
    closing_um: float = setting(50.0, "bridges stromal gaps narrower than about twice this")
    min_area_mm2: float = setting(0.02, "tumour pieces smaller than this are dropped")


@dataclass(frozen=True)
class TLS:
    """TLS candidates: dense B-cell aggregates, and the tests each must pass."""

    sigma_um: float = setting(8.0, "smoothing of CD20 density: single B cells and loose infiltrates stay low")
    edge_fraction: float = setting(0.5, "outline at this fraction of each aggregate's own plateau density")
    min_b_fraction: float = setting(0.25, "seed: smoothed share of CD20+ pixels that starts an aggregate")
    min_b_plateau: float = setting(0.35, "an aggregate's typical density must reach this (else a loose infiltrate or "
                                   "chance cluster)")
    grow_um: float = setting(20.0, "an outline reaches at most 3 sigma_um plus this beyond its seed")
    min_area_um2: float = setting(6000.0, "published minimum TLS sizes are 5,000-6,500 µm² (about 45-50 lymphocytes)")
    max_debris_fraction: float = setting(0.3, "aggregates made mostly of artefact (debris, red blood cells) are rejected")
    # measured: follicles 0.45-0.82 (two synthetic generators, every artefact), real lymphoid tissue 0.43 (t-CyCIF)
    # and 0.68 (MIBI); a loose B-cell infiltrate accepted on a TLS-free slide 0.18, red-blood-cell strings lower
    min_nuclear_fraction: float = setting(0.3, "share of nucleus pixels an aggregate must hold: lymphoid aggregates are "
                                          "packed with nuclei, loose infiltrates and artefacts are not")
    min_contrast: float = setting(4.5, "B-cell density inside at least this multiple of the contrast band around "
                                  "(0: off): a bounded aggregate")
    contrast_band_um: tuple[float, ...] = setting((10.0, 40.0), "the band for min_contrast: this far from the outline, "
                                                  "inner and outer edge")
    min_relative_density: float = setting(0.6, "and at least this share of the slide's densest candidate (0: off): "
                                          "packed like a follicle, not a patch of an infiltrate")
    require_t_cell_zone: bool = setting(False, "also require a CD3+ T-cell zone around the aggregate")
    t_zone_width_um: float = setting(30.0, "width of the ring searched for the T-cell zone")
    min_t_fraction: float = setting(0.05, "share of CD3+ pixels the ring must hold when required")


@dataclass(frozen=True)
class Maturation:
    """TLS stages from the FDC and germinal-centre networks inside each TLS."""

    scheme: str = setting("binary", "binary: primary / mature (reference study); silina: early / primary_follicle / "
                          "secondary_follicle")
    min_bin_fraction: float = setting(0.25, "a fine-grid bin belongs to a network when this share of its pixels is "
                                       "positive")
    closing_um: float = setting(4.0, "gaps in a network up to about twice this are bridged")
    min_network_area_um2: float = setting(1800.0, "a CD23+ (or CD21+) network: connected area at least this (~48 µm "
                                          "across); scattered CD23+ B cells stay below")


@dataclass(frozen=True)
class Location:
    """Where each TLS lies relative to the tumour bed, and which locations count."""

    margin_um: float = setting(500.0, "peritumoral: centroid outside the tumour bed but within this of its border")
    counted: tuple[str, ...] = setting(("intratumoral", "peritumoral"), "locations that count towards density and area %")


@dataclass(frozen=True)
class Debris:
    """Artefacts (debris, red blood cells, edge rims): excluded from TLS and cells, drawn on qc.png, reported as area."""

    min_positive_channels: int = setting(3, "positive in this many of tumour, B-cell, T-cell and network (CD21 or CD23) "
                                         "channels = artefact")
    autofluorescence_ratio: float = setting(1.0, "with an AF channel: AF above its local level by this share of that "
                                            "level = artefact")
    min_fraction: float = setting(0.25, "a fine grid bin is artefact when this share of its pixels is")
    dilate_um: float = setting(4.0, "artefact zones grow by this to cover their dim rims")


@dataclass(frozen=True)
class Cells:
    """Nuclei from the nuclear stain, then marker-positive cells (a second full-resolution pass)."""

    enabled: bool = setting(True, "measure cells (slides up to max_pixel_size_um)")
    max_pixel_size_um: float = setting(1.0, "slides coarser than this cannot resolve nuclei: cells are skipped with a "
                                       "warning")
    markers: tuple[str, ...] = setting((), "channels scored per cell; [] = every channel but the nuclear stain and "
                                       "autofluorescence")
    nuclear_markers: tuple[str, ...] = setting(
        ("TFE3", "FoxP3", "MUM1", "MUM-1", "IRF4", "Ki67", "PAX5", "BCL6", "TCF1", "TOX", "SOX10"),
        "scored in the nucleus")
    ring_markers: tuple[str, ...] = setting(
        ("CD1a", "CD2", "CD3", "CD4", "CD5", "CD7", "CD8", "CD10", "CD11b", "CD11c", "CD14", "CD15", "CD16", "CD19",
         "CD20", "CD21", "CD23", "CD27", "CD31", "CD34", "CD35", "CD38", "CD39", "CD40", "CD45", "CD45RA", "CD45RO",
         "CD56", "CD57", "CD68", "CD79a", "CD103", "CD138", "CD163", "CD206", "PD-1", "PD-L1", "LAG3", "TIM3", "CTLA4",
         "ICOS", "CXCR5", "HLA-DR", "Granzyme B", "panCK", "CK", "Keratin-pan", "E-cadherin", "EpCAM", "Vimentin",
         "SMA", "PNAd", "MECA-79", "LYVE1", "Podoplanin"),
        "scored in the ring around the nucleus (membrane and cytoplasmic markers) unless nuclear_markers or "
        "whole_cell_markers also name them")
    whole_cell_markers: tuple[str, ...] = setting((), "scored over nucleus + ring. A channel in none of the three lists "
                                                  "is not scored (a warning names it; an error when cells.markers "
                                                  "asks for it): add it where it is measured")
    sigma_um: float = setting(0.3, "smoothing of the nuclear stain before its global threshold")
    min_distance_um: float = setting(1.5, "nuclear centres closer than this are not split")
    min_area_um2: float = setting(8.0, "smaller objects are noise, not nuclei")
    max_area_um2: float = setting(250.0, "larger objects are not nuclei; foreground thicker than a nucleus this size is a "
                                  "clump, split at stain maxima")
    ring_um: float = setting(2.0, "width of the ring around each nucleus where membrane markers are measured")
    tissue_reach_um: float = setting(15.0, "cells centred this far outside the tissue outline still count (the smoothed "
                                     "outline cuts edge cells)")
    nuclear_signal_fraction: float = setting(0.35, "nuclear edges at this share of the typical nuclear signal above "
                                             "background (below thresholds.nuclei.fraction: dim and out-of-focus nuclei "
                                             "are found; clumps are split at stain maxima)")
    min_signal_fraction: float = setting(0.35, "marker-positive cell: compartment mean above background by this share of "
                                         "the typical positive signal (at least the pixel margin)")

    # in this order: the short lists a panel sets win over the long default list of ring markers
    COMPARTMENTS = (("nucleus", "nuclear_markers"), ("cell", "whole_cell_markers"), ("ring", "ring_markers"))

    def compartment(self, channel: str) -> str:
        """Where marker ``channel`` is scored per cell: ``nucleus``, ``ring`` or ``cell`` (nucleus + ring).

        Matched as channel names are (``"CD-20 (Opal 520)"`` is CD20). A marker in none of
        ``nuclear_markers``, ``ring_markers`` and ``whole_cell_markers`` is a :class:`ConfigError`
        naming it: guessing a compartment would quietly misjudge a nuclear or cytoplasmic marker.
        ``nuclear_markers`` and ``whole_cell_markers`` win over ``ring_markers``, so a panel moves
        CD20 to the whole cell by naming it in ``whole_cell_markers`` alone.
        """
        from .markers import marker_key

        key = marker_key(channel)
        for compartment, setting_name in self.COMPARTMENTS:
            if any(marker_key(name) == key for name in getattr(self, setting_name)):
                return compartment
        raise ConfigError(
            f"cells: channel {channel!r} is scored per cell but is in none of cells.nuclear_markers, "
            f"cells.ring_markers (membrane, cytoplasm) and cells.whole_cell_markers: add it to the list of the "
            f"compartment where it is measured, or name the channels to score in cells.markers"
        )


@dataclass(frozen=True)
class Annotations:
    """QuPath annotations given with --annotations (or a manifest column): which class does what."""

    tumour_classes: tuple[str, ...] = setting(("Tumor", "Tumour"), "the tumour bed (names case-insensitive, * wildcards; "
                                              "\"TLS\" also matches \"TLS: mature\")")
    tumour_mode: str = setting("replace", "replace: the drawn bed (on tissue) replaces the automatic one | restrict: "
                               "automatic bed within the drawing")
    exclude_classes: tuple[str, ...] = setting(("Ignore*", "Necrosis", "Fold", "Artefact", "Edge"),
                                               "removed from tissue, tumour and TLS")
    roi_classes: tuple[str, ...] = setting(("Region*", "ROI"), "when present, only what lies inside is analysed")
    tls_classes: tuple[str, ...] = setting(("TLS",), "TLS outlines for review and validate; the stage is the derived "
                                           "class (\"TLS: mature\")")


@dataclass(frozen=True)
class Outputs:
    """Optional files and the size of the QC pictures."""

    qc_png: bool = setting(True, "write qc.png and thresholds.png")
    qc_px: int = setting(1200, "usual long side of qc.png in pixels, grown (up to qc_max_px) until a minimum-size TLS "
                         "spans qc_min_tls_px")
    qc_max_px: int = setting(4000, "qc.png is never larger than this on its long side (beyond it the title says small "
                             "TLS are hard to see)")
    qc_min_tls_px: float = setting(8.0, "pixels across a TLS of tls.min_area_um2 on qc.png")
    qc_gallery: bool = setting(True, "with qc_png: tls_gallery.html, each TLS per lymphoid channel at native resolution")
    gallery_png: bool = setting(False, "with qc_gallery: also tls_gallery/TLS-<id>.png, each picture lossless (the page "
                                "embeds JPEGs; PNG encoding costs ~0.1 s CPU a TLS, most of the gallery's time)")
    gallery_max_tls: int = setting(200, "TLS in the gallery at most (the largest; the page says when some are left out)")
    gallery_crop_px: int = setting(600, "long side of one gallery panel at most: the finest pyramid level that fits, "
                                   "else binned")
    masks_zarr: bool = setting(False, "also write masks.ome.zarr (TLS labels, tumour and tissue masks)")
    cells_table: bool = setting(False, "also write cells.csv.gz: one row per cell (large: millions of rows per slide)")
    cells_format: tuple[str, ...] = setting(("csv",), "cell table files with cells_table: \"csv\" (cells.csv.gz), "
                                            "\"parquet\" (cells.parquet, [tables] extra), \"h5ad\" (AnnData, [tables] "
                                            "extra)")


@dataclass(frozen=True)
class Sensitivity:
    """Threshold sensitivity: TLS metrics with each channel's threshold scaled, counted in the same pixel pass."""

    enabled: bool = setting(False, "on: TLS metrics at each scaled threshold, counted in the same pixel pass (not "
                            "re-run); off by default: it costs well over 1.1x a plain analysis (benchmarks/results/sensitivity.md)")
    scales: tuple[float, ...] = setting((0.8, 0.9, 1.1, 1.25), "factors on each channel's threshold, one channel at a "
                                        "time (as thresholds.<role>.scale)")
    roles: tuple[str, ...] = setting(("nuclei", "tumour", "b_cells", "fdc", "germinal_centre", "t_cells"),
                                     "channel roles scaled (+ \"autofluorescence\")")
    min_area_scales: tuple[float, ...] = setting((0.75, 1.25), "factors on tls.min_area_um2")


@dataclass(frozen=True)
class Compute:
    """How the work is spread over threads, processes or a dask cluster."""

    chunk_px: int = setting(0, "dask chunk side in level-0 px (0: about 2048, aligned to the file's tiles)")
    workers: int = setting(0, "threads or processes (0: one per core)")
    scheduler: str = setting("threads", "threads | sync | processes | distributed (uses the current dask.distributed "
                             "client)")
    max_memory_gb: float = setting(0.0, "refuse slides whose whole-slide maps would need more (0: three quarters of this "
                                   "machine's memory)")
    one_read: bool = setting(False, "with cells: count the evidence and segment the cells in one read of the slide "
                             "(the same results; each tile decoded once, but on 2 cores measured slower than two passes)")


@dataclass(frozen=True)
class Cluster:
    """SLURM workers for ``tlsquant batch --cluster slurm`` (dask-jobqueue)."""

    queue: str = setting("", "partition (\"\" = the cluster's default)")
    account: str = setting("", "account to charge (\"\" = none)")
    cores: int = setting(4, "cores per job")
    memory: str = setting("16GB", "memory per job")
    processes: int = setting(1, "dask worker processes per job")
    walltime: str = setting("04:00:00", "per job")
    jobs: int = setting(4, "jobs to start")
    interface: str = setting("", "workers' network interface, e.g. \"ib0\" (\"\" = default route)")
    local_directory: str = setting("", "node-local scratch for worker files")
    job_extra_directives: tuple[str, ...] = setting((), "extra #SBATCH options, e.g. [\"--qos=normal\"]")
    job_script_prologue: tuple[str, ...] = setting((), "shell lines run before the worker, e.g. [\"module load python\"]")


def _section(cls) -> Any:
    return setting(cls(), (cls.__doc__ or "").strip().splitlines()[0].rstrip(".").replace("``", "`"))


@dataclass(frozen=True)
class Config:
    """The whole analysis configuration."""

    channels: Channels = _section(Channels)
    thresholds: Thresholds = _section(Thresholds)
    evidence: Evidence = _section(Evidence)
    signal: Signal = _section(Signal)
    tissue: Tissue = _section(Tissue)
    tumour: Tumour = _section(Tumour)
    tls: TLS = _section(TLS)
    maturation: Maturation = _section(Maturation)
    location: Location = _section(Location)
    debris: Debris = _section(Debris)
    cells: Cells = _section(Cells)
    annotations: Annotations = _section(Annotations)
    outputs: Outputs = _section(Outputs)
    sensitivity: Sensitivity = _section(Sensitivity)
    compute: Compute = _section(Compute)
    cluster: Cluster = _section(Cluster)

    def to_dict(self) -> dict[str, Any]:
        return _as_plain(dataclasses.asdict(self))


def _as_plain(value):
    if isinstance(value, dict):
        return {k: _as_plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_as_plain(v) for v in value]
    return value


# -- building from mappings -------------------------------------------------------------------


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = get_origin(annotation)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        (_, item_type) = get_args(annotation)
        return {str(k): _coerce(v, item_type, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item_type, _) = get_args(annotation)
        return tuple(_coerce(v, item_type, where) for v in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where)
    raise ConfigError(f"{where}: unsupported setting type {annotation}")  # pragma: no cover


def _build(cls, values: Any, where: str):
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a table of settings, got {values!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting {', '.join(repr(u) for u in unknown)}; expected one of "
            f"{', '.join(names)}"
        )
    base = cls()
    kwargs = {}
    for name in names:
        if name in values:
            current = getattr(base, name)
            if dataclasses.is_dataclass(current) and not isinstance(current, type) and isinstance(values[name], dict):
                merged = {**dataclasses.asdict(current), **values[name]}
                kwargs[name] = _build(type(current), merged, f"{where}.{name}")
            else:
                kwargs[name] = _coerce(values[name], hints[name], f"{where}.{name}")
    return cls(**kwargs)


def _check_compartments(cells: Cells, source: str) -> None:
    """A marker may not be both nuclear and whole-cell (either wins over ``ring_markers``)."""
    from .markers import marker_key

    seen: dict[str, str] = {}
    for setting_name in ("nuclear_markers", "whole_cell_markers"):
        for name in getattr(cells, setting_name):
            other = seen.setdefault(marker_key(name), setting_name)
            if other != setting_name:
                raise ConfigError(f"{source}: marker {name!r} is in both cells.{other} and cells.{setting_name}; "
                                  f"remove it from the one where it is not measured")


def _validate(config: Config, source: str) -> Config:
    def positive(section: str, name: str, allow_zero: bool = False):
        value = getattr(getattr(config, section), name)
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{source}: {section}.{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for section, names in {
        "evidence": ["grid_um"],
        "tissue": ["sigma_um", "min_area_mm2"],
        "tumour": ["grid_um", "sigma_um", "closing_um", "min_area_mm2"],
        "tls": ["sigma_um", "min_area_um2", "t_zone_width_um", "grow_um"],
        "maturation": ["closing_um", "min_network_area_um2"],
        "location": ["margin_um"],
        "debris": ["dilate_um", "autofluorescence_ratio"],
        "signal": ["opening_um", "max_crosstalk", "min_crosstalk"],
        "cells": ["max_pixel_size_um", "min_distance_um", "min_area_um2", "max_area_um2", "sigma_um", "ring_um"],
    }.items():
        for name in names:
            positive(section, name, allow_zero=name in ("closing_um", "dilate_um", "sigma_um", "ring_um", "opening_um", "grow_um",
                                                        "max_crosstalk", "min_crosstalk"))
    _check_compartments(config.cells, source)
    if len(config.tls.contrast_band_um) != 2 or not 0 <= config.tls.contrast_band_um[0] < config.tls.contrast_band_um[1]:
        raise ConfigError(f"{source}: tls.contrast_band_um is [inner, outer] in µm with 0 <= inner < outer, "
                          f"got {list(config.tls.contrast_band_um)}")
    if config.cells.min_area_um2 >= config.cells.max_area_um2:
        raise ConfigError(f"{source}: cells.min_area_um2 ({config.cells.min_area_um2}) must be below "
                          f"cells.max_area_um2 ({config.cells.max_area_um2})")
    for section, name in [("tissue", "min_fraction"), ("tissue", "edge_fraction"), ("tumour", "edge_fraction"),
                          ("tumour", "min_positive_fraction"), ("tls", "edge_fraction"),
                          ("tls", "min_b_fraction"), ("tls", "min_b_plateau"), ("tls", "max_debris_fraction"), ("tls", "min_t_fraction"),
                          ("tls", "min_nuclear_fraction"), ("tls", "min_relative_density"), ("debris", "min_fraction"),
                          ("cells", "min_signal_fraction"),
                          ("maturation", "min_bin_fraction")]:
        value = getattr(getattr(config, section), name)
        if not 0 <= value <= 1:
            raise ConfigError(f"{source}: {section}.{name} is a fraction between 0 and 1, got {value}")
    rules = {f"thresholds.{f.name}": getattr(config.thresholds, f.name) for f in dataclasses.fields(Thresholds)}
    rules.update({f"thresholds.markers.{name}": rule for name, rule in config.thresholds.markers.items()})
    for key, rule in rules.items():
        if isinstance(rule, ThresholdRule):
            where = f"{source}: {key}"
            if rule.method not in THRESHOLD_METHODS:
                raise ConfigError(f"{where}.method must be one of {', '.join(THRESHOLD_METHODS)}, got {rule.method!r}")
            if not 0 < rule.percentile < 100:
                raise ConfigError(f"{where}.percentile must be between 0 and 100, got {rule.percentile}")
            if rule.k <= 0:
                raise ConfigError(f"{where}.k must be > 0, got {rule.k}")
            if not 0 <= rule.fraction <= 1:
                raise ConfigError(f"{where}.fraction is a share between 0 and 1, got {rule.fraction}")
            if not (math.isfinite(rule.scale) and rule.scale > 0):
                raise ConfigError(f"{where}.scale must be > 0, got {rule.scale}")
            if rule.method == "fixed" and not (math.isfinite(rule.value) and rule.value > 0):
                raise ConfigError(f"{where}.method = 'fixed' needs {key}.value, a threshold > 0 in the slide's "
                                  f"intensity units; got {rule.value}")
    if config.thresholds.sample_windows < 1 or config.thresholds.window_px < 16:
        raise ConfigError(f"{source}: thresholds.sample_windows must be >= 1 and window_px >= 16")
    if config.maturation.scheme not in ("binary", "silina"):
        raise ConfigError(f"{source}: maturation.scheme must be 'binary' or 'silina', got {config.maturation.scheme!r}")
    bad = [loc for loc in config.location.counted if loc not in LOCATIONS]
    if bad:
        raise ConfigError(f"{source}: location.counted may hold {', '.join(LOCATIONS)}; got {', '.join(bad)}")
    if not 2 <= config.debris.min_positive_channels <= 4:
        raise ConfigError(f"{source}: debris.min_positive_channels must be 2-4 (of tumour, B-cell, T-cell, network), "
                          f"got {config.debris.min_positive_channels}")
    if config.annotations.tumour_mode not in ("replace", "restrict"):
        raise ConfigError(f"{source}: annotations.tumour_mode must be 'replace' or 'restrict', "
                          f"got {config.annotations.tumour_mode!r}")
    if not config.outputs.cells_format or set(config.outputs.cells_format) - {"csv", "parquet", "h5ad"}:
        raise ConfigError(f"{source}: outputs.cells_format must list csv, parquet and/or h5ad, got {list(config.outputs.cells_format)}")
    sensitivity = config.sensitivity
    if not all(math.isfinite(v) and v > 0 for v in sensitivity.scales + sensitivity.min_area_scales):
        raise ConfigError(f"{source}: sensitivity.scales and sensitivity.min_area_scales must be numbers > 0, got "
                          f"{list(sensitivity.scales)} and {list(sensitivity.min_area_scales)}")
    bad = [role for role in sensitivity.roles if role not in SENSITIVITY_ROLES]
    if bad:
        raise ConfigError(f"{source}: sensitivity.roles may hold {', '.join(SENSITIVITY_ROLES)}; got {', '.join(bad)}")
    if config.compute.scheduler not in ("threads", "sync", "processes", "distributed"):
        raise ConfigError(f"{source}: compute.scheduler must be threads, sync, processes or distributed, got {config.compute.scheduler!r}")
    if config.compute.chunk_px < 0 or config.compute.workers < 0:
        raise ConfigError(f"{source}: compute.chunk_px and compute.workers must be >= 0")
    if config.cluster.cores < 1 or config.cluster.processes < 1 or config.cluster.jobs < 1:
        raise ConfigError(f"{source}: cluster.cores, cluster.processes and cluster.jobs must be >= 1")
    for role in Channels.REQUIRED:
        if not getattr(config.channels, role).strip():
            raise ConfigError(f"{source}: channels.{role} needs a marker name")
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` with a TOML value (bare words are taken as strings)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. tls.min_area_um2=8000")
    key, raw = (part.strip() for part in text.split("=", 1))
    path = key.split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {text!r}: the key needs a section, e.g. tls.min_area_um2")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


# settings renamed since tlsquant 0.1: (section, old) -> new. The old name is still read, with a FutureWarning
RENAMED = {
    ("tissue", "level_fraction"): "edge_fraction",
    ("tumour", "level_fraction"): "edge_fraction",
    ("tls", "level_fraction"): "edge_fraction",
    ("maturation", "min_cell_fraction"): "min_bin_fraction",
}


def _renamed(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` with settings under their old names moved to the new ones (warned about; both at once is an error)."""
    import warnings

    for (section, old), new in RENAMED.items():
        table = values.get(section)
        if not isinstance(table, dict) or old not in table:
            continue
        if new in table:
            raise ConfigError(f"{source}: {section}.{old} is the old name of {section}.{new}; give only "
                              f"{section}.{new}")
        table[new] = table.pop(old)
        warnings.warn(f"{source}: {section}.{old} is now called {section}.{new}; the old name will stop working "
                      f"in a later version", FutureWarning, stacklevel=3)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file at ``path``, then ``section.key=value`` overrides."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {key} is a setting, not a section")
        node[keys[-1]] = value
    return _validate(_build(Config, _renamed(values, source), source), source)


__all__ = ["RENAMED", "THRESHOLD_METHODS", "Config", "ThresholdRule", "load_config"]
