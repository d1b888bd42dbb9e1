"""Checkpoint -> engine directory (ONNX).

Three pieces, each made by the tool that does it best:
  vision.onnx   pixels -> image embeddings (tower + projector), traced with torch.onnx;
                int8/int4 engines quantize it with onnxruntime's dynamic int8 quantizer.
  decoder.onnx  LLaMA taking `inputs_embeds` with a KV cache, built by onnxruntime-genai's model
                builder (GroupQueryAttention sharing past/present buffers; MatMulNBits int4/int8).
  embed_tokens.npy  the token-embedding table (the runtime gathers rows itself, so text and
                image embeddings meet in numpy before the decoder).
plus tokenizer.model and manifest.json (see runtime/manifest.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .. import __version__
from ..runtime import manifest as mf
from ..runtime.engines import HEAD_DIM_MULTIPLE
from ..runtime.errors import CheckpointError
from ..runtime.image import CLIP_MEAN, CLIP_STD
from ..runtime.prompt import DEFAULT_TEMPLATE
from .config import MobileVLMConfig
from .llama_folder import write_llama_folder
from .loader import load_checkpoint, read_config, resolve
from .quant.layout import quantize_decoder_layout
from .quant.rotation import ROTATION_BUFFER, rotate_mobilevlm
from .reference import MobileVLM

PRECISIONS, TARGETS = mf.PRECISIONS, mf.TARGETS
# algo_config values that are not the builder's: weights quantized by a calibrated method first.
CALIBRATED = ("gptq", "autoclip", "autoround")
# The builder's quantization options mobilevlm-export uses for each precision. Chosen by measuring
# quality on real trained weights (mobilevlm-quality, BENCHMARKS.md) against speed.
# llama.cpp's mixed strategy as the builder does it: lm_head, and in the first and last eighth of
# the layers and every third layer the v and down projections (q/k/v when fused) in int8.
SENSITIVE_INT8 = "last_matmul:int8,mixed_layers:int8"
DEFAULT_QUANT: Dict[str, Dict[str, object]] = {
    # QuaRot's rotation first (model/quant/rotation.py), then block 64 with zero points: on SmolLM2 -0.1% and
    # +0.2% perplexity on two sets of three texts (8192 tokens each) where llama.cpp's Q8_0 gave +0.28%
    # and +0.23%, at 138 MB read per token against Q8_0's 136; the unrotated block 32 asymmetric
    # (default until 2026-12-05) gave +0.65% and +0.6% at 148 MB. Rotated block 32 scored better still
    # (-0.2%, +0.1%) at 148 MB; symmetric block 64 +0.7% twice (BENCHMARKS.md, 2026-12-05 rotation).
    "int8": {"block_size": 64, "is_symmetric": False, "rotate": "hadamard"},
    # Rounding, symmetric (no zero points: MatMulNBits' fast path), block 32, with lm_head and the
    # sensitive layers' v and down projections in int8 at block 64 (llama.cpp's Q4_K_M choice of
    # matrices; model/quant/layout.py, since the builder has one block size). On SmolLM2 +14.6% perplexity at
    # 98 MB read per token, where the same layout all at block 32 (the builder's, default until
    # 2026-12-05) gave +14.5% at 100 MB; at the 1.7B shape 881 against 896 MB per token and 1.05-1.07x
    # its decode, interleaved in one process (BENCHMARKS.md, 2026-12-05 layouts). Every cheaper layout
    # measured cost 2-8 points; GPTQ measured no better; AutoClip (+12.8%) needs hours at 1.7B here.
    "int4": {"block_size": 32, "layout": {"lm_head": "int8/64", "sensitive": "int8/64"}},
}
# The int4 default's matrices as the builder spells them, for CUDA engines: a layout rounds the
# builder's fp32 graph for the CPU's kernels (where its block 64 was measured); the builder's own
# CUDA graph is fp16 with its GPU attention.
BUILDER_INT4 = {"block_size": 32, "matmul_mixed_precision": SENSITIVE_INT8, "fuse_qkv": False}


def check_runnable(cfg: MobileVLMConfig) -> None:
    """Refuse, before any work, a model whose decoder the runtime's attention kernel cannot run."""
    hidden, heads = cfg.llm["hidden_size"], cfg.llm["num_attention_heads"]
    if hidden % heads:
        raise CheckpointError(f"config.json: hidden_size {hidden} is not a multiple of "
                              f"num_attention_heads {heads}")
    if (hidden // heads) % HEAD_DIM_MULTIPLE:
        raise CheckpointError(
            f"config.json: head_dim {hidden // heads} (hidden_size {hidden} / {heads} heads) is not a "
            f"multiple of {HEAD_DIM_MULTIPLE}: onnxruntime's GroupQueryAttention, which the decoder runs on, "
            "cannot run it (MobileVLM's head_dims are 128 and 80)")


def export_vision(model: MobileVLM, path: str) -> None:
    size = model.config.vision["image_size"]
    pixels = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(
            model.vision, (pixels,), path,
            input_names=["pixel_values"], output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    # Name the output's fixed sizes so the runtime can check an engine against its manifest.
    import onnx

    graph = onnx.load(path)
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    dims[1].dim_value, dims[2].dim_value = model.config.num_image_tokens, model.config.hidden_size
    onnx.save(graph, path)


def quantize_vision_int8(path: str) -> None:
    """Dynamic int8 (weights int8, activations quantized on the fly): the CPU-friendly choice."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # A rotation's weights (model/quant/rotation.py) are all +-1/sqrt(n), int8's extremes once quantized;
    # AVX2's u8 x s8 kernel saturates their pair sums (measured: image embeddings 20% short). It stays
    # fp32: one (tokens x hidden x hidden) MatMul.
    graph = onnx.load(path).graph
    rotation = [n.name for n in graph.node if any(i.split(".")[-1] == ROTATION_BUFFER for i in n.input)]
    tmp = path + ".q.onnx"
    quantize_dynamic(path, tmp, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     nodes_to_exclude=rotation)
    os.replace(tmp, path)


def vision_to_fp16(path: str) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(path), keep_io_types=True)
    onnx.save(m, path)


def vision_precision_for(precision: str, target: str) -> str:
    """The vision graph's precision. On CPU int4/int8 engines get dynamic int8 (MatMulInteger: fast
    on VNNI/AVX2 kernels); on a GPU every non-fp32 engine gets fp16, which tensor cores run and
    TensorRT takes whole (its int8 needs calibration, onnxruntime's dynamic int8 ops are CPU-first)."""
    if precision == "fp32":
        return "fp32"
    if target == "cuda":
        return "fp16"
    return "int8"


def sentencepiece_tokenizer_writer(tokenizer_src: str) -> Callable[[str], None]:
    """Writes a MobileVLM checkpoint's tokenizer.model, with the config the builder reads beside it."""
    def write(folder: str) -> None:
        shutil.copy(tokenizer_src, os.path.join(folder, "tokenizer.model"))
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                       "unk_token": "<unk>", "legacy": True}, f)

    return write


