"""The Triton model configs of one served variant (preprocess, engine, postprocess, ensemble), built as
`model_config_pb2.ModelConfig` messages (Triton's own schema, from tritonclient) and written/read as
protobuf text (config.pbtxt), so a misspelt field fails here and not when the server loads it.

Tensor names between steps are ours (lowercase, specs.EXPORT_*), never graph-node ids.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tdet.client import specs
from tdet.client.optionfields import settings

from .dali_preprocess import DALI_FILE, DALI_INPUT, DALI_OUTPUTS
from .nms_graph import NMS_OUTPUTS, nms_output_dims
from .options import BuildOptions, VersionPolicy

__all__ = ["BuildOptions", "VersionPolicy", "dali_preprocess_config", "engine_config", "ensemble_config",
           "postprocess_config", "preprocess_config", "read_config", "track_ensemble_config", "tracker_config",
           "write_config"]



def write_config(path: Path, config: mc.ModelConfig) -> None:
    """config.pbtxt text of `config` (protobuf text format, as Triton reads it)."""
    path.write_text(text_format.MessageToString(config))


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt with Triton's schema (ParseError on anything Triton would refuse to parse)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def _tensors(field, tensors: Sequence[tuple[str, int, Sequence[int]]]) -> None:
    for name, dtype, dims in tensors:
        field.add(name=name, data_type=dtype, dims=list(dims))


def _model(name: str, opts: BuildOptions, inputs, outputs, *, backend: str = "", platform: str = "",
           params: dict[str, str] | None = None) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, backend=backend, platform=platform, max_batch_size=opts.max_batch_size)
    _tensors(cfg.input, inputs)
    _tensors(cfg.output, outputs)
    for k, v in (params or {}).items():
        cfg.parameters[k].string_value = v
    return cfg


def _step_defaults(cfg: mc.ModelConfig, opts: BuildOptions, instances: int, kind: int) -> None:
    cfg.instance_group.add(count=instances, kind=kind)
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.queue_delay_us


def _wire(k: int) -> list[tuple[str, int, list[int]]]:
    num, boxes, scores, classes = specs.WIRE_OUTPUTS
    return [(num, mc.TYPE_INT32, [1]), (boxes, mc.TYPE_FP32, [k, 4]), (scores, mc.TYPE_FP32, [k]),
            (classes, mc.TYPE_INT32, [k])]


def _engine_outputs(family: str, output_dims: dict[str, list[int]], opts: BuildOptions
                    ) -> list[tuple[str, int, list[int]]]:
    """What the engine returns and the postprocess takes: the export's outputs, or with --nms engine the NMS
    tail's (ensembles/nms_graph.py: counts and labels int64, M kept rows per image)."""
    if opts.nms == "engine":
        dims = nms_output_dims()
        return [(n, mc.TYPE_INT64 if n in ("num_dets", "det_labels") else mc.TYPE_FP32, dims[n]) for n in NMS_OUTPUTS]
    return [(n, mc.TYPE_FP32, output_dims[n]) for n in specs.EXPORT_OUTPUTS[family]]


def preprocess_config(name: str, family: str, input_hw: tuple[int, int], opts: BuildOptions,
                      max_pixels: int, warmup_file: str | None) -> mc.ModelConfig:
    spec = specs.preprocess_spec(family, input_hw)
    cfg = _model(name, opts, [("IMAGE", mc.TYPE_STRING, [1])],
                 [(specs.EXPORT_INPUT, mc.TYPE_UINT8, [3, *input_hw]), ("orig_hw", mc.TYPE_INT32, [2])],
                 backend="python", params={"family": family, "input_hw": specs.format_hw(input_hw),
                                           "max_pixels": str(max_pixels), "resize": spec.resize,
                                           "jpeg_scale": opts.jpeg_scale})
    _step_defaults(cfg, opts, opts.preprocess_instances, mc.ModelInstanceGroup.KIND_CPU)
    if warmup_file:  # a real encoded image: the decode path is warm before the model reports READY
        warm = cfg.model_warmup.add(name="jpeg", batch_size=1)
        warm.inputs["IMAGE"].data_type = mc.TYPE_STRING
        warm.inputs["IMAGE"].dims.append(1)
        warm.inputs["IMAGE"].input_data_file = warmup_file
    return cfg


def dali_preprocess_config(name: str, input_hw: tuple[int, int], opts: BuildOptions) -> mc.ModelConfig:
    """`--preprocess dali`: the python step's outputs from Triton's DALI backend (model.dali). Its IMAGE is uint8
    [-1] (the encoded bytes): the backend cannot read Triton's length-prefixed BYTES. One GPU instance: DALI
    runs its own threads and CUDA streams."""
    images, orig_hw = DALI_OUTPUTS  # in the pipeline's output order: the backend pairs them by position
    cfg = _model(name, opts, [(DALI_INPUT, mc.TYPE_UINT8, [-1])],
                 [(images, mc.TYPE_UINT8, [3, *input_hw]), (orig_hw, mc.TYPE_INT32, [2])], backend="dali")
    cfg.default_model_filename = DALI_FILE
    _step_defaults(cfg, opts, 1, mc.ModelInstanceGroup.KIND_GPU)
    return cfg


