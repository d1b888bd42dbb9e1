"""mobilevlm-regress: comparison on known answers; bags replayed on Ray (and serially) equal the same
replays done one by one; bad bags fail alone; a killed worker, Ctrl-C and --resume lose nothing; the
report renders in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")
pytest.importorskip("ray", reason="Ray is not installed: run `make setup` (pip install .[fleet])")

from conftest import sigint_default  # noqa: E402

from mobilevlm_ros.regress import bag_paths, runner  # noqa: E402
from mobilevlm_ros.regress import compare as C  # noqa: E402
from mobilevlm_ros.regress.task import read_records  # noqa: E402
from mobilevlm_ros.ros.replay import replay  # noqa: E402
from mobilevlm_ros.tools import regress as R  # noqa: E402
from mobilevlm_ros.tools.demo_bag import record  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_ENGINE = os.path.join(ROOT, "engines", "demo")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# -- comparison, on known answers ------------------------------------------------------------------
def test_text_similarity_and_counts():
    assert C.text_similarity("a red circle", "a red circle") == 1.0
    assert C.text_similarity("a red circle", "A red circle") == 1.0
    assert C.text_similarity("a red circle", "a blue circle") == pytest.approx(2 / 3)  # 2 of 3 words
    assert C.text_similarity("red", "blue") == 0.0
    assert C.text_similarity("", "") == 1.0
    assert [C.count_of(t) for t in ("3", "3.", " 12 ", "three", "3 cats", "")] == [3, 3, 12, None, None, None]


def test_boxes_are_paired_by_phrase_not_by_order():
    a = [{"phrase": "the red circle", "box": [0, 0, 10, 10]},
         {"phrase": "the blue square", "box": [50, 50, 60, 60]}]
    b = [{"phrase": "the blue square", "box": [50, 50, 60, 65]},
         {"phrase": "The red circle", "box": [0, 0, 10, 10]}, {"phrase": "a cat", "box": [1, 1, 2, 2]}]
    pairs = C.match_boxes(a, b)
    assert {"phrase": "the red circle", "iou": 1.0} in pairs
    assert {"phrase": "the blue square", "iou": pytest.approx(100 / 150, abs=1e-4)} in pairs
    assert {"phrase": "a cat", "iou": None, "side": "baseline"} in pairs and len(pairs) == 3
    # two boxes of one phrase: paired by overlap, whatever their order
    two = [{"phrase": "x", "box": [0, 0, 10, 10]}, {"phrase": "x", "box": [100, 100, 110, 110]}]
    assert [p["iou"] for p in C.match_boxes(two, two[::-1])] == [1.0, 1.0]


def _records(captions, answers, frames=((("front", 1),))):
    return {"frames": [{"camera": c, "stamp_ns": s, "topic": f"/{c}/image_raw"} for c, s in frames[0]],
            "captions": [{"camera": "front", "stamp_ns": s, "text": t, "reused": False} for s, t in captions],
            "answers": [{"camera": "front", "stamp_ns": s, "question": q, "text": t, "boxes": boxes}
                        for s, q, t, boxes in answers]}


def test_compare_runs_on_a_hand_made_pair():
    box = [{"phrase": "the red circle", "box": [0, 0, 10, 10]}]
    moved = [{"phrase": "the red circle", "box": [5, 0, 15, 10]}]  # IoU 1/3
    how_many, where = "How many objects are there?", "Where is the red circle?"
    cand = _records([(1, "a red circle and a blue square"), (2, "a green triangle")],
                    [(1, how_many, "2", []), (1, where, "[0.1]", moved), (2, how_many, "1", [])],
                    frames=[[("front", 1), ("front", 2)]])
    base = _records([(1, "a red circle and a blue square"), (2, "a red square")],
                    [(1, how_many, "3", []), (1, where, "[0.2]", box)], frames=[[("front", 1), ("front", 2)]])
    out = C.compare_runs(cand, base, C.Thresholds())
    t = out["totals"]
    # captions 2 (one changed), count answers 1 compared + 1 missing; the grounded answer
    # is judged by its box (IoU 1/3 < 0.5: one box change), not by its coordinate text
    assert (t["frames"], t["texts"], t["changed"], t["dissimilar"]) == (2, 3, 2, 2)
    assert (t["counts"], t["count_changes"], t["boxes"], t["box_changes"], t["missing"]) == (1, 1, 1, 1, 1)
    assert t["min_iou"] == pytest.approx(1 / 3, abs=1e-4)
    f1, f2 = out["frames"]
    assert f1["caption"]["changed"] is False
    assert f2["caption"]["similarity"] == pytest.approx(1 / 3, abs=1e-4)  # 1 word of 3 in common
    where = next(a for a in f1["answers"] if a["grounded"])
    assert where["boxes"] == [{"phrase": "the red circle", "iou": pytest.approx(1 / 3, abs=1e-4)}]
    assert next(a for a in f2["answers"])["missing"] == "baseline"
    crossed = C.Thresholds().crossed(t)
    assert len(crossed) == 4 and "1 count answers changed" in crossed[2]
    lenient = C.Thresholds(max_dissimilar=1.0, max_box_changes=1, max_count_changes=1, max_missing=1)
    assert lenient.crossed(t) == []
    assert C.compare_runs(cand, cand, C.Thresholds())["totals"]["changed"] == 0


def test_typed_answers_compare_by_value_and_confidence():
    q = "Is the door open?"
    cand = _records([], [(1, q, "Yes", [])], frames=[[("front", 1), ("front", 2)]])
    base = _records([], [(1, q, "No", [])], frames=[[("front", 1), ("front", 2)]])
    cand["answers"][0].update(answer_type="bool", value_json="true", confidence=0.9)
    base["answers"][0].update(answer_type="bool", value_json="false", confidence=0.6)
    out = C.compare_runs(cand, base, C.Thresholds())
    t = out["totals"]
    assert (t["typed"], t["value_changes"], t["confidence_moves"]) == (1, 1, 1)
    (answer,) = out["frames"][0]["answers"]
    assert answer["value"] == ["true", "false"] and answer["confidence"] == [0.9, 0.6]
    assert any("1 typed answers changed value" in c for c in C.Thresholds().crossed(t))
    base["answers"][0].update(value_json="true", confidence=0.85)
    t = C.compare_runs(cand, base, C.Thresholds())["totals"]
    assert (t["value_changes"], t["confidence_moves"]) == (0, 0)
    assert not any("typed" in c for c in C.Thresholds().crossed(t))


def test_bag_arguments(tmp_path):
    for name in ("fleet/r1/day1", "fleet/r2/day1", "fleet/r2/day2"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "metadata.yaml").write_text("x")
    os.makedirs(tmp_path / "not_a_bag")
    found = bag_paths.find_bags([str(tmp_path / "fleet"), str(tmp_path / "fleet/r2/day*"),
                                 str(tmp_path / "not_a_bag")])
    assert [os.path.relpath(p, tmp_path) for p in found] == [
        "fleet/r1/day1", "fleet/r2/day1", "fleet/r2/day2", "not_a_bag"]
    assert sorted(bag_paths.bag_keys(found).values()) == ["day2", "not_a_bag", "r1__day1", "r2__day1"]
    with pytest.raises(ValueError, match="no file or folder matches"):
        bag_paths.find_bags([str(tmp_path / "nothing*")])


def test_domains_are_valid_distinct_and_not_the_callers(monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "101")
    pool = runner.domain_pool(4)
    assert len(set(pool)) == 4 and all(1 <= d <= 101 for d in pool) and 101 not in pool
    with pytest.raises(ValueError, match="at most 100"):
        runner.domain_pool(101)


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two demo bags, one that cannot be read and one without camera topics; and a second engine:
    the demo engine's decoder rounded to int4 (onnxruntime's RTN), as a new quantization would be."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    from mobilevlm_ros.ros.bags import BagWriter

    root = tmp_path_factory.mktemp("fleet")
    bags = root / "bags"
    record(str(bags / "robot1"), frames=3, seed=31_000_000)
    record(str(bags / "robot2"), frames=3, seed=32_000_000)
    os.makedirs(bags / "corrupt")
    (bags / "corrupt" / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, bag")
    with BagWriter(str(bags / "no_camera")) as w:
        w.write("/chatter", "std_msgs/msg/String", 1, serialize_message(String(data="hello")))
    return {"root": root, "bags": str(bags), "int4": _int4_engine(str(root / "demo_int4"))}


def _int4_engine(out: str) -> str:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from mobilevlm_ros.runtime import manifest as M

    shutil.copytree(DEMO_ENGINE, out, ignore=shutil.ignore_patterns("decoder.onnx*"))
    q = MatMulNBitsQuantizer(onnx.load(os.path.join(DEMO_ENGINE, "decoder.onnx")), block_size=32,
                             is_symmetric=True)
    q.process()
    q.model.save_model_to_file(os.path.join(out, "decoder.onnx"), use_external_data_format=True)
    with open(os.path.join(DEMO_ENGINE, "manifest.json")) as f:
        m = json.load(f)
    m["precision"] = "int4"
    M.write(out, m, {role: f["path"] for role, f in m["files"].items()})
    return out


def _run(args, capsys):
    status = R.main(args + ["--json"])
    captured = capsys.readouterr()
    assert captured.out.startswith("{"), f"stdout is not the summary alone (exit {status}): {captured}"
    return status, json.loads(captured.out)


def _texts(records: dict) -> dict:
    """What a replay said, without its timings."""
    return {k: records[k] for k in ("frames", "captions", "answers")}


@pytest.fixture(scope="module")
def ray_run(fleet, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ray_run") / "out")
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        status = R.main([fleet["bags"], "--engine", fleet["int4"], "--baseline", DEMO_ENGINE, "--out", out,
                         "--workers", "2", "--json"])
    return status, json.loads(buf.getvalue()), out


def test_ray_run_compares_good_bags_and_reports_bad_ones(ray_run, fleet):
    status, summary, out = ray_run
    assert status == R.EXIT_BAG_FAILED  # two bags could not be replayed: a different code from thresholds
    by_key = {b["key"]: b for b in summary["bags"]}
    assert sorted(by_key) == ["corrupt", "no_camera", "robot1", "robot2"]
    assert by_key["robot1"]["status"] == by_key["robot2"]["status"] == "ok"
    assert "no sensor_msgs/Image or CompressedImage topic" in by_key["no_camera"]["error"]
    assert by_key["corrupt"]["status"] == "failed" and by_key["corrupt"]["error"]
    assert sorted(summary["failed"]) == ["corrupt", "no_camera"]
    assert (summary["executor"], summary["address"], summary["workers"]) == ("ray", "local", 2)
    assert summary["wall_s"] > 0 and summary["cpu"] and summary["totals"]["frames"] == 6
    assert summary["thresholds"] == C.Thresholds().as_dict()
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == summary


def test_ray_and_serial_runs_equal_plain_replays(ray_run, fleet, tmp_path, capsys):
    """Each pair's records equal those of the same bag replayed alone, through mobilevlm-replay's
    function; and a serial run (no Ray) gives the same records."""
    _, _, out = ray_run
    bag = os.path.join(fleet["bags"], "robot1")
    for side, engine in (("candidate", fleet["int4"]), ("baseline", DEMO_ENGINE)):
        alone = str(tmp_path / side)
        replay(bag, alone, engine, rate=0, quiet=True)
        with open(os.path.join(out, side, "robot1", "records.json")) as f:
            assert _texts(json.load(f)) == _texts(read_records(bag, alone))
    status, serial = _run([bag, "--engine", fleet["int4"], "--baseline", DEMO_ENGINE, "--out",
                           str(tmp_path / "serial"), "--serial"], capsys)
    assert serial["executor"] == "serial" and serial["bags"][0]["totals"] == _bag(ray_run, "robot1")["totals"]


def _bag(run, key):
    return next(b for b in run[1]["bags"] if b["key"] == key)


def test_thresholds_gate_the_exit_status_and_resume_rejudges_without_replaying(ray_run, fleet, tmp_path,
                                                                                capsys):
    _, summary, out = ray_run
    good = [os.path.join(fleet["bags"], k) for k in ("robot1", "robot2")]
    again = str(tmp_path / "again")
    shutil.copytree(out, again)
    base = good + ["--engine", fleet["int4"], "--baseline", DEMO_ENGINE, "--out", again, "--resume"]
    status, s = _run(base + ["--max-dissimilar", "1", "--min-iou", "0", "--max-count-changes", "99"], capsys)
    assert (status, s["crossed"], s["pairs_run"], s["pairs_resumed"]) == (0, [], 0, 4)
    assert s["totals"]["boxes"] > 0
    status, s = _run(base + ["--min-iou", "1.01"], capsys)  # no IoU reaches it: every box pair is a change
    assert status == R.EXIT_CROSSED and any("box changes" in c for c in s["crossed"])


def test_against_an_earlier_run(ray_run, fleet, tmp_path, capsys):
    _, _, out = ray_run
    bag = os.path.join(fleet["bags"], "robot2")
    status, s = _run([bag, "--engine", fleet["int4"], "--against", out, "--out", str(tmp_path / "o"),
                      "--workers", "1"], capsys)
    t = s["bags"][0]["totals"]
    assert status == 0 and t["changed"] == 0 and t["min_iou"] == 1.0 and t["missing"] == 0  # same engine
    assert s["baseline"] == {"against": os.path.abspath(out)}


def test_errors_before_any_replay(fleet, tmp_path, capsys):
    assert R.main([fleet["bags"], "--engine", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    os.makedirs(tmp_path / "used")
    (tmp_path / "used" / "x").write_text("x")
    assert R.main([fleet["bags"], "--engine", DEMO_ENGINE, "--out", str(tmp_path / "used")]) == 1
    assert "use --resume" in capsys.readouterr().err
    assert R.main([fleet["bags"], "--engine", DEMO_ENGINE, "--against", str(tmp_path), "--out", "x"]) == 1
    assert "not the --out folder" in capsys.readouterr().err


def test_a_killed_worker_is_retried_and_the_result_equals_an_undisturbed_run(tmp_path, capsys):
    """The worker process replaying a bag is SIGKILLed mid-replay; Ray reruns the task."""
    bag = str(tmp_path / "long")
    record(bag, frames=12, seed=31_000_000)  # its first 3 frames are robot1's
    out = str(tmp_path / "o")
    running = os.path.join(out, "candidate", "long", "running.json")
    killed = []

    def kill_mid_replay():
        end = time.monotonic() + 120
        while time.monotonic() < end and not os.path.exists(running):
            time.sleep(0.05)
        time.sleep(1.5)  # engine loaded, frames going
        with open(running) as f:
            pid = json.load(f)["pid"]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_mid_replay, daemon=True)
    killer.start()
    status, s = _run([bag, "--engine", DEMO_ENGINE, "--out", out, "--workers", "1"], capsys)
    killer.join(timeout=5)
    assert killed, "the worker was not killed"
    assert status == 0 and s["failed"] == []
    alone = str(tmp_path / "alone")
    replay(bag, alone, DEMO_ENGINE, rate=0, quiet=True)
    with open(os.path.join(out, "candidate", "long", "records.json")) as f:
        assert _texts(json.load(f)) == _texts(read_records(bag, alone))


def test_ctrl_c_keeps_finished_bags_and_resume_skips_them(fleet, tmp_path):
    good = [os.path.join(fleet["bags"], k) for k in ("robot1", "robot2")]
    for i in range(3):
        record(str(tmp_path / f"more{i}"), frames=3, seed=33_000_000 + i)
    args = good + [str(tmp_path / f"more{i}") for i in range(3)]
    out = str(tmp_path / "o")
    cmd = [sys.executable, "-m", "mobilevlm_ros.tools.regress", *args, "--engine", DEMO_ENGINE, "--out", out,
           "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=sigint_default)
    try:
        end = time.monotonic() + 180
        while time.monotonic() < end and not _finished(out) and proc.poll() is None:
            time.sleep(0.1)
        assert _finished(out), proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == R.EXIT_INTERRUPTED, err
    assert "rerun with --resume" in err
    done = _finished(out)
    assert 1 <= len(done) < 5
    resumed = subprocess.run(cmd + ["--resume", "--json"], capture_output=True, text=True, cwd=ROOT)
    s = json.loads(resumed.stdout)
    assert resumed.returncode == 0 and s["pairs_resumed"] >= len(done)
    assert s["pairs_run"] == 5 - s["pairs_resumed"]
    for key in done:  # the kept records were not redone
        assert done[key] == os.path.getmtime(os.path.join(out, "candidate", key, "records.json"))
    undisturbed = str(tmp_path / "u")
    subprocess.run(cmd[:cmd.index("--out") + 1] + [undisturbed, "--serial"], capture_output=True, check=True,
                   cwd=ROOT)
    for key in ("robot1", "robot2", "more0", "more1", "more2"):
        with open(os.path.join(out, "candidate", key, "records.json")) as f, \
                open(os.path.join(undisturbed, "candidate", key, "records.json")) as g:
            assert _texts(json.load(f)) == _texts(json.load(g))


def _finished(out: str) -> dict:
    """bag key -> mtime of its records.json, for the candidate side's finished replays."""
    side = os.path.join(out, "candidate")
    if not os.path.isdir(side):
        return {}
    return {k: os.path.getmtime(os.path.join(side, k, "records.json")) for k in os.listdir(side)
            if os.path.exists(os.path.join(side, k, "records.json"))}


