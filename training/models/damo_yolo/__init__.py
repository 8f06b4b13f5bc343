"""DAMO-YOLO (T/S/M/L): TinyNAS backbone, GiraffeNeckV2 (RepGFPN) neck, ZeroHead.

The family interface used by tdet.training.registry: FAMILY, VARIANTS, WEIGHTS, build_model,
export_module, num_params.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tdet.training.weights import WeightsInfo

from .checkpoint import load_checkpoint
from .detector import DamoYolo, DamoYoloExport
from .random_init import tame_init
from .variants import VARIANTS, DamoYoloConfig
from .. import with_overrides

# TODO(training helper): official training init (damo/base_models/heads/zero_head.py init_weights etc.)
def init_for_training(model: DamoYolo, seed: int) -> DamoYolo:
    raise NotImplementedError("init='train' for DAMO-YOLO")

FAMILY = "damo-yolo"
_BASE = "https://idstcv.oss-cn-zhangjiakou.aliyuncs.com/DAMO-YOLO/release_model/clean_model_0317/"
# The non-distilled v0.3.x releases (README table: 42.0 / 46.0 / 49.2 / 50.8 AP).
WEIGHTS: dict[str, WeightsInfo] = {
    "damo-yolo-t": WeightsInfo(_BASE + "damoyolo_tinynasL20_T_420.pth", "damoyolo_tinynasL20_T_420.pth", 42.0),
    "damo-yolo-s": WeightsInfo(_BASE + "damoyolo_tinynasL25_S_460.pth", "damoyolo_tinynasL25_S_460.pth", 46.0),
    "damo-yolo-m": WeightsInfo(_BASE + "damoyolo_tinynasL35_M_492.pth", "damoyolo_tinynasL35_M_492.pth", 49.2),
    "damo-yolo-l": WeightsInfo(_BASE + "damoyolo_tinynasL45_L_508.pth", "damoyolo_tinynasL45_L_508.pth", 50.8),
}

__all__ = ["FAMILY", "VARIANTS", "WEIGHTS", "DamoYolo", "DamoYoloConfig", "build_model", "export_module",
           "num_params"]


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
    with torch.random.fork_rng():  # the construction-time init draws from the global generator
        torch.manual_seed(seed)
        model = DamoYolo(cfg)
    if weights is None:
        if init == "tame":
            tame_init(model, seed)
        elif init == "train":
            init_for_training(model, seed)
        else:
            raise ValueError(f"unknown init {init!r}; use 'tame' or 'train'")
    else:
        load_checkpoint(model, weights, num_classes=cfg.num_classes)
    if deploy:
        model.eval().fuse()
    return model


def export_module(model: DamoYolo) -> nn.Module:
    return DamoYoloExport(model)


def num_params(model: nn.Module) -> int:
    """Parameters of the model as given (deploy form in `tdet info`, as the DAMO-YOLO tables count)."""
    return sum(p.numel() for p in model.parameters())


