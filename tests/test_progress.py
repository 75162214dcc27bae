"""Progress within a slide: the context-local reporter, block counting in compute_blocks, the CLI's lines."""

from __future__ import annotations

import io
import operator
import threading

import dask
import numpy as np
import pandas as pd
import pytest

from tlsquant import progress, synthetic
from tlsquant.blocks import compute_blocks
from tlsquant.cli import main
from tlsquant.config import load_config
from tlsquant.io import open_slide
from tlsquant.pipeline import analyze_slide
from tlsquant.progress import Reporter, Step, StreamReporter, format_duration, reporting

from .conftest import TEST_IMAGES

STEPS = ["signal model", "counting pass", "tissue and tumour", "TLS", "per-TLS measures"]


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (0.9, "0:00"), (27.4, "0:27"), (60, "1:00"), (3599, "59:59"),
                                           (3725, "1:02:05"), (-3, "0:00")])
def test_durations_read_as_minutes_and_seconds(seconds, text):
    assert format_duration(seconds) == text


def test_the_eta_follows_the_rate_so_far():
    step = Step("counting pass", total=120, done=30, started=100.0)
    assert step.elapsed(now=112.0) == 12.0 and step.eta(now=112.0) == pytest.approx(36.0)
    assert progress.live_text(step, now=112.0) == "[counting pass] 30/120 blocks, 0:12 elapsed, ETA 0:36"
    assert Step("x", total=10, started=0.0).eta(now=5.0) is None  # no block done yet: no rate
    assert Step("TLS", started=0.0).eta(now=5.0) is None
    assert progress.live_text(Step("TLS", started=0.0), now=3.2) == "[TLS] 0:03 elapsed"
    assert Step("x", total=4, done=4, started=0.0).eta(now=1.0) is None


def test_steps_and_blocks_are_recorded_in_order():
    with reporting(Reporter()) as reporter:
        assert progress.current() is reporter
        progress.step("signal model")
        progress.step("counting pass")  # ends the one before
        progress.expect(3)
        progress.expect(2)
        progress.advance()
        progress.advance(4)
        progress.step("TLS", 7)
        progress.end()
        progress.end()  # nothing open: nothing happens
        progress.step("left open")  # ended when the block is left
    assert [(s.name, s.done, s.total) for s in reporter.steps] == [
        ("signal model", 0, 0), ("counting pass", 5, 5), ("TLS", 0, 7), ("left open", 0, 0)]
    assert all(s.ended is not None and s.ended >= s.started for s in reporter.steps)
    assert progress.current() is None


def test_without_a_reporter_every_call_is_a_no_op():
    assert progress.current() is None
    progress.step("counting pass", 3)
    progress.expect(2)
    progress.advance(5)
    progress.end()
    assert progress.current() is None


def test_the_reporter_stays_in_its_own_context():
    seen = []
    with reporting(Reporter()):
        worker = threading.Thread(target=lambda: seen.append(progress.current()))
        worker.start()
        worker.join()
    assert seen == [None]  # another thread (a batch worker's) reports nothing


def test_plain_lines_one_per_step_start_and_end():
    stream = io.StringIO()
    with reporting(StreamReporter(stream, live=False)):
        progress.step("counting pass")
        progress.expect(3)
        progress.advance(3)
        progress.step("TLS")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 4
    assert lines[0] == "counting pass: started" and lines[2] == "TLS: started"
    assert lines[1].startswith("counting pass: 3 blocks in ") and lines[1].endswith(" s")
    assert lines[3].startswith("TLS: done in ")


def test_a_terminal_line_is_redrawn_in_place_and_cleared():
    stream = io.StringIO()
    with reporting(StreamReporter(stream, live=True, refresh_s=0.01)):
        progress.step("counting pass")
        progress.expect(2)
        progress.advance(2)
    text = stream.getvalue()
    assert "\n" not in text and "\r[counting pass] 2/2 blocks, 0:00 elapsed" in text
    assert text.endswith("\r") and text.rsplit("\r", 2)[-2].strip() == ""  # the last thing drawn is blank


