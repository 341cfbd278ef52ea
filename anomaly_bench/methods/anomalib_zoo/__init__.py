"""The anomalib 2.7.0 model zoo behind one adapter (:mod:`.adapter`): STFPM, Reverse Distillation
(:mod:`.distillation`), DFM, DFKDE, CFA (:mod:`.density`), FastFlow, CFLOW, CS-Flow (:mod:`.flows`), DRAEM,
SuperSimpleNet (:mod:`.synthetic`).

Each is registered under its lower-case name with ``methods/<name>.yaml``; none is in the quick start
(``in_default_experiment = False``): ``experiments/zoo.yaml`` runs them. The adapter's docstring lists the anomalib
models left out and why (EfficientAD, DSR and the foundation models need downloads).
"""

from anomaly_bench.methods.anomalib_zoo import density, distillation, flows, synthetic  # noqa: F401
