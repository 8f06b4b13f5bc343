"""Issue 16 papercuts on the training side: AP in percent in printed text, integer epoch ticks in curves.png,
the dataset summary at start, the warmup warning, the no-weights note and the --weights help."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import shapes_set


def tdet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_short_train_run_prints_data_summary_percent_ap_warmup_and_weights_note(tmp_path):
    """One real step of damo-yolo-t on its shipped recipe (5 warmup epochs) for 1 epoch: every note is printed,
    AP in percent (two decimals) while log.csv and summary.json keep the fraction."""
    ann, images = shapes_set(tmp_path / "data", 2, size=(96, 64))
    out = tmp_path / "run"
    res = tdet("train", "damo-yolo-t", "--data", str(ann), "--images", str(images), "--val-data", str(ann),
               "--val-images", str(images), "--out", str(out), "--workers", "0", "--epochs", "1", "--batch", "2",
               "--img-size", "64", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    coco = json.loads(ann.read_text())
    boxes = len(coco["annotations"])
    assert f"data: train: 2 images (0 skipped, 0 without a box), {boxes} boxes" in res.stdout, res.stdout
    assert f"data: val: 2 images" in res.stdout
    cats = sorted(c["id"] for c in coco["categories"])
    assert f"{len(cats)} classes (label->category id: 0->{cats[0]} " in res.stdout
    # percent with two decimals, the same number as log.csv's fraction
    with open(out / "log.csv") as f:
        row = list(csv.DictReader(f))[-1]
    line = re.search(r"EMA model on val: AP (\d+\.\d\d)  AP50 (\d+\.\d\d)\n", res.stdout)
    assert line, res.stdout
    assert line.group(1) == f"{100 * float(row['AP']):.2f}" and line.group(2) == f"{100 * float(row['AP50']):.2f}"
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["best_ap"] <= 1.0  # machine-readable files keep fractions
    assert f"(AP {100 * summary['best_ap']:.2f})" in res.stdout
    # 1 epoch of 1 step inside a 5-epoch warmup: warned on stderr, naming the recipe's setting
    assert "ends inside the lr warmup" in res.stderr and "warmup_epochs: 5" in res.stderr, res.stderr
    assert "random initialisation" in res.stdout and "training/demo/damo-yolo-t.pth" in res.stdout
    assert "needs internet" in res.stdout


def test_dataset_summary_counts_clipped_skipped_and_empty(tmp_path):
    """The counts come from the loading pass: a box past the image edge is clipped, a zero-width box and an
    unknown category are skipped, an image whose only box was dropped is counted as empty."""
    from tdet.training.data.coco import CocoDetection

    ann, images = shapes_set(tmp_path / "data", 3, size=(96, 64))
    coco = json.loads(ann.read_text())
    anns = coco["annotations"]
    first, last = coco["images"][0]["id"], coco["images"][-1]["id"]
    kept = [a for a in anns if a["image_id"] != last]
    next_id = max(a["id"] for a in anns) + 1
    extra = [
        {"id": next_id, "image_id": first, "category_id": cats_id(coco), "bbox": [80, 40, 40, 40], "area": 1,
         "iscrowd": 0},  # clipped at 96x64
        {"id": next_id + 1, "image_id": first, "category_id": cats_id(coco), "bbox": [5, 5, 0, 10], "area": 0,
         "iscrowd": 0},  # degenerate
        {"id": next_id + 2, "image_id": last, "category_id": 999, "bbox": [5, 5, 10, 10], "area": 1,
         "iscrowd": 0},  # unknown category: the image is left without a box
    ]
    coco["annotations"] = kept
    ann.write_text(json.dumps(coco))
    base = CocoDetection(ann, images)  # the synthetic boxes may touch the edge themselves
    coco["annotations"] = kept + extra
    ann.write_text(json.dumps(coco))
    ds = CocoDetection(ann, images)
    line = ds.summary("train")
    assert ds.clipped == base.clipped + 1
    assert line.startswith(f"train: 3 images (0 skipped, 1 without a box), {len(kept) + 1} boxes "
                           f"({base.clipped + 1} clipped to the image, 2 skipped)"), line
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    assert f"0->{cats_id(coco)} {names[0]}" in line


def cats_id(coco: dict) -> int:
    return min(c["id"] for c in coco["categories"])


def test_curves_have_integer_epoch_ticks(tmp_path):
    """3 epochs would get 0.5-step ticks from matplotlib's default locator; every x tick is a whole epoch."""
    from matplotlib.ticker import MaxNLocator

    from tdet.training.engine.logger import RunLog

    log = RunLog(tmp_path)
    for e in (1, 2, 3):
        log.add({"epoch": e, "lr": 0.01 * e, "total": 3.0 - e, "loss_cls": 1.0 / e, "AP": 0.1 * e, "AP50": 0.2 * e},
                final=e == 3)
    assert (tmp_path / "curves.png").is_file()
    fig = log.figure()
    try:
        fig.canvas.draw()
        for ax in fig.axes:
            assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
            ticks = ax.get_xticks()
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks
        ap_axis = fig.axes[2]
        assert ap_axis.get_ylim() == (0.0, 100.0)  # AP plotted in percent, as printed
        assert max(ap_axis.lines[0].get_ydata()) == pytest.approx(30.0, rel=1e-9)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


@pytest.mark.parametrize("variant,field", [("damo-yolo-t", "warmup_epochs: 5"), ("rtdetrv2-s", "warmup_iters: 2000")])
def test_warmup_warning_in_epochs_and_iterations(variant, field):
    """The shipped recipes state the warmup in epochs (DAMO-YOLO) or iterations (RT-DETRv2): a run that ends
    before it gets a warning naming the setting; one that outlasts it gets none."""
    import dataclasses

    from tdet.training.engine.optim import LRSchedule
    from tdet.training.recipe import load_recipe, warmup_warning

    r = load_recipe(variant)
    steps_per_epoch = 100
    warmup = LRSchedule(r.schedule, base_lr=0.01, steps_per_epoch=steps_per_epoch, epochs=r.epochs,
                        no_aug_epochs=r.no_aug_epochs).warmup
    inside = warmup // steps_per_epoch  # whole epochs that end before the warmup does
    short = dataclasses.replace(r, epochs=max(1, inside - 1) if warmup % steps_per_epoch == 0 else max(1, inside))
    msg = warmup_warning(short, warmup, steps_per_epoch)
    assert msg and field in msg and f"{warmup} steps" in msg, msg
    assert warmup_warning(dataclasses.replace(r, epochs=inside + 1), warmup, steps_per_epoch) is None


def test_train_weights_help_says_default_is_random_init():
    res = tdet("train", "--help")
    text = " ".join(res.stdout.split())
    assert res.returncode == 0
    assert "official initialisation" not in text
    assert "random initialisation" in text and "needs internet" in text and "training/demo/damo-yolo-t.pth" in text
