"""The demo world (scenes.py), its trainer (a smoke run), and the committed demo engine's accuracy."""

import os
from collections import Counter

import numpy as np
import pytest

from mobilevlm_ros.demo import scenes as S
from mobilevlm_ros.runtime.grounding import box_iou, find_boxes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "engines", "demo")


# --- scenes -------------------------------------------------------------------------------------

def test_scene_is_deterministic_for_a_seed():
    a, b = S.make_scene(1234), S.make_scene(1234)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.objects == b.objects
    assert S.make_scene(1235).image.tobytes() != a.image.tobytes()
    assert S.sample_scene(77).image.tobytes() == S.sample_scene(77).image.tobytes()


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (400, 300)])
def test_scene_shape_and_object_count(size):
    w, h = size
    counts = Counter()
    for seed in range(40):
        sc = S.make_scene(seed, w, h)
        assert sc.image.shape == (h, w, 3) and sc.image.dtype == np.uint8
        assert (sc.width, sc.height) == (w, h)
        assert 1 <= len(sc.objects) <= S.MAX_OBJECTS
        counts[len(sc.objects)] += 1
        # Left to right, each colour+shape once, boxes inside the frame.
        xs = [o.centre[0] for o in sc.objects]
        assert xs == sorted(xs)
        assert len({(o.colour, o.shape) for o in sc.objects}) == len(sc.objects)
        for o in sc.objects:
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert min(x2 - x1, y2 - y1) >= 0.2 * min(w, h)  # big objects: the demo must be right
    assert len(counts) == 4


def _nearest_colour(pixels: np.ndarray) -> np.ndarray:
    names = list(S.COLOURS)
    ref = np.array([S._RGB[c] for c in names], np.float32)
    d = ((pixels[:, None, :].astype(np.float32) - ref[None]) ** 2).sum(-1)
    return np.array(names)[d.argmin(1)], d.min(1)


def test_ground_truth_matches_the_pixels():
    for seed in range(30):
        sc = S.make_scene(seed)
        for i, o in enumerate(sc.objects):
            x1, y1, x2, y2 = o.box
            inside = sc.image[y1:y2, x1:x2].reshape(-1, 3)
            names, dist = _nearest_colour(inside)
            coloured = names[dist < 90 ** 2]  # close to some object colour (not background)
            # A triangle fills half its box, a circle 79 %; overlaps take at most a few percent.
            share = (coloured == o.colour).sum() / len(inside)
            assert share > 0.35, (seed, o, share)
            # The instance map agrees: the object is visible in its own box, and the box is tight.
            vis = sc.instances[y1:y2, x1:x2] == i + 1
            assert vis.mean() > 0.35
            assert vis[0].any() or vis[:, 0].any() or i + 1 != sc.instances[y1, x1]
        # Outside every box: no object colour to speak of.
        outside = np.ones(sc.image.shape[:2], bool)
        for o in sc.objects:
            outside[o.box[1]:o.box[3], o.box[0]:o.box[2]] = False
        _, dist = _nearest_colour(sc.image[outside])
        assert (dist < 60 ** 2).mean() < 0.01


def _hand_scene(width=320, height=240):
    objs = [S.Obj("circle", "red", (10, 20, 90, 100)), S.Obj("square", "blue", (122, 40, 202, 120)),
            S.Obj("triangle", "red", (230, 130, 310, 210))]
    return S.Scene(np.zeros((height, width, 3), np.uint8), objs, width, height)


