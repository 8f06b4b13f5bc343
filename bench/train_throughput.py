"""Benchmark: what the data pipeline costs the training loop, per family.

Side by side in one run, same model, batch, input size and threads:
  full loop   the training DataLoader (workers decode + the recipe's augmentations + collate) feeding
              forward + loss + backward + optimizer step, as `tdet train` runs it;
  step alone  the same steps on batches made beforehand and held in memory.
  step, AMP   the step alone under autocast (bf16 on CPU, fp16 on CUDA; the loss in fp32 as `tdet train --amp`).
  step, AMP + channels_last   the same with the model and the images in channels_last memory format.
  step, AMP + compile         (--compile) the same with torch.compile(model); its compile time is not timed.
  full loop, AMP (+ channels_last)  the new loop next to the old one (the full loop, fp32).
Printed: images/s of each (the runs alternate, so a noisy neighbour hits all), the ratio full / alone
(target >= 0.9: the loader costs <= 10%), AMP / fp32, and the peak memory (RSS of this process, plus CUDA's
max allocated on a GPU).

    python bench/train_throughput.py [--variants damo-yolo-t,rtdetrv2-s] [--img-size 320] [--batch 4]
                                     [--workers 2] [--steps 6] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


def measure(variant: str, data: Path, *, img_size: int, batch: int, workers: int, steps: int, device: str,
            compile_model: bool = False) -> dict[str, float]:
    import torch

    from tdet.training.data.coco import CocoDetection
    from tdet.training.data.loader import build_train_loader
    from tdet.training.engine.optim import build_optimizer
    from tdet.training.recipe import load_recipe
    from tdet.training.registry import family_of

    fam, recipe = family_of(variant), load_recipe(variant)
    ds = CocoDetection(data / "annotations.json", data / "images")
    model = fam.build_model(variant, init="train", num_classes=len(ds.category_ids),
                            input_hw=(img_size, img_size)).to(device).train()
    criterion = fam.build_criterion(variant, len(ds.category_ids))
    optimizer = build_optimizer(model, recipe.optimizer, recipe.optimizer.base_lr(batch))
    multi_scale = None  # one size, so both runs do the same work per image
    loader = build_train_loader(ds, fam.FAMILY, recipe.augment, (img_size, img_size), batch, 0, workers,
                                multi_scale=multi_scale)

    amp = {"on": False, "cl": False, "compiled": None}

    def step(b) -> None:
        images = b.images.to(device, non_blocking=True)
        if amp["cl"]:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{k: v.to(device) for k, v in t.items()} for t in b.targets]
        net = amp["compiled"] or model
        with torch.autocast(device, dtype=torch.bfloat16 if device == "cpu" else torch.float16, enabled=amp["on"]):
            outputs = net(images, targets)
        losses = criterion(outputs, targets)  # the criteria upcast to fp32 themselves
        losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def full(epoch: int) -> float:
        loader.batch_sampler.set_epoch(epoch)
        it = iter(loader)
        step(next(it))  # the first batch waits for the workers to start: not timed
        sync()
        t = time.perf_counter()
        n = 0
        for _ in range(steps):
            b = next(it)
            step(b)
            n += b.images.shape[0]
        sync()
        return n / (time.perf_counter() - t)

    loader.batch_sampler.set_epoch(99)
    premade = [b for _, b in zip(range(steps), loader)]

    def alone() -> float:
        step(premade[0])
        sync()
        t = time.perf_counter()
        for b in premade:
            step(b)
        sync()
        return sum(b.images.shape[0] for b in premade) / (time.perf_counter() - t)

    if len(loader.batch_sampler) < steps + 1:
        raise SystemExit(f"need {steps + 1} batches per epoch, the data gives {len(loader.batch_sampler)}")
    def layout(channels_last: bool) -> None:
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        amp["cl"] = channels_last

    modes = {"full": (False, False, "full"), "alone": (False, False, "alone"), "amp": (True, False, "alone"),
             "amp_cl": (True, True, "alone"), "full_amp": (True, False, "full"), "full_amp_cl": (True, True, "full")}
    if compile_model:
        amp["compiled_model"] = torch.compile(model)
        modes["amp_compile"] = (True, False, "alone")
    runs: dict[str, list[float]] = {k: [] for k in modes}
    for rep in range(2):  # alternating, so a noisy neighbour hits every mode
        for k, (on, cl, kind) in modes.items():
            amp["on"] = on
            layout(cl)
            amp["compiled"] = amp.get("compiled_model") if k == "amp_compile" else None
            runs[k].append(full(rep) if kind == "full" else alone())
    amp.update(on=False, compiled=None)
    layout(False)
    best = {k: max(v) for k, v in runs.items()}
    out = {"full_img_s": best["full"], "alone_img_s": best["alone"], "ratio": best["full"] / best["alone"],
           "amp_img_s": best["amp"], "amp_ratio": best["amp"] / best["alone"],
           "amp_cl_ratio": best["amp_cl"] / best["alone"],
           "full_amp_ratio": best["full_amp"] / best["full"], "full_amp_cl_ratio": best["full_amp_cl"] / best["full"],
           "full_amp_cl_img_s": best["full_amp_cl"],
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    if compile_model:
        out["amp_compile_ratio"] = best["amp_compile"] / best["alone"]
    if device == "cuda":
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="damo-yolo-t,rtdetrv2-s")
    ap.add_argument("--img-size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--compile", action="store_true", help="also time the AMP step under torch.compile")
    args = ap.parse_args(argv)

    import os

    import torch

    from tdet.client.synth import synthesize

    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    print(f"batch {args.batch}, input {args.img_size}x{args.img_size}, {args.workers} loader workers, "
          f"{args.steps} timed steps per run, best of 2 alternating runs")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        synthesize(data, num=args.batch * (args.steps + 2) * 2, seed=0)  # mixed sizes, like real data
        print("img/s under whatever load the machine has: compare the ratios (same run), not absolute figures")
        print(f"{'variant':<14} {'full loop img/s':>16} {'step alone img/s':>17} {'full/alone':>11} "
              f"{'step AMP img/s':>15} {'AMP/fp32':>9} {'AMP+CL/fp32':>12} {'full AMP/old':>13} "
              f"{'full AMP+CL/old':>16} {'peak RSS GB':>12}")
        for v in args.variants.split(","):
            r = measure(v, data, img_size=args.img_size, batch=args.batch, workers=args.workers, steps=args.steps,
                        device=args.device, compile_model=args.compile)
            extra = f"  CUDA peak {r['cuda_peak_gb']:.2f} GB" if "cuda_peak_gb" in r else ""
            extra += f"  AMP+compile/fp32 {r['amp_compile_ratio']:.2f}x" if "amp_compile_ratio" in r else ""
            print(f"{v:<14} {r['full_img_s']:>16.2f} {r['alone_img_s']:>17.2f} {r['ratio']:>10.2f}x "
                  f"{r['amp_img_s']:>15.2f} {r['amp_ratio']:>8.2f}x {r['amp_cl_ratio']:>11.2f}x "
                  f"{r['full_amp_ratio']:>12.2f}x {r['full_amp_cl_ratio']:>15.2f}x {r['peak_rss_gb']:>12.2f}{extra}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
