"""Seeded synthetic multiplex slides with known truth.

A :class:`Scene` is a small, hashable description of a tissue section: a tissue
outline, a tumour bed (with stromal holes), TLS of chosen sizes and stages, and
decoys that a TLS detector must reject (small lymphoid aggregates, loose B-cell
infiltrates, autofluorescent debris). Pixels are rendered block by block from the
scene, so a slide of any size can be written without holding it in memory, and the
same scene always renders the same pixels whatever the block order or worker count.

Geometry is in µm with the origin at the top-left corner of level 0, x right, y down.

Realistic mode
--------------
``make_scene(..., realism=Realism())`` adds what real FFPE mIF scans show and a clean
synthetic slide lacks. Each phenomenon has its own strength (0 = off, 1 = ordinary,
more = stronger); levels are relative to ``POSITIVE_PEAK``, the membrane signal of a
typical positive cell:

- ``autofluorescence``: tissue AF in every channel, by emission band
  (``REALISTIC_CHANNELS``: Opal 480-570 0.28-0.40, red and far-red 0.08-0.15, DAPI 0.15,
  an unmixed AF channel 1.0, unknown channels 0.22), varying smoothly by up to ±40 % over
  400-2000 µm, 1.5× in collagen-rich stroma (tissue outside the tumour bed and lymphoid
  zones, 10-20 µm transitions) and streaked by fibres (about ±20 %).
- ``edge_rim``: AF doubled in a rim about 15 µm wide along the tissue edge.
- ``illumination``: a smooth ±15 % fall-off across the slide on top of the clean renderer's
  ±10 % gradient and ±12 % scanner-field steps (about ±25 % in all).
- ``dark_offset``: a camera offset of 0.03 × peak on every pixel, glass included.
- ``stain_gain``: one gain per stained channel, log-uniform in [0.5, 2] (specific signal only).
- ``cell_brightness``: per-cell log-normal brightness with σ 0.35 instead of 0.18.
- ``crosstalk``: 8 % of each channel's specific signal appears in its longer-wavelength
  neighbour and 4 % in its shorter one (emission order of ``REALISTIC_CHANNELS``, among the
  channels present: CD21 → CD23, TFE3 → CD20, DAPI → CD3 ...; at most 10 %).
- ``rbc``: capillaries cut lengthwise, strings of 7 µm biconcave red blood cells 150-600 µm
  long and 1-3 cells wide, in stroma or tumour and ≥ 30 µm from any TLS. They hide the tissue
  beneath (the truth still counts the few cells there, see ``hidden_cells``) and have no nucleus:
  DAPI 0.08, 1.2-2 × peak in Opal 480-570, weak in the red, 2.5 × peak in an AF channel.
- ``folds``: bands 60-200 µm wide where the whole tissue signal, AF included, is 1.5-2×.
- ``blur``: out-of-focus patches 300-800 µm across (gaussian σ 1.5-3 µm, before noise).
- ``debris``: small specks 4 × peak bright in every channel.

Artefact counts scale with strength and tissue area (vessels 1, folds and blur patches 0.25,
specks 1.5 per mm² of tissue at strength 1, at least one each when switched on). Artefacts are
placed with their own random stream, so a seed gives the same tissue, tumour, TLS and cells
with or without realism, and `truth` keeps every key and value, adding ``realism`` (strengths,
stain gains, crosstalk), ``artefacts`` and ``artefact_area_mm2``. ``make_scene(tissue_scale=0.7)``
shrinks the section so that glass covers most of the slide. Blurred blocks are rendered with a
halo, so any block still renders exactly the pixels of the whole image.
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .config import Location

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
LATTICE_JITTER = 0.35  # nuclei lie within ± this many lattice spacings of their site's centre
CELL_BLOCK = 48  # lattice sites per cell block side
MEMBRANE_UM = 1.5  # membrane ring width around the nucleus
DTYPE_SCALE = {"uint16": 4000.0, "uint8": 180.0, "float32": 10.0}
GLASS_LEVEL = 0.02  # light from bare glass, before illumination gain

# realistic mode: levels relative to POSITIVE_PEAK, the membrane ring of a positive cell
POSITIVE_PEAK = 0.5
REALISTIC_UINT8_SCALE = 150.0  # leaves headroom for AF + stain gain 2 below 255
# name: (fluorophore, tissue AF level, red blood cell level), in emission order (crosstalk neighbours)
REALISTIC_CHANNELS = {
    "DAPI": ("DAPI", 0.15, 0.08),  # no nucleus: red blood cells show only faint AF
    "CD3": ("Opal 480", 0.30, 1.6),
    "TFE3": ("Opal 520", 0.40, 2.0),
    "CD20": ("Opal 540", 0.38, 1.8),
    "CD8": ("Opal 570", 0.28, 1.2),
    "CD21": ("Opal 620", 0.15, 0.35),
    "CD23": ("Opal 650", 0.12, 0.25),
    "CD68": ("Opal 690", 0.08, 0.15),
}
AF_CHANNEL_NAMES = ("autofluorescence", "af", "sample af")
AF_CHANNEL_OPTICS = ("Sample AF", 1.0, 2.5)
UNKNOWN_CHANNEL_AF, UNKNOWN_CHANNEL_RBC = 0.22, 0.8
STROMA_AF = 1.5  # collagen-rich stroma relative to cellular tissue
EDGE_RIM_UM = 15.0
ILLUMINATION_FALLOFF = 0.15
DARK_OFFSET = 0.03 * POSITIVE_PEAK
STAIN_GAIN_RANGE = (0.5, 2.0)
CELL_SIGMA_CLEAN, CELL_SIGMA_REALISTIC = 0.18, 0.35
CROSSTALK_NEXT, CROSSTALK_MAX = 0.08, 0.10  # into the longer-wavelength neighbour; half into the shorter
RBC_RADIUS_UM = 3.5
SPECK_LEVEL = 4.0 * POSITIVE_PEAK
ARTEFACTS_PER_MM2 = {"rbc": 1.0, "folds": 0.25, "blur": 0.25, "debris": 1.5}

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

    def _uv(self, x_um, y_um) -> tuple[np.ndarray, np.ndarray]:
        u = (np.asarray(x_um, dtype=np.float64) - self.x_um) / self.radius_x_um
        v = (np.asarray(y_um, dtype=np.float64) - self.y_um) / self.radius_y_um
        return u, v

    def _polar(self, x_um, y_um):
        u, v = self._uv(x_um, y_um)
        return np.hypot(u, v), np.arctan2(v, u)

    def _rho_band(self, u, v, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
        """(below, band) masks of points (u, v): rho surely < R + low, and rho perhaps in [R + low, R + high].

        R is relative_radius(θ); every other point surely has rho > R + high. Decided from u² + v² and
        bounds of R (over all angles, then per angular sector), far cheaper over a block than hypot and
        the harmonics: callers evaluate those in the band only, elementwise, so exactly as over the block.
        """
        r2 = u * u + v * v
        spread = sum(abs(a) for _, a, _ in self.harmonics) + 1e-9  # |R - 1| <= spread, with slack for rounding
        below = r2 < _squared_bound(1 - spread + low)
        band = ~below & (r2 <= _squared_bound(1 + spread + high))
        if self.harmonics and band.any():
            middle, wobble = _outline_sectors(self)
            ub, vb = (np.broadcast_to(a, band.shape)[band] for a in (u, v))
            sector = ((np.arctan2(vb, ub) + np.pi) * (OUTLINE_SECTORS / (2 * np.pi))).astype(np.intp)
            np.minimum(sector, OUTLINE_SECTORS - 1, out=sector)
            r2 = r2[band]
            surely_below = r2 < _squared_bound(middle - wobble + low)[sector]
            undecided = ~surely_below & (r2 <= _squared_bound(middle + wobble + high)[sector])
            below[band] = surely_below
            band[band.copy()] = undecided
        return below, band

    def contains(self, x_um, y_um, *, grow_um: float = 0.0) -> np.ndarray:
        """Whether points lie inside the blob, optionally grown outwards by about ``grow_um``."""
        u, v = self._uv(x_um, y_um)
        grow = grow_um / min(self.radius_x_um, self.radius_y_um)
        if np.broadcast(u, v).size < FEW_POINTS:
            return np.hypot(u, v) <= self.relative_radius(np.arctan2(v, u)) + grow
        inside, band = self._rho_band(u, v, grow, grow)
        if band.any():  # the same test where it is not decided already
            u, v = (np.broadcast_to(a, band.shape)[band] for a in (u, v))
            inside[band] = np.hypot(u, v) <= self.relative_radius(np.arctan2(v, u)) + grow
        return inside

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
        xs, ys = _outline_points(self)
        return float(np.min(np.hypot(xs - x_um, ys - y_um)))

    def bbox_um(self, grow_um: float = 0.0) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) enclosing the blob grown by ``grow_um``."""
        extent = 1 + sum(abs(a) for _, a, _ in self.harmonics)
        gx = self.radius_x_um * extent + grow_um
        gy = self.radius_y_um * extent + grow_um
        return self.x_um - gx, self.y_um - gy, self.x_um + gx, self.y_um + gy


