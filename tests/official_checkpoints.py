"""Test helper: state dicts shaped exactly like the official release files, from the key/shape fixtures
dumped from the official models (tests/fixtures/*.json)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"


def official_keys(fixture: str) -> dict[str, list[int]]:
    """Official state-dict key -> shape, e.g. fixture "damo_yolo_t" or "rtdetrv2_s"."""
    return json.loads((FIXTURES / f"{fixture}.json").read_text())["keys"]


def random_state_dict(fixture: str, seed: int = 0,
                      constants: dict[str, Callable[[list[int]], torch.Tensor]] | None = None
                      ) -> dict[str, torch.Tensor]:
    """Random tensors under exactly the official names and shapes; keys ending in a `constants` suffix
    get that fixed value (buffers such as DFL bins or masks that a release file holds unchanged)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_keys(fixture).items():
        fixed = next((f for suffix, f in (constants or {}).items() if k.endswith(suffix)), None)
        if fixed is not None:
            sd[k] = fixed(shape)
        elif k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=gen) * 0.05
    return sd
