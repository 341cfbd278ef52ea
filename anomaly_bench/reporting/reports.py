"""Result tables (Markdown, LaTeX, CSV) and figures (ROC, PR, score distributions, map gallery) of a run.

Entry point: :func:`write_reports` (the runner calls it after every run; ``anomaly-bench report`` rebuilds).
:func:`write_html_report` (in :mod:`anomaly_bench.reporting.html`, re-exported here) bundles everything into one
self-contained ``report.html``.

Conventions (stated again in the notes under every table):

* a cell is the mean ± sample standard deviation (ddof = 1) over the seeds that finished, 3 decimals; one seed:
  the value alone; a job with no finite scores shows ``failed``; when only some seeds failed the cell carries
  a dagger (†) and the mean is over the finished seeds;
* the best mean of each metric column (higher is better; ties at 3 decimals all bold) is bold when at least two
  rows have numbers;
* ``AUC 95% CI``: CI of the seed-averaged AUC (the number in the AUC column) by stratified percentile bootstrap
  of the test images, the same resampled images for every seed
  (:func:`anomaly_bench.evaluation.stats.bootstrap_mean_auc_ci`); scores are never pooled across seeds, since
  different seeds' scores live on different scales;
* ``p vs <reference>``: DeLong's test (:func:`anomaly_bench.evaluation.stats.delong_test`) of each row against the
  reference row on the same images and the same seed, Holm-corrected over the rows of that block.

The seed paper's Table 1 layout (method, dataset, AUC, precision/specificity, F1) is ``table_paper.*``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_bench.evaluation.metrics import GROUP_COLUMNS, METRICS_COLUMNS, compute_metrics, subject_scores
from anomaly_bench.evaluation.stats import bootstrap_mean_auc_ci, delong_test, holm

log = logging.getLogger("anomaly_bench")

DEFAULT_REFERENCE = "medai_anomalypro"

#: (metric, header) of the main table per level; ``ci`` and ``p`` are computed columns.
TABLE_COLUMNS = {
    "image": [("auc", "AUC"), ("ci", "AUC 95% CI"), ("precision", "Precision"), ("recall", "Recall"),
              ("specificity", "Specificity"), ("f1", "F1"), ("p", "p")],
    "pixel": [("pixel_auroc", "Pixel AUROC"), ("best_dice", "Best Dice")],
}
TABLE_COLUMNS["subject"] = TABLE_COLUMNS["image"]
#: Metrics that are counts or thresholds, not scores: never bold, never in the main table.
NOT_SCORES = {"threshold", "n_pos", "n_neg", "n_nonfinite", "dice_threshold", "n_pixels", "n_anomalous_pixels"}
SELECTION_LABELS = {"last": "", "aucp": "AUCp"}
LEVEL_ORDER = {"image": 0, "subject": 1, "pixel": 2}
FAILED = "failed"
MISSING = "n/a"
DAGGER = "†"


# ============================================================================================ helpers
def row_label(method: str, selection: str) -> str:
    """``method`` for the last checkpoint, ``method (AUCp)`` for the pseudo-AUC selected one."""
    tag = SELECTION_LABELS.get(str(selection), str(selection))
    return f"{method} ({tag})" if tag else str(method)


def safe_name(text: str) -> str:
    """A file-name-safe version of a dataset or setting name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _normalise_metrics(metrics_df: pd.DataFrame) -> pd.DataFrame:
    df = metrics_df.copy()
    for col, val in {"setting": "inductive", "selection": "last", "seed": 0, "level": "image"}.items():
        if col not in df.columns:
            df[col] = val
    missing = sorted({"dataset", "method", "metric", "value"} - set(df.columns))
    if missing:
        raise ValueError(f"metrics table lacks column(s) {missing}; expected {list(METRICS_COLUMNS)}")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    for col in ("dataset", "setting", "method", "selection", "level", "metric"):
        df[col] = df[col].astype(str)
    return df[list(METRICS_COLUMNS)]


