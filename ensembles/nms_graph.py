"""`tdet repo build --nms engine` (DAMO-YOLO): the class-aware NMS inside the engine graph, so on a GPU the
engine step (TensorRT maps ONNX NonMaxSuppression to its NMS layer) returns detections, not ~1,000
candidates per image, and the python postprocess only filters, maps ids and scales boxes.

The tail appended to the engine graph (ONNX ops only, run by ONNX Runtime here):
    scores [B,N,C], boxes [B,N,4] -> NonMaxSuppression (score > conf, IoU > iou suppresses, at most
    max_det kept per class) -> per image ordered by (score desc, candidate index n*C + c asc), the order of
    client.postprocess.batched_nms over np.nonzero(scores > conf) -> padded to [B, M] (M: the most any image
    of the batch kept, at least 1):
    num_dets int64 [B,1], det_boxes float [B,M,4] (network-input px), det_scores float [B,M], det_labels
    int64 [B,M] (0-based).
Every kept box comes out, not only the first max_det: a request's `classes` keeps the detections of those
classes, and class-aware NMS never lets one class suppress another, so filtering the kept set equals the
python path's masking before NMS. A request's higher `conf` and lower `max_det` are a filter and a prefix of
the kept list (greedy NMS decides a box only by higher-scored ones), so they are exact too. A lower `conf`
or another `iou` would need another NMS: the postprocess refuses them (NmsEngineLimits).

The thresholds are constants of the graph (the build's --conf/--iou/--max-det), not graph inputs: the
engine gets only the image from the ensemble, and one NMS call serves the whole dynamic batch.
Ties: ONNX Runtime's NMS takes equal-scored boxes of a class by lower box index, as batched_nms does, and
ONNX TopK is stable (equal values: lower index first), so ties come out in the python order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tdet.client.boxes import clip_boxes
from tdet.client.errors import UserError
from tdet.client.options import DetectOptions, InvalidParameterError
from tdet.client.postprocess import to_wire
from tdet.client.preprocess import boxes_to_original
from tdet.client.specs import DAMO_YOLO, EXPORT_OUTPUTS, preprocess_spec

NMS_MODES = ("python", "engine")
NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_labels")
P = "tdet_nms_"  # prefix of every node and tensor the tail adds


def nms_output_dims() -> dict[str, list[int]]:
    """The tail's outputs without the batch axis (-1: M varies per batch)."""
    return {"num_dets": [1], "det_boxes": [-1, 4], "det_scores": [-1], "det_labels": [-1]}


NMS_FAMILIES = frozenset({DAMO_YOLO})  # families whose postprocess is an NMS (RT-DETRv2's is a top-K)


def check_nms_family(family: str, nms: str) -> None:
    if nms == "engine" and family not in NMS_FAMILIES:
        raise UserError(f"--nms engine: {family} has no NMS (its postprocess is a top-K over queries x classes); "
                        f"build it with the default --nms python")


