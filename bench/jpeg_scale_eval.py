"""The accuracy cost of `tdet repo build --jpeg-scale auto`, through the server (a measurement, not a test).

    .venv/bin/python bench/jpeg_scale_eval.py [--variants damo-yolo-t rtdetrv2-s] [--num 200]

Serves each trained demo checkpoint twice from one repository (NAME: exact decode, NAME_jpeg_auto: DCT-domain
reduced decode) and runs the official COCO evaluation of each on two val splits of `tdet data synth` (seed 0):
the demo's (mixed sizes, 320x240 to 1280x720: the reduction applies to the larger ones) and the same split
generated at 1280x720 (the reduction applies to every image). Prints AP / AP50 and the deltas.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEMO_DIR = Path(__file__).resolve().parents[1] / "training" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["damo-yolo-t", "rtdetrv2-s"])
    ap.add_argument("--num", type=int, default=200, help="images per val split (the demo's: 200)")
    args = ap.parse_args()

    from tdet.client.evaluation import evaluate
    from tdet.client.synth import synthesize
    from tdet.ensembles.builder import build_repository
    from tdet.ensembles.configs import BuildOptions
    from tdet.ensembles.server import free_port, start, stop_process
    from tdet.training.export import export_onnx

    work = Path(tempfile.mkdtemp(prefix="tdet-jpeg-eval-"))
    repo = work / "model_repository"
    models = []
    for v in args.variants:
        onnx = export_onnx(v, work / f"{v}.onnx", weights=DEMO_DIR / f"{v}.pth").path
        m = v.replace("-", "_")
        for name, scale in ((m, "off"), (f"{m}_jpeg_auto", "auto")):
            build_repository([onnx], repo, BuildOptions(jpeg_scale=scale), name=name)
        models.append(m)
    splits = {"mixed sizes": None, "1280x720": (1280, 720)}
    for key, size in splits.items():
        synthesize(work / key.replace(" ", "_"), args.num, seed=0, split="val", size=size, workers=2)
    proc, info = start(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), timeout_s=600)
    rows = []
    try:
        for m in models:
            for key in splits:
                d = work / key.replace(" ", "_")
                got = {name: evaluate(name, info.grpc_url, d / "annotations.json", d / "images",
                                      out=work / "eval" / name / key.replace(" ", "_")).metrics
                       for name in (m, f"{m}_jpeg_auto")}
                rows.append((m, key, got[m], got[f"{m}_jpeg_auto"]))
    finally:
        stop_process(proc.pid)
    print(f"\nval split (seed 0, {args.num} images), COCO box AP in percent, served: exact decode vs --jpeg-scale auto")
    print("| model | val images | AP off | AP auto | delta AP | AP50 off | AP50 auto | delta AP50 |\n|" + "---|" * 8)
    for m, key, off, auto in rows:
        print(f"| {m} | {key} | {100 * off['AP']:.2f} | {100 * auto['AP']:.2f} | {100 * (auto['AP'] - off['AP']):+.2f} "
              f"| {100 * off['AP50']:.2f} | {100 * auto['AP50']:.2f} | {100 * (auto['AP50'] - off['AP50']):+.2f} |")


if __name__ == "__main__":
    import signal

    from tdet.client import interrupts

    with interrupts.recorded((signal.SIGINT, signal.SIGTERM)):  # SIGTERM too runs the finally that stops the server
        main()
