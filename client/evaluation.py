"""`tdet eval`: COCO evaluation through the served ensemble, and optionally the same images in-process
(a `Reference`, e.g. PyTorch: tdet.training.reference) to measure what deployment cost: "did serving lose
accuracy?".

Results are appended to <out>/results.partial.jsonl as images finish, so an interrupted run (Ctrl-C,
a server that went away) resumes where it stopped; results.json and metrics.json appear only when the
run is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tqdm import tqdm

from .coco import category_names
from .coco_eval import METRICS, class_mismatch, coco_metrics, coco_metrics_per_class, load_dataset, to_coco_results
from .errors import InferenceError, UserError
from .files import atomic_write
from .optionfields import settings
from .options import DetectOptions, resolve
from .pool import finished_batches
from .postprocess import COCO_EVAL_PARAMETERS, Detections, family_postprocess
from .specs import config_parameters

if TYPE_CHECKING:  # tritonclient is imported when a server is contacted, not with this module
    from .triton import DetectorClient

@dataclass(frozen=True)
class EvalResult:
    model: str
    num_images: int
    metrics: dict[str, float]
    results_path: Path | None
    reference: dict[str, float] | None = None  # in-process metrics, with --reference
    delta: dict[str, float] | None = None  # served - reference
    per_class: dict[int, float] | None = None  # AP per dataset category id (nan: no ground truth), --per-class
    class_mismatch: str | None = None  # a warning when the served classes are not the dataset's
    class_names: dict[int, str] | None = None  # the dataset's category names
    servers: str = ""  # per-server counts when --url lists several servers


class Reference(Protocol):
    """The same model run in-process, for `evaluate(..., reference=)`. tdet.training.reference.TorchReference
    is the PyTorch one (the CLI front builds it: client code never imports training/)."""

    variant: str

    def check(self, model: str, served: dict[str, str]) -> None:
        """Raise UserError before any image is sent if this reference cannot match the served `model`;
        `served`: its postprocess parameters plus the ensemble's `variant` and `weights`."""

    def results(self, paths: dict[int, Path], served: dict[str, str]) -> list[dict]:
        """COCO result rows of every image, with the served thresholds (`served`, as in check)."""


def _write_json(path: Path, obj: object) -> None:
    atomic_write(path, json.dumps(obj, indent=1))


def _dataset_key(model: str, coco_json: Path, overrides: dict | None = None) -> str:
    """What a partial results file belongs to: the model, the exact annotations file, and the thresholds
    when they are not the official protocol's (`overrides`: --conf / --iou as given)."""
    key = f"{model} {hashlib.sha256(coco_json.read_bytes()).hexdigest()[:16]}"
    return f"{key} {json.dumps(overrides, sort_keys=True)}" if overrides else key


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
                    partial: Path, key: str, client_kw: dict, parameters: dict) -> list[dict]:
    """COCO result rows of every image through the server, `concurrency` requests in flight. Finished
    images are appended to `partial` as they arrive, so an interrupted run resumes where it stopped.
    A failed request stops the run at once (the finished images stay in `partial`) and raises its
    error, with the image and how to resume in the message."""
    from .fleet import connect_fleet

    done = _load_partial(partial, key)
    concurrency = max(1, concurrency)
    with connect_fleet(url, model, protocol, **client_kw) as fleet:
        # bytes are read in the workers and only a few requests are queued: COCO val is ~800 MB of JPEGs
        def one(i: int) -> Detections:  # each request to the next server (--url a,b), failing over
            blob = paths[i].read_bytes()
            return fleet.call(lambda c: c.infer(blob, **parameters))

        if done and not _answers_as_before(done, lambda i: to_coco_results(i, one(i))):
            print(f"note: {partial} holds results {model} no longer gives (rebuilt from other weights since?): "
                  "starting over", file=sys.stderr)
            partial.unlink()
            done = {}
        todo = iter([i for i in paths if i not in done])
        _send_all(model, paths, partial, key, one, todo, done, concurrency)
        servers = fleet.format_summary() if len(fleet.urls) > 1 else ""
    return [r for i in sorted(done) for r in done[i]], servers


