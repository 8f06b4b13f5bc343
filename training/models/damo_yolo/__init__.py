"""DAMO-YOLO (T/S/M/L): TinyNAS backbone, GiraffeNeckV2 (RepGFPN) neck, ZeroHead.

The family interface (tdet.training.family.Family): FAMILY, VARIANTS, WEIGHTS, build_model, export_module,
num_params; for training: build_criterion, TARGET_FORMAT, CLASS_BRANCH, BACKBONE_WEIGHTS (none), init_for_training,
reinit_class_branch, load_backbone (refuses), checkpoint_state_dict, training_checkpoint, train_transform,
train_collate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tdet.client.errors import UserError
from tdet.training.weights import WeightsInfo

from .. import build_initialised, with_overrides
from .checkpoint import checkpoint_state_dict, load_checkpoint, training_checkpoint
from .criterion import DamoYoloCriterion
from .detector import DamoYolo, DamoYoloExport
from .ops import BN_EPS, BN_MOMENTUM
from .random_init import tame_init
from .variants import VARIANTS, DamoYoloConfig

if TYPE_CHECKING:
    from tdet.training.data.coco import CocoDetection

FAMILY = "damo-yolo"
_BASE = "https://idstcv.oss-cn-zhangjiakou.aliyuncs.com/DAMO-YOLO/release_model/clean_model_0317/"
# The non-distilled v0.3.x releases (README table: 42.0 / 46.0 / 49.2 / 50.8 AP).
WEIGHTS: dict[str, WeightsInfo] = {
    "damo-yolo-t": WeightsInfo(_BASE + "damoyolo_tinynasL20_T_420.pth", "damoyolo_tinynasL20_T_420.pth", 42.0),
    "damo-yolo-s": WeightsInfo(_BASE + "damoyolo_tinynasL25_S_460.pth", "damoyolo_tinynasL25_S_460.pth", 46.0),
    "damo-yolo-m": WeightsInfo(_BASE + "damoyolo_tinynasL35_M_492.pth", "damoyolo_tinynasL35_M_492.pth", 49.2),
    "damo-yolo-l": WeightsInfo(_BASE + "damoyolo_tinynasL45_L_508.pth", "damoyolo_tinynasL45_L_508.pth", 50.8),
}

# TinyNAS backbones train from scratch in the official recipe (`init_weights(pretrain=None)`): none to load
BACKBONE_WEIGHTS: dict[str, WeightsInfo] = {}

UNORDERED_ROWS = False  # one output row per anchor point, in a fixed order
TARGET_FORMAT = "xyxy_pixels"  # targets: {"boxes": float32 [N, 4] xyxy network-input px, "labels": int64 [N]}
CLASS_BRANCH = ("head.gfl_cls.",)  # state-dict prefixes whose shapes depend on the class count
CLS_PRIOR_PROB = 0.01
HEAD_INIT_STD = 0.01

__all__ = ["BACKBONE_WEIGHTS", "CLASS_BRANCH", "FAMILY", "TARGET_FORMAT", "UNORDERED_ROWS", "VARIANTS", "WEIGHTS",
           "DamoYolo", "DamoYoloConfig",
           "DamoYoloCriterion", "build_criterion", "build_model", "export_module", "init_for_training",
           "num_params", "reinit_class_branch", "checkpoint_state_dict", "load_backbone", "training_checkpoint",
           "train_transform",
           "train_collate"]


def build_model(name: str, *, weights: str | Path | None = None, deploy: bool = False, seed: int = 0,
                num_classes: int | None = None, input_hw: tuple[int, int] | None = None,
                init: str = "tame") -> DamoYolo:
    """Train-form DAMO-YOLO `name` with `num_classes` classes (default 80) for `input_hw` (default 640x640),
    with a checkpoint loaded strictly or a seeded random init (`init`: "tame" for tests and demos,
    "train" for the official initialisation training starts from); deploy=True returns the fused
    eval-mode model."""
    if name not in VARIANTS:
        raise ValueError(f"unknown DAMO-YOLO variant {name!r}; known: {sorted(VARIANTS)}")
    cfg = with_overrides(VARIANTS[name], num_classes=num_classes, input_hw=input_hw)
    if weights is None:
        model = build_initialised(lambda: DamoYolo(cfg), seed=seed, init=init, tame=tame_init, train=init_for_training)
    else:
        model = DamoYolo(cfg)
        load_checkpoint(model, weights, num_classes=cfg.num_classes)
    if deploy:
        model.eval().fuse()
    return model


@torch.no_grad()
def init_for_training(model: DamoYolo, seed: int) -> DamoYolo:
    """The official initialisation (`Detector.init_model`) of a freshly constructed model: PyTorch's default
    conv init as constructed (build_model seeds it), every BN eps 1e-3 / momentum 0.03 (`init_bn`; BN weight
    1, bias 0 as constructed), and ZeroHead.init_weights: gfl_cls and gfl_reg weights N(0, 0.01), reg bias 0,
    cls bias -log((1 - 0.01) / 0.01) (prior 0.01). Backbone and neck init_weights are no-ops officially."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = BN_EPS, BN_MOMENTUM
    gen = torch.Generator().manual_seed(seed)
    for cls, reg in zip(model.head.gfl_cls, model.head.gfl_reg):
        _normal_init(cls, _cls_prior_bias(), gen)
        _normal_init(reg, 0.0, gen)
    return model


