"""config.pbtxt text for the four models of one served variant (preprocess, engine, postprocess, ensemble).

Plain string building, kept apart from the builder so each config reads top to bottom like the file it
writes. Tensor names between steps are ours (lowercase, specs.EXPORT_*), never graph-node ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from tdet.client import specs

WIRE_OUTPUTS = ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")


@dataclass(frozen=True)
class BuildOptions:
    """Repository knobs (the `tdet repo build` flags)."""

    engine: str = "onnxruntime"  # "onnxruntime" | "tensorrt"
    max_batch_size: int = 16
    max_detections: int = 100
    preprocess_instances: int = 2  # decode is CPU-bound Python: one process per core
    engine_instances: int = 1
    postprocess_instances: int = 1
    queue_delay_us: int = 1000
    ort_threads: int = 2  # intra-op threads per engine instance (0: ONNX Runtime's default, all cores)
    device: str = "cpu"  # engine instance kind for onnxruntime; tensorrt is always GPU
    score_threshold: float = 0.05
    iou_threshold: float = 0.7


def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor(name: str, dtype: str, dims: Sequence[int]) -> str:
    return f"  {{ name: {_q(name)} data_type: {dtype} dims: {_dims(dims)} }}"


def _params(params: dict[str, str]) -> str:
    return "\n".join(f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(v)} }} }}" for k, v in params.items())


def _io(inputs: list[str], outputs: list[str]) -> str:
    return "input [\n" + ",\n".join(inputs) + "\n]\noutput [\n" + ",\n".join(outputs) + "\n]"


def _batching(opts: BuildOptions) -> str:
    return f"dynamic_batching {{ max_queue_delay_microseconds: {opts.queue_delay_us} }}"


def _instances(count: int, kind: str) -> str:
    return f"instance_group [ {{ count: {count} kind: {kind} }} ]"


def preprocess_config(name: str, family: str, input_hw: tuple[int, int], opts: BuildOptions,
                      max_pixels: int, warmup_file: str | None) -> str:
    spec = specs.PREPROCESS[family]
    warm = ""
    if warmup_file:  # a real encoded image: the decode path is warm before the model reports READY
        warm = (f'\nmodel_warmup [ {{ name: "jpeg" batch_size: 1 inputs {{ key: "IMAGE" value: '
                f'{{ data_type: TYPE_STRING dims: [ 1 ] input_data_file: {_q(warmup_file)} }} }} }} ]')
    return f"""name: {_q(name)}
backend: "python"
max_batch_size: {opts.max_batch_size}
{_io([_tensor("IMAGE", "TYPE_STRING", [1])],
     [_tensor(specs.EXPORT_INPUT, "TYPE_UINT8", [3, *input_hw]), _tensor("orig_hw", "TYPE_INT32", [2])])}
{_instances(opts.preprocess_instances, "KIND_CPU")}
{_batching(opts)}
{_params({"family": family, "input_hw": f"{input_hw[0]},{input_hw[1]}", "max_pixels": str(max_pixels), "resize": spec.resize})}{warm}
"""


def engine_config(name: str, family: str, input_hw: tuple[int, int], output_dims: dict[str, list[int]],
                  opts: BuildOptions) -> str:
    outputs = [_tensor(n, "TYPE_FP32", output_dims[n]) for n in specs.EXPORT_OUTPUTS[family]]
    io = _io([_tensor(specs.EXPORT_INPUT, "TYPE_UINT8", [3, *input_hw])], outputs)
    warm = (f'model_warmup [ {{ name: "zeros" batch_size: 1 inputs {{ key: {_q(specs.EXPORT_INPUT)} value: '
            f'{{ data_type: TYPE_UINT8 dims: {_dims([3, *input_hw])} zero_data: true }} }} }} ]')
    if opts.engine == "tensorrt":
        head = 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"'
        kind, params = "KIND_GPU", ""
    elif opts.engine == "onnxruntime":
        head = 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"'
        kind = "KIND_GPU" if opts.device == "gpu" else "KIND_CPU"
        # the real onnxruntime backend and our python stand-in read the same keys
        params = "\n" + _params({"intra_op_thread_count": str(opts.ort_threads), "inter_op_thread_count": "1"})
    else:
        raise ValueError(f"unknown engine kind {opts.engine!r}; use onnxruntime or tensorrt")
    return f"""name: {_q(name)}
{head}
max_batch_size: {opts.max_batch_size}
{io}
{_instances(opts.engine_instances, kind)}
{_batching(opts)}{params}
{warm}
"""


def postprocess_config(name: str, family: str, input_hw: tuple[int, int], output_dims: dict[str, list[int]],
                       opts: BuildOptions, category_ids: list[int]) -> str:
    k = opts.max_detections
    inputs = [_tensor(n, "TYPE_FP32", output_dims[n]) for n in specs.EXPORT_OUTPUTS[family]]
    inputs.append(_tensor("orig_hw", "TYPE_INT32", [2]))
    outputs = [_tensor("NUM_DETECTIONS", "TYPE_INT32", [1]), _tensor("BOXES", "TYPE_FP32", [k, 4]),
               _tensor("SCORES", "TYPE_FP32", [k]), _tensor("CLASSES", "TYPE_INT32", [k])]
    params = {"family": family, "input_hw": f"{input_hw[0]},{input_hw[1]}", "score_threshold": str(opts.score_threshold),
              "iou_threshold": str(opts.iou_threshold), "max_detections": str(k),
              "category_ids": json.dumps(category_ids)}
    return f"""name: {_q(name)}
backend: "python"
max_batch_size: {opts.max_batch_size}
{_io(inputs, outputs)}
{_instances(opts.postprocess_instances, "KIND_CPU")}
{_batching(opts)}
{_params(params)}
"""


def ensemble_config(model: str, family: str, opts: BuildOptions, meta: dict[str, str]) -> str:
    """The public model: IMAGE -> NUM_DETECTIONS/BOXES/SCORES/CLASSES. Class names and category ids are
    config parameters, so a client discovers them with one model-config call."""
    k = opts.max_detections
    outs = specs.EXPORT_OUTPUTS[family]

    def step(m: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
        maps = [f"input_map {{ key: {_q(a)} value: {_q(b)} }}" for a, b in inputs.items()]
        maps += [f"output_map {{ key: {_q(a)} value: {_q(b)} }}" for a, b in outputs.items()]
        return f"  {{ model_name: {_q(m)} model_version: -1\n    " + "\n    ".join(maps) + " }"

    steps = [
        step(f"{model}_preprocess", {"IMAGE": "IMAGE"}, {specs.EXPORT_INPUT: "images", "orig_hw": "orig_hw"}),
        step(f"{model}_engine", {specs.EXPORT_INPUT: "images"}, {o: o for o in outs}),
        step(f"{model}_postprocess", {**{o: o for o in outs}, "orig_hw": "orig_hw"}, {o: o for o in WIRE_OUTPUTS}),
    ]
    io = _io([_tensor("IMAGE", "TYPE_STRING", [1])],
             [_tensor("NUM_DETECTIONS", "TYPE_INT32", [1]), _tensor("BOXES", "TYPE_FP32", [k, 4]),
              _tensor("SCORES", "TYPE_FP32", [k]), _tensor("CLASSES", "TYPE_INT32", [k])])
    joined = ",\n".join(steps)
    return f"""name: {_q(model)}
platform: "ensemble"
max_batch_size: {opts.max_batch_size}
{io}
ensemble_scheduling {{ step [
{joined}
] }}
{_params(meta)}
"""
