"""mobilevlm-bench --node runs end to end: a node process under camera load, measured from outside.
(Speed itself is a benchmark's business, not a test's: this checks that the figures are there.)"""

from __future__ import annotations

import math
import os

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")

from mobilevlm_ros.tools import node_bench  # noqa: E402

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engines", "demo")


def test_node_bench_measures_captions_answers_frames_cpu_and_memory():
    r = node_bench.run_load(DEMO, n_cameras=2, fmt="jpeg720", duration=3.0, fps=10.0, question_rate=1.0,
                            caption_rate=2.0, change_threshold=0.0)
    assert set(r["per_camera"]) == {"cam0", "cam1"}
    for cam in r["per_camera"].values():
        assert cam["captions_per_s"] > 0 and not math.isnan(cam["caption_latency_s"]["p50"])
        assert 0 < cam["frames_received"] <= cam["frames_published"]
    assert r["answers"] >= 1 and r["answer_latency_s"]["p50"] > 0
    assert r["node_cpu_s_per_s"] > 0 and r["rss_mb_start"] > 50 and r["rss_mb_end"] > 50
    text = node_bench.table([{**r, "ingest_cpu_s_per_s": 0.1}])
    assert "jpeg720" in text and "captions/s" in text
