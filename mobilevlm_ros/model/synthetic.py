"""Random-weight checkpoints in the released layout, so tests and benchmarks run the real
architecture without a download: same config keys, same tensor names and shapes, and a
sentencepiece tokenizer of the config's vocabulary size."""

from __future__ import annotations

import json
import os
from typing import Dict

import torch

from ..runtime.image import CLIP_MEAN, CLIP_STD
from .config import CLIP_L14_336, CLIP_L14_336_VISION, MobileVLMConfig
from .loader import TOWER_PREFIX
from .reference import MobileVLM
from .tokenizer_train import default_corpus, train_tokenizer

_MOBILELLAMA_1_4B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                         num_attention_heads=16)
_MOBILELLAMA_2_7B = dict(hidden_size=2560, intermediate_size=6912, num_hidden_layers=32,
                         num_attention_heads=32)
_TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=512, max_position_embeddings=512)
# Any Llama the exporter must take: grouped-query attention, head_dim 64, tied embeddings (as
# SmolLM2 and other small Llamas have them).
_TINY_GQA_LLM = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, tie_word_embeddings=True, vocab_size=512,
                     max_position_embeddings=512)
_TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    image_size=112, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                    projection_dim=64)

# name -> (projector, llm shape, vision shape or None for ViT-L/14-336)
PRESETS: Dict[str, tuple] = {
    "v1-1.7b": ("ldpnet", _MOBILELLAMA_1_4B, None),
    "v1-3b": ("ldpnet", _MOBILELLAMA_2_7B, None),
    "v2-1.7b": ("ldpnetv2", _MOBILELLAMA_1_4B, None),
    "v2-3b": ("ldpnetv2", _MOBILELLAMA_2_7B, None),
    "tiny": ("ldpnetv2", _TINY_LLM, _TINY_VISION),
    "tiny-v1": ("ldpnet", _TINY_LLM, _TINY_VISION),
    "tiny-gqa": ("ldpnetv2", _TINY_GQA_LLM, _TINY_VISION),
}


def official_config(projector: str, llm: dict, vision_tower: str, mm_hidden_size: int) -> dict:
    """A config.json with the keys the released MobileVLM checkpoints carry."""
    heads = llm["num_attention_heads"]
    return {
        "_name_or_path": "mobilevlm_ros/synthetic",
        "architectures": ["MobileLlamaForCausalLM"],
        "model_type": "mobilevlm",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": llm["hidden_size"],
        "intermediate_size": llm["intermediate_size"],
        "num_hidden_layers": llm["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": llm.get("num_key_value_heads", heads),
        "initializer_range": 0.02,
        "max_position_embeddings": llm.get("max_position_embeddings", 2048),
        "max_sequence_length": llm.get("max_position_embeddings", 2048),
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": llm.get("tie_word_embeddings", False),
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": llm.get("vocab_size", 32000),
        "image_aspect_ratio": "pad",
        "mm_hidden_size": mm_hidden_size,
        "mm_projector_type": projector,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_tower,
        "vision_tower_type": "clip",
        "use_mm_proj": True,
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
    }


def clip_config(vision: dict) -> dict:
    # The shape of a CLIPModel folder's config.json (only the vision half matters to us).
    return {"architectures": ["CLIPModel"], "model_type": "clip",
            "projection_dim": vision.get("projection_dim", 768),
            "vision_config": {**vision, "model_type": "clip_vision_model"}}


def preprocessor_config(image_size: int) -> dict:
    return {"crop_size": {"height": image_size, "width": image_size}, "do_center_crop": True,
            "do_normalize": True, "do_resize": True, "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD), "resample": 3, "size": {"shortest_edge": image_size},
            "image_processor_type": "CLIPImageProcessor"}


def _save(tensors: Dict[str, torch.Tensor], folder: str, stem: str, weights_format: str) -> None:
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if weights_format == "bin":
        torch.save(tensors, os.path.join(folder, f"{stem}.bin"))
    else:
        from safetensors.torch import save_file

        save_file(tensors, os.path.join(folder, f"{stem}.safetensors"), metadata={"format": "pt"})


def write_synthetic(name: str, out: str, layout: str = "", weights_format: str = "safetensors",
                    seed: int = 0, dtype: torch.dtype = None, init_std: float = 0.0) -> str:
    """Write a random-weight checkpoint folder for preset `name`; returns `out`.

    layout: "inside" (tower weights in the checkpoint, as V2 releases) or "separate" (tower in a
    CLIP folder `clip/` beside the weights, as V1 releases); default by version.
    init_std: the normal std of the LLM's weights (default: the config's 0.02; tests use larger
    values so greedy choices are not near-ties).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic model {name!r}; known: {', '.join(PRESETS)}")
    projector, llm, vision = PRESETS[name]
    tiny = vision is not None
    layout = layout or ("separate" if projector == "ldpnet" else "inside")
    dtype = dtype or (torch.float32 if tiny else torch.float16)
    os.makedirs(out, exist_ok=True)

    vision = dict(vision or CLIP_L14_336_VISION)
    # Full-size synthetic towers keep the released id when the tower is inside; a separate tower,
    # or any non-L/14 tower, is a local CLIP folder named by a relative path.
    tower = CLIP_L14_336 if (not tiny and layout == "inside") else "clip"
    raw = official_config(projector, llm, tower, vision["hidden_size"])
    torch.manual_seed(seed)
    model = MobileVLM(MobileVLMConfig.from_dict(raw, vision))
    if init_std:
        with torch.no_grad():
            for n, p in model.llm.named_parameters():
                if p.dim() == 2:
                    p.normal_(0.0, init_std)
    inside, tower_tensors = {}, {}
    sd = model.state_dict()
    tied = raw["tie_word_embeddings"]
    for ckpt_name, ours in model.checkpoint_names().items():
        if tied and ckpt_name == "lm_head.weight":
            continue  # tied checkpoints store the embedding once, as transformers saves them
        t = sd[ours].to(dtype)
        if ckpt_name.startswith(TOWER_PREFIX) and layout == "separate":
            tower_tensors[ckpt_name[len(TOWER_PREFIX):]] = t
        else:
            inside[ckpt_name] = t
    del model, sd

    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    _save(inside, out, "model" if weights_format != "bin" else "pytorch_model", weights_format)
    if tower == "clip":
        clip = os.path.join(out, "clip")
        os.makedirs(clip, exist_ok=True)
        with open(os.path.join(clip, "config.json"), "w") as f:
            json.dump(clip_config(vision), f, indent=2)
        with open(os.path.join(clip, "preprocessor_config.json"), "w") as f:
            json.dump(preprocessor_config(vision["image_size"]), f, indent=2)
        if tower_tensors:
            _save(tower_tensors, clip, "model" if weights_format != "bin" else "pytorch_model",
                  weights_format)

    train_tokenizer(os.path.join(out, "tokenizer.model"), default_corpus(), vocab_size=raw["vocab_size"],
                    seed=seed)
    write_tokenizer_config(out, raw["max_position_embeddings"])
    return out


def write_tokenizer_config(folder: str, max_length: int) -> None:
    """tokenizer_config.json and special_tokens_map.json as LLaMA checkpoints carry them."""
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "pad_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
                   "legacy": True, "model_max_length": max_length}, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"},
                  f, indent=2)
