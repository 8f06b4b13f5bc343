"""DAMO-YOLO training loss: AlignOTA on hand-made cases against a numpy re-derivation, QFL/DFL/GIoU and the
whole criterion against numpy formulas, empty targets, DDP normalisation over 2 gloo ranks, the official
init, and a few optimizer steps of the real damo-yolo-t. (Bit-level parity with the official code:
/work/notes/parity_damo_loss.py, outside the suite.)"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tdet.training.models import damo_yolo as D
from tdet.training.models.box_ops import aligned_giou
from tdet.training.models.damo_yolo.assigner import IOU_EPS, AlignOTAAssigner
from tdet.training.models.damo_yolo.criterion import (
    DamoYoloCriterion,
    distribution_focal_loss,
    quality_focal_loss,
)

torch.set_num_threads(2)


# ---------------------------------------------------------------- numpy reference (float64, loops)

def np_bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def np_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def np_giou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    enclose = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return w * h / union - (enclose - union) / enclose


def np_assign(scores, points, strides, pred, gts, labels, radius=2.5):
    """The AlignOTA rules as written in the DAMO-YOLO paper/code, re-derived with loops.
    -> (gt index per prior, -1 = background; IoU per prior; cost [N, G] (nan for non-candidates); ks)."""
    n, g_count = len(points), len(gts)
    in_box = np.zeros((n, g_count), bool)
    in_ctr = np.zeros((n, g_count), bool)
    for i, ((x, y), s) in enumerate(zip(points, strides)):
        for g, (x1, y1, x2, y2) in enumerate(gts):
            in_box[i, g] = x1 < x < x2 and y1 < y < y2
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            in_ctr[i, g] = abs(x - cx) < radius * s and abs(y - cy) < radius * s
    cand = np.nonzero((in_box | in_ctr).any(1))[0]
    iou = np.array([[np_iou(pred[i], gt) for gt in gts] for i in cand])
    cost = np.full((n, g_count), np.nan)
    for r, i in enumerate(cand):
        for g in range(g_count):
            t = [iou[r, g] if c == labels[g] else 0.0 for c in range(scores.shape[1])]
            cls = sum(np_bce(p, tc) * abs(tc - p) ** 2 for p, tc in zip(scores[i], t))
            cost[i, g] = cls + 3 * -math.log(iou[r, g] + 1e-7) + (0 if in_box[i, g] and in_ctr[i, g] else 1e8)
    ks = [max(1, int(np.sort(iou[:, g])[::-1][:10].sum())) for g in range(g_count)]
    chosen = np.zeros((n, g_count), bool)
    for g, k in enumerate(ks):
        chosen[cand[np.argsort(cost[cand, g], kind="stable")[:k]], g] = True
    gt_index = np.full(n, -1)
    for i in np.nonzero(chosen.any(1))[0]:
        gt_index[i] = int(np.argmin(cost[i])) if chosen[i].sum() > 1 else int(np.argmax(chosen[i]))
    ious = np.array([np_iou(pred[i], gts[g]) if g >= 0 else 0.0 for i, g in enumerate(gt_index)])
    return gt_index, ious, cost, ks


def grid(h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64) * stride, np.full(h * w, float(stride))


def run_assigner(scores, points, strides, pred, gts, labels):
    f = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    a = AlignOTAAssigner()(f(scores), f(points), f(strides), f(pred), f(gts), torch.tensor(labels))
    return a.gt_index.numpy(), a.iou.numpy()


# ---------------------------------------------------------------- assigner

def one_gt_case(seed: int = 0):
    """10x10 priors at stride 8; GT (20, 20, 44, 44) centred on prior (32, 32); every prior predicts a
    jittered 24x24 box around itself; prior (32, 32) predicts the GT exactly; prior (72, 72) (outside box
    and centre region) and prior (16, 32) (in the centre region, not in the box) predict it exactly too."""
    rng = np.random.default_rng(seed)
    points, strides = grid(10, 10, 8)
    half = 12 + rng.uniform(-2, 2, (100, 4))
    pred = np.concatenate([points - half[:, :2], points + half[:, 2:]], 1)
    gt = np.array([[20.0, 20, 44, 44]])
    index = {tuple(p): i for i, p in enumerate(points.astype(int).tolist())}
    for p in ((32, 32), (72, 72), (16, 32)):
        pred[index[p]] = gt[0]
    scores = rng.uniform(0.02, 0.2, (100, 3))
    return scores, points, strides, pred, gt, [1], index


def test_assigner_matches_the_rules_on_one_gt():
    scores, points, strides, pred, gt, labels, index = one_gt_case()
    got, got_iou = run_assigner(scores, points, strides, pred, gt, labels)
    want, want_iou, cost, ks = np_assign(scores, points, strides, pred, gt, labels)
    assert got[index[(32, 32)]] == 0  # the GT's centre prior, perfect box
    assert got[index[(72, 72)]] == -1 and got[index[(16, 32)]] == -1  # perfect boxes, outside box-and-centre
    assert np.isnan(cost[index[(72, 72)], 0])  # not even a candidate
    assert cost[index[(16, 32)], 0] > 1e8  # a candidate, at the outside cost
    # dynamic k = max(1, int(sum of the top-10 candidate IoUs)), the IoU-1 out-of-box prior included
    assert (got == 0).sum() == ks[0] >= 2
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_iou, want_iou, rtol=1e-5, atol=1e-6)


def test_contested_prior_goes_to_the_cheaper_gt():
    """Two overlapping GTs whose only good prediction is one prior: both take it (k = 1 each), it stays
    with the GT of lower cost, the other GT ends up with no prior (as the official)."""
    rng = np.random.default_rng(1)
    points, strides = grid(8, 8, 8)
    pred = np.concatenate([points - 1, points + 1], 1)  # 2x2 px boxes: IoU ~0 with every GT
    gts = np.array([[8.0, 8, 56, 56], [12.0, 12, 60, 60]])
    p = 4 * 8 + 4  # prior (32, 32): inside both boxes and both centre regions
    pred[p] = [10, 10, 56, 58]
    scores = rng.uniform(0.02, 0.2, (64, 2))
    labels = [0, 1]
    got, got_iou = run_assigner(scores, points, strides, pred, gts, labels)
    want, want_iou, cost, ks = np_assign(scores, points, strides, pred, gts, labels)
    assert ks == [1, 1]
    cheaper = int(np.argmin(cost[p]))
    assert abs(cost[p, 0] - cost[p, 1]) > 1e-3  # not a near-tie
    assert got[p] == cheaper and (got >= 0).sum() == 1
    np.testing.assert_array_equal(got, want)
    assert got_iou[p] == pytest.approx(np_iou(pred[p], gts[cheaper]), rel=1e-5)


def test_assigner_random_scenes_match_reference():
    rng = np.random.default_rng(2)
    points, strides = grid(8, 8, 8)
    for _ in range(3):
        half = rng.uniform(2, 30, (64, 4))
        pred = np.concatenate([points - half[:, :2], points + half[:, 2:]], 1)
        xy = rng.uniform(0, 40, (4, 2))
        gts = np.concatenate([xy, xy + rng.uniform(6, 30, (4, 2))], 1)
        scores, labels = rng.uniform(0.01, 0.9, (64, 5)), rng.integers(0, 5, 4).tolist()
        got, got_iou = run_assigner(scores, points, strides, pred, gts, labels)
        want, want_iou, _, _ = np_assign(scores, points, strides, pred, gts, labels)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got_iou, want_iou, rtol=1e-5, atol=1e-6)


def test_assigner_without_gts_or_candidates():
    points, strides = grid(4, 4, 8)
    pred = np.concatenate([points - 4, points + 4], 1)
    got, _ = run_assigner(np.full((16, 2), 0.1), points, strides, pred, np.zeros((0, 4)), [])
    assert (got == -1).all()
    far = np.array([[500.0, 500, 510, 510]])  # no prior inside or near it
    got, _ = run_assigner(np.full((16, 2), 0.1), points, strides, pred, far, [0])
    assert (got == -1).all()


# ---------------------------------------------------------------- losses

def test_loss_functions_match_formulas():
    scores = torch.tensor([[0.1, 0.7, 0.3], [0.2, 0.05, 0.9], [0.6, 0.4, 0.01]])
    labels, quality = torch.tensor([1, 3, 0]), torch.tensor([0.8, 0.0, 0.35])  # row 1: background
    got = quality_focal_loss(scores, labels, quality).numpy()
    for r in range(3):
        want = sum(np_bce(p, q) * abs(q - p) ** 2 for p, q in (
            (float(scores[r, c]), float(quality[r]) if c == int(labels[r]) else 0.0) for c in range(3)))
        assert got[r] == pytest.approx(want, rel=1e-5)

    logits, target = torch.tensor([[0.3, -1.0, 2.0, 0.5], [1.5, 0.2, -0.3, 0.0]]), torch.tensor([1.25, 2.9])
    got = distribution_focal_loss(logits, target).numpy()
    for r in range(2):
        logp = logits[r].double().log_softmax(0).numpy()
        t = float(target[r])
        lo = int(t)
        assert got[r] == pytest.approx(-logp[lo] * (lo + 1 - t) - logp[lo + 1] * (t - lo), rel=1e-5)

    a = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 25], [0, 0, 4, 4]])
    b = torch.tensor([[5.0, 5, 15, 15], [5, 5, 15, 25], [10, 10, 12, 14]])  # partial, equal, disjoint
    got = aligned_giou(a, b, eps=IOU_EPS).numpy()
    for r in range(3):
        assert got[r] == pytest.approx(np_giou(a[r].tolist(), b[r].tolist()), rel=1e-5, abs=1e-6)


def np_criterion(cls_logit, reg_logit, stride, gts, labels, reg_max):
    """The ZeroHead loss for one image, one level, from its definition in float64."""
    c, h, w = cls_logit.shape
    scores = 1 / (1 + np.exp(-cls_logit.reshape(c, -1).T))
    bins = reg_logit.reshape(4, reg_max + 1, h * w).transpose(2, 0, 1)
    prob = np.exp(bins - bins.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    points, strides = grid(h, w, stride)
    dist = (prob @ np.arange(reg_max + 1)) * stride
    pred = np.concatenate([points - dist[:, :2], points + dist[:, 2:]], 1)
    gt_index, ious, _, _ = np_assign(scores, points, strides, pred, gts, labels)
    pos = np.nonzero(gt_index >= 0)[0]
    num_pos = max(len(pos), 1)
    qfl = 0.0
    for i in range(h * w):
        for k in range(c):
            q = ious[i] if i in pos and k == labels[gt_index[i]] else 0.0
            qfl += np_bce(scores[i, k], q) * abs(q - scores[i, k]) ** 2
    weight = scores.max(1)
    norm = max(weight[pos].sum(), 1.0)
    giou = sum(weight[i] * (1 - np_giou(pred[i], gts[gt_index[i]])) for i in pos)
    dfl = 0.0
    for i in pos:
        x1, y1, x2, y2 = gts[gt_index[i]] / stride
        px, py = points[i] / stride
        for side, t in enumerate(np.clip([px - x1, py - y1, x2 - px, y2 - py], 0, reg_max - 0.1)):
            logp = bins[i, side] - np.log(np.exp(bins[i, side]).sum())
            lo = int(t)
            dfl += weight[i] * (-logp[lo] * (lo + 1 - t) - logp[lo + 1] * (t - lo))
    return {"loss_cls": qfl / num_pos, "loss_bbox": 2.0 * giou / norm, "loss_dfl": 0.25 * dfl / (4 * norm)}, len(pos)


def test_criterion_matches_reference_on_a_small_map():
    rng = np.random.default_rng(3)
    reg_max, stride, c = 4, 8, 3
    cls_logit = rng.normal(0, 1.5, (c, 6, 6))
    reg_logit = rng.normal(0, 1.0, (4 * (reg_max + 1), 6, 6))
    gts, labels = np.array([[6.0, 9, 30, 35], [20, 4, 44, 22]]), [2, 0]
    want, npos = np_criterion(cls_logit, reg_logit, stride, gts, labels, reg_max)
    assert npos >= 3
    crit = DamoYoloCriterion(c, reg_max=reg_max, strides=(stride,))
    t = lambda a: torch.tensor(a[None], dtype=torch.float32)  # noqa: E731
    got = crit([(t(cls_logit), t(reg_logit))],
               [{"boxes": torch.tensor(gts, dtype=torch.float32), "labels": torch.tensor(labels)}])
    for k, v in want.items():
        assert got[k].item() == pytest.approx(v, rel=1e-4), k
    assert got["total"].item() == pytest.approx(sum(want.values()), rel=1e-4)


def test_empty_targets_give_zero_box_losses_and_gradients_everywhere():
    model = D.build_model("damo-yolo-t", init="train", input_hw=(160, 160))
    crit = D.build_criterion("damo-yolo-t")
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    images = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0)) * 255
    losses = crit(model(images, [empty, empty]), [empty, empty])
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl", "total"}
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0 and losses["loss_dfl"].item() == 0
    assert losses["loss_cls"].item() > 0
    losses["total"].backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing  # DDP without find_unused_parameters needs every parameter in the graph
    assert model.head.gfl_cls[0].weight.grad.abs().sum() > 0


def test_loss_is_float32_under_autocast():
    crit = DamoYoloCriterion(3, reg_max=4, strides=(8,))
    g = torch.Generator().manual_seed(0)
    out = [(torch.randn(1, 3, 4, 4, generator=g).bfloat16(), torch.randn(1, 20, 4, 4, generator=g).bfloat16())]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = crit(out, [{"boxes": torch.tensor([[4.0, 4, 20, 20]]), "labels": torch.tensor([1])}])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="labels"):
        crit(out, [{"boxes": torch.tensor([[4.0, 4, 20, 20]]), "labels": torch.tensor([3])}])


DDP_RANK = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from tdet.training.models.damo_yolo.criterion import DamoYoloCriterion
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    out = [(torch.randn(1, 3, 6, 6, generator=g), torch.randn(1, 20, 6, 6, generator=g))]
    boxes = [[6.0, 9, 30, 35], [20, 4, 44, 22]] if rank == 0 else []
    t = {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor([2, 0][:len(boxes)])}
    losses = DamoYoloCriterion(3, reg_max=4, strides=(8,))(out, [t])
    print(json.dumps({k: v.item() for k, v in losses.items()}))
    dist.destroy_process_group()
""")


