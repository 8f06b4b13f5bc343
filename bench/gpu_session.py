"""One call on a GPU machine (minutes of it, every start costs): train both demo models, record what the
machine has, time the batched AlignOTA assigner on CUDA, and if TensorRT is there build and time the demo
models' plans. Everything goes under OUT (default $OUT): session.log, summary.json, env.json,
assigner_cuda.json, runs/<variant>/ (tdet train's run folders: best.pth / last.pth, log.csv, config.yaml),
onnx/, trt/ (trtexec logs; the plans themselves stay on the machine unless --keep-plans).

    python bench/gpu_session.py [--out DIR] [--budget-s 540] [--tiny]

Each step gets a share of the budget (a step past its share is stopped, the next one runs), so the call ends
within about --budget-s + a minute whatever happens. --tiny (a few images, 1 epoch, any device) checks the
script's logic on a CPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "training" / "demo"
# variant -> tdet train arguments on the GPU (the demo recipes; batch sized for an H200-class GPU)
TRAIN = {"damo-yolo-t": ["--img-size", "320", "--epochs", "30", "--batch", "64", "--eval-every", "5"],
         "rtdetrv2-s": ["--img-size", "320", "--epochs", "24", "--batch", "32", "--eval-every", "4"]}
TINY = ["--img-size", "160", "--epochs", "1", "--batch", "2", "--eval-every", "1", "--workers", "1"]


class Session:
    def __init__(self, out: Path) -> None:
        self.out, self.summary = out, {"steps": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "session.log", "a", buffering=1)

    def run(self, name: str, cmd: list[str], timeout_s: float, **kw) -> subprocess.CompletedProcess | None:
        """Run one step with its own time limit; its output goes to session.log, its outcome to summary."""
        self.log.write(f"\n$ {' '.join(map(str, cmd))}   (limit {timeout_s:.0f} s)\n")
        t = time.time()
        try:
            p = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=max(timeout_s, 1), **kw)
            outcome = {"rc": p.returncode}
        except subprocess.TimeoutExpired as e:
            p, outcome = None, {"rc": None, "timed_out": True}
            self.log.write((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                           else (e.stdout or ""))
        except FileNotFoundError as e:
            p, outcome = None, {"rc": None, "missing": str(e)}
        if p is not None:
            self.log.write(p.stdout + p.stderr)
        outcome["seconds"] = round(time.time() - t, 1)
        self.summary["steps"][name] = outcome
        self.save()
        return p

    def save(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1))


def environment(s: Session) -> dict:
    """What the machine has: GPU, torch/CUDA, tensorrt module, trtexec, onnxruntime providers."""
    env: dict = {"trtexec": shutil.which("trtexec")}
    smi = s.run("nvidia-smi", ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"], 30)
    env["nvidia_smi"] = smi.stdout.strip() if smi is not None and smi.returncode == 0 else None
    probes = {"torch": "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())",
              "tensorrt": "import tensorrt; print(tensorrt.__version__)",
              "onnxruntime": "import onnxruntime as o; print(o.__version__, o.get_available_providers())"}
    for name, code in probes.items():
        p = s.run(f"probe_{name}", [sys.executable, "-c", code], 60)
        env[name] = p.stdout.strip() if p is not None and p.returncode == 0 else None
    (s.out / "env.json").write_text(json.dumps(env, indent=1))
    s.summary["env"] = env
    return env


def checkpoint(run_dir: Path) -> Path | None:
    for name in ("best.pth", "last.pth"):
        if (run_dir / name).exists():
            return run_dir / name
    return None


def trt_time(s: Session, variant: str, onnx: Path, precision: str, size: int, timeout_s: float) -> None:
    """trtexec build + timing of one plan; its summary lines go to summary.json."""
    plan = s.out / "trt" / f"{variant}.{precision}.plan"
    plan.parent.mkdir(exist_ok=True)
    shape = f"images:1x3x{size}x{size}"
    p = s.run(f"trt_{variant}_{precision}",
              ["trtexec", f"--onnx={onnx}", f"--{precision}", f"--saveEngine={plan}", f"--minShapes={shape}",
               f"--optShapes={shape}", f"--maxShapes=images:8x3x{size}x{size}", f"--shapes={shape}",
               "--duration=5"], timeout_s)
    if p is not None:
        (s.out / "trt" / f"{variant}.{precision}.log").write_text(p.stdout + p.stderr)
        lines = [ln.split("]", 1)[-1].strip() for ln in p.stdout.splitlines()
                 if "Throughput:" in ln or "Latency:" in ln or "GPU Compute Time:" in ln]
        s.summary["steps"][f"trt_{variant}_{precision}"]["figures"] = lines
        s.save()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "build/gpu_session")))
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--tiny", action="store_true", help="a few images, 1 epoch: checks the logic anywhere")
    ap.add_argument("--keep-plans", action="store_true")
    args = ap.parse_args(argv)
    start = time.time()
    left = lambda: args.budget_s - (time.time() - start)  # noqa: E731
    s = Session(args.out)
    tdet = [str(Path(sys.executable).parent / "tdet")]  # the venv's entry point
    env = environment(s)
    cuda = bool(env.get("torch")) and env["torch"].endswith("True")
    device = "cuda" if cuda else "cpu"
    s.summary.update(device=device, tiny=args.tiny)

    bench = [sys.executable, str(ROOT / "bench" / "assigner_batched.py"), "--device", device,
             "--json", s.out / "assigner.json"]
    s.run("assigner_bench", bench + (["--sizes", "160", "--batches", "4", "--reps", "1"] if args.tiny else []),
          min(60, left() * 0.1))

    data = s.out / "data"
    train_num, val_num = (8, 4) if args.tiny else (3000, 200)
    s.run("synth_train", tdet + ["data", "synth", "--out", data / "train", "--num", train_num, "--split", "train",
                                 "--workers", os.cpu_count() or 1], min(120, left() * 0.2))
    s.run("synth_val", tdet + ["data", "synth", "--out", data / "val", "--num", val_num, "--split", "val"], 60)

    onnx_dir = s.out / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    variants = list(TRAIN)
    for i, variant in enumerate(variants):
        run_dir = s.out / "runs" / variant
        recipe = DEMO / f"{variant}.recipe.yaml"
        extra = (TINY + ["--device", device]) if args.tiny else (TRAIN[variant] + ["--device", "cuda", "--amp"])
        cmd = tdet + ["train", variant, "--data", data / "train" / "annotations.json",
                      "--images", data / "train" / "images", "--val-data", data / "val" / "annotations.json",
                      "--val-images", data / "val" / "images", "--out", run_dir] + extra
        if recipe.exists():
            cmd += ["--recipe", recipe]
        # the trainings share what is left, minus a reserve for export and TensorRT
        share = (left() - (0 if args.tiny else 90)) / (len(variants) - i)
        s.run(f"train_{variant}", cmd, max(share, 30))  # a stopped run still has its last.pth
        ckpt = checkpoint(run_dir)
        s.summary["steps"][f"train_{variant}"]["checkpoint"] = str(ckpt) if ckpt else None
        if ckpt is None:
            continue
        size = 160 if args.tiny else 320
        onnx = onnx_dir / f"{variant}.onnx"
        s.run(f"export_{variant}", tdet + ["export", variant, "--weights", ckpt, "--out", onnx], 120)
        if env["trtexec"] and onnx.exists():
            for precision in ("fp16", "int8"):
                trt_time(s, variant, onnx, precision, size, min(120, max(left(), 30)))
    if not args.keep_plans:
        shutil.rmtree(s.out / "trt" / "plans", ignore_errors=True)
        for plan in (s.out / "trt").glob("*.plan") if (s.out / "trt").exists() else []:
            plan.unlink()
    s.summary["seconds"] = round(time.time() - start, 1)
    s.save()
    print(json.dumps(s.summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
