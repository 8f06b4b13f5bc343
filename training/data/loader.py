"""Train and val DataLoaders: deterministic sample keys, the family's transform and collate, the val stretch resize.

Interface (what the trainer calls; the per-family parts, train_transform and train_collate, come from the
family package, see tdet.training.family.Family):

    build_train_transform(family, augment, input_hw, dataset) -> (index, rng, strong, progress) -> Sample
    build_train_loader(dataset, family, augment, input_hw, batch_size, seed, workers=2, rank=0, world=1,
                       multi_scale=None) -> DataLoader yielding TrainBatch
        loader.batch_sampler is the TrainSampler: call `.set_epoch(epoch, strong=..., start_batch=...,
        strong_epochs=...)` before iterating each epoch (strong=False in the no-aug epochs; start_batch to resume
        mid-epoch; strong_epochs, the run's epochs with strong augmentation, sets each key's progress).
    build_val_loader(dataset, family, input_hw, batch_size, workers=2) -> DataLoader yielding ValBatch

TrainBatch: images float32 [B, 3, H, W] in the family's input range (DAMO-YOLO 0..255, RT-DETRv2 0..1),
targets: list of {"boxes": float32 [N, 4], "labels": int64 [N]} in the family's TARGET_FORMAT (DAMO-YOLO xyxy
pixels of `images`, RT-DETRv2 cxcywh normalized to 0..1), keys: the SampleKey of each image.
ValBatch: images uint8 [B, 3, H, W] RGB at input_hw, exactly the served engine's input (the served stretch
resize: client resize_rgb + preprocess_spec; the model's cast/scale happens in training.reference.predict),
image_ids int64 [B], orig_hw int64 [B, 2] (height, width of the file) for mapping boxes back for COCO eval.

Determinism: a batch is a list of SampleKey(index, seed, epoch, strong, progress); the sample is the transform applied
with np.random.default_rng(seed), so it depends only on the key, never on the worker that made it, on the
number of workers, or on what ran before (exact resume). The order is a permutation drawn from (seed, epoch),
padded by wrapping to a multiple of `world` and dealt round-robin to the ranks (torch DistributedSampler's
scheme); each rank then cuts its share into batches (drop_last drops its short tail).
RT-DETRv2 multi-scale (official BatchImageCollateFunction): the batch is resized with F.interpolate (nearest)
to a square size from `multi_scale`, picked by a generator seeded with the batch's keys; boxes stay
normalized. It is off in the no-aug epochs (strong=False), as the official collate's stop_epoch.
"""

from __future__ import annotations

import atexit
import signal
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tdet.client.errors import UserError
from tdet.client.preprocess import resize_rgb, to_chw
from tdet.client.specs import FAMILIES, preprocess_spec

from .batch import SampleKey
from .coco import CocoDetection, Sample

Transform = Callable[[int, np.random.Generator, bool, float], Sample]


class ValBatch(NamedTuple):
    images: np.ndarray  # uint8 [B, 3, H, W] RGB: the served engine's input (the cast/scale is the model's step)
    image_ids: torch.Tensor
    orig_hw: torch.Tensor


def _family(family: str) -> Any:
    from ..registry import family_module  # the family packages import torch models: only when a loader is built

    return family_module(family)


def build_train_transform(family: str, augment: dict[str, Any], input_hw: tuple[int, int],
                          dataset: CocoDetection) -> Transform:
    """The family's training pipeline (its package's train_transform); unknown `augment` keys raise ValueError."""
    return _family(family).train_transform(dataset, input_hw, augment)


