"""The image bridge: ROS image messages -> RGB numpy arrays (H x W x 3 uint8, C-contiguous), and
back for `~/annotated`. Named after cv_bridge's verbs: imgmsg_to_rgb, compressed_imgmsg_to_rgb,
rgb_to_imgmsg (RGB -> model pixels is preprocessing: runtime/image.py). check_imgmsg and
check_compressed_imgmsg run every check without converting, for the node to refuse a bad frame on
arrival and convert it only if inference uses it.

Our own bridge, because PyPI's cv-bridge fails under numpy 2 and rosbags-image returns wrong
data on padded rows. Messages are duck-typed (rclpy messages, rosbags dataclasses and the like all
work): `sensor_msgs/Image` needs encoding, height, width, step, is_bigendian, data;
`sensor_msgs/CompressedImage` needs format, data. `data` may be bytes, array.array('B') (rclpy) or a
numpy uint8 array (rosbags); it is wrapped with np.frombuffer, not copied.

Decisions, each tested in test/test_bridge.py:
- rgb8 without row padding comes back as a view of msg.data (no copy): it may be read-only and it
  shares memory with the message. Every other path returns a new array.
- mono16: intensity, scaled by `>> 8` (full 16-bit range -> 8 bits, as cv_bridge does). Stable from
  frame to frame, so brightness means the same thing in every frame. A camera that publishes 12-bit
  values right-aligned in mono16 will look dark; that is the camera's convention, not ours to guess.
- 16UC1: depth-like (millimetres, 0 = no return). `>> 8` would put 0..5 m into 0..19, an almost
  black frame, so each frame is stretched instead: valid (non-zero) pixels map linearly from their
  minimum -> 1 to their maximum -> 255 (rounded half up, exact integer arithmetic), 0 stays 0
  (black = no data); a frame whose valid pixels are all equal gives 255 for them.
- YUV 4:2:2 (uyvy / yuv422, yuyv / yuv422_yuy2): ITU-R BT.601, limited ("studio") range, i.e.
  R = 1.164 (Y - 16) + 1.596 (V - 128) and so on: what V4L2/UVC cameras send and what OpenCV's
  COLOR_YUV2RGB_UYVY / _YUYV compute (cv_bridge uses the same calls). ROS names: "yuv422" is UYVY
  byte order and "yuv422_yuy2" is YUYV (both deprecated aliases of "uyvy" / "yuyv").
- Bayer: OpenCV's bilinear demosaic. OpenCV's short Bayer names are shifted relative to ROS ones
  (they name the pattern from the second row and column): ROS bayer_rggb8 is OpenCV BayerBG, bggr
  -> RG, gbrg -> GR, grbg -> GB. The unambiguous aliases (COLOR_BayerRGGB2RGB, ...) are used where
  this OpenCV has them, the short names otherwise; both give the same codes.
- 8UC1 is read as mono8, 8UC3 as bgr8 (the OpenCV convention cv_bridge follows).
- Compressed: JPEG and PNG only, told by their first bytes (the `format` string is the sender's
  word, the bytes are the truth). OpenCV would decode a dozen more formats, some (Radiance HDR,
  ...) through temporary files it writes itself and without a size check, so everything else is
  refused before a decoder sees it. Then cv2.imdecode (IMREAD_UNCHANGED): colour comes out BGR and
  is turned to RGB, alpha is dropped, grayscale is repeated to 3 channels, 16-bit follows the rules
  above (16UC1 when the format names it or is compressedDepth, mono16 otherwise).
  compressedDepth's 12-byte header (compressed_depth_image_transport) is skipped; its RVL variant
  is refused.
- Images over MAX_PIXELS are refused before anything is allocated (for compressed input the size
  is read from the file header with Pillow, which decodes nothing).
"""

from __future__ import annotations

import array
import io
import warnings
from typing import Any

import cv2
import numpy as np

from ..runtime.errors import ImageError

MAX_PIXELS = 64_000_000  # 64 megapixels: larger than any camera we serve, small enough to allocate.


def _cv_code(name: str, fallback: str) -> int:
    code = getattr(cv2, name, None)
    return int(code if code is not None else getattr(cv2, fallback))


# encoding -> (channels, bytes per channel) of the raw layout.
_LAYOUT = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "8UC3": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "8UC1": (1, 1),
    "mono16": (1, 2),
    "16UC1": (1, 2),
    "uyvy": (2, 1),
    "yuv422": (2, 1),
    "UYVY": (2, 1),
    "yuyv": (2, 1),
    "yuv422_yuy2": (2, 1),
    "YUYV": (2, 1),
    "bayer_rggb8": (1, 1),
    "bayer_bggr8": (1, 1),
    "bayer_gbrg8": (1, 1),
    "bayer_grbg8": (1, 1),
}

