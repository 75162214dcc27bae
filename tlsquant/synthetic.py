"""Seeded synthetic multiplex slides with known truth.

A :class:`Scene` is a small, hashable description of a tissue section: a tissue
outline, a tumour bed (with stromal holes), TLS of chosen sizes and stages, and
decoys that a TLS detector must reject (small lymphoid aggregates, loose B-cell
infiltrates, autofluorescent debris). Pixels are rendered block by block from the
scene, so a slide of any size can be written without holding it in memory, and the
same scene always renders the same pixels whatever the block order or worker count.

Geometry is in µm with the origin at the top-left corner of level 0, x right, y down.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

DEFAULT_PANEL = ("DAPI", "CD3", "CD20", "CD21", "CD23", "TFE3")
EXTRA_CHANNELS = ("CD8", "CD68", "Autofluorescence")
FLUOROPHORES = {
    "DAPI": "DAPI",
    "CD3": "Opal 520",
    "CD20": "Opal 570",
    "CD21": "Opal 620",
    "CD23": "Opal 690",
    "TFE3": "Opal 480",
    "CD8": "Opal 540",
    "CD68": "Opal 650",
    "Autofluorescence": "Sample AF",
}
SILINA_STAGES = ("early", "primary_follicle", "secondary_follicle")
RENDER_BLOCK = 512  # px; noise is seeded per block, so the grid is fixed
LATTICE_UM = 6.0  # closest spacing of nuclei (dense lymphoid tissue)
CELL_BLOCK = 48  # lattice sites per cell block side
MEMBRANE_UM = 1.5  # membrane ring width around the nucleus
DTYPE_SCALE = {"uint16": 4000.0, "uint8": 180.0, "float32": 10.0}

# cell types
OTHER, TUMOUR, B_CELL, T_CELL = 0, 1, 2, 3


@dataclass(frozen=True)
class Blob:
    """A smooth star-shaped region: an ellipse whose radius varies with angle by harmonics."""

    x_um: float
    y_um: float
    radius_x_um: float
    radius_y_um: float
    harmonics: tuple[tuple[int, float, float], ...] = ()  # (order, relative amplitude, phase)

    def relative_radius(self, theta: np.ndarray) -> np.ndarray:
        radius = np.ones_like(theta, dtype=np.float64)
        for order, amplitude, phase in self.harmonics:
            radius = radius + amplitude * np.cos(order * theta + phase)
        return radius

    def _polar(self, x_um, y_um):
        u = (np.asarray(x_um, dtype=np.float64) - self.x_um) / self.radius_x_um
        v = (np.asarray(y_um, dtype=np.float64) - self.y_um) / self.radius_y_um
        return np.hypot(u, v), np.arctan2(v, u)

    def contains(self, x_um, y_um, *, grow_um: float = 0.0) -> np.ndarray:
        """Whether points lie inside the blob, optionally grown outwards by about ``grow_um``."""
        rho, theta = self._polar(x_um, y_um)
        limit = self.relative_radius(theta) + grow_um / min(self.radius_x_um, self.radius_y_um)
        return rho <= limit

    def normalised_radius(self, x_um, y_um) -> np.ndarray:
        """0 at the centre, 1 on the outline."""
        rho, theta = self._polar(x_um, y_um)
        return rho / self.relative_radius(theta)

    def _samples(self, n: int = 8192):
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return theta, self.relative_radius(theta)

    def area_um2(self) -> float:
        theta, radius = self._samples()
        return float(0.5 * np.mean(radius**2) * 2 * np.pi * self.radius_x_um * self.radius_y_um)

    def centroid_um(self) -> tuple[float, float]:
        theta, radius = self._samples()
        area = 0.5 * np.mean(radius**2) * 2 * np.pi
        cx = np.mean(radius**3 / 3 * np.cos(theta)) * 2 * np.pi / area
        cy = np.mean(radius**3 / 3 * np.sin(theta)) * 2 * np.pi / area
        return float(self.x_um + cx * self.radius_x_um), float(self.y_um + cy * self.radius_y_um)

    def outline_um(self, n: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        theta, radius = self._samples(n)
        return (
            self.x_um + self.radius_x_um * radius * np.cos(theta),
            self.y_um + self.radius_y_um * radius * np.sin(theta),
        )

    def distance_to_outline_um(self, x_um: float, y_um: float) -> float:
        xs, ys = self.outline_um()
        return float(np.min(np.hypot(xs - x_um, ys - y_um)))

    def bbox_um(self, grow_um: float = 0.0) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) enclosing the blob grown by ``grow_um``."""
        extent = 1 + sum(abs(a) for _, a, _ in self.harmonics)
        gx = self.radius_x_um * extent + grow_um
        gy = self.radius_y_um * extent + grow_um
        return self.x_um - gx, self.y_um - gy, self.x_um + gx, self.y_um + gy


