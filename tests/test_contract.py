"""Every registered method, and a plugin loaded from a file, passes the method contract."""

import pytest

from anomaly_bench.core.registry import list_methods, load_plugin
from anomaly_bench.harness.contract import check_method
from conftest import EXAMPLE_PLUGIN

load_plugin(str(EXAMPLE_PLUGIN))

# every method trains here: one torch thread (conftest.one_thread; 2 threads on a busy 2-core machine made the
# CS-Flow check 13x slower)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name):
    facts = check_method(name)
    assert facts["name"] == name


def test_contract_catches_a_nondeterministic_method():
    import numpy as np

    from anomaly_bench.core.interface import AnomalyMethod, ScoreResult

    class RandomScores(AnomalyMethod):  # not registered: the check takes a class too
        def fit(self, train, ctx=None):
            return self

        def score(self, images):
            return ScoreResult(np.random.rand(len(images)))

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with pytest.raises(AssertionError, match="reordered|differ"):
        check_method(RandomScores)
