"""Data notes of a run (from ``run.json``): per dataset its size, fingerprint, duplicate groups, the images left
out as unreadable and the confound check (test AUC of label-free image statistics, with a warning when one
separates the classes); shown in ``table.md`` and ``report.html``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly_bench.data.leakage import cross_role_line, leakage_line
from anomaly_bench.evaluation.confound import confound_line
from anomaly_bench.harness.run_folder import RunFolder


def data_notes(run_dir: str | Path, max_listed: int = 50) -> list[dict[str, Any]]:
    """Per dataset of the run (from ``run.json``): size, fingerprint, duplicate groups found, and the images
    left out as unreadable under ``on_bad_image: skip`` (``[(path, reason)]``), and ``confound``: (the test AUCs of
    label-free statistics as text, the warning sentence or ``""``), None for runs that predate the check.
    Empty without a run.json."""
    folder = RunFolder(run_dir)
    if not folder.run_info_path.is_file():
        return []
    try:
        info = folder.read_run_info()
    except ValueError:
        return []
    notes = []
    for name, d in (info.get("datasets") or {}).items():
        if not isinstance(d, dict):
            continue
        skipped = [(str(x[0]), str(x[1])) if isinstance(x, (list, tuple)) and len(x) >= 2 else (str(x), "")
                   for x in d.get("skipped_images") or []]
        notes.append({"dataset": name, "n_images": d.get("n_images"), "fingerprint": d.get("fingerprint"),
                      "duplicates": d.get("duplicates") or None, "n_skipped": len(skipped),
                      "skipped": skipped[:max_listed], "confound": confound_line(name, d.get("confound")),
                      "split": split_line(d.get("splits")), "leakage": leakage_line(d.get("leakage")),
                      "published": published_lines(d.get("published_split")),
                      "skipped_settings": d.get("skipped_settings") or {}})
    return notes


def _range(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def split_line(splits: Any) -> str | None:
    """The role sizes over the run's seeds (from run.json ``splits``: seed -> role -> class counts), with the test
    prevalence, so a reader sees what AP, precision and F1 were computed on. None when the run has no record."""
    if not isinstance(splits, dict) or not splits:
        return None
    try:
        def counts(role: str, cls: str) -> list[int]:
            return [int(c[role][cls]) for c in splits.values()]
        th, td = counts("test", "healthy"), counts("test", "diseased")
        prev = [d / (h + d) for h, d in zip(th, td) if h + d]
        parts = [f"test {_range(th)} healthy + {_range(td)} diseased (prevalence "
                 f"{100 * min(prev):.0f}{'' if max(prev) - min(prev) < 0.005 else f'-{100 * max(prev):.0f}'}%)",
                 f"set A {_range(counts('mixed', 'healthy'))} healthy + {_range(counts('mixed', 'diseased'))} "
                 f"diseased", f"set B {_range(counts('healthy', 'healthy'))}",
                 f"held out for selection and thresholds {_range(counts('holdout_healthy', 'healthy'))} healthy",
                 f"unused {_range([h + d for h, d in zip(counts('unused', 'healthy'), counts('unused', 'diseased'))])}"]
    except (KeyError, TypeError, ValueError):
        return None
    return (f"split per seed ({len(splits)} seed(s)): " + "; ".join(parts) + ". The test prevalence is set by "
            "split.test_diseased_fraction (0.5 by default; `natural` tests every image no training role takes).")


def published_lines(rec: Any) -> list[str]:
    """The data notes of a published split (run.json ``published_split``): its file, the names not found, the
    cross-role duplicates it keeps, and what its missing hold-out leaves out. Empty for the suite's own splits."""
    if not isinstance(rec, dict):
        return []
    lines = []
    src, path = rec.get("source", "?"), rec.get("path", "?")
    miss = rec.get("missing") or {}
    if src == "data_json":
        listed = sum((rec.get("listed") or {}).values())
        first = ", ".join(map(str, (miss.get("first") or [])[:4]))
        missing = (f"; {miss.get('n', 0)} of its {listed} names are not in the data and were skipped"
                   + (f" ({first}{', ...' if miss.get('n', 0) > 4 else ''})" if miss.get("n") else ""))
        unl = (rec.get("unlisted_files_not_loaded") or {}).get("n")
        not_loaded = f"; {unl} file(s) of images/ it does not list have no label and were not loaded" if unl else ""
        lines.append(f"published split: data.json `{path}` (train/0 -> set B, train/unlabeled -> set A, test -> "
                     f"test){missing}; {rec.get('unlisted_images', 0)} image(s) of the card it does not list are "
                     f"unused{not_loaded}")
    else:
        lines.append(f"published split: manifest `{path}`")
    cross = cross_role_line(rec.get("cross_role_duplicates"))
    if cross:
        lines.append(cross)
    if str(rec.get("holdout", "")).startswith("none"):
        lines.append("the published split has no hold-out: the label-free thresholds (precision, recall, "
                     "specificity, F1 at the holdout_healthy threshold) are unavailable (n/a cells) and the "
                     "pseudo-AUC checkpoint selection (aucp rows) is skipped; the AUCs are unaffected")
    elif rec.get("holdout") and src == "data_json":
        lines.append(f"hold-out: {rec['holdout']}")
    return lines


def data_note_summary(n: dict[str, Any]) -> str:
    """One dataset's data note after its name and fingerprint: duplicate groups and images left out."""
    dup = n["duplicates"]
    where = ("left where the published split puts them (below)" if n.get("published") else
             "kept each in one split role")
    dup_txt = (f"{dup.get('n_groups', 0)} duplicate groups ({dup.get('n_images_in_groups', 0)} images) {where}"
               if dup else "no duplicate check")
    return f"{dup_txt}; {n['n_skipped']} unreadable image(s) left out (on_bad_image: skip)."


def data_notes_markdown(notes: list[dict[str, Any]]) -> str:
    """The 'Data' section of table.md: duplicates found and images left out, per dataset."""
    if not notes:
        return ""
    lines = ["## Data", ""]
    for n in notes:
        lines.append(f"- **{n['dataset']}**: {n['n_images']} images, fingerprint `{n['fingerprint']}`; "
                     f"{data_note_summary(n)}")
        for key in ("split", "leakage"):
            if n.get(key):
                lines.append(f"  - {n[key]}")
        lines += [f"  - {line}" for line in n.get("published") or []]
        for why in (n.get("skipped_settings") or {}).values():
            lines.append(f"  - **not scored**: {why}")
        if n.get("confound"):
            text, warning = n["confound"]
            lines.append(f"  - {text}")
            if warning:
                lines.append(f"  - **warning**: {warning}")
        for path, reason in n["skipped"]:
            lines.append(f"  - left out: `{path}`: {reason}")
        if n["n_skipped"] > len(n["skipped"]):
            lines.append(f"  - ... and {n['n_skipped'] - len(n['skipped'])} more (run.json lists them all)")
    return "\n".join(lines) + "\n"
