"""The GPU paths: `--target cuda` engines, CUDA and TensorRT execution providers.

What can be checked without a GPU is checked here on CPU: a cuda-target engine (fp16 vision, int4
decoder with fp16 inputs and KV cache) computes what the PyTorch reference computes (onnxruntime's
CPU kernels run the same graph), and the provider choices for CUDA/TensorRT. The tests that need
the device skip, with that reason, wherever onnxruntime offers no CUDA.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import batched_agreement, scene

from mobilevlm_ros.model.export import BUILDER_INT4
from mobilevlm_ros.runtime import manifest as mf
from mobilevlm_ros.runtime import sessions
from mobilevlm_ros.runtime.generation import GenerationParams
from mobilevlm_ros.runtime.image import preprocess
from mobilevlm_ros.runtime.vlm import VLM

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_TENSORRT = "TensorrtExecutionProvider" in ort.get_available_providers()
NO_CUDA = "onnxruntime offers no CUDAExecutionProvider here (CPU-only wheel or no GPU)"
NO_TENSORRT = "onnxruntime offers no TensorrtExecutionProvider here (needs onnxruntime-gpu with TensorRT)"
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def cuda_engine(tmp_path_factory, checkpoints):
    from mobilevlm_ros.model.export import export

    out = tmp_path_factory.mktemp("engine-tiny-int4-cuda")
    return export(checkpoints("tiny"), str(out), "int4", "cuda", model_id="synthetic/tiny", block_size=32,
                  log=lambda s: None)


def _elem_types(values) -> set:
    return {onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in values}


def test_cuda_target_engine_is_fp16_vision_and_int4_decoder(cuda_engine):
    m = mf.load(cuda_engine)
    assert (m.target, m.precision, m.data["vision_precision"]) == ("cuda", "int4", "fp16")
    assert m.data["quantization"] == BUILDER_INT4  # the CPU default's layout, as the builder builds it

    vision = onnx.load(m.path("vision"))
    weights = collections.Counter(onnx.TensorProto.DataType.Name(t.data_type)
                                  for t in vision.graph.initializer)
    assert set(weights) == {"FLOAT16"}, f"vision weights {dict(weights)}"
    # The runtime feeds float32 pixels and reads float32 embeddings: the casts live in the graph.
    assert _elem_types(vision.graph.input) == _elem_types(vision.graph.output) == {"FLOAT"}
    assert not {n.op_type for n in vision.graph.node} & {"MatMulInteger", "DynamicQuantizeLinear"}

    decoder = onnx.load(m.path("decoder"), load_external_data=False).graph
    ops = collections.Counter(n.op_type for n in decoder.node)
    assert ops["GroupQueryAttention"] == m.model["num_layers"] and ops["MatMulNBits"] > 0
    assert "MatMul" not in ops, "a projection was left unquantized"
    bits = {a.i for n in decoder.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert 4 in bits
    inputs = {v.name: v for v in decoder.input}
    io = m.data["decoder_io"]
    assert _elem_types([inputs[io["inputs_embeds"]], inputs[io["past_key"] % 0]]) == {"FLOAT16"}


def test_cuda_target_engine_matches_the_reference(cuda_engine, engines, reference):
    """Run by onnxruntime's CPU kernels: the graph the GPU runs, checked against PyTorch fp32."""
    vlm = VLM(cuda_engine, backend="cpu", threads=1)
    model = reference("tiny")
    fp32 = VLM(engines("tiny", "fp32"), backend="cpu", threads=1)
    rates = []
    for seed in range(3):
        rgb = scene(seed)
        pixels = preprocess(rgb, vlm.image_size)
        ours = vlm.vision(pixels)
        ref = model.vision(torch.from_numpy(pixels))[0].numpy()
        cosine = float((ours * ref).sum() / np.linalg.norm(ours) / np.linalg.norm(ref))
        assert cosine > 0.999, f"fp16 vision cosine {cosine:.5f} against the reference"
        assert np.abs(ours - ref).max() < 0.02 * np.abs(ref).max()

        params = GenerationParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
        tokens = fp32.describe(rgb, "Describe the image.", params).token_ids
        rates.append(vlm.agreement(rgb, "Describe the image.", tokens))
    rate = float(np.mean(rates))
    print(f"\ncuda-target int4 on CPU kernels: greedy agreement with fp32 {rate:.2f}")
    assert rate >= 0.5  # the CPU int4 engine's floor (test_parity)


