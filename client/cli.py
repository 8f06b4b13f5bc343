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

from .errors import InferenceError, UserError, train_extra_missing


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default ("(default: 8001)"), unless the default is None, False or
    suppressed, or the help already says it; descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or "%(default)" in text or "(default" in text):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with tdet's help formatter, handed down to every subcommand's parser."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version("tdet")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def command_name(args: argparse.Namespace) -> str:
    """"data synth", "repo build", "infer": the subcommand path the user typed, for error lines."""
    parts = [args.command] + [v for k, v in sorted(vars(args).items()) if k.endswith("_command") and v]
    return " ".join(parts)


USER_ERRORS = (UserError, InferenceError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, ConnectionError, TimeoutError)


def make_reference(variant: str, weights: str | None) -> Any:
    """`tdet eval --reference VARIANT`: the in-process PyTorch run (tdet.training.reference.TorchReference)."""
    try:
        module = importlib.import_module("tdet.training.reference")
    except ImportError as err:
        raise train_extra_missing("--reference (the model run in-process)", err.name or "torch") from None
    return module.TorchReference(variant, weights)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tdet",
        description="DAMO-YOLO and RT-DETRv2 from checkpoint to Triton: info, export, repository, serving, "
                    "inference, evaluation and load testing. `tdet COMMAND --help` shows each command's "
                    "options with their defaults.",
    )
    parser.add_argument("--version", action="version", version=f"tdet {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # The areas, imported explicitly so that a packaging bug fails here instead of a command vanishing; their
    # cli modules are torch-free (heavy imports happen inside the command functions). Pipeline order.
    from ..ensembles import cli as ensembles_cli  # repo build, serve, stop
    from ..training import cli as training_cli  # info, export, train
    from . import commands as client_commands  # infer, data synth, eval, loadtest, compare, capacity

    for area in (training_cli, ensembles_cli, client_commands):
        area.register(sub)
    parser.set_defaults(make_reference=make_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = command_name(args)
    try:
        result = args.func(args)
    except USER_ERRORS as err:
        print(f"tdet {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdet {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: the traceback is what a report needs
        traceback.print_exc()
        print(f"tdet {name}: internal error ({type(err).__name__}); the traceback above is a bug in tdet, "
              "please report it", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
