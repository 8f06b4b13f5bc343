"""Training data: COCO loading and validation, both families' augmentations keep boxes on their objects,
determinism of the sample keys, loader shapes/dtypes/ranges.

The images are written by the test: a flat background with filled rectangles and ellipses, each object in
its own colour (PNG, so colours are exact). A box is "on its object" when the pixels in its central part
are that label's colours (MixUp: a 50/50 blend of that colour with any colour of the scene); an object is
"visible and whole" when a connected patch of its colour touches neither the image border nor padding, and
then some box of its label must cover it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdet.client.errors import UserError
from tdet.client.preprocess import resize_rgb, to_chw
from tdet.client.specs import preprocess_spec
from tdet.training.data.coco import CocoDetection
from tdet.training.data.damo_transforms import DamoAugment, DamoTrainTransform, MixupParams, box_candidates, mixup
from tdet.training.data.loader import (
    SampleKey,
    TrainSampler,
    build_train_loader,
    build_train_transform,
    build_val_loader,
)
from tdet.training.data.ops import hflip
from tdet.training.data.rtdetr_transforms import (
    PhotometricParams,
    RTDETRAugment,
    RTDETRCollate,
    RTDETRTrainTransform,
    crop,
    iou_crop_window,
    photometric_distort,
    sanitize,
)

CATEGORY_IDS = (40, 7, 12)  # written unsorted, non-COCO ids: labels must be 0, 1, 2 for 7, 12, 40
# object colours (RGB); colour k belongs to label k % 3. Picked far apart, from the background, from the pads
# (114 grey, 0 black) and from each other's 50/50 blends (checked in test_palette_is_unambiguous).
PALETTE = np.array([(40, 200, 160), (160, 200, 160), (160, 0, 250), (80, 250, 80), (160, 0, 200), (40, 80, 250),
                    (200, 0, 0), (250, 80, 0), (0, 80, 0)], np.int32)
BACKGROUND = np.array((255, 45, 165), np.int32)
PADS = np.array([(114, 114, 114), (0, 0, 0)], np.int32)
SCENE = np.concatenate([PALETTE, BACKGROUND[None], PADS])
TOL = 12  # per-channel tolerance for "this colour" (interpolation at the edges is excluded by the central crop)
SIZES = ((320, 240), (240, 320), (400, 300), (300, 300), (480, 270), (260, 200))  # (w, h)


def _write_dataset(root: Path, negatives: int = 1) -> None:
    """Images with 3-4 non-overlapping objects each (unique colours) + `negatives` empty ones; COCO json."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (w, h) in enumerate(SIZES + ((200, 150),) * negatives):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = BACKGROUND
        if i < len(SIZES):
            cells = [(cx, cy) for cx in range(2) for cy in range(2)]
            for n, k in enumerate(rng.permutation(len(PALETTE))[: 3 + i % 2]):
                cx, cy = cells[n]
                bw, bh = int(rng.uniform(0.2, 0.42) * w), int(rng.uniform(0.2, 0.42) * h)
                x = cx * w // 2 + int(rng.uniform(6, w // 2 - bw - 6))
                y = cy * h // 2 + int(rng.uniform(6, h // 2 - bh - 6))
                colour = tuple(int(c) for c in PALETTE[k])
                if n % 2:
                    cv2.ellipse(img, (x + bw // 2, y + bh // 2), (bw // 2, bh // 2), 0, 0, 360, colour, -1)
                    bx, by, bw2, bh2 = x, y, 2 * (bw // 2) + 1, 2 * (bh // 2) + 1
                else:
                    cv2.rectangle(img, (x, y), (x + bw - 1, y + bh - 1), colour, -1)
                    bx, by, bw2, bh2 = x, y, bw, bh
                anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": [7, 12, 40][k % 3],
                             "bbox": [bx, by, bw2, bh2], "area": bw2 * bh2, "iscrowd": 0})
        cv2.imwrite(str(root / "images" / f"im{i}.png"), img[..., ::-1])
        images.append({"id": 100 + i, "file_name": f"im{i}.png", "width": w, "height": h})
    cats = [{"id": c, "name": f"name{c}"} for c in CATEGORY_IDS]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> CocoDetection:
    root = tmp_path_factory.mktemp("coco")
    _write_dataset(root)
    return CocoDetection(root / "ann.json", root / "images")


def _label_colours(label: int) -> np.ndarray:
    return PALETTE[np.arange(len(PALETTE)) % 3 == label]


def _explained(pixels: np.ndarray, label: int, blended: bool) -> np.ndarray:
    """[P] bool: pixel [P, 3] is a colour of `label` (blended: 0.5 x that colour + 0.5 x any scene colour)."""
    cols = _label_colours(label).astype(np.float32)
    if blended:
        cols = ((cols[:, None] + SCENE[None].astype(np.float32)) / 2).reshape(-1, 3)
    d = np.abs(pixels[:, None, :].astype(np.float32) - cols[None]).max(-1)
    return (d <= TOL + (1 if blended else 0)).any(1)


def check_boxes_on_objects(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, blended: bool = False) -> int:
    """Every box with sides >= 8 px has >= 60% of its central 60% in its label's colour. A box at the image
    border only needs 20 such pixels anywhere in it: the official box of a rotated object cut by the border
    is the clipped hull of its rotated corners, which can be mostly background. -> boxes checked."""
    checked = 0
    hi, wi = img.shape[:2]
    for (x1, y1, x2, y2), lab in zip(boxes, labels):
        w, h = x2 - x1, y2 - y1
        if min(w, h) < 8:
            continue  # too few pixels to judge once interpolated
        ix1, iy1 = int(np.ceil(x1 + 0.2 * w)), int(np.ceil(y1 + 0.2 * h))
        ix2, iy2 = int(np.floor(x2 - 0.2 * w)), int(np.floor(y2 - 0.2 * h))
        if min(x1, y1) < 1 or x2 > wi - 1 or y2 > hi - 1:
            whole = img[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))].reshape(-1, 3)
            assert _explained(whole, int(lab), blended).sum() >= 20, f"box {[x1, y1, x2, y2]} label {lab}: no object"
            checked += 1
            continue
        region = img[iy1:iy2, ix1:ix2].reshape(-1, 3)
        frac = _explained(region, int(lab), blended).mean()
        assert frac >= 0.6, f"box {[x1, y1, x2, y2]} label {lab}: only {frac:.0%} of its centre is the object"
        checked += 1
    return checked


