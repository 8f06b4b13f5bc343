"""`tdet train --backbone-weights`: RT-DETRv2 starts from ImageNet-pretrained PResNet-vd weights as the official
recipe does (`PResNet(pretrained=True)`). The official files cannot be downloaded here, so the files are made in
their layout (the backbone's own state dict, with or without BatchNorm's num_batches_tracked) and loaded by the
real loader; the refusals (DAMO-YOLO, with --weights, another depth) and a resume without the file are run."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from synthetic import shapes_set

from tdet.client.errors import UserError
from tdet.training.models import rtdetrv2 as R
from tdet.training.models.rtdetrv2.backbone import PResNet


def tdet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True)


def _pretrained(depth: int, freeze_norm: bool, seed: int, *, batches_tracked: bool) -> dict[str, torch.Tensor]:
    """A backbone state dict in the official file's layout, with weights no fresh build has."""
    torch.manual_seed(seed)
    net = PResNet(depth, freeze_norm=freeze_norm)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    if batches_tracked:  # a file saved from BatchNorm2d layers; FrozenBatchNorm2d has no such buffer
        names = {k.rsplit(".", 1)[0] for k in sd if k.endswith(".running_mean")}
        sd.update({f"{n}.num_batches_tracked": torch.tensor(7) for n in names})
    else:
        sd = {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}
    return sd


@pytest.mark.parametrize("depth, frozen, tracked", [(18, False, False), (18, False, True), (50, True, True)])
def test_an_official_layout_file_loads_into_the_backbone_exactly(depth, frozen, tracked, tmp_path):
    sd = _pretrained(depth, frozen, seed=3, batches_tracked=tracked)
    torch.save(sd, tmp_path / "backbone.pth")
    model = SimpleNamespace(backbone=PResNet(depth, freeze_norm=frozen, freeze_at=0 if frozen else -1))
    R.load_backbone(model, tmp_path / "backbone.pth")
    got = model.backbone.state_dict()
    for k, v in got.items():
        if k.endswith(".num_batches_tracked"):
            continue
        assert torch.equal(v, sd[k]), k  # a copy, bit for bit


def test_the_backbone_of_a_detector_checkpoint_and_a_wrong_depth(tmp_path):
    detector = R.build_model("rtdetrv2-s", seed=4, num_classes=3, init="train")
    torch.save({"ema": {"module": detector.state_dict(), "updates": 1}}, tmp_path / "detector.pth")
    model = R.build_model("rtdetrv2-s", seed=0, num_classes=5, init="train")
    R.load_backbone(model, tmp_path / "detector.pth")
    want = detector.backbone.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(model.encoder.input_proj[0].conv.weight, detector.encoder.input_proj[0].conv.weight)

    torch.save(_pretrained(34, False, seed=1, batches_tracked=False), tmp_path / "r34.pth")
    with pytest.raises(UserError, match=r"does not match this PResNet-18 backbone: .* missing .*unexpected"):
        R.load_backbone(model, tmp_path / "r34.pth")
    torch.save({"model": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(UserError, match="list.pth: checkpoint has no state dict"):
        R.load_backbone(model, tmp_path / "list.pth")


def test_every_variant_names_the_official_backbone_of_its_depth():
    assert R.BACKBONE_WEIGHTS["rtdetrv2-s"].url.endswith("/v0.1/ResNet18_vd_pretrained_from_paddle.pth")
    assert R.BACKBONE_WEIGHTS["rtdetrv2-m34-dsp"].filename == "ResNet34_vd_pretrained_from_paddle.pth"
    assert R.BACKBONE_WEIGHTS["rtdetrv2-l"].filename == "ResNet50_vd_ssld_v2_pretrained_from_paddle.pth"
    assert R.BACKBONE_WEIGHTS["rtdetrv2-x"].filename == "ResNet101_vd_ssld_pretrained_from_paddle.pth"
    assert set(R.BACKBONE_WEIGHTS) == set(R.VARIANTS)


@pytest.mark.parametrize("variant, extra, said", [
    ("damo-yolo-t", (), "trains its backbone from scratch"),
    ("rtdetrv2-s", ("--weights", "x.pth"), "--backbone-weights with --weights"),
])
def test_refused_before_anything_is_read(variant, extra, said, tmp_path, capsys):
    from tdet.client.cli import main

    out = tmp_path / "run"
    assert main(["train", variant, "--data", str(tmp_path / "a.json"), "--images", str(tmp_path), "--out", str(out),
                 "--backbone-weights", "official", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.slow
def test_a_run_starts_from_the_file_and_resumes_without_it(tmp_path):
    """Two real steps of rtdetrv2-s at 128 px with the backbone lr scaled to almost nothing: the run's backbone
    convolutions are the file's; then the file is removed and --resume still runs (it restores every weight)."""
    ann, images = shapes_set(tmp_path / "data", 4, size=(96, 64))
    sd = _pretrained(18, False, seed=5, batches_tracked=True)
    torch.save(sd, tmp_path / "r18.pth")
    out = tmp_path / "run"
    res = tdet("train", "rtdetrv2-s", "--data", str(ann), "--images", str(images), "--out", str(out),
               "--backbone-weights", str(tmp_path / "r18.pth"), "--epochs", "1", "--batch", "2", "--img-size", "128",
               "--workers", "0", "--device", "cpu", "--lr-scale", "1e-9")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"weights: the backbone from {tmp_path / 'r18.pth'}" in res.stdout, res.stdout
    ckpt = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["tdet"]["args"]["backbone_weights"] == str(tmp_path / "r18.pth")
    for k, v in ckpt["model"].items():
        name = k.removeprefix("backbone.")
        if k.startswith("backbone.") and name.endswith("conv.weight"):
            # AdamW steps of lr ~1e-14 move nothing at this magnitude (weight decay included)
            torch.testing.assert_close(v, sd[name], rtol=1e-6, atol=1e-6)
    (tmp_path / "r18.pth").unlink()
    res = tdet("train", "rtdetrv2-s", "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from the checkpoint {out / 'last.pth'}" in res.stdout
