"""Hostile inputs (issue 22, items 4, 7, 8, 10, 11): every case ends in a correct result or exit code 2 with one
message naming the file or setting and the fix; never a traceback for a user error, never a lost result, never a
silently wrong label. The corpus is built in tmp_path; nothing binary is committed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from test_data_formats import TUMOR_CARD, make_npz, write

from anomaly_bench.cli import main
from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.core.experiment import parse_experiment
from anomaly_bench.data.loading import load_dataset
from conftest import EXAMPLE_PLUGIN
from test_runner import TINY_CARD

pytestmark = pytest.mark.usefixtures("one_thread")


def cli_error(args: list[str], *names: str) -> str:
    """Run the CLI; it must exit 2 with one message that names each of ``names`` and no traceback."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    out = res.output  # stdout and stderr
    assert res.exit_code == 2, (res.exit_code, out, res.exception)
    assert "Traceback" not in out and not isinstance(res.exception, (ValueError, RuntimeError, OSError)), out
    for n in names:
        assert str(n) in out, (n, out)
    return out


def run_args(tmp_path: Path, *extra: str, dataset: str | Path | None = None) -> list[str]:
    card = tmp_path / "tiny.yaml"
    if not card.exists():
        card.write_text(yaml.safe_dump(TINY_CARD))
    return ["run", "--plugin", str(EXAMPLE_PLUGIN), "--method", "example_pixel_knn", "--dataset", str(dataset or card),
            "--device", "cpu", "--no-progress", *extra]


def write_experiment(tmp_path: Path, **over) -> Path:
    exp = {"name": "h", "profile": "smoke", "seeds": [0], "settings": ["inductive"], "device": "cpu",
           "datasets": [TINY_CARD], "plugins": [str(EXAMPLE_PLUGIN)], "methods": ["example_pixel_knn"], **over}
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(exp))
    return p


# ------------------------------------------------------------------------------------------ item 8: npz files
def _npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, train_images=images, train_labels=labels)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_npz_with_non_finite_pixels_names_file_array_and_index(tmp_path, bad):
    a = np.random.default_rng(0).random((4, 28, 28)).astype(np.float32)
    a[2, 5, 7] = bad
    p = _npz(tmp_path / "px.npz", a, np.array([0, 1, 0, 1]))
    out = cli_error(run_args(tmp_path, "--out", tmp_path / "o", dataset=p), "px.npz", "train_images", "[2, 5, 7]")
    assert "NaN/inf" in out


@pytest.mark.parametrize("labels, shown", [(np.array([0, np.nan, 1, 0]), "train_labels'[1]"),
                                           (np.array([0, 0.5, 1.5, 0]), "train_labels'[1]"),
                                           (np.array(["a", "b", "a", "b"]), "not numbers")])
def test_npz_labels_must_be_integer_codes(tmp_path, labels, shown):
    p = _npz(tmp_path / "lab.npz", np.zeros((4, 28, 28), np.uint8), labels)
    with pytest.raises(DataError, match="healthy_labels") as ei:
        load_dataset(str(p), image_size=32)
    assert "lab.npz" in str(ei.value) and shown in str(ei.value)


def test_npy_renamed_npz_and_text_named_npz(tmp_path):
    np.save(tmp_path / "arr.npy", np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "arr.npy").rename(tmp_path / "arr.npz")
    cli_error(run_args(tmp_path, "--out", tmp_path / "o", dataset=tmp_path / "arr.npz"), "arr.npz", ".npy",
              "numpy.savez")
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "notes.npz").write_text("these are not arrays\n")
    out = cli_error(run_args(tmp_path, "--out", tmp_path / "o", dataset=tmp_path / "t" / "notes.npz"),
                    "notes.npz", "not an npz archive")
    assert "pickled" not in out


def test_npz_images_below_the_minimum_side_are_refused(tmp_path):
    p = _npz(tmp_path / "tiny_px.npz", np.zeros((4, 1, 1), np.uint8), np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="min_side"):
        load_dataset(str(p), image_size=32)
    assert len(load_dataset(str(make_npz(tmp_path / "ok" / "m.npz")), image_size=32)) == 18  # 28 px is fine


