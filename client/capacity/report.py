"""What a capacity run writes into --out: capacity.json (everything), levels.csv (one row per level),
capacity.png (latency percentiles and miss rate vs cameras, the deadline and --max-miss lines) and
report.html (the page style of `tdet loadtest`). JSON and CSV are rewritten after every level, so a run
that stops early leaves what it measured."""

from __future__ import annotations

import csv
import html
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ..files import atomic_write
from ..loadtest.report import STYLE, _img, _table, triton_section
from .search import CapacityResult

CSV_FIELDS = ("cameras", "passed", "scheduled", "sent", "on_time", "late", "failed", "dropped", "miss_rate",
              "achieved_fps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "lateness_p90_ms", "lateness_p99_ms",
              "lateness_max_ms", "generator_late", "aborted")


def _row(r) -> list:
    lat, late = r.latency_ms, r.lateness_ms
    return [r.cameras, int(r.passed), r.scheduled, r.sent, r.on_time, r.late, r.failed, r.dropped,
            f"{r.miss_rate:.4f}", f"{r.achieved_fps:.2f}", f"{lat['p50']:.2f}", f"{lat['p90']:.2f}",
            f"{lat['p99']:.2f}", f"{lat['max']:.2f}", f"{late['p90']:.2f}", f"{late['p99']:.2f}", f"{late['max']:.2f}",
            int(r.generator_late), r.aborted]


def write_data(result: CapacityResult, out: Path) -> None:
    """capacity.json and levels.csv (levels sorted by camera count)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "capacity.json", json.dumps(asdict(result), indent=1))
    with open(out / "levels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        w.writerows(_row(r) for r in sorted(result.levels, key=lambda r: r.cameras))


def plot(result: CapacityResult, out: Path) -> None:
    levels = sorted(result.levels, key=lambda r: r.cameras)
    n = [r.cameras for r in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for q, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^-")):
        a.plot(n, [r.latency_ms[q] for r in levels], style, label=q)
    a.axhline(result.deadline_ms, ls="--", color="#d8553b", label=f"deadline {result.deadline_ms:g} ms")
    a.set(xlabel="cameras", ylabel="latency (ms)", title=f"{result.model} at {result.fps:g} fps per camera")
    a.set_ylim(bottom=0)
    b.plot(n, [100 * r.miss_rate for r in levels], "o-", color="#3b7dd8", label="missed frames")
    b.axhline(100 * result.max_miss, ls="--", color="#d8553b", label=f"--max-miss {100 * result.max_miss:g}%")
    b.set(xlabel="cameras", ylabel="missed frames (%)", title=_headline(result))
    b.set_ylim(bottom=0)
    for ax in (a, b):
        if result.capacity:
            ax.axvline(result.capacity, ls=":", color="k")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _headline(result: CapacityResult) -> str:
    if result.capacity is None:
        return "no capacity reported"
    return f"capacity: {'>= ' if result.at_least else ''}{result.capacity} cameras"


EXPLAIN = ("<p><small>Open loop: camera c of N sends frame k at t0 + (k + c/N)/F whatever happened to the frames "
           "before. Missed: answered after the deadline, failed or unanswered, or dropped because the camera "
           "already had --max-in-flight frames unanswered. Latency: send to answer, answered frames. Generator "
           "late: actual minus scheduled send time; a level where its p90 is over a tenth of the deadline, or one "
           "send a whole deadline late, measured the generator, not the server.</small></p>")


def write_html(result: CapacityResult, out: Path, plot_png: Path) -> None:
    title = f"{result.model} capacity at {result.fps:g} fps per camera"
    state = "" if result.complete else '<p class="bad">Incomplete run: the figures are what was measured.</p>'
    body = [f"<h1>{html.escape(title)}</h1>", f"<p><b>{html.escape(result.verdict)}</b></p>", state, EXPLAIN,
            _table(["deadline (ms)", "max miss", "hold (s)", "max in flight", "workers", "frames", "url"],
                   [[f"{result.deadline_ms:g}", f"{100 * result.max_miss:g}%", f"{result.hold_s:g}",
                     result.max_in_flight, result.workers, result.frames, result.url]])]
    if result.hpa:
        body.append("<h2>Autoscaling, per replica</h2>" + _table(list(result.hpa), [list(result.hpa.values())]))
    body.append("<h2>Levels</h2>" + _table(list(CSV_FIELDS), [_row(r) for r in sorted(
        result.levels, key=lambda r: r.cameras)]))
    body.append(_img(plot_png))
    for r in result.levels:
        if r.errors:
            body.append(f"<h3>Errors at {r.cameras} cameras</h3>" + _table(["frames", "error"],
                                                                         [[n, e] for e, n in r.errors.items()]))
        if r.triton:
            body.append(triton_section(r.triton, f"the {r.cameras}-camera level"))
    out.write_text(f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
                   f"<style>{STYLE}</style>\n" + "\n".join(body) + "\n")


def write_report(result: CapacityResult, out: Path) -> None:
    write_data(result, out)
    if result.levels:
        plot(result, out / "capacity.png")
    write_html(result, out / "report.html", out / "capacity.png")
