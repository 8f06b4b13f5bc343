"""File helpers every command shares: the one atomic write and the one image-file collector."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import UserError

# the encodings the served preprocess decodes (tdet.client.preprocess.SUPPORTED_FORMATS)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def atomic_write(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write `data` to `path` through a temp file in the same folder and a rename, so a reader never
    sees a half-written file and an interrupted run never leaves one that looks complete. The temp
    file is removed on any error. `mode`: the file's permissions (mkstemp alone would leave 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def collect_images(paths: list[Path] | Path, *, recursive: bool = False) -> list[Path]:
    """Image files to process: files as given; folders expanded to the image files in them (by
    suffix, IMAGE_SUFFIXES; with `recursive`, in their subfolders too), sorted per folder.
    FileNotFoundError for a path that does not exist; UserError when nothing is found."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            files = p.rglob("*") if recursive else p.iterdir()
            found += sorted(f for f in files if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not found:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}")
    return found
