"""GPTQ on the decoder's weights through Olive (olive-ai's `Gptq` pass: maintained, layer by layer, on
the CPU when there is no GPU), written in the "olive" checkpoint format that onnxruntime-genai's
builder turns into MatMulNBits: packed weights and scales, zero points only when asymmetric, per-module
bits for the int8 matrices.

Chosen by measurement over onnxruntime's own GPTQ, which made symmetric int4 worse than plain rounding
(QUANTIZATION.md): Olive's GPTQ is the reference algorithm (Hessian from the calibration inputs,
column-wise error feedback, the group's grid fixed as the group starts).

AutoClip (Olive's `AutoClip` pass: clipped float weights, which the builder then rounds) is the
activation-aware alternative offered beside it: +12.8% on SmolLM2 where plain rounding of the same
layout gives +14.5% (BENCHMARKS.md 2026-12-05).
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
from typing import Dict, List, Optional

import torch

from ...runtime.errors import CheckpointError
from .layout import sensitive_layers

_SAMPLES: Dict[str, List[dict]] = {}  # calibration sets by key, for the dataset Olive's registry names
_KEYS = itertools.count()


# GPTQ's damping (share of the Hessian's mean diagonal added to it). 0.1, not Olive's 0.01: on SmolLM2
# calibrated on the package's docstrings and scored on licence prose, 0.01 gave +54.6% perplexity and
# 0.1 +38.0% (BENCHMARKS.md): more damping leans less on a calibration set unlike the text scored.
DAMP = 0.1

# AutoClip's search, cut to fit 2 cores: Olive's default (a 10 x 10 grid of shrinks in 5% steps, 512
# tokens per matrix) took over 4 minutes per SmolLM2 layer here. A 6 x 6 grid (shrinks up to 30%)
# over 128 tokens is about 11x less work.
AUTOCLIP = {"n_grid": 20, "max_shrink": 0.3, "n_sample_token": 128}


# Selectors of `matmul_mixed_precision` -> the projections of the sensitive layers they raise.
# mixed_layers is the builder's (v and down; Olive gives q, k and v of a layer one config, as the
# builder's fused qkv_proj has); mixed_down is ours: down alone, the cheaper half of llama.cpp's choice.
SENSITIVE_PROJECTIONS = {"mixed_layers": ("self_attn.v_proj", "mlp.down_proj"),
                         "mixed_down": ("mlp.down_proj",)}


def overrides(num_layers: int, bits: int, mixed: str) -> Dict[str, Dict[str, int]]:
    """Olive's per-module bits for the `matmul_mixed_precision` spelling, e.g.
    "last_matmul:int8,mixed_layers:int8": lm_head, and projections of the sensitive layers."""
    spec = dict(part.split(":") for part in mixed.split(",") if part) if mixed else {}
    unknown = set(spec) - {"last_matmul", *SENSITIVE_PROJECTIONS}
    if unknown:
        raise ValueError(f"matmul_mixed_precision: {', '.join(sorted(unknown))} is not supported with GPTQ")
    out = {}
    if "last_matmul" in spec:
        out["lm_head"] = {"bits": int(spec["last_matmul"].removeprefix("int"))}
    for selector, projections in SENSITIVE_PROJECTIONS.items():
        if selector in spec:
            for i in sensitive_layers(num_layers):
                for name in projections:
                    out[f"model.layers.{i}.{name}"] = {"bits": int(spec[selector].removeprefix("int"))}
    return {k: v for k, v in out.items() if v["bits"] != bits}


def calibration_samples(key: str) -> List[tuple]:
    """Olive's dataset component: (inputs, label) pairs, as its loaders yield them."""
    return [(sample, 0) for sample in _SAMPLES[key]]


def quantize(llama_folder: str, out: str, samples: Optional[List[dict]], bits: int, block_size: int,
             symmetric: bool = True, mixed: str = "", damp: float = DAMP, method: str = "gptq") -> str:
    """GPTQ of every Linear of the Llama in `llama_folder` (fp32 safetensors), lm_head included,
    calibrated on `samples` (dicts for the Llama's forward, batch 1); the olive checkpoint goes to
    `out`. Deterministic: the same weights and samples give the same checkpoint.
    method "autoclip": Olive's AutoClip instead (activation-aware: per group, the clipping of the
    weights whose rounded product with the calibration inputs is closest to the original's, AWQ's
    clip search); `out` then holds the clipped weights in float, and the builder rounds them. Not
    Olive's own rounding: its symmetric grid (scale 2*max/15, zero point 8) cannot represent a group's
    largest positive weight, where the builder's (scale max/8, signed) maps the group's extreme
    exactly; the same layout rounded by Olive measured +21.2% on SmolLM2 against the builder's +14.5%.
    samples None: Olive's round-to-nearest pass instead, which writes the same layout (for measuring
    bytes and speed, which calibration does not change)."""
    try:
        from olive.data.config import DataConfig
        from olive.data.registry import Registry
        from olive.hardware.accelerator import AcceleratorSpec
        from olive.model import HfModelHandler
        from olive.passes.olive_pass import create_pass_from_dict
        from olive.passes.pytorch.autoclip import AutoClip
        from olive.passes.pytorch.gptq import Gptq
        from olive.passes.pytorch.rtn import Rtn
    except ImportError as e:
        raise CheckpointError(f"GPTQ needs olive-ai (pip install .[export]): {e}") from None

    logging.getLogger("olive").setLevel(logging.WARNING)
    with open(os.path.join(llama_folder, "config.json")) as f:
        num_layers = json.load(f)["num_hidden_layers"]
    options = {"bits": bits, "group_size": block_size, "sym": symmetric, "lm_head": True,
               "overrides": overrides(num_layers, bits, mixed) or None}
    key = f"set{next(_KEYS)}"
    if samples is None:
        olive_class = Rtn
    else:
        # Registering again replaces the entry: one dataset component, keyed samples.
        Registry.register_dataset("mobilevlm_calibration")(calibration_samples)
        _SAMPLES[key] = samples
        options["data_config"] = DataConfig(
            name="mobilevlm_calibration",
            load_dataset_config={"type": "mobilevlm_calibration", "params": {"key": key}},
            dataloader_config={"type": "no_auto_batch_dataloader"})  # samples are batches of 1
        if method == "autoclip":  # clipped float weights: the builder rounds them (its grid, above)
            olive_class, options = AutoClip, {**options, **AUTOCLIP}
        elif method == "gptq":
            olive_class, options = Gptq, {**options, "damp_percent": damp}
        else:
            raise ValueError(f"calibrated method {method!r}: gptq or autoclip")
    olive_pass = create_pass_from_dict(olive_class, options, disable_search=True,
                                       accelerator_spec=AcceleratorSpec("cpu", "CPUExecutionProvider"))
    torch.manual_seed(0)
    try:
        olive_pass.run(HfModelHandler(model_path=llama_folder), out)
    finally:
        _SAMPLES.pop(key, None)
        del olive_pass
        gc.collect()  # Olive's copy of the model (5.5 GB at 1.7B) goes before the builder starts
    return out