@torch.no_grad()
def reinit_class_branch(model: DamoYolo, seed: int) -> DamoYolo:
    """Re-initialise the CLASS_BRANCH modules (gfl_cls) as init_for_training does, e.g. after loading a
    checkpoint trained with another class count. (The official finetune, `load_pretrain_detector`, keeps
    the whole fresh head: gfl_reg and scales too.)"""
    gen = torch.Generator().manual_seed(seed)
    for cls in model.head.gfl_cls:
        _normal_init(cls, _cls_prior_bias(), gen)
    return model


def _cls_prior_bias() -> float:
    return -math.log((1 - CLS_PRIOR_PROB) / CLS_PRIOR_PROB)


def _normal_init(conv: nn.Conv2d, bias: float, gen: torch.Generator) -> None:
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * HEAD_INIT_STD)
    conv.bias.fill_(bias)


def load_backbone(model: DamoYolo, path: str | Path) -> None:
    """No pretrained backbone exists for DAMO-YOLO (BACKBONE_WEIGHTS is empty): TrainArgs refuses the flag first."""
    raise UserError("DAMO-YOLO's official recipe trains its TinyNAS backbone from scratch: no pretrained backbone "
                    "exists; fine-tune the whole model with --weights instead")


def build_criterion(variant: str, num_classes: int | None = None) -> DamoYoloCriterion:
    """The official ZeroHead loss (QFL + GIoU + DFL with AlignOTA) for `variant` with `num_classes` classes."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown DAMO-YOLO variant {variant!r}; known: {sorted(VARIANTS)}")
    cfg = with_overrides(VARIANTS[variant], num_classes=num_classes)
    return DamoYoloCriterion(cfg.num_classes, reg_max=cfg.reg_max, strides=cfg.strides)


def export_module(model: DamoYolo) -> nn.Module:
    return DamoYoloExport(model)


def num_params(model: nn.Module) -> int:
    """Parameters of the model as given (deploy form in `tdet info`, as the DAMO-YOLO tables count)."""
    return sum(p.numel() for p in model.parameters())




def train_transform(dataset: CocoDetection, input_hw: tuple[int, int], augment: dict) -> Callable[..., Any]:
    """The official DAMO-YOLO augmentation: mosaic + affine, MixUp, flip, stretch resize."""
    from tdet.training.data.damo_transforms import DamoTrainTransform

    return DamoTrainTransform(dataset, input_hw, augment)


def train_collate(multi_scale: Sequence[int] | None = None) -> Callable[..., Any]:
    """Images 0..255, targets xyxy pixels; DAMO-YOLO trains at one size (multi_scale raises)."""
    from tdet.training.data.damo_transforms import DamoCollate

    return DamoCollate(multi_scale)
