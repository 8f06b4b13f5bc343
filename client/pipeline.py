"""Batch-level numpy steps of the served pipeline, importable without Triton: the preprocess and
postprocess python models call these, and so do the in-process reference pipeline and the benchmark.

`preprocess_image` is the fused fast path of tdet.client.preprocess.preprocess (tests check they give
identical bytes): decode straight to BGR and let one OpenCV call resize + swap to RGB + transpose to
CHW, instead of a full-resolution cvtColor plus a separate resize and transpose copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from .errors import InvalidImageError
from .options import DetectOptions
from .postprocess import postprocess_one, to_wire
from .preprocess import MAX_PIXELS, decode_checked
from .specs import PreprocessSpec

U8 = npt.NDArray[np.uint8]


def preprocess_image(data: bytes | U8, spec: PreprocessSpec, *, max_pixels: int = MAX_PIXELS
                     ) -> tuple[U8, tuple[int, int]]:
    """Encoded image -> (uint8 [3, H, W] RGB network input, original (height, width)).

    Raises InvalidImageError naming the problem, as tdet.client.preprocess.decode_bgr does (empty, not
    an image, unsupported format, too small, over `max_pixels`, corrupt/truncated). Grayscale and RGBA
    inputs become RGB; an EXIF orientation is applied. spec.jpeg_scale "auto": a large JPEG is decoded
    at 1/2 or 1/4 (DCT domain, never below spec.size_hw) before the same resize; "off": every pixel.
    """
    h, w = spec.size_hw
    bgr, (height, width) = decode_checked(data, max_pixels=max_pixels,
                                          at_least_hw=spec.size_hw if spec.jpeg_scale == "auto" else None)
    if spec.resize == "cv2-linear":
        # resize (INTER_LINEAR) + BGR->RGB + HWC->CHW in one call, staying uint8
        chw = cv2.dnn.blobFromImage(bgr, 1.0, (w, h), swapRB=True, crop=False, ddepth=cv2.CV_8U)[0]
    elif spec.resize == "pil-bilinear":
        # PIL's antialiased bilinear is per channel, so resizing BGR then swapping equals RGB-then-resize
        small = np.asarray(Image.fromarray(bgr).resize((w, h), Image.BILINEAR))
        chw = np.ascontiguousarray(small.transpose(2, 0, 1)[::-1])
    else:
        raise ValueError(f"unknown resize {spec.resize!r}")
    return chw, (height, width)


def preprocess_rows(rows: Sequence[bytes | U8], spec: PreprocessSpec, *, max_pixels: int = MAX_PIXELS
                    ) -> tuple[U8, npt.NDArray[np.int32]]:
    """The rows of one request -> (uint8 [B, 3, H, W], original sizes int32 [B, 2] as (height, width)).

    A bad row fails the whole request (its rows are one unit): InvalidImageError with the row index.
    """
    if len(rows) == 0:
        raise InvalidImageError("request has no images")
    h, w = spec.size_hw
    images = np.empty((len(rows), 3, h, w), np.uint8)
    sizes = np.empty((len(rows), 2), np.int32)
    for i, row in enumerate(rows):
        try:
            images[i], sizes[i] = preprocess_image(row, spec, max_pixels=max_pixels)
        except InvalidImageError as err:
            raise InvalidImageError(f"IMAGE row {i}: {err}" if len(rows) > 1 else f"IMAGE: {err}") from None
    return images, sizes


def postprocess_rows(family: str, outputs: Sequence[npt.NDArray[np.float32]], sizes: npt.NDArray[np.integer],
                     category_ids: npt.NDArray[np.int32], opts: DetectOptions, *,
                     input_hw: tuple[int, int] | None = None, pad_to: int | None = None
                     ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32], npt.NDArray[np.float32],
                                npt.NDArray[np.int32]]:
    """Engine outputs of one request ([B, ...] each, specs.EXPORT_OUTPUTS order) + sizes [B, 2] ->
    wire tensors NUM_DETECTIONS [B, 1], BOXES [B, K, 4], SCORES [B, K], CLASSES [B, K].

    opts: the request's thresholds, classes (dataset category ids to keep; None: all) and clip.
    input_hw: the engine's input (height, width); None: 640x640. At most opts.max_det detections per row,
    padded to K = pad_to (the config's output size; default opts.max_det)."""
    allowed = None if opts.classes is None else np.isin(category_ids, np.asarray(opts.classes))
    k = opts.max_det if pad_to is None else pad_to
    rows = [to_wire(*postprocess_one(family, [o[b] for o in outputs], (int(sizes[b][0]), int(sizes[b][1])),
                                     conf=opts.conf, iou=opts.iou, max_det=opts.max_det,
                                     input_hw=input_hw, allowed=allowed, clip=opts.clip),
                    category_ids, k)
            for b in range(len(sizes))]
    return tuple(np.stack(parts) for parts in zip(*rows))  # type: ignore[return-value]
