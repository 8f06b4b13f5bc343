"""Training recipes as data: one YAML file per variant in training/recipes/, each naming a family `base` file
and overriding what the official variant config overrides (dicts merge key by key, lists are replaced, as the
official configs' merge does). `load_recipe` turns the merged YAML into frozen dataclasses; unknown keys are an
error (a typo must not silently fall back to a default), and per-run changes go through `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tdet.client.errors import UserError
from tdet.client.optionfields import from_settings
from tdet.client.options import DetectOptions


@dataclass(frozen=True)
class OptimizerCfg:
    name: str  # "SGD" | "AdamW"
    weight_decay: float
    lr: float | None = None  # a fixed lr (RT-DETRv2)
    lr_per_image: float | None = None  # lr = lr_per_image x effective batch (DAMO-YOLO)
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay: tuple[str, ...] = ()  # "norm" (norm layers' weight and bias), "bias" (every bias)
    param_groups: tuple[dict[str, Any], ...] = ()  # {params: regex, lr?, weight_decay?}, first match wins

    def base_lr(self, effective_batch: int) -> float:
        if (self.lr is None) == (self.lr_per_image is None):
            raise UserError("a recipe's optimizer sets exactly one of lr and lr_per_image")
        return self.lr if self.lr is not None else self.lr_per_image * effective_batch


@dataclass(frozen=True)
class ScheduleCfg:
    name: str  # "damo-cosine" | "warmup-multistep"
    warmup_epochs: float = 0.0
    warmup_iters: int = 0
    warmup_start_lr: float = 0.0
    min_lr_ratio: float = 0.05
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1


@dataclass(frozen=True)
class EmaCfg:
    decay: float
    warmups: int  # decay ramp: decay x (1 - exp(-n / warmups))
    first_update: int = 0  # n at the first update: DAMO-YOLO counts iterations from 0, RT-DETRv2 updates from 1


@dataclass(frozen=True)
class Recipe:
    family: str
    variant: str
    epochs: int
    batch_size: int  # the official total batch; documents the recipe, a run's batch is its own
    input_size: tuple[int, int]  # (height, width)
    optimizer: OptimizerCfg
    schedule: ScheduleCfg
    no_aug_epochs: int  # the strong augmentations (and multi-scale) are off for the last epochs
    ema: EmaCfg
    grad_clip: float | None
    amp: bool
    augment: dict[str, Any] = field(default_factory=dict)  # family-specific, validated by the transform builder
    multi_scale: tuple[int, ...] | None = None
    eval: dict[str, Any] = field(default_factory=dict)  # postprocess parameters for the periodic evaluation

    def __post_init__(self) -> None:  # a bad eval key fails when the recipe loads, not at the first evaluation
        from_settings(DetectOptions, self.eval, what="recipe eval key", strict=True)

    def as_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively (YAML-ready)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise UserError(f"recipe {path} includes itself through `base`")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} is not a YAML mapping")
    base = data.pop("base", None)
    return _merge(_read(_base_path(path, str(base)), (*seen, path)), data) if base else data


def _base_path(path: Path, base: str) -> Path:
    """The file `base` in recipe `path` names: relative to `path`'s folder (or absolute), else, for a bare name
    (`damo-yolo-t.yaml` or `damo-yolo-t`), the shipped recipe of that name."""
    near = path.parent / base
    if near.is_file():
        return near
    shipped = Path(str(resources.files("tdet.training") / "recipes"))
    if Path(base).name == base:
        for name in (base, f"{base}.yaml"):
            if (shipped / name).is_file():
                return shipped / name
    raise UserError(f"recipe {path}: its base {base!r} is not a file: looked for {near}"
                    + (f" and for a shipped recipe in {shipped}" if Path(base).name == base else "")
                    + " (e.g. base: damo-yolo-t.yaml)")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"unknown recipe key(s) {unknown} in {where}; known: {sorted(names)}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        if isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UserError(f"recipe {where}: {err}") from None


def warmup_warning(recipe: Recipe, warmup_steps: int, steps_per_epoch: int) -> str | None:
    """A warning when the run ends before the lr warmup does (`warmup_steps` optimizer steps, as the schedule
    counts them; the recipe states it in epochs or iterations): the lr never reaches its base value, so a
    short run learns little (AP near 0) for a reason the log does not show."""
    total = recipe.epochs * steps_per_epoch
    if warmup_steps <= 0 or total >= warmup_steps:
        return None
    s = recipe.schedule
    stated = f"warmup_epochs: {s.warmup_epochs:g}" if s.name == "damo-cosine" else f"warmup_iters: {s.warmup_iters}"
    epochs = warmup_steps / steps_per_epoch
    return (f"warning: the run ends inside the lr warmup: {recipe.epochs} epoch(s) x {steps_per_epoch} step(s) = "
            f"{total} steps, the recipe's warmup ({stated}) takes {warmup_steps} steps ({epochs:.1f} epochs "
            f"here), so the lr stays below its base value and AP may stay near 0; "
            f"train for more --epochs or shorten the warmup in a --recipe file")


def recipe_path(variant: str) -> Path:
    path = Path(str(resources.files("tdet.training") / "recipes" / f"{variant}.yaml"))
    if not path.is_file():
        raise UserError(f"no training recipe for {variant!r} (looked for {path})")
    return path


def load_recipe(variant: str, path: str | Path | None = None) -> Recipe:
    """The recipe of `variant` (training/recipes/<variant>.yaml), or of a user's YAML file at `path` (which may
    name a shipped recipe as `base`, e.g. `base: damo-yolo-t.yaml` next to it or an absolute path)."""
    src = Path(path) if path is not None else recipe_path(variant)
    if not src.is_file():
        raise FileNotFoundError(f"recipe file not found: {src}")
    data = _read(src)
    data.setdefault("variant", variant)
    if data["variant"] != variant:
        raise UserError(f"recipe {src} is for {data['variant']}, not {variant}")
    nested = {"optimizer": OptimizerCfg, "schedule": ScheduleCfg, "ema": EmaCfg}
    for key, cls in nested.items():
        if not isinstance(data.get(key), dict):
            raise UserError(f"recipe {src} lacks the `{key}` section")
        data[key] = _build(cls, data[key], f"{src}:{key}")
    if data.get("multi_scale") is not None:
        data["multi_scale"] = [int(s) for s in data["multi_scale"]]
    recipe = _build(Recipe, data, str(src))
    return dataclasses.replace(recipe, input_size=tuple(int(v) for v in recipe.input_size))
