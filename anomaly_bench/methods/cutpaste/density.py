"""Gaussian density estimation (GDE) of CutPaste's image embeddings: one Gaussian fitted to the training images'
embeddings; the anomaly score of an embedding ``f`` is its Mahalanobis distance ``sqrt((f - mu)^T P (f - mu))``
(``P`` the precision, the inverse covariance), a monotone function of its negative log-density.

Covariance: ``ledoit_wolf`` (scikit-learn ``LedoitWolf``, shrinkage towards a scaled identity: defined when there
are fewer images than dimensions; the PyTorch port's choice, after Rippel et al.) or ``mle`` (the sample covariance
+ 1e-6 I, what scikit-learn's one-component ``GaussianMixture`` of the authors' framework
google-research/deep_representation_one_class ``util/train.py`` (``embed.gde``) fits). Everything in float64.
"""

from __future__ import annotations

import numpy as np

#: scikit-learn GaussianMixture's default reg_covar (the ``mle`` covariance)
MLE_REG = 1e-6


def fit_gaussian(emb: np.ndarray, covariance: str = "ledoit_wolf") -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision matrix of the rows of ``emb`` ``(n, d)`` (float64)."""
    from scipy.linalg import pinvh
    from sklearn.covariance import LedoitWolf

    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        raise ValueError(f"GDE needs at least 2 embeddings (n, d), got shape {emb.shape}")
    if covariance == "ledoit_wolf":
        lw = LedoitWolf(store_precision=True).fit(emb)
        return lw.location_.copy(), np.ascontiguousarray(lw.precision_)
    if covariance == "mle":
        mean = emb.mean(0)
        cov = np.cov(emb, rowvar=False, bias=True) + MLE_REG * np.eye(emb.shape[1])
        return mean, np.ascontiguousarray(pinvh(cov))
    raise ValueError(f"unknown covariance {covariance!r}")


def mahalanobis(emb: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Row-wise Mahalanobis distances (float64)."""
    d = np.asarray(emb, dtype=np.float64) - mean
    return np.sqrt(np.maximum(((d @ precision) * d).sum(1), 0.0))