def is_calibrated(quant: Optional[Dict[str, object]]) -> bool:
    """Whether this quantization needs calibration data (GPTQ) rather than rounding alone."""
    return bool(quant) and quant.get("algo_config") in CALIBRATED


def builder_options(precision: str, quant: Dict[str, object]) -> List[str]:
    """The builder's --extra_options for our decoder: embeddings in, last position's logits out."""
    options = {"exclude_embeds": "true", "filename": "decoder.onnx",
               # Only the last position's logits are needed: prefill skips a (L x vocab) matmul.
               "prune_lm_head": "true", "hf_remote": "false", "hf_token": "false"}
    if quant.get("algo_config") == "gptq":
        # The checkpoint holds the quantized weights. Builder 0.18 packs q/k/v into one MatMulNBits
        # only when they have zero points (a symmetric olive checkpoint fails in PackedMatMul).
        options["fuse_qkv"] = "false"
    elif quant.get("algo_config") == "autoround" or "layout" in quant:
        # an fp32 graph quantized after the builder, one MatMul per Linear (layout.py groups v alone;
        # AutoRound's codes are per Linear)
        options["fuse_qkv"] = "false"
    elif precision in ("int4", "int8"):
        # AutoClip's checkpoint holds clipped float weights: the builder rounds them like any other.
        # (a rotation is done to the weights before the builder sees them: not the builder's option)
        rounding = {k: v for k, v in quant.items()
                    if k != "rotate" and not (k == "algo_config" and v == "autoclip")}
        options.update({k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in rounding.items()})
    return [f"{k}={v}" for k, v in options.items()]


