"""Checkpoint download and reading: real code paths, exercised with local files and a refused port."""

import hashlib

import pytest
import torch

from tdet.training import weights as W


def test_download_from_a_local_url_caches_atomically(tmp_path):
    src = tmp_path / "release.pth"
    torch.save({"model": {"w": torch.ones(2)}}, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    info = W.WeightsInfo(url=src.as_uri(), filename="cached.pth", map_coco=0.0, sha256=digest)
    out = W.download(info, dest_dir=tmp_path / "cache")
    assert out.read_bytes() == src.read_bytes()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["cached.pth"]  # no .part left behind
    assert out.stat().st_mode & 0o777 == 0o644  # a shared cache, not mkstemp's 0600
    assert W.read_checkpoint(out)["model"]["w"].sum().item() == 2


def test_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "release.pth"
    src.write_bytes(b"not what we expect")
    info = W.WeightsInfo(url=src.as_uri(), filename="bad.pth", map_coco=0.0, sha256="0" * 64)
    with pytest.raises(ValueError, match="checksum mismatch"):
        W.download(info, dest_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_unreachable_url_gives_a_clear_message(tmp_path):
    # port 9 (discard) on loopback: refused at once, like an offline machine
    info = W.WeightsInfo(url="http://127.0.0.1:9/rtdetrv2_r18vd.pth", filename="x.pth", map_coco=0.0)
    with pytest.raises(ConnectionError, match=r"could not download http://127.0.0.1:9/.*--weights PATH"):
        W.download(info, dest_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_read_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        W.read_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):  # said plainly, not "KeyError: 101"
        W.read_checkpoint(junk)
    # weights_only=True refuses arbitrary pickled objects
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "obj": _Custom()}, evil)
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        W.read_checkpoint(evil)


class _Custom:
    pass