def _answers_as_before(done: dict[int, list[dict]], rerun: Callable[[int], list[dict]]) -> bool:
    """Whether the served model still gives a resumed image's results: the image with the most detections
    is sent again and its scores compared (2e-3: another batch composition may move the last bits; other
    weights move them far more), so a partial run of other weights under the same name is never mixed in."""
    image_id = max(done, key=lambda i: len(done[i]))
    before, now = done[image_id], rerun(image_id)
    if abs(len(before) - len(now)) > max(1, len(before) // 50):  # a detection at the threshold may flip
        return False
    top = lambda rows: sorted(((r["score"], r["category_id"]) for r in rows), reverse=True)[:20]  # noqa: E731
    return all(abs(a[0] - b[0]) <= 2e-3 and a[1] == b[1] for a, b in zip(top(before), top(now)))


def _send_all(model: str, paths: dict[int, Path], partial: Path, key: str, one: Callable[[int], Detections],
              todo: Iterator[int], done: dict[int, list[dict]], concurrency: int) -> None:
    """Send `todo`, `concurrency` in flight, recording each finished image in `done` and `partial`."""
    with open(partial, "a") as log, ThreadPoolExecutor(max_workers=concurrency) as pool, \
            tqdm(total=len(paths), initial=len(done), desc=f"eval {model}", unit="img", disable=None) as bar:
        if not done:
            log.write(json.dumps({"key": key}) + "\n")

        rounds = finished_batches(pool, one, todo, 2 * concurrency)
        with contextlib.closing(rounds):
            for finished in rounds:
                failed: tuple[int, InferenceError] | None = None
                for image_id, fut in finished:  # keep every finished image, even when another one failed
                    try:
                        rows = to_coco_results(image_id, fut.result())
                    except InferenceError as err:
                        failed = failed or (image_id, err)
                        continue
                    done[image_id] = rows
                    log.write(json.dumps({"image_id": image_id, "results": rows}) + "\n")
                    bar.update()
                log.flush()
                if failed:
                    image_id, err = failed
                    raise type(err)(f"{err} [image {paths[image_id].name}]; stopped after {len(done)} of "
                                    f"{len(paths)} images, kept in {partial}: run the same command again to "
                                    f"resume", status=err.status) from None


def eval_parameters(family: str, conf: float | None = None, iou: float | None = None) -> dict[str, float | bool]:
    """The request parameters `tdet eval` sends: the family's official COCO protocol
    (COCO_EVAL_PARAMETERS: DAMO-YOLO conf 0.05 / NMS IoU 0.7, RT-DETRv2 no threshold) and unclipped
    boxes, whatever the repository's deployment defaults are, unless conf / iou are given."""
    out: dict = {**COCO_EVAL_PARAMETERS.get(family, {}), "clip": False}  # COCO scores unclipped boxes
    if conf is not None:
        out["conf"] = conf
    if iou is not None and family_postprocess(family).nms:  # without an NMS, iou means nothing
        out["iou"] = iou
    return out


def served_parameters(client: DetectorClient, sent: dict | None = None) -> dict[str, str]:
    """The served postprocess parameters (score/IoU thresholds, max detections, input_hw) plus the
    ensemble's `variant` and `weights`: what an in-process reference needs to run the same model.
    sent: the request parameters eval sends, which override the config's thresholds."""
    try:
        post = client.model_config(f"{client.model}_postprocess")
    except InferenceError as err:  # an ensemble not built by `tdet repo build`
        raise UserError(f"--reference needs the parameters of {client.model}_postprocess: {err}") from None
    out = config_parameters(post)
    out.update(variant=client.parameters.get("variant", ""), weights=client.parameters.get("weights", ""))
    if sent:  # the sent request parameters, under the config's setting names (conf -> score_threshold, ...)
        out.update(settings(resolve(sent, DetectOptions(), max_k=2 ** 31, category_ids=()), only=sent))
    return out


def evaluate(model: str, url: str, coco_json: Path, images_dir: Path, *, protocol: str = "grpc",
             concurrency: int = 8, out: Path | None = None, reference: Reference | None = None,
             timeout_s: float | None = None, retries: int | None = None, conf: float | None = None,
             iou: float | None = None, per_class: bool = False) -> EvalResult:
    """Send every annotated image through the served `model`, score with COCOeval; with `reference`
    (an in-process run of the same model), also score that and report served - reference per metric.
    timeout_s / retries: the client's request timeout and retries when unavailable (None: defaults).
    conf / iou: sent with every request; None: the family's official COCO protocol (eval_parameters).
    per_class: also AP per category (EvalResult.per_class, metrics.json "per_class_ap")."""
    coco, paths = load_dataset(coco_json, images_dir)
    client_kw = {k: v for k, v in (("timeout_s", timeout_s), ("retries", retries)) if v is not None}
    out = out or Path("build/eval") / model
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "metrics.json", "reference_results.json"):
        (out / stale).unlink(missing_ok=True)
    from .fleet import connect_fleet

    with connect_fleet(url, model, protocol, **client_kw) as fleet:
        client = fleet.first
        sent = eval_parameters(client.family, conf, iou)
        served = served_parameters(client, sent) if reference else {}
        names = category_names(coco)
        mismatch = class_mismatch(client.class_names, names)
    if reference:
        reference.check(model, served)
    results, servers = _served_results(model, url, protocol, paths, concurrency, out / "results.partial.jsonl",
                                       _dataset_key(model, coco_json, {k: v for k, v in (("conf", conf), ("iou", iou))
                                                                       if v is not None}), client_kw, sent)
    metrics, by_class = coco_metrics_per_class(coco, results)
    ref = delta = None
    if reference:
        ref_results = reference.results(paths, served)
        _write_json(out / "reference_results.json", ref_results)
        ref = coco_metrics(coco, ref_results)
        delta = {m: metrics[m] - ref[m] for m in METRICS}
    _write_json(out / "results.json", results)
    _write_json(out / "metrics.json", {"model": model, "images": len(paths), "parameters": sent,
                                       "metrics": metrics, "reference": ref, "delta": delta,
                                       **({"per_class_ap": {str(c): (None if math.isnan(v) else v)
                                                            for c, v in by_class.items()}} if per_class else {})})
    (out / "results.partial.jsonl").unlink(missing_ok=True)
    return EvalResult(model, len(paths), metrics, out / "results.json", ref, delta,
                      per_class=by_class if per_class else None, class_mismatch=mismatch, class_names=names,
                      servers=servers)


def format_metrics(res: EvalResult) -> str:
    """The 12 metrics in percent (as the papers' tables and `tdet compare`; metrics.json keeps pycocotools'
    fractions)."""
    lines = [f"{res.model}: {res.num_images} images, COCO metrics in %", f"{'metric':<10} {'served':>8}"
             + (f" {'reference':>10} {'delta':>9}" if res.reference else "")]
    for m in METRICS:
        line = f"{m:<10} {100 * res.metrics[m]:>8.2f}"
        if res.reference and res.delta:
            line += f" {100 * res.reference[m]:>10.2f} {100 * res.delta[m]:>+9.2f}"
        lines.append(line)
    return "\n".join(lines)


def format_per_class(res: EvalResult) -> str:
    """AP 50:95 per dataset category in percent ("-": no ground truth in the dataset)."""
    names = res.class_names or {}
    lines = ["AP per category in % (50:95, all areas, 100 detections)", f"{'id':>5}  {'category':<24} {'AP':>6}"]
    for cid, ap in sorted((res.per_class or {}).items()):
        lines.append(f"{cid:>5}  {names.get(cid, str(cid))[:24]:<24} {'-' if math.isnan(ap) else f'{100 * ap:.2f}':>6}")
    return "\n".join(lines)
