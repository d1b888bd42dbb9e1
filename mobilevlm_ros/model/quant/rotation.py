"""QuaRot's offline rotation of the language model before it is quantized (Olive's `QuaRot` pass).

The residual stream of a trained Llama has a few channels far larger than the rest. onnxruntime's
fast CPU kernels round each block of activations to int8 (accuracy level 4), so those channels
cost the rest of their block its precision. An orthogonal matrix R (a random Hadamard matrix) folded
into the weights spreads them over all channels and leaves the model's function unchanged: RMSNorm
scales are folded into the next matrices, embeddings become E·R, every matrix reading the residual
stream R^T·W, every matrix writing it W·R, and v/o get a per-head rotation of their own. Data-free,
a few seconds at 135M. On SmolLM2 it took the int8 default's damage from +0.65% to -0.2%
(BENCHMARKS.md, 2026-12-05 rotation).

The vision tower's image embeddings enter the same residual stream, so they must be rotated by the
same R: `rotate_mobilevlm` appends R to the projector. R is recovered from the embeddings (E·R = E'),
not re-drawn, so nothing depends on how Olive seeds its random signs.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Callable

import torch
from torch import nn

from ...runtime.errors import CheckpointError

ROTATIONS = ("hadamard",)
ROTATION_BUFFER = "rotation"  # RotatedOutput's matrix in the vision graph (export.py keeps it fp32)
# E·R against the rotated embeddings, relative to E's largest entry: float32 rounding is ~1e-6;
# a wrong R is O(1).
MAX_ROTATION_ERROR = 1e-4


def rotate_llama_folder(src: str, out: str, mode: str = "hadamard", seed: int = 0) -> str:
    """Olive's QuaRot on the Llama folder `src` (fp32), the rotated Llama (fp32, lm_head untied,
    RMSNorm weights all 1) written to `out`."""
    if mode not in ROTATIONS:
        raise ValueError(f"rotation {mode!r}: expected one of {', '.join(ROTATIONS)}")
    try:
        from olive.hardware.accelerator import AcceleratorSpec
        from olive.model import HfModelHandler
        from olive.passes.olive_pass import create_pass_from_dict
        from olive.passes.pytorch.rotate import QuaRot
    except ImportError as e:
        raise CheckpointError(f"rotation needs olive-ai (pip install .[export]): {e}") from None
    logging.getLogger("olive").setLevel(logging.WARNING)
    olive_pass = create_pass_from_dict(QuaRot, {"rotate_mode": mode, "seed": seed}, disable_search=True,
                                       accelerator_spec=AcceleratorSpec("cpu", "CPUExecutionProvider"))
    olive_pass.run(HfModelHandler(model_path=src, load_kwargs={"torch_dtype": "float32"}), out)
    del olive_pass
    gc.collect()
    return out


def recover_rotation(embeddings: torch.Tensor, rotated: torch.Tensor,
                     tolerance: float = MAX_ROTATION_ERROR) -> torch.Tensor:
    """The orthogonal R with embeddings·R = rotated (orthogonal Procrustes: R = U·V^T from the SVD of
    E^T·E'), checked: a mismatch is an error, not a silently wrong vision path. `tolerance`: larger for
    a rotated table stored in fp16 (an engine's embed_tokens.npy)."""
    e, r = embeddings.double(), rotated.double()
    u, _, vt = torch.linalg.svd(e.T @ r)
    rotation = u @ vt
    error = ((e @ rotation - r).abs().max() / e.abs().max()).item()
    if error > tolerance:
        raise CheckpointError(f"the rotated embeddings are not the embeddings times one orthogonal "
                              f"matrix (relative error {error:.1e}): the vision path cannot follow")
    return rotation.float()


class RotatedOutput(nn.Module):
    """A module whose output is multiplied by a fixed orthogonal matrix (traced as one MatMul)."""

    def __init__(self, module: nn.Module, rotation: torch.Tensor):
        super().__init__()
        self.module = module
        self.register_buffer(ROTATION_BUFFER, rotation.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) @ self.rotation


def rotate_llama(llm, workdir: str, write_tokenizer: Callable[[str], None], mode: str = "hadamard"):
    """A LlamaForCausalLM rotated by QuaRot (a new fp32 model; `llm` is left as it was).
    `workdir`: room for two fp32 Llama folders."""
    plain = _write_fp32(llm, workdir, write_tokenizer)
    return _load(rotate_llama_folder(plain, os.path.join(workdir, "llama-rotated"), mode),
                 llm.config._attn_implementation)


def rotate_mobilevlm(model, workdir: str, write_tokenizer: Callable[[str], None], mode: str = "hadamard"):
    """`model` (reference.MobileVLM) with its Llama rotated and its projector's output rotated to
    match: the same function, in place. The unrotated Llama is let go before Olive loads its own copy
    (at V2-1.7B each is 5.5 GB in fp32)."""
    plain = _write_fp32(model.llm, workdir, write_tokenizer)
    embeddings = model.llm.get_input_embeddings().weight.detach().clone()
    attn = model.llm.config._attn_implementation
    model.llm = None
    gc.collect()
    model.llm = _load(rotate_llama_folder(plain, os.path.join(workdir, "llama-rotated"), mode), attn)
    rotation = recover_rotation(embeddings, model.llm.get_input_embeddings().weight.detach())
    model.vision.projector = RotatedOutput(model.vision.projector, rotation)
    return model


def _write_fp32(llm, workdir: str, write_tokenizer: Callable[[str], None]) -> str:
    from ..llama_folder import write_llama_folder

    folder = os.path.join(workdir, "llama-fp32")
    os.makedirs(folder, exist_ok=True)
    write_llama_folder(llm, folder, torch.float32, write_tokenizer)
    return folder


def _load(folder: str, attn_implementation: str):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                            attn_implementation=attn_implementation).eval()
