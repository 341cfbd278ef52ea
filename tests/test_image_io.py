"""Image decoding, preprocessing and the decoded-once cache. Every fixture is built here in tmp_path."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.data import cache as cache_mod
from anomaly_bench.data import decode
from anomaly_bench.data.decode import decode_files
from anomaly_bench.data.image_io import (
    Preprocessing,
    central_crop_box,
    preprocess,
    read_gray,
    read_volume,
    to_model_range,
)


def gradient(h: int = 40, w: int = 40) -> np.ndarray:
    """uint8 image with distinct rows and columns."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 5 + y * 3) % 256).astype(np.uint8)


def save(im: Image.Image, path, **kw):
    im.save(path, **kw)
    return path


# --------------------------------------------------------------------------------------------------- modes
def test_gray_rgb_and_bmp_tiff_agree(tmp_path):
    g = gradient()
    ref = g.astype(np.float32) / 255
    for name, im in [("l.png", Image.fromarray(g)), ("rgb.png", Image.fromarray(np.stack([g] * 3, -1))),
                     ("l.bmp", Image.fromarray(g)), ("l.tif", Image.fromarray(g))]:
        np.testing.assert_allclose(read_gray(save(im, tmp_path / name)), ref, atol=1e-6, err_msg=name)


def test_rgb_uses_luminance_weights(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> 0.299
    out = read_gray(save(Image.fromarray(rgb), tmp_path / "red.png"))
    assert abs(float(out.mean()) - 0.299) < 2 / 255


def test_rgba_composited_on_black_or_alpha_dropped(tmp_path):
    a = np.full((16, 16, 4), 200, np.uint8)
    a[..., 3] = 0
    a[:8, :, 3] = 255
    p = save(Image.fromarray(a, "RGBA"), tmp_path / "rgba.png")
    black = read_gray(p)
    assert np.allclose(black[8:], 0) and np.allclose(black[:8], 200 / 255, atol=1 / 255)
    dropped = read_gray(p, Preprocessing(alpha="drop"))
    assert np.allclose(dropped, 200 / 255, atol=1 / 255)
    la = Image.fromarray(a[..., [0, 3]], "LA")
    assert np.allclose(read_gray(save(la, tmp_path / "la.png"))[8:], 0)


def test_palette_with_and_without_transparency(tmp_path):
    g = gradient(16, 16)
    pal = Image.fromarray(g).convert("P")
    out = read_gray(save(pal, tmp_path / "p.png"))
    np.testing.assert_allclose(out, np.asarray(pal.convert("L"), np.float32) / 255, atol=1e-6)
    idx = np.zeros((16, 16), np.uint8)
    idx[:, 8:] = 1
    p2 = Image.fromarray(idx, "P")
    p2.putpalette([255, 255, 255, 255, 255, 255] + [0] * 762)
    p2.info["transparency"] = 1  # index 1 transparent -> black when composited
    out2 = read_gray(save(p2, tmp_path / "pt.png", transparency=1))
    assert np.allclose(out2[:, :8], 1.0) and np.allclose(out2[:, 8:], 0.0)


def test_cmyk_and_one_bit(tmp_path):
    cmyk = Image.fromarray(np.stack([gradient()] * 3, -1)).convert("CMYK")
    out = read_gray(save(cmyk, tmp_path / "c.jpg", quality=95))
    assert out.shape == (40, 40) and 0 <= out.min() and out.max() <= 1 and out.std() > 0.05
    bits = Image.fromarray((gradient() > 128).astype(np.uint8) * 255).convert("1")
    out1 = read_gray(save(bits, tmp_path / "b.png"))
    assert set(np.unique(out1)) <= {0.0, 1.0} and out1.max() == 1.0


def test_16bit_is_rescaled_not_clipped(tmp_path):
    a = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    p = save(Image.fromarray(a), tmp_path / "i16.png")
    assert Image.open(p).mode.startswith("I")
    out = read_gray(p)
    assert out.max() == pytest.approx(1.0) and out.min() == 0.0
    assert np.corrcoef(out.ravel(), a.ravel())[0, 1] > 0.999  # PIL convert("L") would clip at 255 instead
    full = read_gray(p, Preprocessing(high_bit_depth="full_range"))
    assert full.max() == pytest.approx(4095 / 65535)


def test_32bit_int_and_float_tiff(tmp_path):
    a = (np.arange(32 * 32).reshape(32, 32) * 1000).astype(np.int32)
    out = read_gray(save(Image.fromarray(a, "I"), tmp_path / "i32.tif"))
    assert out.min() == 0 and out.max() == pytest.approx(1.0)
    f = np.linspace(-5, 5, 32 * 32, dtype=np.float32).reshape(32, 32)
    outf = read_gray(save(Image.fromarray(f, "F"), tmp_path / "f.tif"))
    assert outf.min() == 0 and outf.max() == pytest.approx(1.0)


def test_16bit_files_are_stored_as_float16(tmp_path):
    a = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    p = save(Image.fromarray(a), tmp_path / "i16.png")
    dec = decode_files([p], 32, cache=False)
    assert dec.stored.dtype == np.float16
    dec8 = decode_files([save(Image.fromarray(gradient()), tmp_path / "g.png")], 32, cache=False)
    assert dec8.stored.dtype == np.uint8


# ----------------------------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated_png", "truncated_jpeg"])
def test_bad_files_raise_naming_the_file_and_fix(tmp_path, kind):
    buf = io.BytesIO()
    fmt = "JPEG" if kind.endswith("jpeg") else "PNG"
    Image.fromarray((np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)).save(buf, format=fmt)
    data = {"garbage": b"this is not an image at all" * 10, "empty": b"",
            "truncated_png": buf.getvalue()[: len(buf.getvalue()) // 2],
            "truncated_jpeg": buf.getvalue()[: len(buf.getvalue()) // 2]}[kind]
    p = tmp_path / f"bad_{kind}.{'jpg' if fmt == 'JPEG' else 'png'}"
    p.write_bytes(data)
    with pytest.raises(DataError) as ei:
        read_gray(p)
    assert str(p) in str(ei.value) and "on_bad_image: skip" in str(ei.value)


@pytest.mark.parametrize("size,what", [((4, 40), "smaller"), ((16385, 8), "larger"), ((400, 20), "aspect")])
def test_absurd_sizes_rejected(tmp_path, size, what):
    p = save(Image.new("L", size), tmp_path / f"odd_{size[0]}x{size[1]}.png")
    with pytest.raises(DataError, match=what) as ei:
        read_gray(p)
    assert str(p) in str(ei.value)


def test_decode_files_error_names_first_bad_and_count(tmp_path):
    good = [save(Image.fromarray(gradient()), tmp_path / f"g{i}.png") for i in range(3)]
    bad = [tmp_path / "x1.png", tmp_path / "x2.png"]
    for b in bad:
        b.write_bytes(b"junk")
    with pytest.raises(DataError) as ei:
        decode_files(good + bad, 32, cache=False)
    assert str(bad[0]) in str(ei.value) and "1 more bad file" in str(ei.value)


def test_decode_files_skip_mode_lists_reasons(tmp_path):
    good = [save(Image.fromarray(gradient()), tmp_path / f"g{i}.png") for i in range(3)]
    (tmp_path / "bad.png").write_bytes(b"junk")
    missing = tmp_path / "missing.png"
    dec = decode_files([good[0], tmp_path / "bad.png", good[1], missing, good[2]], 32, on_bad_image="skip",
                       cache=False)
    assert dec.kept.tolist() == [0, 2, 4]
    assert [p for p, _ in dec.skipped] == [str(tmp_path / "bad.png"), str(missing)]
    assert "cannot read" in dec.skipped[1][1]
    assert dec.images().shape == (3, 1, 32, 32) and dec.images().dtype == np.float32


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="crop_top"):
        Preprocessing(crop_top=0.7)
    with pytest.raises(ConfigError, match="square"):
        Preprocessing(square="circle")
    with pytest.raises(ConfigError, match="unknown key"):
        Preprocessing.from_card({"crop": 0.1})
    with pytest.raises(ConfigError, match="on_bad_image"):
        decode_files([], 32, on_bad_image="ignore")


# ---------------------------------------------------------------------------------------- preprocessing
def test_healthygan_crop_top_then_central_crop_matches_authors():
    img = (np.random.default_rng(1).random((120, 100)) * 255).astype(np.uint8)
    # HealthyGAN data_loader.py: crop_top(img, 0.08); central_crop(img); T.Resize(size) (PIL bilinear)
    ref = img[int(img.shape[0] * 0.08):]
    size = min(ref.shape)
    oh, ow = int((ref.shape[0] - size) / 2), int((ref.shape[1] - size) / 2)
    ref = np.asarray(Image.fromarray(ref[oh:oh + size, ow:ow + size]).resize((32, 32), Image.Resampling.BILINEAR))
    ours = preprocess(Image.fromarray(img), 32, Preprocessing(crop_top=0.08, square="crop"))
    assert ours.dtype == np.uint8 and np.array_equal(ours, ref)


def test_brainomaly_pad_then_central_crop_matches_authors():
    img = (np.random.default_rng(2).random((90, 70)) * 255).astype(np.uint8)
    padded = np.pad(img, [(5, 5), (5, 5)], mode="constant", constant_values=0)
    l_, u, r, b = central_crop_box(*padded.shape)
    ref = np.asarray(Image.fromarray(padded[u:b, l_:r]).resize((64, 64), Image.Resampling.BILINEAR))
    ours = preprocess(Image.fromarray(img), 64, Preprocessing(pad=5, square="crop"))
    assert np.array_equal(ours, ref)


def test_square_pad_keeps_field_of_view_and_crop_top_drops_rows():
    img = np.zeros((40, 80), np.uint8)
    img[:, :4] = 255  # a bright stripe at the left edge: cropped away by "crop", kept by "pad"
    assert preprocess(Image.fromarray(img), 32, Preprocessing(square="crop")).max() == 0
    assert preprocess(Image.fromarray(img), 32, Preprocessing(square="pad")).max() > 100
    top = np.zeros((100, 100), np.uint8)
    top[:10] = 255
    assert preprocess(Image.fromarray(top), 32, Preprocessing(crop_top=0.1, square="none")).max() == 0
    assert preprocess(Image.fromarray(top), 32, Preprocessing(crop_top=0.05, square="none")).max() > 0


def test_resize_is_antialiased():
    checker = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
    out = preprocess(Image.fromarray(checker), 32)
    assert np.abs(out.astype(int) - 128).max() <= 2  # a 1-px checkerboard averages to grey, no aliasing


def test_model_range():
    assert to_model_range(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]
    assert to_model_range(np.array([0, 1], np.float16)).tolist() == [-1.0, 1.0]


# -------------------------------------------------------------------------------------------------- cache
def test_cache_round_trip_is_bit_identical_and_skips_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path / "cache"))
    files = [save(Image.fromarray(gradient(50, 60)), tmp_path / f"g{i}.png") for i in range(4)]
    first = decode_files(files, 32)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(decode, "_decode_uncached", boom)
    second = decode_files(files, 32)
    assert np.array_equal(first.stored, second.stored) and first.sha256 == second.sha256
    # a changed preprocessing or a changed file gives a new key
    with pytest.raises(AssertionError, match="decoded again"):
        decode_files(files, 32, Preprocessing(pad=2))
    save(Image.fromarray(gradient(50, 61)), files[0])
    os.utime(files[0], ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        decode_files(files, 32)


def test_cache_off_and_damaged_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", "off")
    assert cache_mod.cache_dir() is None
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path / "c"))
    files = [save(Image.fromarray(gradient()), tmp_path / "g.png")]
    a = decode_files(files, 32)
    entry = next((tmp_path / "c").glob("*.npz"))
    entry.write_bytes(b"damaged")
    b = decode_files(files, 32)  # recomputed, not crashed
    assert np.array_equal(a.stored, b.stored)


def test_unreadable_files_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path / "c"))
    good = save(Image.fromarray(gradient()), tmp_path / "g.png")
    dec = decode_files([good, tmp_path / "missing.png"], 32, on_bad_image="skip")
    assert len(dec.skipped) == 1 and not list((tmp_path / "c").glob("*.npz"))
    (tmp_path / "junk.png").write_bytes(b"junk")  # a decode failure is a property of the bytes: cached
    decode_files([good, tmp_path / "junk.png"], 32, on_bad_image="skip")
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1


def test_cache_key_ignores_data_folder_location(tmp_path):
    sig1 = cache_mod.file_signature([tmp_path / "a" / "x.png"], tmp_path / "a")
    assert sig1[0][0] == "x.png" and sig1[0][1] == -1


# -------------------------------------------------------------------------------------------------- NIfTI
def test_read_volume_and_corrupt_nifti(tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.random.default_rng(0).random((12, 10, 8)).astype(np.float32)
    p = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    np.testing.assert_allclose(read_volume(p), vol, rtol=1e-6)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match="bad.nii.gz"):
        read_volume(bad)
