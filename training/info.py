"""`tdet info`: every registered variant with its input size, params and GFLOPs (deploy form, 640x640).

FLOPs come from torch's flop counter, which counts 2 x MACs (the convention of the papers' tables).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tdet.client import specs

from .registry import build_model, families
from .weights import cache_dir


@dataclass(frozen=True)
class VariantInfo:
    name: str
    family: str
    input_size: tuple[int, int]  # (height, width)
    params_m: float
    gflops: float  # deploy form (RepConv/RepVGG fused), what the engine runs
    gflops_unfused: float  # train form; some published tables (RT-DETRv2 L/X) use this count
    published_map: float | None  # COCO val2017 AP of the official checkpoint
    weights_url: str | None
    weights_file: str | None  # where `--weights official` caches (or finds) the release file

    def as_dict(self) -> dict:
        return asdict(self)


def count_gflops(model, input_hw: tuple[int, int]) -> float:
    """Forward FLOPs (2 x MACs) of one 1x3xHxW image, in GFLOPs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, *input_hw)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def variant_info(name: str) -> VariantInfo:
    from .registry import family_of

    fam = family_of(name)
    hw = specs.PREPROCESS[fam.FAMILY].size_hw
    model = build_model(name).eval()
    unfused = count_gflops(model, hw)
    model.fuse()
    w = fam.WEIGHTS.get(name)
    return VariantInfo(
        name=name, family=fam.FAMILY, input_size=hw,
        params_m=round(fam.num_params(model) / 1e6, 2),
        gflops=round(count_gflops(model, hw), 2),
        gflops_unfused=round(unfused, 2),
        published_map=w.map_coco if w else None,
        weights_url=w.url if w else None,
        weights_file=str(cache_dir() / w.filename) if w else None,
    )


def all_info(names: list[str] | None = None) -> list[VariantInfo]:
    import torch

    wanted = names or [n for fam in families() for n in fam.VARIANTS]
    with torch.no_grad():  # not set_grad_enabled(False): a caller (a test session) keeps its grad mode
        return [variant_info(n) for n in wanted]
