"""What the client accepts as an image, turned into the bytes the wire carries (IMAGE: one encoded image).

The server decodes encoded images only (its preprocess is the one the models were evaluated with), so
raw pixels are encoded here, losslessly (PNG, fastest compression level): the server then sees exactly
these pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from .errors import UserError

# bytes-like: an encoded file's contents; str / PathLike: a file to read; ndarray / PIL image: pixels
ImageInput = Union[bytes, bytearray, memoryview, str, os.PathLike, np.ndarray, Any]


def encode_image(image: ImageInput) -> bytes:
    """Encoded image bytes for the wire.

    bytes / bytearray / memoryview: sent as they are (JPEG, PNG, BMP, WebP, TIFF: the server checks).
    str / Path: the file's bytes (FileNotFoundError if missing).
    numpy uint8 array: H x W x 3 in BGR order (what cv2.imread returns and Ultralytics takes), H x W
    grayscale, or H x W x 4 BGRA; PNG-encoded.
    PIL.Image: its pixels (RGB order, as PIL holds them), PNG-encoded.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        return path.read_bytes()
    if isinstance(image, np.ndarray):
        return _encode_array(image)
    if type(image).__module__.startswith("PIL."):  # without importing PIL for everyone
        rgb = np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
        return _encode_array(cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR))
    raise UserError(f"cannot send a {type(image).__name__} as an image: pass encoded bytes, a file path, "
                    "a numpy uint8 array (H x W x 3 BGR) or a PIL image")


def _encode_array(array: np.ndarray) -> bytes:
    if array.dtype != np.uint8:
        raise UserError(f"image arrays must be uint8 (got {array.dtype}): scale them to 0..255 first")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise UserError(f"image arrays must be H x W, H x W x 3 (BGR) or H x W x 4 (BGRA), got shape {array.shape}"
                        + ("; a CHW array? transpose it to HWC" if array.ndim == 3 and array.shape[0] in (1, 3) else ""))
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise UserError(f"OpenCV could not encode an array of shape {array.shape} as PNG")
    return buf.tobytes()