ACCEPTED_ENCODINGS = tuple(_LAYOUT)

# One cv2.cvtColor call from the raw layout to RGB.
_CVT = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "8UC3": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "8UC1": cv2.COLOR_GRAY2RGB,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "UYVY": cv2.COLOR_YUV2RGB_UYVY,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
    "YUYV": cv2.COLOR_YUV2RGB_YUYV,
    "bayer_rggb8": _cv_code("COLOR_BayerRGGB2RGB", "COLOR_BayerBG2RGB"),
    "bayer_bggr8": _cv_code("COLOR_BayerBGGR2RGB", "COLOR_BayerRG2RGB"),
    "bayer_gbrg8": _cv_code("COLOR_BayerGBRG2RGB", "COLOR_BayerGR2RGB"),
    "bayer_grbg8": _cv_code("COLOR_BayerGRBG2RGB", "COLOR_BayerGB2RGB"),
}

_YUV422 = frozenset(("uyvy", "yuv422", "UYVY", "yuyv", "yuv422_yuy2", "YUYV"))


def _as_bytes_array(data: Any, what: str) -> np.ndarray:
    """msg.data as a flat uint8 array, without a copy when data is a buffer."""
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return data.reshape(-1)
    if isinstance(data, (bytes, bytearray, memoryview)) or (
            isinstance(data, array.array) and data.typecode in ("B", "b")):
        return np.frombuffer(data, dtype=np.uint8)
    try:  # lists and other sequences of ints (slow, but correct)
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:
        raise ImageError(f"{what}: data is not a byte buffer ({type(data).__name__}: {e})") from None


def _check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(f"{what}: {width}x{height} is {width * height} pixels, "
                         f"over the limit of {MAX_PIXELS}")


def _mono16_to_8(values: np.ndarray) -> np.ndarray:
    """Intensity: full 16-bit range to 8 bits (`>> 8`)."""
    return (values >> 8).astype(np.uint8)


def _depth16_to_8(values: np.ndarray) -> np.ndarray:
    """Depth: valid (non-zero) pixels stretched min -> 1 .. max -> 255, rounded half up; 0 stays 0."""
    valid = values > 0
    if not valid.any():
        return np.zeros(values.shape, np.uint8)
    lo = int(values[valid].min())
    hi = int(values.max())
    span = hi - lo
    if span == 0:
        return np.where(valid, np.uint8(255), np.uint8(0))
    # (d - lo) * 254 / span + 1/2, in integers: at most 65535 * 508 + 65535 < 2**32.
    d = np.maximum(values, lo).astype(np.uint32) - np.uint32(lo)
    scaled = (d * np.uint32(508) + np.uint32(span)) // np.uint32(2 * span) + np.uint32(1)
    return np.where(valid, scaled, 0).astype(np.uint8)


def _raw_view(msg: Any) -> tuple:
    """(encoding, (channels, bytes per channel), width, height, step, bytes) of a sensor_msgs/Image,
    checked (encoding known, sizes consistent, data long enough) without converting a pixel."""
    encoding = str(msg.encoding)
    layout = _LAYOUT.get(encoding)
    if layout is None:
        raise ImageError(f"unsupported encoding {encoding!r}; accepted: {', '.join(ACCEPTED_ENCODINGS)}")
    channels, item = layout
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    what = f"image {encoding!r} {width}x{height}"
    if width <= 0 or height <= 0:
        raise ImageError(f"{what}: zero size")
    _check_pixels(width, height, what)
    row = width * channels * item
    if step < row:
        raise ImageError(f"{what}: step {step} is smaller than a row "
                         f"({width} x {channels * item} = {row} bytes)")
    if encoding in _YUV422 and width % 2:
        raise ImageError(f"{what}: odd width; YUV 4:2:2 packs pixels in pairs and needs an even width")
    buf = _as_bytes_array(msg.data, what)
    need = step * height
    if buf.size < need:
        raise ImageError(f"{what}: data truncated "
                         f"({buf.size} bytes, step {step} x height {height} = {need} expected)")
    return encoding, layout, width, height, step, buf


def check_imgmsg(msg: Any) -> None:
    """ImageError unless imgmsg_to_rgb can convert `msg`: every check, no conversion (cheap enough
    to run on arrival, so a camera sending the wrong thing is refused at once)."""
    _raw_view(msg)


