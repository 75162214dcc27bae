"""The cell pass's pixel loops: plain Python that :mod:`tlsquant.cells` compiles with numba.

Each loop is written for ``numba.njit(cache=True, nogil=True)`` (see :func:`tlsquant.compiled.compiled`):
plain loops over arrays, no Python objects. :mod:`tlsquant.cells` keeps a numpy path
with the same results for each, used without numba and as the tests' oracle. Every
loop reproduces its numpy path's arithmetic (same float64 expressions, same order),
so compiled and plain results are identical, not merely close.
"""

from __future__ import annotations

import numpy as np

# pragma: no cover throughout: coverage does not see inside compiled code


def smooth_threshold_loops(stain, weights_y, weights_x, grid, row_cells, col_cells):  # pragma: no cover
    """The stain as float32 smoothed along y then x, and where it exceeds its threshold.

    Each axis is scipy.ndimage's ``correlate1d`` with symmetric ``weights`` and mode
    'reflect', step for step: float64 accumulation of the centre tap, then the pairs from
    the outermost in, rounded to float32 after each axis. ``grid[row_cells[y], col_cells[x]]``
    is pixel (y, x)'s threshold; the comparison runs in the grid's dtype. Whole rows at a
    time, so the compiler vectorises along x.
    """
    height, width = stain.shape
    ry, rx = weights_y.size // 2, weights_x.size // 2
    image = np.empty((height, width), np.float32)
    foreground = np.empty((height, width), np.bool_)
    acc = np.empty(width)
    line = np.empty(width + 2 * rx, np.float32)  # one row smoothed along y, reflected at both ends
    limit = np.empty(width, grid.dtype)
    grid_row = -1
    for y in range(height):
        for x in range(width):
            acc[x] = np.float64(np.float32(stain[y, x])) * weights_y[ry]
        for j in range(ry, 0, -1):
            lo, hi = (y - j) % (2 * height), (y + j) % (2 * height)  # 'reflect': d c b a | a b c d | d c b a
            lo = 2 * height - 1 - lo if lo >= height else lo
            hi = 2 * height - 1 - hi if hi >= height else hi
            w = weights_y[ry - j]
            for x in range(width):
                acc[x] += (np.float64(np.float32(stain[lo, x])) + np.float64(np.float32(stain[hi, x]))) * w
        for x in range(width):
            line[rx + x] = np.float32(acc[x])
        for j in range(1, rx + 1):
            lo, hi = (-j) % (2 * width), (width - 1 + j) % (2 * width)
            line[rx - j] = line[rx + (2 * width - 1 - lo if lo >= width else lo)]
            line[rx + width - 1 + j] = line[rx + (2 * width - 1 - hi if hi >= width else hi)]
        for x in range(width):
            acc[x] = np.float64(line[rx + x]) * weights_x[rx]
        for j in range(rx, 0, -1):
            w = weights_x[rx - j]
            for x in range(width):
                acc[x] += (np.float64(line[rx + x - j]) + np.float64(line[rx + x + j])) * w
        if row_cells[y] != grid_row:
            grid_row = row_cells[y]
            for x in range(width):
                limit[x] = grid[grid_row, col_cells[x]]
        for x in range(width):
            value = np.float32(acc[x])
            image[y, x] = value
            foreground[y, x] = value > limit[x]
    return image, foreground


