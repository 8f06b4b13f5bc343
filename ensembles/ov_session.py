"""The one OpenVINO compile (CPU) for the exported graphs: tests/test_openvino.py and bench/openvino_vs_ort.py
open graphs through it, so they run with the same settings (the second runtime, issue 21 item 4).

precision is OpenVINO's inference precision hint. It is set explicitly because the CPU plugin's default is
bf16 on CPUs with native bf16 (AVX512-BF16 / AMX, as on this project's Xeon): an fp32 graph then silently runs
in bf16 (measured here: damo-yolo-t scores off by 6e-3, rtdetrv2-s's query selection changes). A QDQ (int8)
graph compiles through the same call: the CPU plugin runs its quantized ops in int8 and the rest at `precision`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ov_compiled(model: str | Path, *, threads: int = 0, precision: str = "f32") -> Any:
    """An openvino.CompiledModel on CPU, one stream (latency hint); threads 0: OpenVINO's default."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(str(model), "CPU", config)


def ov_run(compiled: Any, names: list[str], feeds: dict[str, Any]) -> list[Any]:
    """Outputs `names` for `feeds` (the same shape of call as onnxruntime's session.run)."""
    result = compiled(feeds)
    return [result[name] for name in names]
