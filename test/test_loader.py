"""Checkpoint loading: both layouts, both weight formats, and errors that name the tensors."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mobilevlm_ros.model.config import MobileVLMConfig
from mobilevlm_ros.model.loader import load_checkpoint
from mobilevlm_ros.model.synthetic import official_config
from mobilevlm_ros.runtime.errors import CheckpointError

TOWER = "model.vision_tower.vision_tower.vision_model."


@pytest.mark.parametrize("name,layout,fmt", [
    ("tiny", "inside", "safetensors"),
    ("tiny", "separate", "safetensors"),
    ("tiny-v1", "separate", "bin"),
    ("tiny-v1", "inside", "bin"),
])
def test_layouts_load_every_tensor(name, layout, fmt, checkpoints):
    folder = checkpoints(name, layout, fmt)
    if fmt == "safetensors":
        saved = load_file(os.path.join(folder, "model.safetensors"))
    else:
        saved = torch.load(os.path.join(folder, "pytorch_model.bin"), weights_only=True)
    assert any(k.startswith(TOWER) for k in saved) == (layout == "inside")
    assert "model.mm_projector." + ("peg.peg.0.weight" if name == "tiny"
                                    else "model.mb_block.1.block.1.fc1.weight") in saved
    model = load_checkpoint(folder)  # raises on any missing or unexpected tensor
    # The values landed where they belong, not just the names.
    assert torch.equal(model.llm.model.layers[1].mlp.down_proj.weight,
                       saved["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(model.llm.lm_head.weight, saved["lm_head.weight"])
    if layout == "separate":
        tower = load_file(os.path.join(folder, "clip", "model.safetensors")) if fmt == "safetensors" else \
            torch.load(os.path.join(folder, "clip", "pytorch_model.bin"), weights_only=True)
        key = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    else:
        tower, key = saved, TOWER + "encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.vision.tower.encoder.layers[0].self_attn.q_proj.weight, tower[key])


def test_renamed_tensor_is_reported_by_name(tmp_path, checkpoints):
    folder = str(tmp_path / "ckpt")
    shutil.copytree(checkpoints("tiny"), folder)
    path = os.path.join(folder, "model.safetensors")
    t = load_file(path)
    t["model.layers.0.mlp.gate_proj.weights"] = t.pop("model.layers.0.mlp.gate_proj.weight")
    save_file(t, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(folder)
    msg = str(e.value)
    assert "missing tensors: model.layers.0.mlp.gate_proj.weight" in msg
    assert "unexpected tensors: model.layers.0.mlp.gate_proj.weights" in msg


def test_wrong_shape_is_reported(tmp_path, checkpoints):
    folder = str(tmp_path / "ckpt")
    shutil.copytree(checkpoints("tiny"), folder)
    path = os.path.join(folder, "model.safetensors")
    t = load_file(path)
    t["model.mm_projector.peg.peg.0.bias"] = torch.zeros(7)
    save_file(t, path)
    with pytest.raises(CheckpointError, match=r"model\.mm_projector\.peg\.peg\.0\.bias: shape \(7,\)"):
        load_checkpoint(folder)


def test_separate_layout_without_tower_weights_says_what_to_do(tmp_path, checkpoints):
    folder = str(tmp_path / "ckpt")
    shutil.copytree(checkpoints("tiny", "separate"), folder)
    os.remove(os.path.join(folder, "clip", "model.safetensors"))
    with pytest.raises(CheckpointError, match="no \\*.safetensors or \\*.bin"):
        load_checkpoint(folder)


def test_vision_tower_override_points_at_a_clip_folder(tmp_path, checkpoints):
    folder = str(tmp_path / "ckpt")
    shutil.copytree(checkpoints("tiny", "separate"), folder)
    clip = str(tmp_path / "elsewhere")
    shutil.move(os.path.join(folder, "clip"), clip)
    with pytest.raises(CheckpointError, match="vision tower"):
        load_checkpoint(folder)
    load_checkpoint(folder, vision_tower=clip)


def test_released_configs_have_the_published_shapes():
    """Config logic on full-size configs (no weights): 144 image tokens, 3B's stale n_head ignored."""
    v2 = MobileVLMConfig.from_dict(official_config("ldpnetv2", dict(hidden_size=2048, intermediate_size=5632,
                                   num_hidden_layers=24, num_attention_heads=16),
                                   "openai/clip-vit-large-patch14-336", 1024))
    assert (v2.num_patches, v2.num_image_tokens, v2.version) == (576, 144, "v2")
    raw = official_config("ldpnet", dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=32,
                          num_attention_heads=32), "openai/clip-vit-large-patch14-336", 1024)
    raw["n_head"] = 16
    v1 = MobileVLMConfig.from_dict(raw)
    assert (v1.llm["num_attention_heads"], v1.llm["num_key_value_heads"], v1.version) == (32, 32, "v1")
    assert v1.vision["num_hidden_layers"] == 24 and v1.vision["image_size"] == 336


def test_unknown_projector_and_missing_folder_are_clear(tmp_path):
    raw = official_config("mlp2x_gelu", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4), "openai/clip-vit-large-patch14-336", 1024)
    with pytest.raises(CheckpointError, match="mm_projector_type 'mlp2x_gelu'"):
        MobileVLMConfig.from_dict(raw)
    raw.update(mm_projector_type="ldpnetv2", image_aspect_ratio="anyres")
    with pytest.raises(CheckpointError, match="image_aspect_ratio 'anyres' is not supported"):
        MobileVLMConfig.from_dict(raw)
    with pytest.raises(CheckpointError, match="no such folder"):
        load_checkpoint(str(tmp_path / "nope"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(str(bad))


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    """A hub id goes through huggingface_hub; offline (as here) that is one clear CheckpointError."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError,
                       match="mtgv/MobileVLM_V2-1.7B: not a local folder and the hub could not provide it"):
        load_checkpoint("mtgv/MobileVLM_V2-1.7B")
