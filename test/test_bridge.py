"""image_convert and annotate on real sensor_msgs messages built by hand with known content.

Expected pixels are computed here independently of the code under test: channel shuffles with
numpy, BT.601 with its formula, the 16-bit rules with exact integer/Fraction arithmetic,
compressed input encoded with Pillow (not OpenCV).
"""

from __future__ import annotations

import array
import io
import struct
import zlib
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from mobilevlm_ros.ros import bridge
from mobilevlm_ros.ros.annotate import BOX_COLORS, draw_answer
from mobilevlm_ros.ros.bridge import (
    ACCEPTED_ENCODINGS,
    MAX_PIXELS,
    check_compressed_imgmsg,
    check_imgmsg,
    compressed_imgmsg_to_rgb,
    imgmsg_to_rgb,
    rgb_to_imgmsg,
)
from mobilevlm_ros.runtime.errors import ImageError
from mobilevlm_ros.runtime.types import Box

W, H = 6, 4  # row of rgb8 = 18 bytes: not a multiple of 4
RNG = np.random.default_rng(1234)
REF = RNG.integers(0, 256, size=(H, W, 3), dtype=np.uint8)  # every pixel its own colour
ALPHA = RNG.integers(0, 256, size=(H, W, 1), dtype=np.uint8)
GRAY = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)
MONO16 = RNG.integers(0, 65536, size=(H, W), dtype=np.uint16)
DEPTH = np.array([[0, 500, 750, 1000, 0, 4000],
                  [1200, 0, 3000, 2999, 650, 700],
                  [501, 502, 503, 0, 0, 3999],
                  [600, 900, 1300, 2100, 3400, 3700]], dtype=np.uint16)
