"""`tdet train` on the shared engine with the DAMO-YOLO recipe: real images, real optimizer steps, real
checkpoints. CI-sized: a few synthetic images at 96-192 px, tens of steps."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import shapes_set

from tdet.client.labels import COCO_CATEGORY_IDS

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"


def tdet(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True, **kw)


def recipe(tmp: Path, base: str, text: str) -> Path:
    path = tmp / f"{base}.test.yaml"
    path.write_text(f"base: {RECIPES / (base + '.yaml')}\n{text}")
    return path


def train_args(variant: str, ann: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["train", variant, "--data", str(ann), "--images", str(images), "--out", str(out), "--workers", "0", *extra]


def state_tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """Everything a resumed run must have reproduced: raw weights, EMA weights, optimizer state."""
    from tdet.training.engine.checkpoint import split_checkpoint

    raw, ema, _ = split_checkpoint(ckpt)
    out = {f"raw.{k}": v for k, v in raw.items()}
    out.update({f"ema.{k}": v for k, v in ema["module"].items()})
    for pid, st in ckpt["optimizer"]["state"].items():
        out.update({f"opt.{pid}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


def repeated(ann: Path, times: int) -> Path:
    """The same images listed `times` times (new image/annotation ids, the same files): a few images, but
    epochs of many steps, so per-epoch work (checkpoint, log) does not dominate a short run."""
    coco = json.loads(ann.read_text())
    images, anns = [], []
    for t in range(times):
        remap = {im["id"]: t * 1000 + im["id"] for im in coco["images"]}
        images += [dict(im, id=remap[im["id"]]) for im in coco["images"]]
        anns += [dict(a, id=t * 100000 + a["id"], image_id=remap[a["image_id"]]) for a in coco["annotations"]]
    out = ann.with_name(f"repeated{times}.json")
    out.write_text(json.dumps(dict(coco, images=images, annotations=anns)))
    return out


# no strong augmentation: the test is the loop, not the recipe's convergence speed
OVERFIT = {
    # 150 AdamW steps: after ~100 the BN running statistics (momentum 0.03) have caught up with the weights
    "damo-yolo-t": (10, "optimizer: {name: AdamW, lr: 0.001, lr_per_image: null, weight_decay: 0.0}\n"
                        "augment: {mosaic: {prob: 0.0}, mixup: {prob: 0.0}, hflip: 0.0}\n"
                        "schedule: {warmup_epochs: 0.1}\nno_aug_epochs: 0\n"),
    # 90 steps of the official AdamW at 2x its lr, a 10-step warmup instead of 2000
    "rtdetrv2-s": (6, "optimizer: {lr: 0.0002}\nschedule: {warmup_iters: 10}\nno_aug_epochs: 0\n"
                      "augment: {photometric: {p: 0.0}, zoom_out: {p: 0.0}, iou_crop: {p: 0.0}, hflip: 0.0}\n"),
}


@pytest.mark.parametrize("variant", sorted(OVERFIT))
def test_trainer_overfits_a_few_images(variant, tmp_path):
    """2 images (listed 15 times, so an epoch is 15 steps): the loss falls to under half its peak (DAMO-YOLO's
    QFL and score-weighted box terms start near zero from the 0.01 class prior and rise while the scores grow
    before they fall; RT-DETRv2's fall from the start), and the EMA model's AP50 on those images rises from
    about 0 to well above it."""
    from tdet.training.data.coco import CocoDetection
    from tdet.training.data.loader import build_val_loader
    from tdet.training.engine.evaluator import evaluate
    from tdet.training.engine.trainer import TrainArgs, Trainer
    from tdet.training.registry import family_of

    epochs, text = OVERFIT[variant]
    ann, images = shapes_set(tmp_path / "data", 2)
    args = TrainArgs(variant, str(repeated(ann, 15)), str(images), out=str(tmp_path / "run"), val_data=str(ann),
                     val_images=str(images), recipe=str(recipe(tmp_path, variant, text)), epochs=epochs, batch=2,
                     img_size=128, workers=0, eval_every=0)
    fam = family_of(variant)
    ds = CocoDetection(ann, images)
    untrained = fam.build_model(variant, init="train", num_classes=6, input_hw=(128, 128))
    before = evaluate(untrained, fam.FAMILY, build_val_loader(ds, fam.FAMILY, (128, 128), 2, 0),
                      ds.coco, ds.category_ids, (128, 128), {"conf": 0.05, "iou": 0.7, "max_det": 100})
    summary = Trainer(args).fit()
    with open(tmp_path / "run/log.csv") as f:
        rows = list(csv.DictReader(f))
    totals = [float(r["total"]) for r in rows]
    assert len(rows) == epochs and summary["steps"] == 15 * epochs
    assert totals[-1] < 0.5 * max(totals), totals
    after = float(rows[-1]["AP50"])
    assert before["AP50"] < 0.1 and after > 0.5, (before["AP50"], after)
    for name in ("last.pth", "best.pth", "config.yaml", "curves.png", "summary.json"):
        assert (tmp_path / "run" / name).is_file(), name


@pytest.mark.parametrize("variant,how", [("damo-yolo-t", "SIGTERM to the group"), ("rtdetrv2-s", "SIGINT")])
def test_resume_after_an_interruption_equals_the_uninterrupted_run(variant, how, tmp_path):
    """Ctrl-C saves last.pth at an optimizer-step boundary; --resume then continues to exactly the weights,
    EMA and optimizer state of a run that was never stopped (the same data order and augmentations, and for
    RT-DETRv2 the same denoising noise: the torch RNG state is part of the checkpoint). SIGTERM to the whole
    process group (systemd, SLURM, `kill -- -PGID`) reaches the loader workers too: the run still stops
    cleanly, and a run with a loader worker computes exactly what one without computes."""
    import os

    ann, images = shapes_set(tmp_path / "data", 4, size=(160, 128))
    common = ("--epochs", "6", "--batch", "2", "--img-size", "128", "--eval-every", "0", "--seed", "5")
    full = tdet(*train_args(variant, ann, images, tmp_path / "full", *common), timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]

    run = tmp_path / "cut"
    group = how.startswith("SIGTERM")
    workers = ("--workers", "1") if group else ()
    proc = subprocess.Popen([sys.executable, "-m", "tdet.client.cli",
                             *train_args(variant, ann, images, run, *common, *workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=group)
    deadline = time.monotonic() + 300
    while not (run / "log.csv").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first epoch is done: stop somewhere in the second
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output[-2000:]
    assert "interrupted at epoch" in output and "--resume" in output
    cut = torch.load(run / "last.pth", weights_only=True)["train_state"]
    assert 2 <= cut["step"] < 12  # stopped after epoch 1, before the end
    resumed = tdet(*train_args(variant, ann, images, run, *common), "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = torch.load(tmp_path / "full/last.pth", weights_only=True)
    b = torch.load(run / "last.pth", weights_only=True)
    assert a["train_state"]["step"] == b["train_state"]["step"] == 12
    ta, tb = state_tensors(a), state_tensors(b)
    assert ta.keys() == tb.keys() and len(ta) > 500
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, differ[:5]


@pytest.mark.parametrize("variant", ["damo-yolo-t", "rtdetrv2-s"])
def test_two_process_ddp_keeps_the_ranks_weights_identical(variant, tmp_path):
    """gloo DDP on CPU with 3 of the 4 images empty: in one step a rank holds an image without boxes while the
    other has boxes, in the other both ranks are empty; no rank hangs and the weights stay bit-identical."""
    ann, images = shapes_set(tmp_path / "data", 4, size=(160, 128))
    coco = json.loads(ann.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] == 1]  # images 2-4 become negatives
    ann.write_text(json.dumps(coco))
    out = tdet(*train_args(variant, ann, images, tmp_path / "run", "--epochs", "1", "--batch", "1", "--img-size",
                           "128", "--nproc", "2"), timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["world"] == 2 and summary["steps"] == 2  # 4 images, 1 per rank per step
    digests = summary["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    row = _last_row(tmp_path / "run")
    assert all(np.isfinite(float(v)) for k, v in row.items() if k.startswith("loss") or k == "total"), row


def _last_row(run: Path) -> dict[str, str]:
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))[-1]


def test_fine_tuning_to_three_classes_loads_all_but_the_class_branch(tmp_path):
    from tdet.training.engine.checkpoint import load_pretrained
    from tdet.training.registry import family_of

    fam = family_of("damo-yolo-t")
    source = fam.build_model("damo-yolo-t", init="tame", seed=3)  # an 80-class COCO model
    torch.save({"model": source.state_dict()}, tmp_path / "coco80.pth")  # the official release layout
    model = fam.build_model("damo-yolo-t", init="train", seed=0, num_classes=3)
    skipped = load_pretrained(model, fam, tmp_path / "coco80.pth", num_classes=3, category_ids=[7, 12, 40])
    assert skipped == sorted(k for k in source.state_dict() if k.startswith("head.gfl_cls."))
    got, src = model.state_dict(), source.state_dict()
    for k, v in got.items():
        if k.startswith("head.gfl_cls."):
            assert v.shape[0] == 3
        else:
            assert torch.equal(v, src[k]), k
    for conv in model.head.gfl_cls:  # re-initialised with the 0.01 prior
        assert torch.allclose(conv.bias, torch.full_like(conv.bias, -float(np.log(99))), rtol=1e-6)
    # the same classes in the same order: nothing is skipped
    assert load_pretrained(source, fam, tmp_path / "coco80.pth", num_classes=80,
                           category_ids=list(COCO_CATEGORY_IDS)) == []


def test_train_refuses_an_out_folder_holding_a_run_without_resume(tmp_path):
    """An interrupted run's last.pth is never overwritten by a new `tdet train` into the same folder."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"an interrupted run")
    res = tdet(*train_args("damo-yolo-t", tmp_path / "a.json", tmp_path / "images", out), timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "already holds a run (last.pth)" in res.stderr and "--resume" in res.stderr and "--exist-ok" in res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "last.pth").read_bytes() == b"an interrupted run"
