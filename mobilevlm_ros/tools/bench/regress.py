"""mobilevlm-bench --regress: the same generated bags through mobilevlm-regress serially (the
baseline, no Ray) and on Ray with each --ray-workers count, in this run: wall times, their ratio to
the serial run, and whether every run said exactly the same (it must).

Each run is a fresh `mobilevlm-regress` process, so Ray's start-up is part of its time, as a user
meets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import List


def add_arguments(p) -> None:
    g = p.add_argument_group("--regress: mobilevlm-regress serially and on Ray (default engine: the demo)")
    g.add_argument("--regress", action="store_true", help="benchmark regression over generated bags")
    g.add_argument("--bags", type=int, default=8, help="bags to generate")
    g.add_argument("--frames", type=int, default=12, help="frames per bag (2 per second, one camera)")
    g.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to run")


def main(a) -> int:
    from ...ros.share import share_path
    from ..demo_bag import record
    from ..regress import cpu_model

    engine = a.engine or share_path("engines/demo")
    work = tempfile.mkdtemp(prefix="mobilevlm-bench-regress-")
    bags = [os.path.join(work, "bags", f"bag{i}") for i in range(a.bags)]
    for i, bag in enumerate(bags):
        record(bag, frames=a.frames, seed=40_000_000 + 1000 * i)
    runs = [("serial", ["--serial"])] + [(f"ray, {w} worker{'s' * (w > 1)}", ["--workers", str(w)])
                                          for w in a.ray_workers]
    rows = []
    for name, flags in runs:
        out = os.path.join(work, name.replace(" ", "").replace(",", "_"))
        cmd = [sys.executable, "-m", "mobilevlm_ros.tools.regress", *bags, "--engine", engine, "--out", out,
               "--json", *flags]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name}: mobilevlm-regress failed ({done.returncode}):\n{done.stderr[-2000:]}",
                  file=sys.stderr)
            return 1
        summary = json.loads(done.stdout)
        rows.append({"run": name, "wall_s": summary["wall_s"], "workers": summary["workers"],
                     "threads_per_task": summary["threads_per_task"], "said": _said(out)})
    same = all(r["said"] == rows[0]["said"] for r in rows)
    print(table(rows, a.bags, a.frames, engine))
    print(f"results identical across the {len(rows)} runs: {'yes' if same else 'NO'}")
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "bags": a.bags, "frames": a.frames,
              "engine": engine, "identical": same,
              "runs": [{k: v for k, v in r.items() if k != "said"} for r in rows]}
    from .common import write_json

    write_json(result, a.json)
    return 0 if same else 1


def _said(out: str) -> dict:
    """bag key -> what its replay said (frames, captions, answers), without timings."""
    side = os.path.join(out, "candidate")
    said = {}
    for key in sorted(os.listdir(side)):
        with open(os.path.join(side, key, "records.json")) as f:
            r = json.load(f)
        said[key] = {k: r[k] for k in ("frames", "captions", "answers")}
    return said


def table(rows: List[dict], bags: int, frames: int, engine: str) -> str:
    from ..regress import cpu_model

    serial = rows[0]["wall_s"]
    lines = [f"{bags} bags x {frames} frames, engine {engine}; CPU {cpu_model()} ({os.cpu_count()} cores)",
             f"{'run':<22}{'threads/replay':>16}{'wall s':>10}{'vs serial':>11}"]
    for r in rows:
        ratio = serial / r["wall_s"]
        lines.append(f"{r['run']:<22}{r['threads_per_task']:>16}{r['wall_s']:>10.1f}{ratio:>10.2f}x")
    return "\n".join(lines)
