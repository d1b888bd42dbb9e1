"""manifest.json of an engine directory: what the engine is, and the files it is made of.

The runtime reads only the manifest to know what it runs. Every file is listed with its size and
sha256; a missing, truncated or altered file is an EngineError naming the file, before any
onnxruntime session sees it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict

from .errors import EngineError

FORMAT = "mobilevlm-engine"
FORMAT_VERSION = 1
NAME = "manifest.json"
# What the runtime needs from each engine kind.
REQUIRED_ROLES = {"onnx": ("vision", "decoder", "embeddings", "tokenizer")}
REQUIRED_MODEL_KEYS = ("version", "image_size", "image_tokens", "hidden_size", "num_layers", "num_kv_heads",
                       "head_dim", "vocab_size", "context_length", "bos_token_id", "eos_token_id", "template")


def sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def write(engine_dir: str, manifest: dict, roles: Dict[str, str]) -> str:
    """Fill manifest['files'] (role -> path, size, sha256) and write manifest.json."""
    manifest = dict(manifest)
    manifest["files"] = {
        role: {"path": rel, "bytes": os.path.getsize(os.path.join(engine_dir, rel)),
               "sha256": sha256(os.path.join(engine_dir, rel))}
        for role, rel in roles.items()
    }
    path = os.path.join(engine_dir, NAME)
    with open(path, "w") as f:
        json.dump(manifest, f, indent=2)
    return path


class Manifest:
    """A verified manifest: `m.path("decoder")`, `m.model["hidden_size"]`, ..."""

    def __init__(self, engine_dir: str, data: dict):
        self.dir = engine_dir
        self.data = data
        self.model: dict = data["model"]
        self.precision: str = data.get("precision", "")
        self.target: str = data.get("target", "cpu")
        self.files: dict = data["files"]

    def path(self, role: str) -> str:
        return os.path.join(self.dir, self.files[role]["path"])

    @property
    def kind(self) -> str:
        return self.data.get("engine", "onnx")


def load(engine_dir: str, verify: bool = True) -> Manifest:
    """Read and check an engine directory. verify=True also hashes every file (about 1 s per GB)."""
    if not os.path.isdir(engine_dir):
        raise EngineError(f"engine directory {engine_dir}: does not exist")
    path = os.path.join(engine_dir, NAME)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise EngineError(f"engine directory {engine_dir}: no {NAME}; re-run mobilevlm-export") from None
    except (OSError, ValueError) as e:
        raise EngineError(f"{path}: unreadable ({e}); re-run mobilevlm-export") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EngineError(f"{path}: not a {FORMAT} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{path}: format version {data.get('format_version')} is not supported "
                          f"(this runtime reads version {FORMAT_VERSION}); re-run mobilevlm-export")
    model, files = data.get("model"), data.get("files")
    if not isinstance(model, dict) or not isinstance(files, dict):
        raise EngineError(f"{path}: 'model' and 'files' sections are required")
    missing_keys = [k for k in REQUIRED_MODEL_KEYS if k not in model]
    if missing_keys:
        raise EngineError(f"{path}: model section lacks {', '.join(missing_keys)}")
    kind = data.get("engine", "onnx")
    for role in REQUIRED_ROLES.get(kind, ()):
        if role not in files:
            raise EngineError(f"{path}: no '{role}' file listed")
    for role, entry in files.items():
        f = os.path.join(engine_dir, entry["path"])
        if not os.path.isfile(f):
            raise EngineError(f"engine file {entry['path']}: missing from {engine_dir}; re-run mobilevlm-export")
        size = os.path.getsize(f)
        if size != entry["bytes"]:
            raise EngineError(f"engine file {entry['path']}: {size} bytes, manifest says {entry['bytes']} "
                              "(truncated or replaced); re-run mobilevlm-export")
        if verify and sha256(f) != entry["sha256"]:
            raise EngineError(f"engine file {entry['path']}: sha256 mismatch with manifest; re-run mobilevlm-export")
    return Manifest(engine_dir, data)
