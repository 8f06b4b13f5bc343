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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import UserError
from .optionfields import check, from_settings, option, parse_value

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
    """Resolved options of one request, and the served postprocess's defaults (its config parameters, the
    `tdet repo build` flags and recipe `eval` keys use the setting names: score_threshold, iou_threshold,
    max_detections, clip). classes: dataset category ids to keep (None: all)."""

    conf: float = option(0.05, "default conf: detections with score > this are returned, both families (a "
                               "request's conf overrides it)", name="score_threshold", lo=0.0, hi=1.0)
    iou: float = option(0.7, "default iou: DAMO-YOLO's class-aware NMS IoU (RT-DETRv2 has no NMS)",
                        name="iou_threshold", lo=0.0, hi=1.0)
    max_det: int = option(100, "K: the output size, the most detections per image (a request's max_det may "
                               "lower it)", name="max_detections", lo=1)
    classes: tuple[int, ...] | None = None
    clip: bool = option(False, "clip boxes to the image by default (a request's clip overrides it; off: as the "
                               "official COCO evaluations)")

    def __post_init__(self) -> None:
        check(self, lambda f: f.name, InvalidParameterError)

    @classmethod
    def from_config(cls, params: Mapping[str, str]) -> DetectOptions:
        """The defaults a `<m>_postprocess` config holds (its parameters, by setting name)."""
        return cls(**from_settings(cls, params, what="config parameter"))


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
            category_ids: Iterable[int], tracked: bool = False) -> DetectOptions:
    """One request's parameters (as the python backend's request.parameters() gives them, JSON-decoded)
    over the config `defaults`. max_k: the output size K (max_det may only lower it). tracked: the request
    belongs to a stream (a sequence id), so a tracker step after this one reads TRACK_PARAMETERS; without
    one they would be ignored, so they are the client's error."""
    tracker = sorted(set(parameters) & TRACK_PARAMETERS)
    if tracker and not tracked:
        raise InvalidParameterError(f"request parameter(s) {tracker} are the tracker's: send them to the "
                                    "`<model>_track` ensemble with a sequence id (`tdet repo build --track`)")
    unknown = sorted(set(parameters) - set(NAMES) - TRANSPORT_PARAMETERS - TRACK_PARAMETERS)
    if unknown:
        raise InvalidParameterError(f"unknown request parameter(s) {unknown}; known: {', '.join(NAMES)}")
    changes = {f.name: parse_value(f, parameters[f.name], f"request parameter {f.name}", error=InvalidParameterError,
                                   hi=max_k if f.name == "max_det" else None)
               for f in fields(DetectOptions) if f.metadata.get("option") and f.name in parameters}
    if "classes" in parameters:
        classes = parse_classes(parameters["classes"])
        known = set(int(c) for c in category_ids)
        missing = sorted(set(classes) - known)
        if missing:
            raise InvalidParameterError(f"request parameter classes: this model has no category id(s) {missing}")
        changes["classes"] = classes
    return replace(defaults, **changes)


def to_parameters(*, conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                  classes: Iterable[int] | None = None,
                  clip: bool | None = None) -> dict[str, bool | int | float | str]:
    """The request parameters a client sends: only the options that were given (None: the server's default),
    checked as the server checks them (max_det=2.5 is refused here, not truncated; clip="false" is False)."""
    given = {"conf": conf, "iou": iou, "max_det": max_det, "clip": clip}
    out: dict[str, bool | int | float | str] = {
        f.name: parse_value(f, given[f.name], f"request parameter {f.name}", error=InvalidParameterError)
        for f in fields(DetectOptions) if given.get(f.name) is not None}
    if classes is not None:
        out["classes"] = ",".join(str(int(c)) for c in classes)
    return out
