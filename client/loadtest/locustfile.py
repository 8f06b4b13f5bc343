"""Locust users for a served detector (gRPC and HTTP), driven by `tdet loadtest` through environment
variables. Thin on purpose: the users hold tdet's own client, fire Locust `request` events, and keep
exact per-request latencies (Locust rounds them above 100 ms) in a CSV written at the end.

If the server stays unavailable for TDET_ABORT_AFTER_S (no successful request meanwhile), the run stops
early: the reason goes to TDET_STATUS_FILE and the latencies measured so far are written as usual.

Locust's own CSVs (TDET_LOCUST_CSV_PREFIX + _stats.csv / _failures.csv / _exceptions.csv) are written here
too, once, after the users stopped: Locust's `--csv` writer rewrites them every second and is not run
again at exit, so it misses the requests of the last second and those in flight at the stop. Written at
the end, its request count is the count of latencies.csv and summary.json.

Distributed mode (`--workers N`, local or remote workers): the workers hold the users, the master gathers.
When the run ends (--duration, or a worker saw the server gone) the master asks every worker, through
Locust's own messages, to stop its users and send its exact latencies; the master waits for them (bounded)
before it writes latencies.csv, Locust's CSVs and the status, so a master whose workers run on other
machines has every worker's requests too. A worker that saw the server gone tells the master, which stops
the whole run and records why (`aborted`). Users are spread over the servers of `--url a,b` by their index
over all workers (worker index + local user number x workers), so user i is on server i mod N. A worker
started with TDET_WORKER_LATENCY_FILE (`tdet loadtest --master-host`) also writes its own latencies there.

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
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner  # noqa: E402
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
WORKER_LATENCY_FILE = os.environ.get("TDET_WORKER_LATENCY_FILE", "")  # a --master-host worker's own copy
GATHER_TIMEOUT_S = float(os.environ.get("TDET_GATHER_TIMEOUT_S", "30"))  # beyond --stop-timeout
CHUNK = 2000  # latency rows per message from a worker to the master
_records: list[tuple[float, float, int, str, int, str]] = []  # (start unix s, latency ms, ok, server, user, error)
_user_ids = itertools.count()
_health = {"last_ok": time.monotonic(), "down_since": None, "aborted": ""}
# master: every worker's rows (by worker id), the workers that sent all of theirs, those that never did
_gathered: dict = {"rows": {}, "done": set(), "missing": [], "started": False}


def _server_down(environment, err: Exception, url: str) -> None:
    """Note an unavailable server; past ABORT_AFTER_S without a success (on any server), stop the whole run."""
    now = time.monotonic()
    down_since = _health["down_since"] = _health["down_since"] or now
    if not _health["aborted"] and now - max(down_since, _health["last_ok"]) >= ABORT_AFTER_S:
        _health["aborted"] = f"the server at {url} is unavailable ({str(err)[:200]})"
        if isinstance(environment.runner, WorkerRunner):  # the master stops the whole run and records why
            environment.runner.send_message("tdet_aborted", {"aborted": _health["aborted"]})
        else:
            gevent.spawn(environment.runner.quit)  # not from this greenlet: quit() kills the users


def _global_user_index(environment, local: int) -> int:
    """This user's index over all workers, 0..users-1 once each: worker w's k-th user is w + k * workers (a
    single process: the local number). Locust copies the master's --expect-workers into each worker's options
    with its spawn message, before the users start."""
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        return local
    workers = int(getattr(environment.parsed_options, "expect_workers", 0) or 1)
    return max(0, runner.worker_index) + local * workers


class _DetectorUser(User):
    abstract = True
    protocol = "grpc"
    wait_time = constant(0)  # closed loop: each user sends its next request when the last returns

    def on_start(self) -> None:
        self.client = None
        self.user_id = user_id = _global_user_index(self.environment, next(_user_ids))
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
        _records.append((start, ms, error is None, self.url, self.user_id,
                         "" if error is None else str(error)[:200]))
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


def _latency_lines(records) -> str:
    return "start_unix_s,latency_ms,ok,server,user,error\n" + "".join(
        f"{start:.6f},{ms:.3f},{int(ok)},{url},{user},\"{str(err).replace(chr(34), chr(39))}\"\n"
        for start, ms, ok, url, user, err in records)


@events.init.add_listener
def _register_messages(environment, **_kw) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message("tdet_records", _on_records)
        runner.register_message("tdet_aborted", _on_worker_aborted)
    elif isinstance(runner, WorkerRunner):
        runner.register_message("tdet_finish", _on_finish, concurrent=True)  # stopping users takes a while


def _on_worker_aborted(environment, msg, **_kw) -> None:  # master
    if not _health["aborted"]:
        _health["aborted"] = msg.data["aborted"]
        gevent.spawn(environment.runner.quit)  # not from the greenlet that receives the messages


def _on_records(environment, msg, **_kw) -> None:  # master
    _gathered["rows"].setdefault(msg.node_id, []).extend(tuple(r) for r in msg.data["rows"])
    if msg.data.get("aborted") and not _health["aborted"]:
        _health["aborted"] = msg.data["aborted"]
    if msg.data["last"]:
        _gathered["done"].add(msg.node_id)


def _on_finish(environment, **_kw) -> None:  # worker: stop the users, then send every latency to the master
    runner = environment.runner
    runner.stop()  # waits up to --stop-timeout for the requests in flight (Locust's stats may miss the last
    # second: its last periodic report came before; latencies.csv and the summary do not)
    records = list(_records)
    for i in range(0, max(1, len(records)), CHUNK):
        runner.send_message("tdet_records", {"rows": [list(r) for r in records[i:i + CHUNK]],
                                             "last": i + CHUNK >= len(records), "aborted": _health["aborted"]})


@events.test_stopping.add_listener
def _gather(environment, **_kw) -> None:
    """Master: before Locust stops, ask every worker for its latencies and wait for them (bounded)."""
    runner = environment.runner
    if not isinstance(runner, MasterRunner) or _gathered["started"]:
        return
    _gathered["started"] = True
    expected = {c.id for c in runner.clients.all if c.state != STATE_MISSING}
    for client_id in expected:
        runner.send_message("tdet_finish", None, client_id=client_id)
    deadline = time.monotonic() + (environment.stop_timeout or 0) + GATHER_TIMEOUT_S
    while not expected <= _gathered["done"] and time.monotonic() < deadline:
        gevent.sleep(0.1)
    _gathered["missing"] = sorted(expected - _gathered["done"])


@events.quitting.add_listener
def _write_results(environment, **_kw) -> None:
    # distributed (`--workers`): the master writes every worker's latencies (gathered above), Locust's CSVs
    # and the status; a worker writes only its own copy when asked to (TDET_WORKER_LATENCY_FILE)
    if isinstance(environment.runner, WorkerRunner):
        if WORKER_LATENCY_FILE:
            Path(WORKER_LATENCY_FILE).write_text(_latency_lines(list(_records)))
        return
    if isinstance(environment.runner, MasterRunner):
        records = sorted((r for rows in _gathered["rows"].values() for r in rows), key=lambda r: r[0])
    else:
        records = list(_records)
    if LATENCY_FILE:
        Path(LATENCY_FILE).write_text(_latency_lines(records))
    if LOCUST_CSV_PREFIX:
        stats_csv = StatsCSV(environment, PERCENTILES_TO_REPORT)
        for suffix, write in (("stats", stats_csv.requests_csv), ("failures", stats_csv.failures_csv),
                              ("exceptions", stats_csv.exceptions_csv)):
            with open(f"{LOCUST_CSV_PREFIX}_{suffix}.csv", "w", newline="") as f:
                write(csv.writer(f))
    if STATUS_FILE:
        with open(STATUS_FILE, "w") as f:
            json.dump({"aborted": _health["aborted"], "missing_workers": _gathered["missing"]}, f)
