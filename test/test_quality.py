"""mobilevlm-quality measures what it claims: the fp32 decoder scores as the PyTorch reference does.

The tiny-gqa checkpoint (grouped-query attention, head_dim 64, tied embeddings) goes through the
whole path: the language model out of a MobileVLM checkpoint, exported as mobilevlm-export does,
run token by token by the runtime's DecoderEngine, scored on a real text file.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from mobilevlm_ros.model.quant.quality import CONFIGS, Config, corpus_windows, load_language_model, measure

CORPUS = "/usr/share/common-licenses/GPL-3"  # in base-files: on every Debian/Ubuntu machine


@pytest.fixture(scope="module")
def report(checkpoints):
    lm = load_language_model(checkpoints("tiny-gqa"))
    with open(CORPUS) as f:
        text = f.read()
    configs = [Config("fp32", "fp32"), Config("int8 block 32", "int8", {"block_size": 32}),
               next(c for c in CONFIGS if c.quant.get("algo_config") == "hqq"),
               Config("int8 block 32, rotated", "int8", {"block_size": 32, "rotate": "hadamard"})]
    return lm, measure(lm, text, tokens=96, window=48, configs=configs, threads=1, log=lambda s: None)


def test_fp32_decoder_scores_as_the_reference(report):
    _, r = report
    fp32 = r["engines"][0]
    assert r["reference"]["tokens"] == 96
    assert abs(fp32["ppl"] / r["reference"]["ppl"] - 1) < 1e-3  # the graph is the model
    assert fp32["agreement"] == 1.0
    assert fp32["bytes"] > 0 and fp32["decode_tok_s"] > 0 and fp32["default"]


def test_reference_perplexity_is_the_mean_token_loss(report):
    """Checked against transformers' own loss on the same windows."""
    lm, r = report
    with open(CORPUS) as f:
        windows = corpus_windows(lm.encode(f.read()), 96, 48)
    losses = []
    with torch.no_grad():
        for w in windows:
            ids = torch.tensor([[lm.bos_id] + w])
            losses.append(lm.llm(ids, labels=ids).loss.item() * len(w))
    assert math.isclose(r["reference"]["ppl"], math.exp(sum(losses) / 96), rel_tol=1e-5)


def test_int8_decoder_is_close(report):
    _, r = report
    int8 = r["engines"][1]
    assert int8["precision"] == "int8" and abs(int8["ppl"] / r["reference"]["ppl"] - 1) < 0.01
    assert int8["agreement"] > 0.9


def test_a_rotated_decoder_is_scored_with_its_rotated_embeddings(report):
    """The rotated Llama's decoder fed the unrotated table would score as noise (an orthogonal
    matrix away): close to the reference means the rotation and its table went together."""
    _, r = report
    rotated = r["engines"][3]
    assert "error" not in rotated, rotated.get("error")
    assert abs(rotated["ppl"] / r["reference"]["ppl"] - 1) < 0.01 and rotated["agreement"] > 0.9


def test_hqq_decoder_runs_and_is_close(report):
    """The one configuration built outside the genai builder: its fp32 graph, onnxruntime's HQQ quantizer."""
    _, r = report
    hqq = r["engines"][2]
    assert "error" not in hqq, hqq.get("error")
    assert abs(hqq["ppl"] / r["reference"]["ppl"] - 1) < 0.05 and hqq["agreement"] > 0.8
    assert hqq["bytes"] < r["engines"][0]["bytes"] / 3  # 4-bit weights (+ fp32 scales, zero points), not fp32


def test_exporter_defaults_are_among_the_measured_configurations():
    from mobilevlm_ros.model.export import DEFAULT_QUANT

    for precision in DEFAULT_QUANT:
        assert [c for c in CONFIGS if c.precision == precision and c.is_default], precision


