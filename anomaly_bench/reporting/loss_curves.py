"""The loss-curve figure of a run (``losses_<dataset>.png``, issue 20): per dataset one panel per method with a
main loss (``job.json["health"]["main_loss"]``, the rows of its stage), that loss against the iteration with the
seeds overlaid, and the critic gap (D(real) − D(fake), or f-AnoGAN's ``wdist``) on a second axis where the method
logs one. Panel titles carry the under-trained mark (:data:`anomaly_bench.reporting.health.HEALTH_MARK`)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import seaborn as sns

from anomaly_bench.evaluation.health import critic_gap_series, loss_rows
from anomaly_bench.harness.run_folder import RunFolder
from anomaly_bench.reporting.figures import _new_figure, _save, _style, safe_name
from anomaly_bench.reporting.health import HEALTH_MARK


def _curve(losses: pd.DataFrame, column: str | None, rows: dict | None) -> pd.Series | None:
    df = loss_rows(losses, rows)
    if column == "critic_gap":
        values = critic_gap_series(df)
        if values is None:
            return None
    elif column in df.columns:
        values = df[column].astype(float)
    else:
        return None
    out = pd.Series(values.to_numpy(), index=df["iteration"].to_numpy()).sort_index()
    return out if len(out) else None


def write_loss_figures(run_dir: str | Path) -> dict[str, Path]:
    """``losses_<dataset>.png``: one panel per method with a main loss, that loss against the iteration (seeds
    overlaid) and, on a second axis, the critic gap where the method logs one; returns {file name: path}."""
    folder = RunFolder(run_dir)
    per_ds: dict[str, dict[str, list]] = {}
    for jf, meta in folder.jobs():
        h = meta.get("health")
        if meta.get("status") != "done" or not isinstance(h, dict) or not h.get("main_loss"):
            continue
        try:
            losses = jf.read_losses()
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if losses is None or "iteration" not in losses.columns:
            continue
        main = _curve(losses, h["main_loss"], h.get("loss_rows"))
        gap = _curve(losses, "critic_gap", h.get("critic_rows"))
        if main is not None:
            per_ds.setdefault(str(meta["dataset"]), {}).setdefault(str(meta["method"]), []).append(
                (meta.get("seed"), h["main_loss"], main, gap, bool(h.get("under_trained"))))
    written = {}
    for ds, methods in per_ds.items():
        n = len(methods)
        cols = min(n, 3)
        nrows = math.ceil(n / cols)
        with _style():
            fig = _new_figure(4.2 * cols, 3.0 * nrows)
            colors = sns.color_palette("colorblind", 10)
            for i, (method, curves) in enumerate(methods.items()):
                ax = fig.add_subplot(nrows, cols, i + 1)
                ax2 = None
                for k, (seed, _name, main, gap, _under) in enumerate(curves):
                    ax.plot(main.index, main.to_numpy(), color=colors[k % 10], lw=1.2, marker=".", ms=3,
                            label=f"seed {seed}")
                    if gap is not None:
                        ax2 = ax2 or ax.twinx()
                        ax2.plot(gap.index, gap.to_numpy(), color=colors[k % 10], lw=0.8, ls=":", marker="x", ms=3)
                flagged_seeds = sum(c[4] for c in curves)
                mark = f" {HEALTH_MARK} {flagged_seeds}/{len(curves)}" if flagged_seeds else ""
                ax.set_title(f"{method}{mark}", fontsize=9)
                ax.set_xlabel("iteration", fontsize=8)
                ax.set_ylabel(curves[0][1], fontsize=8)
                ax.tick_params(labelsize=7)
                if ax2 is not None:
                    ax2.set_ylabel("critic gap (dotted)", fontsize=8)
                    ax2.tick_params(labelsize=7)
                    ax2.grid(False)
                ax.legend(fontsize=7)
            fig.suptitle(f"Training losses: {ds}\n(main loss; critic gap dotted; {HEALTH_MARK}: under-trained seeds)",
                         fontsize=9)
            p = _save(fig, folder.file(f"losses_{safe_name(ds)}.png"))
        written[p.name] = p
    return written