def append_nms(model, detect: DetectOptions):
    """A copy of the DAMO-YOLO engine graph `model` (outputs scores [B,N,C], boxes [B,N,4]) ending in the NMS
    tail (module docstring) at detect's conf, iou and max_det."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    scores, boxes = EXPORT_OUTPUTS[DAMO_YOLO]
    if sorted(o.name for o in g.output) != sorted((scores, boxes)):
        raise UserError(f"--nms engine needs a graph with outputs {scores!r}, {boxes!r}")
    nodes, inits, outputs = _tail(scores, boxes, detect)
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(outputs)
    onnx.checker.check_model(out)
    return out


def tail_model(num_boxes: int, num_classes: int, detect: DetectOptions):
    """The tail alone (inputs scores [B,N,C], boxes [B,N,4] as `s_in`, `b_in`): to test and time it apart
    from an engine."""
    from onnx import TensorProto, helper

    scores, boxes = EXPORT_OUTPUTS[DAMO_YOLO]
    shapes = {scores: ["B", num_boxes, num_classes], boxes: ["B", num_boxes, 4]}
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s_in"], [scores]), helper.make_node("Identity", ["b_in"], [boxes])], "tail",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, shapes[o])
         for i, o in (("s_in", scores), ("b_in", boxes))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shapes[o]) for o in (scores, boxes)])
    return append_nms(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), detect)


def _tail(scores: str, boxes: str, detect: DetectOptions):
    from onnx import TensorProto, helper

    def n(op, ins, outs, **kw):
        return helper.make_node(op, [i if i == "" or i in (scores, boxes) or i in NMS_OUTPUTS else P + i for i in ins],
                                [o if o in NMS_OUTPUTS else P + o for o in outs], name=P + outs[0], **kw)

    def i64(name, v):
        return helper.make_tensor(P + name, TensorProto.INT64, [len(v)] if isinstance(v, list) else [],
                                  v if isinstance(v, list) else [v])

    f32 = lambda name, v: helper.make_tensor(P + name, TensorProto.FLOAT, [1], [v])  # noqa: E731
    inits = [i64("i0", 0), i64("i1", 1), i64("i2", 2), i64("ax0", [0]), i64("ax1", [1]), i64("four", [4]),
             i64("one", [1]), i64("max_out", [int(detect.max_det)]), f32("iou", float(detect.iou)),
             f32("conf", float(detect.conf))]
    nodes = [
        n("Transpose", [scores], ["scores_t"], perm=[0, 2, 1]),
        # [S, 3] (image b, class c, box n); center_point_box 0: corners, IoU symmetric in x/y, so xyxy works
        n("NonMaxSuppression", [boxes, "scores_t", "max_out", "iou", "conf"], ["sel"]),
        n("Gather", ["sel", "i0"], ["b"], axis=1), n("Gather", ["sel", "i1"], ["c"], axis=1),
        n("Gather", ["sel", "i2"], ["bx"], axis=1),
        n("Shape", [scores], ["shp"]), n("Gather", ["shp", "i0"], ["B"]), n("Gather", ["shp", "i1"], ["N"]),
        n("Gather", ["shp", "i2"], ["C"]),
        n("Unsqueeze", ["b", "ax1"], ["b_"]), n("Unsqueeze", ["bx", "ax1"], ["bx_"]),
        n("Unsqueeze", ["c", "ax1"], ["c_"]),
        n("Concat", ["b_", "bx_", "c_"], ["ibnc"], axis=1), n("GatherND", [scores, "ibnc"], ["s"]),
        # 1) by candidate key (b*N + n)*C + c ascending (unique), 2) stable by score desc, 3) stable by image
        n("Mul", ["b", "N"], ["bN"]), n("Add", ["bN", "bx"], ["bn"]), n("Mul", ["bn", "C"], ["bnC"]),
        n("Add", ["bnC", "c"], ["key"]), n("Shape", ["key"], ["S1"]), n("Squeeze", ["S1", "ax0"], ["S"]),
        n("TopK", ["key", "S1"], ["_k1", "o1"], largest=0, sorted=1),
        n("Gather", ["s", "o1"], ["s1"]), n("TopK", ["s1", "S1"], ["_k2", "o2"], largest=1, sorted=1),
        n("Gather", ["o1", "o2"], ["o12"]), n("Gather", ["b", "o12"], ["b12"]),
        n("Range", ["i0", "S", "i1"], ["pos"]),
        n("Mul", ["b12", "S"], ["bS"]), n("Add", ["bS", "pos"], ["key3"]),  # unique: no tie left to TopK
        n("TopK", ["key3", "S1"], ["_k3", "o3"], largest=0, sorted=1), n("Gather", ["o12", "o3"], ["order"]),
        n("Gather", ["b", "order"], ["bs"]), n("Gather", ["c", "order"], ["cs"]),
        n("Gather", ["bx", "order"], ["ns"]), n("Gather", ["s", "order"], ["ss"]),
        # per image: count, first position, rank of each kept box
        n("Range", ["i0", "B", "i1"], ["imgs"]), n("Unsqueeze", ["imgs", "ax1"], ["imgs_"]),
        n("Unsqueeze", ["bs", "ax0"], ["bs_row"]), n("Equal", ["imgs_", "bs_row"], ["onehot"]),
        n("Cast", ["onehot"], ["onehot_i"], to=TensorProto.INT64),
        n("ReduceSum", ["onehot_i", "ax1"], ["count"], keepdims=0),
        n("CumSum", ["count", "i0"], ["start"], exclusive=1), n("Gather", ["start", "bs"], ["first"]),
        n("Sub", ["pos", "first"], ["rank"]),
        n("ReduceMax", ["count"], ["most"], keepdims=1), n("Max", ["most", "one"], ["M"]),
        n("Unsqueeze", ["B", "ax0"], ["B1"]), n("Concat", ["B1", "M"], ["shape_bm"], axis=0),
        n("Concat", ["B1", "M", "four"], ["shape_bm4"], axis=0),
        n("Unsqueeze", ["bs", "ax1"], ["bs_"]), n("Unsqueeze", ["rank", "ax1"], ["rank_"]),
        n("Concat", ["bs_", "rank_"], ["at"], axis=1),
        n("Unsqueeze", ["ns", "ax1"], ["ns_"]), n("Concat", ["bs_", "ns_"], ["ibn"], axis=1),
        n("GatherND", [boxes, "ibn"], ["kept_boxes"]),
        n("ConstantOfShape", ["shape_bm"], ["zeros_f"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0])),
        n("ConstantOfShape", ["shape_bm"], ["zeros_i"], value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
        n("ConstantOfShape", ["shape_bm4"], ["zeros_b"],
          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0])),
        n("ScatterND", ["zeros_f", "at", "ss"], ["det_scores"]),
        n("ScatterND", ["zeros_i", "at", "cs"], ["det_labels"]),
        n("ScatterND", ["zeros_b", "at", "kept_boxes"], ["det_boxes"]),
        n("Unsqueeze", ["count", "ax1"], ["num_dets"]),
    ]
    outs = [helper.make_tensor_value_info("num_dets", TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["batch", "kept", 4]),
            helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["batch", "kept"]),
            helper.make_tensor_value_info("det_labels", TensorProto.INT64, ["batch", "kept"])]
    return nodes, inits, outs


def check_request(opts: DetectOptions, built: DetectOptions) -> None:
    """A request's options the NMS in the engine (run at `built`'s thresholds) can serve exactly, else
    InvalidParameterError (the client's error) saying why."""
    if opts.iou != built.iou:
        raise InvalidParameterError(f"request parameter iou={opts.iou}: this model runs NMS in the engine at the "
                                    f"build's iou {built.iou} (tdet repo build --nms engine); rebuild with --iou "
                                    f"or --nms python to choose it per request")
    if opts.conf < built.conf:
        raise InvalidParameterError(f"request parameter conf={opts.conf}: below the build's {built.conf}, which "
                                    f"the NMS in the engine already applied (--nms engine); rebuild with a lower "
                                    f"--conf or --nms python")


def nms_rows(outputs, sizes: npt.NDArray[np.integer], category_ids: npt.NDArray[np.int32], opts: DetectOptions, *,
             input_hw: tuple[int, int], pad_to: int):
    """The NMS tail's outputs of one request (NMS_OUTPUTS order, [B, ...]) + sizes [B, 2] -> the wire tensors,
    as client.pipeline.postprocess_rows gives them for DAMO-YOLO: score > conf, the `classes`, the first
    max_det, boxes in original px (clipped if asked), category ids, padded to pad_to."""
    num, boxes, scores, labels = outputs
    allowed = None if opts.classes is None else np.isin(category_ids, np.asarray(opts.classes))
    spec = preprocess_spec(DAMO_YOLO, input_hw)
    rows = []
    for b in range(len(sizes)):
        k = int(num[b].reshape(-1)[0])
        s, lab = scores[b, :k], labels[b, :k]
        keep = s > opts.conf
        if allowed is not None:
            keep &= allowed[lab]
        idx = np.flatnonzero(keep)[:opts.max_det]
        hw = (int(sizes[b][0]), int(sizes[b][1]))
        xyxy = boxes_to_original(boxes[b, idx].astype(np.float32, copy=False), hw, spec)
        if opts.clip:
            xyxy = clip_boxes(xyxy, hw)
        rows.append(to_wire(xyxy, s[idx].astype(np.float32), lab[idx].astype(np.int64), category_ids, pad_to))
    return tuple(np.stack(parts) for parts in zip(*rows))
