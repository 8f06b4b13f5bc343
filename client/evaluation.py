"""`tdet eval`: COCO evaluation through the served ensemble, and optionally the same images in-process
(PyTorch) to measure what deployment cost: "did serving lose accuracy?".

Results are appended to <out>/results.partial.jsonl as images finish, so an interrupted run resumes
where it stopped; results.json and metrics.json appear only when the run is complete.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import re
import tempfile
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
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
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
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


def _dataset_key(model: str, coco_json: Path) -> str:
    """What a partial results file belongs to: the model and the exact annotations file."""
    return f"{model} {hashlib.sha256(coco_json.read_bytes()).hexdigest()[:16]}"


def _load_partial(partial: Path, key: str) -> dict[int, list[dict]]:
    """Rows of an interrupted run of the same model on the same annotations; anything else is dropped."""
    done: dict[int, list[dict]] = {}
    if not partial.is_file():
        return done
    lines = partial.read_text().splitlines()
    try:
        same = bool(lines) and json.loads(lines[0]).get("key") == key
    except (ValueError, AttributeError):
        same = False
    if not same:
        partial.unlink()  # another model's or dataset's run: never mix its rows in
        return done
    for line in lines[1:]:
        with contextlib.suppress(ValueError, KeyError):  # a line cut by the interruption
            row = json.loads(line)
            done[int(row["image_id"])] = row["results"]
    return done


def _served_results(model: str, url: str, protocol: str, paths: dict[int, Path], concurrency: int,
                    partial: Path, key: str) -> list[dict]:
    """COCO result rows of every image through the server, `concurrency` requests in flight. Finished
    images are appended to `partial` as they arrive, so an interrupted run resumes where it stopped."""
    from .triton import connect

    done = _load_partial(partial, key)
    todo = iter([i for i in paths if i not in done])
    concurrency = max(1, concurrency)
    with connect(url, model, protocol) as client, open(partial, "a") as log, \
            ThreadPoolExecutor(max_workers=concurrency) as pool, \
            tqdm(total=len(paths), initial=len(done), desc=f"eval {model}", unit="img", disable=None) as bar:
        if not done:
            log.write(json.dumps({"key": key}) + "\n")
        # bytes are read in the workers and only a few requests are queued: COCO val is ~800 MB of JPEGs,
        # and Ctrl-C must not wait for thousands of queued requests to finish
        pending: dict = {}
        try:
            while True:
                while len(pending) < 2 * concurrency and (i := next(todo, None)) is not None:
                    pending[pool.submit(lambda p: client.infer(p.read_bytes()), paths[i])] = i
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    image_id = pending.pop(fut)
                    rows = to_coco_results(image_id, fut.result())
                    done[image_id] = rows
                    log.write(json.dumps({"image_id": image_id, "results": rows}) + "\n")
                    bar.update()
                log.flush()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return [r for i in sorted(done) for r in done[i]]


def _server_thresholds(model: str, url: str, protocol: str) -> dict[str, str]:
    """The served postprocess parameters (score/IoU thresholds, max detections), for an equal reference."""
    from tritonclient.utils import InferenceServerException

    from .triton import connect

    with connect(url, model, protocol) as client:
        params = client.config.get("parameters", {})
        variant = params.get("variant", {}).get("string_value", "")
        try:
            post = client._client().get_model_config(f"{model}_postprocess", **client._json_kw())
        except InferenceServerException as err:  # an ensemble not built by `tdet repo build`
            raise ValueError(f"--reference needs the thresholds of {model}_postprocess: {err}") from None
        post = post.get("config", post)
    out = {k: v.get("string_value", "") for k, v in post.get("parameters", {}).items()}
    out["variant"] = variant
    out["weights"] = params.get("weights", {}).get("string_value", "")
    return out


def _check_reference(model: str, reference: str, weights: str | None, served: dict[str, str]
                     ) -> tuple[str | None, int]:
    """Fail before any image is sent if the in-process reference cannot match the served model.
    -> (weights, seed) for build_model: --weights, else the served model's own (its export metadata)."""
    try:
        from tdet.training.registry import variant_names
    except ImportError as err:
        raise ValueError(f"--reference runs the model in-process and needs the train extra (torch): {err}") from None
    if reference not in variant_names():
        raise ValueError(f"--reference: unknown variant {reference!r}; known: {', '.join(variant_names())}")
    if served.get("variant") and served["variant"] != reference:
        raise ValueError(f"--reference {reference} but {model} serves {served['variant']}")
    if weights is not None:
        if weights != "official" and not Path(weights).is_file():
            raise FileNotFoundError(f"--weights file not found: {weights}")
        return weights, 0
    served_weights = served.get("weights", "")
    seed = re.fullmatch(r"random-init\(seed=(\d+)\)", served_weights)
    if seed or not served_weights:
        return None, int(seed.group(1)) if seed else 0
    if served_weights == "official" or Path(served_weights).is_file():
        return served_weights, 0
    raise ValueError(f"{model} serves weights {served_weights!r}, which are not on this machine: pass --weights PATH")


def _reference_results(variant: str, weights: str | None, seed: int, paths: dict[int, Path],
                       thresholds: dict[str, str]) -> list[dict]:
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
    model = fam.export_module(build_model(variant, weights=weights, deploy=True, seed=seed)).eval()
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
    seed = 0
    if reference:
        weights, seed = _check_reference(model, reference, weights, thresholds)
    results = _served_results(model, url, protocol, paths, concurrency, out / "results.partial.jsonl",
                              _dataset_key(model, coco_json))
    metrics = coco_metrics(coco, results)
    ref = delta = None
    if reference:
        ref_results = _reference_results(reference, weights, seed, paths, thresholds)
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
