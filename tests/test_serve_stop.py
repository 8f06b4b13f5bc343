"""Several detached servers side by side: `tdet serve --detach` twice, `tdet stop --http-port P` stops that
one only, a bare `tdet stop` is refused while two run (it would have to guess), `--all` stops the rest,
and stopping when nothing runs is not an error. Real tritonservers on a one-model repository (the
preprocess step alone), so they start in seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest

from tdet.ensembles.server import LOGS_KEPT, free_port, prune_logs

pytestmark = pytest.mark.server


def _tdet(*args: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdet.client.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status == 200
    except OSError:
        return False


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_several_detached_servers_and_idempotent_stop(repository, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(repository / "damo_yolo_t_preprocess", repo / "damo_yolo_t_preprocess")
    env = {**os.environ, "TDET_CACHE": str(tmp_path / "cache")}  # its own records, not the user's
    ports = [free_port() for _ in range(6)]
    pids = []
    logs = tmp_path / "cache" / "triton"  # the logs of earlier free-port servers piled up here, never removed
    logs.mkdir(parents=True)
    old = [logs / f"server-{40000 + i}.log" for i in range(LOGS_KEPT + 5)]
    for i, path in enumerate(old):
        path.write_text("an old server's log\n")
        os.utime(path, (1e9 + i, 1e9 + i))  # old[-1] the newest
    try:
        for http, grpc, metrics in (ports[:3], ports[3:]):
            res = _tdet("serve", "--repository", str(repo), "--detach", "--http-port", str(http), "--grpc-port",
                        str(grpc), "--metrics-port", str(metrics), env=env)
            assert res.returncode == 0, res.stderr
            assert f"tdet stop --http-port {http}" in res.stdout
            pids.append(json.loads((tmp_path / f"cache/triton/servers/{http}.json").read_text())["pid"])
        assert _ready(ports[0]) and _ready(ports[3])
        # each start kept the newest LOGS_KEPT logs of stopped servers; a running server's log is never removed
        assert sorted(p for p in old if p.exists()) == sorted(old[-LOGS_KEPT:])
        running = [logs / f"server-{ports[0]}.log", logs / f"server-{ports[3]}.log"]
        assert sorted(prune_logs(logs, keep=0)) == sorted(old[-LOGS_KEPT:])
        assert all(p.is_file() for p in running)

        res = _tdet("stop", env=env)
        assert res.returncode == 2 and "2 detached servers are running" in res.stderr, res.stderr
        assert f"http port {ports[0]}" in res.stderr and "--all" in res.stderr
        assert _ready(ports[0]) and _ready(ports[3])  # nothing was stopped

        res = _tdet("stop", "--http-port", str(ports[0]), env=env)
        assert res.returncode == 0 and f"stopped tritonserver pid {pids[0]}" in res.stdout, res.stderr
        assert _gone(pids[0]) and _ready(ports[3])

        res = _tdet("stop", "--http-port", str(ports[0]), env=env)  # again: nothing to do, not an error
        assert res.returncode == 0 and "nothing to stop" in res.stdout

        res = _tdet("stop", "--all", env=env)
        assert res.returncode == 0 and f"stopped tritonserver pid {pids[1]}" in res.stdout
        assert _gone(pids[1])
        res = _tdet("stop", env=env)
        assert res.returncode == 0 and "no detached server is running" in res.stdout
        assert not list((tmp_path / "cache/triton/servers").glob("*.json"))
        assert sorted(prune_logs(logs, keep=0)) == sorted(running)  # stopped: theirs go too
    finally:
        for pid in pids:  # whatever the assertions did, leave no server behind
            if not _gone(pid):
                os.killpg(pid, 9)
