"""What both families' train transforms share: the recipe `augment` dict parser, the horizontal flip
(albumentations) and the stretch resize (the client's served `resize_rgb`)."""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any, TypeVar

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network: skip its version check at import

import albumentations as A
import numpy as np
import numpy.typing as npt

from tdet.client.errors import UserError
from tdet.client.preprocess import resize_rgb
from tdet.client.specs import preprocess_spec

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
T = TypeVar("T")


def augment_from_dict(cls: type[T], augment: dict[str, Any], nested: dict[str, dict[str, str]],
                      flat: dict[str, str], family: str) -> T:
    """Recipe dict -> the dataclass `cls`. `nested` maps {block: {key: field}} (e.g. mosaic.prob ->
    mosaic_prob), `flat` maps top-level keys to fields; missing keys keep the defaults, values are cast to
    the field's type, unknown keys raise ValueError naming them."""
    values: dict[str, Any] = {}
    for key, val in augment.items():
        if key in flat:
            values[flat[key]] = val
        elif key in nested and isinstance(val, dict):
            for sub, v in val.items():
                if sub not in nested[key]:
                    raise UserError(f"unknown {family} augment key {key}.{sub}; known: {sorted(nested[key])}")
                values[nested[key][sub]] = v
        else:
            raise UserError(f"unknown {family} augment key {key!r}; known: {sorted([*nested, *flat])}")
    types = {f.name: str(f.type) for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: _cast(v, types[k]) for k, v in values.items()})


def _cast(value: Any, type_name: str) -> Any:
    if type_name.startswith("tuple"):
        kind = int if type_name.startswith("tuple[int") else float
        return tuple(kind(x) for x in value)
    return {"bool": bool, "int": int}.get(type_name, float)(value)


_FLIP = A.Compose([A.HorizontalFlip(p=1.0)],
                  bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True))


def hflip(img: U8, boxes: F32, labels: I64) -> tuple[U8, F32, I64]:
    """Horizontal flip of an RGB image [H, W, 3] and its xyxy pixel boxes (x1' = W - x2, x2' = W - x1)."""
    out = _FLIP(image=img, bboxes=boxes.reshape(-1, 4), labels=labels)
    return (out["image"], np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
            np.asarray(out["labels"], np.int64).reshape(-1))


def stretch_resize(img: U8, boxes: F32, input_hw: tuple[int, int], family: str) -> tuple[U8, F32]:
    """Stretch to input_hw with the family's served resize (client `resize_rgb`: DAMO-YOLO cv2 INTER_LINEAR,
    RT-DETRv2 PIL bilinear); boxes scale per axis. A same-size image is returned as is (both resizes
    would copy it unchanged)."""
    h, w = img.shape[:2]
    if (h, w) != tuple(input_hw):
        img = resize_rgb(img, preprocess_spec(family, input_hw))
    sx, sy = input_hw[1] / w, input_hw[0] / h
    return img, boxes * np.array([sx, sy, sx, sy], np.float32)
