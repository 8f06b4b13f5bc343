"""GiraffeNeckV2 (RepGFPN): a queen-fusion FPN of CSPStages over strides 8/16/32.

Node names follow the official code (necks/giraffe_fpn_btn.py): bu_conv* are 3x3/2 downsamples,
merge_* are CSPStages, upsampling is nearest x2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import ConvBNAct, RepConv
from .variants import DamoYoloConfig


class BasicBlock_3x3_Reverse(nn.Module):  # (official name)
    """x + ConvBNAct3x3(RepConv3x3(x -> hidden) -> out)."""

    def __init__(self, ch: int, hidden_ratio: float, *, act: str) -> None:
        super().__init__()
        hidden = int(ch * hidden_ratio)
        self.conv1 = ConvBNAct(hidden, ch, 3, act=act)
        self.conv2 = RepConv(ch, hidden, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(self.conv2(x))


class CSPStage(nn.Module):
    """conv1/conv2 1x1 to out/2; n blocks on the conv2 branch; conv3 1x1 over [conv1, every block output]."""

    def __init__(self, in_ch: int, hidden_ratio: float, out_ch: int, n: int, *, act: str) -> None:
        super().__init__()
        first = out_ch // 2
        mid = out_ch - first
        self.conv1 = ConvBNAct(in_ch, first, 1, act=act)
        self.conv2 = ConvBNAct(in_ch, mid, 1, act=act)
        self.convs = nn.Sequential(*[BasicBlock_3x3_Reverse(mid, hidden_ratio, act=act) for _ in range(n)])
        self.conv3 = ConvBNAct(mid * n + first, out_ch, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.conv1(x)]
        y = self.conv2(x)
        for block in self.convs:
            y = block(y)
            outs.append(y)
        return self.conv3(torch.cat(outs, dim=1))


class GiraffeNeckV2(nn.Module):
    def __init__(self, cfg: DamoYoloConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.neck_in
        o0, o1, o2 = cfg.neck_out
        n, r, act = round(3 * cfg.neck_depth), cfg.neck_hidden_ratio, cfg.act
        self.bu_conv13 = ConvBNAct(c1, c1, 3, 2, act=act)
        self.merge_3 = CSPStage(c1 + c2, r, c2, n, act=act)
        self.bu_conv24 = ConvBNAct(c0, c0, 3, 2, act=act)
        self.merge_4 = CSPStage(c0 + c1 + c2, r, c1, n, act=act)
        self.merge_5 = CSPStage(c1 + c0, r, o0, n, act=act)
        self.bu_conv57 = ConvBNAct(o0, o0, 3, 2, act=act)
        self.merge_7 = CSPStage(o0 + c1, r, o1, n, act=act)
        self.bu_conv46 = ConvBNAct(c1, c1, 3, 2, act=act)
        self.bu_conv76 = ConvBNAct(o1, o1, 3, 2, act=act)
        self.merge_6 = CSPStage(c1 + o1 + c2, r, o2, n, act=act)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x2, x1, x0 = feats  # strides 8, 16, 32
        x3 = self.merge_3(torch.cat([x0, self.bu_conv13(x1)], 1))
        x4 = self.merge_4(torch.cat([x1, self.bu_conv24(x2), _up(x3)], 1))
        x5 = self.merge_5(torch.cat([x2, _up(x4)], 1))
        x7 = self.merge_7(torch.cat([x4, self.bu_conv57(x5)], 1))
        x6 = self.merge_6(torch.cat([x3, self.bu_conv46(x4), self.bu_conv76(x7)], 1))
        return x5, x7, x6


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")
