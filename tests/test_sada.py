"""SADA, DAMO-YOLO's scale-aware box-level auto-augmentation (training/data/sada.py): the policy decoding, the
ramp, what each kind of op does where it is applied, the sampler's progress, the recipe block, and a run saved
before SADA existed resuming. (Parity with the official code, run outside the project: README, Training.)"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from synthetic import shapes_set

from tdet.client.errors import UserError
from tdet.training.data import sada as S
from tdet.training.data.damo_transforms import DamoAugment, DamoTrainTransform
from tdet.training.data.loader import TrainSampler


def _image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 200 + 20).astype(np.uint8)


def _only(colour: str, geometric: str, level: int = 6, box_prob: float = 1.0) -> S.Sada:
    """One sub-policy, both ops always on (probability 10 / 10); every box of the middle scale picked (the scale
    weights are 0, 1, 0: a 40 x 40 box on 240 x 320 is of the middle scale, 614 <= area < 3072)."""
    params = (0, 0, 0, 0, list(S.COLOR_OPS).index(colour), 10, level, S.GEOMETRIC_OPS.index(geometric), 10, level,
              0, 5, 0, 0, 1, 0)
    return S.Sada(S.SadaConfig(box_prob=box_prob, num_subpolicies=1, autoaug_params=params))


def test_the_official_policy_decodes_to_its_five_sub_policies():
    policies, area, prob = S.decode(S.SadaConfig())
    assert policies == [(("Color", 0.4, 2), ("translateX", 0.4, 4)), (("Brightness", 0.2, 4), ("rotate", 0.4, 2)),
                        (("Sharpness", 0.4, 2), ("shearX", 0.2, 6)), (("SolarizeAdd", 0.2, 2), ("hflip", 0.5, 1)),
                        (("Color", 0.0, 8), ("translateY", 0.2, 8))]
    assert (area, prob) == ((7, 5, 1), (3, 3, 3))


def test_nothing_happens_at_progress_zero_and_a_draw_is_a_function_of_the_seed():
    img, boxes, labels = _image(), np.array([[40, 30, 200, 180]], np.float32), np.array([2])
    sada = S.Sada(S.SadaConfig())
    for seed in range(20):
        out, b, lab = sada(img, boxes, labels, 0.0, np.random.default_rng(seed))
        assert out is img and b is boxes and lab is labels
    runs = [sada(img, boxes, labels, 1.0, np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


def test_a_colour_op_reaches_its_full_strength_at_the_box_centre_and_fades_away_from_it():
    img = _image()
    box = np.array([[100, 80, 140, 120]], np.float32)  # centre (120, 100)
    out, boxes, _ = _only("Brightness", "hflip", box_prob=1.0)(img, box, np.array([0]), 1.0,
                                                               np.random.default_rng(0))
    # hflip of the crop, then the brightness at factor 6/10 x 1.8 + 0.1 = 1.18 (clipped) at the gaussian's peak
    flipped = img[80:120, 100:140][:, ::-1]
    bright = np.clip(flipped.astype(np.float32) / 255 * np.float32(1.18), 0, 1) * 255
    assert abs(int(out[100, 120, 0]) - bright[20, 20, 0]) <= 1.0
    assert np.array_equal(out[:20, :40], img[:20, :40])  # far from the box: the gaussian is ~0
    assert np.array_equal(boxes, box)


def test_a_translate_copies_the_box_content_and_adds_a_box_with_its_label():
    img = _image()
    box = np.array([[60, 50, 100, 90]], np.float32)
    out, boxes, labels = _only("Brightness", "translateX", level=5, box_prob=1.0)(
        img, box, np.array([3]), 1.0, np.random.default_rng(1))  # Brightness at level 5: factor 1.0, identity
    assert len(boxes) == 2 and labels.tolist() == [3, 3] and np.array_equal(boxes[0], box[0])
    dx = boxes[1, 0] - box[0, 0]
    assert abs(dx) == 60 and np.array_equal(boxes[1] - box[0], [dx, 0, dx, 0])  # level 5: 0.5 x 120 px
    # at the pasted crop's centre the gaussian is 1: the moved pixel is the source's
    cx, cy = 80 + int(dx), 70
    assert np.abs(out[cy, cx].astype(int) - img[70, 80].astype(int)).max() <= 1


def test_rotation_is_pils_affine_clockwise_about_the_crop_centre():
    x = (np.arange(4 * 6 * 3).reshape(4, 6, 3) % 251).astype(np.float32) / 255
    square = x[:, :4]
    u8 = (square * 255).astype(np.uint8)
    assert np.array_equal(np.rint(S._pil_affine(square, 90.0, (0.0, 0.0)) * 255).astype(np.uint8), np.rot90(u8, -1))
    assert np.array_equal(np.rint(S._pil_affine(x, 0.0, (0.0, 0.0)) * 255).astype(np.uint8), (x * 255).astype(np.uint8))


def test_the_gaussian_map_is_the_formula():
    h, w = 30, 40
    g = S.gaussian_map((h, w), [(10, 6, 22, 20)])
    bh, bw = 14.0, 12.0
    r = math.sqrt(h * w / (2 * math.pi))
    sr, sc = bh / h * r, bw / w * r
    rows, cols = np.mgrid[0:h, 0:w]
    want = np.exp(-((rows - (6 + 7)) ** 2 / (2 * sr ** 2) + (cols - (10 + 6)) ** 2 / (2 * sc ** 2)))
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    assert g[13, 16] == pytest.approx(1.0)


def test_the_sampler_gives_each_batch_its_share_of_the_strong_epochs():
    sampler = TrainSampler(8, 2, seed=0)
    sampler.set_epoch(1, strong_epochs=4)
    assert [b[0].progress for b in sampler] == [(4 + i) / 16 for i in range(4)]
    sampler.set_epoch(1)  # no strong epochs given: 0 (SADA stays off)
    assert {k.progress for b in sampler for k in b} == {0.0}


def test_the_recipe_block_turns_it_on_and_null_or_a_bad_block_is_said(tmp_path):
    from tdet.training.recipe import load_recipe

    on = DamoAugment.from_dict(load_recipe("damo-yolo-t", None).augment)
    assert on.sada == S.SadaConfig()
    assert DamoAugment.from_dict({"sada": None}).sada is None
    unknown = r"unknown DAMO-YOLO augment key sada.box_p; known: \['autoaug_params', 'box_prob'"
    with pytest.raises(UserError, match=unknown):
        DamoAugment.from_dict({"sada": {"box_p": 0.3}})
    with pytest.raises(UserError, match="augment.sada: a mapping"):
        DamoAugment.from_dict({"sada": 3})
    with pytest.raises(UserError, match="need 40 autoaug_params"):
        DamoAugment.from_dict({"sada": {"autoaug_params": [1, 2, 3]}})


def test_the_transform_applies_it_only_in_the_strong_epochs(tmp_path):
    from tdet.training.data.coco import CocoDetection

    ann, images = shapes_set(tmp_path / "data", 3, size=(160, 128))
    ds = CocoDetection(ann, images)
    base = {"mosaic": {"prob": 0.0}, "mixup": {"prob": 0.0}, "hflip": 0.0}
    cfg = {"box_prob": 1.0, "autoaug_params": [0, 0, 0, 0] + [5, 10, 9, 1, 10, 9] * 5 + [7, 5, 1, 3, 3, 3]}
    with_sada = DamoTrainTransform(ds, (128, 128), {**base, "sada": cfg})
    without = DamoTrainTransform(ds, (128, 128), {**base, "sada": None})
    changed = 0
    for seed in range(6):
        a = with_sada(0, np.random.default_rng(seed), True, 0.99)
        b = without(0, np.random.default_rng(seed), True, 0.99)
        changed += not np.array_equal(a.image, b.image)
        weak = with_sada(0, np.random.default_rng(seed), False, 0.99)
        assert np.array_equal(weak.image, without(0, np.random.default_rng(seed), False, 0.99).image)
    assert changed >= 4  # Brightness 1.72 and a rotation on every box, at 99% of its probability


def tdet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_a_run_saved_before_sada_resumes_without_it(tmp_path):
    ann, images = shapes_set(tmp_path / "data", 2, size=(96, 64))
    out = tmp_path / "run"
    res = tdet("train", "damo-yolo-t", "--data", str(ann), "--images", str(images), "--out", str(out), "--epochs",
               "1", "--batch", "2", "--img-size", "64", "--device", "cpu", "--workers", "0")
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["tdet"]["recipe"]["augment"]["sada"]["box_prob"] == 0.3  # the shipped recipe has it
    del ckpt["tdet"]["recipe"]["augment"]["sada"]  # as a run saved before it existed
    torch.save(ckpt, out / "last.pth")
    res = tdet("train", "damo-yolo-t", "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "was saved before the recipe had augment.sada: the run continues without it" in res.stdout, res.stdout
