"""Locust's distributed mode for `tdet loadtest --workers N`: one master (headless, Locust's own CSVs, the
run's clock) and N worker processes that hold the users. Local workers write their exact latencies to
<latencies.csv>.<pid>, merged into latencies.csv after the run, so the summary counts every worker's
requests. `--master-host H` runs only a worker that joins a master elsewhere (its latencies stay local)."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

MASTER_PORT = 5557  # Locust's default; a free port for local-only runs


def master_args(workers: int, port: int, remote: bool) -> list[str]:
    bind = "0.0.0.0" if remote else "127.0.0.1"
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
    """latencies.csv = the header and every worker's rows (<latencies.csv>.<pid>)."""
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
    cmd = worker_cmd(LOCUSTFILE, USER_CLASS[protocol], master_host, MASTER_PORT)
    return subprocess.run(cmd, env=locust_env(url, model, images, out, timeout_s, retries)).returncode