# -- the report ------------------------------------------------------------------------------------
def test_report_is_self_contained_and_shows_changed_frames(ray_run):
    _, summary, out = ray_run
    with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
        page = f.read()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    images = page.count("<img ")
    assert images > 0 and images == page.count("src='data:image/jpeg;base64,")
    assert "Frames that changed most" in page and "robot1" in page and "corrupt" in page
    assert "2 bag(s) failed" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs Debian's)")
def test_report_renders_in_chromium(ray_run, tmp_path):
    import numpy as np
    from PIL import Image

    _, _, out = ray_run
    shot = str(tmp_path / "report.png")
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1300,1800", f"--screenshot={shot}",
                    "file://" + os.path.join(out, "report.html")],
                   capture_output=True, timeout=120, check=True)
    png = np.asarray(Image.open(shot).convert("RGB"))
    assert png.shape[:2] == (1800, 1300)
    # not a blank page: the verdict's red band and the frames' pixels are there
    assert (png.std(axis=(0, 1)) > 20).all()
    red = (png[..., 0] > 240) & (png[..., 1] < 235) & (png[..., 1] > 215)  # .bad background #fde4e1
    assert red.sum() > 500
    if os.environ.get("MOBILEVLM_KEEP_SCREENSHOT"):  # to look at it
        shutil.copy(shot, os.environ["MOBILEVLM_KEEP_SCREENSHOT"])


