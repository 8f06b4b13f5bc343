"""COCO evaluation's pieces, server-free: the annotations and images of a dataset, detections as COCO result
rows, pycocotools' 12 metrics (and AP per class), and the warning when a model's classes are not the
dataset's. `tdet eval` (tdet.client.evaluation) and the trainer's evaluator both score with these."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path

from .boxes import xyxy_to_xywh
from .coco import read_coco
from .errors import UserError
from .files import IMAGE_SUFFIXES
from .postprocess import Detections

# pycocotools' COCOeval.stats order
METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
           "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def load_dataset(coco_json: Path, images_dir: Path):
    """-> (COCO object, {image_id: path}). Errors name missing files and unannotated images."""
    coco = read_coco(coco_json, images_dir)
    paths = {img["id"]: images_dir / img["file_name"] for img in coco.dataset.get("images", [])}
    if not paths:
        raise UserError(f"{coco_json} lists no images")
    missing = [str(p.name) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {coco_json.name} are missing from {images_dir}: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    listed = {p.name for p in paths.values()}
    extra = sorted(p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in listed)
    if extra:
        raise UserError(f"{len(extra)} image(s) in {images_dir} are absent from {coco_json.name} (no ground truth): "
                         f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    return coco, paths


def to_coco_results(image_id: int, dets: Detections) -> list[dict]:
    """Detections (xyxy original px, dataset category ids) -> COCO result rows (bbox xywh)."""
    xywh = xyxy_to_xywh(dets.boxes)
    return [{"image_id": int(image_id), "category_id": int(c), "bbox": [round(float(v), 3) for v in b],
             "score": round(float(s), 5)} for b, s, c in zip(xywh, dets.scores, dets.category_ids)]


def coco_metrics(coco, results: list[dict]) -> dict[str, float]:
    """The 12 standard COCO box metrics (pycocotools COCOeval, maxDets 1/10/100)."""
    return coco_metrics_per_class(coco, results)[0]


def coco_metrics_per_class(coco, results: list[dict]) -> tuple[dict[str, float], dict[int, float]]:
    """(the 12 COCO metrics, AP 50:95 per dataset category id): the per-category mean of COCOeval's precision
    array (all areas, 100 detections), whose mean over the categories with ground truth is the AP; nan for a
    category without ground truth."""
    import numpy as np
    from pycocotools.cocoeval import COCOeval

    cat_ids = sorted(coco.getCatIds())
    if not results:  # loadRes refuses an empty list; no detections means every metric is 0
        return {m: 0.0 for m in METRICS}, {c: 0.0 if coco.getAnnIds(catIds=[c]) else math.nan for c in cat_ids}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = coco.loadRes(copy.deepcopy(results))  # loadRes adds fields to the dicts it is given
        ev = COCOeval(coco, dt, "bbox")
        ev.params.imgIds = sorted(coco.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [IoU thresholds, recall points, categories]
    per_class = {}
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        per_class[int(cid)] = float(np.mean(p[p > -1])) if (p > -1).any() else math.nan
    return {m: float(v) for m, v in zip(METRICS, ev.stats)}, per_class


def class_mismatch(served: dict[int, str], dataset: dict[int, str]) -> str | None:
    """A warning when the served model's classes are not the dataset's: dataset category ids the model never
    predicts (they score 0 AP), or shared ids with different names (another label set numbered alike).
    None when they agree, or when the model does not say its classes."""
    if not served:
        return None
    norm = {cid: n.strip().lower() for cid, n in served.items()}
    missing = sorted(set(dataset) - set(served))
    renamed = sorted(c for c in set(dataset) & set(served) if dataset[c].strip().lower() != norm[c])
    if not missing and not renamed:
        return None
    unused = sorted(set(served) - set(dataset))

    def listed(ids: list[int], names: dict[int, str]) -> str:
        return ", ".join(f"{c}={names[c]}" for c in ids[:8]) + (f" ... ({len(ids)} in all)" if len(ids) > 8 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} of the dataset's {len(dataset)} category ids are not served by the model "
                     f"(they score 0 AP): {listed(missing, dataset)}")
    if renamed:
        parts.append(f"{len(renamed)} shared id(s) name different classes (dataset vs model): "
                     + ", ".join(f"{c}={dataset[c]} vs {served[c]}" for c in renamed[:8])
                     + (" ..." if len(renamed) > 8 else ""))
    if unused:
        parts.append(f"{len(unused)} served id(s) are not in the dataset: {listed(unused, served)}")
    return ("warning: the served classes do not match the dataset's, so AP measures the wrong labels: "
            + "; ".join(parts) + " (serve a model trained on these categories: `tdet train` + `tdet export`)")