OUTLINE_SECTORS = 2048
FEW_POINTS = 256  # below this many points, outline tests skip the banding (its overhead would dominate)


def _squared_bound(bound):
    """bound² where bound > 0, else -1: for comparing u² + v² with a bound on rho (nothing is below a bound <= 0)."""
    return np.where(np.asarray(bound) > 0, np.square(bound), -1.0)


@functools.lru_cache(maxsize=256)
def _outline_sectors(blob: Blob) -> tuple[np.ndarray, float]:
    """relative_radius at the middle of each of OUTLINE_SECTORS equal sectors of angle, and how far (at most)
    it strays from that value within two sectors' width: |dR/dθ| <= Σ |amplitude| × order."""
    width = 2 * np.pi / OUTLINE_SECTORS
    middle = blob.relative_radius(-np.pi + (np.arange(OUTLINE_SECTORS) + 0.5) * width)
    slope = sum(abs(a) * order for order, a, _ in blob.harmonics)
    middle.flags.writeable = False
    return middle, 2 * width * slope + 1e-9


@functools.lru_cache(maxsize=64)
def _outline_points(blob: Blob) -> tuple[np.ndarray, np.ndarray]:
    """``blob.outline_um()``, computed once per blob: placing a scene's TLS and decoys measures thousands of
    distances to the tissue and tumour outlines."""
    xs, ys = blob.outline_um()
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


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
class Realism:
    """Strengths of the phenomena of real mIF scans (0 = off, 1 = ordinary); see the module docstring.

    ``Realism()`` switches everything on at ordinary strength, ``Realism.only("rbc")`` one
    phenomenon alone and ``Realism.off()`` none (a realistic scene that renders almost like a
    clean one).
    """

    autofluorescence: float = 1.0  # tissue AF by emission band, smooth variation, stroma, fibres
    edge_rim: float = 1.0  # AF rim along the tissue edge (1 = twice the AF)
    illumination: float = 1.0  # slide-wide fall-off (1 = ±15 % more)
    dark_offset: float = 1.0  # camera offset (1 = 0.03 × peak)
    stain_gain: float = 1.0  # per-channel gain (1 = log-uniform in [0.5, 2])
    cell_brightness: float = 1.0  # per-cell log-normal σ (0 = 0.18, 1 = 0.35)
    crosstalk: float = 1.0  # fraction into spectral neighbours (1 = 8 % next, 4 % previous)
    rbc: float = 1.0  # red blood cell strings (count scales with strength)
    folds: float = 1.0  # tissue folds (count)
    blur: float = 1.0  # out-of-focus patches (count)
    debris: float = 1.0  # bright specks (count)

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Realism.{field.name} must be a finite strength >= 0, got {value!r}")
            object.__setattr__(self, field.name, float(value))

    @classmethod
    def default(cls) -> Realism:
        """Every phenomenon at ordinary strength."""
        return cls()

    @classmethod
    def off(cls) -> Realism:
        """Every phenomenon off."""
        return cls(**dict.fromkeys(cls.names(), 0.0))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in fields(cls))

    @classmethod
    def only(cls, *names: str, strength: float = 1.0) -> Realism:
        """The named phenomena at ``strength``, everything else off."""
        unknown = [name for name in names if name not in cls.names()]
        if unknown or not names:
            raise ValueError(f"Realism.only expects phenomena among {', '.join(cls.names())}, got {names!r}")
        return replace(cls.off(), **dict.fromkeys(names, strength))

    @classmethod
    def parse(cls, text: str, base: Realism | None = None) -> Realism:
        """``"folds=2,blur=0"`` applied to ``base`` (default: everything on); ``all=X`` sets every strength."""
        realism = base or cls()
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            try:
                strength = float(value)
            except ValueError:
                strength = None
            if not sep or strength is None or key not in cls.names() + ("all",):
                raise ValueError(f"realism settings are NAME=STRENGTH with NAME among all, {', '.join(cls.names())}; got {item!r}")
            names = cls.names() if key == "all" else (key,)
            realism = replace(realism, **dict.fromkeys(names, strength))
        return realism


