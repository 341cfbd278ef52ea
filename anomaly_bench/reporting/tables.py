"""The table model of a run: :func:`build_tables` turns metrics (and per-image scores, for CIs and p-values) into
:class:`Tables` (blocks of :class:`Cell` per dataset/setting/level, notes, the seed paper's layout, the full summary).
Rendering is elsewhere: :mod:`anomaly_bench.reporting.markdown` (Markdown, LaTeX) and
:mod:`anomaly_bench.reporting.html`.

Conventions (stated again in the notes under every table):

* a cell is the mean ± sample standard deviation (ddof = 1) over the seeds that finished, 3 decimals; one seed:
  the value alone; a job with no finite scores shows ``failed``; when only some seeds failed the cell carries
  a dagger (†) and the mean is over the finished seeds;
* the best mean of each metric column (higher is better; ties at 3 decimals all bold) is bold when at least two
  rows have numbers;
* ``AUC range``: min–max of the AUC over the seeds that finished;
* ``AUC 95% CI``: CI of the seed-averaged AUC (the number in the AUC column) by a hierarchical percentile
  bootstrap: seeds with replacement, then each drawn seed's own test images (whole subjects where a subject has
  several images), stratified by class (:func:`anomaly_bench.evaluation.stats.bootstrap_mean_auc_ci`). It covers
  seed-to-seed variation and test-set sampling; a block where no row has two seeds says ``(images only)``.
  Scores are never pooled across seeds, since different seeds' scores live on different scales;
* ``p vs <reference>``: paired hierarchical bootstrap of the seed-mean AUC difference over every seed both rows
  finished (:func:`anomaly_bench.evaluation.stats.paired_mean_auc_test`: the same seed draw and, within a seed,
  the same resampled images for both rows), two-sided, Holm-corrected over every p of the main table (all
  blocks together). DeLong's test is no longer in the table (it compared one seed only).

Training health (:mod:`anomaly_bench.reporting.health`): the AUC cells of a method flagged under-trained in any
seed of a dataset carry ⚑ (main table and paper layout), explained in a note with the count of seeds; runs of the
``ci``/``smoke`` profiles get a note that their numbers are a regression/smoke signal.

The seed paper's Table 1 layout (method, dataset, AUC, precision/specificity, F1) is ``Tables.paper``
(``table_paper.*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from anomaly_bench.evaluation.stats import bootstrap_mean_auc_ci, holm, paired_mean_auc_test
from anomaly_bench.reporting.health import flagged, health_notes, mark_blocks, mark_paper
from anomaly_bench.reporting.inputs import level_arrays, normalise_metrics, normalise_scores, ordered_unique, scores_of
from anomaly_bench.reporting.summary import (  # noqa: F401  (re-exported: the renderers import them from here)
    DAGGER,
    FAILED,
    MISSING,
    NOT_SCORES,
    _fmt,
    add_failed_jobs,
    format_cell,
    row_label,
    summarise,
)
from anomaly_bench.reporting.table_notes import NOT_ON_A, table_notes

DEFAULT_REFERENCE = "medai_anomalypro"

#: (metric, header) of the main table per level; ``ci`` and ``p`` are computed columns.
TABLE_COLUMNS = {
    "image": [("auc", "AUC"), ("range", "AUC range"), ("ci", "AUC 95% CI"), ("precision", "Precision"),
              ("recall", "Recall"),
              ("specificity", "Specificity"), ("f1", "F1"), ("p", "p")],
    "pixel": [("pixel_auroc", "Pixel AUROC"), ("best_dice", "Best Dice")],
}
TABLE_COLUMNS["subject"] = TABLE_COLUMNS["image"]
LEVEL_ORDER = {"image": 0, "subject": 1, "pixel": 2}
#: Columns computed here from per-image scores (never bold).
COMPUTED = ("range", "ci", "p")
#: Metrics at a threshold: NaN without one (no held-out healthy images for the label-free threshold).
THRESHOLD_METRICS = ("precision", "recall", "specificity", "f1")


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# ============================================================================================ tables
@dataclass
class Cell:
    text: str
    value: float = math.nan  # what "best" compares (the mean); NaN = not compared
    bold: bool = False


@dataclass
class Block:
    """One dataset (and setting, and level) group of columns in the main table."""

    dataset: str
    setting: str
    level: str
    title: str
    columns: list[tuple[str, str]]  # (key, header)
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # row label -> column key -> cell
    p_raw: dict[str, float] = field(default_factory=dict)  # row label -> unadjusted p vs the reference
    no_threshold: bool = False  # a finished job has no thresholded metric (no held-out healthy images): n/a cells


@dataclass
class Tables:
    blocks: list[Block]
    rows: list[str]  # row labels in order
    notes: list[str]
    paper: pd.DataFrame  # the seed paper's Table 1 layout
    full: pd.DataFrame  # summarise()
    reference: str | None = None
    row_keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # row label -> (method, selection)


def _block_title(dataset: str, setting: str, level: str, show_setting: bool) -> str:
    parts = [setting] if show_setting else []
    if level != "image":
        parts.append(f"{level} level")
    return f"{dataset} ({', '.join(parts)})" if parts else dataset


def primary_setting(settings: list[str]) -> str:
    return "inductive" if "inductive" in settings else settings[0]


def build_tables(metrics_df: pd.DataFrame, scores_df: pd.DataFrame | None = None, *, jobs: list[dict] | None = None,
                 reference_method: str | None = DEFAULT_REFERENCE, reference_selection: str = "last",
                 n_boot: int = 1000, alpha: float = 0.05, boot_seed: int = 0,
                 threshold_rule: str | float | None = None, selection_rule: str | None = None,
                 profile: str | None = None) -> Tables:
    """All table content of a run (no files written); see the module docstring for the conventions.
    ``selection_rule``: the checkpoint rule these rows were restricted to (stated in the notes), or None.
    ``profile``: the run's profile (with the jobs' own profiles: the reduced-budget note)."""
    metrics = normalise_metrics(metrics_df)
    if jobs:
        metrics = add_failed_jobs(metrics, jobs)
    scores = normalise_scores(scores_df)
    full = summarise(metrics)
    failed_methods = {(str(j.get("dataset")), str(j.get("method"))) for j in (jobs or []) if j.get("status") != "done"}
    not_on_a = {(str(j.get("dataset")), str(j.get("method"))) for j in (jobs or []) if j.get("train_sets") == "healthy"}

    methods = ordered_unique(metrics["method"])
    sel_order = {s: i for i, s in enumerate(["last", "aucp"])}
    pairs = metrics[["method", "selection"]].drop_duplicates()
    pairs = sorted(pairs.itertuples(index=False), key=lambda r: (methods.index(r[0]), sel_order.get(r[1], 9), r[1]))
    row_keys = {row_label(m, s): (m, s) for m, s in pairs}
    rows = list(row_keys)

    have_ref = reference_method is not None and scores is not None and (scores["method"] == reference_method).any()
    ref_sel = None
    if have_ref:
        sels = ordered_unique(scores.loc[scores["method"] == reference_method, "selection"])
        ref_sel = reference_selection if reference_selection in sels else sels[0]
    ref_label = row_label(reference_method, ref_sel) if have_ref else None

    blocks: list[Block] = []
    datasets = ordered_unique(metrics["dataset"])
    for ds in datasets:
        mds = metrics[metrics["dataset"] == ds]
        settings = ordered_unique(mds["setting"])
        primary = primary_setting(settings)
        settings = [primary] + [s for s in settings if s != primary]
        for setting in settings:
            levels = sorted(ordered_unique(mds.loc[mds["setting"] == setting, "level"]),
                            key=lambda lv: (LEVEL_ORDER.get(lv, 9), lv))
            for level in levels:
                block = _build_block(ds, setting, level, len(settings) > 1, full, rows, row_keys, scores,
                                     failed_methods, ref_label, n_boot, alpha, boot_seed)
                if setting == "transductive":
                    _mark_not_on_a(block, row_keys, not_on_a)
                blocks.append(block)
    _holm_over_table(blocks, ref_label)
    marks = flagged(jobs)
    mark_blocks(blocks, row_keys, marks)

    marked = any(NOT_ON_A in c.text for b in blocks for cells in b.cells.values() for c in cells.values())
    notes = table_notes(blocks, ref_label, n_boot, alpha, threshold_rule, full, selection_rule, marked,
                        no_threshold=[b.title for b in blocks if b.no_threshold])
    notes += health_notes(marks, {str(p) for p in [profile, *(j.get("profile") for j in jobs or [])] if p})
    paper = mark_paper(_paper_table(full, rows, datasets), row_keys, marks)
    return Tables(blocks=blocks, rows=rows, notes=notes, paper=paper, full=full, reference=ref_label,
                  row_keys=row_keys)


def _build_block(ds, setting, level, show_setting, full, rows, row_keys, scores, failed_methods, ref_label,
                 n_boot, alpha, boot_seed) -> Block:
    sub = full[(full["dataset"] == ds) & (full["setting"] == setting) & (full["level"] == level)]
    present = set(sub["metric"])
    base = TABLE_COLUMNS.get(level) or [(m, m) for m in ordered_unique(sub["metric"]) if m not in NOT_SCORES]
    has_scores = scores is not None and level in ("image", "subject")
    per_row = {lab: scores_of(scores, ds, setting, *row_keys[lab]) for lab in rows} if has_scores else {}
    images_only = not any(len(seeds) > 1 for seeds in per_row.values())
    cols = []
    for key, header in base:
        if key in ("ci", "range"):
            if has_scores:
                cols.append((key, _ci_header(alpha, images_only) if key == "ci" else header))
        elif key == "p":
            if has_scores and ref_label is not None:
                cols.append((key, f"p vs {ref_label}"))
        elif key in present:
            cols.append((key, header))
    block = Block(ds, setting, level, _block_title(ds, setting, level, show_setting), cols)
    lookup = {(r.label, r.metric): r for r in sub.itertuples(index=False)}
    for label in rows:
        method, _ = row_keys[label]
        block.cells[label] = {}
        for key, _h in cols:
            if key in COMPUTED:
                continue
            r = lookup.get((label, key))
            if r is None:
                text = FAILED if (ds, method) in failed_methods else MISSING
                block.cells[label][key] = Cell(text)
            elif not r.n_seeds and key in THRESHOLD_METRICS and (ds, method) not in failed_methods:
                # the job finished but has no threshold (e.g. a published split with no hold-out): not a failure
                block.cells[label][key] = Cell(MISSING)
                block.no_threshold = True
            else:
                block.cells[label][key] = Cell(r.cell, r.mean if r.n_seeds else math.nan)
    if has_scores:
        _add_range(block, rows, lookup)
        _add_ci(block, rows, per_row, n_boot, alpha, boot_seed)
        _add_raw_p(block, rows, per_row, ref_label, n_boot, boot_seed)
    _bold(block)
    return block


def _bold(block: Block) -> None:
    """Bold the best mean (3 decimals, ties all bold) of each metric column when two or more rows have numbers."""
    for key, _h in block.columns:
        if key in COMPUTED:
            continue
        vals = {lab: c[key].value for lab, c in block.cells.items() if key in c and np.isfinite(c[key].value)}
        best = max((round(v, 3) for v in vals.values()), default=None) if len(vals) >= 2 else None
        for lab, c in block.cells.items():
            if key in c:
                c[key].bold = best is not None and lab in vals and round(vals[lab], 3) == best


def _mark_not_on_a(block: Block, row_keys, not_on_a: set) -> None:
    """Transductive cells of a method that never trained on set A: marked, and out of the bold contest."""
    for lab, cells in block.cells.items():
        if (block.dataset, row_keys[lab][0]) not in not_on_a:
            continue
        for key, c in cells.items():
            if key not in COMPUTED and c.text not in (MISSING, FAILED):
                cells[key] = Cell(f"{c.text} {NOT_ON_A}")
    _bold(block)


def _ci_header(alpha: float, images_only: bool) -> str:
    return f"AUC {round(100 * (1 - alpha))}% CI" + (" (images only)" if images_only else "")


def _missing_text(block: Block, lab: str) -> str:
    auc_text = block.cells[lab]["auc"].text if "auc" in block.cells[lab] else MISSING
    return FAILED if auc_text == FAILED else MISSING


def _add_range(block: Block, rows, lookup) -> None:
    """``min–max`` of the AUC over the seeds that finished (the spread the ± in the AUC cell summarises)."""
    for lab in rows:
        r = lookup.get((lab, "auc"))
        if r is None or r.n_seeds == 0:
            text = _missing_text(block, lab)
        else:
            text = f"{_fmt(r.min)}–{_fmt(r.max)}" if r.n_seeds > 1 else "1 seed"
        block.cells[lab]["range"] = Cell(text)


def _seed_arrays(frame: pd.DataFrame, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(labels, scores, groups) of one seed in image-id order; groups as :func:`level_arrays` gives them."""
    _, y, s, groups = level_arrays(frame.sort_values("id", kind="stable"), level)
    return y, s, groups