def test_address_joins_a_running_cluster(fleet, tmp_path):
    """`ray start --head` as on a cluster's head machine; the run joins it with --address."""
    import socket

    with socket.socket() as s:  # a free port for the head's GCS
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        out = str(tmp_path / "o")
        cmd = [sys.executable, "-m", "mobilevlm_ros.tools.regress", os.path.join(fleet["bags"], "robot1"),
               "--engine", DEMO_ENGINE, "--out", out, "--address", f"127.0.0.1:{port}", "--json"]
        for _ in range(30):  # until the head is up
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if "Failed to connect" not in done.stderr and "Could not find any running" not in done.stderr:
                break
            shutil.rmtree(out, ignore_errors=True)
            time.sleep(1)
        assert done.returncode == 0, done.stderr[-2000:]
        s = json.loads(done.stdout)
        assert (s["executor"], s["address"], s["ray_nodes"], s["ray_cluster_cpus"]) == (
            "ray", f"127.0.0.1:{port}", 1, 2.0)
        assert s["bags"][0]["status"] == "ok" and s["bags"][0]["replay"]["candidate"]["captions"] == 3
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stopping it stops this head's processes only
        head.wait(timeout=60)


def test_accuracy_against_the_bags_truth_is_given_per_side():
    from mobilevlm_ros.tools.regress import _accuracy

    replays = {"candidate": {"grounding_iou50": [8, 8], "counting": [3, 3], "typed": [10, 11]},
               "baseline": {"grounding_iou50": [7, 8], "counting": [0, 0], "typed": [11, 11]}}
    assert _accuracy(replays) == ("candidate: grounding 8/8, counting 3/3, typed 10/11; "
                                  "baseline: grounding 7/8, typed 11/11")
    assert _accuracy({"candidate": {"grounding_iou50": [0, 0], "counting": [0, 0]}}) == ""
