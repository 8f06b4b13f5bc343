"""RT-DETRv2 variants as data (configs/rtdetrv2/*.yml of lyuwenyu/RT-DETR, rtdetrv2_pytorch, @068dfde)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class RTDETRv2Config:
    name: str
    depth: int  # PResNet-vd depth
    freeze_norm: bool  # FrozenBatchNorm2d everywhere in the backbone (M/L/X)
    encoder_in_channels: tuple[int, int, int]  # backbone channels at strides 8/16/32
    expansion: float  # CSPRepLayer hidden = out * expansion
    num_decoder_layers: int
    eval_idx: int = -1  # decoder layer used at inference (M uses layer 2 of 6)
    encoder_hidden_dim: int = 256
    encoder_ffn_dim: int = 1024
    cross_attn_method: Literal["default", "discrete"] = "default"
    num_points: tuple[int, int, int] = (4, 4, 4)
    hidden_dim: int = 256  # decoder width
    num_queries: int = 300
    num_classes: int = 80
    input_hw: tuple[int, int] = (640, 640)
    freeze_at: int = -1  # PResNet: >= 0 freezes the stem (and the first freeze_at stages) in training
    # contrastive denoising (training only)
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0


_R18 = dict(encoder_in_channels=(128, 256, 512), expansion=0.5, freeze_norm=False)
_R50 = dict(encoder_in_channels=(512, 1024, 2048), freeze_norm=True, freeze_at=0)

_BASE = (
    RTDETRv2Config("rtdetrv2-s", 18, num_decoder_layers=3, **_R18),
    RTDETRv2Config("rtdetrv2-m34", 34, num_decoder_layers=4, **_R18),  # the paper's M*
    RTDETRv2Config("rtdetrv2-m", 50, expansion=0.5, num_decoder_layers=6, eval_idx=2, **_R50),
    RTDETRv2Config("rtdetrv2-l", 50, expansion=1.0, num_decoder_layers=6, **_R50),
    RTDETRv2Config("rtdetrv2-x", 101, expansion=1.0, num_decoder_layers=6, encoder_hidden_dim=384,
                   encoder_ffn_dim=2048, **_R50),
)
# discrete-sampling fine-tunes (*_dsp_*.yml): same weights layout, integer-indexed sampling, no GridSample
_DSP = tuple(replace(c, name=c.name + "-dsp", cross_attn_method="discrete") for c in _BASE if c.depth != 101)

VARIANTS: dict[str, RTDETRv2Config] = {c.name: c for c in _BASE + _DSP}
