"""One explicit table of model families; nothing registers itself at import time.

A family package (training/models/<family>) exposes FAMILY, VARIANTS, WEIGHTS, build_model,
export_module and num_params. This module finds a variant's family and builds it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .weights import resolve

if TYPE_CHECKING:
    from torch import nn

FAMILY_MODULES = {
    "damo-yolo": "tdet.training.models.damo_yolo",
    "rtdetrv2": "tdet.training.models.rtdetrv2",
}


def family_module(family: str) -> ModuleType:
    if family not in FAMILY_MODULES:
        raise ValueError(f"unknown family {family!r}; known: {sorted(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[family])


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
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(variant_names())}")


def build_model(variant: str, *, weights: str | Path | None = None, deploy: bool = False,
                seed: int = 0) -> nn.Module:
    """Build `variant`; weights: None (seeded tame random init), a checkpoint path, or "official"."""
    fam = family_of(variant)
    path = resolve(weights, fam.WEIGHTS, variant)
    return fam.build_model(variant, weights=path, deploy=deploy, seed=seed)