# -------------------------------------------------------------------------------- item 7: symlinked class folders
def _tree(root: Path) -> Path:
    for cls, n in (("normal", 3), ("tumor", 2)):
        for i in range(n):
            write(root / "Training" / cls / f"{cls}_{i}.png", 10 * len(cls) + i)
    return root


CLASS_CARD = {**TUMOR_CARD, "name": "linked", "classes": {"healthy": ["normal"], "diseased": ["tumor"]}}


def _symlink(target, link: Path) -> None:
    try:
        os.symlink(target, link)
    except OSError:
        pytest.skip("symbolic links not available")


def test_folder_link_into_another_class_is_refused_naming_both(tmp_path):
    root = _tree(tmp_path / "data")
    assert load_dataset({**CLASS_CARD, "root": str(root)}).summary()["n_diseased"] == 2
    _symlink("../tumor", root / "Training" / "normal" / "linked")
    with pytest.raises(DataError) as ei:
        load_dataset({**CLASS_CARD, "root": str(root)})
    msg = str(ei.value)
    assert "normal/linked" in msg and str(Path(os.path.realpath(root)) / "Training" / "tumor") in msg
    assert "remove the link" in msg


def test_file_link_into_another_class_or_role_is_refused(tmp_path):
    root = _tree(tmp_path / "data")
    _symlink(root / "Training" / "tumor" / "tumor_0.png", root / "Training" / "normal" / "x.png")
    with pytest.raises(DataError, match="normal/x.png.*remove the link"):
        load_dataset({**CLASS_CARD, "root": str(root)})
    (root / "Training" / "normal" / "x.png").unlink()
    (root / "Testing" / "tumor").mkdir(parents=True)
    _symlink(root / "Training" / "tumor" / "tumor_1.png", root / "Testing" / "tumor" / "y.png")
    with pytest.raises(DataError, match="Testing/tumor/y.png"):
        load_dataset({**CLASS_CARD, "root": str(root)})


def test_link_within_its_own_class_and_link_loops_still_load(tmp_path):
    root = _tree(tmp_path / "data")
    (root / "Training" / "normal" / "more").mkdir()
    write(root / "Training" / "normal" / "more" / "m.png", 77)
    _symlink("more", root / "Training" / "normal" / "alias")  # same class and role: reached once
    _symlink(root, root / "Training" / "normal" / "loop")
    ds = load_dataset({**CLASS_CARD, "root": str(root)})
    assert ds.summary()["n_healthy"] == 4 and ds.summary()["n_diseased"] == 2


# ------------------------------------------------------------------------- items 8, 10: settings and arguments
@pytest.mark.parametrize("over, names", [
    ({"datasets": [{"card": TINY_CARD, "image_size": "big"}]}, ["image_size", "'big'"]),
    ({"device": "gpu"}, ["device", "'gpu'", "cpu, cuda", "auto", "mps"]),
    ({"n_maps": -3}, ["n_maps", "-3", ">= 0"]),
    ({"methods": [{"name": "example_pixel_knn", "label": "../../../evil"}]},
     ["label", "../../../evil", "path separators"]),
    ({"methods": [{"name": "example_pixel_knn", "label": ".hidden"}]}, ["label", ".hidden"]),
    ({"seeds": [-1]}, ["seeds", "-1"]),
    ({"methods": [{"name": "autoencoder", "params": {"iterations": -5}}]}, ["iterations", ">= 1", "-5"]),
    ({"methods": [{"name": "autoencoder", "params": {"lr": 0}}]}, ["'lr'", "> 0"]),
    ({"methods": [{"name": "autoencoder", "params": {"batch_size": 0}}]}, ["batch_size", ">= 1"]),
    ({"methods": [{"name": "autoencoder", "params": {"checkpoint_every": -1}}]}, ["checkpoint_every", ">= 0"]),
])
def test_bad_experiment_values_exit_2_naming_the_setting(tmp_path, over, names):
    cfg = write_experiment(tmp_path, **over)
    cli_error(["run", "--config", cfg, "--out", tmp_path / "o", "--no-progress"], *names)
    assert not (tmp_path / "evil").exists() and not list(tmp_path.glob("**/evil"))