def test_text_helpers_on_a_hand_made_scene():
    sc = _hand_scene()
    assert S.caption_question() == "Describe the image briefly."
    # Colour, then shape order.
    assert S.caption_answer(sc) == "a red circle, a red triangle and a blue square"
    assert S.caption_answer(S.Scene(sc.image, sc.objects[:2], 320, 240)) == "a red circle and a blue square"
    assert S.caption_answer(S.Scene(sc.image, sc.objects[:1], 320, 240)) == "a red circle"
    assert S.count_question() == "How many objects are there?" and S.count_answer(sc) == "3"
    assert S.colour_question("square") == "What colour is the square?"
    assert S.colour_answer(sc, "square") == "blue" and S.colour_answer(sc, "triangle") == "red"
    assert S.yesno_question("green", "triangle") == "Is there a green triangle?"
    assert S.yesno_answer(sc, "green", "triangle") == "No" and S.yesno_answer(sc, "red", "triangle") == "Yes"
    assert S.referring_phrase(sc, sc.objects[0]) == "the red circle"
    twin = S.Scene(sc.image, sc.objects + [S.Obj("circle", "red", (0, 0, 5, 5))], 320, 240)
    assert S.referring_phrase(twin, sc.objects[0]) is None
    assert S.colour_answer(twin, "circle") is None  # two circles: "the circle" is ambiguous
    assert S.grounding_question("the red circle") == (
        "Please provide the bounding box coordinate of the region this sentence describes: the red circle.")
    assert S.parse_caption(S.caption_answer(sc)) == S.scene_multiset(sc)
    assert S.parse_caption("two red circles and a Blue Square.") == Counter(
        {("red", "circle"): 2, ("blue", "square"): 1})
    assert S.parse_caption("nothing") == Counter()
    kinds = [k for k, _, _ in S.qa_pairs(sc, 0)]
    assert kinds[:2] == ["caption", "count"] and "ground" in kinds and kinds[-1] == "yesno"


def test_grounding_answer_is_normalised_to_the_padded_square():
    # 320x240 -> square side 320, image pasted 40 px down.
    sc = _hand_scene(320, 240)
    blue = sc.objects[1]  # (122, 40, 202, 120)
    assert S.normalized_box(sc, blue) == pytest.approx([122 / 320, 80 / 320, 202 / 320, 160 / 320])
    assert S.grounding_answer(sc, blue) == "[0.38, 0.25, 0.63, 0.50]"
    # 240x320 (portrait) -> side 320, image pasted 40 px right.
    sc = S.Scene(np.zeros((320, 240, 3), np.uint8), [S.Obj("square", "blue", (18, 64, 82, 160))], 240, 320)
    # x: (18 + 40) / 320 = 0.181, (82 + 40) / 320 = 0.381; y: 64 / 320, 160 / 320.
    assert S.grounding_answer(sc, sc.objects[0]) == "[0.18, 0.20, 0.38, 0.50]"
    # The runtime maps the answer back onto the source box (to within the 2-decimal rounding).
    box = find_boxes(S.grounding_answer(sc, sc.objects[0]), 240, 320)[0]
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((18, 64, 82, 160), abs=1.6)
    for seed in range(20):
        sc = S.sample_scene(seed)
        for o in sc.objects:
            b = find_boxes(S.grounding_answer(sc, o), sc.width, sc.height)[0]
            assert box_iou(b.xyxy, o.box) > 0.9


# --- trainer ------------------------------------------------------------------------------------

def test_trainer_smoke_run_writes_a_loadable_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from mobilevlm_ros.model.loader import load_checkpoint
    from training.train import train

    threads = torch.get_num_threads()
    try:
        ckpt = train(str(tmp_path / "run"), smoke=True)
    finally:
        torch.set_num_threads(threads)
    for name in ("config.json", "model.safetensors", "tokenizer.model", "clip/config.json"):
        assert os.path.isfile(os.path.join(ckpt, name)), name
    model = load_checkpoint(ckpt)
    assert model.config.projector == "ldpnetv2" and model.config.select_layer == -1


def test_dense_targets_follow_the_boxes():
    pytest.importorskip("torch")
    from training.data import class_of, dense_targets

    sc = S.sample_scene(5)
    t = dense_targets(sc, 224, 16)
    assert t["patch_cls"].shape == (196,) and t["tok_frac"].shape == (49, 13)
    assert np.allclose(t["tok_frac"].sum(-1), 1.0)
    assert t["centre"].sum() == len(sc.objects)
    classes = set(t["patch_cls"].tolist())
    assert {class_of(o.colour, o.shape) for o in sc.objects} <= classes
    for o in sc.objects:
        assert any(np.allclose(b, S.normalized_box(sc, o)) for b in t["box"][t["box_w"] > 0])


