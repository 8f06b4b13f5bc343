"""The in-process PyTorch reference run: the model as exported (its export wrapper) plus the served
path's own numpy postprocess, so its detections differ from the served ones only by what serving
(export, engine) changed.

`predict` is the core, shared by `tdet eval --reference` (TorchReference, built by the CLI front;
client/ never imports training/) and the trainer's evaluator.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tdet.client.errors import UserError, train_extra_missing
from tdet.client.labels import COCO_CATEGORY_IDS
from tdet.client.optionfields import from_settings
from tdet.client.options import DetectOptions
from tdet.client.postprocess import DEFAULT_IOU, DEFAULT_MAX_DET, Detections, postprocess_one
from tdet.client.preprocess import preprocess, to_float_input
from tdet.client.specs import parse_hw, preprocess_spec

Prediction = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]


def predict(model: Any, family: str, images: npt.NDArray[np.uint8], orig_hw: list[tuple[int, int]],
            input_hw: tuple[int, int], *, conf: float | None = None, iou: float = DEFAULT_IOU,
            max_det: int = DEFAULT_MAX_DET, clip: bool = False) -> list[Prediction]:
    """Detections of a batch, in PyTorch, exactly as the served ensemble computes them.

    model: the family's detector (train or deploy form) in eval mode, on any device.
    images: uint8 [B, 3, H, W] RGB network input (already resized to input_hw, as the preprocess step
        makes it); orig_hw: each image's original (height, width); input_hw: (H, W).
    Returns per image (boxes float32 [K, 4] xyxy in original pixels, scores float32 [K], labels int64 [K]
    0-based), by descending score, K <= max_det: the export wrapper under no_grad, then the served
    numpy postprocess (tdet.client.postprocess.postprocess_one) with these thresholds and clip (conf None:
    the family's official COCO-eval threshold, 0.05 DAMO-YOLO, none RT-DETRv2).
    """
    import torch

    from .registry import family_module

    if images.ndim != 4 or images.shape[1:] != (3, *input_hw) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [B, 3, {input_hw[0]}, {input_hw[1]}], got {images.dtype} "
                         f"{list(images.shape)}")
    if len(orig_hw) != len(images):
        raise ValueError(f"{len(orig_hw)} original sizes for {len(images)} images")
    if model.training:
        raise ValueError("predict needs the model in eval mode (model.eval())")
    spec = preprocess_spec(family, input_hw)
    device = next(model.parameters()).device
    x = torch.from_numpy(to_float_input(images, spec)).to(device)
    with torch.no_grad():
        outputs = [t.float().cpu().numpy() for t in family_module(family).export_module(model)(x)]
    return [postprocess_one(family, [o[b] for o in outputs], (int(orig_hw[b][0]), int(orig_hw[b][1])),
                            conf=conf, iou=iou, max_det=max_det, input_hw=input_hw, clip=clip)
            for b in range(len(images))]


class TorchReference:
    """`tdet eval --reference VARIANT [--weights W]`: the served model's variant run in this process with
    the served thresholds, input size and category ids (tdet.client.evaluation.Reference)."""

    def __init__(self, variant: str, weights: str | None = None) -> None:
        try:
            import torch  # noqa: F401
        except ImportError as err:
            raise train_extra_missing("--reference (the model run in-process)", err.name or "torch") from None
        from .registry import variant_names

        if variant not in variant_names():
            raise UserError(f"--reference: unknown variant {variant!r}; known: {', '.join(variant_names())}")
        if weights is not None and weights != "official" and not Path(weights).is_file():
            raise FileNotFoundError(f"--weights file not found: {weights}")
        self.variant, self.weights = variant, weights
        self._build: tuple[str | None, int] = (weights, 0)

    def check(self, model: str, served: dict[str, str]) -> None:
        """Fail before any image is sent if this cannot match the served model; without --weights, take
        the served model's own weights (its export metadata: a checkpoint, or the seeded random init). A
        checkpoint file whose content is not the served one's (the repository records its sha256) is refused:
        the comparison would blame serving for a retrained checkpoint."""
        if served.get("variant") and served["variant"] != self.variant:
            raise UserError(f"--reference {self.variant} but {model} serves {served['variant']}")
        if self.weights is not None:
            self._check_digest(model, self.weights, served, "--weights")
            return
        served_weights = served.get("weights", "")
        seed = re.fullmatch(r"random-init\(seed=(\d+)\)", served_weights)
        if seed or not served_weights:
            self._build = (None, int(seed.group(1)) if seed else 0)
        elif served_weights == "official" or Path(served_weights).is_file():
            self._check_digest(model, served_weights, served, "the served checkpoint")
            self._build = (served_weights, 0)
        else:
            raise UserError(f"{model} serves weights {served_weights!r}, which are not on this machine: "
                            "pass --weights PATH")

    @staticmethod
    def _check_digest(model: str, weights: str, served: dict[str, str], what: str) -> None:
        """UserError when `weights` (a local file) is not the checkpoint the served version was built from;
        nothing to check for "official" or a repository without digests."""
        from .weights import sha256sum

        want = served.get("weights_sha256", "")
        if not want or weights == "official":
            return
        got = sha256sum(Path(weights))
        if got != want:
            raise UserError(f"{what} {weights} (sha256 {got[:12]}) is not the checkpoint {model} was built from "
                            f"(sha256 {want[:12]}): it changed since (retrained?); rebuild the repository from it, "
                            f"or pass --weights with the served checkpoint")

    def results(self, paths: dict[int, Path], served: dict[str, str]) -> list[dict]:
        """COCO result rows (category ids as served) of every image, one image at a time."""
        import json

        from tqdm import tqdm

        from tdet.client.evaluation import to_coco_results

        from .registry import build_model, family_of

        family = family_of(self.variant).FAMILY
        input_hw = parse_hw(served.get("input_hw", "640,640"))
        spec = preprocess_spec(family, input_hw)
        weights, seed = self._build
        model = build_model(self.variant, weights=weights, deploy=True, seed=seed, input_hw=input_hw).eval()
        kw = from_settings(DetectOptions, served, what="served parameter")  # the served thresholds
        ids = json.loads(served["category_ids"]) if "category_ids" in served else COCO_CATEGORY_IDS
        ids = np.asarray(ids, np.int32)
        rows: list[dict] = []
        for image_id, path in tqdm(sorted(paths.items()), desc=f"reference {self.variant}", unit="img", disable=None):
            chw, orig_hw = preprocess(path.read_bytes(), spec)
            boxes, scores, labels = predict(model, family, chw[None], [orig_hw], input_hw, **kw)[0]
            rows += to_coco_results(image_id, Detections(boxes, scores, ids[labels]))
        return rows
