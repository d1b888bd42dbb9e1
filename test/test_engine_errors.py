"""A missing, corrupt or mismatched engine is one clear error naming the file, never a deep crash."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import CORRUPTIONS

from mobilevlm_ros.runtime import manifest as mf
from mobilevlm_ros.runtime.errors import EngineError
from mobilevlm_ros.runtime.vlm import VLM


@pytest.fixture
def engine_copy(tmp_path, engines):
    dst = str(tmp_path / "engine")
    shutil.copytree(engines("tiny", "fp32"), dst)
    return dst


def _edit_manifest(engine, fn):
    path = os.path.join(engine, "manifest.json")
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


def test_missing_directory_and_manifest(tmp_path, engine_copy):
    with pytest.raises(EngineError, match="does not exist"):
        VLM(str(tmp_path / "nowhere"))
    os.remove(os.path.join(engine_copy, "manifest.json"))
    with pytest.raises(EngineError, match="no manifest.json"):
        VLM(engine_copy)


def test_unreadable_or_foreign_manifest(engine_copy):
    path = os.path.join(engine_copy, "manifest.json")
    with open(path, "w") as f:
        f.write("{ truncated")
    with pytest.raises(EngineError, match="manifest.json: unreadable"):
        VLM(engine_copy)
    with open(path, "w") as f:
        json.dump({"format": "something-else"}, f)
    with pytest.raises(EngineError, match="not a mobilevlm-engine manifest"):
        VLM(engine_copy)


def test_missing_file_is_named(engine_copy):
    os.remove(os.path.join(engine_copy, "decoder.onnx.data"))
    with pytest.raises(EngineError, match="engine file decoder.onnx.data: missing"):
        VLM(engine_copy)


def test_truncated_file_is_named(engine_copy):
    path = os.path.join(engine_copy, "vision.onnx")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(EngineError, match="engine file vision.onnx: 100 bytes"):
        VLM(engine_copy)


def test_altered_byte_fails_the_checksum(engine_copy):
    path = os.path.join(engine_copy, "decoder.onnx.data")
    with open(path, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(EngineError, match="engine file decoder.onnx.data: sha256 mismatch"):
        VLM(engine_copy)


def test_garbage_graph_is_an_engine_error_even_unverified(engine_copy):
    path = os.path.join(engine_copy, "vision.onnx")
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\x00garbage" * (size // 8) + b"\x00" * (size % 8))
    with pytest.raises(EngineError, match="engine file vision.onnx: onnxruntime cannot load it"):
        VLM(engine_copy, verify=False)


def test_manifest_that_does_not_match_the_graphs(engine_copy):
    _edit_manifest(engine_copy, lambda d: d["model"].update(hidden_size=128))
    with pytest.raises(EngineError, match="vision.onnx: output .* does not match the manifest"):
        VLM(engine_copy)


def test_manifest_missing_a_model_key_or_newer_format(engine_copy):
    _edit_manifest(engine_copy, lambda d: d["model"].pop("image_tokens"))
    with pytest.raises(EngineError, match="manifest.json: model.image_tokens: missing"):
        VLM(engine_copy)
    _edit_manifest(engine_copy, lambda d: d.update(format_version=99))
    with pytest.raises(EngineError, match="format version 99 is not supported"):
        VLM(engine_copy)


def test_embedding_table_of_the_wrong_shape(engine_copy):
    path = os.path.join(engine_copy, "embed_tokens.npy")
    np.save(path, np.zeros((10, 64), np.float32))
    entry = {"path": "embed_tokens.npy", "bytes": os.path.getsize(path), "sha256": mf.sha256(path)}
    _edit_manifest(engine_copy, lambda d: d["files"].update(embeddings=entry))
    with pytest.raises(EngineError,
                       match=r"embed_tokens.npy: float32 \(10, 64\), manifest says float \(512, 64\)"):
        VLM(engine_copy)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_engines_are_one_engine_error_naming_the_field_or_file(corrupt_engine, corruption):
    engine = corrupt_engine(corruption)
    with pytest.raises(EngineError) as e:
        VLM(engine)
    assert CORRUPTIONS[corruption] in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("field, value, needle", [
    ("image_size", 0, "model.image_size: 0 is not a positive integer"),
    ("image_tokens", True, "model.image_tokens: True is not a positive integer"),
    ("eos_token_id", -1, "model.eos_token_id: -1 is not a token id"),
    ("template", "chatml", "model.template: 'chatml' is not one of v1"),
    ("image_std", [0.2, 0.0, 0.3], "model.image_std: [0.2, 0.0, 0.3] is not a list of 3 positive numbers"),
    ("image_mean", [0.5, "x", 0.5], "model.image_mean"),
])
def test_manifest_values_are_checked_not_only_keys(engine_copy, field, value, needle):
    _edit_manifest(engine_copy, lambda d: d["model"].update({field: value}))
    with pytest.raises(EngineError, match=re.escape(needle)):
        VLM(engine_copy)


def test_decoder_io_names_must_hold_one_layer_placeholder(engine_copy):
    _edit_manifest(engine_copy, lambda d: d["decoder_io"].update(past_key="past_key_values.key"))
    with pytest.raises(EngineError,
                       match="decoder_io.past_key: 'past_key_values.key' is not a name with one %d"):
        VLM(engine_copy)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_engine_files_must_lie_inside_the_engine_folder(tmp_path, engine_copy, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not yours" * 100)
    rel = {"absolute": str(secret), "dotdot": "../secret.bin", "symlink": "link.bin"}[where]
    if where == "symlink":
        os.symlink(secret, os.path.join(engine_copy, "link.bin"))
    entry = {"path": rel, "bytes": 1, "sha256": "0" * 64}  # a wrong size: must not be reported
    _edit_manifest(engine_copy, lambda d: d["files"].update(tokenizer=entry))
    with pytest.raises(EngineError, match="lies outside the engine folder") as e:
        VLM(engine_copy)
    assert "900" not in str(e.value)  # the outside file's size is not revealed


def test_a_symlink_inside_the_folder_is_fine(engine_copy):
    os.rename(os.path.join(engine_copy, "tokenizer.model"), os.path.join(engine_copy, "real.model"))
    os.symlink("real.model", os.path.join(engine_copy, "tokenizer.model"))
    assert VLM(engine_copy).tokenizer.vocab_size == 512


def test_a_tokenizer_larger_than_the_model_is_refused(engine_copy):
    _edit_manifest(engine_copy, lambda d: d["model"].update(vocab_size=100))
    with pytest.raises(EngineError, match="tokenizer.model: 512 tokens, the model has 100"):
        VLM(engine_copy)


def test_an_onnxruntime_failure_while_running_is_one_engine_error(engines):
    import onnxruntime as ort

    vlm = VLM(engines("tiny", "fp32"), backend="cpu", threads=1)
    # A real onnxruntime error from a real session: pixels of the wrong size for the vision graph.
    with pytest.raises(EngineError, match="engine file vision.onnx: onnxruntime failed while running it"):
        vlm.vision(np.zeros((1, 3, 50, 50), np.float32))
    assert isinstance(vlm.vision.session, ort.InferenceSession)
    answer = vlm.describe(np.full((48, 64, 3), 90, np.uint8), "What is it?")  # and it still answers
    assert answer.timings.new_tokens >= 1


def test_export_refuses_a_head_dim_the_runtime_cannot_run(checkpoints, tmp_path):
    import json as _json

    from mobilevlm_ros.model.export import export
    from mobilevlm_ros.runtime.errors import CheckpointError

    src = tmp_path / "ckpt"
    shutil.copytree(checkpoints("tiny"), src)
    cfg = _json.loads((src / "config.json").read_text())
    cfg.update(hidden_size=96, num_attention_heads=4, num_key_value_heads=4)  # head_dim 24
    (src / "config.json").write_text(_json.dumps(cfg))
    with pytest.raises(CheckpointError, match="head_dim 24 .* multiple of 16"):
        export(str(src), str(tmp_path / "e"), "fp32", "cpu", log=lambda s: None)
    assert not (tmp_path / "e").exists()  # refused before anything was written


def _caption(*args):
    return subprocess.run([sys.executable, "-m", "mobilevlm_ros.tools.caption", *args],
                          capture_output=True, text=True)


def test_caption_cli_errors_are_one_line(tmp_path, engines, engine_copy, corrupt_engine):
    good_engine = engines("tiny", "fp32")
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (10, 200, 30)).save(img)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    os.remove(os.path.join(engine_copy, "tokenizer.model"))
    cases = [
        (good_engine, str(tmp_path / "missing.png"), "missing.png"),
        (good_engine, str(corrupt), "corrupt.jpg"),
        (engine_copy, str(img), "tokenizer.model"),
    ]
    for corruption in sorted(CORRUPTIONS):
        cases.append((corrupt_engine(corruption), str(img), CORRUPTIONS[corruption]))
    for engine, image, needle in cases:
        r = _caption(engine, image)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert (len(lines) == 1 and lines[0].startswith("mobilevlm-caption: error:")
                and needle in lines[0]), r.stderr


def test_caption_cli_json(tmp_path, engines):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(img)
    r = _caption(engines("tiny", "fp32"), str(img), "--json", "--max-tokens", "5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["image_size"] == [64, 48]
    assert out["timings"]["new_tokens"] <= 5 and "boxes" in out and isinstance(out["text"], str)


def test_execution_providers_follow_target_and_what_is_installed(monkeypatch):
    from mobilevlm_ros.runtime import sessions

    monkeypatch.setattr(sessions.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert sessions.choose_providers("cpu") == ["CPUExecutionProvider"]
    assert sessions.choose_providers("cuda") == ["CPUExecutionProvider"]  # a CUDA engine still runs on CPU
    with pytest.raises(EngineError,
                       match="backend 'cuda' requested but onnxruntime offers only CPUExecutionProvider"):
        sessions.choose_providers("cpu", "cuda")
    with pytest.raises(EngineError, match="backend 'npu'"):
        sessions.choose_providers("cpu", "npu")
    monkeypatch.setattr(sessions.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider"])
    chosen = sessions.choose_providers("cuda", cache_dir="/tmp/trt")
    assert [p if isinstance(p, str) else p[0] for p in chosen] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[0][1]["trt_engine_cache_path"] == "/tmp/trt"
    assert sessions.choose_providers("cuda", "cpu") == ["CPUExecutionProvider"]


def test_export_refuses_fp16_for_cpu(checkpoints, tmp_path):
    from mobilevlm_ros.model.export import export

    with pytest.raises(ValueError, match="fp16 engines are for --target cuda"):
        export(checkpoints("tiny"), str(tmp_path / "e"), "fp16", "cpu", log=lambda s: None)
