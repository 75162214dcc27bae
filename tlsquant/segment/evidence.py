"""Full-resolution pass: positive pixels counted into coarse "evidence maps".

Each level-0 block is thresholded with the slide's global thresholds and its positive
pixels are summed into grid bins anchored at the slide origin. Bins cut by a block
edge get partial sums from each block, which are added: the maps are exact integer
counts and identical for any chunking or worker count. Only the coarse maps are ever
held whole.

Threshold sensitivity rides on the same pass: for each scenario channel the block is
also compared with that channel's scaled thresholds. Only pixels between the lowest
and the highest of its thresholds (a thin band at stain edges) can decide differently,
so the whole decision (positives, artefact votes, the masks of every map) is redone
for those pixels alone and kept as sparse count differences from the baseline maps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import dask
import numpy as np

from ..background import expand
from ..blocks import block_grid, compute_blocks
from ..compiled import one_integer_type
from ..thresholds import ScaledThresholds, scaled_level  # noqa: F401  (re-exported: the pass evaluates them)
from . import counting

# maps counted on the fine (TLS) grid and on the coarse (tissue / tumour) grid
FINE_MAPS = ("b_cells", "t_cells", "fdc", "germinal_centre", "nuclei", "debris")
COARSE_MAPS = ("nuclei", "tumour", "debris")
# lineages no real pixel belongs to twice: positive in several at once is an artefact
# (red blood cells, debris); CD21 and CD23 share the FDC network and vote once
VOTING_GROUPS = (("tumour",), ("b_cells",), ("t_cells",), ("fdc", "germinal_centre"))


@dataclass(frozen=True)
class EvidencePlan:
    """What the block pass reads and how it counts; small and picklable.

    Thresholds are maps on the threshold grid (``grid_factor`` level-0 px per cell); each
    block receives the pieces covering it. ``crosstalk`` lists, per target role, the
    source roles whose background-subtracted signal is removed first, with their share.
    """

    roles: tuple[str, ...]  # channel roles read, in the order blocks are passed
    fine_factor: int  # level-0 px per fine bin side
    coarse_factor: int  # level-0 px per coarse bin side (a multiple of fine_factor)
    grid_factor: int  # level-0 px per threshold-map cell
    min_votes: int  # artefact: positive in at least this many lineage groups
    crosstalk: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    # with an AF channel: (role, share) whose AF is subtracted pixel by pixel, and the AF channel's glass level
    pixel_af: tuple[tuple[str, float], ...] = ()
    af_glass: float = 0.0
    channels: tuple[str, ...] = ()  # slide channel of each role: a channel with two roles votes once
    # sensitivity: groups of roles whose thresholds are scaled together (one slide channel each)
    scenarios: tuple[tuple[str, ...], ...] = ()

    @property
    def uses_autofluorescence(self) -> bool:
        return "autofluorescence" in self.roles


@dataclass
class EvidenceMaps:
    """Positive-pixel counts per grid bin, and the pixels each bin covers."""

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
    # sensitivity: per scenario group, per grid ("fine" / "coarse"), per map: (flat cell index, count
    # difference per scale, shape (scales, cells)); a cell may be listed twice (cut by a block edge)
    scenario_deltas: list[dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = field(default_factory=list)

    def changed_maps(self, group: int, scale: int) -> set[tuple[str, str]]:
        """(grid, map) pairs whose counts differ from the baseline in scenario ``group`` at scale index ``scale``."""
        return {(grid, name) for grid, maps in self.scenario_deltas[group].items()
                for name, (_, deltas) in maps.items() if deltas[scale].any()}

    def scenario(self, group: int, scale: int) -> EvidenceMaps:
        """The maps as counted with scenario ``group``'s thresholds at scale index ``scale``.

        Unchanged maps are shared with this object (read them, never write them); changed
        ones are copies.
        """
        grids = {"fine": dict(self.fine), "coarse": dict(self.coarse)}
        for grid, maps in self.scenario_deltas[group].items():
            for name, (cells, deltas) in maps.items():
                delta = deltas[scale]
                if not delta.any():
                    continue
                counts = grids[grid][name].astype(np.int32)
                np.add.at(counts.reshape(-1), cells, delta)
                grids[grid][name] = counts.astype(grids[grid][name].dtype)
        return dataclasses.replace(self, fine=grids["fine"], coarse=grids["coarse"], scenario_deltas=[])

    def pixels(self, grid: str, box=(slice(None), slice(None))) -> np.ndarray:
        """Level-0 pixels per bin of ``grid`` ("fine" or "coarse") within ``box``, float32."""
        rows, cols = (self.fine_rows, self.fine_cols) if grid == "fine" else (self.coarse_rows, self.coarse_cols)
        return np.outer(rows[box[0]], cols[box[1]]).astype(np.float32)

    def above(self, grid: str, name: str, level: float, *, inclusive: bool = False,
              box=(slice(None), slice(None)), band_rows: int = 512) -> np.ndarray:
        """Bins of map ``name`` whose :meth:`fraction` exceeds ``level`` (reaches it with ``inclusive``), within ``box``.

        Made band by band: the same bins as comparing the whole float map, without holding it
        (280 MB a map at 40k x 30k px and 2 µm bins).
        """
        rows, cols = (self.fine_rows, self.fine_cols) if grid == "fine" else (self.coarse_rows, self.coarse_cols)
        first, stop, _ = box[0].indices(len(rows))
        out = np.empty((max(0, stop - first), cols[box[1]].size), bool)
        compare = np.greater_equal if inclusive else np.greater
        for start in range(first, stop, band_rows):
            band = slice(start, min(start + band_rows, stop))
            compare(self.fraction(grid, name, (band, box[1])), level, out=out[start - first: band.stop - first])
        return out

    def fraction(self, grid: str, name: str, box=(slice(None), slice(None))) -> np.ndarray:
        """Share of positive pixels per bin of map ``name`` (float32), optionally within ``box``."""
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
    """Sum a boolean block into the grid bins it touches (cells anchored at the slide origin).

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