# YUV 4:2:2: a luma per pixel, one (U, V) per pixel pair. Values inside the studio range mostly.
YUV_Y = RNG.integers(16, 236, size=(H, W), dtype=np.uint8)
YUV_U = RNG.integers(16, 241, size=(H, W // 2), dtype=np.uint8)
YUV_V = RNG.integers(16, 241, size=(H, W // 2), dtype=np.uint8)


def make_image(encoding, width, height, rows, step=None, bigendian=0, pad_byte=0xAB):
    """A real sensor_msgs/Image; `rows` is (height, row_bytes) uint8; pad rows out to `step`."""
    rows = np.ascontiguousarray(rows, dtype=np.uint8).reshape(height, -1)
    step = rows.shape[1] if step is None else step
    padded = np.full((height, step), pad_byte, dtype=np.uint8)
    padded[:, :rows.shape[1]] = rows[:, :step]
    msg = Image()
    msg.header.frame_id = "cam"
    msg.height, msg.width, msg.step = height, width, step
    msg.encoding = encoding
    msg.is_bigendian = bigendian
    msg.data = array.array("B", padded.tobytes())
    return msg


def bt601(y, u, v):
    """ITU-R BT.601 limited range, the textbook coefficients, in float."""
    c, d, e = y.astype(float) - 16, u.astype(float) - 128, v.astype(float) - 128
    r = 1.164 * c + 1.596 * e
    g = 1.164 * c - 0.392 * d - 0.813 * e
    b = 1.164 * c + 2.017 * d
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255)


def depth_expected(d):
    valid = [int(v) for v in d.ravel() if v > 0]
    lo, hi = min(valid), max(valid)
    out = np.zeros(d.shape, np.uint8)
    for idx, v in np.ndenumerate(d):
        if v > 0:
            out[idx] = 1 + int(Fraction(int(v) - lo) * 254 / (hi - lo) + Fraction(1, 2))
    return np.repeat(out[..., None], 3, axis=2)


def raw_frame(encoding):
    """(rows bytes, expected RGB, tolerance) of the 6x4 test frame in `encoding`."""
    gray3 = np.repeat(GRAY[..., None], 3, axis=2)
    if encoding == "rgb8":
        return REF, REF, 0
    if encoding in ("bgr8", "8UC3"):
        return REF[..., ::-1], REF, 0
    if encoding == "rgba8":
        return np.concatenate([REF, ALPHA], axis=2), REF, 0
    if encoding == "bgra8":
        return np.concatenate([REF[..., ::-1], ALPHA], axis=2), REF, 0
    if encoding in ("mono8", "8UC1"):
        return GRAY, gray3, 0
    if encoding == "mono16":
        return (MONO16.astype("<u2").view(np.uint8),
                np.repeat((MONO16 >> 8).astype(np.uint8)[..., None], 3, 2), 0)
    if encoding == "16UC1":
        return DEPTH.astype("<u2").view(np.uint8), depth_expected(DEPTH), 0
    if encoding in ("uyvy", "yuv422", "UYVY", "yuyv", "yuv422_yuy2", "YUYV"):
        y0, y1 = YUV_Y[:, 0::2], YUV_Y[:, 1::2]
        if encoding in ("uyvy", "yuv422", "UYVY"):
            quads = np.stack([YUV_U, y0, YUV_V, y1], axis=-1)
        else:
            quads = np.stack([y0, YUV_U, y1, YUV_V], axis=-1)
        u = np.repeat(YUV_U, 2, axis=1)
        v = np.repeat(YUV_V, 2, axis=1)
        # OpenCV works in fixed point with slightly different rounding of the coefficients: 2 levels.
        return quads.reshape(H, -1), bt601(YUV_Y, u, v), 2
    raise AssertionError(encoding)


BAYER_OFFSETS = {"r": 0, "g": 1, "b": 2}


def bayer_mosaic(pattern, colour_of_column, width, height):
    """Sample an RGB scene (colour per column) through a 2x2 CFA named like ROS ('rggb': R at (0,0))."""
    cfa = [[pattern[0], pattern[1]], [pattern[2], pattern[3]]]
    out = np.zeros((height, width), np.uint8)
    for yy in range(height):
        for xx in range(width):
            out[yy, xx] = colour_of_column(xx)[BAYER_OFFSETS[cfa[yy % 2][xx % 2]]]
    return out


NON_BAYER = [e for e in ACCEPTED_ENCODINGS if not e.startswith("bayer_")]
BAYER = [e for e in ACCEPTED_ENCODINGS if e.startswith("bayer_")]


def test_accepted_encodings_cover_the_contract():
    for enc in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "8UC1", "8UC3",
                "yuv422", "uyvy", "yuyv", "yuv422_yuy2", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8",
                "bayer_grbg8"):
        assert enc in ACCEPTED_ENCODINGS


@pytest.mark.parametrize("encoding", NON_BAYER)
def test_encoding_converts_to_known_rgb(encoding):
    rows, expected, tol = raw_frame(encoding)
    out = imgmsg_to_rgb(make_image(encoding, W, H, rows))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    diff = np.abs(out.astype(int) - np.rint(expected).astype(int))
    assert diff.max() <= tol, f"{encoding}: max difference {diff.max()}"


@pytest.mark.parametrize("encoding", NON_BAYER + BAYER)
@pytest.mark.parametrize("pad", [1, 6])
def test_padded_rows_equal_unpadded(encoding, pad):
    if encoding.startswith("bayer_"):
        rows = GRAY
    else:
        rows = raw_frame(encoding)[0]
    rows = np.ascontiguousarray(rows).reshape(H, -1)
    plain = imgmsg_to_rgb(make_image(encoding, W, H, rows))
    padded = imgmsg_to_rgb(make_image(encoding, W, H, rows, step=rows.shape[1] + pad))
    assert padded.flags.c_contiguous
    np.testing.assert_array_equal(padded, plain)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_big_endian_16bit_equals_little_endian(encoding):
    values = MONO16 if encoding == "mono16" else DEPTH
    le = make_image(encoding, W, H, values.astype("<u2").view(np.uint8))
    be = make_image(encoding, W, H, values.astype(">u2").view(np.uint8), bigendian=1)
    assert bytes(le.data) != bytes(be.data)
    np.testing.assert_array_equal(imgmsg_to_rgb(be), imgmsg_to_rgb(le))
    # And big-endian padded rows with an odd step (misaligned 16-bit values) too.
    be_padded = make_image(encoding, W, H, values.astype(">u2").view(np.uint8), step=2 * W + 3, bigendian=1)
    np.testing.assert_array_equal(imgmsg_to_rgb(be_padded), imgmsg_to_rgb(le))


def test_depth_stretch_uniform_and_empty_frames():
    flat = np.where(DEPTH > 0, 1234, 0).astype("<u2")
    out = imgmsg_to_rgb(make_image("16UC1", W, H, flat.view(np.uint8)))
    np.testing.assert_array_equal(out[..., 0], np.where(DEPTH > 0, 255, 0))
    empty = np.zeros((H, W), "<u2")
    assert not imgmsg_to_rgb(make_image("16UC1", W, H, empty.view(np.uint8))).any()


@pytest.mark.parametrize("encoding", BAYER)
@pytest.mark.parametrize("colour", [(200, 40, 90), (10, 250, 128)])
def test_bayer_uniform_colour(encoding, colour):
    pattern = encoding[len("bayer_"):-1]
    width, height = 10, 8
    mosaic = bayer_mosaic(pattern, lambda x: colour, width, height)
    out = imgmsg_to_rgb(make_image(encoding, width, height, mosaic))
    assert out.shape == (height, width, 3)
    interior = out[2:-2, 2:-2].reshape(-1, 3)
    assert (interior == np.array(colour, np.uint8)).all(), f"{encoding}: {interior[0]} != {colour}"


@pytest.mark.parametrize("encoding", BAYER)
def test_bayer_two_colour_halves(encoding):
    pattern = encoding[len("bayer_"):-1]
    left, right = (200, 40, 90), (30, 180, 250)
    width, height = 16, 8
    mosaic = bayer_mosaic(pattern, lambda x: left if x < 8 else right, width, height)
    out = imgmsg_to_rgb(make_image(encoding, width, height, mosaic, step=width + 3))
    assert (out[2:-2, 2:6].reshape(-1, 3) == left).all()
    assert (out[2:-2, 10:14].reshape(-1, 3) == right).all()


def test_rgb8_unpadded_is_a_view_of_the_message():
    msg = make_image("rgb8", W, H, REF)
    out = imgmsg_to_rgb(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("kind", ["bytes", "numpy", "list"])
def test_duck_typed_data_containers(kind):
    raw = REF[..., ::-1].tobytes()
    data = {"bytes": raw, "numpy": np.frombuffer(raw, np.uint8).copy(), "list": list(raw)}[kind]
    msg = SimpleNamespace(encoding="bgr8", width=W, height=H, step=3 * W, is_bigendian=0, data=data)
    np.testing.assert_array_equal(imgmsg_to_rgb(msg), REF)


# --- refusals ---------------------------------------------------------------------------------


def refusal(msg, fn=imgmsg_to_rgb):
    with pytest.raises(ImageError) as info:
        fn(msg)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_unknown_encoding_lists_accepted():
    text = refusal(make_image("xyz", W, H, REF))
    assert "'xyz'" in text and "accepted" in text and "rgb8" in text and "bayer_rggb8" in text
    assert "32FC1" in refusal(make_image("32FC1", W, H, np.zeros((H, W * 4), np.uint8)))


def test_zero_size():
    msg = make_image("rgb8", W, H, REF)
    msg.width = 0
    assert "zero size" in refusal(msg) and "rgb8" in refusal(msg)
    msg = make_image("mono8", W, H, GRAY)
    msg.height = 0
    assert "zero size" in refusal(msg)


def test_step_smaller_than_row():
    msg = make_image("rgb8", W, H, REF)
    msg.step = 3 * W - 1
    text = refusal(msg)
    assert "step 17" in text and "smaller than a row" in text and "'rgb8'" in text
    msg = make_image("16UC1", W, H, DEPTH.view(np.uint8))
    msg.step = W  # a row of 16UC1 is 2 * W
    assert "smaller than a row" in refusal(msg)


def test_truncated_data():
    msg = make_image("bgr8", W, H, REF[..., ::-1])
    msg.data = msg.data[:-1]
    text = refusal(msg)
    assert "truncated" in text and "'bgr8'" in text and str(3 * W * H) in text


def test_odd_width_yuv():
    for enc in ("yuv422", "yuyv"):
        msg = make_image(enc, 5, H, np.zeros((H, 10), np.uint8))
        text = refusal(msg)
        assert "odd width" in text and repr(enc) in text


def test_oversize_refused_before_reading_data():
    msg = make_image("rgb8", W, H, REF)
    msg.width, msg.height, msg.step = 10000, 10000, 30000  # 100 Mpx, data far too short
    text = refusal(msg)
    assert "over the limit" in text and str(MAX_PIXELS) in text


# --- compressed -------------------------------------------------------------------------------


def pil_bytes(array_, fmt, **kwargs):
    buf = io.BytesIO()
    PILImage.fromarray(array_).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_compressed(data, fmt):
    msg = CompressedImage()
    msg.header.frame_id = "cam"
    msg.format = fmt
    msg.data = array.array("B", data)
    return msg


def test_png_rgb_exact():
    for fmt in ("png", "rgb8; png compressed bgr8"):
        out = compressed_imgmsg_to_rgb(make_compressed(pil_bytes(REF, "PNG"), fmt))
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, REF)


def test_png_rgba_drops_alpha_and_gray_repeats():
    rgba = np.concatenate([REF, ALPHA], axis=2)
    np.testing.assert_array_equal(compressed_imgmsg_to_rgb(make_compressed(pil_bytes(rgba, "PNG"), "png")),
                                  REF)
    out = compressed_imgmsg_to_rgb(make_compressed(pil_bytes(GRAY, "PNG"), "mono8; png compressed mono8"))
    np.testing.assert_array_equal(out, np.repeat(GRAY[..., None], 3, axis=2))


def test_png_16bit_mono_and_depth():
    png16 = pil_bytes(MONO16, "PNG")
    assert PILImage.open(io.BytesIO(png16)).mode.startswith("I;16")
    out = compressed_imgmsg_to_rgb(make_compressed(png16, "mono16; png compressed mono16"))
    np.testing.assert_array_equal(out[..., 1], (MONO16 >> 8).astype(np.uint8))
    depth_png = pil_bytes(DEPTH, "PNG")
    out = compressed_imgmsg_to_rgb(make_compressed(depth_png, "16UC1; png compressed 16UC1"))
    np.testing.assert_array_equal(out, depth_expected(DEPTH))
    # compressed_depth_image_transport: a 12-byte header (format + 2 floats) before the PNG.
    header = struct.pack("<iff", 0, 0.0, 0.0)
    out = compressed_imgmsg_to_rgb(make_compressed(header + depth_png, "16UC1; compressedDepth png"))
    np.testing.assert_array_equal(out, depth_expected(DEPTH))


def quadrants(size=32):
    colours = [(220, 30, 40), (30, 200, 60), (40, 60, 210), (230, 220, 200)]
    img = np.zeros((size, size, 3), np.uint8)
    half = size // 2
    img[:half, :half], img[:half, half:], img[half:, :half], img[half:, half:] = colours
    return img


def test_jpeg_colour_and_gray_within_tolerance():
    img = quadrants()
    jpg = pil_bytes(img, "JPEG", quality=95, subsampling=0)
    out = compressed_imgmsg_to_rgb(make_compressed(jpg, "rgb8; jpeg compressed bgr8"))
    assert out.shape == img.shape
    # Away from the quadrant edges a uniform 8x8 block survives JPEG q95 within a few levels;
    # a swapped channel order would be off by ~180.
    for sl in (np.s_[2:14, 2:14], np.s_[2:14, 18:30], np.s_[18:30, 2:14], np.s_[18:30, 18:30]):
        assert np.abs(out[sl].astype(int) - img[sl].astype(int)).max() <= 6
    gray = np.full((16, 24), 77, np.uint8)
    gray[:, 12:] = 200
    out = compressed_imgmsg_to_rgb(make_compressed(pil_bytes(gray, "JPEG", quality=95), "jpeg"))
    assert np.abs(out[:, :8].astype(int) - 77).max() <= 4
    assert np.abs(out[:, 16:].astype(int) - 200).max() <= 4


def test_compressed_refusals():
    assert "empty data" in refusal(make_compressed(b"", "jpeg"), compressed_imgmsg_to_rgb)
    garbage = b"\xff\xd8\xff\xe0" + bytes(RNG.integers(0, 256, 200, dtype=np.uint8))
    text = refusal(make_compressed(garbage, "jpeg"), compressed_imgmsg_to_rgb)
    assert "corrupt JPEG header" in text and "'jpeg'" in text
    text = refusal(make_compressed(b"not an image at all", "png"), compressed_imgmsg_to_rgb)
    assert "not JPEG or PNG data" in text and "accepted: JPEG, PNG" in text
    assert "RVL" in refusal(make_compressed(b"\0" * 40, "16UC1; compressedDepth rvl"),
                            compressed_imgmsg_to_rgb)
    # A PNG whose header claims 9000 x 8000 (72 Mpx): refused from the header, nothing decoded.
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 9000, 8000, 8, 2, 0, 0, 0)  # 8-bit RGB
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + chunk(b"IEND", b""))
    text = refusal(make_compressed(bomb, "png"), compressed_imgmsg_to_rgb)
    assert "over the limit" in text and "9000x8000" in text