def gptq_llama_folder(fp32_folder: str, out: str, write_tokenizer: Callable[[str], None], precision: str,
                      quant: Dict[str, object], samples: List[dict]) -> str:
    """The Llama of `fp32_folder` (write_llama_folder, fp32) quantized by GPTQ (model/quant/gptq.py) into an
    olive checkpoint in `out`, which the builder reads; or, for AutoClip, its weights clipped (still
    float) for the builder to round (no calibration samples: the fp32 folder itself)."""
    from .quant.gptq import quantize

    if quant["algo_config"] == "autoclip" and samples is None:
        return fp32_folder

    quantize(fp32_folder, out, samples, bits={"int4": 4, "int8": 8}[precision],
             block_size=int(quant["block_size"]), symmetric=bool(quant.get("is_symmetric", True)),
             mixed=str(quant.get("matmul_mixed_precision", "")), method=str(quant["algo_config"]))
    write_tokenizer(out)
    return out


def run_builder(cmd: List[str], llama_folder: str) -> None:
    """The builder as a subprocess, its minutes shown as a progress bar: it prints "Reading layer N"
    while it builds the graph, then a line per quantized MatMul."""
    from collections import deque

    from tqdm.auto import tqdm

    with open(os.path.join(llama_folder, "config.json")) as f:
        layers = json.load(f)["num_hidden_layers"]
    tail, quantized = deque(maxlen=40), 0
    # The builder computes the RoPE caches with torch, whose cos goes through MKL's vector math: on an
    # AVX-512 host about one process in eight computed rows 256+ (torch's second thread) 20x less
    # accurately (1.5e-4), so two exports of the same checkpoint differed. One MKL code path fixes it.
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    with tqdm(total=layers, desc="decoder graph", unit="layer", leave=False) as bar, \
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env) as proc:
        for line in proc.stdout:
            tail.append(line)
            if line.startswith("Reading layer"):
                bar.update(1)
            elif "complete quantization of" in line:
                quantized += 1
                bar.set_postfix_str(f"{quantized} matrices quantized", refresh=False)
    if proc.returncode != 0:
        raise CheckpointError("onnxruntime-genai builder failed:\n" + "".join(tail)[-3000:])


def build_decoder(llama_folder: str, out: str, precision: str, target: str, quant: Dict[str, object],
                  codes=None) -> dict:
    """Run onnxruntime-genai's builder on a Llama folder; decoder.onnx(.data) land in `out`.

    quant {"algo_config": "hqq", ...}: the builder writes an fp32 graph and onnxruntime's HQQ quantizer
    (which the builder does not offer) turns its MatMuls into MatMulNBits; quant {"layout": ...}: the
    same fp32 graph, its MatMuls rounded per group by model/quant/layout.py; quant {"algo_config":
    "autoround", ...}: the same fp32 graph with `codes` (autoround.learn) packed into its MatMuls.
    Returns the decoder's input/output names as the manifest records them (`decoder_io`)."""
    autoround = quant.get("algo_config") == "autoround"
    hqq, layout = quant.get("algo_config") == "hqq", "layout" in quant and not autoround
    float_graph = hqq or layout or autoround  # quantized here, after the builder
    with tempfile.TemporaryDirectory(prefix="mobilevlm_llm_") as tmp:
        dst = os.path.join(tmp, "onnx")
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", llama_folder, "-o", dst,
               "-p", "fp32" if float_graph else precision, "-e", target, "-c", os.path.join(tmp, "cache"),
               "--extra_options", *builder_options("fp32" if float_graph else precision, quant)]
        run_builder(cmd, llama_folder)
        os.makedirs(out, exist_ok=True)
        if autoround:
            from .quant.autoround import quantize_graph

            if codes is None:
                raise ValueError("an AutoRound configuration needs its codes (autoround.learn)")
            quantize_graph(os.path.join(dst, "decoder.onnx"), out, codes, int(quant["block_size"]),
                           autoround_int8_plan(quant, [n for n in _matmul_nodes(dst)]),
                           int(quant.get("accuracy_level", 4)))
        elif hqq:
            quantize_decoder_hqq(os.path.join(dst, "decoder.onnx"), out, precision, quant)
        elif layout:
            quantize_decoder_layout(os.path.join(dst, "decoder.onnx"), out, precision, quant)
        else:
            for name in ("decoder.onnx", "decoder.onnx.data"):
                shutil.move(os.path.join(dst, name), os.path.join(out, name))
        with open(os.path.join(dst, "genai_config.json")) as f:
            decoder = json.load(f)["model"]["decoder"]
    return {
        "inputs_embeds": decoder["inputs"]["inputs_embeds"],
        "attention_mask": decoder["inputs"]["attention_mask"],
        "past_key": decoder["inputs"]["past_key_names"],
        "past_value": decoder["inputs"]["past_value_names"],
        "logits": decoder["outputs"]["logits"],
        "present_key": decoder["outputs"]["present_key_names"],
        "present_value": decoder["outputs"]["present_value_names"],
    }


