"""Committed results are regenerated from a clean tree: every ``results/**/run.json`` names its commit, says
``git_dirty: false`` and records the provenance a reader needs (versions, threads, CPU, data fingerprints)."""

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUNS = sorted(RESULTS.rglob("run.json"))
#: committed runs known to break the rule, with why; strict xfail, so regenerating one makes this test fail
#: until its entry is removed
KNOWN_DIRTY: dict[str, str] = {}  # rel path -> why a committed run.json may still say git_dirty: true (none)


def test_there_are_committed_runs():
    assert RUNS, f"no run.json under {RESULTS}"


def _param(p: Path):
    rel = str(p.relative_to(RESULTS))
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_DIRTY[rel])] if rel in KNOWN_DIRTY else []
    return pytest.param(p, id=rel, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in RUNS])
def test_committed_run_comes_from_a_clean_tree_and_records_provenance(path):
    info = json.loads(path.read_text())
    v = info["versions"]
    assert v.get("git_dirty") is False, (
        f"{path}: made from a dirty tree (git_dirty: {v.get('git_dirty')}); regenerate it from a clean checkout")
    assert len(v.get("git_commit") or "") == 40, f"{path}: no git commit recorded"
    for key in ("anomaly_bench", "torch", "cpu_threads"):
        assert v.get(key) not in (None, ""), f"{path}: versions.{key} missing"
    for name, ds in info.get("datasets", {}).items():
        assert ds.get("fingerprint"), f"{path}: dataset {name} has no data fingerprint"
    assert info.get("profile"), f"{path}: no profile recorded"
