"""PResNet "vd" backbone (src/nn/backbone/presnet.py): 3-conv stem, avg-pool downsampling shortcuts,
BasicBlock (r18/r34) or BottleNeck (r50/r101), outputs at strides 8/16/32."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine terms, all buffers (no num_batches_tracked)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((num_features,), value))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The identity transform a freshly built FrozenBatchNorm2d holds (weight 1, bias 0, mean 0, var 1)."""
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            getattr(self, name).fill_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class ConvNormLayer(nn.Module):
    """conv -> norm -> act. Keys: conv.weight, norm.*"""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, act: bool = False,
                 frozen: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, bias=False)
        self.norm = FrozenBatchNorm2d(out_ch) if frozen else nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _shortcut(in_ch: int, out_ch: int, stride: int, frozen: bool) -> nn.Module:
    if stride == 2:  # "d" variant: average-pool then 1x1, instead of a strided 1x1
        return nn.Sequential(OrderedDict([("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
                                          ("conv", ConvNormLayer(in_ch, out_ch, 1, 1, frozen=frozen))]))
    return ConvNormLayer(in_ch, out_ch, 1, stride, frozen=frozen)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int, shortcut: bool, frozen: bool) -> None:
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(in_ch, ch, stride, frozen)
        self.branch2a = ConvNormLayer(in_ch, ch, 3, stride, act=True, frozen=frozen)
        self.branch2b = ConvNormLayer(ch, ch, 3, 1, frozen=frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch2b(self.branch2a(x))
        return F.relu(y + (x if self.shortcut else self.short(x)))


class BottleNeck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int, shortcut: bool, frozen: bool) -> None:
        super().__init__()
        self.branch2a = ConvNormLayer(in_ch, ch, 1, 1, act=True, frozen=frozen)
        self.branch2b = ConvNormLayer(ch, ch, 3, stride, act=True, frozen=frozen)  # stride on the 3x3
        self.branch2c = ConvNormLayer(ch, ch * 4, 1, 1, frozen=frozen)
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(in_ch, ch * 4, stride, frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branch2c(self.branch2b(self.branch2a(x)))
        return F.relu(y + (x if self.shortcut else self.short(x)))


class Blocks(nn.Module):
    def __init__(self, block: type, in_ch: int, ch: int, count: int, first_stride: int, frozen: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            self.blocks.append(block(in_ch, ch, first_stride if i == 0 else 1, i > 0, frozen))
            in_ch = ch * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


class PResNet(nn.Module):
    return_idx = (1, 2, 3)

    def __init__(self, depth: int, *, freeze_norm: bool, freeze_at: int = -1) -> None:
        """freeze_at >= 0: the stem and the first `freeze_at` stages get requires_grad False (official
        `_freeze_parameters`); freeze_norm: every BN is a FrozenBatchNorm2d (buffers only)."""
        super().__init__()
        self.depth = depth
        f = freeze_norm
        self.conv1 = nn.Sequential(OrderedDict([
            ("conv1_1", ConvNormLayer(3, 32, 3, 2, act=True, frozen=f)),
            ("conv1_2", ConvNormLayer(32, 32, 3, 1, act=True, frozen=f)),
            ("conv1_3", ConvNormLayer(32, 64, 3, 1, act=True, frozen=f)),
        ]))
        block = BottleNeck if depth >= 50 else BasicBlock
        in_ch, self.res_layers = 64, nn.ModuleList()
        for i, (ch, count) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth])):
            self.res_layers.append(Blocks(block, in_ch, ch, count, 1 if i == 0 else 2, f))
            in_ch = ch * block.expansion
        if freeze_at >= 0:
            for m in [self.conv1, *self.res_layers[:freeze_at]]:
                m.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)
        outs = []
        for i, stage in enumerate(self.res_layers):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)
        return outs
