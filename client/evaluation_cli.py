"""`tdet data synth`, `tdet eval`, `tdet loadtest`, `tdet compare` (torch only for `eval --reference`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError
from .server_args import positive
from .triton import DEFAULT_RETRIES, add_connection_args, add_url_args, metrics_url, server_url


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 640x480, got {text!r}") from None
    return w, h


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets the project generates", description="Dataset commands.")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = dsub.add_parser("synth", help="generate a learnable COCO-format detection dataset",
                        description="Write DIR/images/*.jpg and DIR/annotations.json (COCO format): six shape kinds "
                                    "(rectangle, ellipse, triangle, star, cross, ring; category ids 1-6), the class "
                                    "is what is drawn. Train and val splits come from different seeds. --video: "
                                    "DIR/clip-NNN/ clips of the same shapes moving (clip-NNN.mp4, img1/ frames, "
                                    "MOTChallenge gt/gt.txt, seqinfo.ini, COCO annotations.json).")
    p.add_argument("--out", type=Path, required=True, help="dataset folder")
    p.add_argument("--num", type=int, default=16, help="number of images (with --video: of clips)")
    p.add_argument("--seed", type=int, default=0, help="seed (with --split, picks the images)")
    p.add_argument("--split", choices=["train", "val"], default="train", help="which split of the seed")
    p.add_argument("--size", type=_size, help="WxH for every image (default: a mix of sizes)")
    p.add_argument("--workers", type=int, default=1, help="processes drawing images (same images for any count)")
    p.add_argument("--video", action="store_true", help="write video clips with tracking ground truth instead of "
                                                        "images (--size default 640x480)")
    p.add_argument("--frames", type=int, default=50, help="with --video: frames per clip")
    p.add_argument("--fps", type=float, default=10.0, help="with --video: frame rate of the clips")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("eval", help="COCO evaluation through the served model (--mot: tracking metrics)",
                       description="Send every annotated image through the served ensemble, write COCO results "
                                   "and the 12 COCO metrics; --reference also runs them in-process (PyTorch) and "
                                   "prints the per-metric difference. --model a,b,c (the precisions of one "
                                   "checkpoint, e.g. damo_yolo_t,damo_yolo_t_int8,damo_yolo_t_fp16) evaluates each "
                                   "(OUT/MODEL/) and prints one table: AP, AP50 and their drop against the fp32 "
                                   "model (and the --reference run), written to OUT/precision.json; --max-drop "
                                   "makes it a gate (exit 1 past it). --mot GT instead runs a clip through a "
                                   "tracking ensemble (<model>_track) and scores its tracks against the clip's "
                                   "MOTChallenge ground truth (MOTA, IDF1, MOTP, ID switches; py-motmetrics).")
    _server_args(p, model_help="served ensemble, e.g. damo_yolo_t; comma-separated for several (the precisions "
                               "of one checkpoint), compared in one table")
    p.add_argument("--coco", type=Path, help="COCO annotations JSON (required without --mot)")
    p.add_argument("--images", type=Path, help="folder with the annotated images (required without --mot)")
    p.add_argument("--mot", type=Path, metavar="GT", help="tracking evaluation: a MOTChallenge clip folder "
                                                           "(gt/gt.txt, seqinfo.ini, NAME.mp4; `tdet data synth "
                                                           "--video` writes them) or its gt.txt")
    p.add_argument("--video", type=Path, help="with --mot: the clip's video (default: NAME.mp4 in the clip folder)")
    p.add_argument("--mot-iou", type=float, default=0.5, help="with --mot: IoU a track's box needs to match a "
                                                               "ground-truth box")
    p.add_argument("--concurrency", type=positive(), default=8, help="requests in flight")
    p.add_argument("--out", type=Path, help="output folder (default: build/eval/MODEL; several models: build/eval, "
                                            "with OUT/MODEL/ per model and OUT/precision.json)")
    p.add_argument("--conf", type=float, help="score threshold sent with every request (default: the family's "
                                              "official COCO protocol: 0.05 DAMO-YOLO, none (0) RT-DETRv2)")
    p.add_argument("--iou", type=float, help="DAMO-YOLO NMS IoU sent with every request (default: the official 0.7)")
    p.add_argument("--reference", metavar="VARIANT", help="also run VARIANT in-process (PyTorch, needs the train "
                                                          "extra) and report the delta")
    p.add_argument("--weights", help="checkpoint for --reference (default: the weights the served model was "
                                     "exported with)")
    p.add_argument("--max-drop", type=float, metavar="AP", help="with several --model: exit 1 when a model's AP is "
                                                               "more than AP points (e.g. 1.0) below the fp32 "
                                                               "model's")
    p.add_argument("--per-class", action="store_true", help="also print AP per dataset category (and write it to "
                                                            "metrics.json as per_class_ap)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("loadtest", help="Locust load test with throughput/latency report",
                       description="Headless Locust against the served model, bounded by --duration, exact "
                                   "latencies, Triton batch/queue/compute per step, CSV + JSON + PNG/HTML report. "
                                   "Stops early, with what it measured, if the server goes away.")
    _server_args(p, retries=0)  # a load test counts failures; retries would hide them
    p.add_argument("--users", type=int, default=4, help="concurrent users (closed loop: one request in flight each)")
    p.add_argument("--spawn-rate", type=float, default=4, help="users started per second")
    p.add_argument("--duration", type=float, default=30, help="seconds of load per run")
    p.add_argument("--images", type=Path, required=True, help="image file or folder (searched recursively) to "
                                                               "rotate through")
    p.add_argument("--out", type=Path, default=Path("build/loadtest"), help="report folder")
    p.add_argument("--metrics-url", help="Triton's Prometheus metrics (default: $TDET_METRICS_URL, that of the "
                                         "detached server --url names (or the only one), else "
                                         "http://HOST:8002/metrics, HOST from --url; skipped with a "
                                         "warning if nothing answers there; '' to skip)")
    p.add_argument("--sweep", type=_ints, help="concurrency sweep, e.g. 1,2,4,8,16: one run per level, --users "
                                               "and --spawn-rate ignored")
    p.add_argument("--workers", type=int, default=0, help="Locust distributed mode: a master and this many "
                                                          "worker processes here (0: one process)")
    p.add_argument("--remote-workers", action="store_true", help="with --workers: start no local workers, wait "
                                                                 "for them to join on port 5557 (--master-host)")
    p.add_argument("--master-host", help="run only a Locust worker that joins the master on this host")
    p.set_defaults(func=cmd_loadtest)

    p = sub.add_parser("compare", help="the DAMO-YOLO vs RT-DETRv2 table, measured through the server",
                       description="For each served model: mAP, single-stream p50 latency, saturated throughput, "
                                   "params, GFLOPs, engine and precision; writes compare.md, compare.json and "
                                   "compare.png.")
    p.add_argument("--models", required=True, help="comma-separated served models, e.g. damo_yolo_t,rtdetrv2_s")
    add_url_args(p)
    p.add_argument("--coco", type=Path, required=True, help="COCO annotations JSON")
    p.add_argument("--images", type=Path, required=True, help="folder with the annotated images")
    p.add_argument("--out", type=Path, default=Path("build/compare"), help="output folder")
    p.add_argument("--seconds", type=positive(float), default=10, help="saturation run length per model")
    p.add_argument("--concurrency", type=positive(), default=8, help="requests in flight at saturation")
    add_connection_args(p)
    p.set_defaults(func=cmd_compare)


def _server_args(p: argparse.ArgumentParser, *, retries: int = DEFAULT_RETRIES,
                 model_help: str = "served ensemble, e.g. damo_yolo_t") -> None:
    p.add_argument("--model", required=True, help=model_help)
    add_url_args(p)
    add_connection_args(p, retries=retries)


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import synthesize

    if args.video:
        from .synth_video import synthesize_video

        clips = synthesize_video(args.out, args.num, args.seed, args.size, frames=args.frames, fps=args.fps,
                                 split=args.split)
        print(f"wrote {len(clips)} {args.split} clips of {args.frames} frames at {args.fps:g} fps to {args.out} "
              "(each: clip video, img1/ frames, gt/gt.txt, annotations.json)")
        return 0
    path = synthesize(args.out, args.num, args.seed, args.size, split=args.split, workers=args.workers)
    print(f"wrote {args.num} {args.split} images to {args.out / 'images'} and {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import sys

    from .evaluation import evaluate, format_metrics, format_per_class
    from .precision_gate import parse_models

    models = parse_models(args.model)
    if args.mot is not None:
        if len(models) > 1 or args.max_drop is not None:
            raise UserError("--mot evaluates one tracking model: several --model and --max-drop go with COCO "
                            "evaluation")
        return _cmd_eval_mot(args)
    if args.video is not None:
        raise UserError("--video goes with --mot GT")
    if args.coco is None or args.images is None:
        raise UserError("tdet eval needs --coco and --images (or --mot GT for tracking metrics)")
    if args.weights and not args.reference:
        raise UserError("--weights goes with --reference VARIANT")
    # the in-process run lives in training/; the CLI front (tdet.client.cli) hands over its constructor
    if len(models) > 1 or args.max_drop is not None:
        return _cmd_eval_precisions(args, models)
    reference = args.make_reference(args.reference, args.weights) if args.reference else None
    res = evaluate(args.model, server_url(args), args.coco, args.images, protocol=args.protocol,
                   concurrency=args.concurrency, out=args.out, reference=reference, timeout_s=args.timeout,
                   retries=args.retries, conf=args.conf, iou=args.iou, per_class=args.per_class)
    print(format_metrics(res))
    if res.servers:
        print(res.servers)
    if res.per_class is not None:
        print(format_per_class(res))
    if res.class_mismatch:
        print(res.class_mismatch, file=sys.stderr)
    print(f"results: {res.results_path}  metrics: {res.results_path.parent / 'metrics.json'}")
    return 0


def _cmd_eval_precisions(args: argparse.Namespace, models: list[str]) -> int:
    """Exit 0: every model evaluated (and within --max-drop); 1: the gate failed (one line per model over it)."""
    import sys

    from .precision_gate import evaluate_precisions, format_table, pick_baseline

    if args.max_drop is not None and len(models) < 2:
        pick_baseline(dict.fromkeys(models, ""), args.max_drop)  # its usage error, before the server is asked
    reference = args.make_reference(args.reference, args.weights) if args.reference else None
    out = args.out or Path("build/eval")
    res = evaluate_precisions(models, server_url(args), args.coco, args.images, out=out, protocol=args.protocol,
                              reference=reference, max_drop=args.max_drop, concurrency=args.concurrency,
                              timeout_s=args.timeout, retries=args.retries, conf=args.conf, iou=args.iou,
                              per_class=args.per_class)
    print(f"{len(models)} models, {res.images} images, COCO AP in %; d: against {res.baseline}"
          + (" and the in-process reference" if reference else ""))
    print(format_table(res.rows, res.baseline))
    print(f"per model: {', '.join(str(out / m / 'metrics.json') for m in models)}  table: {res.path}")
    for line in res.failures:
        print(f"tdet eval: gate failed: {line}", file=sys.stderr)
    if args.max_drop is not None and not res.failures:
        worst = min(res.rows, key=lambda r: r.d_ap)
        print(f"gate passed: every model within {args.max_drop:g} AP of {res.baseline} (largest drop: "
              f"{worst.model} {worst.d_ap:+.2f})")
    return 1 if res.failures else 0


def _cmd_eval_mot(args: argparse.Namespace) -> int:
    """Exit 0: scored on every frame of the clip; 1: scored, but frames were lost (the run's warning says)."""
    from .mot_cli import evaluate_mot, format_mot

    mixed = [f for f, v in (("--coco", args.coco), ("--images", args.images), ("--reference", args.reference),
                            ("--per-class", args.per_class)) if v]
    if mixed:
        raise UserError(f"--mot is a tracking evaluation: {', '.join(mixed)} go with COCO evaluation")
    url = server_url(args, single="tdet eval --mot")
    res = evaluate_mot(args.model, url, args.mot, args.out or Path("build/eval") / args.model,
                       video=args.video, protocol=args.protocol, timeout_s=args.timeout, retries=args.retries,
                       iou_threshold=args.mot_iou, conf=args.conf, iou=args.iou)
    print(format_mot(res))
    print(f"tracks: {res.jsonl}  metrics: {res.path}")
    return 0 if res.complete else 1


def cmd_loadtest(args: argparse.Namespace) -> int:
    """Exit 0: every request answered; 1: some failed (counted in the report); 2: the run stopped early
    because the server went away (the report holds what was measured until then)."""
    import sys

    from .loadtest.runner import format_summary, run_once, sweep

    if args.master_host:
        from .loadtest.distributed import join_master

        given = [flag for flag, on in (("--workers", args.workers), ("--remote-workers", args.remote_workers),
                                       ("--sweep", args.sweep)) if on]
        if given:  # the master decides them; a worker given them would ignore them
            raise UserError(f"--master-host runs one Locust worker; {', '.join(given)} belong on the master's "
                            "command line")

        return join_master(args.master_host, args.model, server_url(args), args.protocol, args.images, args.out,
                           timeout_s=args.timeout, retries=args.retries)
    kw = dict(protocol=args.protocol, duration_s=args.duration, images=args.images, metrics_url=metrics_url(args),
              timeout_s=args.timeout, retries=args.retries, workers=args.workers, remote_workers=args.remote_workers)
    if args.sweep:
        runs = sweep(args.model, server_url(args), args.sweep, out=args.out, **kw)
        report = f"sweep report: {args.out / 'sweep.csv'}, {args.out / 'sweep.png'}, {args.out / 'report.html'}"
    else:
        runs = [run_once(args.model, server_url(args), users=args.users, spawn_rate=args.spawn_rate, out=args.out,
                         **kw)]
        report = f"report: {args.out / 'summary.json'}, {args.out / 'latencies.csv'}, {args.out / 'report.png'}"
    for r in runs:
        print(format_summary(r))
    print(report)
    if runs[-1].aborted:
        print(f"tdet loadtest: error: stopped early: {runs[-1].aborted}; the report holds what was measured",
              file=sys.stderr)
        return 2
    return 1 if any(r.failures for r in runs) else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, markdown_table
    from .precision_gate import parse_models

    models = parse_models(args.models, "--models")
    url = server_url(args, single="tdet compare")
    rows = compare(models, url, args.coco, args.images, out=args.out,
                   protocol=args.protocol, seconds=args.seconds, concurrency=args.concurrency,
                   timeout_s=args.timeout, retries=args.retries)
    print(markdown_table(rows))
    print(f"written: {args.out / 'compare.md'}, {args.out / 'compare.json'}, {args.out / 'compare.png'}")
    return 0
