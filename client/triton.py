"""The Python client of the served detectors: one `DetectorClient` interface, gRPC and HTTP
implementations chosen once by `connect(url, model, protocol)`.

    with connect("127.0.0.1:8001", "damo_yolo_t") as det:          # gRPC
        dets = det.infer("street.jpg", conf=0.25, clip=True)        # a path, bytes, a numpy BGR array, a PIL image
        for d in dets:                                              # Detection(box, score, category_id, class_name)
            print(d.class_name, d.score, d.box)
        many = det.infer_many(paths, concurrency=8)                 # one request each, input order kept
        rows = det.infer_batch(paths)                               # batched requests, split at max_batch_size

Detections hold boxes float32 [K,4] xyxy in original-image pixels, scores, dataset category ids and
class names; the names come from the ensemble's config parameters (discovered from the server).
Per-request options (tdet.client.options: conf, iou, max_det, classes, clip) go to the server as request
parameters; given to `connect`, they are this client's defaults for every call.

Every call has a request timeout (`timeout_s`) and is retried with exponential backoff when, and only
when, the server is unavailable (refused, reset, gRPC UNAVAILABLE, HTTP 503), at most `retries` times.
Failures raise the types of tdet.client.errors: InvalidInputError (the image or request is wrong, never
retried), ModelNotFoundError, ServerError, ServerUnavailableError, RequestTimeoutError.
"""

from __future__ import annotations

import json
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .connection import (
    DEFAULT_BACKOFF_S,
    DEFAULT_PORTS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    GRPC_AT_HTTP,
    PROTOCOLS,
    classify,
    speaks_http,
    strip_scheme,
    transport_error,
    wrong_protocol,
)
from .errors import (
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
    UserError,
    WrongProtocolError,
)
from .image_input import ImageInput, encode_image, wire_images
from .options import NAMES, DetectOptions, resolve, to_parameters
from .postprocess import Detection, Detections, from_wire
from .server_args import add_connection_args, add_url_args, detached_server, metrics_url, server_url
from .specs import WIRE_OUTPUTS, config_parameters

_STEP_SUFFIXES = ("_preprocess", "_engine", "_postprocess")  # an ensemble's steps (ensembles/builder.py)

__all__ = ["Detection", "Detections", "DetectorClient", "InferenceError", "InvalidInputError", "ModelNotFoundError",
           "RequestTimeoutError", "ServerError", "ServerUnavailableError", "add_connection_args", "connect",
           # moved to .connection / .server_args, still importable from here
           "DEFAULT_BACKOFF_S", "DEFAULT_PORTS", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT_S", "PROTOCOLS", "add_url_args",
           "classify", "detached_server", "metrics_url", "server_url", "wrong_protocol"]

T = TypeVar("T")

def known_classes(class_names: dict[int, str], shown: int = 12) -> str:
    """"3=coin, 9=kite": the first `shown` classes; "..." and the count only when some are left out."""
    text = ", ".join(f"{i}={n}" for i, n in list(class_names.items())[:shown])
    return text + (f", ... ({len(class_names)} classes)" if len(class_names) > shown else "")


