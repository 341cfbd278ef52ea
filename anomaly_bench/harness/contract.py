"""The method contract check (like scikit-learn's ``check_estimator``).

Every registered method, plugins included, must pass :func:`check_method`. A plugin author runs it in
their own tests::

    from anomaly_bench.contract import check_method
    check_method("my_method")            # the registered name (profile 'smoke' by default)

It trains the method twice on a tiny phantom set (64 px) and checks, with messages that say what broke:
configuration validation, ``fit`` returning ``self``, score shapes and finiteness, maps and
reconstructions shapes, determinism for one seed on the CPU (for a method with ``streams_images``: the same
model from ImageArray views of uint8 images as from float32 tensors), ``save``/``load`` round trip, scores
independent of batch composition (eval mode), inputs not modified.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.image_array import ImageArray
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets
from anomaly_bench.core.registry import get_method
from anomaly_bench.data.dedup import to_uint8
from anomaly_bench.data.phantom import generate_phantom


def tiny_data(size: int = 64, seed: int = 0, stored: bool = False) -> tuple[TrainSets, torch.Tensor]:
    """16 healthy + 16 mixed training slices and 12 test slices from the phantom, quantised to 8 bits as a
    decoded image file is. ``stored``: the training sets as :class:`ImageArray` views of the uint8 values (what
    the harness gives a method with ``streams_images``); else float32 tensors of the same values."""
    ds = generate_phantom(n_subjects=22, slices_per_subject=2, size=size, diseased_fraction=0.5, seed=seed)
    u8 = ImageArray(to_uint8(ds.images)[:, None])
    h = np.flatnonzero(ds.labels == 0)
    d = np.flatnonzero(ds.labels == 1)
    b, a = h[:16], np.r_[h[16:20], d[:12]]
    test = u8[np.r_[h[-6:], d[-6:]]]
    if stored:
        return TrainSets(healthy=u8.take(b), mixed=u8.take(a)), test
    return TrainSets(healthy=u8[b], mixed=u8[a]), test


def _fit(cls: type[AnomalyMethod], params: dict, train: TrainSets, workdir: Path | None) -> AnomalyMethod:
    model = cls(**params)
    ts = train if cls.default_train_sets == "mixed+healthy" else TrainSets(healthy=train.healthy)
    out = model.fit(ts, FitContext(workdir=workdir, progress=False))
    assert out is model, f"{cls.name}: fit() must return self"
    return model


def _check_result(name: str, res: Any, n: int, size: int) -> ScoreResult:
    assert isinstance(res, ScoreResult), f"{name}: score() must return a ScoreResult, got {type(res).__name__}"
    assert res.scores.shape == (n,), f"{name}: scores shape {res.scores.shape}, expected ({n},)"
    assert np.all(np.isfinite(res.scores)), f"{name}: non-finite scores {res.scores}"
    if res.maps is not None:
        assert res.maps.shape == (n, size, size), f"{name}: maps shape {res.maps.shape}, expected ({n}, {size}, {size})"
        assert np.all(np.isfinite(res.maps)), f"{name}: non-finite anomaly maps"
    if res.reconstructions is not None:
        assert res.reconstructions.shape == (n, size, size), \
            f"{name}: reconstructions shape {res.reconstructions.shape}"
    return res


def check_method(method: str | type[AnomalyMethod], profile: str = "smoke", overrides: dict | None = None,
                 size: int = 64) -> dict[str, Any]:
    """Run the contract checks; raise AssertionError on the first violation; return a few facts."""
    cls = get_method(method) if isinstance(method, str) else method
    name = cls.name or cls.__name__
    params = method_params(cls.name, profile, {**(overrides or {}), "seed": 0, "device": "cpu"}) \
        if cls.name else cls.validate_params({**(overrides or {}), "seed": 0, "device": "cpu"})

    # configuration is validated in the constructor
    try:
        cls(**params, no_such_parameter_xyz=1)
    except ConfigError:
        pass
    else:
        raise AssertionError(f"{name}: an unknown constructor parameter must raise ConfigError")
    assert cls(**params).get_params() == params, f"{name}: get_params() must return the constructor parameters"

    train, test = tiny_data(size)
    test_copy = test.clone()
    with tempfile.TemporaryDirectory() as tmp:
        m1 = _fit(cls, params, train, Path(tmp) / "a")
        r1 = _check_result(name, m1.score(test), len(test), size)
        assert torch.equal(test, test_copy), f"{name}: score() modified its input tensor"

        # scores do not depend on batch composition (eval mode, no test-batch statistics)
        perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))
        r_perm = m1.score(test[perm]).scores
        np.testing.assert_allclose(r_perm, r1.scores[perm.numpy()], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{name}: scores change when the test batch is reordered")
        r_single = np.array([m1.score(test[i:i + 1]).scores[0] for i in range(3)])
        np.testing.assert_allclose(r_single, r1.scores[:3], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{name}: scoring one image alone differs from scoring it in a batch")

        # determinism: same seed, same scores (CPU); a method that streams its training images gets them as
        # ImageArray views of the uint8 values this time: the model must be the same bit for bit
        streams = bool(getattr(cls, "streams_images", False))
        try:
            m2 = _fit(cls, params, tiny_data(size, stored=True)[0] if streams else train, Path(tmp) / "b")
        except (TypeError, AttributeError, RuntimeError) as exc:
            if not streams:
                raise
            raise AssertionError(f"{name}: streams_images = True, but fit() failed on ImageArray training sets "
                                 f"({type(exc).__name__}: {exc}); read them only as images[idx] / images[i:j], "
                                 f"or set streams_images = False") from exc
        how = " (the second from ImageArray views: streams_images = True)" if streams else ""
        np.testing.assert_array_equal(m2.score(test).scores, r1.scores,
                                      err_msg=f"{name}: two fits with the same seed gave different scores{how}")

        # save / load round trip
        path = m1.save(Path(tmp) / "model.pt")
        m_loaded = AnomalyMethod.load(path)
        assert type(m_loaded) is cls, f"{name}: load() returned {type(m_loaded).__name__}"
        np.testing.assert_allclose(m_loaded.score(test).scores, r1.scores, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{name}: scores differ after save/load")
    return {"name": name, "has_maps": r1.maps is not None, "has_reconstructions": r1.reconstructions is not None}