def _blocks():
    rng = np.random.default_rng(3)
    return [dask.delayed(operator.mul, pure=True)(rng.random((4, 4)), k) for k in range(6)]


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_compute_blocks_counts_each_finished_block_and_returns_the_same(scheduler, process_pool):
    tasks = _blocks()
    with dask.config.set(pool=process_pool) if scheduler == "processes" else dask.config.set():
        plain = compute_blocks(tasks, scheduler=scheduler)
        with reporting(Reporter()) as reporter:
            progress.step("counting pass")
            counts = []
            reporter.advanced = lambda step: counts.append(step.done)
            reported = compute_blocks(tasks, scheduler=scheduler, num_workers=2)
    assert len(plain) == len(reported) == 6
    assert all(np.array_equal(a, b) for a, b in zip(plain, reported))
    step = reporter.steps[0]
    assert (step.done, step.total) == (6, 6)
    assert counts[0] == 0 and counts[-1] == 6 and counts == sorted(counts)  # 0 on expect, then one by one


def _comparable(result):
    summary = {k: v for k, v in result.summary.items() if k != "timing_seconds"}
    return summary, result.tls, result.tls_labels, result.tissue_mask, result.tumour_mask, result.cells


@pytest.fixture(scope="module")
def cells_slide(tmp_path_factory):
    """1 µm/px, the coarsest that gets cells: every step including the cells pass runs."""
    scene = synthetic.make_scene(seed=5, width_um=700, height_um=500, pixel_size_um=1.0, tls_counts=(1, 0, 0))
    path, _ = synthetic.write_slide(scene, tmp_path_factory.mktemp("cells") / "fine.ome.tiff")
    return path


@pytest.mark.parametrize("which", ["bundled", "cells"])
@pytest.mark.slow
def test_results_are_identical_with_and_without_a_reporter(which, cells_slide):
    path = TEST_IMAGES / "synthetic-a.ome.tiff" if which == "bundled" else cells_slide
    config = load_config(overrides=["compute.chunk_px=256", "outputs.cells_table=true"])
    slide = open_slide(path)
    without = _comparable(analyze_slide(slide, config))
    with reporting(Reporter()) as reporter:
        with_reporter = _comparable(analyze_slide(slide, config))
    assert without[0] == with_reporter[0]
    pd.testing.assert_frame_equal(without[1], with_reporter[1])
    for a, b in zip(without[2:5], with_reporter[2:5]):
        assert np.array_equal(a, b)
    if which == "cells":
        pd.testing.assert_frame_equal(without[5], with_reporter[5])
    names = [s.name for s in reporter.steps]
    assert names == (STEPS if which == "bundled" else STEPS + ["cells pass"])
    blocks = {s.name: (s.done, s.total) for s in reporter.steps}
    assert blocks["counting pass"][0] == blocks["counting pass"][1] > 1
    if which == "cells":
        assert blocks["cells pass"] == blocks["counting pass"]  # both passes go over the slide's chunks


@pytest.mark.slow
def test_analyze_prints_one_plain_line_per_step_start_and_end(capsys, tmp_path):
    slide = str(TEST_IMAGES / "synthetic-b.qptiff")  # 600 x 800 px: 3 x 4 blocks of 256 px
    fast = ["--set", "outputs.qc_png=false"]
    assert main(["analyze", slide, "-o", str(tmp_path / "out"), "--set", "compute.chunk_px=256", *fast]) == 0
    captured = capsys.readouterr()
    assert "synthetic-b: tumour" in captured.out and "\r" not in captured.err
    lines = [line for line in captured.err.splitlines() if not line.startswith("WARNING")]
    written = [*STEPS, "writing outputs"]  # the command also writes the outputs (analyze_to_folder)
    assert lines[0::2] == [f"{name}: started" for name in written]
    ends = lines[1::2]
    assert [line.split(":")[0] for line in ends] == written and all(line.endswith(" s") for line in ends)
    assert ends[1].startswith("counting pass: 12 blocks in ") and ends[2].startswith("tissue and tumour: done in ")
    for quiet in (["-q"], ["--json"]):
        assert main(["analyze", slide, "-o", str(tmp_path / quiet[0]), *quiet, *fast]) == 0
        assert "started" not in capsys.readouterr().err
