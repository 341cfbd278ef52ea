"""Hostile inputs, part A (issue 22): whatever a plugin or a setting does wrong, the run ends with a correct result
or a failed job with its reason (never a traceback for user error, never a finished result lost, never a
silently wrong label), and a user error is one message with exit code 2. The corpus is generated here."""

import json
import textwrap

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from anomaly_bench.cli import main
from anomaly_bench.core.errors import BenchError, ConfigError
from anomaly_bench.harness.runner import Runner
from anomaly_bench.reporting.write import build_reports
from conftest import EXAMPLE_PLUGIN
from test_runner import TINY_CARD, tiny_experiment


def hostile_plugin(tmp_path, methods: dict[str, tuple[str, str]], name: str = "hostile.py") -> str:
    """A plugin file registering one method per ``{name: (fit body, score body)}``; bodies see ``train``/``images``
    and ``np``; ``score`` must return a ScoreResult."""
    src = ["import numpy as np",
           "from anomaly_bench.interface import AnomalyMethod, ScoreResult",
           "from anomaly_bench.registry import register_method"]
    for method, (fit, score) in methods.items():
        src.append(textwrap.dedent(f"""
            @register_method({method!r}, overwrite=True)
            class M_{method}(AnomalyMethod):
                def fit(self, train, ctx=None):
                    {fit}
                    return self
                def score(self, images):
                    n = len(images)
                    {score}
                def state_dict(self):
                    return {{}}
                def load_state_dict(self, s):
                    pass
            """))
    path = tmp_path / name
    path.write_text("\n".join(src))
    return str(path)


MEAN_SCORE = "return ScoreResult(images.flatten(1).mean(1).double().numpy())"


def _run(tmp_path, plugin, methods, **over):
    exp = tiny_experiment(plugins=[str(EXAMPLE_PLUGIN), plugin], methods=methods, **{"settings": ["inductive"], **over})
    lines: list[str] = []
    info = Runner(exp, tmp_path / "run", progress=False, echo=lines.append).run()
    return info, lines


def _job(tmp_path, method):
    return json.loads((tmp_path / f"run/jobs/tiny/{method}/seed0/job.json").read_text())


# ---------------------------------------------------------------------------------------------- item 2
def test_any_exception_of_a_plugin_fails_its_job_only(tmp_path):
    raising = {"keyerror_m": "raise KeyError('no such key')", "typeerror_m": "raise TypeError('bad type')",
               "attrerror_m": "raise AttributeError('no attr')", "zerodiv_m": "1 / 0",
               "sysexit_m": "raise SystemExit(3)"}
    plugin = hostile_plugin(tmp_path, {m: (body, MEAN_SCORE) for m, body in raising.items()})
    info, lines = _run(tmp_path, plugin, [*raising, "example_pixel_knn"])
    assert info["failed_jobs"] == [f"tiny/{m}/seed0" for m in raising]
    for m, kind in zip(raising, ["KeyError", "TypeError", "AttributeError", "ZeroDivisionError", "SystemExit"]):
        job = _job(tmp_path, m)
        assert job["status"] == "failed" and job["error"].startswith(kind), job
        assert kind in job["traceback"] and "fit" in job["traceback"]
    assert _job(tmp_path, "example_pixel_knn")["status"] == "done"
    table = (tmp_path / "run/table.md").read_text()
    assert "example_pixel_knn" in table and "keyerror_m | failed" in table
    assert (tmp_path / "run/report.html").is_file()


def test_keyboard_interrupt_still_stops_the_run(tmp_path):
    plugin = hostile_plugin(tmp_path, {"ctrl_c": ("raise KeyboardInterrupt", MEAN_SCORE)})
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, plugin, ["ctrl_c", "example_pixel_knn"])
    assert not (tmp_path / "run/jobs/tiny/example_pixel_knn").exists()  # the run stopped; a rerun resumes it


