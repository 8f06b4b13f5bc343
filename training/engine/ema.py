"""Exponential moving average of the model, as both official trainers keep it (DAMO-YOLO `ema_model`,
RT-DETRv2 `ModelEMA`): every float entry of the state dict (parameters and BN buffers) follows
ema = d * ema + (1 - d) * model with d = decay * (1 - exp(-n / warmups)). The EMA weights are what is
evaluated and released."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, *, decay: float, warmups: int, first_update: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmups, self.first_update = decay, warmups, first_update
        self.updates = 0  # updates done so far

    def decay_at(self, n: int) -> float:
        return self.decay * (1.0 - math.exp(-n / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model` (the bare module, not its DDP wrapper)."""
        d = self.decay_at(self.updates + self.first_update)
        current = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(current[k].detach(), alpha=1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"], strict=True)
        self.updates = int(state["updates"])
