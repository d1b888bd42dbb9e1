"""mobilevlm-bench --kernels: onnxruntime's CPU matrix kernels on one decoder matrix, at prefill's
and decode's row counts. It tells which kernel a faster prefill would come from on this CPU.

One (K, N) weight (default: MobileLLaMA-1.4B's MLP, 2048 x 5632), x @ W with M rows, in four forms:
fp32 MatMul (sgemm); MatMulNBits int4 and int8 (block 32, asymmetric, accuracy level 4 = int8
arithmetic on activations quantized per block: what our decoder uses); and onnxruntime's dynamic
int8 QGEMM (per-channel int8 weights, activations quantized per tensor: what our vision graph uses).
The error column is max |y - x @ W| / max |x @ W| on Gaussian inputs. At M = 1 the weight (11.5 MB
in int8) may sit in the L3 cache: those rows compare kernels, not decode's memory-bound speed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np

FORMS = ("fp32", "MatMulNBits int4", "MatMulNBits int8", "QGEMM int8")


def _graphs(folder: str, w: np.ndarray) -> dict:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    k, n = w.shape

    def fp32_model():
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul", [x], [y],
                                  [numpy_helper.from_array(w, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    paths = {name: os.path.join(folder, f"{i}.onnx") for i, name in enumerate(FORMS)}
    onnx.save(fp32_model(), paths["fp32"])
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    for bits in (4, 8):
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, accuracy_level=4, bits=bits)
        quantizer = MatMulNBitsQuantizer(fp32_model(), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(paths[f"MatMulNBits int{bits}"])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    try:
        quantize_dynamic(paths["fp32"], paths["QGEMM int8"], per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return paths


def measure(k: int = 2048, n: int = 5632, rows=(154, 1), threads: int = 2, seconds: float = 1.0) -> list:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    out = []
    with tempfile.TemporaryDirectory(prefix="mobilevlm_kernels_") as tmp:
        for form, path in _graphs(tmp, w).items():
            session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            for m in rows:
                x = rng.standard_normal((m, k)).astype(np.float32)
                for _ in range(3):
                    y = session.run(None, {"x": x})[0]
                reps, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    session.run(None, {"x": x})
                    reps += 1
                dt = (time.perf_counter() - t0) / reps
                exact = x @ w
                out.append({"form": form, "rows": m, "ms": dt * 1e3, "gops": 2 * m * k * n / dt / 1e9,
                            "error": float(np.abs(y - exact).max() / np.abs(exact).max())})
    return out


def table(results: list, k: int, n: int, threads: int) -> str:
    lines = [f"x (M x {k}) @ W ({k} x {n}), {threads} threads",
             f"{'kernel':20}{'M':>6}{'ms':>9}{'GOPS':>8}{'error':>9}"]
    lines += [f"{r['form']:20}{r['rows']:6}{r['ms']:9.2f}{r['gops']:8.0f}{r['error']:9.4f}" for r in results]
    return "\n".join(lines)
