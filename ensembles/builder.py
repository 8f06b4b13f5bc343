"""`tdet repo build`: exported ONNX files -> a Triton model repository, one ensemble per variant.

For each ONNX (family/variant/labels read from its metadata, written by `tdet export`) this writes
    <m>_preprocess/   python: IMAGE bytes -> images uint8 [3,H,W], orig_hw int32 [2]
    <m>_engine/       onnxruntime (V/model.onnx) or tensorrt (V/model.plan, built on a GPU host)
    <m>_postprocess/  python: engine outputs + orig_hw -> NUM_DETECTIONS, BOXES, SCORES, CLASSES
    <m>/              the ensemble clients call
<m> is the variant (damo_yolo_t) or --name. The engine is the versioned model (V = --version, default 1;
versions already there are kept, within Triton's version_policy); the ensemble runs the newest loaded
one. A Triton ensemble has one config for all its versions, so it cannot route a request to a chosen
engine version: two checkpoints side by side (A/B) are two names.
The engine graph gets a uint8 input with the cast (and RT-DETRv2's 1/255 scale) prepended in-graph, so
only uint8 pixels travel between steps (4x fewer bytes than float32, also over the PCIe link).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from tdet.client import specs
from tdet.client.errors import UserError
from tdet.client.preprocess import MAX_PIXELS

from .configs import (
    BuildOptions,
    engine_config,
    ensemble_config,
    postprocess_config,
    preprocess_config,
    read_config,
    track_ensemble_config,
    tracker_config,
    write_config,
)
from .nms_graph import append_nms, check_nms_family

SCALED_INPUT = "images_float"  # internal name of the float tensor the original graph consumed
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
STEP_SUFFIXES = ("_preprocess", "_engine", "_postprocess", "_tracker", "_track")
# what the versions of one name share (the preprocess, postprocess and ensemble configs)
SHARED = ("family", "input_hw", "category_ids", "engine", "nms")


@dataclass(frozen=True)
class Built:
    """One model `tdet repo build` wrote: its name, the engine version written, the engine versions now
    present, the weights of the written version, and the weights it replaced ("" if none)."""

    name: str
    version: int
    versions: tuple[int, ...]
    weights: str
    replaced: str = ""


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

    @property
    def model_name(self) -> str:
        return self.variant.replace("-", "_")


def read_onnx_info(model) -> OnnxInfo:
    """Metadata and I/O of an exported graph (onnx.ModelProto). ValueError if it isn't a `tdet export` file."""
    meta = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in (specs.META_FAMILY, specs.META_VARIANT, specs.META_CLASS_NAMES, specs.META_CATEGORY_IDS)
               if k not in meta]
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
        h, w = specs.parse_hw(meta.get(specs.META_INPUT_HW, "640,640"))
    except ValueError as e:
        raise UserError(f"the ONNX metadata {specs.META_INPUT_HW}: {e}") from None
    names, ids = json.loads(meta[specs.META_CLASS_NAMES]), json.loads(meta[specs.META_CATEGORY_IDS])
    if len(names) != len(ids):
        raise UserError(f"{len(names)} class names but {len(ids)} category ids in ONNX metadata")
    size = {k: meta[m] for k, m in (("params_m", specs.META_PARAMS_M), ("gflops", specs.META_GFLOPS)) if m in meta}
    return OnnxInfo(family, meta[specs.META_VARIANT], (h, w), names, [int(i) for i in ids],
                    meta.get(specs.META_WEIGHTS, "unknown"), dims, size)


def uint8_engine_graph(model, scale: float):
    """Return `model` with input `images` uint8 [B,3,H,W]; Cast to float (and Mul by `scale` unless 1.0)
    are prepended, feeding what used to be the float input. Edits a copy; the ONNX metadata stays."""
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for node in g.node:
        node.input[:] = [SCALED_INPUT if n == specs.EXPORT_INPUT else n for n in node.input]
    if scale == 1.0:
        pre = [helper.make_node("Cast", [specs.EXPORT_INPUT], [SCALED_INPUT], to=TensorProto.FLOAT,
                                name="tdet_uint8_cast")]
    else:
        g.initializer.append(helper.make_tensor("tdet_input_scale", TensorProto.FLOAT, [], [scale]))
        pre = [helper.make_node("Cast", [specs.EXPORT_INPUT], ["images_cast"], to=TensorProto.FLOAT,
                                name="tdet_uint8_cast"),
               helper.make_node("Mul", ["images_cast", "tdet_input_scale"], [SCALED_INPUT], name="tdet_input_scale")]
    nodes = pre + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    g.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    onnx.checker.check_model(out)
    return out


def _warmup_image() -> bytes:
    """A Triton TYPE_STRING warmup file: 4-byte little-endian length, then a small JPEG."""
    img = np.zeros((48, 64, 3), np.uint8)
    cv2.rectangle(img, (8, 8), (40, 30), (30, 160, 220), -1)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    return struct.pack("<I", len(data)) + data


