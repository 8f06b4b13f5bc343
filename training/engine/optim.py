"""Optimizers and learning-rate schedules from a recipe.

Parameter groups follow the official builders: DAMO-YOLO's `build_optimizer` (no weight decay on norm layers
and biases: recipe `no_decay`) and RT-DETRv2's `get_optim_params` (regexes on parameter names, each with its
own lr / weight decay: recipe `param_groups`). Schedules are pure functions of the optimizer step, so a resumed
run computes exactly the lr the uninterrupted one would have.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from tdet.client.errors import UserError

from ..recipe import OptimizerCfg, ScheduleCfg

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _no_decay_names(model: nn.Module, kinds: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for mod_name, m in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if "norm" in kinds and isinstance(m, NORMS):
            names.update(prefix + n for n, _ in m.named_parameters(recurse=False))
        if "bias" in kinds and isinstance(getattr(m, "bias", None), nn.Parameter):
            names.add(prefix + "bias")
    return names


def param_groups(model: nn.Module, cfg: OptimizerCfg, base_lr: float, lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters in groups; every group records its own `initial_lr` (the lr the schedule scales).
    `base_lr` is the run's default lr (already scaled); a group's own recipe lr is multiplied by `lr_scale`."""
    unknown = set(cfg.no_decay) - {"norm", "bias"}
    if unknown:
        raise UserError(f"unknown optimizer no_decay kind(s) {sorted(unknown)}; known: norm, bias")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    groups: list[dict] = []
    taken: set[str] = set()
    for spec in cfg.param_groups:
        extra = set(spec) - {"params", "lr", "weight_decay"}
        if extra:
            raise UserError(f"unknown key(s) {sorted(extra)} in optimizer param_groups entry {spec}")
        names = [n for n in params if n not in taken and re.search(spec["params"], n)]
        taken.update(names)
        groups.append({"params": [params[n] for n in names], "names": names,
                       "lr": spec["lr"] * lr_scale if "lr" in spec else base_lr,
                       "weight_decay": spec.get("weight_decay", cfg.weight_decay)})
    rest = [n for n in params if n not in taken]
    no_decay = _no_decay_names(model, cfg.no_decay)
    for decay, names in ((cfg.weight_decay, [n for n in rest if n not in no_decay]),
                         (0.0, [n for n in rest if n in no_decay])):
        groups.append({"params": [params[n] for n in names], "names": names, "lr": base_lr, "weight_decay": decay})
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return groups


def build_optimizer(model: nn.Module, cfg: OptimizerCfg, base_lr: float, lr_scale: float = 1.0
                    ) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, base_lr, lr_scale)
    if cfg.name == "SGD":
        return torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "AdamW":
        return torch.optim.AdamW(groups, lr=base_lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise UserError(f"unknown optimizer {cfg.name!r}; known: SGD, AdamW")


class LRSchedule:
    """lr of every group at optimizer step `step` (0-based) = its initial_lr x factor(step).

    damo-cosine (`cosine_scheduler`): quadratic warmup from warmup_start_lr over warmup_epochs, cosine down to
        min_lr_ratio x lr, constant at that minimum for the last no_aug_epochs.
    warmup-multistep (LinearWarmup + MultiStepLR): factor (step + 1) / warmup_iters while warming up, then
        gamma ** (milestones passed), the milestones counting the epochs that ended after the warmup.
    """

    def __init__(self, cfg: ScheduleCfg, *, base_lr: float, steps_per_epoch: int, epochs: int,
                 no_aug_epochs: int) -> None:
        if cfg.name not in ("damo-cosine", "warmup-multistep"):
            raise UserError(f"unknown schedule {cfg.name!r}; known: damo-cosine, warmup-multistep")
        self.cfg, self.base_lr, self.steps_per_epoch = cfg, base_lr, steps_per_epoch
        self.total = epochs * steps_per_epoch
        self.warmup = round(cfg.warmup_epochs * steps_per_epoch) if cfg.name == "damo-cosine" else cfg.warmup_iters
        self.no_aug = no_aug_epochs * steps_per_epoch

    def factor(self, step: int) -> float:
        c = self.cfg
        if c.name == "damo-cosine":
            final = self.base_lr * c.min_lr_ratio
            if step < self.warmup:
                lr = (self.base_lr - c.warmup_start_lr) * (step / self.warmup) ** 2 + c.warmup_start_lr
            elif step >= self.total - self.no_aug:
                lr = final
            else:
                span = max(1, self.total - self.warmup - self.no_aug)
                lr = final + 0.5 * (self.base_lr - final) * (1.0 + math.cos(math.pi * (step - self.warmup) / span))
            return lr / self.base_lr
        if step < self.warmup:
            return min(1.0, (step + 1) / self.warmup)
        epoch = step // self.steps_per_epoch
        ended_after_warmup = sum(1 for e in range(epoch) if (e + 1) * self.steps_per_epoch >= self.warmup)
        return c.gamma ** sum(1 for m in c.milestones if ended_after_warmup >= m)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for `step`; returns the first group's lr (for logs)."""
        f = self.factor(step)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f
        return optimizer.param_groups[0]["lr"]