class TrainSampler(Sampler[list[SampleKey]]):
    """Batches of SampleKeys for one epoch of one rank; see the module docstring for the order."""

    def __init__(self, dataset_len: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 drop_last: bool = True) -> None:
        if dataset_len < 1 or batch_size < 1 or not 0 <= rank < world:
            raise UserError(f"bad sampler arguments: len={dataset_len} batch={batch_size} rank={rank} world={world}")
        self.dataset_len, self.batch_size, self.seed = dataset_len, batch_size, int(seed)
        self.rank, self.world, self.drop_last = rank, world, drop_last
        self.epoch, self.strong, self.start_batch, self.strong_epochs = 0, True, 0, 0
        if self.batches_per_epoch() == 0:
            raise UserError(f"{dataset_len} images give no full batch of {batch_size} per rank on {world} rank(s)")

    def set_epoch(self, epoch: int, *, strong: bool = True, start_batch: int = 0, strong_epochs: int = 0) -> None:
        """Select the epoch (its order), whether the strong augmentations are on, the first batch to yield, and
        the run's strong epochs (a batch's progress: batches done / the strong epochs' batches; 0: always 0)."""
        self.epoch, self.strong, self.start_batch = int(epoch), bool(strong), int(start_batch)
        self.strong_epochs = int(strong_epochs)

    def _shard(self) -> tuple[np.ndarray, np.ndarray]:
        """(dataset indices, sample seeds) of this rank for the epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.dataset_len)
        seeds = rng.integers(0, 2**63 - 1, size=self.dataset_len, dtype=np.int64)
        total = -(-self.dataset_len // self.world) * self.world
        pos = np.arange(total) % self.dataset_len  # wrap-around padding, as DistributedSampler
        mine = pos[self.rank::self.world]
        return order[mine], seeds[mine]

    def batches_per_epoch(self) -> int:
        n = -(-self.dataset_len // self.world)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        index, seeds = self._shard()
        n = self.batches_per_epoch()
        for b in range(self.start_batch, n):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            progress = (self.epoch * n + b) / (self.strong_epochs * n) if self.strong_epochs > 0 else 0.0
            yield [SampleKey(int(i), int(s), self.epoch, self.strong, progress) for i, s in zip(index[sl], seeds[sl])]


class TrainDataset(Dataset):
    """dataset[key] -> (Sample at input_hw, key): the transform under np.random.default_rng(key.seed)."""

    def __init__(self, transform: Transform, length: int) -> None:
        self.transform, self.length = transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: SampleKey) -> tuple[Sample, SampleKey]:  # type: ignore[override]
        return self.transform(key.index, np.random.default_rng(key.seed), key.strong, key.progress), key


def _worker_init(_: int) -> None:
    # Ctrl-C in a terminal, systemd, SLURM and `kill -- -PGID` signal the loader workers too: only the main
    # process stops the run (at a step boundary, writing last.pth); it ends the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # one thread per worker: the workers already run in parallel
    cv2.setNumThreads(0)
    torch.set_num_threads(1)


def _loader_kwargs(workers: int, persistent: bool) -> dict[str, Any]:
    # a private generator: making an iterator must not draw from the global torch RNG (the model's denoising
    # noise uses it, and a resumed run must see the same draws)
    kw: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.cuda.is_available(),
                          "generator": torch.Generator()}
    if workers > 0:
        kw.update(persistent_workers=persistent, worker_init_fn=_worker_init, prefetch_factor=2)
    return kw


def close_loader(loader: DataLoader) -> None:
    """End a loader's persistent workers now. They ignore SIGTERM (_worker_init), and multiprocessing's exit
    handler stops daemonic children with SIGTERM and then joins them: a process exiting with them alive would
    wait forever (a `tdet train` run that hung after its last step)."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    loader._iterator = None


def _close_at_exit(ref: weakref.ref) -> None:
    loader = ref()
    if loader is not None:
        close_loader(loader)


def build_train_loader(dataset: CocoDetection, family: str, augment: dict[str, Any], input_hw: tuple[int, int],
                       batch_size: int, seed: int, workers: int = 2, rank: int = 0, world: int = 1,
                       multi_scale: Sequence[int] | None = None) -> DataLoader:
    """The training DataLoader of one rank (batch_size per rank). See the module docstring."""
    collate = _family(family).train_collate(multi_scale)
    transform = build_train_transform(family, augment, input_hw, dataset)
    sampler = TrainSampler(len(dataset), batch_size, seed, rank, world)
    loader = DataLoader(TrainDataset(transform, len(dataset)), batch_sampler=sampler, collate_fn=collate,
                        **_loader_kwargs(workers, persistent=True))
    if workers > 0:  # whatever path the process leaves by; registered after torch's and multiprocessing's: runs first
        atexit.register(_close_at_exit, weakref.ref(loader))
    return loader


class ValDataset(Dataset):
    """dataset[i] -> (uint8 [3, H, W] at input_hw, image id, original (h, w)): the served preprocessing."""

    def __init__(self, dataset: CocoDetection, family: str, input_hw: tuple[int, int]) -> None:
        self.dataset, self.spec = dataset, preprocess_spec(family, input_hw)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, tuple[int, int]]:
        s = self.dataset.load(i)
        return to_chw(resize_rgb(s.image, self.spec)), s.image_id, s.orig_hw


def _val_collate(items: list[tuple[np.ndarray, int, tuple[int, int]]]) -> ValBatch:
    return ValBatch(np.stack([x for x, _, _ in items]), torch.tensor([i for _, i, _ in items], dtype=torch.int64),
                    torch.tensor([hw for _, _, hw in items], dtype=torch.int64).reshape(-1, 2))


def build_val_loader(dataset: CocoDetection, family: str, input_hw: tuple[int, int], batch_size: int,
                     workers: int = 2) -> DataLoader:
    """The validation DataLoader: dataset order, every image once, the last batch may be short."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    # one pass per evaluation: its workers end with the pass
    return DataLoader(ValDataset(dataset, family, input_hw), batch_size=batch_size, shuffle=False,
                      collate_fn=_val_collate, **_loader_kwargs(workers, persistent=False))
