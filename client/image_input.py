"""What the client accepts as an image, turned into the bytes the wire carries (IMAGE: one encoded image).

The server decodes encoded images only (its preprocess is the one the models were evaluated with), so
raw pixels are encoded here, losslessly (PNG, fastest compression level): the server then sees exactly
these pixels.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import UserError

URL_SCHEMES = ("http://", "https://")
FETCH_TIMEOUT_S = 30.0
MAX_FETCH_BYTES = 100 * 2**20  # far above any real photo; stops a wrong link (a video, an ISO) from filling memory
# what people try to pass as an image; told plainly instead of "not a decodable image"
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})

# bytes-like: an encoded file's contents; str / PathLike: a file to read; ndarray / PIL image: pixels
ImageInput = bytes | bytearray | memoryview | str | os.PathLike | np.ndarray | Any


def encode_image(image: ImageInput) -> bytes:
    """Encoded image bytes for the wire.

    bytes / bytearray / memoryview: sent as they are (JPEG, PNG, BMP, WebP, TIFF: the server checks).
    str / Path: the file's bytes (FileNotFoundError if missing); a str http(s):// URL: its bytes, fetched.
    numpy uint8 array: H x W x 3 in BGR order (what cv2.imread returns and Ultralytics takes), H x W
    grayscale, or H x W x 4 BGRA; PNG-encoded.
    PIL.Image: its pixels (RGB order, as PIL holds them), PNG-encoded.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, str) and is_url(image):
        return fetch_url(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        check_not_video(path)
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
                        + ("; a CHW array? transpose it to HWC"
                           if array.ndim == 3 and array.shape[0] in (1, 3) else ""))
    if array.size == 0:
        raise UserError(f"image array is empty (shape {array.shape}): nothing to detect in")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise UserError(f"OpenCV could not encode an array of shape {array.shape} as PNG")
    return buf.tobytes()


def is_url(source: str | os.PathLike) -> bool:
    """An http(s):// URL (a str; a Path would already have lost one of its slashes)."""
    return isinstance(source, str) and source.lower().startswith(URL_SCHEMES)


def check_not_video(source: str | os.PathLike, what: str = "tdet") -> None:
    """UserError for a video file or URL (by its suffix) where a still image is expected."""
    path = urllib.parse.urlsplit(source).path if is_url(source) else str(source)
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        raise UserError(f"{source}: a video, not an image ({what} takes images); run videos with `tdet infer "
                        "VIDEO` or tdet.client.video.run_video")


def fetch_url(url: str, *, timeout_s: float = FETCH_TIMEOUT_S, max_bytes: int = MAX_FETCH_BYTES) -> bytes:
    """The body of an http(s) URL. UserError naming the URL and the HTTP status or the network error, or
    saying that it is larger than max_bytes."""
    request = urllib.request.Request(url, headers={"User-Agent": "tdet"})  # some hosts refuse Python's default
    declared = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length", "")
            declared = int(length) if length.isdigit() else 0
            data = b"" if declared > max_bytes else response.read(max_bytes + 1)
    except urllib.error.HTTPError as err:
        raise UserError(f"could not fetch {url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise UserError(f"could not fetch {url}: {_reason(err.reason, timeout_s)}") from None
    except (OSError, http.client.HTTPException, ValueError) as err:  # timeouts while reading, resets, bad URLs
        raise UserError(f"could not fetch {url}: {_reason(err, timeout_s)}") from None
    if max(declared, len(data)) > max_bytes:
        raise UserError(f"could not fetch {url}: larger than the {max_bytes} bytes allowed")
    return data


def _reason(err: object, timeout_s: float) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    return str(getattr(err, "strerror", None) or err) or type(err).__name__


def wire_images(blobs: list[bytes], config: dict) -> tuple[np.ndarray, str]:
    """(array, Triton datatype) of one request's IMAGE input for this model config: BYTES [B, 1] (the python
    preprocess), or uint8 [B, L] where the model's IMAGE is uint8 (--preprocess dali: Triton's DALI backend
    reads raw bytes, not length-prefixed BYTES), each row zero-padded to the longest (decoders stop at the
    image's end marker)."""
    cfg = config.get("config", config)
    image = next((i for i in cfg.get("input", []) if i.get("name") == "IMAGE"), {})
    if image.get("data_type") != "TYPE_UINT8":
        return np.array([[b] for b in blobs], dtype=np.object_), "BYTES"
    rows = np.zeros((len(blobs), max(len(b) for b in blobs)), np.uint8)
    for i, b in enumerate(blobs):
        rows[i, :len(b)] = np.frombuffer(b, np.uint8)
    return rows, "UINT8"
