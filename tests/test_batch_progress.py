"""Progress within the slides of a batch: workers publish their steps, the client draws them."""

from __future__ import annotations

import io
import threading

import pandas as pd
import pytest

from tlsquant import progress, synthetic
from tlsquant.config import load_config
from tlsquant.progress import BatchDisplay, EventReporter, step_from_event


def _run_steps(reporter):
    with progress.reporting(reporter):
        progress.step("counting pass", total=3)
        for _ in range(3):
            progress.advance()
        progress.step("TLS")


def test_a_worker_publishes_each_step_start_and_end_with_its_blocks():
    events = []
    _run_steps(EventReporter(events.append, interval_s=0.0))
    kinds = [(e["event"], e["step"]) for e in events]
    assert kinds[0] == ("started", "counting pass")
    assert ("ended", "counting pass") in kinds and kinds[-1] == ("ended", "TLS")
    assert [e["done"] for e in events if e["event"] == "advanced"] == [1, 2, 3]
    ended = next(e for e in events if e == {**e, "event": "ended", "step": "counting pass"})
    assert ended["done"] == ended["total"] == 3 and ended["elapsed_s"] >= 0


def test_block_counts_are_sent_at_most_once_an_interval():
    events = []
    _run_steps(EventReporter(events.append, interval_s=3600.0))
    # starts and ends always go out; the three block counts fall inside one interval after the start
    assert [e["event"] for e in events] == ["started", "ended", "started", "ended"]


def test_an_event_becomes_a_step_timed_on_this_clock():
    step = step_from_event({"event": "advanced", "step": "cells pass", "done": 5, "total": 20, "elapsed_s": 10.0})
    assert (step.name, step.done, step.total, step.ended) == ("cells pass", 5, 20, None)
    assert step.eta() == pytest.approx(30.0, rel=0.05)  # 10 s for 5 blocks: 15 left take 30 s
    assert step_from_event({"event": "ended", "step": "TLS", "elapsed_s": 1.0}).ended is not None


def test_plain_display_writes_a_line_per_step_start_and_end_and_per_slide():
    out = io.StringIO()
    display = BatchDisplay(out, live=False)
    display.step("S1", {"event": "started", "step": "counting pass", "total": 4, "batch_total": 2})
    display.step("S1", {"event": "advanced", "step": "counting pass", "done": 2, "total": 4, "elapsed_s": 1.0})
    display.step("S1", {"event": "ended", "step": "counting pass", "done": 4, "total": 4, "elapsed_s": 2.0})
    display("S1", "done", 1, 2)
    display.step("S1", {"event": "ended", "step": "writing outputs", "elapsed_s": 1.0})  # overtaken: ignored
    assert out.getvalue().splitlines() == ["S1: counting pass: started, 4 blocks",
                                           "S1: counting pass: 4 blocks in 2.0 s", "1/2 S1: done"]
    assert "\r" not in out.getvalue()


def test_live_display_redraws_one_line_with_each_running_slide():
    out = io.StringIO()
    display = BatchDisplay(out, live=True, width=200)
    display.step("S1", {"event": "advanced", "step": "cells pass", "done": 3, "total": 12, "elapsed_s": 6.0,
                        "batch_total": 3})
    display.step("S2", {"event": "started", "step": "counting pass", "total": 9})
    last = out.getvalue().split("\r")[-1]
    assert "0/3" in last and "S1 [cells pass] 3/12 blocks" in last and "S2 [counting pass] 0/9 blocks" in last
    display("S1", "done", 1, 3)
    last = out.getvalue().split("\r")[-1]
    assert "1/3" in last and "S1" not in last and "S2 [counting pass]" in last
    display("S2", "failed", 2, 3)
    display("S3", "done", 3, 3)
    assert out.getvalue().endswith("\n")


def test_live_display_keeps_to_the_terminal_width():
    out = io.StringIO()
    display = BatchDisplay(out, live=True, width=60)
    for k in range(5):
        display.step(f"slide-{k}", {"event": "started", "step": "counting pass", "total": 100, "batch_total": 5})
    assert all(len(line.rstrip()) <= 60 for line in out.getvalue().split("\r"))


def test_a_display_is_safe_to_call_from_two_threads():
    out = io.StringIO()
    display = BatchDisplay(out, live=True)

    def steps(slide_id):
        for k in range(200):
            display.step(slide_id, {"event": "advanced", "step": "cells pass", "done": k, "total": 200})

    threads = [threading.Thread(target=steps, args=(f"S{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(display.running) == {"S0", "S1", "S2", "S3"}


def test_a_batch_reports_the_steps_inside_its_slides(tmp_path):
    distributed = pytest.importorskip("distributed")
    from tlsquant.batch import run_batch

    scene = synthetic.make_scene(seed=7, width_um=1500, height_um=1200, pixel_size_um=2.5, dtype="uint8",
                                 tls_counts=(1, 0, 0), tls_radius_um=(60, 70))
    path, _ = synthetic.write_slide(scene, tmp_path / "s.ome.tiff")
    manifest = tmp_path / "m.csv"
    pd.DataFrame([{"slide_id": "S1", "path": str(path), "group": "a"}]).to_csv(manifest, index=False)
    config = load_config(None, ["outputs.qc_png=false", "cells.enabled=false"])
    events, finished = [], []
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        result = run_batch(manifest, tmp_path / "out", config, client=client,
                           progress=lambda *args: finished.append(args),
                           step_progress=lambda slide_id, event: events.append((slide_id, event)))
    assert result.processed == ["S1"] and finished == [("S1", "done", 1, 1)]
    seen = {(slide_id, e["event"], e["step"]) for slide_id, e in events}
    assert {("S1", "started", "counting pass"), ("S1", "ended", "counting pass"), ("S1", "started", "TLS")} <= seen
    counting = [e for slide_id, e in events if e["step"] == "counting pass" and e["event"] == "ended"]
    assert counting[0]["done"] == counting[0]["total"] > 0 and counting[0]["batch_total"] == 1