@dataclass(frozen=True)
class SyntheticTLS:
    """One TLS: a B-cell follicle (``zone``) with a T-cell rim ``rim_um`` wide."""

    tls_id: int
    zone: Blob
    rim_um: float
    silina_stage: str
    location: str
    texture_phase: tuple[float, ...]

    @property
    def stage(self) -> str:
        """Binary scheme of the reference study: mature = CD23+ germinal-centre network."""
        return "mature" if self.silina_stage == "secondary_follicle" else "primary"


@dataclass(frozen=True)
class Scene:
    """Everything needed to render a synthetic slide and to state its truth."""

    seed: int
    width_px: int
    height_px: int
    pixel_size_x_um: float
    pixel_size_y_um: float
    channel_names: tuple[str, ...]
    dtype: str
    tissue: Blob
    tumour: Blob
    tumour_holes: tuple[Blob, ...]
    tls: tuple[SyntheticTLS, ...]
    aggregates: tuple[Blob, ...]
    infiltrates: tuple[Blob, ...]
    debris: tuple[Blob, ...]
    field_um: tuple[float, float] = (930.0, 700.0)  # one scanner field of view (w, h)
    noise: float = 1.0
    margin_um: float = 500.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.channel_names), self.height_px, self.width_px


# -- scene construction -----------------------------------------------------------------------


def _harmonics(rng: np.random.Generator, amplitude: float, orders=(2, 3, 4, 5)):
    return tuple(
        (int(k), float(rng.uniform(0, amplitude) / (k - 1)), float(rng.uniform(0, 2 * np.pi)))
        for k in orders
    )


