"""Size a node from the command benchmark: slides per hour and memory for k slides x n threads.

Reads ``benchmarks/results/command.json`` (``bench_command.py --workers 1,2``): for each slide
size measured with 1 and with 2 worker threads, the wall time of ``tlsquant analyze`` (cells on
and off), its CPU seconds and its peak RSS. From them:

- **serial share** s (Amdahl): with 2 threads T2 = T1 (s + (1 - s) / 2), so s = 2 T2 / T1 - 1;
  the part of the command that one thread does alone (imports, the coarse-grid steps, parts of
  the signal model and of the outputs) plus what two threads lose to each other;
- **time with n threads** T(n) = T1 (s + (1 - s) / n);
- **memory** RSS(n) = RSS1 + (n - 1) (RSS2 - RSS1): each further thread holds one more block's
  windows and temporaries;
- **a node of C cores**: k = C / n slides analysed at once (``tlsquant batch --workers k`` with
  ``compute.workers = n``), each in T(n): k x 3600 / T(n) slides per hour, k x RSS(n) of memory.

It assumes each core runs as fast as one of the machine measured and that the disk and the
memory bandwidth keep up (decoding is most of the work: with many slides at once the storage
must read the files as fast as the column *storage read MB/s* says; with cells each file is
read twice, and a file larger than the page cache comes from the disk both times). The serial share comes from a 2-vCPU VM
whose two threads also compete for cache and memory bandwidth: beyond 2 threads per slide the
model is an extrapolation, and slides side by side (few threads each) are the safer choice.

    python benchmarks/node_model.py [--cores 16] [--memory-gb 64] [--json benchmarks/results/command.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = (1, 2, 4, 8, 16)


def model(rows: list[dict], *, cores: int, memory_gb: float) -> list[dict]:
    """One record per (slide size, mode) measured with 1 and 2 workers: the fitted model and each option."""
    by_size: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_size.setdefault(row["size"], {}).setdefault(row["workers"], row)  # first repeat of each
    records = []
    for size, runs in by_size.items():
        if 1 not in runs or 2 not in runs:
            continue
        for mode in ("off", "on"):
            one, two = runs[1].get(mode), runs[2].get(mode)
            if not one or not two:
                continue
            t1, t2 = one["seconds"], two["seconds"]
            serial = min(1.0, max(0.0, 2 * t2 / t1 - 1))
            per_thread_mb = max(0, two["peak_rss_mb"] - one["peak_rss_mb"])
            options = []
            for n in THREADS:
                if n > cores:
                    break
                slides = cores // n
                seconds = t1 * (serial + (1 - serial) / n)
                rss_mb = one["peak_rss_mb"] + (n - 1) * per_thread_mb
                options.append({"threads": n, "slides_at_once": slides, "seconds_per_slide": round(seconds, 1),
                                "slides_per_hour": round(slides * 3600 / seconds), "memory_gb": round(slides * rss_mb / 1024, 1),
                                "fits": slides * rss_mb / 1024 <= memory_gb,
                                # each slide's file read twice with cells (the counting and the cell pass), once without
                                "read_mb_s": round(slides * runs[1]["file_mb"] * (2 if mode == "on" else 1) / seconds)})
            records.append({"size": size, "shape": runs[1]["shape"], "mode": mode, "t1_s": t1, "t2_s": t2,
                            "cpu1_s": one.get("cpu_s"), "cpu2_s": two.get("cpu_s"), "speedup_2": round(t1 / t2, 2),
                            "serial_share": round(serial, 3), "rss1_mb": one["peak_rss_mb"],
                            "rss2_mb": two["peak_rss_mb"], "per_thread_mb": per_thread_mb, "options": options})
    return records


def report(records: list[dict], *, cores: int, memory_gb: float) -> str:
    lines = [f"Node of {cores} cores and {memory_gb:g} GB (model from the 1- and 2-thread rows above):", "",
             "| slide | cells | 1 thread s | 2 threads s | speedup | serial share | RSS 1 / 2 thr MB "
             "| per extra thread MB |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['shape'][2]:,} x {r['shape'][1]:,} | {r['mode']} | {r['t1_s']:.1f} | {r['t2_s']:.1f} "
                     f"| {r['speedup_2']:.2f} | {r['serial_share']:.2f} | {r['rss1_mb']} / {r['rss2_mb']} "
                     f"| {r['per_thread_mb']} |")
    lines += ["", "| slide | cells | threads per slide | slides at once | s per slide | slides per hour | memory GB "
              "| storage read MB/s |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        for o in r["options"]:
            memory = f"{o['memory_gb']}" + ("" if o["fits"] else " (does not fit)")
            lines.append(f"| {r['shape'][2]:,} x {r['shape'][1]:,} | {r['mode']} | {o['threads']} | {o['slides_at_once']} "
                         f"| {o['seconds_per_slide']} | {o['slides_per_hour']} | {memory} | {o['read_mb_s']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--memory-gb", type=float, default=64.0)
    parser.add_argument("--json", default=str(RESULTS / "command.json"))
    args = parser.parse_args()
    rows = json.loads(Path(args.json).read_text())["rows"]
    records = model(rows, cores=args.cores, memory_gb=args.memory_gb)
    if not records:
        raise SystemExit(f"{args.json}: no slide size was measured with both 1 and 2 workers "
                         "(run bench_command.py --workers 1,2)")
    print(report(records, cores=args.cores, memory_gb=args.memory_gb))


if __name__ == "__main__":
    main()
