import os
from pathlib import Path

import pytest

# plain asserts in the shared helpers module report like those in the tests
pytest.register_assert_rewrite("helpers")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANOMALY_BENCH_DATA_ROOT", REPO.parent / "shared" / "data"))
EXAMPLE_PLUGIN = REPO / "examples" / "pixel_knn_plugin.py"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set ANOMALY_BENCH_DATA_ROOT or clone beside ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for the whole test module, restored afterwards; modules that train or run
    small nets use it (``pytestmark = pytest.mark.usefixtures("one_thread")``). One thread is as fast on 2
    free cores and far faster on a busy machine (OpenMP threads spin when cores are oversubscribed)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # decoded-image cache in a per-session temp folder, never in the user's home
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
