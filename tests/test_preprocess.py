"""The shared preprocessing: decoding, bad bytes, resize conventions, box mapping."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tdet.client import preprocess as pp
from tdet.client.specs import DAMO_YOLO_PRE, RTDETRV2_PRE


def _encode(arr: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((90, 160, 3), np.uint8)
    img[..., 0] = 200  # red channel in RGB
    img[20:60, 30:100] = rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)
    return img


def test_decode_returns_rgb(rgb):
    data = _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".png")
    out = pp.decode_image(data)
    assert out.shape == (90, 160, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)  # PNG is lossless: exact RGB round trip


def test_grayscale_and_rgba_png_decode_to_three_channels(rgb):
    gray = _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), ".png")
    rgba = io.BytesIO()
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA").save(rgba, "PNG")
    for data in (gray, rgba.getvalue()):
        out = pp.decode_image(data)
        assert out.shape == (90, 160, 3)
    np.testing.assert_array_equal(pp.decode_image(rgba.getvalue()), rgb)


@pytest.mark.parametrize("data, message", [
    (b"", "empty image"),
    (b"this is not an image at all", "not a decodable image"),
])
def test_bad_bytes_raise_clear_errors(data, message):
    with pytest.raises(ValueError, match=message):
        pp.decode_image(data)


def test_truncated_jpeg_is_rejected(rgb):
    big = cv2.resize(rgb, (640, 360))
    data = _encode(big, ".jpg")
    with pytest.raises(ValueError, match="corrupt or truncated|not a decodable"):
        pp.decode_image(data[: len(data) // 3])


def test_tiny_images_are_refused():
    with pytest.raises(ValueError, match="image too small: 1x1"):
        pp.decode_image(_encode(np.zeros((1, 1, 3), np.uint8), ".png"))
    assert pp.decode_image(_encode(np.zeros((8, 8, 3), np.uint8), ".png")).shape == (8, 8, 3)


def test_pixel_limit_checked_from_header():
    data = _encode(np.zeros((300, 400, 3), np.uint8), ".png")
    with pytest.raises(ValueError, match="image too large: 400x300"):
        pp.decode_image(data, max_pixels=100_000)


def test_preprocess_shapes_and_scale(rgb):
    data = _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".png")
    for spec in (DAMO_YOLO_PRE, RTDETRV2_PRE):
        chw, orig_hw = pp.preprocess(data, spec)
        assert chw.shape == (3, 640, 640) and chw.dtype == np.uint8
        assert orig_hw == (90, 160)
        x = pp.to_float_input(chw[None], spec)
        assert x.dtype == np.float32 and x.max() <= 255 * spec.scale + 1e-6
    # DAMO-YOLO: cv2 INTER_LINEAR stretch, the official eval transform
    damo, _ = pp.preprocess(data, DAMO_YOLO_PRE)
    np.testing.assert_array_equal(damo, cv2.resize(rgb, (640, 640)).transpose(2, 0, 1))
    # RT-DETRv2: PIL bilinear (torchvision Resize on a PIL image)
    rt, _ = pp.preprocess(data, RTDETRV2_PRE)
    ref = np.asarray(Image.fromarray(rgb).resize((640, 640), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(rt, ref)


def test_boxes_to_original_inverts_the_stretch():
    boxes = np.array([[0, 0, 640, 640], [320, 160, 480, 320]], np.float32)
    out = pp.boxes_to_original(boxes, (90, 160), DAMO_YOLO_PRE)
    np.testing.assert_allclose(out, [[0, 0, 160, 90], [80, 22.5, 120, 45]])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_displayed_image(rgb, orientation):
    """Boxes refer to the image as displayed: every EXIF orientation is applied, as PIL's exif_transpose
    (an independent implementation) applies it; the header size check uses the displayed size too."""
    from PIL import ImageOps

    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    np.testing.assert_array_equal(pp.decode_image(buf.getvalue()), want)
    assert pp.image_size(buf.getvalue()) == (want.shape[1], want.shape[0])


def test_unusual_encodings_decode_to_the_right_pixels(rgb):
    """16-bit, paletted and CMYK inputs come back as 8-bit RGB of the same picture."""
    im = Image.fromarray(rgb)
    png16 = _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257, ".png")
    np.testing.assert_array_equal(pp.decode_image(png16), rgb)
    paletted = io.BytesIO()
    im.convert("P").save(paletted, "PNG")
    np.testing.assert_array_equal(pp.decode_image(paletted.getvalue()), np.asarray(im.convert("P").convert("RGB")))
    cmyk = io.BytesIO()
    im.convert("CMYK").save(cmyk, "JPEG", quality=100)
    # CMYK -> RGB is lossy (JPEG, colour conversion), but the picture must be the same one
    assert np.abs(pp.decode_image(cmyk.getvalue()).astype(int) - rgb).mean() < 8


@pytest.mark.parametrize("fmt", ["GIF", "ICO", "PPM"])
def test_formats_opencv_does_not_decode_are_refused_by_name(rgb, fmt):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    with pytest.raises(ValueError, match=f"unsupported image format {fmt}"):
        pp.decode_image(buf.getvalue())


def test_hw_text_round_trips_and_bad_text_names_the_problem():
    from tdet.client.specs import format_hw, parse_hw
    assert parse_hw(format_hw((320, 480))) == (320, 480)
    assert format_hw(parse_hw("640,640")) == "640,640"
    for bad in ("640", "640,x", "640,640,3", "0,640", ""):
        with pytest.raises(ValueError, match="height,width|positive"):
            parse_hw(bad)