def _radiance_hdr(width, height):
    """A Radiance HDR file claiming width x height: a text header and a few flat RGBE scanlines."""
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    return header + bytes([128, 64, 32, 129]) * 1000


OTHER_FORMATS = {
    "hdr": lambda: _radiance_hdr(9000, 9000),  # 81 Mpx in 4 kB: OpenCV decoded such files in full
    "bmp": lambda: pil_bytes(REF, "BMP"),
    "tiff": lambda: pil_bytes(REF, "TIFF"),
    "webp": lambda: pil_bytes(REF, "WEBP", lossless=True),
    "gif": lambda: pil_bytes(REF, "GIF"),
    "ppm": lambda: b"P6\n9000 9000\n255\n" + bytes(300),
}


@pytest.mark.parametrize("kind", sorted(OTHER_FORMATS))
def test_only_jpeg_and_png_reach_a_decoder(kind, monkeypatch):

    decoded, imdecode = [], bridge.cv2.imdecode
    monkeypatch.setattr(bridge.cv2, "imdecode", lambda *a: decoded.append(a) or imdecode(*a))
    for fmt in (kind, "jpeg", "png"):  # whatever the sender calls it
        text = refusal(make_compressed(OTHER_FORMATS[kind](), fmt), compressed_imgmsg_to_rgb)
        assert "not JPEG or PNG data" in text and "accepted: JPEG, PNG" in text
    assert decoded == []
    np.testing.assert_array_equal(compressed_imgmsg_to_rgb(make_compressed(pil_bytes(REF, "PNG"), "png")),
                                  REF)
    assert len(decoded) == 1


