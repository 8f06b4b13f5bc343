"""RT-DETRv2 = PResNet -> HybridEncoder -> RTDETRTransformerv2 (attribute order as the official
`rtdetr.py`, so the state dict lists backbone, decoder, encoder)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backbone import PResNet
from .decoder import RTDETRTransformerv2
from .hybrid_encoder import HybridEncoder, RepVggBlock
from .variants import RTDETRv2Config


class RTDETRv2(nn.Module):
    def __init__(self, cfg: RTDETRv2Config) -> None:
        super().__init__()
        self.backbone = PResNet(cfg.depth, freeze_norm=cfg.freeze_norm, freeze_at=cfg.freeze_at)
        self.decoder = RTDETRTransformerv2(
            num_classes=cfg.num_classes, hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries,
            feat_channels=(cfg.encoder_hidden_dim,) * 3, num_points=cfg.num_points,
            num_layers=cfg.num_decoder_layers, eval_idx=cfg.eval_idx, method=cfg.cross_attn_method,
            input_hw=cfg.input_hw, num_denoising=cfg.num_denoising, label_noise_ratio=cfg.label_noise_ratio,
            box_noise_scale=cfg.box_noise_scale)
        self.encoder = HybridEncoder(cfg.encoder_in_channels, hidden_dim=cfg.encoder_hidden_dim,
                                     ffn_dim=cfg.encoder_ffn_dim, expansion=cfg.expansion, input_hw=cfg.input_hw)
        # the published parameter count is the train-form count (RepVGG fusion changes it by ~1%)
        self.train_form_params = sum(p.numel() for p in self.parameters())

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor] | dict[str, Any]:
        """images float32 [B,3,H,W] RGB 0..1. Eval: -> (logits [B,300,C], boxes [B,300,4] normalized
        cxcywh), at the input size the model was built for. Training (any H, W divisible by 32): ->
        the official outputs dict (RTDETRTransformerv2._forward_train); targets, one per image,
        {"boxes": float [N,4] normalized cxcywh, "labels": int64 [N]}, feed contrastive denoising."""
        feats = self.encoder(self.backbone(images))
        return self.decoder(feats, targets) if self.training else self.decoder(feats)

    def fuse(self) -> RTDETRv2:
        """Deploy form: RepVGG blocks folded into single 3x3 convs."""
        for m in self.modules():
            if isinstance(m, RepVggBlock):
                m.fuse()
        return self


@torch.no_grad()
def tame_init(model: RTDETRv2, seed: int) -> RTDETRv2:
    """A seeded random init for tests and demos: BN scales in U(0.5, 1.5) with small positive shifts (no
    dead or exploding features), decoder class logits spread so scores cover 0..1, box heads small
    but non-zero so refined boxes move off the anchors. Not a trained model."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.02)
        elif isinstance(m, nn.MultiheadAttention):
            d = m.in_proj_weight.shape[1]
            m.in_proj_weight.copy_(torch.randn(m.in_proj_weight.shape, generator=gen) * (1.0 / d) ** 0.5)
            m.in_proj_bias.zero_()
        elif isinstance(m, nn.Embedding):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
        elif hasattr(m, "running_var") and m.weight is not None:  # BatchNorm2d and FrozenBatchNorm2d
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.25 + 0.1)
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    dec = model.decoder
    # memory is zeroed at the 316 invalid border anchors, so they all see enc_output(0): with a zero bias
    # that is LayerNorm(0) = 0 and their scores stay low, instead of tying for the top-k selection
    dec.enc_output.proj.bias.zero_()
    for head in dec.dec_score_head:
        head.weight.mul_(3.0)  # logits with std ~3
        head.bias.fill_(-4.0)
    for mlp in (dec.enc_bbox_head, *dec.dec_bbox_head):
        mlp.layers[-1].weight.mul_(0.1)
    return model
