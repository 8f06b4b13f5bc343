"""Test datasets: the project's synthetic shapes set, optionally relabelled to other category ids and names."""

from __future__ import annotations

import json
from pathlib import Path

from tdet.client.synth import synthesize


def shapes_set(root: Path, num: int, *, seed: int = 3, size: tuple[int, int] = (256, 192),
               objects: tuple[int, int] = (2, 5), relabel: dict[int, tuple[int, str]] | None = None
               ) -> tuple[Path, Path]:
    """(annotations.json, images folder) of a synthetic COCO set; `relabel` maps shape category ids to
    (new id, new name), dropping the annotations of the other shapes."""
    ann = synthesize(root, num=num, seed=seed, size=size, objects=objects)
    if relabel:
        coco = json.loads(ann.read_text())
        coco["annotations"] = [dict(a, category_id=relabel[a["category_id"]][0]) for a in coco["annotations"]
                               if a["category_id"] in relabel]
        coco["categories"] = [{"id": i, "name": n, "supercategory": "shape"} for i, n in relabel.values()]
        ann.write_text(json.dumps(coco))
    return ann, root / "images"