def engine_config(name: str, family: str, input_hw: tuple[int, int], output_dims: dict[str, list[int]],
                  opts: BuildOptions) -> mc.ModelConfig:
    image = (specs.EXPORT_INPUT, mc.TYPE_UINT8, [3, *input_hw])
    outputs = _engine_outputs(family, output_dims, opts)
    if opts.engine == "tensorrt":
        cfg = _model(name, opts, [image], outputs, platform="tensorrt_plan")
        cfg.default_model_filename, kind = "model.plan", mc.ModelInstanceGroup.KIND_GPU
    elif opts.engine == "onnxruntime":
        # the real onnxruntime backend and our python stand-in read the same keys
        cfg = _model(name, opts, [image], outputs, backend="onnxruntime",
                     params={"intra_op_thread_count": str(opts.ort_threads), "inter_op_thread_count": "1"})
        cfg.default_model_filename = "model.onnx"
        kind = mc.ModelInstanceGroup.KIND_GPU if opts.device == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    else:
        raise ValueError(f"unknown engine kind {opts.engine!r}; use onnxruntime or tensorrt")
    _step_defaults(cfg, opts, opts.engine_instances, kind)
    policy = opts.version_policy
    if policy.kind == "all":
        cfg.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        cfg.version_policy.specific.versions.extend(policy.versions)
    else:
        cfg.version_policy.latest.num_versions = policy.num
    warm = cfg.model_warmup.add(name="zeros", batch_size=1)
    warm.inputs[specs.EXPORT_INPUT].data_type = mc.TYPE_UINT8
    warm.inputs[specs.EXPORT_INPUT].dims.extend([3, *input_hw])
    warm.inputs[specs.EXPORT_INPUT].zero_data = True
    return cfg


def postprocess_config(name: str, family: str, input_hw: tuple[int, int], output_dims: dict[str, list[int]],
                       opts: BuildOptions, category_ids: list[int]) -> mc.ModelConfig:
    inputs = _engine_outputs(family, output_dims, opts)
    inputs.append(("orig_hw", mc.TYPE_INT32, [2]))
    params = {"family": family, "input_hw": specs.format_hw(input_hw), **settings(opts.detect),  # the request defaults
              "category_ids": json.dumps(category_ids), "nms": opts.nms}
    cfg = _model(name, opts, inputs, _wire(opts.max_det), backend="python", params=params)
    _step_defaults(cfg, opts, opts.postprocess_instances, mc.ModelInstanceGroup.KIND_CPU)
    return cfg


def ensemble_config(model: str, family: str, opts: BuildOptions, meta: dict[str, str]) -> mc.ModelConfig:
    """The public model: IMAGE -> NUM_DETECTIONS/BOXES/SCORES/CLASSES. Class names and category ids are
    config parameters, so a client discovers them with one model-config call."""
    outs = NMS_OUTPUTS if opts.nms == "engine" else specs.EXPORT_OUTPUTS[family]
    image = ("IMAGE", mc.TYPE_UINT8, [-1]) if opts.preprocess == "dali" else ("IMAGE", mc.TYPE_STRING, [1])
    cfg = _model(model, opts, [image], _wire(opts.max_det), platform="ensemble", params=meta)
    steps = [
        (f"{model}_preprocess", {"IMAGE": "IMAGE"}, {specs.EXPORT_INPUT: "images", "orig_hw": "orig_hw"}),
        (f"{model}_engine", {specs.EXPORT_INPUT: "images"}, {o: o for o in outs}),
        (f"{model}_postprocess", {**{o: o for o in outs}, "orig_hw": "orig_hw"}, {o: o for o in specs.WIRE_OUTPUTS}),
    ]
    for name, inputs, outputs in steps:
        step = cfg.ensemble_scheduling.step.add(model_name=name, model_version=-1)
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    return cfg


TRACK_IDS = "TRACK_IDS"
TRACK_IDLE_US = 30_000_000  # a stream silent this long is dropped (a camera that went away)
TRACK_STREAMS = 64  # streams one tracker instance holds at once (the oldest strategy's candidate sequences)


def tracker_config(name: str, opts: BuildOptions, idle_us: int = TRACK_IDLE_US,
                   params: dict[str, str] | None = None) -> mc.ModelConfig:
    """`<m>_tracker`: detections -> detections + TRACK_IDS, one ByteTrack per sequence (correlation id).
    The oldest strategy, not direct: direct binds each stream to one batch slot, and a stream beyond the
    slots waits in the backlog, where its later requests are refused (bench/seq_ensemble)."""
    k = opts.max_det
    cfg = _model(name, opts, _wire(k), [*_wire(k), (TRACK_IDS, mc.TYPE_INT64, [k])], backend="python",
                 params=params or {})
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)  # the trackers live in one process
    seq = cfg.sequence_batching
    seq.max_sequence_idle_microseconds = idle_us
    seq.oldest.max_candidate_sequences = TRACK_STREAMS
    seq.oldest.max_queue_delay_microseconds = opts.queue_delay_us
    return cfg


def track_ensemble_config(model: str, plain: mc.ModelConfig, opts: BuildOptions) -> mc.ModelConfig:
    """`<m>_track`: the plain ensemble's steps, then `<m>_tracker`; same input and parameters, plus TRACK_IDS.
    Clients send each stream's frames with one sequence id (START on the first frame, END on the last)."""
    cfg = mc.ModelConfig()
    cfg.CopyFrom(plain)
    cfg.name = f"{model}_track"
    cfg.output.add(name=TRACK_IDS, data_type=mc.TYPE_INT64, dims=[opts.max_det])
    for step in cfg.ensemble_scheduling.step:  # the detections become internal tensors
        for k, v in list(step.output_map.items()):
            if v in specs.WIRE_OUTPUTS:
                step.output_map[k] = f"det_{v}"
    step = cfg.ensemble_scheduling.step.add(model_name=f"{model}_tracker", model_version=-1)
    step.input_map.update({o: f"det_{o}" for o in specs.WIRE_OUTPUTS})
    step.output_map.update({o: o for o in (*specs.WIRE_OUTPUTS, TRACK_IDS)})
    return cfg
