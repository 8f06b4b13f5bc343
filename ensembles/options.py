"""`tdet repo build`'s knobs as plain dataclasses (no Triton or protobuf import: the CLI shows their
defaults in --help without loading anything heavy)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tdet.client.errors import UserError


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

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.num}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


@dataclass(frozen=True)
class BuildOptions:
    """Repository knobs (the `tdet repo build` flags)."""

    engine: str = "onnxruntime"  # "onnxruntime" | "tensorrt"
    max_batch_size: int = 16
    max_detections: int = 100
    preprocess_instances: int = 2  # decode is CPU-bound Python: one process per core
    engine_instances: int = 1
    postprocess_instances: int = 1
    queue_delay_us: int = 1000
    ort_threads: int = 2  # intra-op threads per engine instance (0: ONNX Runtime's default, all cores)
    device: str = "cpu"  # engine instance kind for onnxruntime; tensorrt is always GPU
    score_threshold: float = 0.05  # default `conf`: keep scores > this (both families; requests may override)
    iou_threshold: float = 0.7  # default `iou` of DAMO-YOLO's NMS
    clip: bool = False  # default `clip`: boxes clipped to the image (off: as the official COCO evaluations)
    precision: str = "fp16"  # TensorRT engine precision: fp16 | fp32
    jpeg_scale: str = "off"  # off: exact decode | auto: DCT-domain 1/2, 1/4 JPEG decode, never below the input size
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)  # the engine's
