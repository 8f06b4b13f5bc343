"""One explicit table of model families; nothing registers itself at import time.

A family package (training/models/<family>) provides the members of tdet.training.family.Family (checked
when it is first imported). This module finds a variant's family and builds it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from tdet.client.errors import UserError

from .family import missing_members
from .weights import checkpoint_meta, resolve

if TYPE_CHECKING:
    from torch import nn

FAMILY_MODULES = {
    "damo-yolo": "tdet.training.models.damo_yolo",
    "rtdetrv2": "tdet.training.models.rtdetrv2",
}


def family_module(family: str) -> ModuleType:
    if family not in FAMILY_MODULES:
        raise UserError(f"unknown family {family!r}; known: {sorted(FAMILY_MODULES)}")
    module = importlib.import_module(FAMILY_MODULES[family])
    missing = missing_members(module)
    if missing:  # a family package that does not implement the interface fails here, not deep in training
        raise TypeError(f"{module.__name__} is not a complete model family: it lacks {', '.join(missing)}")
    return module


def families() -> list[ModuleType]:
    return [family_module(f) for f in FAMILY_MODULES]


def variant_names() -> list[str]:
    return [name for fam in families() for name in fam.VARIANTS]


def family_of(variant: str) -> ModuleType:
    """The family package that defines `variant`. ValueError lists the known names otherwise."""
    # variant names start with the family name, so only that family's package is imported
    for family in sorted(FAMILY_MODULES, key=len, reverse=True):
        if variant.startswith(family):
            fam = family_module(family)
            if variant in fam.VARIANTS:
                return fam
            break
    raise UserError(f"unknown variant {variant!r}; known: {', '.join(variant_names())}")


def build_model(variant: str, *, weights: str | Path | None = None, deploy: bool = False, seed: int = 0,
                num_classes: int | None = None, input_hw: tuple[int, int] | None = None,
                init: str = "tame") -> nn.Module:
    """Build `variant`; weights: None (a seeded random init, see `init`), a checkpoint path, or "official".

    num_classes / input_hw (height, width): None takes them from a `tdet train` checkpoint's metadata
    (its dataset's classes, its training size), else the official 80 classes at 640x640.
    init (weights=None only): "tame" (tests and demos: spread-out outputs) or "train" (the official
    initialisation a training run starts from)."""
    fam = family_of(variant)
    path = resolve(weights, fam.WEIGHTS, variant)
    meta = checkpoint_meta(path) if path is not None else {}
    if meta.get("variant", variant) != variant:
        raise UserError(f"{path} is a {meta['variant']} checkpoint, not {variant}")
    num_classes = num_classes if num_classes is not None else meta.get("num_classes")
    input_hw = input_hw if input_hw is not None else meta.get("input_hw")
    return fam.build_model(variant, weights=path, deploy=deploy, seed=seed, num_classes=num_classes,
                           input_hw=tuple(input_hw) if input_hw is not None else None, init=init)
