"""The Python client of the served detectors: one `DetectorClient` interface, gRPC and HTTP
implementations chosen once by `connect(url, model, protocol)`.

    with connect("localhost:8001", "damo_yolo_t") as det:          # gRPC
        dets = det.infer(open("street.jpg", "rb").read())          # -> Detections
        many = det.infer_many(list_of_jpeg_bytes, concurrency=8)   # concurrent requests, input order kept

Detections hold boxes float32 [K,4] xyxy in original-image pixels, scores, dataset category ids and
class names; the names come from the ensemble's config parameters (discovered from the server).
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from .postprocess import Detections, from_wire

WIRE = ("NUM_DETECTIONS", "BOXES", "SCORES", "CLASSES")
PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}

__all__ = ["Detections", "DetectorClient", "InferenceError", "connect"]


class InferenceError(ValueError):
    """The server rejected a request; the message is the server's (it names the problem)."""


def _strip_scheme(url: str) -> str:
    for prefix in ("grpc://", "http://", "https://"):
        if url.startswith(prefix):
            return url[len(prefix):].rstrip("/")
    return url.rstrip("/")


class DetectorClient(ABC):
    """A detector served as a Triton ensemble (IMAGE bytes in; NUM_DETECTIONS, BOXES, SCORES, CLASSES out)."""

    protocol: str

    def __init__(self, url: str, model: str, *, timeout_s: float = 60.0) -> None:
        self.url, self.model, self.timeout_s = _strip_scheme(url), model, timeout_s
        self._local = threading.local()  # HTTP clients are not thread-safe: one per thread
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        try:
            ready = self._client().is_model_ready(model)
        except Exception as err:  # noqa: BLE001 - tritonclient raises several types for a dead socket
            raise ConnectionError(f"cannot reach Triton at {self.url} over {self.protocol}: {err}") from None
        if not ready:
            raise ConnectionError(f"model {model!r} is not ready on {self.url} ({self.protocol})")
        self.config = self._model_config()
        params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        names, ids = json.loads(params.get("class_names", "[]")), json.loads(params.get("category_ids", "[]"))
        self.class_names: dict[int, str] = dict(zip((int(i) for i in ids), names))
        self.family: str = params.get("family", "")

    @abstractmethod
    def _new_client(self) -> Any: ...

    @abstractmethod
    def _model_config(self) -> dict[str, Any]: ...

    @property
    @abstractmethod
    def _module(self) -> Any: ...

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
            with self._lock:
                self._clients.append(client)
        return client

    def infer_batch(self, images: Sequence[bytes]) -> list[Detections]:
        """One request with len(images) batch rows -> one Detections per image (a bad image fails all)."""
        if len(images) == 0:
            return []
        mod = self._module
        arr = np.array([[bytes(b)] for b in images], dtype=np.object_)
        inp = mod.InferInput("IMAGE", list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        outputs = [mod.InferRequestedOutput(n) for n in WIRE]
        try:
            res = self._client().infer(self.model, [inp], outputs=outputs, **self._timeout_kw())
        except self._exception as err:
            raise InferenceError(f"{self.model}: {err.message() if hasattr(err, 'message') else err}") from None
        num, boxes, scores, classes = (res.as_numpy(n) for n in WIRE)
        return [from_wire(num[i], boxes[i], scores[i], classes[i], self.class_names) for i in range(len(images))]

    def infer(self, image: bytes) -> Detections:
        """One encoded image (JPEG/PNG/BMP/WebP bytes) -> its Detections."""
        return self.infer_batch([image])[0]

    def infer_many(self, images: Sequence[bytes], concurrency: int = 4) -> list[Detections]:
        """Each image as its own request, `concurrency` in flight (so the server can batch them);
        results in input order. The first failing request raises InferenceError."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(self.infer, images))

    def statistics(self, model: str | None = None) -> dict[str, Any]:
        """Triton's inference statistics of `model` (default: this ensemble) as a dict."""
        stats = self._client().get_inference_statistics(model or self.model, **self._json_kw())
        return stats["model_stats"][0]

    def close(self) -> None:
        with self._lock:
            for c in self._clients:
                c.close()
            self._clients.clear()
        self._local = threading.local()

    def __enter__(self) -> DetectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout_kw(self) -> dict[str, Any]:
        return {}

    def _json_kw(self) -> dict[str, Any]:
        return {}


class GrpcDetectorClient(DetectorClient):
    protocol = "grpc"

    @property
    def _module(self) -> Any:
        import tritonclient.grpc as grpcclient
        return grpcclient

    @property
    def _exception(self) -> type[Exception]:
        from tritonclient.utils import InferenceServerException
        return InferenceServerException

    def _new_client(self) -> Any:
        return self._module.InferenceServerClient(self.url)

    def _model_config(self) -> dict[str, Any]:
        return self._client().get_model_config(self.model, as_json=True)["config"]

    def _timeout_kw(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout_s}

    def _json_kw(self) -> dict[str, Any]:
        return {"as_json": True}


class HttpDetectorClient(DetectorClient):
    protocol = "http"

    @property
    def _module(self) -> Any:
        import tritonclient.http as httpclient
        return httpclient

    @property
    def _exception(self) -> type[Exception]:
        from tritonclient.utils import InferenceServerException
        return InferenceServerException

    def _new_client(self) -> Any:
        return self._module.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                                  network_timeout=self.timeout_s)

    def _model_config(self) -> dict[str, Any]:
        return self._client().get_model_config(self.model)


def connect(url: str, model: str, protocol: str = "grpc", *, timeout_s: float = 60.0) -> DetectorClient:
    """A client for ensemble `model` at `url` ("host:port", default ports gRPC 8001 / HTTP 8000).
    Raises ConnectionError when the server or model is not reachable/ready."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use grpc or http")
    cls = GrpcDetectorClient if protocol == "grpc" else HttpDetectorClient
    return cls(url, model, timeout_s=timeout_s)