def test_ddp_ranks_average_the_normalisers(tmp_path):
    """Rank 0 has boxes, rank 1 none: both run the same all_reduces (no hang), and rank 0's terms are
    normalised by the rank-averaged num_pos / weight sum instead of its own."""
    import json
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", DDP_RANK, str(r), str(tmp_path / "store")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    res = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        res.append(json.loads(out.strip().splitlines()[-1]))
    g = torch.Generator().manual_seed(0)
    out = [(torch.randn(1, 3, 6, 6, generator=g), torch.randn(1, 20, 6, 6, generator=g))]
    single = DamoYoloCriterion(3, reg_max=4, strides=(8,))(
        out, [{"boxes": torch.tensor([[6.0, 9, 30, 35], [20, 4, 44, 22]]), "labels": torch.tensor([2, 0])}])
    _, npos = np_criterion(out[0][0][0].numpy(), out[0][1][0].numpy(), 8,
                           np.array([[6.0, 9, 30, 35], [20, 4, 44, 22]]), [2, 0], 4)
    scale = npos / max(npos / 2, 1.0)  # own num_pos -> the mean over 2 ranks (rank 1 has 0)
    assert res[0]["loss_cls"] == pytest.approx(single["loss_cls"].item() * scale, rel=1e-5)
    assert res[1]["loss_bbox"] == 0 and res[1]["loss_dfl"] == 0 and res[0]["loss_bbox"] > 0


