"""Load-test plots (matplotlib, Agg) and the report page (one self-contained HTML file: tables and plots)."""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


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


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = lambda tag, row: "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row)  # noqa: E731
    return (f"<table><tr>{cells('th', head)}</tr>" + "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
            + "</table>")


def _img(path: Path) -> str:
    """The plot inlined (base64), so the page is one self-contained file."""
    data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
    return f'<p><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"></p>' if data else ""


def triton_section(triton: dict[str, dict[str, float]], what: str = "the run") -> str:
    """The per-step table of Triton's own times (loadtest.metrics.per_model), with its heading."""
    return (f"<h3>Triton, per step (Prometheus counters over {what}; ms per request)</h3>" + _table(
        ["step", "requests", "executions", "avg batch", "queue", "compute input", "compute infer",
         "compute output", "request total"],
        [[step, f"{t['requests']:.0f}", f"{t['executions']:.0f}", f"{t['avg_batch_size']:.2f}",
          f"{t['queue_ms']:.1f}", f"{t['compute_input_ms']:.1f}", f"{t['compute_infer_ms']:.1f}",
          f"{t['compute_output_ms']:.1f}", f"{t['request_ms']:.1f}"] for step, t in triton.items()]))


def _run_section(s: Any) -> str:
    lat = s.latency_ms
    share = f"{100 * s.failures / s.requests:.1f}%" if s.requests else "-"
    parts = [_table(["requests", "failures", "failed", "images/s", "users", "protocol", "duration (s)"],
                    [[s.requests, s.failures, share, f"{s.images_per_s:.2f}", s.users, s.protocol,
                      f"{s.duration_s:g}"]])]
    parts.append("<h3>Latency (ms), answered requests</h3>" + _table(
        ["p50", "p90", "p95", "p99", "max", "mean"],
        [[f"{lat[k]:.1f}" for k in ("p50", "p90", "p95", "p99", "max", "mean")]]))
    if s.errors:
        parts.append("<h3>Failures</h3>" + _table(["requests", "error"], [[n, e] for e, n in s.errors.items()]))
    if s.triton:
        parts.append(triton_section(s.triton))
    if s.aborted:
        parts.append(f'<p class="bad">Stopped early: {html.escape(s.aborted)}</p>')
    return "\n".join(parts)


STYLE = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;"
         "text-align:right}th{background:#f2f2f2}td:last-child{text-align:left}.bad{color:#b00}"
         "img{max-width:100%}")
COUNTS = ("<p><small>requests: every request sent during the run that was answered or failed, counted once: the "
          "rows of latencies.csv, summary.json's <code>requests</code> and Locust's locust_stats.csv agree. "
          "images/s: answered requests / (last answer - first request). Latencies are measured by the client "
          "around each call, unrounded.</small></p>")


def write_html(runs: list[Any], out: Path, plots: list[Path]) -> None:
    """A readable report: tables of throughput, latency percentiles, failures and the per-step Triton
    breakdown for each run (a sweep: one row per concurrency first), then the plots, inlined."""
    first = runs[0]
    title = f"{first.model} load test ({first.protocol})"
    body = [f"<h1>{html.escape(title)}</h1>", COUNTS]
    if len(runs) > 1:
        body.append("<h2>Sweep</h2>" + _table(
            ["users", "requests", "failures", "images/s", "p50 ms", "p95 ms", "p99 ms"],
            [[r.users, r.requests, r.failures, f"{r.images_per_s:.2f}", f"{r.latency_ms['p50']:.1f}",
              f"{r.latency_ms['p95']:.1f}", f"{r.latency_ms['p99']:.1f}"] for r in runs]))
    for r in runs:
        body.append(f"<h2>{r.users} users</h2>" + _run_section(r))
    body += [_img(p) for p in plots]
    out.write_text(f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
                   f"<style>{STYLE}</style>\n" + "\n".join(body) + "\n")
