"""Grounding: box parsing, and normalised (padded-square) boxes back to pixels of non-square images."""

from __future__ import annotations

import pytest

from mobilevlm_ros.runtime.errors import PromptError
from mobilevlm_ros.runtime.grounding import box_iou, find_boxes, grounding_prompt, parse_boxes, to_pixel_box
from mobilevlm_ros.runtime.image import pad_geometry

Q = "Please provide the bounding box coordinate of the region this sentence describes: "


def test_grounding_prompt():
    assert grounding_prompt("the red cup") == Q + "the red cup."
    assert grounding_prompt("  the   red cup.  ") == Q + "the red cup."
    assert grounding_prompt("is it the cup?") == Q + "is it the cup?"
    with pytest.raises(PromptError):
        grounding_prompt("   ")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[0.12, 0.34, 0.56, 0.78]", [0.12, 0.34, 0.56, 0.78]),
        ("[0.12,0.34,0.56,0.78]", [0.12, 0.34, 0.56, 0.78]),
        ("[ 0.1 ,  0.2,0.3 , 0.4 ]", [0.1, 0.2, 0.3, 0.4]),
        ("[0.123, 0.3, 0.5678, 0.9]", [0.123, 0.3, 0.5678, 0.9]),
        ("[0, 0, 1, 1]", [0.0, 0.0, 1.0, 1.0]),
        ("[.25, 0.5, 1.0, 1.]", [0.25, 0.5, 1.0, 1.0]),
        ("[-0.004, 0.2, 1.01, 0.5]", [0.0, 0.2, 1.0, 0.5]),  # rounding noise is clamped
    ],
)
def test_parse_single_box(text, expected):
    [(coords, phrase)] = parse_boxes(text)
    assert coords == pytest.approx(expected) and phrase == ""


@pytest.mark.parametrize(
    "text",
    [
        "[0.1, 0.2, 0.3]",  # three numbers
        "[0.1, 0.2, 0.3, 0.4, 0.5]",  # five numbers
        "[a, b, c, d]",
        "[0.1, 0.2, 0.3, x]",
        "[0.1; 0.2; 0.3; 0.4]",
        "[0.5, 0.2, 0.3, 0.4]",  # x2 < x1
        "[0.1, 0.6, 0.3, 0.4]",  # y2 < y1
        "[0.1, 0.2, 0.1, 0.4]",  # zero width
        "[0.1, 0.2, 1.5, 0.4]",  # outside 0..1
        "[-0.2, 0.2, 0.5, 0.4]",
        "[12, 34, 56, 78]",  # pixel coordinates, not normalised
        "no box here",
        "",
    ],
)
def test_malformed_boxes_ignored(text):
    assert parse_boxes(text) == []


def test_several_boxes_with_phrases():
    text = "a red circle [0.1, 0.2, 0.3, 0.4] and a blue square [0.5, 0.5, 0.9, 0.95]."
    assert parse_boxes(text) == [
        ([0.1, 0.2, 0.3, 0.4], "a red circle"),
        ([0.5, 0.5, 0.9, 0.95], "a blue square"),
    ]


@pytest.mark.parametrize(
    "text,phrases",
    [
        ("The cup is at [0.1, 0.2, 0.3, 0.4].", ["The cup"]),
        ("There are two. Left chair: [0.1, 0.2, 0.3, 0.4], right chair [0.6, 0.2, 0.9, 0.4]",
         ["Left chair", "right chair"]),
        ("Sure. [0.1, 0.2, 0.3, 0.4]", [""]),
        ("a man 1.8 m tall [0.1, 0.2, 0.3, 0.4]", ["a man 1.8 m tall"]),
        ("bad [0.1, 0.2, 0.3] then the dog [0.1, 0.2, 0.3, 0.4]", ["the dog"]),
        ("line one\n[0.1, 0.2, 0.3, 0.4]", [""]),
    ],
)
def test_phrases(text, phrases):
    assert [p for _, p in parse_boxes(text)] == phrases


