"""The counting pass's per-block work in one compiled sweep: correct, threshold, vote, bin.

:func:`tlsquant.segment.evidence.count_block` written as numpy is a dozen passes over each
block (a float copy per corrected channel, a comparison per role, the votes, a mask per map,
a strided sum per map); here each pixel is read once and counted into its fine and coarse
bins. The arithmetic is the same, operation for operation in float32, so the counts are
identical (tests/test_evidence.py compares the two on every test case).
"""

from __future__ import annotations

import numpy as np

from ..compiled import compiled, padded

MAX_ROLES = 16  # codes are uint16


def _count_loops(data, levels, int_levels, grid_factor, y0, x0, corrections, af_index, af_glass, af_shares,
                 sources, kappas, backgrounds, fine_table, fine_bits, fine_factor, fine,
                 coarse_table, coarse_bits, coarse_factor, coarse,
                 band_of, lows, highs, int_lows, int_highs, band):  # pragma: no cover - compiled
    """Count one block into ``fine`` (maps, rows, cols) and ``coarse`` (zeroed by the caller).

    data: a tuple of (H, W) raw values, one per role (C-contiguous, one dtype), padded to
    ``MAX_ROLES`` with empty arrays (one compiled signature for any number of roles); ``levels``
    (roles, gh, gw) the float thresholds (float64 holding float32 values), ``int_levels`` the
    same floored into the data's range, which raw integer values compare with; per role ``corrections`` 1 where its value is corrected (AF subtraction
    and/or crosstalk, in float32), ``af_shares`` its AF share (0: none), ``sources`` /
    ``kappas`` (roles, k) its crosstalk sources (-1 ends the list) with their float32 shares,
    ``backgrounds`` (roles, gh, gw) each source's float32 background.

    Sensitivity: ``band_of`` gives each role's scenario group (-1: none); where a role's
    value lies above ``lows`` and not above ``highs`` (its lowest and highest scenario
    thresholds; ``int_lows`` / ``int_highs`` floored for raw integers), bit g of ``band``
    (H, W) is set: only those pixels can decide differently in group g.

    Each pixel's positives form a code (bit r: role r positive); ``fine_table[code]`` holds
    what the pixel adds to each fine map, ``fine_bits`` bits a map, packed into one integer
    (likewise coarse), so a bin's maps add up in one integer until its last row is done.
    """
    n_roles = corrections.shape[0]  # data beyond are padding
    height, width = data[0].shape
    integer = int_levels.shape[0] > 0
    n_sources = sources.shape[1]
    n_fine, n_coarse = fine.shape[0], coarse.shape[0]
    code = np.zeros(width, np.uint16)
    value = np.empty(width, np.float32)
    gy0, gx0 = y0 // grid_factor, x0 // grid_factor
    fy0, fx0 = y0 // fine_factor, x0 // fine_factor
    cy0, cx0 = y0 // coarse_factor, x0 // coarse_factor
    n_cells = (x0 + width - 1) // grid_factor - gx0 + 1
    run_start = np.empty(n_cells, np.int64)
    run_stop = np.empty(n_cells, np.int64)
    for g in range(n_cells):
        run_start[g] = max(0, (gx0 + g) * grid_factor - x0)
        run_stop[g] = min(width, (gx0 + g + 1) * grid_factor - x0)
    fine_col = np.empty(width, np.int64)
    coarse_col = np.empty(width, np.int64)
    for j in range(width):
        fine_col[j] = (x0 + j) // fine_factor - fx0
        coarse_col[j] = (x0 + j) // coarse_factor - cx0
    # per role, its thresholds (and its scenario band, and as a crosstalk source its background)
    # laid out along a row of pixels once per row of threshold cells: the per-pixel loops below are
    # then long and vectorise (runs of one threshold cell are only grid_factor px)
    int_row = np.empty((n_roles if integer else 0, width), int_levels.dtype)
    level_row = np.empty((n_roles, width), levels.dtype)
    background_row = np.empty((n_roles, width), backgrounds.dtype)
    banded = band.shape[0] > 0
    low_row = np.empty((n_roles if banded else 0, width), levels.dtype)
    high_row = np.empty((n_roles if banded else 0, width), levels.dtype)
    int_low_row = np.empty((n_roles if banded and integer else 0, width), int_levels.dtype)
    int_high_row = np.empty((n_roles if banded and integer else 0, width), int_levels.dtype)
    is_source = np.zeros(n_roles, np.bool_)
    for r in range(n_roles):
        for k in range(n_sources):
            if sources[r, k] >= 0:
                is_source[sources[r, k]] = True
    fine_sum = np.zeros(fine.shape[2], np.uint64)
    coarse_sum = np.zeros(coarse.shape[2], np.uint64)
    fine_mask = np.uint64((1 << fine_bits) - 1)
    coarse_mask = np.uint64((1 << coarse_bits) - 1)
    expanded_row = -1
    for i in range(height):
        gy = (y0 + i) // grid_factor - gy0
        if gy != expanded_row:
            for r in range(n_roles):
                for g in range(n_cells):
                    a, b = run_start[g], run_stop[g]
                    if corrections[r] or not integer:
                        level_row[r, a:b] = levels[r, gy, g]
                    else:
                        int_row[r, a:b] = int_levels[r, gy, g]
                    if is_source[r]:
                        background_row[r, a:b] = backgrounds[r, gy, g]
                    if banded and band_of[r] >= 0:
                        low_row[r, a:b] = lows[r, gy, g]
                        high_row[r, a:b] = highs[r, gy, g]
                        if integer:
                            int_low_row[r, a:b] = int_lows[r, gy, g]
                            int_high_row[r, a:b] = int_highs[r, gy, g]
            expanded_row = gy
        for j in range(width):
            code[j] = 0
        for r in range(n_roles):
            row = data[r][i]
            if corrections[r]:
                for j in range(width):
                    value[j] = np.float32(row[j])
                share = af_shares[r]
                if share != 0:
                    af_row = data[af_index][i]
                    for j in range(width):
                        value[j] = value[j] - share * (np.float32(af_row[j]) - af_glass)
                for k in range(n_sources):
                    s = sources[r, k]
                    if s < 0:
                        break
                    kappa = kappas[r, k]
                    source_row = data[s][i]
                    source_level = background_row[s]
                    for j in range(width):
                        value[j] = value[j] - kappa * (np.float32(source_row[j]) - source_level[j])
                thresholds_here = level_row[r]
                for j in range(width):  # branch-free: the loops vectorise
                    code[j] |= np.uint16(value[j] > thresholds_here[j]) << r
                if band_of[r] >= 0:
                    bit = np.uint16(1 << band_of[r])  # a local: the loop must not reread band_of
                    band_row = band[i]
                    lows_here, highs_here = low_row[r], high_row[r]
                    for j in range(width):
                        # above low and not above high (a NaN is above neither, as in numpy)
                        band_row[j] |= bit * np.uint16((value[j] > lows_here[j]) > (value[j] > highs_here[j]))
                continue
            if band_of[r] >= 0:
                bit = np.uint16(1 << band_of[r])
                band_row = band[i]
                if integer:
                    lows_here, highs_here = int_low_row[r], int_high_row[r]
                    for j in range(width):
                        band_row[j] |= bit * np.uint16((row[j] > lows_here[j]) & (row[j] <= highs_here[j]))
                else:
                    lows_here, highs_here = low_row[r], high_row[r]
                    for j in range(width):
                        band_row[j] |= bit * np.uint16((row[j] > lows_here[j]) > (row[j] > highs_here[j]))
            if integer:
                levels_here = int_row[r]
                for j in range(width):
                    code[j] |= np.uint16(row[j] > levels_here[j]) << r
            else:
                thresholds_here = level_row[r]
                for j in range(width):
                    code[j] |= np.uint16(row[j] > thresholds_here[j]) << r
        for j in range(width):
            fine_sum[fine_col[j]] += fine_table[code[j]]
            coarse_sum[coarse_col[j]] += coarse_table[code[j]]
        if (y0 + i + 1) % fine_factor == 0 or i == height - 1:  # a row of fine bins is complete
            fy = (y0 + i) // fine_factor - fy0
            for c in range(fine_sum.shape[0]):
                packed = fine_sum[c]
                for m in range(n_fine):
                    fine[m, fy, c] += (packed >> np.uint64(m * fine_bits)) & fine_mask
                fine_sum[c] = 0
        if (y0 + i + 1) % coarse_factor == 0 or i == height - 1:
            cy = (y0 + i) // coarse_factor - cy0
            for c in range(coarse_sum.shape[0]):
                packed = coarse_sum[c]
                for m in range(n_coarse):
                    coarse[m, cy, c] += (packed >> np.uint64(m * coarse_bits)) & coarse_mask
                coarse_sum[c] = 0


def available() -> bool:
    """Whether the compiled sweep can run (numba installed)."""
    return compiled(_count_loops) is not None


def count_sweep(data, *args) -> None:
    """Run the compiled sweep (see :func:`_count_loops` for the arguments; ``data`` unpadded).

    A tuple's length is part of its compiled type: padded to ``MAX_ROLES``, every panel uses
    the one compilation per dtype (each is ~3 s, in every fresh process).
    """
    compiled(_count_loops)(padded(data, MAX_ROLES), *args)
