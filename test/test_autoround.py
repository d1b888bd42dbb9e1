"""AutoRound's codes in MatMulNBits (model/quant/autoround.py): the packed weights are AutoRound's own,
bit for bit, on onnxruntime's symmetric grid with no zero points, at the block and bits claimed; the
calibrated engine agrees with fp32 at least as well as plain rounding of the same layout; and the
export is deterministic for a seed."""

from __future__ import annotations

import copy
import hashlib
import os

import numpy as np
import pytest
import torch
from conftest import matmulnbits

from mobilevlm_ros.model.export import autoround_int8_plan, export
from mobilevlm_ros.model.quant import autoround as AR
from mobilevlm_ros.model.quant import calibration as cal
from mobilevlm_ros.model.quant.quality import CONFIGS, load_language_model, measure, with_iters

CORPUS = "/usr/share/common-licenses/GPL-3"
QUICK = {"iters": 5, "samples": 8}  # enough to move every block's loss; seconds, not hours, here


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_packing_round_trips_and_matches_the_kernels_layout():
    rng = np.random.default_rng(0)
    codes = rng.integers(-8, 8, (5, 70)).astype(np.int8)  # 70: a last, partial block of 32
    scales = rng.normal(0, 0.1, (5, 3)).astype(np.float32)
    packed, flat = AR.pack_int4(codes, scales, 32)
    assert packed.shape == (5, 3, 16) and packed.dtype == np.uint8 and flat.shape == (15,)
    assert packed[0, 0, 0] == (int(codes[0, 0]) + 8) | ((int(codes[0, 1]) + 8) << 4)  # even: low nibble
    want = codes.astype(np.float32) * np.repeat(scales, 32, axis=1)[:, :70]
    assert np.array_equal(AR.dequantize_int4(packed, flat, 70, 32), want)


def test_rounding_to_nearest_uses_onnxruntimes_grid():
    """The largest-magnitude weight of a block maps to exactly -8 (a signed scale), as onnxruntime's
    own symmetric quantizer does."""
    layer = torch.nn.Linear(64, 3, bias=False)
    with torch.no_grad():
        layer.weight.normal_()
        layer.weight[0, 5] = 9.0  # positive peak: its scale is negative
    holder = torch.nn.Module()
    holder.proj = layer
    ((q, s),) = AR.rtn_codes(holder, 32).values()
    assert q[0, 5] == -8 and s[0, 0] == pytest.approx(-9.0 / 8)
    assert q.min() >= -8 and q.max() <= 7


@pytest.fixture(scope="module")
def tiny_codes(checkpoints):
    """AutoRound on the tiny Llama (block 32), and that Llama afterwards: its Linear weights are then
    AutoRound's own de-quantized ones."""
    lm = load_language_model(checkpoints("tiny"))
    llm = copy.deepcopy(lm.llm)
    source = cal.Source("prose", text=cal.prose_text())
    samples = cal.text_calibration(lm.encode, lm.bos_id, source, count=12, seq_len=64).samples
    return AR.learn(llm, samples, 32, iters=10, seed=0, keep=["model.layers.0.self_attn.v_proj"]), llm


def test_autorounds_int4_weights_are_what_matmulnbits_holds_bit_for_bit(tiny_codes, tmp_path):
    codes, llm = tiny_codes
    assert "lm_head" not in codes and "model.layers.0.self_attn.v_proj" not in codes  # kept in float
    modules = dict(llm.named_modules())
    plan = {64: ["/model/layers.0/attn/v_proj/MatMul", "/lm_head/MatMul"]}
    graph = _fp32_graph(tmp_path)
    AR.quantize_graph(graph, str(tmp_path / "out"), codes, 32, plan)
    nodes = matmulnbits(str(tmp_path / "out"))
    four = {name: v for name, v in nodes.items() if v[0]["bits"] == 4}
    assert len(four) == len(codes) and len(nodes) == len(codes) + 2
    for name, (attrs, arrays) in four.items():
        assert attrs["block_size"] == 32 and len(arrays) == 2, name  # B and scales: no zero points
        weight = modules[AR.module_of(name[:-len("_Q4")])].weight.detach().numpy()
        deq = AR.dequantize_int4(arrays[0], arrays[1], attrs["K"], 32)
        assert np.array_equal(deq, weight), name  # AutoRound's own scale * code, exactly
    assert {a["bits"] for a, _ in nodes.values()} == {4, 8}


