"""`tdet repo build`, `tdet serve`, `tdet stop` (torch-free)."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from tdet.client.errors import UserError
from tdet.client.optionfields import add_arguments, from_args
from tdet.client.server_args import positive

from .options import BuildOptions


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0..65535 (0: any free one)."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return int(text)


def register(sub: argparse._SubParsersAction) -> None:
    repo = sub.add_parser("repo", help="build the Triton model repository",
                          description="Triton model repository commands.")
    rsub = repo.add_subparsers(dest="repo_command", metavar="SUBCOMMAND", required=True)
    p = rsub.add_parser("build", help="exported ONNX files -> preprocess/engine/postprocess/ensemble models",
                        description="For each ONNX file from `tdet export`, write NAME_preprocess, NAME_engine, "
                                    "NAME_postprocess and the NAME ensemble (NAME: --name, else the variant with "
                                    "underscores, plus _int8 / _fp16 for a `tdet export --precision` file, so "
                                    "the precisions of one checkpoint sit side by side). A model of that name "
                                    "built from other weights is not replaced unless --replace: use --name to "
                                    "serve both side by side (A/B), or --version to add the checkpoint as a new "
                                    "engine version of that name.")
    p.add_argument("--onnx", nargs="+", type=Path, required=True, help="ONNX files from `tdet export`")
    p.add_argument("--out", type=Path, default=Path("model_repository"), help="repository folder")
    p.add_argument("--name", help="model name (one --onnx file only; default: the variant, e.g. damo_yolo_t, "
                                  "damo_yolo_t_int8)")
    p.add_argument("--version", type=int, default=1,
                   help="Triton version of the engine: N/ holds this checkpoint; other versions already there are "
                        "kept (same family, input size, classes and precision required)")
    add_arguments(p, BuildOptions, only=["version_policy"])
    p.add_argument("--replace", action="store_true", help="replace a model of the same name built from other weights")
    p.add_argument("--track", action="store_true", help="also build <model>_track: the ensemble plus a server-side "
                   "ByteTrack per stream (sequence id = stream), which returns TRACK_IDS")
    add_arguments(p, BuildOptions, skip=["version_policy"])
    p.set_defaults(func=cmd_repo_build)

    p = sub.add_parser("serve", help="start the local tritonserver (CPU) on a repository",
                       description="Start the tritonserver bundled in nvidia-pytriton on 127.0.0.1, wait until "
                                   "every model is READY, print the endpoints; Ctrl-C stops it. Several servers "
                                   "may run side by side on other ports.")
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="the model repository")
    p.add_argument("--http-port", type=_port, default=8000, help="HTTP/REST port (0: any free port)")
    p.add_argument("--grpc-port", type=_port, default=8001, help="gRPC port (0: any free port)")
    p.add_argument("--metrics-port", type=_port, default=8002, help="Prometheus metrics port (0: any free port)")
    p.add_argument("--detach", action="store_true", help="leave it running in the background (stop: tdet stop)")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                   help="Triton's: poll loads models built into the repository later (and reloads changed ones)")
    p.add_argument("--timeout", type=positive(float), default=300, help="seconds to wait for READY")
    p.add_argument("--verbose", action="store_true", help="verbose server log")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stop", help="stop servers started with `tdet serve --detach`",
                       description="Stop a detached server: the only one running, or the one named by --http-port "
                                   "or --pid, or --all. Nothing to stop is not an error (exit 0).")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--http-port", type=_port, help="the server on this HTTP port")
    which.add_argument("--pid", type=int, help="the server with this process id")
    which.add_argument("--all", action="store_true", help="every detached server")
    p.set_defaults(func=cmd_stop)


def cmd_repo_build(args: argparse.Namespace) -> int:
    from .builder import build_repository

    opts = from_args(BuildOptions, args)
    for b in build_repository(args.onnx, args.out, opts, name=args.name, version=args.version, replace=args.replace,
                              track=args.track):
        versions = ", ".join(map(str, b.versions))
        print(f"built {b.name} ({b.name}_preprocess -> {b.name}_engine [{args.engine}, version {b.version}; "
              f"versions present: {versions}] -> {b.name}_postprocess) in {args.out}  [weights: {b.weights}]"
              + (f"  (replaced weights {b.replaced})" if b.replaced else ""))
    if args.engine == "tensorrt":
        print("TensorRT: build the plans on the GPU host: docker compose run --rm engine-builder")
    if opts.preprocess == "dali":
        print("DALI: the preprocess runs on Triton's DALI backend (the NGC tritonserver image, a GPU); the local "
              "`tdet serve` (nvidia-pytriton) has no DALI backend and cannot serve this repository")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import check_repository, start, stop_process, write_record

    models = check_repository(args.repository)
    proc, info = start(args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
                       metrics_port=args.metrics_port, timeout_s=args.timeout, verbose=args.verbose,
                       model_control_mode=args.model_control_mode)
    print(f"tritonserver READY (pid {info.pid}) with {len(models)} models from {args.repository}\n"
          f"  gRPC     {info.grpc_url}\n  HTTP     {info.http_url}\n  metrics  {info.metrics_url}\n"
          f"  log      {info.log}")
    if args.detach:
        write_record(info)
        print(f"detached: stop it with `tdet stop --http-port {info.http_port}` "
              "(or `tdet stop` when it is the only one)")
        return 0

    def _terminate(signum, frame):  # `kill <tdet serve pid>` must stop the server too, like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        while proc.poll() is None:
            time.sleep(0.5)
        print(f"tritonserver exited with status {proc.returncode}; see {info.log}")
        return 1
    except KeyboardInterrupt:
        print("stopping tritonserver ...")
        stop_process(proc.pid)
        print("stopped")
        return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Exit 0 when the named servers are stopped or were not running; 2 when it is ambiguous which one."""
    from .server import running_servers, stop_process

    running = running_servers()
    if args.http_port is not None:
        chosen = [r for r in running if r[1].http_port == args.http_port]
        nothing = f"no detached server is running on http port {args.http_port}"
    elif args.pid is not None:
        chosen = [r for r in running if r[1].pid == args.pid]
        nothing = f"no detached server with pid {args.pid} is running"
    else:
        chosen, nothing = running, "no detached server is running"
        if len(running) > 1 and not args.all:
            listed = "; ".join(f"http port {i.http_port} (pid {i.pid}, {i.repository})" for _, i in running)
            raise UserError(f"{len(running)} detached servers are running: {listed}. "
                            "Pass --http-port PORT, --pid PID or --all")
    if not chosen:
        print(f"{nothing}: nothing to stop")
        return 0
    for path, info in chosen:
        stop_process(info.pid)
        path.unlink(missing_ok=True)
        print(f"stopped tritonserver pid {info.pid} (http port {info.http_port})")
    return 0
