"""The experiment behind the README's "Triton 2.51 passes the sequence through an ensemble": an ensemble
`pre -> seq` (seq: a python model under the sequence batcher that echoes its correlation id and flags), called
directly and through the ensemble, one stream and two interleaved ones.

    python bench/seq_ensemble/run.py direct|oldest     (the sequence batcher's strategy: repo_direct / repo_oldest)
"""

import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as g

from tdet.ensembles.server import free_port, start, stop_process

STRATEGY = sys.argv[1] if len(sys.argv) > 1 else "direct"
if STRATEGY not in ("direct", "oldest"):
    sys.exit(f"unknown strategy {STRATEGY!r}; use direct or oldest")
BATCHED = STRATEGY == "oldest"  # repo_oldest's models have max_batch_size 4: a batch axis on every tensor

REPO = Path(__file__).parent / f"repo_{STRATEGY}"
(REPO / "ens" / "1").mkdir(exist_ok=True)  # an ensemble's empty version folder, which git does not keep

proc, info = start(
    REPO,
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
        data = np.array([[val]] if BATCHED else [val], np.int32)
        i = g.InferInput(n, list(data.shape), "INT32")
        i.set_data_from_numpy(data)
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
