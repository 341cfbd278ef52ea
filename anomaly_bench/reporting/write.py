"""Writing a run's reports: :func:`write_reports` (metrics.csv, table.{md,tex}, table_paper.{md,tex,csv},
table_full.csv, figures, report.html from metrics and scores) and :func:`build_reports` (the same from a run folder's
saved per-job scores: what the runner calls after every run and ``anomaly-bench report`` rebuilds).

The main table shows one checkpoint rule, the experiment's ``selection`` (``last`` by default, or ``aucp``), fixed
before the run; rows under the other rule go to ``table_other_selection.md``, an analysis table with its own bold
and Holm family, so no reader picks the better rule per method after the fact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_bench.core.errors import BenchError
from anomaly_bench.evaluation.metrics import compute_metrics
from anomaly_bench.harness.run_folder import RunFolder
from anomaly_bench.reporting.checkpoint_curves import write_checkpoint_figures
from anomaly_bench.reporting.figures import write_figures
from anomaly_bench.reporting.health import health_markdown
from anomaly_bench.reporting.html import write_html_report
from anomaly_bench.reporting.inputs import (
    normalise_metrics,
    normalise_scores,
    read_jobs,
    rule_from_experiment,
    split_by_selection,
)
from anomaly_bench.reporting.loss_curves import write_loss_figures
from anomaly_bench.reporting.markdown import paper_latex, paper_markdown, to_latex, to_markdown
from anomaly_bench.reporting.notes import data_notes, data_notes_markdown
from anomaly_bench.reporting.tables import DEFAULT_REFERENCE, build_tables

SCORE_COLUMNS = ["dataset", "setting", "method", "selection", "seed", "id", "subject", "cluster", "label", "score",
                 "threshold", "subject_threshold"]
OTHER_SELECTION_TABLE = "table_other_selection.md"


def write_reports(run_dir: str | Path, metrics_df: pd.DataFrame | None = None, scores_df: pd.DataFrame | None = None,
                  *, reference_method: str | None = DEFAULT_REFERENCE, reference_selection: str = "last",
                  n_boot: int = 1000, alpha: float = 0.05, boot_seed: int = 0,
                  threshold_rule: str | float | None = None, selection: str | None = None, plots: bool = True,
                  html: bool = True, n_gallery: int = 6) -> dict[str, Path]:
    """Write metrics.csv, table.{md,tex} (table.md with its Training health section), table_paper.{md,tex,csv},
    table_full.csv, figures (with the loss curves) and report.html.

    ``metrics_df`` defaults to ``compute_metrics(scores_df, threshold_rule)``; ``scores_df`` to
    ``run_dir/scores.csv``; ``threshold_rule`` (only used for that and the table note) to the run's
    ``experiment.yaml`` value, else ``"youden"``; pass it when the metrics were computed with another rule.
    ``selection`` (the main table's checkpoint rule) defaults to the run's ``experiment.yaml`` value, else ``last``.
    Without scores there are no CI/p columns and no curves. Failed jobs (NaN scores or a failed ``job.json``)
    show as ``failed``. ``reference_method`` (default ``medai_anomalypro``, when present) is the reference of
    the p column (a paired bootstrap over every common seed). Returns {name: path} of the files written.
    """
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if scores_df is None and folder.scores_path.is_file():
        scores_df = folder.read_scores()
    if threshold_rule is None:
        threshold_rule = rule_from_experiment(run_dir)
    if metrics_df is None:
        if scores_df is None:
            raise ValueError(f"{run_dir}: give metrics_df or scores_df (no scores.csv there)")
        threshold_rule = threshold_rule if threshold_rule is not None else "youden"
        metrics_df = compute_metrics(scores_df, threshold_rule)
    jobs = read_jobs(run_dir)
    selection = selection or rule_from_experiment(run_dir, "selection") or reference_selection
    main_m, main_s, other_m, other_s = split_by_selection(normalise_metrics(metrics_df), scores_df, selection)
    kw = dict(jobs=jobs, reference_method=reference_method, n_boot=n_boot, alpha=alpha, boot_seed=boot_seed,
              threshold_rule=threshold_rule, profile=rule_from_experiment(run_dir, "profile"))
    tables = build_tables(main_m, main_s, reference_selection=selection, selection_rule=selection, **kw)
    written: dict[str, Path] = {}

    def put(name: str, text: str) -> None:
        written[name] = folder.write_text(name, text)

    folder.write_metrics(normalise_metrics(metrics_df))
    written[folder.metrics_path.name] = folder.metrics_path
    title = f"Results: {run_dir.name}"
    notes = data_notes_markdown(data_notes(run_dir))
    health = health_markdown(jobs)
    put("table.md", to_markdown(tables, title).rstrip("\n") + ("\n\n" + health.rstrip("\n") if health else "")
        + ("\n\n" + notes if notes else "\n"))
    other_path = folder.file(OTHER_SELECTION_TABLE)
    if len(other_m):
        in_other = set(other_m["method"])
        other = build_tables(other_m, other_s, reference_selection="aucp" if selection == "last" else "last",
                             selection_rule=None,
                             **{**kw, "jobs": [j for j in jobs if j.get("method") in in_other]})
        put(OTHER_SELECTION_TABLE, to_markdown(other, f"Analysis only: {run_dir.name}, the other checkpoint rule")
            .rstrip("\n") + "\n\n" + other_selection_warning(selection) + "\n")
    elif other_path.is_file():
        other_path.unlink()
    put("table.tex", to_latex(tables))
    put("table_paper.md", paper_markdown(tables))
    put("table_paper.tex", paper_latex(tables))
    written["table_paper.csv"] = folder.write_csv("table_paper.csv", tables.paper)
    written["table_full.csv"] = folder.write_csv("table_full.csv", tables.full)
    if plots:
        written.update(write_figures(run_dir, tables, normalise_scores(scores_df), n_gallery=n_gallery))
        written.update(write_loss_figures(run_dir))
        written.update(write_checkpoint_figures(run_dir))
    if html:
        written["report.html"] = write_html_report(run_dir, tables=tables)
    return written


def other_selection_warning(selection: str) -> str:
    return (f"This table is for analysis only. The experiment fixed `selection: {selection}` before the run; "
            "`table.md` shows that rule and only that rule. These rows use the other checkpoint rule and must not "
            "be used to pick, per method, whichever rule scored higher on the test set.")


def collect_scores(out: str | Path) -> pd.DataFrame:
    """All jobs' per-image scores, plus NaN rows for failed jobs (so tables show the failure)."""
    frames = []
    for jf, meta in RunFolder(out).jobs(strict=True):
        if meta.get("status") == "done":
            frames += jf.read_scores()
        else:
            frames.append(pd.DataFrame([{"dataset": meta["dataset"], "setting": "inductive", "method": meta["method"],
                                         "selection": "last", "seed": meta["seed"], "id": "", "subject": "",
                                         "label": -1, "score": np.nan}]))
    if not frames:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def build_reports(out: str | Path, threshold_rule: str | None = None, html: bool = True,
                  selection: str | None = None) -> None:
    """(Re)build scores.csv, metrics.csv, tables and figures from the saved per-job scores. ``threshold_rule``
    and ``selection`` default to the run's ``experiment.yaml`` (else ``youden`` and ``last``)."""
    out = Path(out)
    threshold_rule = threshold_rule or rule_from_experiment(out) or "youden"
    folder = RunFolder(out)
    scores = collect_scores(out)
    if scores.empty:
        raise BenchError(f"{out}: no job results found (expected {out}/jobs/<dataset>/<method>/seed<k>/job.json)")
    folder.write_scores(scores)
    metrics = compute_metrics(scores, threshold_rule=threshold_rule)
    pix = []
    for meta in folder.read_jobs(strict=True):
        for k, v in (meta.get("pixel_metrics") or {}).items():
            pix.append({"dataset": meta["dataset"], "setting": "inductive", "method": meta["method"],
                        "selection": "last", "seed": meta["seed"], "level": "pixel", "metric": k, "value": v})
    if pix:
        metrics = pd.concat([metrics, pd.DataFrame(pix)], ignore_index=True)
    write_reports(out, metrics, scores, threshold_rule=threshold_rule, selection=selection, html=html)
