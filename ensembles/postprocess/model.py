"""Triton python model `<m>_postprocess`: engine outputs + orig_hw -> NUM_DETECTIONS, BOXES (xyxy original
px), SCORES, CLASSES (category ids), padded to max_detections. Thin: the work is
tdet.client.pipeline.postprocess_rows (numpy). Thresholds are config parameters.

Its inputs come from the engine, not from the client, so any failure here is a server fault: INTERNAL.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from tdet.client.pipeline import postprocess_rows
from tdet.client.specs import EXPORT_OUTPUTS, config_parameters, parse_hw

WIRE = ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")


class TritonPythonModel:
    def initialize(self, args):
        params = config_parameters(json.loads(args["model_config"]))
        self.family = params["family"]
        self.inputs = EXPORT_OUTPUTS[self.family]
        self.score_thr = float(params["score_threshold"])
        self.iou = float(params["iou_threshold"])
        self.max_det = int(params["max_detections"])
        self.category_ids = np.asarray(json.loads(params["category_ids"]), np.int32)
        self.input_hw = parse_hw(params["input_hw"])  # the engine's input size

    def execute(self, requests):
        return [self._respond(r) for r in requests]

    def _respond(self, request):
        try:
            outputs = [pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs]
            sizes = pb_utils.get_input_tensor_by_name(request, "orig_hw").as_numpy()
            wire = postprocess_rows(self.family, outputs, sizes, self.category_ids, score_thr=self.score_thr,
                                    iou=self.iou, max_det=self.max_det, input_hw=self.input_hw)
        except Exception as err:  # noqa: BLE001 - this request fails; the others in the batch go on
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"postprocess: {type(err).__name__}: {err}", pb_utils.TritonError.INTERNAL))
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, t) for n, t in zip(WIRE, wire)])
