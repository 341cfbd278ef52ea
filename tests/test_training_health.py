"""Training-health evidence (issue 20 items 2-3): image-quality measures, the loss-fall measure, the flag rule, the
job record of a deliberately under-trained job and the mark it leaves in every table."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from anomaly_bench.evaluation.health import (
    FLAG_LOSS,
    FLAG_MAE,
    MAX_LOSS_FALL,
    MAX_MAE_RATIO,
    critic_gap,
    health_flags,
    job_health,
    loss_fall,
    mae,
    psnr,
    ssim,
)


def _skimage_ssim(a, b):
    metrics = pytest.importorskip("skimage.metrics")
    return metrics.structural_similarity(a, b, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)


@pytest.mark.parametrize("kind", ["random", "smooth", "odd_size"])
def test_ssim_matches_skimage(kind):
    rng = np.random.default_rng({"random": 0, "smooth": 1, "odd_size": 2}[kind])
    shape = (37, 52) if kind == "odd_size" else (64, 64)
    a = rng.uniform(-1, 1, shape)
    if kind == "smooth":
        a = gaussian_filter(rng.normal(size=shape), 4)
        a /= np.abs(a).max()
    b = np.clip(a + rng.normal(0, 0.3, shape), -1, 1)
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    # a batch is the mean of its images' values
    assert ssim(np.stack([a, a]), np.stack([b, a])) == pytest.approx((_skimage_ssim(a, b) + 1) / 2, abs=1e-6)


def test_mae_and_psnr_by_hand():
    x = np.zeros((2, 4, 4))
    y = np.full((2, 4, 4), 0.5)
    assert mae(x, y) == pytest.approx(0.5)
    assert psnr(x, y) == pytest.approx(10 * math.log10(4 / 0.25))  # data range 2: peak² = 4
    assert psnr(x[:, None], x[:, None]) == pytest.approx(10 * math.log10(4 / 1e-10))  # floored MSE, not inf


def test_loss_fall_on_synthetic_curves():
    it = np.arange(1, 201) * 10
    assert loss_fall(it, np.full(200, 0.3)) == pytest.approx(0.0, abs=1e-9)
    decay = np.exp(-it / 1000)  # still falling fast at the end
    fall = loss_fall(it, decay)
    assert fall > MAX_LOSS_FALL and health_flags(None, fall) == [FLAG_LOSS]
    noisy = 1 + np.random.default_rng(0).normal(0, 0.05, 200)
    assert abs(loss_fall(it, noisy)) < MAX_LOSS_FALL and health_flags(None, loss_fall(it, noisy)) == []
    converged = 0.1 + np.exp(-it / 50)  # fell early, flat over the last 20 %
    assert loss_fall(it, converged) < 0.01
    # a straight line from 2 to 1: over the last 20 % of the range it falls 0.2 of a mean of 1.1
    line = np.linspace(2, 1, 201)
    assert loss_fall(np.arange(201), line) == pytest.approx(0.2 / 1.1, rel=1e-6)
    assert loss_fall([1, 2], [1.0, 0.5]) is None  # too few rows to say


def test_mae_ratio_rule():
    assert health_flags(MAX_MAE_RATIO - 0.01, 0.0) == []
    assert health_flags(MAX_MAE_RATIO, 0.0) == [FLAG_MAE]  # "not below" 0.7 x the mean-image MAE
    assert health_flags(1.5, 0.5) == [FLAG_MAE, FLAG_LOSS]
    assert health_flags(None, None) == [] and health_flags(float("nan"), None) == []


def _losses(n=50, **cols):
    return pd.DataFrame({"iteration": np.arange(1, n + 1) * 10, **cols})


def test_job_health_record():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (6, 1, 32, 32))
    mean_image = images.mean(0)
    flat = np.ones(50)
    good = job_health(images, images[:, 0] + 0.01, mean_image, _losses(recon=flat), health_loss="recon")
    assert good["under_trained"] is False and good["flags"] == [] and good["mae_ratio"] < 0.1
    assert good["final"]["psnr"] > good["mean_image"]["psnr"] and good["loss_fall_last20"] == pytest.approx(0)
    grey = np.zeros((6, 32, 32))  # a flat grey reconstruction: no better than the mean image
    bad = job_health(images, grey, mean_image, _losses(recon=flat), health_loss="recon")
    assert bad["under_trained"] is True and bad["flags"] == [FLAG_MAE] and bad["mae_ratio"] >= MAX_MAE_RATIO
    # judge_mae False (ALAD): the ratio is recorded, not flagged; the loss rule still applies
    semantic = job_health(images, grey, mean_image, _losses(recon=flat), health_loss="recon", judge_mae=False)
    assert semantic["mae_ratio"] == bad["mae_ratio"] and semantic["flags"] == [] and semantic["mae_judged"] is False
    falling = job_health(images, grey, mean_image, _losses(recon=np.linspace(2, 1, 50)), health_loss="recon",
                         judge_mae=False)
    assert falling["flags"] == [FLAG_LOSS] and "mae_judged" not in bad
    # no reconstructions: judged on the loss rule alone
    norec = job_health(images, None, mean_image, _losses(recon=np.linspace(2, 1, 50)), health_loss="recon")
    assert norec["final"] is None and norec["mae_ratio"] is None and norec["flags"] == [FLAG_LOSS]
    # reconstructions at another size: not compared, the loss rule alone
    small = job_health(images, grey[:, :16, :16], mean_image, _losses(recon=flat), health_loss="recon")
    assert small["final"] is None and small["mae_ratio"] is None and small["under_trained"] is False
    # no loss log: not iterative, no flag
    assert job_health(images, None, mean_image, None) == {"not_iterative": True}
    # the first health_loss column the log has; rows of one stage only; AnomalyPro's extra columns
    two_stage = _losses(stage=[1.0] * 25 + [2.0] * 25, enc_loss=[0.0] * 25 + [1.0] * 25,
                        wdist=[0.5] * 25 + [0.0] * 25, g_id=np.full(50, 0.25))
    h = job_health(images, None, mean_image, two_stage, health_loss=("g_rec", "enc_loss"),
                   health_rows={"stage": 2.0}, critic_rows={"stage": 1.0})
    assert h["main_loss"] == "enc_loss" and h["loss_fall_last20"] == pytest.approx(0.0)
    assert h["critic_gap"] == pytest.approx(0.5) and h["g_id"] == pytest.approx(0.25)
    json.dumps(h, allow_nan=False)  # plain JSON


def test_heldout_gain_is_a_new_best_at_the_end_not_a_slope():
    from anomaly_bench.evaluation.health import heldout_gain

    its = np.arange(1, 11) * 90
    # ALOCC's measured curve (cpu, brain seed 0): best 0.121 at 450, a bump, then a partial recovery -> no gain
    alocc = [0.169, 0.182, 0.143, 0.122, 0.121, 0.125, 0.142, 0.141, 0.133, 0.131]
    assert heldout_gain(its, alocc) == 0.0 and loss_fall(its, alocc) > 0.05  # a slope would call it improving
    steady = np.linspace(0.3, 0.1, 10)
    # the window holds the last 3 rows: their best (the last) against the best before them (row 6)
    assert heldout_gain(its, steady) == pytest.approx((steady[6] - steady[9]) / steady[6])
    assert heldout_gain(its[::-1], steady[::-1]) == heldout_gain(its, steady)  # order of rows does not matter
    assert heldout_gain(its[:2], steady[:2]) is None and heldout_gain(its, np.full(10, np.nan)) is None


def test_the_heldout_curve_decides_whether_a_falling_training_loss_means_under_trained():
    """A training loss that still falls while no late checkpoint beats the earlier best held-out MAE is memorisation
    (the loss flag is lifted); a late new best by more than 5 % is flagged whatever the training loss does."""
    from anomaly_bench.evaluation.health import FLAG_HELDOUT, MAX_HELDOUT_GAIN, apply_heldout_rule

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (6, 1, 32, 32))
    falling = _losses(recon=np.linspace(2, 1, 50))

    def record():
        return job_health(images, images[:, 0] + 0.01, images.mean(0), falling, health_loss="recon")

    its = np.arange(1, 11) * 50
    flat = pd.DataFrame({"iteration": its, "healthy_mae": np.r_[np.linspace(0.3, 0.15, 6), [0.15] * 4]})
    still = pd.DataFrame({"iteration": its, "healthy_mae": np.linspace(0.3, 0.1, 10)})
    assert record()["flags"] == [FLAG_LOSS]
    lifted = apply_heldout_rule(record(), flat)
    assert lifted["flags"] == [] and lifted["under_trained"] is False and lifted["loss_rule"].startswith("lifted")
    assert lifted["heldout_mae_gain_last20"] == 0.0 and lifted["loss_fall_last20"] > 0.1
    kept = apply_heldout_rule(record(), still)
    assert kept["flags"] == [FLAG_LOSS, FLAG_HELDOUT] and kept["heldout_mae_gain_last20"] > MAX_HELDOUT_GAIN
    quiet = job_health(images, images[:, 0] + 0.01, images.mean(0), _losses(recon=np.ones(50)), health_loss="recon")
    assert apply_heldout_rule(quiet, still)["flags"] == [FLAG_HELDOUT]  # flat training loss, held-out still improving
    # unchanged: no checkpoints, too few, no reconstructions, an unjudged MAE, not iterative
    for sel in (None, still.iloc[:2], still.drop(columns="healthy_mae")):
        assert apply_heldout_rule(record(), sel)["flags"] == [FLAG_LOSS]
    norec = job_health(images, None, images.mean(0), falling, health_loss="recon")
    assert apply_heldout_rule(norec, flat)["flags"] == [FLAG_LOSS]
    unjudged = job_health(images, images[:, 0], images.mean(0), falling, health_loss="recon", judge_mae=False)
    assert apply_heldout_rule(unjudged, flat)["flags"] == [FLAG_LOSS]
    assert apply_heldout_rule({"not_iterative": True}, flat) == {"not_iterative": True}


def test_critic_gap_from_d_real_and_d_fake():
    df = _losses(d_real=np.linspace(0, 1, 50), d_fake=np.zeros(50))
    assert critic_gap(df) == pytest.approx(np.linspace(0, 1, 50)[-10:].mean())
    assert critic_gap(_losses(recon=np.ones(50))) is None


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def undertrained_run(tmp_path_factory):
    """A 20-iteration autoencoder (loss still falling fast, reconstructions worse than the mean image) beside
    example_pixel_knn (no training loop) on the tiny phantom."""
    from anomaly_bench.harness.runner import Runner
    from test_runner import tiny_experiment

    out = tmp_path_factory.mktemp("health") / "run"
    exp = tiny_experiment(settings=["inductive"], methods=[
        {"name": "autoencoder", "params": {"iterations": 20, "checkpoint_every": 10, "log_every": 2}},
        "example_pixel_knn"])
    Runner(exp, out, progress=False, echo=lambda s: None).run()
    return out


def _job(out, method):
    return json.loads((out / f"jobs/tiny/{method}/seed0/job.json").read_text())


def test_undertrained_job_is_recorded_and_marked_in_every_table(undertrained_run):
    out = undertrained_run
    h = _job(out, "autoencoder")["health"]
    assert h["under_trained"] is True and h["main_loss"] == "recon"
    assert FLAG_MAE in h["flags"] and h["mae_ratio"] >= MAX_MAE_RATIO
    assert h["final"]["mae"] == pytest.approx(h["mae_ratio"] * h["mean_image"]["mae"], rel=1e-4)
    assert h["loss_fall_last20"] is not None and h["critic_gap"] is None
    assert _job(out, "example_pixel_knn")["health"] == {"not_iterative": True}
    # selection.csv: the same healthy scoring per checkpoint; its last checkpoint is the final model
    sel = pd.read_csv(out / "jobs/tiny/autoencoder/seed0/selection.csv")
    assert {"healthy_mae", "healthy_psnr", "healthy_ssim"} <= set(sel.columns)
    assert sel["healthy_mae"].iloc[-1] == pytest.approx(h["final"]["mae"], rel=1e-4)
    assert sel["healthy_ssim"].iloc[-1] == pytest.approx(h["final"]["ssim"], rel=1e-4)

    table = (out / "table.md").read_text()
    main = table.split("Notes:")[0]
    ae_rows = [ln for ln in main.splitlines() if ln.startswith("| autoencoder |")]
    knn_rows = [ln for ln in main.splitlines() if ln.startswith("| example_pixel_knn |")]
    assert ae_rows and all(ln.split("|")[2].strip().endswith("⚑") for ln in ae_rows)  # the AUC column
    assert knn_rows and not any("⚑" in ln for ln in knn_rows)
    assert "⚑: under-trained in k of n seeds" in table and "autoencoder on tiny: 1 of 1 seeds" in table
    assert "Profile `smoke`" in table and "not the methods' accuracy" in table
    section = table.split("## Training health: tiny")[1]
    assert "| autoencoder | 1 | 1 of 1 ⚑ |" in section and "| example_pixel_knn | 1 | not iterative |" in section
    assert FLAG_MAE in section
    paper = (out / "table_paper.md").read_text()
    assert any(ln.startswith("| autoencoder |") and "⚑" in ln.split("|")[3] for ln in paper.splitlines())
    tex, paper_tex = (out / "table.tex").read_text(), (out / "table_paper.tex").read_text()
    assert "$^\\flat$" in tex and "$^\\flat$" in paper_tex and "⚑" not in tex + paper_tex
    html = (out / "report.html").read_text()
    assert "<h2>Training health</h2>" in html and "⚑" in html and "Training loss curves" in html
    assert (out / "losses_tiny.png").is_file()


def test_checkpoint_curves_give_the_label_free_learning_curve(undertrained_run):
    """checkpoints_<dataset>.png plots, per checkpoint, the healthy MAE over the mean-image MAE and the AUCp; its
    last point is the final model's health record, and a method without reconstructions has no ratio."""
    from anomaly_bench.reporting.checkpoint_curves import checkpoint_curves

    out = undertrained_run
    h = _job(out, "autoencoder")["health"]
    sel = pd.read_csv(out / "jobs/tiny/autoencoder/seed0/selection.csv")
    c = checkpoint_curves(sel.iloc[::-1], h["mean_image"]["mae"])
    assert c["iteration"].tolist() == [10, 20]  # sorted, one row per checkpoint
    assert c["mae_ratio"].iloc[-1] == pytest.approx(h["mae_ratio"], rel=1e-4)
    assert c["aucp"].tolist() == pytest.approx(sel.sort_values("iteration")["aucp"].tolist())
    first = sel.sort_values("iteration")["healthy_score_mean"]
    assert c["score_rel"].tolist() == pytest.approx((first / first.iloc[0]).tolist()) and c["score_rel"][0] == 1
    no_rec = checkpoint_curves(sel.assign(healthy_mae=float("nan")), h["mean_image"]["mae"])
    assert no_rec["mae_ratio"].isna().all() and checkpoint_curves(sel, None)["mae_ratio"].isna().all()
    assert (out / "checkpoints_tiny.png").is_file()
    assert "checkpoints_tiny.png" in (out / "report.html").read_text()


