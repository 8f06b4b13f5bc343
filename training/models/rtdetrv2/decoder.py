"""RTDETRTransformerv2 inference path (src/zoo/rtdetr/rtdetrv2_decoder.py): anchors + valid mask,
IoU-aware top-k query selection from the encoder memory, deformable-attention decoder layers with
iterative box refinement, and the eval_idx early exit."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .deformable_attention import MSDeformableAttention


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class TransformerDecoderLayer(nn.Module):
    """Post-norm: self-attention, deformable cross-attention, ReLU FFN."""

    def __init__(self, dim: int, nhead: int, ffn_dim: int, num_points: tuple[int, ...], method: str) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nhead, dropout=0.0, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformableAttention(dim, nhead, num_points, method=method)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, target: torch.Tensor, ref: torch.Tensor, memory: torch.Tensor,
                shapes: list[tuple[int, int]], pos: torch.Tensor) -> torch.Tensor:
        q = k = target + pos
        target = self.norm1(target + self.self_attn(q, k, value=target, need_weights=False)[0])
        target = self.norm2(target + self.cross_attn(target + pos, ref, memory, shapes))
        return self.norm3(target + self.linear2(F.relu(self.linear1(target))))


class TransformerDecoder(nn.Module):
    def __init__(self, layers: list[TransformerDecoderLayer], eval_idx: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.eval_idx = eval_idx if eval_idx >= 0 else len(layers) + eval_idx


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clip(0.0, 1.0)
    return torch.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def generate_anchors(shapes: list[tuple[int, int]], grid_size: float = 0.05, eps: float = 1e-2
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors in logit space [1, N, 4] (cx, cy, w, h; +inf where invalid) and valid mask [1, N, 1]."""
    anchors = []
    for lvl, (h, w) in enumerate(shapes):
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        xy = (torch.stack([gx, gy], -1)[None] + 0.5) / torch.tensor([w, h], dtype=torch.float32)
        wh = torch.ones_like(xy) * grid_size * (2.0 ** lvl)
        anchors.append(torch.cat([xy, wh], -1).reshape(-1, h * w, 4))
    a = torch.cat(anchors, 1)
    valid = ((a > eps) & (a < 1 - eps)).all(-1, keepdim=True)
    return torch.where(valid, torch.log(a / (1 - a)), torch.inf), valid


class RTDETRTransformerv2(nn.Module):
    def __init__(self, *, num_classes: int = 80, hidden_dim: int = 256, num_queries: int = 300,
                 feat_channels: tuple[int, ...] = (256, 256, 256), strides: tuple[int, ...] = (8, 16, 32),
                 num_points: tuple[int, ...] = (4, 4, 4), nhead: int = 8, num_layers: int = 6,
                 ffn_dim: int = 1024, eval_idx: int = -1, method: str = "default",
                 input_hw: tuple[int, int] = (640, 640)) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.input_proj = nn.ModuleList(
            nn.Sequential(OrderedDict([("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)),
                                       ("norm", nn.BatchNorm2d(hidden_dim))])) for c in feat_channels)
        self.decoder = TransformerDecoder(
            [TransformerDecoderLayer(hidden_dim, nhead, ffn_dim, num_points, method) for _ in range(num_layers)],
            eval_idx)
        # only used by contrastive denoising in training; kept so official checkpoints load strictly
        self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2)
        self.enc_output = nn.Sequential(OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)),
                                                     ("norm", nn.LayerNorm(hidden_dim))]))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3) for _ in range(num_layers))
        shapes = [(input_hw[0] // s, input_hw[1] // s) for s in strides]
        anchors, valid = generate_anchors(shapes)
        self.register_buffer("anchors", anchors)
        self.register_buffer("valid_mask", valid)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """feats: encoder outputs -> (logits [B,Q,C], boxes [B,Q,4] normalized cxcywh) of layer eval_idx."""
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        shapes = [(int(f.shape[2]), int(f.shape[3])) for f in proj]
        memory = torch.cat([f.flatten(2).permute(0, 2, 1) for f in proj], 1)
        target, ref_unact = self._select_queries(memory)
        ref = ref_unact.sigmoid()
        dec = self.decoder
        for i, layer in enumerate(dec.layers):
            target = layer(target, ref[:, :, None], memory, shapes, self.query_pos_head(ref))
            box = torch.sigmoid(self.dec_bbox_head[i](target) + inverse_sigmoid(ref))
            if i == dec.eval_idx:
                return self.dec_score_head[i](target), box
            ref = box
        raise AssertionError("eval_idx beyond the decoder layers")

    def _select_queries(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k encoder tokens by best class logit: (content [B,Q,D], reference box logits [B,Q,4])."""
        memory = self.valid_mask.to(memory.dtype) * memory
        out = self.enc_output(memory)
        logits = self.enc_score_head(out)
        coords = self.enc_bbox_head(out) + self.anchors
        topk = torch.topk(logits.max(-1).values, self.num_queries, dim=-1).indices
        content = out.gather(1, topk.unsqueeze(-1).repeat(1, 1, out.shape[-1]))
        ref = coords.gather(1, topk.unsqueeze(-1).repeat(1, 1, coords.shape[-1]))
        return content, ref
