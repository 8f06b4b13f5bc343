"""`make demo-model`: train the demo detector from scratch with the project's own CLI, then write the small
release file `make demo` serves.

    tdet data synth (train and val splits) -> tdet train -> EMA weights in fp16 -> training/demo/<variant>.pth

plus <variant>.yaml (the run's config.yaml: every value used, and the exact commands), <variant>.log.csv and
<variant>.curves.png next to it. On CUDA the run takes minutes; on a 2-core CPU hours (see training/demo/README.md).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULTS = {  # the committed demo models were made with these (training/demo/README.md)
    "damo-yolo-t": {"img_size": 320, "epochs": 30, "batch": 64},
    "rtdetrv2-s": {"img_size": 320, "epochs": 30, "batch": 32},
}


def run(cmd: list[str]) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", nargs="?", default="damo-yolo-t", choices=sorted(DEFAULTS))
    ap.add_argument("--work", type=Path, default=Path("build/demo-model"), help="data and run folder")
    ap.add_argument("--dest", type=Path, default=Path(__file__).parent / "demo", help="where the release file goes")
    ap.add_argument("--train-num", type=int, default=3000)
    ap.add_argument("--val-num", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--workers", type=int, default=None, help="default: the CPU count, at most 8")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--img-size", type=int)
    args = ap.parse_args(argv)

    import os

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    d = DEFAULTS[args.variant]
    epochs, batch, size = args.epochs or d["epochs"], args.batch or d["batch"], args.img_size or d["img_size"]
    tdet = [sys.executable, "-m", "tdet.client.cli"]
    data = args.work / "data"
    for split, num in (("train", args.train_num), ("val", args.val_num)):
        if not (data / split / "annotations.json").is_file():
            run([*tdet, "data", "synth", "--out", str(data / split), "--num", str(num), "--seed", str(args.seed),
                 "--split", split, "--workers", str(max(1, os.cpu_count() or 1))])
    out = args.work / args.variant
    train = [*tdet, "train", args.variant, "--data", str(data / "train/annotations.json"),
             "--images", str(data / "train/images"), "--val-data", str(data / "val/annotations.json"),
             "--val-images", str(data / "val/images"), "--epochs", str(epochs), "--batch", str(batch),
             "--img-size", str(size), "--workers", str(workers), "--device", device, "--seed", str(args.seed),
             "--eval-every", "5", "--out", str(out), "--recipe", str(Path(__file__).parent / "demo" /
                                                                     f"{args.variant}.recipe.yaml")]
    if (out / "last.pth").is_file():
        train.append("--resume")
    start = time.time()
    run(train)
    minutes = (time.time() - start) / 60

    from tdet.training.engine.checkpoint import slim_checkpoint

    args.dest.mkdir(parents=True, exist_ok=True)
    best = out / "best.pth" if (out / "best.pth").is_file() else out / "last.pth"
    release = slim_checkpoint(best, args.dest / f"{args.variant}.pth", extra_meta={
        "made_by": f"python -m tdet.training.demo_model {args.variant} (device {device}, {minutes:.1f} min)",
        "train_command": "tdet " + shlex.join(train[3:])})
    shutil.copyfile(out / "config.yaml", args.dest / f"{args.variant}.yaml")
    shutil.copyfile(out / "log.csv", args.dest / f"{args.variant}.log.csv")
    shutil.copyfile(out / "curves.png", args.dest / f"{args.variant}.curves.png")
    print(f"wrote {release} ({release.stat().st_size / 1e6:.1f} MB) from {best} after {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
