"""Client-side `tdet` subcommands: infer (tdet.client.infer) and, when present, eval/loadtest/compare/data
(tdet.client.evaluation_cli). Torch-free; heavy imports happen inside the command functions."""

from __future__ import annotations

import argparse
import importlib

from .infer import register_infer


def register(sub: argparse._SubParsersAction) -> None:
    register_infer(sub)
    try:
        evaluation = importlib.import_module("tdet.client.evaluation_cli")
    except ModuleNotFoundError as err:
        if err.name != "tdet.client.evaluation_cli":  # a real missing dependency must not be hidden
            raise
        return
    evaluation.register(sub)
