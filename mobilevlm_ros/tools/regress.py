"""mobilevlm-regress: replay many bags through one engine, or two, on Ray; compare; a report to look at.

  mobilevlm-regress BAG... --engine A [--baseline B | --against DIR] --out DIR [--workers N]
                    [--address ADDR] [--report FILE.html] [--json] [--resume] [--serial]

BAG: bags (rosbag2 folders), folders searched for bags, or globs. Each (bag, engine) pair is a Ray
task that replays the bag through a VLM node in lock-step (as `mobilevlm-replay --rate 0` does), in
its own ROS domain with discovery on its host only, writes its output bag to
DIR/<side>/<bag>/bag and returns its per-frame records (kept as DIR/<side>/<bag>/records.json). Ray
starts locally, sized to this machine, unless `--address` joins a running cluster (then bags,
engines and DIR must be at the same paths on every node: a shared filesystem). `--workers N` replays
run at once, each with cores/N onnxruntime threads (`--threads`). `--serial` runs them one after the
other in this process, without Ray.

The candidate (--engine) is compared with --baseline's run of the same bags, or with the candidate
side of an earlier run's DIR (`--against`): captions and answers (changed, word similarity), count
answers, boxes paired by phrase (IoU), and captions/answers one side lacks. Thresholds are flags.
The summary goes to DIR/summary.json (and stdout with --json); the report, one HTML file with the
frames inline, to DIR/report.html or --report.

Exit status: 0 within thresholds; 3 a threshold crossed; 4 a bag failed (unreadable, no camera
topics, a replay that kept failing; the other bags still ran); 1 an error before any replay (no
bags, a bad engine, DIR in use); 2 bad arguments; 130 interrupted (Ctrl-C: every finished bag's
output stays, `--resume` skips them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Dict, List, Optional

EXIT_CROSSED, EXIT_BAG_FAILED, EXIT_INTERRUPTED = 3, 4, 130


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo): every figure is recorded next to it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def parse_args(argv=None) -> argparse.Namespace:
    from ..regress.compare import Thresholds

    d = Thresholds()
    p = argparse.ArgumentParser(prog="mobilevlm-regress", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bags", nargs="+", metavar="BAG", help="bags, folders of bags, or globs")
    p.add_argument("--engine", required=True, help="engine directory under test (the candidate)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--baseline", metavar="ENGINE",
                      help="engine to compare with, replayed on the same bags")
    side.add_argument("--against", metavar="DIR",
                      help="compare with the candidate side of an earlier run's --out")
    p.add_argument("--out", required=True,
                   help="output folder (created; an earlier one only with --resume)")
    p.add_argument("--workers", type=int, default=0,
                   help="replays at once (default: cores / 2, at least 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="onnxruntime threads per replay (default: cores / workers)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. 10.0.0.5:6379 of `ray start --head`)")
    p.add_argument("--serial", action="store_true",
                   help="no Ray: one replay after the other in this process")
    p.add_argument("--report", metavar="FILE.html",
                   help="where to write the report (default: OUT/report.html)")
    p.add_argument("--top", type=int, default=12, help="frames shown in the report")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in OUT: skip finished replays")
    p.add_argument("--max-new-tokens", type=int, default=48)
    g = p.add_argument_group("thresholds (crossing one: exit status 3)")
    g.add_argument("--min-similarity", type=float, default=d.min_similarity,
                   help="a caption/answer less similar than this (word similarity, 0-1) is dissimilar")
    g.add_argument("--max-dissimilar", type=float, default=d.max_dissimilar,
                   help="share of texts that may be dissimilar")
    g.add_argument("--min-iou", type=float, default=d.min_iou,
                   help="a phrase's box pair below this IoU, or a box on one side only, is a box change")
    g.add_argument("--max-box-changes", type=int, default=d.max_box_changes)
    g.add_argument("--max-count-changes", type=int, default=d.max_count_changes)
    g.add_argument("--max-missing", type=int, default=d.max_missing,
                   help="captions/answers one side has and the other lacks")
    g.add_argument("--max-value-changes", type=int, default=d.max_value_changes,
                   help="typed answers whose value differs between the sides")
    g.add_argument("--confidence-shift", type=float, default=d.confidence_shift,
                   help="a typed answer's confidence moving more than this is counted as moved")
    a = p.parse_args(argv)
    cores = os.cpu_count() or 1
    if a.workers < 0 or a.threads < 0 or a.top < 0:
        p.error("--workers, --threads and --top must be >= 0")
    a.workers = 1 if a.serial else (a.workers or max(1, cores // 2))
    a.threads = a.threads or max(1, cores // a.workers)
    if a.serial and a.address:
        p.error("--serial runs here, without Ray: it takes no --address")
    a.thresholds = Thresholds(a.min_similarity, a.max_dissimilar, a.min_iou, a.max_box_changes,
                              a.max_count_changes, a.max_missing, a.max_value_changes, a.confidence_shift)
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        return run(a)
    except KeyboardInterrupt:
        print(f"\nmobilevlm-regress: interrupted; finished replays are kept in {a.out} "
              "(rerun with --resume to skip them)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as e:
        print(f"mobilevlm-regress: error: {e}", file=sys.stderr)
        return 1


def run(a: argparse.Namespace) -> int:
    """Replay, compare, write the summary and the report; the exit status."""
    from ..regress import bag_paths, html_report

    bags = bag_paths.find_bags(a.bags)
    keys = bag_paths.bag_keys(bags)
    engines = {side: engine for side, engine in (("candidate", a.engine), ("baseline", a.baseline)) if engine}
    identity = {side: _engine_identity(engine) for side, engine in engines.items()}
    if a.against and not os.path.isdir(os.path.join(a.against, "candidate")):
        raise ValueError(f"--against {a.against}: not the --out folder of an earlier mobilevlm-regress run")
    if os.path.exists(a.out) and os.listdir(a.out) and not a.resume:
        raise ValueError(f"--out {a.out} exists and is not empty: use --resume to continue it, "
                         "or another folder")
    records, errors, facts = _replay_all(a, bags, keys, engines, identity)
    per_bag = _compare_all(a, bags, keys, records, errors)
    summary = _summary(a, per_bag, facts, identity)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    report = a.report or os.path.join(a.out, "report.html")
    html_report.write(report, summary, per_bag, _frames_to_show(per_bag, a.top), a.top)
    print(json.dumps(summary, indent=2) if a.json else _summary_text(summary, report))
    return summary["exit_status"]


def _replay_all(a: argparse.Namespace, bags: List[str], keys: Dict[str, str], engines: Dict[str, str],
                identity: Dict[str, str]) -> tuple:
    """Every (bag, side) pair not already done (--resume), on Ray or serially, with a progress bar
    of bags done: ({(bag, side): records}, {bag: why it failed}, how the run went)."""
    from tqdm.auto import tqdm

    from ..regress import runner

    pairs = [runner.Pair(bag, keys[bag], side, engine, os.path.join(a.out, side, keys[bag]))
             for bag in bags for side, engine in engines.items()]
    records: Dict[tuple, dict] = {}
    for pair in pairs:
        done = runner.load_done(pair, identity[pair.side]) if a.resume else None
        if done is not None:
            records[(pair.bag, pair.side)] = done
    todo = [p for p in pairs if (p.bag, p.side) not in records]
    errors: Dict[str, str] = {}
    finished = {bag: sum((bag, s) in records for s in engines) for bag in bags}  # sides done or failed
    bar = tqdm(total=len(bags), unit="bag", desc="bags", disable=a.json and not sys.stderr.isatty())
    bar.update(sum(n == len(engines) for n in finished.values()))

    def on_done(pair: runner.Pair, result: Optional[dict], error: Optional[str]) -> None:
        if error is not None:
            errors.setdefault(pair.bag, f"{pair.side}: {error}")
            bar.write(f"{pair.key}: failed ({pair.side}): {error}", file=sys.stderr)
        else:
            runner.save_done(pair, result)
            records[(pair.bag, pair.side)] = result
        finished[pair.bag] += 1
        if finished[pair.bag] == len(engines):
            bar.update(1)

    start = time.monotonic()
    # stdout carries the result alone (--json): what Ray says meanwhile (a worker died...) goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        if a.serial or not todo:  # nothing left to run (--resume of a finished run): no Ray to start
            facts = {"address": "-", "cluster_cpus": None, "nodes": 0}
            runner.run_serial(todo, a.threads, a.max_new_tokens, on_done)
        else:
            facts = runner.run_ray(todo, a.workers, a.threads, a.max_new_tokens, a.address, on_done)
    bar.close()
    facts.update(wall_s=round(time.monotonic() - start, 3), pairs_run=len(todo),
                 pairs_resumed=len(pairs) - len(todo))
    return records, errors, facts


def _compare_all(a: argparse.Namespace, bags: List[str], keys: Dict[str, str], records: Dict[tuple, dict],
                 errors: Dict[str, str]) -> List[dict]:
    """Per bag: its records by side and, where both sides replayed it, their comparison."""
    from ..regress.compare import SIDES, compare_runs

    per_bag = []
    for bag in bags:
        key = keys[bag]
        sides = {s: records.get((bag, s)) for s in SIDES if (bag, s) in records}
        if a.against:
            sides["baseline"] = _earlier(a.against, key)
            if sides["baseline"] is None and bag not in errors:
                errors[bag] = f"baseline: {a.against} has no finished replay of {key}"
        entry = {"key": key, "bag": os.path.abspath(bag), "status": "failed" if bag in errors else "ok",
                 "records": {s: r for s, r in sides.items() if r}, "comparison": None}
        if bag in errors:
            entry["error"] = errors[bag]
        elif sides.get("baseline") is not None:
            entry["comparison"] = compare_runs(sides["candidate"], sides["baseline"], a.thresholds)
        per_bag.append(entry)
    return per_bag


def _summary(a: argparse.Namespace, per_bag: List[dict], facts: dict, identity: Dict[str, str]) -> dict:
    """summary.json: the verdict, the totals, each bag, and how the run went."""
    from ..regress.compare import add_totals

    compared = [b["comparison"]["totals"] for b in per_bag if b["comparison"]]
    totals = add_totals(compared) if compared else None
    crossed = a.thresholds.crossed(totals) if totals else []
    failed = [b["key"] for b in per_bag if b["status"] == "failed"]
    if a.baseline:
        baseline = {"engine": os.path.abspath(a.baseline), "engine_sha256": identity["baseline"]}
    else:
        baseline = {"against": os.path.abspath(a.against)} if a.against else None
    return {
        "executor": "serial" if a.serial else "ray", "address": facts["address"],
        "ray_cluster_cpus": facts["cluster_cpus"], "ray_nodes": facts["nodes"],
        "workers": a.workers, "threads_per_task": a.threads, "wall_s": facts["wall_s"],
        "cpu": cpu_model(), "cores": os.cpu_count(), "pairs_run": facts["pairs_run"],
        "pairs_resumed": facts["pairs_resumed"],
        "candidate": {"engine": os.path.abspath(a.engine), "engine_sha256": identity["candidate"]},
        "baseline": baseline, "thresholds": a.thresholds.as_dict(), "totals": totals, "crossed": crossed,
        "failed": failed, "exit_status": EXIT_BAG_FAILED if failed else (EXIT_CROSSED if crossed else 0),
        "bags": [{"key": b["key"], "bag": b["bag"], "status": b["status"], "error": b.get("error"),
                  "replay": {s: r["summary"] for s, r in b["records"].items()},
                  "replay_wall_s": {s: r["wall_s"] for s, r in b["records"].items() if "wall_s" in r},
                  "totals": b["comparison"]["totals"] if b["comparison"] else None} for b in per_bag],
    }


def _engine_identity(engine: str) -> str:
    from ..regress.task import engine_identity

    try:
        return engine_identity(engine)
    except OSError:
        raise ValueError(f"engine {engine}: no manifest.json (not an engine folder)") from None


def _earlier(against: str, key: str) -> Optional[dict]:
    """The candidate records of bag `key` in an earlier run's folder."""
    from ..regress.runner import load_records

    return load_records(os.path.join(against, "candidate", key))


