"""DAMO-YOLO: official key set loads strictly, RepConv fusion is exact, ONNX export matches PyTorch,
params/GFLOPs match the published deploy-form figures, reference postprocess agrees with numpy."""

import numpy as np
import official_checkpoints as checkpoints
import onnx
import pytest
import torch
from matching import assert_same_detections

from tdet.ensembles.ort_session import ort_session
from tdet.training.export import export_onnx
from tdet.training.info import count_gflops
from tdet.training.models import damo_yolo as D
from tdet.training.models.damo_yolo.postprocess import nms
from tdet.training.models.damo_yolo.postprocess import postprocess as torch_postprocess

ALL = ["damo-yolo-t", "damo-yolo-s", "damo-yolo-m", "damo-yolo-l"]
PUBLISHED = {"damo-yolo-t": (8.48, 18.1), "damo-yolo-s": (16.25, 37.8), "damo-yolo-m": (28.18, 61.9),
             "damo-yolo-l": (42.06, 97.5)}
SIZE = 640  # the input size: box tolerances are fractions of it (a float32 step at 900 px is 6e-5 px)

pytestmark = pytest.mark.usefixtures("no_grad")  # inference only, per test


def official_keys(name: str) -> dict[str, list[int]]:
    return checkpoints.official_keys(f"damo_yolo_{name.split('-')[-1]}")