def _fp32_graph(tmp_path) -> str:
    """The builder's fp32 decoder of the tiny checkpoint, q/k/v unfused."""
    import sys

    from mobilevlm_ros.model.export import builder_options, run_builder, sentencepiece_tokenizer_writer
    from mobilevlm_ros.model.llama_folder import write_llama_folder
    from mobilevlm_ros.model.loader import load_checkpoint
    from mobilevlm_ros.model.synthetic import write_synthetic

    ckpt = write_synthetic("tiny", str(tmp_path / "ckpt"))
    folder, dst = str(tmp_path / "llama"), str(tmp_path / "onnx")
    os.makedirs(folder)
    write_llama_folder(load_checkpoint(ckpt).llm, folder, torch.float32,
                       sentencepiece_tokenizer_writer(os.path.join(ckpt, "tokenizer.model")))
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", folder, "-o", dst, "-p", "fp32",
           "-e", "cpu", "-c", str(tmp_path / "cache"), "--extra_options",
           *builder_options("fp32", {"algo_config": "autoround"})]
    run_builder(cmd, folder)
    return os.path.join(dst, "decoder.onnx")


def test_the_export_has_the_blocks_and_bits_it_claims_and_is_deterministic(checkpoints, tmp_path, block=128):
    quant = {"algo_config": "autoround", "block_size": block, "layout": {"lm_head": "int8/64"}, **QUICK}
    a, b = (export(checkpoints("tiny"), str(tmp_path / name), "int4", "cpu", quant=dict(quant),
                   log=lambda m: None) for name in "ab")
    assert _sha(os.path.join(a, "decoder.onnx.data")) == _sha(os.path.join(b, "decoder.onnx.data"))
    nodes = matmulnbits(a)
    for name, (attrs, arrays) in nodes.items():
        want = (8, 64) if name.startswith("/lm_head/") else (4, block)
        assert (attrs["bits"], attrs["block_size"]) == want and len(arrays) == 2, name


def test_calibrated_agrees_with_fp32_at_least_as_well_as_rounding_of_the_same_layout(checkpoints):
    """Teacher-forced on text AutoRound did not see: AutoRound block 32 with the default's int8
    matrices against the same layout rounded to nearest on the same grid (the int4 default)."""
    lm = load_language_model(checkpoints("tiny"))
    with open(CORPUS) as f:
        text = f.read()
    half = len(text) // 2
    source = cal.Source("GPL-3, second half", text=text[half:])
    calibration = cal.text_calibration(lm.encode, lm.bos_id, source, count=16, seq_len=64)
    by_name = {c.name: c for c in CONFIGS}
    rounding = by_name["int4 block 32, lm_head and sensitive int8 block 64"]
    calibrated = by_name["int4 AutoRound block 32, lm_head and sensitive int8 block 64"]
    calibrated = with_iters(calibrated, 50)
    report = measure(lm, text[:half], tokens=256, window=64, configs=[rounding, calibrated], threads=1,
                     log=None, calibration=calibration)
    rtn, ar = report["engines"]
    assert "error" not in ar, ar.get("error")
    assert ar["read_bytes"] == rtn["read_bytes"]  # the same layout: bits, blocks, no zero points
    assert ar["agreement"] >= rtn["agreement"], (ar["agreement"], rtn["agreement"])


def test_int8_matrices_of_an_autoround_configuration():
    nodes = [f"/model/layers.{i}/{p}/{n}_proj/MatMul" for i in range(8)
             for p, n in [("attn", "v"), ("mlp", "down"), ("mlp", "up")]] + ["/lm_head/MatMul"]
    quant = {"algo_config": "autoround", "block_size": 32, "layout": {"lm_head": "int8/64"}}
    plan = autoround_int8_plan(quant, nodes)
    assert plan == {64: ["/lm_head/MatMul"]}
    chosen = autoround_int8_plan({"algo_config": "autoround", "block_size": 32,
                                  "int8": ["/model/layers.3/mlp/up_proj/MatMul"], "int8_block": 32}, nodes)
    assert chosen == {32: ["/model/layers.3/mlp/up_proj/MatMul"]}
    assert AR.node_of("model.layers.3.mlp.up_proj") == "/model/layers.3/mlp/up_proj/MatMul"
    assert AR.module_of("/model/layers.3/attn/v_proj/MatMul") == "model.layers.3.self_attn.v_proj"


