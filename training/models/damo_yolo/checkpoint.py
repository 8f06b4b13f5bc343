"""Loading official DAMO-YOLO checkpoints into the train-form model, strictly.

Release files hold the EMA weights under ckpt['model'] (tools/converter.py also accepts a bare state
dict); DDP-saved files prefix keys with 'module.'; pre-v0.3.0 "legacy" heads have num_classes+1
classifier channels whose last one is unused (sliced off, as the official head does at inference).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tdet.training.weights import load_state_dict_strict, read_checkpoint


def extract_state_dict(ckpt: dict) -> dict[str, torch.Tensor]:
    sd = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError("checkpoint has no state dict under 'model' and is not a bare state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def slice_legacy_head(sd: dict[str, torch.Tensor], num_classes: int) -> dict[str, torch.Tensor]:
    """81-channel legacy classifiers -> the first num_classes channels."""
    out = dict(sd)
    for k, v in sd.items():
        if k.startswith("head.gfl_cls.") and v.shape[0] == num_classes + 1:
            out[k] = v[:num_classes]
    return out


def checkpoint_state_dict(ckpt: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights `load_checkpoint` would load from a read checkpoint: ckpt['model'] (the EMA weights) or a
    bare state dict, legacy 81-channel classifiers sliced to the model's classes."""
    return slice_legacy_head(extract_state_dict(ckpt), model.head.num_classes)


def load_checkpoint(model: nn.Module, path: str | Path, *, num_classes: int) -> None:
    """Load `path` into a train-form model of `num_classes` classes with strict=True; mismatches raise
    ValueError naming keys."""
    sd = slice_legacy_head(extract_state_dict(read_checkpoint(path)), num_classes)
    from . import CLASS_BRANCH  # the package imports this module: not at import time

    load_state_dict_strict(model, sd, path, "DAMO-YOLO variant", class_branch=CLASS_BRANCH)


def training_checkpoint(*, model: nn.Module, ema: dict, optimizer: dict, scaler: dict | None, epoch: int,
                        lr_state: dict) -> dict:
    """`detector_trainer.py::save_ckpt`'s layout: {"model": EMA weights, "epoch", "optimizer"}; the raw weights,
    EMA updates and AMP scaler (no place in it) go to "train_state". lr_state: DAMO-YOLO's lr is a function
    of the step, nothing to save."""
    del lr_state
    return {"model": ema["module"], "epoch": epoch, "optimizer": optimizer,
            "train_state": {"model": model.state_dict(), "ema_updates": ema["updates"], "scaler": scaler}}
