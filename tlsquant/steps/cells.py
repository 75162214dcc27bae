"""Step 7: the second full-resolution pass, nuclei and marker-positive cells counted into the regions and TLS."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..background import SignalModel, ThresholdRuleMap
from ..cells import CellCounts, CellPlan, CellRecords, CellTally, cell_pass
from ..config import Config
from ..memory import release_free_memory
from ..segment.evidence import EvidenceMaps
from ..slide import Slide
from .channels import ChannelPlan
from .grid import Grid
from .regions import TumourBed
from .signal import evidence_counting
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


@dataclass
class SegmentedCells:
    """The cells measured in a pass run before the regions were known, and the block cores it segmented."""

    records: list[CellRecords]
    done: frozenset


# the tissue the pass segments before tissue is decided: the signal model's low-resolution tissue grown by this
# much beyond the cells' own reach, so that the blocks segmented again afterwards are few (see finish_cells)
HINT_REACH_UM = 200.0


def _cell_setup(slide: Slide, config: Config, plan: ChannelPlan, grid: Grid, signal: SignalModel, n_tls: int):
    """(channel names, nuclear stain first; the cell plan; the halo reader; the threshold maps; thresholds used)."""
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
        n_tls=n_tls, keep_table=config.outputs.cells_table, grid_factor=grid.coarse_factor,
    )
    # block cores are the slide's chunks; halos are read through tile-sized chunks
    tiled = bool(slide.tile_shape) and slide.tile_shape[1] < slide.shape[2]
    reader = slide.with_chunks(HALO_READ_PX) if tiled else slide
    threshold_maps = ThresholdMaps(signal.template, (
        signal.threshold_rule(names[0], fraction=config.cells.nuclear_signal_fraction),
        *(signal.threshold_rule(n, min_fraction=config.cells.min_signal_fraction) for n in names[1:])))
    used = {name: on_tissue(threshold_maps[k], signal.tissue_hint) for k, name in enumerate(names)}
    return names, cell_plan, reader, threshold_maps, used


def count_cells(slide: Slide, config: Config, plan: ChannelPlan, grid: Grid, signal: SignalModel, bed: TumourBed,
                found: FoundTLS, *, scheduler=None, num_workers: int | None = None) -> CellPass:
    """Nuclei from the nuclear channel and marker-positive cells, blocks with overlap, counted into the tissue,
    tumour, margin, artefact zone and each TLS found before."""
    return finish_cells(slide, config, plan, grid, signal, bed, found, SegmentedCells([], frozenset()),
                        scheduler=scheduler, num_workers=num_workers)


def count_evidence_and_cells(slide: Slide, config: Config, plan: ChannelPlan, grid: Grid, signal: SignalModel, *,
                             scheduler=None, num_workers: int | None = None) -> tuple[EvidenceMaps, SegmentedCells]:
    """Steps 4 and 8 in one read of the slide: each block is counted into the evidence maps and, where the
    signal model sees tissue near it, its cells are segmented and measured (counted into the regions later,
    by :func:`finish_cells`, once they are known): each tile is decoded once instead of twice. Measured on 2
    cores it is slower than the two passes (35k x 32k px: 83 against 72 s; one thread: 115 against 117 s): the
    two threads, each holding every channel's window, slow each other more than the saved decoding gains
    (``compute.one_read`` chooses it)."""
    counting = evidence_counting(slide, config, plan, grid, signal, packed=True)
    names, cell_plan, reader, threshold_maps, _ = _cell_setup(slide, config, plan, grid, signal, n_tls=0)
    sources = list(dict.fromkeys([*names, *counting.plan.channels]))  # channels counted only come last
    count_channels = tuple(sources.index(name) for name in counting.plan.channels)
    likely_tissue = grown(signal.tissue_hint, (config.cells.tissue_reach_um + HINT_REACH_UM) / grid.coarse_um)
    records, done = cell_pass([slide.channel(n) for n in sources], cell_plan, segment=likely_tissue,
                              halo_source=[reader.channel(n) for n in sources], threshold_maps=threshold_maps,
                              counting=counting, count_channels=count_channels, scheduler=scheduler,
                              num_workers=num_workers)
    release_free_memory()  # the pass's freed windows go back before the maps are added up whole
    return counting.maps(), SegmentedCells(records, done)


def finish_cells(slide: Slide, config: Config, plan: ChannelPlan, grid: Grid, signal: SignalModel, bed: TumourBed,
                 found: FoundTLS, segmented: SegmentedCells, *, scheduler=None,
                 num_workers: int | None = None) -> CellPass:
    """Count cells into the tissue, tumour, margin, artefact zone and each TLS: those ``segmented`` before,
    and those of the blocks in tissue not yet segmented, segmented now."""
    names, cell_plan, reader, threshold_maps, used = _cell_setup(slide, config, plan, grid, signal,
                                                                 n_tls=int(found.labels.max()))
    tissue = grown(bed.tissue, config.cells.tissue_reach_um / grid.coarse_um)  # where a cell's centre counts
    tally = CellTally(cell_plan, tissue=tissue, tumour=bed.tumour, debris=found.debris, tls_labels=found.labels,
                      margin=bed.margin)
    for record in segmented.records:
        tally.add(record)
    # each block's cells counted as its task ends: the whole slide's cells are never held (1.9 M at 35k x 32k px)
    cell_pass([slide.channel(n) for n in names], cell_plan, segment=tissue,
              halo_source=[reader.channel(n) for n in names], threshold_maps=threshold_maps, done=segmented.done,
              consume=tally.add, scheduler=scheduler, num_workers=num_workers)
    return CellPass(tally.result(), used, cell_plan.halo_px)
