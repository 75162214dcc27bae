"""Accuracy on realistic mIF slides from an INDEPENDENT generator, with the default configuration.

``tlsquant.synthetic`` was written together with the analysis and the analysis was tuned on it,
so a benchmark on its slides can overfit. This script draws its own slides from the phenomena
list of the design notes ("What real slides look like") without importing or copying
``tlsquant.synthetic``: other tissue and tumour shapes, other cell shapes, other TLS morphology
(lobulated, elongated and merged follicles, a CD3+ T-cell crescent, a CD21/CD23 follicular
dendritic reticulum of thin fibres), other autofluorescence (AF), illumination, artefact and
noise models. It writes each slide as a tiled, pyramidal OME-TIFF with its truth, runs the
command a user would run (``tlsquant analyze SLIDE -o OUT``, default configuration), and
scores the outputs against the truth.

    python benchmarks/bench_independent.py                 # every case (~10 min on 2 cores)
    python benchmarks/bench_independent.py --quick         # three cases
    python benchmarks/bench_independent.py --only all-1um-f32-af,clean-1um
    python benchmarks/bench_independent.py --keep          # reuse slides already rendered

Writes benchmarks/results/independent.{md,json}; slides, truth and tlsquant outputs go to
benchmarks/_data/independent/ (git-ignored). Targets (the product owner's): tumour area within
5 %, TLS recall and precision >= 0.95, stage and location accuracy >= 0.95, per-TLS area within
20 %, density within 10 %, cells within 10 %, CD20+ % within 15 %.

Model, in slide units where 1.0 is the peak of a typical positive cell at stain gain 1
---------------------------------------------------------------------------------
value_c(x) = dark_c + illum(x) * [glass_c + AF_c(x) + rbc_c * RBC(x) + debris_c * DEB(x)
                                  + gain_c * stain_c(x) + sum_s xtalk_{s->c} * gain_s * stain_s(x)]
             + shot/read noise,   then scaled to uint16 counts or float32 "normalised counts".

* AF_c(x) = af_c * tissue(x) * low(x) * (region(x) + fibre_c * collagen(x)) * rim(x) * fold(x):
  ``af_c`` strongest in the short-wavelength channels (DAPI, CD8/Opal 480, CD20/Opal 520,
  TFE3/Opal 570), weak in far red; ``collagen`` is a wavy fibre texture in stroma whose
  weight ``fibre_c`` differs per channel (collagen AF is bluer than cytoplasmic AF), so the
  AF pattern is NOT one shared template scaled per channel.
* Illumination: a slide-wide gradient (+-25 %), per scanner field a gain step (+-10 %) and a
  slight vignetting.
* Cells are stamped one by one: elliptic nuclei with an irregular outline and chromatin
  texture; membrane markers as a ring just outside the nucleus (plus a faint in-section cap);
  nuclear markers (TFE3) inside the nucleus. Per-cell amplitudes are log-normal.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data" / "independent"
RESULTS = HERE / "results"

GRID = 2.0  # µm: the "map grid" on which regions and truth masks are drawn

# Channel order in the file (the brief's order) and the assumed Opal / spectral position.
MARKERS = ("DAPI", "CD20", "CD3", "CD21", "CD23", "TFE3", "CD8")
AF_NAME = "Autofluorescence"
# tissue AF relative to a typical positive cell's peak at gain 1: in tumour; stroma is ~1.15x and its
# collagen fibres add up to FIBRE_WEIGHT x more, so the brightest stroma reaches ~40 % of a positive
# cell in Opal 480-570 (CD8, CD20, TFE3) and little in far red. DAPI is the brightest stain: AF is weak there.
AF_WEIGHT = {"DAPI": 0.10, "CD8": 0.24, "CD20": 0.22, "TFE3": 0.19, "CD3": 0.10, "CD23": 0.06, "CD21": 0.04,
             AF_NAME: 0.50}
# extra AF of collagen fibres, relative to the channel's AF (collagen AF is blue-shifted)
FIBRE_WEIGHT = {"DAPI": 1.0, "CD8": 0.9, "CD20": 0.8, "TFE3": 0.6, "CD3": 0.5, "CD23": 0.4, "CD21": 0.4,
                AF_NAME: 0.8}
# red blood cells: strong broad AF in 480-570 nm, weak in DAPI and far red
RBC_WEIGHT = {"DAPI": 0.15, "CD8": 1.1, "CD20": 1.0, "TFE3": 0.9, "CD3": 0.3, "CD23": 0.12, "CD21": 0.06,
              AF_NAME: 2.5}
# crosstalk between spectral neighbours: (source, target): share range
XTALK = {("CD21", "CD23"): (0.05, 0.10), ("TFE3", "CD20"): (0.04, 0.08), ("CD20", "TFE3"): (0.03, 0.06),
         ("CD3", "CD23"): (0.03, 0.06), ("CD23", "CD21"): (0.03, 0.05), ("CD8", "CD20"): (0.03, 0.06)}
PHENOMENA = ("autofluorescence", "collagen", "edge_rim", "dark_offset", "illumination", "stain_gain", "crosstalk", "rbc",
             "fold", "blur", "debris")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def smooth_noise(rng, shape, sigma_px, anisotropic=None) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit SD."""
    field_ = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32),
                                 anisotropic if anisotropic is not None else sigma_px, mode="wrap")
    return field_ / (field_.std() + 1e-12)


def upsample(a: np.ndarray, factor: float, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Map-grid array -> full resolution (pixel centres aligned), exactly ``shape``."""
    if factor == 1:
        return a.astype(np.float32)
    out = ndi.zoom(a.astype(np.float32), factor, order=order, grid_mode=True, mode="nearest")
    out = out[: shape[0], : shape[1]]
    if out.shape != shape:
        out = np.pad(out, ((0, shape[0] - out.shape[0]), (0, shape[1] - out.shape[1])), mode="edge")
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def erode(mask: np.ndarray, r_px: float) -> np.ndarray:
    """Binary erosion by a disc of radius r_px (exact Euclidean, via the distance transform)."""
    return ndi.distance_transform_edt(mask) > r_px


def dilate(mask: np.ndarray, r_px: float) -> np.ndarray:
    return ndi.distance_transform_edt(~mask) <= r_px


def lognormal(rng, median, sigma, n):
    return median * np.exp(sigma * rng.standard_normal(n))


# --------------------------------------------------------------------------------------------
# case definition
# --------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    seed: int
    pixel_um: float
    dtype: str
    width_um: float
    height_um: float
    af_channel: bool
    strength: dict[str, float]  # phenomenon -> strength (0 off, 1 ordinary)
    note: str = ""
    n_tls: int | None = None  # TLS to place (None: 5-7); 0 makes a TLS-free slide, decoys only


def all_on(**over) -> dict[str, float]:
    s = {k: 1.0 for k in PHENOMENA}
    s.update(over)
    return s


def only(*names) -> dict[str, float]:
    return {k: (1.0 if k in names else 0.0) for k in PHENOMENA}


CASES = {c.name: c for c in [
    Case("all-0.5um-u16", 101, 0.5, "uint16", 2400, 1800, False, all_on(), "every phenomenon, no AF channel"),
    Case("all-1um-f32-af", 102, 1.0, "float32", 3000, 2200, True, all_on(), "every phenomenon, unmixed AF channel"),
    Case("all-0.5um-f32-af", 103, 0.5, "float32", 2200, 1600, True, all_on(), "every phenomenon, AF channel"),
    Case("all-1um-u16", 104, 1.0, "uint16", 2800, 2000, False, all_on(), "every phenomenon"),
    Case("clean-1um", 105, 1.0, "uint16", 2600, 2000, False, only(), "no phenomena (morphology only)"),
    Case("af-rim-1um", 106, 1.0, "uint16", 2600, 2000, False, only("autofluorescence", "edge_rim"),
         "smooth autofluorescence + edge rim"),
    Case("collagen-1um", 111, 1.0, "uint16", 2600, 2000, False, only("autofluorescence", "collagen"),
         "autofluorescence with collagen fibre texture"),
    Case("collagen-half-1um", 111, 1.0, "uint16", 2600, 2000, False,
         {**only("autofluorescence"), "collagen": 0.5}, "as collagen-1um, fibres half as bright"),
    Case("gain-xtalk-1um", 107, 1.0, "uint16", 2600, 2000, False, only("stain_gain", "crosstalk"),
         "stain gain + crosstalk"),
    Case("rbc-debris-1um", 108, 1.0, "uint16", 2600, 2000, False, only("rbc", "debris", "autofluorescence"),
         "red blood cells + debris (on smooth AF)"),
    Case("fold-blur-1um", 109, 1.0, "float32", 2600, 2000, False, only("fold", "blur", "autofluorescence"),
         "fold + blurred patch (on smooth AF)"),
    Case("illum-dark-1um", 110, 1.0, "uint16", 2600, 2000, False, only("illumination", "dark_offset"),
         "illumination + stitching steps + dark offset"),
    Case("notls-all-1um", 112, 1.0, "uint16", 2600, 2000, False, all_on(),
         "no TLS (a poor responder's slide): small dense clusters and loose infiltrates only, every phenomenon",
         n_tls=0),
    Case("notls-clean-1um", 113, 1.0, "uint16", 2600, 2000, False, only(),
         "no TLS: small dense clusters and loose infiltrates only, no phenomena", n_tls=0),
]}
QUICK = ("all-1um-f32-af", "all-0.5um-u16", "clean-1um")


# --------------------------------------------------------------------------------------------
# scene: regions on the map grid, TLS, decoys, cells
# --------------------------------------------------------------------------------------------

@dataclass
class Scene:
    case: Case
    shape_map: tuple[int, int]
    tissue: np.ndarray            # bool, map grid
    tumour: np.ndarray            # bool, map grid (truth tumour bed: holes filled)
    septa: np.ndarray             # bool, map grid: fibrovascular septa inside the tumour
    follicle: np.ndarray          # int32 TLS id (B-cell follicle = truth TLS outline)
    gc: np.ndarray                # int32 TLS id (germinal centre / network zone)
    tzone: np.ndarray             # int32 TLS id
    decoy: np.ndarray             # int32 decoy id
    fold: np.ndarray              # bool (band)
    blur: np.ndarray              # bool (patch)
    tls: list[dict] = field(default_factory=list)
    decoys: list[dict] = field(default_factory=list)
    vessels: list[dict] = field(default_factory=list)
    debris: list[dict] = field(default_factory=list)
    fold_line: tuple | None = None


def _tissue(rng, shape, frac):
    """An irregular blob: two octaves of noise plus a soft centre bias, cut at the wanted area share."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.42, 0.58), h * rng.uniform(0.42, 0.58)
    ang = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) / (0.5 * w)
    v = (-(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)) / (0.5 * h)
    bias = -(u * u + v * v) ** 1.5 * 2.2
    f = bias + 0.55 * smooth_noise(rng, shape, 90 / GRID) + 0.25 * smooth_noise(rng, shape, 30 / GRID)
    # keep a glass border: the slide edge is never tissue
    border = int(60 / GRID)
    f[:border], f[-border:], f[:, :border], f[:, -border:] = -9, -9, -9, -9
    thr = np.quantile(f, 1 - frac)
    mask = largest_component(f > thr)
    mask = ndi.binary_fill_holes(dilate(erode(mask, 3), 3))
    return largest_component(mask)


