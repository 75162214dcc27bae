"""Screenshot of a cohort report (report.html) as headless Chromium draws it: docs/report-screenshot.png.

Makes seven small synthetic slides (3 good responders with more TLS than 4 poor ones, as in
tests/test_batch.py), runs ``tlsquant batch`` and ``tlsquant compare`` on them, copies report.html
alone into an empty folder (so anything not embedded would be missing) and screenshots the whole
page with headless Chromium, then crops the margins and downscales it to at most 1000 px wide.
About a minute on 2 cores. Needs Chromium (Debian: ``apt-get install chromium``) or Chrome on PATH.
To regenerate:

    python benchmarks/report_screenshot.py [--out docs/report-screenshot.png] [--scratch DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, MAX_OUT_WIDTH = 1200, 1000
# appended to a measuring copy only (the screenshot is of the untouched page): the page's full height
PROBE = ('<script>window.addEventListener("load", () => '
         "{document.body.dataset.height = document.documentElement.scrollHeight;});</script>\n")


def browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    sys.exit(f"no headless browser: none of {', '.join(BROWSERS)} on PATH (Debian: apt-get install chromium)")


def render(binary: str, page: Path, profile: Path, *args: str, height: int) -> str:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--no-proxy-server", "--hide-scrollbars", "--force-device-scale-factor=1",
               "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
               f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}", *args, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def make_cohort(root: Path) -> Path:
    from tlsquant import synthetic

    (root / "slides").mkdir(parents=True)
    rows = []
    for k in range(7):
        good = k < 3
        scene = synthetic.make_scene(seed=200 + k, width_um=2000, height_um=1500, pixel_size_um=2.5, dtype="uint8",
                                     tls_counts=(3, 1, 0) if good else (0, 1, 0), tls_radius_um=(55, 75), noise=0.7)
        path, _ = synthetic.write_slide(scene, root / "slides" / f"case{k}.ome.tiff")
        rows.append({"slide_id": f"case{k}", "path": f"slides/{path.name}", "response": "good" if good else "poor"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def screenshot(report: Path, out: Path, scratch: Path) -> None:
    import numpy as np
    from PIL import Image

    binary = browser()
    alone = scratch / "alone"
    alone.mkdir()
    shutil.copy(report, alone / "report.html")
    probe = scratch / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    dom = render(binary, probe, scratch / "profile", "--dump-dom", height=3000)
    height = int(dom.split('data-height="', 1)[1].split('"', 1)[0])
    full = scratch / "full.png"
    render(binary, alone / "report.html", scratch / "profile", f"--screenshot={full}", height=height)
    image = Image.open(full).convert("RGB")
    ink = np.flatnonzero((np.asarray(image).min(axis=2) < 250).any(axis=0))  # crop the white side margins
    left, right = max(0, ink[0] - 16), min(image.width, ink[-1] + 17)
    image = image.crop((left, 0, right, image.height))
    if image.width > MAX_OUT_WIDTH:
        image = image.resize((MAX_OUT_WIDTH, round(image.height * MAX_OUT_WIDTH / image.width)), Image.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours (octree keeps the figures' point colours; median cut greys them): ~250 KB instead of ~1 MB
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    print(f"{out}: {image.width} x {image.height} px, {out.stat().st_size / 1024:.0f} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "report-screenshot.png")
    parser.add_argument("--scratch", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    from tlsquant.cli import main as tlsquant

    scratch = Path(tempfile.mkdtemp(prefix="report-screenshot-", dir=args.scratch))
    try:
        manifest = make_cohort(scratch / "cohort")
        if tlsquant(["batch", str(manifest), "-o", str(scratch / "out"), "-q"]) != 0:
            sys.exit("batch failed")
        if tlsquant(["compare", str(scratch / "out" / "cohort.csv"), "--group", "response", "--groups", "good,poor",
                     "-o", str(scratch / "out" / "stats")]) != 0:
            sys.exit("compare failed")
        screenshot(scratch / "out" / "stats" / "report.html", args.out, scratch)
    finally:
        if args.keep:
            print(f"work folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