@dataclass(frozen=True)
class Vessel:
    """A capillary cut lengthwise: rows of red blood cells along a path of constant curvature."""

    x_um: float  # start of the path
    y_um: float
    angle: float  # initial heading, radians
    bend_per_um: float  # change of heading per µm of path
    length_um: float
    width_cells: int
    seed: int

    def discs_um(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres of its red blood cells."""
        return _vessel_discs(self)


@dataclass(frozen=True)
class Fold:
    """A tissue fold: a band (segment thickened to ``width_um``) where the tissue signal is ``gain``×."""

    x0_um: float
    y0_um: float
    x1_um: float
    y1_um: float
    width_um: float
    gain: float

    def _distance_um(self, x_um, y_um) -> np.ndarray:
        dx, dy = self.x1_um - self.x0_um, self.y1_um - self.y0_um
        t = ((x_um - self.x0_um) * dx + (y_um - self.y0_um) * dy) / max(dx * dx + dy * dy, 1e-12)
        t = np.clip(t, 0.0, 1.0)
        return np.hypot(x_um - (self.x0_um + t * dx), y_um - (self.y0_um + t * dy))

    def contains(self, x_um, y_um) -> np.ndarray:
        return self._distance_um(x_um, y_um) <= self.width_um / 2

    def band(self, x_um, y_um, edge_um: float = 2.0) -> np.ndarray:
        """1 inside, 0 outside, a linear ramp ``edge_um`` wide across the edge."""
        return np.clip((self.width_um / 2 - self._distance_um(x_um, y_um)) / edge_um + 0.5, 0.0, 1.0)

    def bbox_um(self, grow_um: float = 0.0) -> tuple[float, float, float, float]:
        g = self.width_um / 2 + grow_um
        return (min(self.x0_um, self.x1_um) - g, min(self.y0_um, self.y1_um) - g,
                max(self.x0_um, self.x1_um) + g, max(self.y0_um, self.y1_um) + g)


@dataclass(frozen=True)
class BlurPatch:
    """An out-of-focus region: the image inside ``zone`` is blurred with a gaussian of ``sigma_um``."""

    zone: Blob
    sigma_um: float


@dataclass(frozen=True)
class Artefacts:
    """Artefacts of realistic mode (empty for a clean scene)."""

    vessels: tuple[Vessel, ...] = ()
    folds: tuple[Fold, ...] = ()
    blur_patches: tuple[BlurPatch, ...] = ()
    debris: tuple[Blob, ...] = ()  # bright specks, beyond the decoy debris of the clean scene


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
    realism: Realism | None = None  # None: the clean renderer
    artefacts: Artefacts = Artefacts()

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
    realism: Realism | None = None,
    tissue_scale: float = 1.0,
) -> Scene:
    """Lay out a random but reproducible tissue section.

    ``tls_counts`` asks for (intratumoral, peritumoral, distal) TLS; as many are
    placed as fit without overlap (the truth records what was placed). ``realism``
    renders it like a real scan (see `Realism`) without changing the tissue, tumour,
    TLS or cells; ``tissue_scale`` < 1 shrinks the section (tumour included) within
    the slide so that more of it is glass.
    """
    if dtype not in DTYPE_SCALE:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_SCALE)}, got {dtype!r}")
    if width_um <= 0 or height_um <= 0 or pixel_size_um <= 0:
        raise ValueError("width_um, height_um and pixel_size_um must be positive")
    if not 0 < tissue_scale <= 1.1:
        raise ValueError(f"tissue_scale must be in (0, 1.1], got {tissue_scale!r}")
    rng = np.random.default_rng(seed)
    pixel_size_y_um = pixel_size_y_um or pixel_size_um
    names = list(channels) + [c for c in extra_channels if c not in channels]
    if shuffle_channels:
        names = [names[i] for i in rng.permutation(len(names))]

    cx, cy = width_um / 2, height_um / 2
    tissue = Blob(cx, cy, 0.45 * width_um * tissue_scale, 0.44 * height_um * tissue_scale, _harmonics(rng, 0.10))
    for _ in range(200):  # tumour bed well inside the tissue, off-centre
        tumour = Blob(
            cx + rng.uniform(-0.08, 0.08) * width_um * tissue_scale,
            cy + rng.uniform(-0.08, 0.08) * height_um * tissue_scale,
            rng.uniform(0.20, 0.26) * width_um * tissue_scale,
            rng.uniform(0.22, 0.28) * height_um * tissue_scale,
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
    scene = Scene(
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
    return scene if realism is None else with_realism(scene, realism)


def with_realism(scene: Scene, realism: Realism | None) -> Scene:
    """The same section rendered realistically (or clean, for None): same tissue, TLS and cells, artefacts placed anew."""
    if realism is None:
        return replace(scene, realism=None, artefacts=Artefacts())
    return replace(scene, realism=realism, artefacts=_place_artefacts(scene.seed, realism, scene.tissue, scene.tls))


def _place_artefacts(seed: int, realism: Realism, tissue: Blob, tls: tuple[SyntheticTLS, ...]) -> Artefacts:
    """Vessels, folds, blur patches and specks, from their own random stream (the scene stays put)."""
    rng = np.random.default_rng([seed, 9001])
    tissue_mm2 = tissue.area_um2() / 1e6

    def count(strength, kind):
        return 0 if strength == 0 else max(1, int(round(strength * ARTEFACTS_PER_MM2[kind] * tissue_mm2)))

    def point_in_tissue(margin_um):
        x0, y0, x1, y1 = tissue.bbox_um()
        for _ in range(1000):
            x, y = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
            if tissue.contains(x, y, grow_um=-margin_um):
                return x, y
        return tissue.x_um, tissue.y_um

    def clear_of_tls(xs, ys, gap_um):
        return not any(np.any(item.zone.contains(xs, ys, grow_um=item.rim_um + gap_um)) for item in tls)

    vessels: list[Vessel] = []
    taken: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(count(realism.rbc, "rbc")):
        for _ in range(300):
            x, y = point_in_tissue(40.0)
            vessel = Vessel(x, y, float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(-1, 1) / 300),
                            float(rng.uniform(150, 600)), int(rng.choice([1, 2, 2, 3])), int(rng.integers(2**31)))
            xd, yd = vessel.discs_um()
            if (np.all(tissue.contains(xd, yd, grow_um=-15.0)) and clear_of_tls(xd, yd, 30.0 + RBC_RADIUS_UM)
                    and all(np.min(np.hypot(xd[:, None] - ox, yd[:, None] - oy)) > 25 for ox, oy in taken)):
                vessels.append(vessel)
                taken.append((xd, yd))
                break
    folds = []
    for _ in range(count(realism.folds, "folds")):
        x, y = point_in_tissue(60.0)
        angle = rng.uniform(0, np.pi)
        half = rng.uniform(0.25, 0.6) * min(tissue.radius_x_um, tissue.radius_y_um)
        dx, dy = half * math.cos(angle), half * math.sin(angle)
        folds.append(Fold(x - dx, y - dy, x + dx, y + dy, float(rng.uniform(60, 200)), float(rng.uniform(1.5, 2.0))))
    patches = []
    for _ in range(count(realism.blur, "blur")):
        x, y = point_in_tissue(100.0)
        radius = float(rng.uniform(150, 400))
        zone = Blob(x, y, radius, radius * rng.uniform(0.7, 1.0), _harmonics(rng, 0.10))
        patches.append(BlurPatch(zone, float(rng.uniform(1.5, 3.0))))
    specks = []
    for _ in range(count(realism.debris, "debris")):
        for _ in range(100):
            x, y = point_in_tissue(15.0)
            radius = float(rng.uniform(2.0, 6.0))
            if clear_of_tls(x, y, 10.0 + radius):
                specks.append(Blob(x, y, radius, radius * rng.uniform(0.7, 1.0)))
                break
    return Artefacts(tuple(vessels), tuple(folds), tuple(patches), tuple(specks))


@functools.lru_cache(maxsize=256)
def _vessel_discs(vessel: Vessel) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([vessel.seed, 31])
    spacing = 2 * RBC_RADIUS_UM - 0.5  # cells in a capillary touch and overlap a little
    t = np.arange(0.0, vessel.length_um, spacing)
    heading = vessel.angle + vessel.bend_per_um * t
    # integrate the heading along the path (midpoint rule, exact enough for gentle bends)
    step_x = np.cos(vessel.angle + vessel.bend_per_um * (t[:-1] + spacing / 2)) * spacing
    step_y = np.sin(vessel.angle + vessel.bend_per_um * (t[:-1] + spacing / 2)) * spacing
    path_x = vessel.x_um + np.concatenate([[0.0], np.cumsum(step_x)])
    path_y = vessel.y_um + np.concatenate([[0.0], np.cumsum(step_y)])
    across = (np.arange(vessel.width_cells) - (vessel.width_cells - 1) / 2) * 2 * RBC_RADIUS_UM
    x = path_x[:, None] - np.sin(heading)[:, None] * across[None, :]
    y = path_y[:, None] + np.cos(heading)[:, None] * across[None, :]
    x = x.ravel() + rng.uniform(-0.8, 0.8, x.size)
    y = y.ravel() + rng.uniform(-0.8, 0.8, y.size)
    keep = rng.random(x.size) < 0.9  # gaps in the string
    x, y = x[keep], y[keep]
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


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
    x = (block_x * n + ix.ravel() + 0.5 + rng.uniform(-LATTICE_JITTER, LATTICE_JITTER, n * n)) * LATTICE_UM
    y = (block_y * n + iy.ravel() + 0.5 + rng.uniform(-LATTICE_JITTER, LATTICE_JITTER, n * n)) * LATTICE_UM
    keep_draw = rng.random(n * n)
    type_draw = rng.random(n * n)
    sub_draw = rng.random(n * n)
    radius = rng.uniform(2.6, 3.5, n * n)
    brightness = rng.lognormal(0.0, CELL_SIGMA_CLEAN, n * n)
    if scene.realism is not None and scene.realism.cell_brightness > 0:
        # stretch the same draws: the random stream, hence every cell, stays as in the clean scene
        sigma = CELL_SIGMA_CLEAN + scene.realism.cell_brightness * (CELL_SIGMA_REALISTIC - CELL_SIGMA_CLEAN)
        brightness = brightness ** (sigma / CELL_SIGMA_CLEAN)

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


def _stamp(cells: Cells, scene: Scene, y0: int, x0: int, shape: tuple[int, int]) -> np.ndarray:
    """Cell label of each pixel of the block: i in the nucleus of cell i, n + i in its membrane ring, 2n in no cell.

    Each pixel goes to its nearest cell, ties to the lower index.
    """
    px, py = scene.pixel_size_x_um, scene.pixel_size_y_um
    h, w = shape
    n = len(cells)
    if n == 0:
        return np.zeros(shape, np.intp)
    reach = float(cells.radius_um.max()) + MEMBRANE_UM
    ry, rx = math.ceil(reach / py), math.ceil(reach / px)
    cy = cells.y_um / py - 0.5 - y0  # cell centre in block pixel coordinates
    cx = cells.x_um / px - 0.5 - x0
    # pixels within reach of each centre, as (cell, row offset) and (cell, column offset) factors
    iy = np.rint(cy).astype(np.int64)[:, None] + np.arange(-ry, ry + 1)[None, :]
    ix = np.rint(cx).astype(np.int64)[:, None] + np.arange(-rx, rx + 1)[None, :]
    dy, dx = (iy - cy[:, None]) * py, (ix - cx[:, None]) * px
    limit = cells.radius_um + MEMBRANE_UM
    # Cells whose lattice sites are congruent modulo `period` in both axes lie so far apart that their
    # disks never share a pixel: each such class is scattered without conflicts, and the nearest cell
    # is kept class after class (in place of sorting every (pixel, cell) pair).
    period = int(2 * reach / LATTICE_UM + 2 * LATTICE_JITTER) + 1
    site_y = np.floor(cells.y_um / LATTICE_UM).astype(np.int64) % period
    site_x = np.floor(cells.x_um / LATTICE_UM).astype(np.int64) % period
    klass = site_y * period + site_x
    best_dist = np.full(h * w, np.inf)
    best_cell = np.full(h * w, n, np.intp)
    for k in np.unique(klass):
        sel = np.flatnonzero(klass == k)
        iyk, ixk = iy[sel], ix[sel]
        dist = np.hypot(dy[sel][:, :, None], dx[sel][:, None, :])
        ok = ((iyk >= 0) & (iyk < h))[:, :, None] & ((ixk >= 0) & (ixk < w))[:, None, :]
        ok &= dist <= limit[sel][:, None, None]
        flat = ((iyk * w)[:, :, None] + ixk[:, None, :])[ok]
        dist = dist[ok]
        index = np.broadcast_to(sel[:, None, None], ok.shape)[ok]
        held = best_dist[flat]
        better = (dist < held) | ((dist == held) & (index < best_cell[flat]))
        flat = flat[better]
        best_dist[flat] = dist[better]
        best_cell[flat] = index[better]
    # outside the nucleus: + n (a pixel of no cell, n, has radius -1 and becomes 2n)
    ring = best_dist > np.append(cells.radius_um, -1.0)[best_cell]
    np.add(best_cell, n, out=best_cell, where=ring)
    return best_cell.reshape(shape)


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
    vignette = u**2 + v**2  # in place, as 1.0 - 0.12 * (u**2 + v**2) * 2
    vignette *= 0.12
    vignette *= 2
    np.subtract(1.0, vignette, out=vignette)
    width_um = scene.width_px * scene.pixel_size_x_um
    gradient = 1.0 + 0.10 * np.sin(2 * np.pi * x_um / max(width_um, 1.0) + 0.7)
    field *= vignette
    field *= gradient
    return field.astype(np.float32)


@dataclass(frozen=True)
class _Layers:
    """The scene rasterised over one region, shared by every channel."""

    xs: np.ndarray  # (1, w) pixel centres, µm
    ys: np.ndarray  # (h, 1)
    cells: Cells
    cell_label: np.ndarray  # see _stamp: nucleus i, ring n + i, none 2n
    tissue: np.ndarray  # 0/1, float32
    debris: np.ndarray
    fdc: np.ndarray  # CD21 follicular dendritic cell network
    germinal: np.ndarray  # CD23 germinal-centre network

    def cell_signal(self, channel: str) -> np.ndarray:
        nuc_amp, ring_amp = _marker_amplitudes(self.cells, channel)
        if not len(self.cells):
            return np.zeros(self.tissue.shape, np.float32)
        # a pixel is in a nucleus, a ring or neither, so one look-up gives nucleus + ring signal exactly
        table = np.concatenate([nuc_amp, ring_amp, [0.0]]).astype(np.float32)
        return table[self.cell_label]

    def network(self, channel: str) -> np.ndarray | None:
        return {"CD21": self.fdc, "CD23": self.germinal}.get(channel)


def _overlaps(bbox, xs, ys) -> bool:
    bx0, by0, bx1, by1 = bbox
    return not (bx1 < xs[0, 0] or bx0 > xs[0, -1] or by1 < ys[0, 0] or by0 > ys[-1, 0])


def _layers(scene: Scene, y0: int, y1: int, x0: int, x1: int) -> _Layers:
    shape = (y1 - y0, x1 - x0)
    px, py = scene.pixel_size_x_um, scene.pixel_size_y_um
    ys = (np.arange(y0, y1) + 0.5)[:, None] * py
    xs = (np.arange(x0, x1) + 0.5)[None, :] * px
    reach = 12.0
    cells = _cells_in(scene, x0 * px - reach, y0 * py - reach, x1 * px + reach, y1 * py + reach)
    cell_label = _stamp(cells, scene, y0, x0, shape)
    tissue = scene.tissue.contains(xs, ys).astype(np.float32)
    # Debris, FDC and germinal-centre layers are 0 outside a blob's bbox: each is computed over its window
    # only (padded by 1 µm against rounding at the edge), elementwise as over the whole block.
    debris = np.zeros(shape, np.float32)
    for blob in scene.debris:
        if _overlaps(blob.bbox_um(), xs, ys):
            debris = debris.astype(np.float64, copy=False)  # as the whole-block texture made it
            window = _window(blob.bbox_um(1.0), xs, ys)
            if window is not None:
                wx, wy = xs[:, window[1]], ys[window[0]]
                speck = blob.contains(wx, wy) * (0.75 + 0.25 * np.cos(wx / 3.0) * np.sin(wy / 4.0))
                debris[window] = np.maximum(debris[window], speck)
    fdc = np.zeros(shape, np.float32)
    germinal = np.zeros(shape, np.float32)
    for item in scene.tls:
        window = None if item.silina_stage == "early" else _window(item.zone.bbox_um(1.0), xs, ys)
        if window is None:
            continue
        wx, wy = xs[:, window[1]], ys[window[0]]
        radius = item.zone.normalised_radius(wx, wy)
        web = _network(wx, wy, item.texture_phase)
        fdc[window] = np.maximum(fdc[window], 0.45 * web * (radius <= 0.72))
        if item.silina_stage == "secondary_follicle":
            web2 = _network(wx + 3.0, wy - 2.0, item.texture_phase[::-1])
            germinal[window] = np.maximum(germinal[window], 0.5 * web2 * (radius <= 0.5))
    return _Layers(xs, ys, cells, cell_label, tissue, debris, fdc, germinal)


def _clean_signal(scene: Scene, layers: _Layers) -> list[np.ndarray]:
    """Noise-free signal of the clean renderer, one array per channel.

    Kept as a list: a block with debris is float64 (its texture is), and the clean
    pixels must stay exactly what they always were.
    """
    gain = _field_gain(scene, layers.xs, layers.ys)
    # debris is float32 zeros where none reaches the block: the signal (>= 0) would pass max() unchanged
    any_debris = layers.debris.dtype != np.float32
    tissue_af, debris = {}, {}  # the same products for every channel of a level: computed once
    out = []
    for channel in scene.channel_names:
        signal = layers.cell_signal(channel)
        autofluorescence = 0.15 if channel == "Autofluorescence" else 0.035
        if autofluorescence not in tissue_af:
            tissue_af[autofluorescence] = autofluorescence * layers.tissue
        signal += tissue_af[autofluorescence]
        network = layers.network(channel)
        if network is not None:
            signal += network
        if any_debris:
            level = 1.1 if channel == "Autofluorescence" else 0.9
            if level not in debris:
                debris[level] = layers.debris * level
            signal = np.maximum(signal, debris[level])
        signal += GLASS_LEVEL  # in place, as (signal + GLASS_LEVEL) * gain in the signal's dtype
        signal *= gain
        out.append(signal)
    return out


# -- realistic mode ---------------------------------------------------------------------------


def _is_af_channel(name: str) -> bool:
    return name.strip().lower() in AF_CHANNEL_NAMES


def channel_optics(name: str) -> tuple[str, float, float]:
    """(fluorophore, tissue AF level, red blood cell level) of a channel in realistic mode, levels × peak."""
    if _is_af_channel(name):
        return AF_CHANNEL_OPTICS
    return REALISTIC_CHANNELS.get(name, (name, UNKNOWN_CHANNEL_AF, UNKNOWN_CHANNEL_RBC))


@functools.lru_cache(maxsize=32)
def _channel_mixing(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(stain gain per channel, crosstalk[into, from]) of a realistic scene."""
    names, realism = scene.channel_names, scene.realism
    gains = np.ones(len(names))
    low, high = np.log(STAIN_GAIN_RANGE)
    for c, name in enumerate(names):
        if not _is_af_channel(name) and realism.stain_gain > 0:  # drawn by name: independent of channel order
            draw = np.random.default_rng([scene.seed, 211, zlib.crc32(name.encode())]).uniform(low, high)
            gains[c] = np.exp(realism.stain_gain * draw)
    crosstalk = np.zeros((len(names), len(names)))
    fraction = min(CROSSTALK_NEXT * realism.crosstalk, CROSSTALK_MAX)
    order = list(REALISTIC_CHANNELS)
    stained = sorted((order.index(name), c) for c, name in enumerate(names) if name in order)
    for (_, shorter), (_, longer) in zip(stained, stained[1:]):
        crosstalk[longer, shorter] = fraction
        crosstalk[shorter, longer] = fraction / 2
    return gains, crosstalk


def _depth_um(blob: Blob, x_um, y_um, *, beyond_um: float | None = None, where=None) -> np.ndarray:
    """Distance inside the outline along the ray from the centre (negative outside), µm.

    With ``beyond_um``, points surely deeper than that inside (outside) get +beyond_um (-beyond_um),
    which is all a ramp flat from there on needs, and points outside ``where`` any finite value: the
    exact depth is then computed in a band along the outline only.
    """
    u, v = blob._uv(x_um, y_um)
    if beyond_um is None or np.broadcast(u, v).size < FEW_POINTS:
        return _ray_depth_um(blob, u, v)
    # depth = (R - rho) × (µm per unit of rho), the latter at least the smaller radius
    reach = (beyond_um + 1.0) / min(blob.radius_x_um, blob.radius_y_um)  # 1 µm slack for float32 rounding
    below, band = blob._rho_band(u, v, -reach, reach)
    depth = np.where(below, np.float32(beyond_um), np.float32(-beyond_um))
    if where is not None:
        band &= where
    if band.any():
        u, v = (np.broadcast_to(a, band.shape)[band] for a in (u, v))
        depth[band] = _ray_depth_um(blob, u, v)
    return depth


def _ray_depth_um(blob: Blob, u, v) -> np.ndarray:
    rho = np.hypot(u, v)
    distance = np.hypot(u * blob.radius_x_um, v * blob.radius_y_um)
    per_rho = np.where(rho > 1e-9, distance / np.maximum(rho, 1e-9), min(blob.radius_x_um, blob.radius_y_um))
    return ((blob.relative_radius(np.arctan2(v, u)) - rho) * per_rho).astype(np.float32)


def _soft_inside(blob: Blob, x_um, y_um, *, grow_um: float = 0.0, edge_um: float = 4.0) -> np.ndarray:
    """1 inside, 0 outside, a logistic step about 4 × ``edge_um`` wide across the outline."""
    depth = _depth_um(blob, x_um, y_um, beyond_um=30 * edge_um + abs(grow_um) + 1.0)  # z is ±30 from there
    z = np.clip((depth + grow_um) / edge_um, -30, 30)
    return 1.0 / (1.0 + np.exp(-z))


def _window(bbox, xs, ys) -> tuple[slice, slice] | None:
    """The (rows, columns) of the region inside ``bbox``, or None."""
    bx0, by0, bx1, by1 = bbox
    c0, c1 = np.searchsorted(xs[0], [bx0, bx1])
    r0, r1 = np.searchsorted(ys[:, 0], [by0, by1])
    return (slice(r0, r1), slice(c0, c1)) if r1 > r0 and c1 > c0 else None


def _waves(xs, ys, waves) -> np.ndarray:
    """Sum of plane waves sin(kx·x + ky·y + phase), from separable 1-D factors."""
    h, w = ys.shape[0], xs.shape[1]
    total = np.zeros((h, w), np.float32)
    # float64 scratch for 64 rows at a time: fresh whole-block temporaries cost more than the arithmetic
    rows = min(64, h)
    term, product = np.empty((rows, w)), np.empty((rows, w))
    for kx, ky, phase in waves:
        ax, ay = kx * xs + phase, ky * ys
        sin_x, cos_x, sin_y, cos_y = np.sin(ax), np.cos(ax), np.sin(ay), np.cos(ay)
        for r in range(0, h, rows):
            # in place, as total += (sin(ax) * cos(ay) + cos(ax) * sin(ay)).astype(float32)
            band, n = slice(r, r + rows), min(rows, h - r)
            np.multiply(sin_x, cos_y[band], out=term[:n])
            term[:n] += np.multiply(cos_x, sin_y[band], out=product[:n])
            np.add(total[band], term[:n], out=total[band], dtype=np.float32, casting="same_kind")
    return total


@functools.lru_cache(maxsize=32)
def _af_waves(seed: int) -> tuple[tuple, tuple]:
    """(slow variation waves, fibre families) of the AF pattern."""
    rng = np.random.default_rng([seed, 401])
    slow = []
    for _ in range(3):
        k, angle = 2 * np.pi / rng.uniform(400, 2000), rng.uniform(0, 2 * np.pi)
        slow.append((k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi)))
    fibres = []  # bundles of wavy parallel fibres, each family present in patches
    for _ in range(3):
        angle = rng.uniform(0, np.pi)
        k, k_wave = 2 * np.pi / rng.uniform(5, 9), 2 * np.pi / rng.uniform(60, 150)
        k_patch, patch_angle = 2 * np.pi / rng.uniform(150, 400), rng.uniform(0, 2 * np.pi)
        k_wave2, wave2_angle = 2 * np.pi / rng.uniform(25, 60), angle + rng.uniform(-0.5, 0.5)
        fibres.append((
            (k * np.cos(angle), k * np.sin(angle), rng.uniform(0, 2 * np.pi)),
            (rng.uniform(2.0, 4.0), rng.uniform(0.8, 1.6)),
            ((-k_wave * np.sin(angle), k_wave * np.cos(angle), rng.uniform(0, 2 * np.pi)),
             (-k_wave2 * np.sin(wave2_angle), k_wave2 * np.cos(wave2_angle), rng.uniform(0, 2 * np.pi))),
            (k_patch * np.cos(patch_angle), k_patch * np.sin(patch_angle), rng.uniform(0, 2 * np.pi)),
        ))
    return tuple(slow), tuple(fibres)