def check_whole_objects_have_boxes(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> int:
    """Each patch of an object colour (>= 150 px, sides >= 8) touching neither the border nor a pad colour
    is >= 90% inside a box of its label no larger than 3x the patch's box. -> patches checked."""
    h, w = img.shape[:2]
    pix = img.astype(np.int32)
    pad = np.zeros((h, w), bool)
    for p in PADS:
        pad |= np.abs(pix - p).max(-1) <= TOL
    checked = 0
    for k, colour in enumerate(PALETTE):
        mask = (np.abs(pix - colour).max(-1) <= TOL).astype(np.uint8)
        n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for c in range(1, n):
            x, y, cw, ch, area = stats[c]
            if area < 150 or min(cw, ch) < 8 or x <= 1 or y <= 1 or x + cw >= w - 1 or y + ch >= h - 1:
                continue
            ring = cv2.dilate((comp == c).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            if (ring & pad).any():
                continue  # cut by the canvas edge: the box filters may legitimately drop it
            ys, xs = np.nonzero(comp == c)
            ok = False
            for (x1, y1, x2, y2), lab in zip(boxes, labels):
                inside = ((xs >= x1 - 1) & (xs <= x2 + 1) & (ys >= y1 - 1) & (ys <= y2 + 1)).mean()
                if lab == k % 3 and inside >= 0.9 and (x2 - x1) * (y2 - y1) <= 3 * cw * ch:
                    ok = True
                    break
            assert ok, f"whole object of colour {tuple(colour)} at {(x, y, cw, ch)} has no box"
            checked += 1
    return checked


def test_palette_is_unambiguous():
    """The colour checks mean something: no pixel of one label's colour (or blend) passes for another's."""
    for lab in range(3):
        others = np.concatenate([_label_colours(o) for o in range(3) if o != lab] + [BACKGROUND[None], PADS])
        assert not _explained(others, lab, blended=False).any()
        blends = ((others[:, None] + others[None]) / 2).reshape(-1, 3)  # two non-`lab` colours (or one)
        assert not _explained(blends, lab, blended=True).any()


def test_dataset_categories_boxes_negatives(dataset):
    assert dataset.category_ids == [7, 12, 40] and dataset.class_names == ["name7", "name12", "name40"]
    assert len(dataset) == len(SIZES) + 1 and dataset.image_ids == sorted(dataset.image_ids)
    neg = dataset.load(len(SIZES))  # the image without annotations is kept, with no boxes
    assert neg.boxes.shape == (0, 4) and neg.labels.shape == (0,) and neg.image.shape == (150, 200, 3)
    s = dataset.load(0)
    assert s.image.dtype == np.uint8 and s.orig_hw == (240, 320) and s.boxes.dtype == np.float32
    assert s.labels.dtype == np.int64 and set(s.labels) <= {0, 1, 2}
    assert check_boxes_on_objects(s.image, s.boxes, s.labels) == len(s.boxes) > 0
    assert dict(dataset.skipped) == {} and dataset.warnings == []


def _bad_dataset(root: Path, extra_anns: list[dict], missing_file: bool = False) -> Path:
    _write_dataset(root, negatives=0)
    data = json.loads((root / "ann.json").read_text())
    data["annotations"] += extra_anns
    if missing_file:
        data["images"].append({"id": 999, "file_name": "gone.jpg", "width": 10, "height": 10})
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


@pytest.mark.parametrize("ann, reason, words", [
    ({"bbox": [400, 10, 20, 20]}, "box_outside_image", "outside"),
    ({"bbox": [10, 10, 0, 20]}, "degenerate_box", "degenerate"),
    ({"bbox": [10, 10, float("nan"), 5]}, "degenerate_box", "degenerate"),
    ({"bbox": [10, 10, 20, 20], "category_id": 3}, "unknown_category", "category_id=3"),
])
def test_invalid_annotation_named_then_skipped_or_raised(tmp_path, ann, reason, words):
    bad = {"id": 555, "image_id": 100, "category_id": 7, "area": 1, "iscrowd": 0, **ann}
    path = _bad_dataset(tmp_path, [bad])
    with pytest.raises(ValueError, match=rf"annotation id 555 \(image 100 'im0.png'.*{words}"):
        CocoDetection(path, tmp_path / "images", skip_invalid=False)
    ds = CocoDetection(path, tmp_path / "images", skip_invalid=True)
    assert ds.skipped[reason] == 1 and "annotation id 555" in ds.warnings[0]
    assert len(ds.annotations(0)[0]) == sum(1 for a in json.loads(path.read_text())["annotations"]
                                            if a["image_id"] == 100) - 1


def test_missing_image_crowd_and_clipping(tmp_path):
    crowd = {"id": 556, "image_id": 101, "category_id": 12, "bbox": [5, 5, 50, 50], "area": 1, "iscrowd": 1}
    past = {"id": 557, "image_id": 101, "category_id": 12, "bbox": [200, 300, 100, 50], "area": 1, "iscrowd": 0}
    path = _bad_dataset(tmp_path, [crowd, past], missing_file=True)
    with pytest.raises(ValueError, match=r"image id 999: file 'gone.jpg' not found"):
        CocoDetection(path, tmp_path / "images", skip_invalid=False)
    ds = CocoDetection(path, tmp_path / "images")
    assert ds.skipped["missing_image"] == 1 and ds.skipped["crowd"] == 1 and 999 not in ds.image_ids
    boxes, labels = ds.annotations(ds.image_ids.index(101))  # image 101 is 240 x 320 (w x h)
    assert ds.clipped == 1 and [200, 300, 240, 320] in boxes.tolist()  # clipped to the image, as official
    assert [5, 5, 55, 55] not in boxes.tolist()  # the crowd box
    assert len(boxes) == len(labels)


@pytest.mark.parametrize(("text", "error", "words"), [
    (None, FileNotFoundError, "annotations file not found"),
    ("{not json", UserError, "is not a COCO annotations file: JSONDecodeError"),
    ("[1, 2]", UserError, "is not a COCO annotations file"),
    ('{"images": [{"file_name": "a.png"}], "annotations": [{"image_id": 1}]}', UserError,
     "is not a COCO annotations file: KeyError"),
])
def test_eval_and_training_read_coco_files_alike(tmp_path, text, error, words):
    """`tdet eval` and training read COCO json through one loader (tdet.client.coco): the same error, naming
    the file, for a missing file, bad JSON, JSON that is not a dict, and missing keys."""
    from tdet.client.coco_eval import load_dataset

    path = tmp_path / "ann.json"
    (tmp_path / "images").mkdir()
    if text is not None:
        path.write_text(text)
    messages = []
    for read in (load_dataset, CocoDetection):
        with pytest.raises(error, match=re.escape(words)) as err:
            read(path, tmp_path / "images")
        messages.append(str(err.value))
        if text is not None:
            with pytest.raises(FileNotFoundError, match="images folder not found"):
                read(path, tmp_path / "nowhere")
    assert messages[0] == messages[1] and str(path) in messages[0]


def test_corrupt_image_raises_naming_file(tmp_path):
    path = _bad_dataset(tmp_path, [])
    (tmp_path / "images" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = CocoDetection(path, tmp_path / "images")
    with pytest.raises(ValueError, match=r"im1.png"):
        ds.load(1)


def test_unknown_augment_keys_rejected(dataset):
    with pytest.raises(ValueError, match="mosaic.sheer"):
        build_train_transform("damo-yolo", {"mosaic": {"sheer": 1.0}}, (320, 320), dataset)
    with pytest.raises(ValueError, match="cutout"):
        build_train_transform("rtdetrv2", {"cutout": 0.5}, (320, 320), dataset)
    assert DamoAugment.from_dict({"mosaic": {"shear": 0.2}, "hflip": 0.5}).shear == 0.2


@pytest.mark.parametrize("hw", [(320, 320), (256, 384)])
def test_damo_mosaic_affine_keeps_boxes_on_objects(dataset, hw):
    tf = DamoTrainTransform(dataset, hw, {"mixup": {"prob": 0.0}})
    boxes_checked = patches_checked = 0
    for seed in range(12):
        s = tf(seed % len(dataset), np.random.default_rng(seed), True)
        assert s.image.shape == (*hw, 3) and s.image.dtype == np.uint8 and s.boxes.dtype == np.float32
        assert ((s.boxes[:, 2:] - s.boxes[:, :2]).prod(1) > 4).all()
        assert (s.boxes >= 0).all() and (s.boxes[:, 0::2] <= hw[1]).all() and (s.boxes[:, 1::2] <= hw[0]).all()
        wh = s.boxes[:, 2:] - s.boxes[:, :2]  # the mosaic is made at input_hw: no resize after the affine
        assert (wh > 2 - 1e-3).all() and (wh.max(1) / wh.min(1) < 20 + 1e-3).all()  # box_candidates held
        boxes_checked += check_boxes_on_objects(s.image, s.boxes, s.labels)
        patches_checked += check_whole_objects_have_boxes(s.image, s.boxes, s.labels)
    assert boxes_checked >= 20 and patches_checked >= 10


def test_box_candidates():
    before = np.array([[0, 0, 10, 10]] * 5, np.float32)
    after = np.array([[0, 0, 3, 3],  # 9% of the area left: dropped
                      [0, 0, 4, 3],  # 12%: kept
                      [0, 0, 10, 2],  # 2 px high: dropped
                      [0, 0, 60, 2.9],  # aspect 20.7: dropped
                      [0, 0, 57, 3]], np.float32)  # aspect 19: kept
    assert box_candidates(before, after).tolist() == [False, True, False, False, True]


def test_damo_mixup_boxes_on_blended_objects(dataset):
    tf = DamoTrainTransform(dataset, (320, 320), {"mixup": {"prob": 1.0}})
    checked = 0
    for seed in range(10):
        s = tf(seed % len(SIZES), np.random.default_rng(seed), True)
        checked += check_boxes_on_objects(s.image, s.boxes, s.labels, blended=True)
        assert ((s.boxes[:, 2:] - s.boxes[:, :2]).prod(1) > 4).all()  # area <= 4 dropped, MixUp's boxes too
    # no mosaic (mosaic.prob < 1): MixUp into the raw image, then the stretch resize; a zoomed-in partner
    # has boxes cut to nothing by the crop, which the area filter drops
    tf = DamoTrainTransform(dataset, (320, 320), {"mosaic": {"prob": 0.0}, "mixup": {"prob": 1.0, "scale": [1.5, 2.5]}})
    for seed in range(6):
        s = tf(seed % len(SIZES), np.random.default_rng(seed), True)
        checked += check_boxes_on_objects(s.image, s.boxes, s.labels, blended=True)
        assert ((s.boxes[:, 2:] - s.boxes[:, :2]).prod(1) > 4).all()
    assert checked >= 20


def test_mixup_partner_boxes_follow_jitter_flip_and_offset(dataset):
    origin = np.full((320, 320, 3), BACKGROUND, np.uint8)
    partner = dataset.load(4)  # 480 x 270
    for jitter, flip, ox, oy in [(0.5, False, 0.3, 0.7), (1.5, True, 0.9, 0.1), (1.2, True, 0.0, 0.99)]:
        img, boxes = mixup(origin, partner.image, partner.boxes, (320, 320), MixupParams(jitter, flip, ox, oy))
        keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
        assert img.shape == origin.shape and keep.any()
        check_boxes_on_objects(img, boxes[keep], partner.labels[keep], blended=True)
        # the blend is exact: background everywhere outside the partner content is 0.5 bg + 0.5 pad/bg
        assert set(map(tuple, img[0:2, 0:2].reshape(-1, 3))) <= {tuple((BACKGROUND + q) // 2) for q in SCENE}


def test_damo_no_aug_epochs_resize_and_flip_only(dataset):
    tf = DamoTrainTransform(dataset, (320, 320), {})
    flipped = 0
    for seed in range(8):
        i = seed % len(SIZES)
        s, raw = tf(i, np.random.default_rng(seed), False), dataset.load(i)
        h, w = raw.image.shape[:2]
        scaled = raw.boxes * np.array([320 / w, 320 / h] * 2, np.float32)
        mirrored = np.stack([320 - scaled[:, 2], scaled[:, 1], 320 - scaled[:, 0], scaled[:, 3]], 1)
        is_flipped = not np.allclose(s.boxes, scaled, atol=1e-3)
        np.testing.assert_allclose(s.boxes, mirrored if is_flipped else scaled, atol=1e-3)
        assert (s.labels == raw.labels).all()
        flipped += is_flipped
        check_boxes_on_objects(s.image, s.boxes, s.labels)
        check_whole_objects_have_boxes(s.image, s.boxes, s.labels)
    assert 0 < flipped < 8


def test_hflip_boxes_mirror(dataset):
    s = dataset.load(2)
    img, boxes, labels = hflip(s.image, s.boxes, s.labels)
    w = s.image.shape[1]
    np.testing.assert_allclose(boxes, np.stack([w - s.boxes[:, 2], s.boxes[:, 1], w - s.boxes[:, 0], s.boxes[:, 3]], 1),
                               atol=1e-3)
    assert (img == s.image[:, ::-1]).all() and (labels == s.labels).all()
    check_boxes_on_objects(img, boxes, labels)


@pytest.mark.parametrize("aug", [{"photometric": {"p": 0.0}},  # geometry: zoom-out, IoU crop, flip, resize
                                 {"photometric": {"p": 0.0}, "zoom_out": {"p": 1.0}, "iou_crop": {"p": 1.0}}])
def test_rtdetr_geometry_keeps_boxes_on_objects(dataset, aug):
    tf = RTDETRTrainTransform(dataset, (320, 320), aug)
    boxes_checked = patches_checked = 0
    for seed in range(14):
        s = tf(seed % len(dataset), np.random.default_rng(seed), True)
        assert s.image.shape == (320, 320, 3) and len(s.boxes) == len(s.labels)
        assert ((s.boxes[:, 2:] - s.boxes[:, :2]) >= 1).all()
        boxes_checked += check_boxes_on_objects(s.image, s.boxes, s.labels)
        patches_checked += check_whole_objects_have_boxes(s.image, s.boxes, s.labels)
    assert boxes_checked >= 15 and patches_checked >= 10


def test_iou_crop_drops_boxes_centred_outside(dataset):
    s, aug = dataset.load(2), RTDETRAugment()
    h, w = s.image.shape[:2]
    cropped = 0
    for seed in range(30):
        window = iou_crop_window(np.random.default_rng(seed), s.boxes, (h, w), aug)
        if window is None:
            continue  # the "no crop" option
        top, left, ch, cw, inside = window
        cx, cy = (s.boxes[:, 0] + s.boxes[:, 2]) / 2, (s.boxes[:, 1] + s.boxes[:, 3]) / 2
        assert (inside == ((cx > left) & (cx < left + cw) & (cy > top) & (cy < top + ch))).all() and inside.any()
        assert 0.5 <= cw / ch <= 2 and 0.3 * w - 1 <= cw <= w and 0.3 * h - 1 <= ch <= h
        img, boxes = crop(s.image, s.boxes, window)
        kept, labels = sanitize(boxes, s.labels, img.shape[:2], 1.0)
        assert img.shape == (ch, cw, 3) and len(kept) == inside.sum() and (labels == s.labels[inside]).all()
        check_boxes_on_objects(img, kept, labels)
        cropped += 1
    assert cropped >= 10


def test_rtdetr_photometric(dataset):
    s = dataset.load(0)
    none = PhotometricParams(None, None, None, None, True, None)
    assert (photometric_distort(s.image, none) == s.image).all()
    perm = photometric_distort(s.image, PhotometricParams(None, None, None, None, True, (2, 0, 1)))
    assert (perm == s.image[..., [2, 0, 1]]).all()
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    towards_yellow = photometric_distort(red, PhotometricParams(None, None, None, 0.1, True, None))[0, 0]
    towards_magenta = photometric_distort(red, PhotometricParams(None, None, None, -0.1, True, None))[0, 0]
    assert towards_yellow[1] > 80 and towards_yellow[2] < 5 and towards_magenta[2] > 80 and towards_magenta[1] < 5
    bright = photometric_distort(s.image, PhotometricParams(1.1, None, None, None, True, None))
    expect = np.clip(s.image.astype(np.float32) * 1.1, 0, 255)
    assert np.abs(bright - expect).max() <= 1
    # every op at once: objects stay uniform patches distinct from the background, boxes untouched
    tf = RTDETRTrainTransform(dataset, (240, 320), {"photometric": {"p": 1.0}, "zoom_out": {"p": 0.0},
                                                     "iou_crop": {"p": 0.0}, "hflip": 0.0})
    for seed in range(4):
        out = tf(0, np.random.default_rng(seed), True)
        np.testing.assert_allclose(out.boxes, s.boxes, atol=1e-3)
        bg = out.image[2, 2].astype(int)
        assert np.abs(out.image.astype(int) - s.image.astype(int)).max() > 3  # it did change
        for x1, y1, x2, y2 in out.boxes.astype(int):
            centre = out.image[y1 + (y2 - y1) // 3:y2 - (y2 - y1) // 3, x1 + (x2 - x1) // 3:x2 - (x2 - x1) // 3]
            centre = centre.reshape(-1, 3).astype(int)
            assert (np.abs(centre - centre[0]).max(-1) <= 2).mean() > 0.95  # one colour
            assert np.abs(centre[0] - bg).max() > 10  # not the background's


def test_rtdetr_no_aug_epochs(dataset):
    tf = RTDETRTrainTransform(dataset, (320, 320), {"hflip": 0.0})
    s, raw = tf(3, np.random.default_rng(0), False), dataset.load(3)
    np.testing.assert_allclose(s.boxes, raw.boxes * np.float32(320 / 300), atol=1e-3)  # 300x300 image
    check_boxes_on_objects(s.image, s.boxes, s.labels)


def test_sampler_order_shards_and_resume():
    a = TrainSampler(103, 8, seed=5)
    a.set_epoch(2)
    full = list(a)
    assert len(full) == len(a) == 12 and all(len(b) == 8 for b in full)
    flat = [k.index for b in full for k in b]
    assert len(set(flat)) == 96  # no repeats within an epoch
    a.set_epoch(2, start_batch=7)
    assert list(a) == full[7:] and len(a) == 5
    a.set_epoch(3)
    assert [k.index for k in next(iter(a))] != [k.index for k in full[0]]
    shards = []
    for rank in range(3):
        r = TrainSampler(103, 4, seed=5, rank=rank, world=3, drop_last=False)
        r.set_epoch(2)
        shards.append([k for b in r for k in b])
    assert len({k.index for s in shards for k in s}) == 103 and sum(map(len, shards)) == 105  # wrap-padded
    seeds = [k.seed for s in shards for k in s]
    assert len(set(seeds)) == 103
    with pytest.raises(ValueError, match="no full batch"):
        TrainSampler(5, 4, seed=0, world=2)


def test_same_key_same_sample_any_worker_count(dataset):
    for family, aug, ms in [("damo-yolo", {"mixup": {"prob": 1.0}}, None), ("rtdetrv2", {}, [256, 288, 320])]:
        tf = build_train_transform(family, aug, (320, 320), dataset)
        a, b = tf(3, np.random.default_rng(11), True), tf(3, np.random.default_rng(11), True)
        assert (a.image == b.image).all() and (a.boxes == b.boxes).all() and (a.labels == b.labels).all()
        batches = {}
        for workers in (0, 2):
            loader = build_train_loader(dataset, family, aug, (320, 320), batch_size=3, seed=1, workers=workers,
                                        multi_scale=ms)
            loader.batch_sampler.set_epoch(4, start_batch=1)
            batches[workers] = list(loader)
        assert len(batches[0]) == len(batches[2]) == 1
        x, y = batches[0][0], batches[2][0]
        assert x.keys == y.keys and torch.equal(x.images, y.images)
        assert all(torch.equal(p["boxes"], q["boxes"]) and torch.equal(p["labels"], q["labels"])
                   for p, q in zip(x.targets, y.targets))


def test_a_process_exits_with_the_train_loaders_workers_alive(dataset):
    """The workers ignore SIGTERM (a group signal must not kill them mid-step) and multiprocessing's exit handler
    stops daemonic children with SIGTERM then joins them: a process leaving with a live persistent loader (here
    a module global, alive when the exit handlers run) hung for ever after a finished `tdet train --resume`."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        from tdet.training.data.coco import CocoDetection
        from tdet.training.data.loader import build_train_loader
        ds = CocoDetection({str(dataset.ann_file)!r}, {str(dataset.images_dir)!r})
        loader = build_train_loader(ds, "damo-yolo", {{}}, (64, 64), batch_size=2, seed=0, workers=2)
        loader.batch_sampler.set_epoch(0)
        first = next(iter(loader))
        print("batch", len(first.keys), flush=True)
    """)
    # a generous limit: it only tells a hang from an exit
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "batch 2" in res.stdout, res.stderr[-2000:]


def test_train_loader_formats(dataset):
    loader = build_train_loader(dataset, "damo-yolo", {}, (256, 320), batch_size=4, seed=0, workers=0)
    loader.batch_sampler.set_epoch(0)
    b = next(iter(loader))
    assert b.images.shape == (4, 3, 256, 320) and b.images.dtype == torch.float32
    assert b.images.max() > 1.5 and b.images.min() >= 0 and b.images.max() <= 255
    for t in b.targets:
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all() and t["boxes"][:, 0::2].max() <= 320

    loader = build_train_loader(dataset, "rtdetrv2", {}, (320, 320), batch_size=4, seed=0, workers=0)
    loader.batch_sampler.set_epoch(0)
    b = next(iter(loader))
    assert b.images.shape == (4, 3, 320, 320) and 0 <= b.images.min() and b.images.max() <= 1
    for t in b.targets:
        assert t["boxes"].dtype == torch.float32 and ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
    with pytest.raises(ValueError, match="multi_scale"):
        build_train_loader(dataset, "damo-yolo", {}, (320, 320), 2, 0, workers=0, multi_scale=[320, 352])


def test_multi_scale_collate_keeps_boxes_on_objects(dataset):
    tf = RTDETRTrainTransform(dataset, (256, 352), {"photometric": {"p": 0.0}})  # not square: w/h mix-ups show
    collate = RTDETRCollate([224, 288, 352])
    sizes = set()
    for b in range(6):
        keys = [SampleKey(i, 1000 * b + i, 0, True) for i in range(3)]
        batch = collate([(tf(k.index, np.random.default_rng(k.seed), True), k) for k in keys])
        size = batch.images.shape[-1]
        assert batch.images.shape[-2] == size and size == collate.scale_for(keys)
        sizes.add(size)
        for img, t in zip(batch.images, batch.targets):
            pix = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            c = t["boxes"].numpy()
            xyxy = np.concatenate([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], 1) * size
            check_boxes_on_objects(pix, xyxy, t["labels"].numpy())
    assert len(sizes) >= 2
    weak = [SampleKey(0, 1, 0, False)]
    assert collate.scale_for(weak) is None  # no multi-scale in the no-aug epochs


@pytest.mark.parametrize("family", ["damo-yolo", "rtdetrv2"])
def test_val_loader(dataset, family):
    """The served engine's input: uint8 RGB at the input size, stretch-resized by the served code."""
    loader = build_val_loader(dataset, family, (320, 320), batch_size=3, workers=0)
    batches = list(loader)
    assert [len(b.image_ids) for b in batches] == [3, 3, 1]
    b = batches[0]
    assert b.images.shape == (3, 3, 320, 320) and b.images.dtype == np.uint8
    first = dataset.load(0)
    expected = to_chw(resize_rgb(first.image, preprocess_spec(family, (320, 320))))
    assert np.array_equal(b.images[0], expected)
    assert b.image_ids.tolist() == dataset.image_ids[:3]
    assert b.orig_hw.tolist() == [list(dataset.load(i).orig_hw) for i in range(3)]
