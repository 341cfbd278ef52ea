"""Figures of a run: ROC, precision-recall, score distributions and the anomaly-map gallery.

Figures use matplotlib's object API with the Agg canvas (no pyplot, no display, no global backend change) under
the ``seaborn-v0_8-whitegrid`` style, 150 dpi (gallery 110 dpi), PNGs quantised to 256 colours to stay small.
Curves: with one seed the exact curve; with several seeds the mean curve (vertical averaging on a fixed grid) and
a ±1 standard deviation band; legend AUC/AP = mean ± std over seeds. The gallery shows the same test images (ids
present in every method's ``maps.npz``; 6, or 4 with more than 4 methods) for every method: input with the
ground-truth contour, reconstruction (where the method has one), anomaly map (one colour scale per method).
Entry point :func:`write_figures`; file names come from :func:`safe_name` of the dataset (and setting).
"""

from __future__ import annotations

import io
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from anomaly_bench.harness.run_folder import RunFolder
from anomaly_bench.reporting.inputs import level_arrays, ordered_unique, scores_of
from anomaly_bench.reporting.tables import FAILED, Tables, primary_setting, row_label

log = logging.getLogger("anomaly_bench")

DPI = 150
GALLERY_DPI = 110  # the gallery holds many image panels: lower dpi keeps it under ~300 KB with 8 methods
STYLE = "seaborn-v0_8-whitegrid"


