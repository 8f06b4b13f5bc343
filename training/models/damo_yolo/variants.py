"""DAMO-YOLO T/S/M/L as data: the official configs (configs/damoyolo_tinynasL{20_T,25_S,35_M,45_L}.py)
and TinyNAS structure files (nas_backbones/tinynas_L*.txt), transcribed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Stage:
    """One TinyNAS stage: `blocks` residual blocks in_ch -> out_ch with bottleneck `btn`, first at `stride`."""

    in_ch: int
    out_ch: int
    btn: int
    stride: int
    blocks: int


@dataclass(frozen=True)
class DamoYoloConfig:
    name: str
    backbone: Literal["res", "csp"]  # TinyNAS_res (T/S) or TinyNAS_csp (M/L)
    block_type: Literal["k1kx", "kxkx"]  # 1x1 or 3x3 first conv in each residual block
    stem_out: int  # Focus stem channels
    stages: tuple[Stage, ...]
    act: str  # backbone and neck activation
    neck_depth: float  # CSPStage repeats = round(3 * depth); M's 1.5 -> round(4.5) = 4
    neck_hidden_ratio: float
    neck_in: tuple[int, int, int]  # strides 8/16/32
    neck_out: tuple[int, int, int]
    num_classes: int = 80
    reg_max: int = 16
    strides: tuple[int, int, int] = (8, 16, 32)
    input_hw: tuple[int, int] = (640, 640)


def _stages(*rows: tuple[int, int, int, int, int]) -> tuple[Stage, ...]:
    return tuple(Stage(*r) for r in rows)


VARIANTS: dict[str, DamoYoloConfig] = {c.name: c for c in (
    DamoYoloConfig(
        "damo-yolo-t", "res", "k1kx", 24,
        _stages((24, 64, 24, 2, 2), (64, 96, 64, 2, 2), (96, 192, 96, 2, 2), (192, 192, 152, 1, 2),
                (192, 384, 192, 2, 1)),
        act="relu", neck_depth=1.0, neck_hidden_ratio=1.0, neck_in=(96, 192, 384), neck_out=(64, 128, 256)),
    DamoYoloConfig(
        "damo-yolo-s", "res", "k1kx", 32,
        _stages((32, 128, 24, 2, 1), (128, 128, 88, 2, 5), (128, 256, 128, 2, 3), (256, 256, 120, 1, 2),
                (256, 512, 144, 2, 1)),
        act="relu", neck_depth=1.0, neck_hidden_ratio=0.75, neck_in=(128, 256, 512), neck_out=(128, 256, 512)),
    DamoYoloConfig(
        "damo-yolo-m", "csp", "kxkx", 32,
        _stages((32, 128, 64, 2, 2), (128, 128, 64, 2, 4), (128, 256, 256, 2, 4), (256, 256, 256, 1, 4),
                (256, 512, 256, 2, 3)),
        act="silu", neck_depth=1.5, neck_hidden_ratio=1.0, neck_in=(128, 256, 512), neck_out=(128, 256, 512)),
    DamoYoloConfig(
        "damo-yolo-l", "csp", "kxkx", 32,
        _stages((32, 128, 96, 2, 3), (128, 128, 96, 2, 5), (128, 256, 384, 2, 5), (256, 256, 384, 1, 5),
                (256, 512, 384, 2, 4)),
        act="silu", neck_depth=2.0, neck_hidden_ratio=1.0, neck_in=(128, 256, 512), neck_out=(128, 256, 512)),
)}
