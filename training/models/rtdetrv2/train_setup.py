"""What a from-scratch or fine-tuning RT-DETRv2 run starts from: the official initialisation and the class
branch re-initialisation. (The per-variant optimizer groups are recipe data: training/recipes/rtdetrv2*.yaml.)"""

from __future__ import annotations

import torch
from torch import nn

from .detector import RTDETRv2


def init_for_training(model: RTDETRv2, seed: int) -> RTDETRv2:
    """The official initialisation, deterministic in `seed`: every module as PyTorch builds it (backbone
    and encoder have no init of their own; FrozenBatchNorm2d as identity), then the decoder's own
    (`reset_parameters` of MSDeformableAttention, the decoder layers and RTDETRTransformerv2), and every
    decoder layer a copy of layer 0 (the official deep-copies one initialised layer). The official
    trains from an ImageNet-pretrained PResNet: `tdet train --backbone-weights` loads it after this
    (load_backbone); without it the backbone starts from scratch."""
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        # children before parents, so a parent's init overrides the defaults of its submodules
        for m in reversed(list(model.modules())):
            if isinstance(m, nn.MultiheadAttention):
                m._reset_parameters()
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return model


def reinit_class_branch(model: RTDETRv2, seed: int) -> RTDETRv2:
    """Re-initialise the class-count-dependent modules (CLASS_BRANCH) as the official init does, for
    fine-tuning on another class set: score heads with the prior-0.01 bias, denoising class embeddings."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.decoder.reset_class_branch()
    return model
