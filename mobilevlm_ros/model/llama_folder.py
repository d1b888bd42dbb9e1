"""A Llama as the plain Hugging Face folder onnxruntime-genai's builder reads: shared by the exporter
and the quantizers that hand the builder their own weights (rotation, GPTQ, AutoRound)."""

from __future__ import annotations

import json
import os
from typing import Callable

import torch


def write_llama_folder(llm, folder: str, dtype: torch.dtype, write_tokenizer: Callable[[str], None]) -> None:
    """A LlamaForCausalLM as a plain Hugging Face folder: what the genai builder reads."""
    cfg = llm.config.to_dict()
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"],
               torch_dtype=str(dtype).replace("torch.", ""))
    # The tensors written are plain dtype ones: a source's quantization (e.g. GGUF, which transformers
    # de-quantized on load) must not send the builder to its quantized-model loaders.
    cfg.pop("quantization_config", None)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    from safetensors.torch import save_file

    tensors = llm.state_dict()
    if cfg.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)  # the same tensor as the embedding: stored once
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()},
              os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(folder)
