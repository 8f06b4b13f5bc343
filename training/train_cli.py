"""`tdet train` (torch is imported only when the command runs)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tdet.client.errors import UserError, train_extra_missing
from tdet.client.ports import free_port

# arguments a resumed run may change: they do not affect what is computed
RESUME_CHANGEABLE = {"workers", "eval_every", "out", "val_data", "val_images"}


def register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train or fine-tune a variant on a COCO-format dataset (the official recipe)",
        description="Train VARIANT on a COCO-format dataset with its official recipe (training/recipes/VARIANT.yaml): "
                    "DAMO-YOLO: mosaic + affine + mixup, AlignOTA, QFL/GIoU/DFL, SGD + cosine, EMA; RT-DETRv2: "
                    "photometric/zoom-out/IoU-crop, Hungarian matching, VFL/L1/GIoU with denoising, AdamW, EMA. "
                    "Writes OUT/{last,best}.pth (official checkpoint layouts, loadable by `tdet export`), "
                    "OUT/config.yaml (every value used), OUT/log.csv and OUT/curves.png.")
    S = argparse.SUPPRESS  # only what was given overrides a resumed run's saved arguments
    p.add_argument("variant", help="e.g. damo-yolo-t, rtdetrv2-s (see `tdet info`)")
    p.add_argument("--data", default=S, help="train annotations (COCO JSON)")
    p.add_argument("--images", default=S, help="train images folder")
    p.add_argument("--val-data", default=S, help="val annotations (COCO JSON) for the periodic evaluation")
    p.add_argument("--val-images", default=S, help="val images folder")
    p.add_argument("--weights", default=S,
                   help="fine-tune from a checkpoint file, e.g. training/demo/damo-yolo-t.pth (works offline), or "
                        "'official' (the published weights, downloaded: needs internet); everything but the class "
                        "branch is loaded when the dataset's classes differ (default: no weights, training starts "
                        "from random initialisation as the official code's init scheme sets it)")
    p.add_argument("--backbone-weights", default=S, metavar="PATH|official",
                   help="RT-DETRv2: start the backbone from ImageNet-pretrained PResNet-vd weights, as the official "
                        "recipe does: 'official' (presnet.py's release file for the variant's depth, downloaded: "
                        "needs internet), that file, or a detector checkpoint (its backbone.* weights); the encoder "
                        "and decoder start from random initialisation. Not with --weights; DAMO-YOLO trains "
                        "from scratch (default: no backbone weights)")
    p.add_argument("--epochs", type=int, default=S,
                   help="epochs (default: the recipe's, 300 DAMO-YOLO / 72-120 RT-DETRv2)")
    p.add_argument("--batch", type=int, default=S, help="images per process per step (default: 8)")
    p.add_argument("--nominal-batch", type=int, default=S,
                   help="accumulate gradients to this many images per optimizer step over all processes, at least "
                        "--batch x --nproc (rounded to a whole number of steps) (default: no accumulation)")
    p.add_argument("--img-size", type=int, default=S,
                   help="square input size, a multiple of 32 (default: the recipe's, 640)")
    p.add_argument("--workers", type=int, default=S, help="data loader processes per training process (default: 2)")
    p.add_argument("--lr-scale", type=float, default=S, help="multiply every learning rate of the recipe (default: 1)")
    p.add_argument("--grad-clip", type=float, default=S,
                   help="max gradient norm, 0 for none (default: the recipe's: none DAMO-YOLO, 0.1 RT-DETRv2)")
    p.add_argument("--recipe", default=S, help="a recipe YAML file instead of the shipped one (may name it as `base`)")
    p.add_argument("--out", default=S, help="run folder (default: runs/VARIANT)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue an interrupted run exactly: PATH (default: OUT/last.pth)")
    p.add_argument("--exist-ok", action="store_true",
                   help="start a new run in an --out folder that holds one (the old run's last.pth, best.pth, "
                        "log.csv, curves.png and summary.json are removed first); without it such a folder is "
                        "refused: continue it with --resume or pick a new --out")
    p.add_argument("--device", choices=["cpu", "cuda"], default=S, help="(default: cuda when available, else cpu)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=S,
                   help="mixed precision: fp16 + GradScaler on CUDA, bf16 autocast on CPU (default: the recipe's on "
                        "CUDA, i.e. RT-DETRv2 on, DAMO-YOLO off; off on CPU)")
    p.add_argument("--seed", type=int, default=S, help="(default: 0)")
    p.add_argument("--eval-every", type=int, default=S,
                   help="evaluate the EMA model on the val set every N epochs, 0 = only after the last (default: 1)")
    p.add_argument("--nproc", type=int, default=S,
                   help="training processes on this machine, at most one per CPU core or CUDA device "
                        "(DistributedDataParallel: gloo on CPU, NCCL + SyncBN on CUDA). Several machines: run "
                        "`torchrun --nnodes ... -m tdet.client.cli train ...` "
                        "(default: 1)")
    p.set_defaults(func=cmd_train)


def _train_args(args: argparse.Namespace):
    from .engine.checkpoint import load_resume
    from .engine.trainer import TrainArgs

    given = {k: v for k, v in vars(args).items() if k in TrainArgs.__dataclass_fields__}
    resume = None
    if args.resume is not None:
        out = Path(given.get("out", TrainArgs.default_out(args.variant)))
        resume = Path(args.resume) if args.resume else out / "last.pth"
        saved = load_resume(resume).get("tdet", {}).get("args")
        if not isinstance(saved, dict):
            raise UserError(f"{resume} has no saved run arguments: it was not written by `tdet train`")
        changed = sorted(k for k, v in given.items()
                         if k != "variant" and k not in RESUME_CHANGEABLE and saved.get(k) != v)
        if changed:
            raise UserError(f"--resume continues the saved run exactly: {', '.join(changed)} cannot change "
                             f"(saved: {', '.join(f'{k}={saved.get(k)!r}' for k in changed)})")
        if saved.get("variant") != args.variant:
            raise UserError(f"{resume} is a {saved.get('variant')} run, not {args.variant}")
        given = {**saved, **given, "out": given.get("out", saved.get("out", str(out)))}
    missing = [f"--{k}" for k in ("data", "images") if k not in given]
    if missing:
        raise UserError(f"{' and '.join(missing)} required (the training set: COCO JSON and images folder)")
    if ("val_data" in given) != ("val_images" in given):
        raise UserError("--val-data and --val-images go together")
    given.setdefault("out", TrainArgs.default_out(args.variant))
    held = [n for n in ("last.pth", "best.pth") if (Path(given["out"]) / n).is_file()]
    if resume is None and held and not getattr(args, "exist_ok", False):  # never overwrite a run silently
        raise UserError(f"{given['out']} already holds a run ({', '.join(held)}): continue it with --resume, "
                        f"train into a new --out, or pass --exist-ok to overwrite it")
    if "device" not in given:  # a resumed run keeps its saved device
        import torch

        given["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return TrainArgs(**given), resume


def _check_local_processes(nproc: int, device: str) -> None:
    """--nproc on one machine: one process per CUDA device, or per CPU core (gloo), no more."""
    import torch

    have, what = (torch.cuda.device_count(), "CUDA device(s)") if device == "cuda" else (os.cpu_count() or 1,
                                                                                        "CPU core(s)")
    if nproc > have:
        raise UserError(f"--nproc {nproc}: this machine has {have} {what}, one process each at most")


def _spawn(targs, resume) -> None:
    """The ranks of one machine; a rank's UserError (a dataset too small for the ranks, a bad file) is raised
    here as that one line, not as torch's ProcessRaisedException traceback."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="tdet-ranks-") as errors:
        try:
            mp.spawn(_spawned, args=(targs.nproc, free_port(), targs, resume, errors), nprocs=targs.nproc,
                     join=True)
        except mp.ProcessRaisedException:
            said = sorted(Path(errors).glob("rank*.txt"))
            if said:
                raise UserError(said[0].read_text()) from None
            raise


def _spawned(rank: int, world: int, port: int, args, resume, errors: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from .engine.trainer import Interrupted, Trainer

    try:
        Trainer(args, resume=resume).fit()
    except Interrupted:
        pass
    except UserError as e:
        (Path(errors) / f"rank{rank}.txt").write_text(str(e))
        raise


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch
    except ModuleNotFoundError:
        raise train_extra_missing("tdet train") from None
    from .engine.logger import percent
    from .engine.trainer import Interrupted, Trainer

    targs, resume = _train_args(args)
    if targs.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if targs.nproc > 1 and "WORLD_SIZE" not in os.environ:
        _check_local_processes(targs.nproc, targs.device)
        _spawn(targs, resume)
        print(f"done: {targs.out}")
        return 0
    try:
        summary = Trainer(targs, resume=resume).fit()
    except Interrupted:
        return 130
    if summary.get("best"):
        print(f"done: best {summary['best']} (AP {percent(summary['best_ap'])}), last {summary['last']}")
    else:  # no val set (or no evaluation): this run wrote no best.pth
        print(f"done: last {summary['last']} (no val set: no evaluation, no best.pth)")
    return 0