def _stroma(scene: Scene, xs, ys) -> np.ndarray:
    """Collagen-rich stroma (1) versus tumour bed and lymphoid zones (0), smooth over 10-20 µm."""
    shape = (ys.shape[0], xs.shape[1])
    bed = np.zeros(shape, np.float32)
    if _overlaps(scene.tumour.bbox_um(40.0), xs, ys):
        bed = _soft_inside(scene.tumour, xs, ys)
        for hole in scene.tumour_holes:
            window = _window(hole.bbox_um(40.0), xs, ys)
            if window is not None:
                bed[window] *= 1 - _soft_inside(hole, xs[:, window[1]], ys[window[0]])
    lymphoid = np.zeros(shape, np.float32)
    zones = [(item.zone, item.rim_um) for item in scene.tls] + [(blob, 0.0) for blob in scene.aggregates]
    for zone, grow in zones:
        window = _window(zone.bbox_um(grow + 40.0), xs, ys)
        if window is not None:
            inside = _soft_inside(zone, xs[:, window[1]], ys[window[0]], grow_um=grow)
            lymphoid[window] = np.maximum(lymphoid[window], inside)
    return (1 - bed) * (1 - lymphoid)


def _autofluorescence(scene: Scene, layers: _Layers) -> tuple[np.ndarray, np.ndarray | None]:
    """(tissue with its edge rim, the same times the AF pattern); the pattern averages about 1 in cellular tissue."""
    realism, xs, ys = scene.realism, layers.xs, layers.ys
    tissue = layers.tissue
    if realism.edge_rim > 0:
        depth = _depth_um(scene.tissue, xs, ys, beyond_um=EDGE_RIM_UM + 3.0 * 30 + 1.0,  # the clip holds from there
                           where=tissue > 0)
        rim = 1.0 / (1.0 + np.exp(np.clip((depth - EDGE_RIM_UM) / 3.0, -30, 30)))
        tissue = tissue * (1 + realism.edge_rim * rim)
    if realism.autofluorescence == 0:
        return tissue, None
    slow, fibres = _af_waves(scene.seed)
    variation = 1 + 0.4 * np.tanh(0.7 * _waves(xs, ys, slow))
    fibre = np.zeros(tissue.shape, np.float32)
    for (kx, ky, phase), wiggles, waves, patch in fibres:
        # the phase is reduced per axis before it is summed, so it stays exact in float32
        across = (np.mod(kx * xs + phase, 2 * np.pi) + np.mod(ky * ys, 2 * np.pi)).astype(np.float32)
        for amplitude, wave in zip(wiggles, waves):
            across += amplitude * _waves(xs, ys, [wave])
        streak = 0.5 + 0.5 * np.sin(across)
        streak *= streak
        streak *= streak
        presence = 0.5 + 0.5 * _waves(xs, ys, [patch])
        fibre += presence * presence * streak * streak  # thin bright streaks in patches, mean about 0.07 per family
    stroma = _stroma(scene, xs, ys)
    texture = 1 + (0.45 * fibre - 0.1) * (0.4 + 0.6 * stroma)  # mean about 1, streaks up to +35 %, in stroma most
    return tissue, tissue * variation * (1 + (STROMA_AF - 1) * stroma) * texture