def test_pointer_targets_name_the_right_objects():
    pytest.importorskip("torch")
    from training.data import looked_at

    sc = _hand_scene()  # red circle (0), blue square (1), red triangle (2)
    red, blue, circle, square, triangle = 10, 11, 20, 21, 22  # stand-in token ids
    # "a red circle , a red triangle and a blue square </s>": caption order is colour, then shape.
    caption = [1, red, circle, 3, 1, red, triangle, 4, 1, blue, square, 2]
    assert looked_at(sc, "caption", "", caption, [red, blue], [circle, square, triangle]) == [
        (1, 0), (2, 0), (5, 2), (6, 2), (9, 1), (10, 1)]
    box = [5, 6, 7]
    q = S.grounding_question("the red triangle")
    assert looked_at(sc, "ground", q, box, [], []) == [(0, 2), (1, 2), (2, 2)]
    assert looked_at(sc, "colour", S.colour_question("square"), [11, 2], [], []) == [(0, 1), (1, 1)]
    absent = S.yesno_question("green", "square")
    assert looked_at(sc, "yesno", absent, [9, 2], [], []) == []  # absent: nothing to see
    assert looked_at(sc, "count", S.count_question(), [9, 2], [], []) == []


def test_pointer_loss_is_the_real_attention_of_its_head():
    """pointer_loss recomputes one head's attention: it must equal what eager LlamaAttention returns."""
    torch = pytest.importorskip("torch")
    from mobilevlm_ros.model.config import MobileVLMConfig
    from mobilevlm_ros.model.reference import MobileVLM
    from training.data import collate_dense, scene_sample
    from training.losses import POINTER_HEAD, POINTER_LAYER, pointer_loss
    from training.model import SMOKE_LLM, SMOKE_VISION, build_config, vision_features

    torch.manual_seed(0)
    vision, llm = SMOKE_VISION, dict(SMOKE_LLM, num_hidden_layers=2, num_attention_heads=4)
    config = MobileVLMConfig.from_dict(build_config(vision, llm), vision)
    model = MobileVLM(config, attn_implementation="eager").eval()
    samples = [scene_sample(s, vision["image_size"], vision["patch_size"]) for s in (5, 6)]
    b = collate_dense(samples)
    n_head, n_img = 7, b["owner"].shape[1]
    with torch.no_grad():
        _, toks = vision_features(model, b["pixels"])
        width = toks.shape[2]
        embeds = torch.cat([torch.randn(2, n_head, width) * 0.05, toks, torch.randn(2, 20, width) * 0.05], 1)
        L = embeds.shape[1]
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool))
        mask = torch.zeros(2, 1, L, L).masked_fill(~causal, float("-inf"))
        pos = torch.arange(L).repeat(2, 1)
        out = model.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                              output_hidden_states=True, output_attentions=True)
        pointer = (torch.tensor([0, 0, 1]), torch.tensor([L - 1, L - 5, L - 2]), torch.tensor([0, 1, 0]))
        ours = pointer_loss(model, out.hidden_states, mask, pos, pointer, b["owner"], n_head)
        att = out.attentions[POINTER_LAYER][:, POINTER_HEAD]
        mass = [att[r, p, n_head:n_head + n_img][b["owner"][r] == o + 1].sum() for r, p, o in zip(*pointer)]
    assert torch.allclose(ours, -torch.stack(mass).log().mean(), atol=1e-5)


# --- the committed engine -----------------------------------------------------------------------

@pytest.mark.skipif(not os.path.isfile(os.path.join(ENGINE, "manifest.json")), reason="no engines/demo")
def test_demo_engine_accuracy_floor():
    from mobilevlm_ros.demo.evaluate import evaluate

    r = evaluate(ENGINE, n_scenes=40, seed_offset=0)
    acc = r["accuracy"]
    for task, floor in FLOORS.items():
        assert acc[task] >= floor, (task, acc)


# Floors for the committed engine on the first 40 held-out scenes. Set a little below what was
# measured (engines/demo/README.md): on 500 scenes caption 0.928, counting 0.976, grounding 0.842,
# colour 0.913, yes/no 0.905; on these 40: 0.950, 1.0, 0.874, 0.855, 0.938. A random model scores 0.
FLOORS = {"caption": 0.85, "counting": 0.9, "grounding": 0.75, "colour": 0.75, "yesno": 0.85}
