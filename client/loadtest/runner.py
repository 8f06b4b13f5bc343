"""`tdet loadtest`: Locust in headless mode against a served detector, bounded in time, with exact
latencies, Triton's own view of the run (batch sizes, queue vs compute per step), and a report.

A run writes <out>/: latencies.csv (every request), locust_stats.csv / locust_failures.csv (Locust's own,
written when the users have stopped, so they count what latencies.csv counts), summary.json, and
report.png + report.html (tables and plots). `--sweep 1,2,4` runs one such run per concurrency into
<out>/c<N>/ and adds sweep.csv / sweep.json / sweep.png (throughput and p95 vs concurrency).

Before the load starts, one request with the first image must succeed: a file the server refuses would
make the run measure nothing but failures.

If the server goes away during a run, the users stop after a few seconds without an answer; the run
still writes what it measured, with `aborted` saying why (and a sweep stops there).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from ..errors import InvalidInputError, UserError, repeated
from ..files import atomic_write, collect_images
from ..fleet import split_urls
from ..triton import DEFAULT_TIMEOUT_S
from . import distributed
from . import metrics as triton_metrics
from .report import plot_run, plot_sweep, write_html

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
METRICS_PORT = 8002  # Triton's default metrics port
ABORT_AFTER_S = 3.0  # no answer from the server for this long: the users stop


@dataclass
class RunSummary:
    model: str
    protocol: str
    users: int
    duration_s: float
    requests: int
    failures: int
    requests_per_s: float
    images_per_s: float
    latency_ms: dict[str, float]  # p50 p90 p95 p99 max mean
    errors: dict[str, int] = field(default_factory=dict)  # error message -> how many requests failed with it
    triton: dict[str, dict[str, float]] = field(default_factory=dict)  # per composing model
    aborted: str = ""  # why the run stopped before --duration ("" when it ran to the end)
    servers: dict[str, dict[str, int]] = field(default_factory=dict)  # url -> requests, failures (--url a,b)
    triton_skipped: str = ""  # why `triton` is empty although metrics were read (counters went backwards)


def _host(url: str) -> str:
    return (urlparse(url if "//" in url else f"//{url}").hostname or "").lower()


def default_metrics_url(url: str) -> str:
    """Triton's metrics endpoint on the server's host: http://HOST:8002/metrics."""
    host = _host(url) or "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{METRICS_PORT}/metrics"


def _metrics_before(metrics_url: str | None, url: str, model: str) -> tuple[str, dict]:
    """(the metrics URL to use, or "" for none; the first scrape). An explicit URL must answer; the
    default one (metrics_url None) is skipped with a warning when nothing answers there, or when what
    answers does not serve `model` (another server on that host)."""
    if metrics_url == "":
        return "", {}
    explicit = metrics_url is not None
    metrics_url = metrics_url or default_metrics_url(url)
    try:
        before = triton_metrics.scrape(metrics_url)
    except ConnectionError as err:
        if explicit:
            raise
        why = str(err)
    else:
        if explicit or model in before:
            return metrics_url, before
        why = f"it does not report {model}: another server's?"
    print(f"warning: no Triton metrics at {metrics_url} ({why}); the report has no per-step breakdown "
          "(pass --metrics-url)", file=sys.stderr)
    return "", {}


LOCUSTFILE = str(resources.files("tdet.client.loadtest") / "locustfile.py")
USER_CLASS = {"grpc": "TritonGrpcUser", "http": "TritonHttpUser"}


def locust_env(url: str, model: str, images: Path, out: Path, timeout_s: float, retries: int) -> dict:
    """What locustfile.py reads from its environment."""
    return dict(os.environ, TDET_URL=url, TDET_MODEL=model, TDET_IMAGES=str(images),
                TDET_LATENCY_FILE=str(out / "latencies.csv"), TDET_STATUS_FILE=str(out / "locust_status.json"),
                TDET_LOCUST_CSV_PREFIX=str(out / "locust"),
                TDET_TIMEOUT_S=str(timeout_s), TDET_RETRIES=str(retries), TDET_ABORT_AFTER_S=str(ABORT_AFTER_S))


def _check_run_arguments(protocol: str, users: int, spawn_rate: float, duration_s: float, workers: int,
                         remote_workers: bool) -> None:
    if protocol not in ("grpc", "http"):
        raise UserError(f"--protocol must be grpc or http, got {protocol!r}")
    if users < 1 or spawn_rate <= 0 or duration_s < 1:
        raise UserError("--users and --spawn-rate must be positive and --duration at least 1 s")
    if workers < 0:
        raise UserError(f"--workers must be 0 (one process) or a number of worker processes, got {workers}")
    if remote_workers and not workers:
        raise UserError("--remote-workers needs --workers N: how many workers the master waits for")


