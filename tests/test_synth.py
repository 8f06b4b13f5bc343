"""`tdet data synth`: a valid, deterministic COCO detection set written atomically."""

import json

import cv2
import pytest
from pycocotools.coco import COCO

from tdet.client.labels import COCO_CATEGORY_IDS
from tdet.client.synth import synthesize


def test_synth_writes_a_valid_coco_dataset(tmp_path):
    ann = synthesize(tmp_path / "a", num=5, seed=3)
    coco = COCO(str(ann))
    assert len(coco.imgs) == 5 and len(coco.anns) >= 5
    assert sorted(coco.getCatIds()) == sorted(COCO_CATEGORY_IDS)
    sizes = set()
    for img in coco.imgs.values():
        pixels = cv2.imread(str(tmp_path / "a" / "images" / img["file_name"]))
        assert pixels.shape[:2] == (img["height"], img["width"])
        sizes.add((img["width"], img["height"]))
        for a in coco.imgToAnns[img["id"]]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and w >= 2 and h >= 2
            assert x + w <= img["width"] + 1 and y + h <= img["height"] + 1
            assert a["category_id"] in COCO_CATEGORY_IDS and 4 <= a["area"] <= w * h  # visible pixels
    assert len(sizes) > 1  # a mix of sizes by default
    assert not list((tmp_path / "a").glob(".annotations*"))  # no temp file left
    assert ann.stat().st_mode & 0o044  # readable by others, not mkstemp's 0600


def test_synth_covers_all_coco_size_buckets(tmp_path):
    coco = COCO(str(synthesize(tmp_path, num=20, seed=1)))
    areas = [a["area"] for a in coco.anns.values()]  # COCO buckets by area: small / medium / large
    assert min(areas) < 32 ** 2 and max(areas) > 96 ** 2 and any(32 ** 2 <= a < 96 ** 2 for a in areas)


def test_synth_into_a_used_folder_leaves_no_unannotated_images(tmp_path):
    synthesize(tmp_path, num=5, seed=0)
    synthesize(tmp_path, num=2, seed=0)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000000.jpg", "000001.jpg"]


def test_synth_is_deterministic_and_honours_size(tmp_path):
    a = json.loads(synthesize(tmp_path / "a", num=3, seed=7, size=(320, 200)).read_text())
    b = json.loads(synthesize(tmp_path / "b", num=3, seed=7, size=(320, 200)).read_text())
    assert a["annotations"] == b["annotations"]
    assert all((i["width"], i["height"]) == (320, 200) for i in a["images"])
    assert (tmp_path / "a/images/000001.jpg").read_bytes() == (tmp_path / "b/images/000001.jpg").read_bytes()


def test_synth_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--num must be >= 1"):
        synthesize(tmp_path, num=0)
    with pytest.raises(ValueError, match="--size must be at least 32x32"):
        synthesize(tmp_path, num=1, size=(8, 8))
