"""Load a MobileVLM checkpoint (a local folder, or a hub id when a network exists) into the reference.

Two layouts are accepted:
  * tower inside (V2 releases): `model.vision_tower.vision_tower.vision_model.*` in the shards;
  * tower separate (V1 releases): the tower comes from the CLIP folder `mm_vision_tower` names
    (or `vision_tower=` given here), weights under `vision_model.*`.
Every tensor must find its place and every parameter must be filled: otherwise a CheckpointError
names the tensors.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, Optional, Tuple

import torch

from ..runtime.errors import CheckpointError
from .config import CLIP_L14_336, MobileVLMConfig, read_clip_vision_config
from .reference import MobileVLM

TOWER_PREFIX = "model.vision_tower.vision_tower."
# Present in some checkpoints, never needed: a CLIPModel's text half, and buffers newer
# transformers rebuild itself.
_IGNORED_PREFIXES = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
_IGNORED_SUFFIXES = ("position_ids", "rotary_emb.inv_freq")


def resolve(src: str) -> str:
    """A local folder as is; otherwise a hub id fetched through huggingface_hub."""
    if os.path.isdir(src):
        return src
    if os.path.exists(src):
        raise CheckpointError(f"{src}: not a checkpoint folder")
    if src.count("/") != 1:
        raise CheckpointError(f"{src}: no such folder, and not a hub id (org/name)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            src, allow_patterns=["*.json", "*.safetensors", "*.bin", "tokenizer.model"]
        )
    except Exception as e:  # offline, unknown repo, ...
        raise CheckpointError(f"{src}: not a local folder and the hub could not provide it "
                              f"({type(e).__name__}: {e})") from e


def read_tensors(folder: str) -> Dict[str, torch.Tensor]:
    """All tensors of a folder's safetensors or .bin shards (.bin loaded with weights_only=True)."""
    st = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if st:
        from safetensors.torch import load_file

        out = {}
        for path in st:
            out.update(load_file(path))
        return out
    bins = sorted(p for p in glob.glob(os.path.join(folder, "*.bin")) if "training_args" not in p)
    if bins:
        out = {}
        for path in bins:
            try:
                out.update(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as e:
                raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({e})") from e
        return out
    raise CheckpointError(f"{folder}: no *.safetensors or *.bin weights")


def read_config(folder: str, vision_tower: Optional[str] = None) -> Tuple[MobileVLMConfig, Optional[str]]:
    """The config, and the CLIP folder the tower comes from (None when only its shape is built in)."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e
    tower = vision_tower or raw.get("mm_vision_tower", CLIP_L14_336)
    clip_dir = None
    for candidate in (tower, os.path.join(folder, tower)):
        if os.path.isfile(os.path.join(candidate, "config.json")):
            clip_dir = candidate
            break
    vision = read_clip_vision_config(clip_dir) if clip_dir else None
    if vision is None and tower != CLIP_L14_336:
        raise CheckpointError(f"vision tower {tower!r}: no such CLIP folder (and not {CLIP_L14_336})")
    return MobileVLMConfig.from_dict(raw, vision), clip_dir


def _ignorable(name: str) -> bool:
    return name.startswith(_IGNORED_PREFIXES) or name.endswith(_IGNORED_SUFFIXES)


def _summary(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:8])
    return shown + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")


def load_checkpoint(src: str, vision_tower: Optional[str] = None, dtype=torch.float32) -> MobileVLM:
    """Build the reference model and fill every parameter from the checkpoint, or say what is wrong."""
    folder = resolve(src)
    config, clip_dir = read_config(folder, vision_tower)
    model = MobileVLM(config)
    names = model.checkpoint_names()

    tensors = read_tensors(folder)
    has_tower = any(k.startswith(TOWER_PREFIX) for k in tensors)
    if not has_tower:
        if clip_dir is None:
            raise CheckpointError(
                f"{folder}: the checkpoint holds no vision tower weights and {config.vision_tower!r} "
                "is not a local CLIP folder; pass --vision-tower PATH to a CLIP folder"
            )
        for k, v in read_tensors(clip_dir).items():
            if k.startswith("vision_model."):
                tensors[TOWER_PREFIX + k] = v
            elif not _ignorable(k):
                tensors[k] = v  # reported as unexpected below

    ours = model.state_dict()
    state, unexpected = {}, []
    for k, v in tensors.items():
        target = names.get(k)
        if target is None:
            if not _ignorable(k):
                unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(ours[target].shape):
            raise CheckpointError(f"{k}: shape {tuple(v.shape)} does not match the config's "
                                  f"{tuple(ours[target].shape)}")
        state[target] = v.to(dtype)
    if (config.llm["tie_word_embeddings"] and "llm.lm_head.weight" not in state
            and "llm.model.embed_tokens.weight" in state):
        state["llm.lm_head.weight"] = state["llm.model.embed_tokens.weight"]  # tied: stored once
    inverse = {v: k for k, v in names.items()}
    missing = [inverse[k] for k in ours if k not in state]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_summary(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_summary(unexpected)}")
        raise CheckpointError(f"{folder}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval().requires_grad_(False)


def load_language_model(src: str, dtype=torch.float32):
    """Only the LLaMA half of a MobileVLM checkpoint (no tower needed), as a LlamaForCausalLM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .config import llama_kwargs

    folder = resolve(src)
    with open(os.path.join(folder, "config.json")) as f:
        llm = LlamaForCausalLM(LlamaConfig(**llama_kwargs(json.load(f))))
    ours = llm.state_dict()
    state = {k: v.to(dtype) for k, v in read_tensors(folder).items() if k in ours}
    if (llm.config.tie_word_embeddings and "lm_head.weight" not in state
            and "model.embed_tokens.weight" in state):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied: stored once
    missing = [k for k in ours if k not in state]
    if missing:
        raise CheckpointError(f"{folder}: missing language-model tensors: {_summary(missing)}")
    llm.load_state_dict(state, strict=True)
    return llm.to(dtype).eval().requires_grad_(False)
