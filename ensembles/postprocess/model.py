"""Triton python model `<m>_postprocess`: engine outputs + orig_hw -> NUM_DETECTIONS, BOXES (xyxy original
px), SCORES, CLASSES (category ids), padded to max_detections. Thin: the work is
tdet.client.pipeline.postprocess_rows (numpy).

The config parameters (score_threshold, iou_threshold, max_detections, clip: DetectOptions.from_config)
are the defaults; a request may override them with its parameters `conf`, `iou`, `max_det`, `classes`,
`clip` (tdet.client.options), which the ensemble forwards to this step. With `nms` "engine" the engine
already ran the NMS (tdet.ensembles.nms_graph): this step filters and maps what it kept. A parameter it
cannot use is the client's error: INVALID_ARGUMENT, and so are the tracker's parameters on a request without
a sequence id (only a `<m>_track` stream has a tracker step after this one to read them). Everything else
here works on what the engine produced, so any other failure is a server fault: INTERNAL.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from tdet.client.options import DetectOptions, InvalidParameterError, resolve
from tdet.client.pipeline import postprocess_rows
from tdet.client.specs import EXPORT_OUTPUTS, WIRE_OUTPUTS, config_parameters, parse_hw
from tdet.ensembles.heap import keep_freed_memory
from tdet.ensembles.nms_graph import NMS_OUTPUTS, check_request, nms_rows


class TritonPythonModel:
    def initialize(self, args):
        keep_freed_memory()  # no page faults per request (ensembles/heap.py)
        params = config_parameters(json.loads(args["model_config"]))
        self.family = params["family"]
        self.nms_engine = params.get("nms", "python") == "engine"  # the engine ran NMS (ensembles/nms_graph.py)
        self.inputs = NMS_OUTPUTS if self.nms_engine else EXPORT_OUTPUTS[self.family]
        self.defaults = DetectOptions.from_config(params)
        self.max_k = self.defaults.max_det  # the output size K
        self.category_ids = np.asarray(json.loads(params["category_ids"]), np.int32)
        self.input_hw = parse_hw(params["input_hw"])  # the engine's input size

    def execute(self, requests):
        return [self._respond(r) for r in requests]

    def _respond(self, request):
        try:
            opts = resolve(json.loads(request.parameters() or "{}"), self.defaults, max_k=self.max_k,
                           category_ids=self.category_ids, tracked=bool(request.correlation_id()))
            if self.nms_engine:
                check_request(opts, self.defaults)
        except InvalidParameterError as err:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG))
        try:
            outputs = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs]
            sizes = pb_utils.get_input_tensor_by_name(request, "orig_hw").as_numpy()
            if self.nms_engine:
                wire = nms_rows(outputs, sizes, self.category_ids, opts, input_hw=self.input_hw, pad_to=self.max_k)
            else:
                wire = postprocess_rows(self.family, outputs, sizes, self.category_ids, opts, input_hw=self.input_hw,
                                        pad_to=self.max_k)
        except Exception as err:  # this request fails; the others in the batch go on
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"postprocess: {type(err).__name__}: {err}", pb_utils.TritonError.INTERNAL))
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, t) for n, t in zip(WIRE_OUTPUTS, wire)])
