"""File helpers every command shares: the one atomic write (atomic_path, atomic_write), the one image collector."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UserError

# the encodings the served preprocess decodes (tdet.client.preprocess.SUPPORTED_FORMATS)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int = 0o644, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp file beside `path` for writers that take a file name (torch.save, onnx.save, a download): on a
    clean exit it gets `mode` (mkstemp alone would leave 0600) and is renamed onto `path`, so a reader never
    sees a half-written file; on any error it is removed, so an interrupted run never leaves one that looks
    complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically (atomic_path)."""
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


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
        deeper = [] if recursive else sorted({f.parent for p in paths if p.is_dir() for f in p.rglob("*")
                                              if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()})
        hint = (f"; subfolders are not searched: pass those with images ({', '.join(map(str, deeper[:3]))}"
                f"{' ...' if len(deeper) > 3 else ''})" if deeper else "")
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, paths))}{hint}")
    return found


def refuse_overwriting(inputs: Iterable[str | Path], outputs: Iterable[Path]) -> None:
    """UserError when an output file would replace an input (`tdet infer --out` on the images' own folder
    would write each annotated copy over its original)."""
    sources = {Path(p).resolve(): p for p in inputs if "://" not in str(p) and Path(p).is_file()}
    for out in outputs:
        if out.resolve() in sources:
            raise UserError(f"--out {out.parent}: its {out.name} would overwrite the input {sources[out.resolve()]}; "
                            "pick another --out")
