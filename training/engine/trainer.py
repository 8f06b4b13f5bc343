"""The training loop both families share (`tdet train`).

One optimizer step = `accumulate` batches (gradient accumulation to a nominal batch). Per step: the lr of
the recipe's schedule, forward under autocast (fp16 + GradScaler on CUDA, bf16 on CPU when asked), the
criterion in fp32, optional gradient clipping, the optimizer step, the EMA update. Per epoch: log.csv,
curves.png, last.pth, the COCO evaluation of the EMA model every `eval_every` epochs and best.pth by AP.
Ctrl-C saves last.pth (at the last finished step) before exiting; `resume` continues bit-exactly: the same
model, optimizer, EMA, scaler, step counters, RNG state and data order (samples are pure functions of
(seed, epoch, index)).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from tdet.client.errors import UserError
from ..recipe import Recipe, load_recipe, warmup_warning
from ..registry import family_of
from . import distributed as D
from .checkpoint import atomic_torch_save, build_checkpoint, load_pretrained, load_resume, split_checkpoint
from .ema import ModelEMA
from .evaluator import evaluate, postprocess_kwargs
from .logger import RunLog, percent
from .optim import LRSchedule, build_optimizer


@dataclass(frozen=True)
class TrainArgs:
    """Every value a run uses besides its recipe; saved to <out>/config.yaml and in each checkpoint."""

    variant: str
    data: str  # COCO annotations (train)
    images: str  # train images folder
    out: str = "runs/train"
    val_data: str | None = None
    val_images: str | None = None
    weights: str | None = None  # fine-tune from: "official" or a checkpoint path
    recipe: str | None = None  # a YAML recipe file instead of training/recipes/<variant>.yaml
    epochs: int | None = None  # None: the recipe's
    batch: int = 8  # images per process per step
    nominal_batch: int | None = None  # accumulate gradients up to this many images per optimizer step
    img_size: int | None = None  # square input side; None: the recipe's
    workers: int = 2
    lr_scale: float = 1.0
    device: str = "cpu"
    amp: bool | None = None  # None: the recipe's on CUDA, off on CPU
    seed: int = 0
    eval_every: int = 1  # epochs between evaluations (0: only at the end)
    grad_clip: float | None = None  # None: the recipe's
    nproc: int = 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Interrupted(Exception):
    """Training stopped by Ctrl-C / SIGTERM after last.pth was written."""


class _StopAtStep(Exception):
    """Raised at an optimizer-step boundary after a stop request: the state is consistent, save it."""


class StopRequest:
    """SIGINT / SIGTERM ask the loop to stop at the next optimizer-step boundary (so the saved state is a
    consistent one); a second signal interrupts at once. In DDP the ranks agree (all_reduce) on stopping."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def requested(self, dist: D.DistInfo) -> bool:
        if not dist.enabled:
            return self.flag
        t = torch.tensor([1.0 if self.flag else 0.0])
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)


def resolve_recipe(args: TrainArgs) -> Recipe:
    r = load_recipe(args.variant, args.recipe)
    changes: dict[str, Any] = {}
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {args.epochs}")
        changes["epochs"] = args.epochs
        changes["no_aug_epochs"] = min(r.no_aug_epochs, max(0, args.epochs - 1))
    if args.img_size is not None:
        changes["input_size"] = (args.img_size, args.img_size)
    if args.grad_clip is not None:
        changes["grad_clip"] = args.grad_clip if args.grad_clip > 0 else None
    return dataclasses.replace(r, **changes)


