"""The cohort report opened in a real headless browser: tables, figures and thumbnails drawn, no external files.

report.html is copied alone into an empty folder (a relative link would break there) and rendered by
headless Chromium twice: a screenshot of the untouched page (file://), and the DOM of a test-only copy
with a script appended that records, per <img>, whether it decoded (naturalWidth) and where it was
drawn; that copy is served over a local HTTP server that logs every request, so any file the page
asks for besides itself shows up. Skipped when no Chromium/Chrome is installed
(Debian: ``apt-get install chromium``; CI installs it in .ci/run).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from tlsquant.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1200
# appended to a copy of the page only: the product file is rendered untouched
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    const r = img.getBoundingClientRect();
    img.dataset.naturalWidth = img.naturalWidth;
    img.dataset.rect = [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(",");
  }
  for (const table of document.querySelectorAll("table")) {
    const r = table.getBoundingClientRect();
    table.dataset.rect = [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(",");
  }
  document.body.dataset.height = document.documentElement.scrollHeight;
  document.body.dataset.scrollWidth = document.documentElement.scrollWidth;
});
</script>
"""
ARM_COLOURS = {"CR": (0.9, 0.2, 0.8), "PR": (0.2, 0.8, 0.3), "PD": (0.95, 0.6, 0.1)}


@pytest.fixture(scope="module")
def browser() -> str:
    """The first Chromium/Chrome on PATH that runs; skip (before building anything) without one."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found and subprocess.run([found, "--version"], capture_output=True, timeout=60).returncode == 0:
            return found
    pytest.skip(f"no headless browser: none of {', '.join(BROWSERS)} on PATH (Debian: apt-get install chromium)")


def _render(browser: str, url: str, profile: Path, *args: str, height: int = 3000) -> subprocess.CompletedProcess:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--no-proxy-server", "--hide-scrollbars", "--force-device-scale-factor=1",
               "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
               f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}", *args, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


class _Logged(SimpleHTTPRequestHandler):
    requested: list[str]

    def log_message(self, format, *args):
        self.requested.append(self.path)


def _served(folder: Path, requested: list[str]) -> ThreadingHTTPServer:
    handler = functools.partial(type("Handler", (_Logged,), {"requested": requested}), directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Page(HTMLParser):
    """Tables (by the <h2> above them) as lists of rows of cell texts, and every <img>'s attributes."""

    def __init__(self):
        super().__init__()
        self.heading, self.tables, self.images, self.body = "", {}, [], {}
        self._text, self._in_h2, self._row, self._cell = [], False, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2":
            self._in_h2, self._text = True, []
        elif tag == "table":
            self.tables[self.heading] = {"rect": attrs.get("data-rect"), "rows": []}
        elif tag == "tr":
            self._row = []
            self.tables[self.heading]["rows"].append(self._row)
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs | {"section": self.heading})
        elif tag == "body":
            self.body = attrs

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2, self.heading = False, "".join(self._text).strip()
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._in_h2:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """A three-arm cohort with a coloured qc.png per slide, compared; report.html copied alone into an empty folder."""
    root = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(7)
    rows = []
    yy, xx = np.mgrid[:240, :400]
    for arm, centre in (("CR", 0.3), ("PR", 0.2), ("PD", 0.05)):
        for k in range(3):
            slide_id = f"{arm}-{k}"
            rows.append({"slide_id": slide_id, "arm": arm, "tls_density_per_mm2": max(0.0, rng.normal(centre, 0.05)),
                         "tls_area_pct": max(0.0, rng.normal(2 * centre, 0.1)), "tls_count": int(rng.integers(0, 6)),
                         "tumour_area_mm2": 2.5, "warnings": "low nuclear cover" if k == 0 else ""})
            qc = np.full((240, 400, 3), 0.1)  # a dark slide with one disc in the arm's colour
            qc[(yy - 120) ** 2 + (xx - 200) ** 2 < 90**2] = ARM_COLOURS[arm]
            (root / "slides" / slide_id).mkdir(parents=True)
            mpimg.imsave(root / "slides" / slide_id / "qc.png", qc)
    cohort = pd.DataFrame(rows)
    cohort.to_csv(root / "cohort.csv", index=False)
    pd.DataFrame([{"slide_id": "broken", "path": "b.tif", "error_type": "CorruptSlideError",
                   "error": "b.tif: the file is truncated"}]).to_csv(root / "failures.csv", index=False)
    assert main(["compare", str(root / "cohort.csv"), "--group", "arm", "-o", str(root / "stats")]) == 0
    folder = root / "alone"
    folder.mkdir()
    shutil.copy(root / "stats" / "report.html", folder / "report.html")
    return folder, cohort