def _frames_to_show(per_bag: List[dict], top: int) -> Dict[tuple, object]:
    """(bag key, camera, stamp) -> RGB, read from the input bags, of the frames the report shows."""
    from ..regress.html_report import changed_frames
    from ..ros import bags
    from ..ros.bridge import compressed_imgmsg_to_rgb, imgmsg_to_rgb
    from ..ros.player import camera_name, stamp_ns

    wanted: Dict[str, set] = {}
    for key, frame in changed_frames(per_bag, top):
        wanted.setdefault(key, set()).add((frame["camera"], frame["stamp_ns"]))
    images = {}
    for b in per_bag:
        if b["key"] not in wanted:
            continue
        topics = {t for t, ty in bags.topics(b["bag"]).items() if ty.startswith("sensor_msgs/msg/")
                  and ty.endswith("Image")}
        for topic, msgtype, _, raw in bags.read(b["bag"], topics):
            msg = bags.deserialize(msgtype, raw)
            k = (camera_name(topic), stamp_ns(msg.header))
            if k in wanted[b["key"]]:
                to_rgb = compressed_imgmsg_to_rgb if msgtype.endswith("CompressedImage") else imgmsg_to_rgb
                images[(b["key"],) + k] = to_rgb(msg)
    return images


def _accuracy(replays: Dict[str, dict]) -> str:
    """'candidate: grounding 8/8, counting 3/3, typed 11/11; baseline: ...' for a bag whose questions
    carry truth ('' when none do)."""
    parts = []
    for side in ("candidate", "baseline"):
        r = replays.get(side)
        if not r:
            continue
        scores = [(name, r.get(key, [0, 0])) for name, key in
                  (("grounding", "grounding_iou50"), ("counting", "counting"), ("typed", "typed"))]
        scores = [f"{name} {ok}/{n}" for name, (ok, n) in scores if n]
        if scores:
            parts.append(f"{side}: {', '.join(scores)}")
    return "; ".join(parts)


