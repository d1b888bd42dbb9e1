"""AutoRound's int4 codes packed straight into onnxruntime's MatMulNBits, with no second rounding.

onnxruntime's symmetric int4 grid has a signed scale per block: the largest-magnitude weight maps
to exactly -8 and codes are clamped to [-8, 7]; a weight is (code - 8 + 8) * scale with the code
stored as an unsigned nibble and no zero-point input (8 is the kernel's default). AutoRound's
`int_sym` data type (auto-round, pinned) is that same grid, and on top of it learns each weight's
rounding and each block's scale on calibration data, block by block. Its codes and scales are
written into MatMulNBits as they are: nothing is re-derived or rounded again (every earlier
calibrated route here passed through a grid that was not MatMulNBits' own: QUANTIZATION.md).

    learn(llm, samples, block_size, iters)  -> {linear name: (codes [N, K] int8, scales [N, blocks])}
    pack_int4(codes, scales, block_size)     -> MatMulNBits' B [N, blocks, block/2] and scales
    quantize_graph(fp32 graph, out, codes, ...): the builder's fp32 decoder with those MatMuls replaced
                                                 (the int8 ones rounded by onnxruntime's quantizer)

AutoRound runs in fp32 (`amp=False`: it casts to bf16 by itself on CPUs that have bf16). It takes
token ids only; a calibration sample of embeddings (a frame through the vision tower and the
projector) enters as ids past the vocabulary that an embedding wrapper maps to its rows.
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...runtime.errors import CheckpointError

AUTOROUND = "auto-round==0.16.1"  # the version whose int_sym grid and module attributes this reads
Codes = Dict[str, Tuple[np.ndarray, np.ndarray]]


class _NoTokenizer:
    """AutoRound insists on a tokenizer even when it is given token ids; it reads only these."""

    pad_token_id = None
    eos_token_id = None

    def __call__(self, *args, **kwargs):
        raise RuntimeError("calibration samples are token ids here, not text")


class _EmbeddingWithRows(torch.nn.Module):
    """The model's embedding, and past its vocabulary the rows of `extra`: ids >= vocab are samples'
    embeddings (image and text positions as the robot's decoder reads them)."""

    def __init__(self, embedding: torch.nn.Embedding, extra: torch.Tensor):
        super().__init__()
        self.embedding, self.vocab = embedding, embedding.num_embeddings
        self.register_buffer("extra", extra)

    @property
    def weight(self):  # what a tied lm_head or a shape check reads
        return self.embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.empty(*ids.shape, self.extra.shape[-1], dtype=self.extra.dtype)
        inside = ids < self.vocab
        out[inside] = self.embedding(ids[inside]).to(self.extra.dtype)
        out[~inside] = self.extra[ids[~inside] - self.vocab]
        return out


def as_token_ids(samples: Sequence[dict], vocab: int
                 ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor], int]:
    """Calibration samples (calibration.py: input_ids, or inputs_embeds) as equal-length id tensors
    [1, seqlen] (AutoRound drops shorter ones: all are cut to the shortest), and the embedding rows
    the ids past `vocab` stand for (None when there are none)."""
    lengths = [int(s["attention_mask"].sum()) for s in samples]
    seqlen = min(lengths)
    ids, rows = [], []
    for s in samples:
        if s.get("input_ids") is not None:
            ids.append(s["input_ids"][:, :seqlen].long())
        else:
            start = vocab + sum(r.shape[0] for r in rows)
            rows.append(s["inputs_embeds"][0, :seqlen].float())
            ids.append(torch.arange(start, start + seqlen).unsqueeze(0))
    return ids, (torch.cat(rows) if rows else None), seqlen