def _add_ci(block: Block, rows, per_row, n_boot, alpha, boot_seed) -> None:
    """Hierarchical bootstrap CI of the row's seed-mean AUC (seeds, then each seed's image clusters)."""
    for lab in rows:
        seeds = per_row[lab]
        if not seeds:
            block.cells[lab]["ci"] = Cell(_missing_text(block, lab))
            continue
        ys, ss, gs = zip(*(_seed_arrays(seeds[seed], block.level) for seed in sorted(seeds)))
        try:
            _, lo, hi = bootstrap_mean_auc_ci(list(ys), list(ss), n_boot=n_boot, alpha=alpha, seed=boot_seed,
                                              groups_list=list(gs))
            text = f"[{_fmt(lo)}, {_fmt(hi)}]"
        except ValueError:
            text = MISSING
        block.cells[lab]["ci"] = Cell(text)


def _paired_arrays(fa: pd.DataFrame, fb: pd.DataFrame, level: str):
    """(labels, scores a, scores b, groups) on the images both frames scored, in key order."""
    ka, ya, sa, ga = level_arrays(fa, level)
    kb, _yb, sb, _ = level_arrays(fb, level)
    a = pd.DataFrame({"k": ka, "y": ya, "a": sa, "g": ga if ga is not None else ka}).drop_duplicates("k")
    m = a.merge(pd.DataFrame({"k": kb, "b": sb}).drop_duplicates("k"), on="k", how="inner").sort_values(
        "k", kind="stable")
    return m["y"].to_numpy(), m["a"].to_numpy(), m["b"].to_numpy(), m["g"].to_numpy() if ga is not None else None


