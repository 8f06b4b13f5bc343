"""Triton python model `<m>_preprocess`: IMAGE (encoded bytes, one per batch row) -> images uint8
[3,H,W] RGB + orig_hw int32 [2]. Thin: the work is tdet.client.pipeline.preprocess_rows (numpy/OpenCV)."""

import json

import cv2
import triton_python_backend_utils as pb_utils

from tdet.client.pipeline import preprocess_rows
from tdet.client.specs import EXPORT_INPUT, preprocess_spec


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        h, w = (int(v) for v in params["input_hw"].split(","))
        self.spec = preprocess_spec(params["family"], (h, w))
        self.max_pixels = int(params["max_pixels"])
        # parallelism comes from instances (one process each); OpenCV threads would oversubscribe the cores
        cv2.setNumThreads(1)

    def execute(self, requests):
        return [self._respond(r) for r in requests]

    def _respond(self, request):
        rows = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        try:
            images, sizes = preprocess_rows(list(rows), self.spec, max_pixels=self.max_pixels)
        except ValueError as err:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))
        return pb_utils.InferenceResponse([pb_utils.Tensor(EXPORT_INPUT, images), pb_utils.Tensor("orig_hw", sizes)])
