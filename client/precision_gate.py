"""`tdet eval --model a,b,c`: several served models (the precisions of one checkpoint: damo_yolo_t,
damo_yolo_t_int8, damo_yolo_t_fp16) evaluated through the server one after another, a table of each one's AP
and its drop against the fp32 model (and the in-process reference), and `--max-drop`, the gate CI holds a
release to. The precision of each model is its ensemble's `precision` config parameter (`tdet repo build`
copies it from the ONNX; unset: fp32)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import UserError, repeated
from .evaluation import EvalResult, Reference, evaluate
from .files import atomic_write


@dataclass(frozen=True)
class PrecisionRow:
    """One model of the table; AP values in percent, d*: this model minus the baseline (or the reference)."""

    model: str
    precision: str
    ap: float
    ap50: float
    d_ap: float
    d_ap50: float
    d_ap_ref: float | None = None  # vs the in-process reference (--reference)
    d_ap50_ref: float | None = None


@dataclass(frozen=True)
class GateResult:
    rows: list[PrecisionRow]
    baseline: str  # the model the drops are measured against
    images: int
    failures: list[str]  # one line per model over --max-drop
    path: Path  # precision.json


def parse_models(text: str, flag: str = "--model") -> list[str]:
    """--model a,b,c -> [a, b, c]; a name twice is a usage error (its outputs would overwrite each other)."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise UserError(f"{flag} needs a served model name")
    twice = repeated(models)
    if twice:
        raise UserError(f"{flag} lists {', '.join(twice)} more than once")
    return models


def served_precisions(models: list[str], url: str, protocol: str, client_kw: dict) -> dict[str, str]:
    """model -> the precision its ensemble config records, read before any image is sent."""
    from .fleet import connect_fleet

    out = {}
    for m in models:
        with connect_fleet(url, m, protocol, **client_kw) as fleet:
            out[m] = fleet.first.precision
    return out


def pick_baseline(precisions: dict[str, str], max_drop: float | None) -> str:
    """The first fp32 model, else the first model; with --max-drop an fp32 baseline and a second model are
    required (a gate against a reduced-precision model would hide the drop it is there to catch)."""
    fp32 = [m for m, p in precisions.items() if p == "fp32"]
    if max_drop is not None:
        if max_drop < 0:
            raise UserError(f"--max-drop is the AP points a model may lose (>= 0), got {max_drop:g}")
        if len(precisions) < 2:
            raise UserError("--max-drop compares models: pass the fp32 model and the others, e.g. "
                            "--model damo_yolo_t,damo_yolo_t_int8")
        if not fp32:
            found = ", ".join(f"{m} ({p})" for m, p in precisions.items())
            raise UserError(f"--max-drop needs an fp32 model among --model to measure the drop against; got {found}")
    return fp32[0] if fp32 else next(iter(precisions))


class SharedReference:
    """A Reference run once for every model that serves the same weights with the same thresholds (the
    precisions of one checkpoint): its COCO rows depend only on those, not on the served graph."""

    def __init__(self, inner: Reference):
        self.inner, self.variant = inner, inner.variant
        self._cache: dict[str, list[dict]] = {}

    def check(self, model: str, served: dict[str, str]) -> None:
        self.inner.check(model, served)

    def results(self, paths: dict, served: dict[str, str]) -> list[dict]:
        key = json.dumps(served, sort_keys=True)
        if key not in self._cache:
            self._cache[key] = self.inner.results(paths, served)
        return self._cache[key]


def precision_rows(results: list[EvalResult], precisions: dict[str, str], baseline: str) -> list[PrecisionRow]:
    base = next(r for r in results if r.model == baseline).metrics
    rows = []
    for r in results:
        ap, ap50 = 100 * r.metrics["AP"], 100 * r.metrics["AP50"]
        ref = {k: 100 * v for k, v in (r.delta or {}).items()}  # served - reference, in points
        rows.append(PrecisionRow(r.model, precisions[r.model], ap, ap50, ap - 100 * base["AP"],
                                 ap50 - 100 * base["AP50"], ref.get("AP"), ref.get("AP50")))
    return rows


def gate_failures(rows: list[PrecisionRow], baseline: str, max_drop: float | None) -> list[str]:
    """One line per model whose AP is more than `max_drop` points below the baseline's."""
    if max_drop is None:
        return []
    base = next(r for r in rows if r.model == baseline)
    return [f"{r.model} ({r.precision}) AP {r.ap:.2f} is {-r.d_ap:.2f} AP below {baseline} ({base.precision}) "
            f"{base.ap:.2f}, over --max-drop {max_drop:g}" for r in rows if -r.d_ap > max_drop]


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def format_table(rows: list[PrecisionRow], baseline: str) -> str:
    """Markdown: a row per model, the drops against the baseline and (with --reference) the PyTorch run."""
    ref = any(r.d_ap_ref is not None for r in rows)
    head = ["model", "precision", "AP", "AP50", f"dAP vs {baseline}", "dAP50"] + (
        ["dAP vs PyTorch", "dAP50 vs PyTorch"] if ref else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.model, r.precision, f"{r.ap:.2f}", f"{r.ap50:.2f}", _signed(r.d_ap), _signed(r.d_ap50)] + (
            [_signed(r.d_ap_ref), _signed(r.d_ap50_ref)] if ref else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_precisions(models: list[str], url: str, coco_json: Path, images_dir: Path, *, out: Path,
                        protocol: str = "grpc", reference: Reference | None = None, max_drop: float | None = None,
                        timeout_s: float | None = None, retries: int | None = None, **eval_kw) -> GateResult:
    """Evaluate each model (its outputs in out/<model>/, as a single `tdet eval`), then the table and the
    gate, written to out/precision.json. UserError (before any image is sent) for a gate it cannot hold."""
    client_kw = {k: v for k, v in (("timeout_s", timeout_s), ("retries", retries)) if v is not None}
    precisions = served_precisions(models, url, protocol, client_kw)
    baseline = pick_baseline(precisions, max_drop)
    shared = SharedReference(reference) if reference else None
    results = [evaluate(m, url, coco_json, images_dir, protocol=protocol, out=out / m, reference=shared,
                        **client_kw, **eval_kw) for m in models]
    rows = precision_rows(results, precisions, baseline)
    failures = gate_failures(rows, baseline, max_drop)
    path = out / "precision.json"
    atomic_write(path, json.dumps({"baseline": baseline, "images": results[0].num_images, "max_drop": max_drop,
                                   "passed": not failures, "failures": failures,
                                   "rows": [asdict(r) for r in rows]}, indent=1))
    return GateResult(rows, baseline, results[0].num_images, failures, path)
