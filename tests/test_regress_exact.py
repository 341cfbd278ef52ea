"""The exact half of `anomaly-bench regress` against the committed reference: clean code passes (here and under
another CPU kernel path), and each kind of silent change fails with a message naming the method and what moved."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from anomaly_bench.core.config import REPO_DIR
from anomaly_bench.harness.regress_exact import DEFAULT_EXACT_REFERENCE, compare_exact, run_exact

REFERENCE = json.loads(DEFAULT_EXACT_REFERENCE.read_text())
# a kernel path other than this CPU's native one: ATen's portable kernels, oneDNN capped at AVX2, MKL's
# reproducible branch (each changes float32/float64 last bits on an AVX-512 machine)
OTHER_PATH = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}


def _problems(methods, datasets=("phantom",)):
    record = run_exact(methods=list(methods), datasets=list(datasets), echo=lambda *_: None)
    rows, problems = compare_exact(REFERENCE, record)
    return {r["what"]: r["status"] for r in rows}, problems


def test_the_reference_covers_every_method_and_the_regression_splits():
    assert set(REFERENCE["methods"]) >= {"medai_anomalypro", "alad", "alocc", "fanogan", "ganomaly", "padim",
                                         "patchcore"}
    assert "phantom" in REFERENCE["splits"] and REFERENCE["rtol"] <= 1e-6
    for rec in REFERENCE["methods"].values():
        assert len(rec["scores"]) == 32 and np.all(np.isfinite(rec["scores"])) and np.ptp(rec["scores"]) > 0


def test_clean_code_matches_the_reference():
    status, problems = _problems(["ganomaly", "alad", "medai_anomalypro", "autoencoder"])
    assert problems == []
    assert status["split phantom"] == "ok"
    assert all(status[f"method {m}"] == "ok" for m in ("ganomaly", "alad", "medai_anomalypro", "autoencoder"))


def test_clean_code_matches_the_reference_under_another_kernel_path():
    """The same check in a fresh interpreter whose torch takes other SIMD kernels (set before torch loads)."""
    code = ("import json; from anomaly_bench.harness.regress_exact import *; "
            "r = run_exact(methods=['alocc', 'fanogan'], datasets=['phantom'], echo=lambda *_: None); "
            "ref = json.loads(DEFAULT_EXACT_REFERENCE.read_text()); "
            "print(json.dumps(compare_exact(ref, r)[1]))")
    env = {**os.environ, **OTHER_PATH, "PYTHONPATH": str(REPO_DIR)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_flipped_loss_sign_in_one_gan_fails(monkeypatch):
    import anomaly_bench.methods.ganomaly.method as mod

    orig = mod.discriminator_loss
    monkeypatch.setattr(mod, "discriminator_loss", lambda real, fake: -orig(real, fake))
    status, problems = _problems(["ganomaly"])
    assert status["method ganomaly"] == "SCORES CHANGED"
    assert len(problems) == 1 and problems[0].startswith("ganomaly: float64 scores") and "moved" in problems[0]


def test_a_changed_score_formula_fails(monkeypatch):
    import anomaly_bench.methods.medai_anomalypro.method as mod

    monkeypatch.setattr(mod, "anomaly_map", lambda x, t: (x - t).pow(2).mean(1) / 4.0)  # squared, not |x - B0|/2
    status, problems = _problems(["medai_anomalypro"])
    assert status["method medai_anomalypro"] == "SCORES CHANGED"
    assert any(p.startswith("medai_anomalypro: float64 scores") for p in problems)


def test_a_changed_default_hyper_parameter_fails(monkeypatch):
    from anomaly_bench.methods.alad import ALAD

    monkeypatch.setitem(ALAD.defaults, "lr", 1.0e-4)  # the authors' 2e-4, halved
    status, problems = _problems(["alad"])
    assert status["method alad"] == "PARAMS CHANGED"
    assert any(p.startswith("alad: its resolved `ci` parameters changed: lr 0.0002 -> 0.0001") for p in problems)
    assert any(p.startswith("alad: float64 scores") for p in problems)  # and the training moved with it


def test_random_scores_fail(monkeypatch):
    from anomaly_bench.core.interface import ScoreResult
    from anomaly_bench.methods.autoencoder import Autoencoder

    rng = np.random.default_rng(0)
    monkeypatch.setattr(Autoencoder, "score", lambda self, images: ScoreResult(rng.random(len(images))))
    status, problems = _problems(["autoencoder"])
    assert status["method autoencoder"] == "SCORES CHANGED"
    assert len(problems) == 1 and problems[0].startswith("autoencoder: float64 scores")


def test_a_split_that_moves_one_test_image_fails(monkeypatch):
    import anomaly_bench.data.split as split_mod

    orig = split_mod.make_split

    def one_swapped(ds, cfg, seed):
        split = orig(ds, cfg, seed)
        roles = split.roles.copy()
        t, h = split.indices("test")[-1], split.indices("healthy")[-1]  # not among the fixed exact-check images
        roles[t], roles[h] = "healthy", "test"
        split.roles = roles
        return split

    monkeypatch.setattr(split_mod, "make_split", one_swapped)
    status, problems = _problems([])
    assert status["split phantom"] == "SPLIT CHANGED"
    assert len(problems) == 1 and problems[0].startswith("split of phantom (regression seed) changed")
    assert "role test: 1 image(s) left" in problems[0] and "1 entered" in problems[0]


@pytest.mark.parametrize("what", ["scores", "params"])
def test_compare_exact_names_what_moved(what):
    ref = {"rtol": 1e-6, "splits": {}, "methods": {"m": {"params": {"lr": 1e-4}, "ids": ["a", "b"],
                                                         "scores": [1.0, 2.0]}}}
    new = json.loads(json.dumps(ref))
    if what == "scores":
        new["methods"]["m"]["scores"][1] = 2.0 + 1e-5
    else:
        new["methods"]["m"]["params"]["lr"] = 2e-4
    rows, problems = compare_exact(ref, new)
    assert len(problems) == 1 and problems[0].startswith("m: ")
    new["methods"]["m"]["scores"][1] = 2.0 * (1 + 1e-9) if what == "scores" else 2.0  # far below rtol
    if what == "scores":
        assert compare_exact(ref, new)[1] == []
