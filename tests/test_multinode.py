"""Training on several machines (issue 22 item 6), played on this one: two `torchrun` launchers, one per "node"
(--nnodes 2, --node-rank 0/1, one process each, gloo on CPU, static rendezvous on 127.0.0.1), run a tiny
`tdet train`. Both nodes finish, the ranks' weights are bit-identical, and rank 0 alone writes the run: its
checkpoint holds those weights."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import shapes_set

from tdet.ensembles.server import free_port

pytestmark = pytest.mark.slow

VARIANT = "damo-yolo-t"


def _node(rank: int, port: int, ann: Path, images: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
           "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
           "-m", "tdet.client.cli", "train", VARIANT, "--data", str(ann), "--images", str(images), "--out", str(out),
           "--workers", "0", "--epochs", "1", "--batch", "1", "--img-size", "128", "--device", "cpu",
           "--eval-every", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two trainings share the CPU cores
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _checkpoint_digest(path: Path) -> str:
    """sha256 over the raw weights of last.pth in the model's parameter order (as the trainer hashes each rank)."""
    from tdet.training.engine.checkpoint import split_checkpoint
    from tdet.training.registry import family_of

    raw, _, _ = split_checkpoint(torch.load(path, weights_only=True))
    names = [n for n, _ in family_of(VARIANT).build_model(VARIANT, init="tame", seed=0).named_parameters()]
    digest = hashlib.sha256()
    for n in names:
        digest.update(raw[n].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_two_nodes_train_with_identical_weights_and_rank0_writes(tmp_path):
    ann, images = shapes_set(tmp_path / "data", 4, size=(160, 128))  # 4 images, 1 per rank: 2 steps
    port = free_port()
    outs = [tmp_path / "node0", tmp_path / "node1"]  # each machine's own --out
    nodes = [_node(rank, port, ann, images, outs[rank]) for rank in (0, 1)]
    logs = []
    try:
        for p in nodes:
            logs.append(p.communicate(timeout=900)[0])
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(nodes, logs)):
        assert p.returncode == 0, f"node {rank}:\n{log[-3000:]}"
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["world"] == 2 and summary["steps"] == 2
    digests = summary["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert _checkpoint_digest(outs[0] / "last.pth") == digests[0]  # the checkpoint holds the ranks' weights
    assert not (outs[1] / "last.pth").exists() and not (outs[1] / "summary.json").exists()  # rank 0 only writes
