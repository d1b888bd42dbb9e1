"""QuaRot's rotation (model/quant/rotation.py): the same model after it, the vision path rotated to match.

The rotated MobileVLM must give the reference's logits (a rotation that dropped the projector's
half, or a wrong R, moves them by O(1)); its weights must really be rotated (a no-op would pass
that check too); and an engine exported with `"rotate"` must carry it through to the graphs.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import scene

from mobilevlm_ros.model.export import export, sentencepiece_tokenizer_writer
from mobilevlm_ros.model.quant.rotation import RotatedOutput, recover_rotation, rotate_mobilevlm
from mobilevlm_ros.runtime import manifest as mf
from mobilevlm_ros.runtime.errors import CheckpointError
from mobilevlm_ros.runtime.image import preprocess
from mobilevlm_ros.runtime.prompt import build_prompt, tokenize_prompt
from mobilevlm_ros.runtime.tokenizer import Tokenizer
from mobilevlm_ros.runtime.vlm import VLM

ROTATED_INT8 = {"block_size": 32, "rotate": "hadamard"}


@pytest.mark.parametrize("name", ["tiny", "tiny-gqa"])
def test_the_rotated_model_is_the_same_function(name, checkpoints, reference, tmp_path):
    original = reference(name)
    tokenizer = Tokenizer(f"{checkpoints(name)}/tokenizer.model")
    rotated = rotate_mobilevlm(copy.deepcopy(original), str(tmp_path),
                               sentencepiece_tokenizer_writer(tokenizer.path))
    assert isinstance(rotated.vision.projector, RotatedOutput)
    before = original.llm.get_input_embeddings().weight
    after = rotated.llm.get_input_embeddings().weight
    assert (after - before).abs().max() > 0.1 * before.abs().max(), "the embeddings were not rotated"
    assert torch.all(rotated.llm.model.norm.weight == 1), "RMSNorm scales are folded into the matrices"
    ids = tokenize_prompt(tokenizer, build_prompt("What is in the picture?"))
    for seed in range(2):
        pixels = torch.from_numpy(preprocess(scene(seed), original.config.vision["image_size"]))
        want, got = original.first_logits(pixels, ids), rotated.first_logits(pixels, ids)
        assert (got - want).abs().max() < 1e-4 * want.abs().max(), "rotation changed the model's output"


def test_the_rotation_is_recovered_and_a_wrong_one_refused():
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(300, 32, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    recovered = recover_rotation(embeddings, embeddings @ rotation.float())
    np.testing.assert_allclose(recovered.numpy(), rotation.numpy(), atol=1e-5)
    with pytest.raises(CheckpointError, match="not the embeddings times one orthogonal matrix"):
        recover_rotation(embeddings, embeddings @ rotation.float() * 1.5)  # scaled: not orthogonal


@pytest.fixture(scope="module")
def rotated_int8(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("engine-tiny-int8-rotated")
    return export(checkpoints("tiny"), str(out), "int8", "cpu", model_id="synthetic/tiny",
                  quant=dict(ROTATED_INT8), log=lambda s: None)


def test_a_rotated_engine_records_it_and_rotates_the_image_embeddings(rotated_int8, engines):
    import onnx

    manifest = mf.load(rotated_int8)
    assert manifest.data["quantization"] == ROTATED_INT8
    vision = onnx.load(manifest.path("vision"))
    last = [n for n in vision.graph.node if n.output[0] == vision.graph.output[0].name][0]
    assert last.op_type in ("MatMul", "MatMulInteger", "Mul", "Cast", "DequantizeLinear"), last.op_type
    # The image embeddings differ from the unrotated engine's by one orthogonal matrix: same norms.
    plain = VLM(engines("tiny", "fp32"), backend="cpu", threads=1)
    ours = VLM(rotated_int8, backend="cpu", threads=1)
    pixels = preprocess(scene(0), plain.image_size)
    a, b = plain.vision(pixels), ours.vision(pixels)
    assert np.abs(a - b).max() > 0.1 * np.abs(a).max(), "the image embeddings were not rotated"
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), np.linalg.norm(a, axis=1), rtol=0.05)


def test_a_rotated_int8_engine_agrees_with_fp32(rotated_int8, engines):
    from test_parity import _teacher_forced_agreement

    rate = float(np.mean([_teacher_forced_agreement(rotated_int8, engines("tiny", "fp32"), scene(s))
                          for s in range(3)]))
    print(f"\ntiny int8 rotated: greedy agreement with fp32 (teacher-forced) = {rate:.2f}")
    assert rate >= 0.75