def test_cli_json(checkpoints, tmp_path):
    r = subprocess.run([sys.executable, "-m", "mobilevlm_ros.tools.quality", checkpoints("tiny-gqa"),
                        "--corpus", CORPUS, "--tokens", "32", "--window", "32", "--only", "fp32", "--json",
                        "--threads", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"reference", "engines"}  # the windows and choices stay inside
    (e,) = out["engines"]
    assert {"name", "precision", "config", "default", "ppl", "agreement", "bytes", "decode_tok_s"} <= set(e)


def test_too_short_a_corpus_is_a_clear_error(checkpoints, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.")
    r = subprocess.run([sys.executable, "-m", "mobilevlm_ros.tools.quality", checkpoints("tiny-gqa"),
                        "--corpus", str(short), "--tokens", "64"], capture_output=True, text=True)
    assert r.returncode == 1 and "fewer than the 64 asked for" in r.stderr and "Traceback" not in r.stderr


def test_llama_folder_drops_the_source_quantization(checkpoints, tmp_path):
    """A .gguf source loads de-quantized but keeps transformers' quantization_config; the tensors
    written are plain fp16, and that config would send the builder to its quantized-model loader."""
    from mobilevlm_ros.model.export import write_llama_folder

    lm = load_language_model(checkpoints("tiny-gqa"))
    lm.llm.config.quantization_config = {"quant_method": "gguf"}
    write_llama_folder(lm.llm, str(tmp_path), torch.float16, lm.write_tokenizer)
    with open(tmp_path / "config.json") as f:
        assert "quantization_config" not in json.load(f)


def test_export_takes_a_measured_configuration_by_name(checkpoints, tmp_path):
    """mobilevlm-export --quant NAME builds what mobilevlm-quality measured under that name."""
    from mobilevlm_ros.tools.export_cli import main as export_main

    config = next(c for c in CONFIGS if c.name == "int4 block 32 asymmetric, lm_head int8")
    out = tmp_path / "engine"
    assert export_main([checkpoints("tiny-gqa"), "--out", str(out), "--precision", "int4",
                        "--quant", config.name]) == 0
    with open(out / "manifest.json") as f:
        assert json.load(f)["quantization"] == config.quant


def test_export_refuses_an_unknown_configuration(capsys):
    from mobilevlm_ros.tools.export_cli import main as export_main

    with pytest.raises(SystemExit):
        export_main(["--synthetic", "tiny", "--out", "/nonexistent", "--precision", "int8",
                     "--quant", "int4 block 32"])
    assert "int8 configurations are:" in capsys.readouterr().err


def test_weights_read_per_token_of_an_fp32_decoder_is_its_matrices_and_norms(engines):
    """Known answer from the tiny config (hidden 64, intermediate 128, 2 layers, vocab 512): q, k, v, o,
    gate, up, down and lm_head in fp32, plus the RMSNorm weights; no embedding table (the runtime
    gathers rows itself), no rotary caches (one row read per step)."""
    from mobilevlm_ros.model.quant.quality import weights_read_per_token

    h, i, layers, vocab = 64, 128, 2, 512
    matrices = layers * (4 * h * h + 3 * h * i) + h * vocab
    norms = (2 * layers + 1) * h
    engine = engines("tiny", "fp32")
    assert weights_read_per_token(f"{engine}/decoder.onnx") == 4 * (matrices + norms)


def test_llamacpp_bytes_read_come_from_the_tensor_types(tmp_path):
    """Every tensor but the token embeddings, unless the output layer is tied to them."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, quantize

    from mobilevlm_ros.model.quant.llamacpp_quality import tensor_types, weights_read_per_token

    def write(path, names):
        w = GGUFWriter(str(path), "llama")
        for name in names:
            data = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
            if name.startswith("blk"):
                q = quantize(data, GGMLQuantizationType.Q8_0)
                w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(name, data)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    q8_row = 2 * (2 + 32)  # two Q8_0 blocks of 32 per 64-wide row: an f16 scale and 32 int8 each
    write(tmp_path / "untied.gguf", ["token_embd.weight", "output.weight", "blk.0.attn_q.weight"])
    assert weights_read_per_token(str(tmp_path / "untied.gguf")) == 8 * 64 * 4 + 8 * q8_row
    assert tensor_types(str(tmp_path / "untied.gguf")) == {"F32": 2, "Q8_0": 1}
    write(tmp_path / "tied.gguf", ["token_embd.weight", "blk.0.attn_q.weight"])
    assert weights_read_per_token(str(tmp_path / "tied.gguf")) == 8 * 64 * 4 + 8 * q8_row


def test_window_at_once_against_token_by_token(engines):
    """The check of onnxruntime issue 29853 (M > 1 against M = 1): float noise on a sound engine, and
    a prefill path that computes something else is caught."""
    import numpy as np

    from mobilevlm_ros.model.quant.quality import window_at_once_vs_steps
    from mobilevlm_ros.runtime import manifest as mf
    from mobilevlm_ros.runtime.engines import DecoderEngine

    engine = engines("tiny", "fp32")
    decoder = DecoderEngine(mf.load(engine), ["CPUExecutionProvider"], 1, max_length=64)
    table = np.load(f"{engine}/embed_tokens.npy")
    ids = list(range(3, 40))
    sound = window_at_once_vs_steps(decoder, table, ids)
    assert sound["relative"] < 1e-5 and sound["same_argmax"]

    run = decoder.run
    decoder.run = lambda embeds: run(embeds) + (np.arange(512) * 0.5 if len(embeds) > 1 else 0)
    broken = window_at_once_vs_steps(decoder, table, ids)
    assert broken["relative"] > 0.1 and not broken["same_argmax"]


def test_defaults_scores_only_what_a_plain_export_builds(checkpoints):
    from mobilevlm_ros.model.export import DEFAULT_QUANT

    r = subprocess.run([sys.executable, "-m", "mobilevlm_ros.tools.quality", checkpoints("tiny-gqa"),
                        "--corpus", CORPUS, "--tokens", "32", "--window", "32", "--defaults", "--json",
                        "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    engines = json.loads(r.stdout)["engines"]
    assert [e["precision"] for e in engines] == ["fp32", "int8", "int4"]
    assert [e["config"] for e in engines[1:]] == [DEFAULT_QUANT["int8"], DEFAULT_QUANT["int4"]]
    assert all(e["default"] and e["bytes"] > 0 and e["read_bytes"] > 0 for e in engines)
    assert engines[2]["read_bytes"] < engines[1]["read_bytes"] < engines[0]["read_bytes"]
