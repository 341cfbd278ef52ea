"""The confound check: label-free image statistics on images whose answer is known, the warning sentence, the
runner's record in run.json and the line in the table notes (and old runs without it still reporting)."""

import html
import json

import numpy as np
import pytest
import torch

from anomaly_bench.core.experiment import parse_experiment
from anomaly_bench.data.split import make_split
from anomaly_bench.evaluation.confound import (
    STATISTICS,
    WARN_MARGIN,
    confound_aucs,
    confound_line,
    confound_record,
    confound_sentence,
    trivial_statistics,
)
from anomaly_bench.harness.jobs import load_dataset_for, split_config_for
from anomaly_bench.harness.runner import Runner
from anomaly_bench.reporting.write import build_reports
from conftest import EXAMPLE_PLUGIN

TINY_CARD = {"name": "tiny", "format": "phantom", "image_size": 32,
             "phantom": {"n_subjects": 30, "slices_per_subject": 2, "seed": 5},
             "split": {"test_size": 0.3, "holdout_fraction": 0.15}}


def _noise(rng, n, loc=0.0, scale=0.3, size=16):
    return np.clip(rng.normal(loc, scale, (n, 1, size, size)), -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------- statistics
def test_statistics_on_images_with_known_values():
    const = np.full((16, 16), 0.25, np.float32)
    halves = np.full((16, 16), -1.0, np.float32)
    halves[:, 8:] = 1.0
    ramp = np.repeat(np.linspace(-1, 1, 64, endpoint=False, dtype=np.float32)[None] + 1 / 64, 2, axis=0)
    s = trivial_statistics(np.stack([const, halves]))
    assert set(s) == set(STATISTICS)
    np.testing.assert_allclose(s["mean"], [0.25, 0.0], atol=1e-7)
    np.testing.assert_allclose(s["sd"], [0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(s["entropy"], [0.0, 1.0], atol=1e-12)  # one bin; two equal bins = 1 bit
    # a constant image is all "background" (at its own minimum); the halves image half
    np.testing.assert_allclose(s["background"], [1.0, 0.5])
    # one pixel in each of the 64 bins: log2(64) = 6 bits; (N, H, W) input and torch tensors work too
    ramp_s = trivial_statistics(torch.from_numpy(ramp[None]))
    np.testing.assert_allclose(ramp_s["entropy"], [6.0], atol=1e-12)


def test_brighter_diseased_images_give_mean_auc_near_one_and_warn():
    rng = np.random.default_rng(0)
    images = np.concatenate([_noise(rng, 100, 0.0), _noise(rng, 100, 0.3)])
    labels = np.r_[np.zeros(100), np.ones(100)]
    res = confound_aucs(images, labels)
    assert res["mean"]["auc"] > 0.95 and res["mean"]["warn"]
    assert res["mean"]["separation"] == pytest.approx(res["mean"]["auc"])
    # the same with the classes swapped: AUC near 0, the same separation, still a warning
    swapped = confound_aucs(images, 1 - labels)
    assert swapped["mean"]["auc"] == pytest.approx(1 - res["mean"]["auc"])
    assert swapped["mean"]["separation"] == pytest.approx(res["mean"]["separation"]) and swapped["mean"]["warn"]


def test_more_contrast_in_healthy_images_is_caught_by_sd_not_mean():
    rng = np.random.default_rng(1)
    images = np.concatenate([_noise(rng, 150, 0.0, 0.4), _noise(rng, 150, 0.0, 0.2)])
    labels = np.r_[np.zeros(150), np.ones(150)]
    res = confound_aucs(images, labels)
    assert res["sd"]["auc"] < 0.05 and res["sd"]["warn"]
    assert abs(res["mean"]["auc"] - 0.5) < WARN_MARGIN and not res["mean"]["warn"]


def test_identical_distributions_are_near_half_and_do_not_warn():
    rng = np.random.default_rng(2)
    images = _noise(rng, 400)
    labels = np.r_[np.zeros(200), np.ones(200)]
    res = confound_aucs(images, labels)
    for key, r in res.items():
        assert abs(r["auc"] - 0.5) < 0.1 and not r["warn"], (key, r)
    rec = confound_record(images, labels)
    assert rec["warn"] is False and set(rec["auc"]) == set(STATISTICS)
    assert all(v == round(v, 4) for v in rec["auc"].values())
    assert confound_sentence("x", rec["auc"]) == ""


def test_one_class_gives_no_auc_and_no_warning():
    rec = confound_record(_noise(np.random.default_rng(3), 10), np.zeros(10))
    assert rec == {"auc": {k: None for k in STATISTICS}, "warn": False}
    with pytest.raises(ValueError):
        confound_aucs(_noise(np.random.default_rng(3), 10), np.zeros(9))


# ----------------------------------------------------------------------------- the sentence and the line
def test_sentence_says_the_sign_is_flipped_below_half():
    text = confound_sentence("brain_tumor_mri", {"mean": 0.24, "sd": 0.19, "entropy": 0.45, "background": None})
    assert "brain_tumor_mri" in text and "(intensity sd)" in text  # the statistic furthest from 0.5
    assert "at 0.81 with the sign flipped" in text and "acquisition, not pathology" in text
    up = confound_sentence("d", {"mean": 0.9, "sd": 0.3})
    assert "(mean intensity)" in up and "at 0.90" in up and "flipped" not in up
    edge = 0.5 + WARN_MARGIN - 0.01
    assert confound_sentence("d", {"mean": edge, "sd": 1 - edge}) == ""


def test_line_gives_the_mean_over_seeds_and_the_range():
    per_seed = {"0": {"auc": {"mean": 0.2, "sd": 0.5}, "warn": True},
                "1": {"auc": {"mean": 0.3, "sd": 0.6}, "warn": True}}
    text, warning = confound_line("d", per_seed)
    assert "mean intensity 0.250 [0.200-0.300]" in text and "intensity sd 0.550 [0.500-0.600]" in text
    assert "over 2 seeds" in text and "at 0.75 with the sign flipped" in warning
    one, _ = confound_line("d", {"0": per_seed["0"]})
    assert "seed 0)" in one and "mean intensity 0.200," in one and "[0.200-" not in one
    for missing in (None, {}, "garbage", {"0": "garbage"}, {"0": {"auc": {"mean": None}}}):
        assert confound_line("d", missing) is None


# ----------------------------------------------------------------------------- runner and report
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    exp = parse_experiment({"name": "c", "profile": "smoke", "seeds": [0, 1], "settings": ["inductive"],
                            "device": "cpu", "datasets": [TINY_CARD], "plugins": [str(EXAMPLE_PLUGIN)],
                            "methods": ["example_pixel_knn"]})
    out = tmp_path_factory.mktemp("confound") / "run"
    info = Runner(exp, out, progress=False, echo=lambda *_: None).run()
    return exp, out, info


def test_runner_records_the_test_set_check_per_seed(tiny_run):
    exp, out, info = tiny_run
    stored = json.loads((out / "run.json").read_text())["datasets"]["tiny"]["confound"]
    assert set(stored) == {"0", "1"}
    spec = exp.datasets[0]
    ds = load_dataset_for(spec, exp, None)
    for seed in (0, 1):
        idx = make_split(ds, split_config_for(ds, spec, exp), seed).indices("test")
        assert stored[str(seed)] == confound_record(ds.images[torch.as_tensor(idx)], ds.labels[idx])
    assert stored["0"] != stored["1"]  # each seed's own test set


def test_table_notes_print_the_line_and_old_runs_still_report(tiny_run):
    _, out, _ = tiny_run
    stored = json.loads((out / "run.json").read_text())["datasets"]["tiny"]["confound"]
    md = (out / "table.md").read_text()
    mean = np.mean([stored[s]["auc"]["sd"] for s in ("0", "1")])
    lo, hi = sorted(stored[s]["auc"]["sd"] for s in ("0", "1"))
    assert f"intensity sd {mean:.3f} [{lo:.3f}-{hi:.3f}]" in md
    assert "confound check" in md and "confound check" in html.unescape((out / "report.html").read_text())

    info = json.loads((out / "run.json").read_text())
    try:
        # a run whose healthy images have the higher sd: the warning reaches table.md and report.html
        info["datasets"]["tiny"]["confound"] = {"0": {"auc": {"mean": 0.5, "sd": 0.2}, "warn": True}}
        (out / "run.json").write_text(json.dumps(info))
        build_reports(out)
        md = (out / "table.md").read_text()
        warning = ("**warning**: on tiny a trivial statistic (intensity sd) separates the classes at 0.80 with the "
                   "sign flipped")
        assert warning in md
        assert "<b>Warning</b>: on tiny a trivial statistic" in (out / "report.html").read_text()
        # a run folder from before the check: no key, still reports, no line
        del info["datasets"]["tiny"]["confound"]
        (out / "run.json").write_text(json.dumps(info))
        build_reports(out)
        md = (out / "table.md").read_text()
        assert "## Data" in md and "**tiny**" in md and "confound check" not in md
    finally:
        info["datasets"]["tiny"]["confound"] = stored
        (out / "run.json").write_text(json.dumps(info))