def _summary_text(s: dict, report: str) -> str:
    lines = []
    for b in s["bags"]:
        t = b["totals"]
        if b["status"] != "ok":
            lines.append(f"{b['key']}: FAILED: {b['error']}")
        elif t is None:
            r = b["replay"]["candidate"]
            lines.append(f"{b['key']}: {r['frames']} frames, {r['captions']} captions, "
                         f"{r['answers']} answers")
        else:
            lines.append(f"{b['key']}: {t['frames']} frames; {t['changed']}/{t['texts']} texts changed "
                         f"(mean similarity {t['mean_similarity']}); counts changed {t['count_changes']}/"
                         f"{t['counts']}; box changes {t['box_changes']}/{t['boxes']}; "
                         f"typed values changed {t.get('value_changes', 0)}/{t.get('typed', 0)} "
                         f"(confidence moved {t.get('confidence_moves', 0)}); one side only {t['missing']}")
        accuracy = _accuracy(b["replay"])
        if accuracy:
            lines.append(f"  accuracy against the bag's truth: {accuracy}")
    lines.append(f"{s['executor']} ({s['address']}), {s['workers']} workers x {s['threads_per_task']} "
                 f"threads: {s['pairs_run']} replays in {s['wall_s']:.1f} s ({s['pairs_resumed']} resumed); "
                 f"CPU {s['cpu']}")
    verdict = ("FAILED bags: " + ", ".join(s["failed"]) if s["failed"] else
               "THRESHOLDS CROSSED: " + "; ".join(s["crossed"]) if s["crossed"] else "within thresholds")
    lines.append(f"{verdict}; report: {report}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
