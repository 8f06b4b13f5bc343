"""`tdet export`: deploy-form model -> ONNX with a dynamic batch axis, named outputs and metadata.

The graph holds the network and the box decode only: no NMS / top-k (those are the Triton
postprocess), no preprocessing (the repository builder prepends the uint8 cast/scale).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from tdet.client import specs
from tdet.client.errors import UserError
from tdet.client.files import atomic_path
from tdet.client.labels import COCO_CATEGORY_IDS, COCO_CLASSES

from .info import count_gflops
from .precision import Calibration, calibration_inputs, check_precision_args, reduce_precision
from .registry import build_model, family_of
from .weights import checkpoint_meta, resolve, sha256sum

MIN_OPSET = 17  # opset 17 keeps LayerNorm one op (fp16 TensorRT engines break on the decomposed form)
CHECK_RTOL = 1e-3  # --check: max |ORT - PyTorch| allowed, relative to the output's largest magnitude


@dataclass(frozen=True)
class CheckResult:
    """`--check` for one output: ONNX Runtime vs PyTorch at batch 2."""

    max_abs_diff: float
    tolerance: float  # CHECK_RTOL x max |PyTorch output| (float noise scales with the values)
    rule: str = f"max |ORT - PyTorch| <= {CHECK_RTOL:g} x max |PyTorch|"

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclass(frozen=True)
class ExportResult:
    path: Path
    variant: str
    family: str
    weights: str  # what the graph's weights are: a path, or "random-init(seed=N)"
    check: dict[str, CheckResult] | None = None  # ORT vs PyTorch per output, when checked
    precision: str = "fp32"


def check_export_args(variant: str, out: str | Path, *, opset: int = MIN_OPSET, weights: str | Path | None = None,
                      overwrite: bool = True):
    """Refuse bad arguments before anything is built or printed; returns the variant's family package."""
    out = Path(out)
    fam = family_of(variant)  # UserError for unknown names
    if out.suffix != ".onnx":
        raise UserError(f"--out must end in .onnx, got {out}")
    if opset < MIN_OPSET:
        raise UserError(f"--opset must be >= {MIN_OPSET} (got {opset}): lower opsets split LayerNorm")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    if weights is not None and str(weights) != "official" and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}")
    return fam


