"""RTDETRTransformerv2 (src/zoo/rtdetr/rtdetrv2_decoder.py): anchors + valid mask, IoU-aware top-k query
selection from the encoder memory, deformable-attention decoder layers with iterative box refinement.
Eval: the eval_idx early exit, (logits, boxes). Training: contrastive denoising queries, every layer's
outputs with "look forward twice" boxes, the encoder proposals, as the official outputs dict."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .box_ops import inverse_sigmoid
from .deformable_attention import MSDeformableAttention
from .denoising import contrastive_denoising_group


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

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official: xavier FFN weights (biases and the rest as PyTorch builds them)."""
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, target: torch.Tensor, ref: torch.Tensor, memory: torch.Tensor,
                shapes: list[tuple[int, int]], pos: torch.Tensor, attn_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """attn_mask: bool [T, T] (True = may not attend), only with denoising queries."""
        q = k = target + pos
        attn = self.self_attn(q, k, value=target, attn_mask=attn_mask, need_weights=False)[0]
        target = self.norm1(target + attn)
        target = self.norm2(target + self.cross_attn(target + pos, ref, memory, shapes))
        return self.norm3(target + self.linear2(F.relu(self.linear1(target))))


class TransformerDecoder(nn.Module):
    def __init__(self, layers: list[TransformerDecoderLayer], eval_idx: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.eval_idx = eval_idx if eval_idx >= 0 else len(layers) + eval_idx

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official builds one layer and deep-copies it: every layer starts with layer 0's weights."""
        for layer in self.layers[1:]:
            layer.load_state_dict(self.layers[0].state_dict())


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
                 input_hw: tuple[int, int] = (640, 640), num_denoising: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0) -> None:
        super().__init__()
        self.num_classes, self.num_queries = num_classes, num_queries
        self.num_denoising, self.label_noise_ratio, self.box_noise_scale = (
            num_denoising, label_noise_ratio, box_noise_scale)
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

    @torch.no_grad()
    def reset_class_branch(self) -> None:
        """Official init of the class-count-dependent modules: score heads as PyTorch builds a Linear but
        with the bias at prior probability 0.01, denoising embeddings N(0, 1) with a zero padding row."""
        prior_bias = -math.log((1 - 0.01) / 0.01)
        for head in (self.enc_score_head, *self.dec_score_head):
            head.reset_parameters()
            nn.init.constant_(head.bias, prior_bias)
        self.denoising_class_embed.reset_parameters()
        nn.init.normal_(self.denoising_class_embed.weight[:-1])

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official init of the parts the decoder sets itself (children are reset first): the class branch,
        zero last box-head layers (proposals start at the anchors, refinements at zero), xavier
        projections."""
        self.reset_class_branch()
        for mlp in (self.enc_bbox_head, *self.dec_bbox_head):
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        for w in (self.enc_output.proj.weight, *(m.weight for m in self.query_pos_head.layers),
                  *(m.conv.weight for m in self.input_proj)):
            nn.init.xavier_uniform_(w)

    def forward(self, feats: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor] | dict[str, Any]:
        """feats: encoder outputs. Eval -> (logits [B,Q,C], boxes [B,Q,4] normalized cxcywh) of layer
        eval_idx. Training -> the official outputs dict (see `_forward_train`); targets feed denoising."""
        if self.training:
            return self._forward_train(feats, targets)
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

    def _proposals(self, memory: torch.Tensor, anchors: torch.Tensor, valid: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token encoder head, then top-k tokens by best class logit: (content [B,Q,D], logits
        [B,Q,C], reference box logits [B,Q,4], top-k token indices [B,Q])."""
        if memory.shape[1] < self.num_queries:  # a static shape: no branch in an exported graph
            raise ValueError(f"input too small for RT-DETRv2: {memory.shape[1]} encoder tokens (strides 8/16/32) "
                             f"for {self.num_queries} queries; use at least 128x128")
        memory = valid.to(memory.dtype) * memory
        out = self.enc_output(memory)
        logits = self.enc_score_head(out)
        coords = self.enc_bbox_head(out) + anchors
        topk = torch.topk(logits.max(-1).values, self.num_queries, dim=-1).indices
        content = out.gather(1, topk.unsqueeze(-1).repeat(1, 1, out.shape[-1]))
        ref = coords.gather(1, topk.unsqueeze(-1).repeat(1, 1, coords.shape[-1]))
        return content, logits, ref, topk

    def _select_queries(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval: top-k encoder tokens with the precomputed anchors: (content [B,Q,D], box logits [B,Q,4])."""
        content, _, ref, _ = self._proposals(memory, self.anchors, self.valid_mask)
        return content, ref

    def _forward_train(self, feats: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None
                       ) -> dict[str, Any]:
        """Official training outputs: pred_logits / pred_boxes (last layer, matching queries), aux_outputs
        (the other layers), enc_aux_outputs (the top-k encoder proposals), enc_meta, and with targets
        and num_denoising > 0 dn_aux_outputs (every layer's denoising queries) and dn_meta. Anchors are
        generated for the actual feature sizes, so any input size divisible by 32 works."""
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        shapes = [(int(f.shape[2]), int(f.shape[3])) for f in proj]
        memory = torch.cat([f.flatten(2).permute(0, 2, 1) for f in proj], 1)
        anchors, valid = (t.to(memory.device) for t in generate_anchors(shapes))

        dn = None
        if self.num_denoising > 0 and targets is not None:
            dn = contrastive_denoising_group(
                targets, self.num_classes, self.num_queries, self.denoising_class_embed,
                num_denoising=self.num_denoising, label_noise_ratio=self.label_noise_ratio,
                box_noise_scale=self.box_noise_scale)
        content, logits, ref_unact, topk = self._proposals(memory, anchors, valid)
        enc_logits = logits.gather(1, topk.unsqueeze(-1).repeat(1, 1, logits.shape[-1]))
        enc_boxes = ref_unact.sigmoid()
        # the decoder starts from the proposals but does not train them (they have their own enc loss)
        content, ref_unact = content.detach(), ref_unact.detach()
        attn_mask = None
        if dn is not None:
            content = torch.cat([dn.content, content], 1)
            ref_unact = torch.cat([dn.ref_unact, ref_unact], 1)
            attn_mask = dn.attn_mask

        all_logits, all_boxes = self._decode_train(content, ref_unact, memory, shapes, attn_mask)
        out: dict[str, Any] = {}
        if dn is not None:
            num_dn = dn.meta["dn_num_split"][0]
            dn_logits, all_logits = [x[:, :num_dn] for x in all_logits], [x[:, num_dn:] for x in all_logits]
            dn_boxes, all_boxes = [x[:, :num_dn] for x in all_boxes], [x[:, num_dn:] for x in all_boxes]
        out["pred_logits"], out["pred_boxes"] = all_logits[-1], all_boxes[-1]
        out["aux_outputs"] = _as_outputs(all_logits[:-1], all_boxes[:-1])
        out["enc_aux_outputs"] = _as_outputs([enc_logits], [enc_boxes])
        out["enc_meta"] = {"class_agnostic": False}
        if dn is not None:
            out["dn_aux_outputs"] = _as_outputs(dn_logits, dn_boxes)
            out["dn_meta"] = dn.meta
        return out

    def _decode_train(self, target: torch.Tensor, ref_unact: torch.Tensor, memory: torch.Tensor,
                      shapes: list[tuple[int, int]], attn_mask: torch.Tensor | None
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every layer's (logits [B,T,C], boxes [B,T,4]). Layers read detached references; the box a layer
        outputs for the loss refines the previous layer's *un-detached* box ("look forward twice"), so
        layer i's loss also trains layer i-1's box head."""
        ref_detached = ref_unact.sigmoid()
        ref = None
        logits, boxes = [], []
        for i, layer in enumerate(self.decoder.layers):
            target = layer(target, ref_detached[:, :, None], memory, shapes, self.query_pos_head(ref_detached),
                           attn_mask)
            delta = self.dec_bbox_head[i](target)
            box = torch.sigmoid(delta + inverse_sigmoid(ref_detached))
            logits.append(self.dec_score_head[i](target))
            boxes.append(box if ref is None else torch.sigmoid(delta + inverse_sigmoid(ref)))
            ref, ref_detached = box, box.detach()
        return logits, boxes


def _as_outputs(logits: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits, boxes)]
