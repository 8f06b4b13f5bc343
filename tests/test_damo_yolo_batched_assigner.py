"""The batched AlignOTA assigner (one set of tensor ops for a whole batch, GTs padded to the largest count)
against the per-image assigner it replaces: identical assigned GT indices and IoUs, identical loss terms, on
crowded (0 / 5 / 30 / 60 boxes, a third of them tiny, 2-8 px), empty and tiny-box batches."""

from __future__ import annotations

import pytest
import torch

from tdet.training.models.damo_yolo.assigner import AlignOTAAssigner
from tdet.training.models.damo_yolo.criterion import DamoYoloCriterion

torch.set_num_threads(2)
SIZE, STRIDES, CLASSES = 320, (8, 16, 32), 6


def priors() -> tuple[torch.Tensor, torch.Tensor]:
    points, strides = [], []
    for s in STRIDES:
        h = SIZE // s
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()], -1) * s)
        strides.append(torch.full((h * h,), float(s)))
    return torch.cat(points), torch.cat(strides)


def gt_set(gen: torch.Generator, count: int, tiny_share: float = 1 / 3) -> dict[str, torch.Tensor]:
    tiny = torch.rand(count, generator=gen) < tiny_share
    wh = torch.where(tiny[:, None], 2 + 6 * torch.rand(count, 2, generator=gen),
                     10 + 110 * torch.rand(count, 2, generator=gen))
    xy = torch.rand(count, 2, generator=gen) * (SIZE - wh)
    return {"boxes": torch.cat([xy, xy + wh], 1),
            "labels": torch.randint(0, CLASSES, (count,), generator=gen)}


def outputs(gen: torch.Generator, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random train-mode head outputs (class logits, box-bin logits) per level."""
    return [(torch.randn(batch, CLASSES, SIZE // s, SIZE // s, generator=gen) * 2 - 3,
             torch.randn(batch, 4 * 17, SIZE // s, SIZE // s, generator=gen) * 2) for s in STRIDES]


BATCHES = {"crowded": [0, 5, 30, 60], "empty": [0, 0, 0], "tiny": [3, 12, 1]}


@pytest.mark.parametrize("kind", list(BATCHES))
@pytest.mark.parametrize("seed", [0, 1])
def test_batched_assignment_is_the_per_image_one(kind: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    counts = BATCHES[kind]
    targets = [gt_set(gen, c, 1.0 if kind == "tiny" else 1 / 3) for c in counts]
    points, strides = priors()
    n, b = points.shape[0], len(counts)
    scores = torch.rand(b, n, CLASSES, generator=gen) * 0.9 + 0.01
    centre = points + torch.randn(b, n, 2, generator=gen) * 4
    half = 1 + torch.rand(b, n, 2, generator=gen) * 40
    pred = torch.cat([centre - half, centre + half], -1)
    g = max(counts)
    pad_boxes, pad_labels = torch.zeros(b, g, 4), torch.zeros(b, g, dtype=torch.long)
    valid = torch.zeros(b, g, dtype=torch.bool)
    for i, t in enumerate(targets):
        pad_boxes[i, :counts[i]], pad_labels[i, :counts[i]], valid[i, :counts[i]] = t["boxes"], t["labels"], True
    assigner = AlignOTAAssigner()
    got = assigner.batch(scores, points, strides, pred, pad_boxes, pad_labels, valid)
    positives = 0
    for i, t in enumerate(targets):
        want = assigner(scores[i], points, strides, pred[i], t["boxes"], t["labels"])
        assert torch.equal(got.gt_index[i], want.gt_index), f"image {i} ({counts[i]} boxes)"
        assert torch.equal(got.iou[i], want.iou), f"image {i} ({counts[i]} boxes)"
        positives += int((want.gt_index >= 0).sum())
    assert (positives > 0) == (sum(counts) > 0)


@pytest.mark.parametrize("kind", list(BATCHES))
def test_batched_loss_is_the_per_image_loss(kind: str) -> None:
    gen = torch.Generator().manual_seed(7)
    counts = BATCHES[kind]
    targets = [gt_set(gen, c, 1.0 if kind == "tiny" else 1 / 3) for c in counts]
    outs = [(c.requires_grad_(), r.requires_grad_()) for c, r in outputs(gen, len(counts))]
    batched = DamoYoloCriterion(CLASSES, batched_assign=True)(outs, targets)
    grads = torch.autograd.grad(batched["total"], [t for o in outs for t in o])
    reference = DamoYoloCriterion(CLASSES, batched_assign=False)(outs, targets)
    ref_grads = torch.autograd.grad(reference["total"], [t for o in outs for t in o])
    for k in ("loss_cls", "loss_bbox", "loss_dfl", "total"):  # same targets, same ops: the same bits
        assert torch.equal(batched[k], reference[k]), (k, batched[k].item(), reference[k].item())
    for a, r in zip(grads, ref_grads):
        assert torch.equal(a, r)
    assert reference["total"].item() > 0


def test_cost_ties_go_the_same_way() -> None:
    """Equal scores and equal predicted boxes: many candidates share one cost; both paths pick the same."""
    gen = torch.Generator().manual_seed(3)
    points, strides = priors()
    n = points.shape[0]
    targets = [gt_set(gen, c, 0.5) for c in (4, 9)]
    scores = torch.full((2, n, CLASSES), 0.3)
    pred = torch.tensor([100.0, 100, 140, 140]).expand(2, n, 4).clone()
    g = 9
    pad_boxes, pad_labels = torch.zeros(2, g, 4), torch.zeros(2, g, dtype=torch.long)
    valid = torch.zeros(2, g, dtype=torch.bool)
    for i, t in enumerate(targets):
        k = t["labels"].numel()
        pad_boxes[i, :k], pad_labels[i, :k], valid[i, :k] = t["boxes"], t["labels"], True
    assigner = AlignOTAAssigner()
    got = assigner.batch(scores, points, strides, pred, pad_boxes, pad_labels, valid)
    for i, t in enumerate(targets):
        want = assigner(scores[i], points, strides, pred[i], t["boxes"], t["labels"])
        assert torch.equal(got.gt_index[i], want.gt_index)
        assert torch.equal(got.iou[i], want.iou)
