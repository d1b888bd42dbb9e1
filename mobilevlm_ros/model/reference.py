"""The PyTorch reference of MobileVLM: CLIP vision tower -> projector -> LLaMA.

Built from transformers' CLIPVisionModel and LlamaForCausalLM plus our projectors. It is the
yardstick the exported engines are checked against, and the source the exporter traces.
"""

from __future__ import annotations

from typing import List

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from ..runtime.prompt import IMAGE_TOKEN_INDEX
from .config import MobileVLMConfig
from .projector import build_projector


class VisionEncoder(nn.Module):
    """pixels (B, 3, S, S) -> image embeddings (B, T, H): tower, select layer, drop CLS, project."""

    def __init__(self, config: MobileVLMConfig, attn_implementation: str = "eager"):
        super().__init__()
        vcfg = CLIPVisionConfig(**config.vision)
        vcfg._attn_implementation = attn_implementation
        self.tower = CLIPVisionModel(vcfg)
        self.projector = build_projector(config.projector, config.mm_hidden_size, config.hidden_size)
        self.select_layer = config.select_layer
        self.select_feature = config.select_feature

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixels, output_hidden_states=True)
        features = out.hidden_states[self.select_layer]  # (B, 1 + N, C): before post-layernorm
        if self.select_feature == "patch":
            features = features[:, 1:]
        return self.projector(features)  # (B, T, H)


class MobileVLM(nn.Module):
    def __init__(self, config: MobileVLMConfig, attn_implementation: str = "eager"):
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config, attn_implementation)
        lcfg = LlamaConfig(**config.llm)
        lcfg._attn_implementation = attn_implementation
        self.llm = LlamaForCausalLM(lcfg)

    # -- state dict in the released checkpoint's names ------------------------------------------
    def checkpoint_names(self) -> dict:
        """Map released-checkpoint tensor names -> our parameter names (tower inside the checkpoint)."""
        names = {}
        for k in self.llm.state_dict():
            names[k] = "llm." + k  # model.layers.*, model.embed_tokens.*, model.norm.*, lm_head.*
        for k in self.vision.projector.state_dict():
            names["model.mm_projector." + k] = "vision.projector." + k
        for k in self.vision.tower.state_dict():
            # transformers 5 drops the `vision_model.` prefix that 4.x (and the checkpoints) use.
            names["model.vision_tower.vision_tower.vision_model." + k] = "vision.tower." + k
        return names

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, input_ids: List[int], image_embeds: torch.Tensor) -> torch.Tensor:
        """Token ids with IMAGE_TOKEN_INDEX where the image goes -> inputs_embeds (1, L, H)."""
        table = self.llm.get_input_embeddings()
        parts, text = [], []
        for t in input_ids:
            if t == IMAGE_TOKEN_INDEX:
                if text:
                    parts.append(table(torch.tensor([text], device=table.weight.device)))
                    text = []
                parts.append(image_embeds.to(table.weight.dtype))
            else:
                text.append(t)
        if text:
            parts.append(table(torch.tensor([text], device=table.weight.device)))
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, input_ids: List[int], max_new_tokens: int = 32,
                 ignore_eos: bool = False) -> List[int]:
        """Greedy generation with transformers' own loop: the reference token sequence."""
        embeds = self.embed(input_ids, self.vision(pixels))
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                      attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long))
        if ignore_eos:
            kwargs["min_new_tokens"] = max_new_tokens
        out = self.llm.generate(inputs_embeds=embeds, **kwargs)
        return out[0].tolist()

    @torch.no_grad()
    def first_logits(self, pixels: torch.Tensor, input_ids: List[int]) -> torch.Tensor:
        """Logits of the first generated position (vocab,)."""
        embeds = self.embed(input_ids, self.vision(pixels))
        return self.llm(inputs_embeds=embeds).logits[0, -1]