def imgmsg_to_rgb(msg: Any) -> np.ndarray:
    """A sensor_msgs/Image as H x W x 3 uint8 RGB (C-contiguous). Raises ImageError on bad input."""
    encoding, (channels, item), width, height, step, buf = _raw_view(msg)
    if item == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        # Strided view of the rows: padding is skipped, nothing is copied.
        values = np.ndarray((height, width), dtype, buffer=buf, strides=(step, 2))
        gray = _depth16_to_8(values) if encoding == "16UC1" else _mono16_to_8(values)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)

    shape = (height, width, channels) if channels > 1 else (height, width)
    strides = (step, channels, 1) if channels > 1 else (step, 1)
    raw = np.ndarray(shape, np.uint8, buffer=buf, strides=strides)
    if encoding == "rgb8":
        return np.ascontiguousarray(raw)  # a view when rows are unpadded, one copy otherwise
    return cv2.cvtColor(raw, _CVT[encoding])


# The compressed formats we accept, by their first bytes.
_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}
COMPRESSED_FORMATS = tuple(_MAGIC)


def _sniff(buf: np.ndarray, what: str) -> str:
    """"JPEG" or "PNG" from the first bytes; ImageError for anything else."""
    head = buf[:8].tobytes()
    for name, magic in _MAGIC.items():
        if head.startswith(magic):
            return name
    raise ImageError(f"{what}: not JPEG or PNG data (starts with {head[:8].hex(' ')}); "
                     f"accepted: {', '.join(COMPRESSED_FORMATS)}")


def _compressed_size(buf: np.ndarray, kind: str, what: str) -> tuple:
    """(width, height) from the JPEG/PNG header, decoding nothing."""
    from PIL import Image as PILImage

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(buf.tobytes()), formats=[kind]) as im:
                return im.size
    except PILImage.DecompressionBombError:
        return (MAX_PIXELS + 1, 1)
    except Exception as e:  # a broken header: nothing a decoder should be handed
        raise ImageError(f"{what}: corrupt {kind} header ({type(e).__name__})") from None


def _compressed_payload(msg: Any) -> tuple:
    """(JPEG/PNG bytes, "JPEG" | "PNG", depth?, description) of a sensor_msgs/CompressedImage,
    told by its first bytes; ImageError for anything else, before any decoder sees it."""
    fmt = str(getattr(msg, "format", "") or "")
    what = f"compressed image (format {fmt!r})"
    buf = _as_bytes_array(msg.data, what)
    if buf.size == 0:
        raise ImageError(f"{what}: empty data")
    lowered = fmt.lower()
    # "rgb8; jpeg compressed bgr8" -> source encoding "rgb8"; plain "jpeg" -> none.
    source = fmt.split(";", 1)[0].strip() if ";" in fmt else ""
    depth = source == "16UC1" or "compresseddepth" in lowered
    if "compresseddepth" in lowered:
        if "rvl" in lowered:
            raise ImageError(f"{what}: RVL compressed depth is not supported; use the png variant")
        if buf.size <= 12:
            raise ImageError(f"{what}: data truncated ({buf.size} bytes, not even the 12-byte depth header)")
        buf = buf[12:]  # compressed_depth_image_transport's ConfigHeader, then a PNG
    return buf, _sniff(buf, what), depth, what


def check_compressed_imgmsg(msg: Any) -> None:
    """ImageError unless `msg` holds JPEG or PNG bytes (its first bytes; nothing is decoded)."""
    _compressed_payload(msg)


def compressed_imgmsg_to_rgb(msg: Any) -> np.ndarray:
    """A sensor_msgs/CompressedImage (JPEG, PNG, compressedDepth PNG) as H x W x 3 uint8 RGB.

    Raises ImageError on anything else, before any decoder runs."""
    buf, kind, depth, what = _compressed_payload(msg)
    width, height = _compressed_size(buf, kind, what)
    _check_pixels(int(width), int(height), what)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageError(f"{what}: cannot decode {buf.size} bytes "
                         f"({str(e).strip().splitlines()[-1]})") from None
    if img is None or img.size == 0:
        raise ImageError(f"{what}: cannot decode {buf.size} bytes (corrupt, or not JPEG/PNG)")
    if img.dtype == np.uint16:
        if img.ndim == 2:
            img = _depth16_to_8(img) if depth else _mono16_to_8(img)
        else:
            img = _mono16_to_8(img)
    elif img.dtype != np.uint8:
        raise ImageError(f"{what}: decoded to unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"{what}: decoded to {img.shape[2]} channels; expected 1, 3 or 4")


def rgb_to_imgmsg(rgb: np.ndarray, header: Any = None):
    """H x W x 3 uint8 RGB -> sensor_msgs/Image (rgb8, step = 3 * width, header copied if given)."""
    from sensor_msgs.msg import Image

    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise ImageError(f"expected an HxWx3 uint8 RGB array, got {type(rgb).__name__} {shape}")
    height, width = rgb.shape[:2]
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height = height
    msg.width = width
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = 3 * width
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rgb))  # one copy, no per-byte Python loop
    msg.data = data
    return msg
