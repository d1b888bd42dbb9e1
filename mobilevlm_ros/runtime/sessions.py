"""onnxruntime sessions: execution providers from the manifest and what is installed, threads set
deliberately (onnxruntime-genai was seen running one thread by default on these VMs)."""

from __future__ import annotations

import os
from typing import List, Optional

import onnxruntime as ort

from .errors import EngineError

BACKENDS = ("auto", "cpu", "cuda", "tensorrt")


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def choose_providers(target: str, backend: str = "auto", cache_dir: Optional[str] = None) -> List:
    """Providers in order of preference. `backend` forces one; "auto" follows the engine's target.
    `cache_dir`: where TensorRT keeps its built engines and kernel timings (see trt_cache_dir)."""
    if backend not in BACKENDS:
        raise EngineError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    available = ort.get_available_providers()
    wanted = {"auto": ["tensorrt", "cuda"] if target == "cuda" else [], "cpu": [],
              "cuda": ["cuda"], "tensorrt": ["tensorrt", "cuda"]}[backend]
    providers: List = []
    if "tensorrt" in wanted and "TensorrtExecutionProvider" in available:
        opts = {"trt_fp16_enable": True}
        if cache_dir:  # building TensorRT engines takes minutes: keep them and the kernel timings
            opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=cache_dir,
                        trt_timing_cache_enable=True, trt_timing_cache_path=cache_dir)
        providers.append(("TensorrtExecutionProvider", opts))
    if "cuda" in wanted and "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    if backend in ("cuda", "tensorrt") and not providers:
        raise EngineError(f"backend {backend!r} requested but onnxruntime offers only {', '.join(available)}")
    providers.append("CPUExecutionProvider")
    return providers


def without_tensorrt(providers: List) -> List:
    """The decoder's providers. TensorRT has no GroupQueryAttention or MatMulNBits kernels: the
    decoder would be cut into small TensorRT islands with CUDA kernels and copies between them,
    each island rebuilt as the sequence length grows. onnxruntime's CUDA kernels run it whole."""
    return [p for p in providers if (p if isinstance(p, str) else p[0]) != "TensorrtExecutionProvider"]


def trt_cache_dir(engine_dir: str, graph_sha256: str) -> str:
    """Beside the engine when its folder is writable; else (an installed, read-only share folder)
    in the user's cache, under the graph's hash so two engines never share built plans."""
    if os.access(engine_dir, os.W_OK):
        return os.path.join(engine_dir, "trt_cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "mobilevlm_ros", "trt_cache", graph_sha256[:16])


def make_session(path: str, providers: List, threads: int = 0,
                 profile_prefix: str = "") -> ort.InferenceSession:
    """profile_prefix: write onnxruntime's per-node timings (JSON) to a file starting so, for
    mobilevlm-bench --profile; session.end_profiling() names the file."""
    so = ort.SessionOptions()
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(path, sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise EngineError(f"engine file {os.path.basename(path)}: onnxruntime cannot load it "
                          f"({str(e).splitlines()[0][:200]}); re-run mobilevlm-export") from None


def provider_names(session: ort.InferenceSession) -> List[str]:
    return [p.replace("ExecutionProvider", "").lower() for p in session.get_providers()]
