"""What `tdet capacity --search` shows and writes: the table of trials (config -> capacity, p99 at the
capacity) on stdout, search.json (everything) and search.html (the page style of the capacity report),
rewritten after every trial so an interrupted search leaves what it measured."""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path

from ..files import atomic_write
from ..loadtest.report import STYLE, _table

HEAD = ["#", "config", "cameras", "p99 at capacity (ms)", "instances", "seconds", "outcome"]


def _rows(result) -> list[list]:
    rows = []
    for t in result.trials:
        cameras = "-" if not t.capacity else f"{'>=' if t.at_least else ''}{t.capacity}"
        p99 = "-" if t.p99_ms is None else f"{t.p99_ms:.1f}"
        mark = " *" if t.index == result.best else ""
        rows.append([f"{t.index}{mark}", t.label, cameras, p99, t.instances, f"{t.seconds:.0f}", t.error or t.verdict])
    return rows


def summary(result) -> str:
    """One line: the best config and what happened to the repository."""
    if result.best is None:
        line = "no config held any cameras: nothing to apply"
    else:
        best, base = result.trials[result.best], result.trials[0]
        line = (f"best: trial {best.index} ({best.label}): {best.capacity} cameras at {result.fps:g} fps"
                f" (as in the repository: {base.capacity or 0})")
    if result.applied:
        line += f"; applied to {result.repository} and reloaded"
    elif result.restored:
        line += f"; {result.restored}"
    else:
        line += f"; the repository is as it was{'; patch: ' + ', '.join(result.patch) if result.patch else ''}"
    if result.stopped:
        line += f" [stopped: {result.stopped}]"
    return line


def print_table(result) -> None:
    widths = [max(len(str(r[i])) for r in [HEAD, *_rows(result)]) for i in range(len(HEAD) - 1)]
    for row in [HEAD, *_rows(result)]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + str(row[-1]))
    print(summary(result))


def write_search(result, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = {**asdict(result), "summary": summary(result)}
    for t, d in zip(result.trials, data["trials"]):
        d["instances"] = t.instances
    atomic_write(out / "search.json", json.dumps(data, indent=1))
    title = f"{result.model}: config search at {result.fps:g} fps per camera"
    body = [f"<h1>{html.escape(title)}</h1>", f"<p><b>{html.escape(summary(result))}</b></p>",
            "<p><small>One knob at a time from the best config so far; each trial's capacity is the most cameras "
            f"with misses within the limit and p99 within the {result.deadline_ms:g} ms deadline; its full "
            "report is in trials/NN/report.html. *: the best.</small></p>", _table(HEAD, _rows(result))]
    atomic_write(out / "search.html", f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
                                      f"<style>{STYLE}</style>\n" + "\n".join(body) + "\n")
