"""RT-DETRv2 (S / M* / M / L / X and discrete-sampling -dsp variants): PResNet-vd backbone,
HybridEncoder (AIFI + CCFM), RTDETRTransformerv2 decoder.

The family interface (tdet.training.family.Family): FAMILY, VARIANTS, WEIGHTS, build_model, export_module,
num_params; for training: TARGET_FORMAT, CLASS_BRANCH, BACKBONE_WEIGHTS, build_criterion, init_for_training,
reinit_class_branch, load_backbone, checkpoint_state_dict, training_checkpoint, train_transform, train_collate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from tdet.client.errors import UserError
from tdet.training.weights import WeightsInfo

from .. import build_initialised, with_overrides
from .checkpoint import checkpoint_state_dict, load_backbone, load_checkpoint, training_checkpoint
from .criterion import RTDETRv2Criterion
from .detector import RTDETRv2, tame_init
from .train_setup import init_for_training, reinit_class_branch
from .variants import VARIANTS, RTDETRv2Config

if TYPE_CHECKING:
    from tdet.training.data.coco import CocoDetection

FAMILY = "rtdetrv2"
# training interface: targets per image {"boxes": float [N,4] normalized cxcywh, "labels": int64 [N]}
TARGET_FORMAT = "cxcywh_normalized"
# the top-k query selection may order near-equal queries either way under float noise: compare rows as a set
UNORDERED_ROWS = True
# state-dict prefixes that depend on the class count (re-initialised by reinit_class_branch when fine-tuning)
CLASS_BRANCH = ("decoder.enc_score_head.", "decoder.dec_score_head.", "decoder.denoising_class_embed.")
_URL = "https://github.com/lyuwenyu/storage/releases/download/"


def _release(tag: str, file: str, ap: float | None) -> WeightsInfo:
    return WeightsInfo(f"{_URL}{tag}/{file}", file, ap)


WEIGHTS: dict[str, WeightsInfo] = {
    "rtdetrv2-s": _release("v0.2", "rtdetrv2_r18vd_120e_coco_rerun_48.1.pth", 48.1),
    "rtdetrv2-m34": _release("v0.1", "rtdetrv2_r34vd_120e_coco_ema.pth", 49.9),
    "rtdetrv2-m": _release("v0.1", "rtdetrv2_r50vd_m_7x_coco_ema.pth", 51.9),
    "rtdetrv2-l": _release("v0.1", "rtdetrv2_r50vd_6x_coco_ema.pth", 53.4),
    "rtdetrv2-x": _release("v0.1", "rtdetrv2_r101vd_6x_coco_from_paddle.pth", 54.3),
    "rtdetrv2-s-dsp": _release("v0.1", "rtdetrv2_r18vd_dsp_3x_coco.pth", 47.4),
    "rtdetrv2-m34-dsp": _release("v0.1", "rtdetrv2_r34vd_dsp_1x_coco.pth", 49.2),
    "rtdetrv2-m-dsp": _release("v0.1", "rtdetrv2_r50vd_m_dsp_3x_coco.pth", 51.4),
    "rtdetrv2-l-dsp": _release("v0.1", "rtdetrv2_r50vd_dsp_1x_coco.pth", 52.9),
}

# The ImageNet-pretrained PResNet-vd the official recipes start from (`PResNet(pretrained=True)`, presnet.py's
# `donwload_url` by depth; ssld for 50 and 101), per variant: `tdet train --backbone-weights official`
_BACKBONES = {18: "ResNet18_vd_pretrained_from_paddle.pth", 34: "ResNet34_vd_pretrained_from_paddle.pth",
              50: "ResNet50_vd_ssld_v2_pretrained_from_paddle.pth", 101: "ResNet101_vd_ssld_pretrained_from_paddle.pth"}
BACKBONE_WEIGHTS: dict[str, WeightsInfo] = {v: _release("v0.1", _BACKBONES[c.depth], None)
                                            for v, c in VARIANTS.items()}

__all__ = ["BACKBONE_WEIGHTS", "CLASS_BRANCH", "FAMILY", "TARGET_FORMAT", "UNORDERED_ROWS", "VARIANTS", "WEIGHTS",
           "RTDETRv2", "RTDETRv2Config",
           "RTDETRv2Criterion", "build_criterion", "build_model", "export_module", "init_for_training",
           "num_params", "reinit_class_branch", "checkpoint_state_dict", "load_backbone", "training_checkpoint",
           "train_transform",
           "train_collate"]


def build_model(name: str, *, weights: str | Path | None = None, deploy: bool = False, seed: int = 0,
                num_classes: int | None = None, input_hw: tuple[int, int] | None = None,
                init: str = "tame") -> RTDETRv2:
    """Train-form RT-DETRv2 `name` with `num_classes` classes (default 80) for `input_hw` (default 640x640:
    the eval size its anchors and AIFI position embedding are precomputed for), with an official (v2 or
    v1) or `tdet train` checkpoint loaded strictly, or a seeded random init (`init`: "tame" for tests and
    demos, "train" for the official initialisation training starts from); deploy=True returns the fused
    eval-mode model."""
    if name not in VARIANTS:
        raise ValueError(f"unknown RT-DETRv2 variant {name!r}; known: {sorted(VARIANTS)}")
    cfg = with_overrides(VARIANTS[name], num_classes=num_classes, input_hw=input_hw)
    h, w = cfg.input_hw
    tokens = sum((h // s) * (w // s) for s in (8, 16, 32))  # the encoder's, the query selection's top-k picks from
    if tokens < cfg.num_queries:
        raise UserError(f"input size {h}x{w} is too small for {name}: {tokens} encoder tokens (strides 8/16/32) for "
                        f"{cfg.num_queries} queries; use at least 128x128")
    if weights is None:
        model = build_initialised(lambda: RTDETRv2(cfg), seed=seed, init=init, tame=tame_init, train=init_for_training)
    else:
        model = RTDETRv2(cfg)
        load_checkpoint(model, weights)
    if deploy:
        model.eval().fuse()
    return model


def build_criterion(variant: str, num_classes: int | None = None) -> RTDETRv2Criterion:
    """The official loss of `variant` (all variants share it: VFL 1, L1 5, GIoU 2; matcher class 2,
    L1 5, GIoU 2) for `num_classes` classes (default: the variant's 80). Call it as
    `criterion(model(images, targets), targets)` -> dict of weighted terms and "total"."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown RT-DETRv2 variant {variant!r}; known: {sorted(VARIANTS)}")
    return RTDETRv2Criterion(VARIANTS[variant].num_classes if num_classes is None else int(num_classes))


def export_module(model: RTDETRv2) -> nn.Module:
    """The model itself: forward(images RGB 0..1) -> (logits, boxes); no postprocess in the graph."""
    return model


def num_params(model: RTDETRv2) -> int:
    """Train-form parameter count, as published (counts all decoder layers, also those after eval_idx,
    and the training-only denoising embedding; FrozenBatchNorm statistics are buffers, not parameters)."""
    return model.train_form_params


def train_transform(dataset: CocoDetection, input_hw: tuple[int, int], augment: dict) -> Callable[..., Any]:
    """The official RT-DETRv2 augmentation: photometric, zoom-out, IoU crop, sanitize, flip, resize."""
    from tdet.training.data.rtdetr_transforms import RTDETRTrainTransform

    return RTDETRTrainTransform(dataset, input_hw, augment)


def train_collate(multi_scale: Sequence[int] | None = None) -> Callable[..., Any]:
    """Images 0..1, targets cxcywh normalized, the official multi-scale batch resize when given sizes."""
    from tdet.training.data.rtdetr_transforms import RTDETRCollate

    return RTDETRCollate(multi_scale)
