"""A second runtime (issue 21 item 4): the exported graphs of both families (the trained demo checkpoints, at
their served sizes) compile in OpenVINO on CPU and match ONNX Runtime within `tdet export --check`'s tolerance
(CHECK_RTOL x the output's largest magnitude; RT-DETRv2's queries paired first). Before the DFL integral became
a 2-D MatMul, damo-yolo's graph failed to compile (OpenVINO 2026.4, MatMulMultiplyFusion)."""

import pytest

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'tdet[openvino]')")

from tdet.client import specs  # noqa: E402
from tdet.client.demo import DEMO_DIR  # noqa: E402
from tdet.ensembles.ort_session import ort_session  # noqa: E402
from tdet.ensembles.ov_session import ov_compiled, ov_run  # noqa: E402

pytest.importorskip("torch")
from tdet.training.export import check_input, compare_outputs, export_onnx  # noqa: E402

VARIANTS = {"damo-yolo-t": "damo-yolo", "rtdetrv2-s": "rtdetrv2"}
# OpenVINO inference precision per graph precision. int8 (issue 21 item 1's QDQ export) goes here as
# {"int8": "f32"}: the CPU plugin runs the QDQ ops in int8 and the rest in f32, compared the same way.
PRECISIONS = {"fp32": "f32"}


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("ov")
    return {v: str(export_onnx(v, out / f"{v}.onnx", weights=DEMO_DIR / f"{v}.pth").path) for v in VARIANTS}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_graph_compiles_in_openvino_and_matches_onnxruntime(demo_onnx, variant, precision):
    family = VARIANTS[variant]
    compiled = ov_compiled(demo_onnx[variant], threads=2, precision=PRECISIONS[precision])
    sess = ort_session(demo_onnx[variant], threads=2)
    size = tuple(sess.get_inputs()[0].shape[2:])  # the served size (320 / 256), static in the graph
    x = check_input(2, size, specs.preprocess_spec(family, size).scale, seed=1).numpy()
    names, feeds = list(specs.EXPORT_OUTPUTS[family]), {specs.EXPORT_INPUT: x}
    got = dict(zip(names, ov_run(compiled, names, feeds)))
    ref = dict(zip(names, sess.run(names, feeds)))
    for name, res in compare_outputs(family, got, ref).items():
        assert got[name].shape == ref[name].shape == (2, *ref[name].shape[1:])
        assert res.ok, f"{variant} {name}: max |OpenVINO - ORT| {res.max_abs_diff:.3g} > {res.tolerance:.3g}"
