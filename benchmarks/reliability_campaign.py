"""Fault campaign: random SIGKILLs of a batch, concurrent batches, absurd and single-level slides.

    python benchmarks/reliability_campaign.py [--kills 20] [--skip-large]

1. Kills: a 5-slide batch (1 worker for the first half of the trials, 2 for the rest) is
   killed with SIGKILL (its whole process group, workers included) at a random moment,
   the folder is checked (no summary.json without every output it lists), then the batch is
   run again to the end: cohort.csv must equal that of an uninterrupted run, and no
   temporary or lock file may be left.
2. Concurrency: two batches with different configs started together on one folder: one runs,
   the other is refused; every slide folder holds one config's outputs.
3. Size: a 200,000 x 200,000 px header in a 4 kB file is refused within seconds; a
   single-level 20,000 x 15,000 px slide is analysed (qc.png on) within the memory of its
   pyramidal twin.
Results: benchmarks/results/reliability.{json,md}; the slides go to benchmarks/_data/ (ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE / "_data" / "reliability"
RESULTS = HERE / "results"
FAST = ["--set", "cells.enabled=false"]


def tlsquant(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tlsquant", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def make_cohort() -> Path:
    from tlsquant import synthetic

    DATA.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(5):
        path = DATA / f"r{k}.ome.tiff"
        if not path.is_file():
            scene = synthetic.make_scene(seed=500 + k, width_um=3000, height_um=2250, pixel_size_um=1.0, dtype="uint16",
                                         tls_counts=(3, 2, 1))
            synthetic.write_slide(scene, path)
        rows.append({"slide_id": f"r{k}", "path": path.name, "arm": "A" if k % 2 else "B"})
    pd.DataFrame(rows).to_csv(DATA / "manifest.csv", index=False)
    return DATA / "manifest.csv"


def folder_problems(out: Path) -> list[str]:
    """Slide folders that look complete but are not, and leftovers."""
    problems = []
    for folder in sorted((out / "slides").glob("*")) if (out / "slides").is_dir() else []:
        summary = folder / "summary.json"
        if summary.is_file():
            listed = json.loads(summary.read_text()).get("outputs", [])
            missing = [name for name in listed if not (folder / name).exists()]
            if missing:
                problems.append(f"{folder.name}: summary.json without {missing}")
    return problems


def leftovers(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob("*") if ".partial-" in p.name or p.name == ".tlsquant.lock"]


def run_to_end(manifest: Path, out: Path, workers: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tlsquant", "batch", str(manifest), "-o", str(out), "-q",
                           "--workers", str(workers), *FAST, *extra], capture_output=True, text=True)


def kill_campaign(manifest: Path, kills: int, rng: random.Random) -> dict:
    reference = DATA / "reference"
    started = time.perf_counter()
    done = run_to_end(manifest, reference, 2)
    full_s = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    expected = (reference / "cohort.csv").read_text()
    trials = []
    for trial in range(kills):
        workers = 1 if trial < kills // 2 else 2
        out = DATA / f"kill-{trial}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        # some trials kill a rerun that was itself interrupted before: several kills, one folder
        delays = [rng.uniform(0.3, full_s * (1.5 if workers == 1 else 1.0)) for _ in range(1 + trial % 3)]
        states = []
        for delay in delays:
            process = tlsquant("batch", str(manifest), "-o", str(out), "-q", "--workers", str(workers), *FAST)
            time.sleep(delay)
            finished_first = process.poll() is not None
            if not finished_first:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            states.append({"delay_s": round(delay, 2), "killed": not finished_first,
                           "complete_slides": sum(1 for _ in out.glob("slides/*/summary.json")),
                           "inconsistent": folder_problems(out)})
        rerun = run_to_end(manifest, out, workers)
        same = rerun.returncode == 0 and (out / "cohort.csv").read_text() == expected
        trials.append({"trial": trial, "workers": workers, "kills": states, "rerun_exit": rerun.returncode,
                       "cohort_identical": same, "leftovers_after_rerun": leftovers(out),
                       "inconsistent_after_kill": sum(len(s["inconsistent"]) for s in states)})
        print(f"kill trial {trial}: workers {workers}, {len(states)} kill(s), identical {same}", flush=True)
    return {"uninterrupted_s": round(full_s, 1), "trials": trials,
            "all_identical": all(t["cohort_identical"] for t in trials),
            "no_leftovers": all(not t["leftovers_after_rerun"] for t in trials),
            "no_inconsistent_folders": all(t["inconsistent_after_kill"] == 0 for t in trials)}


def concurrency(manifest: Path) -> dict:
    out = DATA / "concurrent"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    first = tlsquant("batch", str(manifest), "-o", str(out), "-q", "--workers", "1", *FAST)
    second = tlsquant("batch", str(manifest), "-o", str(out), "-q", "--workers", "1", *FAST,
                      "--set", "tls.min_area_um2=20000")
    outs = [p.communicate() for p in (first, second)]
    codes = [first.returncode, second.returncode]
    hashes = set()
    for summary in out.glob("slides/*/summary.json"):
        hashes.add(json.loads(summary.read_text())["provenance"]["config_hash"])
    cohort = pd.read_csv(out / "cohort.csv") if (out / "cohort.csv").is_file() else pd.DataFrame()
    return {"exit_codes": codes, "refused_message": next((e for _, e in outs if "another tlsquant run" in e), "")[:300],
            "configs_in_slide_folders": len(hashes), "configs_in_cohort": int(cohort["config_hash"].nunique())
            if len(cohort) else 0, "inconsistent": folder_problems(out)}


def peak_rss_run(*args: str) -> tuple[int, float, str]:
    started = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "tlsquant", *args],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_mb = int(run.stderr.strip().splitlines()[-1]) // 1024
    return run.returncode, round(seconds, 1), f"{peak_mb}"


def sizes(skip_large: bool) -> dict:
    import numpy as np
    import tifffile

    huge = DATA / "huge-header.tif"
    tifffile.imwrite(huge, np.zeros((5, 256, 256), np.uint16), tile=(256, 256), compression="zlib",
                     photometric="minisblack", resolution=(20000, 20000), resolutionunit="CENTIMETER",
                     metadata={"axes": "CYX"})
    with tifffile.TiffFile(huge, mode="r+") as tif:  # consistent in itself (one 200,000 px tile): only absurdly large
        for page in tif.pages:
            for tag in ("ImageWidth", "ImageLength", "TileWidth", "TileLength"):
                page.tags[tag].overwrite(200000)
    code, seconds, peak = peak_rss_run("analyze", str(huge), "-o", str(DATA / "huge-out"), "--channels",
                                       "DAPI,TFE3,CD20,CD21,CD23")
    result = {"huge_header": {"file_bytes": huge.stat().st_size, "exit": code, "seconds": seconds, "peak_rss_mb": peak}}
    if skip_large:
        return result
    sys.path.insert(0, str(HERE))
    from bench_analysis import ensure_slide

    pyramid = ensure_slide("M")
    single = DATA / "bench-M-single-level.ome.tiff"
    if not single.is_file():
        from tlsquant import open_slide

        source = open_slide(pyramid)
        data = source.levels[0].data
        shape, dtype = tuple(data.shape), data.dtype

        def tiles():  # level 0 only, one 512-row strip at a time: never the whole slide in memory
            for c in range(shape[0]):
                for y in range(0, shape[1], 512):
                    strip = np.asarray(data[c, y:y + 512])
                    for x in range(0, shape[2], 512):
                        tile = np.zeros((512, 512), dtype)
                        block = strip[:, x:x + 512]
                        tile[: block.shape[0], : block.shape[1]] = block
                        yield tile

        with tifffile.TiffWriter(single, bigtiff=True) as writer:
            writer.write(tiles(), shape=shape, dtype=dtype, tile=(512, 512), compression="zstd",
                         photometric="minisblack", metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                              "Channel": {"Name": list(source.channel_names)}})
    runs = {}
    for label, path in (("pyramidal", pyramid), ("single-level", single)):
        code, seconds, peak = peak_rss_run("analyze", str(path), "-o", str(DATA / f"out-{label}"), *FAST)
        runs[label] = {"exit": code, "seconds": seconds, "peak_rss_mb": peak}
    result["twenty_k"] = runs
    return result


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(results, indent=2))
    kills = results["kills"]
    lines = [
        "# Reliability campaign",
        "",
        f"tlsquant {results['meta']['tlsquant_version']}, {results['meta']['date']}, "
        f"`python benchmarks/reliability_campaign.py`, {results['meta']['machine']}.",
        "",
        "## SIGKILL of a running batch, then a rerun",
        "",
        f"{len(kills['trials'])} trials on a 5-slide batch (3 x 2.25 mm at 1 µm/px; an uninterrupted run takes "
        f"{kills['uninterrupted_s']} s); each trial kills the batch's whole process group with SIGKILL 1-3 times "
        "at random moments, checks the folder, then reruns it to the end.",
        "",
        "| trial | workers | kills (s after start) | complete slides after each kill | inconsistent folders | rerun | "
        "cohort.csv identical | leftovers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in kills["trials"]:
        lines.append(f"| {t['trial']} | {t['workers']} | {', '.join(str(k['delay_s']) for k in t['kills'])} | "
                     f"{', '.join(str(k['complete_slides']) for k in t['kills'])} | {t['inconsistent_after_kill']} | "
                     f"exit {t['rerun_exit']} | {'yes' if t['cohort_identical'] else 'NO'} | "
                     f"{len(t['leftovers_after_rerun'])} |")
    lines += ["", f"All identical: {kills['all_identical']}; no summary.json without its outputs: "
                  f"{kills['no_inconsistent_folders']}; no temporaries or locks left after the rerun: "
                  f"{kills['no_leftovers']}.", ""]
    c = results["concurrency"]
    lines += ["## Two batches with different configs on one folder", "",
              f"Exit codes {c['exit_codes']}; the refused one said: \"{c['refused_message'].strip()}\". Configs found in "
              f"slide folders: {c['configs_in_slide_folders']}, in cohort.csv: {c['configs_in_cohort']}; "
              f"inconsistent folders: {len(c['inconsistent'])}.", ""]
    s = results["sizes"]
    h = s["huge_header"]
    lines += ["## Size", "",
              f"- 200,000 x 200,000 x 5 header in a {h['file_bytes']:,}-byte file: exit {h['exit']} in {h['seconds']} s, "
              f"peak RSS {h['peak_rss_mb']} MB (refused by the memory guard before any pixel is read)."]
    if "twenty_k" in s:
        for label, run in s["twenty_k"].items():
            lines.append(f"- 20,000 x 15,000 x 9 uint16, {label}, qc.png on, cells off: exit {run['exit']}, "
                         f"{run['seconds']} s, peak RSS {run['peak_rss_mb']} MB.")
    (RESULTS / "reliability.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    from tlsquant import __version__

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--resume", action="store_true", help="reuse the phases a crashed run finished")
    args = parser.parse_args()
    rng = random.Random(2026)
    manifest = make_cohort()
    results = {"meta": {"tlsquant_version": __version__, "date": time.strftime("%Y-%m-%d"),
                        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}}
    partial = DATA / "partial.json"  # a phase that crashes does not cost the ones before it
    saved = json.loads(partial.read_text()) if args.resume and partial.is_file() else {}
    results["kills"] = saved.get("kills") or kill_campaign(manifest, args.kills, rng)
    partial.write_text(json.dumps({**saved, "kills": results["kills"]}))
    results["concurrency"] = saved.get("concurrency") or concurrency(manifest)
    partial.write_text(json.dumps({**saved, "kills": results["kills"], "concurrency": results["concurrency"]}))
    results["sizes"] = sizes(args.skip_large)
    write(results)
    print((RESULTS / "reliability.md").read_text())


if __name__ == "__main__":
    main()