class DetectorClient(ABC):
    """A detector served as a Triton ensemble (IMAGE bytes in; NUM_DETECTIONS, BOXES, SCORES, CLASSES out).

    timeout_s: per request (connect and answer). retries: how often a call is retried when the server
    is unavailable (0: never); backoff_s: the first wait, doubled per retry."""

    protocol: str

    def __init__(self, url: str, model: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, backoff_s: float = DEFAULT_BACKOFF_S, version: str = "",
                 **options: Any) -> None:
        if not timeout_s > 0 or retries < 0 or backoff_s < 0:
            raise UserError(f"the request timeout must be > 0 s and retries >= 0, got {timeout_s} s and {retries}")
        self.url, self.model, self.version = strip_scheme(url, self.protocol), model, str(version or "")
        self.timeout_s, self.retries, self.backoff_s = float(timeout_s), int(retries), float(backoff_s)
        self._local = threading.local()  # HTTP clients are not thread-safe: one per thread
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        try:
            ready = self._call(lambda c: c.is_model_ready(model, self.version, **self._timeout_kw()))
        except (ServerUnavailableError, RequestTimeoutError) as err:
            if self.protocol == "grpc" and speaks_http(self.url, min(self.timeout_s, 5.0)):
                raise wrong_protocol(self.url, self.protocol) from None
            raise ServerUnavailableError(f"cannot reach Triton at {self.url} over {self.protocol}: {err}",
                                         status=err.status) from None
        if not ready:
            what = f"model {model!r}" + (f" version {self.version}" if self.version else "")
            served = ", ".join(self.served_models()) or "none"
            raise ModelNotFoundError(f"{what} is not ready on {self.url} ({self.protocol}); it serves: {served}")
        self.config = self.model_config()
        self.parameters = config_parameters(self.config)
        names = json.loads(self.parameters.get("class_names", "[]"))
        ids = json.loads(self.parameters.get("category_ids", "[]"))
        self.class_names: dict[int, str] = dict(zip((int(i) for i in ids), names))
        self.family: str = self.parameters.get("family", "")
        self.precision: str = self.parameters.get("precision") or "fp32"  # tdet export --precision; unset: fp32
        self.max_batch_size: int = int(self.config.get("max_batch_size", 0) or 0)  # 0: no batch axis
        self.options = self._checked_options(options)  # this client's defaults for every call

    @abstractmethod
    def _new_client(self) -> Any: ...

    @abstractmethod
    def _get_config(self, client: Any, model: str, version: str) -> dict[str, Any]: ...

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

    def _drop_client(self) -> None:
        """Forget this thread's client (its connection may be broken); the next call makes a new one."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                client.close()
            except Exception:
                pass

    def _call(self, fn: Callable[[Any], T]) -> T:
        """fn(this thread's tritonclient), retried with backoff while the server is unavailable; other
        failures raise at once, as tdet.client.errors types."""
        from tritonclient.utils import InferenceServerException

        delay = self.backoff_s
        attempt = 0
        while True:
            try:
                return fn(self._client())
            except InferenceServerException as err:
                # "in ensemble 'm', " repeats the model name the message already starts with
                message = str(err.message()).removeprefix(f"in ensemble '{self.model}', ")
                error = classify(err.status(), f"{self.model}: {message}")
                if any(s in message for s in GRPC_AT_HTTP):
                    error = wrong_protocol(self.url, self.protocol)
            except Exception as err:
                error = transport_error(err, f"{self.model}: {self.protocol} {type(err).__name__}: {err}")
                if error is None:
                    raise
                if isinstance(error, WrongProtocolError):
                    error = wrong_protocol(self.url, self.protocol)
            if not isinstance(error, ServerUnavailableError) or attempt >= self.retries:
                if isinstance(error, ServerUnavailableError) and self.retries:
                    error.args = (f"{error} (after {self.retries} retries)",)
                raise error from None
            self._drop_client()
            time.sleep(delay * (1 + 0.25 * random.random()))
            delay *= 2
            attempt += 1

    def served_models(self) -> list[str]:
        """The ready models a user can ask for: the ensembles, not their steps (NAME_preprocess, ...)."""
        index = self._call(lambda c: c.get_model_repository_index(**self._json_kw()))
        rows = index.get("models", []) if isinstance(index, dict) else index  # gRPC JSON: {"models": [...]}
        names = {r["name"] for r in rows if r.get("state") == "READY"}
        return sorted(n for n in names if not n.endswith(_STEP_SUFFIXES))

    def model_config(self, model: str | None = None) -> dict[str, Any]:
        """The config of `model` (default: this ensemble) as Triton's JSON form (fields as in config.pbtxt)."""
        return self._call(lambda c: self._get_config(c, model or self.model, "" if model else self.version))

    def _checked_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(NAMES))
        if unknown:
            raise TypeError(f"unknown detection option(s) {unknown}; known: {', '.join(NAMES)}")
        return {k: v for k, v in options.items() if v is not None}

    def request_parameters(self, options: dict[str, Any]) -> dict[str, Any]:
        """This call's options over the client's defaults, as request parameters; class names -> ids.
        Checked here as the server checks them (InvalidParameterError), so a bad value fails once, before
        any request, instead of in every request."""
        opts = {**self.options, **self._checked_options(options)}
        if opts.get("classes") is not None:
            opts["classes"] = self.category_ids(opts["classes"])
        parameters = to_parameters(**opts)
        k = self.output_size
        resolve(parameters, DetectOptions(conf=0.0, iou=0.0, max_det=k or 1), max_k=k or 2 ** 31,
                category_ids=self.class_names or [int(c) for c in opts.get("classes") or []])
        return parameters

    @property
    def output_size(self) -> int:
        """K: the most detections per image this model returns (BOXES is [K, 4]); 0 if the config does not say."""
        boxes = next((o for o in self.config.get("output", []) if o.get("name") == "BOXES"), {})
        dims = [int(d) for d in boxes.get("dims", [])]
        return dims[0] if dims and dims[0] > 0 else 0

    def category_ids(self, classes: Sequence[int | str] | int | str) -> list[int]:
        """Class names or dataset category ids -> category ids of this model (UserError for unknown ones)."""
        if isinstance(classes, str):  # "3,14" / "car, truck": split as the CLI's --classes is
            items: list[int | str] = [c.strip() for c in classes.split(",") if c.strip()]
        else:
            items = [classes] if isinstance(classes, int) else list(classes)
        by_name = {name: cid for cid, name in self.class_names.items()}
        out, unknown = [], []
        for c in items:
            cid = by_name.get(c) if isinstance(c, str) and not c.isdigit() else int(c)
            if cid is None or (self.class_names and cid not in self.class_names):
                unknown.append(c)
            else:
                out.append(cid)
        if unknown:
            raise UserError(f"{self.model} has no class(es) {unknown}; it knows {known_classes(self.class_names)}")
        return out

    def infer_encoded(self, blobs: list[bytes], parameters: dict[str, Any]) -> list[Detections]:
        """One request: encoded images as its rows (at most max_batch_size), `parameters` as sent."""
        mod = self._module
        arr, datatype = wire_images(blobs, self.config)
        inp = mod.InferInput("IMAGE", list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        outputs = [mod.InferRequestedOutput(n) for n in WIRE_OUTPUTS]
        res = self._call(lambda c: c.infer(self.model, [inp], model_version=self.version, outputs=outputs,
                                           parameters=parameters or None, **self._timeout_kw()))
        num, boxes, scores, classes = (res.as_numpy(n) for n in WIRE_OUTPUTS)
        return [from_wire(num[i], boxes[i], scores[i], classes[i], self.class_names) for i in range(len(blobs))]

    def infer_batch(self, images: Sequence[ImageInput], **options: Any) -> list[Detections]:
        """Images as batch rows -> one Detections per image, in order. Rows go in requests of at most the
        server's max_batch_size (one after another); a bad image fails its request (InvalidInputError
        naming the row). options: conf, iou, max_det, classes (ids or names), clip."""
        if len(images) == 0:
            return []
        parameters = self.request_parameters(options)
        blobs = [encode_image(im) for im in images]
        step = self.max_batch_size or 1
        out: list[Detections] = []
        for i in range(0, len(blobs), step):
            out += self.infer_encoded(blobs[i:i + step], parameters)
        return out

    def infer(self, image: ImageInput, **options: Any) -> Detections:
        """One image -> its Detections. `image`: encoded bytes (JPEG/PNG/BMP/WebP/TIFF), a file path, a
        numpy uint8 array (H x W x 3 BGR as OpenCV and Ultralytics use, H x W gray, H x W x 4 BGRA;
        PNG-encoded for you, lossless) or a PIL image. options: conf, iou, max_det, classes, clip."""
        return self.infer_encoded([encode_image(image)], self.request_parameters(options))[0]

    def infer_many(self, images: Sequence[ImageInput], concurrency: int = 4, **options: Any) -> list[Detections]:
        """Each image as its own request, `concurrency` in flight (so the server can batch them);
        results in input order. The first failing request raises. options: as `infer`."""
        if concurrency < 1:
            raise UserError("concurrency must be >= 1")
        parameters = self.request_parameters(options)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(lambda im: self.infer_encoded([encode_image(im)], parameters)[0], images))

    def statistics(self, model: str | None = None, version: str = "") -> dict[str, Any]:
        """Triton's inference statistics of `model` (default: this ensemble) as a dict; `version`: one
        version's (default: the first Triton lists)."""
        stats = self._call(lambda c: c.get_inference_statistics(model or self.model, version, **self._json_kw()))
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

    def _new_client(self) -> Any:
        return self._module.InferenceServerClient(self.url)

    def _get_config(self, client: Any, model: str, version: str) -> dict[str, Any]:
        return client.get_model_config(model, version, as_json=True, client_timeout=self.timeout_s)["config"]

    def _timeout_kw(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout_s}

    def _json_kw(self) -> dict[str, Any]:
        return {"as_json": True, "client_timeout": self.timeout_s}


