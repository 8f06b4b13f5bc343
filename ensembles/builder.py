"""`tdet repo build`: exported ONNX files -> a Triton model repository, one ensemble per variant.

For each ONNX (family/variant/labels read from its metadata, written by `tdet export`) this writes
    <m>_preprocess/   python: IMAGE bytes -> images uint8 [3,H,W], orig_hw int32 [2]
                      (--preprocess dali: the same outputs from a DALI pipeline, 1/model.dali; IMAGE uint8 [-1])
    <m>_engine/       onnxruntime (V/model.onnx) or tensorrt (V/model.plan, built on a GPU host)
    <m>_postprocess/  python: engine outputs + orig_hw -> NUM_DETECTIONS, BOXES, SCORES, CLASSES
    <m>/              the ensemble clients call
<m> is the variant (damo_yolo_t; damo_yolo_t_int8 / _fp16 for a `tdet export --precision` file) or --name.
The engine is the versioned model (V = --version, default 1;
versions already there are kept, within Triton's version_policy); the ensemble runs the newest loaded
one. A Triton ensemble has one config for all its versions, so it cannot route a request to a chosen
engine version: two checkpoints side by side (A/B) are two names.
The engine graph gets a uint8 input with the cast (and RT-DETRv2's 1/255 scale) prepended in-graph, so
only uint8 pixels travel between steps (4x fewer bytes than float32, also over the PCIe link).
The pieces: onnx_info (the exported file's metadata, checked first), engine_graph (the uint8 graph, trtexec),
versions (what a build may add or replace); this module stages each model and moves it in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from tdet.client import specs
from tdet.client.errors import UserError, repeated
from tdet.client.preprocess import MAX_PIXELS

from .configs import (
    BuildOptions,
    dali_preprocess_config,
    engine_config,
    ensemble_config,
    postprocess_config,
    preprocess_config,
    read_config,
    track_ensemble_config,
    tracker_config,
    write_config,
)
from .dali_preprocess import dali_version, require_dali, write_dali_model
from .engine_graph import check_engine_precision, has_uint8_qdq, trtexec_command, uint8_engine_graph
from .nms_graph import append_nms, check_nms_family
from .onnx_info import OnnxInfo, load_onnx, read_onnx_info
from .versions import plan_versions

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
STEP_SUFFIXES = ("_preprocess", "_engine", "_postprocess", "_tracker", "_track")


@dataclass(frozen=True)
class Built:
    """One model `tdet repo build` wrote: its name, the engine version written, the engine versions now
    present, the weights of the written version, and the weights it replaced ("" if none)."""

    name: str
    version: int
    versions: tuple[int, ...]
    weights: str
    replaced: str = ""


def _warmup_image() -> bytes:
    """A Triton TYPE_STRING warmup file: 4-byte little-endian length, then a small JPEG."""
    img = np.zeros((48, 64, 3), np.uint8)
    cv2.rectangle(img, (8, 8), (40, 30), (30, 160, 220), -1)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    return struct.pack("<I", len(data)) + data


def _write_variant(stage: Path, model, info: OnnxInfo, opts: BuildOptions, max_pixels: int, m: str, version: int,
                   versions: dict[str, str], digests: dict[str, str]) -> list[str]:
    """Stage the four models of `m` with this graph as engine version `version`; `versions`: engine
    version -> weights of every version the repository will hold and `digests` their checkpoints' sha256 where
    known (for the ensemble's parameters)."""
    spec = specs.PREPROCESS[info.family]
    import onnx

    sources = resources.files("tdet.ensembles")
    pre, eng, post = stage / f"{m}_preprocess", stage / f"{m}_engine", stage / f"{m}_postprocess"
    for d, src in ((pre, "preprocess"), (post, "postprocess")):
        (d / "1").mkdir(parents=True)
        if d is post or opts.preprocess == "python":
            (d / "1" / "model.py").write_text(sources.joinpath(src, "model.py").read_text())
    if opts.preprocess == "dali":
        write_dali_model(pre / "1", specs.preprocess_spec(info.family, info.input_hw), opts.max_batch_size)
        write_config(pre / "config.pbtxt", dali_preprocess_config(pre.name, info.input_hw, opts))
    else:
        (pre / "warmup").mkdir()
        (pre / "warmup" / "image.bin").write_bytes(_warmup_image())
        write_config(pre / "config.pbtxt", preprocess_config(pre.name, info.family, info.input_hw, opts, max_pixels,
                                                             "image.bin"))
    write_config(post / "config.pbtxt", postprocess_config(post.name, info.family, info.input_hw, info.output_dims,
                                                           opts, info.category_ids))
    vdir = eng / str(version)
    vdir.mkdir(parents=True)
    # the ONNX's precision (tdet export --precision): the plan is built from it, and the ensemble records it
    recorded = info.precision
    graph = uint8_engine_graph(model, spec.scale)
    graph = append_nms(graph, opts.detect) if opts.nms == "engine" else graph
    if opts.engine == "tensorrt":
        onnx.save(graph, str(vdir / "model.uint8.onnx"))
        cmd = trtexec_command('"$HERE/model.uint8.onnx"', '"$HERE/model.plan"', info.input_hw, opts.max_batch_size,
                              opts.plan_precision, recorded)
        built = opts.plan_precision if recorded == "fp32" else f"{recorded} ONNX"
        _script(vdir / "build_plan.sh", f"# Builds model.plan of version {version} on a GPU host (TensorRT 10, "
                                        f"same release as the server; {built}).", cmd)
        _script(eng / "build_engine.sh", "# Builds the plan of every version of this engine.",
                'for s in "$HERE"/*/build_plan.sh; do sh "$s"; done')
    else:
        onnx.save(graph, str(vdir / "model.onnx"))
    write_config(eng / "config.pbtxt", engine_config(eng.name, info.family, info.input_hw, info.output_dims, opts))
    served = str(opts.version_policy.served([int(v) for v in versions]))
    # weights / weights_sha256: the checkpoint the ensemble runs; versions / versions_sha256: every version's
    meta = {"family": info.family, "variant": info.variant, "weights": versions[served],
            **({"weights_sha256": digests[served]} if served in digests else {}),
            "versions": json.dumps(versions, sort_keys=True),
            **({"versions_sha256": json.dumps(digests, sort_keys=True)} if digests else {}),
            "class_names": json.dumps(info.class_names),
            "category_ids": json.dumps(info.category_ids), "input_hw": specs.format_hw(info.input_hw),
            "engine": opts.engine, "nms": opts.nms, "preprocess": opts.preprocess,
            "precision": recorded, **info.size,
            **({"dali_version": dali_version()} if opts.preprocess == "dali" else {})}
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
    models = [load_onnx(f) for f in onnx_files]
    infos = [read_onnx_info(m) for m in models]  # every file checked before any write
    names = [name or i.model_name for i in infos]
    twice = repeated(names)
    if twice:
        raise UserError(f"several --onnx files would be model(s) {twice}; build them one at a time with --name")
    for model, info in zip(models, infos):  # what the options cannot build, refused before anything is written
        check_nms_family(info.family, opts.nms)
        check_engine_precision(info.precision, opts.engine, opts.device, has_uint8_qdq(model), opts.precision)
    if opts.preprocess == "dali":
        require_dali()  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    built: list[Built] = []
    for model, info, m in zip(models, infos, names):
        versions, digests, replaced = plan_versions(out, m, info, opts, version, replace)
        stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=out.parent))
        try:
            names = _write_variant(stage, model, info, opts, max_pixels, m, version, versions, digests)
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
