"""`tdet info`: every registered variant with its input size, params and GFLOPs (deploy form, 640x640).

The figures are measured by this code (torch's flop counter, which counts 2 x MACs, the convention of
the papers' tables), but measuring builds every model (~60 s for all 13 on 2 cores), so they are
measured once and shipped in `variants.json` next to this file: `tdet info` reads that table, needs no
torch, and answers at once. `tdet info --measure` builds the models and measures again;
`python -m tdet.training.info --write` regenerates the table (a test checks it against the registry
and re-measures two variants).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tdet.client import specs
from tdet.client.errors import UserError, train_extra_missing

from .weights import cache_dir

TABLE = Path(__file__).with_name("variants.json")


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


def measure(name: str) -> VariantInfo:
    """Build `name` (torch) and measure params and GFLOPs, unfused and fused."""
    from .registry import build_model, family_of

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


def shipped() -> list[VariantInfo]:
    """The shipped table (no torch); weights_file is resolved against this machine's cache."""
    rows = json.loads(TABLE.read_text())
    names = {f.name for f in fields(VariantInfo)}
    out = []
    for row in rows:
        filename = row.pop("weights_filename", None)
        row = {k: v for k, v in row.items() if k in names}
        out.append(VariantInfo(**{**row, "input_size": tuple(row["input_size"]),
                                  "weights_file": str(cache_dir() / filename) if filename else None}))
    return out


def all_info(names: list[str] | None = None, *, measured: bool = False) -> list[VariantInfo]:
    """The rows of `names` (default: all, in registry order), from the shipped table, or measured now."""
    table = shipped()
    known = [r.name for r in table]
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise UserError(f"unknown variant(s) {unknown}; known: {', '.join(known)}")
    wanted = names or known
    if not measured:
        by_name = {r.name: r for r in table}
        return [by_name[n] for n in wanted]
    try:
        import torch
    except ModuleNotFoundError:
        raise train_extra_missing("tdet info --measure (it builds the models)",
                                  hint="without --measure, tdet info shows the shipped figures") from None
    with torch.no_grad():  # not set_grad_enabled(False): a caller (a test session) keeps its grad mode
        return [measure(n) for n in wanted]


def write_table(path: Path = TABLE) -> list[VariantInfo]:
    """Measure every registered variant and write the shipped table (run after adding a variant)."""
    import torch

    from .registry import variant_names

    with torch.no_grad():
        rows = [measure(n) for n in variant_names()]
    data = []
    for r in rows:
        row = r.as_dict()
        row["weights_filename"] = Path(row.pop("weights_file")).name if r.weights_file else None
        data.append(row)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tdet.training.info --write   (re-measures every variant into variants.json)")
    for r in write_table():
        print(r.name, r.params_m, r.gflops, r.gflops_unfused)
