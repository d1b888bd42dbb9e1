"""mobilevlm-bench: how fast an engine runs here, next to baselines measured in the same run.

  mobilevlm-bench ENGINE_DIR [--reference CHECKPOINT]
  mobilevlm-bench --synthetic v2-1.7b --precision int4     # makes (once) and measures a random-weight model
  mobilevlm-bench --synthetic v2-1.7b --llamacpp --llamacpp-src DIR   # + llama.cpp, same run
  mobilevlm-bench --synthetic v2-1.7b --backend cuda       # a --target cuda engine vs PyTorch CUDA
  mobilevlm-bench --synthetic v2-1.7b --profile            # one caption by stage and operator
  mobilevlm-bench --kernels                                # the CPU matrix kernels, side by side
  mobilevlm-bench --node [ENGINE_DIR] [--cameras 1 4] ...   # the node under a fixed camera load

Prints, for our engine and for the transformers PyTorch fp32 reference: vision ms, prefill tokens/s,
decode tokens/s, time to first token, end-to-end caption latency (N new tokens), peak RSS; and the
memory-bandwidth bound of decode: bytes read per token (decoder weights + KV cache) divided by this
machine's read bandwidth, measured in the same run (it swings from minute to minute on shared hosts).
Each engine runs in its own process so peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from ..runtime.manifest import PRECISIONS
from ..runtime.sessions import BACKENDS

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mobilevlm_ros", "bench")


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork+exec, so a worker
    # started by a process that had exported a model would report the exporter's peak.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _frame(i: int, w: int = 640, h: int = 480) -> np.ndarray:
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


# -- workers (each in its own process) ----------------------------------------------------------
def _summarise(runs: list) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return med


def worker_ours(engine: str, new_tokens: int, runs: int, threads: int, backend: str = "auto") -> dict:
    from ..runtime.generation import GenerationParams
    from ..runtime.vlm import VLM

    t0 = time.perf_counter()
    vlm = VLM(engine, backend=backend, threads=threads, max_length=1024)
    load_s = time.perf_counter() - t0
    params = GenerationParams(max_new_tokens=new_tokens, ignore_eos=True)

    def request(i: int):
        first_token_at = []
        t0 = time.perf_counter()
        answer = vlm.describe(_frame(i), None, params,
                              on_text=lambda text, tokens: (first_token_at
                                                            or first_token_at.append(time.perf_counter())))
        return answer.timings, first_token_at[0] - t0

    out = []
    for i in range(runs + 1):  # the first run warms up onnxruntime and fills the prompt-head cache
        t, ttft = request(i)
        if i:
            out.append(dict(vision_ms=t.vision_s * 1e3, prefill_tok_s=t.prefill_tokens / t.prefill_s,
                            decode_tok_s=t.decode_tokens_per_s, ttft_s=ttft, e2e_s=t.total_s,
                            prompt_tokens=t.prompt_tokens, prefill_tokens=t.prefill_tokens,
                            new_tokens=t.new_tokens))
    res = _summarise(out)
    res["peak_rss_mb"] = _peak_rss_mb()  # before the bandwidth probe below allocates its buffer
    res.update(load_s=load_s, backend=vlm.backend, precision=vlm.manifest.precision)
    if vlm.backend != "cpu":
        return res  # the host's read bandwidth does not bound a GPU's decode

    # Decode against the bandwidth bound, each run right after a bandwidth reading: the host's
    # bandwidth drifts by tens of percent within a minute.
    m = vlm.manifest
    weights = m.files["decoder"]["bytes"] + m.files["decoder_data"]["bytes"]
    per_token = weights + vlm.decoder.kv_bytes_per_position * (res["prompt_tokens"] + new_tokens / 2)
    fractions, bandwidths = [], []
    for i in range(runs):
        bw = read_bandwidth_gbs(threads, mb=int(per_token / (1 << 20)) + 1)
        t, _ = request(100 + i)
        bandwidths.append(bw)
        fractions.append(t.decode_tokens_per_s * per_token / (bw * 1e9))
    res.update(block_size=(m.data.get("quantization") or {}).get("block_size"),
               decode_bytes_per_token=per_token, read_bandwidth_gbs=statistics.median(bandwidths),
               decode_fraction_of_bound=statistics.median(fractions),
               decode_bound_tok_s=statistics.median(bandwidths) * 1e9 / per_token)
    return res


def worker_reference(checkpoint: str, new_tokens: int, runs: int, threads: int,
                     backend: str = "auto") -> dict:
    import torch

    from ..model.loader import load_checkpoint
    from ..runtime.image import preprocess
    from ..runtime.prompt import DEFAULT_CAPTION_QUESTION, build_prompt, tokenize_prompt
    from ..runtime.tokenizer import Tokenizer

    torch.set_num_threads(threads)
    device = "cuda" if backend in ("cuda", "tensorrt") else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--backend {backend}: this PyTorch ({torch.__version__}) has no CUDA, so there "
                         "is no PyTorch CUDA baseline; install a CUDA build of torch or pass --no-reference")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # CUDA calls return early
    t0 = time.perf_counter()
    model = load_checkpoint(checkpoint).to(device)
    load_s = time.perf_counter() - t0
    tok = Tokenizer(os.path.join(checkpoint, "tokenizer.model"))
    ids = tokenize_prompt(tok, build_prompt(DEFAULT_CAPTION_QUESTION))
    size = model.config.vision["image_size"]
    out = []
    with torch.no_grad():
        for i in range(runs + 1):
            t0 = time.perf_counter()
            pixels = torch.from_numpy(preprocess(_frame(i), size)).to(device)
            image = model.vision(pixels)
            sync()
            vision_s = time.perf_counter() - t0
            embeds = model.embed(ids, image)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
            t1 = time.perf_counter()
            model.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=1, do_sample=False)
            sync()
            prefill_s = time.perf_counter() - t1
            ttft = time.perf_counter() - t0
            t1 = time.perf_counter()
            model.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False)
            sync()
            gen_s = time.perf_counter() - t1
            e2e = vision_s + gen_s
            if i:
                out.append(dict(vision_ms=vision_s * 1e3, prefill_tok_s=embeds.shape[1] / prefill_s,
                                decode_tok_s=(new_tokens - 1) / max(gen_s - prefill_s, 1e-9), ttft_s=ttft,
                                e2e_s=e2e, prompt_tokens=embeds.shape[1], new_tokens=new_tokens))
    res = _summarise(out)
    res.update(load_s=load_s, peak_rss_mb=_peak_rss_mb(), backend=f"torch-{device}", precision="fp32")
    return res


def _run_worker(kind: str, target: str, a) -> dict:
    cmd = [sys.executable, "-m", "mobilevlm_ros.tools.bench", "--worker", kind, target,
           "--new-tokens", str(a.new_tokens), "--runs", str(a.runs), "--threads", str(a.threads),
           "--backend", a.backend]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"mobilevlm-bench: {kind} worker failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def synthetic_engine_name(synthetic: str, precision: str, block_size: int, target: str) -> str:
    """The cached engine's folder name: it changes with the quantization the exporter would use now,
    so a new default is never benchmarked on an engine built with the old one."""
    import hashlib
    import json

    from ..model.export import DEFAULT_QUANT

    quant = dict(DEFAULT_QUANT.get(precision, {}), **({"block_size": block_size} if block_size else {}))
    tag = hashlib.sha256(json.dumps(quant, sort_keys=True).encode()).hexdigest()[:8]
    return f"{synthetic}-{precision}-{tag}" + ("-cuda" if target == "cuda" else "")


def _synthetic(a) -> tuple:
    """A cached synthetic checkpoint and its engine (made once: a full-size int4 build takes minutes)."""
    from ..model.export import export
    from ..model.synthetic import write_synthetic

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


def _write_json(result: dict, path: str) -> None:
    if not path:
        return
    text = json.dumps(result, indent=2)
    if path == "-":
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text)


def _table(rows: dict) -> str:
    cols = [("vision_ms", "vision ms", "{:.0f}"), ("prefill_tok_s", "prefill tok/s", "{:.0f}"),
            ("decode_tok_s", "decode tok/s", "{:.1f}"), ("ttft_s", "TTFT s", "{:.2f}"),
            ("e2e_s", "caption s", "{:.2f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}")]
    head = f"{'':28}" + "".join(f"{c[1]:>15}" for c in cols)
    lines = [head]
    for name, r in rows.items():
        lines.append(f"{name:28}" + "".join(f"{(c[2].format(r[c[0]]) if c[0] in r else '-'):>15}"
                                            for c in cols))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mobilevlm-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("engine", nargs="?", help="engine directory")
    p.add_argument("--synthetic", metavar="NAME", help="benchmark a random-weight preset (e.g. v2-1.7b)")
    p.add_argument("--precision", default="int4", choices=PRECISIONS)
    p.add_argument("--block-size", type=int, default=0,
                   help="synthetic: int4/int8 quantization block (0: the default)")
    p.add_argument("--reference", metavar="CHECKPOINT",
                   help="checkpoint folder for the PyTorch fp32 baseline")
    p.add_argument("--no-reference", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="execution provider for our engine; cuda/tensorrt also put the PyTorch baseline on "
                        "CUDA and make --synthetic export a --target cuda engine")
    p.add_argument("--work", default=CACHE, help="where synthetic checkpoints and engines are cached")
    p.add_argument("--profile", action="store_true",
                   help="no baselines: where one caption's time goes, by stage and operator")
    p.add_argument("--kernels", action="store_true",
                   help="onnxruntime's CPU matrix kernels (fp32, MatMulNBits int4/int8, QGEMM int8) on one "
                        "2048x5632 decoder matrix at prefill's and decode's row counts")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON here ('-' for stdout)")
    p.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    from .bench_llamacpp import add_arguments as add_llamacpp_arguments

    add_llamacpp_arguments(p)
    node = p.add_argument_group("--node: the VLM node under load (default engine: the demo)")
    node.add_argument("--node", action="store_true", help="benchmark the node, not the engine")
    node.add_argument("--cameras", type=int, nargs="+", default=[1, 4], help="camera counts to run")
    node.add_argument("--format", nargs="+", default=["raw640", "jpeg720"], choices=["raw640", "jpeg720"])
    node.add_argument("--duration", type=float, default=20.0, help="seconds of load per run")
    node.add_argument("--fps", type=float, default=30.0, help="frames per second and camera")
    node.add_argument("--question-rate", type=float, default=0.5, help="questions per second (all cameras)")
    node.add_argument("--caption-rate", type=float, default=2.0, help="the node's caption_rate_hz")
    node.add_argument("--change-threshold", type=float, default=0.0,
                      help="the node's change_threshold (0: every caption runs inference)")
    node.add_argument("--max-batch", type=int, nargs="+", default=[1, 4],
                      help="the node's max_batch values to run (1: one answer at a time, the baseline)")
    a = p.parse_args(argv)
    if a.node:
        from . import node_bench

        return node_bench.main(a)
    from ..runtime.errors import EngineError
    from ..runtime.sessions import choose_providers, default_threads

    a.threads = a.threads or default_threads()
    try:  # before minutes of export: is the asked-for execution provider there at all?
        choose_providers("cuda", a.backend)
    except EngineError as e:
        p.error(str(e))
    if a.worker:
        fn = worker_ours if a.worker == "ours" else worker_reference
        print(json.dumps(fn(a.engine, a.new_tokens, a.runs, a.threads, a.backend)))
        return 0
    if a.kernels:
        from .bench_kernels import measure
        from .bench_kernels import table as kernels_table

        results = measure(threads=a.threads)
        print(kernels_table(results, 2048, 5632, a.threads))
        _write_json(results, a.json)
        return 0
    if bool(a.engine) == bool(a.synthetic):
        p.error("give either ENGINE_DIR or --synthetic NAME")
    from .bench_llamacpp import check_arguments as check_llamacpp_arguments

    check_llamacpp_arguments(p, a, a.reference or a.synthetic)
    checkpoint = a.reference
    engine = a.engine
    if a.synthetic:
        engine, ckpt = _synthetic(a)
        checkpoint = checkpoint or ckpt
    if a.profile:
        from .bench_profile import profile_caption, table

        result = profile_caption(engine, a.new_tokens, a.threads, a.backend)
        print(table(result))
        _write_json(result, a.json)
        return 0

    race = None
    if a.llamacpp:  # ours runs inside the race, alternating with llama.cpp's processes
        from .bench_llamacpp import race_llamacpp

        race = race_llamacpp(a, engine, checkpoint, _run_worker)
        ours = race["ours"]
    else:
        ours = _run_worker("ours", engine, a)
    ref = None
    if checkpoint and not a.no_reference:
        ref = _run_worker("reference", checkpoint, a)
    rows = {f"ours ({ours['precision']}, {ours['backend']})": ours}
    if ref:
        rows[f"transformers fp32 ({ref['backend']})"] = ref
    if race:
        rows.update(race["rows"])
    result = {
        "engine": engine, "threads": a.threads, "new_tokens": a.new_tokens, "runs": a.runs,
        "ours": ours, "reference": ref,
        "e2e_speedup_vs_reference": (ref["e2e_s"] / ours["e2e_s"]) if ref else None,
    }
    print(_table(rows))
    print(f"\nprompt: {ours['prompt_tokens']:.0f} positions, {ours['prefill_tokens']:.0f} computed "
          f"per new frame (the system-prompt head is cached); {a.new_tokens} new tokens; {a.threads} threads")
    if "decode_bytes_per_token" in ours:  # CPU runs only
        print(f"decode reads {ours['decode_bytes_per_token'] / 1e9:.3f} GB/token (weights + KV cache); "
              f"read bandwidth {ours['read_bandwidth_gbs']:.1f} GB/s -> bound "
              f"{ours['decode_bound_tok_s']:.1f} tok/s; decode reaches "
              f"{ours['decode_fraction_of_bound']:.2f} of the bound "
              "(median of runs, each next to its own bandwidth reading)")
    if ref:
        print(f"caption of {a.new_tokens} tokens: {result['e2e_speedup_vs_reference']:.1f}x faster "
              f"than PyTorch fp32 ({ref['backend']})")
    if race:
        result["llamacpp"] = race["json"]
        print("\n".join(race["lines"]))
    _write_json(result, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
