"""What `tdet repo build` reads from an exported ONNX file: the family, variant, input size, classes, weights
and output shapes `tdet export` wrote into its metadata, checked before anything is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tdet.client import specs
from tdet.client.errors import UserError


@dataclass(frozen=True)
class OnnxInfo:
    family: str
    variant: str
    input_hw: tuple[int, int]
    class_names: list[str]
    category_ids: list[int]
    weights: str
    output_dims: dict[str, list[int]]  # per output, without the batch axis (-1 = dynamic)
    size: dict[str, str] = field(default_factory=dict)  # params_m / gflops, when export recorded them
    precision: str = "fp32"  # tdet export --precision (metadata tdet.precision; missing: fp32)
    weights_sha256: str = ""  # the checkpoint file's digest (missing: random init, or exported before it was kept)

    @property
    def model_name(self) -> str:
        """The default served name: the variant with underscores, plus _int8 / _fp16 for a reduced-precision
        export, so the precisions of one checkpoint are built side by side without --name."""
        base = self.variant.replace("-", "_")
        return base if self.precision == "fp32" else f"{base}_{self.precision}"


def read_onnx_info(model) -> OnnxInfo:
    """Metadata and I/O of an exported graph (onnx.ModelProto). ValueError if it isn't a `tdet export` file."""
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in (specs.META_FAMILY, specs.META_VARIANT, specs.META_CLASS_NAMES, specs.META_CATEGORY_IDS,
                           specs.META_INPUT_HW) if k not in meta]
    if missing:
        raise UserError(f"ONNX metadata lacks {missing}: export it with `tdet export`")
    family = meta[specs.META_FAMILY]
    if family not in specs.FAMILIES:
        raise UserError(f"unknown family {family!r} in ONNX metadata")
    inputs = [i.name for i in model.graph.input]
    outputs = {o.name: o for o in model.graph.output}
    if inputs != [specs.EXPORT_INPUT] or set(outputs) != set(specs.EXPORT_OUTPUTS[family]):
        raise UserError(f"expected input {specs.EXPORT_INPUT!r} and outputs {specs.EXPORT_OUTPUTS[family]}, "
                         f"got {inputs} and {sorted(outputs)}")
    elem = model.graph.input[0].type.tensor_type.elem_type
    if elem != 1:  # onnx.TensorProto.FLOAT
        raise UserError("the ONNX input is not float32: pass the file `tdet export` wrote, not an engine graph")
    dims = {n: [d.dim_value if d.HasField("dim_value") else -1 for d in o.type.tensor_type.shape.dim][1:]
            for n, o in outputs.items()}
    try:
        h, w = specs.parse_hw(meta[specs.META_INPUT_HW])
    except ValueError as e:
        raise UserError(f"the ONNX metadata {specs.META_INPUT_HW}: {e}") from None
    names, ids = json.loads(meta[specs.META_CLASS_NAMES]), json.loads(meta[specs.META_CATEGORY_IDS])
    if len(names) != len(ids):
        raise UserError(f"{len(names)} class names but {len(ids)} category ids in ONNX metadata")
    size = {k: meta[m] for k, m in (("params_m", specs.META_PARAMS_M), ("gflops", specs.META_GFLOPS)) if m in meta}
    return OnnxInfo(family, meta[specs.META_VARIANT], (h, w), names, [int(i) for i in ids],
                    meta.get(specs.META_WEIGHTS, "unknown"), dims, size, meta.get(specs.META_PRECISION, "fp32"),
                    meta.get(specs.META_WEIGHTS_SHA256, ""))


def load_onnx(path: str | Path):
    """The onnx.ModelProto at `path`; FileNotFoundError / UserError naming the file."""
    import onnx

    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as err:
        raise UserError(f"{path} is not a readable ONNX file: {err}") from None