def make_scene(
    *,
    seed: int = 0,
    width_um: float = 4000.0,
    height_um: float = 3000.0,
    pixel_size_um: float = 1.0,
    pixel_size_y_um: float | None = None,
    tls_counts: tuple[int, int, int] = (5, 3, 2),
    tls_radius_um: tuple[float, float] = (55.0, 130.0),
    dtype: str = "uint16",
    channels: Sequence[str] = DEFAULT_PANEL,
    extra_channels: Sequence[str] = (),
    shuffle_channels: bool = False,
    n_aggregates: int = 6,
    n_infiltrates: int = 3,
    n_debris: int = 8,
    noise: float = 1.0,
) -> Scene:
    """Lay out a random but reproducible tissue section.

    ``tls_counts`` asks for (intratumoral, peritumoral, distal) TLS; as many are
    placed as fit without overlap (the truth records what was placed).
    """
    if dtype not in DTYPE_SCALE:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_SCALE)}, got {dtype!r}")
    if width_um <= 0 or height_um <= 0 or pixel_size_um <= 0:
        raise ValueError("width_um, height_um and pixel_size_um must be positive")
    rng = np.random.default_rng(seed)
    pixel_size_y_um = pixel_size_y_um or pixel_size_um
    names = list(channels) + [c for c in extra_channels if c not in channels]
    if shuffle_channels:
        names = [names[i] for i in rng.permutation(len(names))]

    cx, cy = width_um / 2, height_um / 2
    tissue = Blob(cx, cy, 0.45 * width_um, 0.44 * height_um, _harmonics(rng, 0.10))
    for _ in range(200):  # tumour bed well inside the tissue, off-centre
        tumour = Blob(
            cx + rng.uniform(-0.08, 0.08) * width_um,
            cy + rng.uniform(-0.08, 0.08) * height_um,
            rng.uniform(0.20, 0.26) * width_um,
            rng.uniform(0.22, 0.28) * height_um,
            _harmonics(rng, 0.12),
        )
        xs, ys = tumour.outline_um(512)
        if np.all(tissue.contains(xs, ys, grow_um=-150)):
            break
    placed: list[tuple[float, float, float]] = []  # (x, y, keep-out radius)

    def free(x, y, radius):
        return all(math.hypot(x - px, y - py) > radius + pr for px, py, pr in placed)

    def in_tissue(x, y, radius):
        return bool(tissue.contains(x, y, grow_um=-(radius + 40))) and tissue.distance_to_outline_um(x, y) > radius + 40

    def sample_point(radius, where, tries=400):
        for _ in range(tries):
            x, y = rng.uniform(0, width_um), rng.uniform(0, height_um)
            if not in_tissue(x, y, radius) or not free(x, y, radius + 40):
                continue
            inside = bool(tumour.contains(x, y))
            border = tumour.distance_to_outline_um(x, y)
            if where(inside, border):
                return x, y
        return None

    tls: list[SyntheticTLS] = []
    rules = {
        "intratumoral": lambda r: (lambda inside, d: inside and d > r + 100),
        "peritumoral": lambda r: (lambda inside, d: not inside and r + 45 < d < 430),
        "distal": lambda r: (lambda inside, d: not inside and d > 680),
    }
    stage_cycle = list(rng.permutation(np.resize(np.arange(3), sum(tls_counts))))
    for location, count in zip(rules, tls_counts):
        for _ in range(count):
            radius = float(rng.uniform(*tls_radius_um))
            rim = 25.0
            point = sample_point(radius + rim, rules[location](radius + rim))
            if point is None:
                continue
            stage = SILINA_STAGES[int(stage_cycle.pop())]
            zone = Blob(point[0], point[1], radius, radius * rng.uniform(0.85, 1.0), _harmonics(rng, 0.08))
            placed.append((point[0], point[1], radius + rim + 30))
            tls.append(
                SyntheticTLS(len(tls) + 1, zone, rim, stage, location, tuple(rng.uniform(0, 2 * np.pi, 6)))
            )

    def decoys(count, radius_range, where=lambda inside, d: True, keep_out=40.0):
        blobs = []
        for _ in range(count):
            radius = float(rng.uniform(*radius_range))
            point = sample_point(radius, where)
            if point is None:
                continue
            placed.append((point[0], point[1], radius + keep_out))
            blobs.append(Blob(point[0], point[1], radius, radius * rng.uniform(0.75, 1.0), _harmonics(rng, 0.15)))
        return tuple(blobs)

    # stroma and vessels enclosed by the tumour bed (a thick tumour rim keeps them enclosed)
    holes = []
    for _ in range(4):
        radius = float(rng.uniform(40.0, 110.0))
        point = sample_point(radius, lambda inside, d, r=radius: inside and d > r + 120)
        if point is not None:
            placed.append((point[0], point[1], radius + 20))
            holes.append(Blob(point[0], point[1], radius, radius * rng.uniform(0.75, 1.0), _harmonics(rng, 0.15)))
    holes = tuple(holes)
    aggregates = decoys(n_aggregates, (14.0, 26.0))
    infiltrates = decoys(n_infiltrates, (110.0, 200.0))
    debris = list(decoys(n_debris - n_debris // 4, (6.0, 20.0), keep_out=10.0))
    debris += list(decoys(n_debris // 4, (36.0, 46.0), keep_out=20.0))  # TLS-sized: must still be rejected
    for item in tls:  # debris inside non-mature follicles must not make them mature
        if item.stage == "primary" and len(debris) < n_debris + 3:
            z = item.zone
            debris.append(Blob(z.x_um + 0.3 * z.radius_x_um, z.y_um, 9.0, 8.0, ()))
    return Scene(
        seed=seed,
        width_px=int(round(width_um / pixel_size_um)),
        height_px=int(round(height_um / pixel_size_y_um)),
        pixel_size_x_um=float(pixel_size_um),
        pixel_size_y_um=float(pixel_size_y_um),
        channel_names=tuple(names),
        dtype=dtype,
        tissue=tissue,
        tumour=tumour,
        tumour_holes=holes,
        tls=tuple(tls),
        aggregates=aggregates,
        infiltrates=infiltrates,
        debris=tuple(debris),
        noise=float(noise),
    )


# -- cells ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cells:
    x_um: np.ndarray
    y_um: np.ndarray
    radius_um: np.ndarray
    kind: np.ndarray  # OTHER, TUMOUR, B_CELL, T_CELL
    cd8: np.ndarray
    cd68: np.ndarray
    cd23: np.ndarray
    brightness: np.ndarray

    def __len__(self) -> int:
        return int(self.x_um.size)

    def subset(self, keep: np.ndarray) -> Cells:
        return Cells(**{name: getattr(self, name)[keep] for name in self.__dataclass_fields__})


@functools.lru_cache(maxsize=512)
def _cell_block(scene: Scene, block_y: int, block_x: int) -> Cells:
    """All cells of one block of the nucleus lattice; deterministic per (seed, block)."""
    rng = np.random.default_rng([scene.seed, 101, block_y, block_x])
    n = CELL_BLOCK
    iy, ix = np.mgrid[0:n, 0:n]
    x = (block_x * n + ix.ravel() + 0.5 + rng.uniform(-0.35, 0.35, n * n)) * LATTICE_UM
    y = (block_y * n + iy.ravel() + 0.5 + rng.uniform(-0.35, 0.35, n * n)) * LATTICE_UM
    keep_draw = rng.random(n * n)
    type_draw = rng.random(n * n)
    sub_draw = rng.random(n * n)
    radius = rng.uniform(2.6, 3.5, n * n)
    brightness = rng.lognormal(0.0, 0.18, n * n)

    # (keep probability, P(B), P(T), P(tumour)) per region; later regions override earlier
    keep = np.zeros(n * n)
    p_b = np.zeros(n * n)
    p_t = np.zeros(n * n)
    p_tumour = np.zeros(n * n)

    def assign(mask, k, b, t, tumour=0.0):
        keep[mask], p_b[mask], p_t[mask], p_tumour[mask] = k, b, t, tumour

    assign(scene.tissue.contains(x, y), 0.30, 0.01, 0.06)
    assign(scene.tumour.contains(x, y), 0.55, 0.004, 0.03, 0.85)
    for hole in scene.tumour_holes:
        assign(hole.contains(x, y), 0.12, 0.01, 0.04)
    # infiltrates inside the tumour bed stay mixed with tumour cells (the bed is unbroken)
    for blob in scene.infiltrates:
        inside = blob.contains(x, y)
        assign(inside, np.maximum(keep[inside], 0.45), 0.15, 0.12, 0.8 * p_tumour[inside])
    for blob in scene.aggregates:
        assign(blob.contains(x, y), 1.0, 0.85, 0.08)
    for item in scene.tls:
        assign(item.zone.contains(x, y, grow_um=item.rim_um), 0.9, 0.08, 0.70)
        assign(item.zone.contains(x, y), 1.0, 0.85, 0.10)
    keep = (keep_draw < keep) & scene.tissue.contains(x, y)
    kind = np.full(n * n, OTHER, dtype=np.int8)
    kind[type_draw < p_tumour] = TUMOUR
    kind[(type_draw >= p_tumour) & (type_draw < p_tumour + p_b)] = B_CELL
    t_low = p_tumour + p_b
    kind[(type_draw >= t_low) & (type_draw < t_low + p_t)] = T_CELL
    cells = Cells(
        x_um=x,
        y_um=y,
        radius_um=radius,
        kind=kind,
        cd8=(kind == T_CELL) & (sub_draw < 0.4),
        cd68=(kind == OTHER) & (sub_draw < 0.3),
        cd23=(kind == B_CELL) & (sub_draw < 0.03),  # scattered CD23+ B cells, not a network
        brightness=brightness,
    )
    return cells.subset(keep)


def _cells_in(scene: Scene, x0_um, y0_um, x1_um, y1_um) -> Cells:
    span = CELL_BLOCK * LATTICE_UM
    blocks = [
        _cell_block(scene, by, bx)
        for by in range(max(0, int(y0_um // span)), int(y1_um // span) + 1)
        for bx in range(max(0, int(x0_um // span)), int(x1_um // span) + 1)
    ]
    merged = Cells(**{
        name: np.concatenate([getattr(b, name) for b in blocks]) for name in Cells.__dataclass_fields__
    })
    inside = (merged.x_um >= x0_um) & (merged.x_um < x1_um) & (merged.y_um >= y0_um) & (merged.y_um < y1_um)
    return merged.subset(inside)


def all_cells(scene: Scene) -> Cells:
    """Every cell centred on the slide (for truth counts)."""
    return _cells_in(scene, 0, 0, scene.width_px * scene.pixel_size_x_um, scene.height_px * scene.pixel_size_y_um)


# -- rendering --------------------------------------------------------------------------------


def _marker_amplitudes(cells: Cells, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """(inside nucleus, in membrane ring) signal of ``channel`` per cell, linear units."""
    zero = np.zeros(len(cells))
    b = cells.brightness
    if channel == "DAPI":
        return 0.45 * b, zero
    if channel == "TFE3":
        return np.where(cells.kind == TUMOUR, 0.55 * b, 0.0), zero
    membrane = {
        "CD20": cells.kind == B_CELL,
        "CD3": cells.kind == T_CELL,
        "CD8": cells.cd8,
        "CD23": cells.cd23,
        "CD68": cells.cd68,
    }.get(channel)
    if membrane is not None:
        ring = np.where(membrane, 0.5 * b, 0.0)
        return 0.25 * ring, ring
    if channel == "CD21":  # B cells carry a little CR2; the FDC network is far brighter
        ring = np.where(cells.kind == B_CELL, 0.06 * b, 0.0)
        return 0.5 * ring, ring
    return zero, zero


def _stamp(cells: Cells, scene: Scene, y0: int, x0: int, shape: tuple[int, int]):
    """Label images (nucleus id, whole-cell id) of the block; each pixel goes to its nearest cell."""
    px, py = scene.pixel_size_x_um, scene.pixel_size_y_um
    nucleus = np.full(shape, -1, dtype=np.int32)
    body = np.full(shape, -1, dtype=np.int32)
    if len(cells) == 0:
        return nucleus, body
    reach = float(cells.radius_um.max()) + MEMBRANE_UM
    ry, rx = math.ceil(reach / py), math.ceil(reach / px)
    oy, ox = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    oy, ox = oy.ravel(), ox.ravel()
    cy = cells.y_um / py - 0.5 - y0  # cell centre in block pixel coordinates
    cx = cells.x_um / px - 0.5 - x0
    iy = np.rint(cy)[:, None].astype(np.int64) + oy[None, :]
    ix = np.rint(cx)[:, None].astype(np.int64) + ox[None, :]
    dist = np.hypot((iy - cy[:, None]) * py, (ix - cx[:, None]) * px)
    ok = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1]) & (dist <= cells.radius_um[:, None] + MEMBRANE_UM)
    cell_index = np.broadcast_to(np.arange(len(cells))[:, None], ok.shape)[ok]
    flat = (iy * shape[1] + ix)[ok]
    dist = dist[ok]
    order = np.lexsort((cell_index, dist, flat))  # nearest cell wins, ties by index
    flat, cell_index, dist = flat[order], cell_index[order], dist[order]
    first = np.ones(flat.size, dtype=bool)
    first[1:] = flat[1:] != flat[:-1]
    flat, cell_index, dist = flat[first], cell_index[first], dist[first]
    body.ravel()[flat] = cell_index
    in_nucleus = dist <= cells.radius_um[cell_index]
    nucleus.ravel()[flat[in_nucleus]] = cell_index[in_nucleus]
    return nucleus, body


def _network(x_um, y_um, phases: Sequence[float], period_um: float = 14.0) -> np.ndarray:
    """A connected filament web (0/1): the zero set of three crossed plane waves, thickened."""
    k = 2 * np.pi / period_um
    total = np.zeros(np.broadcast(x_um, y_um).shape)
    for j in range(3):
        angle = phases[j] + j * np.pi / 3
        total += np.sin(k * (np.cos(angle) * x_um + np.sin(angle) * y_um) + phases[j + 3])
    return (np.abs(total) < 0.6).astype(np.float32)


def _field_gain(scene: Scene, x_um, y_um) -> np.ndarray:
    """Uneven illumination times a gain step per stitched scanner field."""
    fw, fh = scene.field_um
    fx = np.floor(x_um / fw).astype(np.int64)
    fy = np.floor(y_um / fh).astype(np.int64)
    n_fx = int(scene.width_px * scene.pixel_size_x_um // fw) + 2
    n_fy = int(scene.height_px * scene.pixel_size_y_um // fh) + 2
    gains = np.random.default_rng([scene.seed, 17]).uniform(0.88, 1.12, (n_fy, n_fx))
    field = gains[np.clip(fy, 0, n_fy - 1), np.clip(fx, 0, n_fx - 1)]
    # vignetting inside each field plus a slow gradient across the slide
    u = (x_um % fw) / fw - 0.5
    v = (y_um % fh) / fh - 0.5
    vignette = 1.0 - 0.12 * (u**2 + v**2) * 2
    width_um = scene.width_px * scene.pixel_size_x_um
    gradient = 1.0 + 0.10 * np.sin(2 * np.pi * x_um / max(width_um, 1.0) + 0.7)
    return (field * vignette * gradient).astype(np.float32)


def render_block(scene: Scene, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Render level-0 pixels [y0:y1, x0:x1] of every channel, as (C, y1-y0, x1-x0) in scene.dtype.

    The block must lie within one RENDER_BLOCK grid cell (noise is seeded per grid cell).
    """
    shape = (y1 - y0, x1 - x0)
    px, py = scene.pixel_size_x_um, scene.pixel_size_y_um
    ys = (np.arange(y0, y1) + 0.5)[:, None] * py
    xs = (np.arange(x0, x1) + 0.5)[None, :] * px
    reach = 12.0
    cells = _cells_in(scene, x0 * px - reach, y0 * py - reach, x1 * px + reach, y1 * py + reach)
    nucleus, body = _stamp(cells, scene, y0, x0, shape)
    ring = (body >= 0) & (nucleus < 0)
    tissue = scene.tissue.contains(xs, ys).astype(np.float32)
    debris = np.zeros(shape, np.float32)
    for blob in scene.debris:
        bx0, by0, bx1, by1 = blob.bbox_um()
        if bx1 < xs[0, 0] or bx0 > xs[0, -1] or by1 < ys[0, 0] or by0 > ys[-1, 0]:
            continue
        debris = np.maximum(debris, blob.contains(xs, ys) * (0.75 + 0.25 * np.cos(xs / 3.0) * np.sin(ys / 4.0)))
    fdc = np.zeros(shape, np.float32)
    germinal = np.zeros(shape, np.float32)
    for item in scene.tls:
        if item.silina_stage == "early":
            continue
        bx0, by0, bx1, by1 = item.zone.bbox_um()
        if bx1 < xs[0, 0] or bx0 > xs[0, -1] or by1 < ys[0, 0] or by0 > ys[-1, 0]:
            continue
        radius = item.zone.normalised_radius(xs, ys)
        web = _network(xs, ys, item.texture_phase)
        fdc = np.maximum(fdc, 0.45 * web * (radius <= 0.72))
        if item.silina_stage == "secondary_follicle":
            web2 = _network(xs + 3.0, ys - 2.0, item.texture_phase[::-1])
            germinal = np.maximum(germinal, 0.5 * web2 * (radius <= 0.5))
    gain = _field_gain(scene, xs, ys)
    scale = DTYPE_SCALE[scene.dtype]
    grid = (y0 // RENDER_BLOCK, x0 // RENDER_BLOCK)
    out = np.empty((len(scene.channel_names),) + shape, dtype=scene.dtype)
    for c, channel in enumerate(scene.channel_names):
        nuc_amp, ring_amp = _marker_amplitudes(cells, channel)
        signal = np.zeros(shape, np.float32)
        if len(cells):
            signal = np.where(nucleus >= 0, nuc_amp[nucleus], 0.0).astype(np.float32)
            signal += np.where(ring, ring_amp[body], 0.0).astype(np.float32)
        autofluorescence = 0.15 if channel == "Autofluorescence" else 0.035
        signal += autofluorescence * tissue
        if channel == "CD21":
            signal += fdc
        elif channel == "CD23":
            signal += germinal
        signal = np.maximum(signal, debris * (1.1 if channel == "Autofluorescence" else 0.9))
        signal = (signal + 0.02) * gain
        rng = np.random.default_rng([scene.seed, 7, c, grid[0], grid[1]])
        noise = rng.standard_normal((RENDER_BLOCK, RENDER_BLOCK), dtype=np.float32)
        oy, ox = y0 - grid[0] * RENDER_BLOCK, x0 - grid[1] * RENDER_BLOCK
        noise = noise[oy : oy + shape[0], ox : ox + shape[1]]
        signal += scene.noise * (0.010 + 0.05 * np.sqrt(signal)) * noise
        values = np.clip(signal * scale, 0, None)
        if scene.dtype != "float32":
            values = np.clip(np.rint(values), 0, np.iinfo(scene.dtype).max)
        out[c] = values
    return out


def _render_chunk(scene: Scene, block_info=None) -> np.ndarray:
    (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    return render_block(scene, y0, y1, x0, x1)


def render(scene: Scene) -> da.Array:
    """The level-0 image as a lazy (C, Y, X) dask array, one task per RENDER_BLOCK square."""
    c, h, w = scene.shape
    chunks = ((c,), _split(h), _split(w))
    return da.map_blocks(
        _render_chunk, scene, dtype=scene.dtype, chunks=chunks, meta=np.empty((0, 0, 0), scene.dtype)
    )


def _split(size: int) -> tuple[int, ...]:
    return tuple(min(RENDER_BLOCK, size - start) for start in range(0, size, RENDER_BLOCK))


# -- truth ------------------------------------------------------------------------------------


def truth(scene: Scene, *, counted_locations: Sequence[str] = ("intratumoral", "peritumoral")) -> dict[str, Any]:
    """Ground truth of the scene in physical units (JSON-ready)."""
    tumour_area_um2 = scene.tumour.area_um2()
    tls_rows = []
    for item in scene.tls:
        cx, cy = item.zone.centroid_um()
        tls_rows.append({
            "tls_id": item.tls_id,
            "centroid_x_um": round(cx, 3),
            "centroid_y_um": round(cy, 3),
            "area_um2": round(item.zone.area_um2(), 2),
            "stage": item.stage,
            "silina_stage": item.silina_stage,
            "location": item.location,
            "distance_to_tumour_border_um": round(scene.tumour.distance_to_outline_um(cx, cy), 2),
            "counted": item.location in counted_locations,
        })
    counted = [row for row in tls_rows if row["counted"]]
    cells = all_cells(scene)
    n_cells = len(cells)
    in_tumour = scene.tumour.contains(cells.x_um, cells.y_um)

    def blob_list(blobs):
        return [{"x_um": round(b.x_um, 2), "y_um": round(b.y_um, 2), "area_um2": round(b.area_um2(), 1)} for b in blobs]

    def count(mask):
        return int(np.count_nonzero(mask))

    return {
        "generator": "tlsquant.synthetic",
        "seed": scene.seed,
        "shape": list(scene.shape),
        "dtype": scene.dtype,
        "pixel_size_um": scene.pixel_size_x_um,
        "pixel_size_y_um": scene.pixel_size_y_um,
        "channel_names": list(scene.channel_names),
        "tissue_area_mm2": scene.tissue.area_um2() / 1e6,
        "tumour_area_mm2": tumour_area_um2 / 1e6,
        "margin_um": scene.margin_um,
        "counted_locations": list(counted_locations),
        "tls_count": len(tls_rows),
        "tls_counted": len(counted),
        "tls_mature_count": sum(row["stage"] == "mature" for row in tls_rows),
        "tls_primary_count": sum(row["stage"] == "primary" for row in tls_rows),
        "tls_density_per_mm2": len(counted) / (tumour_area_um2 / 1e6),
        "tls_area_pct": 100.0 * sum(row["area_um2"] for row in counted) / tumour_area_um2,
        "tls": tls_rows,
        "cells": {
            "total": n_cells,
            "in_tumour": count(in_tumour),
            "tumour_cells": count(cells.kind == TUMOUR),
            "cd20_positive": count(cells.kind == B_CELL),
            "cd3_positive": count(cells.kind == T_CELL),
            "cd8_positive": count(cells.cd8),
            "cd68_positive": count(cells.cd68),
            "cd23_positive_cells": count(cells.cd23),
            "cd20_pct": 100.0 * count(cells.kind == B_CELL) / max(n_cells, 1),
        },
        "decoys": {
            "small_aggregates": blob_list(scene.aggregates),
            "loose_infiltrates": blob_list(scene.infiltrates),
            "debris": blob_list(scene.debris),
            "tumour_holes": blob_list(scene.tumour_holes),
        },
    }


# -- writing ----------------------------------------------------------------------------------

FORMAT_SUFFIXES = {".ome.tiff": "ome-tiff", ".ome.tif": "ome-tiff", ".qptiff": "qptiff", ".ome.zarr": "ome-zarr"}


def format_for(path: str | Path) -> str:
    """The output format implied by a file name (.ome.tiff, .qptiff or .ome.zarr)."""
    name = str(path).lower().rstrip("/")
    for suffix, fmt in FORMAT_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: cannot tell the format; use a name ending in .ome.tiff, .qptiff or .ome.zarr")


def truth_path(path: str | Path) -> Path:
    """Where the truth JSON of a written slide lives: beside it, ``<slide id>.truth.json``."""
    from .slide import slide_id_from_name

    path = Path(path)
    return path.with_name(f"{slide_id_from_name(path.name)}.truth.json")


def write_slide(
    scene: Scene,
    path: str | Path,
    *,
    tile: int = 256,
    compression: str | None = None,
    include_biomarker: bool = True,
    pyramid_min_size: int = 256,
    workdir: str | Path | None = None,
) -> tuple[Path, Path]:
    """Render ``scene`` and write it as the format its name implies, plus the truth JSON.

    Small slides are rendered in memory; large ones are rendered once to a temporary
    zarr store in ``workdir`` (default: beside the output) and written band by band.
    Returns (slide path, truth path).
    """
    import shutil
    import tempfile

    from .io.writers import build_pyramid, write_ome_tiff, write_ome_zarr, write_qptiff

    path = Path(path)
    fmt = format_for(path)
    level0 = render(scene)
    scratch = None
    if level0.size > 150_000_000:
        scratch = Path(tempfile.mkdtemp(prefix=".synth-", dir=workdir or path.parent))
        level0 = level0.rechunk((1, 1024, 1024))
        level0.to_zarr(str(scratch / "level0.zarr"))
        level0 = da.from_zarr(str(scratch / "level0.zarr"))
    else:
        level0 = level0.compute()
    try:
        levels = build_pyramid(level0, min_size=pyramid_min_size)
        pixel_size = (scene.pixel_size_x_um, scene.pixel_size_y_um)
        names = list(scene.channel_names)
        if fmt == "ome-tiff":
            write_ome_tiff(path, levels, channel_names=names, pixel_size_um=pixel_size, tile=tile,
                           compression=compression or "zlib")
        elif fmt == "qptiff":
            write_qptiff(path, levels, channel_names=names, pixel_size_um=pixel_size, tile=tile,
                         compression=compression or "lzw", include_biomarker=include_biomarker,
                         fluorophores=[FLUOROPHORES.get(n, n) for n in names])
        else:
            write_ome_zarr(path, levels, channel_names=names, pixel_size_um=pixel_size, chunk=tile)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    truth_file = truth_path(path)
    truth_file.write_text(json.dumps(truth(scene), indent=2))
    return path, truth_file


__all__ = [
    "DEFAULT_PANEL",
    "EXTRA_CHANNELS",
    "Blob",
    "Cells",
    "Scene",
    "SyntheticTLS",
    "all_cells",
    "make_scene",
    "render",
    "render_block",
    "truth",
    "truth_path",
    "write_slide",
]