# ---------------------------------------------------------------- init and training

def test_official_init_and_class_branch():
    model = D.build_model("damo-yolo-t", init="train", seed=5)
    again = D.build_model("damo-yolo-t", init="train", seed=5)
    other = D.build_model("damo-yolo-t", init="train", seed=6)
    sd, sd2, sd3 = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert not torch.equal(sd["head.gfl_cls.0.weight"], sd3["head.gfl_cls.0.weight"])
    for i in range(3):
        cls, reg = model.head.gfl_cls[i], model.head.gfl_reg[i]
        assert torch.allclose(cls.bias, torch.full_like(cls.bias, -math.log(99)))
        assert reg.bias.abs().max() == 0
        for conv in (cls, reg):
            assert conv.weight.std().item() == pytest.approx(0.01, rel=0.1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == 0.03 and (m.weight == 1).all() and (m.bias == 0).all()
               for m in bns)
    # CLASS_BRANCH covers exactly the keys whose shape depends on the class count
    few = D.build_model("damo-yolo-t", init="train", num_classes=3).state_dict()
    differ = {k for k in sd if sd[k].shape != few[k].shape}
    assert differ and all(k.startswith(D.CLASS_BRANCH) for k in differ)
    assert D.TARGET_FORMAT == "xyxy_pixels"
    before = {k: v.clone() for k, v in sd.items()}
    D.reinit_class_branch(model, seed=9)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {k for k in after if k.startswith("head.gfl_cls.") and k.endswith("weight")}
    assert D.build_criterion("damo-yolo-t", num_classes=3).num_classes == 3


