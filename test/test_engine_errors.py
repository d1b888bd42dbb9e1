"""A missing, corrupt or mismatched engine is one clear error naming the file, never a deep crash."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

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
    with pytest.raises(EngineError, match=r"embed_tokens.npy: float32 \(10, 64\), manifest says float \(512, 64\)"):
        VLM(engine_copy)


def _caption(*args):
    return subprocess.run([sys.executable, "-m", "mobilevlm_ros.tools.caption", *args], capture_output=True, text=True)


def test_caption_cli_errors_are_one_line(tmp_path, engines, engine_copy):
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
    for engine, image, needle in cases:
        r = _caption(engine, image)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mobilevlm-caption: error:") and needle in lines[0], r.stderr


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
    with pytest.raises(EngineError, match="backend 'cuda' requested but onnxruntime offers only CPUExecutionProvider"):
        sessions.choose_providers("cpu", "cuda")
    with pytest.raises(EngineError, match="backend 'npu'"):
        sessions.choose_providers("cpu", "npu")
    monkeypatch.setattr(sessions.ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    chosen = sessions.choose_providers("cuda", cache_dir="/tmp/trt")
    assert [p if isinstance(p, str) else p[0] for p in chosen] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[0][1]["trt_engine_cache_path"] == "/tmp/trt"
    assert sessions.choose_providers("cuda", "cpu") == ["CPUExecutionProvider"]


def test_export_refuses_fp16_for_cpu(checkpoints, tmp_path):
    from mobilevlm_ros.model.export import export

    with pytest.raises(ValueError, match="fp16 engines are for --target cuda"):
        export(checkpoints("tiny"), str(tmp_path / "e"), "fp16", "cpu", log=lambda s: None)
