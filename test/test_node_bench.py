"""mobilevlm-bench --node runs end to end: a node process under camera load, measured from outside.
(Speed itself is a benchmark's business, not a test's: this checks that the figures are there.)"""

from __future__ import annotations

import math
import os

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from mobilevlm_ros.tools.bench import node as node_bench  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engines", "demo")


def test_node_bench_measures_captions_answers_frames_cpu_and_memory():
    r = node_bench.run_load(DEMO, n_cameras=2, fmt="jpeg720", duration=3.0, fps=10.0, question_rate=1.0,
                            caption_rate=2.0, change_threshold=0.0, max_batch=2)
    assert set(r["per_camera"]) == {"cam0", "cam1"}
    for cam in r["per_camera"].values():
        assert cam["captions_per_s"] > 0 and not math.isnan(cam["caption_latency_s"]["p50"])
        assert 0 < cam["frames_received"] <= cam["frames_published"]
    assert r["answers"] >= 1 and r["answer_latency_s"]["p50"] > 0
    assert r["max_batch"] == 2 and r["decode_tokens"] > 0 and r["decode_tok_s"] > 0
    assert r["node_cpu_s_per_s"] > 0 and r["rss_mb_start"] > 50 and r["rss_mb_end"] > 50
    text = node_bench.table([{**r, "ingest_cpu_s_per_s": 0.1}])
    assert "jpeg720" in text and "captions/s" in text


def test_gains_compare_each_batched_run_with_max_batch_1_of_the_same_load():
    def row(batch, captions, tok_s, rss):
        return {"cameras": 4, "format": "raw640", "max_batch": batch, "captions_per_s": captions,
                "decode_tok_s": tok_s, "rss_mb_end": rss}

    text = node_bench.gains([row(1, 0.20, 16.0, 2300), row(4, 0.30, 40.0, 2600)])
    assert text == ("4 camera(s), raw640, max_batch 4 vs 1: captions/s 1.50x, aggregate decode tok/s 2.50x, "
                    "RSS 2600 vs 2300 MB")
