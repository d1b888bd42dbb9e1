"""Image loading and MobileVLM preprocessing (`image_aspect_ratio = "pad"` + CLIP), without torch.

Pipeline of the reference: centre the image on a square canvas filled with the mean colour, then
CLIP preprocessing (shortest edge -> S with PIL bicubic, centre crop S, /255, normalise).
Resizing goes through Pillow, as transformers' PIL image processor does, so pixels match exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

from .errors import ImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 336
# Image.Resampling exists from Pillow 9.1; Ubuntu 22.04 (ROS Humble) ships 9.0.
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (grayscale, RGBA and palette images are converted)."""
    path = str(path)
    if not os.path.isfile(path):
        raise ImageError(f"image file {path}: not found")
    try:
        with Image.open(path) as im:
            # Like the reference `Image.open(f).convert("RGB")`: no EXIF rotation, alpha dropped.
            rgb = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # UnidentifiedImageError and truncated-file errors are OSErrors; permission errors too.
        raise ImageError(f"image file {path}: cannot decode ({type(e).__name__}: {e})") from None
    return np.asarray(rgb, dtype=np.uint8).copy()


@dataclass(frozen=True)
class PadGeometry:
    """Where an image of (width, height) sits on its padded square canvas of `side` pixels."""

    width: int
    height: int
    side: int
    offset_x: int
    offset_y: int


def pad_geometry(width: int, height: int) -> PadGeometry:
    """The reference `expand2square` placement: side = max(w, h), image pasted at
    ((side-w)//2, (side-h)//2)."""
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    side = max(width, height)
    return PadGeometry(width, height, side, (side - width) // 2, (side - height) // 2)


def mean_fill(mean: Sequence[float] = CLIP_MEAN) -> Tuple[int, int, int]:
    """Canvas colour of the reference: `tuple(int(x * 255) for x in image_mean)`
    (truncates: (122, 116, 104))."""
    return tuple(int(m * 255) for m in mean)  # type: ignore[return-value]


def pad_to_square(rgb: np.ndarray, fill: Sequence[int]) -> np.ndarray:
    """Centre `rgb` (HxWx3 uint8) on a square canvas of colour `fill`."""
    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    g = pad_geometry(w, h)
    canvas = np.empty((g.side, g.side, 3), dtype=np.uint8)
    canvas[...] = np.asarray(fill, dtype=np.uint8)
    canvas[g.offset_y:g.offset_y + h, g.offset_x:g.offset_x + w] = rgb
    return canvas


def square_image(rgb: np.ndarray, image_size: int = IMAGE_SIZE,
                 mean: Sequence[float] = CLIP_MEAN) -> np.ndarray:
    """HxWx3 uint8 RGB -> the SxSx3 uint8 image the model sees: padded to a square, resized."""
    square = pad_to_square(rgb, mean_fill(mean))
    # The canvas is square, so "shortest edge -> S" gives exactly SxS and the centre crop to SxS is
    # the identity. Pillow resizes uint8 images (as transformers does); on equal size it copies.
    return np.asarray(Image.fromarray(square).resize((image_size, image_size), resample=_BICUBIC))


def preprocess(
    rgb: np.ndarray,
    image_size: int = IMAGE_SIZE,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 (1, 3, S, S) pixel values, C-contiguous, ready for the vision tower."""
    x = square_image(rgb, image_size, mean).astype(np.float32) * np.float32(1 / 255)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # HWC -> NCHW


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"image has zero size (shape {rgb.shape})")
