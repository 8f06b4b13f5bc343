"""Per-request detection options: what a client may ask the served postprocess for, by name.

They travel as Triton *request parameters* (KServe v2 `parameters`, gRPC `ModelInferRequest.parameters`),
which the ensemble forwards to its steps; the `<m>_postprocess` step reads them, with its config
parameters as the defaults. Names follow Ultralytics' predict arguments:

    conf     float 0..1   keep detections with score > conf (both families)       default: score_threshold
    iou      float 0..1   DAMO-YOLO's class-aware NMS IoU (RT-DETRv2 has no NMS)  default: iou_threshold
    max_det  int 1..K     at most this many detections (K: the model's output size) default: max_detections
    classes  "1,3,17"     keep only these dataset category ids (a string: request parameters are scalars)
    clip     bool         clip boxes to the image (deployment); unclipped is what COCO evaluation wants

A value that cannot be used is the client's error: InvalidParameterError, answered INVALID_ARGUMENT / 400.
Torch-free: the client, the served step and the CLI all import this.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import UserError

NAMES = ("conf", "iou", "max_det", "classes", "clip")
# added by tritonclient's HTTP transport itself (binary_data_output), or reserved by Triton
TRANSPORT_PARAMETERS = frozenset({"binary_data_output", "sequence_id", "sequence_start", "sequence_end",
                                  "priority", "timeout", "headers"})
# read by the tracker step of a `<model>_track` ensemble (tdet.client.bytetrack), which gets the same parameters
TRACK_PARAMETERS = frozenset({"track_thresh", "low_thresh", "match_thresh", "track_buffer", "frame_rate"})


class InvalidParameterError(UserError):
    """A request parameter the postprocess cannot use (wrong type, out of range, unknown name)."""


@dataclass(frozen=True)
class DetectOptions:
    """Resolved options of one request. classes: dataset category ids to keep (None: all)."""

    conf: float
    iou: float
    max_det: int
    classes: tuple[int, ...] | None = None
    clip: bool = False


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"request parameter {name}={value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(out) or not lo <= out <= hi:
        raise InvalidParameterError(f"request parameter {name}={value!r} must be a number in [{lo:g}, {hi:g}]")
    return out


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise InvalidParameterError(f"request parameter {name}={value!r} must be true or false")


def parse_classes(value: Any) -> tuple[int, ...]:
    """"1,3,17" / 3 / [1, 3] -> (1, 3, 17). InvalidParameterError for anything else."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        out = tuple(int(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise InvalidParameterError(f"request parameter classes={value!r} must be comma-separated category ids, "
                                    "e.g. \"1,3\"") from None
    if not out:
        raise InvalidParameterError("request parameter classes is empty: omit it to keep every class")
    return out


def resolve(parameters: Mapping[str, Any], defaults: DetectOptions, *, max_k: int,
            category_ids: Iterable[int]) -> DetectOptions:
    """One request's parameters (as the python backend's request.parameters() gives them, JSON-decoded)
    over the config `defaults`. max_k: the output size K (max_det may only lower it)."""
    unknown = sorted(set(parameters) - set(NAMES) - TRANSPORT_PARAMETERS - TRACK_PARAMETERS)
    if unknown:
        raise InvalidParameterError(f"unknown request parameter(s) {unknown}; known: {', '.join(NAMES)}")
    out = defaults
    if "conf" in parameters:
        out = replace(out, conf=_number("conf", parameters["conf"], 0.0, 1.0))
    if "iou" in parameters:
        out = replace(out, iou=_number("iou", parameters["iou"], 0.0, 1.0))
    if "max_det" in parameters:
        value = _number("max_det", parameters["max_det"], 1, max_k)
        if value != int(value):
            raise InvalidParameterError(f"request parameter max_det={parameters['max_det']!r} must be an integer")
        out = replace(out, max_det=int(value))
    if "classes" in parameters:
        classes = parse_classes(parameters["classes"])
        known = set(int(c) for c in category_ids)
        missing = sorted(set(classes) - known)
        if missing:
            raise InvalidParameterError(f"request parameter classes: this model has no category id(s) {missing}")
        out = replace(out, classes=classes)
    if "clip" in parameters:
        out = replace(out, clip=_bool("clip", parameters["clip"]))
    return out


def to_parameters(*, conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                  classes: Iterable[int] | None = None,
                  clip: bool | None = None) -> dict[str, bool | int | float | str]:
    """The request parameters a client sends: only the options that were given (None: the server's default)."""
    out: dict[str, bool | int | float | str] = {}
    if conf is not None:
        out["conf"] = float(conf)
    if iou is not None:
        out["iou"] = float(iou)
    if max_det is not None:
        out["max_det"] = int(max_det)
    if classes is not None:
        out["classes"] = ",".join(str(int(c)) for c in classes)
    if clip is not None:
        out["clip"] = bool(clip)
    return out