def _tumour(rng, tissue, frac):
    """Irregular tumour bed: smoothed noise tilted toward one side of the tissue, holes filled."""
    h, w = tissue.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    ty, tx = np.nonzero(tissue)
    cy, cx = ty.mean(), tx.mean()
    tilt = ((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) / (0.5 * max(h, w))
    f = 2.2 * tilt + 0.5 * smooth_noise(rng, tissue.shape, 110 / GRID) + 0.15 * smooth_noise(rng, tissue.shape, 30 / GRID)
    inner = erode(tissue, 40 / GRID)  # the tumour stays off the tissue edge
    vals = f[inner]
    thr = np.quantile(vals, 1 - frac * tissue.sum() / max(1, inner.sum()))
    mask = largest_component((f > thr) & inner)
    mask = ndi.binary_fill_holes(erode(dilate(mask, 20 / GRID), 20 / GRID))
    mask = dilate(erode(mask, 10 / GRID), 10 / GRID) & tissue
    return ndi.binary_fill_holes(largest_component(mask))


def _septa(rng, tumour):
    """ASPS-like nests: thin fibrovascular septa (zero lines of a smooth field) inside the tumour."""
    f = smooth_noise(rng, tumour.shape, 28 / GRID)
    grad = np.hypot(*np.gradient(f))
    lines = np.abs(f) < 1.3 * grad  # ~2.5-grid-cell (5 µm) wide lines
    return lines & erode(tumour, 12 / GRID)


def _unit_shape(rng, kind):
    """A follicle shape as a function of unit coordinates (u, v) -> inside (bool)."""
    def lobes(n=4, amp=0.13):
        ks = np.arange(2, 2 + n)
        a = rng.uniform(0, amp, n) / np.sqrt(ks - 1)
        ph = rng.uniform(0, 2 * np.pi, n)
        return lambda t: 1 + sum(a[k] * np.cos(ks[k] * t + ph[k]) for k in range(n))

    if kind == "lobulated":
        r = lobes(4, 0.22)
        return lambda u, v: np.hypot(u, v) <= r(np.arctan2(v, u))
    if kind == "elongated":
        q, kappa, rot = rng.uniform(1.8, 2.8), rng.uniform(-0.25, 0.25), rng.uniform(0, np.pi)
        r = lobes(3, 0.08)

        def inside(u, v):
            uu = u * np.cos(rot) + v * np.sin(rot)
            vv = -u * np.sin(rot) + v * np.cos(rot)
            vv = vv - kappa * uu * uu
            x, y = uu / np.sqrt(q), vv * np.sqrt(q)
            return np.hypot(x, y) <= r(np.arctan2(y, x))
        return inside
    # two touching follicles, merged into one aggregate with a waist
    r1, r2 = lobes(3, 0.12), lobes(3, 0.12)
    s2 = rng.uniform(0.6, 1.0)
    sep = (1 + s2) * rng.uniform(0.72, 0.9)
    rot = rng.uniform(0, 2 * np.pi)
    ox, oy = sep * np.cos(rot), sep * np.sin(rot)

    def inside(u, v):
        a = np.hypot(u, v) <= r1(np.arctan2(v, u))
        du, dv = (u - ox) / s2, (v - oy) / s2
        return a | (np.hypot(du, dv) <= r2(np.arctan2(dv, du)))
    return inside


def _shape_mask(rng, kind, area_um2):
    """Local map-grid mask of a follicle with the wanted area; returns (mask, cy_off, cx_off)."""
    inside = _unit_shape(rng, kind)
    uu, vv = np.meshgrid(np.linspace(-4, 4, 401), np.linspace(-4, 4, 401))
    unit_area = inside(uu, vv).sum() * (8 / 400) ** 2
    scale = math.sqrt(area_um2 / unit_area)  # µm per unit
    half = int(math.ceil(4 * scale / GRID))
    ys, xs = np.mgrid[-half:half + 1, -half:half + 1] * GRID
    m = inside(xs / scale, ys / scale)
    ny, nx = np.nonzero(m)
    y0, y1, x0, x1 = ny.min(), ny.max() + 1, nx.min(), nx.max() + 1
    m = m[y0:y1, x0:x1]
    return m


def build_scene(case: Case) -> Scene:
    rng = np.random.default_rng(case.seed)
    hm, wm = int(round(case.height_um / GRID)), int(round(case.width_um / GRID))
    tissue = _tissue(rng, (hm, wm), rng.uniform(0.5, 0.62))
    tumour = _tumour(rng, tissue, rng.uniform(0.28, 0.38))
    septa = _septa(rng, tumour)
    z = lambda: np.zeros((hm, wm), np.int32)  # noqa: E731
    sc = Scene(case, (hm, wm), tissue, tumour, septa, z(), z(), z(), z(), np.zeros((hm, wm), bool),
               np.zeros((hm, wm), bool))

    d_out = ndi.distance_transform_edt(~tumour) * GRID   # µm outside the tumour
    d_in = ndi.distance_transform_edt(tumour) * GRID
    signed = d_out - d_in
    d_edge = ndi.distance_transform_edt(tissue) * GRID
    occupied = np.zeros((hm, wm), bool)

    def try_place(mask, ext_um, accept):
        """Place a local mask (plus ext_um around it) where accept(ys, xs, cy, cx) holds."""
        grown = dilate(np.pad(mask, int(ext_um / GRID) + 1), ext_um / GRID)
        gy, gx = np.nonzero(grown)
        oy, ox = int(ext_um / GRID) + 1, int(ext_um / GRID) + 1
        my, mx = np.nonzero(mask)
        cands = np.argwhere(tissue)
        for _ in range(400):
            cy, cx = cands[rng.integers(len(cands))]
            ty, tx = gy - oy + cy - mask.shape[0] // 2, gx - ox + cx - mask.shape[1] // 2
            if ty.min() < 0 or tx.min() < 0 or ty.max() >= hm or tx.max() >= wm:
                continue
            if occupied[ty, tx].any() or not tissue[ty, tx].all():
                continue
            fy, fx = my + cy - mask.shape[0] // 2, mx + cx - mask.shape[1] // 2
            if accept(fy, fx, ty, tx):
                return fy, fx, ty, tx
        return None

    # ---- TLS: location classes, sizes, shapes, stages
    n_tls = int(rng.integers(5, 8))
    n_tls = n_tls if case.n_tls is None else case.n_tls  # the draw is made either way: the rest of the scene stays
    # the hardest to fit first: distal (>= 560 µm from the tumour), then peritumoral, then intratumoral
    locs = (["distal", "peritumoral", "intratumoral", "intratumoral", "peritumoral", "distal", "intratumoral",
             "peritumoral"])[:n_tls]
    stages = ["mature", "primary"] * 4
    rng.shuffle(stages)
    kinds = ["lobulated", "elongated", "merged"]
    tid = 0
    for i, loc in enumerate(locs):
        kind = kinds[(i + case.seed) % 3]
        area = float(np.exp(rng.uniform(np.log(8000), np.log(45000 if loc == "intratumoral" else 60000))))
        stage = stages[i]
        tw = rng.uniform(20, 45)  # T-cell zone width, µm
        for attempt in range(6):
            mask = _shape_mask(rng, kind, area)

            def accept(fy, fx, ty, tx, loc=loc):
                c = signed[int(fy.mean()), int(fx.mean())]
                if (d_edge[ty, tx] < 25).any():
                    return False
                if loc == "intratumoral":
                    return bool((signed[ty, tx] < -25).all() and c < -80)
                if loc == "peritumoral":
                    return bool((signed[ty, tx] > 30).all() and c < 420)
                return bool((signed[ty, tx] > 520).all() and c > 620)

            placed = try_place(mask, tw + 40, accept)
            if placed:
                break
            area = max(8000.0, area * 0.75)  # a smaller one where it did not fit, never below 8,000 µm²
        if not placed:
            continue
        fy, fx, ty, tx = placed
        tid += 1
        sc.follicle[fy, fx] = tid
        occupied[ty, tx] = True
        # T-cell zone: a crescent/rim of variable width outside the follicle
        fol = sc.follicle == tid
        cy, cx = fy.mean(), fx.mean()
        dist = ndi.distance_transform_edt(~fol) * GRID
        yy, xx = np.nonzero((dist > 0) & (dist <= tw * 1.6))
        theta = np.arctan2(yy - cy, xx - cx)
        t0, cover = rng.uniform(0, 2 * np.pi), rng.uniform(-0.9, 0.1)
        wth = tw * (0.45 + 0.55 * (np.cos(theta - t0) + 1) / 2 * 1.6)
        keep = (np.cos(theta - t0) > cover) & (dist[yy, xx] <= wth) & tissue[yy, xx]
        sc.tzone[yy[keep], xx[keep]] = tid
        # germinal centre (mature) or CD21-only primary-follicle network (some primary)
        net = "none"
        if stage == "mature" or rng.random() < 0.4:
            net = "CD21+CD23" if stage == "mature" else "CD21"
            req = math.sqrt(fol.sum() * GRID * GRID / np.pi)
            frac = rng.uniform(0.45, 0.62) if stage == "mature" else rng.uniform(0.3, 0.45)
            off = rng.uniform(0, 0.2 * req)
            a = rng.uniform(0, 2 * np.pi)
            gy0, gx0 = cy + off * np.sin(a) / GRID, cx + off * np.cos(a) / GRID
            core = erode(fol, 10 / GRID)
            yy, xx = np.nonzero(core)
            in_gc = np.hypot(yy - gy0, xx - gx0) * GRID <= frac * req
            sc.gc[yy[in_gc], xx[in_gc]] = tid
        y_s, x_s = np.nonzero(fol)
        c_y, c_x = (y_s.mean() + 0.5) * GRID, (x_s.mean() + 0.5) * GRID
        sc.tls.append(dict(tls_id=tid, kind=kind, stage=stage, network=net, location=loc,
                           cd23_b_share=round(float(rng.uniform(0.02, 0.15)), 3),  # B cells dimly CD23+
                           tzone_b_per_mm2=round(float(rng.uniform(300, 1800))),  # B cells among the T cells
                           centroid_x_um=round(c_x, 1), centroid_y_um=round(c_y, 1),
                           area_um2=float(fol.sum() * GRID * GRID),
                           gc_area_um2=float((sc.gc == tid).sum() * GRID * GRID),
                           tzone_area_um2=float((sc.tzone == tid).sum() * GRID * GRID),
                           distance_to_tumour_um=round(float(signed[int(y_s.mean()), int(x_s.mean())]), 1)))

    # ---- decoys: small dense B-cell clusters (< 4,000 µm²) and loose infiltrates
    did = 0
    for j in range(int(rng.integers(2, 4))):
        area = rng.uniform(1500, 3800)
        mask = _shape_mask(rng, "lobulated", area)
        placed = try_place(mask, 40, lambda fy, fx, ty, tx: bool((d_edge[ty, tx] > 20).all()))
        if placed:
            fy, fx, ty, tx = placed
            did += 1
            sc.decoy[fy, fx] = did
            occupied[ty, tx] = True
            sc.decoys.append(dict(decoy_id=did, kind="small_cluster", area_um2=float(len(fy) * GRID * GRID),
                                  centroid_x_um=round((fx.mean() + 0.5) * GRID, 1),
                                  centroid_y_um=round((fy.mean() + 0.5) * GRID, 1)))
    for j in range(int(rng.integers(2, 4))):
        side = int(rng.uniform(200, 300) / GRID)
        blob = smooth_noise(rng, (side, side), side / 8)
        yy, xx = np.mgrid[0:side, 0:side]
        r = np.hypot(yy - side / 2, xx - side / 2) / (side / 2)
        mask = largest_component((blob - 2.2 * r * r + 0.8) > 0)
        placed = try_place(mask, 30, lambda fy, fx, ty, tx: bool((d_edge[ty, tx] > 20).all()))
        if placed:
            fy, fx, ty, tx = placed
            did += 1
            sc.decoy[fy, fx] = did
            occupied[fy, fx] = True
            sc.decoys.append(dict(decoy_id=did, kind="infiltrate", area_um2=float(len(fy) * GRID * GRID),
                                  b_per_mm2=float(rng.uniform(1200, 3000)), t_per_mm2=float(rng.uniform(800, 2000)),
                                  centroid_x_um=round((fx.mean() + 0.5) * GRID, 1),
                                  centroid_y_um=round((fy.mean() + 0.5) * GRID, 1)))

    # ---- artefact geometry (rendered later, at full resolution)
    s = case.strength
    if s["fold"] > 0:  # a straight band (with a slight bend) across the tissue, off the lymphoid structures
        # (a fold over a TLS mirrors it into the band and leaves its true area undefined)
        lymph = dilate((sc.follicle > 0) | (sc.tzone > 0) | (sc.decoy > 0), 20 / GRID)
        yy, xx = np.mgrid[0:hm, 0:wm]
        xs, ys = (xx + 0.5) * GRID, (yy + 0.5) * GRID
        ty_, tx_ = np.nonzero(tissue)
        for _try in range(60):
            ang = rng.uniform(0, np.pi)
            k = rng.integers(len(ty_))
            py, px = ty_[k] * GRID, tx_[k] * GRID
            width = rng.uniform(60, 120)
            d = -(xs - px) * np.sin(ang) + (ys - py) * np.cos(ang)
            along = (xs - px) * np.cos(ang) + (ys - py) * np.sin(ang)
            d = d - 4e-5 * along * along  # slight bend
            band = (d >= 0) & (d < width) & tissue
            source = (d >= width) & (d < 2 * width) & tissue  # the tissue folded over onto the band
            if band.sum() * GRID * GRID > 0.05e6 and not (lymph & (band | source)).any():
                sc.fold_line = (px, py, ang, width)
                sc.fold = band
                break
    if s["blur"] > 0:
        ty_, tx_ = np.nonzero(tissue & ~sc.fold)
        k = rng.integers(len(ty_))
        yy, xx = np.mgrid[0:hm, 0:wm]
        ra, rb = rng.uniform(130, 200) / GRID, rng.uniform(90, 140) / GRID
        sc.blur = (((yy - ty_[k]) / rb) ** 2 + ((xx - tx_[k]) / ra) ** 2 <= 1) & tissue
    if s["rbc"] > 0:  # congested vessels: curved strings of red blood cells
        lymph = (sc.follicle > 0) | (sc.tzone > 0) | (sc.decoy > 0)
        free = tissue & ~dilate(lymph, 20 / GRID) & (d_edge > 30)
        cand = np.argwhere(free)
        for _ in range(int(rng.integers(5, 9))):
            y, x = cand[rng.integers(len(cand))] * GRID
            a = rng.uniform(0, 2 * np.pi)
            length, width = rng.uniform(120, 400), rng.uniform(8, 30)
            pts = []
            for _step in range(int(length / 2)):
                a += rng.normal(0, 0.06)
                y, x = y + 2 * np.sin(a), x + 2 * np.cos(a)
                iy, ix = int(y / GRID), int(x / GRID)
                if not (0 <= iy < hm and 0 <= ix < wm and free[iy, ix]):
                    break
                pts.append((x, y, a))
            if len(pts) > 20:
                sc.vessels.append(dict(points=pts, width_um=width))
    if s["debris"] > 0:
        for _ in range(int(rng.integers(20, 40))):
            on_tissue = rng.random() < 0.5
            pool = np.argwhere(tissue if on_tissue else ~tissue)
            y, x = (pool[rng.integers(len(pool))] + rng.random(2)) * GRID
            sc.debris.append(dict(x=x, y=y, sigma=rng.uniform(0.8, 4.0), amp=rng.uniform(2, 8),
                                  tilt=rng.uniform(-0.5, 0.5), fibre=False))
        for _ in range(int(rng.integers(1, 3))):  # lint fibres
            pool = np.argwhere(np.ones_like(tissue))
            y, x = (pool[rng.integers(len(pool))] + rng.random(2)) * GRID
            sc.debris.append(dict(x=x, y=y, sigma=1.5, amp=rng.uniform(2, 5), tilt=rng.uniform(-0.5, 0.5),
                                  fibre=True, length=rng.uniform(60, 160), angle=rng.uniform(0, np.pi)))
    return sc


# --------------------------------------------------------------------------------------------
# cells
# --------------------------------------------------------------------------------------------

# kind: (major axis µm range, aspect range, DAPI median, vesicular)
KINDS = {
    "tumour": ((7.0, 9.5), (1.0, 1.35), 0.85, True),
    "stroma": ((7.0, 10.5), (1.8, 3.0), 1.10, False),
    "macro": ((7.0, 9.0), (1.1, 1.5), 0.80, False),
    "endo": ((8.0, 11.0), (2.5, 3.5), 1.00, False),
    "lymph": ((5.0, 6.5), (1.0, 1.15), 1.40, False),
    "cb": ((7.0, 9.0), (1.0, 1.25), 1.00, True),
    "fdc": ((7.0, 9.0), (1.2, 1.6), 0.60, True),
}
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
LYMPHOID_OVERSAMPLE = 2.5


def sample_cells(sc: Scene, rng) -> dict[str, np.ndarray]:
    """Cell centres and types from density maps, thinned so nuclei barely overlap."""
    fol, gc, tz = sc.follicle > 0, sc.gc > 0, sc.tzone > 0
    small = np.isin(sc.decoy, [d["decoy_id"] for d in sc.decoys if d["kind"] == "small_cluster"])
    lymphoid = fol | tz | small
    tumour_cells = sc.tumour & ~sc.septa & ~lymphoid
    stroma = sc.tissue & ~sc.tumour & ~lymphoid
    septa = sc.septa & ~lymphoid
    dens_noise = np.exp(0.25 * smooth_noise(rng, sc.shape_map, 60 / GRID))  # density varies by place

    tzone_b = np.zeros(sc.shape_map, np.float64)
    for item in sc.tls:
        tzone_b[sc.tzone == item["tls_id"]] = item["tzone_b_per_mm2"]  # drawn; the kept density goes to the truth

    def per_decoy(key):
        out = np.zeros(sc.shape_map, np.float64)
        for d in sc.decoys:
            if key in d:
                out[sc.decoy == d["decoy_id"]] = d[key]
        return out
    # (priority, kind, role, density map cells/mm²); role: B, T, T8 (CD8+ T), TUM, none
    pops = [
        (0, "lymph", "B", np.where(fol & ~gc, 21000, 0) + np.where(small, 21000, 0)),
        (0, "cb", "B", np.where(gc, 11000, 0)),
        (0, "fdc", "none", np.where(gc, 900, 0)),
        (0, "lymph", "T", np.where(fol, 900, 0) + np.where(tz, 11000, 0)),
        (0, "lymph", "B", tzone_b),
        (1, "lymph", "B", per_decoy("b_per_mm2")),
        (1, "lymph", "T", per_decoy("t_per_mm2")),
        (2, "tumour", "TUM", np.where(tumour_cells, 3200, 0) * dens_noise),
        (2, "stroma", "none", np.where(stroma, 1100, 0) * dens_noise),
        (2, "macro", "none", np.where(stroma, 150, 0) + np.where(sc.tumour & ~lymphoid, 100, 0)),
        (2, "endo", "none", np.where(septa, 3500, 0)),
        (2, "lymph", "T", np.where(stroma, 130, 0) + np.where(tumour_cells, 90, 0)),
        (2, "lymph", "B", np.where(sc.tissue & ~lymphoid, 20, 0)),
    ]
    parts = []
    cell_area = GRID * GRID * 1e-6
    for prio, kind, role, dens in pops:
        # lymphoid aggregates: Poisson candidates are thinned to a packed, non-overlapping layout;
        # oversampling brings the kept density near the target (follicles ~20,000 cells/mm²)
        lam = dens.astype(np.float64) * cell_area * (LYMPHOID_OVERSAMPLE if prio == 0 else 1.0)
        n = rng.poisson(lam)
        iy, ix = np.nonzero(n)
        reps = n[iy, ix]
        y = (np.repeat(iy, reps) + rng.random(reps.sum())) * GRID
        x = (np.repeat(ix, reps) + rng.random(reps.sum())) * GRID
        m = len(x)
        (lo, hi), (alo, ahi), dapi, _ves = KINDS[kind]
        major = rng.uniform(lo, hi, m)
        aspect = rng.uniform(alo, ahi, m)
        parts.append(dict(x=x, y=y, a=major / 2, b=major / 2 / aspect, kind=np.full(m, KIND_CODE[kind]),
                          role=np.full(m, role, dtype=object), prio=prio + rng.random(m)))
    cells = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # hard-core thinning, by priority: centres at least 0.8 x (r_i + r_j) apart
    order = np.argsort(cells["prio"])
    cells = {k: v[order] for k, v in cells.items()}
    r = np.sqrt(cells["a"] * cells["b"])
    tree = cKDTree(np.c_[cells["x"], cells["y"]])
    pairs = tree.query_pairs(2 * 0.8 * r.max(), output_type="ndarray")
    d = np.hypot(*(np.c_[cells["x"], cells["y"]][pairs[:, 0]] - np.c_[cells["x"], cells["y"]][pairs[:, 1]]).T)
    pairs = pairs[d < 0.8 * (r[pairs[:, 0]] + r[pairs[:, 1]])]
    nbr: dict[int, list[int]] = {}
    for i, j in pairs:
        lo_, hi_ = (i, j) if i < j else (j, i)
        nbr.setdefault(hi_, []).append(lo_)  # the later (lower-priority) one yields
    keep = np.ones(len(r), bool)
    for i in range(len(r)):
        if keep[i] and i in nbr and any(keep[j] for j in nbr[i]):
            keep[i] = False
    cells = {k: v[keep] for k, v in cells.items()}
    # drop centres off tissue (map-grid lookup)
    iy = np.clip((cells["y"] / GRID).astype(int), 0, sc.shape_map[0] - 1)
    ix = np.clip((cells["x"] / GRID).astype(int), 0, sc.shape_map[1] - 1)
    on = sc.tissue[iy, ix]
    cells = {k: v[on] for k, v in cells.items()}
    n = len(cells["x"])
    cells["theta"] = rng.uniform(0, np.pi, n)
    iy = np.clip((cells["y"] / GRID).astype(int), 0, sc.shape_map[0] - 1)
    ix = np.clip((cells["x"] / GRID).astype(int), 0, sc.shape_map[1] - 1)
    cells["tls"] = np.maximum(sc.follicle[iy, ix], sc.tzone[iy, ix])
    cells["fold_copy"] = np.zeros(n, bool)
    # fold: the tissue beyond the band is folded over onto it (a mirrored second layer)
    if sc.fold_line is not None:
        px, py, ang, width = sc.fold_line
        d = -(cells["x"] - px) * np.sin(ang) + (cells["y"] - py) * np.cos(ang)
        along = (cells["x"] - px) * np.cos(ang) + (cells["y"] - py) * np.sin(ang)
        d = d - 4e-5 * along * along
        src = (d >= width) & (d < 2 * width)
        shift = 2 * (d[src] - width)  # reflect about d = width
        nx_ = cells["x"][src] - shift * (-np.sin(ang))
        ny_ = cells["y"][src] - shift * np.cos(ang)
        iy = np.clip((ny_ / GRID).astype(int), 0, sc.shape_map[0] - 1)
        ix = np.clip((nx_ / GRID).astype(int), 0, sc.shape_map[1] - 1)
        ok = sc.fold[iy, ix]
        copy = {k: v[src][ok] for k, v in cells.items()}
        copy["x"], copy["y"] = nx_[ok], ny_[ok]
        copy["theta"] = np.pi - copy["theta"]
        copy["fold_copy"] = np.ones(ok.sum(), bool)
        cells = {k: np.concatenate([cells[k], copy[k]]) for k in cells}
    return cells


def cell_amplitudes(cells, rng, sc: Scene) -> dict[str, dict[str, np.ndarray]]:
    """Per cell and channel the stain amplitude: {"nuc": {...}, "mem": {...}} (gain 1)."""
    n = len(cells["x"])
    role, kind = cells["role"], cells["kind"]
    z = lambda: np.zeros(n, np.float32)  # noqa: E731
    nuc = {m: z() for m in MARKERS}
    mem = {m: z() for m in MARKERS}
    dapi_med = np.array([KINDS[k][2] for k in KINDS])[kind]
    nuc["DAPI"] = lognormal(rng, 1.0, 0.25, n) * dapi_med
    b, t = role == "B", (role == "T")
    gcb = b & (kind == KIND_CODE["cb"])
    mem["CD20"][b] = lognormal(rng, 1.0, 0.35, b.sum()) * np.where(gcb[b], 0.8, 1.0)
    mem["CD21"][b] = lognormal(rng, 0.08, 0.5, b.sum())      # dim CD21 on naive/mantle B cells
    share = np.full(n, 0.05)  # B cells outside TLS
    for item in sc.tls:
        share[cells["tls"] == item["tls_id"]] = item["cd23_b_share"]
    cd23b = b & (rng.random(n) < share)
    mem["CD23"][cd23b] = lognormal(rng, 0.35, 0.4, cd23b.sum())  # scattered CD23+ (activated/mantle) B cells
    mem["CD3"][t] = lognormal(rng, 1.0, 0.35, t.sum())
    t8 = t & (rng.random(n) < 0.38)
    mem["CD8"][t8] = lognormal(rng, 0.9, 0.35, t8.sum())
    tum = (role == "TUM") & (rng.random(n) < 0.93)
    nuc["TFE3"][tum] = lognormal(rng, 0.6, 0.4, tum.sum())      # dim, heterogeneous nuclear tumour marker
    return {"nuc": nuc, "mem": mem}


def render_cells(shape, p, cells, amps, texture, rng) -> dict[str, np.ndarray]:
    """Stamp every cell into per-channel stain images (full resolution, gain 1)."""
    img = {m: np.zeros(shape, np.float32) for m in MARKERS}
    n = len(cells["x"])
    irr = rng.uniform(0.02, 0.08, (n, 2))
    ph = rng.uniform(0, 2 * np.pi, (n, 2))
    nucleolus = rng.random(n) < 0.7
    ves = np.array([KINDS[k][3] for k in KINDS])[cells["kind"]]
    nuc_ch = [m for m in MARKERS if amps["nuc"][m].any()]
    mem_ch = [m for m in MARKERS if amps["mem"][m].any()]
    edge = 0.7  # µm: soft nuclear edge
    H, W = shape
    for i in range(n):
        x, y, a, b, th = cells["x"][i], cells["y"][i], cells["a"][i], cells["b"][i], cells["theta"][i]
        hw = int(math.ceil((a + 3.0) / p))
        cxp, cyp = x / p - 0.5, y / p - 0.5
        ix0, iy0 = int(round(cxp)) - hw, int(round(cyp)) - hw
        xs0, ys0 = max(ix0, 0), max(iy0, 0)
        xs1, ys1 = min(ix0 + 2 * hw + 1, W), min(iy0 + 2 * hw + 1, H)
        if xs1 <= xs0 or ys1 <= ys0:
            continue
        X = (np.arange(xs0, xs1) - cxp) * p
        Y = (np.arange(ys0, ys1) - cyp) * p
        Xg, Yg = np.meshgrid(X, Y)
        c, s = math.cos(th), math.sin(th)
        U, V = (Xg * c + Yg * s) / a, (-Xg * s + Yg * c) / b
        d = np.sqrt(U * U + V * V)
        t = np.arctan2(V, U)
        d = d / (1 + irr[i, 0] * np.cos(3 * t + ph[i, 0]) + irr[i, 1] * np.cos(5 * t + ph[i, 1]))
        rm = math.sqrt(a * b)
        prof = np.clip((1 - d) * rm / edge + 0.5, 0, 1)
        sl = (slice(ys0, ys1), slice(xs0, xs1))
        tex = texture[sl]
        dapi = prof * tex
        if ves[i]:  # open chromatin: rim a little brighter than the centre; the nucleolus is DAPI-dark
            dapi = dapi * (0.75 + 0.25 * np.minimum(d, 1) ** 2)
            if nucleolus[i]:
                dapi = dapi * (1 - 0.5 * np.exp(-((Xg - 0.25 * a * c) ** 2 + (Yg - 0.25 * a * s) ** 2) / 0.8))
        img["DAPI"][sl] += amps["nuc"]["DAPI"][i] * dapi
        for m in nuc_ch:
            if m != "DAPI" and amps["nuc"][m][i] > 0:
                img[m][sl] += amps["nuc"][m][i] * prof * (0.8 + 0.2 * tex)
        if any(amps["mem"][m][i] > 0 for m in mem_ch):
            rho = (d - 1) * rm
            ring = np.exp(-(((rho - 0.6) / 0.75) ** 2)) + 0.25 * prof
            for m in mem_ch:
                if amps["mem"][m][i] > 0:
                    img[m][sl] += amps["mem"][m][i] * ring
    return img


# --------------------------------------------------------------------------------------------
# rendering the slide
# --------------------------------------------------------------------------------------------

def render(sc: Scene, cells, rng) -> tuple[np.ndarray, list[str], dict]:
    case, p = sc.case, sc.case.pixel_um
    s = case.strength
    H, W = int(round(case.height_um / p)), int(round(case.width_um / p))
    shape, f = (H, W), GRID / p
    names = list(MARKERS) + ([AF_NAME] if case.af_channel else [])

    texture = np.clip(1 + 0.22 * smooth_noise(rng, shape, 0.6 / p), 0.3, 1.8).astype(np.float32)
    amps = cell_amplitudes(cells, rng, sc)
    t0 = time.perf_counter()
    stain = render_cells(shape, p, cells, amps, texture, rng)
    t_cells = time.perf_counter() - t0
    del texture

    # follicular dendritic cell reticulum: zero lines of a fine random field, inside the network zone
    for item in sc.tls:
        if item["network"] == "none":
            continue
        gy, gx = np.nonzero(sc.gc == item["tls_id"])
        y0, y1 = max(0, int((gy.min() - 4) * f)), min(H, int((gy.max() + 5) * f))
        x0, x1 = max(0, int((gx.min() - 4) * f)), min(W, int((gx.max() + 5) * f))
        local = (sc.gc[int(y0 / f):int(math.ceil(y1 / f)), int(x0 / f):int(math.ceil(x1 / f))] == item["tls_id"])
        zone = ndi.zoom(ndi.gaussian_filter(local.astype(np.float32), 1.5), f, order=1, grid_mode=True,
                        mode="nearest")
        oy, ox = y0 - int(y0 / f) * int(f), x0 - int(x0 / f) * int(f)
        zone = np.clip(zone[oy:oy + (y1 - y0), ox:ox + (x1 - x0)] * 2.2 - 0.6, 0, 1)
        fld = smooth_noise(rng, zone.shape, 1.6 / p)
        grad = np.hypot(*np.gradient(fld)) + 1e-6
        fibres = np.exp(-((fld / (0.7 * grad / p + 1e-3)) ** 2))  # ~1.5 µm lines along the zero crossings
        bodies = np.zeros(zone.shape, np.float32)
        nb = int(zone.sum() * p * p / 120)
        by, bx = rng.integers(0, zone.shape[0], nb), rng.integers(0, zone.shape[1], nb)
        bodies[by, bx] = 1
        bodies = ndi.gaussian_filter(bodies, 1.2 / p) * (2 * np.pi * (1.2 / p) ** 2)
        net = np.clip(fibres + bodies, 0, 1.3) * zone * (1 + 0.25 * smooth_noise(rng, zone.shape, 8 / p))
        net = np.clip(net, 0, None).astype(np.float32)
        amp21 = float(lognormal(rng, 1.0, 0.2, 1)[0])
        stain["CD21"][y0:y1, x0:x1] += amp21 * net
        if item["network"] == "CD21+CD23":
            light = np.clip(0.6 + 0.6 * smooth_noise(rng, zone.shape, 15 / p), 0.3, 1.0)  # light zone bias
            stain["CD23"][y0:y1, x0:x1] += float(lognormal(rng, 0.85, 0.2, 1)[0]) * net * light

    # region maps at full resolution
    tissue = np.clip((upsample(ndi.gaussian_filter(sc.tissue.astype(np.float32), 1.0), f, shape) - 0.5) * 3 + 0.5,
                     0, 1)
    lymph = (sc.follicle > 0) | (sc.tzone > 0) | (sc.decoy > 0)
    stroma_map = sc.tissue & ~sc.tumour & ~lymph
    region = np.where(stroma_map, 1.15, np.where(sc.septa, 1.1, np.where(lymph, 0.7, 1.0))).astype(np.float32)
    region = upsample(ndi.gaussian_filter(region, 3.0), f, shape)
    stroma_w = upsample(ndi.gaussian_filter((stroma_map | sc.septa).astype(np.float32), 3.0), f, shape)
    low = upsample(np.exp(0.18 * smooth_noise(rng, sc.shape_map, 150 / GRID)), f, shape)
    # collagen: two anisotropic fibre fields, blended by a slowly varying orientation weight
    fa = smooth_noise(rng, shape, None, anisotropic=(1.2 / p, 10 / p))
    fb = smooth_noise(rng, shape, None, anisotropic=(10 / p, 1.2 / p))
    wdir = upsample(1 / (1 + np.exp(-2 * smooth_noise(rng, sc.shape_map, 100 / GRID))), f, shape)
    collagen = wdir * np.exp(-(fa / 0.35) ** 2) + (1 - wdir) * np.exp(-(fb / 0.35) ** 2)
    del fa, fb, wdir
    collagen *= stroma_w * s["collagen"]  # fibre texture on top of the smooth AF (needs autofluorescence)
    d_edge = upsample(ndi.distance_transform_edt(sc.tissue) * GRID, f, shape)
    rim = 1 + s["edge_rim"] * 2.0 * np.exp(-np.maximum(d_edge - 1.0, 0) / 7.0) * tissue
    foldw = upsample(ndi.gaussian_filter(sc.fold.astype(np.float32), 2.0), f, shape) if sc.fold.any() else 0

    # red blood cells and debris images
    rbc = np.zeros(shape, np.float32)
    for v in sc.vessels:
        pts = v["points"]
        nrbc = int(len(pts) * 2 * v["width_um"] * 0.8 / 38)
        idx = rng.integers(0, len(pts), nrbc)
        for k in idx:
            x, y, a = pts[k]
            off = rng.uniform(-0.5, 0.5) * v["width_um"]
            x, y = x - off * np.sin(a), y + off * np.cos(a)
            r = rng.uniform(3.3, 4.0)
            hw = int(math.ceil((r + 1.5) / p))
            cx, cy = x / p - 0.5, y / p - 0.5
            x0, y0 = max(int(round(cx)) - hw, 0), max(int(round(cy)) - hw, 0)
            x1, y1 = min(int(round(cx)) + hw + 1, W), min(int(round(cy)) + hw + 1, H)
            if x1 <= x0 or y1 <= y0:
                continue
            Xg, Yg = np.meshgrid((np.arange(x0, x1) - cx) * p, (np.arange(y0, y1) - cy) * p)
            d = np.hypot(Xg, Yg) / r
            prof = np.clip((1 - d) * r / 0.6 + 0.5, 0, 1) * (0.55 + 0.45 * np.minimum(d, 1) ** 2)
            rbc[y0:y1, x0:x1] = np.maximum(rbc[y0:y1, x0:x1], prof * float(lognormal(rng, 1.0, 0.2, 1)[0]))
    deb = {m: np.zeros(shape, np.float32) for m in names}
    for dbr in sc.debris:
        spot = np.zeros(shape, np.float32)
        if dbr["fibre"]:
            tt = np.linspace(-0.5, 0.5, int(dbr["length"] / p)) * dbr["length"]
            xs = ((dbr["x"] + tt * np.cos(dbr["angle"])) / p).astype(int)
            ys = ((dbr["y"] + tt * np.sin(dbr["angle"]) + 8 * np.sin(tt / 25)) / p).astype(int)
            ok = (xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)
            spot[ys[ok], xs[ok]] = 1
        else:
            iy, ix = int(dbr["y"] / p), int(dbr["x"] / p)
            if 0 <= iy < H and 0 <= ix < W:
                spot[iy, ix] = 1
        sig = dbr["sigma"] / p
        hw = int(4 * sig + 3)
        ys_, xs_ = np.nonzero(spot)
        if len(ys_) == 0:
            continue
        y0, y1 = max(ys_.min() - hw, 0), min(ys_.max() + hw + 1, H)
        x0, x1 = max(xs_.min() - hw, 0), min(xs_.max() + hw + 1, W)
        blob = ndi.gaussian_filter(spot[y0:y1, x0:x1], sig)
        blob = blob / (blob.max() + 1e-9) * dbr["amp"]
        for k, m in enumerate(names):
            deb[m][y0:y1, x0:x1] += blob * (1 + dbr["tilt"] * (k / len(names) - 0.5)) * (0.5 if m == "DAPI" else 1)
        del spot

    # blurred (out-of-focus) patch: stain and red blood cells blurred inside it
    if sc.blur.any():
        bw = upsample(ndi.gaussian_filter(sc.blur.astype(np.float32), 4.0), f, shape)
        ys_, xs_ = np.nonzero(bw > 0.01)
        sl = (slice(ys_.min(), ys_.max() + 1), slice(xs_.min(), xs_.max() + 1))
        sig = 2.5 * s["blur"] / p
        for m in MARKERS:
            stain[m][sl] = bw[sl] * ndi.gaussian_filter(stain[m][sl], sig) + (1 - bw[sl]) * stain[m][sl]
        rbc[sl] = bw[sl] * ndi.gaussian_filter(rbc[sl], sig) + (1 - bw[sl]) * rbc[sl]

    # per-slide stain gains and crosstalk
    gains = {m: (float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)) * s["stain_gain"])) if m != "DAPI" else
                 float(np.exp(rng.uniform(np.log(0.7), np.log(1.4)) * s["stain_gain"]))) for m in MARKERS}
    xtalk = {k: float(rng.uniform(*v)) * s["crosstalk"] for k, v in XTALK.items()}
    measured = {m: gains[m] * stain[m] for m in MARKERS}
    for (src, dst), share in xtalk.items():
        if share > 0:
            measured[dst] += share * gains[src] * stain[src]
    del stain

    # illumination: slide gradient, per-field gain steps, slight vignetting
    yy = (np.arange(H, dtype=np.float32) + 0.5) * p
    xx = (np.arange(W, dtype=np.float32) + 0.5) * p
    gx, gy = (xx / case.width_um * 2 - 1)[None, :], (yy / case.height_um * 2 - 1)[:, None]
    c = rng.uniform(-1, 1, 4)
    grad = c[0] * gx + c[1] * gy + c[2] * gx * gy + c[3] * (gx * gx - 0.5)
    grad = grad / (np.abs(grad).max() + 1e-9)
    fw, fh = 480.0, 360.0
    fy, fx = (yy // fh).astype(int), (xx // fw).astype(int)
    tile_gain = rng.uniform(-1, 1, (fy.max() + 1, fx.max() + 1))
    ry, rx = ((yy % fh) / fh * 2 - 1)[:, None], ((xx % fw) / fw * 2 - 1)[None, :]
    si = s["illumination"]
    illum = ((1 + 0.25 * si * grad) * (1 + 0.10 * si * tile_gain[fy][:, fx])
             * (1 - 0.05 * si * (rx * rx + ry * ry) / 2)).astype(np.float32)
    del grad

    scale, read_sd, shot_k = (2000.0, 12.0, 1.5) if case.dtype == "uint16" else (8.0, 0.04, 0.006)
    out = np.empty((len(names), H, W), dtype=np.uint16 if case.dtype == "uint16" else np.float32)
    params = dict(gains=gains, crosstalk={f"{a}->{b}": v for (a, b), v in xtalk.items()}, dark={}, af={})
    for k, m in enumerate(names):
        af = (AF_WEIGHT[m] * s["autofluorescence"] * tissue * low * (region + FIBRE_WEIGHT[m] * 1.0 * collagen)
              * rim)
        if not isinstance(foldw, int):
            af *= 1 + 0.9 * foldw * s["fold"]
        sig = 0.02 + af + RBC_WEIGHT[m] * s["rbc"] * rbc + s["debris"] * deb[m]
        if m in measured:
            edge_ns = 0.12 * s["edge_rim"] * tissue * np.exp(-np.maximum(d_edge - 1.0, 0) / 7.0)
            sig = sig + measured[m] + (gains[m] * edge_ns if m != "DAPI" else 0)
        sig *= illum
        dark = (rng.uniform(150, 600) if case.dtype == "uint16" else rng.uniform(0.02, 0.12) * scale) * s["dark_offset"]
        counts = sig * scale
        counts = counts + rng.standard_normal(shape, dtype=np.float32) * np.sqrt(read_sd ** 2 + shot_k * counts)
        counts += dark
        if case.dtype == "uint16":
            out[k] = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
        else:
            out[k] = counts.astype(np.float32)
        params["dark"][m] = round(float(dark), 3)
        params["af"][m] = round(float(AF_WEIGHT[m] * s["autofluorescence"] * scale), 3)
    params["render_cells_s"] = round(t_cells, 1)
    return out, names, params


def write_ome_tiff(path: Path, data: np.ndarray, names: list[str], p: float) -> None:
    """Tiled (512) pyramidal OME-TIFF: level 0 plus 2 SubIFD levels, channel names, µm pixel size."""
    tmp = path.with_suffix(".part")
    levels = [data]
    for _ in range(2):
        a = levels[-1]
        h, w = a.shape[1] // 2 * 2, a.shape[2] // 2 * 2
        b = a[:, :h, :w].astype(np.float32).reshape(a.shape[0], h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        levels.append(b.astype(data.dtype) if data.dtype == np.float32 else np.rint(b).astype(data.dtype))
    opts = dict(tile=(512, 512), compression="zlib", compressionargs={"level": 3}, photometric="minisblack")
    meta = {"axes": "CYX", "Channel": {"Name": names}, "PhysicalSizeX": p, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": p, "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, metadata=meta, resolution=(1e4 / p, 1e4 / p),
                  resolutionunit="CENTIMETER", **opts)
        for k, lv in enumerate(levels[1:], start=1):
            q = p * 2 ** k
            tif.write(lv, subfiletype=1, resolution=(1e4 / q, 1e4 / q), resolutionunit="CENTIMETER", **opts)
    os.replace(tmp, path)


def make_slide(case: Case, folder: Path) -> dict:
    """Render one case to folder/slide.ome.tiff with folder/truth.json and folder/truth_maps.npz."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sc = build_scene(case)
    rng = np.random.default_rng(case.seed + 1000)
    cells = sample_cells(sc, rng)
    data, names, params = render(sc, cells, rng)
    iy = np.clip((cells["y"] / GRID).astype(int), 0, sc.shape_map[0] - 1)
    ix = np.clip((cells["x"] / GRID).astype(int), 0, sc.shape_map[1] - 1)
    for item in sc.tls:  # densities as rendered (after thinning)
        tz = sc.tzone[iy, ix] == item["tls_id"]
        fol = sc.follicle[iy, ix] == item["tls_id"]
        item["tzone_b_per_mm2"] = round(float((tz & (cells["role"] == "B")).sum() / max(item["tzone_area_um2"], 1) * 1e6))
        item["follicle_cells_per_mm2"] = round(float(fol.sum() / item["area_um2"] * 1e6))
    write_ome_tiff(folder / "slide.ome.tiff", data, names, case.pixel_um)
    b = np.isin(cells["role"], ["B"])
    ta = sc.tissue.sum() * GRID * GRID * 1e-6
    tum = sc.tumour.sum() * GRID * GRID * 1e-6
    counted = [t for t in sc.tls if t["location"] in ("intratumoral", "peritumoral")]
    truth = dict(
        case=case.name, seed=case.seed, pixel_size_um=case.pixel_um, dtype=case.dtype, channels=names,
        width_um=case.width_um, height_um=case.height_um, strength=case.strength,
        tissue_area_mm2=round(ta, 4), tumour_area_mm2=round(tum, 4),
        tls=sc.tls, decoys=sc.decoys, tls_counted=len(counted),
        tls_density_per_mm2=len(counted) / tum, tls_area_pct=sum(t["area_um2"] for t in counted) / (tum * 1e6) * 100,
        cells_total=int(len(cells["x"])), cells_fold_copies=int(cells["fold_copy"].sum()),
        cd20_cells=int(b.sum()), cd20_pct=float(100 * b.mean()),
        artefacts=dict(vessels=len(sc.vessels), rbc_area_um2=float(sum(len(v["points"]) * 2 * v["width_um"]
                                                                         for v in sc.vessels)),
                       debris=len(sc.debris), fold=bool(sc.fold.any()),
                       fold_area_mm2=float(sc.fold.sum() * GRID * GRID * 1e-6),
                       blur_area_mm2=float(sc.blur.sum() * GRID * GRID * 1e-6)),
        render=params, seconds_to_make=round(time.perf_counter() - t0, 1),
    )
    vessel_map = np.zeros(sc.shape_map, bool)
    for v in sc.vessels:
        for x, y, _a in v["points"]:
            vessel_map[min(int(y / GRID), sc.shape_map[0] - 1), min(int(x / GRID), sc.shape_map[1] - 1)] = True
    if sc.vessels:
        vessel_map = dilate(vessel_map, max(v["width_um"] for v in sc.vessels) / 2 / GRID + 1)
    np.savez_compressed(folder / "truth_maps.npz", tissue=sc.tissue, tumour=sc.tumour, follicle=sc.follicle,
                        gc=sc.gc, tzone=sc.tzone, decoy=sc.decoy, fold=sc.fold, blur=sc.blur, vessels=vessel_map)
    np.savez_compressed(folder / "truth_cells.npz", x=cells["x"].astype(np.float32), y=cells["y"].astype(np.float32),
                        kind=cells["kind"].astype(np.int8), cd20=b, role=cells["role"].astype(str),
                        fold_copy=cells["fold_copy"])
    (folder / "truth.json").write_text(json.dumps(truth, indent=1, default=float))
    _truth_picture(folder, data, names, sc, case.pixel_um)
    return truth


def _truth_picture(folder, data, names, sc, p):
    """truth.png: a downsampled composite with the truth outlines (for eyeballing beside qc.png)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return
    step = max(1, int(round(4 / p)))
    chan = {n: data[names.index(n), ::step, ::step].astype(np.float32) for n in ("DAPI", "CD20", "CD3", "TFE3")}
    for n, a in chan.items():
        lo, hi = np.percentile(a, [1, 99.7])
        chan[n] = np.clip((a - lo) / (hi - lo + 1e-9), 0, 1)
    rgb = np.stack([chan["CD20"] + 0.4 * chan["TFE3"], chan["CD3"] + 0.4 * chan["TFE3"],
                    chan["DAPI"] + 0.4 * chan["TFE3"]], -1)
    rgb = np.clip(rgb, 0, 1)
    h, w = rgb.shape[:2]

    def edge(mask):
        m = ndi.zoom(mask.astype(np.uint8), GRID / (p * step), order=0)[:h, :w]
        m = np.pad(m, ((0, h - m.shape[0]), (0, w - m.shape[1])))
        return m.astype(bool) & ~ndi.binary_erosion(m.astype(bool))
    rgb[edge(sc.tumour)] = (1, 1, 0)
    for t in sc.tls:
        rgb[edge(sc.follicle == t["tls_id"])] = (1, 0, 1) if t["stage"] == "mature" else (0, 1, 1)
    rgb[edge(sc.decoy > 0)] = (1, 0.5, 0)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(folder / "truth.png")


# --------------------------------------------------------------------------------------------
# analysis and scoring
# --------------------------------------------------------------------------------------------

def run_tlsquant(folder: Path) -> float:
    out = folder / "out"
    if out.exists():
        shutil.rmtree(out)
    exe = shutil.which("tlsquant") or str(Path(sys.executable).parent / "tlsquant")
    t0 = time.perf_counter()
    # --cells-table only adds the per-cell table the diagnosis below reads; the analysis is the default one
    proc = subprocess.run([exe, "analyze", str(folder / "slide.ome.tiff"), "-o", str(out), "-q", "--cells-table"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tlsquant analyze failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def _polygon_mask(geometry, shape_map, p):
    """Rasterise a GeoJSON (Multi)Polygon in level-0 px onto the map grid (cell centres)."""
    from skimage.draw import polygon as draw_polygon
    mask = np.zeros(shape_map, bool)
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    for poly in polys:
        for k, ring in enumerate(poly):
            ring = np.asarray(ring, float) * p / GRID - 0.5  # px -> map grid index (cell centres)
            rr, cc = draw_polygon(ring[:, 1], ring[:, 0], shape_map)
            if k == 0:
                mask[rr, cc] = True
            else:
                mask[rr, cc] = False
    return mask


def score_case(folder: Path, truth: dict) -> dict:
    out = folder / "out"
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "tls.csv", newline="") as fh:
        found = list(csv.DictReader(fh))
    maps = np.load(folder / "truth_maps.npz")
    shape_map = maps["follicle"].shape
    p = truth["pixel_size_um"]
    geo = json.loads((out / "tls.geojson").read_text())
    fmask = {}
    for feat in geo["features"]:
        tid = int(feat["properties"].get("tls_id", feat["properties"].get("metadata", {}).get("tls_id")))
        fmask[tid] = _polygon_mask(feat["geometry"], shape_map, p)
    # overlap matrix: share of the truth follicle covered, share of the found outline on it
    pairs = []
    for row in found:
        tid = int(row["tls_id"])
        m = fmask.get(tid)
        for t in truth["tls"]:
            tm = maps["follicle"] == t["tls_id"]
            inter = (m & tm).sum() if m is not None else 0
            cx, cy = float(row["centroid_x_um"]), float(row["centroid_y_um"])
            dist = math.hypot(cx - t["centroid_x_um"], cy - t["centroid_y_um"])
            r_eq = math.sqrt(t["area_um2"] / math.pi)
            if inter / max(1, tm.sum()) >= 0.3 or inter / max(1, m.sum() if m is not None else 1) >= 0.5 or dist < r_eq:
                iou = inter / max(1, (m | tm).sum()) if m is not None else 0
                pairs.append((iou, dist, tid, t["tls_id"]))
    pairs.sort(key=lambda q: (-q[0], q[1]))
    match, used_f, used_t = {}, set(), set()
    merged = {}
    for iou, dist, fid, tid in pairs:
        if fid in used_f:
            if tid not in used_t:
                merged.setdefault(fid, []).append(tid)
            continue
        if tid in used_t:
            continue
        match[tid] = fid
        used_f.add(fid)
        used_t.add(tid)
    rows = {int(r["tls_id"]): r for r in found}
    # which truth object does each unmatched detection sit on?
    fps = []
    for fid, r in rows.items():
        if fid in used_f:
            continue
        m = fmask.get(fid)
        what = []
        if m is not None:
            for key, label in (("decoy", None), ("tzone", "T-cell zone"), ("vessels", "RBC vessel"),
                               ("fold", "fold"), ("blur", "blur patch")):
                hit = maps[key][m]
                if key == "decoy" and hit.any():
                    ids = set(np.unique(hit[hit > 0]).tolist())
                    what += [f"decoy {d['kind']} #{d['decoy_id']} ({d['area_um2']:.0f} µm²"
                             + (f", {d['b_per_mm2']:.0f} B + {d['t_per_mm2']:.0f} T cells/mm²)" if "b_per_mm2" in d else ")")
                             for d in truth["decoys"] if d["decoy_id"] in ids]
                elif key != "decoy" and hit.mean() > 0.2:
                    what.append(label)
        fps.append(dict(tls_id=fid, x=float(r["centroid_x_um"]), y=float(r["centroid_y_um"]),
                        area_um2=float(r["area_um2"]), stage=r["stage"], location=r["location"],
                        on=", ".join(what) or "nothing known (tissue)"))
    # rejected candidates overlapping missed TLS
    ann_path = out / "annotations.geojson"
    ann = json.loads(ann_path.read_text()) if ann_path.exists() else {"features": []}
    cand = []
    for feat in ann["features"]:
        md = feat["properties"].get("metadata", {})
        if "reason" in md:
            cand.append((md["reason"], _polygon_mask(feat["geometry"], shape_map, p)))
    per_tls = []
    for t in truth["tls"]:
        fid = match.get(t["tls_id"])
        item = dict(truth_id=t["tls_id"], kind=t["kind"], true_stage=t["stage"], network=t["network"],
                    cd23_b_share=t.get("cd23_b_share"), gc_area_um2=t["gc_area_um2"],
                    tzone_b_per_mm2=t.get("tzone_b_per_mm2"),
                    true_location=t["location"], true_area_um2=t["area_um2"],
                    true_distance_um=t["distance_to_tumour_um"], found_id=fid)
        if fid is not None:
            r = rows[fid]
            item.update(found_stage=r["stage"], found_location=r["location"], found_area_um2=float(r["area_um2"]),
                        area_err=float(r["area_um2"]) / t["area_um2"] - 1,
                        found_distance_um=float(r["distance_to_tumour_um"]) if r["distance_to_tumour_um"] else None,
                        gc_network_um2=float(r.get("germinal_centre_network_um2") or 0),
                        fdc_network_um2=float(r.get("fdc_network_um2") or 0),
                        merged_with=[m for f, ms in merged.items() if f == fid for m in ms])
        else:
            tm = maps["follicle"] == t["tls_id"]
            item["rejected_as"] = sorted({reason for reason, cm in cand if (cm & tm).sum() > 0.2 * tm.sum()})
            item["merged_into"] = [f for f, ms in merged.items() if t["tls_id"] in ms]
        per_tls.append(item)
    matched = [q for q in per_tls if q["found_id"] is not None]
    n_true, n_found = len(truth["tls"]), len(found)
    cells = summary.get("cells") or {}

    def rel(a, b):
        return None if a is None or b in (None, 0) else a / b - 1

    res = dict(
        tls_true=n_true, tls_found=n_found,
        recall=len(matched) / n_true if n_true else 1.0,
        precision=len(matched) / n_found if n_found else 1.0,
        stage_acc=(sum(q["found_stage"] == q["true_stage"] for q in matched) / len(matched)) if matched else None,
        location_acc=(sum(q["found_location"] == q["true_location"] for q in matched) / len(matched)) if matched else None,
        worst_area_err=max((abs(q["area_err"]) for q in matched), default=None),
        median_area_err=float(np.median([q["area_err"] for q in matched])) if matched else None,
        tumour_err=rel(summary.get("tumour_area_mm2"), truth["tumour_area_mm2"]),
        # a TLS-free slide: any density found is a miss (no relative error against 0)
        density_err=rel(summary.get("tls_density_per_mm2"), truth["tls_density_per_mm2"])
        if truth["tls_density_per_mm2"] else (0.0 if not summary.get("tls_density_per_mm2") else float("inf")),
        cells_err=rel(cells.get("total"), truth["cells_total"]),
        cd20_err=rel(summary.get("cd20_pct"), truth["cd20_pct"]),
        tumour_found=summary.get("tumour_area_mm2"), tumour_true=truth["tumour_area_mm2"],
        tissue_err=rel(summary.get("tissue_area_mm2"), truth["tissue_area_mm2"]),
        cells_outside_tissue=cells.get("excluded_outside_tissue"), cells_in_artefacts=cells.get("in_artefacts"),
        density_found=summary.get("tls_density_per_mm2"), density_true=truth["tls_density_per_mm2"],
        cells_found=cells.get("total"), cells_true=truth["cells_total"],
        cd20_found=summary.get("cd20_pct"), cd20_true=truth["cd20_pct"],
        artefact_mm2=summary.get("excluded_artefact_area_mm2"),
        rejections={k: v for k, v in summary.get("segmentation", {}).items() if k.startswith("rejected")},
        warnings=summary.get("warnings", []), per_tls=per_tls, false_positives=fps,
    )
    res["cell_diagnosis"] = cell_diagnosis(folder, out, maps)
    res["misses"] = acceptance(res)
    return res


def cell_diagnosis(folder: Path, out: Path, maps) -> dict | None:
    """Found cells against the true nuclei, per kind of cell: missed, split, spurious, CD20 calls."""
    table = out / "cells.csv.gz"
    if not table.exists():
        return None
    import pandas as pd
    found = pd.read_csv(table)
    t = np.load(folder / "truth_cells.npz")
    if len(found) == 0:
        return dict(found=0)
    tree = cKDTree(np.c_[t["x"], t["y"]])
    d, i = tree.query(np.c_[found["centroid_x_um"], found["centroid_y_um"]])
    near = d < 5.0
    hits = np.bincount(i[near], minlength=len(t["x"]))
    kinds = {}
    for name, code in KIND_CODE.items():
        m = t["kind"] == code
        if m.any():
            kinds[name] = dict(true=int(m.sum()), found_per_true=round(float(hits[m].sum() / m.sum()), 3),
                               missed=round(float((hits[m] == 0).mean()), 3), split=round(float((hits[m] > 1).mean()), 3))
    far = ~near
    iy = np.clip((found["centroid_y_um"].to_numpy() / GRID).astype(int), 0, maps["tissue"].shape[0] - 1)
    ix = np.clip((found["centroid_x_um"].to_numpy() / GRID).astype(int), 0, maps["tissue"].shape[1] - 1)
    spurious = dict(total=int(far.sum()))
    for key in ("tumour", "fold", "blur", "vessels"):
        spurious[f"on_{key}"] = int(maps[key][iy[far], ix[far]].sum())
    spurious["on_glass"] = int((~maps["tissue"][iy[far], ix[far]]).sum())
    res = dict(found=int(len(found)), true=int(len(t["x"])), kinds=kinds, spurious=spurious)
    if "CD20_positive" in found:
        pos = found["CD20_positive"].astype(bool).to_numpy()
        is_b = t["cd20"][i] & near
        not_b = ~t["cd20"][i] & near
        res["cd20_sensitivity"] = round(float(pos[is_b].mean()), 3) if is_b.any() else None
        res["cd20_false_pos_rate"] = round(float(pos[not_b].mean()), 3) if not_b.any() else None
        res["cd20_pos_on_spurious"] = int(pos[far].sum())
        if "in_artefact" in found:
            art = found["in_artefact"].astype(bool).to_numpy()
            res["in_artefact"] = int(art.sum())
            res["true_b_in_artefact"] = int((art & is_b).sum())
    return res


TARGETS = dict(tumour=0.05, recall=0.95, precision=0.95, stage=0.95, location=0.95, area=0.20, density=0.10,
               cells=0.10, cd20=0.15)


def acceptance(r: dict) -> list[str]:
    out = []

    def bad_rel(key, lim, label):
        v = r[key]
        if v is None or abs(v) > lim:
            out.append(label)
    bad_rel("tumour_err", TARGETS["tumour"], "tumour area")
    if r["recall"] < TARGETS["recall"]:
        out.append("recall")
    if r["precision"] < TARGETS["precision"]:
        out.append("precision")
    if r["stage_acc"] is not None and r["stage_acc"] < TARGETS["stage"]:
        out.append("stage")
    if r["location_acc"] is not None and r["location_acc"] < TARGETS["location"]:
        out.append("location")
    if r["worst_area_err"] is not None and r["worst_area_err"] > TARGETS["area"]:
        out.append("TLS area")
    bad_rel("density_err", TARGETS["density"], "density")
    if r["cells_true"] and r["cells_found"] is not None:
        bad_rel("cells_err", TARGETS["cells"], "cells")
        bad_rel("cd20_err", TARGETS["cd20"], "CD20+ %")
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

def pct(v, digits=1):
    return "—" if v is None else f"{100 * v:+.{digits}f}%"


def write_report(results: dict, elapsed: float) -> None:
    import tlsquant
    RESULTS.mkdir(exist_ok=True)
    lines = [
        "# Independent realistic slides: accuracy with the default configuration", "",
        f"tlsquant {tlsquant.__version__}, {time.strftime('%Y-%m-%d')}, `python benchmarks/bench_independent.py`"
        f" ({platform.machine()}, {os.cpu_count()} cores, {elapsed:.0f} s in all). Slides from this script's own"
        " generator (not `tlsquant.synthetic`), analysed with `tlsquant analyze SLIDE -o OUT` (default config)."
        " Targets: tumour area within 5 %, TLS recall and precision >= 0.95, stage and location >= 0.95, per-TLS"
        " area within 20 %, density within 10 %, cells within 10 %, CD20+ % within 15 %.", "",
        "| case | phenomena | px µm | dtype | AF ch | TLS true/found | recall | precision | stage | location |"
        " worst TLS area | tumour | density | cells | CD20+ % | tissue (info) | make s | analyse s | misses |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c = CASES[name]
        if "error" in r:
            lines.append(f"| {name} | {c.note} | {c.pixel_um} | {c.dtype} | {'yes' if c.af_channel else 'no'} |"
                         f" error: {r['error']} |" + " |" * 13)
            continue
        f2 = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(
            f"| {name} | {c.note} | {c.pixel_um} | {c.dtype} | {'yes' if c.af_channel else 'no'} |"
            f" {r['tls_true']}/{r['tls_found']} | {f2(r['recall'])} | {f2(r['precision'])} | {f2(r['stage_acc'])} |"
            f" {f2(r['location_acc'])} | {pct(r['worst_area_err'])} | {pct(r['tumour_err'])} | {pct(r['density_err'])} |"
            f" {pct(r['cells_err'])} | {pct(r['cd20_err'])} | {pct(r['tissue_err'])} | {r['make_s']:.0f} | {r['analyse_s']:.0f} |"
            f" {', '.join(r['misses']) or '-'} |")
    ok = sum(1 for r in results.values() if "error" not in r and not r["misses"])
    lines += ["", f"{ok} of {len(results)} slides meet every target.", "", "## Cells against the true nuclei", "",
              "Per kind of nucleus: found per true nucleus (detections within 5 µm), share missed, share split"
              " (2+ detections); spurious = detections with no true nucleus within 5 µm.", ""]
    for name, r in results.items():
        cd = r.get("cell_diagnosis") if "error" not in r else None
        if not cd or "kinds" not in cd:
            continue
        kinds = "; ".join(f"{k} {v['found_per_true']:.2f}/{100 * v['missed']:.0f}%/{100 * v['split']:.0f}%"
                          for k, v in cd["kinds"].items())
        sp = cd["spurious"]
        lines.append(f"- **{name}**: {cd['true']} true, {cd['found']} found; {kinds}; spurious {sp['total']}"
                     f" (fold {sp['on_fold']}, vessels {sp['on_vessels']}, tumour {sp['on_tumour']});"
                     f" outside tlsquant's tissue {r.get('cells_outside_tissue')}; CD20 sensitivity"
                     f" {cd.get('cd20_sensitivity')}, false-positive rate {cd.get('cd20_false_pos_rate')}")
    lines += ["", "## Per-TLS detail of the misses", ""]
    for name, r in results.items():
        if "error" in r:
            continue
        bad = [q for q in r["per_tls"] if q["found_id"] is None or q.get("found_stage") != q["true_stage"]
               or q.get("found_location") != q["true_location"] or abs(q.get("area_err", 0)) > 0.2]
        if not bad and not r["false_positives"]:
            continue
        lines.append(f"**{name}**")
        for q in bad:
            if q["found_id"] is None:
                lines.append(f"- truth TLS {q['truth_id']} ({q['kind']}, {q['true_stage']}, {q['true_location']},"
                             f" {q['true_area_um2']:.0f} µm², T zone {q['tzone_b_per_mm2']} B/mm²): missed;"
                             f" rejected as {q['rejected_as'] or 'nothing'}"
                             f"{'; merged into found ' + str(q['merged_into']) if q['merged_into'] else ''}")
            else:
                lines.append(f"- truth TLS {q['truth_id']} ({q['kind']}, {q['true_stage']}/{q['network']},"
                             f" {q['true_location']} at {q['true_distance_um']:.0f} µm, {q['true_area_um2']:.0f} µm²)"
                             f" -> found {q['found_id']}: {q['found_stage']}, {q['found_location']}"
                             f" at {q['found_distance_um'] if q['found_distance_um'] is not None else '—'} µm,"
                             f" area {pct(q['area_err'], 0)}, CD23 network {q['gc_network_um2']:.0f} µm²"
                             f" (true GC {q.get('gc_area_um2', 0):.0f} µm², CD23+ B share {q['cd23_b_share']})")
        for fp in r["false_positives"]:
            lines.append(f"- false TLS {fp['tls_id']} at ({fp['x']:.0f}, {fp['y']:.0f}) µm, {fp['area_um2']:.0f} µm²,"
                         f" {fp['stage']}, {fp['location']}: on {fp['on']}")
        lines.append("")
    (RESULTS / "independent.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "independent.json").write_text(json.dumps(
        dict(tlsquant_version=tlsquant.__version__, date=time.strftime("%Y-%m-%d"), targets=TARGETS,
             cases={n: dict(case=CASES[n].__dict__, result=r) for n, r in results.items()}),
        indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--only", help="comma-separated case names: " + ", ".join(CASES))
    ap.add_argument("--keep", action="store_true", help="reuse slides already rendered (same case and seed)")
    ap.add_argument("--no-report", action="store_true", help="do not rewrite results/independent.{md,json}")
    args = ap.parse_args(argv)
    names = list(CASES)
    if args.quick:
        names = list(QUICK)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    started = time.perf_counter()
    results = {}
    for name in names:
        folder = DATA / name
        t0 = time.perf_counter()
        truth_file = folder / "truth.json"
        if args.keep and truth_file.exists() and (folder / "slide.ome.tiff").exists():
            truth = json.loads(truth_file.read_text())
        else:
            truth = make_slide(CASES[name], folder)
        make_s = time.perf_counter() - t0
        try:
            analyse_s = run_tlsquant(folder)
            r = score_case(folder, truth)
        except Exception as exc:  # one failing slide never hides the others
            results[name] = dict(error=str(exc)[-300:])
            print(f"{name}: ERROR {exc}", flush=True)
            continue
        r.update(make_s=make_s, analyse_s=analyse_s)
        results[name] = r
        print(f"{name}: TLS {r['tls_true']}/{r['tls_found']} recall {r['recall']:.2f} precision {r['precision']:.2f}"
              f" stage {r['stage_acc']} loc {r['location_acc']} area {pct(r['worst_area_err'])}"
              f" tumour {pct(r['tumour_err'])} density {pct(r['density_err'])} cells {pct(r['cells_err'])}"
              f" cd20 {pct(r['cd20_err'])} [{make_s:.0f}+{analyse_s:.0f} s] misses: {r['misses']}", flush=True)
    if not args.no_report:
        write_report(results, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
