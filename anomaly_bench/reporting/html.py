"""The one-file HTML report of a run (``report.html``): configuration, job status, tables, data notes and the
figures embedded as base64, so it needs no server or network. The figures themselves are drawn by
:mod:`anomaly_bench.reporting.figures`; the tables come from :mod:`anomaly_bench.reporting.tables`.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from anomaly_bench.harness.run_folder import RunFolder
from anomaly_bench.reporting.figures import gallery_problems
from anomaly_bench.reporting.health import HEADERS as HEALTH_HEADERS
from anomaly_bench.reporting.health import health_explanation, health_tables
from anomaly_bench.reporting.inputs import read_jobs, rule_from_experiment, split_by_selection
from anomaly_bench.reporting.notes import data_note_summary, data_notes
from anomaly_bench.reporting.tables import (
    DEFAULT_REFERENCE,
    FAILED,
    PAPER_HEADERS,
    Tables,
    build_tables,
    paper_rows,
    row_empty,
)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;
line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border-top:1px solid #ccc;border-bottom:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
td.failed{color:#b00}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
img{max-width:100%;height:auto;border:1px solid #eee}
.notes{font-size:.85em;color:#444}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _table_html(headers: list[str], rows: list[list[tuple[str, bool]]]) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
    for row in rows:
        tds = []
        for text, bold in row:
            cls = ' class="failed"' if text == FAILED else ""
            body = f"<b>{_esc(text)}</b>" if bold else _esc(text)
            tds.append(f"<td{cls}>{body}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def _tables_html(tables: Tables) -> str:
    parts = []
    for b in tables.blocks:
        rows = [[(lab, False)] + [(b.cells[lab][k].text, b.cells[lab][k].bold) for k, _ in b.columns]
                for lab in tables.rows if not row_empty(b, lab)]
        parts.append(f"<h3>{_esc(b.title)}</h3>")
        parts.append(_table_html(["Method"] + [h for _, h in b.columns], rows))
    parts.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in tables.notes) + "</ul>")
    if len(tables.paper):
        parts.append("<h3>Layout of the seed paper's Table 1</h3>")
        parts.append(_table_html(list(PAPER_HEADERS), [[(c, False) for c in r] for r in paper_rows(tables)]))
    return "\n".join(parts)


def _kv_html(data: dict) -> str:
    rows = []
    for k, v in data.items():
        if isinstance(v, (dict, list)):
            val = f"<pre>{_esc(json.dumps(v, indent=1, default=str))}</pre>"
        else:
            val = _esc(v)
        rows.append(f"<tr><th>{_esc(k)}</th><td style='text-align:left'>{val}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _config_html(run_dir: Path) -> str:
    parts = []
    folder = RunFolder(run_dir)
    if folder.run_info_path.is_file():
        try:
            info = folder.read_run_info()
            parts.append("<h3>Run (run.json: versions, git commit, data fingerprints, timings)</h3>")
            parts.append(_kv_html(info) if isinstance(info, dict) else f"<pre>{_esc(info)}</pre>")
        except ValueError as exc:
            parts.append(f"<p>run.json unreadable: {_esc(exc)}</p>")
    exp = folder.experiment_path
    if exp.is_file():
        parts.append("<h3>Experiment (experiment.yaml)</h3>")
        parts.append(f"<pre>{_esc(exp.read_text(errors='replace'))}</pre>")
    return "\n".join(parts) if parts else "<p>No experiment.yaml or run.json in this run folder.</p>"


def _data_html(run_dir: Path) -> str:
    """Per dataset: size, fingerprint, duplicate groups, the confound check, and the images left out
    (on_bad_image: skip)."""
    out = []
    for n in data_notes(run_dir):
        out.append(f"<p><b>{_esc(n['dataset'])}</b>: {_esc(n['n_images'])} images, fingerprint "
                   f"<code>{_esc(n['fingerprint'])}</code>; {_esc(data_note_summary(n))}</p>")
        for why in (n.get("skipped_settings") or {}).values():
            out.append(f"<p><b>Not scored</b>: {_esc(why)}</p>")
        out += [f"<p>{_esc(n[key])}</p>" for key in ("split", "leakage") if n.get(key)]
        out += [f"<p>{_esc(line)}</p>" for line in n.get("published") or []]
        if n.get("confound"):
            text, warning = n["confound"]
            out.append(f"<p>{_esc(text)}</p>" + (f"<p><b>Warning</b>: {_esc(warning)}</p>" if warning else ""))
        if n["skipped"]:
            out.append(_table_html(["Left out", "Reason"], [[(p, False), (r, False)] for p, r in n["skipped"]]))
    return "\n".join(out)


def _jobs_html(jobs: list[dict]) -> str:
    if not jobs:
        return ""
    n_done = sum(j.get("status") == "done" for j in jobs)
    rows = []
    for j in jobs:
        fit = j.get("fit_seconds")
        fit_txt = f"{fit:.1f}" if isinstance(fit, (int, float)) else ""
        err = str(j.get("error") or "")
        rows.append([(str(j.get("dataset")), False), (str(j.get("method")), False), (str(j.get("seed")), False),
                     (FAILED if j.get("status") != "done" else "done", False), (fit_txt, False),
                     (err[:300] + ("…" if len(err) > 300 else ""), False)])
    head = f"<p>{n_done} of {len(jobs)} jobs finished; {len(jobs) - n_done} failed.</p>"
    return head + _table_html(["Dataset", "Method", "Seed", "Status", "Fit (s)", "Error"], rows)


def _figures_html(paths: list[Path]) -> str:
    """Figures as base64 <img>; byte-identical files (roc_<ds>.png = roc_<ds>_inductive.png) embedded once."""
    seen: dict[bytes, list[str]] = {}
    for p in paths:
        seen.setdefault(p.read_bytes(), []).append(p.name)
    out = []
    for data, names in seen.items():
        kind = {"roc": "ROC curves", "pr": "Precision–recall curves", "scores": "Score distributions",
                "maps": "Anomaly-map gallery", "losses": "Training loss curves",
                "checkpoints": "Learning curves per checkpoint (label-free)"}[names[0].split("_", 1)[0]]
        b64 = base64.b64encode(data).decode("ascii")
        out.append(f'<figure><img alt="{_esc(names[0])}" src="data:image/png;base64,{b64}">'
                   f"<figcaption>{_esc(kind)}: {_esc(' = '.join(names))}</figcaption></figure>")
    return "\n".join(out)



def _health_html(jobs: list[dict]) -> str:
    parts = []
    for ds, rows in health_tables(jobs):
        parts += [f"<h3>{_esc(ds)}</h3>", _table_html(HEALTH_HEADERS, [[(c, False) for c in r] for r in rows])]
    if not parts:
        return "<p>No finished jobs.</p>"
    return "\n".join(parts + [f'<p class="notes">{_esc(health_explanation())}</p>'])


def write_html_report(run_dir: str | Path, tables: Tables | None = None, *, n_boot: int = 1000,
                      reference_method: str | None = DEFAULT_REFERENCE, threshold_rule: str | None = None) -> Path:
    """Write ``run_dir/report.html``: configuration, job status, tables, figures (base64), one file.

    Without ``tables`` they are rebuilt from ``metrics.csv`` (and ``scores.csv`` for CIs and p-values); missing
    figures are not drawn here (run :func:`anomaly_bench.reporting.write.write_reports` first).
    """
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    jobs = read_jobs(run_dir)
    if tables is None:
        mpath = folder.metrics_path
        if not mpath.is_file():
            raise FileNotFoundError(f"{mpath}: no metrics.csv; run `anomaly-bench report {run_dir}` first")
        metrics = folder.read_metrics()
        scores = folder.read_scores() if folder.scores_path.is_file() else None
        rule = threshold_rule or rule_from_experiment(run_dir)
        selection = rule_from_experiment(run_dir, "selection") or "last"
        metrics, scores, _, _ = split_by_selection(metrics, scores, selection)
        tables = build_tables(metrics, scores, jobs=jobs, reference_method=reference_method, n_boot=n_boot,
                              threshold_rule=rule, reference_selection=selection, selection_rule=selection,
                              profile=rule_from_experiment(run_dir, "profile"))
    figs = folder.figures()
    skipped = gallery_problems(run_dir)
    gallery_note = ("<p><b>Left out of the map gallery</b> (inconsistent maps.npz):</p><ul>"
                    + "".join(f"<li>{_esc(p)}</li>" for p in skipped) + "</ul>") if skipped else ""
    body = [f"<h1>anomaly-bench report: {_esc(run_dir.name)}</h1>",
            "<h2>Results</h2>", _tables_html(tables),
            "<h2>Training health</h2>", _health_html(jobs),
            "<h2>Figures</h2>", _figures_html(figs) or "<p>No figures.</p>", gallery_note,
            "<h2>Jobs</h2>", _jobs_html(jobs) or "<p>No job.json files.</p>",
            "<h2>Data</h2>", _data_html(run_dir) or "<p>No run.json in this run folder.</p>",
            "<h2>Configuration</h2>", _config_html(run_dir)]
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>anomaly-bench: {_esc(run_dir.name)}</title><style>{CSS}</style></head>\n<body>\n"
           + "\n".join(body) + "\n</body></html>\n")
    return folder.write_text(folder.report_path.name, doc)