def export_onnx(variant: str, out: str | Path, *, weights: str | Path | None = None, opset: int = MIN_OPSET,
                seed: int = 0, check: bool = False, overwrite: bool = True, precision: str = "fp32",
                calib: Calibration | None = None, keep_fp32: bool = True) -> ExportResult:
    """Export `variant` to `out` (.onnx). Input `images` float32 [B,3,H,W]; outputs per family
    (tdet.client.specs.EXPORT_OUTPUTS). Written to a temp file and renamed, so a failed export never
    leaves a file that looks complete. precision int8 (calibrated on `calib`) / fp16: the fp32 graph
    converted (training/precision.py), keeping the family's KEEP_FP32 layers in fp32 unless keep_fp32 is
    False; `check` compares the fp32 graph with PyTorch."""
    import onnx
    import torch

    out = Path(out)
    fam = check_export_args(variant, out, opset=opset, weights=weights, overwrite=overwrite)
    calib_files = check_precision_args(precision, calib, keep_fp32)
    out.parent.mkdir(parents=True, exist_ok=True)

    path = resolve(weights, fam.WEIGHTS, variant)
    # a `tdet train` checkpoint carries its dataset's classes and its training size; official files are COCO at 640
    meta = checkpoint_meta(path) if path is not None else {}
    class_names = list(meta.get("class_names", COCO_CLASSES))
    category_ids = [int(i) for i in meta.get("category_ids", COCO_CATEGORY_IDS)]
    spec = specs.preprocess_spec(fam.FAMILY, meta.get("input_hw"))
    h, w = spec.size_hw
    calib_inputs = calibration_inputs(calib_files, spec)  # an unreadable image fails before the export
    model = build_model(variant, weights=path, deploy=True, seed=seed).eval()
    wrapper = fam.export_module(model).eval()
    output_names = list(specs.EXPORT_OUTPUTS[fam.FAMILY])
    dummy = check_input(1, (h, w), spec.scale, seed)  # seeded: an export is reproducible
    # a local file as an absolute path: `tdet eval --reference` finds it from any folder
    weights_desc = (f"random-init(seed={seed})" if weights is None
                    else str(Path(weights).resolve()) if Path(weights).is_file() else str(weights))

    with atomic_path(out, suffix=".onnx.part") as tmp_path:  # a failed run leaves nothing, a good one 0644
        tmp = str(tmp_path)
        reduced = f"{tmp[:-len('.onnx.part')]}.{precision}.onnx.part"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notices
                # The legacy (TorchScript) exporter: with dynamic_axes it keeps the batch symbolic, where
                # torch>=2.9's default dynamo exporter specializes RT-DETR to batch 1.
                torch.onnx.export(
                    wrapper, (dummy,), tmp, dynamo=False, opset_version=opset, do_constant_folding=True,
                    input_names=[specs.EXPORT_INPUT], output_names=output_names,
                    dynamic_axes={n: {0: "batch"} for n in [specs.EXPORT_INPUT, *output_names]},
                )
            graph = onnx.load(tmp)
            meta = {
                specs.META_FAMILY: fam.FAMILY,
                specs.META_VARIANT: variant,
                specs.META_INPUT_HW: specs.format_hw((h, w)),
                specs.META_CLASS_NAMES: json.dumps(class_names),
                specs.META_CATEGORY_IDS: json.dumps(category_ids),
                specs.META_WEIGHTS: weights_desc,
                **({specs.META_WEIGHTS_SHA256: sha256sum(path)} if path is not None else {}),
                specs.META_PARAMS_M: f"{fam.num_params(model) / 1e6:.2f}",
                specs.META_GFLOPS: f"{count_gflops(model, (h, w)):.2f}",
            }
            del graph.metadata_props[:]
            for k, v in meta.items():
                graph.metadata_props.add(key=k, value=v)
            graph.producer_name = "tdet"
            onnx.checker.check_model(graph)
            onnx.save(graph, tmp)
            diffs = check_against_torch(tmp, wrapper, fam.FAMILY, (h, w), spec.scale, seed=seed) if check else None
            if precision != "fp32":
                reduce_precision(Path(tmp), Path(reduced), precision, family=fam.FAMILY, inputs=calib_inputs,
                                 calib=calib, keep_fp32=keep_fp32)
                os.replace(reduced, tmp)
        finally:
            if os.path.exists(reduced):
                os.unlink(reduced)
    return ExportResult(out, variant, fam.FAMILY, weights_desc, diffs, precision)


def check_input(batch: int, hw: tuple[int, int], scale: float, seed: int):
    """A seeded random input batch in the graph's units (0..255 x the family's scale)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *hw, generator=gen) * (255.0 * scale)


def check_against_torch(path: str | Path, wrapper, family: str, hw: tuple[int, int], scale: float, *,
                        seed: int = 0) -> dict[str, CheckResult]:
    """ORT vs PyTorch per output at batch 2 (two seeded random images)."""
    import torch

    from tdet.ensembles.ort_session import ort_session

    names = list(specs.EXPORT_OUTPUTS[family])
    x = check_input(2, hw, scale, seed)
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(x)]
    got = ort_session(str(path)).run(names, {specs.EXPORT_INPUT: x.numpy()})
    return compare_outputs(family, dict(zip(names, got)), dict(zip(names, ref)))


def compare_outputs(family: str, got: dict, ref: dict) -> dict[str, CheckResult]:
    """max |got - ref| per output against CHECK_RTOL x max |ref|. A family with UNORDERED_ROWS (RT-DETRv2's
    queries) has its rows paired one-to-one first (Hungarian assignment on box distance): a top-k query
    selection may order near-equal queries either way under float noise, so row i of one run need not be row i
    of the other."""
    import numpy as np

    from .registry import family_module

    if family_module(family).UNORDERED_ROWS:
        order = [_pair_queries(g, r) for g, r in zip(got["boxes"], ref["boxes"])]
        got = {n: np.stack([v[o] for v, o in zip(got[n], order)]) for n in got}
    return {n: CheckResult(float(np.abs(got[n] - ref[n]).max()), CHECK_RTOL * max(float(np.abs(ref[n]).max()), 1e-6))
            for n in ref}


def _pair_queries(got_boxes, ref_boxes):
    """Indices into got's queries, one per ref query, minimising the total box distance."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    cost = np.abs(got_boxes[:, None, :].astype(np.float64) - ref_boxes[None, :, :]).max(-1)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(ref_boxes), np.int64)
    order[cols] = rows
    return order