def random_official_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the official names and shapes (as a release file would hold)."""
    return checkpoints.random_state_dict(f"damo_yolo_{name.split('-')[-1]}", seed,
                                         {"integral.project": lambda shape: torch.linspace(0, 16, 17)})


def images(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 1, 1, generator=gen).expand(batch, 3, 640, 640).clone() * 255
    for b in range(batch):
        for _ in range(6):
            x0, y0, w, h = (torch.rand(4, generator=gen) * 300).long().tolist()
            x[b, :, y0:y0 + h + 20, x0:x0 + w + 20] = torch.rand(3, 1, 1, generator=gen) * 255
    return x


@pytest.mark.parametrize("name", ALL)
def test_model_has_the_official_state_dict(name):
    model = D.DamoYolo(D.VARIANTS[name])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_keys(name)


@pytest.mark.parametrize("name", ALL)
def test_official_checkpoint_loads_strictly(name, tmp_path):
    sd = random_official_state_dict(name)
    torch.save({"epoch": 300, "model": sd, "optimizer": {}}, tmp_path / "release.pth")
    model = D.build_model(name, weights=tmp_path / "release.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_bare_ddp_and_legacy_checkpoints_load(tmp_path):
    name = "damo-yolo-t"
    sd = random_official_state_dict(name, seed=1)
    torch.save(sd, tmp_path / "bare.pth")
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    legacy = dict(sd)
    for i in range(3):  # pre-v0.3.0 heads: 81 classifier channels, the last one unused
        legacy[f"head.gfl_cls.{i}.weight"] = torch.cat([sd[f"head.gfl_cls.{i}.weight"],
                                                        torch.ones_like(sd[f"head.gfl_cls.{i}.weight"][:1])])
        legacy[f"head.gfl_cls.{i}.bias"] = torch.cat([sd[f"head.gfl_cls.{i}.bias"], torch.ones(1)])
    torch.save({"model": legacy}, tmp_path / "legacy.pth")
    for f in ("bare.pth", "ddp.pth", "legacy.pth"):
        model = D.build_model(name, weights=tmp_path / f)
        assert torch.equal(model.state_dict()["head.gfl_cls.0.weight"], sd["head.gfl_cls.0.weight"]), f


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"model": random_official_state_dict("damo-yolo-s")}, tmp_path / "s.pth")
    with pytest.raises(ValueError, match="does not match this DAMO-YOLO variant"):
        D.build_model("damo-yolo-t", weights=tmp_path / "s.pth")


@pytest.mark.parametrize("name", ["damo-yolo-t", "damo-yolo-m"])
def test_fused_equals_unfused(name):
    model = D.build_model(name, seed=3).eval()
    wrapper = D.export_module(model)
    x = images(2)
    s0, b0 = wrapper(x)
    model.fuse()
    assert not any("rbr_dense" in k for k in model.state_dict())
    s1, b1 = wrapper(x)
    # fusion reorders the arithmetic: equal to float precision (measured here: 3e-6 / 5e-4 px)
    assert (s0 - s1).abs().max() <= 1e-4  # sigmoid probabilities
    assert (b0 - b1).abs().max() <= 2e-5 * SIZE
    assert (s1 > 0.05).sum() > 0  # the tame init produces detections


@pytest.mark.parametrize("name", ["damo-yolo-t", pytest.param("damo-yolo-l", marks=pytest.mark.slow)])
def test_onnx_runtime_matches_pytorch_at_batch_1_and_3(name, tmp_path):
    res = export_onnx(name, tmp_path / f"{name}.onnx", seed=2)
    graph = onnx.load(res.path)
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["scores", "boxes"]
    assert graph.opset_import[0].version >= 17
    assert not [n for n in graph.graph.node if "NonMaxSuppression" in n.op_type]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["tdet.family"] == "damo-yolo" and meta["tdet.variant"] == name
    sess = ort_session(res.path)
    model = D.export_module(D.build_model(name, deploy=True, seed=2).eval())
    for batch in (1, 3):
        x = images(batch, seed=batch)
        scores, boxes = sess.run(["scores", "boxes"], {"images": x.numpy()})
        ref_s, ref_b = model(x)
        assert scores.shape == (batch, 8400, 80) and boxes.shape == (batch, 8400, 4)
        # two engines, same graph: equal to float precision, relative to the magnitudes (measured here for
        # damo-yolo-l: scores 4e-6, boxes 8e-4 px on ~900 px coordinates, i.e. 1e-6 relative)
        assert np.abs(scores - ref_s.numpy()).max() <= 1e-4  # sigmoid probabilities
        assert np.abs(boxes - ref_b.numpy()).max() <= 2e-5 * SIZE


@pytest.mark.parametrize("name", ALL)
def test_params_and_gflops_match_published(name):
    model = D.DamoYolo(D.VARIANTS[name]).eval().fuse()  # deploy form; the weights' values don't matter here
    params_m = D.num_params(model) / 1e6
    gflops = count_gflops(model, (640, 640))
    want_p, want_g = PUBLISHED[name]
    assert abs(params_m - want_p) / want_p < 0.01, params_m
    assert abs(gflops - want_g) / want_g < 0.01, gflops


def test_export_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="must end in .onnx"):
        export_onnx("damo-yolo-t", tmp_path / "model.txt")
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx("damo-yolo-t", tmp_path / "m.onnx", opset=11)
    with pytest.raises(ValueError, match="unknown variant"):
        export_onnx("damo-yolo-xxl", tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        export_onnx("damo-yolo-t", tmp_path / "m.onnx", weights=tmp_path / "missing.pth")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*part"))


def test_torch_postprocess_matches_numpy():
    numpy_post = pytest.importorskip("tdet.client.postprocess")
    model = D.export_module(D.build_model("damo-yolo-t", deploy=True, seed=4).eval())
    scores, boxes = model(images(2, seed=5))
    for s, b in zip(scores, boxes):
        b_t, s_t, l_t = torch_postprocess(s, b, conf=0.05, iou=0.7, max_det=100)
        assert 0 < len(s_t) <= 100
        # orig_hw = input size: the numpy path's box rescale is the identity
        b_n, s_n, l_n = numpy_post.postprocess_damo_yolo(s.numpy(), b.numpy(), (640, 640), conf=0.05,
                                                         iou=0.7, max_det=100)
        # the same candidates selected by the same rules, rescaled by exactly 1.0: bit-identical detections
        # (paired, not by index: equal scores may leave NMS in either order)
        assert_same_detections((b_n, s_n, l_n), (b_t.numpy(), s_t.numpy(), l_t.numpy()), scale=SIZE, box_tol=0,
                               score_tol=0, what="numpy vs torch postprocess")


def test_nms_is_class_aware_greedy_and_stops_at_max_det():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 9, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    labels = torch.tensor([0, 0, 1, 0, 0])
    # box 4 (0.95) suppresses 0 (IoU 0.9) which then cannot suppress 1; 1 vs 4: IoU 0.8 -> suppressed
    assert nms(boxes, scores, 0.7, labels=labels).tolist() == [4, 2, 3]
    assert nms(boxes, scores, 0.7).tolist() == [4, 3]
    assert nms(boxes, scores, 0.7, labels=labels, max_keep=2).tolist() == [4, 2]
    # multi-label: one anchor yields several classes; the 0.05 threshold is strict; (1, class 1) is a
    # same-class duplicate of (0, class 1) and is suppressed
    s = torch.tensor([[0.5, 0.3, 0.05], [0.04, 0.2, 0.0]])
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10.]])
    out_b, out_s, out_l = torch_postprocess(s, b)
    assert out_s.tolist() == pytest.approx([0.5, 0.3]) and out_l.tolist() == [0, 1]
    with pytest.raises(ValueError, match="expected scores"):
        torch_postprocess(s[None], b)