def distance_loops(mask, py, px, max_steps):  # pragma: no cover
    """Euclidean distance (µm, float32) of each ``mask`` pixel to the nearest pixel outside it (none off the image).

    Per column the lattice distance to the nearest background pixel, then per pixel the
    least ``(dy * py)² + (dx * px)²`` over the columns of its row, in float64 summed as
    scipy's transform sums them: scipy's values. Searched outwards from the pixel, stopped
    once ``(dx * px)²`` alone reaches the best: foreground here is nuclei, a few pixels
    across. A row where a pixel would need more than ``max_steps`` columns (a large solid
    object) takes the lower envelope of the columns' parabolas instead (Felzenszwalb and
    Huttenlocher), linear in the row's width. inf where no background pixel exists.
    """
    height, width = mask.shape
    far = height + width + 1
    rows = np.empty((height, width), np.int32)  # lattice distance to the nearest background pixel in the column
    for x in range(width):
        rows[0, x] = 0 if not mask[0, x] else far
    for y in range(1, height):
        for x in range(width):
            rows[y, x] = 0 if not mask[y, x] else min(rows[y - 1, x] + 1, far)
    for y in range(height - 2, -1, -1):
        for x in range(width):
            rows[y, x] = min(rows[y, x], rows[y + 1, x] + 1)
    distance = np.zeros((height, width), np.float32)
    column_term = np.empty(width)
    hull = np.empty(width, np.int64)  # columns whose parabolas form the lower envelope
    starts = np.empty(width + 1)  # where each hull parabola starts to be the lowest
    for y in range(height):
        for x in range(width):
            g = rows[y, x]
            column_term[x] = (g * py) ** 2 if g < far else np.inf
        envelope = False
        for x in range(width):
            if not mask[y, x]:
                continue
            best = column_term[x]
            step = 1
            while True:
                along = (step * px) ** 2
                if along >= best or (x - step < 0 and x + step >= width):
                    break
                if step > max_steps:
                    envelope = True
                    break
                if x - step >= 0:
                    best = min(best, column_term[x - step] + along)
                if x + step < width:
                    best = min(best, column_term[x + step] + along)
                step += 1
            if envelope:
                break
            distance[y, x] = np.float32(np.sqrt(best))
        if not envelope:
            continue
        k = -1
        for q in range(width):
            if column_term[q] == np.inf:
                continue
            crossing = -np.inf
            while k >= 0:
                p = hull[k]
                crossing = ((column_term[q] + (q * px) ** 2) - (column_term[p] + (p * px) ** 2)) / (2 * px * px * (q - p))
                if crossing > starts[k]:
                    break
                k -= 1
            k += 1
            hull[k] = q
            starts[k] = crossing if k > 0 else -np.inf
        k_end = k
        k = 0
        for x in range(width):
            if not mask[y, x]:
                continue
            if k_end < 0:
                distance[y, x] = np.inf
                continue
            while k < k_end and starts[k + 1] <= x:
                k += 1
            distance[y, x] = np.float32(np.sqrt(column_term[hull[k]] + ((x - hull[k]) * px) ** 2))
    return distance


def local_maxima_loops(distance, foreground, offsets):  # pragma: no cover
    """Foreground pixels with no higher pixel at any of ``offsets`` (nearest first) and none off the image."""
    height, width = distance.shape
    peaks = np.zeros(distance.shape, np.bool_)
    for y in range(height):
        for x in range(width):
            if not foreground[y, x]:
                continue
            value = distance[y, x]
            peak = True
            for k in range(offsets.shape[0]):
                ny, nx = y + offsets[k, 0], x + offsets[k, 1]
                if ny < 0 or ny >= height or nx < 0 or nx >= width or distance[ny, nx] > value:
                    peak = False
                    break
            peaks[y, x] = peak
    return peaks


def plateau_roots_loops(flat, width):  # pragma: no cover
    """Per pixel of ``flat`` (sorted flat indices): the index in ``flat`` of the first pixel of its 8-connected group."""
    n = flat.size
    parent = np.arange(n)
    for i in range(n):
        y, x = flat[i] // width, flat[i] % width
        for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):  # the neighbours before it in raster order
            if y + dy < 0 or x + dx < 0 or x + dx >= width:
                continue
            target = flat[i] + dy * width + dx
            j = np.searchsorted(flat, target)
            if j >= n or flat[j] != target:
                continue
            a, b = i, j
            while parent[a] != a:
                a = parent[a]
            while parent[b] != b:
                b = parent[b]
            if a != b:  # the lower index (earlier pixel) becomes the root
                parent[max(a, b)] = min(a, b)
    for i in range(n):  # parents always precede: one pass settles every root
        parent[i] = parent[parent[i]]
    return parent


def no_saddle_loops(ys, xs, values, distance, reach_y, reach_x, py, px, reach_um, thin_um, depth_um):  # pragma: no cover
    """Per maximum (raster order): whether a higher one within reach joins it without a saddle."""
    n = ys.size
    dominated = np.zeros(n, np.bool_)
    for i in range(n):
        for j in range(i + 1, n):  # j after i in raster order: on equal heights, j is the lower one
            dy = ys[j] - ys[i]
            if dy > reach_y:
                break
            dx = xs[j] - xs[i]
            if dx < -reach_x or dx > reach_x or (dy * py) ** 2 + (dx * px) ** 2 > reach_um * reach_um:
                continue
            low, high = (j, i) if values[i] >= values[j] else (i, j)
            if dominated[low] or float(values[low]) >= thin_um:
                continue
            floor = float(values[low]) - depth_um  # in float64, compiled or not
            dy, dx = ys[high] - ys[low], xs[high] - xs[low]
            steps = max(abs(dy), abs(dx))
            joined = True
            for s in range(1, steps):
                # the pixel nearest the point s/steps of the way from the lower maximum (halves rounded up):
                # integer arithmetic, so every window samples the same pixels
                y = ys[low] + (2 * s * dy + steps) // (2 * steps)
                x = xs[low] + (2 * s * dx + steps) // (2 * steps)
                if float(distance[y, x]) <= floor:
                    joined = False
                    break
            if joined:
                dominated[low] = True
    return dominated


