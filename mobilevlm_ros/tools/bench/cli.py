"""mobilevlm-bench: how fast an engine runs here, next to baselines measured in the same run.

  mobilevlm-bench ENGINE_DIR [--reference CHECKPOINT]
  mobilevlm-bench --synthetic v2-1.7b --precision int4     # makes (once) and measures a random-weight model
  mobilevlm-bench --synthetic v2-1.7b --llamacpp --llamacpp-src DIR   # + llama.cpp, same run
  mobilevlm-bench --synthetic v2-1.7b --backend cuda       # a --target cuda engine vs PyTorch CUDA
  mobilevlm-bench --synthetic v2-1.7b --profile            # one caption by stage and operator
  mobilevlm-bench --kernels                                # the CPU matrix kernels, side by side
  mobilevlm-bench --node [ENGINE_DIR] [--cameras 1 4] ...   # the node under a fixed camera load
  mobilevlm-bench --regress [ENGINE_DIR] [--bags 8]         # mobilevlm-regress serially vs on Ray
  mobilevlm-bench --delivery [ENGINE_DIR] [--sizes 640x480]  # raw frames from another process: what arrives
  mobilevlm-bench --typed [ENGINE_DIR | --synthetic v2-1.7b]  # typed answers: the grammar's cost per token

Prints, for our engine and for the transformers PyTorch fp32 reference: vision ms, prefill tokens/s,
decode tokens/s, time to first token, end-to-end caption latency (N new tokens), peak RSS; and the
memory-bandwidth bound of decode: bytes read per token (decoder weights + KV cache) divided by this
machine's read bandwidth, measured in the same run (it swings from minute to minute on shared hosts).
Each engine runs in its own process so peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json

from ...runtime.manifest import PRECISIONS
from ...runtime.sessions import BACKENDS
from .common import CACHE, synthetic_engine, write_json
from .engine import run_worker, table, worker_ours, worker_reference


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
    from .llamacpp import add_arguments as add_llamacpp_arguments

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
    delivery = p.add_argument_group("--delivery: raw frames from a camera in another process")
    delivery.add_argument("--delivery", action="store_true",
                          help="count what reaches the node at each frame size, rate and publisher QoS")
    delivery.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080"])
    delivery.add_argument("--rates", type=float, nargs="+", default=[10.0, 30.0])
    delivery.add_argument("--seconds", type=float, default=5.0, help="seconds of frames per measurement")
    delivery.add_argument("--profiles", nargs="+", default=["default", "large_frames"],
                          choices=["default", "large_frames", "large_frames_node_only",
                                   "large_frames_camera_only"],
                          help="default: Fast DDS as installed; large_frames: "
                               "config/fastdds_large_frames.xml in the camera's and the node's processes; "
                               "or in one of them")
    delivery.add_argument("--publishers", nargs="+", default=["reliable", "best_effort"],
                          choices=["reliable", "best_effort"], help="the camera's reliability, in turn")
    delivery.add_argument("--node-qos", default="", choices=["", "auto", "best_effort", "reliable"],
                          help="the node's qos_reliability (default: its default, auto)")
    typed = p.add_argument_group("--typed: typed answers (default engine: the demo)")
    typed.add_argument("--typed", action="store_true",
                       help="the grammar's time per token against the decode step, jump-forward, "
                            "yes/no latency")
    typed.add_argument("--answers", type=int, default=20, help="answers per type")
    from .regress import add_arguments as add_regress_arguments

    add_regress_arguments(p)
    a = p.parse_args(argv)
    if a.regress:
        from . import regress

        return regress.main(a)
    if a.delivery:
        from . import delivery

        return delivery.main(a)
    if a.node:
        from . import node

        return node.main(a)
    from ...runtime.errors import EngineError
    from ...runtime.sessions import choose_providers, default_threads

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
        from .kernels import measure
        from .kernels import table as kernels_table

        results = measure(threads=a.threads)
        print(kernels_table(results, 2048, 5632, a.threads))
        write_json(results, a.json)
        return 0
    if a.typed:
        from ...ros.share import share_path
        from . import typed as typed_bench

        if a.synthetic:
            a.engine = synthetic_engine(a)[0]
        a.engine = a.engine or share_path("engines/demo")
        return typed_bench.main(a)
    if bool(a.engine) == bool(a.synthetic):
        p.error("give either ENGINE_DIR or --synthetic NAME")
    from .llamacpp import check_arguments as check_llamacpp_arguments

    check_llamacpp_arguments(p, a, a.reference or a.synthetic)
    checkpoint = a.reference
    engine = a.engine
    if a.synthetic:
        engine, ckpt = synthetic_engine(a)
        checkpoint = checkpoint or ckpt
    if a.profile:
        from .profile import profile_caption
        from .profile import table as profile_table

        result = profile_caption(engine, a.new_tokens, a.threads, a.backend)
        print(profile_table(result))
        write_json(result, a.json)
        return 0

    race = None
    if a.llamacpp:  # ours runs inside the race, alternating with llama.cpp's processes
        from .llamacpp import race_llamacpp

        race = race_llamacpp(a, engine, checkpoint, run_worker)
        ours = race["ours"]
    else:
        ours = run_worker("ours", engine, a)
    ref = None
    if checkpoint and not a.no_reference:
        ref = run_worker("reference", checkpoint, a)
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
    print(table(rows))
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
    write_json(result, a.json)
    return 0

