"""`tdet repo build`'s knobs as plain dataclasses (no Triton or protobuf import: the CLI shows their
defaults in --help without loading anything heavy)."""

from __future__ import annotations

from dataclasses import dataclass

from tdet.client.errors import UserError
from tdet.client.optionfields import check, option, same_as
from tdet.client.options import DetectOptions
from tdet.client.specs import JPEG_SCALES


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version_policy of an engine: "latest" (the newest `num` versions), "all", or "specific"
    (`versions`). Text form: latest[:N] | all | specific:1,3."""

    kind: str = "latest"
    num: int = 1
    versions: tuple[int, ...] = ()

    @staticmethod
    def parse(text: str) -> VersionPolicy:
        kind, _, rest = text.strip().partition(":")
        try:
            if kind == "latest":
                policy = VersionPolicy("latest", int(rest) if rest else 1)
            elif kind == "all" and not rest:
                policy = VersionPolicy("all")
            elif kind == "specific":
                policy = VersionPolicy("specific", versions=tuple(sorted({int(v) for v in rest.split(",") if v})))
            else:
                raise ValueError(text)
        except ValueError:
            raise UserError(f"version policy {text!r}: use latest[:N], all or specific:1,3") from None
        if policy.num < 1 or (kind == "specific" and (not policy.versions or min(policy.versions) < 1)):
            raise UserError(f"version policy {text!r}: versions and counts start at 1")
        return policy

    def served(self, versions: list[int]) -> int:
        """The version of `versions` (on disk) an ensemble runs under this policy: the newest one loaded."""
        loaded = [v for v in versions if v in self.versions] if self.kind == "specific" else versions
        return max(loaded or versions)  # none loaded: Triton refuses the engine; the newest names it

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


@dataclass(frozen=True)
class BuildOptions:
    """Repository knobs: each field is a `tdet repo build` flag (tdet.client.optionfields; the CLI is built
    from these fields in this order, so a new knob is one more field). The detection defaults (max_det,
    conf, iou, clip) are DetectOptions' fields, written to the postprocess config as its parameters."""

    version_policy: VersionPolicy = option(
        help="which engine versions Triton loads: latest[:N] (the newest N), all, or specific:1,3; the ensemble "
             "uses the newest loaded one", parse=VersionPolicy.parse, default_factory=VersionPolicy)
    engine: str = option("onnxruntime", "onnxruntime: model.onnx (CPU here, or Triton's ORT backend); tensorrt: "
                         "model.plan built on the GPU host by NAME_engine/build_engine.sh (docker compose run "
                         "engine-builder)", choices=("onnxruntime", "tensorrt"))
    # None: not given (fp16 for tensorrt); an onnxruntime build refuses a value: it would be ignored
    precision: str | None = option(None, "TensorRT engine precision (--engine tensorrt only; default: fp16)",
                                   choices=("fp16", "fp32"))
    max_batch_size: int = option(16, "rows per request and per batch", lo=1)
    max_det: int = same_as(DetectOptions, "max_det")
    conf: float = same_as(DetectOptions, "conf")
    iou: float = same_as(DetectOptions, "iou")
    clip: bool = same_as(DetectOptions, "clip")
    queue_delay_us: int = option(1000, "dynamic batching: the longest a request waits for a batch to fill "
                                       "(microseconds)", lo=0)
    preprocess_instances: int = option(2, "preprocess processes (image decoding is CPU-bound Python: about one "
                                          "per core)", lo=1)
    # 2 engines x 1 ORT thread: the most served img/s measured on 2 CPU cores (README, issue 17 item 5)
    engine_instances: int = option(2, "engine instances (one dynamic batch each at a time: two overlap one "
                                      "batch's serial ops with another's)", lo=1)
    postprocess_instances: int = option(1, "postprocess processes", lo=1)
    ort_threads: int = option(1, "ONNX Runtime intra-op threads per engine instance (0: ORT's own choice, all "
                                 "cores); instances x threads ~ cores", lo=0)
    device: str = option("cpu", "onnxruntime engine instance kind", choices=("cpu", "gpu"))  # tensorrt: GPU
    jpeg_scale: str = option("off", "off: decode every JPEG pixel (exact); auto: decode a large JPEG at 1/2 or 1/4 in "
                             "the DCT domain (libjpeg-turbo), never below the model input: faster, detections close, "
                             "not exact", choices=JPEG_SCALES)
    nms: str = option("python", "python: DAMO-YOLO's NMS in the python postprocess (every request option); engine: "
                      "ONNX NonMaxSuppression appended to the engine graph at the build's --conf/--iou/--max-det "
                      "(requests may raise conf, lower max_det, pick classes; not change iou or lower conf). "
                      "RT-DETRv2 has no NMS: refused for it", choices=("python", "engine"))
    preprocess: str = option("python", "python: decode/resize in the python step (CPU, served here); dali: a DALI "
                             "pipeline (nvJPEG decode + GPU resize) for Triton's DALI backend in the NGC image, "
                             "written as NAME_preprocess/1/model.dali (the pip tritonserver here has no DALI backend; "
                             "needs the dali extra to build)", choices=("python", "dali"))

    def __post_init__(self) -> None:
        check(self)
        if self.precision is not None and self.engine != "tensorrt":
            raise UserError(f"--precision {self.precision} is the TensorRT plan's (--engine tensorrt): the onnxruntime "
                            f"engine runs the ONNX as exported; for a reduced-precision ONNX use `tdet export "
                            f"--precision fp16|int8`")
        if self.preprocess == "dali" and self.jpeg_scale != "off":
            raise UserError("--jpeg-scale auto is the python preprocess's libjpeg-turbo option; --preprocess dali "
                            "decodes every pixel: use --jpeg-scale off")

    @property
    def plan_precision(self) -> str:
        """The TensorRT plan's precision (fp16 unless --precision says otherwise)."""
        return self.precision or "fp16"

    @property
    def detect(self) -> DetectOptions:
        """The served postprocess's defaults (requests may override them)."""
        return DetectOptions(**{n: getattr(self, n) for n in DETECT_FIELDS})


DETECT_FIELDS = ("max_det", "conf", "iou", "clip")  # the BuildOptions fields that are DetectOptions'
