"""COCO-format detection dataset for training and validation: annotations checked once, up front.

Box conversion is the official loaders' (DAMO-YOLO `COCODataset` + `BoxList.clip_to_image`, RT-DETRv2
`ConvertCocoPolysToMask`; both agree): COCO [x, y, w, h] -> xyxy (x, y, x + w, y + h) in pixels, clamped to
[0, W] x [0, H] (width/height, not W-1/H-1), then boxes with x2 <= x1 or y2 <= y1 are dropped. Crowd
annotations (iscrowd=1) are dropped. Images without any box stay (negatives), and the image order is the
sorted image ids, as both official loaders use.

What the official loaders drop silently is counted here and named (file, annotation id): a degenerate box
(w or h <= 0, or not 4 finite numbers), a box that lies entirely outside its image, an unknown category id,
a missing image file. `skip_invalid=True` drops the annotation (or the image, for a missing file) and counts
it in `.skipped`; `skip_invalid=False` raises ValueError listing them. Boxes that only extend past the image
are clipped as the official loaders clip them (counted in `.clipped`, not an error).

Labels are contiguous 0..C-1 in the order of the sorted dataset category ids (COCO's 80 ids map to the
official 0..79; ids like 7, 12, 40 map to 0, 1, 2). Images are decoded by the served path's own code (OpenCV,
the EXIF orientation applied), so a model trains on the pixels it will be served; the official loaders use PIL
without EXIF rotation, which is the same for files without an orientation tag (COCO's) up to JPEG IDCT rounding.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tdet.client.coco import category_names, read_coco
from tdet.client.errors import UserError
from tdet.client.preprocess import decode_image, image_size

# how many offending annotations a ValueError / warning lists by name
_LIST_MAX = 10


@dataclass(frozen=True)
class Sample:
    """One image with its ground truth.

    image: uint8 [H, W, 3] RGB. boxes: float32 [N, 4] xyxy in pixels of `image`. labels: int64 [N] in 0..C-1.
    image_id: the dataset's image id. orig_hw: (height, width) of the file as stored.
    """

    image: npt.NDArray[np.uint8]
    boxes: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    image_id: int
    orig_hw: tuple[int, int]


class CocoDetection:
    """A COCO annotations file plus its images folder.

    Attributes: category_ids (sorted dataset ids; label i <-> category_ids[i]), class_names, image_ids
    (sorted, one per kept image), skipped ({reason: count} of what was dropped), clipped (number of boxes
    clipped to their image), warnings (human-readable lines about what was skipped), coco (the pycocotools
    COCO object, for COCO evaluation).
    """

    def __init__(self, ann_file: str | Path, images_dir: str | Path, *, skip_invalid: bool = True) -> None:
        self.ann_file, self.images_dir = Path(ann_file), Path(images_dir)
        self.coco = read_coco(self.ann_file, self.images_dir)
        names = category_names(self.coco)
        if not names:
            raise UserError(f"{self.ann_file.name} defines no categories")
        self.category_ids: list[int] = list(names)
        self.class_names: list[str] = list(names.values())
        self._label_of = {cid: i for i, cid in enumerate(self.category_ids)}

        self.skipped: Counter[str] = Counter()
        self.clipped = 0
        self.warnings: list[str] = []
        problems: list[str] = []
        self.image_ids: list[int] = []
        self._files: list[Path] = []
        self._hw: list[tuple[int, int]] = []
        self._boxes: list[npt.NDArray[np.float32]] = []
        self._labels: list[npt.NDArray[np.int64]] = []
        for image_id in sorted(self.coco.imgs):
            self._add_image(image_id, problems)
        orphans = sum(1 for a in self.coco.dataset.get("annotations", []) if a.get("image_id") not in self.coco.imgs)
        if orphans:
            self.skipped["annotation_without_image"] += orphans
            self.warnings.append(f"{orphans} annotation(s) name an image id that {self.ann_file.name} does not list")
        if problems:
            more = f"; ... ({len(problems)} in all)" if len(problems) > _LIST_MAX else ""
            listed = "; ".join(problems[:_LIST_MAX]) + more
            if not skip_invalid:
                raise UserError(f"{self.ann_file.name}: {len(problems)} invalid entr(y/ies): {listed}")
            self.warnings.append(f"skipped {len(problems)} invalid entr(y/ies): {listed}")
        if not self.image_ids:
            raise UserError(f"{self.ann_file.name}: no usable images in {self.images_dir}")
        self.num_boxes = np.array([len(b) for b in self._boxes], dtype=np.int64)

    def _add_image(self, image_id: int, problems: list[str]) -> None:
        """Validate one image entry and its annotations; keep what is usable."""
        info = self.coco.imgs[image_id]
        name = str(info.get("file_name", ""))
        path = self.images_dir / name
        if not name or not path.is_file():
            self.skipped["missing_image"] += 1
            problems.append(f"image id {image_id}: file {name!r} not found in {self.images_dir}")
            return
        try:
            h, w = int(info["height"]), int(info["width"])
        except (KeyError, TypeError, ValueError):
            w, h = _header_size(path)  # the annotation does not say: the file does
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                self.skipped["crowd"] += 1  # the official loaders drop crowd boxes: not an error
                continue
            where = f"annotation id {ann.get('id')} (image {image_id} {name!r}, {w}x{h})"
            reason, box = self._check_box(ann, w, h)
            if reason:
                self.skipped[reason] += 1
                problems.append(f"{where}: {reason.replace('_', ' ')} bbox={ann.get('bbox')!r}"
                                + (f" category_id={ann.get('category_id')!r}" if reason == "unknown_category" else ""))
                continue
            boxes.append(box)
            labels.append(self._label_of[ann["category_id"]])
        self.image_ids.append(int(image_id))
        self._files.append(path)
        self._hw.append((h, w))
        self._boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        self._labels.append(np.asarray(labels, np.int64))

    def _check_box(self, ann: dict, w: int, h: int) -> tuple[str, list[float]]:
        """-> (reason it is invalid or "", xyxy box clipped to the image)."""
        if ann.get("category_id") not in self._label_of:
            return "unknown_category", []
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            return "degenerate_box", []
        try:
            x, y, bw, bh = (float(v) for v in bbox)
        except (TypeError, ValueError):
            return "degenerate_box", []
        if not all(math.isfinite(v) for v in (x, y, bw, bh)) or bw <= 0 or bh <= 0:
            return "degenerate_box", []
        x1, y1, x2, y2 = min(max(x, 0.0), w), min(max(y, 0.0), h), min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
        if x2 <= x1 or y2 <= y1:
            return "box_outside_image", []
        if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
            self.clipped += 1
        return "", [x1, y1, x2, y2]

    def __len__(self) -> int:
        return len(self.image_ids)

    def summary(self, split: str) -> str:
        """One line on what was loaded (counted while loading): images, boxes, labels -> category ids, clipped
        and skipped boxes, images without a box."""
        pairs = [f"{i}->{cid} {name}" for i, (cid, name) in enumerate(zip(self.category_ids, self.class_names))]
        mapping = ", ".join(pairs[:_LIST_MAX]) + (f", ... ({len(pairs)} in all)" if len(pairs) > _LIST_MAX else "")
        skipped = sum(n for k, n in self.skipped.items() if k != "missing_image")
        return (f"{split}: {len(self)} images ({self.skipped['missing_image']} skipped, "
                f"{int((self.num_boxes == 0).sum())} without a box), {int(self.num_boxes.sum())} boxes "
                f"({self.clipped} clipped to the image, {skipped} skipped), {len(self.category_ids)} classes "
                f"(label->category id: {mapping})")

    def path(self, i: int) -> Path:
        """The image file of sample i."""
        return self._files[i]

    def annotations(self, i: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """(boxes float32 [N, 4] xyxy px, labels int64 [N]) of sample i, without decoding the image (copies)."""
        return self._boxes[i].copy(), self._labels[i].copy()

    def load(self, i: int) -> Sample:
        """Decode sample i. Raises ValueError naming the file when it is corrupt or not the annotated size."""
        path, (h, w) = self._files[i], self._hw[i]
        image = decode_rgb(path)
        if image.shape[:2] != (h, w):
            raise UserError(f"{path}: decoded size {image.shape[1]}x{image.shape[0]} differs from the "
                             f"{w}x{h} in {self.ann_file.name} (image id {self.image_ids[i]})")
        boxes, labels = self.annotations(i)
        return Sample(image, boxes, labels, self.image_ids[i], (h, w))


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, from the image header; UserError naming the file if it is not an image."""
    try:
        return image_size(path.read_bytes())
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def decode_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """uint8 [H, W, 3] RGB of an image file, decoded by the served path's own code (tdet.client.preprocess:
    the EXIF orientation applied, so training sees the image a viewer, an annotation tool and the server
    see). UserError naming the file for corrupt, truncated, unsupported or oversized files."""
    try:
        return decode_image(path.read_bytes())
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
