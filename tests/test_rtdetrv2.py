"""RT-DETRv2: official key set loads strictly (v2 and v1 checkpoints), RepVGG fusion is exact, ONNX
export keeps a working dynamic batch, discrete sampling exports without GridSample, params/GFLOPs."""

import official_checkpoints as checkpoints
import onnx
import pytest
import torch
from matching import assert_same_detections
from scipy.optimize import linear_sum_assignment

from tdet.ensembles.ort_session import ort_session
from tdet.training.export import export_onnx
from tdet.training.info import count_gflops
from tdet.training.models import rtdetrv2 as R
from tdet.training.models.rtdetrv2.checkpoint import upgrade_v1_keys

BASE = ["rtdetrv2-s", "rtdetrv2-m34", "rtdetrv2-m", "rtdetrv2-l", "rtdetrv2-x"]
# params (M) as published; GFLOPs as the official code's deploy() form measures with torch's flop counter
# (the README table's 136 / 259 for L / X are the unfused counts: see test_unfused_gflops_match_the_table)
PUBLISHED = {"rtdetrv2-s": (20.18, 60.1), "rtdetrv2-m34": (31.44, 92.1), "rtdetrv2-m": (36.59, 99.2),
             "rtdetrv2-l": (42.89, 133.1), "rtdetrv2-x": (76.56, 250.9)}
TABLE_GFLOPS = {"rtdetrv2-s": 60, "rtdetrv2-m34": 92, "rtdetrv2-m": 100, "rtdetrv2-l": 136, "rtdetrv2-x": 259}

pytestmark = pytest.mark.usefixtures("no_grad")  # inference only, per test


def _fixture(name: str) -> str:
    return "rtdetrv2_" + name.removeprefix("rtdetrv2-").removesuffix("-dsp")


def official_keys(name: str) -> dict[str, list[int]]:
    return checkpoints.official_keys(_fixture(name))


def random_official_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return checkpoints.random_state_dict(_fixture(name), seed, {
        "valid_mask": lambda shape: torch.ones(shape, dtype=torch.bool),
        "num_points_scale": lambda shape: torch.full(shape, 0.25)})


def images(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 1, 1, generator=gen).expand(batch, 3, 640, 640).clone()
    for b in range(batch):
        for _ in range(6):
            x0, y0, w, h = (torch.rand(4, generator=gen) * 300).long().tolist()
            x[b, :, y0:y0 + h + 20, x0:x0 + w + 20] = torch.rand(3, 1, 1, generator=gen)
    return x


def assert_rows_match(logits_a, boxes_a, logits_b, boxes_b, atol: float, fraction: float = 1.0,
                      rtol: float = 1e-4) -> None:
    """The 300 query rows may come in another order (top-k ties under float noise): pair the rows of a
    and b one-to-one (Hungarian assignment on their distances), then compare values: each within
    atol + rtol * |value| (boxes are normalized to 0..1; logits reach ~10, where float noise is larger)."""
    for i in range(logits_a.shape[0]):
        ka = torch.cat([torch.as_tensor(boxes_a[i]), torch.as_tensor(logits_a[i])], -1)
        kb = torch.cat([torch.as_tensor(boxes_b[i]), torch.as_tensor(logits_b[i])], -1)
        # exact L-inf distances (cdist's matmul shortcut loses ~1e-2 to cancellation on these norms)
        rows, cols = linear_sum_assignment((ka[:, None] - kb[None]).abs().amax(-1).numpy())
        excess = ((ka[rows] - kb[cols]).abs() - rtol * kb[cols].abs()).amax(-1)
        assert (excess <= atol).float().mean() >= fraction, excess.max()


@pytest.mark.parametrize("name", BASE + ["rtdetrv2-s-dsp"])
def test_model_has_the_official_state_dict(name):
    model = R.RTDETRv2(R.VARIANTS[name])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == official_keys(name)


