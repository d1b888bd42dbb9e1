"""Bits and block size chosen per group of matrices: a decoder quantized by layout.

The builder gives a model one block size and upgrades matrices only to int8. What a decode step costs
on a CPU is the bytes its MatMulNBits read (onnxruntime's CPU kernel keeps, per block, the packed
weights, an fp32 scale and an fp32 block sum: 4 + 64/block bits per int4 weight, 8 + 64/block per
int8 weight; BENCHMARKS.md, 2026-12-05 layouts), so the groups worth spending bytes on differ in
block size as much as in bits. The builder writes the fp32 graph; onnxruntime's own quantizer (the
one the builder calls, same grid: symmetric, scale max/8) then runs once per (bits, block) group with
the other MatMuls excluded, as the builder itself does for its int8 upgrades.

A layout is a dict of group -> "int4/16"-style strings in the quantization dict (`quant["layout"]`);
every MatMul in no group gets the precision's bits at `quant["block_size"]`.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from typing import Dict, List, Tuple

GROUPS = {
    "lm_head": "the output projection",
    # both of the next two, where a layout does not name them itself
    "sensitive": "v and down projections of llama.cpp's sensitive layers (the builder's mixed_layers)",
    "sensitive_v": "the v projections alone of those layers",
    "sensitive_down": "the down projections alone of those layers",
    "gate_up": "gate and up projections of every layer",
    "down": "down projections of every layer (the sensitive layers' follow the sensitive entries first)",
}
# The groups that hold a MatMul of each kind, most specific first: the first a layout names decides.
HOLDERS = {"lm_head": ("lm_head",), "sensitive_v": ("sensitive_v", "sensitive"),
           "sensitive_down": ("sensitive_down", "sensitive", "down"), "gate_up": ("gate_up",),
           "down": ("down",)}


def sensitive_layers(num_layers: int) -> List[int]:
    """The layers whose attention and down projections llama.cpp's Q4_K_M (and the builder's
    `mixed_layers`) keep at more bits: the first and last eighth, and every third one between."""
    return [i for i in range(num_layers)
            if i < num_layers / 8 or i >= 7 * num_layers / 8 or (i - round(num_layers / 8)) % 3 == 2]


def parse(spec: str) -> Tuple[int, int]:
    """ "int4/16" -> (4, 16)."""
    match = re.fullmatch(r"int(4|8)/(16|32|64|128|256)", spec)
    if not match:
        raise ValueError(f"layout entry {spec!r}: expected int4 or int8, '/', a block size of 16-256")
    return int(match.group(1)), int(match.group(2))


def group_of(node: str, sensitive: set) -> str:
    """The layout group of a MatMul by the builder's node name ("" for none)."""
    if node == "/lm_head/MatMul":
        return "lm_head"
    match = re.fullmatch(r"/model/layers\.(\d+)/(attn|mlp)/(\w+)_proj/MatMul", node)
    if not match:
        return ""
    layer, proj = int(match.group(1)), match.group(3)
    if proj in ("v", "down") and layer in sensitive:
        return "sensitive_" + proj
    return {"gate": "gate_up", "up": "gate_up", "down": "down"}.get(proj, "")


def plan(nodes: List[str], bits: int, quant: Dict[str, object]) -> Dict[Tuple[int, int], List[str]]:
    """(bits, block) -> the MatMul nodes quantized so."""
    layout = dict(quant["layout"])
    unknown = set(layout) - set(GROUPS)
    if unknown:
        raise ValueError(f"layout groups {sorted(unknown)}: known are {', '.join(GROUPS)}")
    layers = {int(m.group(1)) for m in (re.match(r"/model/layers\.(\d+)/", n) for n in nodes) if m}
    sensitive = set(sensitive_layers(max(layers) + 1 if layers else 0))
    body = (bits, int(quant["block_size"]))
    passes = defaultdict(list)
    for node in nodes:
        spec = next((layout[g] for g in HOLDERS.get(group_of(node, sensitive), ()) if g in layout), None)
        passes[parse(spec) if spec else body].append(node)
    return dict(passes)


def quantize_decoder_layout(fp32_graph: str, out: str, precision: str, quant: Dict[str, object]) -> None:
    """The builder's fp32 decoder (q/k/v unfused) -> MatMulNBits by `quant["layout"]`, in `out`."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(fp32_graph)
    nodes = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    for (bits, block), include in sorted(plan(nodes, {"int4": 4, "int8": 8}[precision], quant).items()):
        include = set(include)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block,
                                         is_symmetric=bool(quant.get("is_symmetric", True)),
                                         accuracy_level=int(quant.get("accuracy_level", 4)),
                                         nodes_to_exclude=[n for n in nodes if n not in include],
                                         op_types_to_quantize=("MatMul",))
        quantizer.process()
        model = quantizer.model.model
    onnx.save_model(model, os.path.join(out, "decoder.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="decoder.onnx.data")
