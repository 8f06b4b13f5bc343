"""What a run leaves next to its checkpoints: log.csv (one row per epoch: lr, mean loss terms, images/s,
COCO metrics when evaluated), rewritten each epoch, and curves.png (losses, lr and AP against the epoch),
redrawn after an evaluation, at the end, and otherwise at most once a minute (drawing costs ~1 s).
log.csv and summary.json keep COCO metrics as fractions (0..1, as metrics.json of `tdet eval`); printed text and
the plot show them in percent with two decimals, as `tdet eval` prints them."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

EVAL_KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
             "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def percent(fraction: float) -> str:
    """A COCO metric (0..1) as `tdet eval` prints it: percent, two decimals."""
    return f"{100 * fraction:.2f}"


class RunLog:
    def __init__(self, out: Path, *, resume: bool = False) -> None:
        self.csv_path, self.png_path = out / "log.csv", out / "curves.png"
        self.rows: list[dict[str, float]] = []
        self.plotted = 0.0
        if resume and self.csv_path.is_file():  # a resumed run continues the same log (a new one starts its own)
            with open(self.csv_path, newline="") as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]

    def add(self, row: dict[str, float], *, final: bool = False) -> None:
        """Record one epoch (a row of an epoch seen before, after a resume, replaces it)."""
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        self._write_csv()
        if final or "AP" in row or time.monotonic() - self.plotted > 60:
            self._plot()
            self.plotted = time.monotonic()

    def _write_csv(self) -> None:
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        tmp = self.csv_path.with_suffix(".csv.part")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in self.rows)
        tmp.replace(self.csv_path)

    def _plot(self) -> None:
        fig = self.figure()
        tmp = self.png_path.with_suffix(".part.png")
        fig.savefig(tmp, dpi=80)
        import matplotlib.pyplot as plt

        plt.close(fig)
        tmp.replace(self.png_path)

    def figure(self):
        """The curves as a matplotlib Figure (the caller closes it)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        epochs = [r["epoch"] for r in self.rows]
        losses = [k for k in self.rows[-1] if k.startswith("loss") or k == "total"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for k in losses:
            axes[0].plot(epochs, [r.get(k, math.nan) for r in self.rows], label=k)
        axes[0].set(title="training losses (epoch mean)", xlabel="epoch", ylabel="loss")
        axes[0].legend(fontsize=7)
        axes[1].plot(epochs, [r.get("lr", math.nan) for r in self.rows])
        axes[1].set(title="learning rate (end of epoch)", xlabel="epoch", ylabel="lr")
        evaluated = [r for r in self.rows if "AP" in r]
        for k in ("AP", "AP50"):
            axes[2].plot([r["epoch"] for r in evaluated], [100 * r[k] for r in evaluated], marker="o", label=k)
        axes[2].set(title="COCO AP of the EMA model (val)", xlabel="epoch", ylabel="AP (%)", ylim=(0, 100))
        axes[2].legend()
        for ax in axes:  # epochs are whole numbers: no 0.5 ticks on a short run
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        return fig