def _matmul_nodes(folder: str) -> List[str]:
    import onnx

    model = onnx.load(os.path.join(folder, "decoder.onnx"), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type == "MatMul"]


def autoround_int8_plan(quant: Dict[str, object], nodes: List[str]) -> Dict[int, List[str]]:
    """block -> the MatMul nodes an AutoRound configuration keeps at int8 (its `layout`'s int8
    entries, or `int8` listing node names and `int8_block`); AutoRound leaves them in float."""
    from .quant.layout import plan

    if "int8" in quant:
        return {int(quant.get("int8_block", 64)): [n for n in nodes if n in set(quant["int8"])]}
    if "layout" not in quant:
        return {}
    return {block: names for (bits, block), names in plan(nodes, 4, quant).items() if bits == 8}


def autoround_resolve(llm, quant: Dict[str, object], samples, log=None, scores=None) -> Dict[str, object]:
    """`quant` with its int8 matrices named: `"int8": "measured"` becomes the Linears
    model/quant/sensitivity.py chooses on the calibration samples (within `int8_budget` extra bytes,
    by default the bytes llama.cpp's rule spends), as node names; without samples (bytes and speed of
    a synthetic shape) the rule's own matrices. `scores`: a cache, block -> sensitivities."""
    quant = dict(quant)
    if quant.get("int8") != "measured":
        return quant
    if samples is None:
        quant.pop("int8")
        quant["layout"] = {"lm_head": "int8/64", "sensitive": "int8/64"}
        return quant
    from .quant.autoround import node_of
    from .quant.sensitivity import choose_int8, rule_budget, sensitivities

    block, scores = int(quant["block_size"]), {} if scores is None else scores
    if block not in scores:
        scores[block] = sensitivities(llm, samples, block, log)
    budget = float(quant.get("int8_budget", rule_budget(llm, block)))
    quant["int8"] = [node_of(name) for name in choose_int8(llm, scores[block], block, budget)]
    return quant


def autoround_codes(llm, quant: Dict[str, object], samples):
    """Codes of every Linear at `quant`'s block (lm_head rounded to nearest):
    AutoRound's, learned on `samples` (`llm` is changed in place), or with samples None plain rounding
    on the same grid (the layout's bytes and speed, and its uncalibrated baseline). The int8 matrices
    are learned too and dropped by `int4_codes`: one learning serves every int8 choice of a block."""
    from .quant.autoround import learn, rtn_codes

    block = int(quant["block_size"])
    # AutoRound leaves lm_head (tied to the embeddings in small models): where the int8 choice leaves
    # it at 4 bits it is rounded on the same grid, never left in float.
    if samples is None:
        return rtn_codes(llm, block)
    head = rtn_codes(llm, block, ["lm_head"])  # before learn() changes the model
    if quant.get("samples"):
        samples = samples[:int(quant["samples"])]
    codes = learn(llm, samples, block, iters=int(quant.get("iters", 200)), seed=int(quant.get("seed", 0)))
    return {**codes, **head}