def _illumination(scene: Scene, xs, ys) -> np.ndarray:
    """A smooth fall-off across the whole slide, up to ±ILLUMINATION_FALLOFF × strength."""
    rng = np.random.default_rng([scene.seed, 409])
    angle, phase = rng.uniform(0, 2 * np.pi), rng.uniform(-0.5, 0.5)
    kx = np.pi / 2 * np.cos(angle) * 2 / max(scene.width_px * scene.pixel_size_x_um, 1.0)
    ky = np.pi / 2 * np.sin(angle) * 2 / max(scene.height_px * scene.pixel_size_y_um, 1.0)
    # centred on the slide centre: sin(kx·(x - W/2) + ky·(y - H/2) + phase)
    phase = phase - kx * scene.width_px * scene.pixel_size_x_um / 2 - ky * scene.height_px * scene.pixel_size_y_um / 2
    return 1 + ILLUMINATION_FALLOFF * scene.realism.illumination * _waves(xs, ys, [(kx, ky, phase)])


def _rbc_map(scene: Scene, xs, ys) -> tuple[np.ndarray, np.ndarray] | None:
    """(cover, brightness) of red blood cells, each 0-1, or None where there are none.

    Cover is 1 over a cell (it hides the tissue beneath), brightness is biconcave: dimmer in the centre.
    """
    reach = RBC_RADIUS_UM + 1.0
    centres = [vessel.discs_um() for vessel in scene.artefacts.vessels]
    x = np.concatenate([c[0] for c in centres]) if centres else np.zeros(0)
    y = np.concatenate([c[1] for c in centres]) if centres else np.zeros(0)
    near = (x > xs[0, 0] - reach) & (x < xs[0, -1] + reach) & (y > ys[0, 0] - reach) & (y < ys[-1, 0] + reach)
    if not near.any():
        return None
    px, py = scene.pixel_size_x_um, scene.pixel_size_y_um
    shape = (ys.shape[0], xs.shape[1])
    # in block pixels (pixel centres at integers), offset exactly by whole pixels as in _stamp
    cx = x[near] / px - 0.5 - round(xs[0, 0] / px - 0.5)
    cy = y[near] / py - 0.5 - round(ys[0, 0] / py - 0.5)
    ry, rx = math.ceil(reach / py), math.ceil(reach / px)
    oy, ox = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    iy = np.rint(cy)[:, None].astype(np.int64) + oy.ravel()[None, :]
    ix = np.rint(cx)[:, None].astype(np.int64) + ox.ravel()[None, :]
    r = np.hypot((iy - cy[:, None]) * py, (ix - cx[:, None]) * px) / RBC_RADIUS_UM
    edge = 0.75 / RBC_RADIUS_UM
    cover = np.clip((1 + edge - r) / edge, 0, 1)
    value = cover * (0.55 + 0.45 * np.minimum(r, 1) ** 2)
    ok = (iy >= 0) & (iy < shape[0]) & (ix >= 0) & (ix < shape[1]) & (cover > 0)
    flat = (iy * shape[1] + ix)[ok]
    cover_map = np.zeros(shape[0] * shape[1], np.float32)
    value_map = np.zeros(shape[0] * shape[1], np.float32)
    np.maximum.at(cover_map, flat, cover[ok].astype(np.float32))
    np.maximum.at(value_map, flat, value[ok].astype(np.float32))
    return cover_map.reshape(shape), value_map.reshape(shape)


