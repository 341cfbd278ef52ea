"""Command line: ``anomaly-bench run | list | report | regress | convert``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from anomaly_bench.core.config import shipped_path
from anomaly_bench.core.errors import BenchError

DEFAULT_EXPERIMENT = "default"


def _experiment_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return shipped_path(Path("experiments") / f"{name}.yaml")  # the checkout's, else the installed wheel's


def check_writable(folder: Path, what: str) -> None:
    """``folder`` exists (made if need be) and a file can be written in it, else a :class:`BenchError`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"{what} {folder}: cannot write there ({exc.strerror or exc}; a path under a file, or a "
                         f"read-only folder?); choose a writable output folder") from None


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anomaly-bench")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Benchmark unsupervised anomaly detection methods on medical images."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Experiment YAML (default: experiments/default.yaml: the phantom, every method, smoke profile).")
@click.option("--dataset", "datasets", multiple=True, help="Dataset card name, card YAML or data path (repeatable).")
@click.option("--method", "methods", multiple=True, help="Registered method name (repeatable). Default: all.")
@click.option("--profile", default=None, help="Method profile: smoke, ci, paper, ...")
@click.option("--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2.")
@click.option("--setting", "settings", multiple=True, type=click.Choice(["inductive", "transductive"]))
@click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder (default runs/<name>).")
@click.option("--plugin", "plugins", multiple=True, help="Plugin .py file or module that registers methods.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="Folder holding the datasets (replaces ../shared/data in the cards).")
@click.option("--image-size", type=int, default=None, help="Resize every dataset to this size (power of two >= 32).")
@click.option("--on-bad-image", type=click.Choice(["error", "skip"]), default=None,
              help="Unreadable images: stop with the file's name (error) or leave them out and list them (skip).")
@click.option("--train-sets", default=None, type=click.Choice(["healthy", "mixed+healthy", "mixed_union"]),
              help="Override every method's training sets.")
@click.option("--no-progress", is_flag=True, help="No progress bars (log lines only).")
@click.option("--executor", default="local", show_default=True, type=click.Choice(["local", "ray"]),
              help="local: jobs one after another in this process. ray: one Ray task per job with the resources "
                   "of its method profile (pip install 'anomaly-bench[ray]'; --out on a shared file system).")
@click.option("--ray-address", default=None,
              help="With --executor ray: the cluster to use (auto, host:port or ray://host:10001). Default: "
                   "$RAY_ADDRESS, else a local Ray instance started for this run.")
def run(config, datasets, methods, profile, seeds, settings, device, out, plugins, data_root, image_size,
        on_bad_image, train_sets, no_progress, executor, ray_address) -> None:
    """Train and score every (dataset, method, seed) job; write tables and plots. Resumes if interrupted."""
    # lazy: the harness (pandas, matplotlib, sklearn) loads only for the command that runs
    from anomaly_bench.core.config import read_yaml
    from anomaly_bench.core.experiment import DatasetSpec, MethodSpec, parse_experiment
    from anomaly_bench.core.registry import default_experiment_methods, load_plugin
    from anomaly_bench.harness.runner import Runner

    try:
        for p in plugins:
            load_plugin(p)
        path = _experiment_path(config or DEFAULT_EXPERIMENT)
        data = read_yaml(path)
        exp = parse_experiment(data, where=str(path))
        exp.plugins = list(dict.fromkeys([*exp.plugins, *plugins]))
        if datasets:
            exp.datasets = [DatasetSpec(card=d) for d in datasets]
        if methods:
            by_key = {m.key: m for m in exp.methods}
            exp.methods = [by_key.get(m, MethodSpec(name=m)) for m in methods]
        elif not exp.methods:
            exp.methods = [MethodSpec(name=m) for m in default_experiment_methods()]
        if profile:
            exp.profile = profile
            for m in exp.methods:
                m.profile = None
        if seeds is not None:
            try:
                parsed = [int(s) for s in seeds.split(",") if s.strip()]
            except ValueError:
                parsed = []
            if not parsed or min(parsed) < 0:
                raise BenchError(f"--seeds {seeds!r}: give comma-separated integers >= 0, e.g. 0,1,2")
            exp.seeds = parsed
            for d in exp.datasets:
                d.seeds = None  # --seeds applies to every dataset
        if settings:
            exp.settings = list(settings)
        if device:
            exp.device = device
        for d in exp.datasets:
            d.image_size = image_size or d.image_size
            d.on_bad_image = on_bad_image or d.on_bad_image
        if train_sets:
            for m in exp.methods:
                m.train_sets = train_sets
        if not exp.datasets:
            raise BenchError(f"{path}: no datasets; add `datasets:` or pass --dataset")
        if ray_address and executor != "ray":
            raise BenchError("--ray-address needs --executor ray")
        out_dir = Path(out or Path("runs") / exp.name)
        check_writable(out_dir, "--out")
        n_seeds = "/".join(str(len(exp.seeds_of(d))) for d in exp.datasets)
        click.echo(f"anomaly-bench run: {len(exp.datasets)} dataset(s) x {len(exp.methods)} method(s) x "
                   f"{n_seeds} seed(s), profile '{exp.profile}', output {out_dir}"
                   + (f", executor ray ({ray_address or 'local'})" if executor == "ray" else ""))
        info = Runner(exp, out_dir, data_root=data_root, progress=not no_progress, executor=executor,
                      ray_address=ray_address).run()
    except BenchError as exc:
        _fail(exc)
    click.echo(f"done in {info['wall_seconds']} s: {out_dir}/table.md")
    if info["failed_jobs"]:
        click.secho(f"{len(info['failed_jobs'])} job(s) failed: {', '.join(info['failed_jobs'])} "
                    f"(reasons in their job.json; rerun to retry them)", fg="yellow", err=True)
        sys.exit(1)


@main.command(name="list")
@click.argument("what", type=click.Choice(["methods", "datasets", "profiles"]))
@click.option("--plugin", "plugins", multiple=True)
def list_(what: str, plugins) -> None:
    """List registered methods, dataset cards (and whether their data is present), or profiles."""
    # lazy: the harness (pandas, matplotlib, sklearn) loads only for the command that runs
    from anomaly_bench.core.config import method_yaml_path, read_yaml
    from anomaly_bench.core.registry import METHODS, load_plugin
    from anomaly_bench.data.loading import list_cards

    try:
        for p in plugins:
            load_plugin(p)
        if what in ("methods", "profiles"):
            for name in METHODS.names():
                cls = METHODS.get(name)
                path = method_yaml_path(name)
                profs = sorted({**cls.profiles, **((read_yaml(path).get("profiles") or {}) if path else {})})
                doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
                click.echo(f"{name:20s} trains on {cls.default_train_sets:14s} profiles {','.join(profs):22s} "
                           f"{doc}")
        else:
            for c in list_cards():
                mark = click.style("present", fg="green") if c["present"] else click.style("absent ", fg="yellow")
                click.echo(f"{c['name']:24s} {c['format']:14s} {mark} {c.get('root') or '(embedded)'}")
    except BenchError as exc:
        _fail(exc)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--html", is_flag=True, help="Also write one self-contained report.html.")
@click.option("--threshold-rule", default=None, type=click.Choice(["holdout_healthy", "youden", "equal_error"]),
              help="Threshold of precision/recall/specificity/F1 (default: the run's experiment.yaml).")
@click.option("--selection", default=None, type=click.Choice(["last", "aucp"]),
              help="Checkpoint rule of the main table (default: the run's experiment.yaml, else last).")
def report(run_dir: str, html: bool, threshold_rule: str | None, selection: str | None) -> None:
    """Rebuild tables and figures of RUN_DIR from its saved scores."""
    # lazy: the harness (pandas, matplotlib, sklearn) loads only for the command that runs
    from anomaly_bench.reporting.write import build_reports

    try:
        build_reports(run_dir, threshold_rule, html=html, selection=selection)
        if html:
            click.echo(f"wrote {Path(run_dir) / 'report.html'}")
    except BenchError as exc:
        _fail(exc)
    click.echo(f"wrote {Path(run_dir) / 'table.md'}")


@main.command()
@click.option("--reference", default=None, type=click.Path(dir_okay=False),
              help="Statistical reference JSON (default results/reference/regression.json).")
@click.option("--exact-reference", default=None, type=click.Path(dir_okay=False),
              help="Exact reference JSON (default results/reference/regression_exact.json).")
@click.option("--tolerance", default=None, type=float,
              help="Least allowed drop of AUC/AP, the floor of max(floor, k*sd) (default: the reference's).")
@click.option("--experiment", default=None, type=click.Path(dir_okay=False),
              help="Regression experiment YAML (default experiments/regression.yaml).")
@click.option("--exact-config", default=None, type=click.Path(dir_okay=False),
              help="Exact-check YAML (default experiments/regression_exact.yaml).")
@click.option("--part", default="all", show_default=True, type=click.Choice(["all", "exact", "statistical"]),
              help="exact: float64 few-step scores and splits only (about a minute); statistical: the seed-0 "
                   "regression run against the reference's spread only.")
@click.option("--out", default="runs/regress", type=click.Path(file_okay=False), show_default=True)
@click.option("--data-root", default=None, type=click.Path(file_okay=False))
@click.option("--min-rank-corr", default=None, type=float,
              help="Least Spearman correlation of per-image scores with the reference's sample, where the reference "
                   "keeps one (default: the reference's, else 0.9).")
@click.option("--update", is_flag=True, help="Rewrite the references (the commit that does so must say why).")
@click.option("--from", "from_runs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="With --update: build the statistical reference from these finished runs of the regression "
                   "experiment (repeatable; e.g. seeds 0-2 on two kernel paths) instead of running it once here.")
@click.option("--fresh/--resume", default=True, show_default=True,
              help="Start from an empty output folder (default) or reuse finished jobs.")
def regress(reference, exact_reference, tolerance, experiment, exact_config, part, out, data_root, min_rank_corr,
            update, from_runs, fresh) -> None:
    """Check this code against the committed references: exact float64 checks, then the statistical run."""
    # lazy: the harness (pandas, matplotlib, sklearn) loads only for the command that runs
    from anomaly_bench.harness import regress as rg
    from anomaly_bench.harness import regress_exact as rx
    from anomaly_bench.harness.references import read_reference
    from anomaly_bench.harness.run_folder import RunFolder

    ref_path = Path(reference) if reference else rg.DEFAULT_REFERENCE
    exact_path = Path(exact_reference) if exact_reference else rx.DEFAULT_EXACT_REFERENCE
    exp_path = Path(experiment) if experiment else rg.DEFAULT_EXPERIMENT
    exact_cfg = Path(exact_config) if exact_config else rx.DEFAULT_EXACT_CONFIG
    out_dir = Path(out)
    problems: list[str] = []
    try:
        # everything is checked before anything is deleted or run
        # lazy: the harness loads only for the command that runs
        from anomaly_bench.core.experiment import load_experiment
        from anomaly_bench.harness.versions import versions

        load_experiment(exp_path)
        wanted = {"all": ("exact", "statistical"), "exact": ("exact",), "statistical": ("statistical",)}[part]
        refs = {"exact": exact_path, "statistical": ref_path}
        if not update:
            for what in wanted:
                if not refs[what].is_file():
                    raise BenchError(f"{what} reference {refs[what]} not found; create it with "
                                     f"`anomaly-bench regress --update` (see README, Regression)")
        ref = read_reference(ref_path, "statistical", update) if "statistical" in wanted else None
        exact_ref = read_reference(exact_path, "exact", update, exact=True) if "exact" in wanted else None
        floor = tolerance if tolerance is not None else float((ref or {}).get("floor", rg.DEFAULT_FLOOR))
        if min_rank_corr is None:
            min_rank_corr = float((ref or {}).get("min_rank_corr", rg.DEFAULT_MIN_RANK_CORR))
        if "statistical" in wanted and not from_runs:
            rg.prepare_out(out_dir, fresh)

        if "exact" in wanted:
            record = rx.run_exact(exact_cfg, exp_path, data_root, echo=click.echo)
            if update:
                rx.write_exact_reference(exact_path, record, versions())
                click.echo(f"exact reference written: {exact_path} ({len(record['methods'])} methods, "
                           f"{len(record['splits'])} splits)")
            else:
                rows, exact_problems = rx.compare_exact(exact_ref, record)
                click.echo("\nexact checks (float64, rtol "
                           f"{exact_ref.get('rtol')}; kernel path "
                           f"{versions()['cpu']['kernel_path']}):")
                for r in rows:
                    diff = "" if r["max_rel_diff"] != r["max_rel_diff"] else f"  max rel diff {r['max_rel_diff']:.2e}"
                    click.echo(f"  {r['what']:<28} {r['status']}{diff}")
                problems += exact_problems

        if "statistical" in wanted:
            if update:
                if from_runs:
                    runs = [rg.read_run(Path(r)) for r in from_runs]
                else:
                    metrics, scores, info, _ = rg.run_regression(out_dir, exp_path, data_root)
                    runs = [(metrics, scores, info)]
                blob = rg.build_reference(runs, floor, rg.DEFAULT_K if ref is None else float(ref.get(
                    "k", rg.DEFAULT_K)), min_rank_corr, echo=click.echo)
                rg.write_reference(ref_path, blob)
                click.echo(f"reference written: {ref_path} ({len(blob['values'])} values from {len(runs)} run(s); "
                           f"{len(blob['scores'])} score samples kept for the rank guard; commit it with the reason)")
            else:
                metrics, scores, info, skipped = rg.run_regression(out_dir, exp_path, data_root)
                new = rg.summarise(metrics)
                click.echo(f"\nregression run: {info['regress_seconds']} s on {info['device']} "
                           f"({info['versions']['cpu_threads']} threads, kernel path "
                           f"{info['versions']['cpu']['kernel_path']})")
                ref["min_rank_corr"] = min_rank_corr
                cmp = rg.compare(ref, new, floor, info["failed_jobs"], rg.nonfinite_jobs(scores), skipped,
                                 rg.score_sample(scores), seeds=sorted(int(x) for x in metrics["seed"].unique()))
                click.echo(rg.format_table(cmp.table))
                cmp.table.to_csv(RunFolder(out_dir).comparison_path, index=False)
                for line in cmp.improvements:
                    click.secho(f"improved: {line}", fg="green")
                if skipped:
                    click.secho(f"note: datasets skipped for lack of data: {sorted(skipped)}", fg="yellow")
                problems += cmp.problems
        if update:
            return
        if problems:
            click.secho(f"\nREGRESSION: {len(problems)} problem(s):", fg="red", err=True)
            for p in problems:
                click.secho(f"  - {p}", fg="red", err=True)
            sys.exit(1)
        floor_note = f"; floor {floor}" if "statistical" in wanted else ""
        click.secho(f"\nregression check passed ({', '.join(wanted)}{floor_note})", fg="green")
    except BenchError as exc:
        _fail(exc)


#: converters of ``anomaly-bench convert`` (the keys of anomaly_bench.data.convert_medianomaly.CONVERTERS)
CONVERT_KINDS = ("medianomaly-isic2018", "medianomaly-brats2021")


@main.command()
@click.argument("kind", type=click.Choice(CONVERT_KINDS))
@click.argument("src", type=click.Path())
@click.option("--force", is_flag=True, help="Replace a different data.json already in SRC.")
@click.option("--isic-test-split", type=click.Choice(["test", "validation"]), default="test",
              help="ISIC 2018: the set tested on (default test, as MedIAnomaly; validation is a deviation).")
def convert(kind: str, src: str, force: bool, isic_test_split: str) -> None:
    """Write the data.json that makes a MedIAnomaly download load (run once on the download folder SRC):
    medianomaly-isic2018 (ISIC 2018 Task 3 images + label CSVs), medianomaly-brats2021 (BraTS2021.tar.gz)."""
    # lazy: the converters import the image helpers (Pillow, numpy), not needed by the other commands
    from anomaly_bench.data.convert_medianomaly import convert as run_convert

    try:
        options = {}
        if kind == "medianomaly-isic2018":
            options["test_split"] = isic_test_split.capitalize()
        elif isic_test_split != "test":
            raise BenchError(f"--isic-test-split is an option of medianomaly-isic2018, not of {kind}")
        result = run_convert(kind, src, force=force, **options)
    except BenchError as exc:
        _fail(exc)
    click.echo(result.summary())
    for note in result.notes:
        click.echo(f"note: {note}")


if __name__ == "__main__":  # pragma: no cover
    main()
