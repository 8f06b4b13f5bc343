"""TinyNAS backbones: `TinyNASRes` (DAMO-YOLO T/S) and `TinyNASCSP` (M/L).

Module names follow the official state dict: res -> backbone.block_list.{i}.block_list.{j}.*,
csp -> backbone.csp_stage.{i}.{downsampler,conv_start,conv_shortcut,conv_fuse,convstem.{j},spp}.*
"""

from __future__ import annotations

import torch
from torch import nn

from .ops import ConvKXBN, ConvKXBNRELU, Focus, RepConv, SPPBottleneck, activation
from .variants import DamoYoloConfig, Stage


class ResConvBlock(nn.Module):
    """conv1 (1x1 for k1kx, 3x3 for kxkx) + BN -> act -> RepConv(3x3 + 1x1, no act) [+ residual] -> act.
    The residual is skipped at stride 2; a 1x1 projection is used when channels change."""

    def __init__(self, in_ch: int, out_ch: int, btn: int, stride: int, *, act: str, block_type: str) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = ConvKXBN(in_ch, btn, 1 if block_type == "k1kx" else 3, 1)
        self.conv2 = RepConv(btn, out_ch, stride, act="identity")
        self.activation_function = activation(act)
        self.residual_proj = ConvKXBN(in_ch, out_ch, 1, 1) if in_ch != out_ch and stride != 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.residual_proj is None else self.residual_proj(x)
        y = self.conv2(self.activation_function(self.conv1(x)))
        if self.stride != 2:
            y = y + shortcut
        return self.activation_function(y)


class SuperResStem(nn.Module):
    """A res-backbone stage: blocks in sequence, with SPP after the first block of the last stage."""

    def __init__(self, stage: Stage, *, act: str, block_type: str, with_spp: bool) -> None:
        super().__init__()
        self.block_list = nn.ModuleList()
        for j in range(stage.blocks):
            in_ch = stage.in_ch if j == 0 else stage.out_ch
            stride = stage.stride if j == 0 else 1
            self.block_list.append(ResConvBlock(in_ch, stage.out_ch, stage.btn, stride, act=act,
                                                block_type=block_type))
            if j == 0 and with_spp:
                self.block_list.append(SPPBottleneck(stage.out_ch, stage.out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block_list:
            x = block(x)
        return x


class TinyNASRes(nn.Module):
    """Focus stem + 5 res stages; returns stage outputs 2, 4, 5 (strides 8, 16, 32)."""

    out_indices = (2, 4, 5)

    def __init__(self, cfg: DamoYoloConfig) -> None:
        super().__init__()
        last = len(cfg.stages) - 1
        self.block_list = nn.ModuleList([Focus(3, cfg.stem_out, 3, act=cfg.act)])
        for i, stage in enumerate(cfg.stages):
            self.block_list.append(SuperResStem(stage, act=cfg.act, block_type=cfg.block_type,
                                                with_spp=i == last))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, block in enumerate(self.block_list):
            x = block(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


class CSPWrapper(nn.Module):
    """A CSP stage: 3x3/2 downsampler [+ SPP], then split into conv_shortcut and conv_start -> N blocks
    at half width, concat, conv_fuse. The wrapper's own convs are hard-coded ReLU in the official code
    (even in SiLU models); the inner blocks use the model activation."""

    def __init__(self, in_ch: int, out_ch: int, blocks: list[nn.Module], *, with_spp: bool) -> None:
        super().__init__()
        hidden = out_ch // 2
        self.convstem = nn.ModuleList(blocks)
        self.downsampler = ConvKXBNRELU(in_ch, out_ch, 3, 2, act="relu")
        self.with_spp = with_spp
        if with_spp:
            self.spp = SPPBottleneck(out_ch, out_ch)
        if blocks:
            self.conv_start = ConvKXBNRELU(out_ch, hidden, 1, 1, act="relu")
            self.conv_shortcut = ConvKXBNRELU(out_ch, out_ch // 2, 1, 1, act="relu")
            self.conv_fuse = ConvKXBNRELU(out_ch, out_ch, 1, 1, act="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsampler(x)
        if self.with_spp:
            x = self.spp(x)
        if len(self.convstem) == 0:
            return x
        shortcut = self.conv_shortcut(x)
        x = self.conv_start(x)
        for block in self.convstem:
            x = block(x)
        return self.conv_fuse(torch.cat((x, shortcut), dim=1))


class TinyNASCSP(nn.Module):
    """Focus stem + 4 CSP stages (the stride-1 NAS stage is merged into the one before it);
    returns csp_stage outputs 2, 3, 4 (strides 8, 16, 32)."""

    out_indices = (2, 3, 4)

    def __init__(self, cfg: DamoYoloConfig) -> None:
        super().__init__()
        s = cfg.stages

        def blocks(stage: Stage, first_in_halved: bool) -> list[nn.Module]:
            # a stride-2 NAS stage spends one of its L blocks on the downsampler
            n = stage.blocks - 1 if stage.stride == 2 else stage.blocks
            half = stage.out_ch // 2
            return [ResConvBlock(stage.in_ch // 2 if (j == 0 and first_in_halved) else half, half, stage.btn, 1,
                                 act=cfg.act, block_type=cfg.block_type) for j in range(n)]

        self.csp_stage = nn.ModuleList([
            Focus(3, cfg.stem_out, 3, act=cfg.act),
            CSPWrapper(s[0].in_ch, s[0].out_ch, blocks(s[0], False), with_spp=False),
            CSPWrapper(s[1].in_ch, s[1].out_ch, blocks(s[1], False), with_spp=False),
            CSPWrapper(s[2].in_ch, s[3].out_ch, blocks(s[2], False) + blocks(s[3], True), with_spp=False),
            CSPWrapper(s[4].in_ch, s[4].out_ch, blocks(s[4], False), with_spp=True),
        ])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, stage in enumerate(self.csp_stage):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def build_backbone(cfg: DamoYoloConfig) -> nn.Module:
    return TinyNASRes(cfg) if cfg.backbone == "res" else TinyNASCSP(cfg)
