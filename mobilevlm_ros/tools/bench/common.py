"""What the benchmark tools share: the frames they caption, peak memory, the host's read bandwidth,
the cached synthetic engines, JSON output."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mobilevlm_ros", "bench")


def peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork+exec, so a worker
    # started by a process that had exported a model would report the exporter's peak.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def frame(i: int, w: int = 640, h: int = 480) -> np.ndarray:
    # A different frame per run, so no run reuses the previous run's vision features.
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def read_bandwidth_gbs(threads: int, mb: int = 1024, repeats: int = 5) -> float:
    """Best read bandwidth of `threads` threads summing disjoint parts of a buffer larger than any cache."""
    a = np.ones(mb * (1 << 20) // 8, dtype=np.int64)
    parts = np.array_split(a, threads)
    best = 0.0
    for _ in range(repeats):
        ts = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]  # numpy drops the GIL here
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = max(best, a.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def synthetic_engine_name(synthetic: str, precision: str, block_size: int, target: str) -> str:
    """The cached engine's folder name: it changes with the quantization the exporter would use now,
    so a new default is never benchmarked on an engine built with the old one."""
    import hashlib

    from ...model.export import DEFAULT_QUANT

    quant = dict(DEFAULT_QUANT.get(precision, {}), **({"block_size": block_size} if block_size else {}))
    tag = hashlib.sha256(json.dumps(quant, sort_keys=True).encode()).hexdigest()[:8]
    return f"{synthetic}-{precision}-{tag}" + ("-cuda" if target == "cuda" else "")


def synthetic_engine(a) -> tuple:
    """A cached synthetic checkpoint and its engine (made once: a full-size int4 build takes minutes)."""
    from ...model.export import export
    from ...model.synthetic import write_synthetic

    ckpt = os.path.join(a.work, f"{a.synthetic}-checkpoint")
    target = "cuda" if a.backend in ("cuda", "tensorrt") else "cpu"
    engine = os.path.join(a.work, synthetic_engine_name(a.synthetic, a.precision, a.block_size, target))
    if not os.path.isfile(os.path.join(ckpt, "tokenizer.model")):
        print(f"writing synthetic checkpoint {ckpt} ...", file=sys.stderr)
        write_synthetic(a.synthetic, ckpt)
    if not os.path.isfile(os.path.join(engine, "manifest.json")):
        print(f"exporting {engine} ...", file=sys.stderr)
        export(ckpt, engine, a.precision, target, model_id=f"synthetic/{a.synthetic}",
               block_size=a.block_size, log=lambda s: print(s, file=sys.stderr))
    return engine, ckpt


def write_json(result: dict, path: str) -> None:
    if not path:
        return
    text = json.dumps(result, indent=2)
    if path == "-":
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text)


