"""`tdet repo build --name/--version/--version-policy` and the repository's default thresholds, served:
models built into the session repository are loaded into the session server (explicit model control),
so no new tritonserver is started. Expected answers come from the session's own models."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from matching import assert_same_detections

from tdet.client import preprocess as pp
from tdet.client.errors import UserError
from tdet.client.triton import connect
from tdet.ensembles.builder import build_repository
from tdet.ensembles.configs import BuildOptions, read_config
from tdet.ensembles.options import VersionPolicy

pytestmark = pytest.mark.server


def _admin(served):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(served.grpc_url)


def _load(served, *names: str) -> None:
    with ThreadPoolExecutor(len(names)) as pool:  # loading is mostly waiting for stub processes
        list(pool.map(lambda n: _admin(served).load_model(n), names))


def _unload(served, *names: str) -> None:
    for n in names:
        _admin(served).unload_model(n, unload_dependents=True)


def _same(a, b, scale: float, what: str) -> None:
    assert_same_detections((a.boxes, a.scores, a.category_ids), (b.boxes, b.scores, b.category_ids), scale=scale,
                           box_tol=1e-5, score_tol=1e-6, what=what)


@pytest.fixture(scope="module")
def seed1_onnx(tmp_path_factory):
    """damo-yolo-t with other weights (seed 1): 'the fine-tuned checkpoint' of the A/B."""
    pytest.importorskip("torch")
    from tdet.training.export import export_onnx

    return export_onnx("damo-yolo-t", tmp_path_factory.mktemp("seed1") / "damo-yolo-t.onnx", seed=1).path


def test_config_thresholds_are_the_defaults_of_both_families(served, exported, images):
    """Built with --score-threshold X and --clip: a plain request gets exactly the detections above X,
    clipped; request parameters still override both."""
    data = images["wide.jpg"]
    w, h = pp.image_size(data)
    names, bases, thresholds = {}, {}, {}
    for variant, model in (("damo-yolo-t", "damo_yolo_t"), ("rtdetrv2-s", "rtdetrv2_s")):
        with connect(served.grpc_url, model) as det:
            bases[model] = det.infer(data)
        scores = np.sort(bases[model].scores)
        thresholds[model] = float((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2)
        names[model] = f"{model}_thr"
        build_repository([exported[variant]], served.repository,
                         BuildOptions(conf=thresholds[model], clip=True), name=names[model])
    _load(served, *names.values())
    try:
        for model, name in names.items():
            base, x = bases[model], thresholds[model]
            with connect(served.grpc_url, name) as det:
                got = det.infer(data)
                again = det.infer(data, conf=0.05, clip=False)
            want = base[base.scores > x]
            assert 0 < len(got) < len(base)
            np.testing.assert_array_equal(got.scores, want.scores)
            clipped = np.clip(want.boxes, 0, [w, h, w, h])
            np.testing.assert_allclose(got.boxes, clipped, rtol=0, atol=1e-5 * max(w, h))
            _same(again, base, max(w, h), f"{name} with conf/clip overridden per request")
    finally:
        _unload(served, *names.values())


def test_checkpoints_side_by_side_by_name_and_as_engine_versions(served, exported, seed1_onnx, images):
    repo, data = served.repository, images["square.jpg"]
    res = subprocess.run([sys.executable, "-m", "tdet.client.cli", "repo", "build", "--onnx", str(seed1_onnx), "--out",
                          str(repo)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "pass --name" in res.stderr and "Traceback" not in res.stderr  # never silently
    res = subprocess.run([sys.executable, "-m", "tdet.client.cli", "repo", "build", "--onnx", str(seed1_onnx), "--out",
                          str(repo), "--name", "damo_yolo_t_ft"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    # the session's checkpoint becomes version 2 of the same name; both versions stay loaded (policy all)
    built = build_repository([exported["damo-yolo-t"]], repo, BuildOptions(version_policy=VersionPolicy("all")),
                             name="damo_yolo_t_ft", version=2)
    assert [(b.name, b.version, b.versions) for b in built] == [("damo_yolo_t_ft", 2, (1, 2))]
    _load(served, "damo_yolo_t_ft")
    try:
        admin = _admin(served)
        assert admin.is_model_ready("damo_yolo_t_ft_engine", "1") and admin.is_model_ready("damo_yolo_t_ft_engine", "2")
        with connect(served.grpc_url, "damo_yolo_t_ft") as ft, connect(served.grpc_url, "damo_yolo_t") as a:
            assert json.loads(ft.parameters["versions"]) == {"1": "random-init(seed=1)", "2": "random-init(seed=0)"}
            before = int(ft.statistics("damo_yolo_t_ft_engine", "2").get("inference_count", 0))
            newest, original = ft.infer(data), a.infer(data)
            assert int(ft.statistics("damo_yolo_t_ft_engine", "2")["inference_count"]) == before + 1
        _same(newest, original, 640, "version 2 (the same checkpoint as damo_yolo_t)")

        # roll back: only version 1 (the other checkpoint) is loaded; the ensemble follows the policy
        build_repository([seed1_onnx], repo, BuildOptions(version_policy=VersionPolicy("specific", versions=(1,))),
                         name="damo_yolo_t_ft", version=1)
        assert (repo / "damo_yolo_t_ft_engine" / "2" / "model.onnx").is_file()  # kept on disk
        _load(served, "damo_yolo_t_ft")
        assert not admin.is_model_ready("damo_yolo_t_ft_engine", "2")
        with connect(served.grpc_url, "damo_yolo_t_ft") as ft:
            before = int(ft.statistics("damo_yolo_t_ft_engine", "1").get("inference_count", 0))
            rolled_back = ft.infer(data)
            assert int(ft.statistics("damo_yolo_t_ft_engine", "1")["inference_count"]) == before + 1
        assert len(rolled_back) > 0 and not (len(rolled_back) == len(original)
                                             and np.allclose(rolled_back.scores, original.scores))
    finally:
        _unload(served, "damo_yolo_t_ft")


def test_versions_must_share_family_input_and_classes(exported, tmp_path):
    repo = tmp_path / "repo"
    build_repository([exported["damo-yolo-t"]], repo, name="m")
    with pytest.raises(UserError, match="another family"):
        build_repository([exported["rtdetrv2-s"]], repo, name="m", version=2)
    with pytest.raises(UserError, match="--name names one model"):
        build_repository(list(exported.values()), repo, name="m")
    with pytest.raises(UserError, match="several --onnx files"):
        build_repository([exported["damo-yolo-t"]] * 2, repo)
    built = build_repository([exported["rtdetrv2-s"]], repo, name="m", version=3, replace=True)
    assert built[0].versions == (3,) and built[0].replaced == "random-init(seed=0)"
    assert not (repo / "m_engine" / "1").exists()
    assert read_config(repo / "m_engine" / "config.pbtxt").version_policy.latest.num_versions == 1


def test_a_checkpoint_retrained_at_the_same_path_is_not_built_over_silently(tmp_path):
    # the repository told weights apart by path: retraining into the same best.pth and rebuilding replaced the
    # served model without --replace; the export now records the file's sha256, and the build compares both
    torch = pytest.importorskip("torch")
    from tdet.training.export import export_onnx
    from tdet.training.registry import build_model
    from tdet.training.weights import sha256sum

    ckpt, repo, graphs, digests = tmp_path / "best.pth", tmp_path / "repo", [], []
    for seed in (0, 1):
        torch.save({"model": build_model("damo-yolo-t", seed=seed).state_dict()}, ckpt)
        digests.append(sha256sum(ckpt))
        graphs.append(export_onnx("damo-yolo-t", tmp_path / f"seed{seed}.onnx", weights=ckpt).path)
    build_repository([graphs[0]], repo)
    assert build_repository([graphs[0]], repo)[0].replaced == ""  # the same checkpoint again: no question

    def recorded() -> tuple[str, str, dict]:
        params = read_config(repo / "damo_yolo_t" / "config.pbtxt").parameters
        return (params["weights"].string_value, params["weights_sha256"].string_value,
                json.loads(params["versions_sha256"].string_value))

    assert recorded() == (str(ckpt.resolve()), digests[0], {"1": digests[0]})
    with pytest.raises(UserError, match=f"sha256 {digests[0][:12]}.*sha256 {digests[1][:12]}.*changed since"):
        build_repository([graphs[1]], repo)
    assert recorded() == (str(ckpt.resolve()), digests[0], {"1": digests[0]})  # refused before anything was written
    built = build_repository([graphs[1]], repo, version=2)  # beside it, as another version: both digests kept
    assert built[0].versions == (1, 2) and built[0].replaced == ""
    assert recorded() == (str(ckpt.resolve()), digests[1], {"1": digests[0], "2": digests[1]})  # 2 is served
    # rolled back to version 1: the served checkpoint is version 1's
    build_repository([graphs[0]], repo, BuildOptions(version_policy=VersionPolicy("specific", versions=(1,))))
    assert recorded()[1:] == (digests[0], {"1": digests[0], "2": digests[1]})
    built = build_repository([graphs[1]], repo, version=1, replace=True)
    assert built[0].replaced == f"{ckpt.resolve()} (sha256 {digests[0][:12]})"
    assert recorded()[1:] == (digests[1], {"1": digests[1], "2": digests[1]})
