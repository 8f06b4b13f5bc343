"""HybridEncoder (src/zoo/rtdetr/hybrid_encoder.py): per-level 1x1 projections, AIFI (one post-norm
transformer layer on the stride-32 level with a 2-D sin-cos position embedding), then CCFM: a top-down
and bottom-up fusion of CSPRepLayers. RepVGG blocks fuse to one 3x3 conv for deploy."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class ConvNormLayer(nn.Module):
    """conv -> BN -> SiLU (or nothing). Keys: conv.weight, norm.*"""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, *, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_ch)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    std = (bn.running_var + bn.eps).sqrt()
    t = bn.weight / std
    return conv.weight * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t


class RepVggBlock(nn.Module):
    """SiLU(BN(3x3) + BN(1x1)); `fuse()` folds both into `conv` (3x3 with bias) and drops the branches."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = ConvNormLayer(ch, ch, 3, 1, act=False)
        self.conv2 = ConvNormLayer(ch, ch, 1, 1, act=False)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if hasattr(self, "conv"):
            return
        w3, b3 = _fold_bn(self.conv1.conv, self.conv1.norm)
        w1, b1 = _fold_bn(self.conv2.conv, self.conv2.norm)
        ch = w3.shape[0]
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)
        self.conv.weight.copy_(w3 + F.pad(w1, [1, 1, 1, 1]))
        self.conv.bias.copy_(b3 + b1)
        del self.conv1, self.conv2


class CSPRepLayer(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_blocks: int = 3, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(out_ch * expansion)
        self.conv1 = ConvNormLayer(in_ch, hidden, 1, 1)
        self.conv2 = ConvNormLayer(in_ch, hidden, 1, 1)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, out_ch, 1, 1) if hidden != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class TransformerEncoderLayer(nn.Module):
    """AIFI: post-norm self-attention (q = k = src + pos, v = src) and a GELU FFN."""

    def __init__(self, dim: int, nhead: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nhead, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.activation = nn.GELU()

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src, need_weights=False)[0])
        return self.norm2(src + self.linear2(self.activation(self.linear1(src))))


class TransformerEncoder(nn.Module):
    def __init__(self, layer_args: tuple[int, int, int], num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(*layer_args) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src


def sincos_position_embedding(w: int, h: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[1, w*h, dim]. Token k of the flattened (h, w) map gets a = k // h, b = k % h: the official
    meshgrid(arange(w), arange(h), 'ij') convention (a is the row on square maps)."""
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing="ij")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    out_w = grid_w.flatten()[:, None] @ omega[None]
    out_h = grid_h.flatten()[:, None] @ omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


class HybridEncoder(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], *, hidden_dim: int = 256, nhead: int = 8,
                 ffn_dim: int = 1024, expansion: float = 1.0, input_hw: tuple[int, int] = (640, 640),
                 strides: tuple[int, int, int] = (8, 16, 32), encoder_idx: int = 2) -> None:
        super().__init__()
        self.hidden_dim, self.encoder_idx = hidden_dim, encoder_idx
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict([("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)),
                                       ("norm", nn.BatchNorm2d(hidden_dim))])) for c in in_channels)
        self.encoder = nn.ModuleList([TransformerEncoder((hidden_dim, nhead, ffn_dim), 1)])
        n = len(in_channels) - 1
        self.lateral_convs = nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 1, 1) for _ in range(n))
        self.fpn_blocks = nn.ModuleList(CSPRepLayer(hidden_dim * 2, hidden_dim, 3, expansion) for _ in range(n))
        self.downsample_convs = nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 3, 2) for _ in range(n))
        self.pan_blocks = nn.ModuleList(CSPRepLayer(hidden_dim * 2, hidden_dim, 3, expansion) for _ in range(n))
        s = strides[encoder_idx]
        # precomputed for the input size, not in the state dict (official: non-persistent buffer)
        self.register_buffer(f"pos_embed{encoder_idx}", sincos_position_embedding(
            input_hw[1] // s, input_hw[0] // s, hidden_dim), persistent=False)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        x = proj[self.encoder_idx]
        h, w = x.shape[2:]
        if self.training:  # any size divisible by 32 (multi-scale): the embedding for this map, as the official
            pos = sincos_position_embedding(int(w), int(h), self.hidden_dim).to(x.device)
        else:
            pos = getattr(self, f"pos_embed{self.encoder_idx}")
        memory = self.encoder[0](x.flatten(2).permute(0, 2, 1), pos)
        proj[self.encoder_idx] = memory.permute(0, 2, 1).reshape(-1, self.hidden_dim, h, w)
        # top-down (CCFM): lateral 1x1 on the coarser map, upsample, fuse with the finer one
        inner = [proj[-1]]
        for i, idx in enumerate(range(len(proj) - 1, 0, -1)):
            high = self.lateral_convs[i](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[i](torch.cat([up, proj[idx - 1]], dim=1)))
        # bottom-up: downsample and fuse with the lateral outputs
        outs = [inner[0]]
        for i in range(len(proj) - 1):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](torch.cat([down, inner[i + 1]], dim=1)))
        return outs
