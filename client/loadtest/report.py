"""Load-test plots (matplotlib, Agg) and a small self-contained HTML page."""

from __future__ import annotations

import csv
import html
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(latency_csv: Path, summary: Any, out: Path) -> None:
    with open(latency_csv) as f:
        rows = [r for r in csv.DictReader(f) if r["ok"] == "1"]
    lat = [float(r["latency_ms"]) for r in rows]
    t = [float(r["start_unix_s"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.hist(lat, bins=40, color="#3b7dd8")
    for q in ("p50", "p95", "p99"):
        a.axvline(summary.latency_ms[q], ls="--", lw=1, color="k")
        a.text(summary.latency_ms[q], a.get_ylim()[1] * 0.9, q, rotation=90, va="top")
    a.set(xlabel="latency (ms)", ylabel="requests", title=f"{summary.model} latency ({summary.protocol})")
    if t:
        t0 = min(t)
        b.scatter([x - t0 for x in t], lat, s=4)
    b.set(xlabel="time (s)", ylabel="latency (ms)",
          title=f"{summary.users} users: {summary.images_per_s:.2f} img/s, {summary.failures} failures")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_sweep(runs: list[Any], out: Path) -> None:
    c = [r.users for r in runs]
    fig, a = plt.subplots(figsize=(6, 4))
    a.plot(c, [r.images_per_s for r in runs], "o-", color="#3b7dd8")
    a.set(xlabel="concurrency (users)", ylabel="images / s", title=f"{runs[0].model} ({runs[0].protocol})")
    a.set_xscale("log", base=2)
    a.set_xticks(c, [str(v) for v in c])  # 1 2 4 8, not 2^0 2^1 ...
    a.set_ylim(bottom=0)  # from zero: a 5% wobble must not look like a cliff
    b = a.twinx()
    b.plot(c, [r.latency_ms["p95"] for r in runs], "s--", color="#d8553b")
    b.set_ylabel("p95 latency (ms)", color="#d8553b")
    b.set_ylim(bottom=0)
    a.set_ylabel("images / s", color="#3b7dd8")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_html(summary: Any, out: Path, images: list[str]) -> None:
    imgs = "".join(f'<p><img src="{html.escape(i)}"></p>' for i in images)
    body = html.escape(json.dumps(asdict(summary), indent=1))
    out.write_text(f"<!doctype html><meta charset=utf-8><title>tdet loadtest {html.escape(summary.model)}</title>"
                   f"<h1>{html.escape(summary.model)} load test</h1>{imgs}<pre>{body}</pre>\n")
