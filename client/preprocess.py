"""The one preprocessing implementation: encoded bytes -> RGB -> network input, and back to pixels.

numpy/OpenCV (plus PIL for the header check and RT-DETRv2's resize) only, so the Triton preprocess
step, the client and the in-process reference pipeline all run this same code.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from .errors import InvalidImageError
from .specs import PreprocessSpec

# Decompression-bomb guard, checked from the header before any pixel is decoded.
MAX_PIXELS = 64_000_000
# Smaller images carry no detectable object once stretched to the network size.
MIN_SIDE = 8
# Encodings OpenCV decodes (PIL's format names). Others (GIF, ICO, ...) get a clear "unsupported" error
# instead of a misleading "corrupt".
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF")
# EXIF orientation (tag 0x0112) -> the OpenCV ops that turn the stored pixels into the displayed image
# (the TIFF/EXIF spec's eight cases; 1 and missing: as stored). 5..8 swap width and height.
_ORIENT = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}

# PIL's own bomb check warns/raises at other limits; ours is the one that counts.
Image.MAX_IMAGE_PIXELS = None


def _header(data: bytes) -> tuple[int, int, str, int]:
    """(stored width, stored height, PIL format name, EXIF orientation 1..8) from the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                width, height, fmt = int(im.size[0]), int(im.size[1]), str(im.format)
                try:
                    orientation = int(im.getexif().get(0x0112, 1))
                except Exception:  # a malformed EXIF block: the pixels as stored
                    orientation = 1
    except Exception as err:  # PIL raises several types for garbage (UnidentifiedImageError, SyntaxError...)
        raise InvalidImageError(f"not a decodable image ({len(data)} bytes): {type(err).__name__}") from None
    return width, height, fmt, orientation if orientation in _ORIENT else 1


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the image as displayed (EXIF orientation applied), from the header only.
    Raises InvalidImageError for non-images."""
    width, height, _, orientation = _header(data)
    return (height, width) if orientation >= 5 else (width, height)


# libjpeg-turbo's DCT-domain scaled decodes (cv2.imdecode flags): 1/r of each side, rounded up
JPEG_REDUCED = {4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


def jpeg_reduction(width: int, height: int, at_least_hw: tuple[int, int]) -> int:
    """The largest reduction r in (4, 2) whose decode (ceil(side / r)) is still at least `at_least_hw`
    (height, width) on both sides of the displayed `width` x `height` image; 1 when none is."""
    for r in JPEG_REDUCED:
        if -(-width // r) >= at_least_hw[1] and -(-height // r) >= at_least_hw[0]:
            return r
    return 1


def decode_checked(data: bytes | npt.NDArray[np.uint8], *, max_pixels: int = MAX_PIXELS,
                   at_least_hw: tuple[int, int] | None = None) -> tuple[npt.NDArray[np.uint8], tuple[int, int]]:
    """decode_bgr, and the displayed (height, width) of the encoded image. With `at_least_hw`, a JPEG is
    decoded at 1/2 or 1/4 of each side in libjpeg-turbo's DCT domain when that stays at least this size
    (jpeg_reduction): fewer pixels to decode and resize; the size returned is still the full one."""
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not buf:
        raise InvalidImageError("empty image: 0 bytes")
    width, height, fmt, orientation = _header(buf)
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidImageError(f"unsupported image format {fmt} ({width}x{height}): send "
                                f"{', '.join(SUPPORTED_FORMATS[:-1])} or {SUPPORTED_FORMATS[-1]}")
    if width * height > max_pixels:
        raise InvalidImageError(f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}")
    if min(width, height) < MIN_SIDE:
        raise InvalidImageError(f"image too small: {width}x{height}, need at least {MIN_SIDE} pixels per side")
    shown = (width, height) if orientation < 5 else (height, width)
    r = jpeg_reduction(*shown, at_least_hw) if at_least_hw is not None and fmt == "JPEG" else 1
    # orientation is applied here, not by OpenCV, so it is the same for every format and explicit
    flag = JPEG_REDUCED.get(r, cv2.IMREAD_COLOR)
    bgr = cv2.imdecode(np.frombuffer(buf, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.shape[0] != -(-height // r) or bgr.shape[1] != -(-width // r):
        raise InvalidImageError(f"corrupt or truncated {fmt} image ({len(buf)} bytes, header says {width}x{height})")
    bgr = _ORIENT[orientation](bgr) if orientation in _ORIENT else bgr
    return bgr, (shown[1], shown[0])


def decode_bgr(data: bytes | npt.NDArray[np.uint8], *, max_pixels: int = MAX_PIXELS) -> npt.NDArray[np.uint8]:
    """Decode JPEG/PNG/BMP/WebP/TIFF bytes to a BGR uint8 array [H, W, 3] (OpenCV's order), with every check.

    The result is the image as displayed: an EXIF orientation (phone photos) is applied, so boxes refer
    to what a viewer shows. Grayscale, 16-bit, paletted, CMYK and RGBA inputs come back as 8-bit
    3-channel (alpha dropped). Raises InvalidImageError naming the problem for empty, truncated,
    non-image or unsupported bytes, images smaller than MIN_SIDE, and images over `max_pixels` (read
    from the header before any pixel is decoded: decompression bombs).
    """
    return decode_checked(data, max_pixels=max_pixels)[0]


def decode_image(data: bytes | npt.NDArray[np.uint8], *, max_pixels: int = MAX_PIXELS) -> npt.NDArray[np.uint8]:
    """Like decode_bgr, but RGB: [H, W, 3] uint8."""
    return cv2.cvtColor(decode_bgr(data, max_pixels=max_pixels), cv2.COLOR_BGR2RGB)


def resize_rgb(rgb: npt.NDArray[np.uint8], spec: PreprocessSpec) -> npt.NDArray[np.uint8]:
    """Stretch an RGB uint8 [H, W, 3] image to spec.size_hw (no letterbox), as the official eval does."""
    h, w = spec.size_hw
    if spec.resize == "cv2-linear":
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    if spec.resize == "pil-bilinear":
        # torchvision's Resize on a PIL image calls PIL's antialiased bilinear: match it exactly.
        return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    raise ValueError(f"unknown resize {spec.resize!r}")


def to_chw(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """RGB [H, W, 3] -> contiguous [3, H, W], still uint8 (the cast/scale happens in the engine graph)."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def preprocess(data: bytes, spec: PreprocessSpec, *, max_pixels: int = MAX_PIXELS
               ) -> tuple[npt.NDArray[np.uint8], tuple[int, int]]:
    """Encoded image -> (uint8 [3, H, W] network input in RGB, original (height, width))."""
    rgb = decode_image(data, max_pixels=max_pixels)
    return to_chw(resize_rgb(rgb, spec)), (rgb.shape[0], rgb.shape[1])


def to_float_input(chw_u8: npt.NDArray[np.uint8], spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """uint8 [..., 3, H, W] -> float32 in the model's range: the same cast and scale the engine graph does."""
    x = chw_u8.astype(np.float32)
    return x if spec.scale == 1.0 else x * np.float32(spec.scale)


def boxes_to_original(boxes_xyxy: npt.NDArray[np.float32], orig_hw: tuple[int, int],
                      spec: PreprocessSpec) -> npt.NDArray[np.float32]:
    """Map xyxy boxes [N, 4] from network-input pixels to original-image pixels (per-axis stretch)."""
    in_h, in_w = spec.size_hw
    sx, sy = orig_hw[1] / in_w, orig_hw[0] / in_h
    return (boxes_xyxy * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)

