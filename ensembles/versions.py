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


def _existing_versions(out: Path, m: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(shared parameters, engine version -> weights, engine version -> checkpoint digest) of model `m` already
    in `out` ({}, {}, {} if none; a digest is missing from repositories built before digests were kept)."""
    path = out / m / "config.pbtxt"
    if not path.is_file():
        return {}, {}, {}
    params = {k: v.string_value for k, v in read_config(path).parameters.items()}
    on_disk = sorted(int(d.name) for d in (out / f"{m}_engine").glob("*") if d.is_dir() and d.name.isdigit())
    recorded = json.loads(params.get("versions", "{}")) or {"1": params.get("weights", "unknown")}
    digests = json.loads(params.get("versions_sha256", "{}"))
    return (params, {str(v): recorded.get(str(v), "unknown") for v in on_disk},
            {str(v): digests[str(v)] for v in on_disk if digests.get(str(v))})


def _described(weights: str, digest: str) -> str:
    return f"{weights} (sha256 {digest[:12]})" if digest else weights


def plan_versions(out: Path, m: str, info: OnnxInfo, opts: BuildOptions, version: int, replace: bool
                  ) -> tuple[dict[str, str], dict[str, str], str]:
    """Which engine versions `m` holds after this build (version -> weights, version -> checkpoint digest) and
    which weights it replaces. UserError when the build would silently replace other weights (another path, or
    the same path retrained: another digest), or mix incompatible versions."""
    params, versions, digests = _existing_versions(out, m)
    params = {"nms": "python", "precision": "fp32", **params} if params else params  # built before --nms/--precision
    new = {"family": info.family, "input_hw": specs.format_hw(info.input_hw),
           "category_ids": json.dumps(info.category_ids), "engine": opts.engine, "nms": opts.nms,
           "precision": info.precision}
    mine = {str(version): info.weights_sha256} if info.weights_sha256 else {}
    clash = [k for k in SHARED if params and params.get(k) != new[k]]
    if clash:
        if not replace:
            raise UserError(f"{out / m} holds a model with another {', '.join(clash)} ({params.get('variant')}, "
                            f"weights {params.get('weights')}); versions of one name share the preprocess and "
                            f"postprocess: pass --name to build this one beside it, or --replace")
        return {str(version): info.weights}, mine, params.get("weights", "")
    v = str(version)
    old, old_digest = versions.get(v, ""), digests.get(v, "")
    # a digest only on one side (an older build or export) cannot tell: the path decides, as before digests
    same = old == info.weights and not (old_digest and info.weights_sha256 and old_digest != info.weights_sha256)
    if old and not same and not replace:
        was, now = _described(old, old_digest), _described(info.weights, info.weights_sha256)
        why = " (the checkpoint at that path changed since)" if old == info.weights else ""
        raise UserError(f"{out / m} version {version} holds weights {was}, this ONNX has {now}{why}: pass --name "
                        f"to serve both side by side (A/B), --version N to add it as another version, or --replace")
    kept = {k: d for k, d in digests.items() if k != v}
    return {**versions, v: info.weights}, {**kept, **mine}, (_described(old, old_digest) if old and not same else "")
