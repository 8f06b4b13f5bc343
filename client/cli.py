"""`tdet`: one command-line front for the whole pipeline.

Each area owns its subcommands in a torch-free `cli` module with `register(subparsers)`; heavy
imports (torch, onnx, tritonclient) happen inside the command functions, so `tdet --help` is fast
and the client works without the training extras.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# area modules, in pipeline order: training -> export -> repository/serving -> client
AREAS = (
    "tdet.training.cli",  # info, export
    "tdet.ensembles.cli",  # repo build, serve, stop
    "tdet.client.commands",  # infer, data synth, eval, loadtest, compare
)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, ConnectionError) as err:
        print(f"tdet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
