"""mobilevlm-bench --llamacpp: the parts that run without llama.cpp (the CLIP folder the mmproj converter
reads, the figures and their formatting, argument checks), and the llama-cpp-python API it drives."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from mobilevlm_ros.tools.bench import cli as bench
from mobilevlm_ros.tools.bench.common import frame
from mobilevlm_ros.tools.bench.llamacpp import (
    RACES,
    contenders,
    cosines,
    format_ratios,
    format_vision_check,
    merge_rounds,
    ratios,
)

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def test_clip_vision_folder_is_our_tower(checkpoints, reference, tmp_path):
    """The folder convert_image_encoder_to_gguf.py reads holds our tower: transformers' CLIPVisionModel
    loaded from it gives our tower's hidden states."""
    from transformers import CLIPVisionModel

    from mobilevlm_ros.model.llamacpp_vlm import write_clip_vision_folder

    write_clip_vision_folder(checkpoints("tiny"), str(tmp_path))
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "clip_vision_model" and cfg["projection_dim"] == 64
    ours = reference("tiny").vision.tower
    clip = CLIPVisionModel.from_pretrained(str(tmp_path)).eval()
    side = cfg["image_size"]
    pixels = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours(pixels, output_hidden_states=True).hidden_states
        got = clip(pixels, output_hidden_states=True).hidden_states
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_ratios_are_ours_ahead_when_above_one():
    ours = dict(vision_ms=1000.0, prefill_tok_s=60.0, decode_tok_s=24.0, e2e_s=5.0, peak_rss_mb=1500.0)
    other = dict(vision_ms=3000.0, prefill_tok_s=30.0, decode_tok_s=12.0, e2e_s=10.0, peak_rss_mb=3000.0)
    r = ratios(ours, other)
    assert r == {"vision": 3.0, "prefill": 2.0, "decode": 2.0, "caption": 2.0, "peak RSS": 2.0}
    assert ratios(other, ours)["decode"] == 0.5
    assert format_ratios("llama.cpp Q4_0", r) == (
        "ours vs llama.cpp Q4_0: vision 3.00x, prefill 2.00x, decode 2.00x, caption 2.00x, peak RSS 2.00x"
        "  (>1: ours faster / smaller)")
    assert ratios(ours, dict(decode_tok_s=12.0)) == {"decode": 2.0}  # only the figures both have


def test_rounds_merge_to_medians():
    rounds = [dict(decode_tok_s=10.0, precision="Q4_0", new_tokens=32),
              dict(decode_tok_s=14.0, precision="Q4_0", new_tokens=32),
              dict(decode_tok_s=11.0, precision="Q4_0", new_tokens=32)]
    assert merge_rounds(rounds) == dict(decode_tok_s=11.0, precision="Q4_0", new_tokens=32)


def test_cosines():
    a = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    assert cosines(a, a)["flat"] == pytest.approx(1.0)
    assert cosines(a, -a)["per_token"] == pytest.approx(-1.0)
    b = a.copy()
    b[0] = -b[0]  # one of three tokens reversed
    assert cosines(a, b)["per_token"] == pytest.approx(1 / 3)
    assert np.isnan(cosines(a, a[:2])["flat"])  # different token counts: not comparable


def test_vision_check_lines_say_whether_the_same_thing_was_computed():
    pair = lambda a, b, c: {"a": a, "b": b, "flat": c, "per_token": c}  # noqa: E731
    check = {"image_tokens": {"llamacpp": 144, "ours": 144, "reference": 144},
             "pairs": [pair("llamacpp", "reference", 0.88), pair("ours", "reference", 0.998)]}
    lines = format_vision_check(check)
    assert "0.8800 flattened" in lines[1] and "0.9980 flattened" in lines[2]
    assert "does NOT compute" in lines[-1]
    check["pairs"][0] = pair("llamacpp", "reference", 0.999)
    assert "llama.cpp computes what PyTorch does" in format_vision_check(check)[-1]


def test_llamacpp_races_at_the_engines_bits(engines):
    from mobilevlm_ros.model.llamacpp_vlm import QUANTS

    assert contenders(engines("tiny", "int8")) == ("Q8_0",)
    assert contenders(engines("tiny", "int4")) == ("Q4_0", "Q4_K_M")
    assert contenders(engines("tiny", "fp32")) == ("Q4_0", "Q4_K_M")
    made = {q for q, _ in QUANTS}  # what prepare converts
    assert all(q in made for race in RACES.values() for q in race)


def test_a_rotated_engines_image_embeddings_are_compared_unrotated(engines, reference):
    """The int8 default rotates the language model and the projector's output with it
    (model/quant/rotation.py): the vision check undoes that rotation, found from the engine's fp16
    embedding table, before it compares our image embeddings with PyTorch's."""
    from mobilevlm_ros.runtime.image import preprocess
    from mobilevlm_ros.runtime.vlm import VLM
    from mobilevlm_ros.tools.bench.llamacpp import engine_rotation

    engine, model = engines("tiny", "int8"), reference("tiny")
    vlm = VLM(engine, threads=1)
    assert vlm.manifest.data["quantization"].get("rotate")
    pixels = preprocess(frame(0), vlm.image_size)
    ours = np.asarray(vlm.vision(pixels)).reshape(-1, model.config.hidden_size)
    with torch.no_grad():
        ref = model.vision(torch.from_numpy(pixels))[0].numpy()
    rotation = engine_rotation(engine, model)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(len(rotation)), atol=1e-5)
    assert cosines(ours, ref)["flat"] < 0.5  # as the engine computes them: rotated
    assert cosines(ours @ rotation.T, ref)["flat"] > 0.99


def test_square_image_gives_our_pixels():
    from mobilevlm_ros.runtime.image import preprocess, square_image

    rgb = frame(3)
    square = square_image(rgb, 336)
    assert square.shape == (336, 336, 3) and square.dtype == np.uint8
    np.testing.assert_array_equal(preprocess(square, 336), preprocess(rgb, 336))


def test_llamacpp_needs_its_source_folder(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench.main(["--synthetic", "tiny", "--llamacpp", "--work", str(tmp_path)])
    assert e.value.code == 2
    assert "--llamacpp needs --llamacpp-src DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--synthetic", "tiny", "--llamacpp", "--llamacpp-src", str(tmp_path),
                    "--work", str(tmp_path)])
    assert "no convert_hf_to_gguf.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path), "--llamacpp", "--llamacpp-src", str(tmp_path)])
    assert "needs the checkpoint" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # refused before anything was made


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python not installed (an sdist build, see README)")
def test_llama_cpp_python_has_the_api_the_worker_drives():
    import llama_cpp
    from llama_cpp import mtmd_cpp

    for name in ("llama_model_load_from_file", "llama_init_from_model", "llama_batch_init", "llama_decode",
                 "llama_get_logits_ith", "llama_get_memory", "llama_memory_seq_rm", "llama_token_to_piece",
                 "llama_model_quantize", "LLAMA_FTYPE_MOSTLY_Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_K_M"):
        assert hasattr(llama_cpp, name), name
    for name in ("mtmd_init_from_file", "mtmd_bitmap_init", "mtmd_tokenize", "mtmd_encode_chunk",
                 "mtmd_get_output_embd", "mtmd_input_chunk_get_n_tokens", "mtmd_default_marker"):
        assert hasattr(mtmd_cpp, name), name
