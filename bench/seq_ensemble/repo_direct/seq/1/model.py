import functools

import numpy as np
import triton_python_backend_utils as pb_utils


def _scalar(r, n):
    return int(pb_utils.get_input_tensor_by_name(r, n).as_numpy().ravel()[0])


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            g = functools.partial(_scalar, r)
            cid = r.correlation_id()
            v = np.array([cid if isinstance(cid, int) else -1, r.flags(), g("START"), g("END"), g("CORRID")], np.int64)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", v)]))
        return out
