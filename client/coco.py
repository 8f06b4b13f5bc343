"""Reading a COCO annotations file, one way for `tdet eval` (client.coco_eval) and training (training.data.coco):
the files checked to exist, pycocotools' progress printing silenced, a file that is not COCO named as such, and
the categories in sorted id order. numpy/pycocotools only (no torch): the client installs without it."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from .errors import UserError


def read_coco(coco_json: Path, images_dir: Path):
    """-> the pycocotools COCO of `coco_json`. FileNotFoundError when the file or `images_dir` is missing,
    UserError naming the file when it does not parse as COCO annotations."""
    from pycocotools.coco import COCO

    coco_json, images_dir = Path(coco_json), Path(images_dir)
    if coco_json.is_dir():  # a dataset's root or its annotations folder, not the file
        found = sorted(str(p) for p in (*coco_json.glob("*.json"), *coco_json.glob("annotations/*.json")))
        hint = f"; found there: {', '.join(found[:5])}" if found else "; it holds no .json file"
        raise FileNotFoundError(f"{coco_json} is a folder: pass the COCO annotations .json file{hint}")
    if not coco_json.is_file():
        raise FileNotFoundError(f"annotations file not found: {coco_json}")
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(coco_json))
    except (ValueError, KeyError, TypeError, AssertionError) as err:  # bad JSON, missing keys, not a dict
        raise UserError(f"{coco_json} is not a COCO annotations file: {err!r}") from None


def category_names(coco) -> dict[int, str]:
    """{dataset category id: name} in sorted id order (the id itself when a category has no name)."""
    cats = sorted(coco.dataset.get("categories", []), key=lambda c: c["id"])
    return {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
