"""The notes printed under every table: what a cell is, which threshold and checkpoint rule the table uses, how
the CI and the p column are computed, and the marks (failed jobs, methods not trained on set A)."""

from __future__ import annotations

from anomaly_bench.reporting.summary import DAGGER, FAILED

#: Mark of a transductive cell whose method never trained on set A (for it, A is just another unseen set).
NOT_ON_A = "§"

SELECTION_TEXT = {
    "last": "the last checkpoint (the model at the end of training)",
    "aucp": "the checkpoint with the highest pseudo-AUC on held-out parts of A and B (no labels)",
}


def threshold_note(threshold_rule) -> str | None:
    if threshold_rule is None:
        return None
    if threshold_rule == "holdout_healthy":
        return ("Precision, recall (sensitivity), specificity and F1 at a label-free threshold, per job: the "
                "`threshold_specificity` quantile (experiment.yaml; default 0.95) of the job's scores on its "
                "held-out healthy images (split role holdout_healthy: never trained on, never tested), so about that "
                "specificity is expected on healthy images like set B; no test image or label sets it. "
                "Score ≥ threshold = anomalous. Youden's test-tuned threshold is an oracle (it reads the test "
                "labels and is optimistic): it is only in metrics.csv and table_full.csv (oracle_threshold, "
                "oracle_f1).")
    rule = {"youden": "Youden's J (max TPR − FPR)",
            "equal_error": "TPR ≈ 1 − FPR (the official HealthyGAN Find_Optimal_Cutoff)"}.get(
        str(threshold_rule), f"fixed threshold {threshold_rule}")
    oracle = "" if str(threshold_rule) not in ("youden", "equal_error") else (
        " This threshold is tuned on the test labels (an oracle): the thresholded metrics are optimistic; "
        "`threshold_rule: holdout_healthy` gives label-free ones.")
    return (f"Precision, recall (sensitivity), specificity and F1 at the threshold chosen by {rule}, "
            f"per seed, on the evaluated set; score ≥ threshold = anomalous.{oracle}")


def selection_note(selection_rule: str | None) -> str | None:
    if selection_rule is None:
        return None
    other = "aucp" if selection_rule == "last" else "last"
    return (f"Checkpoint rule, fixed in the experiment before the run (`selection: {selection_rule}`): "
            f"{SELECTION_TEXT.get(selection_rule, selection_rule)}; methods that save no checkpoints show their only "
            f"model. Rows under the other rule ({other}) are in table_other_selection.md, for analysis only.")


def no_threshold_note(titles: list[str], threshold_rule) -> str | None:
    """Why finished jobs show n/a in the thresholded columns (``titles``: the blocks concerned)."""
    if not titles:
        return None
    why = ("their split has no held-out healthy images (role holdout_healthy) to set the label-free threshold: a "
           "published split taken as given (e.g. a data.json, whose protocol trains on all of its healthy set; see "
           "the Data section) or split.holdout_fraction: 0" if threshold_rule == "holdout_healthy" else
           "no threshold could be set")
    return (f"n/a in Precision, Recall, Specificity and F1 of {', '.join(titles)}: the jobs finished, but {why}. "
            "The pseudo-AUC checkpoint selection (AUCp rows) needs the same hold-outs and is skipped there. AUC, "
            "its range, CI and p need no threshold.")


def table_notes(blocks, ref_label, n_boot, alpha, threshold_rule, full, selection_rule=None,
                marked_not_on_a: bool = False, no_threshold: list[str] | None = None) -> list[str]:
    notes = ["Cells: mean ± sample standard deviation (ddof = 1) over seeds; one seed: the value alone. "
             "Bold: best mean per column (higher is better)."]
    notes += [n for n in (selection_note(selection_rule), threshold_note(threshold_rule),
                          no_threshold_note(no_threshold or [], threshold_rule)) if n]
    if (full["n_failed"] > 0).any() if len(full) else False:
        notes.append(f"'{FAILED}': no seed finished. {DAGGER}: some seeds failed; mean over the seeds that finished.")
    if marked_not_on_a:
        notes.append(f"{NOT_ON_A}: transductive cell of a method that trains on healthy set B only, never on mixed "
                     "set A: for it the transductive set is just another unseen set (not in the bold contest).")
    if any(k == "ci" for b in blocks for k, _ in b.columns):
        notes.append(ci_note(n_boot, alpha))
    if ref_label is not None and any(k == "p" for b in blocks for k, _ in b.columns):
        notes.append(p_note(ref_label, n_boot, sum(len(b.p_raw) for b in blocks)))
    return notes


def ci_note(n_boot: int, alpha: float) -> str:
    pct = round(100 * (1 - alpha))
    return (f"AUC {pct}% CI: of the seed-averaged AUC, by hierarchical percentile bootstrap ({n_boot} resamples): "
            "each resample draws the finished seeds with replacement and, within each drawn seed, resamples that "
            "seed's own test images (positives and negatives separately, by cluster: the split unit of a subject's "
            "images and their exact and near duplicates); the interval is of the mean AUC over the drawn seeds, so "
            "it covers seed-to-seed variation (each seed trains on and tests on its own split) and test-set sampling. "
            "A row with one finished seed, "
            "and a block headed '(images only)', resamples test images only. AUC range: min–max over seeds. "
            "With 3 seeds the seed level is coarse: treat the interval as approximate.")


def p_note(ref_label: str, n_boot: int, n_tests: int) -> str:
    return (f"p vs {ref_label}: paired hierarchical bootstrap ({n_boot} resamples) of the seed-mean AUC difference "
            "(row − reference) over every seed both rows finished: the same seeds drawn with replacement for both "
            "rows and, within a drawn seed, the same resampled test images (by cluster: subject and duplicate "
            "group) for both, on the images both scored. Two-sided p = 2 min(P(d < 0), P(d > 0)), each "
            "tail counting half the replicates with d = 0 and with the +1 correction (1 + count) / (1 + resamples). "
            f"Holm-corrected over all {n_tests} p-values of this table (every block together). With k seeds and "
            "one seed showing no difference, p cannot fall much below k^-k (0.037 for 3 seeds). "
            "DeLong's per-seed test is not reported.")