@pytest.mark.slow
def test_the_report_renders_in_a_browser_with_no_external_files(browser, alone, tmp_path, capsys):
    folder, cohort = alone
    report = folder / "report.html"
    assert [p.name for p in folder.iterdir()] == ["report.html"]
    probe_dir = tmp_path / "probe"  # the instrumented copy, alone too
    probe_dir.mkdir()
    (probe_dir / "report.html").write_text(report.read_text(encoding="utf-8") + PROBE, encoding="utf-8")
    requested: list[str] = []
    server = _served(probe_dir, requested)
    try:
        dom = _render(browser, f"http://127.0.0.1:{server.server_port}/report.html", tmp_path / "profile", "--dump-dom").stdout
    finally:
        server.shutdown()
        server.server_close()
    page = _Page()
    page.feed(dom)

    # (a) the DOM: tables with their cells, every image inlined and decoded, nothing fetched
    assert set(requested) - {"/favicon.ico"} == {"/report.html"}, f"the page asked for other files: {requested}"
    slides = page.tables["Slides"]["rows"]
    assert slides[0][:2] == ["slide", "arm"]
    assert [row[:2] for row in slides[1:]] == [[s, a] for s, a in zip(cohort.slide_id, cohort.arm)]
    assert slides[1][-1] == "[1]" and slides[2][-1] == ""  # a shared warning: a note marker, the text once below
    stats = page.tables["Pairwise comparisons"]["rows"]
    assert stats[0][:2] == ["metric", "groups"] and len(stats) == 1 + 3 * 3  # 3 metrics x 3 pairs
    assert {row[1] for row in stats[1:]} == {"CR vs PD", "CR vs PR", "PD vs PR"}
    assert len(page.tables["Kruskal–Wallis across groups"]["rows"]) == 1 + 3
    assert page.tables["Failed slides (not in the statistics)"]["rows"][1][:2] == ["broken", "CorruptSlideError"]
    figures = [i for i in page.images if i["section"] == "Figures"]
    thumbs = [i for i in page.images if i["section"] == "Slides (QC)"]
    assert len(figures) == 3 and [i["alt"] for i in thumbs] == list(cohort.slide_id)
    for image in page.images:
        assert image["src"].startswith("data:image/"), image["src"][:80]
        assert int(image["data-natural-width"]) > 0, f"{image['alt']} did not decode"
    assert int(page.body["data-scroll-width"]) <= WIDTH, "the page overflows sideways"

    # (b) the screenshot of the untouched page, tall enough for all of it: content where the DOM says
    height = int(page.body["data-height"])
    shot = tmp_path / "report.png"
    _render(browser, report.as_uri(), tmp_path / "profile2", f"--screenshot={shot}", height=height)
    pixels = mpimg.imread(shot)[..., :3]  # floats 0..1
    assert pixels.shape[:2] == (height, WIDTH)
    assert (pixels.min(axis=2) < 0.5).mean() > 0.01, "the page is blank"

    def region(rect: str) -> np.ndarray:
        x, y, w, h = map(int, rect.split(","))
        assert w > 0 and h > 0 and y + h <= height
        return pixels[y:y + h, x:x + w]

    def coloured(area: np.ndarray) -> np.ndarray:
        return area.max(axis=2) - area.min(axis=2) > 0.3

    for image in figures:  # matplotlib's coloured points on a white plot
        area = region(image["data-rect"])
        assert coloured(area).sum() > 50 and (area.min(axis=2) < 0.2).any(), image["alt"]
    for image, arm in zip(thumbs, cohort.arm):  # the arm's disc, averaged down, in the thumbnail's box
        area = region(image["data-rect"])
        assert (np.abs(area - ARM_COLOURS[arm]).max(axis=2) < 0.1).mean() > 0.2, image["alt"]
    for heading in ("Slides", "Pairwise comparisons"):  # dark text in each table's box, grey lines, no colour
        area = region(page.tables[heading]["rect"])
        assert (area.max(axis=2) < 0.3).mean() > 0.02 and coloured(area).mean() < 0.01, heading
    capsys.readouterr()
