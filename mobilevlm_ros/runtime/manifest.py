"""manifest.json of an engine directory: the one description of a model variant (as
genai_config.json is for onnxruntime-genai), and the files it is made of.

    model        id, version (v1/v2), projector, vision_tower: what it was exported from;
                 template (the chat template the runtime builds prompts with, runtime/prompt.py);
                 image_size, image_tokens, image_mean, image_std: preprocessing and vision output;
                 hidden_size, num_layers, num_heads, num_kv_heads, head_dim, vocab_size,
                 context_length, bos/eos_token_id: the decoder's shape and tokens
    precision, vision_precision, quantization, target: how it was built (mobilevlm-export)
    calibration  what calibrated a calibrated quantization (name, sha256, samples, tokens), else null
    decoder_io   the decoder graph's input/output names
    files        role -> path, bytes, sha256

The exporter writes it from the runtime's own constants; fields an older exporter wrote that only
ever held one value (family, image_aspect_ratio) or repeated another (block_size, in quantization)
are ignored, so older engines load.
The runtime reads only the manifest to know what it runs. Every file is listed with its size and
sha256; a missing, truncated or altered file is an EngineError naming the file, before any
onnxruntime session sees it. The manifest itself is checked field by field (types and values, not
only keys), and every file it names must lie inside the engine folder, symlinks resolved: an edited
or hostile manifest is refused with the field it got wrong, never followed elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any, Callable, Dict, Tuple

from .errors import EngineError
from .prompt import TEMPLATES

FORMAT = "mobilevlm-engine"
FORMAT_VERSION = 1
NAME = "manifest.json"
# The files the runtime needs, by role.
REQUIRED_ROLES = ("vision", "decoder", "embeddings", "tokenizer")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
TARGETS = ("cpu", "cuda")
# quantization.block_size of int8/int4 engines: the sizes onnxruntime's MatMulNBits takes.
BLOCK_SIZES = (16, 32, 64, 128, 256)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive(v: Any) -> bool:
    return _integer(v) and v > 0


def _token_id(v: Any) -> bool:
    return _integer(v) and v >= 0


def _name(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _three_numbers(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 3
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))


def _layer_pattern(v: Any) -> bool:
    return _name(v) and v.count("%d") == 1 and v.count("%") == 1


_Field = Tuple[Callable[[Any], bool], str]
POSITIVE: _Field = (_positive, "a positive integer")
TOKEN_ID: _Field = (_token_id, "a token id (an integer >= 0)")
TEXT: _Field = (_name, "a non-empty string")
# Every field the runtime reads, with what it must be. Optional ones may be absent, never wrong.
MODEL_FIELDS: Dict[str, _Field] = {
    "version": TEXT, "template": (lambda v: v in TEMPLATES, f"one of {', '.join(TEMPLATES)}"),
    "image_size": POSITIVE, "image_tokens": POSITIVE, "hidden_size": POSITIVE, "num_layers": POSITIVE,
    "num_kv_heads": POSITIVE, "head_dim": POSITIVE, "vocab_size": POSITIVE, "context_length": POSITIVE,
    "bos_token_id": TOKEN_ID, "eos_token_id": TOKEN_ID,
}
OPTIONAL_MODEL_FIELDS: Dict[str, _Field] = {
    "id": (lambda v: isinstance(v, str), "a string"),
    "image_mean": (_three_numbers, "a list of 3 numbers"),
    "image_std": (lambda v: _three_numbers(v) and min(v) > 0, "a list of 3 positive numbers"),
    # Appended to typed questions (answer_types.DEFAULT_ANSWER_HINT when absent; "" for none).
    "answer_hint": (lambda v: isinstance(v, str), "a string"),
}
FILE_FIELDS: Dict[str, _Field] = {
    "path": TEXT, "bytes": (_token_id, "an integer >= 0"),
    "sha256": (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
               "64 hex digits"),
}
DECODER_IO_FIELDS: Dict[str, _Field] = {
    "inputs_embeds": TEXT, "attention_mask": TEXT, "logits": TEXT,
    "past_key": (_layer_pattern, "a name with one %d (the layer)"),
    "past_value": (_layer_pattern, "a name with one %d (the layer)"),
    "present_key": (_layer_pattern, "a name with one %d (the layer)"),
    "present_value": (_layer_pattern, "a name with one %d (the layer)"),
}


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


def _check_fields(where: str, section: Any, fields: Dict[str, _Field],
                  optional: Dict[str, _Field] = None) -> None:
    """Raise EngineError naming the first field of `section` that is absent (and required) or wrong."""
    for key, (ok, what) in {**fields, **(optional or {})}.items():
        if key not in section:
            if key in fields:
                raise EngineError(f"{where}.{key}: missing; re-run mobilevlm-export")
            continue
        if not ok(section[key]):
            raise EngineError(f"{where}.{key}: {section[key]!r} is not {what}; re-run mobilevlm-export")


def _inside(engine_dir: str, rel: str) -> bool:
    """Whether `rel` names a path inside `engine_dir` once `..` and symlinks are resolved."""
    root = os.path.realpath(engine_dir)
    real = os.path.realpath(os.path.join(engine_dir, rel))
    return not os.path.isabs(rel) and os.path.commonpath([root, real]) == root


def check_schema(path: str, data: Any) -> None:
    """Every section and field the runtime reads, by type and value; EngineError names what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EngineError(f"{path}: not a {FORMAT} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{path}: format version {data.get('format_version')!r} is not supported "
                          f"(this runtime reads version {FORMAT_VERSION}); re-run mobilevlm-export")
    if data.get("precision") not in PRECISIONS:
        raise EngineError(f"{path}: precision {data.get('precision')!r} is not one of "
                          f"{', '.join(PRECISIONS)}; re-run mobilevlm-export")
    if data.get("target", "cpu") not in TARGETS:
        raise EngineError(f"{path}: target {data.get('target')!r} is not one of {', '.join(TARGETS)}")
    for section in ("model", "files", "decoder_io"):
        if not isinstance(data.get(section), dict):
            raise EngineError(f"{path}: {section}: missing or not an object; re-run mobilevlm-export")
    _check_fields(f"{path}: model", data["model"], MODEL_FIELDS, OPTIONAL_MODEL_FIELDS)
    _check_fields(f"{path}: decoder_io", data["decoder_io"], DECODER_IO_FIELDS)
    files = data["files"]
    for role in REQUIRED_ROLES:
        if role not in files:
            raise EngineError(f"{path}: files.{role}: missing; re-run mobilevlm-export")
    for role, entry in files.items():
        if not isinstance(entry, dict):
            raise EngineError(f"{path}: files.{role}: {entry!r} is not an object with path, bytes "
                              "and sha256; re-run mobilevlm-export")
        _check_fields(f"{path}: files.{role}", entry, FILE_FIELDS)


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
    check_schema(path, data)
    for entry in data["files"].values():
        # Checked before anything is opened: a manifest must not make us read, or report the size
        # of, a file outside the engine folder.
        if not _inside(engine_dir, entry["path"]):
            raise EngineError(f"{path}: file {entry['path']!r} lies outside the engine folder {engine_dir} "
                              "(absolute, '..' or a symlink out); engine files must be inside it")
    for entry in data["files"].values():
        f = os.path.join(engine_dir, entry["path"])
        if not os.path.isfile(f):
            raise EngineError(f"engine file {entry['path']}: missing from {engine_dir}; "
                              "re-run mobilevlm-export")
        size = os.path.getsize(f)
        if size != entry["bytes"]:
            raise EngineError(f"engine file {entry['path']}: {size} bytes, manifest says {entry['bytes']} "
                              "(truncated or replaced); re-run mobilevlm-export")
        if verify and sha256(f) != entry["sha256"]:
            raise EngineError(f"engine file {entry['path']}: sha256 mismatch with manifest; "
                              "re-run mobilevlm-export")
    return Manifest(engine_dir, data)
