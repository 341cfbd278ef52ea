"""Run one (dataset, method, seed) job into its job folder: fit, score every setting, save the model, the map
gallery arrays, pixel metrics and (for methods that save checkpoints) the pseudo-AUC selection; record status,
parameters, timings, memory and the training-health evidence (``health``: the final model's reconstructions of the
held-out healthy images against the mean training image, the loss log's last 20 %; see
:mod:`anomaly_bench.evaluation.health`) in ``job.json`` (:class:`anomaly_bench.harness.run_folder.JobFolder`).

A job whose ``job.json`` says ``done`` with the same configuration is skipped; a failed job (non-finite loss, out
of memory, any exception but a configuration error) is recorded with its reason and last good checkpoint.
:class:`JobRunner` is what the local runner and each Ray task use (the runner's ``Runner`` extends it).
"""

from __future__ import annotations

import resource
import time
import traceback
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.experiment import Experiment
from anomaly_bench.core.interface import FitContext, ScoreResult, resolve_device
from anomaly_bench.core.registry import get_method, load_plugin
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.data.split import Split
from anomaly_bench.evaluation.health import apply_heldout_rule, job_health
from anomaly_bench.evaluation.metrics import label_free_threshold, pixel_metrics
from anomaly_bench.harness.jobs import Job, build_train_sets, restart_if_changed
from anomaly_bench.harness.scoring import HEALTH_MAX_IMAGES, mean_of, score_images
from anomaly_bench.harness.selection import select_checkpoint
from anomaly_bench.harness.versions import versions
from anomaly_bench.nn.common import seed_everything

SETTING_ROLE = {"inductive": "test", "transductive": "mixed"}


