"""`tdet compare`: the seed page's DAMO-YOLO vs RT-DETRv2 table, measured through the served path on
your hardware: mAP (tdet eval), single-stream p50 latency, saturated throughput, params and GFLOPs
(from the export metadata the server exposes), as markdown + JSON + a mAP-vs-latency chart."""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .evaluation import evaluate, load_dataset
from .files import atomic_write


@dataclass(frozen=True)
class Row:
    model: str
    variant: str
    map_50_95: float
    map_50: float
    latency_p50_ms: float
    throughput_img_s: float
    params_m: float | None
    gflops: float | None
    engine: str
    weights: str = ""  # what the served graph holds: a checkpoint, or "random-init(seed=N)"
    images: int = 0  # evaluated images
    precision: str = "fp32"  # the served model's `precision` config parameter (tdet export --precision)


def _latency_and_throughput(model: str, url: str, protocol: str, blobs: list[bytes], *, single: int,
                            seconds: float, concurrency: int, client_kw: dict) -> tuple[float, float]:
    from .triton import connect

    with connect(url, model, protocol, **client_kw) as client:
        client.infer(blobs[0])  # warm
        lat = []
        for i in range(single):  # single stream: one request in flight
            t0 = time.perf_counter()
            client.infer(blobs[i % len(blobs)])
            lat.append((time.perf_counter() - t0) * 1000)
        done = 0
        deadline = time.perf_counter() + seconds

        def worker(k: int) -> int:
            n = 0
            while time.perf_counter() < deadline:
                client.infer(blobs[(k + n) % len(blobs)])
                n += 1
            return n

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:  # saturation: `concurrency` requests in flight
            done = sum(pool.map(worker, range(concurrency)))
        return float(np.median(lat)), done / (time.perf_counter() - t0)


def compare(models: list[str], url: str, coco_json: Path, images_dir: Path, *, out: Path, protocol: str = "grpc",
            single: int = 20, seconds: float = 10.0, concurrency: int = 8, timeout_s: float | None = None,
            retries: int | None = None) -> list[Row]:
    from .triton import connect

    client_kw = {k: v for k, v in (("timeout_s", timeout_s), ("retries", retries)) if v is not None}
    if not models:
        raise UserError("--models needs at least one served model")
    _, paths = load_dataset(coco_json, images_dir)
    blobs = [p.read_bytes() for p in paths.values()]
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        with connect(url, model, protocol, **client_kw) as client:
            params, precision = client.parameters, client.precision
        res = evaluate(model, url, coco_json, images_dir, protocol=protocol, concurrency=concurrency,
                       out=out / "eval" / model, **client_kw)
        p50, tput = _latency_and_throughput(model, url, protocol, blobs, single=single, seconds=seconds,
                                            concurrency=concurrency, client_kw=client_kw)
        rows.append(Row(model, params.get("variant", model), res.metrics["AP"], res.metrics["AP50"], p50, tput,
                        _number(params, "params_m"), _number(params, "gflops"), params.get("engine", ""),
                        params.get("weights", ""), res.num_images, precision))
    atomic_write(out / "compare.json", json.dumps([asdict(r) for r in rows], indent=1))
    atomic_write(out / "compare.md", markdown_table(rows))
    plot(rows, out / "compare.png")
    return rows


def _number(params: dict[str, str], key: str) -> float | None:
    return float(params[key]) if params.get(key) else None


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(rows: list[Row]) -> str:
    fmt = _fmt
    # the seed page's column order (model, mAP, latency, params, GFLOPs), then what it could not measure
    # rows by served model name (an A/B of a fine-tuned model vs its base has one variant twice)
    lines = ["| Model | mAP 50:95 | mAP 50 | Latency p50 (ms) | Params (M) | GFLOPs | Throughput (img/s) | Engine "
             "| Precision | Variant |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.model} | {100 * r.map_50_95:.1f} | {100 * r.map_50:.1f} | {r.latency_p50_ms:.1f} | "
              f"{fmt(r.params_m, '.2f')} | {fmt(r.gflops, '.1f')} | {r.throughput_img_s:.2f} | {r.engine} | "
              f"{r.precision} | {r.variant} |" for r in rows]
    # what the numbers are, so a table pasted elsewhere still says where it came from
    lines += ["", f"mAP: pycocotools on {rows[0].images if rows else 0} images through the served ensemble; "
              f"latency: single stream; throughput: saturated, client-measured; on {_machine()}.",
              "Params/GFLOPs: the served model's config parameters (`tdet export` metadata: torch flop counter, "
              "2 x MACs at the input size, deploy form); '-' where the server does not publish them."]
    lines += [f"Weights of {r.model} ({r.variant}): {r.weights}" for r in rows if r.weights]
    return "\n".join(lines) + "\n"


def _machine() -> str:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # Linux names the CPU model here; platform.processor() is often empty
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    return f"{cpu}, {os.cpu_count()} CPUs"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r.latency_p50_ms, 100 * r.map_50_95, s=40)
        ax.annotate(r.model, (r.latency_p50_ms, 100 * r.map_50_95), textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel="served latency p50, single stream (ms)", ylabel="COCO mAP 50:95 (%), served",
           title="mAP vs latency through Triton")
    # from zero, room for the labels, and no negative mAP axis when every model scores 0 (random init)
    ax.set_xlim(0, max([r.latency_p50_ms for r in rows] + [1.0]) * 1.3)
    ax.set_ylim(0, max([100 * r.map_50_95 for r in rows] + [1.0]) * 1.15)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