def _add_raw_p(block: Block, rows, per_row, ref_label, n_boot, boot_seed) -> None:
    """Unadjusted p of each row vs the reference: paired hierarchical bootstrap over all their common seeds."""
    if "p" not in (k for k, _ in block.columns):
        return
    ref_seeds = per_row.get(ref_label, {})
    for lab in rows:
        if lab == ref_label:
            continue
        common = sorted(set(per_row[lab]) & set(ref_seeds))
        block.p_raw[lab] = math.nan
        if not common:
            continue
        parts = [_paired_arrays(per_row[lab][seed], ref_seeds[seed], block.level) for seed in common]
        ys, sa, sb, gs = (list(x) for x in zip(*parts))
        try:
            block.p_raw[lab] = paired_mean_auc_test(ys, sa, sb, n_boot=n_boot, seed=boot_seed, groups_list=gs)[1]
        except ValueError:
            pass


def _holm_over_table(blocks: list[Block], ref_label: str | None) -> None:
    """Holm over every p of the main table (all blocks together), then the p cells."""
    family = [(b, lab) for b in blocks for lab in b.p_raw]
    adj = holm([b.p_raw[lab] for b, lab in family]) if family else []
    for (b, lab), p in zip(family, adj):
        b.cells[lab]["p"] = Cell(_fmt_p(p))
    for b in blocks:
        if "p" in (k for k, _ in b.columns) and ref_label in b.cells:
            b.cells[ref_label]["p"] = Cell("ref")


