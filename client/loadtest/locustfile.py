"""Locust users for a served detector (gRPC and HTTP), driven by `tdet loadtest` through environment
variables. Thin on purpose: the users hold tdet's own client, fire Locust `request` events, and keep
exact per-request latencies (Locust rounds them above 100 ms) in a CSV written at the end.

gevent: gRPC's C core blocks the hub unless grpc's gevent support is on before any channel exists,
and the clients must be closed in on_stop or the process hangs at exit.
"""

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import itertools  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from locust import User, constant, events, task  # noqa: E402

from tdet.client.triton import connect  # noqa: E402

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}  # as runner.image_files
URL = os.environ.get("TDET_URL", "127.0.0.1:8001")
MODEL = os.environ.get("TDET_MODEL", "damo_yolo_t")
_ROOT = Path(os.environ.get("TDET_IMAGES", "."))
IMAGES = [_ROOT] if _ROOT.is_file() else sorted(p for p in _ROOT.rglob("*") if p.suffix.lower() in SUFFIXES)
BLOBS = [p.read_bytes() for p in IMAGES]
LATENCY_FILE = os.environ.get("TDET_LATENCY_FILE", "")
_records: list[tuple[float, float, int, str]] = []  # (start unix s, latency ms, ok, error)
_user_ids = itertools.count()


class _DetectorUser(User):
    abstract = True
    protocol = "grpc"
    wait_time = constant(0)  # closed loop: each user sends its next request when the last returns

    def on_start(self) -> None:
        if not BLOBS:
            raise RuntimeError(f"no images found under TDET_IMAGES={os.environ.get('TDET_IMAGES')}")
        self.client = connect(URL, MODEL, self.protocol)
        self.cursor = next(_user_ids) * 7  # users start at different images

    def on_stop(self) -> None:
        self.client.close()

    @task
    def detect(self) -> None:
        blob = BLOBS[self.cursor % len(BLOBS)]
        self.cursor += 1
        start, t0 = time.time(), time.perf_counter()
        error = None
        try:
            dets = self.client.infer(blob)
            length = len(dets)
        except Exception as err:  # noqa: BLE001 - every failure is counted and reported, never hidden
            error, length = err, 0
        ms = (time.perf_counter() - t0) * 1000
        _records.append((start, ms, error is None, "" if error is None else str(error)[:200]))
        self.environment.events.request.fire(request_type=self.protocol, name=MODEL, response_time=ms,
                                             response_length=length, exception=error, context={})


class TritonGrpcUser(_DetectorUser):
    protocol = "grpc"


class TritonHttpUser(_DetectorUser):
    protocol = "http"


@events.quitting.add_listener
def _write_latencies(environment, **_kw) -> None:
    if LATENCY_FILE:
        with open(LATENCY_FILE, "w") as f:
            f.write("start_unix_s,latency_ms,ok,error\n")
            for start, ms, ok, err in _records:
                f.write(f"{start:.6f},{ms:.3f},{int(ok)},\"{err.replace(chr(34), chr(39))}\"\n")