class Trainer:
    def __init__(self, args: TrainArgs, *, resume: str | Path | None = None) -> None:
        self.args = args
        self.resume_path = Path(resume) if resume else None
        self.dist = D.init_distributed(args.device)
        self.device = torch.device(args.device, self.dist.local_rank) if args.device == "cuda" else torch.device("cpu")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one input size per run (multi-scale: a few): autotune once
        self.fam = family_of(args.variant)
        self.recipe = resolve_recipe(args)
        self.out = Path(args.out)

    # ---------------------------------------------------------------- setup
    def _datasets(self):
        from ..data.coco import CocoDetection

        train = CocoDetection(self.args.data, self.args.images)
        val = CocoDetection(self.args.val_data, self.args.val_images) if self.args.val_data else None
        if val is not None:
            foreign = sorted(set(val.category_ids) - set(train.category_ids))
            if foreign:
                raise UserError(f"the val set has categories {foreign} that the train set lacks")
        return train, val

    def _model(self, num_classes: int, category_ids: list[int]) -> tuple[nn.Module, list[str]]:
        a, r = self.args, self.recipe
        model = self.fam.build_model(a.variant, init="train", seed=a.seed, num_classes=num_classes,
                                     input_hw=r.input_size)
        skipped: list[str] = []
        if a.weights:
            from ..weights import resolve

            path = resolve(a.weights, self.fam.WEIGHTS, a.variant)
            skipped = load_pretrained(model, self.fam, path, num_classes=num_classes, category_ids=category_ids)
        return model.to(self.device), skipped

    def _meta(self, train_ds) -> dict[str, Any]:
        return {"variant": self.args.variant, "family": self.fam.FAMILY, "num_classes": len(train_ds.category_ids),
                "class_names": list(train_ds.class_names), "category_ids": [int(i) for i in train_ds.category_ids],
                "input_hw": list(self.recipe.input_size), "recipe": self.recipe.as_dict(), "args": self.args.as_dict()}

    # ---------------------------------------------------------------- run
    def fit(self) -> dict[str, Any]:
        a, r, dist = self.args, self.recipe, self.dist
        torch.manual_seed(a.seed)
        train_ds, val_ds = self._datasets()
        model, skipped = self._model(len(train_ds.category_ids), train_ds.category_ids)
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            for ds, split in ((train_ds, "train"), (val_ds, "val")):
                if ds is not None:
                    print(f"data: {ds.summary(split)}")
            for w in getattr(train_ds, "warnings", []):
                print(f"data: {w}")
            if not a.weights:
                print(no_weights_note(a.variant))
            if skipped:
                print(f"fine-tuning from {a.weights}: the class branch was re-initialised ({len(skipped)} tensors "
                      f"skipped: {', '.join(skipped)})")
        criterion = self.fam.build_criterion(a.variant, len(train_ds.category_ids))
        ema = ModelEMA(model, decay=r.ema.decay, warmups=r.ema.warmups, first_update=r.ema.first_update)
        accumulate = max(1, round(a.nominal_batch / (a.batch * dist.world))) if a.nominal_batch else 1
        effective = a.batch * accumulate * dist.world
        base_lr = r.optimizer.base_lr(effective) * a.lr_scale
        optimizer = build_optimizer(model, r.optimizer, base_lr, a.lr_scale)
        amp = a.amp if a.amp is not None else (r.amp and self.device.type == "cuda")
        scaler = torch.amp.GradScaler("cuda", enabled=amp and self.device.type == "cuda")
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16

        loader = self._train_loader(train_ds)
        batches_per_epoch = loader.batch_sampler.batches_per_epoch()
        steps_per_epoch = batches_per_epoch // accumulate
        if steps_per_epoch < 1:
            raise UserError(f"{len(train_ds)} training images make no full step of {a.batch * accumulate} x "
                             f"{dist.world} images: lower --batch / --nominal-batch")
        schedule = LRSchedule(r.schedule, base_lr=base_lr, steps_per_epoch=steps_per_epoch, epochs=r.epochs,
                              no_aug_epochs=r.no_aug_epochs)
        warning = warmup_warning(r, schedule.warmup, steps_per_epoch)
        if warning and dist.is_main:
            print(warning, file=sys.stderr)
        state = {"epoch": 0, "batch": 0, "step": 0, "best_ap": -1.0, "sums": {}, "images": 0, "seconds": 0.0}
        if self.resume_path is not None:
            state = self._restore(self.resume_path, model, ema, optimizer, scaler)
        bare = model
        if dist.enabled:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                bare = model
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        meta = self._meta(train_ds)
        log = RunLog(self.out) if dist.is_main else None
        if dist.is_main:
            (self.out / "config.yaml").write_text(yaml.safe_dump({"args": a.as_dict(), "recipe": r.as_dict(),
                                                                  "accumulate": accumulate, "effective_batch": effective,
                                                                  "base_lr": base_lr, "amp": amp,
                                                                  "classes": meta["class_names"],
                                                                  "category_ids": meta["category_ids"]},
                                                                 sort_keys=False))
        ctx = dict(model=model, bare=bare, ema=ema, optimizer=optimizer, scaler=scaler, meta=meta, log=log,
                   criterion=criterion, schedule=schedule, accumulate=accumulate, amp=amp, amp_dtype=amp_dtype,
                   loader=loader, val_ds=val_ds, batches_per_epoch=batches_per_epoch, last_print=time.perf_counter())
        try:
            with StopRequest() as ctx["stop"]:
                while state["epoch"] < r.epochs:
                    self._epoch(state, ctx)
        except _StopAtStep:
            self._save(self.out / "last.pth", state, ctx)
            if dist.is_main:
                print(f"\ninterrupted at epoch {state['epoch'] + 1}, batch {state['batch']}: saved "
                      f"{self.out / 'last.pth'} (continue with --resume)")
            raise Interrupted() from None
        summary = self._summary(state, ctx)
        D.shutdown(dist)
        return summary

    def _train_loader(self, train_ds):
        from ..data.loader import build_train_loader

        a, r = self.args, self.recipe
        return build_train_loader(train_ds, self.fam.FAMILY, r.augment, r.input_size, a.batch, a.seed, a.workers,
                                  self.dist.rank, self.dist.world, r.multi_scale)

    def _epoch(self, state: dict, ctx: dict) -> None:
        a, r, dist = self.args, self.recipe, self.dist
        model, bare, ema, optimizer, scaler = ctx["model"], ctx["bare"], ctx["ema"], ctx["optimizer"], ctx["scaler"]
        epoch, accumulate = state["epoch"], ctx["accumulate"]
        strong = epoch < r.epochs - r.no_aug_epochs
        loader = ctx["loader"]
        loader.batch_sampler.set_epoch(epoch, strong=strong, start_batch=state["batch"])
        model.train()
        bar = tqdm(total=ctx["batches_per_epoch"], initial=state["batch"], desc=f"epoch {epoch + 1}/{r.epochs}",
                   unit="batch", disable=not dist.is_main or None, leave=dist.is_main, dynamic_ncols=True)
        tick = time.perf_counter()
        pending = 0  # batches accumulated since the last optimizer step
        lr = ctx["schedule"].apply(optimizer, state["step"])
        step_sums: dict[str, float] = {}  # loss sums of the batches since the last optimizer step
        for batch in loader:
            images, targets = batch.images.to(self.device, non_blocking=True), batch.targets
            targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
            sync = pending + 1 == accumulate or not isinstance(model, nn.parallel.DistributedDataParallel)
            with (contextlib.nullcontext() if sync else model.no_sync()):
                with torch.autocast(self.device.type, dtype=ctx["amp_dtype"], enabled=ctx["amp"]):
                    outputs = model(images, targets)
                with torch.autocast(self.device.type, enabled=False):
                    losses = ctx["criterion"](_to_float(outputs), targets)
                scaler.scale(losses["total"] / accumulate).backward()
            pending += 1
            values = torch.stack([v.detach() for v in losses.values()]).tolist()  # one device sync per batch
            for k, v in zip(losses, values):
                step_sums[k] = step_sums.get(k, 0.0) + v
            if pending < accumulate:
                continue
            if not math.isfinite(step_sums["total"]):
                raise FloatingPointError(f"loss is not finite at step {state['step']}: {step_sums}")
            if r.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            ema.update(bare)
            pending = 0
            for k, v in step_sums.items():
                state["sums"][k] = state["sums"].get(k, 0.0) + v
            step_sums = {}
            state["step"] += 1
            state["batch"] += accumulate
            state["images"] += images.shape[0] * accumulate
            lr = ctx["schedule"].apply(optimizer, state["step"])
            now = time.perf_counter()
            state["seconds"] += now - tick
            tick = now
            n = state["batch"]
            progress = " ".join(f"{k}={v / n:.3f}" for k, v in state["sums"].items() if k == "total" or
                                k.count("_") <= 1) + f" lr={lr:.2e} img/s={state['images'] / state['seconds']:.1f}"
            bar.update(accumulate)
            bar.set_postfix_str(progress)
            if bar.disable and dist.is_main and now - ctx["last_print"] > 60:  # a log file, not a terminal
                print(f"epoch {epoch + 1}/{r.epochs} batch {n}/{ctx['batches_per_epoch']} {progress}", flush=True)
                ctx["last_print"] = now
            if ctx["stop"].requested(dist):  # Ctrl-C / SIGTERM: stop at this step boundary, all ranks together
                bar.close()
                raise _StopAtStep
            if state["batch"] + accumulate > ctx["batches_per_epoch"]:
                break
        bar.close()
        self._end_epoch(state, ctx, lr)

    def _end_epoch(self, state: dict, ctx: dict, lr: float) -> None:
        a, r, dist = self.args, self.recipe, self.dist
        epoch = state["epoch"]
        sums = _all_reduce_sums(dist, state["sums"], state["batch"])
        row: dict[str, float] = {"epoch": epoch + 1, "lr": lr, **sums,
                                 "images_per_s": state["images"] * dist.world / max(state["seconds"], 1e-9),
                                 "seconds": state["seconds"]}
        last = epoch + 1 == r.epochs
        evaluate_now = ctx["val_ds"] is not None and (last or (a.eval_every > 0 and (epoch + 1) % a.eval_every == 0))
        state.update(epoch=epoch + 1, batch=0, sums={}, images=0, seconds=0.0)
        improved = False
        if evaluate_now and dist.is_main:
            metrics = self._evaluate(ctx)
            row.update(metrics)
            improved = metrics["AP"] > state["best_ap"]
            if improved:
                state["best_ap"] = metrics["AP"]
            print(f"epoch {epoch + 1}: EMA model on val: AP {percent(metrics['AP'])}  "
                  f"AP50 {percent(metrics['AP50'])}")
        D.barrier(dist)
        self._save(self.out / "last.pth", state, ctx)
        if dist.is_main:
            if improved:  # best.pth is the checkpoint of this epoch: a second name for the file, or a copy
                (self.out / "best.pth").unlink(missing_ok=True)
                try:
                    (self.out / "best.pth").hardlink_to(self.out / "last.pth")
                except OSError:
                    shutil.copyfile(self.out / "last.pth", self.out / "best.pth")
            ctx["log"].add(row, final=last)

    def _evaluate(self, ctx: dict) -> dict[str, float]:
        from ..data.loader import build_val_loader

        val_ds, r = ctx["val_ds"], self.recipe
        batches = build_val_loader(val_ds, self.fam.FAMILY, r.input_size, max(1, self.args.batch), self.args.workers)
        return evaluate(ctx["ema"].module, self.fam.FAMILY, batches, val_ds.coco, ctx["meta"]["category_ids"],
                        r.input_size, postprocess_kwargs(r.eval))

    # ---------------------------------------------------------------- checkpoints
    def _save(self, path: Path, state: dict, ctx: dict) -> None:
        if not self.dist.is_main:
            return
        steps_per_epoch = ctx["schedule"].steps_per_epoch
        lr_state = {"lr_warmup_scheduler": {"last_step": state["step"], "warmup_duration": ctx["schedule"].warmup},
                    "lr_scheduler": {"last_epoch": state["epoch"], "steps_per_epoch": steps_per_epoch}}
        train_state = {**{k: state[k] for k in ("epoch", "batch", "step", "best_ap", "sums", "images", "seconds")},
                       "rng": torch.get_rng_state(),
                       "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}
        ckpt = build_checkpoint(self.fam, model=ctx["bare"], ema=ctx["ema"].state_dict(),
                                optimizer=ctx["optimizer"].state_dict(),
                                scaler=ctx["scaler"].state_dict() if ctx["scaler"].is_enabled() else None,
                                epoch=state["epoch"], meta=ctx["meta"], train_state=train_state, lr_state=lr_state)
        atomic_torch_save(ckpt, path)

    def _restore(self, path: Path, model: nn.Module, ema: ModelEMA, optimizer, scaler) -> dict:
        ckpt = load_resume(path)
        saved = ckpt.get("tdet", {}).get("args", {})
        for k in ("variant", "batch", "nominal_batch", "seed", "img_size"):
            if k in saved and saved[k] != getattr(self.args, k):
                raise UserError(f"--resume {path}: the run used {k}={saved[k]!r}, this one {getattr(self.args, k)!r}")
        raw, ema_state, scaler_state = split_checkpoint(ckpt)
        model.load_state_dict(raw, strict=True)
        ema.load_state_dict(ema_state)
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler_state is not None and scaler.is_enabled():
            scaler.load_state_dict(scaler_state)
        ts = ckpt["train_state"]
        torch.set_rng_state(ts["rng"])
        if ts.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ts["cuda_rng"])
        if self.dist.is_main:
            print(f"resuming {path}: epoch {ts['epoch'] + 1}, batch {ts['batch']}, step {ts['step']}")
        return {k: ts[k] for k in ("epoch", "batch", "step", "best_ap", "sums", "images", "seconds")}

    def _summary(self, state: dict, ctx: dict) -> dict[str, Any]:
        # a digest of each rank's weights: DDP must keep them bit-identical
        digest = hashlib.sha256()
        for p in ctx["bare"].parameters():
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        per_rank = D.all_gather_objects(self.dist, digest.hexdigest())
        summary = {"epochs": state["epoch"], "steps": state["step"], "best_ap": state["best_ap"],
                   "last": str(self.out / "last.pth"),
                   "best": str(self.out / "best.pth") if (self.out / "best.pth").exists() else None,
                   "world": self.dist.world, "rank_weight_sha256": per_rank}
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary


