"""Typed, frozen analysis configuration: defaults, TOML loading, overrides, validation.

The defaults live in the dataclasses below; ``configs/default.toml`` spells the same
values out with a comment each (a test keeps the two equal).
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


@dataclass(frozen=True)
class Channels:
    """Which slide channel plays which role (marker names, matched case-insensitively)."""

    nuclei: str = "DAPI"
    tumour: str = "TFE3"
    b_cells: str = "CD20"
    fdc: str = "CD21"
    germinal_centre: str = "CD23"
    t_cells: str = "CD3"  # "" to run without a T-cell channel
    autofluorescence: str = "Autofluorescence"  # used only when the slide has it
    # channel renames applied when a slide is opened, e.g. {"Opal 520": "CD20"}: inForm component
    # exports name channels by fluorophore only
    fluorophores: dict[str, str] = field(default_factory=dict)

    REQUIRED = ("nuclei", "tumour", "b_cells", "fdc", "germinal_centre")


@dataclass(frozen=True)
class ThresholdRule:
    """How one channel's positive-pixel threshold is estimated.

    ``background`` (default): above the local background (glass, autofluorescence,
    illumination) by ``max(k * noise, fraction * typical positive signal)``; the other
    methods give one global threshold from the sampled pixels, glass and tissue together.
    """

    method: str = "background"
    k: float = 3.0  # background: noise SDs above the local background; mad: median + k * 1.4826 * MAD
    fraction: float = 0.2  # background: share of the channel's typical positive signal above background
    percentile: float = 99.0  # percentile method
    value: float = 0.0  # fixed method, in the slide's intensity units


@dataclass(frozen=True)
class Thresholds:
    sample_windows: int = 64
    window_px: int = 256
    default: ThresholdRule = ThresholdRule()
    nuclei: ThresholdRule = ThresholdRule(fraction=0.5)
    tumour: ThresholdRule = ThresholdRule()
    b_cells: ThresholdRule = ThresholdRule()
    fdc: ThresholdRule = ThresholdRule()
    germinal_centre: ThresholdRule = ThresholdRule()
    t_cells: ThresholdRule = ThresholdRule()
    autofluorescence: ThresholdRule = ThresholdRule()
    # per channel name (any marker, e.g. "CD68"); wins over the role's rule and the default
    markers: dict[str, ThresholdRule] = field(default_factory=dict)

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
    grid_um: float = 2.0


@dataclass(frozen=True)
class Signal:
    """The background model behind the ``background`` threshold method."""

    opening_um: float = 24.0  # bright things narrower than this (RBC strings, debris, edge rim) are not background
    max_crosstalk: float = 0.15  # a channel ratio above this is co-expression, not crosstalk (0: no compensation)
    min_crosstalk: float = 0.01  # crosstalk below this is ignored


@dataclass(frozen=True)
class Tissue:
    sigma_um: float = 20.0
    min_fraction: float = 0.03
    min_area_mm2: float = 0.01


@dataclass(frozen=True)
class Tumour:
    grid_um: float = 8.0
    sigma_um: float = 20.0
    level_fraction: float = 0.5
    min_positive_fraction: float = 0.04
    closing_um: float = 50.0
    min_area_mm2: float = 0.02


@dataclass(frozen=True)
class TLS:
    sigma_um: float = 8.0
    level_fraction: float = 0.5
    min_b_fraction: float = 0.25
    min_b_plateau: float = 0.35
    min_area_um2: float = 6000.0
    max_debris_fraction: float = 0.3
    min_nuclear_fraction: float = 0.15
    min_contrast: float = 4.5
    min_relative_density: float = 0.6
    require_t_cell_zone: bool = False
    t_zone_width_um: float = 30.0
    min_t_fraction: float = 0.05


@dataclass(frozen=True)
class Maturation:
    scheme: str = "binary"
    min_cell_fraction: float = 0.25
    closing_um: float = 4.0
    min_network_area_um2: float = 1800.0


@dataclass(frozen=True)
class Location:
    margin_um: float = 500.0
    counted: tuple[str, ...] = ("intratumoral", "peritumoral")


@dataclass(frozen=True)
class Debris:
    """Artefacts (debris, red blood cells, edge rims): excluded from TLS and cells, reported as area."""

    min_positive_channels: int = 3  # positive in this many of tumour, B-cell, T-cell and network (CD21 or CD23) = artefact
    autofluorescence_ratio: float = 1.0  # with an AF channel: AF above its local background by this share of it = artefact
    min_fraction: float = 0.25  # a fine grid cell is artefact when this share of its pixels is
    dilate_um: float = 4.0


@dataclass(frozen=True)
class Cells:
    """Nuclear segmentation and marker-positive cells."""

    enabled: bool = True
    max_pixel_size_um: float = 1.0  # coarser slides cannot resolve nuclei: cells are skipped with a warning
    markers: tuple[str, ...] = ()  # channels scored per cell; () = all but the nuclear stain and autofluorescence
    nuclear_markers: tuple[str, ...] = ("TFE3", "FoxP3", "MUM1", "MUM-1", "IRF4", "Ki67", "PAX5", "BCL6", "TCF1",
                                        "TOX", "SOX10")
    whole_cell_markers: tuple[str, ...] = ()
    sigma_um: float = 0.3
    min_distance_um: float = 1.5
    min_area_um2: float = 8.0
    max_area_um2: float = 250.0
    ring_um: float = 2.0
    tissue_reach_um: float = 15.0  # cells centred this far outside the tissue outline still count (the outline cuts edge cells)
    nuclear_signal_fraction: float = 0.35  # nuclear edges at this share of the typical nuclear signal above background
    min_signal_fraction: float = 0.35  # a cell is marker-positive above background by this share of the typical positive signal (or the pixel margin)


@dataclass(frozen=True)
class Annotations:
    """QuPath annotations read with ``--annotations``: class names (case-insensitive, ``*`` wildcards) per role."""

    tumour_classes: tuple[str, ...] = ("Tumor", "Tumour")
    tumour_mode: str = "replace"  # replace: the drawn tumour bed (on tissue) | restrict: the automatic bed within it
    exclude_classes: tuple[str, ...] = ("Ignore*", "Necrosis", "Fold", "Artefact", "Edge")
    roi_classes: tuple[str, ...] = ("Region*", "ROI")
    tls_classes: tuple[str, ...] = ("TLS",)  # reviewed and manual TLS (review, validate); the stage is the derived class


@dataclass(frozen=True)
class Outputs:
    qc_png: bool = True
    qc_px: int = 1200  # usual long side of qc.png; grown (up to qc_max_px) until a minimum-size TLS spans qc_min_tls_px
    qc_max_px: int = 4000  # qc.png is never larger on its long side
    qc_min_tls_px: float = 8.0  # picture pixels across a TLS of tls.min_area_um2
    qc_gallery: bool = True  # with qc_png: tls_gallery.html and tls_gallery/TLS-<id>.png, every TLS at native resolution
    gallery_max_tls: int = 200  # TLS in the gallery at most (the largest)
    gallery_crop_px: int = 600  # long side of one gallery panel at most (finer pyramid levels first)
    masks_zarr: bool = False
    cells_table: bool = False
    cells_format: tuple[str, ...] = ("csv",)  # cell table files: csv (cells.csv.gz), parquet, h5ad


@dataclass(frozen=True)
class Compute:
    chunk_px: int = 0  # 0: the slide's own tile-aligned default (about 2048 px)
    workers: int = 0  # 0: one per core
    scheduler: str = "threads"  # threads | sync | processes | distributed (the current client)
    max_memory_gb: float = 0.0  # refuse slides whose whole-slide maps need more (0: three quarters of this machine's memory)


@dataclass(frozen=True)
class Cluster:
    """SLURM workers for ``tlsquant batch --cluster slurm`` (dask-jobqueue)."""

    queue: str = ""  # SLURM partition ("" = the cluster's default)
    account: str = ""
    cores: int = 4  # cores per job
    memory: str = "16GB"  # memory per job
    processes: int = 1  # dask worker processes per job
    walltime: str = "04:00:00"
    jobs: int = 4  # jobs to start
    interface: str = ""  # network interface of the workers, e.g. "ib0" ("" = default)
    local_directory: str = ""  # node-local scratch for worker spill files
    job_extra_directives: tuple[str, ...] = ()  # extra "#SBATCH" lines, e.g. ["--qos=normal"]
    job_script_prologue: tuple[str, ...] = ()  # shell lines before the worker starts (module load ...)


@dataclass(frozen=True)
class Config:
    """The whole analysis configuration."""

    channels: Channels = Channels()
    thresholds: Thresholds = Thresholds()
    evidence: Evidence = Evidence()
    signal: Signal = Signal()
    tissue: Tissue = Tissue()
    tumour: Tumour = Tumour()
    tls: TLS = TLS()
    maturation: Maturation = Maturation()
    location: Location = Location()
    debris: Debris = Debris()
    cells: Cells = Cells()
    annotations: Annotations = Annotations()
    outputs: Outputs = Outputs()
    compute: Compute = Compute()
    cluster: Cluster = Cluster()

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


def _validate(config: Config, source: str) -> Config:
    def positive(section: str, name: str, allow_zero: bool = False):
        value = getattr(getattr(config, section), name)
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{source}: {section}.{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for section, names in {
        "evidence": ["grid_um"],
        "tissue": ["sigma_um", "min_area_mm2"],
        "tumour": ["grid_um", "sigma_um", "closing_um", "min_area_mm2"],
        "tls": ["sigma_um", "min_area_um2", "t_zone_width_um"],
        "maturation": ["closing_um", "min_network_area_um2"],
        "location": ["margin_um"],
        "debris": ["dilate_um", "autofluorescence_ratio"],
        "signal": ["opening_um", "max_crosstalk", "min_crosstalk"],
        "cells": ["max_pixel_size_um", "min_distance_um", "min_area_um2", "max_area_um2", "sigma_um", "ring_um"],
    }.items():
        for name in names:
            positive(section, name, allow_zero=name in ("closing_um", "dilate_um", "sigma_um", "ring_um", "opening_um",
                                                        "max_crosstalk", "min_crosstalk"))
    if config.cells.min_area_um2 >= config.cells.max_area_um2:
        raise ConfigError(f"{source}: cells.min_area_um2 ({config.cells.min_area_um2}) must be below "
                          f"cells.max_area_um2 ({config.cells.max_area_um2})")
    for section, name in [("tissue", "min_fraction"), ("tumour", "level_fraction"),
                          ("tumour", "min_positive_fraction"), ("tls", "level_fraction"),
                          ("tls", "min_b_fraction"), ("tls", "min_b_plateau"), ("tls", "max_debris_fraction"), ("tls", "min_t_fraction"),
                          ("tls", "min_nuclear_fraction"), ("tls", "min_relative_density"), ("debris", "min_fraction"),
                          ("cells", "min_signal_fraction"),
                          ("maturation", "min_cell_fraction")]:
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
    return _validate(_build(Config, values, source), source)


__all__ = ["THRESHOLD_METHODS", "Config", "ThresholdRule", "load_config"]
