"""CutPaste (Li et al., CVPR 2021): ``augment`` (CutPaste / Scar synthesis), ``torch_model`` (backbone + projection
head + classifier), ``loss``, ``density`` (Gaussian density estimation), ``method`` (registered as ``cutpaste``)."""

from anomaly_bench.methods.cutpaste.augment import cutpaste, scar
from anomaly_bench.methods.cutpaste.density import fit_gaussian, mahalanobis
from anomaly_bench.methods.cutpaste.method import CutPaste
from anomaly_bench.methods.cutpaste.torch_model import CutPasteNet

__all__ = ["CutPaste", "CutPasteNet", "cutpaste", "fit_gaussian", "mahalanobis", "scar"]