def no_weights_note(variant: str) -> str:
    """What a run without --weights starts from, and the offline way to fine-tune instead."""
    demo = Path(__file__).resolve().parents[1] / "demo"
    shipped = sorted(demo.glob("*.pth"))
    mine = demo / f"{variant}.pth"
    offline = (f"--weights {mine} (the shipped demo checkpoint) is the offline starting point" if mine.is_file()
               else f"the shipped demo checkpoints ({', '.join(p.name for p in shipped) or 'none'} in {demo}) are "
                    f"the offline starting points for their variants")
    return (f"weights: none given, {variant} starts from random initialisation (not pretrained); to fine-tune, "
            f"{offline}; --weights official loads the published weights (downloaded: needs internet)")


def _to_float(outputs: Any) -> Any:
    """Model outputs (tensors in nested lists/tuples/dicts) cast to fp32 for the criterion."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_to_float(v) for v in outputs)
    return outputs


def _all_reduce_sums(dist: D.DistInfo, sums: dict[str, float], batches: int) -> dict[str, float]:
    """Epoch means of the loss terms over every rank's batches."""
    if not sums:
        return {}
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(batches)], dtype=torch.float64)
    if dist.enabled:
        torch.distributed.all_reduce(t)
    return {k: float(v) / max(float(t[-1]), 1.0) for k, v in zip(keys, t[:-1])}
