"""`make demo`: the main job, end to end, with the project's own CLI.

export (both families) -> repo build -> data synth -> serve --detach -> infer (both models) -> stop.
Official checkpoints are used when present in $TDET_CACHE/weights (see `tdet info --json`), else the
models get the seeded random init and the output says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODELS = ("damo-yolo-t", "rtdetrv2-s")


def tdet(*args: str) -> None:
    cmd = [sys.executable, "-m", "tdet.client.cli", *args]
    print("$ tdet " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def official_files(variants: tuple[str, ...]) -> dict[str, Path | None]:
    """Each variant's official checkpoint if it is already in the cache (`tdet info --json` says where)."""
    out = subprocess.run([sys.executable, "-m", "tdet.client.cli", "info", "--json", *variants], check=True,
                         capture_output=True, text=True).stdout
    files = {row["name"]: row.get("weights_file") for row in json.loads(out)}
    return {v: Path(files[v]) if files.get(v) and Path(files[v]).is_file() else None for v in variants}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=Path("build/demo"))
    ap.add_argument("--repository", type=Path, default=Path("model_repository"))
    ap.add_argument("--http-port", default="8000")
    ap.add_argument("--grpc-port", default="8001")
    ap.add_argument("--metrics-port", default="8002")
    args = ap.parse_args(argv)
    work = args.workdir
    onnx = []
    official = official_files(MODELS)
    for variant in MODELS:
        out = work / "onnx" / f"{variant}.onnx"
        weights = official[variant]
        tdet("export", variant, "--out", str(out), *(["--weights", str(weights)] if weights else []))
        onnx.append(str(out))
    tdet("repo", "build", "--onnx", *onnx, "--out", str(args.repository))
    tdet("data", "synth", "--out", str(work / "data"), "--num", "6", "--seed", "0")
    tdet("serve", "--repository", str(args.repository), "--detach", "--http-port", args.http_port,
         "--grpc-port", args.grpc_port, "--metrics-port", args.metrics_port)
    try:
        images = sorted(str(p) for p in (work / "data" / "images").glob("*.jpg"))
        for variant in MODELS:
            model = variant.replace("-", "_")
            tdet("infer", *images, "--model", model, "--url", f"127.0.0.1:{args.grpc_port}",
                 "--out", str(work / "detections" / model))
    finally:
        tdet("stop")
    print("\nannotated images and detections JSON:")
    for variant in MODELS:
        folder = work / "detections" / variant.replace("-", "_")
        counts = [row["count"] for row in json.loads((folder / "detections.json").read_text())]
        print(f"  {folder}/  ({len(counts)} images, detections per image: {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