def map_indices(ds: ImageDataset, test_idx: np.ndarray, k: int) -> np.ndarray:
    """A fixed, balanced handful of test images for the map gallery (diseased with masks first)."""
    lab = ds.labels[test_idx]
    dis = test_idx[lab == 1]
    if ds.masks is not None:
        order = np.argsort(-ds.masks[dis].reshape(len(dis), -1).sum(1), kind="stable")
        dis = dis[order[: max(1, len(order) // 2)]]
    healthy = test_idx[lab == 0]
    kd = min(len(dis), (k + 1) // 2)
    return np.concatenate([dis[:kd], healthy[: k - kd]])


class JobRunner:
    """Runs jobs of ``exp`` on its device (``resolve=False``: none yet; the Ray driver leaves the device to each
    task). Loads the experiment's plugins and validates every method's configuration on creation."""

    def __init__(self, exp: Experiment, progress: bool = True, echo: Callable[[str], None] = print,
                 resolve: bool = True):
        self.exp, self.progress, self.echo = exp, progress, echo
        for p in exp.plugins:
            load_plugin(p)
        self.device = resolve_device(exp.device) if resolve else None
        if self.device is None and exp.device not in ("auto", "", None):
            torch.device(exp.device)  # still a valid device name
        for m in exp.methods:  # validate every method's config before any training starts
            get_method(m.name)
            method_params(m.name, m.profile or exp.profile, m.params)

    def job_config(self, job: Job, device: str | torch.device | None = None) -> tuple[dict[str, Any], str]:
        """The job's resolved parameters and its configuration fingerprint (on ``device``, default the run's)."""
        m = job.method
        params = method_params(m.name, m.profile or self.exp.profile,
                               {**m.params, "seed": job.seed, "device": str(device or self.device)})
        return params, m.fingerprint(self.exp.profile, params)

    def job_is_done(self, job: Job, fingerprint: str) -> bool:
        """True when ``job.json`` says done with this configuration and its scores are there: the job is skipped."""
        return job.folder.is_done(fingerprint, self.exp.settings, self.echo)

    def run_job(self, job: Job, ds: ImageDataset, split: Split, extra_meta: dict[str, Any] | None = None) -> str:
        exp, m, jf = self.exp, job.method, job.folder
        profile = m.profile or exp.profile
        cls = get_method(m.name)
        params, fp = self.job_config(job)
        if self.job_is_done(job, fp):
            self.echo("  done already, skipped")
            return "skipped"
        train_sets = m.train_sets or cls.default_train_sets
        meta: dict[str, Any] = {
            "status": "running", "dataset": job.dataset, "method": m.key, "method_name": m.name, "seed": job.seed,
            "profile": profile, "params": params, "train_sets": train_sets, "config_fingerprint": fp,
            "data_fingerprint": ds.fingerprint(), "versions": versions(), "device": str(self.device),
            **(extra_meta or {}),
        }
        old_meta = jf.read_meta()
        jf.write_meta(meta)
        restart_if_changed(jf, old_meta, meta, cls, self.echo)
        ctx = FitContext(workdir=jf.work_dir, checkpoint_every=int(params.get("checkpoint_every", 0) or 0),
                         progress=self.progress, description=f"{job.dataset}/{m.key}/s{job.seed}",
                         on_event=lambda msg: self.echo(f"  {msg}"))
        try:
            train = build_train_sets(ds, split, train_sets, stream=cls.streams_images)
            meta["n_train"] = {"healthy": len(train.healthy), "mixed": 0 if train.mixed is None else len(train.mixed)}
            seed_everything(job.seed)
            model = cls(**params)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.time()
            model.fit(train, ctx)
            meta["fit_seconds"] = round(time.time() - t0, 2)
            if ctx.warnings:
                meta["warnings"] = list(ctx.warnings)
            model.save(jf.model_path)
            t0 = time.time()
            frames, last_test, holdout = self._score_settings(model, ds, split, job, "last")
            meta["score_seconds"] = round(time.time() - t0, 2)
            meta["health"] = self._health(cls, ds, split, holdout, jf)
            self._save_maps(model, ds, split, job)
            meta["pixel_metrics"] = self._pixel_metrics(ds, split, last_test)
            meta["backbone_weights"] = getattr(model, "backbone_weights", None)
            meta["approximate"] = getattr(model, "approximate", None)
            if m.selection and ctx.selection_checkpoints:
                frames += self._select(model, ds, split, job, ctx, meta)
            for setting in exp.settings:  # a setting with no images (empty set A: transductive) has no file
                parts = [f for f in frames if f["setting"].iloc[0] == setting]
                if parts:
                    jf.write_scores(setting, pd.concat(parts))
            meta["status"] = "done"
        except (Exception, SystemExit) as exc:  # a plugin's KeyError or sys.exit fails its job, not the run
            if isinstance(exc, ConfigError):
                raise
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower():
                error += (" -- out of memory: lower the method's batch_size (or score_batch_size), use a smaller "
                          "--image-size or the `ci` profile, or run on a device with more memory; rerunning the "
                          "same command resumes this job from its last checkpoint")
            if self.device.type == "cuda":  # free the failed job's memory for the jobs that follow
                torch.cuda.empty_cache()
            meta.update(status="failed", error=error,
                        traceback=traceback.format_exc(limit=8), last_checkpoint=ctx.last_checkpoint())
            self.echo(f"  FAILED: {meta['error']}\n  last good checkpoint: {ctx.last_checkpoint() or 'none'}")
        meta["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if self.device.type == "cuda":
            meta["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        jf.write_meta(meta)
        if meta["status"] == "done":
            self.echo(f"  fit {meta['fit_seconds']}s, score {meta['score_seconds']}s")
        return meta["status"]

    def _score_settings(self, model, ds: ImageDataset, split: Split, job: Job, selection: str):
        """(score frames of every setting, the inductive test ScoreResult, the held-out healthy one or None)."""
        frames, test_result = [], None
        thr, holdout = self._label_free_thresholds(model, ds, split, job.method.key)
        for setting in self.exp.settings:
            idx = split.indices(SETTING_ROLE[setting])
            if len(idx) == 0:
                continue
            res = score_images(model, ds.images.take(idx), job.method.key,
                               f"{SETTING_ROLE[setting]}-set images ({setting} setting)",
                               keep_maps=setting == "inductive" and ds.masks is not None, keep_reconstructions=False)
            if setting == "inductive":
                test_result = res
            frames.append(pd.DataFrame({
                "dataset": job.dataset, "setting": setting, "method": job.method.key, "selection": selection,
                "seed": job.seed, "id": [ds.ids[i] for i in idx], "subject": [ds.subject_ids[i] for i in idx],
                "cluster": [f"u{split.units[i]}" for i in idx], "label": ds.labels[idx], "score": res.scores,
                **thr}))
        return frames, test_result, holdout

    def _label_free_thresholds(self, model, ds: ImageDataset, split: Split, method: str
                               ) -> tuple[dict[str, float], ScoreResult | None]:
        """The ``holdout_healthy`` thresholds (image and subject-mean scores) from the held-out healthy images
        alone: no test image, no label (:func:`anomaly_bench.evaluation.metrics.label_free_threshold`); and the
        ScoreResult of those images (None when there are none)."""
        idx = split.indices("holdout_healthy")
        if len(idx) == 0:
            return {"threshold": np.nan, "subject_threshold": np.nan}, None
        res = score_images(model, ds.images.take(idx), method, "held-out healthy images (label-free threshold)",
                           keep_maps=False, max_kept=HEALTH_MAX_IMAGES)
        h = np.asarray(res.scores, dtype=np.float64)
        q = self.exp.threshold_specificity
        subj = pd.Series(h).groupby(np.asarray([ds.subject_ids[i] for i in idx], dtype=object)).mean()
        return {"threshold": label_free_threshold(h, q), "subject_threshold": label_free_threshold(subj, q)}, res

    def _health(self, cls, ds: ImageDataset, split: Split, holdout: ScoreResult | None, jf) -> dict[str, Any]:
        """``job.json["health"]``: the final model's reconstructions of the held-out healthy images (the scoring
        the thresholds already did) against the images and against the mean training image of set B, and the
        loss log (:func:`anomaly_bench.evaluation.health.job_health`)."""
        idx = split.indices("holdout_healthy")[:HEALTH_MAX_IMAGES]  # the images whose reconstructions were kept
        mean_image = mean_of(ds.images.take(split.indices("healthy")))
        return job_health(ds.images[torch.as_tensor(idx)], None if holdout is None else holdout.reconstructions,
                          mean_image, jf.read_losses(), health_loss=cls.health_loss,
                          health_rows=cls.health_loss_rows, critic_rows=cls.health_critic_rows,
                          judge_mae=cls.health_judge_mae)

    def _select(self, model, ds, split, job: Job, ctx: FitContext, meta: dict) -> list[pd.DataFrame]:
        hm, hh = split.indices("holdout_mixed"), split.indices("holdout_healthy")
        if len(hm) == 0 or len(hh) == 0:
            meta["selection"] = ("skipped: the published split has no hold-out sets (split.holdout_fraction > 0 "
                                 "carves them, a deviation from the published protocol)"
                                 if "published" in split.report else
                                 "skipped: empty hold-out sets (split.holdout_fraction)")
            return []
        test = split.indices("test")
        sel = select_checkpoint(model, ctx.selection_checkpoints, ds.images.take(hm), ds.images.take(hh),
                                ds.images.take(test), ds.labels[test])
        job.folder.write_selection(sel.table)
        apply_heldout_rule(meta.get("health"), sel.table)
        meta["selection"] = {"rule": "max pseudo-AUC on held-out A vs B", "best_iteration": sel.best_iteration,
                             "n_checkpoints": len(sel.table), "table": job.folder.selection_path.name,
                             "note": "oracle_test_auc in selection.csv is for analysis only; never used to select"}
        frames, _, _ = self._score_settings(model, ds, split, job, "aucp")
        return frames

    def _save_maps(self, model, ds: ImageDataset, split: Split, job: Job) -> None:
        idx = map_indices(ds, split.indices("test"), self.exp.n_maps)
        if len(idx) == 0:
            return
        res = score_images(model, ds.images.take(idx), job.method.key, "map-gallery test images")
        arrays = {"images": ds.images[torch.as_tensor(idx)][:, 0].numpy(), "labels": ds.labels[idx],
                  "ids": np.array([ds.ids[i] for i in idx]), "scores": res.scores}
        if res.maps is not None:
            arrays["maps"] = res.maps
        if res.reconstructions is not None:
            arrays["reconstructions"] = res.reconstructions
        if ds.masks is not None:
            arrays["masks"] = ds.masks[idx]
        job.folder.write_maps(arrays)

    def _pixel_metrics(self, ds: ImageDataset, split: Split, res) -> dict | None:
        if res is None or res.maps is None or ds.masks is None:
            return None
        masks = ds.masks[split.indices("test")]
        if not masks.any():
            return None
        return pixel_metrics(res.maps, masks)
