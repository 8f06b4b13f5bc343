"""A python-based Triton backend named `onnxruntime`, for the pip tritonserver (which ships only the
python backend). It runs `<version>/<default_model_filename>` with ONNX Runtime on CPU, so a repository
written for Triton's real onnxruntime backend (NGC images) loads unchanged here. Generic: it knows
nothing about detectors. Unlike the real backend it doesn't auto-complete configs (write I/O out).

Config parameters read (same keys as the real backend): intra_op_thread_count, inter_op_thread_count.
A failing run is a server fault (the inputs passed Triton's type/shape checks): INTERNAL.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

from tdet.client.specs import config_parameters
from tdet.ensembles.heap import keep_freed_memory
from tdet.ensembles.ort_session import ort_session


class TritonPythonModel:
    def initialize(self, args):
        keep_freed_memory()  # no page faults per request (ensembles/heap.py)
        cfg = json.loads(args["model_config"])
        params = config_parameters(cfg)
        path = os.path.join(args["model_repository"], args["model_version"],
                            cfg.get("default_model_filename") or "model.onnx")
        self.session = ort_session(path, threads=int(params.get("intra_op_thread_count", "0")),
                                   inter_threads=int(params.get("inter_op_thread_count", "0")))
        self.inputs = [t["name"] for t in cfg["input"]]
        self.outputs = [t["name"] for t in cfg["output"]]
        self.batched = cfg.get("max_batch_size", 0) > 0

    def execute(self, requests):
        feeds = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests]
        if not self.batched or len(requests) == 1:
            return [self._respond(self._run(dict(zip(self.inputs, f)))) for f in feeds]
        # the dynamic batcher handed over several requests: one ORT run for all, rows split back after
        results = self._run({n: np.concatenate([f[i] for f in feeds]) for i, n in enumerate(self.inputs)})
        if isinstance(results, str):
            return [self._respond(results) for _ in requests]
        bounds = np.cumsum([f[0].shape[0] for f in feeds])[:-1]
        parts = [np.split(t, bounds) for t in results]
        return [self._respond([np.ascontiguousarray(p[j]) for p in parts]) for j in range(len(requests))]

    def _run(self, feed):
        """Output arrays, or the error text."""
        try:
            return self.session.run(self.outputs, feed)
        except Exception as err:  # ORT raises its own types; the request must get the text
            return f"onnxruntime: {err}"

    def _respond(self, result):
        if isinstance(result, str):
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(result, pb_utils.TritonError.INTERNAL))
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, t) for n, t in zip(self.outputs, result)])