def autoround_key(quant: Dict[str, object], samples) -> tuple:
    """What `autoround_codes` depends on besides the weights: configurations equal in it share codes."""
    return (int(quant["block_size"]), int(quant.get("iters", 200)), int(quant.get("seed", 0)),
            quant.get("samples"), samples is None)


def int4_codes(codes, quant: Dict[str, object]):
    """`codes` without the matrices `quant` keeps at int8 (onnxruntime rounds those from float)."""
    from .quant.autoround import node_of

    int8 = {n for names in autoround_int8_plan(quant, [node_of(name) for name in codes]).values()
            for n in names}
    return {name: c for name, c in codes.items() if node_of(name) not in int8}


def quantize_decoder_hqq(fp32_graph: str, out: str, precision: str, quant: Dict[str, object]) -> None:
    """HQQ (half-quadratic, no calibration data) on every MatMul, lm_head included. Its zero points
    are floats, which onnxruntime's CPU MatMulNBits runs by de-quantizing on each call: measure
    its speed (mobilevlm-quality) before shipping it."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    # a line per node
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    bits = {"int4": 4, "int8": 8}[precision]
    config = HQQWeightOnlyQuantConfig(block_size=int(quant.get("block_size", 128)), bits=bits)
    quantizer = MatMulNBitsQuantizer(onnx.load(fp32_graph), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(os.path.join(out, "decoder.onnx"), use_external_data_format=True)


def weights_dtype(precision: str) -> torch.dtype:
    """What the builder is fed: fp32 for fp32 engines, fp16 for the rest (it quantizes from fp16)."""
    return torch.float32 if precision == "fp32" else torch.float16


def embedding_table(llm, precision: str) -> np.ndarray:
    """The token-embedding table the runtime gathers from: fp32 for fp32 engines, else fp16."""
    return (llm.get_input_embeddings().weight.detach().numpy()
            .astype(np.float32 if precision == "fp32" else np.float16))


def export(src: str, out: str, precision: str = "int4", target: str = "cpu", vision_tower: str = None,
           model_id: str = "", block_size: int = 0, quant: Optional[Dict[str, object]] = None,
           calibrate=None, log=print, answer_hint: Optional[str] = None) -> str:
    """Write an engine directory for `src`. quant: the builder's quantization options (None: the
    precision's DEFAULT_QUANT); block_size, when not 0, replaces its block size. calibrate: the
    calibration.Source of a calibrated quantization (None: calibration.default_source()).
    answer_hint: the words typed questions get (None: the runtime's default; "" for none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}")
    if precision == "fp16" and target == "cpu":
        # The builder's fp16 CPU graph uses unfused attention with separate past/present buffers,
        # which our in-place KV cache does not drive; fp16 is slower than fp32 on CPUs anyway.
        raise ValueError("fp16 engines are for --target cuda; on CPU use fp32, int8 or int4")
    quant = dict(DEFAULT_QUANT.get(precision, {}) if quant is None else quant)
    if quant.get("algo_config") == "autoround" and target != "cpu":
        raise ValueError("AutoRound's codes are packed for the CPU's MatMulNBits (fp32 activations); "
                         "for --target cuda use the default")
    if "layout" in quant and target != "cpu":
        if quant != DEFAULT_QUANT.get(precision):
            raise ValueError("a quantization layout builds CPU engines only; for --target cuda use the "
                             "default or a configuration without 'layout'")
        quant = dict(BUILDER_INT4)
    if block_size:
        quant["block_size"] = block_size
    folder = resolve(src)
    tokenizer_src = os.path.join(folder, "tokenizer.model")
    if not os.path.isfile(tokenizer_src):
        raise CheckpointError(f"{folder}: no tokenizer.model")
    check_runnable(read_config(folder, vision_tower)[0])
    t0 = time.time()
    model = load_checkpoint(folder, vision_tower=vision_tower)
    cfg = model.config
    log(f"loaded {src} ({cfg.version}, {cfg.projector}, hidden {cfg.hidden_size}) in {time.time() - t0:.1f}s")
    os.makedirs(out, exist_ok=True)
    write_tokenizer = sentencepiece_tokenizer_writer(tokenizer_src)

    if precision in ("int4", "int8") and quant.get("rotate"):
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="mobilevlm_rotate_") as tmp:
            rotate_mobilevlm(model, tmp, write_tokenizer, str(quant["rotate"]))
        log(f"language model rotated ({quant['rotate']}; the projector's output to match) "
            f"in {time.time() - t0:.1f}s")

    t0 = time.time()
    export_vision(model, os.path.join(out, "vision.onnx"))
    vision_precision = vision_precision_for(precision, target)
    if vision_precision == "int8":
        quantize_vision_int8(os.path.join(out, "vision.onnx"))
    elif vision_precision == "fp16":
        vision_to_fp16(os.path.join(out, "vision.onnx"))
    log(f"vision graph ({vision_precision}) in {time.time() - t0:.1f}s")

    t0 = time.time()
    calibration, codes = None, None
    with tempfile.TemporaryDirectory(prefix="mobilevlm_llm_") as tmp:
        llama = tmp  # the Llama folder the builder reads
        if precision in ("int4", "int8") and is_calibrated(quant):
            from ..runtime.tokenizer import Tokenizer
            from .quant.calibration import default_source, vlm_calibration

            source = calibrate or default_source()
            calibration = vlm_calibration(model, Tokenizer(tokenizer_src), source)
            log(f"calibration set {source.name}: {calibration.record['samples']} samples, "
                f"{calibration.record['tokens']} tokens ({time.time() - t0:.1f}s)")
            fp32 = os.path.join(tmp, "fp32")
            os.makedirs(fp32)
            write_llama_folder(model.llm, fp32, torch.float32, write_tokenizer)
            if quant["algo_config"] == "autoround":  # the builder reads the float folder; codes come after
                quant = autoround_resolve(model.llm, quant, calibration.samples, log)
                codes, llama = int4_codes(autoround_codes(model.llm, quant, calibration.samples), quant), fp32
            else:
                llama = gptq_llama_folder(fp32, os.path.join(tmp, "gptq"), write_tokenizer, precision, quant,
                                          calibration.samples)
        else:
            write_llama_folder(model.llm, llama, weights_dtype(precision), write_tokenizer)
        decoder_io = build_decoder(llama, out, precision, target, quant, codes)
    log(f"decoder ({precision}, {target}) in {time.time() - t0:.1f}s")

    np.save(os.path.join(out, "embed_tokens.npy"), embedding_table(model.llm, precision))
    shutil.copy(tokenizer_src, os.path.join(out, "tokenizer.model"))

    llm = cfg.llm
    manifest = {
        "format": mf.FORMAT,
        "format_version": mf.FORMAT_VERSION,
        "tool": f"mobilevlm_ros {__version__}",
        "model": {
            "id": model_id or src,
            "version": cfg.version,
            "projector": cfg.projector,
            "vision_tower": cfg.vision_tower,
            "template": DEFAULT_TEMPLATE,
            "image_size": cfg.vision["image_size"],
            "image_tokens": cfg.num_image_tokens,
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "hidden_size": llm["hidden_size"],
            "num_layers": llm["num_hidden_layers"],
            "num_heads": llm["num_attention_heads"],
            "num_kv_heads": llm["num_key_value_heads"],
            "head_dim": llm["hidden_size"] // llm["num_attention_heads"],
            "vocab_size": llm["vocab_size"],
            "context_length": llm["max_position_embeddings"],
            "bos_token_id": llm["bos_token_id"],
            "eos_token_id": llm["eos_token_id"],
            **({} if answer_hint is None else {"answer_hint": answer_hint}),
            "vision_layers": cfg.vision["num_hidden_layers"],
            "vision_width": cfg.vision["hidden_size"],
        },
        "precision": precision,
        "vision_precision": vision_precision,
        "quantization": quant if precision in ("int8", "int4") else None,
        # What calibrated the quantized weights: name, sha256, samples, tokens.
        "calibration": calibration.record if calibration else None,
        "target": target,
        "decoder_io": decoder_io,
        "files": {},
    }
    mf.write(out, manifest, {"vision": "vision.onnx", "decoder": "decoder.onnx",
                             "decoder_data": "decoder.onnx.data", "embeddings": "embed_tokens.npy",
                             "tokenizer": "tokenizer.model"})
    return out
