import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANOMALY_BENCH_DATA_ROOT", REPO.parent / "shared" / "data"))
EXAMPLE_PLUGIN = REPO / "examples" / "pixel_knn_plugin.py"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set ANOMALY_BENCH_DATA_ROOT or clone beside ../shared)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # decoded-image cache in a per-session temp folder, never in the user's home
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
