"""The model-family interface (tdet.training.family.Family): both packages implement it, an incomplete one is
refused by name, and shared training code holds no branch on a family's name."""

import re
import types
from pathlib import Path

import pytest

from tdet.training import registry
from tdet.training.family import MEMBERS, missing_members


@pytest.mark.parametrize("family", sorted(registry.FAMILY_MODULES))
def test_each_family_package_implements_the_interface(family):
    module = registry.family_module(family)
    assert missing_members(module) == []
    assert module.FAMILY == family
    assert {"training_checkpoint", "train_transform", "train_collate", "checkpoint_state_dict"} <= set(MEMBERS)


def test_an_incomplete_family_is_refused_naming_what_it_lacks(monkeypatch):
    broken = types.ModuleType("tdet.training.models.broken")
    broken.FAMILY = "broken"
    monkeypatch.setitem(registry.FAMILY_MODULES, "broken", broken.__name__)
    monkeypatch.setitem(__import__("sys").modules, broken.__name__, broken)
    with pytest.raises(TypeError, match="lacks .*build_model.*train_collate"):
        registry.family_module("broken")


def test_shared_training_code_does_not_branch_on_family_names():
    root = Path(__file__).parents[1] / "training"
    shared = [f for f in root.rglob("*.py") if "models" not in f.relative_to(root).parts and f.name != "registry.py"]
    pattern = re.compile(r"family\s*[!=]=|FAMILY\s*[!=]=|[!=]=\s*(DAMO_YOLO|RTDETRV2)\b")
    hits = [f"{f.relative_to(root)}:{i}" for f in shared for i, line in enumerate(f.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []
