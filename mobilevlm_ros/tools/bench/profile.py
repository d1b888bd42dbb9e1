"""mobilevlm-bench --profile: where one caption's time goes, by stage and by operator.

onnxruntime's own profiler records every kernel of both engines during a caption (after a warm-up
caption, so the system-prompt head is cached as in service). The decoder's last N runs of the
profile are that caption's prefill (the image and the question) and its N-1 decode steps. The
time of a stage that is in no kernel is the session's own (inputs, outputs, scheduling); the time
of a caption that is in no session run is ours (tokens, embedding rows, sampling).
"""

from __future__ import annotations

import collections
import json
import os
import re
import tempfile
from typing import Dict, List

TOP_OPS = 5


def _runs_and_kernels(profile_file: str):
    """(model_run events in order, kernel events) of an onnxruntime profile."""
    with open(profile_file) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    return sorted(runs, key=lambda e: e["ts"]), kernels


def _op_label(kernel: dict) -> str:
    """The operator type; MatMulNBits split by weight bits (the builder names them MatMul_Q4/_Q8),
    since the int4 default keeps its most sensitive matrices in int8."""
    op = kernel["args"]["op_name"]
    bits = re.search(r"MatMul_Q(\d+)", kernel["name"]) if op == "MatMulNBits" else None
    return f"{op} int{bits.group(1)}" if bits else op


def stage_breakdown(runs: List[dict], kernels: List[dict]) -> dict:
    """Wall time of `runs` and their kernels' time per operator type (ms, summed over the runs)."""
    by_op: Dict[str, float] = collections.defaultdict(float)
    for k in kernels:
        if any(r["ts"] <= k["ts"] <= r["ts"] + r["dur"] for r in runs):
            by_op[_op_label(k)] += k["dur"] / 1e3
    return {"runs": len(runs), "wall_ms": sum(r["dur"] for r in runs) / 1e3, "ops_ms": dict(by_op)}


def profile_caption(engine: str, new_tokens: int, threads: int, backend: str = "auto") -> dict:
    from ...runtime.generation import GenerationParams
    from ...runtime.vlm import VLM
    from .common import frame

    with tempfile.TemporaryDirectory(prefix="mobilevlm_profile_") as tmp:
        vlm = VLM(engine, backend=backend, threads=threads, max_length=1024,
                  profile_prefix=os.path.join(tmp, "profile_"))
        params = GenerationParams(max_new_tokens=new_tokens, ignore_eos=True)
        vlm.describe(frame(0), None, params)  # warm-up; leaves the prompt head in the cache
        answer = vlm.describe(frame(1), None, params)
        vision_runs, vision_kernels = _runs_and_kernels(vlm.vision.session.end_profiling())
        decoder_runs, decoder_kernels = _runs_and_kernels(vlm.decoder.session.end_profiling())
    t = answer.timings
    caption = decoder_runs[-t.new_tokens:]  # [prefill, decode x (new_tokens - 1)]
    stages = {
        "vision": stage_breakdown(vision_runs[-1:], vision_kernels),
        "prefill": stage_breakdown(caption[:1], decoder_kernels),
        "decode": stage_breakdown(caption[1:], decoder_kernels),
    }
    in_sessions_ms = sum(s["wall_ms"] for s in stages.values())
    return {"engine": engine, "backend": vlm.backend, "precision": vlm.manifest.precision,
            "threads": threads, "prefill_tokens": t.prefill_tokens, "new_tokens": t.new_tokens,
            "caption_ms": t.total_s * 1e3, "preprocess_ms": t.preprocess_s * 1e3,
            "outside_sessions_ms": (t.total_s - t.preprocess_s) * 1e3 - in_sessions_ms, "stages": stages}


def table(result: dict) -> str:
    """Per stage: wall time, share of the caption, the operators that take it, the session's own."""
    total = result["caption_ms"]
    lines = [f"one caption: {total:.0f} ms ({result['precision']}, {result['backend']}, "
             f"{result['threads']} threads; {result['prefill_tokens']} prefill positions, "
             f"{result['new_tokens']} new tokens)",
             f"{'stage':10}{'ms':>9}{'share':>8}  operators (ms, share of the stage)",
             f"{'preprocess':10}{result['preprocess_ms']:9.0f}{result['preprocess_ms'] / total:8.0%}  "
             "resize and pad the frame (numpy, OpenCV)"]
    for name, s in result["stages"].items():
        ops = sorted(s["ops_ms"].items(), key=lambda kv: -kv[1])
        shown = [f"{op} {ms:.0f} ({ms / s['wall_ms']:.0%})" for op, ms in ops[:TOP_OPS]]
        rest = sum(ms for _, ms in ops[TOP_OPS:])
        own = s["wall_ms"] - sum(s["ops_ms"].values())
        shown += [f"other ops {rest:.0f}", f"session {own:.0f}"]
        if s["runs"] > 1:
            shown.append(f"{s['wall_ms'] / s['runs']:.1f} ms per step")
        lines.append(f"{name:10}{s['wall_ms']:9.0f}{s['wall_ms'] / total:8.0%}  " + ", ".join(shown))
    lines.append(f"{'ours':10}{result['outside_sessions_ms']:9.0f}"
                 f"{result['outside_sessions_ms'] / total:8.0%}  tokens, embedding rows, sampling, text")
    return "\n".join(lines)
