"""Exported engines reproduce the PyTorch reference (transformers CLIP + LLaMA + our projectors).

fp32 on CPU: vision embeddings and first-step logits within 1e-4 (absolute, on values of order
0.1-3), and identical greedy token sequences over 24 new tokens. int8/int4: agreement of the
greedy choice with fp32, teacher-forced along the fp32 sequence so one flip does not cascade,
reported and bounded below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import scene

from mobilevlm_ros.runtime import manifest as mf
from mobilevlm_ros.runtime.engines import DecoderEngine
from mobilevlm_ros.runtime.generation import GenerationParams
from mobilevlm_ros.runtime.image import preprocess
from mobilevlm_ros.runtime.prompt import build_prompt, tokenize_prompt
from mobilevlm_ros.runtime.vlm import VLM

NEW_TOKENS = 24
TOL = 1e-4


# tiny-gqa: grouped-query attention (2 heads, 1 KV head), head_dim 64, tied embeddings.
@pytest.mark.parametrize("name", ["tiny", "tiny-v1", "tiny-gqa"])
def test_fp32_engine_matches_reference(name, engines, reference):
    vlm = VLM(engines(name, "fp32"), backend="cpu", threads=1)
    model = reference(name)
    question = "What is in the picture?"
    ids = tokenize_prompt(vlm.tokenizer, build_prompt(question))
    for seed in range(2):
        rgb = scene(seed)
        pixels = preprocess(rgb, vlm.image_size)

        ours = vlm.vision(pixels)
        ref = model.vision(torch.from_numpy(pixels))[0].numpy()
        assert ours.shape == ref.shape == (vlm.manifest.model["image_tokens"],
                                           vlm.manifest.model["hidden_size"])
        assert np.abs(ours - ref).max() < TOL, "vision embeddings differ from the reference"

        params = GenerationParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
        generator = vlm.generator(rgb, question, params)
        ref_logits = model.first_logits(torch.from_numpy(pixels), ids).numpy()
        assert np.abs(generator.logits - ref_logits).max() < TOL, "first-step logits differ"

        answer = vlm.describe(rgb, question, params)
        ref_tokens = model.generate(torch.from_numpy(pixels), ids, max_new_tokens=NEW_TOKENS, ignore_eos=True)
        assert len(answer.token_ids) == NEW_TOKENS
        assert answer.token_ids == ref_tokens


def test_second_question_on_same_frame_reuses_prefix_and_matches_fresh_run(engines):
    """The cached [prompt head | image] prefix gives exactly what a fresh engine gives."""
    engine = engines("tiny", "fp32")
    rgb = scene(3)
    params = GenerationParams(max_new_tokens=12, ignore_eos=True)
    warm = VLM(engine, backend="cpu", threads=1)
    warm.describe(rgb, "First question?", params)
    second = warm.describe(rgb, "How many objects are there?", params)
    assert second.timings.vision_s == 0.0  # vision did not run again
    fresh = VLM(engine, backend="cpu", threads=1).describe(rgb, "How many objects are there?", params)
    assert second.token_ids == fresh.token_ids


def test_tied_gqa_engine_has_the_shape_of_its_config(engines):
    m = mf.load(engines("tiny-gqa", "fp32")).model
    assert (m["num_heads"], m["num_kv_heads"], m["head_dim"]) == (2, 1, 64)


def _teacher_forced_agreement(engine_q: str, engine_fp32: str, rgb: np.ndarray) -> float:
    """Share of positions where the quantized engine's greedy choice equals fp32's, along fp32's sequence."""
    params = GenerationParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    tokens = VLM(engine_fp32, backend="cpu", threads=1).describe(rgb, "Describe the image.", params).token_ids
    return VLM(engine_q, backend="cpu", threads=1).agreement(rgb, "Describe the image.", tokens)


@pytest.mark.parametrize("name", ["tiny", "tiny-gqa"])
@pytest.mark.parametrize("precision,floor", [("int8", 0.75), ("int4", 0.5)])
def test_quantized_engines_agree_with_fp32(name, precision, floor, engines):
    import onnx

    graph = onnx.load(mf.load(engines(name, precision)).path("decoder"), load_external_data=False).graph
    bits = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    # int4's default keeps lm_head and the most sensitive projections in int8.
    assert bits == ({4, 8} if precision == "int4" else {8}), (
        "the decoder's matrices are not quantized as configured")
    rates = [_teacher_forced_agreement(engines(name, precision), engines(name, "fp32"), scene(s))
             for s in range(3)]
    rate = float(np.mean(rates))
    print(f"\n{name} {precision}: greedy agreement with fp32 "
          f"(teacher-forced, {NEW_TOKENS} tokens x 3 images) = {rate:.2f}")
    assert rate >= floor


def test_decoder_cache_is_written_in_place(engines):
    """No per-token copy: the KV buffers bound at load are the ones the graph writes."""
    m = mf.load(engines("tiny", "fp32"))
    dec = DecoderEngine(m, ["CPUExecutionProvider"], threads=1, max_length=64)
    before = [a.ctypes.data for a in dec._kv_host]
    dec.run(np.zeros((5, dec.hidden), np.float32))
    dec.run(np.ones((1, dec.hidden), np.float32))
    assert [a.ctypes.data for a in dec._kv_host] == before
    assert np.any(dec._kv_host[0][0, :, 5] != 0)  # position 5 was written into our buffer
    assert np.all(dec._kv_host[0][0, :, 6:] == 0)  # nothing beyond the filled length
