"""`on_bad_image: skip` end to end: a corrupt file in a user's class folders is left out of the run, the other
images train and score, and the run's table.md and report.html list the file with its reason."""

import html
import re

import numpy as np
from PIL import Image

from anomaly_bench.core.experiment import parse_experiment
from anomaly_bench.harness.runner import Runner
from conftest import EXAMPLE_PLUGIN


def _folders(root, n=24, size=32):
    rng = np.random.default_rng(0)
    for cls, level in (("normal", 60), ("tumour", 160)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 40, (size, size)) + 40
            if cls == "tumour":
                a[8:16, 8:16] = level
            Image.fromarray(a.astype(np.uint8)).save(root / cls / f"{cls}_{i:02d}.png")
    bad = root / "tumour" / "tumour_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return bad


def _experiment(root, on_bad_image):
    card = {"name": "userfolders", "format": "class_folder", "root": str(root), "image_size": 32,
            "classes": {"healthy": ["normal"], "diseased": ["tumour"]}, "on_bad_image": on_bad_image,
            "split": {"test_size": 0.4}}
    return parse_experiment({"name": "badimg", "profile": "smoke", "seeds": [0], "settings": ["inductive"],
                             "device": "cpu", "plugins": [str(EXAMPLE_PLUGIN)], "datasets": [card],
                             "methods": ["example_pixel_knn"]})


def test_skip_lists_the_bad_file_in_table_and_html(tmp_path):
    bad = _folders(tmp_path / "data")
    out = tmp_path / "run"
    info = Runner(_experiment(tmp_path / "data", "skip"), out, progress=False, echo=lambda *_: None).run()
    assert info["failed_jobs"] == []
    assert info["datasets"]["userfolders"]["n_images"] == 48  # the 49th file was left out
    md = (out / "table.md").read_text()
    assert "## Data" in md and "1 unreadable image(s) left out" in md
    assert re.search(rf"left out: `{re.escape(str(bad))}`: .+", md), md
    page = html.unescape((out / "report.html").read_text())
    assert "<h2>Data</h2>" in page and str(bad) in page


def test_error_mode_names_the_file_before_training(tmp_path):
    import pytest

    from anomaly_bench.core.errors import DataError

    bad = _folders(tmp_path / "data")
    with pytest.raises(DataError) as ei:
        Runner(_experiment(tmp_path / "data", "error"), tmp_path / "run", progress=False, echo=lambda *_: None).run()
    assert str(bad) in str(ei.value) and "on_bad_image: skip" in str(ei.value)
    assert not list((tmp_path / "run").glob("jobs/*/*/*/job.json"))  # nothing trained
