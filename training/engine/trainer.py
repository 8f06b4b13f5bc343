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

from ..models import outputs_to_fp32
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
    out: str = ""  # the run folder; "": default_out(variant), as `tdet train` shows
    val_data: str | None = None
    val_images: str | None = None
    weights: str | None = None  # fine-tune from: "official" or a checkpoint path
    backbone_weights: str | None = None  # RT-DETRv2: the ImageNet-pretrained backbone ("official" or a path)
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

    def __post_init__(self) -> None:
        if not self.out:
            object.__setattr__(self, "out", self.default_out(self.variant))
        self.check()

    def check(self) -> None:
        """One UserError naming the first value no run can use, before anything is read or written."""
        def at_least(flag: str, value: int | None, lo: int) -> None:
            if value is not None and value < lo:
                raise UserError(f"--{flag} must be >= {lo}, got {value}")

        for flag, value, lo in (("nproc", self.nproc, 1), ("batch", self.batch, 1), ("workers", self.workers, 0),
                                ("eval-every", self.eval_every, 0), ("seed", self.seed, 0)):
            at_least(flag, value, lo)
        if self.seed >= 2 ** 32:  # numpy's and the loaders' seeds are 32-bit
            raise UserError(f"--seed must be below 2**32, got {self.seed}")
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise UserError(f"--lr-scale multiplies the learning rates: it must be > 0, got {self.lr_scale:g}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise UserError(f"--grad-clip is a max gradient norm (0: none), got {self.grad_clip:g}")
        if self.backbone_weights is not None:
            if self.weights is not None:
                raise UserError("--backbone-weights with --weights: the --weights checkpoint holds the whole model, "
                                "backbone included; give one of them")
            if not family_of(self.variant).BACKBONE_WEIGHTS:
                raise UserError(f"--backbone-weights: {self.variant}'s official recipe trains its backbone from "
                                f"scratch (no pretrained backbone exists); fine-tune the whole model with --weights")
        if self.nominal_batch is not None and self.nominal_batch < self.batch * self.nproc:
            raise UserError(f"--nominal-batch {self.nominal_batch} is below one step's {self.batch} x {self.nproc} "
                            f"process(es) = {self.batch * self.nproc} images: raise it or lower --batch")

    @staticmethod
    def default_out(variant: str) -> str:
        """The run folder of a run without --out: runs/VARIANT (the `tdet train` default)."""
        return f"runs/{variant}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Interrupted(Exception):
    """Training stopped by Ctrl-C / SIGTERM after last.pth was written."""


class _StopAtStep(Exception):
    """Raised at an optimizer-step boundary after a stop request: the state is consistent, save it."""


class _DataError(Exception):
    """A training batch could not be loaded (UserError, e.g. a corrupt image); the message is the original one."""


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


@dataclass
class RunState:
    """The run's counters: what a checkpoint saves (train_state) and a resume restores, named once."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimizer steps done
    best_ap: float = -1.0
    sums: dict[str, float] = dataclasses.field(default_factory=dict)  # loss sums of the current epoch
    images: int = 0  # images of the current epoch
    seconds: float = 0.0  # training time of the current epoch

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunState:
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls)})

    def start_next_epoch(self) -> None:
        self.epoch, self.batch, self.sums, self.images, self.seconds = self.epoch + 1, 0, {}, 0, 0.0


@dataclass
class Run:
    """The objects of one run, set up once by Trainer._setup."""

    model: nn.Module  # what the loop calls (DDP-wrapped when distributed)
    bare: nn.Module  # the model itself: what the EMA follows and checkpoints hold
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    schedule: LRSchedule
    loader: Any  # the train DataLoader (its batch_sampler is the TrainSampler)
    val_ds: Any  # CocoDetection or None
    meta: dict[str, Any]  # the checkpoint's "tdet" metadata
    log: RunLog | None  # rank 0 only
    accumulate: int  # batches per optimizer step
    amp: bool
    amp_dtype: torch.dtype
    batches_per_epoch: int
    stop: StopRequest = dataclasses.field(default_factory=StopRequest)
    last_print: float = dataclasses.field(default_factory=time.perf_counter)


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
        if self.resume_path is not None:
            self.recipe = self._as_saved(self.recipe, self.resume_path)
        self.out = Path(args.out)
        self.state = RunState()
        self.backbone_path: Path | None = None  # the --backbone-weights file (resolved in _model)

    # augment blocks added to the shipped recipes after runs were saved without them: such a run resumes as it
    # began (without the block) instead of being refused as an edited recipe
    NEWER_AUGMENTS = ("sada",)  # DAMO-YOLO's SADA (training/data/sada.py)

    def _as_saved(self, recipe: Recipe, path: Path) -> Recipe:
        saved = (load_resume(path).get("tdet") or {}).get("recipe")
        if not isinstance(saved, dict) or not isinstance(saved.get("augment"), dict):
            return recipe
        newer = [k for k in self.NEWER_AUGMENTS if k in recipe.augment and k not in saved["augment"]]
        if not newer:
            return recipe
        if self.dist.is_main:
            print(f"resume: {path} was saved before the recipe had augment.{', augment.'.join(newer)}: the run "
                  f"continues without it, as it began")
        return dataclasses.replace(recipe, augment={k: v for k, v in recipe.augment.items() if k not in newer})

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
        from ..weights import resolve

        # a resumed run restores every weight from its checkpoint: the starting files are not needed again
        if a.weights and self.resume_path is None:
            path = resolve(a.weights, self.fam.WEIGHTS, a.variant)
            skipped = load_pretrained(model, self.fam, path, num_classes=num_classes, category_ids=category_ids)
        if a.backbone_weights and self.resume_path is None:
            self.backbone_path = resolve(a.backbone_weights, self.fam.BACKBONE_WEIGHTS, a.variant,
                                         flag="--backbone-weights")
            self.fam.load_backbone(model, self.backbone_path)
        return model.to(self.device), skipped

    def _meta(self, train_ds) -> dict[str, Any]:
        return {"variant": self.args.variant, "family": self.fam.FAMILY, "num_classes": len(train_ds.category_ids),
                "class_names": list(train_ds.class_names), "category_ids": [int(i) for i in train_ds.category_ids],
                "input_hw": list(self.recipe.input_size), "recipe": self.recipe.as_dict(), "args": self.args.as_dict()}

    def _announce(self, train_ds, val_ds, skipped: list[str]) -> None:
        """What a user should know before the first step: the data, the starting weights."""
        a = self.args
        for ds, split in ((train_ds, "train"), (val_ds, "val")):
            if ds is not None:
                print(f"data: {ds.summary(split)}")
        for w in getattr(train_ds, "warnings", []):
            print(f"data: {w}")
        if self.resume_path is not None:
            print(f"weights: resuming from the checkpoint {self.resume_path} (its model, EMA and optimizer state)")
        elif a.backbone_weights:
            print(f"weights: the backbone from {self.backbone_path} (pretrained, as the official recipe starts), "
                  f"the encoder and decoder from random initialisation (the official init scheme)")
        elif not a.weights:
            print(no_weights_note(a.variant, pretrained_backbone=bool(self.fam.BACKBONE_WEIGHTS)))
        if skipped:
            print(f"fine-tuning from {a.weights}: the class branch was re-initialised ({len(skipped)} tensors "
                  f"skipped: {', '.join(skipped)})")

    def _setup(self) -> Run:
        a, r, dist = self.args, self.recipe, self.dist
        torch.manual_seed(a.seed)
        train_ds, val_ds = self._datasets()
        model, skipped = self._model(len(train_ds.category_ids), train_ds.category_ids)
        if dist.is_main:
            self._announce(train_ds, val_ds, skipped)
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
        if self.resume_path is not None:
            self.state = self._restore(self.resume_path, model, ema, optimizer, scaler)
        if dist.is_main:  # every check passed: only now the run folder is made (a refused run leaves none)
            self.out.mkdir(parents=True, exist_ok=True)
            if self.resume_path is None:
                self._clear_previous_run()
        bare = model
        if dist.enabled:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                bare = model
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        meta = self._meta(train_ds)
        if dist.is_main:
            config = {"args": a.as_dict(), "recipe": r.as_dict(), "accumulate": accumulate,
                      "effective_batch": effective, "base_lr": base_lr, "amp": amp, "classes": meta["class_names"],
                      "category_ids": meta["category_ids"]}
            (self.out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return Run(model=model, bare=bare, ema=ema, optimizer=optimizer, scaler=scaler, criterion=criterion,
                   schedule=schedule, loader=loader, val_ds=val_ds, meta=meta,
                   log=RunLog(self.out, resume=self.resume_path is not None) if dist.is_main else None,
                   accumulate=accumulate, amp=amp, amp_dtype=amp_dtype, batches_per_epoch=batches_per_epoch)

    def _clear_previous_run(self) -> None:
        """A new run in a folder holding an older one (--exist-ok) inherits none of its outputs: a stale
        best.pth would be reported (and exported) as this run's, its log.csv rows and curves would mix in."""
        old = [n for n in PREVIOUS_RUN_FILES if (self.out / n).is_file()]
        for n in old:
            (self.out / n).unlink()
        if old:
            print(f"new run in {self.out}: removed the previous run's {', '.join(old)}")

    # ---------------------------------------------------------------- run
    def fit(self) -> dict[str, Any]:
        self.run = self._setup()
        try:
            with self.run.stop:
                while self.state.epoch < self.recipe.epochs:
                    self._epoch()
        except _StopAtStep:
            self._save(self.out / "last.pth")
            if self.dist.is_main:
                print(f"\ninterrupted at epoch {self.state.epoch + 1}, batch {self.state.batch}: saved "
                      f"{self.out / 'last.pth'} (continue with --resume)")
            raise Interrupted() from None
        except _DataError as err:  # e.g. a corrupt image met while loading a batch (maybe in a loader worker)
            raise UserError(f"{err}; {self._save_after_error()}") from None
        except UserError as err:  # e.g. a corrupt val image: the message, not a loader worker's traceback
            raise UserError(worker_message(err)) from None
        finally:
            from ..data.loader import close_loader

            close_loader(self.run.loader)
        summary = self._summary()
        D.shutdown(self.dist)
        return summary

    def _save_after_error(self) -> str:
        """last.pth at the last finished optimizer step (the state of a Ctrl-C save); what was kept, in words."""
        state = self.state
        if state.step == 0 and state.epoch == 0 and self.resume_path is None:
            return "no optimizer step had finished: nothing saved"
        if self.dist.is_main:
            self._save(self.out / "last.pth", rng=self._rng_at_step)
        return (f"saved {self.out / 'last.pth'} at epoch {state.epoch + 1}, batch {state.batch} (the last finished "
                f"step): fix or remove the file, then continue with --resume")

    def _snapshot_rng(self) -> None:
        """The RNG states at an optimizer-step boundary: what a save after a data error restores (the batches
        of an unfinished accumulation may have drawn from them since)."""
        self._rng_at_step = (torch.get_rng_state(),
                             torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None)

    def _train_loader(self, train_ds):
        from ..data.loader import build_train_loader

        a, r = self.args, self.recipe
        return build_train_loader(train_ds, self.fam.FAMILY, r.augment, r.input_size, a.batch, a.seed, a.workers,
                                  self.dist.rank, self.dist.world, r.multi_scale)

    def _epoch(self) -> None:
        r, dist, run, state = self.recipe, self.dist, self.run, self.state
        strong = state.epoch < r.epochs - r.no_aug_epochs
        run.loader.batch_sampler.set_epoch(state.epoch, strong=strong, start_batch=state.batch,
                                           strong_epochs=r.epochs - r.no_aug_epochs)
        run.model.train()
        bar = tqdm(total=run.batches_per_epoch, initial=state.batch, desc=f"epoch {state.epoch + 1}/{r.epochs}",
                   unit="batch", disable=not dist.is_main or None, leave=dist.is_main, dynamic_ncols=True)
        tick = time.perf_counter()
        pending = 0  # batches accumulated since the last optimizer step
        lr = run.schedule.apply(run.optimizer, state.step)
        step_sums: dict[str, float] = {}  # loss sums of the batches since the last optimizer step
        self._snapshot_rng()
        for batch in _batches(run.loader):
            for k, v in self._train_step(batch, sync=pending + 1 == run.accumulate).items():
                step_sums[k] = step_sums.get(k, 0.0) + v
            pending += 1
            if pending < run.accumulate:
                continue
            self._optimizer_step(step_sums)
            pending = 0
            for k, v in step_sums.items():
                state.sums[k] = state.sums.get(k, 0.0) + v
            step_sums = {}
            state.step += 1
            state.batch += run.accumulate
            state.images += batch.images.shape[0] * run.accumulate
            self._snapshot_rng()
            lr = run.schedule.apply(run.optimizer, state.step)
            now = time.perf_counter()
            state.seconds += now - tick
            tick = now
            self._progress(bar, lr, now)
            if run.stop.requested(dist):  # Ctrl-C / SIGTERM: stop at this step boundary, all ranks together
                bar.close()
                raise _StopAtStep
            if state.batch + run.accumulate > run.batches_per_epoch:
                break
        bar.close()
        self._end_epoch(lr)

    def _train_step(self, batch, *, sync: bool) -> dict[str, float]:
        """Forward (autocast), the criterion in fp32, backward of the loss / accumulate; the loss terms' values.
        sync=False (a batch inside an accumulation) skips DDP's gradient all-reduce."""
        run = self.run
        images = batch.images.to(self.device, non_blocking=True)
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in batch.targets]
        ddp = isinstance(run.model, nn.parallel.DistributedDataParallel)
        with (run.model.no_sync() if ddp and not sync else contextlib.nullcontext()):
            with torch.autocast(self.device.type, dtype=run.amp_dtype, enabled=run.amp):
                outputs = run.model(images, targets)
            with torch.autocast(self.device.type, enabled=False):
                losses = run.criterion(outputs_to_fp32(outputs), targets)
            run.scaler.scale(losses["total"] / run.accumulate).backward()
        values = torch.stack([v.detach() for v in losses.values()]).tolist()  # one device sync per batch
        return dict(zip(losses, values))

    def _optimizer_step(self, step_sums: dict[str, float]) -> None:
        """Gradient clipping (when the recipe asks), the optimizer and scaler step, the EMA update."""
        run = self.run
        if not math.isfinite(step_sums["total"]):
            raise FloatingPointError(f"loss is not finite at step {self.state.step}: {step_sums}")
        if self.recipe.grad_clip:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), self.recipe.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        run.ema.update(run.bare)

    def _progress(self, bar: tqdm, lr: float, now: float) -> None:
        state, run = self.state, self.run
        n = state.batch
        progress = " ".join(f"{k}={v / n:.3f}" for k, v in state.sums.items() if k == "total" or
                            k.count("_") <= 1) + f" lr={lr:.2e} img/s={state.images / state.seconds:.1f}"
        bar.update(run.accumulate)
        bar.set_postfix_str(progress)
        if bar.disable and self.dist.is_main and now - run.last_print > 60:  # a log file, not a terminal
            print(f"epoch {state.epoch + 1}/{self.recipe.epochs} batch {n}/{run.batches_per_epoch} {progress}",
                  flush=True)
            run.last_print = now

    def _end_epoch(self, lr: float) -> None:
        a, r, dist, run, state = self.args, self.recipe, self.dist, self.run, self.state
        epoch = state.epoch
        sums = _all_reduce_sums(dist, state.sums, state.batch)
        row: dict[str, float] = {"epoch": epoch + 1, "lr": lr, **sums,
                                 "images_per_s": state.images * dist.world / max(state.seconds, 1e-9),
                                 "seconds": state.seconds}
        last = epoch + 1 == r.epochs
        evaluate_now = run.val_ds is not None and (last or (a.eval_every > 0 and (epoch + 1) % a.eval_every == 0))
        state.start_next_epoch()
        improved = False
        if evaluate_now and dist.is_main:
            metrics = self._evaluate()
            row.update(metrics)
            improved = metrics["AP"] > state.best_ap
            if improved:
                state.best_ap = metrics["AP"]
            print(f"epoch {epoch + 1}: EMA model on val: AP {percent(metrics['AP'])}  "
                  f"AP50 {percent(metrics['AP50'])}")
        D.barrier(dist)
        self._save(self.out / "last.pth")
        if dist.is_main:
            if improved:  # best.pth is the checkpoint of this epoch: a second name for the file, or a copy
                (self.out / "best.pth").unlink(missing_ok=True)
                try:
                    (self.out / "best.pth").hardlink_to(self.out / "last.pth")
                except OSError:
                    shutil.copyfile(self.out / "last.pth", self.out / "best.pth")
            run.log.add(row, final=last)

    def _evaluate(self) -> dict[str, float]:
        from ..data.loader import build_val_loader

        run, r = self.run, self.recipe
        batches = build_val_loader(run.val_ds, self.fam.FAMILY, r.input_size, max(1, self.args.batch),
                                   self.args.workers)
        return evaluate(run.ema.module, self.fam.FAMILY, batches, run.val_ds.coco, run.meta["category_ids"],
                        r.input_size, postprocess_kwargs(r.eval))

    # ---------------------------------------------------------------- checkpoints
    def _save(self, path: Path, *, rng: tuple[torch.Tensor, Any] | None = None) -> None:
        """The run's checkpoint; `rng`: the (cpu, cuda) RNG states to save instead of the current ones."""
        if not self.dist.is_main:
            return
        run, state = self.run, self.state
        cpu_rng, cuda_rng = rng if rng is not None else (
            torch.get_rng_state(), torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None)
        lr_state = {"lr_warmup_scheduler": {"last_step": state.step, "warmup_duration": run.schedule.warmup},
                    "lr_scheduler": {"last_epoch": state.epoch, "steps_per_epoch": run.schedule.steps_per_epoch}}
        train_state = {**state.as_dict(), "rng": cpu_rng, "cuda_rng": cuda_rng}
        ckpt = build_checkpoint(self.fam, model=run.bare, ema=run.ema.state_dict(),
                                optimizer=run.optimizer.state_dict(),
                                scaler=run.scaler.state_dict() if run.scaler.is_enabled() else None,
                                epoch=state.epoch, meta=run.meta, train_state=train_state, lr_state=lr_state)
        atomic_torch_save(ckpt, path)

    def _restore(self, path: Path, model: nn.Module, ema: ModelEMA, optimizer, scaler) -> RunState:
        ckpt = load_resume(path)
        saved = ckpt.get("tdet", {}).get("args", {})
        for k in ("variant", "batch", "nominal_batch", "seed", "img_size"):
            if k in saved and saved[k] != getattr(self.args, k):
                raise UserError(f"--resume {path}: the run used {k}={saved[k]!r}, this one {getattr(self.args, k)!r}")
        saved_recipe = ckpt.get("tdet", {}).get("recipe")
        if isinstance(saved_recipe, dict):
            diff = recipe_diff(saved_recipe, self.recipe.as_dict())
            if diff:
                shown = "; ".join(f"{k}: saved {v!r}, now {w!r}" for k, (v, w) in list(diff.items())[:5])
                more = f"; ... ({len(diff)} in all)" if len(diff) > 5 else ""
                raise UserError(f"--resume {path} continues the saved run exactly: its recipe "
                                f"({self.args.recipe or 'the shipped ' + self.args.variant + '.yaml'}) changed in "
                                f"{', '.join(diff)} ({shown}{more}); restore the file, or start a new run "
                                f"(another --out) with the edited recipe")
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
        state = RunState.from_dict(ts)
        if self.dist.is_main:
            print(f"resuming {path}: epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")
        return state

    def _summary(self) -> dict[str, Any]:
        # a digest of each rank's weights: DDP must keep them bit-identical
        digest = hashlib.sha256()
        for p in self.run.bare.parameters():
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        per_rank = D.all_gather_objects(self.dist, digest.hexdigest())
        evaluated = self.state.best_ap >= 0  # best.pth is this run's: written when an evaluation improved AP
        summary = {"epochs": self.state.epoch, "steps": self.state.step,
                   "best_ap": self.state.best_ap if evaluated else None,
                   "last": str(self.out / "last.pth"),
                   "best": str(self.out / "best.pth") if evaluated and (self.out / "best.pth").exists() else None,
                   "world": self.dist.world, "rank_weight_sha256": per_rank}
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary


