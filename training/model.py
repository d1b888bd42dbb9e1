"""The demo model's size, and the training-only parts around it.

The model itself is the released MobileVLM (mobilevlm_ros.model.reference.MobileVLM); here are its
demo presets, the dense heads phase A trains the tower with (thrown away afterwards), and the
projector rescale between the two phases.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F

from mobilevlm_ros.model.reference import MobileVLM
from mobilevlm_ros.model.synthetic import official_config
from training.data import N_CLASSES

# The demo preset: 224 px / patch 16 -> 14x14 patches -> LDPv2 -> 7x7 = 49 image tokens.
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
              image_size=224, patch_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=128)
LLM = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
           vocab_size=1024, max_position_embeddings=512)
# Features of the tower's last layer (before post-layernorm): with 4 layers, -2 would leave a
# quarter of the tower unused. The key is a standard LLaVA/MobileVLM config value.
SELECT_LAYER = -1
SMOKE_VISION = dict(VISION, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    image_size=112, projection_dim=32)
SMOKE_LLM = dict(LLM, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2)


def build_config(vision: dict, llm: dict) -> dict:
    raw = official_config("ldpnetv2", llm, "clip", vision["hidden_size"])
    raw["_name_or_path"] = "mobilevlm_ros/demo"
    raw["mm_vision_select_layer"] = SELECT_LAYER
    raw["torch_dtype"] = "float32"
    return raw


class DenseHeads(nn.Module):
    """Training-only heads on the tower's patch features and the projector's image tokens."""

    def __init__(self, vision_width: int, hidden: int):
        super().__init__()
        self.patch_cls = nn.Linear(vision_width, N_CLASSES)
        self.tok = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, N_CLASSES + 1 + 4))

    def loss(self, feats: torch.Tensor, tokens: torch.Tensor, batch: dict) -> Dict[str, torch.Tensor]:
        pc = self.patch_cls(feats)  # (B, N, C)
        l_patch = F.cross_entropy(pc.reshape(-1, N_CLASSES), batch["patch_cls"].reshape(-1))
        out = self.tok(tokens)  # (B, T, C + 5)
        logp = F.log_softmax(out[..., :N_CLASSES], -1)
        l_frac = -(batch["tok_frac"] * logp).sum(-1).mean()
        l_centre = F.binary_cross_entropy_with_logits(out[..., N_CLASSES], batch["centre"],
                                                      pos_weight=torch.tensor(4.0))
        w = batch["box_w"]
        box_err = F.smooth_l1_loss(torch.sigmoid(out[..., N_CLASSES + 1:]), batch["box"], reduction="none",
                                   beta=0.02)
        l_box = (box_err.sum(-1) * w).sum() / w.sum().clamp(min=1) * 10
        return dict(patch=l_patch, frac=l_frac, centre=l_centre, box=l_box)


def vision_features(model: MobileVLM, pixels: torch.Tensor):
    """(patch features (B, N, C), image tokens (B, T, H)) through the same path as VisionEncoder.forward."""
    enc = model.vision
    hs = enc.tower(pixels, output_hidden_states=True).hidden_states[enc.select_layer][:, 1:]
    return hs, enc.projector(hs)


def rescale_projector(model: MobileVLM, target_std: float, pixels: torch.Tensor) -> float:
    """Scale LDPv2's output (linear in the last MLP layer and the PEG conv bias) to `target_std`."""
    with torch.no_grad():
        std = float(model.vision(pixels).std())
        a = target_std / max(std, 1e-8)
        p = model.vision.projector
        p.mlp.mlp[2].weight.mul_(a)
        p.mlp.mlp[2].bias.mul_(a)
        p.peg.peg[0].bias.mul_(a)
    return std