def _paper_table(full: pd.DataFrame, rows: list[str], datasets: list[str]) -> pd.DataFrame:
    """Seed paper Table 1 layout: one row per (method, dataset) on the primary setting and the subject level
    where there is one (the paper scores migraine subjects), else the image level."""
    out = []
    for ds in datasets:
        f = full[full["dataset"] == ds]
        if f.empty:
            continue
        setting = primary_setting(ordered_unique(f["setting"]))
        f = f[f["setting"] == setting]
        level = "subject" if (f["level"] == "subject").any() else "image"
        f = f[f["level"] == level]
        for lab in rows:
            fr = f[f["label"] == lab].set_index("metric")
            if fr.empty:
                continue
            rec = {"method": lab, "dataset": ds, "setting": setting, "level": level}
            for m in ("auc", "precision", "specificity", "f1"):
                rec[f"{m}_mean"] = float(fr.at[m, "mean"]) if m in fr.index else math.nan
                rec[f"{m}_std"] = float(fr.at[m, "std"]) if m in fr.index else math.nan
                rec[f"{m}_cell"] = str(fr.at[m, "cell"]) if m in fr.index else MISSING
                if (m in THRESHOLD_METRICS and m in fr.index and not fr.at[m, "n_seeds"] and "auc" in fr.index
                        and fr.at["auc", "n_seeds"]):  # scored, but no threshold (no hold-out): not a failure
                    rec[f"{m}_cell"] = MISSING
            auc = fr.loc["auc"] if "auc" in fr.index else None
            rec["n_seeds"] = int(auc["n_seeds"]) if auc is not None else 0
            rec["n_failed"] = int(auc["n_failed"]) if auc is not None else 0
            out.append(rec)
    return pd.DataFrame(out)


def row_empty(block: Block, label: str) -> bool:
    """True when a row has nothing in this block (the method did not run on this dataset)."""
    return all(c.text == MISSING for c in block.cells[label].values())


PAPER_HEADERS = ("Method", "Dataset", "AUC", "Precision/Specificity", "F1")


def paper_rows(tables: Tables) -> list[list[str]]:
    rows = []
    for r in tables.paper.itertuples(index=False):
        ds = r.dataset if r.level == "image" else f"{r.dataset} ({r.level})"
        rows.append([r.method, ds, r.auc_cell, f"{r.precision_cell} / {r.specificity_cell}", r.f1_cell])
    return rows