def learn(llm, samples: Sequence[dict], block_size: int, iters: int = 200, seed: int = 0,
          keep: Sequence[str] = (), lr: Optional[float] = None, batch_size: int = 8) -> Codes:
    """AutoRound on the Llama `llm` (fp32, changed in place: its Linear weights become the de-quantized
    ones) -> {module name: (int codes in [-8, 7] [N, K], scales [N, ceil(K / block_size)])} for every
    Linear it quantized. `keep`: module names left in float (the int8 ones, lm_head always). iters 0:
    AutoRound's optimised rounding without iterations (its fast mode)."""
    from auto_round import AutoRound

    logging.getLogger("autoround").setLevel(logging.WARNING)
    torch.manual_seed(seed)
    ids, extra, seqlen = as_token_ids(samples, llm.config.vocab_size)
    layer_config = {name: {"bits": 16} for name in ("lm_head", *keep)}
    original = llm.get_input_embeddings()
    if extra is not None:
        llm.set_input_embeddings(_EmbeddingWithRows(original, extra))
    try:
        rounder = AutoRound(llm, _NoTokenizer(), bits=4, group_size=block_size, sym=True, data_type="int",
                            iters=iters, nsamples=len(ids), seqlen=seqlen, dataset=ids, amp=False, seed=seed,
                            device_map="cpu", batch_size=min(batch_size, len(ids)), layer_config=layer_config,
                            **({"lr": lr} if lr is not None else {}))
        rounder.quantize()
    finally:
        llm.set_input_embeddings(original)
    codes: Codes = {}
    for name, module in llm.named_modules():
        if not isinstance(module, torch.nn.Linear) or getattr(module, "bits", 16) != 4:
            continue
        scale = getattr(module, "scale", None)
        if scale is None or getattr(module, "zp", None) != 8:
            raise CheckpointError(f"AutoRound left {name} without a symmetric int4 scale "
                                  f"({AUTOROUND} expected)")
        scales = scale.detach().float().reshape(module.out_features, -1).numpy()
        weight = module.weight.detach().float().numpy()
        per_weight = np.repeat(scales, block_size, axis=1)[:, :weight.shape[1]]
        q = np.rint(weight / per_weight)
        # The layer's weight is AutoRound's own de-quantized scale * code: dividing gives the codes back
        # exactly, or this is not the grid we pack.
        if np.abs(q * per_weight - weight).max() > 1e-6 * max(np.abs(weight).max(), 1e-12) or \
                q.min() < -8 or q.max() > 7:
            raise CheckpointError(f"AutoRound's weights of {name} are not its codes times its scales")
        codes[name] = (q.astype(np.int8), scales)
    return codes


def rtn_codes(llm, block_size: int, names: Optional[Sequence[str]] = None) -> Codes:
    """Plain rounding to nearest on the same grid (the largest-magnitude weight of a block at -8, codes
    clamped to [-8, 7]) of the Linears `names` (default: all): what AutoRound starts from, and the
    layout's bytes and speed without calibration."""
    codes: Codes = {}
    for name, module in llm.named_modules():
        if not isinstance(module, torch.nn.Linear) or (names is not None and name not in names):
            continue
        w = module.weight.detach().float().numpy()
        n, k = w.shape
        blocks = math.ceil(k / block_size)
        padded = np.zeros((n, blocks * block_size), np.float32)
        padded[:, :k] = w
        grouped = padded.reshape(n, blocks, block_size)
        peak = np.take_along_axis(grouped, np.abs(grouped).argmax(-1)[..., None], -1)[..., 0]
        scales = np.where(peak == 0, 1.0, peak / -8.0).astype(np.float32)
        q = np.clip(np.rint(grouped / scales[..., None]), -8, 7).reshape(n, -1)[:, :k]
        codes[name] = (q.astype(np.int8), scales)
    return codes


def pack_int4(codes: np.ndarray, scales: np.ndarray, block_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Codes [N, K] in [-8, 7] and scales [N, blocks] -> MatMulNBits' B (uint8 [N, blocks, block/2]:
    code + 8, the even element in the low nibble) and its scales (float32, [N * blocks]). A last
    partial block is padded with the code of zero."""
    n, k = codes.shape
    blocks = math.ceil(k / block_size)
    if scales.shape != (n, blocks):
        raise ValueError(f"scales {scales.shape} do not match codes {codes.shape} in blocks of {block_size}")
    u = np.full((n, blocks * block_size), 8, np.uint8)
    u[:, :k] = (codes.astype(np.int16) + 8).astype(np.uint8)
    u = u.reshape(n, blocks, block_size)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8), scales.astype(np.float32).reshape(-1)


def dequantize_int4(packed: np.ndarray, scales: np.ndarray, k: int, block_size: int) -> np.ndarray:
    """MatMulNBits' symmetric int4 B and scales back to weights [N, K] (what its kernels compute with)."""
    n, blocks, _ = packed.shape
    u = np.empty((n, blocks, block_size), np.int16)
    u[..., 0::2], u[..., 1::2] = packed & 0x0F, packed >> 4
    return ((u - 8) * scales.reshape(n, blocks, 1)).reshape(n, -1)[:, :k].astype(np.float32)


