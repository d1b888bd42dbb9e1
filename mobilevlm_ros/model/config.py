"""MobileVLM configuration: what config.json says, plus the CLIP tower shape it only names.

A MobileVLM config.json is a LLaMA config with `mm_*` keys. The vision tower is named by
`mm_vision_tower` (a hub id or a folder); its shape is that CLIP's own config, which we know
offline for the one tower the released checkpoints use (ViT-L/14 at 336 px).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Optional

from ..runtime.errors import CheckpointError

CLIP_L14_336 = "openai/clip-vit-large-patch14-336"

# CLIPVisionConfig of openai/clip-vit-large-patch14-336 (so offline loading needs no hub).
CLIP_L14_336_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
)

PROJECTORS = ("ldpnet", "ldpnetv2")


@dataclass
class MobileVLMConfig:
    """Everything the reference model and the exporter need, read from a checkpoint folder."""

    llm: dict  # the LLaMA part of config.json, as LlamaConfig kwargs
    vision: dict  # CLIPVisionConfig kwargs
    projector: str  # "ldpnet" (V1) or "ldpnetv2" (V2)
    mm_hidden_size: int
    vision_tower: str  # hub id or folder, as config.json names it
    select_layer: int = -2
    select_feature: str = "patch"
    raw: dict = field(default_factory=dict)  # config.json as read

    @property
    def hidden_size(self) -> int:
        return self.llm["hidden_size"]

    @property
    def version(self) -> str:
        return "v1" if self.projector == "ldpnet" else "v2"

    @property
    def num_patches(self) -> int:
        return (self.vision["image_size"] // self.vision["patch_size"]) ** 2

    @property
    def num_image_tokens(self) -> int:
        # Both projectors halve each side of the patch grid (LDP: stride-2 conv; LDPv2: 2x2 pool).
        side = int(math.isqrt(self.num_patches))
        return ((side + 1) // 2) ** 2

    @classmethod
    def from_dict(cls, raw: dict, vision: Optional[dict] = None) -> "MobileVLMConfig":
        projector = raw.get("mm_projector_type", "")
        if projector not in PROJECTORS:
            raise CheckpointError(
                f"config.json: mm_projector_type {projector!r} is not a MobileVLM projector "
                f"(expected one of {', '.join(PROJECTORS)})"
            )
        aspect = raw.get("image_aspect_ratio", "pad")
        if aspect != "pad":  # the runtime's preprocessing pads to a square, as MobileVLM was trained
            raise CheckpointError(f"config.json: image_aspect_ratio {aspect!r} is not supported; MobileVLM "
                                  "checkpoints use 'pad', the only preprocessing the runtime has")
        tower = raw.get("mm_vision_tower", CLIP_L14_336)
        if vision is None:
            if tower != CLIP_L14_336:
                raise CheckpointError(
                    f"config.json: vision tower {tower!r} is neither {CLIP_L14_336} nor a CLIP folder "
                    "with a config.json; pass --vision-tower PATH"
                )
            vision = dict(CLIP_L14_336_VISION)
        if vision["hidden_size"] != raw.get("mm_hidden_size", vision["hidden_size"]):
            raise CheckpointError(
                f"config.json: mm_hidden_size {raw['mm_hidden_size']} does not match the vision tower "
                f"width {vision['hidden_size']}"
            )
        return cls(
            llm=llama_kwargs(raw),
            vision=vision,
            projector=projector,
            mm_hidden_size=vision["hidden_size"],
            vision_tower=tower,
            select_layer=raw.get("mm_vision_select_layer", -2),
            select_feature=raw.get("mm_vision_select_feature", "patch"),
            raw=raw,
        )


def llama_kwargs(raw: dict) -> dict:
    """The LLaMA part of a MobileVLM config.json (stale keys such as the 3B's `n_head` are ignored)."""
    heads = raw["num_attention_heads"]
    return dict(
        vocab_size=raw.get("vocab_size", 32000),
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        hidden_act=raw.get("hidden_act", "silu"),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=raw.get("rope_theta", 10000.0),
        bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=raw.get("eos_token_id", 2),
        pad_token_id=raw.get("pad_token_id", 0),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
    )


def read_clip_vision_config(folder: str) -> dict:
    """CLIPVisionConfig kwargs from a CLIP folder (a CLIPModel config with `vision_config`, or a
    vision-only one)."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"vision tower config {path}: {e}") from e
    vc = raw.get("vision_config", raw)
    keys = list(CLIP_L14_336_VISION)
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size",
                           "patch_size") if k not in vc]
    if missing:
        raise CheckpointError(f"vision tower config {path}: missing {', '.join(missing)}")
    out = {k: vc[k] for k in keys if k in vc}
    out.setdefault("intermediate_size", 4 * out["hidden_size"])
    out.setdefault("hidden_act", "quick_gelu")
    out.setdefault("layer_norm_eps", 1e-5)
    return out
