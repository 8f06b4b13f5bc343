"""DAMO-YOLO = TinyNAS backbone -> GiraffeNeckV2 -> ZeroHead. `forward` returns the raw head maps in
train and eval alike; `DamoYoloExport` adds the decode for ONNX (outputs `scores`, `boxes`)."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import build_backbone
from .head import ZeroHead
from .neck import GiraffeNeckV2
from .ops import RepConv
from .variants import DamoYoloConfig


class DamoYolo(nn.Module):
    def __init__(self, cfg: DamoYoloConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.neck = GiraffeNeckV2(cfg)
        self.head = ZeroHead(cfg.neck_out, num_classes=cfg.num_classes, reg_max=cfg.reg_max, strides=cfg.strides)

    def forward(self, images: torch.Tensor, targets: object = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """images float32 [B,3,H,W], RGB 0..255 -> per level (class logits, box-bin logits).
        `targets` is ignored (the trainer passes them to every family; the loss is DamoYoloCriterion's)."""
        return self.head(self.neck(self.backbone(images)))

    def fuse(self) -> DamoYolo:
        """Deploy form: every RepConv folded into one 3x3 conv (outputs unchanged up to float rounding)."""
        for m in self.modules():
            if isinstance(m, RepConv):
                m.fuse()
        return self


class DamoYoloExport(nn.Module):
    """ONNX wrapper: images [B,3,H,W] RGB 0..255 -> scores [B,N,C] (sigmoid), boxes [B,N,4] xyxy input px."""

    def __init__(self, model: DamoYolo) -> None:
        super().__init__()
        self.model = model
        # a fresh Module is in train mode; torch.onnx.export restores the wrapper's mode recursively
        # afterwards, which would silently switch the wrapped model's BatchNorms to batch statistics
        self.train(model.training)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.head.decode(self.model(images))