def test_a_few_steps_fit_one_image():
    """10 AdamW steps of the real damo-yolo-t (official init) on one synthetic image: the boxes predicted
    at the GT centres move onto the GTs, the GT classes' scores rise and win there, and the loss, after
    its early rise, falls. (The early rise is the official loss: box terms are weighted by the detached
    class score with the normaliser floored at 1, and a positive's QFL target is its IoU, so both grow
    while scores leave the 0.01 prior and boxes improve.)"""
    size = 128
    crit = D.build_criterion("damo-yolo-t", num_classes=4)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 1, 1, generator=g).expand(1, 3, size, size).clone() * 255
    boxes = torch.tensor([[0.1, 0.15, 0.45, 0.6], [0.5, 0.3, 0.9, 0.85]]) * size
    for x0, y0, x1, y1 in boxes.long().tolist():
        image[..., y0:y1, x0:x1] = torch.rand(3, 1, 1, generator=g) * 255
    labels = torch.tensor([1, 3])
    targets = [{"boxes": boxes, "labels": labels}]
    model = D.build_model("damo-yolo-t", init="train", input_hw=(size, size), num_classes=4).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    centre = ((boxes[:, 1] + boxes[:, 3]) / 16).round() * (size // 8) + ((boxes[:, 0] + boxes[:, 2]) / 16).round()

    def at_centres(raw):  # (IoU of the predicted box with its GT, scores [2, C]) at the stride-8 centre priors
        with torch.no_grad():
            scores, pred = model.head.decode(raw)
        return [np_iou(pred[0, int(i)].tolist(), b.tolist()) for i, b in zip(centre, boxes)], scores[0, centre.long()]

    history, first = [], None
    for _ in range(10):
        raw = model(image, targets)
        first = first or at_centres(raw)
        losses = crit(raw, targets)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append(losses["total"].item())
    iou, scores = at_centres(model(image, targets))
    assert all(math.isfinite(v) for v in history)
    assert all(after > before + 0.15 for after, before in zip(iou, first[0])), (first[0], iou)
    assert (scores.argmax(1) == labels).all()
    assert (scores[torch.arange(2), labels] > 3 * first[1][torch.arange(2), labels]).all()
    assert history[-1] < 0.75 * max(history), history
