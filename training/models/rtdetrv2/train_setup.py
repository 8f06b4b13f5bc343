"""What a from-scratch or fine-tuning RT-DETRv2 run starts from: the official initialisation, the class
branch re-initialisation, and the official per-variant optimizer parameter groups."""

from __future__ import annotations

import re

import torch
from torch import nn

from .detector import RTDETRv2

# configs/rtdetrv2/*.yml `optimizer.params` (regexes on parameter names, re.findall semantics as the
# official get_optim_params; the patterns are kept verbatim, including `(?!.*norm|bn)`, which reads
# "not (.*norm) and not starting with bn"). Unlisted variants use include/optimizer.yml.
_INCLUDE = (
    {"params": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5},
    {"params": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
)
PARAM_GROUPS: dict[str, tuple[dict, ...]] = {
    "rtdetrv2-s": ({"params": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},),
    "rtdetrv2-m34": (
        {"params": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 5e-5},
        {"params": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 5e-5, "weight_decay": 0.0},
        {"params": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
    ),
    "rtdetrv2-m": _INCLUDE,
    "rtdetrv2-l": _INCLUDE,
    "rtdetrv2-x": (
        {"params": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 1e-6},
        {"params": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
    ),
}


def param_groups(model: nn.Module, variant: str) -> list[dict]:
    """The official optimizer groups of `variant` (a -dsp fine-tune uses its base variant's): one group
    per config pattern, in config order, holding the trainable parameters whose name matches it, with the
    config's 'lr' / 'weight_decay' overrides; then one group of the trainable parameters no pattern took
    (optimizer defaults: AdamW lr 1e-4, weight decay 1e-4). Frozen parameters are in no group."""
    base = variant.removesuffix("-dsp")
    if base not in PARAM_GROUPS:
        raise ValueError(f"unknown RT-DETRv2 variant {variant!r}; known: {sorted(PARAM_GROUPS)}")
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    groups, taken = [], set()
    for spec in PARAM_GROUPS[base]:
        # like the official, a parameter matching two patterns would land in both (none do here)
        params = [(k, p) for k, p in named if re.findall(spec["params"], k)]
        groups.append({**spec, "params": [p for _, p in params]})
        taken.update(k for k, _ in params)
    rest = [p for k, p in named if k not in taken]
    if rest:
        groups.append({"params": rest})
    return groups


def init_for_training(model: RTDETRv2, seed: int) -> RTDETRv2:
    """The official initialisation, deterministic in `seed`: every module as PyTorch builds it (backbone
    and encoder have no init of their own; FrozenBatchNorm2d as identity), then the decoder's own
    (`reset_parameters` of MSDeformableAttention, the decoder layers and RTDETRTransformerv2), and every
    decoder layer a copy of layer 0 (the official deep-copies one initialised layer). The official
    trains from an ImageNet-pretrained PResNet; we have none, so the backbone starts from scratch."""
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