def _speck_map(scene: Scene, xs, ys) -> np.ndarray | None:
    out = None
    for blob in scene.artefacts.debris:
        window = _window(blob.bbox_um(1.0), xs, ys)
        if window is None:
            continue
        if out is None:
            out = np.zeros((ys.shape[0], xs.shape[1]), np.float32)
        wx, wy = xs[:, window[1]], ys[window[0]]
        speck = blob.contains(wx, wy) * SPECK_LEVEL * (0.85 + 0.15 * np.cos(wx / 1.7) * np.sin(wy / 2.3))
        out[window] = np.maximum(out[window], speck)
    return out


def _fold_gain(scene: Scene, layers: _Layers) -> np.ndarray | None:
    out = None
    for fold in scene.artefacts.folds:
        window = _window(fold.bbox_um(2.0), layers.xs, layers.ys)
        if window is None:
            continue
        if out is None:
            out = np.ones(layers.tissue.shape, np.float32)
        band = fold.band(layers.xs[:, window[1]], layers.ys[window[0]]) * layers.tissue[window]
        out[window] *= 1 + (fold.gain - 1) * band
    return out


def _realistic_signal(scene: Scene, layers: _Layers) -> np.ndarray:
    """Noise-free (C, h, w) signal of a realistic scene (blur and dark offset come later)."""
    realism, names = scene.realism, scene.channel_names
    gains, crosstalk = _channel_mixing(scene)
    specific = np.empty((len(names),) + layers.tissue.shape, np.float32)
    for c, channel in enumerate(names):
        signal = layers.cell_signal(channel)
        network = layers.network(channel)
        if network is not None:
            signal += network
        specific[c] = signal * np.float32(gains[c])
    tissue, pattern = _autofluorescence(scene, layers)
    rbc = _rbc_map(scene, layers.xs, layers.ys)
    specks = _speck_map(scene, layers.xs, layers.ys)
    fold = _fold_gain(scene, layers)
    gain = _field_gain(scene, layers.xs, layers.ys)
    if realism.illumination > 0:
        gain = gain * _illumination(scene, layers.xs, layers.ys)
    debris = layers.debris.astype(np.float32)  # float64 where decoys reach the region: one dtype keeps blocks exact
    out = np.empty_like(specific)
    for c, channel in enumerate(names):
        _, af_level, rbc_level = channel_optics(channel)
        clean_af = 0.15 if channel == "Autofluorescence" else 0.035
        signal = specific[c].copy()
        for source in np.flatnonzero(crosstalk[c]):
            signal += np.float32(crosstalk[c, source]) * specific[source]
        # AF blends from the clean renderer's flat level (strength 0) to the realistic one (strength 1)
        strength = realism.autofluorescence
        autofluorescence = (clean_af * (1 - strength)) * tissue
        if pattern is not None:
            autofluorescence += (strength * af_level * POSITIVE_PEAK) * pattern
        signal += np.maximum(autofluorescence, 0)
        signal = np.maximum(signal, debris * np.float32(1.1 if _is_af_channel(channel) else 0.9))
        if rbc is not None:  # the cells fill the lumen: no tissue, no nucleus beneath them
            cover, brightness = rbc
            signal = signal * (1 - cover) + brightness * np.float32(rbc_level * POSITIVE_PEAK)
        if specks is not None:
            signal = np.maximum(signal, specks)
        if fold is not None:
            signal *= fold
        out[c] = (signal + GLASS_LEVEL) * gain
    return out