def test_old_job_json_without_health_still_reports(undertrained_run, tmp_path):
    import shutil

    from anomaly_bench.reporting.write import build_reports

    out = tmp_path / "old"
    shutil.copytree(undertrained_run, out)
    for method in ("autoencoder", "example_pixel_knn"):
        path = out / f"jobs/tiny/{method}/seed0/job.json"
        meta = json.loads(path.read_text())
        del meta["health"]
        path.write_text(json.dumps(meta))
    (out / "losses_tiny.png").unlink()
    build_reports(out)
    table = (out / "table.md").read_text()
    assert "⚑" not in table and "not recorded (earlier version)" in table
    assert "Profile `smoke`" in table  # the profile note does not need the health records
    assert "⚑" not in (out / "table_paper.md").read_text() + (out / "report.html").read_text()
    assert not (out / "losses_tiny.png").exists()


def test_mark_counts_seeds_per_dataset_and_keeps_the_bold_contest():
    """Flagged in 1 of 2 seeds on one dataset: that dataset's AUC cells carry the mark (bold unchanged), the other
    dataset's do not, and the note gives the count."""
    from anomaly_bench.reporting.tables import build_tables

    rows = [(ds, "inductive", m, "last", seed, "image", "auc", v) for ds in ("d1", "d2")
            for m, v in (("gan", 0.9), ("ae", 0.6)) for seed in (0, 1)]
    metrics = pd.DataFrame(rows, columns=["dataset", "setting", "method", "selection", "seed", "level", "metric",
                                          "value"])
    health = {"under_trained": True, "flags": [FLAG_LOSS]}
    jobs = [{"dataset": ds, "method": m, "seed": s, "status": "done", "profile": "paper",
             "health": health if (ds, m, s) == ("d1", "gan", 1) else {"under_trained": False, "flags": []}}
            for ds in ("d1", "d2") for m in ("gan", "ae") for s in (0, 1)]
    t = build_tables(metrics, jobs=jobs, reference_method=None)
    by_ds = {b.dataset: b for b in t.blocks}
    assert by_ds["d1"].cells["gan"]["auc"].text == "0.900 ± 0.000 ⚑" and by_ds["d1"].cells["gan"]["auc"].bold
    assert "⚑" not in by_ds["d2"].cells["gan"]["auc"].text and "⚑" not in by_ds["d1"].cells["ae"]["auc"].text
    assert any("gan on d1: 1 of 2 seeds" in n for n in t.notes)
    assert not any("Profile" in n for n in t.notes)  # a paper-profile run gets no reduced-budget note
    assert t.paper.set_index(["method", "dataset"]).at[("gan", "d1"), "auc_cell"].endswith("⚑")


def test_mask_statistics_are_shown_per_seed_not_averaged():
    from anomaly_bench.reporting.health import health_tables

    def job(seed, mask):
        return {"status": "done", "dataset": "d", "method": "medai_anomalypro", "seed": seed,
                "health": {"mae_ratio": 0.5, "flags": [], "under_trained": False, "main_loss": "g_id",
                           "mask_a_mean": mask, "mask_b_mean": mask, "g_id": 0.13}}

    [(ds, rows)] = health_tables([job(0, 0.995), job(1, 0.08)])
    other = rows[0][-1]
    assert ds == "d" and "mask_a_mean 0.995 / 0.080" in other and "mask_b_mean 0.995 / 0.080" in other
    assert "0.537" not in other and "g_id 0.130 / 0.130" in other
