"""Official checkpoints: where they come from, how they are fetched, how they are read.

The download code is real: it streams the release file to a cache with a temp-file + rename (so an
interrupted download never looks complete) and fails with a clear message when offline.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdet.client.errors import UserError
from tdet.client.files import atomic_path


@dataclass(frozen=True)
class WeightsInfo:
    """One official release checkpoint.

    url: the release URL. filename: the cached file name. map_coco: the published COCO val2017 AP (None: a
    backbone's ImageNet weights).
    sha256: expected digest, when known (checked after download).
    """

    url: str
    filename: str
    map_coco: float | None
    sha256: str | None = None


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $TDET_CACHE, else ~/.cache/tdet/weights."""
    return Path(os.environ.get("TDET_CACHE", Path.home() / ".cache" / "tdet")) / "weights"


def download(info: WeightsInfo, *, dest_dir: Path | None = None, timeout_s: float = 60.0,
             flag: str = "--weights") -> Path:
    """Fetch `info.url` into the cache (once) and return the local path.

    Raises ConnectionError naming the URL and the manual alternative when the network is unreachable.
    """
    dest = (dest_dir or cache_dir()) / info.filename
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, suffix=".part") as tmp:
        try:
            with open(tmp, "wb") as out, urllib.request.urlopen(info.url, timeout=timeout_s) as resp:
                shutil.copyfileobj(resp, out, length=1 << 20)
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise ConnectionError(
                f"could not download {info.url} ({err}). Download it elsewhere and pass the file with "
                f"{flag} PATH, or put it at {dest}") from None
        if info.sha256 is not None:
            digest = sha256sum(tmp)
            if digest != info.sha256:
                raise UserError(f"checksum mismatch for {info.url}: got {digest}, expected {info.sha256}")
    return dest


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True (no arbitrary code from a checkpoint). Clear error if missing/corrupt."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle (protocol byte 0x80);
    # anything else would fail inside the unpickler with an opaque "KeyError: 101"
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise UserError(f"{path} is not a PyTorch checkpoint (a .pth/.pt file written by torch.save); it starts "
                        f"with {head!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, zip errors, weights_only refusals
        raise UserError(f"cannot read checkpoint {path} (not a PyTorch checkpoint, or a damaged one): "
                        f"{type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state dict")
    return ckpt


TDET_META = "tdet"  # key of the metadata `tdet train` adds to its checkpoints (official layouts otherwise)


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The `tdet train` metadata of a checkpoint: variant, num_classes, class_names, category_ids,
    input_hw, ... ({} for official release files and bare state dicts)."""
    meta = read_checkpoint(path).get(TDET_META)
    return dict(meta) if isinstance(meta, dict) else {}


def resolve(weights: str | Path | None, family_weights: dict[str, WeightsInfo], variant: str, *,
            flag: str = "--weights") -> Path | None:
    """--weights (`flag`) value -> local file. "official" downloads the variant's release file; None stays None."""
    if weights is None:
        return None
    if str(weights) == "official":
        if variant not in family_weights:
            raise UserError(f"no official checkpoint is registered for {variant}")
        return download(family_weights[variant], flag=flag)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path


def load_state_dict_strict(model: Any, state_dict: dict[str, Any], source: str | Path, what: str, *,
                           class_branch: tuple[str, ...] = ()) -> None:
    """model.load_state_dict(strict=True), but a mismatch raises ValueError naming the missing,
    unexpected and mis-shaped keys (the usual cause: a checkpoint of another variant), or the two class
    counts when only the class branch (state-dict prefixes `class_branch`) differs."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shaped = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    wrong = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in shaped]
    # a classifier bias has one entry per class: its length is the class count on each side
    bias = [k for k in shaped if k.startswith(class_branch) and k.endswith(".bias") and expected[k].dim() == 1]
    if class_branch and bias and not missing and not unexpected and all(k.startswith(class_branch) for k in shaped):
        n, m = state_dict[bias[0]].shape[0], expected[bias[0]].shape[0]
        raise UserError(f"{source} has {n} classes but this {what} expects {m} (only the class branch differs, "
                         f"e.g. {wrong[:1]}): export the `tdet train` checkpoint of your dataset (it records its "
                         f"classes), or fine-tune this one with `tdet train --weights`")
    if missing or unexpected or wrong:
        raise UserError(f"{source} does not match this {what}: {len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} with other shapes "
                         f"(e.g. {wrong[:3]}). Wrong variant?")
    model.load_state_dict(state_dict, strict=True)
