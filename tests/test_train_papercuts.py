"""Issue 16 papercuts on the training side: AP in percent in printed text, integer epoch ticks in curves.png,
the dataset summary at start, the warmup warning, the no-weights note and the --weights help."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

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
    assert "data: val: 2 images" in res.stdout
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


# ---------------------------------------------------------------- run folders, resume checks, data errors
SMALL = ("--epochs", "1", "--batch", "2", "--img-size", "64", "--device", "cpu")


def train(ann, images, out, *extra: str) -> subprocess.CompletedProcess:
    return tdet("train", "damo-yolo-t", "--data", str(ann), "--images", str(images), "--out", str(out), *SMALL,
                *extra)


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_exist_ok_run_inherits_nothing_from_the_older_run(tmp_path):
    """A new run (--exist-ok) in a folder holding an older one: the older best.pth, log rows and curves are gone,
    the final line claims no best.pth it did not write and prints no -100.00."""
    a_ann, a_images = shapes_set(tmp_path / "a", 4, size=(96, 64))
    b_ann, b_images = shapes_set(tmp_path / "b", 6, seed=5, size=(96, 64))
    out = tmp_path / "run"
    old = train(a_ann, a_images, out, "--workers", "0", "--epochs", "2", "--val-data", str(a_ann),
                "--val-images", str(a_images))
    assert old.returncode == 0, old.stderr[-3000:]
    assert (out / "best.pth").is_file() and len(_rows(out / "log.csv")) == 2
    res = train(b_ann, b_images, out, "--workers", "0", "--exist-ok")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "removed the previous run's last.pth, best.pth, log.csv, curves.png, summary.json" in res.stdout
    assert not (out / "best.pth").exists()
    rows = _rows(out / "log.csv")
    assert [r["epoch"] for r in rows] == ["1"] and "AP" not in rows[0], rows
    done = res.stdout.strip().splitlines()[-1]
    assert done.startswith(f"done: last {out / 'last.pth'}") and "best.pth (AP" not in done, done
    assert "-100.00" not in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] is None and summary["best_ap"] is None
    import torch

    assert torch.load(out / "last.pth", weights_only=False)["tdet"]["args"]["data"] == str(b_ann)


@pytest.mark.slow
def test_resume_refuses_an_edited_recipe_and_says_it_resumes(tmp_path):
    """--recipe my.yaml with `base: damo-yolo-t.yaml` (a shipped name, not a file next to it) trains; editing
    my.yaml and resuming is refused (exit 2, naming the keys, nothing written); the unedited file resumes."""
    ann, images = shapes_set(tmp_path / "data", 4, size=(96, 64))
    my = tmp_path / "my.yaml"
    my.write_text("base: damo-yolo-t.yaml\nschedule: {warmup_epochs: 0.5}\n")
    out = tmp_path / "run"
    res = train(ann, images, out, "--workers", "0", "--recipe", str(my))
    assert res.returncode == 0, res.stderr[-3000:]
    before = {n: (out / n).read_bytes() for n in ("config.yaml", "last.pth", "log.csv")}
    my.write_text("base: damo-yolo-t.yaml\nschedule: {warmup_epochs: 0.7}\nema: {decay: 0.5}\n")
    res = tdet("train", "damo-yolo-t", "--out", str(out), "--resume")
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "schedule.warmup_epochs" in err and "ema.decay" in err and "saved 0.5, now 0.7" in err, err
    assert {n: (out / n).read_bytes() for n in before} == before
    my.write_text("base: damo-yolo-t.yaml\nschedule: {warmup_epochs: 0.5}\n")
    res = tdet("train", "damo-yolo-t", "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "random initialisation" not in res.stdout
    assert f"resuming from the checkpoint {out / 'last.pth'}" in res.stdout


def test_recipe_base_not_found_missing_resume_and_refused_run_leave_no_folder(tmp_path):
    ann, images = shapes_set(tmp_path / "data", 4, size=(96, 64))
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: nope.yaml\n")
    res = train(ann, images, tmp_path / "r1", "--workers", "0", "--recipe", str(bad))
    assert res.returncode == 2 and "Errno" not in res.stderr, res.stderr
    assert f"base 'nope.yaml' is not a file: looked for {tmp_path / 'nope.yaml'}" in res.stderr, res.stderr
    res = train(ann, images, tmp_path / "r2", "--workers", "0", "--resume")
    assert res.returncode == 2 and f"resume checkpoint not found: {tmp_path / 'r2' / 'last.pth'}" in res.stderr
    res = train(ann, images, tmp_path / "r3", "--workers", "0", "--batch", "64")
    assert res.returncode == 2 and "no full batch" in res.stderr, res.stderr
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


@pytest.mark.slow
def test_corrupt_image_in_a_loader_worker_is_one_line_and_the_run_resumes(tmp_path):
    """A truncated JPEG met by a DataLoader worker (--workers 2) in the 2nd batch: one clean line (exit 2),
    last.pth saved at the finished step; with the file restored, --resume ends bit-identical to a clean run."""
    import torch

    from tdet.training.data.coco import CocoDetection
    from tdet.training.data.loader import TrainSampler
    from tdet.training.engine.checkpoint import split_checkpoint

    ann, images = shapes_set(tmp_path / "data", 6, size=(96, 64))
    recipe = tmp_path / "nomosaic.yaml"  # one image per sample: the 2nd batch's images are known
    recipe.write_text("base: damo-yolo-t.yaml\naugment: {mosaic: {prob: 0.0}, mixup: {prob: 0.0}}\n")
    clean = train(ann, images, tmp_path / "clean", "--workers", "2", "--recipe", str(recipe))
    assert clean.returncode == 0, clean.stderr[-3000:]
    ds = CocoDetection(ann, images)
    sampler = TrainSampler(len(ds), 2, 0)
    sampler.set_epoch(0)
    second = [k.index for k in list(sampler)[1]]
    victim = ds.path(second[0])
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    out = tmp_path / "run"
    res = train(ann, images, out, "--workers", "2", "--recipe", str(recipe))
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith(f"tdet train: error: {victim}: ") and "truncated" in err, res.stderr
    assert "Caught" not in res.stderr and "Traceback" not in res.stderr and "worker" not in res.stderr
    assert f"saved {out / 'last.pth'} at epoch 1, batch 1" in err and "--resume" in err, err
    assert torch.load(out / "last.pth", weights_only=False)["train_state"]["step"] == 1
    victim.write_bytes(good)
    res = tdet("train", "damo-yolo-t", "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]

    def tensors(path):
        raw, ema, _ = split_checkpoint(torch.load(path, weights_only=False))
        return {**{f"raw.{k}": v for k, v in raw.items()}, **{f"ema.{k}": v for k, v in ema["module"].items()}}

    a, b = tensors(tmp_path / "clean" / "last.pth"), tensors(out / "last.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags, said", [
    (["--lr-scale", "0"], "--lr-scale multiplies the learning rates: it must be > 0, got 0"),
    (["--lr-scale", "-1"], "it must be > 0, got -1"),
    (["--grad-clip", "-1"], "--grad-clip is a max gradient norm (0: none), got -1"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--seed", str(2 ** 32)], "--seed must be below 2**32"),
    (["--eval-every", "-1"], "--eval-every must be >= 0, got -1"),
    (["--batch", "4", "--nominal-batch", "2"], "--nominal-batch 2 is below one step's 4 x 1 process(es)"),
    (["--nproc", "100000"], "--nproc 100000: this machine has"),
])
def test_bad_train_values_are_one_line_and_an_old_run_survives_exist_ok(flags, said, tmp_path, capsys):
    """Values no run can use are refused before anything is read or written (they were tracebacks: a
    ZeroDivisionError for --lr-scale 0, numpy's seed error, torch's ProcessExitedException), so --exist-ok
    has not yet removed the older run."""
    from tdet.client.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"the older run")
    rc = main(["train", "damo-yolo-t", "--data", str(tmp_path / "a.json"), "--images", str(tmp_path), "--out",
               str(out), "--exist-ok", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and said in err and "\n" not in err and "Traceback" not in err, err
    assert (out / "last.pth").read_bytes() == b"the older run"


def test_a_ranks_user_error_under_nproc_is_its_one_line(tmp_path):
    """A dataset too small for 2 ranks is found inside each rank: the parent prints that rank's line (exit 2),
    not torch's ProcessRaisedException traceback as an internal error."""
    ann, images = shapes_set(tmp_path / "data", 4, size=(96, 64))
    res = train(ann, images, tmp_path / "run", "--workers", "0", "--batch", "4", "--nproc", "2")
    assert res.returncode == 2, res.stderr[-3000:]
    assert "tdet train: error: 4 images give no full batch of 4 per rank on 2 rank(s)" in res.stderr, res.stderr
    assert "internal error" not in res.stderr and "ProcessRaisedException" not in res.stderr
