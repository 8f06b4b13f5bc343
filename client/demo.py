"""`make demo`: the main job, end to end, with the project's own CLI, on a model the project trained itself.

export (the demo checkpoint in training/demo, `make demo-model` reproduces it) -> repo build -> data synth (the
held-out val split the model never trained on) -> serve --detach -> infer (annotated images) -> eval through
Triton with the in-process PyTorch reference of the same checkpoint -> compare (the seed's DAMO-YOLO vs RT-DETRv2
table: served AP, latency, throughput, params, GFLOPs) -> stop, then the served and in-process mAP side by side,
the annotated images of each model in one PNG (WORKDIR/<variant>.png) and both families on the same images,
a row per model (WORKDIR/families.png; the README shows its copy, training/demo/families.demo.png). Tracking: the
damo-yolo-t repository is built with --track, and one held-out synthetic clip goes through damo_yolo_t_track
(`tdet eval --mot`): HOTA / MOTA / IDF1 printed, the annotated video in WORKDIR/track/, a strip of a few of its frames
(track ids drawn) in WORKDIR/tracking.png (the README's copy: training/demo/tracking.demo.png).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# the models the project trained itself (python -m tdet.training.demo_model VARIANT), next to the sources
DEMO_DIR = Path(__file__).resolve().parents[1] / "training" / "demo"
VARIANTS = ("damo-yolo-t", "rtdetrv2-s")  # each served when its demo checkpoint exists
VAL = {"num": 200, "seed": 0}  # the val split the demo models were evaluated on while training
TRACK_VARIANT = "damo-yolo-t"  # built with --track; its <m>_track runs the demo clip
# the demo clip: the val split of a seed no training used (the demo models trained on seed 0's train split)
CLIP = {"seed": 7, "frames": 40, "size": "320x240", "fps": 10}
STRIP_FRAMES = 4


def tdet(*args: str) -> None:
    cmd = [sys.executable, "-m", "tdet.client.cli", *args]
    print("$ tdet " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def _paste_fitted(sheet, path: Path, at: tuple[int, int], cell: tuple[int, int]) -> None:
    """An image shrunk to fit a cell of the sheet, centred in it."""
    from PIL import Image

    tile = Image.open(path).convert("RGB")
    tile.thumbnail(cell, Image.LANCZOS)
    sheet.paste(tile, (at[0] + (cell[0] - tile.width) // 2, at[1] + (cell[1] - tile.height) // 2))


def montage(images: list[Path], out: Path, *, cols: int = 3, cell: tuple[int, int] = (320, 240)) -> Path:
    """The annotated images in one small PNG, each fitted into a cell of a grid (the README's picture)."""
    from PIL import Image

    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * cell[0], rows * cell[1]), "white")
    for i, path in enumerate(images):
        _paste_fitted(sheet, path, ((i % cols) * cell[0], (i // cols) * cell[1]), cell)
    sheet.quantize(colors=128).save(out, optimize=True)  # a palette keeps it small enough to commit
    return out


def families(rows: dict[str, list[Path]], out: Path, *, cols: int = 3, cell: tuple[int, int] = (320, 240),
             label_w: int = 110) -> Path:
    """Both families' detections on the same val images: one row per model, its name on the left."""
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (label_w + cols * cell[0], len(rows) * cell[1]), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, images) in enumerate(rows.items()):
        draw.text((8, r * cell[1] + cell[1] // 2 - 6), name, fill="black")
        for c, path in enumerate(images[:cols]):
            _paste_fitted(sheet, path, (label_w + c * cell[0], r * cell[1]), cell)
    sheet.quantize(colors=128).save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("build/demo"), help="outputs")
    ap.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton repository to build")
    ap.add_argument("--models", type=Path, default=DEMO_DIR, help="folder of the demo checkpoints (<variant>.pth)")
    ap.add_argument("--http-port", default="8000")
    ap.add_argument("--grpc-port", default="8001")
    ap.add_argument("--metrics-port", default="8002")
    ap.add_argument("--compare-seconds", type=float, default=5.0, help="saturation run per model in the comparison")
    args = ap.parse_args(argv)
    work = args.workdir
    variants = [v for v in VARIANTS if (args.models / f"{v}.pth").is_file()]
    if not variants:
        print(f"no demo checkpoint in {args.models}: run `make demo-model` first", file=sys.stderr)
        return 2
    onnx = []
    for variant in variants:
        out = work / "onnx" / f"{variant}.onnx"
        tdet("export", variant, "--weights", str(args.models / f"{variant}.pth"), "--out", str(out))
        onnx.append(str(out))
    plain = [o for v, o in zip(variants, onnx) if v != TRACK_VARIANT]
    tracked = [o for v, o in zip(variants, onnx) if v == TRACK_VARIANT]
    for files, extra in ((plain, []), (tracked, ["--track"])):
        if files:
            tdet("repo", "build", "--onnx", *files, "--out", str(args.repository), *extra)
    val = work / "val"
    tdet("data", "synth", "--out", str(val), "--num", str(VAL["num"]), "--seed", str(VAL["seed"]), "--split", "val",
         "--workers", "2")
    tdet("serve", "--repository", str(args.repository), "--detach", "--http-port", args.http_port,
         "--grpc-port", args.grpc_port, "--metrics-port", args.metrics_port)
    url = f"127.0.0.1:{args.grpc_port}"
    try:
        images = sorted(str(p) for p in (val / "images").glob("*.jpg"))[:6]
        for variant in variants:
            model = variant.replace("-", "_")
            tdet("infer", *images, "--model", model, "--url", url, "--out", str(work / "detections" / model))
            tdet("eval", "--model", model, "--url", url, "--coco", str(val / "annotations.json"), "--images",
                 str(val / "images"), "--reference", variant, "--weights", str(args.models / f"{variant}.pth"),
                 "--out", str(work / "eval" / model))
        models = ",".join(v.replace("-", "_") for v in variants)
        tdet("compare", "--models", models, "--url", url, "--coco", str(val / "annotations.json"), "--images",
             str(val / "images"), "--out", str(work / "compare"), "--seconds", str(args.compare_seconds))
        if tracked:
            track_clip(work, url)
    finally:
        tdet("stop", "--http-port", args.http_port)
    print(f"\nheld-out val split ({VAL['num']} synthetic images, seed {VAL['seed']}), COCO box metrics in percent:")
    print(f"{'model':<14} {'served AP':>10} {'served AP50':>12} {'PyTorch AP':>11} {'PyTorch AP50':>13} "
          f"{'AP delta':>9}")
    for variant in variants:
        model = variant.replace("-", "_")
        m = json.loads((work / "eval" / model / "metrics.json").read_text())
        s, r = m["metrics"], m["reference"]
        print(f"{model:<14} {100 * s['AP']:>10.2f} {100 * s['AP50']:>12.2f} {100 * r['AP']:>11.2f} "
              f"{100 * r['AP50']:>13.2f} {100 * (s['AP'] - r['AP']):>+9.2f}")
    print(f"\nDAMO-YOLO vs RT-DETRv2 through the server on this machine ({work / 'compare' / 'compare.md'}):")
    print((work / "compare" / "compare.md").read_text())
    print("annotated images and detections JSON:")
    per_model = {}
    for variant in variants:
        folder = work / "detections" / variant.replace("-", "_")
        rows = json.loads((folder / "detections.json").read_text())
        per_model[variant] = [Path(row["annotated"]) for row in sorted(rows, key=lambda r: r["image"])]
        sheet = montage(per_model[variant], work / f"{variant}.png")
        print(f"  {folder}/  ({len(rows)} images, detections per image: {[row['count'] for row in rows]}); "
              f"side by side: {sheet}")
    print(f"  both families on the same images, a row each: {families(per_model, work / 'families.png')}")
    if tracked:
        report_tracking(work)
    return 0


def track_clip(work: Path, url: str) -> None:
    """One held-out synthetic clip through <m>_track, scored against its ground truth (tdet eval --mot)."""
    clips = work / "clips"
    tdet("data", "synth", "--video", "--out", str(clips), "--num", "1", "--seed", str(CLIP["seed"]), "--split",
         "val", "--frames", str(CLIP["frames"]), "--size", CLIP["size"], "--fps", str(CLIP["fps"]))
    model = TRACK_VARIANT.replace("-", "_") + "_track"
    tdet("eval", "--model", model, "--url", url, "--mot", str(clips / "clip-000"), "--out", str(work / "track"))


def strip(video: Path, out: Path, frames: int = STRIP_FRAMES) -> Path:
    """`frames` evenly spaced frames of the annotated video side by side in one small PNG."""
    import cv2

    (video.parent / "strip").mkdir(exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    picks, paths = {round(i * (total - 1) / max(1, frames - 1)) for i in range(frames)}, []
    for i in range(total):
        ok, img = cap.read()
        if not ok:
            break
        if i in picks:
            paths.append(video.parent / "strip" / f"{i:04d}.png")
            cv2.imwrite(str(paths[-1]), img)
    cap.release()
    return montage(paths, out, cols=len(paths))


def report_tracking(work: Path) -> None:
    m = json.loads((work / "track" / "mot_metrics.json").read_text())
    s = m["metrics"]
    print(f"\ntracking: held-out clip ({CLIP['frames']} frames {CLIP['size']}, seed {CLIP['seed']} val) through "
          f"{m['model']}: HOTA {100 * s['hota']:.2f}  MOTA {100 * s['mota']:.2f}  IDF1 {100 * s['idf1']:.2f}  "
          f"ID switches {s['num_switches']:.0f}")
    video = Path(m["run"]["video"])
    print(f"  annotated video: {video}; frames with track ids: {strip(video, work / 'tracking.png')}")


if __name__ == "__main__":
    sys.exit(main())
