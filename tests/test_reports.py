"""Report generation on a synthetic run folder: table numbers, bold, failed jobs, LaTeX syntax, figures, HTML."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_bench.evaluation.metrics import compute_metrics, pixel_metrics
from anomaly_bench.evaluation.stats import bootstrap_mean_auc_ci, holm, paired_mean_auc_test
from anomaly_bench.reporting.figures import choose_gallery_ids
from anomaly_bench.reporting.html import write_html_report
from anomaly_bench.reporting.inputs import read_jobs
from anomaly_bench.reporting.markdown import latex_escape
from anomaly_bench.reporting.tables import build_tables, format_cell
from anomaly_bench.reporting.write import write_reports

N_BOOT = 200
METHODS = {"medai_anomalypro": 1.6, "padim": 1.0, "ganomaly": 0.5}  # effect size -> expected AUC order


def _subjects(dataset: str):
    """(ids, subjects, labels) of the scored images of a dataset/setting."""
    if dataset == "brain_mri":  # 3 slices per subject
        subj = np.repeat([f"sub{i:02d}" for i in range(16)], 3)
        ids = np.array([f"{s}__{k}" for s, k in zip(subj, np.tile(range(3), 16))])
        labels = np.repeat(np.arange(16) % 2, 3)
    else:
        ids = np.array([f"img{i:03d}" for i in range(40)])
        subj, labels = ids.copy(), np.arange(40) % 2
    return ids, subj, labels


def _make_run(root, seeds=(0, 1, 2), methods=METHODS, datasets=("brain_mri", "chest_xr"), aucp=True, failures=True):
    rng = np.random.default_rng(0)
    rows, jobs = [], []
    for ds in datasets:
        settings = ("inductive", "transductive") if ds == "brain_mri" else ("inductive",)
        for method, eff in methods.items():
            for seed in seeds:
                failed = failures and ((ds == "chest_xr" and method == "ganomaly") or
                                       (ds == "brain_mri" and method == "padim" and seed == 2))
                job_dir = root / "jobs" / ds / method / f"seed{seed}"
                job_dir.mkdir(parents=True)
                meta = {"status": "failed" if failed else "done", "error": "non-finite loss" if failed else None,
                        "method": method, "dataset": ds, "seed": seed, "fit_seconds": 1.5}
                (job_dir / "job.json").write_text(json.dumps(meta))
                if failed:  # the runner's placeholder row
                    rows.append({"dataset": ds, "setting": "inductive", "method": method, "selection": "last",
                                 "seed": seed, "id": "", "subject": "", "label": -1, "score": np.nan})
                    continue
                sels = ("last", "aucp") if (aucp and method == "medai_anomalypro") else ("last",)
                for setting in settings:
                    ids, subj, labels = _subjects(ds)
                    for sel in sels:
                        e = eff + (0.4 if sel == "aucp" else 0.0)
                        sc = rng.normal(size=len(ids)) + e * labels
                        rows += [{"dataset": ds, "setting": setting, "method": method, "selection": sel, "seed": seed,
                                  "id": i, "subject": s, "label": int(lab), "score": float(v)}
                                 for i, s, lab, v in zip(ids, subj, labels, sc)]
                ids, _, labels = _subjects(ds)
                pick = np.r_[0:3, len(ids) - 3:len(ids)]
                arrays = {"images": rng.uniform(-1, 1, (6, 32, 32)).astype(np.float32),
                          "maps": rng.random((6, 32, 32)).astype(np.float32),
                          "labels": labels[pick], "ids": ids[pick], "scores": rng.random(6)}
                if method != "padim":
                    arrays["reconstructions"] = rng.uniform(-1, 1, (6, 32, 32)).astype(np.float32)
                if ds == "brain_mri":
                    masks = np.zeros((6, 32, 32), bool)
                    masks[labels[pick] == 1, 8:20, 10:22] = True
                    arrays["masks"] = masks
                np.savez_compressed(job_dir / "maps.npz", **arrays)
                jobs.append(meta)
    if failures:  # a failed job that left no scores at all
        d = root / "jobs" / "chest_xr" / "alad" / "seed0"
        d.mkdir(parents=True)
        (d / "job.json").write_text(json.dumps({"status": "failed", "error": "CUDA out of memory", "method": "alad",
                                                "dataset": "chest_xr", "seed": 0}))
    (root / "experiment.yaml").write_text("name: synthetic\nthreshold_rule: youden\nseeds: [0, 1, 2]\n")
    (root / "run.json").write_text(json.dumps({"git_commit": "abc123def", "versions": {"torch": "2.x"},
                                               "data_fingerprints": {"brain_mri": "sha256:feed"}}))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    scores = _make_run(root)
    scores.to_csv(root / "scores.csv", index=False)  # as the runner does
    metrics = compute_metrics(scores)
    pix = []  # pixel metrics, as the runner adds them from job.json
    for meta in sorted(root.glob("jobs/brain_mri/*/seed*/job.json")):
        job = json.loads(meta.read_text())
        if job["status"] != "done":
            continue
        with np.load(meta.parent / "maps.npz") as z:
            res = pixel_metrics(z["maps"] + z["masks"] * (0.5 if job["method"] != "ganomaly" else 0.0), z["masks"])
        pix += [{"dataset": "brain_mri", "setting": "inductive", "method": job["method"], "selection": "last",
                 "seed": job["seed"], "level": "pixel", "metric": k, "value": v} for k, v in res.items()]
    metrics = pd.concat([metrics, pd.DataFrame(pix)], ignore_index=True)
    written = write_reports(root, metrics, scores, n_boot=N_BOOT)
    return root, scores, metrics, written


# ----------------------------------------------------------------------------- parsing helpers
def parse_md(text: str) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """{block title: (headers, {row label: cells})} of table.md."""
    blocks, title, cur = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            cur = None
        elif line.startswith("|") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cur is None:
                cur = (cells[1:], {})
                blocks[title] = cur
            elif not set(line) <= set("|-: "):
                cur[1][cells[0]] = cells[1:]
    return blocks


def cell(blocks, title, row, header):
    headers, rows = blocks[title]
    return rows[row][headers.index(header)]


def _tables(root, scores, metrics):
    """The table model write_reports built for the ``run`` fixture."""
    return build_tables(metrics, scores, jobs=read_jobs(root), n_boot=N_BOOT)


def unbold(text: str) -> str:
    return text[2:-2] if text.startswith("**") and text.endswith("**") else text


def expected_cell(metrics, ds, method, metric, setting="inductive", level="image", selection="last"):
    v = metrics[(metrics.dataset == ds) & (metrics.setting == setting) & (metrics.level == level)
                & (metrics.method == method) & (metrics.selection == selection) & (metrics.metric == metric)]
    vals = v.sort_values("seed")["value"].to_numpy()
    fin = vals[np.isfinite(vals)]
    text = f"{fin.mean():.3f}" if len(fin) == 1 else f"{fin.mean():.3f} ± {fin.std(ddof=1):.3f}"
    return text + ("†" if len(fin) < len(vals) else ""), fin.mean()


# ----------------------------------------------------------------------------- tables
def test_files_written(run):
    root, _, _, written = run
    for name in ("metrics.csv", "table.md", "table.tex", "table_paper.md", "table_paper.tex", "table_paper.csv",
                 "table_full.csv", "report.html", "roc_brain_mri.png", "roc_brain_mri_inductive.png",
                 "roc_brain_mri_transductive.png", "roc_chest_xr.png", "pr_brain_mri.png", "pr_chest_xr.png",
                 "scores_brain_mri.png", "scores_chest_xr.png", "maps_brain_mri.png", "maps_chest_xr.png"):
        assert (root / name).is_file(), name
        assert name in written
    assert not (root / "roc_chest_xr_inductive.png").exists()  # one setting: no per-setting copy
    m = pd.read_csv(root / "metrics.csv")
    assert list(m.columns) == ["dataset", "setting", "method", "selection", "seed", "level", "metric", "value"]


def test_markdown_numbers_are_mean_std_over_seeds(run):
    root, _, metrics, _ = run
    blocks = parse_md((root / "table.md").read_text())
    assert {"chest_xr", "brain_mri (inductive)", "brain_mri (inductive, subject level)",
            "brain_mri (transductive)", "brain_mri (transductive, subject level)"} <= set(blocks)
    other = parse_md((root / "table_other_selection.md").read_text())
    for title, ds, setting, level in (("chest_xr", "chest_xr", "inductive", "image"),
                                      ("brain_mri (transductive, subject level)", "brain_mri", "transductive",
                                       "subject")):
        for method, sel, label in (("medai_anomalypro", "last", "medai_anomalypro"),
                                   ("medai_anomalypro", "aucp", "medai_anomalypro (AUCp)"), ("padim", "last", "padim")):
            # the experiment's rule (selection: last) in table.md, the other rule in the analysis table only
            where = other if sel == "aucp" else blocks
            assert label not in (blocks if sel == "aucp" else other)[title][1]
            for metric, header in (("auc", "AUC"), ("precision", "Precision"), ("recall", "Recall"),
                                   ("specificity", "Specificity"), ("f1", "F1")):
                want, _ = expected_cell(metrics, ds, method, metric, setting, level, sel)
                if ds == "brain_mri" and method == "padim":  # seed 2 failed (placeholder row only in inductive)
                    want = want.rstrip("†") + "†"
                assert unbold(cell(where, title, label, header)) == want, (title, label, header)
    assert "for analysis only" in (root / "table_other_selection.md").read_text()


def test_bold_marks_the_best_mean(run):
    root, _, metrics, _ = run
    blocks = parse_md((root / "table.md").read_text())
    headers, rows = blocks["chest_xr"]
    for metric, header in (("auc", "AUC"), ("f1", "F1"), ("specificity", "Specificity")):
        means = {}
        for label, (method, sel) in {"medai_anomalypro": ("medai_anomalypro", "last"),
                                     "padim": ("padim", "last")}.items():
            means[label] = round(expected_cell(metrics, "chest_xr", method, metric, selection=sel)[1], 3)
        best = max(means.values())
        for label, mean in means.items():
            assert rows[label][headers.index(header)].startswith("**") == (mean == best), (header, label)
    # the AUCp row has the largest effect but is not in the main table, so it cannot take the bold there
    assert "medai_anomalypro (AUCp)" not in rows
    assert cell(blocks, "chest_xr", "medai_anomalypro", "AUC").startswith("**")
    assert "**" not in "".join(rows["ganomaly"])


def test_pixel_level_block(run):
    root, _, metrics, _ = run
    blocks = parse_md((root / "table.md").read_text())
    headers, rows = blocks["brain_mri (inductive, pixel level)"]
    assert headers == ["Pixel AUROC", "Best Dice"]
    v = metrics[(metrics.level == "pixel") & (metrics.method == "ganomaly") & (metrics.metric == "best_dice")]
    assert unbold(rows["ganomaly"][1]) == f"{v.value.mean():.3f} ± {v.value.std(ddof=1):.3f}"
    assert rows["medai_anomalypro"][0].startswith("**") or rows["padim"][0].startswith("**")
    assert not rows["ganomaly"][0].startswith("**")  # its maps ignore the lesions
    assert rows["padim"][0].endswith("†") or rows["padim"][0].endswith("†**")  # seed 2 failed
    assert "medai_anomalypro (AUCp)" not in rows  # pixel metrics only for the last checkpoint here


def test_failed_jobs_show_failed_and_partial_failures_dagger(run):
    root, _, _, _ = run
    blocks = parse_md((root / "table.md").read_text())
    for header in ("AUC", "AUC 95% CI", "Precision", "F1"):
        assert cell(blocks, "chest_xr", "ganomaly", header) == "failed"
        assert cell(blocks, "chest_xr", "alad", header) == "failed"  # job.json only, no scores
    assert "alad" not in blocks["brain_mri (inductive)"][1]  # did not run there: no empty row
    for title in ("brain_mri (inductive)", "brain_mri (transductive)", "brain_mri (transductive, subject level)"):
        assert unbold(cell(blocks, title, "padim", "AUC")).endswith("†"), title
    assert cell(blocks, "brain_mri (inductive)", "ganomaly", "AUC")[-1].isdigit()
    md = (root / "table.md").read_text()
    assert "some seeds failed" in md


def test_ci_and_p_columns(run):
    root, scores, metrics, _ = run
    blocks = parse_md((root / "table.md").read_text())
    assert cell(blocks, "chest_xr", "medai_anomalypro", "p vs medai_anomalypro") == "ref"

    def frame(method, sel, seed=0, ds="chest_xr"):
        f = scores[(scores.dataset == ds) & (scores.method == method) & (scores.selection == sel)
                   & (scores.seed == seed) & (scores.setting == "inductive")]
        return f.sort_values("id")

    runs = [frame("medai_anomalypro", "last", seed) for seed in (0, 1, 2)]
    _, lo, hi = bootstrap_mean_auc_ci([f.label for f in runs], [f.score for f in runs], n_boot=N_BOOT, seed=0)
    assert cell(blocks, "chest_xr", "medai_anomalypro", "AUC 95% CI") == f"[{lo:.3f}, {hi:.3f}]"
    aucs = [roc_auc_score(f.label, f.score) for f in runs]
    assert cell(blocks, "chest_xr", "medai_anomalypro", "AUC range") == f"{min(aucs):.3f}–{max(aucs):.3f}"
    # raw p: paired bootstrap over all three common seeds (not DeLong on seed 0), before the table-wide Holm
    tables = _tables(root, scores, metrics)
    chest = next(b for b in tables.blocks if b.title == "chest_xr")
    ref = [frame("medai_anomalypro", "last", seed) for seed in (0, 1, 2)]
    pad = [frame("padim", "last", seed) for seed in (0, 1, 2)]
    _, want = paired_mean_auc_test([f.label for f in ref], [f.score for f in pad], [f.score for f in ref],
                                   n_boot=N_BOOT, seed=0)
    assert chest.p_raw["padim"] == pytest.approx(want)
    assert cell(blocks, "chest_xr", "ganomaly", "p vs medai_anomalypro") == "n/a"
    # subject level: CI on subject means; padim's seed 2 failed, so its CI averages seeds 0 and 1
    aggs = [frame("padim", "last", seed, ds="brain_mri").groupby("subject").agg(score=("score", "mean"),
                                                                                label=("label", "max"))
            for seed in (0, 1)]
    _, lo, hi = bootstrap_mean_auc_ci([a.label for a in aggs], [a.score for a in aggs], n_boot=N_BOOT, seed=0)
    got = cell(blocks, "brain_mri (inductive, subject level)", "padim", "AUC 95% CI")
    assert got == f"[{lo:.3f}, {hi:.3f}]"
    # image level with 3 slices per subject: subjects are resampled whole
    runs = [frame("padim", "last", seed, ds="brain_mri") for seed in (0, 1)]
    _, lo, hi = bootstrap_mean_auc_ci([f.label for f in runs], [f.score for f in runs], n_boot=N_BOOT, seed=0,
                                      groups_list=[f.subject for f in runs])
    assert cell(blocks, "brain_mri (inductive)", "padim", "AUC 95% CI") == f"[{lo:.3f}, {hi:.3f}]"


def test_holm_over_the_whole_table(run):
    """Every p of the main table is one Holm family: the printed p's are holm() of all raw p's of all blocks."""
    root, scores, metrics, _ = run
    tables = _tables(root, scores, metrics)
    family = [(b, lab) for b in tables.blocks for lab in b.p_raw]
    assert len({b.title for b, _ in family}) >= 4  # image and subject levels, both settings, both datasets
    adj = holm([b.p_raw[lab] for b, lab in family])
    for (b, lab), p in zip(family, adj):
        want = "n/a" if not np.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")
        assert b.cells[lab]["p"].text == want, (b.title, lab)
    per_block = [holm([b.p_raw[lab] for lab in b.p_raw]) for b in tables.blocks if b.p_raw]
    assert not np.allclose(np.concatenate(per_block), adj, equal_nan=True)  # the old per-block family differs
    assert "over all" in " ".join(tables.notes) and "every block together" in " ".join(tables.notes)


def _seed_scores(rows_by_method: dict, n: int = 200, dataset: str = "chest_xr") -> pd.DataFrame:
    """A scores frame: {method: [scores of seed 0, seed 1, ...]} on n images per seed (labels alternate), each
    seed on its own image ids (seeds share half their test images, as splits of different seeds do)."""
    labels = np.arange(n) % 2
    out = []
    for method, per_seed in rows_by_method.items():
        for seed, sc in enumerate(per_seed):
            ids = [f"img{i + seed * n // 2:04d}" for i in range(n)]
            out.append(pd.DataFrame({"dataset": dataset, "setting": "inductive", "method": method, "selection": "last",
                                     "seed": seed, "id": ids, "subject": ids, "label": labels, "score": sc}))
    return pd.concat(out, ignore_index=True)


def _block_cells(scores: pd.DataFrame, reference="ref", n_boot=1000):
    t = build_tables(compute_metrics(scores), scores, reference_method=reference, n_boot=n_boot)
    return t, t.blocks[0]


def test_ci_covers_seed_to_seed_variation():
    rng = np.random.default_rng(21)
    y = np.arange(300) % 2
    sc = [rng.normal(size=300) + d * y for d in (-0.95, 0.82, 1.35)]  # seed AUCs about 0.25, 0.72, 0.83
    t, b = _block_cells(_seed_scores({"m": sc}, n=300), reference=None)
    aucs = sorted(roc_auc_score(y, s) for s in sc)
    assert aucs[0] < 0.3 and aucs[2] > 0.79
    lo, hi = (float(x) for x in b.cells["m"]["ci"].text.strip("[]").split(", "))
    assert lo < 0.5 and hi > 0.75  # the images-only interval of the mean was about [0.56, 0.62]
    assert dict(b.columns)["ci"] == "AUC 95% CI"
    assert b.cells["m"]["range"].text == f"{aucs[0]:.3f}–{aucs[2]:.3f}"
    # identical seeds: the image-only bootstrap of one seed, and the header says so only for a single seed
    _, b_same = _block_cells(_seed_scores({"m": [sc[1]] * 3}, n=300), reference=None)
    _, b_one = _block_cells(_seed_scores({"m": [sc[1]]}, n=300), reference=None)
    assert b_same.cells["m"]["ci"].text == b_one.cells["m"]["ci"].text
    assert dict(b_one.columns)["ci"] == "AUC 95% CI (images only)"
    assert b_one.cells["m"]["range"].text == "1 seed"


def test_p_uses_every_common_seed():
    """Seed 0: the method ties with the reference (same scores); seeds 1, 2: it is far better. The old first-seed
    DeLong p was 1; over all seeds p is small (about 1/27: the replicates that draw seed 0 three times)."""
    rng = np.random.default_rng(22)
    y = np.arange(200) % 2
    ref = [rng.normal(size=200) + 0.3 * y for _ in range(3)]
    better = [ref[0]] + [r + 3.0 * y for r in ref[1:]]
    _, b = _block_cells(_seed_scores({"ref": ref, "m": better}))
    p = b.cells["m"]["p"].text
    assert p == "<0.001" or float(p) < 0.05
    assert b.p_raw["m"] == pytest.approx(1 / 27, abs=0.012)
    _, b_tie = _block_cells(_seed_scores({"ref": ref, "m": [r * 2 + 1 for r in ref]}))  # same ranking every seed
    assert b_tie.cells["m"]["p"].text == "1.000"


def _strip_escaped(tex: str) -> str:
    return re.sub(r"\\[{}_%&#$]", "", tex)


def test_latex_is_syntactically_sound(run):
    root, _, _, _ = run
    for name in ("table.tex", "table_paper.tex"):
        tex = (root / name).read_text()
        body = _strip_escaped(tex)
        depth = 0
        for ch in body:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, name
        assert depth == 0, name
        assert tex.count("\\begin{table}") == tex.count("\\end{table}") == 1
        n_tab = tex.count("\\begin{tabular}")
        assert n_tab >= 1
        for cmd in ("\\toprule", "\\midrule", "\\bottomrule", "\\end{tabular}"):
            assert tex.count(cmd) == n_tab, (name, cmd)
        assert tex.count("$") % 2 == 0
        for part in tex.split("\\begin{tabular}")[1:]:
            part = part.split("\\end{tabular}")[0]
            assert "_" not in re.sub(r"\\_", "", part), name  # underscores escaped
            ncol = len(re.match(r"\{([lc]+)\}", part).group(1))
            header = part.split("\\midrule")[0].strip().splitlines()[-1]
            assert header.count("&") == ncol - 1
            for line in part.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines():
                assert line.count("&") == ncol - 1 and line.endswith("\\\\"), line
    tex = (root / "table.tex").read_text()
    assert tex.count("\\begin{tabular}") == 3  # 5 dataset blocks, 2 side by side
    assert "\\textbf{" in tex and "medai\\_anomalypro" in tex and "(AUCp)" not in tex and "$\\pm$" in tex
    assert "\\cmidrule(lr){2-9}" in tex and "\\multicolumn{8}{c}{chest\\_xr}" in tex
    assert "$<$0.001" in tex or re.search(r"& [01]\.\d{3} \\\\", tex)


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 ±") == r"a\_b \& 50\% \#1 $\pm$"
    assert latex_escape("<0.001") == r"$<$0.001"


def test_paper_and_full_tables(run):
    root, _, metrics, _ = run
    paper = pd.read_csv(root / "table_paper.csv")
    r = paper[(paper.method == "padim") & (paper.dataset == "brain_mri")].iloc[0]
    assert r.level == "subject" and r.setting == "inductive"
    _, mean = expected_cell(metrics, "brain_mri", "padim", "specificity", level="subject")
    assert r.specificity_mean == pytest.approx(mean)
    assert r.n_seeds == 2 and r.n_failed == 1
    md = (root / "table_paper.md").read_text()
    assert "| Method | Dataset | AUC | Precision/Specificity | F1 |" in md
    full = pd.read_csv(root / "table_full.csv")
    assert {"auc", "ap", "threshold", "accuracy", "n_pos", "n_nonfinite"} <= set(full.metric)
    one = full[(full.dataset == "chest_xr") & (full.label == "padim") & (full.metric == "ap")
               & (full.level == "image")].iloc[0]
    want = metrics[(metrics.dataset == "chest_xr") & (metrics.method == "padim") & (metrics.metric == "ap")]
    assert one["mean"] == pytest.approx(want.value.mean()) and one["std"] == pytest.approx(want.value.std(ddof=1))


def test_format_cell():
    assert format_cell([0.8, 0.82, 0.84]) == "0.820 ± 0.020"
    assert format_cell([0.8123]) == "0.812"
    assert format_cell([np.nan, np.nan]) == "failed"
    assert format_cell([0.8, np.nan, 0.9]) == "0.850 ± 0.071†"


# ----------------------------------------------------------------------------- figures
def test_pngs_readable_and_small(run):
    root, _, _, _ = run
    pngs = sorted(root.glob("*.png"))
    assert len(pngs) >= 10
    for p in pngs:
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200, p.name
        assert img[..., :3].std() > 0.01, p.name  # not blank
        assert p.stat().st_size < 300_000, (p.name, p.stat().st_size)


def test_gallery_ids_are_common_and_balanced():
    a = {"ids": np.array(["x1", "x2", "h1", "h2", "h3", "x3"]), "labels": np.array([1, 1, 0, 0, 0, 1])}
    b = {"ids": np.array(["h1", "x2", "h3", "x3", "h2", "zz"]), "labels": np.array([0, 1, 0, 1, 0, 0])}
    ids = choose_gallery_ids({"m1": a, "m2": b}, n=4)
    assert ids == ["x2", "x3", "h1", "h2"]
    assert choose_gallery_ids({"m1": a, "m2": b}, n=6) == ["x2", "x3", "h1", "h2", "h3"]
    assert choose_gallery_ids({}, 4) == []


# ----------------------------------------------------------------------------- HTML
class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tables, self.links, self.text = [], 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "table":
            self.tables += 1
        elif tag in ("link", "script") or (tag == "a" and a.get("href")):
            self.links.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _check_html(root):
    p = _Collect()
    p.feed((root / "report.html").read_text())
    figs = {f.read_bytes() for f in root.glob("*.png")}  # identical copies are embedded once
    assert len(p.imgs) == len(figs) >= 10
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in p.imgs)
    assert not p.links  # self-contained
    text = " ".join(p.text)
    assert p.tables >= 6
    for needle in ("abc123def", "sha256:feed", "threshold_rule: youden", "CUDA out of memory", "failed",
                   "p vs medai_anomalypro"):
        assert needle in text, needle
    return text


def test_html_report_embedded_and_rebuildable(run):
    root, _, _, _ = run
    text = _check_html(root)
    assert "Youden" in text  # threshold rule read from experiment.yaml
    (root / "report.html").unlink()
    write_html_report(root, n_boot=50)  # standalone: rebuilt from metrics.csv and scores.csv
    _check_html(root)


# ----------------------------------------------------------------------------- small runs
def test_one_seed_one_method(tmp_path):
    scores = _make_run(tmp_path, seeds=(0,), methods={"padim": 1.0}, datasets=("chest_xr",), aucp=False,
                       failures=False)
    write_reports(tmp_path, compute_metrics(scores), scores, n_boot=50)
    blocks = parse_md((tmp_path / "table.md").read_text())
    headers, rows = blocks["chest_xr"]
    assert list(rows) == ["padim"]
    assert "p vs medai_anomalypro" not in headers  # no reference method in this run
    auc = rows["padim"][headers.index("AUC")]
    assert re.fullmatch(r"0\.\d{3}", auc)  # one seed: the value alone, no bold
    assert mpimg.imread(tmp_path / "roc_chest_xr.png").ndim == 3


def test_from_scores_csv_alone(tmp_path):
    scores = _make_run(tmp_path, seeds=(0, 1), methods={"padim": 1.0}, datasets=("chest_xr",), aucp=False,
                       failures=False)
    scores.to_csv(tmp_path / "scores.csv", index=False)
    (tmp_path / "experiment.yaml").write_text("threshold_rule: equal_error\n")
    written = write_reports(tmp_path, plots=False, html=False)  # metrics computed here with the run's rule
    assert "table.md" in written and "roc_chest_xr.png" not in written
    m = pd.read_csv(tmp_path / "metrics.csv")
    want = compute_metrics(scores, threshold_rule="equal_error")
    assert np.allclose(m.value.to_numpy(), want.value.to_numpy(), equal_nan=True)
    assert "TPR ≈ 1 − FPR" in (tmp_path / "table.md").read_text()


def test_metrics_only_and_reference_param(tmp_path):
    scores = _make_run(tmp_path, seeds=(0, 1), methods={"padim": 1.0, "ganomaly": 0.4}, datasets=("chest_xr",),
                       aucp=False, failures=False)
    metrics = compute_metrics(scores)
    write_reports(tmp_path, metrics, None, plots=False)  # scores.csv absent: no CI/p columns
    headers, _ = parse_md((tmp_path / "table.md").read_text())["chest_xr"]
    assert "AUC 95% CI" not in headers and not any(h.startswith("p vs") for h in headers)
    write_reports(tmp_path, metrics, scores, reference_method="ganomaly", n_boot=50, plots=False, html=False)
    blocks = parse_md((tmp_path / "table.md").read_text())
    assert cell(blocks, "chest_xr", "ganomaly", "p vs ganomaly") == "ref"
    assert re.fullmatch(r"<0\.001|[01]\.\d{3}", cell(blocks, "chest_xr", "padim", "p vs ganomaly"))
