"""training/data/sada.py vs the official DAMO-YOLO SADA (a reference run OUTSIDE the project, unmodified code):
the same random draws (a proxy feeding Python's `random` to our Generator calls), the same images and boxes.

    # the official files as a package (empty __init__s: the official damo/__init__ imports the whole trainer)
    git -C DAMO-YOLO show 319572e:damo/augmentations/...  ->  /tmp/damo_off/damo/augmentations/
                                                               (scale_aware_aug.py, box_level_augs/*.py)
    # torchvision's PIL affine (its C ops are not used; a CUDA wheel unpacked beside the CPU torch is enough)
    unzip torchvision-0.28.0-*.whl -d /tmp/tvsite
    .venv/bin/python bench/sada_parity.py --official /tmp/damo_off --torchvision /tmp/tvsite
Prints each colour op's largest difference alone, then over every colour x geometric op pair: the largest
and mean pixel difference (0..255; the official keeps floats, we round) and the largest box difference.
"""
import argparse
import random
import sys
import types
from types import SimpleNamespace

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--official", default="/tmp/damo_off", help="folder holding the official damo/augmentations package")
ap.add_argument("--torchvision", default="/tmp/tvsite", help="folder holding torchvision (its PIL path)")
ap.add_argument("--seeds", type=int, default=40, help="scenes per op pair")
args = ap.parse_args()
sys.modules['torchvision._meta_registrations'] = types.ModuleType('x')  # its C ops are not needed (PIL path)
sys.path[:0] = [args.official, args.torchvision]
import warnings  # noqa: E402

warnings.filterwarnings("ignore")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from damo.augmentations.box_level_augs import color_augs as OC  # noqa: E402
from damo.augmentations.scale_aware_aug import SA_Aug  # noqa: E402

from tdet.training.data import sada as S  # noqa: E402


class PyRandom:
    def random(self):
        return random.random()

    def integers(self, n):
        return random._inst._randbelow(n)  # random.choice's draw


class Target:
    def __init__(self, boxes, labels):
        self.bbox = torch.tensor(boxes, dtype=torch.float32)
        self.extra_fields = {"labels": torch.tensor(labels, dtype=torch.int64)}


def to_official(img):  # RGB HWC uint8 -> BGR CHW float 0..255
    return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1))).float()


def from_official(t):  # BGR CHW float 0..255 -> RGB HWC float
    return t.numpy().transpose(1, 2, 0)[..., ::-1]


def scene(seed, h=320, w=416):
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.clip(img.astype(int) // 3 + np.linspace(0, 160, w)[None, :, None], 0, 255)
                               .astype(np.uint8))
    n = int(rng.integers(1, 7))
    x1 = rng.uniform(0, w - 20, n)
    y1 = rng.uniform(0, h - 20, n)
    bw = rng.uniform(4, 200, n)
    bh = rng.uniform(4, 160, n)
    boxes = np.stack([x1, y1, np.minimum(x1 + bw, w), np.minimum(y1 + bh, h)], 1).astype(np.float32)
    return img, boxes, rng.integers(0, 5, n).astype(np.int64)


def official_colour(name, level, x):
    f = level / 10 * 1.8 + 0.1
    if name == "AutoContrast":
        return OC.autocontrast(x)
    if name == "Equalize":
        return OC.equalize(x)
    if name == "SolarizeAdd":
        return OC.solarize_add(x, level / 10 * 0.4296875)
    ops = {"Color": OC.color, "Contrast": OC.contrast, "Brightness": OC.brightness, "Sharpness": OC.sharpness}
    return ops[name](x, f)


# 1. each colour op alone on the whole image
worst = {}
rng = np.random.default_rng(0)
img = (rng.random((64, 80, 3)) * 255).astype(np.uint8)
x_t = to_official(img) / 255.0
x_n = img.astype(np.float32) / 255
for name, level in [("AutoContrast", 3), ("Equalize", 3), ("SolarizeAdd", 2), ("SolarizeAdd", 9), ("Color", 2),
                    ("Color", 8), ("Contrast", 4), ("Contrast", 9), ("Brightness", 4), ("Brightness", 9),
                    ("Sharpness", 2), ("Sharpness", 9)]:
    off = official_colour(name, level, x_t.clone())
    ours = S.COLOR_OPS[name](x_n.copy(), level)
    d = np.abs(from_official(off) - ours).max()
    worst[f"{name}{level}"] = float(d)
print("colour ops, max abs diff on [0,1]:", {k: f"{v:.2e}" for k, v in worst.items()})

# 2. the whole SADA step, every colour op x every geometric op, --seeds scenes each
stats = {"cases": 0, "applied": 0, "max_px": 0, "mean_px": [], "box_diff": 0.0, "boxes_added": 0}
for ci in range(len(S.COLOR_OPS)):
    for gi in range(len(S.GEOMETRIC_OPS)):
        for seed in range(args.seeds):
            level_c, level_g = 1 + (seed % 9), 1 + ((seed * 7) % 9)
            params = [0, 0, 0, 0, ci, 10, level_c, gi, 10, level_g, 7, 5, 1, 3, 3, 3]
            cfg = SimpleNamespace(autoaug_params=params, num_subpolicies=1, scale_splits=[2048, 10240, 51200],
                                  box_prob=0.9)
            sa = SA_Aug(iters_per_epoch=10, start_epoch=0, total_epochs=2, no_aug_epochs=1, batch_size=1, num_gpus=1,
                        num_workers=1, sada_cfg=cfg)
            img, boxes, labels = scene(1000 * ci + 100 * gi + seed)
            progress = 0.5 + 0.5 * (seed % 2)
            random.seed(seed)
            tgt = Target(boxes.tolist(), labels.tolist())
            out_t, tgt = sa.box_augs(to_official(img), tgt, iteration=progress * sa.max_iters)
            random.seed(seed)
            ours = S.Sada(S.SadaConfig(box_prob=0.9, num_subpolicies=1, autoaug_params=tuple(params)))
            o_img, o_boxes, o_labels = ours(img, boxes.copy(), labels.copy(), progress, PyRandom())
            ref = np.clip(np.rint(from_official(out_t)), 0, 255)
            d = np.abs(ref - o_img.astype(np.float64))
            stats["cases"] += 1
            stats["applied"] += int(not np.array_equal(o_img, img))
            stats["max_px"] = max(stats["max_px"], float(d.max()))
            stats["mean_px"].append(float(d.mean()))
            ref_boxes = tgt.bbox.numpy().copy()
            h, w = img.shape[:2]
            ref_boxes[:, 0::2] = ref_boxes[:, 0::2].clip(0, w)
            ref_boxes[:, 1::2] = ref_boxes[:, 1::2].clip(0, h)
            assert ref_boxes.shape == o_boxes.shape, (ci, gi, seed, ref_boxes.shape, o_boxes.shape)
            assert np.array_equal(tgt.extra_fields["labels"].numpy(), o_labels), (ci, gi, seed)
            stats["box_diff"] = max(stats["box_diff"], float(np.abs(ref_boxes - o_boxes).max()))
            stats["boxes_added"] += len(o_boxes) - len(boxes)
            if d.max() > 1:
                print("case", list(S.COLOR_OPS)[ci], S.GEOMETRIC_OPS[gi], seed, "max", d.max(), "n>1",
                      int((d > 1).sum()))
print({k: (np.mean(v) if isinstance(v, list) else v) for k, v in stats.items()})
