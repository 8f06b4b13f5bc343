"""Benchmark: DAMO-YOLO loss per batch with the batched AlignOTA assigner vs the per-image one (the same
targets, bit for bit: tests/test_damo_yolo_batched_assigner.py), side by side in one run.

Crowded synthetic batches: images cycle through 0 / 5 / 30 / 60 GT boxes, a third of them tiny (2-8 px);
random head outputs of damo-yolo's shape (3 levels, 17 bins, 6 classes). Timed: the criterion's forward
(assignment + targets + loss), median of alternating runs.

    python bench/assigner_batched.py [--device cpu|cuda] [--sizes 320,640] [--batches 8,16] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def make_batch(batch: int, size: int, device: str, classes: int = 6, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    outs = [(torch.randn(batch, classes, size // s, size // s, generator=gen) * 2 - 3,
             torch.randn(batch, 68, size // s, size // s, generator=gen) * 2) for s in (8, 16, 32)]
    targets = []
    for i in range(batch):
        count = (0, 5, 30, 60)[i % 4]
        tiny = torch.rand(count, generator=gen) < 1 / 3
        wh = torch.where(tiny[:, None], 2 + 6 * torch.rand(count, 2, generator=gen),
                         10 + size / 3 * torch.rand(count, 2, generator=gen))
        xy = torch.rand(count, 2, generator=gen) * (size - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, classes, (count,), generator=gen).to(device)})
    return [(c.to(device), r.to(device)) for c, r in outs], targets


def measure(batch: int, size: int, device: str, reps: int) -> dict[str, float]:
    import torch

    from tdet.training.models.damo_yolo.criterion import DamoYoloCriterion

    outs, targets = make_batch(batch, size, device)
    crits = {"per_image": DamoYoloCriterion(6, batched_assign=False),
             "batched": DamoYoloCriterion(6, batched_assign=True)}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in crits}
    for crit in crits.values():  # warm-up (CUDA kernels, allocator)
        crit(outs, targets)
    for _ in range(reps):
        for k, crit in crits.items():
            sync()
            t = time.perf_counter()
            crit(outs, targets)
            sync()
            times[k].append(time.perf_counter() - t)
    old, new = (statistics.median(times[k]) * 1e3 for k in ("per_image", "batched"))
    return {"batch": batch, "size": size, "device": device, "per_image_ms": old, "batched_ms": new,
            "speedup": old / new}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", default="320,640")
    ap.add_argument("--batches", default="8,16")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    import torch

    print(f"device {args.device}, torch threads {torch.get_num_threads()}, loss forward per batch, median of "
          f"{args.reps} alternating runs")
    print(f"{'batch':>5} {'size':>5} {'per-image ms':>13} {'batched ms':>11} {'speed-up':>9}")
    rows = []
    for size in map(int, args.sizes.split(",")):
        for batch in map(int, args.batches.split(",")):
            r = measure(batch, size, args.device, args.reps)
            rows.append(r)
            print(f"{batch:>5} {size:>5} {r['per_image_ms']:>13.1f} {r['batched_ms']:>11.1f} {r['speedup']:>8.2f}x",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
