"""What a model family package (training/models/<family>) provides: the interface the registry, the trainer,
export and checkpoint code rely on, written down as a Protocol (a family package satisfies it structurally).
Shared code calls these members instead of branching on the family's name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import nn

    from .data.coco import CocoDetection
    from .weights import WeightsInfo


class Family(Protocol):
    FAMILY: str  # "damo-yolo", "rtdetrv2": the name in checkpoints, specs and the served config
    VARIANTS: dict[str, Any]  # variant name -> its frozen config dataclass
    WEIGHTS: dict[str, WeightsInfo]  # variant name -> official release file
    # variant name -> the ImageNet-pretrained backbone its official recipe starts from (empty: from scratch)
    BACKBONE_WEIGHTS: dict[str, WeightsInfo]
    TARGET_FORMAT: str  # the boxes the criterion takes: "xyxy_pixels" or "cxcywh_normalized"
    CLASS_BRANCH: tuple[str, ...]  # state-dict prefixes whose shapes depend on the class count
    UNORDERED_ROWS: bool  # the export's output rows are a set (RT-DETRv2's top-k queries), not a fixed order

    def build_model(self, name: str, *, weights: str | Path | None = None, deploy: bool = False, seed: int = 0,
                    num_classes: int | None = None, input_hw: tuple[int, int] | None = None,
                    init: str = "tame") -> nn.Module: ...

    def export_module(self, model: nn.Module) -> nn.Module: ...

    def num_params(self, model: nn.Module) -> int: ...

    def build_criterion(self, variant: str, num_classes: int | None = None) -> nn.Module: ...

    def init_for_training(self, model: nn.Module, seed: int) -> nn.Module: ...

    def reinit_class_branch(self, model: nn.Module, seed: int) -> nn.Module: ...

    def load_backbone(self, model: nn.Module, path: str | Path) -> None:
        """Pretrained backbone weights (a BACKBONE_WEIGHTS file) loaded strictly into the model's backbone."""

    def checkpoint_state_dict(self, ckpt: dict, model: nn.Module) -> dict[str, Any]:
        """The weights in a checkpoint dict that the family's loader would load into `model`."""

    def training_checkpoint(self, *, model: nn.Module, ema: dict, optimizer: dict, scaler: dict | None, epoch: int,
                            lr_state: dict) -> dict[str, Any]:
        """The family's official training-checkpoint layout (without the "tdet" and "train_state" entries)."""

    def train_transform(self, dataset: CocoDetection, input_hw: tuple[int, int],
                        augment: dict[str, Any]) -> Callable[..., Any]:
        """`(index, rng, strong, progress=0.0) -> Sample`: the family's training augmentation (progress: the fraction
        of the strong epochs done, for augmentations that ramp in)."""

    def train_collate(self, multi_scale: Sequence[int] | None = None) -> Callable[..., Any]:
        """list of (Sample, SampleKey) -> TrainBatch in the family's input range and TARGET_FORMAT."""


MEMBERS = tuple(sorted({*Family.__annotations__, *(n for n in vars(Family) if not n.startswith("_"))}))


def missing_members(module: ModuleType) -> list[str]:
    """The Family members `module` lacks (empty: it is a complete family package)."""
    return [m for m in MEMBERS if not hasattr(module, m)]
