"""`tdet repo build`, `tdet serve`, `tdet stop` (torch-free)."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from tdet.client.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    repo = sub.add_parser("repo", help="build the Triton model repository",
                          description="Triton model repository commands.")
    rsub = repo.add_subparsers(dest="repo_command", metavar="SUBCOMMAND", required=True)
    p = rsub.add_parser("build", help="exported ONNX files -> preprocess/engine/postprocess/ensemble models",
                        description="For each ONNX file from `tdet export`, write M_preprocess, M_engine, "
                                    "M_postprocess and the M ensemble (M = variant with underscores).")
    p.add_argument("--onnx", nargs="+", type=Path, required=True, help="ONNX files from `tdet export`")
    p.add_argument("--out", type=Path, default=Path("model_repository"), help="repository folder")
    p.add_argument("--engine", choices=["onnxruntime", "tensorrt"], default="onnxruntime",
                   help="onnxruntime: model.onnx (CPU here, or Triton's ORT backend); tensorrt: model.plan built "
                        "on the GPU host by <M>_engine/build_engine.sh (docker compose run engine-builder)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-detections", type=int, default=100, help="K: detections per image")
    p.add_argument("--score-threshold", type=float, default=0.05, help="DAMO-YOLO candidate score threshold")
    p.add_argument("--iou-threshold", type=float, default=0.7, help="DAMO-YOLO class-aware NMS IoU")
    p.add_argument("--queue-delay-us", type=int, default=1000, help="dynamic batching max queue delay")
    p.add_argument("--preprocess-instances", type=int, default=2)
    p.add_argument("--engine-instances", type=int, default=1)
    p.add_argument("--postprocess-instances", type=int, default=1)
    p.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime intra-op threads per engine instance "
                                                                 "(0: ORT default, all cores)")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="onnxruntime engine instance kind")
    p.set_defaults(func=cmd_repo_build)

    p = sub.add_parser("serve", help="start the local tritonserver (CPU) on a repository",
                       description="Start the tritonserver bundled in nvidia-pytriton on 127.0.0.1, wait until "
                                   "every model is READY, print the endpoints; Ctrl-C stops it.")
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--detach", action="store_true", help="leave it running in the background (stop: tdet stop)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for READY")
    p.add_argument("--verbose", action="store_true", help="verbose server log")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stop", help="stop a server started with `tdet serve --detach`")
    p.set_defaults(func=cmd_stop)


def cmd_repo_build(args: argparse.Namespace) -> int:
    from .builder import BuildOptions, build_repository

    opts = BuildOptions(engine=args.engine, max_batch_size=args.max_batch_size, max_detections=args.max_detections,
                        score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
                        queue_delay_us=args.queue_delay_us, preprocess_instances=args.preprocess_instances,
                        engine_instances=args.engine_instances, postprocess_instances=args.postprocess_instances,
                        ort_threads=args.ort_threads, device=args.device)
    for name in build_repository(args.onnx, args.out, opts):
        print(f"built {name} ({name}_preprocess -> {name}_engine [{args.engine}] -> {name}_postprocess) in {args.out}")
    if args.engine == "tensorrt":
        print("TensorRT: build the plans on the GPU host: docker compose run --rm engine-builder")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import check_repository, read_pidfile, start, stop_process, write_pidfile

    models = check_repository(args.repository)
    running = read_pidfile()
    if args.detach and running is not None:
        try:
            import os
            os.kill(running.pid, 0)
            raise UserError(f"a detached server is already running (pid {running.pid}, http {running.http_url}): "
                             "tdet stop first")
        except ProcessLookupError:
            pass
    proc, info = start(args.repository, http_port=args.http_port, grpc_port=args.grpc_port,
                       metrics_port=args.metrics_port, timeout_s=args.timeout, verbose=args.verbose)
    print(f"tritonserver READY (pid {info.pid}) with {len(models)} models from {args.repository}\n"
          f"  gRPC     {info.grpc_url}\n  HTTP     {info.http_url}\n  metrics  {info.metrics_url}\n  log      {info.log}")
    if args.detach:
        write_pidfile(info)
        print("detached: stop it with `tdet stop`")
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
    from .server import is_tritonserver, pidfile, read_pidfile, stop_process

    info = read_pidfile()
    if info is None:
        raise UserError("no detached server recorded (start one with `tdet serve --detach`)")
    if not is_tritonserver(info.pid):
        pidfile().unlink(missing_ok=True)
        raise UserError(f"the recorded server (pid {info.pid}) is not running any more; record removed")
    stop_process(info.pid)
    pidfile().unlink(missing_ok=True)
    print(f"stopped tritonserver pid {info.pid}")
    return 0