def safe_name(text: str) -> str:
    """A file-name-safe version of a dataset or setting name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"



# ============================================================================================ plumbing
def _new_figure(width: float, height: float):
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _style():
    return style.context(STYLE)


def _save(fig, path: Path, tight: bool = True, dpi: int = DPI) -> Path:
    """PNG quantised to a 256-colour palette (no dithering): a third of the RGBA size, same look."""
    if tight:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(path, format="PNG", optimize=True)
    return path


def _palette(labels: list[str], row_method: dict[str, str]) -> dict[str, tuple]:
    methods = ordered_unique(row_method[lab] for lab in labels)
    colors = sns.color_palette("colorblind", max(10, len(methods)))
    by_method = {m: colors[i % len(colors)] for i, m in enumerate(methods)}
    return {lab: by_method[row_method[lab]] for lab in labels}


def _row_keys(tables: Tables, scores: pd.DataFrame) -> dict[str, tuple[str, str]]:
    pairs = scores[["method", "selection"]].drop_duplicates().itertuples(index=False)
    keys = {row_label(m, s): (m, s) for m, s in pairs}
    ordered = [lab for lab in tables.rows if lab in keys] + [lab for lab in keys if lab not in tables.rows]
    return {lab: keys[lab] for lab in ordered}


# ============================================================================================ curves
def _curve_panel(ax, kind: str, per_row: dict[str, dict[int, pd.DataFrame]], level: str, colors, styles) -> bool:
    grid = np.linspace(0.0, 1.0, 201)
    drew, prevalence = False, []
    for lab, seeds in per_row.items():
        curves, summary = [], []
        for _seed, frame in sorted(seeds.items()):
            _, y, s, _ = level_arrays(frame, level)
            if len(np.unique(y)) < 2:
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, s)
                curves.append((fpr, tpr))
                summary.append(roc_auc_score(y, s))
            else:
                prec, rec, _ = precision_recall_curve(y, s)
                curves.append((rec, prec))
                summary.append(average_precision_score(y, s))
                prevalence.append(float(np.mean(y)))
        if not curves:
            continue
        name = "AUC" if kind == "roc" else "AP"
        text = f"{lab} ({name} {np.mean(summary):.3f}" + (f" ± {np.std(summary, ddof=1):.3f})" if len(summary) > 1
                                                            else ")")
        kw = dict(color=colors[lab], linestyle=styles[lab], linewidth=1.6, label=text)
        if len(curves) == 1:
            x, yv = curves[0]
            ax.plot(x, yv, drawstyle="steps-post" if kind == "pr" else "default", **kw)
        else:
            ys = []
            for x, yv in curves:
                if kind == "roc":
                    i = np.interp(grid, x, yv)
                    i[0] = 0.0
                else:  # interpolated precision: max precision at recall >= r
                    p_int = np.maximum.accumulate(yv)  # yv[j] over recall x[j], x non-increasing in j
                    i = np.interp(grid, x[::-1], p_int[::-1])
                ys.append(i)
            ys = np.asarray(ys)
            mean, sd = ys.mean(0), ys.std(0, ddof=1)
            ax.plot(grid, mean, **kw)
            ax.fill_between(grid, np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1), color=colors[lab], alpha=0.15,
                            linewidth=0)
        drew = True
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", linewidth=1, label="chance")
        ax.set_xlabel("False positive rate (1 − specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
    else:
        if prevalence:
            ax.axhline(float(np.mean(prevalence)), color="0.5", linestyle=":", linewidth=1, label="chance (prevalence)")
        ax.set_xlabel("Recall (sensitivity)")
        ax.set_ylabel("Precision")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=7, frameon=True)
    return drew


def _curve_figure(kind: str, dataset: str, setting: str, scores: pd.DataFrame, row_keys, colors, styles,
                  path: Path) -> Path | None:
    per_row = {lab: scores_of(scores, dataset, setting, *row_keys[lab]) for lab in row_keys}
    ran = scores[(scores["dataset"] == dataset) & (scores["setting"] == setting)]
    ran = {lab for lab, (m, sel) in row_keys.items() if ((ran["method"] == m) & (ran["selection"] == sel)).any()}
    failed = [lab for lab in row_keys if lab in ran and not per_row[lab]]
    per_row = {lab: d for lab, d in per_row.items() if d}
    if not per_row:
        return None
    frames = [f for d in per_row.values() for f in d.values()]
    levels = ["image"] + (["subject"] if any(f["subject"].duplicated().any() for f in frames) else [])
    with _style():
        fig = _new_figure(5.2 * len(levels), 5.0)
        drew = False
        for i, level in enumerate(levels):
            ax = fig.add_subplot(1, len(levels), i + 1)
            for lab in failed:  # legend entry only
                ax.plot([], [], color=colors[lab], linestyle=styles[lab], alpha=0.4, label=f"{lab} ({FAILED})")
            drew |= _curve_panel(ax, kind, per_row, level, colors, styles)
            what = "ROC" if kind == "roc" else "Precision–recall"
            ax.set_title(f"{what}: {dataset} ({setting}, {level} level)", fontsize=9)
        if not drew:
            return None
        return _save(fig, path)


def _scores_figure(dataset: str, setting: str, scores: pd.DataFrame, row_keys, path: Path) -> Path | None:
    labs = list(row_keys)
    if not labs:
        return None
    ncol = min(3, len(labs))
    nrow = math.ceil(len(labs) / ncol)
    with _style():
        fig = _new_figure(3.4 * ncol, 2.6 * nrow)
        any_drawn = False
        for i, lab in enumerate(labs):
            ax = fig.add_subplot(nrow, ncol, i + 1)
            seeds = scores_of(scores, dataset, setting, *row_keys[lab])
            if not seeds:
                ax.text(0.5, 0.5, FAILED, ha="center", va="center", transform=ax.transAxes, color="0.4")
                ax.set_title(lab, fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            seed = min(seeds)
            f = seeds[seed]
            s, y = f["score"].to_numpy(), f["label"].to_numpy()
            edges = np.histogram_bin_edges(s, bins=30)
            for cls, name, color in ((0, "healthy", "#0072B2"), (1, "diseased", "#D55E00")):
                v = s[y == cls]
                if len(v):
                    ax.hist(v, bins=edges, density=True, alpha=0.55, color=color, label=f"{name} (n={len(v)})")
            auc = roc_auc_score(y, s) if len(np.unique(y)) == 2 else math.nan
            ax.set_title(f"{lab} (seed {seed}, AUC {auc:.3f})", fontsize=8)
            ax.set_xlabel("anomaly score", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
            any_drawn = True
        fig.suptitle(f"Score distributions: {dataset} ({setting})", fontsize=10)
        return _save(fig, path) if any_drawn else None


# ============================================================================================ gallery
def maps_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """Why a job's ``maps.npz`` arrays cannot be drawn (maps not one finite (H, W) map per image, ids, labels or
    scores of another length), or None when they can."""
    images, maps = np.asarray(arrays["images"]), np.asarray(arrays["maps"])
    if images.ndim != 3:
        return f"images of shape {images.shape}, expected (n, H, W)"
    if maps.shape != images.shape:
        return f"maps of shape {maps.shape} for images of shape {images.shape}"
    for key in ("reconstructions", "masks"):
        if key in arrays and np.asarray(arrays[key]).shape != images.shape:
            return f"{key} of shape {np.asarray(arrays[key]).shape} for images of shape {images.shape}"
    for key in ("ids", "labels", "scores"):
        if key in arrays and len(np.atleast_1d(arrays[key])) != len(images):
            return f"{len(np.atleast_1d(arrays[key]))} {key} for {len(images)} images"
    if not np.all(np.isfinite(maps)):
        return f"{int((~np.isfinite(maps)).sum())} non-finite map values"
    return None


def load_maps(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of one job's ``maps.npz`` (ids as text), or None when unreadable, without maps or inconsistent
    (:func:`maps_problem`; logged with the path, which names the dataset, method and seed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        log.warning("gallery: skipping %s (%s); save ids as a string array, not objects", path, exc)
        return None
    if "maps" not in arrays or "images" not in arrays:
        return None
    problem = maps_problem(arrays)
    if problem:
        log.warning("gallery: skipping %s: %s", path, problem)
        return None
    n = len(arrays["images"])
    arrays["ids"] = np.asarray(arrays.get("ids", np.arange(n))).astype(str)
    arrays["labels"] = np.asarray(arrays.get("labels", np.full(n, -1)))
    return arrays


def gallery_problems(run_dir: str | Path) -> list[str]:
    """``dataset/method/seed<k>: why`` for every job whose ``maps.npz`` the gallery leaves out (report notes)."""
    out = []
    for jf in RunFolder(run_dir).job_folders():
        if not jf.maps_path.is_file():
            continue
        try:
            with np.load(jf.maps_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            problem = maps_problem(arrays) if {"maps", "images"} <= set(arrays) else None
        except (OSError, ValueError, EOFError) as exc:
            problem = f"unreadable ({exc})"
        if problem:
            out.append(f"{jf.path.parents[1].name}/{jf.path.parent.name}/{jf.path.name}: {problem}")
    return out


def _job_maps(run_dir: Path, dataset: str, methods: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """method -> maps of its lowest seed with a readable, consistent maps.npz."""
    out = {}
    for method in methods:
        for jf in RunFolder(run_dir).seed_folders(dataset, method):
            if not jf.maps_path.exists():
                continue
            arrays = load_maps(jf.maps_path)
            if arrays is not None:
                arrays["_seed"] = np.asarray(jf.path.name)
                out[method] = arrays
                break
    return out


def choose_gallery_ids(per_method: dict[str, dict[str, np.ndarray]], n: int = 6) -> list[str]:
    """Ids in every method's maps, half diseased and half healthy where possible, in the first method's order."""
    if not per_method:
        return []
    first = next(iter(per_method.values()))
    common = set(first["ids"].tolist())
    for arrays in per_method.values():
        common &= set(arrays["ids"].tolist())
    ordered = [(i, int(lab)) for i, lab in zip(first["ids"].tolist(), first["labels"].tolist()) if i in common]
    dis = [i for i, lab in ordered if lab == 1]
    hea = [i for i, lab in ordered if lab != 1]
    k_dis = min(len(dis), (n + 1) // 2)
    k_hea = min(len(hea), n - k_dis)
    k_dis = min(len(dis), n - k_hea)
    return dis[:k_dis] + hea[:k_hea]


def _gallery_figure(run_dir: Path, dataset: str, methods: list[str], path: Path, n: int) -> Path | None:
    per_method = _job_maps(run_dir, dataset, methods)
    if len(per_method) > 4:  # many methods: fewer columns keep the file printable and small
        n = min(n, 4)
    ids = choose_gallery_ids(per_method, n)
    if not ids:
        if per_method:
            log.warning("gallery %s: no test image is in every method's maps.npz; skipped", dataset)
        return None
    first = next(iter(per_method.values()))
    rows: list[tuple[str, str, str]] = [("input", next(iter(per_method)), "images")]
    for m, arrays in per_method.items():
        if "reconstructions" in arrays:
            rows.append((f"{m}\nreconstruction", m, "reconstructions"))
        rows.append((f"{m}\nanomaly map", m, "maps"))
    cell = 1.15
    with _style():
        fig = _new_figure(cell * len(ids) + 1.2, cell * len(rows) + 0.7)
        for r, (row_name, m, key) in enumerate(rows):
            arrays = per_method[m]
            pos = {i: k for k, i in enumerate(arrays["ids"].tolist())}
            sel = [pos[i] for i in ids]
            data = np.asarray(arrays[key])[sel]
            if key == "maps":
                lo, hi = np.percentile(data, [1, 99])
                vmin, vmax, cmap = float(lo), float(hi if hi > lo else lo + 1e-6), "inferno"
            else:
                vmin, vmax, cmap = -1.0, 1.0, "gray"
            masks = arrays.get("masks")
            for c, k in enumerate(sel):
                ax = fig.add_subplot(len(rows), len(ids), r * len(ids) + c + 1)
                ax.imshow(data[c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                if key == "maps" and "scores" in arrays and len(arrays["scores"]) > k:
                    ax.text(0.03, 0.03, f"score {float(arrays['scores'][k]):.3g}", color="white", fontsize=5,
                            transform=ax.transAxes, va="bottom")
                if masks is not None and np.asarray(masks[k]).any() and masks[k].shape == data[c].shape:
                    ax.contour(np.asarray(masks[k], dtype=float), levels=[0.5], colors="cyan", linewidths=0.7)
                ax.set_axis_off()
                if r == 0:
                    lab = int(first["labels"][list(first["ids"]).index(ids[c])])
                    state = {0: "healthy", 1: "diseased"}.get(lab, "?")
                    ax.set_title(f"{ids[c][:18]}\n{state}", fontsize=6, color="#D55E00" if lab == 1 else "black")
                if c == 0:
                    ax.text(-0.06, 0.5, row_name, fontsize=6, ha="right", va="center", transform=ax.transAxes)
        height = cell * len(rows) + 0.7
        fig.suptitle(f"Anomaly maps: {dataset} (same test images for every method; cyan: ground-truth mask)",
                     fontsize=8, y=1 - 0.08 / height, va="top")
        fig.subplots_adjust(left=1.2 / (cell * len(ids) + 1.2), right=0.99, bottom=0.01, top=1 - 0.62 / height,
                            wspace=0.04, hspace=0.12)
        return _save(fig, path, tight=False, dpi=GALLERY_DPI)


# ============================================================================================ all figures
def write_figures(run_dir: str | Path, tables: Tables, scores: pd.DataFrame | None, n_gallery: int = 6
                  ) -> dict[str, Path]:
    """roc_/pr_/scores_<dataset>[_<setting>].png and maps_<dataset>.png; returns {file name: path}."""
    run_dir = Path(run_dir)
    written: dict[str, Path] = {}
    datasets = ordered_unique(b.dataset for b in tables.blocks)
    if scores is not None and len(scores):
        row_keys = _row_keys(tables, scores)
        row_method = {lab: mk[0] for lab, mk in row_keys.items()}
        colors = _palette(list(row_keys), row_method)
        styles = {lab: "--" if mk[1] != "last" else "-" for lab, mk in row_keys.items()}
        for ds in datasets:
            settings = ordered_unique(scores.loc[scores["dataset"] == ds, "setting"])
            if not settings:
                continue
            primary = primary_setting(settings)
            for setting in [primary] + [s for s in settings if s != primary]:
                names = [safe_name(ds)] if setting == primary else []
                if len(settings) > 1:
                    names.append(f"{safe_name(ds)}_{safe_name(setting)}")
                for kind in ("roc", "pr", "scores"):
                    target = run_dir / f"{kind}_{names[0]}.png"
                    if kind == "scores":
                        p = _scores_figure(ds, setting, scores, row_keys, target)
                    else:
                        p = _curve_figure(kind, ds, setting, scores, row_keys, colors, styles, target)
                    if p is None:
                        continue
                    written[p.name] = p
                    for extra in names[1:]:
                        q = run_dir / f"{kind}_{extra}.png"
                        q.write_bytes(p.read_bytes())
                        written[q.name] = q
    methods = ordered_unique(m for m, _ in tables.row_keys.values())
    for ds in datasets:
        p = _gallery_figure(run_dir, ds, methods, run_dir / f"maps_{safe_name(ds)}.png", n_gallery)
        if p is not None:
            written[p.name] = p
    return written
