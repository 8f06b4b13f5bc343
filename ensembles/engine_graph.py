"""The engine a repository serves, from the exported graph: the ONNX with a uint8 input (the cast and the
family's scale prepended in-graph, so only uint8 pixels travel between the steps), and the trtexec command
that turns it into a TensorRT plan on a GPU host."""

from __future__ import annotations

from tdet.client import specs
from tdet.client.errors import UserError

SCALED_INPUT = "images_float"  # internal name of the float tensor the original graph consumed


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


def has_uint8_qdq(model) -> bool:
    """Whether a Q/DQ node of the graph takes a uint8 zero point (asymmetric uint8 activations, `tdet export
    --int8-activations u8`): ONNX Runtime CPU's fast form, which TensorRT does not build."""
    from onnx import TensorProto

    zero_points = {n.input[2] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    return any(t.data_type == TensorProto.UINT8 for t in model.graph.initializer if t.name in zero_points)


def check_engine_precision(onnx_precision: str, engine: str, device: str, uint8_qdq: bool = False,
                           plan_precision: str | None = None) -> None:
    """Refuse, at build time, a reduced-precision graph the chosen runtime would not run at that precision.
    ONNX Runtime's CUDA execution provider (Triton's onnxruntime backend on a GPU instance) has no int8
    kernels for a QDQ graph: it runs the Q/DQ pairs as float ops around float convolutions (ORT leaves GPU
    quantization to its TensorRT EP), so the engine would serve at fp32 speed or worse while claiming int8.
    ONNX Runtime on CPU runs QDQ with int8 kernels and fp16 graphs (casting where it has no fp16 kernel);
    TensorRT builds both (trtexec_command), but int8 only as symmetric int8 Q/DQ (zero point 0): an asymmetric
    uint8 graph (`uint8_qdq`) is refused for it. `plan_precision` (--precision, None when not given) applies
    to an fp32 ONNX only: a reduced-precision ONNX builds at its own precision (trtexec_command)."""
    if plan_precision is not None and onnx_precision != "fp32":
        raise UserError(f"--precision {plan_precision} with an {onnx_precision} ONNX (tdet export --precision "
                        f"{onnx_precision}): its plan builds at the ONNX's own precision; leave --precision out, or "
                        f"build from the fp32 ONNX")
    if onnx_precision == "int8" and engine == "tensorrt" and uint8_qdq:
        raise UserError("an int8 ONNX with uint8 (asymmetric) activations and --engine tensorrt: TensorRT builds "
                        "only symmetric int8 Q/DQ; export it with --int8-activations s8 (the default)")
    if onnx_precision == "int8" and engine == "onnxruntime" and device == "gpu":
        raise UserError("an int8 ONNX with --engine onnxruntime --device gpu: ONNX Runtime's CUDA provider has no "
                        "int8 kernels (it would run the Q/DQ graph in float); build it with --engine tensorrt "
                        "(an explicit-precision int8 plan) or --device cpu")


def trtexec_command(onnx_path: str, plan_path: str, input_hw: tuple[int, int], max_batch_size: int,
                    precision: str = "fp16", onnx_precision: str = "fp32") -> str:
    """The exact TensorRT 10 build, explicit batch profile 1..max_batch_size (opt = max/2).
    `onnx_precision` is what the ONNX records (tdet.precision from `tdet export --precision`) and wins over
    `precision`: an int8 QDQ graph builds as an explicit-precision engine (--int8 for the Q/DQ layers, --fp16
    for the layers left unquantized); an fp16 graph with fp32 I/O builds --stronglyTyped, so TensorRT keeps
    the graph's own types (the keep-in-fp32 nodes stay fp32). An fp32 ONNX builds fp16 or fp32 per `precision`."""
    if onnx_precision not in ("fp32", "fp16", "int8"):
        raise UserError(f"the ONNX records precision {onnx_precision!r}: expected fp32, fp16 or int8")
    if onnx_precision == "fp32" and precision not in ("fp16", "fp32"):
        raise UserError(f"TensorRT precision must be fp16 or fp32, got {precision!r}")
    h, w = input_hw
    shape = lambda b: f"{specs.EXPORT_INPUT}:{b}x3x{h}x{w}"  # noqa: E731
    opt = max(1, max_batch_size // 2)
    flag = {"int8": " --int8 --fp16", "fp16": " --stronglyTyped"}.get(onnx_precision,
                                                                       " --fp16" if precision == "fp16" else "")
    return (f"trtexec --onnx={onnx_path} --saveEngine={plan_path}{flag} --minShapes={shape(1)} "
            f"--optShapes={shape(opt)} --maxShapes={shape(max_batch_size)}")
