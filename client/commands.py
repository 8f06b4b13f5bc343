"""Client-side `tdet` subcommands: infer (tdet.client.infer), eval/loadtest/compare/data
(tdet.client.evaluation_cli), capacity (tdet.client.capacity). Torch-free; heavy imports happen inside the
command functions."""

from __future__ import annotations

import argparse

from . import evaluation_cli
from .capacity import cli as capacity_cli
from .infer import register_infer


def register(sub: argparse._SubParsersAction) -> None:
    register_infer(sub)
    evaluation_cli.register(sub)
    capacity_cli.register(sub)