def test_known_object_on_landscape_image():
    # 320x240 image padded to 320x320 with 40 rows above. Object at pixels (40, 60)-(120, 140):
    # x / 320, (y + 40) / 320 -> [0.125, 0.3125, 0.375, 0.5625].
    normalized = [40 / 320, (60 + 40) / 320, 120 / 320, (140 + 40) / 320]
    assert normalized == [0.125, 0.3125, 0.375, 0.5625]
    box = to_pixel_box(normalized, 320, 240, "the cup")
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((40, 60, 120, 140), abs=0.5)
    assert box.normalized == normalized and box.phrase == "the cup"
    # The same box as answer text, through the parser.
    [b] = find_boxes("[0.125, 0.3125, 0.375, 0.5625]", 320, 240)
    assert (b.x1, b.y1, b.x2, b.y2) == pytest.approx((40, 60, 120, 140), abs=0.5)
    # The naive mapping (y * height) would be 15 px off at the top edge: make sure we are not doing that.
    assert abs(b.y1 - 0.3125 * 240) > 10


def test_known_object_on_portrait_image():
    # 100x300 image: side 300, 100 columns of padding on the left. Object (10, 30)-(90, 270).
    normalized = [(10 + 100) / 300, 30 / 300, (90 + 100) / 300, 270 / 300]
    box = to_pixel_box(normalized, 100, 300)
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((10, 30, 90, 270), abs=0.5)


def test_odd_padding_uses_image_geometry():
    # 333x10: 323 rows of padding, split 161 above / 162 below (floor), exactly as preprocessing.
    g = pad_geometry(333, 10)
    assert g.offset_y == 161
    box = to_pixel_box([0.0, 161 / 333, 1.0, 171 / 333], 333, 10)
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((0, 0, 333, 10), abs=1e-6)


def test_square_image_is_plain_scaling():
    box = to_pixel_box([0.25, 0.5, 0.75, 1.0], 200, 200)
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((50, 100, 150, 200))


def test_clipping_to_image():
    # A box reaching into the top padding band of a 320x240 image is clipped at y = 0 and the bottom.
    box = to_pixel_box([0.0, 0.0, 1.0, 1.0], 320, 240)
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx((0, 0, 320, 240))
    box = to_pixel_box([0.5, 0.05, 0.9, 0.2], 320, 240)  # y from 16 px (padding) to 64 px
    assert box.y1 == 0 and box.y2 == pytest.approx(64 - 40)


def test_find_boxes_default_phrase_and_padding_only_dropped():
    boxes = find_boxes("[0.1, 0.2, 0.3, 0.4]", 320, 240, default_phrase="the cup")
    assert [b.phrase for b in boxes] == ["the cup"]
    boxes = find_boxes("mug [0.1, 0.2, 0.3, 0.4]", 320, 240, default_phrase="the cup")
    assert [b.phrase for b in boxes] == ["mug"]
    # Wholly inside the top padding band (y < 40/320 = 0.125): not on the image.
    assert find_boxes("[0.1, 0.01, 0.3, 0.1]", 320, 240) == []


def test_to_pixel_box_rejects_wrong_length():
    with pytest.raises(ValueError):
        to_pixel_box([0.1, 0.2, 0.3], 100, 100)


def test_grounding_phrase_round_trip():
    from mobilevlm_ros.runtime.grounding import grounding_phrase

    assert grounding_phrase(grounding_prompt("the red cup")) == "the red cup"
    assert grounding_phrase("How many objects are there?") == ""


@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),  # half overlap: 50 shared of 150 covered
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges share no area
    ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # one inside the other
    ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty boxes: no division by zero
])
def test_box_iou_known_values(a, b, expected):
    assert box_iou(a, b) == pytest.approx(expected)
    assert box_iou(b, a) == pytest.approx(expected)
