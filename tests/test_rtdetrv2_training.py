"""RT-DETRv2 training side: Hungarian matcher, varifocal targets, contrastive denoising groups and mask,
train-mode forward at several sizes, empty targets (also under DDP), eval path untouched by training,
official init, optimizer parameter groups."""

import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from tdet.training.models import rtdetrv2 as R
from tdet.training.models.rtdetrv2.criterion import RTDETRv2Criterion
from tdet.training.models.rtdetrv2.denoising import contrastive_denoising_group
from tdet.training.models.rtdetrv2.matcher import HungarianMatcher

torch.set_num_threads(2)


def box(cx: float, cy: float, w: float, h: float) -> list[float]:
    return [cx, cy, w, h]


def targets(*per_image: list[tuple[list[float], int]]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": torch.tensor([b for b, _ in objs], dtype=torch.float32).reshape(-1, 4),
             "labels": torch.tensor([c for _, c in objs], dtype=torch.int64)} for objs in per_image]


@pytest.fixture(scope="module")
def model_s() -> R.RTDETRv2:
    return R.build_model("rtdetrv2-s", seed=0, num_classes=3, init="train")


# --- matcher ---------------------------------------------------------------------------------------------

class FixedCost(HungarianMatcher):
    """The matcher's assignment step on a hand-made cost matrix."""

    def __init__(self, cost: torch.Tensor) -> None:
        super().__init__()
        self.cost = cost

    def cost_matrix(self, logits, boxes, labels, gt_boxes):
        return self.cost


@pytest.mark.parametrize("cost, expected", [
    # greedy would take the 1 and then pay 100; the optimum pairs the 2s (total 4)
    ([[1.0, 2.0], [2.0, 100.0]], [(0, 1), (1, 0)]),
    # 4 queries, 2 GTs: the two cheapest disjoint cells, other queries stay unmatched
    ([[9.0, 9.0], [0.5, 3.0], [9.0, 9.0], [0.4, 0.6]], [(1, 0), (3, 1)]),
    # a 3x3 where each row's minimum collides with another's (optimum 1 + 2 + 2 = 5)
    ([[1.0, 2.0, 9.0], [1.0, 9.0, 2.0], [9.0, 2.0, 9.0]], [(0, 0), (1, 2), (2, 1)]),
])
def test_matcher_finds_the_optimal_assignment(cost, expected):
    cost = torch.tensor(cost)
    q, m = cost.shape
    outputs = {"pred_logits": torch.zeros(1, q, 2), "pred_boxes": torch.full((1, q, 4), 0.5)}
    tgt = targets([(box(0.5, 0.5, 0.1, 0.1), 0)] * m)
    (rows, cols), = FixedCost(cost)(outputs, tgt)
    assert list(zip(rows.tolist(), cols.tolist())) == expected


def test_matcher_cost_is_the_official_formula():
    # pred inside the GT, half its width: IoU 0.5 and the hull is the union, so GIoU 0.5; L1 0.2;
    # p = sigmoid(0) = 0.5: focal pos 0.25 * 0.5^2 * log 2, neg 0.75 * 0.5^2 * log 2
    cost = HungarianMatcher().cost_matrix(torch.zeros(1, 2), torch.tensor([box(0.5, 0.5, 0.2, 0.2)]),
                                          torch.tensor([1]), torch.tensor([box(0.5, 0.5, 0.4, 0.2)]))
    focal = (0.25 - 0.75) * 0.25 * math.log(2)
    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx(5 * 0.2 + 2 * focal + 2 * -0.5, rel=1e-5)


def test_matcher_with_empty_targets_and_exact_boxes():
    gt = [box(0.2, 0.3, 0.1, 0.2), box(0.7, 0.6, 0.3, 0.3), box(0.5, 0.5, 0.5, 0.5)]
    perm = [2, 0, 1]  # query i predicts GT perm[i] exactly, with its class
    logits = torch.full((2, 4, 3), -4.0)
    boxes = torch.full((2, 4, 4), 0.05)
    for q, g in enumerate(perm):
        boxes[0, q] = torch.tensor(gt[g])
        logits[0, q, g] = 4.0
    tgt = targets([(b, c) for c, b in enumerate(gt)], [])
    (rows, cols), (rows1, cols1) = HungarianMatcher()({"pred_logits": logits, "pred_boxes": boxes}, tgt)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == perm
    assert rows1.numel() == 0 and cols1.numel() == 0