# what a run writes into its folder; a new run in the folder of an older one removes the older one's first
PREVIOUS_RUN_FILES = ("last.pth", "best.pth", "log.csv", "curves.png", "summary.json")


def recipe_diff(saved: Any, now: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """The dotted keys where two recipe dicts (Recipe.as_dict) differ -> (saved, now)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in list(saved) + [k for k in now if k not in saved]:
            out.update(recipe_diff(saved.get(k), now.get(k), f"{prefix}{k}."))
        return out
    return {} if saved == now else {prefix.rstrip("."): (saved, now)}


def _batches(loader):
    """The loader's batches; a UserError while loading one becomes a _DataError with the original message."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except UserError as err:
            shutdown = getattr(it, "_shutdown_workers", None)  # the workers end now, not at (a hung) exit
            if shutdown is not None:
                shutdown()
            if getattr(loader, "_iterator", None) is it:  # persistent workers: the loader keeps the iterator
                loader._iterator = None
            raise _DataError(worker_message(err)) from None
        yield batch


def worker_message(err: BaseException) -> str:
    """A UserError's own message, also when a DataLoader worker raised it: torch re-raises it as the same
    type with "Caught UserError in DataLoader worker process N." and the worker's traceback as the message;
    the original message is the traceback's last entry."""
    text = str(err)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    lines = text.rstrip().splitlines()
    name = type(err).__name__
    for i in range(len(lines) - 1, -1, -1):  # the last line naming the exception type starts its message
        head, sep, rest = lines[i].partition(": ")
        if sep and not lines[i].startswith(" ") and head.rsplit(".", 1)[-1] == name:
            return "\n".join([rest, *lines[i + 1:]]).strip()
    return lines[-1].strip()


def no_weights_note(variant: str, *, pretrained_backbone: bool = False) -> str:
    """What a run without --weights starts from, and the offline way to fine-tune instead (and, where the
    official recipe starts from a pretrained backbone, how to start from it)."""
    demo = Path(__file__).resolve().parents[1] / "demo"
    shipped = sorted(demo.glob("*.pth"))
    mine = demo / f"{variant}.pth"
    offline = (f"--weights {mine} (the shipped demo checkpoint) is the offline starting point" if mine.is_file()
               else f"the shipped demo checkpoints ({', '.join(p.name for p in shipped) or 'none'} in {demo}) are "
                    f"the offline starting points for their variants")
    backbone = ("; the official recipe starts from an ImageNet-pretrained backbone: --backbone-weights official "
                "(downloaded) or its file" if pretrained_backbone else "")
    return (f"weights: none given, {variant} starts from random initialisation (not pretrained); to fine-tune, "
            f"{offline}; --weights official loads the published weights (downloaded: needs internet){backbone}")


def _all_reduce_sums(dist: D.DistInfo, sums: dict[str, float], batches: int) -> dict[str, float]:
    """Epoch means of the loss terms over every rank's batches."""
    if not sums:
        return {}
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys] + [float(batches)], dtype=torch.float64)
    if dist.enabled:
        torch.distributed.all_reduce(t)
    return {k: float(v) / max(float(t[-1]), 1.0) for k, v in zip(keys, t[:-1])}
