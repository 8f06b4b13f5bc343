"""Triton python model `<m>_preprocess`: IMAGE (encoded bytes, one per batch row) -> images uint8
[3,H,W] RGB + orig_hw int32 [2]. Thin: the work is tdet.client.pipeline.preprocess_rows (numpy/OpenCV).

Config parameters: family, input_hw ("H,W"), max_pixels, resize (cv2-linear | pil-bilinear),
jpeg_scale (off | auto: DCT-domain reduced JPEG decode; `tdet repo build --jpeg-scale`).
A bad image fails its request with INVALID_ARGUMENT (HTTP 400) and a message naming the problem;
anything else that goes wrong is a server fault: INTERNAL (HTTP 500).
"""

import json

import cv2
import triton_python_backend_utils as pb_utils

from tdet.client.errors import InvalidImageError
from tdet.client.pipeline import preprocess_rows
from tdet.client.specs import EXPORT_INPUT, config_parameters, spec_from_parameters
from tdet.ensembles.heap import keep_freed_memory


class TritonPythonModel:
    def initialize(self, args):
        keep_freed_memory()  # no page faults per request (ensembles/heap.py)
        params = config_parameters(json.loads(args["model_config"]))
        self.spec = spec_from_parameters(params)
        self.max_pixels = int(params["max_pixels"])
        # parallelism comes from instances (one process each); OpenCV threads would oversubscribe the cores
        cv2.setNumThreads(1)

    def execute(self, requests):
        return [self._respond(r) for r in requests]

    def _respond(self, request):
        try:
            rows = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            images, sizes = preprocess_rows(list(rows), self.spec, max_pixels=self.max_pixels)
        except InvalidImageError as err:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG))
        except Exception as err:  # this request fails as a server fault; the others go on
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"preprocess: {type(err).__name__}: {err}", pb_utils.TritonError.INTERNAL))
        return pb_utils.InferenceResponse([pb_utils.Tensor(EXPORT_INPUT, images), pb_utils.Tensor("orig_hw", sizes)])