def test_zero_counts_that_mean_off_stay_allowed():
    from anomaly_bench.core.config import method_params

    assert method_params("alad", "smoke", {"iterations": 0})["iterations"] == 0  # 0: train by epochs
    assert method_params("autoencoder", "smoke", {"checkpoint_every": 0, "log_every": 0})["log_every"] == 0
    with pytest.raises(ConfigError, match="'epochs' must be >= 1"):
        method_params("alad", "smoke", {"epochs": 0})


@pytest.mark.parametrize("seeds", [",", " , ", "-1", "0,-2", "a,b"])
def test_bad_seeds_option(tmp_path, seeds):
    out = cli_error(run_args(tmp_path, "--seeds", seeds, "--out", tmp_path / "o"), "--seeds",
                    "comma-separated integers")
    assert "no job results" not in out


def test_out_under_a_file_or_read_only(tmp_path):
    (tmp_path / "afile").write_text("x")
    cli_error(run_args(tmp_path, "--out", tmp_path / "afile" / "sub"), "--out", "afile/sub", "writable")
    if os.geteuid() == 0:
        return  # root writes into read-only folders
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        cli_error(run_args(tmp_path, "--out", ro / "o"), "--out", "writable")
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------- items 4, 11: resume, restart, lost results
AE = {"name": "autoencoder", "params": {"iterations": 20, "resume_every": 10, "log_every": 5}}


def _as_if_killed(job: Path) -> None:
    """Leave the job as a kill after its last resume state leaves it: job.json says running, no scores."""
    meta = json.loads((job / "job.json").read_text())
    (job / "job.json").write_text(json.dumps({**meta, "status": "running"}))
    for f in job.glob("scores_*.csv"):
        f.unlink()