def _with(msg, **fields):
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def test_checks_refuse_what_conversion_refuses_without_converting(monkeypatch):
    """The node runs the checks on arrival and converts only frames inference uses: each check must
    refuse with the converter's own words, and pass a good frame without touching OpenCV."""
    bad_raw = [
        make_image("xyz", W, H, REF),
        _with(make_image("rgb8", W, H, REF), width=0),
        _with(make_image("rgb8", W, H, REF), step=3 * W - 1),
        _with(make_image("bgr8", W, H, REF), data=make_image("bgr8", W, H, REF).data[:-1]),
        make_image("yuyv", 5, H, np.zeros((H, 10), np.uint8)),
        _with(make_image("rgb8", W, H, REF), width=10000, height=10000, step=30000),
    ]
    for msg in bad_raw:
        assert refusal(msg, check_imgmsg) == refusal(msg, imgmsg_to_rgb)
    bad_compressed = [make_compressed(b"", "jpeg"), make_compressed(b"not an image at all", "png"),
                      make_compressed(b"\0" * 40, "16UC1; compressedDepth rvl")]
    for msg in bad_compressed:
        assert refusal(msg, check_compressed_imgmsg) == refusal(msg, compressed_imgmsg_to_rgb)

    def no_opencv(*args):
        raise AssertionError("a check converted pixels")

    monkeypatch.setattr(bridge.cv2, "cvtColor", no_opencv)
    monkeypatch.setattr(bridge.cv2, "imdecode", no_opencv)
    check_imgmsg(make_image("bgr8", W, H, REF[..., ::-1]))
    check_compressed_imgmsg(make_compressed(pil_bytes(REF, "PNG"), "png"))
    # A JPEG start with garbage after it passes the check: only decoding can tell.
    check_compressed_imgmsg(make_compressed(b"\xff\xd8\xff\xe0 not a jpeg", "jpeg"))


