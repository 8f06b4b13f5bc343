"""The contracts every stage agrees on: preprocessing per family and the tensor names between steps.

Torch-free on purpose: `training/` (export), `ensembles/` (Triton steps and the repository builder)
and `client/` all import these constants, so a name changes in exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

# Families, as written in ONNX metadata (`tdet.family`) and in `tdet info`.
DAMO_YOLO = "damo-yolo"
RTDETRV2 = "rtdetrv2"
FAMILIES = (DAMO_YOLO, RTDETRV2)


@dataclass(frozen=True)
class PreprocessSpec:
    """How an encoded image becomes the network input.

    size_hw: network input (height, width).
    scale: factor from 0..255 pixels to the network's input range (1.0 for DAMO-YOLO, 1/255 for RT-DETRv2).
    resize: "cv2-linear" is `cv2.resize(INTER_LINEAR)` (DAMO-YOLO's official eval transform);
        "pil-bilinear" is PIL's antialiased bilinear resize (RT-DETRv2's torchvision `Resize` on a PIL image).
    Both families stretch to size_hw (no letterbox) and feed RGB.
    jpeg_scale: "off" decodes every pixel (exact, the default); "auto" lets libjpeg-turbo decode a JPEG at
        1/2 or 1/4 in the DCT domain when it stays at least size_hw on both sides (faster, close, not exact).
    """

    size_hw: tuple[int, int]
    scale: float
    resize: Literal["cv2-linear", "pil-bilinear"]
    jpeg_scale: Literal["off", "auto"] = "off"


RESIZES = ("cv2-linear", "pil-bilinear")
JPEG_SCALES = ("off", "auto")
DAMO_YOLO_PRE = PreprocessSpec(size_hw=(640, 640), scale=1.0, resize="cv2-linear")
RTDETRV2_PRE = PreprocessSpec(size_hw=(640, 640), scale=1 / 255, resize="pil-bilinear")
PREPROCESS = {DAMO_YOLO: DAMO_YOLO_PRE, RTDETRV2: RTDETRV2_PRE}  # the official (640x640) input of each family


def preprocess_spec(family: str, input_hw: tuple[int, int] | None = None) -> PreprocessSpec:
    """The family's preprocessing at `input_hw` (height, width); None: the official 640x640. A model
    trained at another size (e.g. 320x320) is served at that size with the same resize and scale."""
    if family not in PREPROCESS:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    spec = PREPROCESS[family]
    return spec if input_hw is None else replace(spec, size_hw=(int(input_hw[0]), int(input_hw[1])))


def parse_hw(text: str) -> tuple[int, int]:
    """"640,640" (height,width, as config parameters and ONNX metadata write it) -> (640, 640).
    The one parser of that text; format_hw writes it."""
    parts = str(text).split(",")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise ValueError(f"bad input size {text!r}: expected 'height,width', e.g. '640,640'") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"bad input size {text!r}: height and width must be positive")
    return h, w


def format_hw(hw: tuple[int, int]) -> str:
    """(640, 640) -> "640,640", the text parse_hw reads."""
    return f"{int(hw[0])},{int(hw[1])}"


def spec_from_parameters(params: Mapping[str, str]) -> PreprocessSpec:
    """The preprocess spec a `<m>_preprocess` config asks for: `family`, `input_hw` and (optional)
    `resize`, which overrides the family's resize (e.g. a model trained with the other one), and
    `jpeg_scale` (off | auto; missing: off)."""
    spec = preprocess_spec(params["family"], parse_hw(params["input_hw"]))
    resize = params.get("resize", spec.resize)
    if resize not in RESIZES:
        raise ValueError(f"unknown resize {resize!r} in the preprocess config; known: {RESIZES}")
    jpeg_scale = params.get("jpeg_scale", "off")
    if jpeg_scale not in JPEG_SCALES:
        raise ValueError(f"unknown jpeg_scale {jpeg_scale!r} in the preprocess config; known: {JPEG_SCALES}")
    return replace(spec, resize=resize, jpeg_scale=jpeg_scale)  # type: ignore[arg-type]


def config_parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """A Triton model config's `parameters` as {key: string value}, from the config's JSON form: the
    python backend's json.loads(args["model_config"]), tritonclient HTTP's get_model_config() and gRPC's
    get_model_config(as_json=True) (which wraps it in {"config": ...}). The one reader of parameters."""
    cfg = config.get("config", config)
    return {k: str(v.get("string_value", "")) for k, v in cfg.get("parameters", {}).items()}

# ONNX graph names written by `tdet export` (float input, as the official models take it).
EXPORT_INPUT = "images"
EXPORT_OUTPUTS = {
    DAMO_YOLO: ("scores", "boxes"),  # [B,N,C] sigmoid; [B,N,4] xyxy in input pixels
    RTDETRV2: ("logits", "boxes"),  # [B,Q,C] raw logits; [B,Q,4] normalized cxcywh
}

# What every served ensemble answers (its postprocess's outputs), per image: NUM_DETECTIONS int32 [1], BOXES
# float32 [K, 4] xyxy original pixels, SCORES float32 [K], CLASSES int32 [K] dataset category ids.
WIRE_OUTPUTS = ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")

# ONNX metadata_props keys written by `tdet export` and read by the repository builder.
META_FAMILY = "tdet.family"
META_VARIANT = "tdet.variant"
META_INPUT_HW = "tdet.input_hw"  # "640,640"
META_CLASS_NAMES = "tdet.class_names"  # JSON list, index = model label
META_CATEGORY_IDS = "tdet.category_ids"  # JSON list, index = model label -> dataset category id
META_WEIGHTS = "tdet.weights"  # checkpoint path/URL, or "random-init(seed=N)"
META_WEIGHTS_SHA256 = "tdet.weights_sha256"  # the checkpoint file's content (a retrained file at the same path)
META_PARAMS_M = "tdet.params_m"  # parameters (millions), as `tdet info` counts them
META_GFLOPS = "tdet.gflops"  # deploy-form GFLOPs at the input size (2 x MACs)
META_PRECISION = "tdet.precision"  # fp32 | int8 | fp16 (missing: fp32)
META_KEEP_FP32 = "tdet.keep_fp32"  # JSON {"patterns": [...], "nodes": N}: what a reduced-precision graph keeps in fp32
META_CALIBRATION = "tdet.calibration"  # int8: JSON {"method", "images", "activations", "quantizer"}