def test_tensorrt_runs_the_vision_graph_and_cuda_the_decoder(monkeypatch, tmp_path):
    monkeypatch.setattr(sessions.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider"])
    chosen = sessions.choose_providers("cuda", "tensorrt", cache_dir=str(tmp_path))
    name, opts = chosen[0]
    assert name == "TensorrtExecutionProvider" and opts["trt_fp16_enable"]
    assert opts["trt_engine_cache_enable"] and opts["trt_timing_cache_enable"]
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path)
    assert sessions.without_tensorrt(chosen) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert sessions.without_tensorrt(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_tensorrt_cache_goes_beside_the_engine_or_to_the_user_cache(monkeypatch, tmp_path):
    assert sessions.trt_cache_dir(str(tmp_path), "ab" * 32) == str(tmp_path / "trt_cache")
    # An installed engine (read-only share folder): the user's cache, one folder per graph.
    monkeypatch.setattr(sessions.os, "access", lambda path, mode: False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sessions.trt_cache_dir("/opt/ros/jazzy/share/x", "ab" * 32) == str(
        tmp_path / "home" / ".cache" / "mobilevlm_ros" / "trt_cache" / ("ab" * 8))


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_keeps_the_kv_cache_on_the_device(cuda_engine, engines):
    vlm = VLM(cuda_engine, backend="cuda")
    assert vlm.backend == "cuda"
    assert sessions.provider_names(vlm.decoder.session)[0] == "cuda"
    assert all(v.device_name().lower() == "cuda" for v in vlm.decoder.kv)
    before = [v.data_ptr() for v in vlm.decoder.kv]
    rgb = scene(0)
    params = GenerationParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    answer = vlm.describe(rgb, "Describe the image.", params)
    assert len(answer.token_ids) == NEW_TOKENS
    # The graph wrote the cache in place: the buffers bound at load are still the ones in use.
    assert [v.data_ptr() for v in vlm.decoder.kv] == before
    tokens = VLM(engines("tiny", "fp32"), backend="cpu", threads=1).describe(
        rgb, "Describe the image.", params).token_ids
    assert vlm.agreement(rgb, "Describe the image.", tokens) >= 0.5


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_batched_decode_uses_the_device_cache_bound_at_load(cuda_engine):
    """The batched path on CUDA: rows of the one device buffer per layer, no per-token copies, and
    each sequence answering as it does alone."""
    vlm = VLM(cuda_engine, backend="cuda", max_batch=3)
    before = [v.data_ptr() for v in vlm.decoder.kv]
    prompts = [(scene(i), "Describe the image.") for i in range(3)]
    # fp16 kernels at M = 1 and M = 3 differ by rounding: teacher-forced, near-ties may flip.
    assert batched_agreement(VLM(cuda_engine, backend="cuda"), vlm, prompts, NEW_TOKENS) >= 0.9
    assert [v.data_ptr() for v in vlm.decoder.kv] == before


@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
def test_tensorrt_builds_its_engine_once_into_the_cache(cuda_engine):
    import os

    vlm = VLM(cuda_engine, backend="tensorrt")
    assert vlm.backend == "tensorrt+cuda"
    vlm.describe(scene(1), None, GenerationParams(max_new_tokens=4, ignore_eos=True))
    cached = os.listdir(os.path.join(cuda_engine, "trt_cache"))
    assert any(f.endswith(".engine") for f in cached) and any("timing" in f for f in cached), cached
