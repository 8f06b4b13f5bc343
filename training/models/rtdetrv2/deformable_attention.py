"""Multi-scale deformable attention with per-level point counts (RT-DETRv2), in two sampling methods:
"default" reads values with bilinear grid_sample; "discrete" rounds to the nearest cell and gathers
(no GridSample in the exported graph, for runtimes without it)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MSDeformableAttention(nn.Module):
    def __init__(self, dim: int = 256, nhead: int = 8, num_points: tuple[int, ...] = (4, 4, 4), *,
                 method: str = "default", offset_scale: float = 0.5) -> None:
        super().__init__()
        if method not in ("default", "discrete"):
            raise ValueError(f"unknown sampling method {method!r}")
        self.nhead, self.head_dim, self.method = nhead, dim // nhead, method
        self.num_points, self.offset_scale = tuple(num_points), offset_scale
        total = sum(num_points)
        self.register_buffer("num_points_scale",
                             torch.tensor([1 / n for n in num_points for _ in range(n)], dtype=torch.float32))
        self.sampling_offsets = nn.Linear(dim, nhead * total * 2)
        self.attention_weights = nn.Linear(dim, nhead * total)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        if method == "discrete":  # the official freezes the offsets of the discrete-sampling fine-tunes
            self.sampling_offsets.requires_grad_(False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official init: zero offset weights with biases pointing each head in its own direction (heads
        evenly spread on the circle, normalised to the unit square's border) at distance 1..n for the n
        points of a level; uniform attention (zero weights and biases); xavier projections, zero biases."""
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.nhead, dtype=torch.float32) * (2.0 * math.pi / self.nhead)
        direction = torch.stack([theta.cos(), theta.sin()], -1)
        direction = direction / direction.abs().max(-1, keepdim=True).values  # [H, 2]
        distance = torch.cat([torch.arange(1, n + 1) for n in self.num_points]).to(torch.float32)  # [P]
        self.sampling_offsets.bias.copy_((direction[:, None, :] * distance[None, :, None]).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, ref: torch.Tensor, value: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """query [B,Q,D]; ref [B,Q,1,4] normalized cxcywh; value [B,V,D] (levels flattened) -> [B,Q,D]."""
        bs, len_q = query.shape[:2]
        total = sum(self.num_points)
        value = self.value_proj(value).reshape(bs, -1, self.nhead, self.head_dim)
        offsets = self.sampling_offsets(query).reshape(bs, len_q, self.nhead, total, 2)
        weights = F.softmax(self.attention_weights(query).reshape(bs, len_q, self.nhead, total), -1)
        # offsets are in units of the reference box size, scaled down by the level's point count
        offset = offsets * self.num_points_scale.unsqueeze(-1) * ref[:, :, None, :, 2:] * self.offset_scale
        locations = ref[:, :, None, :, :2] + offset  # [B,Q,H,P,2] in 0..1
        return self.output_proj(self._sample(value, shapes, locations, weights))

    def _sample(self, value: torch.Tensor, shapes: list[tuple[int, int]], loc: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        bs, _, nhead, c = value.shape
        len_q = loc.shape[1]
        values = value.permute(0, 2, 3, 1).flatten(0, 1).split([h * w for h, w in shapes], dim=-1)
        grids = (2 * loc - 1) if self.method == "default" else loc
        grids = grids.permute(0, 2, 1, 3, 4).flatten(0, 1).split(list(self.num_points), dim=-2)
        sampled = []
        for lvl, (h, w) in enumerate(shapes):
            v = values[lvl].reshape(bs * nhead, c, h, w)
            if self.method == "default":
                sampled.append(F.grid_sample(v, grids[lvl], mode="bilinear", padding_mode="zeros",
                                             align_corners=False))
            else:
                n = self.num_points[lvl]
                coord = (grids[lvl] * torch.tensor([[w, h]], device=v.device) + 0.5).to(torch.int64)
                coord = coord.clamp(0, h - 1)  # official: both axes clamped to h-1 (exact on square maps)
                coord = coord.reshape(bs * nhead, len_q * n, 2)
                idx = torch.arange(coord.shape[0], device=v.device).unsqueeze(-1).repeat(1, coord.shape[1])
                s = v[idx, :, coord[..., 1], coord[..., 0]]  # [B*H, Q*n, C]
                sampled.append(s.permute(0, 2, 1).reshape(bs * nhead, c, len_q, n))
        attn = weights.permute(0, 2, 1, 3).reshape(bs * nhead, 1, len_q, sum(self.num_points))
        out = (torch.cat(sampled, -1) * attn).sum(-1).reshape(bs, nhead * c, len_q)
        return out.permute(0, 2, 1)
