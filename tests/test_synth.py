"""`tdet data synth`: a valid, deterministic, learnable COCO detection set written atomically."""

import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from tdet.client.synth import CATEGORY_IDS, SHAPES, synthesize


def test_synth_writes_a_valid_coco_dataset(tmp_path):
    ann = synthesize(tmp_path / "a", num=5, seed=3)
    coco = COCO(str(ann))
    assert len(coco.imgs) == 5 and len(coco.anns) >= 5
    assert sorted(coco.getCatIds()) == list(CATEGORY_IDS)  # the dataset's own classes, not COCO's 80
    assert [coco.cats[i]["name"] for i in CATEGORY_IDS] == list(SHAPES)
    sizes = set()
    for img in coco.imgs.values():
        pixels = cv2.imread(str(tmp_path / "a" / "images" / img["file_name"]))
        assert pixels.shape[:2] == (img["height"], img["width"])
        sizes.add((img["width"], img["height"]))
        for a in coco.imgToAnns[img["id"]]:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and w >= 2 and h >= 2
            assert x + w <= img["width"] + 1 and y + h <= img["height"] + 1
            assert a["category_id"] in CATEGORY_IDS and 16 <= a["area"] <= w * h  # visible pixels
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
    b = json.loads(synthesize(tmp_path / "b", num=4, seed=7, size=(320, 200), workers=2).read_text())
    # the first 3 of a 4-image run made by 2 processes are the 3-image run
    assert a["annotations"] == [x for x in b["annotations"] if x["image_id"] <= 3]
    assert all((i["width"], i["height"]) == (320, 200) for i in a["images"])
    assert (tmp_path / "a/images/000001.jpg").read_bytes() == (tmp_path / "b/images/000001.jpg").read_bytes()


def test_synth_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--num must be >= 1"):
        synthesize(tmp_path, num=0)
    for size in ((8, 8), (100000, 100000), (640, 9000)):  # the big one was a MemoryError
        with pytest.raises(ValueError, match="--size must be from 32x32 to 8192x8192"):
            synthesize(tmp_path, num=1, size=size)
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        synthesize(tmp_path, num=1, workers=0)


def test_synth_class_is_what_is_drawn(tmp_path):
    """The label follows the drawn shape: how much of its box a shape fills is a property of its kind
    (a full rectangle fills it, a ring's hole leaves most of it empty), so per-class fill ratios separate."""
    coco = COCO(str(synthesize(tmp_path, num=40, seed=2, size=(320, 240))))
    fill = {c: [] for c in CATEGORY_IDS}
    for a in coco.anns.values():
        fill[a["category_id"]].append(a["area"] / (a["bbox"][2] * a["bbox"][3]))
    median = {SHAPES[c - 1]: float(np.median(v)) for c, v in fill.items()}
    assert all(len(v) >= 5 for v in fill.values())
    assert median["ring"] < median["star"] < median["ellipse"] < median["rectangle"]
    assert median["cross"] < median["ellipse"] and median["triangle"] < median["ellipse"]


def test_synth_splits_differ(tmp_path):
    train = synthesize(tmp_path / "train", num=2, seed=5, size=(128, 96), split="train")
    val = synthesize(tmp_path / "val", num=2, seed=5, size=(128, 96), split="val")
    assert json.loads(train.read_text())["annotations"] != json.loads(val.read_text())["annotations"]
    assert (tmp_path / "train/images/000000.jpg").read_bytes() != (tmp_path / "val/images/000000.jpg").read_bytes()
    with pytest.raises(ValueError, match="--split must be one of"):
        synthesize(tmp_path / "x", num=1, split="test")


def test_synth_refuses_a_folder_holding_a_dataset_it_did_not_write(tmp_path):
    """`tdet data synth --out` on a real dataset replaced its annotations.json and drew over its 000000.jpg;
    now refused, every byte kept. Its own folders (also an interrupted run's) are regenerated as before."""
    from tdet.client.synth_video import synthesize_video

    real = tmp_path / "real"
    (real / "images").mkdir(parents=True)
    (real / "annotations.json").write_text('{"info": {"description": "my labels"}, "images": []}')
    (real / "images" / "000000.jpg").write_bytes(b"my photo")
    with pytest.raises(ValueError, match="is not a dataset `tdet data synth` wrote"):
        synthesize(real, num=2, size=(64, 48))
    (real / "annotations.json").unlink()
    with pytest.raises(ValueError, match="holds files `tdet data synth` did not write"):
        synthesize(real, num=2, size=(64, 48))
    assert (real / "images" / "000000.jpg").read_bytes() == b"my photo"
    assert sorted(p.name for p in real.rglob("*")) == ["000000.jpg", "images"]
    ours = tmp_path / "ours"
    synthesize(ours, num=2, size=(64, 48))
    (ours / "annotations.json").unlink()  # as a run interrupted before its last write leaves it
    assert synthesize(ours, num=3, size=(64, 48)).is_file()
    clips = tmp_path / "clips"
    (clips / "clip-001" / "img1").mkdir(parents=True)
    (clips / "clip-001" / "img1" / "000001.jpg").write_bytes(b"my frame")
    with pytest.raises(ValueError, match="did not write"):
        synthesize_video(clips, 2, size=(64, 48), frames=2)
    assert not (clips / "clip-000").exists()  # checked before any clip folder is made