def _comparable(threshold: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``threshold`` in the values' own dtype where they are integers: x > t is x > floor(t)."""
    if dtype.kind in "ui" and threshold.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.floor(threshold), info.min, info.max).astype(dtype)
    return threshold


def _above(values: np.ndarray, threshold: np.ndarray, y0: int, x0: int, factor: int) -> np.ndarray:
    """values > threshold, where ``threshold`` holds one value per grid bin covering the block."""
    height, width = values.shape
    threshold = _comparable(threshold, values.dtype)
    if y0 % factor == 0 and x0 % factor == 0 and height % factor == 0 and width % factor == 0:
        shaped = values.reshape(height // factor, factor, width // factor, factor)
        return (shaped > threshold[:, None, :, None]).reshape(height, width)
    return values > expand(threshold, factor, y0 % factor, x0 % factor, values.shape)


def _decide(plan: EvidencePlan, positive: dict[str, np.ndarray], shape) -> dict[str, np.ndarray]:
    """The mask of every map from the positives of each role (arrays of any one shape): artefacts voted out."""
    votes = None
    groups = 0
    channel_of = dict(zip(plan.roles, plan.channels or plan.roles))
    voted: set[str] = set()
    for group in VOTING_GROUPS:
        members = [positive[r] for r in group if r in positive and channel_of[r] not in voted]
        voted.update(channel_of[r] for r in group if r in positive)
        if not members:
            continue
        groups += 1
        vote = members[0] if len(members) == 1 else np.logical_or.reduce(members)
        votes = vote.view(np.uint8).copy() if votes is None else votes + vote.view(np.uint8)
    debris = votes >= min(plan.min_votes, max(groups, 2)) if votes is not None else np.zeros(shape, bool)
    if plan.uses_autofluorescence:
        debris |= positive["autofluorescence"]
    clean = ~debris
    masks = {name: positive[name] & clean for name in set(FINE_MAPS + COARSE_MAPS) - {"debris"} if name in positive}
    masks["debris"] = debris
    return masks


def delta_dtype(factor: int) -> np.dtype:
    """Signed dtype holding any difference of two counts of a ``factor`` x ``factor`` cell."""
    cells = factor * factor
    return np.dtype(np.int8 if cells <= 127 else np.int16 if cells <= 32767 else np.int32)


def _scenario_levels(role: str, thresholds: dict, scaled: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scenario role's thresholds at every scale (scales, gh, gw), and their extremes with the baseline's."""
    base, spread, factors, shifts = scaled[role]
    stack = np.stack([scaled_level(base, spread, c, d, thresholds[role].shape) for c, d in zip(factors, shifts)])
    return stack, np.minimum(stack.min(axis=0), thresholds[role]), np.maximum(stack.max(axis=0), thresholds[role])


def _scenario_deltas(plan: EvidencePlan, group: tuple[str, ...], y0: int, x0: int, values: dict, thresholds: dict,
                     scaled: dict, positive: dict, masks: dict) -> dict:
    """Count differences from the baseline when the thresholds of ``group`` are scaled (each scale at once).

    Only pixels between a role's lowest and highest threshold (its band) can decide
    differently; ``positive`` / ``masks`` are the block's baseline decisions.
    """
    f = plan.grid_factor
    width = values[group[0]].shape[1]
    band = None
    stacks = {}
    for role in group:
        stacks[role], low, high = _scenario_levels(role, thresholds, scaled)
        inside = _above(values[role], low, y0, x0, f) & ~_above(values[role], high, y0, x0, f)
        band = inside if band is None else band | inside
    index = np.flatnonzero(band)
    gathered = {role: mask.reshape(-1)[index] for role, mask in positive.items()}
    baseline = {name: mask.reshape(-1)[index].view(np.int8) for name, mask in masks.items()}
    values_at = {role: values[role].reshape(-1)[index] for role in group}
    return _band_deltas(plan, group, y0, x0, width, index, values_at, stacks, gathered, baseline)


def _corrected(plan: EvidencePlan, raw: dict, background) -> dict:
    """Every role's value, AF subtracted pixel by pixel and crosstalk removed, for a block or gathered pixels.

    ``raw`` maps roles to raw values (a block, or pixels gathered from it); ``background(source)``
    gives that crosstalk source's background at the same pixels. The float32 operations are the
    same pixel by pixel either way, so a gathered pixel gets its block value exactly.
    """
    corrected = {}
    if plan.pixel_af:
        af = raw["autofluorescence"].astype(np.float32) - np.float32(plan.af_glass)
        for role, share in plan.pixel_af:
            corrected[role] = raw[role].astype(np.float32) - np.float32(share) * af
    for target, sources in plan.crosstalk:
        value = corrected[target] if target in corrected else raw[target].astype(np.float32)
        for source, kappa in sources:
            value -= np.float32(kappa) * (raw[source].astype(np.float32) - background(source))
        corrected[target] = value
    return {role: corrected.get(role, raw[role]) for role in plan.roles}


def _grid_cells(index: np.ndarray, width: int, y0: int, x0: int, factor: int) -> tuple[np.ndarray, ...]:
    """Block row and column of each flat ``index``, and the row and column of its threshold-grid cell."""
    rows, cols = np.divmod(index, width)
    return rows, cols, (y0 % factor + rows) // factor, (x0 % factor + cols) // factor


def _values_at(plan: EvidencePlan, data: dict, backgrounds: dict, index: np.ndarray, y0: int, x0: int) -> dict:
    """Every role's value (corrected as :func:`count_block` corrects the block) at the block's flat ``index``."""
    _, _, grid_rows, grid_cols = _grid_cells(index, data[plan.roles[0]].shape[1], y0, x0, plan.grid_factor)
    raw = {role: data[role].reshape(-1)[index] for role in plan.roles}
    return _corrected(plan, raw, lambda source: backgrounds[source][grid_rows, grid_cols])


def _band_deltas(plan: EvidencePlan, group: tuple[str, ...], y0: int, x0: int, width: int, index: np.ndarray,
                 values_at: dict, stacks: dict, gathered: dict, baseline: dict) -> dict:
    """The count differences of a scenario group from its band's pixels (block-local flat ``index``).

    ``values_at`` the group roles' values there, ``stacks`` their thresholds per scale,
    ``gathered`` / ``baseline`` every role's positives and every map's baseline mask (int8) there.
    Returns {grid: (origin, grid width of the block, {map: (cells, differences (scales, cells))})};
    cells are block-local flat indices, only those whose count changes at some scale.
    """
    if index.size == 0:
        return {}
    rows, cols, grid_rows, grid_cols = _grid_cells(index, width, y0, x0, plan.grid_factor)
    n_scales = stacks[group[0]].shape[0]
    differences: dict[str, list] = {}
    for k in range(n_scales):
        trial = dict(gathered)
        for role in group:
            trial[role] = values_at[role] > _comparable(stacks[role][k], values_at[role].dtype)[grid_rows, grid_cols]
        for name, mask in _decide(plan, trial, index.shape).items():
            difference = mask.view(np.int8) - baseline[name]
            if difference.any():
                differences.setdefault(name, [None] * n_scales)[k] = difference
    out = {}
    for grid, names, cell in (("fine", FINE_MAPS, plan.fine_factor), ("coarse", COARSE_MAPS, plan.coarse_factor)):
        present = [name for name in names if name in differences]
        if not present:
            continue
        grid_width = -(-(x0 % cell + width) // cell)
        local = ((y0 % cell + rows) // cell) * grid_width + (x0 % cell + cols) // cell
        order = np.argsort(local, kind="stable")
        ordered = local[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        cells = ordered[starts]
        maps = {}
        for name in present:
            stack = np.stack([d[order] if d is not None else np.zeros(index.size, np.int8) for d in differences[name]])
            sums = np.add.reduceat(stack, starts, axis=1, dtype=np.int32)
            changed = sums.any(axis=0)
            maps[name] = (cells[changed].astype(np.int32), sums[:, changed].astype(delta_dtype(cell)))
        out[grid] = ((y0 // cell, x0 // cell), grid_width, maps)
    return out


def _compiled_scenarios(plan: EvidencePlan, y0: int, x0: int, thresholds: dict, backgrounds: dict, scaled: dict,
                        blocks) -> tuple | None:
    """The compiled sweep's baseline counts and each scenario group's differences, decided in its band alone."""
    stacks, bands = {}, {}
    for g, group in enumerate(plan.scenarios):
        for role in group:
            stacks[role], low, high = _scenario_levels(role, thresholds, scaled)
            bands[role] = (g, low, high)
    counts = _compiled_counts(plan, y0, x0, thresholds, backgrounds, blocks, bands=bands)
    if counts is None:
        return None
    fine, coarse, band = counts
    data = dict(zip(plan.roles, blocks))
    width = blocks[0].shape[1]
    scenarios = []
    anywhere = np.flatnonzero(band)  # one pass over the block; each group then picks from these
    bits = band.reshape(-1)[anywhere]
    for g, group in enumerate(plan.scenarios):
        index = anywhere[(bits & np.uint16(1 << g)) != 0]
        values_at = _values_at(plan, data, backgrounds, index, y0, x0)
        _, _, grid_rows, grid_cols = _grid_cells(index, width, y0, x0, plan.grid_factor)
        # the baseline decision of the band's pixels alone: decisions are per pixel
        gathered = {role: values_at[role] > _comparable(thresholds[role], values_at[role].dtype)[grid_rows, grid_cols]
                    for role in plan.roles}
        baseline = {name: mask.view(np.int8) for name, mask in _decide(plan, gathered, index.shape).items()}
        scenarios.append(_band_deltas(plan, group, y0, x0, width, index, values_at, stacks, gathered, baseline))
    return fine, coarse, scenarios


def count_block(plan: EvidencePlan, y0: int, x0: int, thresholds: dict, backgrounds: dict, *blocks: np.ndarray,
                scaled: dict | None = None):
    """Count one level-0 block. Returns (fine origin, fine counts, coarse origin, coarse counts, scenario deltas).

    ``thresholds`` / ``backgrounds`` map roles to the threshold-grid pieces covering the
    block (backgrounds only for crosstalk sources); ``scaled`` each scenario role's
    (base piece, spread piece, factors, shifts) (see :class:`ScaledThresholds`). Pieces may
    be views of the whole grids: they are copied here, while the block is counted.
    """
    factor = plan.grid_factor
    thresholds = {role: np.ascontiguousarray(piece) for role, piece in thresholds.items()}
    backgrounds = {role: np.ascontiguousarray(piece) for role, piece in backgrounds.items()}
    scaled = {role: tuple(None if part is None else np.ascontiguousarray(part) for part in (base, spread)) + (factors, shifts)
              for role, (base, spread, factors, shifts) in (scaled or {}).items()}
    if COMPILED and counting.available():
        counted = (_compiled_scenarios(plan, y0, x0, thresholds, backgrounds, scaled, blocks) if plan.scenarios
                   else _compiled_counts(plan, y0, x0, thresholds, backgrounds, blocks))
        if counted is not None:
            return ((y0 // plan.fine_factor, x0 // plan.fine_factor), counted[0],
                    (y0 // plan.coarse_factor, x0 // plan.coarse_factor), counted[1],
                    counted[2] if plan.scenarios else [])
    values = _corrected(plan, dict(zip(plan.roles, blocks)),
                        lambda source: expand(backgrounds[source], factor, y0 % factor, x0 % factor, blocks[0].shape))
    positive = {role: _above(values[role], thresholds[role], y0, x0, factor) for role in plan.roles}
    masks = _decide(plan, positive, blocks[0].shape)
    scenarios = [_scenario_deltas(plan, group, y0, x0, values, thresholds, scaled, positive, masks)
                 for group in plan.scenarios]
    out = []
    for names, cell in ((FINE_MAPS, plan.fine_factor), (COARSE_MAPS, plan.coarse_factor)):
        stack = []
        for name in names:
            if name in masks:
                stack.append(_bin(masks[name], y0, x0, cell))
            else:
                shape = (-(-(y0 % cell + blocks[0].shape[0]) // cell), -(-(x0 % cell + blocks[0].shape[1]) // cell))
                stack.append(np.zeros(shape, count_dtype(cell)))
        # partial sums never exceed cell², so the small dtype holds them and their total
        out.append(((y0 // cell, x0 // cell), np.stack(stack)))
    return out[0][0], out[0][1], out[1][0], out[1][1], scenarios


COMPILED = True  # count with the compiled sweep where numba is installed (tests switch it off for the oracle)


def _packed_tables(plan: EvidencePlan) -> tuple[np.ndarray, int, np.ndarray, int] | None:
    """Per code of role positives (bit r: role r), what a pixel adds to each fine / coarse map, packed.

    The tables come from :func:`_decide` itself, evaluated on every code, so the sweep
    decides exactly as the numpy pass. None when the maps do not fit one 64-bit integer.
    """
    n = len(plan.roles)
    codes = np.arange(1 << n, dtype=np.int64)
    positive = {role: (codes >> k) & 1 == 1 for k, role in enumerate(plan.roles)}
    masks = _decide(plan, positive, codes.shape)
    tables = []
    for names, factor in ((FINE_MAPS, plan.fine_factor), (COARSE_MAPS, plan.coarse_factor)):
        bits = (factor * factor).bit_length()  # a bin's count, summed over its rows, fits
        if bits * len(names) > 64:
            return None
        table = np.zeros(codes.size, np.uint64)
        for m, name in enumerate(names):
            if name in masks:
                table |= masks[name].astype(np.uint64) << np.uint64(m * bits)
        tables += [table, bits]
    return tuple(tables)


def _compiled_counts(plan: EvidencePlan, y0: int, x0: int, thresholds: dict, backgrounds: dict, blocks,
                     bands: dict | None = None):
    """:func:`count_block`'s fine and coarse counts from the compiled sweep, or None where it cannot run.

    ``bands`` ({role: (group, low, high)}, the scenario thresholds' extremes per role) also
    returns the band (H, W) uint16: bit g where group g may decide differently.
    """
    roles = plan.roles
    if len(roles) > counting.MAX_ROLES or len({block.dtype for block in blocks}) > 1:
        return None
    if bands and len(plan.scenarios) > 16:
        return None
    tables = _TABLES.get(plan)
    if tables is None:
        tables = _TABLES.setdefault(plan, _packed_tables(plan) or ())
    if not tables:
        return None
    fine_table, fine_bits, coarse_table, coarse_bits = tables
    index = {role: k for k, role in enumerate(roles)}
    height, width = blocks[0].shape
    sources_of = dict(plan.crosstalk)
    af_share = dict(plan.pixel_af)
    corrected = np.array([role in sources_of or role in af_share for role in roles])
    n_sources = max([len(v) for v in sources_of.values()] + [1])
    sources = np.full((len(roles), n_sources), -1, np.int64)
    kappas = np.zeros((len(roles), n_sources), np.float32)
    for role, pairs in plan.crosstalk:
        for k, (source, kappa) in enumerate(pairs):
            sources[index[role], k] = index[source]
            kappas[index[role], k] = np.float32(kappa)
    shares = np.array([af_share.get(role, 0.0) for role in roles], np.float32)
    pieces = next(iter(thresholds.values())).shape
    levels = np.stack([thresholds[role] for role in roles]).astype(np.float64)
    dtype = blocks[0].dtype
    if dtype.kind in "ui":  # raw integer values compare with the floored threshold, as _above does
        int_levels = np.stack([_comparable(thresholds[role], dtype) for role in roles]).astype(
            np.int32 if dtype.itemsize < 4 else np.int64)
    else:
        int_levels = np.zeros((0, *pieces), np.int64)
    background = np.zeros((len(roles), *pieces), np.float32)
    for role, piece in backgrounds.items():
        background[index[role]] = piece
    f, c = plan.fine_factor, plan.coarse_factor
    fine = np.zeros((len(FINE_MAPS), -(-(y0 % f + height) // f), -(-(x0 % f + width) // f)), count_dtype(f))
    # at least uint16 while counting: the kernel then compiles once for every coarse grid size (uint8 counts
    # would be another signature), and the block's counts go back to the grid's dtype below
    coarse = np.zeros((len(COARSE_MAPS), -(-(y0 % c + height) // c), -(-(x0 % c + width) // c)),
                      np.promote_types(count_dtype(c), np.uint16))
    band_of = np.full(len(roles), -1, np.int64)
    lows = np.zeros_like(levels)
    highs = np.zeros_like(levels)
    int_lows, int_highs = np.zeros_like(int_levels), np.zeros_like(int_levels)
    band = np.zeros((height, width) if bands else (0, 0), np.uint16)
    for role, (group, low, high) in (bands or {}).items():
        k = index[role]
        band_of[k], lows[k], highs[k] = group, low, high
        if int_levels.shape[0]:
            int_lows[k], int_highs[k] = _comparable(low, dtype), _comparable(high, dtype)
    data = tuple(np.ascontiguousarray(one_integer_type(block)) for block in blocks)  # int_levels stay in the block dtype's range
    counting.count_sweep(data, levels, int_levels, plan.grid_factor, y0, x0, corrected, index.get("autofluorescence", 0),
                         np.float32(plan.af_glass), shares, sources, kappas, background,
                         fine_table, fine_bits, f, fine, coarse_table, coarse_bits, c, coarse,
                         band_of, lows, highs, int_lows, int_highs, band)
    coarse = coarse.astype(count_dtype(c), copy=False)
    return (fine, coarse, band) if bands else (fine, coarse)


_TABLES: dict[EvidencePlan, tuple] = {}


def _pieces(grid: np.ndarray, factor: int, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """The cells of ``grid`` covering a block: a view (a copy per task for the whole slide would cost ~0.2 GB
    at 40k x 30k px); pickled alone for a distributed worker."""
    return grid[..., y0 // factor : -(-(y0 + height) // factor), x0 // factor : -(-(x0 + width) // factor)]


def count_dtype(factor: int) -> np.dtype:
    cells = factor * factor
    return np.dtype(np.uint8 if cells <= 255 else np.uint16 if cells <= 65535 else np.uint32)


def _grid_pixels(size: int, factor: int) -> np.ndarray:
    cells = -(-size // factor)
    counts = np.full(cells, factor, dtype=np.int64)
    counts[-1] = size - factor * (cells - 1)
    return counts


class DenseCounts:
    """Count maps (maps, rows, cols) added up block by block into one array."""

    def __init__(self, n_maps: int, shape: tuple[int, int], dtype) -> None:
        self.counts = np.zeros((n_maps, *shape), dtype)

    def add(self, origin: tuple[int, int], counts: np.ndarray) -> None:
        """Add ``counts`` (maps, h, w), whose element [:, 0, 0] lies at grid cell ``origin``."""
        y0, x0 = origin
        self.counts[:, y0 : y0 + counts.shape[1], x0 : x0 + counts.shape[2]] += counts

    def whole(self) -> np.ndarray:
        return self.counts


class PackedCounts:
    """Count maps (maps, rows, cols) added up block by block, each block's counts kept compressed until the end.

    During a pass the pass's own windows are held too: the six fine maps of a 40k x 30k px
    slide take 0.4 GB whole, and most blocks' counts are small integers, mostly zero
    outside tissue and outside a few maps, that compress about fourfold. They are added up
    when the pass is over and its windows are freed (integer sums: the same in any order).
    """

    def __init__(self, n_maps: int, shape: tuple[int, int], dtype) -> None:
        self.n_maps, self.shape, self.dtype = n_maps, tuple(shape), np.dtype(dtype)
        self.parts: list[tuple[tuple[int, int], tuple[int, int], np.ndarray, bytes]] = []

    def add(self, origin: tuple[int, int], counts: np.ndarray) -> None:
        """Add ``counts`` (maps, h, w), whose element [:, 0, 0] lies at grid cell ``origin``."""
        maps = np.flatnonzero(counts.reshape(len(counts), -1).any(axis=1))
        if maps.size:
            packed = _codec().encode(np.ascontiguousarray(counts[maps], dtype=self.dtype))
            self.parts.append((tuple(origin), counts.shape[1:], maps, packed))

    def whole(self) -> np.ndarray:
        """The maps as one array (maps, rows, cols); the parts are given up as they are added in."""
        out = np.zeros((self.n_maps, *self.shape), self.dtype)
        codec = _codec()
        while self.parts:  # integer sums: any order
            (y0, x0), (h, w), maps, packed = self.parts.pop()
            out[maps, y0 : y0 + h, x0 : x0 + w] += np.frombuffer(codec.decode(packed), self.dtype).reshape(-1, h, w)
        return out


def _codec():
    # numcodecs (zarr's codecs): zstd with bit shuffling packs these maps ~4x at ~1 GB/s, where zlib takes 4x longer
    from numcodecs import Blosc

    return Blosc("zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)


@dataclass(frozen=True)
class BoxCounter:
    """:func:`count_block` for blocks inside one level-0 box: the threshold-grid pieces covering the box.

    The pieces are views of the whole maps (a copy per block for the whole slide would cost
    ~0.2 GB at 40k x 30k px), pickled alone for a distributed worker; any block inside the
    box (a whole chunk, or rows of one) is counted with the cells of the pieces covering it.
    """

    plan: EvidencePlan
    origin: tuple[int, int]  # threshold-grid row, column of the pieces' [0, 0]
    thresholds: dict[str, np.ndarray]
    backgrounds: dict[str, np.ndarray]
    scaled: dict[str, tuple]  # role -> (base piece, spread piece, factors, shifts)

    def count(self, y0: int, x0: int, *blocks: np.ndarray):
        """:func:`count_block` of the level-0 block at (``y0``, ``x0``), one array per role of the plan."""
        f = self.plan.grid_factor
        height, width = blocks[0].shape
        rows = slice(y0 // f - self.origin[0], -(-(y0 + height) // f) - self.origin[0])
        cols = slice(x0 // f - self.origin[1], -(-(x0 + width) // f) - self.origin[1])

        def cut(piece):
            return None if piece is None else piece[..., rows, cols]

        return count_block(self.plan, y0, x0, {role: cut(p) for role, p in self.thresholds.items()},
                           {role: cut(p) for role, p in self.backgrounds.items()}, *blocks,
                           scaled={role: (cut(base), cut(spread), factors, shifts)
                                   for role, (base, spread, factors, shifts) in self.scaled.items()})


class EvidenceCounting:
    """The counting pass's inputs and running totals: counters for blocks, their results added as they come.

    ``thresholds`` maps each role to its threshold map on the threshold grid (float32);
    ``backgrounds`` the crosstalk sources' background maps; ``scaled`` each role of
    ``plan.scenarios`` to its thresholds at every sensitivity scale. Blocks may partition the
    slide in any way (whole chunks, rows of them): the maps are integer sums, identical for
    any partition and order. ``packed`` keeps each block's counts compressed until
    :meth:`maps` (see :class:`PackedCounts`).
    """

    def __init__(self, plan: EvidencePlan, shape: tuple[int, int], *, thresholds: dict[str, np.ndarray],
                 backgrounds: dict[str, np.ndarray] | None = None,
                 scaled: dict[str, ScaledThresholds] | None = None, packed: bool = False) -> None:
        self.plan, self.shape = plan, tuple(shape)
        self.thresholds, self.backgrounds, self.scaled = thresholds, backgrounds or {}, scaled or {}
        missing = [role for group in plan.scenarios for role in group if role not in self.scaled]
        if missing:
            raise ValueError(f"scenario roles {missing} have no scaled thresholds")
        height, width = self.shape
        f, c = plan.fine_factor, plan.coarse_factor
        totals = PackedCounts if packed else DenseCounts  # packed: the maps are held beside a pass's windows
        self.fine = totals(len(FINE_MAPS), (-(-height // f), -(-width // f)), count_dtype(f))
        self.coarse = totals(len(COARSE_MAPS), (-(-height // c), -(-width // c)), count_dtype(c))
        self.parts: list[list] = [[] for _ in plan.scenarios]  # per scenario group, each block's sparse differences
        self._maps: EvidenceMaps | None = None

    def counter(self, y0: int, x0: int, height: int, width: int) -> BoxCounter:
        """A :class:`BoxCounter` for the blocks inside the level-0 box (``y0``, ``x0``, ``height``, ``width``)."""
        f = self.plan.grid_factor

        def piece(grid):
            return None if grid is None else _pieces(grid, f, y0, x0, height, width)

        return BoxCounter(self.plan, (y0 // f, x0 // f),
                          {role: piece(self.thresholds[role]) for role in self.plan.roles},
                          {role: piece(grid) for role, grid in self.backgrounds.items()},
                          {role: (piece(t.base), piece(t.spread), t.factors, t.shifts) for role, t in self.scaled.items()})

    def add(self, result) -> None:
        """Add one block's :func:`count_block` result (integer sums: any order gives the same maps)."""
        for total, origin, counts in ((self.fine, *result[0:2]), (self.coarse, *result[2:4])):
            total.add(origin, counts)
        for g, deltas in enumerate(result[4]):
            if deltas:
                self.parts[g].append((result[0], deltas))  # by the block's place: the lists are then the same each run

    def maps(self) -> EvidenceMaps:
        """The evidence maps of all blocks added (counting ends here: blocks added after are not in them)."""
        if self._maps is None:
            self._maps = self._assembled()
        return self._maps

    def _assembled(self) -> EvidenceMaps:
        plan = self.plan
        height, width = self.shape
        f, c = plan.fine_factor, plan.coarse_factor
        fine, coarse = self.fine.whole(), self.coarse.whole()
        deltas = []
        for g in range(len(plan.scenarios)):
            group: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
            for grid, factor in (("fine", f), ("coarse", c)):
                grid_width = -(-width // factor)
                index_dtype = np.int32 if -(-height // factor) * grid_width < 2**31 else np.int64
                cells_of: dict[str, list] = {}
                for _, block in sorted(self.parts[g], key=lambda part: part[0]):
                    if grid not in block:
                        continue
                    (cy, cx), block_width, maps = block[grid]
                    for name, (local, difference) in maps.items():
                        flat = (cy + local // block_width).astype(index_dtype) * grid_width + cx + local % block_width
                        cells_of.setdefault(name, []).append((flat, difference))
                group[grid] = {name: (np.concatenate([p[0] for p in pieces]),
                                      np.concatenate([p[1] for p in pieces], axis=1))
                               for name, pieces in cells_of.items()}
            deltas.append(group)
        return EvidenceMaps(
            fine={name: fine[k] for k, name in enumerate(FINE_MAPS)},
            coarse={name: coarse[k] for k, name in enumerate(COARSE_MAPS)},
            fine_rows=_grid_pixels(height, f),
            fine_cols=_grid_pixels(width, f),
            coarse_rows=_grid_pixels(height, c),
            coarse_cols=_grid_pixels(width, c),
            fine_factor=f,
            coarse_factor=c,
            scenario_deltas=deltas,
        )


def compute_evidence(channels, plan: EvidencePlan, *, thresholds: dict[str, np.ndarray],
                     backgrounds: dict[str, np.ndarray] | None = None,
                     scaled: dict[str, ScaledThresholds] | None = None,
                     scheduler=None, num_workers=None) -> EvidenceMaps:
    """Run the block pass over lazy (Y, X) channel arrays (one per role of ``plan``) that share one chunk grid.

    ``thresholds``, ``backgrounds`` and ``scaled`` as for :class:`EvidenceCounting`.
    """
    counting = EvidenceCounting(plan, channels[0].shape, thresholds=thresholds, backgrounds=backgrounds,
                                scaled=scaled)
    return count_chunks(channels, counting, scheduler=scheduler, num_workers=num_workers)


def count_chunks(channels, counting: EvidenceCounting, *, scheduler=None, num_workers=None) -> EvidenceMaps:
    """``counting``'s maps counted chunk by chunk from lazy (Y, X) arrays, one per role, sharing one chunk grid.

    Each block gets only the pieces covering it, so the task graph stays small.
    """
    grids = [channel.to_delayed() for channel in channels]
    tasks = []
    for i, j, y0, x0, h, w in block_grid(*channels[0].chunks):
        pieces = counting.counter(y0, x0, h, w)  # the block's own box: count_block takes the pieces whole
        tasks.append(dask.delayed(count_block, pure=True)(counting.plan, y0, x0, pieces.thresholds, pieces.backgrounds,
                                                          *[grid[i, j] for grid in grids], scaled=pieces.scaled))
    compute_blocks(tasks, scheduler=scheduler, num_workers=num_workers, consume=counting.add)
    return counting.maps()
