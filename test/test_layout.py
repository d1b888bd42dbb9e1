"""Decoders quantized by layout (model/quant/layout.py): each group gets the bits and block it claims.

Checked against the builder itself (the layout naming the builder's int8 groups at its block must
give the builder's own int4 weights bit for bit) and against the checkpoint's own weights (every
block de-quantized lands within half a step of the fp32 weight it came from).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import matmulnbits

from mobilevlm_ros.model.export import BUILDER_INT4, export
from mobilevlm_ros.model.quant.layout import parse, plan, sensitive_layers
from mobilevlm_ros.model.quant.quality import Config, build_configs, load_language_model

MIX = {"block_size": 32, "layout": {"lm_head": "int8/64", "sensitive": "int4/16", "gate_up": "int4/64"}}


@pytest.fixture(scope="module")
def built(checkpoints, tmp_path_factory):
    lm = load_language_model(checkpoints("tiny-gqa"))
    # the builder's own int4 (the CPU default until 2026-12-05, the CUDA one now)
    configs = [Config("builder default", "int4", dict(BUILDER_INT4)),
               Config("layout of the default", "int4",
                      {"block_size": 32, "layout": {"lm_head": "int8/32", "sensitive": "int8/32"}}),
               Config("mix", "int4", MIX)]
    tmp = str(tmp_path_factory.mktemp("layout"))
    graphs = {}
    for config, row, _, out, _ in build_configs(lm, configs, tmp, 33, 1, None, log=None):
        assert "error" not in row, row.get("error")
        graphs[config.name] = matmulnbits(out)
    return lm, graphs


def test_a_plain_int4_export_has_the_defaults_layout(engines):
    """mobilevlm-export's int4: lm_head and the sensitive v/down in int8 at block 64, the rest int4
    at block 32, no zero points."""
    graph = matmulnbits(engines("tiny-gqa", "int4"))
    assert len(graph) == 2 * 7 + 1
    for name, (attrs, arrays) in graph.items():
        int8 = name.startswith("/lm_head/") or (name.startswith("/model/layers.0/")
                                                 and ("v_proj" in name or "down_proj" in name))
        assert (attrs["bits"], attrs["block_size"]) == ((8, 64) if int8 else (4, 32)), name
        assert len(arrays) == 2, name


def test_the_builders_groups_give_the_builders_weights(built):
    _, graphs = built
    ours, builders = graphs["layout of the default"], graphs["builder default"]
    assert sorted(ours) == sorted(builders)
    for name, (attrs, arrays) in builders.items():
        assert ours[name][0] == attrs, name
        assert len(ours[name][1]) == len(arrays) == 2, name  # symmetric: B and scales only
        for a, b in zip(ours[name][1], arrays):
            np.testing.assert_array_equal(a, b, err_msg=name)


def expected(name: str):
    """(bits, block) MIX claims for a node of the 2-layer model (layer 0 is its one sensitive layer)."""
    if name.startswith("/lm_head/"):
        return 8, 64
    if "gate_proj" in name or "up_proj" in name:
        return 4, 64
    if name.startswith("/model/layers.0/") and ("v_proj" in name or "down_proj" in name):
        return 4, 16
    return 4, 32


def dequantize(attrs: dict, packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MatMulNBits' B ([N, blocks, block*bits/8] uint8, symmetric: zero point 2^(bits-1)) -> [K, N]."""
    bits, block, k = attrs["bits"], attrs["block_size"], attrs["K"]
    if bits == 4:  # two per byte, low nibble first
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], packed.shape[1], block)
    else:
        q = packed
    w = (q.astype(np.float32) - 2 ** (bits - 1)) * scales.reshape(q.shape[0], q.shape[1], 1)
    return w.reshape(q.shape[0], -1)[:, :k].T