def _sharp_signal(scene: Scene, y0: int, y1: int, x0: int, x1: int) -> Sequence[np.ndarray]:
    layers = _layers(scene, y0, y1, x0, x1)
    return _clean_signal(scene, layers) if scene.realism is None else _realistic_signal(scene, layers)


def _optical_signal(scene: Scene, y0: int, y1: int, x0: int, x1: int) -> Sequence[np.ndarray]:
    """Noise-free signal of any region, one (h, w) array per channel: a pure function of pixel position.

    Where an out-of-focus patch reaches the region, the region is rendered with a halo as
    wide as the blur kernel and filtered, so every pixel equals that of the whole image.
    """
    px, py = scene.pixel_size_x_um, scene.pixel_size_y_um
    xs = (np.array([x0, x1 - 1]) + 0.5)[None, :] * px
    ys = (np.array([y0, y1 - 1]) + 0.5)[:, None] * py
    patches = [p for p in scene.artefacts.blur_patches if _overlaps(p.zone.bbox_um(30.0), xs, ys)]
    if not patches:
        return _sharp_signal(scene, y0, y1, x0, x1)
    from scipy import ndimage

    sigma_max = max(p.sigma_um for p in patches)
    halo_y, halo_x = int(4.0 * sigma_max / py + 0.5) + 1, int(4.0 * sigma_max / px + 0.5) + 1
    hy0, hy1 = max(0, y0 - halo_y), min(scene.height_px, y1 + halo_y)
    hx0, hx1 = max(0, x0 - halo_x), min(scene.width_px, x1 + halo_x)
    wide = _sharp_signal(scene, hy0, hy1, hx0, hx1)
    inner = (slice(y0 - hy0, y1 - hy0), slice(x0 - hx0, x1 - hx0))
    signal = wide[(slice(None),) + inner].copy()
    xs = (np.arange(x0, x1) + 0.5)[None, :] * px
    ys = (np.arange(y0, y1) + 0.5)[:, None] * py
    for patch in patches:
        window = _window(patch.zone.bbox_um(30.0), xs, ys)
        if window is None:
            continue
        # a smoothstep from 10 µm outside the outline to 10 µm inside: exactly 0 well within the bbox
        t = np.clip((_depth_um(patch.zone, xs[:, window[1]], ys[window[0]], beyond_um=11.0) + 10.0) / 20.0, 0, 1)
        weight = t * t * (3 - 2 * t)
        sigma = (patch.sigma_um / py, patch.sigma_um / px)
        # filter the window and the kernel's reach around it only (as far as `wide` goes): every window
        # pixel is the same sum as when all of `wide` is filtered
        region, keep = [], []
        for axis, start in enumerate((y0 - hy0, x0 - hx0)):
            lo, hi = start + window[axis].start, start + window[axis].stop  # the window within `wide`
            first = max(0, lo - int(4.0 * sigma[axis] + 0.5))  # scipy's kernel radius at truncate=4
            region.append(slice(first, min(wide.shape[1 + axis], hi + int(4.0 * sigma[axis] + 0.5))))
            keep.append(slice(lo - first, hi - first))
        for c in range(signal.shape[0]):
            blurred = ndimage.gaussian_filter(wide[c][tuple(region)], sigma, mode="nearest", truncate=4.0)[tuple(keep)]
            signal[c][window] += weight * (blurred - signal[c][window])
    return signal


def _dtype_scale(scene: Scene) -> float:
    if scene.realism is not None and scene.dtype == "uint8":
        return REALISTIC_UINT8_SCALE
    return DTYPE_SCALE[scene.dtype]


