"""Preprocessing against the reference: expand2square (re-written here from the facts) + transformers'
CLIP processor."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mobilevlm_ros.runtime.errors import ImageError
from mobilevlm_ros.runtime.image import (
    CLIP_MEAN,
    CLIP_STD,
    load_image,
    mean_fill,
    pad_geometry,
    pad_to_square,
    preprocess,
)

# Largest allowed |ours - reference| in normalised units. Both sides resize the same uint8 image
# with Pillow, so the only difference is float rounding in /255 and the normalisation (~1e-7).
TOL = 1e-5


def reference_expand2square(pil_img: Image.Image, background: tuple) -> Image.Image:
    """The reference `expand2square`, from MOBILEVLM.md: paste centred on a max(w, h) square."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def reference_preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    # transformers 5.x: `CLIPImageProcessor` is now the torchvision backend (and torchvision is not
    # installed); `CLIPImageProcessorPil` is the PIL/NumPy path the 4.x "slow" processor used.
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=Image.BICUBIC,
        do_center_crop=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    background = tuple(int(x * 255) for x in proc.image_mean)
    square = reference_expand2square(Image.fromarray(rgb), background)
    return np.asarray(proc(square, return_tensors="np")["pixel_values"])


def random_image(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise, so bicubic ringing and edges at the pad border both show up.
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width, 1), yy * 255 // max(height, 1), (xx + yy) % 256], axis=-1)
    noise = rng.integers(-40, 40, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("width,height", [(320, 240), (100, 300), (333, 10), (200, 200), (640, 480)])
def test_preprocess_matches_reference(width, height):
    rgb = random_image(width, height, seed=width * 1000 + height)
    ours = preprocess(rgb)
    ref = reference_preprocess(rgb, 336)
    assert ours.shape == ref.shape == (1, 3, 336, 336)
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
    assert np.abs(ours - ref).max() < TOL


def test_preprocess_other_size_matches_reference():
    rgb = random_image(120, 90, seed=7)
    ours = preprocess(rgb, image_size=64)
    assert np.abs(ours - reference_preprocess(rgb, 64)).max() < TOL


def test_fill_colour_and_pad_region():
    assert mean_fill(CLIP_MEAN) == (122, 116, 104)
    rgb = np.zeros((240, 320, 3), np.uint8)
    sq = pad_to_square(rgb, mean_fill())
    assert sq.shape == (320, 320, 3)
    # Bands of 40 rows above and below hold the mean colour; the image sits in rows 40..279.
    assert (sq[:40] == (122, 116, 104)).all() and (sq[280:] == (122, 116, 104)).all()
    assert (sq[40:280] == 0).all()
    # A padded pixel normalises to almost zero (mean colour truncated to an int): |x| < 1/255/std.
    x = preprocess(rgb)
    assert np.abs(x[0, :, 0, 168]).max() < 0.02


@pytest.mark.parametrize(
    "w,h,side,ox,oy",
    [(320, 240, 320, 0, 40), (100, 300, 300, 100, 0), (333, 10, 333, 0, 161), (200, 200, 200, 0, 0),
     (5, 2, 5, 0, 1)],
)
def test_pad_geometry_known_sizes(w, h, side, ox, oy):
    g = pad_geometry(w, h)
    assert (g.width, g.height, g.side, g.offset_x, g.offset_y) == (w, h, side, ox, oy)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((0, 10, 3), np.uint8),
        [[0, 0, 0]],
    ],
)
def test_preprocess_rejects_bad_input(bad):
    with pytest.raises(ImageError):
        preprocess(bad)


def test_load_image_modes(tmp_path):
    rgb = random_image(30, 20, seed=1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), rgb)

    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")  # mode L
    out = load_image(tmp_path / "gray.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 2], rgb[..., 0])

    rgba = np.dstack([rgb, np.full((20, 30), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)  # alpha dropped

    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.gif")
    assert load_image(tmp_path / "pal.gif").shape == (20, 30, 3)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")

    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="corrupt.png"):
        load_image(bad)

    # A real JPEG cut in half: the header parses, the pixel data does not.
    Image.fromarray(random_image(64, 64, seed=2)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="trunc.jpg"):
        load_image(tmp_path / "trunc.jpg")

    with pytest.raises(ImageError):
        load_image(tmp_path)  # a directory