def test_each_group_has_its_bits_and_block_and_rounds_the_checkpoint(built):
    """Known answers from the checkpoint: each block's scale is its largest weight over 2^(bits-1)
    (a wrong block size gives other maxima), and every weight comes back within half a step (a step
    where it sits beyond the grid's last positive level, which symmetric int4 cannot reach)."""
    lm, graphs = built
    mix = graphs["mix"]
    assert len(mix) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and lm_head
    modules = dict(lm.llm.named_modules())
    for name, (attrs, arrays) in mix.items():
        bits, block = attrs["bits"], attrs["block_size"]
        assert (bits, block) == expected(name), name
        assert len(arrays) == 2, f"{name}: zero points in a symmetric layout"
        module = name.split("/MatMul")[0].strip("/").replace("/attn/", ".self_attn.").replace("/", ".")
        weight = modules[module].weight.detach().float().numpy()  # [N, K]
        # the builder was fed fp16 weights: those are the values rounded
        weight = weight.astype(np.float16).astype(np.float32)
        n, k = weight.shape
        padded = np.pad(weight, ((0, 0), (0, -k % block))).reshape(n, -1, block)
        levels = 2 ** (bits - 1)
        np.testing.assert_allclose(np.abs(arrays[1]).reshape(n, -1), np.abs(padded).max(-1) / levels,
                                   rtol=1e-6, err_msg=name)
        step = np.repeat(np.abs(arrays[1]).reshape(n, -1), block, axis=1)[:, :k]
        error = np.abs(dequantize(attrs, *arrays).T - weight)
        beyond = np.abs(weight) > (levels - 0.5) * step
        assert np.all(error <= np.where(beyond, 1.0, 0.5) * step * (1 + 1e-5) + 1e-8), name


def test_layout_entries_are_checked():
    assert parse("int4/16") == (4, 16) and parse("int8/128") == (8, 128)
    for bad in ("int3/32", "int4/24", "int4", "4/32"):
        with pytest.raises(ValueError):
            parse(bad)
    with pytest.raises(ValueError, match="known are"):
        plan(["/lm_head/MatMul"], 4, {"block_size": 32, "layout": {"attention": "int8/32"}})


def test_plan_covers_every_matmul_once():
    nodes = [f"/model/layers.{i}/{p}/MatMul" for i in range(24)
             for p in ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj",
                       "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")] + ["/lm_head/MatMul"]
    passes = plan(nodes, 4, MIX)
    assert sorted(n for group in passes.values() for n in group) == sorted(nodes)
    assert len(passes[(4, 16)]) == 2 * 12 and len(passes[(4, 64)]) == 2 * 24
    assert passes[(8, 64)] == ["/lm_head/MatMul"]
    assert len(passes[(4, 32)]) == len(nodes) - 24 - 48 - 1
    # a sensitive projection named alone takes its own entry; the other keeps "sensitive"'s
    split = plan(nodes, 4, {"block_size": 32, "layout": {"sensitive": "int8/32", "sensitive_v": "int4/16"}})
    layers = sensitive_layers(24)
    assert sorted(split[(4, 16)]) == sorted(f"/model/layers.{i}/attn/v_proj/MatMul" for i in layers)
    assert sorted(split[(8, 32)]) == sorted(f"/model/layers.{i}/mlp/down_proj/MatMul" for i in layers)
    # "down" holds every down projection, but a sensitive one follows "sensitive" where it is named
    downs = plan(nodes, 8, {"block_size": 64, "layout": {"down": "int8/32"}})
    assert sorted(downs[(8, 32)]) == sorted(f"/model/layers.{i}/mlp/down_proj/MatMul" for i in range(24))
    both = plan(nodes, 4, {"block_size": 32, "layout": {"down": "int4/64", "sensitive": "int8/64"}})
    assert sorted(both[(4, 64)]) == sorted(f"/model/layers.{i}/mlp/down_proj/MatMul"
                                           for i in range(24) if i not in layers)
    assert len(both[(8, 64)]) == 2 * len(layers)


def test_a_layout_is_refused_for_cuda_engines(tmp_path):
    """Layouts round the fp32 graph for the CPU's kernels; CUDA engines take the builder's own int4
    (test_gpu_paths checks the default does)."""
    with pytest.raises(ValueError, match="CPU engines only"):
        export("never-read", str(tmp_path), "int4", "cuda",
               quant={"block_size": 32, "layout": {"gate_up": "int4/64"}})
