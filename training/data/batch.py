"""What the training DataLoader yields, shared by the loader and the families' collates (see loader.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .coco import Sample


class SampleKey(NamedTuple):
    """What a training sample is a function of."""

    index: int  # dataset index of the (first) image
    seed: int  # seeds the sample's numpy Generator
    epoch: int
    strong: bool  # mosaic/mixup (DAMO-YOLO) or photometric/zoom-out/IoU-crop + multi-scale (RT-DETRv2) on
    progress: float = 0.0  # the fraction of the strong epochs done when this batch starts (SADA's ramp)


class TrainBatch(NamedTuple):
    images: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    keys: list[SampleKey]


def images_tensor(samples: Sequence[Sample], scale: float) -> torch.Tensor:
    """uint8 RGB [H, W, 3] images (one size) -> float32 [B, 3, H, W] times scale."""
    x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float()
    return x if scale == 1.0 else x * scale
