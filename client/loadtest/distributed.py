"""Locust's distributed mode for `tdet loadtest --workers N`: one master (headless, Locust's own CSVs, the
run's clock) and N worker processes that hold the users. At the end every worker sends its exact latencies to the master
through Locust's messages (locustfile.py), so the master's latencies.csv and summary count every worker's
requests, whether the workers run here or on other machines (`--remote-workers`). `--master-host H` runs
only a worker that joins a master elsewhere; it also keeps its own requests in <out>/latencies.csv.
TDET_LOCUST_MASTER_PORT / TDET_LOCUST_MASTER_BIND override the remote master's port (5557) and bind
address (0.0.0.0); the workers read the same port variable."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

MASTER_PORT = 5557  # Locust's default; a free port for local-only runs


def master_port() -> int:
    """The port a remote master listens on and its workers join (TDET_LOCUST_MASTER_PORT, else 5557)."""
    return int(os.environ.get("TDET_LOCUST_MASTER_PORT") or MASTER_PORT)


def master_args(workers: int, port: int, remote: bool) -> list[str]:
    bind = (os.environ.get("TDET_LOCUST_MASTER_BIND") or "0.0.0.0") if remote else "127.0.0.1"
    return ["--master", "--expect-workers", str(workers), "--master-bind-host", bind, "--master-bind-port", str(port)]


def worker_cmd(locustfile: str, user_class: str, master_host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", locustfile, "--worker", "--master-host", master_host,
            "--master-port", str(port), "--loglevel", "WARNING", user_class]


@contextmanager
def local_workers(n: int, locustfile: str, user_class: str, port: int, env: dict, log: Path):
    """N worker processes joined to the master on 127.0.0.1:port; they leave when the master stops."""
    procs = []
    with open(log, "w") as f:
        try:
            for _ in range(n):
                procs.append(subprocess.Popen(worker_cmd(locustfile, user_class, "127.0.0.1", port), env=env,
                                              stdout=f, stderr=subprocess.STDOUT))
            yield procs
            for p in procs:  # the master tells them to quit; they write their latencies first
                p.wait(timeout=60)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()


def merge_latencies(latency_file: Path) -> None:
    """latencies.csv = the header and every part's rows (<latencies.csv>.<pid>, as former versions' workers
    wrote them); nothing to do when there is none."""
    parts = sorted(latency_file.parent.glob(latency_file.name + ".*"))
    if not parts:
        return
    rows = [line for p in parts for line in p.read_text().splitlines()[1:]]
    latency_file.write_text("start_unix_s,latency_ms,ok,server,error\n" + "".join(r + "\n" for r in rows))
    for p in parts:
        p.unlink()


def join_master(master_host: str, model: str, url: str, protocol: str, images: Path, out: Path, *,
                timeout_s: float, retries: int) -> int:
    """`tdet loadtest --master-host H`: one worker for a master started with --workers N --remote-workers."""
    from .runner import LOCUSTFILE, USER_CLASS, locust_env

    out.mkdir(parents=True, exist_ok=True)
    (out / "latencies.csv").unlink(missing_ok=True)  # not a former run's
    cmd = worker_cmd(LOCUSTFILE, USER_CLASS[protocol], master_host, master_port())
    env = dict(locust_env(url, model, images, out, timeout_s, retries),
               TDET_WORKER_LATENCY_FILE=str(out / "latencies.csv"))  # this worker's own requests
    rc = subprocess.run(cmd, env=env).returncode
    if rc == 0 and (out / "latencies.csv").is_file():
        print(f"this worker's requests: {out / 'latencies.csv'} (the summary is the master's)")
    return rc