# --- varifocal loss --------------------------------------------------------------------------------------

def test_matched_query_learns_its_iou():
    logits = torch.tensor([[[0.3, -0.2], [-1.0, 0.5]]])
    # query 0 sits inside the GT with IoU 0.5; query 1 is far away (matched to nothing)
    boxes = torch.tensor([[box(0.5, 0.5, 0.2, 0.2), box(0.1, 0.1, 0.05, 0.05)]])
    losses = RTDETRv2Criterion(2)({"pred_logits": logits, "pred_boxes": boxes}, targets([(box(0.5, 0.5, 0.4, 0.2), 1)]))

    def bce(x: float, t: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    def background(x: float) -> float:  # target 0, focal weight alpha * p^gamma
        return 0.75 * (1 / (1 + math.exp(-x))) ** 2 * bce(x, 0.0)

    # target score = IoU 0.5 on the GT class, with weight 0.5; sum / queries x queries / num_boxes (1)
    expected = 0.5 * bce(-0.2, 0.5) + background(0.3) + background(-1.0) + background(0.5)
    assert losses["loss_vfl"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(2 * (1 - 0.5), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(5 * 0.2, rel=1e-5)
    assert losses["total"].item() == pytest.approx(expected + 1 + 1, rel=1e-5)


# --- contrastive denoising -------------------------------------------------------------------------------

def test_denoising_groups_and_attention_mask():
    torch.manual_seed(0)
    embed = torch.nn.Embedding(4, 8, padding_idx=3)
    gt = [box(0.4, 0.5, 0.2, 0.1), box(0.6, 0.4, 0.1, 0.2), box(0.5, 0.5, 0.15, 0.15)]
    tgt = targets([(b, c) for c, b in enumerate(gt)], [(box(0.5, 0.6, 0.2, 0.2), 1)])
    dn = contrastive_denoising_group(tgt, 3, 5, embed, num_denoising=10, label_noise_ratio=0.0, box_noise_scale=1.0)
    # max 3 GTs -> 10 // 3 = 3 groups of (3 positives, 3 negatives) = 18 queries
    assert dn.meta["dn_num_group"] == 3 and dn.meta["dn_num_split"] == [18, 5]
    assert dn.content.shape == (2, 18, 8) and dn.ref_unact.shape == (2, 18, 4)
    assert dn.meta["dn_positive_idx"][0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]
    assert dn.meta["dn_positive_idx"][1].tolist() == [0, 6, 12]
    m = dn.attn_mask
    assert m.shape == (23, 23) and m.dtype == torch.bool
    assert m[18:, :18].all() and not m[18:, 18:].any() and not m[:18, 18:].any()
    for a in range(18):
        for b in range(18):
            assert m[a, b] == (a // 6 != b // 6), (a, b)
    # no label noise: every slot holds its GT's class embedding; image 1's padded slots the zero padding row
    assert torch.equal(dn.content[0, 6 + 4], embed.weight[1])
    assert not dn.content[1, [1, 2, 4, 5]].any()
    # noise: positive corners move by at most half the box size, negative ones by between half and one
    xywh = dn.ref_unact.sigmoid()
    noisy = torch.cat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], -1)[0]
    gt_t = torch.tensor(gt)
    clean = torch.cat([gt_t[:, :2] - gt_t[:, 2:] / 2, gt_t[:, :2] + gt_t[:, 2:] / 2], -1).repeat(6, 1)
    shift = (noisy - clean).abs() / gt_t[:, 2:].repeat(6, 2)
    negative = (torch.arange(18) // 3) % 2 == 1
    assert (shift[~negative] <= 0.5 + 1e-4).all()
    # a negative whose corners crossed has a negative size, which the inverse sigmoid clips to ~0
    crossed = (xywh[0, :, 2:] < 1e-4).any(-1)
    kept = negative & ~crossed
    assert kept.sum() >= 4 and not crossed[~negative].any()
    assert (shift[kept] >= 0.5 - 1e-4).all() and (shift[kept] <= 1.0 + 1e-4).all()


def test_denoising_of_a_batch_without_boxes_keeps_one_dummy_group():
    embed = torch.nn.Embedding(4, 8, padding_idx=3)
    dn = contrastive_denoising_group(targets([], []), 3, 5, embed)
    assert dn.meta["dn_num_group"] == 1 and dn.meta["dn_num_split"] == [2, 5]
    assert all(idx.numel() == 0 for idx in dn.meta["dn_positive_idx"])
    assert torch.isfinite(dn.ref_unact).all() and dn.attn_mask.shape == (7, 7)


# --- train-mode forward ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [320, 512, 640])
def test_train_forward_outputs_at_any_size(model_s, size):
    tgt = targets([(box(0.3, 0.4, 0.2, 0.3), 2), (box(0.6, 0.6, 0.1, 0.1), 0)])
    model_s.train()
    with torch.no_grad():
        out = model_s(torch.rand(1, 3, size, size), tgt)
    layers, n_dn = 3, 2 * 2 * (100 // 2)
    assert out["pred_logits"].shape == (1, 300, 3) and out["pred_boxes"].shape == (1, 300, 4)
    assert [o["pred_logits"].shape for o in out["aux_outputs"]] == [(1, 300, 3)] * (layers - 1)
    assert [o["pred_boxes"].shape for o in out["aux_outputs"]] == [(1, 300, 4)] * (layers - 1)
    enc = out["enc_aux_outputs"]
    assert [(o["pred_logits"].shape, o["pred_boxes"].shape) for o in enc] == [((1, 300, 3), (1, 300, 4))]
    assert out["enc_meta"] == {"class_agnostic": False}
    assert [o["pred_logits"].shape for o in out["dn_aux_outputs"]] == [(1, n_dn, 3)] * layers
    assert [o["pred_boxes"].shape for o in out["dn_aux_outputs"]] == [(1, n_dn, 4)] * layers
    assert out["dn_meta"]["dn_num_split"] == [n_dn, 300] and out["dn_meta"]["dn_num_group"] == 50
    boxes = torch.cat([out["pred_boxes"], out["enc_aux_outputs"][0]["pred_boxes"]], 1)
    assert torch.isfinite(out["pred_logits"]).all() and ((boxes >= 0) & (boxes <= 1)).all()


def test_an_input_too_small_for_the_query_selection_is_refused_when_built():
    # `tdet train rtdetrv2-s --img-size 64` failed in its first forward with an internal error (a traceback)
    from tdet.client.errors import UserError

    with pytest.raises(UserError, match=r"input size 96x96 is too small for rtdetrv2-s: 189 encoder tokens"):
        R.build_model("rtdetrv2-s", input_hw=(96, 96))
    assert R.build_model("rtdetrv2-s", input_hw=(128, 128)).decoder.num_queries == 300  # 336 tokens: enough


def _to_bf16(obj):
    if isinstance(obj, torch.Tensor):
        return obj.bfloat16() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _to_bf16(v) for k, v in obj.items()}
    return [_to_bf16(v) for v in obj] if isinstance(obj, list) else obj


@pytest.mark.parametrize("case", ["one image empty, bf16 outputs under autocast", "all empty"])
def test_empty_targets_give_finite_losses_and_gradients(model_s, case):
    tgt = targets([(box(0.5, 0.5, 0.3, 0.4), 1)] if case.startswith("one") else [], [])
    model_s.train()
    model_s.zero_grad()
    out = model_s(torch.rand(2, 3, 256, 256), tgt)
    # mixed precision: outputs in bf16, the loss called inside autocast still computes in fp32 (the
    # official runs it outside autocast)
    amp = "autocast" in case
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        losses = R.build_criterion("rtdetrv2-s", 3)(_to_bf16(out) if amp else out, tgt)
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert all(torch.isfinite(v) for v in losses.values()) and losses["total"] > 0
    assert {"loss_vfl_dn_0", "loss_bbox_enc_0", "loss_giou_aux_1"} <= losses.keys()
    losses["total"].backward()
    # every trainable parameter is in the graph (DDP reduces the same set on every rank)
    missing = [k for k, p in model_s.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model_s.parameters() if p.grad is not None)


def test_eval_output_unchanged_by_a_train_mode_step():
    model = R.build_model("rtdetrv2-s", seed=1)
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.eval()(x)
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    model.train()
    tgt = targets([(box(0.5, 0.5, 0.3, 0.4), 1)])
    R.build_criterion("rtdetrv2-s")(model(torch.rand(1, 3, 320, 320), tgt), tgt)["total"].backward()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, b in model.named_buffers():
        if k.endswith(stats):  # BatchNorm statistics are meant to move in training: put them back
            b.copy_(buffers[k])
        else:  # anchors, valid mask, AIFI position embedding, offset scales: untouched
            assert torch.equal(b, buffers[k]), k
    with torch.no_grad():
        after = model.eval()(x)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


# --- DDP: an empty rank runs the same collectives ----------------------------------------------------------

_DDP_WORKER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from tdet.training.models import rtdetrv2 as R
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = DDP(R.build_model("rtdetrv2-s", seed=0, num_classes=3, init="train").train())
    crit = R.build_criterion("rtdetrv2-s", 3)
    boxes = [[], [[0.5, 0.5, 0.3, 0.4], [0.2, 0.3, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]]][rank]
    tgt = [{"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.zeros(len(boxes), dtype=torch.int64)}]
    torch.manual_seed(rank)
    losses = crit(model(torch.rand(1, 3, 256, 256), tgt), tgt)
    losses["total"].backward()
    grad = sum(p.grad.double().sum() for p in model.parameters() if p.grad is not None)
    print("RESULT", rank, crit.num_boxes(tgt, torch.device("cpu")), float(losses["total"].detach()), float(grad),
          flush=True)
    del model  # DDP's reducer before the process group, and both ranks done before either tears it down
    dist.barrier()
    dist.destroy_process_group()
""")


def test_ddp_with_an_empty_rank():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    results = {}
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        _, rank, num_boxes, total, grad = next(line for line in out.splitlines() if line.startswith("RESULT")).split()
        results[int(rank)] = (float(num_boxes), float(total), float(grad))
    # 0 and 3 boxes: every rank normalises by the world average 1.5
    assert results[0][0] == results[1][0] == 1.5
    assert all(math.isfinite(v) for r in results.values() for v in r)
    # DDP averaged the gradients: both ranks hold the same ones
    assert results[0][2] == pytest.approx(results[1][2], rel=1e-6, abs=1e-9)


# --- initialisation and optimizer groups -----------------------------------------------------------------

def test_official_init():
    model = R.build_model("rtdetrv2-l", seed=5, init="train")
    dec = model.decoder
    offsets = dec.decoder.layers[0].cross_attn.sampling_offsets
    grid = offsets.bias.view(8, 12, 2)
    k = torch.tensor([1.0, 2, 3, 4])
    assert not offsets.weight.any()
    # head 0 points right, head 1 diagonally (normalised to the square's border), head 2 down; 1..4 per level
    assert torch.allclose(grid[0, :4], torch.stack([k, 0 * k], 1), atol=1e-6)
    assert torch.allclose(grid[1, 4:8], torch.stack([k, k], 1), atol=1e-6)
    assert torch.allclose(grid[2, 8:], torch.stack([0 * k, k], 1), atol=1e-6)
    assert not dec.decoder.layers[3].cross_attn.attention_weights.weight.any()
    prior = -math.log(99)
    for head in [dec.enc_score_head, *dec.dec_score_head]:
        assert torch.allclose(head.bias, torch.full_like(head.bias, prior))
    for mlp in [dec.enc_bbox_head, *dec.dec_bbox_head]:
        assert not mlp.layers[-1].weight.any() and not mlp.layers[-1].bias.any()
    assert not dec.denoising_class_embed.weight[-1].any() and dec.denoising_class_embed.weight[:-1].std() > 0.5
    # one layer deep-copied, as the official builds the decoder
    sd0 = dec.decoder.layers[0].state_dict()
    assert all(torch.equal(v, dec.decoder.layers[5].state_dict()[k]) for k, v in sd0.items())
    # freeze_at 0 + freeze_norm: stem frozen, every backbone norm a frozen identity
    assert all(not p.requires_grad for p in model.backbone.conv1.parameters())
    assert model.backbone.res_layers[0].blocks[0].branch2a.conv.weight.requires_grad
    assert not any("backbone" in k and "norm" in k for k, _ in model.named_parameters())



def test_official_init_is_a_function_of_the_seed():
    # init_for_training resets every weight: a tame-initialised model ends up where init="train" starts
    again = R.init_for_training(R.build_model("rtdetrv2-s", seed=0, num_classes=3), seed=0).state_dict()
    other = R.build_model("rtdetrv2-s", seed=1, num_classes=3, init="train").state_dict()
    fresh = R.build_model("rtdetrv2-s", seed=0, num_classes=3, init="train").state_dict()
    assert all(torch.equal(v, again[k]) for k, v in fresh.items())
    assert not torch.equal(fresh["encoder.lateral_convs.0.conv.weight"], other["encoder.lateral_convs.0.conv.weight"])


def test_reinit_class_branch_touches_only_the_class_branch(model_s):
    before = {k: v.clone() for k, v in model_s.state_dict().items()}
    R.reinit_class_branch(model_s, seed=11)
    after = model_s.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith(R.CLASS_BRANCH) for k in changed)
    assert {k.rsplit(".", 1)[0] for k in changed} >= {"decoder.enc_score_head", "decoder.dec_score_head.2",
                                                       "decoder.denoising_class_embed"}
    assert torch.allclose(after["decoder.dec_score_head.0.bias"], torch.full((3,), -math.log(99)))


def _group_of(groups: list[dict], model, name: str) -> dict | None:
    p = dict(model.named_parameters())[name]
    hits = [{k: v for k, v in g.items() if k != "params"} for g in groups if any(q is p for q in g["params"])]
    assert len(hits) <= 1
    return hits[0] if hits else None


def _groups(model, variant: str) -> list[dict]:
    """The optimizer groups `tdet train` builds from the variant's recipe (training/recipes/<variant>.yaml)."""
    from tdet.training.engine.optim import param_groups
    from tdet.training.recipe import load_recipe

    groups = param_groups(model, load_recipe(variant).optimizer, 1e-4)
    # keep only what a recipe set differently from the AdamW defaults (lr 1e-4, weight decay 1e-4)
    return [{"params": g["params"], **{k: g[k] for k in ("lr", "weight_decay") if g[k] != 1e-4}} for g in groups]


def test_param_groups_follow_the_configs(model_s):
    g = _groups(model_s, "rtdetrv2-s")
    assert _group_of(g, model_s, "backbone.conv1.conv1_1.norm.weight") == {"weight_decay": 0.0}
    assert _group_of(g, model_s, "encoder.encoder.0.layers.0.norm1.bias") == {"weight_decay": 0.0}
    assert _group_of(g, model_s, "backbone.conv1.conv1_1.conv.weight") == {}
    assert _group_of(g, model_s, "decoder.enc_score_head.bias") == {}
    assert sum(len(x["params"]) for x in g) == sum(1 for p in model_s.parameters() if p.requires_grad)

    m34 = R.build_model("rtdetrv2-m34-dsp")
    g = _groups(m34, "rtdetrv2-m34-dsp")
    assert _group_of(g, m34, "backbone.res_layers.2.blocks.0.branch2a.conv.weight") == {"lr": 5e-5}
    assert _group_of(g, m34, "backbone.res_layers.2.blocks.0.branch2a.norm.bias") == {"lr": 5e-5, "weight_decay": 0.0}
    assert _group_of(g, m34, "decoder.enc_score_head.bias") == {"weight_decay": 0.0}
    assert _group_of(g, m34, "decoder.enc_score_head.weight") == {}
    # discrete sampling: the official freezes the sampling offsets, so no optimizer group holds them
    assert _group_of(g, m34, "decoder.decoder.layers.0.cross_attn.sampling_offsets.weight") is None

    with pytest.raises(ValueError, match="no training recipe"):
        _groups(m34, "rtdetrv2-q")