def run_once(model: str, url: str, *, protocol: str = "grpc", users: int = 4, spawn_rate: float = 4,
             duration_s: float = 10, images: Path, out: Path, metrics_url: str | None = None,
             local_only: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = 0,
             workers: int = 0, remote_workers: bool = False) -> RunSummary:
    """One bounded Locust run. Every failed request is counted in `failures` and listed in `errors`;
    a server that goes away ends the run early with `aborted` set (the summary holds what was measured).
    timeout_s / retries: each user's request timeout and retries when unavailable (0: failures count).
    metrics_url: Triton's metrics; None: the server's host on port 8002, skipped if nothing answers;
    "": none. UserError before any load when the server refuses the first image.
    workers: Locust's distributed mode with that many worker processes here (remote_workers: the master
    waits for them to join from other machines on port 5557 instead)."""
    _check_run_arguments(protocol, users, spawn_rate, duration_s, workers, remote_workers)
    # here, so a bad --images is one clear error, not a Locust traceback
    first = collect_images(images, recursive=True)[0]
    urls = split_urls(url)  # `--url a,b`: the users are spread over the servers (locustfile.py)
    for u in urls:
        if local_only and _host(u) not in LOOPBACK:
            raise UserError(f"refusing to load-test {u}: only loopback targets are allowed here")
    out.mkdir(parents=True, exist_ok=True)
    steps = [_check_first_image(u, model, protocol, first, timeout_s, retries) for u in urls][0]
    if len(urls) > 1 and metrics_url is None:  # one metrics endpoint cannot describe several servers
        print("note: several servers: no Triton per-step breakdown unless --metrics-url names one server's",
              file=sys.stderr)
        metrics_url = ""
    metrics_url, before = _metrics_before(metrics_url, urls[0], model)
    status_file = out / "locust_status.json"
    status_file.unlink(missing_ok=True)
    for part in out.glob("latencies.csv.*"):  # a former distributed run's worker files
        part.unlink()
    env = locust_env(url, model, images, out, timeout_s, retries)
    locustfile, user_class = LOCUSTFILE, USER_CLASS[protocol]
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", str(users),
           "-r", str(spawn_rate), "-t", f"{max(1, round(duration_s))}s", "--stop-timeout", "10",
           "--only-summary", "--loglevel", "WARNING", user_class]
    port = distributed.master_port()
    if workers and not remote_workers:
        from ..ports import free_port

        port = free_port()
    if workers:
        cmd[-1:-1] = distributed.master_args(workers, port, remote_workers)
    t0 = time.monotonic()
    with open(out / "locust.log", "w") as log, distributed.local_workers(
            0 if remote_workers else workers, str(locustfile), user_class, port, env, out / "locust_workers.log"):
        try:  # the run stops itself at --duration; the timeout only catches a hung Locust
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=duration_s + 90)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"locust did not stop within {duration_s + 90:.0f}s "
                               f"(see {out / 'locust.log'})") from None
    distributed.merge_latencies(out / "latencies.csv")
    wall = time.monotonic() - t0
    if not (out / "latencies.csv").is_file():
        tail = (out / "locust.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust failed (no latencies written); locust said:\n{tail}")
    summary = summarize(out / "latencies.csv", model, protocol, users, duration_s)
    summary.aborted = _aborted(status_file)
    if not summary.requests:
        tail = (out / "locust.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the load test sent no requests in {wall:.0f}s; locust said:\n{tail}")
    after = {}
    if metrics_url and not summary.aborted:
        try:
            after = triton_metrics.scrape(metrics_url)
        except ConnectionError as err:
            summary.aborted = f"metrics unreadable after the run: {err}"
    if after:
        _add_triton(summary, before, after, steps, metrics_url)
    atomic_write(out / "summary.json", json.dumps(asdict(summary), indent=1))
    plot_run(out / "latencies.csv", summary, out / "report.png")
    write_html([summary], out / "report.html", [out / "report.png"])
    return summary


def _aborted(status_file: Path) -> str:
    """Why the run stopped early, from locustfile.py's status ("" when it ran to the end), including workers
    whose latencies never reached the master (their requests are missing from the summary: a partial run)."""
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    aborted = status.get("aborted", "")
    if status.get("missing_workers"):
        missing = f"{len(status['missing_workers'])} Locust worker(s) never sent their latencies to the master"
        aborted = f"{aborted}; {missing}" if aborted else missing
    return aborted


def _add_triton(summary: RunSummary, before: dict, after: dict, steps: list[str], metrics_url: str) -> None:
    """summary.triton (per model of `steps` the server reports) from the two scrapes, or, when a counter went
    backwards, a warning and summary.triton_skipped saying why (never the meaningless deltas). Fewer counted
    than answered is no sign: Triton counts a request after its answer is sent."""
    summary.triton, back = triton_metrics.breakdown(before, after, steps)
    if back:
        summary.triton_skipped = (
            f"Triton's counters at {metrics_url} went backwards during the run ({'; '.join(back[:3])}): the "
            "server restarted, or the URL is load-balanced over several servers (point --metrics-url at one "
            "server's pod or host); no per-step breakdown is reported")
        print(f"warning: {summary.triton_skipped}", file=sys.stderr)


