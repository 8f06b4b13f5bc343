"""Triton's Prometheus metrics (:8002/metrics): scrape before and after a run and turn the counter
deltas into per-model average batch size and queue vs compute time."""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict

_LINE = re.compile(r'^(\w+)\{([^}]*)\}\s+([-+0-9.eE]+|NaN)$')
COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
            "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
            "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
            "nv_inference_compute_output_duration_us")


def scrape(url: str, timeout_s: float = 5.0) -> dict[str, dict[str, float]]:
    """{model: {counter: value}} summed over versions. ConnectionError if the endpoint is unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError as err:
        raise ConnectionError(f"cannot read Triton metrics at {url}: {err}") from None
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group(1) not in COUNTERS:
            continue
        labels = dict(kv.split("=", 1) for kv in re.findall(r'\w+="[^"]*"', m.group(2)))
        model = labels.get("model", "").strip('"')
        out[model][m.group(1)] += float(m.group(3))
    return {k: dict(v) for k, v in out.items()}


def went_backwards(before: dict, after: dict, models: list[str]) -> list[str]:
    """The counters of `models` that are lower after the run than before ("model counter: before -> after").
    Triton's counters only grow: a lower value means another process answered the second scrape (the
    server restarted, or the URL is load-balanced over several servers), so no delta means anything."""
    return [f"{m} {k}: {before.get(m, {}).get(k, 0.0):g} -> {after.get(m, {}).get(k, 0.0):g}"
            for m in models for k in COUNTERS if after.get(m, {}).get(k, 0.0) < before.get(m, {}).get(k, 0.0)]


def composing_models(model: str, model_config) -> list[str]:
    """`model` and, for an ensemble, the models of its steps (nested ensembles too), in order: what one
    request runs. From the configs, not the names: `<model>_v2` or `<model>_jpeg_auto_engine` on the same
    server are other models, whose counters are not this run's (and vanish when they are unloaded)."""
    names, todo = [], [model]
    while todo:
        name = todo.pop(0)
        if name not in names:
            names.append(name)
            todo += [step["model_name"] for step in model_config(name).get("ensemble_scheduling", {}).get("step", [])]
    return names


def breakdown(before: dict, after: dict, steps: list[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """(per_model of the `steps` the second scrape reports, the counters that went backwards): when any did,
    no rows, since the deltas would be garbage (a restart, or a URL load-balanced over several servers)."""
    steps = [m for m in steps if m in after]
    back = went_backwards(before, after, steps)
    return ({} if back else per_model(before, after, steps)), back


def per_model(before: dict, after: dict, models: list[str]) -> dict[str, dict[str, float]]:
    """Per composing model: requests, executions, average batch size, and per-request queue / compute ms."""
    rows = {}
    for model in models:
        a, b = after.get(model, {}), before.get(model, {})
        d = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in COUNTERS}
        req = d["nv_inference_request_success"]
        ex = d["nv_inference_exec_count"]

        def per_req(k: str, d: dict = d, req: float = req) -> float:
            return d[k] / req / 1000 if req else 0.0

        rows[model] = {
            "requests": req, "failures": d["nv_inference_request_failure"], "executions": ex,
            "avg_batch_size": d["nv_inference_count"] / ex if ex else 0.0,
            "request_ms": per_req("nv_inference_request_duration_us"),
            "queue_ms": per_req("nv_inference_queue_duration_us"),
            "compute_input_ms": per_req("nv_inference_compute_input_duration_us"),
            "compute_infer_ms": per_req("nv_inference_compute_infer_duration_us"),
            "compute_output_ms": per_req("nv_inference_compute_output_duration_us"),
        }
    return rows