def test_changed_lr_restarts_instead_of_resuming_the_old_checkpoint(tmp_path):
    out, job = tmp_path / "o", tmp_path / "o/jobs/tiny/autoencoder/seed0"
    res = CliRunner().invoke(main, ["run", "--config", write_experiment(tmp_path, methods=[AE]), "--out", out,
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    old_scores = (job / "scores_inductive.csv").read_text()
    _as_if_killed(job)
    new = {**AE, "params": {**AE["params"], "lr": 0.01}}
    res = CliRunner().invoke(main, ["run", "--config", write_experiment(tmp_path, methods=[new]), "--out", out,
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "configuration changed since the checkpoint: lr 0.001 -> 0.01; restarting" in res.output
    meta = json.loads((job / "job.json").read_text())
    assert meta["status"] == "done" and meta["params"]["lr"] == 0.01
    assert (job / "scores_inductive.csv").read_text() != old_scores
    losses = [int(r.split(",")[0]) for r in (job / "work/losses.csv").read_text().splitlines()[1:]]
    assert losses == [5, 10, 15, 20]  # trained again from iteration 0, once


def test_resume_drops_loss_rows_logged_after_the_resume_state(tmp_path):
    from anomaly_bench.core.config import method_params
    from anomaly_bench.core.interface import FitContext, TrainSets
    from anomaly_bench.core.registry import get_method
    from helpers import KillAfterResumeSave, Killed, three_blobs

    p = method_params("autoencoder", "smoke", {"iterations": 20, "resume_every": 10, "log_every": 5})
    train = TrainSets(three_blobs(32, 32))
    with pytest.raises(Killed):
        get_method("autoencoder")(**p).fit(train, KillAfterResumeSave(workdir=tmp_path, progress=False, kill_step=10))
    with open(tmp_path / "losses.csv", "a") as fh:  # logged at 15, then SIGKILL before the resume state of 20
        fh.write("15,0.5\n")
    get_method("autoencoder")(**p).fit(train, FitContext(workdir=tmp_path, progress=False))
    rows = (tmp_path / "losses.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [5, 10, 15, 20] and "15,0.5" not in rows


def test_corrupt_resume_file_is_set_aside_and_deleted_scores_rerun_the_job(tmp_path):
    from anomaly_bench.harness.runner import Runner

    exp = parse_experiment(yaml.safe_load(write_experiment(tmp_path, methods=[AE, "example_pixel_knn"]).read_text()))
    out = tmp_path / "o"
    Runner(exp, out, progress=False, echo=lambda s: None).run()
    ae, knn = out / "jobs/tiny/autoencoder/seed0", out / "jobs/tiny/example_pixel_knn/seed0"
    before = (ae / "scores_inductive.csv").read_text()
    _as_if_killed(ae)
    (ae / "work/resume.pt").write_bytes(b"\x80\x02 half a pickle")
    (knn / "scores_inductive.csv").unlink()  # a finished job whose scores file was deleted
    lines: list[str] = []
    info = Runner(exp, out, progress=False, echo=lines.append).run()
    assert info["failed_jobs"] == []
    text = "\n".join(lines)
    assert "resume.pt is unreadable" in text and "resume.pt.corrupt" in text and "restarting from scratch" in text
    assert (ae / "work/resume.pt.corrupt").is_file()
    assert (ae / "scores_inductive.csv").read_text() == before  # trained from scratch: the same result
    assert "scores_inductive.csv is missing; rerunning the job" in text and "done already" not in text
    assert (knn / "scores_inductive.csv").is_file() and "example_pixel_knn" in (out / "table.md").read_text()


# ------------------------------------------------------------------------------ item 8: report and regress inputs
@pytest.fixture
def finished_run(tmp_path) -> Path:
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--config", write_experiment(tmp_path), "--out", out, "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("damage", ["truncated", "empty", "list"])
def test_report_on_a_damaged_job_json(finished_run, damage):
    meta = finished_run / "jobs/tiny/example_pixel_knn/seed0/job.json"
    text = {"truncated": meta.read_text()[:40], "empty": "", "list": "[1, 2]"}[damage]
    meta.write_text(text)
    cli_error(["report", finished_run], "example_pixel_knn/seed0/job.json", "rerun the same")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "labels"])
def test_report_on_a_damaged_scores_csv(finished_run, damage):
    f = finished_run / "jobs/tiny/example_pixel_knn/seed0/scores_inductive.csv"
    text = f.read_text()
    bad = {"truncated": text[:30], "garbage": "\x00\x01not,a\ncsv", "labels": text.replace(",0,", ",7,")}
    f.write_text(bad[damage])
    cli_error(["report", finished_run], "scores_inductive.csv", "delete it and rerun")


@pytest.mark.parametrize("content, names", [
    ('{"floor": 0.05, "values": {"a|b', ["not readable JSON"]),
    ('{"floor": 0.05}', ["no `values`"]),
    ('{"values": {"k": "high"}}', ["'k'", "numeric mean"]),
    ('{"values": {"k": 0.9}, "floor": "small"}', ["`floor`"]),
    ('[1, 2]', ["not an object"]),
])
def test_regress_checks_the_reference_before_running(tmp_path, content, names):
    ref = tmp_path / "ref.json"
    ref.write_text(content)
    out = tmp_path / "rg"
    cli_error(["regress", "--part", "statistical", "--reference", ref, "--experiment", write_experiment(tmp_path),
               "--out", out], "ref.json", "damaged", "--update", *names)
    assert not (out / "jobs").exists()  # nothing ran
    exact = tmp_path / "exact.json"
    exact.write_text(content if content.startswith("{\"floor\": 0.05, \"values") else '{"splits": []}')
    cli_error(["regress", "--part", "exact", "--exact-reference", exact, "--experiment", write_experiment(tmp_path),
               "--out", out], "exact.json", "damaged")


def test_regress_update_replaces_a_corrupt_reference(tmp_path, finished_run):
    ref = tmp_path / "ref.json"
    ref.write_text('{"values": {"trunc')
    res = CliRunner().invoke(main, ["regress", "--update", "--part", "statistical", "--from", str(finished_run),
                                    "--reference", str(ref), "--experiment", str(write_experiment(tmp_path))])
    assert res.exit_code == 0, res.output
    assert json.loads(ref.read_text())["values"]