@pytest.mark.parametrize("name", ["rtdetrv2-s", "rtdetrv2-l"])
def test_official_v2_checkpoint_loads_strictly(name, tmp_path):
    sd = random_official_state_dict(name)
    torch.save({"ema": {"module": sd, "updates": 1}, "model": {}, "last_epoch": 3}, tmp_path / "v2.pth")
    model = R.build_model(name, weights=tmp_path / "v2.pth")
    got = model.state_dict()
    for k, v in sd.items():
        if k not in ("decoder.anchors", "decoder.valid_mask"):  # regenerated for the input size
            assert torch.equal(got[k], v), k
    assert torch.isinf(got["decoder.anchors"]).any()


@pytest.mark.parametrize("layout", ["model", "bare"])
def test_training_and_bare_checkpoint_layouts_load(layout, tmp_path):
    sd = random_official_state_dict("rtdetrv2-s", seed=1)
    torch.save({"model": sd, "last_epoch": 3} if layout == "model" else sd, tmp_path / "w.pth")
    got = R.build_model("rtdetrv2-s", weights=tmp_path / "w.pth").state_dict()
    assert torch.equal(got["decoder.dec_score_head.2.weight"], sd["decoder.dec_score_head.2.weight"])
    assert torch.equal(got["backbone.conv1.conv1_1.conv.weight"], sd["backbone.conv1.conv1_1.conv.weight"])


def test_v1_checkpoint_loads_after_key_upgrade(tmp_path):
    # names/shapes of the official RT-DETR v1 r18vd model (rtdetr_pytorch/, configs/rtdetr/rtdetr_r18vd_6x_coco.yml)
    v1 = checkpoints.random_state_dict("rtdetrv2_v1_r18vd", seed=2)
    assert "encoder.input_proj.0.0.weight" in v1 and "decoder.enc_output.0.weight" in v1
    assert "decoder.anchors" not in v1 and not any(k.endswith("num_points_scale") for k in v1)
    torch.save({"ema": {"module": v1}}, tmp_path / "v1.pth")  # the v1 paddle-converted release layout
    model = R.build_model("rtdetrv2-s", weights=tmp_path / "v1.pth")
    got = model.state_dict()
    # every v1 tensor lands under its v2 name; the v2-only constants come from the model
    regenerated = {"decoder.anchors", "decoder.valid_mask"}
    assert set(upgrade_v1_keys(v1, model)) | regenerated == set(official_keys("rtdetrv2-s"))
    renamed = {"encoder.input_proj.2.0.weight": "encoder.input_proj.2.conv.weight",
               "encoder.input_proj.1.1.running_var": "encoder.input_proj.1.norm.running_var",
               "decoder.enc_output.0.weight": "decoder.enc_output.proj.weight",
               "decoder.enc_output.1.bias": "decoder.enc_output.norm.bias"}
    for old, new in renamed.items():
        assert torch.equal(got[new], v1[old]), new
    for k, v in v1.items():
        if k not in renamed and not k.startswith(("encoder.input_proj.", "decoder.enc_output.")):
            assert torch.equal(got[k], v), k
    assert torch.equal(got["decoder.decoder.layers.2.cross_attn.num_points_scale"], torch.full((12,), 0.25))
    sd = random_official_state_dict("rtdetrv2-s")
    assert upgrade_v1_keys(sd, model) is sd  # v2 names pass through untouched


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"ema": {"module": random_official_state_dict("rtdetrv2-l")}}, tmp_path / "l.pth")
    with pytest.raises(ValueError, match="does not match this RT-DETRv2 variant"):
        R.build_model("rtdetrv2-s", weights=tmp_path / "l.pth")


@pytest.mark.parametrize("name", ["rtdetrv2-s", "rtdetrv2-s-dsp"])
def test_fused_equals_unfused(name):
    model = R.build_model(name, seed=3).eval()
    x = images(2)
    l0, b0 = model(x)
    model.fuse()
    assert not any("bottlenecks.0.conv1" in k for k in model.state_dict())
    l1, b1 = model(x)
    assert_rows_match(l0, b0, l1, b1, atol=1e-4)
    assert l1.sigmoid().max() > 0.5  # the tame init gives confident detections