def test_batch_size_zero_is_a_config_error_up_front(tmp_path):
    with pytest.raises(ConfigError, match="batch_size.*>= 1"):
        Runner(tiny_experiment(methods=[{"name": "autoencoder", "params": {"batch_size": 0}}]), tmp_path / "run",
               progress=False, echo=lambda s: None)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "profile": "smoke", "device": "cpu", "datasets": [TINY_CARD],
                                   "methods": [{"name": "autoencoder", "params": {"batch_size": 0}}]}))
    res = CliRunner().invoke(main, ["run", "--config", str(cfg), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 2 and "batch_size" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o/jobs").exists()


# ---------------------------------------------------------------------------------------------- item 3
def test_maps_of_the_wrong_shape_fail_that_job_with_the_shapes(tmp_path):
    plugin = hostile_plugin(tmp_path, {
        "tiny_maps": ("pass", "return ScoreResult(np.zeros(n), maps=np.zeros((n, 7, 5)))"),
        "few_maps": ("pass", "return ScoreResult(np.arange(n, dtype=float), maps=np.zeros((1, 64, 64)))")})
    info, lines = _run(tmp_path, plugin, ["tiny_maps", "few_maps", "autoencoder"])
    assert info["failed_jobs"] == ["tiny/tiny_maps/seed0", "tiny/few_maps/seed0"]
    err = _job(tmp_path, "tiny_maps")["error"]
    assert "'tiny_maps'" in err and "7, 5)" in err and "64, 64)" in err
    assert "(1, 64, 64)" in _job(tmp_path, "few_maps")["error"]
    assert _job(tmp_path, "autoencoder")["status"] == "done"
    assert (tmp_path / "run/report.html").is_file() and (tmp_path / "run/maps_tiny.png").is_file()


def test_an_inconsistent_maps_npz_is_left_out_of_the_gallery_and_the_report_is_written(tmp_path):
    good = "return ScoreResult(images.flatten(1).mean(1).double().numpy(), maps=images[:, 0].abs().numpy())"
    plugin = hostile_plugin(tmp_path, {"mapper_a": ("pass", good), "mapper_b": ("pass", good)})
    _run(tmp_path, plugin, ["mapper_a", "mapper_b"])
    npz = tmp_path / "run/jobs/tiny/mapper_b/seed0/maps.npz"
    arrays = dict(np.load(npz))
    np.savez_compressed(npz, **{**arrays, "maps": arrays["maps"][:1]})  # one map for several images
    (tmp_path / "run/report.html").unlink()
    build_reports(tmp_path / "run")  # the old code: IndexError in the gallery, no report.html
    html = (tmp_path / "run/report.html").read_text()
    assert "Left out of the map gallery" in html and "mapper_b" in html and "(1, 64, 64)" in html
    assert (tmp_path / "run/maps_tiny.png").is_file()  # mapper_a's maps are still drawn
    np.savez_compressed(npz, **{**arrays, "maps": np.full_like(arrays["maps"], np.nan)})
    build_reports(tmp_path / "run")
    assert "non-finite map values" in (tmp_path / "run/report.html").read_text()


# ---------------------------------------------------------------------------------------------- item 5
def test_non_finite_scores_fail_the_job_and_say_how_many(tmp_path):
    plugin = hostile_plugin(tmp_path, {
        "all_nan": ("pass", "return ScoreResult(np.full(n, np.nan))"),
        "one_inf": ("pass", "s = images.flatten(1).mean(1).double().numpy()\n"
                            "                    s[n // 2] = np.inf\n"
                            "                    return ScoreResult(s)")})
    info, lines = _run(tmp_path, plugin, ["all_nan", "one_inf", "example_pixel_knn"])
    assert info["failed_jobs"] == ["tiny/all_nan/seed0", "tiny/one_inf/seed0"]
    err = _job(tmp_path, "all_nan")["error"]
    assert "method 'all_nan' returned" in err and "non-finite scores of" in err
    n = int(err.split("returned ")[1].split()[0])
    assert f"non-finite scores of {n} " in err  # all of them
    assert "returned 1 non-finite scores of" in _job(tmp_path, "one_inf")["error"]
    assert any("FAILED" in s and "all_nan" in s for s in lines)
    table = (tmp_path / "run/table.md").read_text()
    assert "all_nan | failed" in table and "one_inf | failed" in table and "example_pixel_knn | 0." in table
    assert not (tmp_path / "run/jobs/tiny/all_nan/seed0/scores_inductive.csv").exists()


# ---------------------------------------------------------------------------------------------- item 6
def test_an_empty_mixed_set_skips_transductive_with_one_note_and_the_rest_runs(tmp_path):
    card = {**TINY_CARD, "split": {**TINY_CARD["split"], "mixed_size": 0}}
    exp = tiny_experiment(datasets=[card], methods=["example_pixel_knn", "medai_anomalypro"])
    lines: list[str] = []
    info = Runner(exp, tmp_path / "run", progress=False, echo=lines.append).run()
    assert info["failed_jobs"] == ["tiny/medai_anomalypro/seed0"]
    notes = [s for s in lines if "transductive setting skipped" in s]
    assert len(notes) == 1 and "mixed set A" in notes[0] and "split.mixed_size" in notes[0]
    assert "transductive" in info["datasets"]["tiny"]["skipped_settings"]
    run_json = json.loads((tmp_path / "run/run.json").read_text())
    assert "transductive" in run_json["datasets"]["tiny"]["skipped_settings"]
    assert _job(tmp_path, "example_pixel_knn")["status"] == "done"  # trains on healthy only: inductive scored
    assert (tmp_path / "run/jobs/tiny/example_pixel_knn/seed0/scores_inductive.csv").is_file()
    err = _job(tmp_path, "medai_anomalypro")["error"]
    assert err.startswith("DataError") and "split.mixed_size" in err
    table = (tmp_path / "run/table.md").read_text()
    assert "not scored" in table and "transductive setting skipped" in table
    assert "No objects to concatenate" not in json.dumps(_job(tmp_path, "example_pixel_knn"))


# ---------------------------------------------------------------------------------------------- item 9
def test_another_experiment_into_a_finished_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = tiny_experiment(methods=["example_pixel_knn"], settings=["inductive"])
    Runner(first, out, progress=False, echo=lambda s: None).run()
    exp_yaml, table = (out / "experiment.yaml").read_text(), (out / "table.md").read_text()
    other_card = {**TINY_CARD, "phantom": {**TINY_CARD["phantom"], "seed": 6}}
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump({**yaml.safe_load(exp_yaml), "datasets": [other_card]}))
    res = CliRunner().invoke(main, ["run", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert str(out) in res.output and "datasets" in res.output and "new --out" in res.output
    assert "Traceback" not in res.output
    more_seeds = tiny_experiment(methods=["example_pixel_knn"], settings=["inductive"], seeds=[0, 1])
    with pytest.raises(BenchError, match=r"differs in: seeds.*other seeds"):
        Runner(more_seeds, out, progress=False, echo=lambda s: None).run()
    other_methods = tiny_experiment(methods=["autoencoder"], settings=["inductive"])
    with pytest.raises(BenchError, match=r"differs in: methods"):  # example_pixel_knn's results would lose their config
        Runner(other_methods, out, progress=False, echo=lambda s: None).run()
    # nothing of the finished run was touched, and the same experiment still resumes (everything skipped)
    assert (out / "experiment.yaml").read_text() == exp_yaml and (out / "table.md").read_text() == table
    lines: list[str] = []
    Runner(tiny_experiment(methods=["example_pixel_knn"], settings=["inductive"]), out, progress=False,
           echo=lines.append).run()
    assert any("done already, skipped" in s for s in lines)