def _check_first_image(url: str, model: str, protocol: str, first: Path, timeout_s: float,
                       retries: int) -> list[str]:
    """Fail fast, before any load: the server is not there, does not serve `model`, or refuses the image.
    Returns the models a request of `model` runs (metrics.composing_models), whose metrics the report breaks down."""
    from tdet.client.triton import connect

    with connect(url, model, protocol, timeout_s=timeout_s, retries=retries) as client:
        try:
            client.infer(first.read_bytes())
        except InvalidInputError as err:
            raise UserError(f"the server refuses the first image, {first}: {err}; the load test would measure "
                            "only failures (remove the file or pass other --images)") from None
        return triton_metrics.composing_models(model, client.model_config)


def summarize(latency_csv: Path, model: str, protocol: str, users: int, duration_s: float) -> RunSummary:
    with open(latency_csv) as f:
        rows = list(csv.DictReader(f))
    ok = np.array([float(r["latency_ms"]) for r in rows if r["ok"] == "1"])
    errors = dict(Counter(r["error"] for r in rows if r["ok"] != "1").most_common())
    starts = [float(r["start_unix_s"]) for r in rows]
    ends = [s + float(r["latency_ms"]) / 1000 for s, r in zip(starts, rows)]
    span = max(ends) - min(starts) if rows else duration_s  # first request sent -> last answer received
    pct = {f"p{q}": float(np.percentile(ok, q)) if ok.size else 0.0 for q in (50, 90, 95, 99)}
    pct.update(max=float(ok.max()) if ok.size else 0.0, mean=float(ok.mean()) if ok.size else 0.0)
    rps = ok.size / span
    servers: dict[str, dict[str, int]] = {}
    for r in rows:
        s = servers.setdefault(r.get("server") or "", {"requests": 0, "failures": 0})
        s["requests"] += 1
        s["failures"] += r["ok"] != "1"
    return RunSummary(model, protocol, users, duration_s, len(rows), len(rows) - ok.size, rps, rps, pct, errors,
                      servers=servers)


def sweep(model: str, url: str, concurrencies: list[int], *, out: Path, **kw) -> list[RunSummary]:
    """One run per concurrency (users = spawn rate = c); writes sweep.csv/json/png under `out`."""
    if not concurrencies or any(c < 1 for c in concurrencies):
        raise UserError(f"--sweep needs positive concurrencies, got {concurrencies}")
    twice = repeated(concurrencies)
    if twice:  # each level writes OUT/cN/: a second run of N would overwrite the first
        raise UserError(f"--sweep lists {', '.join(map(str, twice))} more than once")
    kw.pop("users", None)
    kw.pop("spawn_rate", None)
    runs = []
    for c in concurrencies:
        runs.append(run_once(model, url, users=c, spawn_rate=c, out=out / f"c{c}", **kw))
        if runs[-1].aborted:  # the server went away: the next levels would measure nothing
            break
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["concurrency", "requests", "failures", "images_per_s", "p50_ms", "p95_ms", "p99_ms"])
        for r in runs:
            w.writerow([r.users, r.requests, r.failures, f"{r.images_per_s:.3f}", f"{r.latency_ms['p50']:.2f}",
                        f"{r.latency_ms['p95']:.2f}", f"{r.latency_ms['p99']:.2f}"])
    (out / "sweep.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    plot_sweep(runs, out / "sweep.png")
    write_html(runs, out / "report.html", [out / "sweep.png"] + [out / f"c{r.users}" / "report.png" for r in runs])
    return runs


def format_summary(s: RunSummary) -> str:
    lat = s.latency_ms
    lines = [f"{s.model} over {s.protocol}, {s.users} users, {s.duration_s:g}s: {s.requests} requests, "
             f"{s.failures} failures, {s.images_per_s:.2f} images/s",
             f"latency ms: p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
             f"max {lat['max']:.1f}"]
    lines += [f"  error x{n}: {e}" for e, n in list(s.errors.items())[:5]]
    if len(s.servers) > 1:
        lines += [f"  server {u}: {c['requests']} requests, {c['failures']} failures" for u, c in s.servers.items()]
    if s.aborted:
        lines.append(f"  STOPPED EARLY: {s.aborted}")
    if s.triton_skipped:
        lines.append(f"  no Triton breakdown: {s.triton_skipped}")
    for step, t in s.triton.items():
        lines.append(f"  {step:<28} batch {t['avg_batch_size']:5.2f}  queue {t['queue_ms']:7.1f} ms  "
                     f"compute {t['compute_infer_ms']:7.1f} ms  (per request)")
    return "\n".join(lines)