def render_block(scene: Scene, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Render level-0 pixels [y0:y1, x0:x1] of every channel, as (C, y1-y0, x1-x0) in scene.dtype.

    The block must lie within one RENDER_BLOCK grid cell (noise is seeded per grid cell).
    """
    shape = (y1 - y0, x1 - x0)
    signal = _optical_signal(scene, y0, y1, x0, x1)
    scale = _dtype_scale(scene)
    offset = 0.0 if scene.realism is None else DARK_OFFSET * scene.realism.dark_offset
    grid = (y0 // RENDER_BLOCK, x0 // RENDER_BLOCK)
    out = np.empty((len(scene.channel_names),) + shape, dtype=scene.dtype)
    oy, ox = y0 - grid[0] * RENDER_BLOCK, x0 - grid[1] * RENDER_BLOCK
    for c in range(len(scene.channel_names)):
        rng = np.random.default_rng([scene.seed, 7, c, grid[0], grid[1]])
        # the grid cell's noise is drawn row after row: the rows below the block are never needed
        noise = rng.standard_normal((oy + shape[0]) * RENDER_BLOCK, dtype=np.float32).reshape(-1, RENDER_BLOCK)
        noise = noise[oy:, ox : ox + shape[1]]
        channel = signal[c]
        # in place, operation by operation as channel += scene.noise * (0.010 + 0.05 * sqrt(channel)) * noise
        shot = np.sqrt(channel)
        shot *= 0.05
        shot += 0.010
        shot *= scene.noise
        shot *= noise
        channel += shot
        if offset:  # after the shot noise: the camera adds it
            channel += offset
        channel *= scale
        if scene.dtype == "float32":
            np.clip(channel, 0, None, out=out[c])
        else:  # rint then clip to the range: negatives end as 0, as when clipped at 0 first
            np.rint(channel, out=channel)
            np.clip(channel, 0, np.iinfo(scene.dtype).max, out=out[c], casting="unsafe")
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


def truth(scene: Scene, *, counted_locations: Sequence[str] = Location.counted) -> dict[str, Any]:
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

    result = {
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
    if scene.realism is not None:
        result["realism"] = _realism_truth(scene)
        result["artefacts"] = _artefact_rows(scene)
        result["artefact_area_mm2"] = {
            kind: sum(row["area_um2"] for row in result["artefacts"] if row["kind"] == kind) / 1e6
            for kind in ("rbc", "fold", "blur", "debris")
        }
    return result


def _realism_truth(scene: Scene) -> dict[str, Any]:
    gains, crosstalk = _channel_mixing(scene)
    names = scene.channel_names
    realism = scene.realism
    return {
        "strengths": asdict(realism),
        "positive_peak": POSITIVE_PEAK,
        "fluorophores": {name: channel_optics(name)[0] for name in names},
        "autofluorescence_level": {name: round(channel_optics(name)[1] * realism.autofluorescence, 4) for name in names},
        "stain_gain": {name: round(float(g), 4) for name, g in zip(names, gains)},
        "crosstalk": {  # into channel: {from channel: fraction of its specific signal}
            into: {names[src]: round(float(crosstalk[c, src]), 4) for src in np.flatnonzero(crosstalk[c])}
            for c, into in enumerate(names) if crosstalk[c].any()
        },
        "cell_brightness_sigma": CELL_SIGMA_CLEAN + realism.cell_brightness * (CELL_SIGMA_REALISTIC - CELL_SIGMA_CLEAN),
        "dark_offset": DARK_OFFSET * realism.dark_offset * _dtype_scale(scene),  # in pixel values
    }


def _raster_area_um2(bbox, inside, step_um: float) -> float:
    """Area of ``inside(x, y)`` within ``bbox`` on a grid of ``step_um``."""
    x0, y0, x1, y1 = bbox
    xs = np.arange(x0 + step_um / 2, x1, step_um)[None, :]
    ys = np.arange(y0 + step_um / 2, y1, step_um)[:, None]
    return float(np.count_nonzero(inside(xs, ys))) * step_um * step_um


def _artefact_rows(scene: Scene) -> list[dict[str, Any]]:
    """One row per artefact: kind, centre, area (within the tissue), bbox (x0, y0, x1, y1), all in µm."""
    rows = []

    def row(kind, x, y, area, bbox, **extra):
        rows.append({"kind": kind, "x_um": round(float(x), 2), "y_um": round(float(y), 2),
                     "area_um2": round(float(area), 1), "bbox": [round(float(v), 1) for v in bbox], **extra})

    def in_tissue(inside):
        return lambda x, y: inside(x, y) & scene.tissue.contains(x, y)

    for vessel in scene.artefacts.vessels:
        xd, yd = vessel.discs_um()
        bbox = (xd.min() - RBC_RADIUS_UM, yd.min() - RBC_RADIUS_UM, xd.max() + RBC_RADIUS_UM, yd.max() + RBC_RADIUS_UM)

        def on_discs(x, y, xd=xd, yd=yd):
            inside = np.zeros(np.broadcast(x, y).shape, bool)
            for cx, cy in zip(xd, yd):
                inside |= (x - cx) ** 2 + (y - cy) ** 2 <= RBC_RADIUS_UM**2
            return inside

        hidden = _cells_in(scene, *bbox)
        row("rbc", xd.mean(), yd.mean(), _raster_area_um2(bbox, on_discs, 0.5), bbox,
            length_um=round(vessel.length_um, 1), width_cells=vessel.width_cells, n_cells=int(xd.size),
            hidden_cells=int(np.count_nonzero(on_discs(hidden.x_um, hidden.y_um))))
    for fold in scene.artefacts.folds:
        area = _raster_area_um2(fold.bbox_um(), in_tissue(fold.contains), 2.0)
        row("fold", (fold.x0_um + fold.x1_um) / 2, (fold.y0_um + fold.y1_um) / 2, area, fold.bbox_um(),
            width_um=round(fold.width_um, 1), gain=round(fold.gain, 3))
    for patch in scene.artefacts.blur_patches:
        area = _raster_area_um2(patch.zone.bbox_um(), in_tissue(patch.zone.contains), 2.0)
        row("blur", patch.zone.x_um, patch.zone.y_um, area, patch.zone.bbox_um(), sigma_um=round(patch.sigma_um, 2))
    for blob in scene.artefacts.debris:
        row("debris", blob.x_um, blob.y_um, blob.area_um2(), blob.bbox_um())
    return rows


# -- writing ----------------------------------------------------------------------------------

FORMAT_SUFFIXES = {".ome.tiff": "ome-tiff", ".ome.tif": "ome-tiff", ".qptiff": "qptiff", ".ome.zarr": "ome-zarr"}


def format_for(path: str | Path) -> str:
    """The output format implied by a file name (.ome.tiff, .qptiff or .ome.zarr)."""
    name = str(path).lower().rstrip("/")
    for suffix, fmt in FORMAT_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: cannot tell the format; use a name ending in .ome.tiff, .qptiff or .ome.zarr")


def _fluorophore(scene: Scene, name: str) -> str:
    return FLUOROPHORES.get(name, name) if scene.realism is None else channel_optics(name)[0]


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
            # zlib at level 1 unless a codec is asked for: 4x faster to write than its default 6, files 1 % larger
            write_ome_tiff(path, levels, channel_names=names, pixel_size_um=pixel_size, tile=tile,
                           compression=compression or "zlib", compression_level=None if compression else 1)
        elif fmt == "qptiff":
            write_qptiff(path, levels, channel_names=names, pixel_size_um=pixel_size, tile=tile,
                         compression=compression or "lzw", include_biomarker=include_biomarker,
                         fluorophores=[_fluorophore(scene, n) for n in names])
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
    "REALISTIC_CHANNELS",
    "Artefacts",
    "Blob",
    "BlurPatch",
    "Cells",
    "Fold",
    "Realism",
    "Scene",
    "SyntheticTLS",
    "Vessel",
    "all_cells",
    "channel_optics",
    "make_scene",
    "render",
    "render_block",
    "truth",
    "truth_path",
    "with_realism",
    "write_slide",
]