# --- rgb_to_imgmsg ------------------------------------------------------------------------


def test_rgb_to_image_msg_round_trip():
    from rclpy.serialization import deserialize_message, serialize_message

    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    rgb = np.ascontiguousarray(np.concatenate([REF, REF[:, :1]], axis=1)[:, ::-1])  # 7 wide
    msg = rgb_to_imgmsg(rgb[:, :], header)
    assert isinstance(msg, Image)
    assert (msg.encoding, msg.width, msg.height, msg.step, msg.is_bigendian) == ("rgb8", 7, H, 21, 0)
    assert msg.header.frame_id == "camera_optical" and msg.header.stamp.nanosec == 345
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(imgmsg_to_rgb(back), rgb)
    # A non-contiguous view goes out as its pixels.
    view = REF[:, ::2]
    np.testing.assert_array_equal(imgmsg_to_rgb(rgb_to_imgmsg(view)), view)
    with pytest.raises(ImageError):
        rgb_to_imgmsg(np.zeros((4, 4), np.uint8))


# --- draw_answer -----------------------------------------------------------------------------


def test_draw_answer_box_and_text():
    frame = np.full((120, 160, 3), 128, np.uint8)
    before = frame.copy()
    boxes = [Box(20.0, 30.0, 90.0, 70.0, phrase="red cup"), Box(100.0, 10.0, 150.0, 50.0, phrase="")]
    out = draw_answer(frame, "a red cup on a table next to a laptop and a phone", boxes)
    np.testing.assert_array_equal(frame, before)  # input untouched
    assert out.shape == frame.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    # Bottom and right edges of each box, away from its label, in its colour (RGB order as given).
    assert tuple(out[70, 55]) == BOX_COLORS[0]
    assert tuple(out[50, 20]) == BOX_COLORS[0]
    assert tuple(out[30, 150]) == BOX_COLORS[1]
    # The text band darkens the bottom rows.
    assert out[-1].mean() < 128


