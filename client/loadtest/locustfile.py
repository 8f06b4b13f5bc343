"""Locust users for a served detector (gRPC and HTTP), driven by `tdet loadtest` through environment
variables. Thin on purpose: the users hold tdet's own client, fire Locust `request` events, and keep
exact per-request latencies (Locust rounds them above 100 ms) in a CSV written at the end.

If the server stays unavailable for TDET_ABORT_AFTER_S (no successful request meanwhile), the run stops
early: the reason goes to TDET_STATUS_FILE and the latencies measured so far are written as usual.

Locust's own CSVs (TDET_LOCUST_CSV_PREFIX + _stats.csv / _failures.csv / _exceptions.csv) are written here
too, once, after the users stopped: Locust's `--csv` writer rewrites them every second and is not run
again at exit, so it misses the requests of the last second and those in flight at the stop. Written at
the end, its request count is the count of latencies.csv and summary.json.

gevent: gRPC's C core blocks the hub unless grpc's gevent support is on before any channel exists,
and the clients must be closed in on_stop or the process hangs at exit.
"""

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import csv  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV  # noqa: E402

from tdet.client.errors import ServerUnavailableError  # noqa: E402
from tdet.client.files import collect_images  # noqa: E402
from tdet.client.fleet import split_urls  # noqa: E402
from tdet.client.triton import connect  # noqa: E402

URL = os.environ.get("TDET_URL", "127.0.0.1:8001")
URLS = split_urls(URL)  # `--url a,b`: the users are spread over the servers, one server per user
MODEL = os.environ.get("TDET_MODEL", "damo_yolo_t")
BLOBS = [p.read_bytes() for p in collect_images(Path(os.environ.get("TDET_IMAGES", ".")), recursive=True)]
LATENCY_FILE = os.environ.get("TDET_LATENCY_FILE", "")
STATUS_FILE = os.environ.get("TDET_STATUS_FILE", "")
LOCUST_CSV_PREFIX = os.environ.get("TDET_LOCUST_CSV_PREFIX", "")
TIMEOUT_S = float(os.environ.get("TDET_TIMEOUT_S", "60"))
RETRIES = int(os.environ.get("TDET_RETRIES", "0"))
ABORT_AFTER_S = float(os.environ.get("TDET_ABORT_AFTER_S", "3"))
_records: list[tuple[float, float, int, str, str]] = []  # (start unix s, latency ms, ok, server, error)
_user_ids = itertools.count()
_health = {"last_ok": time.monotonic(), "down_since": None, "aborted": ""}


def _server_down(environment, err: Exception, url: str) -> None:
    """Note an unavailable server; past ABORT_AFTER_S without a success (on any server), stop the whole run."""
    now = time.monotonic()
    down_since = _health["down_since"] = _health["down_since"] or now
    if not _health["aborted"] and now - max(down_since, _health["last_ok"]) >= ABORT_AFTER_S:
        _health["aborted"] = f"the server at {url} is unavailable ({str(err)[:200]})"
        gevent.spawn(environment.runner.quit)  # not from this greenlet: quit() kills the users


class _DetectorUser(User):
    abstract = True
    protocol = "grpc"
    wait_time = constant(0)  # closed loop: each user sends its next request when the last returns

    def on_start(self) -> None:
        self.client = None
        user_id = next(_user_ids)
        self.cursor = user_id * 7  # users start at different images
        self.url = URLS[user_id % len(URLS)]
        try:  # connecting (readiness, model config) is not part of any request's latency
            self._connected()
        except ServerUnavailableError as err:  # the first request retries, and counts as failed
            _server_down(self.environment, err, self.url)

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()

    def _connected(self):
        if self.client is None:
            self.client = connect(self.url, MODEL, self.protocol, timeout_s=TIMEOUT_S, retries=RETRIES)
        return self.client

    @task
    def detect(self) -> None:
        blob = BLOBS[self.cursor % len(BLOBS)]
        self.cursor += 1
        start, t0 = time.time(), time.perf_counter()
        error = None
        try:
            dets = self._connected().infer(blob)
            length = len(dets)
        except Exception as err:
            error, length = err, 0
        ms = (time.perf_counter() - t0) * 1000
        _records.append((start, ms, error is None, self.url, "" if error is None else str(error)[:200]))
        self.environment.events.request.fire(request_type=self.protocol, name=MODEL, response_time=ms,
                                             response_length=length, exception=error, context={})
        if error is None:
            _health["last_ok"], _health["down_since"] = time.monotonic(), None
        elif isinstance(error, (ServerUnavailableError, ConnectionError)):
            _server_down(self.environment, error, self.url)
            time.sleep(0.1)  # a refused connection fails in microseconds: do not spin


class TritonGrpcUser(_DetectorUser):
    protocol = "grpc"


class TritonHttpUser(_DetectorUser):
    protocol = "http"


@events.quitting.add_listener
def _write_results(environment, **_kw) -> None:
    # distributed (`--workers`): each worker writes its own latencies, the master Locust's CSVs and the status
    worker = isinstance(environment.runner, WorkerRunner)
    if LATENCY_FILE and not isinstance(environment.runner, MasterRunner):
        with open(f"{LATENCY_FILE}.{os.getpid()}" if worker else LATENCY_FILE, "w") as f:
            f.write("start_unix_s,latency_ms,ok,server,error\n")
            for start, ms, ok, url, err in list(_records):
                f.write(f"{start:.6f},{ms:.3f},{int(ok)},{url},\"{err.replace(chr(34), chr(39))}\"\n")
    if worker:
        return
    if LOCUST_CSV_PREFIX:
        stats_csv = StatsCSV(environment, PERCENTILES_TO_REPORT)
        for suffix, write in (("stats", stats_csv.requests_csv), ("failures", stats_csv.failures_csv),
                              ("exceptions", stats_csv.exceptions_csv)):
            with open(f"{LOCUST_CSV_PREFIX}_{suffix}.csv", "w", newline="") as f:
                write(csv.writer(f))
    if STATUS_FILE:
        with open(STATUS_FILE, "w") as f:
            json.dump({"aborted": _health["aborted"]}, f)