class HttpDetectorClient(DetectorClient):
    protocol = "http"

    @property
    def _module(self) -> Any:
        import tritonclient.http as httpclient
        return httpclient

    def _new_client(self) -> Any:
        return self._module.InferenceServerClient(self.url, connection_timeout=self.timeout_s,
                                                  network_timeout=self.timeout_s)

    def _get_config(self, client: Any, model: str, version: str) -> dict[str, Any]:
        return client.get_model_config(model, version)


def connect(url: str, model: str, protocol: str = "grpc", *, timeout_s: float = DEFAULT_TIMEOUT_S,
            retries: int = DEFAULT_RETRIES, backoff_s: float = DEFAULT_BACKOFF_S, version: str | int = "",
            conf: float | None = None, iou: float | None = None, max_det: int | None = None,
            classes: Sequence[int | str] | None = None, clip: bool | None = None) -> DetectorClient:
    """A client for ensemble `model` at `url` ("host:port", default ports gRPC 8001 / HTTP 8000).

    version: a model version ("" : the server's choice, by the model's version_policy). conf, iou,
    max_det, classes, clip: defaults of every call (None: the server's config values; see
    tdet.client.options). Raises ServerUnavailableError (a ConnectionError) when the server cannot be
    reached, and ModelNotFoundError when it does not serve `model` (or the model is not ready)."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; use grpc or http")
    cls = GrpcDetectorClient if protocol == "grpc" else HttpDetectorClient
    return cls(url, model, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, version=str(version),
               conf=conf, iou=iou, max_det=max_det, classes=classes, clip=clip)