def claim_loops(cy, cx, radius, slide_order, nearest_first, steps, mask, settled, bucket_px):  # pragma: no cover
    """Owner (centre index + 1) of every mask pixel: least ``step - radius``, then least slide order.

    The owner is the least (score, slide order) over every centre within reach, whatever
    order the pairs are tried in. First each centre claims only the offsets (nearest first)
    where its score is at most ``settled``: a pixel whose best score is then at most
    ``settled`` is decided, as every pair not yet tried scores more. The few pixels left (the
    tips of long nuclei, clump zones, pixels no centre reaches) then try every centre within
    reach, found through buckets of ``bucket_px``. ``steps[dy + ry, dx + rx]`` is the step (µm)
    of offset (dy, dx), inf beyond the reach.
    """
    height, width = mask.shape
    best = np.full(mask.shape, np.inf)
    owner = np.zeros(mask.shape, np.int32)
    for k in range(cy.size):
        for j in range(nearest_first.shape[0]):
            score = nearest_first[j, 2] - radius[k]
            if score > settled:
                break  # offsets further out score more
            y = cy[k] + int(nearest_first[j, 0])
            x = cx[k] + int(nearest_first[j, 1])
            if y < 0 or y >= height or x < 0 or x >= width or not mask[y, x]:
                continue
            current = best[y, x]
            if score < current or (score == current and slide_order[k + 1] < slide_order[owner[y, x]]):
                best[y, x] = score
                owner[y, x] = k + 1
    ry, rx = steps.shape[0] // 2, steps.shape[1] // 2
    rows, cols = (height + bucket_px - 1) // bucket_px, (width + bucket_px - 1) // bucket_px
    start = np.zeros(rows * cols + 1, np.int64)
    for k in range(cy.size):
        start[(cy[k] // bucket_px) * cols + cx[k] // bucket_px + 1] += 1
    for b in range(rows * cols):
        start[b + 1] += start[b]
    members = np.empty(cy.size, np.int64)
    filled = start[:-1].copy()
    for k in range(cy.size):
        b = (cy[k] // bucket_px) * cols + cx[k] // bucket_px
        members[filled[b]] = k
        filled[b] += 1
    for y in range(height):
        for x in range(width):
            if not mask[y, x] or best[y, x] <= settled:
                continue
            for brow in range(max(y - ry, 0) // bucket_px, min(y + ry, height - 1) // bucket_px + 1):
                for bcol in range(max(x - rx, 0) // bucket_px, min(x + rx, width - 1) // bucket_px + 1):
                    b = brow * cols + bcol
                    for t in range(start[b], start[b + 1]):
                        k = members[t]
                        dy, dx = y - cy[k], x - cx[k]
                        if dy < -ry or dy > ry or dx < -rx or dx > rx:
                            continue
                        step = steps[dy + ry, dx + rx]
                        if step == np.inf:
                            continue
                        score = step - radius[k]
                        current = best[y, x]
                        if score < current or (score == current and slide_order[k + 1] < slide_order[owner[y, x]]):
                            best[y, x] = score
                            owner[y, x] = k + 1
    return owner


def label_areas_loops(labels, n):  # pragma: no cover
    """Pixels per label 0..n."""
    areas = np.zeros(n + 1, np.int64)
    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            areas[labels[y, x]] += 1
    return areas


def relabel_loops(labels, new_label):  # pragma: no cover
    """``labels`` mapped through ``new_label``, in place."""
    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            labels[y, x] = new_label[labels[y, x]]
    return labels


def grow_rings_loops(labels, dys, dxs, ranks, group_start, best):  # pragma: no cover
    """Grow rings into ``labels`` in place: each background pixel within reach of a nucleus border gets minus the
    label of the nearest (then lowest) nucleus; nuclei (> 0) are left as they are.

    ``ranks`` orders the offsets by their distance, equal distances equal ranks; ``best``
    (the shape of ``labels``, of the ranks' dtype) holds that dtype's maximum. The offsets
    come in 9 groups by the signs of (dy, dx), ``(sy + 1) * 3 + sx + 1``, starting at
    ``group_start``. A pixel grows only towards the sides where its 4-neighbour is background:
    where the neighbour on that side is nucleus, that neighbour lies strictly nearer to every
    target on that side, so the pixel cannot be a target's nearest (not even a tied one).
    """
    height, width = labels.shape
    for y in range(height):
        for x in range(width):
            label = labels[y, x]
            if label <= 0:
                continue
            up = y > 0 and labels[y - 1, x] <= 0
            down = y < height - 1 and labels[y + 1, x] <= 0
            left = x > 0 and labels[y, x - 1] <= 0
            right = x < width - 1 and labels[y, x + 1] <= 0
            if not (up or down or left or right):
                continue  # an inner pixel: a border pixel of its nucleus is nearer to every outside pixel
            for group in range(9):
                sy, sx = group // 3 - 1, group % 3 - 1
                if (sy < 0 and not up) or (sy > 0 and not down) or (sx < 0 and not left) or (sx > 0 and not right):
                    continue
                for k in range(group_start[group], group_start[group + 1]):
                    ty, tx = y + dys[k], x + dxs[k]
                    if ty < 0 or ty >= height or tx < 0 or tx >= width or labels[ty, tx] > 0:
                        continue
                    rank = ranks[k]
                    current = best[ty, tx]
                    if rank < current or (rank == current and label < -labels[ty, tx]):
                        best[ty, tx] = rank
                        labels[ty, tx] = -label
    return labels


def cell_sums_loops(nuclei, bodies, n, oy, ox):  # pragma: no cover
    """Per label 0..n: nucleus and ring pixel counts, and the sums of the nucleus pixels' level-0 rows and columns.

    A pixel belongs to cell ``abs(bodies)``, to its nucleus where ``nuclei > 0``: nuclei and
    bodies as two arrays, or one array with rings as minus their label passed twice.
    """
    nucleus_px = np.zeros(n + 1, np.int64)
    ring_px = np.zeros(n + 1, np.int64)
    sum_y = np.zeros(n + 1)
    sum_x = np.zeros(n + 1)
    height, width = nuclei.shape
    for y in range(height):
        for x in range(width):
            label = abs(bodies[y, x])
            if label == 0:
                continue
            if nuclei[y, x] > 0:
                nucleus_px[label] += 1
                sum_y[label] += y + oy
                sum_x[label] += x + ox
            else:
                ring_px[label] += 1
    return nucleus_px, ring_px, sum_y, sum_x


MARKER_SLOTS = 4  # windows in the tuple all_marker_sums_loops takes (fewer markers are padded to it)


def all_marker_sums_loops(nuclei, bodies, markers, count, n):  # pragma: no cover
    """Per marker (the first ``count`` of a tuple of four same-typed windows; the rest pad it) and label
    0..n: the sums (float64, raster order) of its values over the nucleus and over the ring, all markers
    in one pass: two (count, n + 1) arrays. Labels as in :func:`cell_sums_loops`.

    Summed label-major (a pixel's four sums side by side in memory) with the four markers
    written out: 40 % faster than a loop over markers into marker-major arrays; each sum
    still adds the same values in the same order.
    """
    sums = np.zeros((n + 1, 2, 4))
    first, second, third, fourth = markers[0], markers[1], markers[2], markers[3]
    height, width = nuclei.shape
    for y in range(height):
        for x in range(width):
            label = abs(bodies[y, x])
            if label == 0:
                continue
            cell = sums[label, 0 if nuclei[y, x] > 0 else 1]
            cell[0] += np.float64(first[y, x])
            if count > 1:
                cell[1] += np.float64(second[y, x])
            if count > 2:
                cell[2] += np.float64(third[y, x])
            if count > 3:
                cell[3] += np.float64(fourth[y, x])
    nucleus_sum = np.empty((count, n + 1))
    ring_sum = np.empty((count, n + 1))
    for k in range(count):
        for label in range(n + 1):
            nucleus_sum[k, label] = sums[label, 0, k]
            ring_sum[k, label] = sums[label, 1, k]
    return nucleus_sum, ring_sum