def test_the_version_read_is_the_version_pinned():
    setup = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    with open(setup) as f:
        assert f'"{AR.AUTOROUND}"' in f.read()


def test_int8_by_measurement_spends_the_rules_bytes_where_the_loss_is(checkpoints, tmp_path):
    """Each matrix's 4-bit sensitivity on the calibration samples; int8 where it buys the most per
    byte, within the bytes llama.cpp's rule spends; the export holds exactly what was chosen."""
    from mobilevlm_ros.model.quant import sensitivity as S

    lm = load_language_model(checkpoints("tiny"))
    samples = cal.text_calibration(lm.encode, lm.bos_id, cal.Source("prose", text=cal.prose_text()),
                                   count=6, seq_len=64).samples
    scores = S.sensitivities(lm.llm, samples, 32)
    assert set(scores) == {n for n, m in lm.llm.named_modules() if isinstance(m, torch.nn.Linear)}
    assert all(np.isfinite(v) for v in scores.values()) and max(scores.values()) > 0
    # known answer: the whole model run with that matrix alone rounded (no layers skipped, no cache)
    targets = [lm.llm(**S._inputs(s)).logits[0, :-1].argmax(-1) for s in samples]

    def loss():
        with torch.no_grad():
            return np.mean([float(torch.nn.functional.cross_entropy(lm.llm(**S._inputs(s)).logits[0, :-1], t))
                            for s, t in zip(samples, targets)])

    base = loss()
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head"):
        module = dict(lm.llm.named_modules())[name]
        original = module.weight  # replaced, not written into: a tied lm_head shares the embedding's
        module.weight = torch.nn.Parameter(S._round_to_int4(original.data, 32))
        try:
            assert scores[name] == pytest.approx(loss() - base, rel=1e-3, abs=1e-6), name
        finally:
            module.weight = original
    budget = S.rule_budget(lm.llm, 32)
    chosen = S.choose_int8(lm.llm, scores, 32, budget)
    assert 0 < S.extra_bytes(lm.llm, chosen, 32) <= budget
    # every matrix left out costs more than what remains of the budget, or hurts less per byte
    remaining = budget - S.extra_bytes(lm.llm, chosen, 32)
    per_byte = {n: scores[n] / S.extra_bytes(lm.llm, [n], 32) for n in scores}
    worst_chosen = min(per_byte[n] for n in chosen)
    for name in set(scores) - set(chosen):
        assert S.extra_bytes(lm.llm, [name], 32) > remaining or per_byte[name] <= worst_chosen, name

    # a budget lm_head does not fit in: it must then be 4-bit like the rest
    small = 2 * S.extra_bytes(lm.llm, ["model.layers.0.self_attn.q_proj"], 32)
    assert small < S.extra_bytes(lm.llm, ["lm_head"], 32)
    quant = {"algo_config": "autoround", "block_size": 32, "int8": "measured", "int8_budget": small, **QUICK}
    engine = export(checkpoints("tiny"), str(tmp_path / "e"), "int4", "cpu", quant=quant, log=lambda m: None)
    import json

    with open(os.path.join(engine, "manifest.json")) as f:
        recorded = json.load(f)["quantization"]["int8"]
    nodes = matmulnbits(engine)
    eight = sorted(n[:-len("_Q8")] for n, (a, _) in nodes.items() if a["bits"] == 8)
    assert eight == sorted(recorded) and recorded  # what was chosen is what the graph holds
    # and every other matrix, lm_head too (AutoRound leaves it), is 4-bit: none stays float
    linears = sum(isinstance(m, torch.nn.Linear) for m in lm.llm.modules())
    assert len(nodes) == linears and sum(a["bits"] == 4 for a, _ in nodes.values()) == linears - len(eight)


def test_a_row_at_other_iterations_is_named_so_and_found_by_that_name():
    from mobilevlm_ros.model.quant.quality import config_named

    row = config_named("int4 AutoRound block 64, lm_head int8 (50 iters)", "int4")
    assert row.quant["iters"] == 50 and row.quant["block_size"] == 64
    assert row.name == "int4 AutoRound block 64, lm_head int8 (50 iters)"
    assert "iters" not in config_named("int4 AutoRound block 64, lm_head int8").quant  # its own 200
    # iterations of a row that learns none
    assert config_named("int4 block 32, lm_head and sensitive int8 block 64 (50 iters)") is None
    assert config_named("int4 AutoRound block 64, lm_head int8", "int8") is None