def test_draw_answer_empty_text_changes_only_boxes():
    frame = np.full((60, 80, 3), 200, np.uint8)
    out = draw_answer(frame, "", [])
    np.testing.assert_array_equal(out, frame)
    assert out is not frame
    out = draw_answer(frame, "   ", [Box(0.0, 0.0, 79.0, 59.0, phrase="everything")])  # touching every edge
    assert tuple(out[59, 40]) == BOX_COLORS[0] and tuple(out[30, 79]) == BOX_COLORS[0]


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 1), (7, 9)])
def test_draw_answer_tiny_images(shape):
    frame = np.zeros(shape + (3,), np.uint8)
    boxes = [Box(-5.0, -5.0, 100.0, 100.0, phrase="a very long phrase for a tiny image"),
             Box(float("nan"), 0.0, 1.0, 1.0, phrase="nan"),
             Box(500.0, 500.0, 600.0, 600.0, phrase="outside")]
    out = draw_answer(frame, "word " * 200 + "unbreakablewordthatiswiderthananything" * 5, boxes)
    assert out.shape == frame.shape and out.dtype == np.uint8


def test_draw_answer_long_text_is_cut_to_a_few_lines():
    from mobilevlm_ros.ros.annotate import MAX_TEXT_LINES, _wrap

    lines = _wrap("lorem ipsum dolor " * 100, 300, 0.6, 1, MAX_TEXT_LINES)
    assert len(lines) == MAX_TEXT_LINES and lines[-1].endswith("...")
    assert _wrap("short answer", 300, 0.6, 1, MAX_TEXT_LINES) == ["short answer"]
    assert _wrap("caf\u00e9", 300, 0.6, 1, MAX_TEXT_LINES) == ["caf?"]
