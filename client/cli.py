"""`tdet`: one command-line front for the whole pipeline.

Each area owns its subcommands in a torch-free `cli` module with `register(subparsers)`; heavy
imports (torch, onnx, tritonclient) happen inside the command functions, so `tdet --help` is fast
and the client works without the training extras. This front is the one place client code reaches
training/ (the areas, and `eval --reference`'s in-process run); the other client modules never import it.

Errors: a user error (tdet.client.errors.UserError, a missing file, an unreachable server, a failed
request) is one line on stderr and exit status 2; anything else is a bug in tdet and shows its traceback
(exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Any

from .errors import InferenceError, UserError

# area modules, in pipeline order: training -> export -> repository/serving -> client
AREAS = (
    "tdet.training.cli",  # info, export
    "tdet.ensembles.cli",  # repo build, serve, stop
    "tdet.client.commands",  # infer, data synth, eval, loadtest, compare
)


USER_ERRORS = (UserError, InferenceError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, ConnectionError, TimeoutError)


def make_reference(variant: str, weights: str | None) -> Any:
    """`tdet eval --reference VARIANT`: the in-process PyTorch run (tdet.training.reference.TorchReference)."""
    try:
        module = importlib.import_module("tdet.training.reference")
    except ImportError as err:
        raise UserError(f"--reference runs the model in-process and needs the train extra (torch): {err}") from None
    return module.TorchReference(variant, weights)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdet",
        description="DAMO-YOLO and RT-DETRv2 from checkpoint to Triton: info, export, repository, serving, "
                    "inference, evaluation and load testing.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in AREAS:
        try:
            module = importlib.import_module(area)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith(area):  # area not built yet
                continue
            raise
        module.register(sub)
    parser.set_defaults(make_reference=make_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except USER_ERRORS as err:
        print(f"tdet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug: the traceback is what a report needs
        traceback.print_exc()
        print(f"tdet {args.command}: internal error ({type(err).__name__}); the traceback above is a bug in tdet, "
              "please report it", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
