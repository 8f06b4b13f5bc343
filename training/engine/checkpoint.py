"""Training checkpoints in each family's official layout, plus what an exact resume needs.

DAMO-YOLO (`detector_trainer.py::save_ckpt`): {"model": EMA weights, "epoch", "optimizer"}: `tools/eval.py`,
`tools/demo.py` and `tdet export` read ckpt["model"].
RT-DETRv2 (`BaseSolver.state_dict`): {"model": raw weights, "ema": {"module": EMA weights, "updates"},
"optimizer", "lr_scheduler", "lr_warmup_scheduler", "scaler", "last_epoch", "date"}: `tools/export_onnx.py`
and `tdet export` read ckpt["ema"]["module"].
Both carry "tdet" (variant, classes, input size, recipe, run arguments: what export and serving need) and
"train_state" (raw weights for DAMO-YOLO, step counters, RNG states, best AP, partial epoch sums).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from tdet.client.errors import UserError
from tdet.client.files import atomic_path

from ..weights import TDET_META, read_checkpoint


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save through atomic_path: an interrupted save never leaves a truncated checkpoint; 0644, as
    checkpoints are meant to be shared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".part") as tmp:
        torch.save(obj, tmp)


def build_checkpoint(fam: ModuleType, *, model: nn.Module, ema: dict, optimizer: dict, scaler: dict | None,
                     epoch: int, meta: dict, train_state: dict, lr_state: dict) -> dict:
    """The checkpoint dict in the family's official layout (fam.training_checkpoint) plus "tdet" and
    "train_state". `epoch`: epochs completed; `ema`: ModelEMA.state_dict()."""
    ckpt = fam.training_checkpoint(model=model, ema=ema, optimizer=optimizer, scaler=scaler, epoch=epoch,
                                   lr_state=lr_state)
    # what the family's layout has no place for (DAMO-YOLO keeps only EMA weights) goes to train_state
    extra = ckpt.pop("train_state", {})
    return {TDET_META: meta, **ckpt, "train_state": {**train_state, **extra}}


def split_checkpoint(ckpt: dict) -> tuple[dict, dict, dict | None]:
    """A `tdet train` checkpoint -> (raw model weights, EMA state {"module", "updates"}, scaler state)."""
    state = ckpt.get("train_state")
    if not isinstance(state, dict):
        raise UserError("not a `tdet train` checkpoint (no train_state): use --weights to start from it instead")
    if "ema" in ckpt:  # RT-DETRv2 layout
        return ckpt["model"], ckpt["ema"], ckpt.get("scaler")
    return state["model"], {"module": ckpt["model"], "updates": state["ema_updates"]}, state.get("scaler")


def load_resume(path: str | Path) -> dict:
    if not Path(path).is_file():
        raise UserError(f"resume checkpoint not found: {path}")
    ckpt = read_checkpoint(path)
    split_checkpoint(ckpt)  # validates
    return ckpt


def load_pretrained(model: nn.Module, fam: ModuleType, path: str | Path, *, num_classes: int,
                    category_ids: list[int]) -> list[str]:
    """Fine-tuning start: every weight of the checkpoint at `path` (official release, official training
    checkpoint or `tdet train` checkpoint) loaded strictly into `model`, except the class branch
    (fam.CLASS_BRANCH) when the checkpoint's classes differ from the dataset's; that branch is re-initialised
    with the prior (fam.reinit_class_branch). Returns the skipped keys."""
    ckpt = read_checkpoint(path)
    sd = fam.checkpoint_state_dict(ckpt, model)  # the weights the family's own loader would use
    meta = ckpt.get(TDET_META) or {}
    from tdet.client.labels import COCO_CATEGORY_IDS

    ckpt_ids = [int(i) for i in meta.get("category_ids", COCO_CATEGORY_IDS)]
    expected = model.state_dict()
    same_classes = ckpt_ids == list(category_ids) and all(
        sd[k].shape == expected[k].shape for k in expected if k.startswith(fam.CLASS_BRANCH) and k in sd)
    skipped = [] if same_classes else sorted(k for k in sd if k.startswith(fam.CLASS_BRANCH))
    keep = {k: v for k, v in sd.items() if k not in skipped}
    missing = sorted(set(expected) - set(keep) - set(skipped))
    unexpected = sorted(set(keep) - set(expected))
    wrong = [k for k in keep if k in expected and keep[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise UserError(f"{path} does not match this model beyond its class branch: {len(missing)} missing "
                         f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
                         f"{len(wrong)} with other shapes (e.g. {wrong[:3]}). Wrong variant?")
    model.load_state_dict(keep, strict=False)
    if skipped:
        fam.reinit_class_branch(model, seed=0)
    return skipped


def slim_checkpoint(src: str | Path, dst: str | Path, *, extra_meta: dict | None = None) -> Path:
    """A release file from a `tdet train` checkpoint: the EMA weights alone in fp16 (float buffers too),
    in the family's official layout, with the "tdet" metadata (classes, input size, recipe, run arguments)
    and `extra_meta` merged in. `tdet export --weights` and the official loaders read it like the full one."""
    ckpt = read_checkpoint(src)
    _, ema, _ = split_checkpoint(ckpt)
    half = {k: v.half() if v.is_floating_point() else v for k, v in ema["module"].items()}
    meta = {**(ckpt.get(TDET_META) or {}), **(extra_meta or {})}
    out: dict[str, Any] = {TDET_META: meta}
    if "ema" in ckpt:  # RT-DETRv2 layout
        out["ema"] = {"module": half, "updates": ema["updates"]}
    else:
        out["model"] = half
        out["epoch"] = ckpt.get("epoch")
    atomic_torch_save(out, Path(dst))
    return Path(dst)
