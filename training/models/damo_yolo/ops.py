"""DAMO-YOLO building blocks, named as in the official state dict (tinyvision/DAMO-YOLO `core/ops.py`,
`backbones/tinynas_*.py`): ConvBNAct, ConvKXBN, RepConv, Focus, SPPBottleneck.

Every BatchNorm uses eps=1e-3 (the official `Detector.init_bn`); outputs drift without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def activation(name: str) -> nn.Module:
    """'relu' | 'silu' | 'identity'. nn.SiLU exports to ONNX as x*sigmoid(x) at opset 17 anyway."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unsupported activation {name!r}")


class ConvBNAct(nn.Module):
    """Conv (same padding, no bias) -> BN -> act. Keys: conv.weight, bn.*"""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, act: str = "silu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, bias=False)
        self.bn = batch_norm(out_ch)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvKXBN(nn.Module):
    """TinyNAS conv + BN without activation. Keys: conv1.weight, bn1.*"""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, bias=False)
        self.bn1 = batch_norm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))


class ConvKXBNRELU(nn.Module):
    """TinyNAS conv + BN + act. Keys: conv.conv1.weight, conv.bn1.*"""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, act: str) -> None:
        super().__init__()
        self.conv = ConvKXBN(in_ch, out_ch, kernel, stride)
        self.activation_function = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation_function(self.conv(x))


class _ConvBN(nn.Sequential):
    """RepConv branch: keys conv.weight, bn.*"""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, bias=False)
        self.bn = batch_norm(out_ch)


def fuse_conv_bn(conv_weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold eval-mode BN into the preceding bias-free conv: (weight, bias)."""
    std = (bn.running_var + bn.eps).sqrt()
    t = bn.weight / std
    # `mean * gamma / std` in this order, as the official switch_to_deploy: bit-identical fused weights
    return conv_weight * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * bn.weight / std


class RepConv(nn.Module):
    """RepVGG-style 3x3: train form sums a 3x3+BN and a 1x1+BN branch (no identity branch), then act;
    `fuse()` folds both into one biased 3x3 `rbr_reparam` with identical outputs."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, act: str = "relu") -> None:
        super().__init__()
        self.nonlinearity = activation(act)
        self.rbr_dense = _ConvBN(in_ch, out_ch, 3, stride)
        self.rbr_1x1 = _ConvBN(in_ch, out_ch, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.rbr_reparam(x))
        return self.nonlinearity(self.rbr_dense(x) + self.rbr_1x1(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if hasattr(self, "rbr_reparam"):
            return
        w3, b3 = fuse_conv_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        w1, b1 = fuse_conv_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        dense = self.rbr_dense.conv
        self.rbr_reparam = nn.Conv2d(dense.in_channels, dense.out_channels, 3, dense.stride, 1, bias=True)
        self.rbr_reparam.weight.copy_(w3 + F.pad(w1, [1, 1, 1, 1]))
        self.rbr_reparam.bias.copy_(b3 + b1)
        del self.rbr_dense, self.rbr_1x1


class Focus(nn.Module):
    """Space-to-depth stem (order TL, BL, TR, BR) then ConvBNAct(4C -> out, k). Output stride 2."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, act: str) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_ch * 4, out_ch, kernel, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tl, tr = x[..., ::2, ::2], x[..., ::2, 1::2]
        bl, br = x[..., 1::2, ::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat((tl, bl, tr, br), dim=1))


class SPPBottleneck(nn.Module):
    """YOLOv3-SPP: 1x1 -> [x, maxpool 5/9/13] -> 1x1. SiLU in every model (an official quirk)."""

    def __init__(self, in_ch: int, out_ch: int, kernels: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = in_ch // 2
        self.conv1 = ConvBNAct(in_ch, hidden, 1, act="silu")
        self.m = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernels)
        self.conv2 = ConvBNAct(hidden * (len(kernels) + 1), out_ch, 1, act="silu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [m(x) for m in self.m], dim=1))