_NODE = re.compile(r"/model/layers\.(\d+)/(attn|mlp)/(\w+)_proj/MatMul")


def node_of(module: str) -> str:
    """The builder's MatMul node name of a Hugging Face Linear (q/k/v unfused)."""
    if module == "lm_head":
        return "/lm_head/MatMul"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)_proj", module)
    if not m:
        return ""
    part = "attn" if m.group(2) == "self_attn" else "mlp"
    return f"/model/layers.{m.group(1)}/{part}/{m.group(3)}_proj/MatMul"


def module_of(node: str) -> str:
    """The Hugging Face Linear a builder MatMul node computes ('' for none)."""
    if node == "/lm_head/MatMul":
        return "lm_head"
    m = _NODE.fullmatch(node)
    if not m:
        return ""
    return f"model.layers.{m.group(1)}.{'self_attn' if m.group(2) == 'attn' else 'mlp'}.{m.group(3)}_proj"


def quantize_graph(fp32_graph: str, out: str, codes: Codes, block_size: int,
                   int8_nodes: Dict[int, List[str]], accuracy_level: int = 4) -> None:
    """The builder's fp32 decoder (q/k/v unfused) -> decoder.onnx(.data) in `out`: each MatMul whose
    Linear is in `codes` becomes a MatMulNBits of those codes and scales; `int8_nodes` (block -> node
    names) are rounded to int8 by onnxruntime's quantizer; the rest stay float."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(fp32_graph)
    weights = {i.name: i for i in model.graph.initializer}
    nodes, done = list(model.graph.node), set()
    for index, node in enumerate(nodes):
        name = module_of(node.name) if node.op_type == "MatMul" else ""
        if name not in codes:
            continue
        q, scales = codes[name]
        weight = numpy_helper.to_array(weights[node.input[1]])  # [K, N]
        k, n = weight.shape
        if q.shape != (n, k):
            raise CheckpointError(f"{node.name}: weight {weight.shape}, AutoRound's {name} codes {q.shape}")
        packed, flat_scales = pack_int4(q, scales, block_size)
        # A wrong pairing of node and Linear (a transpose, another layer) is an error of ~100%;
        # AutoRound's own rounding moves a weight by about one step of its block.
        error = np.linalg.norm(dequantize_int4(packed, flat_scales, k, block_size) - weight.T)
        if error > 0.5 * np.linalg.norm(weight):
            raise CheckpointError(f"{node.name}: AutoRound's codes of {name} do not approximate its weight")
        prefix = node.name.replace("/", "_").strip("_")
        b = numpy_helper.from_array(packed, f"{prefix}_Q4")
        s = numpy_helper.from_array(flat_scales, f"{prefix}_scales")
        model.graph.initializer.extend([b, s])
        nodes[index] = helper.make_node("MatMulNBits", [node.input[0], b.name, s.name], list(node.output),
                                        name=node.name + "_Q4", domain="com.microsoft", K=k, N=n, bits=4,
                                        block_size=block_size, accuracy_level=accuracy_level)
        done.add(node.input[1])
    missing = set(codes) - {module_of(n.name) for n in model.graph.node}
    if missing:
        raise CheckpointError(f"no MatMul in the builder's graph for {sorted(missing)[:3]}")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    kept = [i for i in model.graph.initializer if i.name not in done]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    for block, include in sorted(int8_nodes.items()):
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block, is_symmetric=True,
                                         accuracy_level=accuracy_level,
                                         nodes_to_exclude=[n for n in matmuls if n not in include],
                                         op_types_to_quantize=("MatMul",))
        quantizer.process()
        model = quantizer.model.model
    os.makedirs(out, exist_ok=True)
    onnx.save_model(model, os.path.join(out, "decoder.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="decoder.onnx.data")
