"""Shared fixtures: the real exported ONNX files, the built repository, one real tritonserver per session
(both models), and synthetic test images of different sizes.

`served` is the one server of the session (startup ~15-30 s on 2 cores); tests that need it share it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

VARIANTS = ("damo-yolo-t", "rtdetrv2-s")


@dataclass(frozen=True)
class Served:
    """A running local tritonserver. URLs are host:port (metrics_url is a full http URL)."""

    grpc_url: str
    http_url: str
    metrics_url: str
    models: tuple[str, ...]  # ensemble names, e.g. ("damo_yolo_t", "rtdetrv2_s")
    onnx: dict[str, Path]  # variant -> exported ONNX (float input, as `tdet export` wrote it)
    repository: Path
    log: Path
    pid: int = field(default=0)


def _synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """BGR uint8 [h, w, 3]: blocky color fields plus shapes (edges the random-init heads respond to)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (max(2, h // 60), max(2, w // 60), 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_NEAREST)
    for _ in range(6):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(max(2, min(h, w) // 12), max(3, min(h, w) // 4)))
        cv2.circle(img, (x, y), r, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    return img


@pytest.fixture
def no_grad():
    """torch.no_grad() for one test. Not torch.set_grad_enabled(False) at a module's import: pytest imports
    every module before running any, so that would switch gradients off for the whole session (the
    training tests among them)."""
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        yield


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    """Encoded test images of different sizes and formats: name -> bytes."""
    specs = {"wide.jpg": (720, 1280, ".jpg"), "tall.png": (500, 333, ".png"), "square.jpg": (640, 640, ".jpg"),
             "small.bmp": (120, 200, ".bmp")}
    return {name: cv2.imencode(ext, _synthetic_image(h, w, i))[1].tobytes()
            for i, (name, (h, w, ext)) in enumerate(specs.items())}


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The real `tdet export` of damo-yolo-t and rtdetrv2-s (seeded tame random init, seed 0)."""
    pytest.importorskip("torch")
    from tdet.training.export import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    return {v: export_onnx(v, out / f"{v}.onnx").path for v in VARIANTS}


@pytest.fixture(scope="session")
def repository(exported, tmp_path_factory) -> Path:
    from tdet.ensembles.builder import build_repository

    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    build_repository(list(exported.values()), repo)
    return repo


@pytest.fixture(scope="session")
def small_repository(exported, tmp_path_factory) -> Path:
    """damo_yolo_t alone: a server of its own starts quickly and can be killed without hurting others."""
    from tdet.ensembles.builder import build_repository

    repo = tmp_path_factory.mktemp("small") / "repo"
    build_repository([exported["damo-yolo-t"]], repo)
    return repo


@pytest.fixture(scope="session")
def start_server():
    """start(repository, log) -> (process, info): a tritonserver of the test's own on free ports."""
    from tdet.ensembles.server import free_port, start

    def _start(repository: Path, log: Path):
        return start(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log=log,
                     timeout_s=240)

    return _start


@pytest.fixture(scope="session")
def served(exported, repository, tmp_path_factory) -> Served:
    """One tritonserver (from the nvidia-pytriton wheel) serving damo_yolo_t and rtdetrv2_s on free ports.

    Explicit model control (every model loaded at start): a test may build more models into
    `repository` and load them into this server (load_model) instead of starting another one."""
    from tdet.ensembles.server import free_port, start, stop_process

    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    proc, info = start(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       log=log, timeout_s=240, model_control_mode="explicit")
    try:
        yield Served(info.grpc_url, info.http_url, info.metrics_url, ("damo_yolo_t", "rtdetrv2_s"),
                     dict(exported), repository, log, proc.pid)
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=30)
        with pytest.raises(ProcessLookupError):  # no stray stubs left in the server's process group
            os.killpg(proc.pid, 0)