def trtexec_command(onnx_path: str, plan_path: str, input_hw: tuple[int, int], max_batch_size: int,
                    precision: str = "fp16") -> str:
    """The exact TensorRT 10 build: fp16 (or fp32: no precision flag), explicit batch profile
    1..max_batch_size (opt = max/2)."""
    if precision not in ("fp16", "fp32"):
        raise UserError(f"TensorRT precision must be fp16 or fp32, got {precision!r}")
    h, w = input_hw
    shape = lambda b: f"{specs.EXPORT_INPUT}:{b}x3x{h}x{w}"  # noqa: E731
    opt = max(1, max_batch_size // 2)
    flag = " --fp16" if precision == "fp16" else ""
    return (f"trtexec --onnx={onnx_path} --saveEngine={plan_path}{flag} --minShapes={shape(1)} "
            f"--optShapes={shape(opt)} --maxShapes={shape(max_batch_size)}")


def _write_variant(stage: Path, model, info: OnnxInfo, opts: BuildOptions, max_pixels: int, m: str, version: int,
                   versions: dict[str, str]) -> list[str]:
    """Stage the four models of `m` with this graph as engine version `version`; `versions`: engine
    version -> weights of every version the repository will hold (for the ensemble's parameters)."""
    spec = specs.PREPROCESS[info.family]
    import onnx

    sources = resources.files("tdet.ensembles")
    pre, eng, post = stage / f"{m}_preprocess", stage / f"{m}_engine", stage / f"{m}_postprocess"
    for d, src in ((pre, "preprocess"), (post, "postprocess")):
        (d / "1").mkdir(parents=True)
        (d / "1" / "model.py").write_text(sources.joinpath(src, "model.py").read_text())
    (pre / "warmup").mkdir()
    (pre / "warmup" / "image.bin").write_bytes(_warmup_image())
    write_config(pre / "config.pbtxt", preprocess_config(pre.name, info.family, info.input_hw, opts, max_pixels,
                                                         "image.bin"))
    write_config(post / "config.pbtxt", postprocess_config(post.name, info.family, info.input_hw, info.output_dims,
                                                           opts, info.category_ids))
    vdir = eng / str(version)
    vdir.mkdir(parents=True)
    graph = uint8_engine_graph(model, spec.scale)
    graph = append_nms(graph, opts.detect) if opts.nms == "engine" else graph
    if opts.engine == "tensorrt":
        onnx.save(graph, str(vdir / "model.uint8.onnx"))
        cmd = trtexec_command('"$HERE/model.uint8.onnx"', '"$HERE/model.plan"', info.input_hw, opts.max_batch_size,
                              opts.precision)
        _script(vdir / "build_plan.sh", f"# Builds model.plan of version {version} on a GPU host (TensorRT 10, "
                                        f"same release as the server; {opts.precision}).", cmd)
        _script(eng / "build_engine.sh", "# Builds the plan of every version of this engine.",
                'for s in "$HERE"/*/build_plan.sh; do sh "$s"; done')
    else:
        onnx.save(graph, str(vdir / "model.onnx"))
    write_config(eng / "config.pbtxt", engine_config(eng.name, info.family, info.input_hw, info.output_dims, opts))
    newest = str(max(int(v) for v in versions))
    meta = {"family": info.family, "variant": info.variant, "weights": versions[newest],
            "versions": json.dumps(versions, sort_keys=True), "class_names": json.dumps(info.class_names),
            "category_ids": json.dumps(info.category_ids), "input_hw": specs.format_hw(info.input_hw),
            "engine": opts.engine, "nms": opts.nms, **info.size}
    ens = stage / m
    (ens / "1").mkdir(parents=True)  # an ensemble needs an (empty) version directory
    write_config(ens / "config.pbtxt", ensemble_config(m, info.family, opts, meta))
    (ens / "labels.json").write_text(json.dumps(dict(zip(map(str, info.category_ids), info.class_names)), indent=1))
    return [pre.name, eng.name, post.name, m]


def _write_track(stage: Path, m: str, opts: BuildOptions, idle_us: int | None) -> list[str]:
    """Stage `<m>_tracker` and the `<m>_track` ensemble (pre -> engine -> post -> tracker) beside the plain one."""
    tracker = stage / f"{m}_tracker"
    (tracker / "1").mkdir(parents=True)
    (tracker / "1" / "model.py").write_text(resources.files("tdet.ensembles").joinpath("tracker", "model.py")
                                            .read_text())
    write_config(tracker / "config.pbtxt", tracker_config(tracker.name, opts, *([idle_us] if idle_us else [])))
    ens = stage / f"{m}_track"
    (ens / "1").mkdir(parents=True)
    write_config(ens / "config.pbtxt", track_ensemble_config(m, read_config(stage / m / "config.pbtxt"), opts))
    shutil.copy(stage / m / "labels.json", ens / "labels.json")
    return [tracker.name, ens.name]


def _script(path: Path, comment: str, command: str) -> None:
    path.write_text(f'#!/bin/sh\n{comment}\nset -e\nHERE="$(cd "$(dirname "$0")" && pwd)"\n{command}\n')
    path.chmod(0o755)


def _existing_versions(out: Path, m: str) -> tuple[dict[str, str], dict[str, str]]:
    """(shared parameters, engine version -> weights) of model `m` already in `out` ({} , {} if none)."""
    path = out / m / "config.pbtxt"
    if not path.is_file():
        return {}, {}
    params = {k: v.string_value for k, v in read_config(path).parameters.items()}
    on_disk = sorted(int(d.name) for d in (out / f"{m}_engine").glob("*") if d.is_dir() and d.name.isdigit())
    recorded = json.loads(params.get("versions", "{}")) or {"1": params.get("weights", "unknown")}
    return params, {str(v): recorded.get(str(v), "unknown") for v in on_disk}


def _plan(out: Path, m: str, info: OnnxInfo, opts: BuildOptions, version: int, replace: bool
          ) -> tuple[dict[str, str], str]:
    """Which engine versions `m` holds after this build (version -> weights) and which weights it replaces.
    UserError when the build would silently replace other weights, or mix incompatible versions."""
    params, versions = _existing_versions(out, m)
    params = {"nms": "python", **params} if params else params  # built before --nms existed
    new = {"family": info.family, "input_hw": specs.format_hw(info.input_hw),
           "category_ids": json.dumps(info.category_ids), "engine": opts.engine, "nms": opts.nms}
    clash = [k for k in SHARED if params and params.get(k) != new[k]]
    if clash:
        if not replace:
            raise UserError(f"{out / m} holds a model with another {', '.join(clash)} ({params.get('variant')}, "
                            f"weights {params.get('weights')}); versions of one name share the preprocess and "
                            f"postprocess: pass --name to build this one beside it, or --replace")
        return {str(version): info.weights}, params.get("weights", "")
    old = versions.get(str(version), "")
    if old and old != info.weights and not replace:
        raise UserError(f"{out / m} version {version} holds weights {old!r}, this ONNX has {info.weights!r}: pass "
                        f"--name to serve both side by side (A/B), --version N to add it as another version, or "
                        f"--replace")
    return {**versions, str(version): info.weights}, (old if old != info.weights else "")


def _load(path: str | Path):
    import onnx

    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as err:
        raise UserError(f"{path} is not a readable ONNX file: {err}") from None


def build_repository(onnx_files: list[str | Path], out: str | Path = "model_repository",
                     opts: BuildOptions | None = None, max_pixels: int = MAX_PIXELS, *, name: str | None = None,
                     version: int = 1, replace: bool = False, track: bool = False,
                     track_idle_us: int | None = None) -> list[Built]:
    """Write the models of each ONNX file into `out`; returns what was built.

    name: the model name (one file only; default: the variant with underscores). version: the engine
    version this graph becomes; the other versions of that name stay. A name that holds other weights at
    that version is only replaced with `replace`. Each variant is staged in a temp directory next to
    `out` and moved in only when complete, so an error never leaves a half-written model that Triton
    would try to load. Models of other names are left alone. track: also `<m>_tracker` and the `<m>_track`
    ensemble (server-side ByteTrack per stream; track_idle_us: how long a silent stream's tracker is kept)."""
    opts = opts or BuildOptions()  # checked when made (BuildOptions.__post_init__)
    if version < 1:
        raise UserError(f"--version must be >= 1, got {version}")
    if name is not None:
        if len(onnx_files) != 1:
            raise UserError(f"--name names one model: pass one --onnx file, not {len(onnx_files)}")
        if not MODEL_NAME.fullmatch(name) or name.endswith(STEP_SUFFIXES):
            raise UserError(f"--name {name!r}: use letters, digits, '_' and '-', "
                            f"not ending in {'/'.join(STEP_SUFFIXES)}")
    out = Path(out)
    names = [name or read_onnx_info(_load(f)).model_name for f in onnx_files]  # every file checked before any write
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"several --onnx files would be model(s) {twice}; build them one at a time with --name")
    for f in onnx_files if opts.nms == "engine" else ():
        check_nms_family(read_onnx_info(_load(f)).family, opts.nms)
    out.mkdir(parents=True, exist_ok=True)
    built: list[Built] = []
    for f, m in zip(onnx_files, names):
        model = _load(f)
        info = read_onnx_info(model)
        versions, replaced = _plan(out, m, info, opts, version, replace)
        stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=out.parent))
        try:
            names = _write_variant(stage, model, info, opts, max_pixels, m, version, versions)
            names += _write_track(stage, m, opts, track_idle_us) if track else []
            for v in versions:  # the other versions of the engine move over as they are
                if v != str(version):
                    shutil.copytree(out / f"{m}_engine" / v, stage / f"{m}_engine" / v)
            for step in names:
                if (out / step).exists():
                    shutil.rmtree(out / step)
                os.replace(stage / step, out / step)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        built.append(Built(m, version, tuple(sorted(int(v) for v in versions)), info.weights, replaced))
    if opts.engine == "tensorrt":
        _script(out / "build_engines.sh", "# Builds every tensorrt engine of this repository (run on the GPU host).",
                'for s in "$HERE"/*_engine/build_engine.sh; do sh "$s"; done')
    return built
