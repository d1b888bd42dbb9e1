"""The manifest as the one description of a model variant: the runtime follows its template, the
exporter writes the runtime's constants, and engines written by an older exporter still load."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from mobilevlm_ros.runtime import manifest as mf
from mobilevlm_ros.runtime import prompt
from mobilevlm_ros.runtime.errors import EngineError
from mobilevlm_ros.runtime.image import CLIP_MEAN, CLIP_STD
from mobilevlm_ros.runtime.prompt import IMAGE_TOKEN_INDEX, Template, tokenize_prompt
from mobilevlm_ros.runtime.vlm import VLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "engines", "demo")
RGB = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)


def _copy_with(tmp_path, src, edit) -> str:
    dst = str(tmp_path / "engine")
    shutil.copytree(src, dst)
    path = os.path.join(dst, mf.NAME)
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    return dst


def test_the_exporter_writes_the_runtimes_constants_and_no_single_value_fields(engines):
    data = mf.load(engines("tiny", "fp32")).data
    m = data["model"]
    assert m["template"] == prompt.DEFAULT_TEMPLATE
    assert tuple(m["image_mean"]) == CLIP_MEAN and tuple(m["image_std"]) == CLIP_STD
    for gone in ("family", "image_aspect_ratio"):
        assert gone not in m
    assert "block_size" not in data and "engine" not in data


def test_an_engine_from_the_older_exporter_loads_and_answers_the_same(tmp_path):
    """Fields the exporter used to write (one value each, or a copy of another) are ignored."""
    def older(d):
        d["model"].update(family="mobilevlm", image_aspect_ratio="pad")
        d.update(block_size=None, tool="mobilevlm_ros 0.1.0")

    old = _copy_with(tmp_path, DEMO, older)
    expected = VLM(DEMO, backend="cpu", threads=1).describe(RGB, "How many objects are there?")
    got = VLM(old, backend="cpu", threads=1).describe(RGB, "How many objects are there?")
    assert got.token_ids == expected.token_ids and got.text == expected.text


def test_the_prompt_follows_the_manifests_template(tmp_path, monkeypatch):
    other = Template(system="You are a robot's eyes.", user="HUMAN:", assistant="ROBOT:")
    monkeypatch.setitem(prompt.TEMPLATES, "robot", other)
    engine = _copy_with(tmp_path, DEMO, lambda d: d["model"].update(template="robot"))
    vlm = VLM(engine, backend="cpu", threads=1)
    encoded = vlm.encode_prompt("What is it?", 8)
    ids = tokenize_prompt(vlm.tokenizer, "You are a robot's eyes. HUMAN: <image>\nWhat is it? ROBOT:")
    cut = ids.index(IMAGE_TOKEN_INDEX)
    assert (encoded.head, encoded.tail) == (tuple(ids[:cut]), tuple(ids[cut + 1:]))
    assert encoded.head != VLM(DEMO, backend="cpu", threads=1).encode_prompt("What is it?", 8).head


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["model"].update(template="chatml"),
     "model.template: 'chatml' is not one of v1; re-run mobilevlm-export"),
    (lambda d: d.update(precision="int3"), "precision 'int3' is not one of fp32, fp16, int8, int4; re-run"),
    (lambda d: d.pop("precision"), "precision None is not one of"),
])
def test_a_manifest_this_runtime_cannot_follow_is_one_line_saying_re_export(tmp_path, edit, needle):
    engine = _copy_with(tmp_path, DEMO, edit)
    with pytest.raises(EngineError) as e:
        VLM(engine)
    assert needle in str(e.value) and "\n" not in str(e.value)
