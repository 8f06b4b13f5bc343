"""The one ONNX Runtime session factory (CPU): the Triton stand-in backend, `tdet export --check`, the
benchmarks and the tests all open graphs through it, so they run with the same settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ort_session(model: str | Path | bytes, *, threads: int = 0, inter_threads: int = 1) -> Any:
    """An onnxruntime.InferenceSession on CPU for a file path or serialized ModelProto bytes.

    threads: intra-op threads (0: ONNX Runtime's default, one per core); inter_threads: inter-op threads.
    Spinning is off: idle ORT threads busy-waiting would take the cores other steps (or tests) need.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = int(inter_threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
