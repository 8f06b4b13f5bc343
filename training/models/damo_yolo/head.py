"""ZeroHead (GFL-style, no stacked convs): per level a 3x3 classifier and a 3x3 box-distribution
regressor scaled by a learnable `Scale`; `decode` turns the raw maps into scores and boxes.

Decode matches the official eval path: sigmoid scores; softmax over reg_max+1 bins, integral, times the
stride; priors at (ix*stride, iy*stride) with NO +0.5 offset; boxes xyxy in input pixels, unclipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Scale(nn.Module):
    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class Integral(nn.Module):
    """Expected value of a distribution over 0..reg_max (buffer `project` is in the state dict).

    A 2-D MatMul ([..., R+1] x [R+1, 1]) then a squeeze, not `prob @ project` with the 1-D buffer: the exported
    1-D MatMul followed by the stride Multiply breaks OpenVINO's MatMulMultiplyFusion (2026.4: "Incompatible
    MatMul matrix dimension"). Same PyTorch result bit for bit; tests/test_openvino.py compiles the graph."""

    def __init__(self, reg_max: int) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, prob: torch.Tensor) -> torch.Tensor:
        return (prob @ self.project[:, None]).squeeze(-1)


class ZeroHead(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], *, num_classes: int = 80, reg_max: int = 16,
                 strides: tuple[int, ...] = (8, 16, 32), kernel: int = 3) -> None:
        super().__init__()
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, strides
        self.gfl_cls = nn.ModuleList(nn.Conv2d(c, num_classes, kernel, padding=kernel // 2) for c in in_channels)
        self.gfl_reg = nn.ModuleList(nn.Conv2d(c, 4 * (reg_max + 1), kernel, padding=kernel // 2)
                                     for c in in_channels)
        self.scales = nn.ModuleList(Scale(1.0) for _ in in_channels)
        self.integral = Integral(reg_max)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Raw maps per level: (class logits [B,C,H,W], scaled box-bin logits [B,4*(reg_max+1),H,W])."""
        return [(cls(x), scale(reg(x))) for x, cls, reg, scale in
                zip(feats, self.gfl_cls, self.gfl_reg, self.scales)]

    def decode(self, raw: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> scores [B,N,C] (sigmoid), boxes [B,N,4] xyxy in input pixels; N ordered by level, row-major."""
        scores, boxes = [], []
        for (cls_logit, reg_logit), stride in zip(raw, self.strides):
            b, _, h, w = cls_logit.shape
            scores.append(cls_logit.sigmoid().flatten(2).transpose(1, 2))
            prob = F.softmax(reg_logit.reshape(b, 4, self.reg_max + 1, h * w), dim=2)
            dist = self.integral(prob.permute(0, 3, 1, 2)) * stride  # [B, HW, 4]: l, t, r, b
            points = _priors(h, w, stride, reg_logit)  # [HW, 2]
            boxes.append(torch.cat([points - dist[..., :2], points + dist[..., 2:]], dim=-1))
        return torch.cat(scores, 1), torch.cat(boxes, 1)


def _priors(h: int, w: int, stride: int, like: torch.Tensor) -> torch.Tensor:
    """Grid corners (x, y) * stride, row-major, no half-cell offset (the official convention)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=like.dtype, device=like.device),
                            torch.arange(w, dtype=like.dtype, device=like.device), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1) * stride
