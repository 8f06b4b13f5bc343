"""Loading official RT-DETR(v2) checkpoints strictly.

v2 releases hold the EMA weights at ckpt['ema']['module'] (training files also carry 'model');
paddle-converted files hold only {'ema': {'module': sd}}. RT-DETR v1 checkpoints use older names
(`upgrade_v1_keys`). `anchors` / `valid_mask` depend only on the input size, so they are always
regenerated for this model's size instead of read from the file.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import torch
from torch import nn

from tdet.client.errors import UserError
from tdet.training.weights import load_state_dict_strict, read_checkpoint

REGENERATED = ("decoder.anchors", "decoder.valid_mask")


def extract_state_dict(ckpt: dict) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint: ckpt['ema']['module'], else ckpt['model'], else ckpt itself (a bare
    state dict); a DDP 'module.' prefix is dropped. ValueError when none of these is a tensor dict."""
    if isinstance(ckpt.get("ema"), dict) and isinstance(ckpt["ema"].get("module"), dict):
        sd = ckpt["ema"]["module"]
    elif isinstance(ckpt.get("model"), dict):
        sd = ckpt["model"]
    else:
        sd = ckpt
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError("checkpoint has no state dict under ['ema']['module'] or ['model'], and is not a bare one")
    return {k.removeprefix("module."): v for k, v in sd.items()}


# RT-DETR v1 (rtdetr_pytorch/) used index-named nn.Sequential children where v2 names them
_V1_RENAMES = (
    (re.compile(r"^encoder\.input_proj\.(\d+)\.0\."), r"encoder.input_proj.\1.conv."),
    (re.compile(r"^encoder\.input_proj\.(\d+)\.1\."), r"encoder.input_proj.\1.norm."),
    (re.compile(r"^decoder\.enc_output\.0\."), "decoder.enc_output.proj."),
    (re.compile(r"^decoder\.enc_output\.1\."), "decoder.enc_output.norm."),
)


def upgrade_v1_keys(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """RT-DETR v1 -> v2 names: encoder.input_proj.{i}.0/1 -> .conv/.norm, decoder.enc_output.0/1 ->
    .proj/.norm; v1 lacks cross_attn.num_points_scale (a constant of the config: taken from the model).
    v1's offset formula (offsets / n_points * wh * 0.5) equals v2's for 4 points per level, so the weights
    run unchanged. A v2 state dict is returned as is."""
    if not any(k.startswith("decoder.enc_output.0.") for k in sd):
        return sd
    out = {}
    for k, v in sd.items():
        for pattern, new in _V1_RENAMES:
            k = pattern.sub(new, k)
        out[k] = v
    for k, v in model.state_dict().items():
        if k.endswith("cross_attn.num_points_scale") and k not in out:
            out[k] = v.clone()
    return out


def checkpoint_state_dict(ckpt: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights `load_checkpoint` would load from a read checkpoint: EMA (else model) weights, v1 names
    upgraded, anchors / valid mask taken from `model` (they depend on its input size, not on training)."""
    sd = upgrade_v1_keys(extract_state_dict(ckpt), model)
    expected = model.state_dict()
    return {**sd, **{k: expected[k] for k in REGENERATED}}


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load an official v2 (or v1, upgraded) checkpoint into `model` strictly; ValueError names the
    missing/unexpected/mis-shaped keys when the file belongs to another variant."""
    from . import CLASS_BRANCH  # the package imports this module: not at import time

    load_state_dict_strict(model, checkpoint_state_dict(read_checkpoint(path), model), path, "RT-DETRv2 variant",
                           class_branch=CLASS_BRANCH)


def training_checkpoint(*, model: nn.Module, ema: dict, optimizer: dict, scaler: dict | None, epoch: int,
                        lr_state: dict) -> dict:
    """`BaseSolver.state_dict`'s layout: raw weights, EMA {"module", "updates"}, optimizer, scaler, schedulers,
    last_epoch (0-based: epochs completed - 1), date."""
    return {"model": model.state_dict(), "ema": ema, "optimizer": optimizer, "scaler": scaler,
            "last_epoch": epoch - 1, "date": datetime.datetime.now().isoformat(),
            "lr_scheduler": lr_state.get("lr_scheduler"), "lr_warmup_scheduler": lr_state.get("lr_warmup_scheduler")}


def load_backbone(model: nn.Module, path: str | Path) -> None:
    """ImageNet-pretrained PResNet-vd weights into `model.backbone`, strictly: the file the official recipes start
    from (`PResNet(pretrained=True)` loads presnet.py's `donwload_url[depth]`: the backbone's own state dict), or
    the backbone of a detector checkpoint (its `backbone.*` keys). BatchNorm's `num_batches_tracked` is optional
    either way, as in the official load: FrozenBatchNorm2d drops it, BatchNorm2d fills it in."""
    try:
        sd = extract_state_dict(read_checkpoint(path))
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    if any(k.startswith("backbone.") for k in sd):  # a detector checkpoint: its backbone
        sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    own = model.backbone.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.endswith(".num_batches_tracked")}
    sd.update({k: v for k, v in own.items() if k.endswith(".num_batches_tracked") and k not in sd})
    load_state_dict_strict(model.backbone, sd, path, f"PResNet-{model.backbone.depth} backbone")
