"""The shared file helpers: the atomic write and the image collector."""

import os
from pathlib import Path

import pytest

from tdet.client.errors import UserError
from tdet.client.files import atomic_path, atomic_write, collect_images


def test_atomic_write_replaces_whole_files_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_text() == "second" and target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_removes_its_temp_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    class Unwritable:  # not bytes: f.write raises inside the helper, after the temp file exists
        def encode(self):
            return self

    with pytest.raises(TypeError):
        atomic_write(target, Unwritable())  # type: ignore[arg-type]
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["out.json"]


def test_atomic_path_renames_a_written_file_and_removes_a_failed_one(tmp_path):
    """For writers that take a file name (torch.save, onnx.save): the file appears whole, 0644, or not at all."""
    target = tmp_path / "model.onnx"
    with atomic_path(target, suffix=".part") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".part") and not target.exists()
        tmp.write_bytes(b"graph")
    assert target.read_bytes() == b"graph" and target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError, match="export failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a graph")
        raise RuntimeError("export failed")
    assert target.read_bytes() == b"graph" and sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_collect_images(tmp_path):
    (tmp_path / "a.JPG").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.tiff").write_bytes(b"x")
    assert [p.name for p in collect_images([tmp_path])] == ["a.JPG", "b.png"]
    assert [p.name for p in collect_images(tmp_path, recursive=True)] == ["a.JPG", "b.png", "c.tiff"]
    assert collect_images([tmp_path / "notes.txt"]) == [tmp_path / "notes.txt"]  # a file is taken as given
    with pytest.raises(FileNotFoundError, match="no such image or folder"):
        collect_images([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images") as err:
        collect_images([Path(empty)])
    assert "subfolders" not in str(err.value)
    (empty / "day1").mkdir()
    (empty / "day1" / "x.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match=r"subfolders are not searched: pass those with images \(.*day1\)"):
        collect_images([empty])
