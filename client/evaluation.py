"""`tdet eval`: COCO evaluation through the served ensemble, and optionally the same images in-process
(PyTorch) to measure what deployment cost: "did serving lose accuracy?".

Results are appended to <out>/results.partial.jsonl as images finish, so an interrupted run resumes
where it stopped; results.json and metrics.json appear only when the run is complete.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .boxes import xyxy_to_xywh
from .postprocess import Detections

# pycocotools' COCOeval.stats order
METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
           "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class EvalResult:
    model: str
    num_images: int
    metrics: dict[str, float]
    results_path: Path | None
    reference: dict[str, float] | None = None  # in-process metrics, with --reference
    delta: dict[str, float] | None = None  # served - reference


def _atomic_json(path: Path, obj: object) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def load_dataset(coco_json: Path, images_dir: Path):
    """-> (COCO object, {image_id: path}). ValueError names missing files and unannotated images."""
    from pycocotools.coco import COCO

    if not coco_json.is_file():
        raise FileNotFoundError(f"annotations file not found: {coco_json}")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(coco_json))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{coco_json} is not a COCO annotations file: {err}") from None
    paths = {img["id"]: images_dir / img["file_name"] for img in coco.dataset.get("images", [])}
    if not paths:
        raise ValueError(f"{coco_json} lists no images")
    missing = [str(p.name) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {coco_json.name} are missing from {images_dir}: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    listed = {p.name for p in paths.values()}
    extra = sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in listed)
    if extra:
        raise ValueError(f"{len(extra)} image(s) in {images_dir} are absent from {coco_json.name} (no ground truth): "
                         f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    return coco, paths


def to_coco_results(image_id: int, dets: Detections) -> list[dict]:
    """Detections (xyxy original px, dataset category ids) -> COCO result rows (bbox xywh)."""
    xywh = xyxy_to_xywh(dets.boxes)
    return [{"image_id": int(image_id), "category_id": int(c), "bbox": [round(float(v), 3) for v in b],
             "score": round(float(s), 5)} for b, s, c in zip(xywh, dets.scores, dets.category_ids)]


def coco_metrics(coco, results: list[dict]) -> dict[str, float]:
    """The 12 standard COCO box metrics (pycocotools COCOeval, maxDets 1/10/100)."""
    from pycocotools.cocoeval import COCOeval

    if not results:  # loadRes refuses an empty list; no detections means every metric is 0
        return {m: 0.0 for m in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(copy.deepcopy(results))  # loadRes adds fields to the dicts it is given
        ev = COCOeval(coco, dt, "bbox")
        ev.params.imgIds = sorted(coco.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: float(v) for m, v in zip(METRICS, ev.stats)}


def _served_results(model: str, url: str, protocol: str, paths: dict[int, Path], concurrency: int,
                    partial: Path) -> list[dict]:
    from .triton import connect

    done: dict[int, list[dict]] = {}
    if partial.is_file():  # resume: images already evaluated by an interrupted run
        for line in partial.read_text().splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                done[int(row["image_id"])] = row["results"]
    todo = [i for i in paths if i not in done]
    lock = threading.Lock()
    with connect(url, model, protocol) as client, open(partial, "a") as log, \
            ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(client.infer, paths[i].read_bytes()): i for i in todo}
        for fut in tqdm(as_completed(futures), total=len(futures), desc=f"eval {model}", unit="img",
                        initial=0, disable=None):
            image_id = futures[fut]
            rows = to_coco_results(image_id, fut.result())
            with lock:
                done[image_id] = rows
                log.write(json.dumps({"image_id": image_id, "results": rows}) + "\n")
                log.flush()
    return [r for i in sorted(done) for r in done[i]]


def _server_thresholds(model: str, url: str, protocol: str) -> dict[str, str]:
    """The served postprocess parameters (score/IoU thresholds, max detections), for an equal reference."""
    from .triton import connect

    with connect(url, model, protocol) as client:
        params = client.config.get("parameters", {})
        variant = params.get("variant", {}).get("string_value", "")
        post = client._client().get_model_config(f"{model}_postprocess", **client._json_kw())
        post = post.get("config", post)
    out = {k: v.get("string_value", "") for k, v in post.get("parameters", {}).items()}
    out["variant"] = variant
    return out


def _reference_results(variant: str, weights: str | None, paths: dict[int, Path], thresholds: dict[str, str]
                       ) -> list[dict]:
    """The same images through PyTorch in this process: same preprocessing and postprocess code, same
    thresholds as the server, so a difference is what the served path (export, engine) changed."""
    import torch

    from tdet.training.registry import build_model, family_of

    from .labels import COCO_CATEGORY_IDS, COCO_CLASSES
    from .postprocess import postprocess_one
    from .preprocess import preprocess, to_float_input
    from .specs import PREPROCESS

    fam = family_of(variant)
    spec = PREPROCESS[fam.FAMILY]
    model = fam.export_module(build_model(variant, weights=weights, deploy=True)).eval()
    ids = np.asarray(COCO_CATEGORY_IDS, np.int32)
    kw = {"max_det": int(thresholds.get("max_detections", 100))}
    if "score_threshold" in thresholds:
        kw.update(score_thr=float(thresholds["score_threshold"]), iou=float(thresholds["iou_threshold"]))
    results = []
    with torch.no_grad():
        for image_id, path in tqdm(sorted(paths.items()), desc=f"reference {variant}", unit="img", disable=None):
            chw, orig_hw = preprocess(path.read_bytes(), spec)
            outs = [t[0].numpy() for t in model(torch.from_numpy(to_float_input(chw[None], spec)))]
            b, s, l = postprocess_one(fam.FAMILY, outs, orig_hw, **kw)
            dets = Detections(b, s, ids[l], tuple(COCO_CLASSES[i] for i in l))
            results += to_coco_results(image_id, dets)
    return results


def evaluate(model: str, url: str, coco_json: Path, images_dir: Path, *, protocol: str = "grpc",
             concurrency: int = 8, out: Path | None = None, reference: str | None = None,
             weights: str | None = None) -> EvalResult:
    """Send every annotated image through the served `model`, score with COCOeval; with `reference`
    (a variant name), also run it in-process and report served - reference per metric."""
    coco, paths = load_dataset(coco_json, images_dir)
    out = out or Path("build/eval") / model
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "metrics.json", "reference_results.json"):
        (out / stale).unlink(missing_ok=True)
    thresholds = _server_thresholds(model, url, protocol) if reference else {}
    results = _served_results(model, url, protocol, paths, concurrency, out / "results.partial.jsonl")
    metrics = coco_metrics(coco, results)
    ref = delta = None
    if reference:
        served_variant = thresholds.get("variant")
        if served_variant and served_variant != reference:
            raise ValueError(f"--reference {reference} but {model} serves {served_variant}")
        ref_results = _reference_results(reference, weights, paths, thresholds)
        _atomic_json(out / "reference_results.json", ref_results)
        ref = coco_metrics(coco, ref_results)
        delta = {m: metrics[m] - ref[m] for m in METRICS}
    _atomic_json(out / "results.json", results)
    _atomic_json(out / "metrics.json", {"model": model, "images": len(paths), "metrics": metrics,
                                        "reference": ref, "delta": delta})
    (out / "results.partial.jsonl").unlink(missing_ok=True)
    return EvalResult(model, len(paths), metrics, out / "results.json", ref, delta)


def format_metrics(res: EvalResult) -> str:
    lines = [f"{res.model}: {res.num_images} images", f"{'metric':<10} {'served':>8}"
             + (f" {'reference':>10} {'delta':>9}" if res.reference else "")]
    for m in METRICS:
        line = f"{m:<10} {res.metrics[m]:>8.4f}"
        if res.reference and res.delta:
            line += f" {res.reference[m]:>10.4f} {res.delta[m]:>+9.4f}"
        lines.append(line)
    return "\n".join(lines)
