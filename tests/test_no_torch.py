"""The client and the Triton-side code must work where torch is not installed (`pip install .`)."""

import subprocess
import sys

CODE = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError, as on a client-only install
import importlib
for name in ("tdet.client.triton", "tdet.client.infer", "tdet.client.evaluation", "tdet.client.compare",
             "tdet.client.synth", "tdet.client.loadtest.runner", "tdet.client.pipeline", "tdet.client.postprocess",
             "tdet.ensembles.builder", "tdet.ensembles.server", "tdet.ensembles.cli", "tdet.training.cli"):
    importlib.import_module(name)
from tdet.client.cli import build_parser
sub = next(a for a in build_parser()._actions if a.dest == "command")
print(sorted(sub.choices))
"""


def test_client_and_server_side_import_without_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in ("infer", "eval", "loadtest", "compare", "serve", "repo", "data"):
        assert f"'{cmd}'" in out.stdout


def test_triton_python_models_import_no_torch():
    from pathlib import Path

    root = Path(__file__).parents[1] / "ensembles"
    for f in list(root.glob("*/model.py")) + list(root.glob("backends/*/model.py")):
        text = f.read_text()
        assert "import torch" not in text and "tdet.training" not in text, f
