"""The phantom's reconstruction-score ceiling (anomaly_bench.data.phantom_ceiling)."""

from __future__ import annotations

import pytest

from anomaly_bench.data.phantom_ceiling import ceiling_table, main

SMALL = {"n_subjects": 48, "slices_per_subject": 4, "seed": 3}


@pytest.fixture(scope="module")
def table():
    return ceiling_table((0.0, 1.0, 2.0), **SMALL)


def test_the_exact_twin_separates_perfectly(table):
    # sigma 0: x_hat is the lesion-free twin, so healthy slices score exactly 0 and every diseased slice > 0
    r = table.iloc[0]
    assert r["background_error"] == 0.0
    assert r["auc_whole_image"] == 1.0 and r["auc_oracle_mask"] == 1.0 and r["auc_whole_image_subject"] == 1.0


def test_blur_costs_the_whole_image_score_but_not_the_oracle_mask(table):
    whole, oracle, bg = table["auc_whole_image"], table["auc_oracle_mask"], table["background_error"]
    assert bg.is_monotonic_increasing and bg.iloc[1] > 0.05
    assert whole.iloc[1] < 0.85 and whole.iloc[2] <= whole.iloc[1] + 0.02
    # the mask removes the background error: it stays far above the whole-image score
    assert (oracle.iloc[1:] > whole.iloc[1:] + 0.15).all() and (oracle > 0.95).all()
    for t in ("mass", "scattered", "ventriculomegaly"):
        assert 0.0 <= table[f"auc_whole_image_{t}"].iloc[1] <= 1.0


def test_cli_writes_csv_and_markdown(tmp_path, capsys):
    main(["--out", str(tmp_path), "--sigmas", "0,1", "--size", "32"])
    csv = (tmp_path / "ceiling.csv").read_text().splitlines()
    assert csv[0].startswith("sigma_px,background_error") and len(csv) == 3
    md = (tmp_path / "ceiling.md").read_text()
    assert "Oracle-mask AUC" in md and md.count("\n") == 4
    assert "| 1.0 |" in capsys.readouterr().out


def test_rejects_negative_sigma_and_single_class():
    with pytest.raises(ValueError, match="sigma"):
        ceiling_table((-1.0,), **SMALL)
    with pytest.raises(ValueError, match="diseased_fraction"):
        ceiling_table((0.0,), n_subjects=8, slices_per_subject=2, diseased_fraction=0.0)
