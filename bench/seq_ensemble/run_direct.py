from pathlib import Path

import numpy as np
import tritonclient.grpc as g

from tdet.ensembles.server import free_port, start, stop_process

proc, info = start(
    Path("bench/seq_ensemble/repo_direct"),
    http_port=free_port(),
    grpc_port=free_port(),
    metrics_port=free_port(),
    log=Path("/tmp/seq_ensemble.log"),
    timeout_s=120,
    verbose=False,
)
try:
    c = g.InferenceServerClient(info.grpc_url)

    def call(model, cid, start=False, end=False, val=1):
        n = "IN" if model == "ens" else "MID"
        i = g.InferInput(n, [1], "INT32")
        i.set_data_from_numpy(np.array([val], np.int32))
        try:
            return c.infer(model, [i], sequence_id=cid, sequence_start=start, sequence_end=end).as_numpy("OUT").tolist()
        except Exception as e:
            return f"ERR {str(e)[:60]}"

    for m in ("seq", "ens"):
        print(m, "A start", call(m, 17, start=True), "A mid", call(m, 17), "A end", call(m, 17, end=True))
        print(
            m,
            "A start",
            call(m, 18, start=True),
            "B start",
            call(m, 19, start=True),
            "A mid0",
            call(m, 18),
            "A mid",
            call(m, 18),
            "B mid",
            call(m, 19),
            "A end",
            call(m, 18, end=True),
            "B end",
            call(m, 19, end=True),
        )
finally:
    stop_process(proc.pid)
