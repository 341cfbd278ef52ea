"""How much of a published-split AUC rests on test images that have a copy in training.

Reads a finished run of ``experiments/published_brain_tumor.yaml`` (or any run on a published split taken as given)
and, per method and seed, recomputes the inductive image AUC/AP on three test sets: all test images; without the
test images that have a byte-identical copy (same file content) in a training role (set B or A); and without every
test image whose duplicate group (exact, identical pHash or 32-px thumbnail correlation >= the card's ``dedup.corr``)
reaches a training role. It also gives the mean score of healthy test images with and without such a copy. The
subsets are chosen from the split alone (file contents and duplicate groups), never from scores or labels.

    python experiments/published_leakage_analysis.py runs/published_brain_tumor --data-root ../shared/data \
        --out results/published/brain_tumor/leakage_subsets.csv
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

TRAINING = ("healthy", "mixed")


def subsets(manifest: pd.DataFrame, root: Path) -> dict[str, set[str]]:
    """Test ids with an exact copy / a duplicate-group member in a training role."""
    used = manifest[manifest.role.isin((*TRAINING, "test"))]
    digest = {i: hashlib.sha256((root / i).read_bytes()).hexdigest() for i in used.id}
    train = used[used.role.isin(TRAINING)]
    test = used[used.role == "test"]
    train_digests = {digest[i] for i in train.id}
    train_groups = set(train.loc[train.dup_group >= 0, "dup_group"])
    return {"exact": {i for i in test.id if digest[i] in train_digests},
            "group": set(test.loc[test.dup_group.isin(train_groups), "id"])}


def analyse(run: Path, root: Path) -> pd.DataFrame:
    rows = []
    for scores_path in sorted(run.glob("jobs/*/*/seed*/scores_inductive.csv")):
        d = pd.read_csv(scores_path)
        dataset, method, seed = d.dataset.iloc[0], d.method.iloc[0], int(d.seed.iloc[0])
        leaked = subsets(pd.read_csv(run / "splits" / f"{dataset}_seed{seed}.csv"), root)
        for name, drop in (("all", set()), ("no_exact_copy", leaked["exact"]), ("no_copy_in_group", leaked["group"])):
            s = d[~d.id.isin(drop)]
            rows.append({"dataset": dataset, "method": method, "seed": seed, "test_set": name,
                         "n_healthy": int((s.label == 0).sum()), "n_diseased": int((s.label == 1).sum()),
                         "auc": roc_auc_score(s.label, s.score), "ap": average_precision_score(s.label, s.score),
                         "mean_score_healthy": s.loc[s.label == 0, "score"].mean(),
                         "mean_score_diseased": s.loc[s.label == 1, "score"].mean(),
                         "mean_score_healthy_dropped": d.loc[d.id.isin(drop) & (d.label == 0), "score"].mean()})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--dataset-folder", default="brain_tumor_mri", help="the card's folder under --data-root")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    df = analyse(a.run, a.data_root / a.dataset_folder)
    summary = df.groupby(["dataset", "method", "test_set"], sort=False).agg(
        seeds=("seed", "nunique"), n_healthy=("n_healthy", "first"), n_diseased=("n_diseased", "first"),
        auc_mean=("auc", "mean"), auc_sd=("auc", "std"), ap_mean=("ap", "mean"), ap_sd=("ap", "std"),
        healthy_score=("mean_score_healthy", "mean"), diseased_score=("mean_score_diseased", "mean"),
        dropped_healthy_score=("mean_score_healthy_dropped", "mean"))
    print(summary.round(4).to_string())
    if a.out:
        df.to_csv(a.out, index=False, float_format="%.6g")


if __name__ == "__main__":
    main()
