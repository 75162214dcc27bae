"""Full-resolution pass: positive pixels counted into coarse "evidence maps".

Each level-0 block is thresholded with the slide's global thresholds and its positive
pixels are summed into grid cells anchored at the slide origin. Cells cut by a block
edge get partial sums from each block, which are added: the maps are exact integer
counts and identical for any chunking or worker count. Only the coarse maps are ever
held whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np

from ..blocks import block_grid, compute_blocks

# maps counted on the fine (TLS) grid and on the coarse (tissue / tumour) grid
FINE_MAPS = ("b_cells", "t_cells", "fdc", "germinal_centre", "debris")
COARSE_MAPS = ("nuclei", "tumour", "debris")
VOTING_ROLES = ("tumour", "b_cells", "fdc", "germinal_centre", "t_cells")


@dataclass(frozen=True)
class EvidencePlan:
    """What the block pass reads and how it counts; small and picklable."""

    roles: tuple[str, ...]  # channel roles read, in the order blocks are passed
    thresholds: tuple[float, ...]
    fine_factor: int  # level-0 px per fine cell side
    coarse_factor: int  # level-0 px per coarse cell side (a multiple of fine_factor)
    min_votes: int  # debris: positive in at least this many marker channels

    @property
    def uses_autofluorescence(self) -> bool:
        return "autofluorescence" in self.roles


@dataclass
class EvidenceMaps:
    """Positive-pixel counts per grid cell, and the pixels each cell covers."""

    fine: dict[str, np.ndarray]
    coarse: dict[str, np.ndarray]
    # level-0 pixel rows / columns per grid row / column (the last ones may hold fewer);
    # kept as vectors: a whole-slide float map per grid would cost hundreds of MB
    fine_rows: np.ndarray
    fine_cols: np.ndarray
    coarse_rows: np.ndarray
    coarse_cols: np.ndarray
    fine_factor: int
    coarse_factor: int

    def pixels(self, grid: str, box=(slice(None), slice(None))) -> np.ndarray:
        """Level-0 pixels per cell of ``grid`` ("fine" or "coarse") within ``box``, float32."""
        rows, cols = (self.fine_rows, self.fine_cols) if grid == "fine" else (self.coarse_rows, self.coarse_cols)
        return np.outer(rows[box[0]], cols[box[1]]).astype(np.float32)

    def fraction(self, grid: str, name: str, box=(slice(None), slice(None))) -> np.ndarray:
        """Share of positive pixels per cell of map ``name`` (float32), optionally within ``box``."""
        counts = (self.fine if grid == "fine" else self.coarse)[name][box]
        factor = self.fine_factor if grid == "fine" else self.coarse_factor
        out = counts.astype(np.float32)
        out *= np.float32(1.0 / (factor * factor))
        # only the last row and column can hold partial cells: correct them in place
        rows, cols = (self.fine_rows, self.fine_cols) if grid == "fine" else (self.coarse_rows, self.coarse_cols)
        rows, cols = rows[box[0]], cols[box[1]]
        if rows.size and rows[-1] != factor:
            out[-1] = counts[-1] / (rows[-1] * cols).astype(np.float32)
        if cols.size and cols[-1] != factor:
            out[:, -1] = counts[:, -1] / (rows * cols[-1]).astype(np.float32)
        return out


def _bin(mask: np.ndarray, y0: int, x0: int, factor: int) -> np.ndarray:
    """Sum a boolean block into the grid cells it touches (cells anchored at the slide origin).

    Strided additions on a uint8 view: about one pass over the block, several times
    faster than reshape-sum or reduceat on the bool array.
    """
    height, width = mask.shape
    top, left = y0 % factor, x0 % factor
    padded_h = -(-(top + height) // factor) * factor
    padded_w = -(-(left + width) // factor) * factor
    if top or left or padded_h != height or padded_w != width:
        padded = np.zeros((padded_h, padded_w), np.uint8)
        padded[top : top + height, left : left + width] = mask
    else:
        padded = mask.view(np.uint8)
    dtype = count_dtype(factor)
    rows = padded[0::factor].astype(dtype)
    for k in range(1, factor):
        rows += padded[k::factor]
    cells = rows[:, 0::factor].copy()
    for k in range(1, factor):
        cells += rows[:, k::factor]
    return cells


def count_block(plan: EvidencePlan, y0: int, x0: int, *blocks: np.ndarray):
    """Count one level-0 block. Returns (fine origin, fine counts, coarse origin, coarse counts)."""
    positive = {role: block > t for role, block, t in zip(plan.roles, blocks, plan.thresholds)}
    if plan.uses_autofluorescence:
        debris = positive["autofluorescence"]
    else:
        voters = [positive[r] for r in VOTING_ROLES if r in positive]
        votes = voters[0].view(np.uint8).copy()
        for voter in voters[1:]:
            votes += voter.view(np.uint8)
        debris = votes >= min(plan.min_votes, len(voters))
    clean = ~debris
    masks = {name: positive[name] & clean for name in set(FINE_MAPS + COARSE_MAPS) - {"debris"} if name in positive}
    masks["debris"] = debris
    out = []
    for names, factor in ((FINE_MAPS, plan.fine_factor), (COARSE_MAPS, plan.coarse_factor)):
        stack = []
        for name in names:
            if name in masks:
                stack.append(_bin(masks[name], y0, x0, factor))
            else:
                shape = (-(-(y0 % factor + blocks[0].shape[0]) // factor), -(-(x0 % factor + blocks[0].shape[1]) // factor))
                stack.append(np.zeros(shape, count_dtype(factor)))
        # partial sums never exceed factor², so the small dtype holds them and their total
        out.append(((y0 // factor, x0 // factor), np.stack(stack)))
    return out[0][0], out[0][1], out[1][0], out[1][1]


def count_dtype(factor: int) -> np.dtype:
    cells = factor * factor
    return np.dtype(np.uint8 if cells <= 255 else np.uint16 if cells <= 65535 else np.uint32)


def _grid_pixels(size: int, factor: int) -> np.ndarray:
    cells = -(-size // factor)
    counts = np.full(cells, factor, dtype=np.int64)
    counts[-1] = size - factor * (cells - 1)
    return counts


def compute_evidence(channels, plan: EvidencePlan, *, scheduler=None, num_workers=None) -> EvidenceMaps:
    """Run the block pass over lazy (Y, X) channel arrays that share one chunk grid."""
    height, width = channels[0].shape
    y_chunks, x_chunks = channels[0].chunks
    grids = [channel.to_delayed() for channel in channels]
    tasks = [dask.delayed(count_block, pure=True)(plan, y0, x0, *[grid[i, j] for grid in grids])
             for i, j, y0, x0, _, _ in block_grid(y_chunks, x_chunks)]
    results = compute_blocks(tasks, scheduler=scheduler, num_workers=num_workers)

    def assemble(factor, names, index):
        shape = (len(names), -(-height // factor), -(-width // factor))
        total = np.zeros(shape, count_dtype(factor))
        for result in results:
            (cy, cx), counts = result[index], result[index + 1]
            total[:, cy : cy + counts.shape[1], cx : cx + counts.shape[2]] += counts
        return {name: total[k] for k, name in enumerate(names)}

    fine = assemble(plan.fine_factor, FINE_MAPS, 0)
    coarse = assemble(plan.coarse_factor, COARSE_MAPS, 2)
    f, c = plan.fine_factor, plan.coarse_factor
    return EvidenceMaps(
        fine=fine,
        coarse=coarse,
        fine_rows=_grid_pixels(height, f),
        fine_cols=_grid_pixels(width, f),
        coarse_rows=_grid_pixels(height, c),
        coarse_cols=_grid_pixels(width, c),
        fine_factor=f,
        coarse_factor=c,
    )