def _normalise_scores(scores_df: pd.DataFrame | None) -> pd.DataFrame | None:
    if scores_df is None or len(scores_df) == 0:
        return None
    df = scores_df.copy()
    for col, val in {"setting": "inductive", "selection": "last", "seed": 0}.items():
        if col not in df.columns:
            df[col] = val
    if "id" not in df.columns:
        df["id"] = np.arange(len(df))
    if "subject" not in df.columns:
        df["subject"] = df["id"]
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    df["label"] = pd.to_numeric(df["label"], errors="coerce")
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype(int)
    for col in ("dataset", "setting", "method", "selection", "id", "subject"):
        df[col] = df[col].astype(str)
    return df


def _ordered_unique(values) -> list:
    return list(dict.fromkeys(values))


def read_jobs(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``jobs/<dataset>/<method>/seed<k>/job.json`` of a run (unreadable files are skipped with a warning)."""
    out = []
    for p in sorted(Path(run_dir).glob("jobs/*/*/seed*/job.json")):
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            log.warning("skipping %s: %s", p, exc)
            continue
        meta.setdefault("dataset", p.parents[2].name)
        meta.setdefault("method", p.parents[1].name)
        if "seed" not in meta:
            try:
                meta["seed"] = int(p.parent.name.removeprefix("seed"))
            except ValueError:
                meta["seed"] = p.parent.name
        meta["_path"] = str(p)
        out.append(meta)
    return out


def _add_failed_jobs(metrics: pd.DataFrame, jobs: list[dict]) -> pd.DataFrame:
    """NaN rows for failed jobs wherever they left no metrics (every setting, level and selection that other
    jobs of the dataset have), so tables show them as failed (all seeds) or with a dagger (some seeds)."""
    extra = []
    for meta in jobs:
        if meta.get("status") == "done":
            continue
        ds, method = str(meta.get("dataset")), str(meta.get("method"))
        try:
            seed = int(meta.get("seed"))
        except (TypeError, ValueError):
            continue
        same_ds = metrics[metrics["dataset"] == ds]
        sels = _ordered_unique(same_ds.loc[same_ds["method"] == method, "selection"]) or ["last"]
        have = same_ds[(same_ds["method"] == method) & (same_ds["seed"] == seed)]
        have = set(zip(have["setting"], have["level"], have["selection"]))
        blocks = same_ds.groupby(["setting", "level"], sort=False)["metric"].unique()
        if blocks.empty:
            blocks = pd.Series({("inductive", "image"): np.array(["auc", "precision", "recall", "specificity",
                                                                  "f1"])})
        for (setting, level), names in blocks.items():
            for sel in sels:
                if (setting, level, sel) in have:
                    continue
                extra += [(ds, setting, method, sel, seed, level, m, math.nan) for m in names if m not in NOT_SCORES]
    if not extra:
        return metrics
    return pd.concat([metrics, pd.DataFrame(extra, columns=list(METRICS_COLUMNS))], ignore_index=True)


# ============================================================================================ summary
def summarise(metrics_df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, setting, level, method, selection, metric): mean, std (ddof 1), min, max over
    the seeds with a finite value, ``n_seeds`` (finite), ``n_failed`` (NaN), ``seeds``, ``values`` and the
    table ``cell`` text. This is ``table_full.csv``."""
    df = _normalise_metrics(metrics_df)
    keys = ["dataset", "setting", "level", "method", "selection", "metric"]
    rows = []
    for key, g in df.groupby(keys, sort=False):
        g = g.sort_values("seed")
        vals = g["value"].to_numpy(dtype=np.float64)
        ok = np.isfinite(vals)
        fin = vals[ok]
        rows.append({
            **dict(zip(keys, key)),
            "label": row_label(key[3], key[4]),
            "mean": float(fin.mean()) if len(fin) else math.nan,
            "std": float(fin.std(ddof=1)) if len(fin) > 1 else (0.0 if len(fin) == 1 else math.nan),
            "min": float(fin.min()) if len(fin) else math.nan,
            "max": float(fin.max()) if len(fin) else math.nan,
            "n_seeds": int(ok.sum()),
            "n_failed": int((~ok).sum()),
            "seeds": ";".join(str(s) for s in g["seed"]),
            "values": ";".join("nan" if not np.isfinite(v) else repr(float(v)) for v in vals),
            "cell": format_cell(vals),
        })
    return pd.DataFrame(rows)


def format_cell(values: Any) -> str:
    """``0.812 ± 0.011`` (mean ± sample std over finite values), ``0.812`` for one value, ``failed`` for none;
    a trailing † when some values are NaN (failed seeds)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    fin = v[np.isfinite(v)]
    if len(fin) == 0:
        return FAILED
    text = _fmt(fin.mean()) if len(fin) == 1 else f"{_fmt(fin.mean())} ± {_fmt(fin.std(ddof=1))}"
    return text + (DAGGER if len(fin) < len(v) else "")


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


def _primary_setting(settings: list[str]) -> str:
    return "inductive" if "inductive" in settings else settings[0]


def _scores_of(scores: pd.DataFrame | None, dataset: str, setting: str, method: str, selection: str
               ) -> dict[int, pd.DataFrame]:
    """Finished seeds' scores of one table row: seed -> frame (id, subject, label, score), all finite."""
    if scores is None:
        return {}
    g = scores[(scores["dataset"] == dataset) & (scores["setting"] == setting) & (scores["method"] == method)
               & (scores["selection"] == selection)]
    out = {}
    for seed, gs in g.groupby("seed", sort=True):
        if len(gs) and np.all(np.isfinite(gs["score"].to_numpy())) and gs["label"].isin([0, 1]).all():
            out[int(seed)] = gs[["id", "subject", "label", "score"]]
    return out


def _level_arrays(frame: pd.DataFrame, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(keys, labels, scores, groups) at ``level``: subjects are aggregated by their mean score."""
    if level == "subject":
        agg = subject_scores(frame["subject"].to_numpy(), frame["label"].to_numpy(), frame["score"].to_numpy())
        return agg["subject"].to_numpy(), agg["label"].to_numpy(), agg["score"].to_numpy(), None
    groups = frame["subject"].to_numpy()
    multi = pd.Series(groups).duplicated().any()
    return frame["id"].to_numpy(), frame["label"].to_numpy(), frame["score"].to_numpy(), groups if multi else None


def build_tables(metrics_df: pd.DataFrame, scores_df: pd.DataFrame | None = None, *, jobs: list[dict] | None = None,
                 reference_method: str | None = DEFAULT_REFERENCE, reference_selection: str = "last",
                 n_boot: int = 1000, alpha: float = 0.05, boot_seed: int = 0,
                 threshold_rule: str | float | None = None) -> Tables:
    """All table content of a run (no files written); see the module docstring for the conventions."""
    metrics = _normalise_metrics(metrics_df)
    if jobs:
        metrics = _add_failed_jobs(metrics, jobs)
    scores = _normalise_scores(scores_df)
    full = summarise(metrics)
    failed_methods = {(str(j.get("dataset")), str(j.get("method"))) for j in (jobs or []) if j.get("status") != "done"}

    methods = _ordered_unique(metrics["method"])
    sel_order = {s: i for i, s in enumerate(["last", "aucp"])}
    pairs = metrics[["method", "selection"]].drop_duplicates()
    pairs = sorted(pairs.itertuples(index=False), key=lambda r: (methods.index(r[0]), sel_order.get(r[1], 9), r[1]))
    row_keys = {row_label(m, s): (m, s) for m, s in pairs}
    rows = list(row_keys)

    have_ref = reference_method is not None and scores is not None and (scores["method"] == reference_method).any()
    ref_sel = None
    if have_ref:
        sels = _ordered_unique(scores.loc[scores["method"] == reference_method, "selection"])
        ref_sel = reference_selection if reference_selection in sels else sels[0]
    ref_label = row_label(reference_method, ref_sel) if have_ref else None

    blocks: list[Block] = []
    datasets = _ordered_unique(metrics["dataset"])
    for ds in datasets:
        mds = metrics[metrics["dataset"] == ds]
        settings = _ordered_unique(mds["setting"])
        primary = _primary_setting(settings)
        settings = [primary] + [s for s in settings if s != primary]
        for setting in settings:
            levels = sorted(_ordered_unique(mds.loc[mds["setting"] == setting, "level"]),
                            key=lambda lv: (LEVEL_ORDER.get(lv, 9), lv))
            for level in levels:
                blocks.append(_build_block(ds, setting, level, len(settings) > 1, full, rows, row_keys, scores,
                                           failed_methods, ref_label, n_boot, alpha, boot_seed))

    notes = _notes(blocks, ref_label, n_boot, alpha, threshold_rule, full)
    paper = _paper_table(full, rows, datasets)
    return Tables(blocks=blocks, rows=rows, notes=notes, paper=paper, full=full, reference=ref_label,
                  row_keys=row_keys)


def _build_block(ds, setting, level, show_setting, full, rows, row_keys, scores, failed_methods, ref_label,
                 n_boot, alpha, boot_seed) -> Block:
    sub = full[(full["dataset"] == ds) & (full["setting"] == setting) & (full["level"] == level)]
    present = set(sub["metric"])
    base = TABLE_COLUMNS.get(level) or [(m, m) for m in _ordered_unique(sub["metric"]) if m not in NOT_SCORES]
    has_scores = scores is not None and level in ("image", "subject")
    cols = []
    for key, header in base:
        if key == "ci":
            if has_scores:
                cols.append((key, f"AUC {round(100 * (1 - alpha))}% CI"))
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
            if key in ("ci", "p"):
                continue
            r = lookup.get((label, key))
            if r is None:
                text = FAILED if (ds, method) in failed_methods else MISSING
                block.cells[label][key] = Cell(text)
            else:
                block.cells[label][key] = Cell(r.cell, r.mean if r.n_seeds else math.nan)
    if has_scores:
        _add_ci_and_p(block, rows, row_keys, scores, ref_label, n_boot, alpha, boot_seed)
    for key, _h in cols:
        if key in ("ci", "p"):
            continue
        vals = {lab: c[key].value for lab, c in block.cells.items() if np.isfinite(c[key].value)}
        if len(vals) >= 2:
            best = max(round(v, 3) for v in vals.values())
            for lab, v in vals.items():
                if round(v, 3) == best:
                    block.cells[lab][key].bold = True
    return block


def _add_ci_and_p(block: Block, rows, row_keys, scores, ref_label, n_boot, alpha, boot_seed) -> None:
    keys = [k for k, _ in block.columns]
    per_row = {lab: _scores_of(scores, block.dataset, block.setting, *row_keys[lab]) for lab in rows}
    for lab in rows:
        seeds = per_row[lab]
        if "ci" not in keys:
            continue
        if not seeds:
            auc_text = block.cells[lab]["auc"].text if "auc" in block.cells[lab] else MISSING
            block.cells[lab]["ci"] = Cell(FAILED if auc_text == FAILED else MISSING)
            continue
        ys, ss, gs = [], [], []
        for seed in sorted(seeds):
            _, y, s, groups = _level_arrays(seeds[seed].sort_values("id", kind="stable"), block.level)
            ys.append(y)
            ss.append(s)
            gs.append(groups)
        try:
            _, lo, hi = bootstrap_mean_auc_ci(ys, ss, n_boot=n_boot, alpha=alpha, seed=boot_seed, groups_list=gs)
            text = f"[{_fmt(lo)}, {_fmt(hi)}]"
        except ValueError:
            text = MISSING
        block.cells[lab]["ci"] = Cell(text)
    if "p" not in keys:
        return
    ref_seeds = per_row.get(ref_label, {})
    raw = {}
    for lab in rows:
        if lab == ref_label:
            continue
        common = sorted(set(per_row[lab]) & set(ref_seeds))
        if not common:
            raw[lab] = math.nan
            continue
        seed = common[0]
        ka, ya, sa, _ = _level_arrays(per_row[lab][seed], block.level)
        kb, _yb, sb, _ = _level_arrays(ref_seeds[seed], block.level)
        a = pd.DataFrame({"k": ka, "y": ya, "a": sa}).drop_duplicates("k")
        b = pd.DataFrame({"k": kb, "b": sb}).drop_duplicates("k")
        m = a.merge(b, on="k", how="inner")
        try:
            raw[lab] = delong_test(m["y"].to_numpy(), m["a"].to_numpy(), m["b"].to_numpy())[3]
        except ValueError:
            raw[lab] = math.nan
    labs = list(raw)
    adj = dict(zip(labs, holm([raw[lab] for lab in labs]))) if labs else {}
    for lab in rows:
        if lab == ref_label:
            block.cells[lab]["p"] = Cell("ref")
        else:
            block.cells[lab]["p"] = Cell(_fmt_p(adj.get(lab, math.nan)))


def _notes(blocks, ref_label, n_boot, alpha, threshold_rule, full) -> list[str]:
    notes = ["Cells: mean ± sample standard deviation (ddof = 1) over seeds; one seed: the value alone. "
             "Bold: best mean per column (higher is better)."]
    if threshold_rule is not None:
        rule = {"youden": "Youden's J (max TPR − FPR)",
                "equal_error": "TPR ≈ 1 − FPR (the official HealthyGAN Find_Optimal_Cutoff)"}.get(
            str(threshold_rule), f"fixed threshold {threshold_rule}")
        notes.append(f"Precision, recall (sensitivity), specificity and F1 at the threshold chosen by {rule}, "
                     "per seed, on the evaluated set; score ≥ threshold = anomalous.")
    if (full["n_failed"] > 0).any() if len(full) else False:
        notes.append(f"'{FAILED}': no seed finished. {DAGGER}: some seeds failed; mean over the seeds that finished.")
    if any(k == "ci" for b in blocks for k, _ in b.columns):
        notes.append(f"AUC {round(100 * (1 - alpha))}% CI: of the seed-averaged AUC, by stratified percentile "
                     f"bootstrap of the test images ({n_boot} resamples; positives and negatives resampled "
                     "separately, whole subjects where a subject has several images; the same resampled images "
                     "for every seed). It shows test-set sampling uncertainty; ± shows seed-to-seed variation.")
    if ref_label is not None and any(k == "p" for b in blocks for k, _ in b.columns):
        notes.append(f"p vs {ref_label}: two-sided DeLong test for correlated AUCs on the same images and seed "
                     "(the first seed both finished), Holm-corrected over the rows of each dataset block. "
                     "Image-level tests treat slices of one subject as independent; use the subject level there.")
    return notes


def _paper_table(full: pd.DataFrame, rows: list[str], datasets: list[str]) -> pd.DataFrame:
    """Seed paper Table 1 layout: one row per (method, dataset) on the primary setting and the subject level
    where there is one (the paper scores migraine subjects), else the image level."""
    out = []
    for ds in datasets:
        f = full[full["dataset"] == ds]
        if f.empty:
            continue
        setting = _primary_setting(_ordered_unique(f["setting"]))
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
            auc = fr.loc["auc"] if "auc" in fr.index else None
            rec["n_seeds"] = int(auc["n_seeds"]) if auc is not None else 0
            rec["n_failed"] = int(auc["n_failed"]) if auc is not None else 0
            out.append(rec)
    return pd.DataFrame(out)


# ============================================================================================ writers
def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _row_empty(block: Block, label: str) -> bool:
    """True when a row has nothing in this block (the method did not run on this dataset)."""
    return all(c.text == MISSING for c in block.cells[label].values())


def to_markdown(tables: Tables, title: str = "Results") -> str:
    """One Markdown table per dataset block (methods as rows), then the notes."""
    lines = [f"# {title}", ""]
    for b in tables.blocks:
        lines += [f"## {_md_escape(b.title)}", ""]
        lines.append("| Method | " + " | ".join(_md_escape(h) for _, h in b.columns) + " |")
        lines.append("|---|" + "|".join("---:" for _ in b.columns) + "|")
        for lab in tables.rows:
            if _row_empty(b, lab):
                continue
            cells = []
            for key, _ in b.columns:
                c = b.cells[lab][key]
                cells.append(f"**{_md_escape(c.text)}**" if c.bold else _md_escape(c.text))
            lines.append(f"| {_md_escape(lab)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Notes:", ""] + [f"- {n}" for n in tables.notes] + [""]
    return "\n".join(lines)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", DAGGER: r"$^\dagger$", "<": r"$<$", ">": r"$>$", "≥": r"$\geq$",
                  "≈": r"$\approx$", "−": "-", "–": "--"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (underscores etc.) and map ±, †, <, ≥ to math."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_header(key: str, header: str) -> str:
    return "$p$ vs ref." if key == "p" else latex_escape(header)


def _latex_tabular(tables: Tables, blocks: list[Block]) -> list[str]:
    spec = "l" + "".join("c" * len(b.columns) for b in blocks)
    out = [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    head, rules, col = [""], [], 2
    for b in blocks:
        n = len(b.columns)
        head.append(f"\\multicolumn{{{n}}}{{c}}{{{latex_escape(b.title)}}}")
        rules.append(f"\\cmidrule(lr){{{col}-{col + n - 1}}}")
        col += n
    out.append(" & ".join(head) + " \\\\")
    out.append(" ".join(rules))
    out.append(" & ".join(["Method"] + [_latex_header(k, h) for b in blocks for k, h in b.columns]) + " \\\\")
    out.append("\\midrule")
    for lab in tables.rows:
        if all(_row_empty(b, lab) for b in blocks):
            continue
        cells = [latex_escape(lab)]
        for b in blocks:
            for key, _ in b.columns:
                c = b.cells[lab][key]
                cells.append(f"\\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text))
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    return out


def to_latex(tables: Tables, caption: str = "Anomaly detection results.", label: str = "tab:anomaly-bench",
             blocks_per_tabular: int = 2) -> str:
    """booktabs tables: methods as rows, one column group per dataset block, ``blocks_per_tabular`` groups side
    by side per tabular (further groups go into further tabulars in the same float). Needs ``booktabs``."""
    out = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small",
           f"\\caption{{{latex_escape(caption)}}}", f"\\label{{{label}}}"]
    k = max(1, int(blocks_per_tabular))
    for i in range(0, len(tables.blocks), k):
        if i:
            out.append("\\par\\medskip")
        out += _latex_tabular(tables, tables.blocks[i:i + k])
    notes = list(tables.notes)
    if tables.reference is not None and any(key == "p" for b in tables.blocks for key, _ in b.columns):
        notes.append(f"ref.: {tables.reference}.")
    if notes:
        text = " ".join(latex_escape(n) for n in notes)
        out.append(f"\\par\\vspace{{2pt}}\\parbox{{\\linewidth}}{{\\footnotesize {text}}}")
    out += ["\\end{table}", ""]
    return "\n".join(out)


PAPER_HEADERS = ("Method", "Dataset", "AUC", "Precision/Specificity", "F1")


def _paper_rows(tables: Tables) -> list[list[str]]:
    rows = []
    for r in tables.paper.itertuples(index=False):
        ds = r.dataset if r.level == "image" else f"{r.dataset} ({r.level})"
        rows.append([r.method, ds, r.auc_cell, f"{r.precision_cell} / {r.specificity_cell}", r.f1_cell])
    return rows


def paper_markdown(tables: Tables) -> str:
    lines = ["# Results in the layout of the seed paper's Table 1", "",
             "| " + " | ".join(PAPER_HEADERS) + " |", "|---|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in _paper_rows(tables)]
    lines += ["", "Precision/Specificity: both values (the paper prints one number for the two). "
              "Primary setting (inductive when present); subject level where subjects have several images.", ""]
    lines += ["Notes:", ""] + [f"- {n}" for n in tables.notes if not n.startswith(("AUC 9", "p vs"))] + [""]
    return "\n".join(lines)


def paper_latex(tables: Tables) -> str:
    out = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering", "\\small",
           "\\caption{Summary of results (layout of the seed paper's Table 1).}", "\\label{tab:anomaly-bench-paper}",
           "\\begin{tabular}{llccc}", "\\toprule", " & ".join(latex_escape(h) for h in PAPER_HEADERS) + " \\\\",
           "\\midrule"]
    out += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in _paper_rows(tables)]
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


def write_reports(run_dir: str | Path, metrics_df: pd.DataFrame | None = None, scores_df: pd.DataFrame | None = None,
                  *, reference_method: str | None = DEFAULT_REFERENCE, reference_selection: str = "last",
                  n_boot: int = 1000, alpha: float = 0.05, boot_seed: int = 0,
                  threshold_rule: str | float | None = None, plots: bool = True, html: bool = True,
                  n_gallery: int = 6) -> dict[str, Path]:
    """Write metrics.csv, table.{md,tex}, table_paper.{md,tex,csv}, table_full.csv, figures and report.html.

    ``metrics_df`` defaults to ``compute_metrics(scores_df, threshold_rule)``; ``scores_df`` to
    ``run_dir/scores.csv``; ``threshold_rule`` (only used for that and the table note) to the run's
    ``experiment.yaml`` value, else ``"youden"``; pass it when the metrics were computed with another rule.
    Without scores there are no CI/p columns and no curves. Failed jobs (NaN scores or a failed ``job.json``)
    show as ``failed``. ``reference_method`` (default ``medai_anomalypro``, when present) is the DeLong
    reference. Returns {name: path} of the files written.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if scores_df is None and (run_dir / "scores.csv").is_file():
        scores_df = read_scores_csv(run_dir / "scores.csv")
    if threshold_rule is None:
        from anomaly_bench.reporting.html import _rule_from_experiment

        threshold_rule = _rule_from_experiment(run_dir)
    if metrics_df is None:
        if scores_df is None:
            raise ValueError(f"{run_dir}: give metrics_df or scores_df (no scores.csv there)")
        threshold_rule = threshold_rule if threshold_rule is not None else "youden"
        metrics_df = compute_metrics(scores_df, threshold_rule)
    jobs = read_jobs(run_dir)
    tables = build_tables(metrics_df, scores_df, jobs=jobs, reference_method=reference_method,
                          reference_selection=reference_selection, n_boot=n_boot, alpha=alpha, boot_seed=boot_seed,
                          threshold_rule=threshold_rule)
    written: dict[str, Path] = {}

    def put(name: str, text: str) -> None:
        p = run_dir / name
        p.write_text(text, encoding="utf-8")
        written[name] = p

    metrics_out = _normalise_metrics(metrics_df)
    metrics_out.to_csv(run_dir / "metrics.csv", index=False)
    written["metrics.csv"] = run_dir / "metrics.csv"
    title = f"Results: {run_dir.name}"
    notes = data_notes_markdown(data_notes(run_dir))
    put("table.md", to_markdown(tables, title).rstrip("\n") + ("\n\n" + notes if notes else "\n"))
    put("table.tex", to_latex(tables))
    put("table_paper.md", paper_markdown(tables))
    put("table_paper.tex", paper_latex(tables))
    tables.paper.to_csv(run_dir / "table_paper.csv", index=False)
    written["table_paper.csv"] = run_dir / "table_paper.csv"
    tables.full.to_csv(run_dir / "table_full.csv", index=False)
    written["table_full.csv"] = run_dir / "table_full.csv"
    if plots:
        from anomaly_bench.reporting.html import write_figures

        written.update(write_figures(run_dir, tables, _normalise_scores(scores_df), n_gallery=n_gallery))
    if html:
        from anomaly_bench.reporting.html import write_html_report

        written["report.html"] = write_html_report(run_dir, tables=tables)
    return written


def data_notes(run_dir: str | Path, max_listed: int = 50) -> list[dict[str, Any]]:
    """Per dataset of the run (from ``run.json``): size, fingerprint, duplicate groups found, and the images
    left out as unreadable under ``on_bad_image: skip`` (``[(path, reason)]``). Empty without a run.json."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return []
    try:
        info = json.loads(path.read_text())
    except ValueError:
        return []
    notes = []
    for name, d in (info.get("datasets") or {}).items():
        if not isinstance(d, dict):
            continue
        skipped = [(str(x[0]), str(x[1])) if isinstance(x, (list, tuple)) and len(x) >= 2 else (str(x), "")
                   for x in d.get("skipped_images") or []]
        notes.append({"dataset": name, "n_images": d.get("n_images"), "fingerprint": d.get("fingerprint"),
                      "duplicates": d.get("duplicates") or None, "n_skipped": len(skipped),
                      "skipped": skipped[:max_listed]})
    return notes


def data_note_summary(n: dict[str, Any]) -> str:
    """One dataset's data note after its name and fingerprint: duplicate groups and images left out."""
    dup = n["duplicates"]
    dup_txt = (f"{dup.get('n_groups', 0)} duplicate groups ({dup.get('n_images_in_groups', 0)} images) kept "
               f"each in one split role" if dup else "no duplicate check")
    return f"{dup_txt}; {n['n_skipped']} unreadable image(s) left out (on_bad_image: skip)."


def data_notes_markdown(notes: list[dict[str, Any]]) -> str:
    """The 'Data' section of table.md: duplicates found and images left out, per dataset."""
    if not notes:
        return ""
    lines = ["## Data", ""]
    for n in notes:
        lines.append(f"- **{n['dataset']}**: {n['n_images']} images, fingerprint `{n['fingerprint']}`; "
                     f"{data_note_summary(n)}")
        for path, reason in n["skipped"]:
            lines.append(f"  - left out: `{path}`: {reason}")
        if n["n_skipped"] > len(n["skipped"]):
            lines.append(f"  - ... and {n['n_skipped'] - len(n['skipped'])} more (run.json lists them all)")
    return "\n".join(lines) + "\n"


def read_scores_csv(path: str | Path) -> pd.DataFrame:
    """``scores.csv`` with ids and subjects kept as text (leading zeros matter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.DtypeWarning)
        return pd.read_csv(path, dtype={"id": str, "subject": str})


def write_html_report(run_dir: str | Path, tables: Tables | None = None, **kwargs) -> Path:
    """See :func:`anomaly_bench.reporting.html.write_html_report`."""
    from anomaly_bench.reporting.html import write_html_report as _w

    return _w(run_dir, tables=tables, **kwargs)


__all__ = ["write_reports", "write_html_report", "build_tables", "summarise", "format_cell", "to_markdown",
           "to_latex", "latex_escape", "row_label", "read_jobs", "read_scores_csv", "Tables", "Block", "Cell",
           "GROUP_COLUMNS"]
