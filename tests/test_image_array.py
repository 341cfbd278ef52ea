"""Compact shared images (issue 24): ImageArray's per-batch conversion, the memory-mapped decode cache, the
harness's chunked scoring, and the contract check of methods that stream their training images."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_bench.core.image_array import ImageArray, select, to_model_range
from anomaly_bench.core.interface import AnomalyMethod, ScoreResult, TrainSets
from anomaly_bench.harness import scoring
from anomaly_bench.harness.contract import check_method, tiny_data
from anomaly_bench.harness.scoring import score_images


def _u8(n=10, size=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


def test_batches_equal_the_float32_conversion_for_every_stored_code():
    codes = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(ImageArray(codes)[:], torch.from_numpy(to_model_range(codes)))
    f16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f16 = f16[np.isfinite(f16) & (f16 >= 0) & (f16 <= 1)]
    f16 = np.pad(f16, (0, (-len(f16)) % 64)).reshape(-1, 1, 8, 8)
    assert torch.equal(ImageArray(f16)[:], torch.from_numpy(to_model_range(f16)))
    x = torch.rand(3, 1, 4, 4) * 2 - 1  # float storage is already in the model range
    assert torch.equal(ImageArray(x)[:], x) and ImageArray(x)[:].data_ptr() != x.data_ptr()


def test_indexing_views_and_devices():
    u = _u8()
    a, ref = ImageArray(u), torch.from_numpy(to_model_range(u))
    assert a.shape == (10, 1, 4, 4) and len(a) == 10 and a.dtype == torch.float32 and a.numel() == 160
    assert torch.equal(a[3], ref[3]) and torch.equal(a[-1], ref[-1]) and torch.equal(a[torch.tensor(2)], ref[2])
    assert torch.equal(a[2:7:2], ref[2:7:2]) and torch.equal(a[[4, 1]], ref[[4, 1]])
    assert torch.equal(a[torch.tensor([9, 0])], ref[[9, 0]]) and torch.equal(a[np.arange(10) > 7], ref[8:])
    v = a.take([5, 2, 7])
    assert v.stored is a.stored, "a view must not copy pixels"
    assert torch.equal(v[:], ref[[5, 2, 7]]) and torch.equal(v.take([2, 0])[:], ref[[7, 5]])
    assert v.stored_nbytes == 3 * 16 and a.to("cpu") is a
    assert torch.equal(select(a, [1, 2])[:], ref[1:3]) and torch.equal(select(ref, [1, 2]), ref[1:3])
    with pytest.raises(IndexError, match="out of range"):
        a[10]
    t = ImageArray(torch.from_numpy(u)).take(torch.tensor([1, 3]))
    assert torch.equal(t[:], ref[[1, 3]]) and torch.equal(t.to("cpu")[:], ref[[1, 3]])


def test_streamed_fingerprint_equals_hashing_the_whole_float_array():
    u = _u8(50, 8)
    h1, h2 = hashlib.sha256(), hashlib.sha256()
    ImageArray(u).fingerprint_update(h1, batch_size=7)
    h2.update(np.ascontiguousarray(to_model_range(u)).tobytes())
    assert h1.hexdigest() == h2.hexdigest()


def _pngs(folder, n=6, size=12):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


def test_decoded_images_come_back_memory_mapped_from_the_cache(tmp_path, monkeypatch):
    from anomaly_bench.data.decode import decode_files

    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path / "cache"))
    files = _pngs(tmp_path / "img")
    first = decode_files(files, 12)
    again = decode_files(files, 12)
    for dec in (first, again):
        assert isinstance(dec.stored, np.memmap) and not dec.stored.flags.writeable
    assert np.array_equal(first.stored, again.stored)
    side = list((tmp_path / "cache").glob("*.stored.npy"))
    assert len(side) == 1
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", "off")
    assert np.array_equal(decode_files(files, 12).stored, first.stored)


def test_a_loaded_dataset_holds_uint8_and_gives_the_same_floats(tmp_path, monkeypatch):
    from anomaly_bench.data.loading import load_dataset

    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path / "cache"))
    for cls in ("NORMAL", "PNEUMONIA"):
        _pngs(tmp_path / "set" / cls, n=4)
    ds = load_dataset(str(tmp_path / "set"), image_size=32)
    assert isinstance(ds.images, ImageArray) and ds.images.storage_dtype == np.uint8
    assert isinstance(ds.images.stored, np.memmap)
    sub = ds.subset(np.array([6, 1]))
    assert sub.images.stored is ds.images.stored and torch.equal(sub.images[:], ds.images[[6, 1]])


class _Recorder(AnomalyMethod):
    """Scores = mean pixel; remembers the size of every call; maps and reconstructions = the input."""
    calls: list = []

    def fit(self, train, ctx=None):
        return self

    def score(self, images):
        type(self).calls.append(len(images))
        x = images[:, 0].numpy()
        return ScoreResult(images.flatten(1).double().mean(1).numpy(), maps=x, reconstructions=x)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_chunked_scoring_gives_the_one_call_scores_and_keeps_only_what_is_asked(monkeypatch):
    imgs = ImageArray(_u8(25, 4))
    m = _Recorder()
    whole = score_images(m, imgs, "rec", "test images")
    assert _Recorder.calls == [25] and whole.maps.shape == (25, 4, 4)
    monkeypatch.setattr(scoring, "SCORE_CHUNK_BYTES", 4 * 16 * 10)  # 10 images per call
    _Recorder.calls = []
    part = score_images(m, imgs, "rec", "test images", keep_maps=False, max_kept=12)
    assert _Recorder.calls == [10, 10, 5]
    np.testing.assert_array_equal(part.scores, whole.scores)
    assert part.maps is None and np.array_equal(part.reconstructions, whole.reconstructions[:12])


def test_a_bad_chunk_is_named():
    class Short(_Recorder):
        def score(self, images):
            return ScoreResult(np.zeros(len(images) - 1))

    from anomaly_bench.core.errors import BenchError

    with pytest.raises(BenchError, match="method 'short': score\\(\\) returned 4 scores for 5 test images"):
        score_images(Short(), ImageArray(_u8(5)), "short", "test images")


def test_the_contract_gives_streaming_methods_views_of_the_same_values():
    ts_float, test = tiny_data()
    ts_view, _ = tiny_data(stored=True)
    assert isinstance(ts_view.healthy, ImageArray) and ts_view.healthy.storage_dtype == np.uint8
    assert torch.equal(ts_view.healthy[:], ts_float.healthy) and torch.equal(ts_view.mixed[:], ts_float.mixed)
    assert TrainSets(healthy=ts_view.healthy).image_shape == (1, 64, 64)


def test_the_contract_catches_a_method_that_claims_to_stream_but_does_not():
    class WholeSet(_Recorder):
        streams_images = True

        def fit(self, train, ctx=None):
            self.mean_ = float((train.healthy * 1.0).mean())  # a whole-set float op
            return self

        def score(self, images):
            return ScoreResult(np.abs(images.flatten(1).double().mean(1).numpy() - self.mean_))

        def state_dict(self):
            return {"mean": self.mean_}

        def load_state_dict(self, state):
            self.mean_ = state["mean"]

    with pytest.raises(AssertionError, match="streams_images = True, but fit\\(\\) failed on ImageArray"):
        check_method(WholeSet)


def test_image_quality_in_chunks_equals_the_whole_set():
    from anomaly_bench.evaluation.health import image_quality

    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (70, 1, 16, 16)).astype(np.float32)
    r = np.clip(x[:, 0] + rng.normal(0, 0.1, (70, 16, 16)), -1, 1).astype(np.float32)
    whole, parts = image_quality(r, torch.from_numpy(x)), image_quality(r, torch.from_numpy(x), chunk=16)
    assert whole.keys() == parts.keys()
    for k in whole:
        assert abs(whole[k] - parts[k]) <= 1e-9 * max(1.0, abs(whole[k])), (k, whole[k], parts[k])
    mean = np.broadcast_to(x.mean(0)[0], (70, 16, 16))
    assert image_quality(mean, x, chunk=16)["mae"] == pytest.approx(image_quality(mean, x)["mae"], rel=1e-12)


def test_confound_statistics_of_an_image_array_in_chunks_equal_the_tensor_path(monkeypatch):
    from anomaly_bench.evaluation import confound

    u = _u8(40, 16, seed=4)
    whole = confound.trivial_statistics(torch.from_numpy(to_model_range(u)))
    monkeypatch.setattr(confound, "CHUNK_BYTES", 20 * 256 * 7)  # 7 images per chunk
    parts = confound.trivial_statistics(ImageArray(u))
    for k in whole:
        np.testing.assert_array_equal(parts[k], whole[k], err_msg=k)
