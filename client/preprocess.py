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

from .specs import PreprocessSpec

# Decompression-bomb guard, checked from the header before any pixel is decoded.
MAX_PIXELS = 64_000_000
# Smaller images carry no detectable object once stretched to the network size.
MIN_SIDE = 8

# PIL's own bomb check warns/raises at other limits; ours is the one that counts.
Image.MAX_IMAGE_PIXELS = None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the image header only. Raises ValueError for non-images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return int(im.size[0]), int(im.size[1])
    except Exception as err:  # PIL raises several types for garbage (UnidentifiedImageError, SyntaxError...)
        raise ValueError(f"not a decodable image ({len(data)} bytes): {type(err).__name__}") from None


def decode_bgr(data: bytes | npt.NDArray[np.uint8], *, max_pixels: int = MAX_PIXELS) -> npt.NDArray[np.uint8]:
    """Decode JPEG/PNG/BMP/WebP bytes to a BGR uint8 array [H, W, 3] (OpenCV's order), with every check.

    Grayscale and RGBA inputs come back as 3 channels (alpha dropped). Raises ValueError naming the
    problem for empty, truncated or non-image bytes, images smaller than MIN_SIDE, and images over
    `max_pixels` (read from the header before any pixel is decoded: decompression bombs).
    """
    buf = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not buf:
        raise ValueError("empty image: 0 bytes")
    width, height = image_size(buf)
    if width * height > max_pixels:
        raise ValueError(f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}")
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"image too small: {width}x{height}, need at least {MIN_SIDE} pixels per side")
    bgr = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[0] != height or bgr.shape[1] != width:
        raise ValueError(f"corrupt or truncated image ({len(buf)} bytes, header says {width}x{height})")
    return bgr


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

