"""Bad input to the runtime is a clear error, and the same VLM keeps answering afterwards."""

from __future__ import annotations

import numpy as np
import pytest

from mobilevlm_ros.runtime.errors import ImageError, PromptError
from mobilevlm_ros.runtime.generation import GenerationParams
from mobilevlm_ros.runtime.vlm import VLM

GOOD = np.full((48, 64, 3), 128, np.uint8)
PARAMS = GenerationParams(max_new_tokens=4)


@pytest.fixture(scope="module")
def vlm(engines):
    return VLM(engines("tiny", "fp32"), backend="cpu", threads=1)


@pytest.mark.parametrize("question,match", [
    ("", "empty"),
    ("   \n ", "empty"),
    ("x" * 5000, "at most 4000"),
    ("what " * 600, "prompt too long"),  # fits the character cap, not the 512-position context
    ("look: <image> what is it?", "must not contain <image>"),
])
def test_bad_questions(vlm, question, match):
    with pytest.raises(PromptError, match=match):
        vlm.describe(GOOD, question, PARAMS)
    assert vlm.describe(GOOD, "What is it?", PARAMS).timings.new_tokens >= 1


@pytest.mark.parametrize("image", [
    np.zeros((0, 10, 3), np.uint8),
    np.zeros((10, 10), np.uint8),
    np.zeros((10, 10, 4), np.uint8),
    np.zeros((10, 10, 3), np.float32),
])
def test_bad_images(vlm, image):
    with pytest.raises(ImageError):
        vlm.describe(image, "What is it?", PARAMS)
    assert vlm.describe(GOOD, None, PARAMS).prompt == "Describe the image briefly."


def test_bad_generation_parameters(vlm):
    with pytest.raises(ValueError, match="max_new_tokens"):
        vlm.describe(GOOD, "What?", GenerationParams(max_new_tokens=0))


def test_describe_maps_answer_boxes_to_source_pixels(vlm, scripted, monkeypatch):
    """The answer's text becomes boxes of the SOURCE image (padding undone), labelled by its phrase."""
    ids = vlm.tokenizer.encode("the cup [0.125, 0.25, 0.375, 0.5]", add_bos=False)
    generator, _ = scripted(vlm.tokenizer, ids + [vlm.tokenizer.eos_id], max_new_tokens=64)
    monkeypatch.setattr(vlm, "generator", lambda *args, **kw: generator)
    answer = vlm.describe(np.zeros((240, 320, 3), np.uint8), "Where is the cup?")
    # padded square of side 320, image at y offset 40: (40, 80-40, 120, 160-40)
    b = answer.boxes[0]
    assert [round(v, 3) for v in b.xyxy] == [40, 40, 120, 120]
    assert b.phrase == "the cup" and answer.finish_reason == "eos"
    assert answer.timings.new_tokens == len(ids) and answer.image_size == (320, 240)


def test_runtime_runs_without_torch_or_ros(engines):
    """Robot side: the runtime and the caption tool import neither torch, transformers nor rclpy."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'rclpy'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import numpy as np\n"
        "from mobilevlm_ros.runtime.vlm import VLM\n"
        "from mobilevlm_ros.tools import caption\n"
        f"a = VLM({engines('tiny', 'fp32')!r}, threads=1).describe(np.zeros((30, 40, 3), np.uint8))\n"
        "print('ok', a.timings.new_tokens > 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok True"
