"""Model families (one package each). Shared here: how a variant's config takes per-run overrides."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from tdet.client.errors import UserError

C = TypeVar("C")
M = TypeVar("M")


def with_overrides(cfg: C, *, num_classes: int | None = None, input_hw: tuple[int, int] | None = None) -> C:
    """`cfg` (a frozen variant dataclass) with the dataset's class count and the run's input size (height,
    width); None keeps the official value. ValueError for sizes the strided model cannot take."""
    changes: dict[str, Any] = {}
    if num_classes is not None:
        if int(num_classes) < 1:
            raise UserError(f"num_classes must be >= 1, got {num_classes}")
        changes["num_classes"] = int(num_classes)
    if input_hw is not None:
        h, w = (int(v) for v in input_hw)
        if h < 32 or w < 32 or h % 32 or w % 32:
            raise UserError(f"input size must be a multiple of 32 (>= 32) on each side, got {h}x{w}")
        changes["input_hw"] = (h, w)
    return replace(cfg, **changes) if changes else cfg


def build_initialised(make: Callable[[], M], *, seed: int, init: str, tame: Callable[[M, int], Any],
                      train: Callable[[M, int], Any]) -> M:
    """`make()` (a model constructor) under `seed` without touching the global generator, then the random
    init a family's build_model asks for: "tame" (tests and demos) or "train" (the official initialisation
    a training run starts from)."""
    import torch

    if init not in ("tame", "train"):
        raise UserError(f"unknown init {init!r}; use 'tame' or 'train'")
    with torch.random.fork_rng():  # the construction-time init draws from the global generator
        torch.manual_seed(seed)
        model = make()
    (tame if init == "tame" else train)(model, seed)
    return model


def outputs_to_fp32(outputs: Any) -> Any:
    """fp16/bf16 tensors of model outputs (nested lists/tuples/dicts) as fp32, everything else as is: the losses
    run in fp32 under autocast, as the official code's criteria do."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs
    if isinstance(outputs, dict):
        return {k: outputs_to_fp32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(outputs_to_fp32(v) for v in outputs)
    return outputs
