"""Step 7: the second full-resolution pass, nuclei and marker-positive cells counted into the regions and TLS."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..background import SignalModel, ThresholdRuleMap
from ..cells import CellCounts, CellPlan, compute_cells
from ..config import Config
from ..slide import Slide
from .channels import ChannelPlan
from .grid import Grid
from .regions import TumourBed
from .tls import FoundTLS

HALO_READ_PX = 512  # cell-pass halos are read through chunks of about one storage tile: little decoded beyond them


@dataclass(frozen=True)
class ThresholdMaps:
    """The cell pass's threshold maps (nuclear stain first) on the coarse grid, made when read.

    ``maps[k]`` is channel k's whole map; ``maps[:, rows, cols]`` the same maps cut to a box,
    holding only a view of the AF template: each block's task makes its own pieces, so the
    whole maps (8 x 17.5 MB at 40k x 30k px) are never held, and a task sent to a
    distributed worker carries only its piece of the template.
    """

    template: np.ndarray
    rules: tuple[ThresholdRuleMap, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rules), *self.template.shape)

    def __len__(self) -> int:
        return len(self.rules)

    def __getitem__(self, key):
        if isinstance(key, tuple) and len(key) == 3 and key[0] == slice(None):
            return ThresholdMaps(self.template[key[1], key[2]], self.rules)
        if isinstance(key, (int, np.integer)):
            return self.rules[key].on(self.template)
        raise TypeError(f"ThresholdMaps take [k] or [:, rows, cols], got {key!r}")


@dataclass
class CellPass:
    """The cell pass's counts and the thresholds it used."""

    counts: CellCounts
    thresholds: dict[str, dict]  # channel -> the per-cell threshold on tissue (median, p05, p95)
    halo_px: int


def on_tissue(level: np.ndarray, tissue: np.ndarray) -> dict:
    """Median, 5th and 95th percentile of a coarse threshold map over tissue (the values actually used)."""
    values = level[tissue] if tissue.any() else level.ravel()
    p05, median, p95 = (round(float(v), 6) for v in np.percentile(values, [5, 50, 95]))
    return {"median": median, "p05": p05, "p95": p95}


def grown(mask: np.ndarray, bins: float) -> np.ndarray:
    """``mask`` grown by ``bins`` grid bins (a disc)."""
    radius = int(math.ceil(bins))
    if radius <= 0 or not mask.any():
        return mask
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return ndi.binary_dilation(mask, structure=y**2 + x**2 <= bins**2 + 1e-9)


def count_cells(slide: Slide, config: Config, plan: ChannelPlan, grid: Grid, signal: SignalModel, bed: TumourBed,
                found: FoundTLS, *, scheduler=None, num_workers: int | None = None) -> CellPass:
    """Nuclei from the nuclear channel and marker-positive cells, blocks with overlap, counted into the tissue,
    tumour, margin, artefact zone and each TLS found before."""
    names = [plan.roles["nuclei"], *(m.channel for m in plan.cell_markers)]
    cell_plan = CellPlan(
        markers=tuple(m.channel for m in plan.cell_markers),
        compartments=tuple(m.compartment for m in plan.cell_markers),
        thresholds=tuple(signal.summary(m.channel)["value"] for m in plan.cell_markers),
        nuclear_threshold=signal.summary(names[0])["value"],
        pixel_size_um=grid.pixel_size,
        sigma_um=config.cells.sigma_um, min_distance_um=config.cells.min_distance_um,
        min_area_um2=config.cells.min_area_um2, max_area_um2=config.cells.max_area_um2,
        ring_um=config.cells.ring_um, fine_factor=grid.fine_factor, coarse_factor=grid.coarse_factor,
        n_tls=int(found.labels.max()), keep_table=config.outputs.cells_table, grid_factor=grid.coarse_factor,
    )
    # block cores are the slide's chunks; halos are read through tile-sized chunks
    tiled = bool(slide.tile_shape) and slide.tile_shape[1] < slide.shape[2]
    reader = slide.with_chunks(HALO_READ_PX) if tiled else slide
    threshold_maps = ThresholdMaps(signal.template, (
        signal.threshold_rule(names[0], fraction=config.cells.nuclear_signal_fraction),
        *(signal.threshold_rule(n, min_fraction=config.cells.min_signal_fraction) for n in names[1:])))
    used = {name: on_tissue(threshold_maps[k], signal.tissue_hint) for k, name in enumerate(names)}
    counts = compute_cells(slide.channel(names[0]), [slide.channel(n) for n in names[1:]], cell_plan,
                           tissue=grown(bed.tissue, config.cells.tissue_reach_um / grid.coarse_um), tumour=bed.tumour,
                           debris=found.debris, tls_labels=found.labels, margin=bed.margin,
                           halo_source=[reader.channel(n) for n in names], scheduler=scheduler,
                           threshold_maps=threshold_maps, num_workers=num_workers)
    return CellPass(counts, used, cell_plan.halo_px)