@pytest.mark.parametrize("name", ["rtdetrv2-s", pytest.param("rtdetrv2-m", marks=pytest.mark.slow)])
def test_onnx_runtime_matches_pytorch_at_batch_1_2_5(name, tmp_path):
    res = export_onnx(name, tmp_path / f"{name}.onnx", seed=4)
    graph = onnx.load(res.path)
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["logits", "boxes"]
    assert graph.opset_import[0].version >= 17
    assert any(n.op_type == "LayerNormalization" for n in graph.graph.node)  # one op, not decomposed
    sess = ort_session(res.path)
    model = R.build_model(name, deploy=True, seed=4).eval()
    for batch in (1, 2, 5):
        x = images(batch, seed=batch)
        logits, boxes = sess.run(["logits", "boxes"], {"images": x.numpy()})
        assert logits.shape == (batch, 300, 80) and boxes.shape == (batch, 300, 4)
        ref_l, ref_b = model(x)
        assert_rows_match(ref_l, ref_b, logits, boxes, atol=1e-4)
        for i in range(batch):  # each row of the batch is its own image, not a copy of row 0
            single_l, single_b = sess.run(["logits", "boxes"], {"images": x[i:i + 1].numpy()})
            assert_rows_match(single_l, single_b, logits[i:i + 1], boxes[i:i + 1], atol=1e-4)


def test_discrete_variant_exports_without_grid_sample(tmp_path):
    res = export_onnx("rtdetrv2-s-dsp", tmp_path / "dsp.onnx", seed=5)
    ops = {n.op_type for n in onnx.load(res.path).graph.node}
    assert "GridSample" not in ops
    sess = ort_session(res.path)
    model = R.build_model("rtdetrv2-s-dsp", deploy=True, seed=5).eval()
    for batch in (2, 5):  # traced at batch 1: the integer-gather indices must follow the batch
        x = images(batch, seed=7)
        logits, boxes = sess.run(["logits", "boxes"], {"images": x.numpy()})
        ref_l, ref_b = model(x)
        # discrete sampling rounds each location to a cell: a 1e-7 difference at a cell border picks the
        # neighbour, so a few rows legitimately move; the rest must match tightly
        assert_rows_match(ref_l, ref_b, logits, boxes, atol=1e-3, fraction=0.9)
    default = export_onnx("rtdetrv2-s", tmp_path / "default.onnx", seed=5)
    assert "GridSample" in {n.op_type for n in onnx.load(default.path).graph.node}


@pytest.mark.parametrize("name", BASE)
def test_params_and_gflops(name):
    model = R.build_model(name, deploy=True).eval()
    params_m, gflops = R.num_params(model) / 1e6, count_gflops(model, (640, 640))
    want_p, want_g = PUBLISHED[name]
    assert abs(params_m - want_p) / want_p < 0.01, params_m
    assert abs(gflops - want_g) / want_g < 0.01, gflops


@pytest.mark.parametrize("name", ["rtdetrv2-l", "rtdetrv2-x"])
def test_unfused_gflops_match_the_table(name):
    model = R.build_model(name).eval()
    gflops = count_gflops(model, (640, 640))
    assert abs(gflops - TABLE_GFLOPS[name]) / TABLE_GFLOPS[name] < 0.01, gflops


def test_torch_postprocess_matches_numpy():
    numpy_post = pytest.importorskip("tdet.client.postprocess")
    from tdet.training.models.rtdetrv2.postprocess import postprocess

    logits, boxes = R.build_model("rtdetrv2-s", deploy=True, seed=6).eval()(images(1, seed=8))
    b_t, s_t, l_t = postprocess(logits[0], boxes[0], (480, 640), max_det=100)
    b_n, s_n, l_n = numpy_post.postprocess_rtdetrv2(logits[0].numpy(), boxes[0].numpy(), (480, 640), max_det=100)
    # same top-K, same sigmoid and scaling in another library: paired (equal scores may swap), boxes within
    # float precision of the 640 px image, probabilities within float precision
    assert_same_detections((b_n, s_n, l_n), (b_t.numpy(), s_t.numpy(), l_t.numpy()), scale=640, box_tol=1e-6,
                           score_tol=1e-6, what="numpy vs torch postprocess")
