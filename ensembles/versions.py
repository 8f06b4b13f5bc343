"""Engine versions of one model name in a repository: what is there already (read back from the ensemble's
config parameters and the engine's version folders), and whether a new build may add or replace one."""

from __future__ import annotations

import json
from pathlib import Path

from tdet.client import specs
from tdet.client.errors import UserError

from .configs import BuildOptions, read_config
from .onnx_info import OnnxInfo

# what the versions of one name share (the preprocess, postprocess and ensemble configs; the ensemble records one
# precision, which clients read, so an int8 graph is not a version of an fp32 name)
SHARED = ("family", "input_hw", "category_ids", "engine", "nms", "precision")


def _existing_versions(out: Path, m: str) -> tuple[dict[str, str], dict[str, str]]:
    """(shared parameters, engine version -> weights) of model `m` already in `out` ({} , {} if none)."""
    path = out / m / "config.pbtxt"
    if not path.is_file():
        return {}, {}
    params = {k: v.string_value for k, v in read_config(path).parameters.items()}
    on_disk = sorted(int(d.name) for d in (out / f"{m}_engine").glob("*") if d.is_dir() and d.name.isdigit())
    recorded = json.loads(params.get("versions", "{}")) or {"1": params.get("weights", "unknown")}
    return params, {str(v): recorded.get(str(v), "unknown") for v in on_disk}


def plan_versions(out: Path, m: str, info: OnnxInfo, opts: BuildOptions, version: int, replace: bool
                  ) -> tuple[dict[str, str], str]:
    """Which engine versions `m` holds after this build (version -> weights) and which weights it replaces.
    UserError when the build would silently replace other weights, or mix incompatible versions."""
    params, versions = _existing_versions(out, m)
    params = {"nms": "python", "precision": "fp32", **params} if params else params  # built before --nms/--precision
    new = {"family": info.family, "input_hw": specs.format_hw(info.input_hw),
           "category_ids": json.dumps(info.category_ids), "engine": opts.engine, "nms": opts.nms,
           "precision": info.precision}
    clash = [k for k in SHARED if params and params.get(k) != new[k]]
    if clash:
        if not replace:
            raise UserError(f"{out / m} holds a model with another {', '.join(clash)} ({params.get('variant')}, "
                            f"weights {params.get('weights')}); versions of one name share the preprocess and "
                            f"postprocess: pass --name to build this one beside it, or --replace")
        return {str(version): info.weights}, params.get("weights", "")
    old = versions.get(str(version), "")
    if old and old != info.weights and not replace:
        raise UserError(f"{out / m} version {version} holds weights {old!r}, this ONNX has {info.weights!r}: pass "
                        f"--name to serve both side by side (A/B), --version N to add it as another version, or "
                        f"--replace")
    return {**versions, str(version): info.weights}, (old if old != info.weights else "")
