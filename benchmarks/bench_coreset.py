"""Benchmark: exact fast k-center greedy (anomaly_bench.nn.coreset) vs anomalib 2.7.0's KCenterGreedy.

Both run in the same process on the same projected features from the same start index (the projection
and start are drawn once, exactly as anomalib draws them); the selected indices must be identical.

    python benchmarks/bench_coreset.py                       # random 614,400 x 329 embedding (issue 11 size)
    python benchmarks/bench_coreset.py --steps 50 --full     # + our whole 1 % coreset (anomalib extrapolated)
    python benchmarks/bench_coreset.py --real                # PatchCore embedding of 600 brain-MRI images, 256 px
    python benchmarks/bench_coreset.py --fit                 # PatchCore fit time + AUC on brain MRI
    python benchmarks/bench_coreset.py --fit --fit-compare   # + the same fit with anomalib's coreset (slow on CPU)

anomalib's cost per step is the same at every step (a full N x d pass), so its time for a whole coreset is
its measured ms/step times the number of steps; ours falls as centres accumulate (pruning), so ``--full``
times our whole run. Data: ``--data-root`` or $ANOMALY_BENCH_DATA_ROOT or ../shared/data.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anomaly_bench.nn.common import seed_everything  # noqa: E402
from anomaly_bench.nn.coreset import coreset_size, greedy_select, project_like_anomalib  # noqa: E402


def data_root(arg: str | None) -> Path:
    root = Path(arg or os.environ.get("ANOMALY_BENCH_DATA_ROOT", REPO.parent / "shared" / "data"))
    if not (root / "brain_tumor_mri").is_dir():
        sys.exit(f"brain_tumor_mri not found under {root} (use --data-root or ANOMALY_BENCH_DATA_ROOT)")
    return root / "brain_tumor_mri"


def load_images(files: list[str]) -> torch.Tensor:
    """Grayscale JPEGs -> (N, 1, 224, 224) float32 in [-1, 1]."""
    from PIL import Image

    arr = np.stack([np.asarray(Image.open(f).convert("L").resize((224, 224))) for f in files])
    return torch.from_numpy(arr).float()[:, None] / 127.5 - 1.0


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def anomalib_steps(features: torch.Tensor, start: torch.Tensor, steps: int) -> tuple[list[int], float]:
    """anomalib's KCenterGreedy.select_coreset_idxs loop, unchanged, for ``steps`` steps on given features."""
    from anomalib.models.components import KCenterGreedy

    sampler = KCenterGreedy(embedding=features[:2], sampling_ratio=1.0)   # only its methods are used
    sampler.features = features
    sampler.n_observations = features.shape[0]
    sampler.reset_distances()
    idx = start.clone()
    picks = [idx]
    sync(features.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        sampler.update_distances(cluster_center=idx)
        idx = sampler.get_new_idx()
        sampler.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
        picks.append(idx)
    sync(features.device)
    dt = time.perf_counter() - t0
    return torch.stack(picks).cpu().tolist(), dt


def ours_steps(features: torch.Tensor, start: torch.Tensor, steps: int, progress: bool = False):
    stats: dict = {}
    sync(features.device)
    t0 = time.perf_counter()
    sel = greedy_select(features, steps + 1, start, stats=stats, progress=progress)
    sync(features.device)
    return sel.cpu().tolist(), time.perf_counter() - t0, stats


@torch.no_grad()
def _embedding_without_anomalib(images: torch.Tensor, input_size: int, batch_size: int,
                                dev: torch.device) -> torch.Tensor:
    """Where anomalib's models cannot be imported (a bare GPU machine): the same operations as
    ``PatchcoreModel`` (AvgPool2d(3, 1, 1) per layer, bilinear upsampling to the first layer, concat)."""
    import torch.nn.functional as F

    from anomaly_bench.nn.anomalib_wrap import to_backbone_input
    from anomaly_bench.nn.backbones import features_model, normalization

    fe, _ = features_model("tf_efficientnet_lite0", [2, 3], pretrained=True)   # blocks.2, blocks.4
    fe = fe.to(dev).eval()
    mean, std = (torch.tensor(v, device=dev) for v in normalization("tf_efficientnet_lite0"))
    out = []
    for i in range(0, len(images), batch_size):
        feats = [F.avg_pool2d(f, 3, 1, 1) for f in fe(to_backbone_input(images[i:i + batch_size].to(dev),
                                                                            input_size, mean, std))]
        emb = torch.cat([feats[0]] + [F.interpolate(f, size=feats[0].shape[-2:], mode="bilinear")
                                      for f in feats[1:]], 1)
        out.append(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]))
    return torch.cat(out)


def patchcore_embedding(images: torch.Tensor, input_size: int, batch_size: int, dev: torch.device) -> torch.Tensor:
    """The PatchCore embedding of our wrapper (tf_efficientnet_lite0 blocks.2+4, packaged weights)."""
    from anomaly_bench.core.interface import FitContext
    from anomaly_bench.methods.patchcore import Patchcore

    try:
        import anomalib.models.image.patchcore.torch_model  # noqa: F401
    except ImportError:
        return _embedding_without_anomalib(images, input_size, batch_size, dev)
    m = Patchcore(input_size=input_size, batch_size=batch_size, device=str(dev))
    model = m._build(with_weights=True).to(dev)
    h, w, ch = m._feature_grid(model)
    bank = torch.empty(len(images) * h * w, sum(ch), device=dev)
    m._extract_into(model, images, bank, FitContext(progress=False), "embedding_store")
    return bank


def compare(emb: torch.Tensor, steps: int, ratio: float, full: bool, seed: int, label: str) -> None:
    dev = emb.device
    seed_everything(seed)
    t0 = time.perf_counter()
    features, start = project_like_anomalib(emb)
    sync(dev)
    print(f"[{label}] embedding {tuple(emb.shape)} -> projected {tuple(features.shape)} in "
          f"{time.perf_counter() - t0:.1f}s; start index {int(start)}; device {dev}, threads {torch.get_num_threads()}")
    ref, t_ref = anomalib_steps(features, start, steps)
    ours, t_ours, st = ours_steps(features, start, steps)
    same = ours == ref
    ms_ref, ms_ours = 1000 * t_ref / steps, 1000 * t_ours / steps
    print(f"[{label}] {steps} steps: anomalib {ms_ref:.1f} ms/step, ours {ms_ours:.1f} ms/step, "
          f"ratio {ms_ref / ms_ours:.1f}x, identical indices: {same}")
    print(f"[{label}] ours: {st['refreshed'] / steps:.0f} point refreshes per step, "
          f"{st['pairs'] / steps / len(emb):.3f} x N filtered pairs per step, {st['exact_pairs'] / steps:.0f} exact "
          f"pairs per step (anomalib: N = {len(emb)} exact distances per step)")
    if not same:
        first = next(i for i, (a, b) in enumerate(zip(ref, ours)) if a != b)
        print(f"[{label}] FIRST DIFFERENCE at pick {first}: anomalib {ref[first]} ours {ours[first]}")
    if full:
        size = coreset_size(len(emb), ratio)
        sel, t_full, st = ours_steps(features, start, size - 1, progress=True)
        est = ms_ref * (size - 1) / 1000
        print(f"[{label}] whole coreset ({size} = {ratio:g} x {len(emb)}): ours {t_full:.1f}s "
              f"({1000 * t_full / (size - 1):.1f} ms/step, {st['pairs'] / (size - 1) / len(emb):.3f} x N pairs "
              f"per step); anomalib "
              f"extrapolated {est:.0f}s; ratio {est / t_full:.1f}x; prefix equal: {sel[:steps + 1] == ref}")
    del features


def fit_and_auc(args, root: Path, dev: torch.device) -> None:
    from sklearn.metrics import roc_auc_score

    from anomaly_bench.core.interface import FitContext, TrainSets
    from anomaly_bench.methods.patchcore import Patchcore

    train_files = sorted(glob.glob(str(root / "Training" / "notumor" / "*.jpg")))[:args.images]
    test_ok = sorted(glob.glob(str(root / "Testing" / "notumor" / "*.jpg")))[:args.test_images]
    test_bad = []
    for cls in ("glioma", "meningioma", "pituitary"):
        test_bad += sorted(glob.glob(str(root / "Testing" / cls / "*.jpg")))[:args.test_images // 3]
    train = TrainSets(healthy=load_images(train_files))
    test = load_images(test_ok + test_bad)
    labels = np.r_[np.zeros(len(test_ok)), np.ones(len(test_bad))]
    impls = ["fast", "anomalib"] if args.fit_compare else ["fast"]
    scores = {}
    for impl in impls:
        m = Patchcore(input_size=args.input_size, coreset_sampling_ratio=args.ratio, coreset_impl=impl,
                      batch_size=args.batch_size, device=str(dev), memory_budget_gb=64.0)
        t0 = time.perf_counter()
        m.fit(train, FitContext(progress=True))
        t_fit = time.perf_counter() - t0
        scores[impl] = m.score(test).scores
        print(f"[fit] PatchCore {impl} coreset: {len(train.healthy)} images at {args.input_size}px, "
              f"ratio {args.ratio}: fit {t_fit:.1f}s (coreset {m.provenance()['coreset_seconds']}s, "
              f"bank {tuple(m.model.memory_bank.shape)}); AUC {roc_auc_score(labels, scores[impl]):.4f} on "
              f"{len(test_ok)} healthy / {len(test_bad)} tumour test images")
    if len(scores) == 2:
        print(f"[fit] identical scores fast vs anomalib coreset: {np.array_equal(scores['fast'], scores['anomalib'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=614400, help="rows of the random embedding")
    ap.add_argument("--dim", type=int, default=329, help="columns of the random embedding")
    ap.add_argument("--steps", type=int, default=50, help="greedy steps timed for both (anomalib ~0.5-2 s/step on CPU)")
    ap.add_argument("--ratio", type=float, default=0.01, help="coreset ratio for --full and --fit")
    ap.add_argument("--full", action="store_true", help="also time our whole coreset")
    ap.add_argument("--real", action="store_true", help="use PatchCore embeddings of brain-MRI images")
    ap.add_argument("--fit", action="store_true", help="PatchCore fit time and AUC on brain MRI")
    ap.add_argument("--fit-compare", action="store_true", help="with --fit: also fit with anomalib's coreset")
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--test-images", type=int, default=150)
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--embedding-cache", default="", help="--real: load/save the embedding here (.pt)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.fit:
        fit_and_auc(args, data_root(args.data_root), dev)
        return
    if args.real:
        cache = Path(args.embedding_cache) if args.embedding_cache else None
        if cache is not None and cache.is_file():
            emb = torch.load(cache, map_location=dev)
            print(f"[real] embedding {tuple(emb.shape)} loaded from {cache}")
        else:
            root = data_root(args.data_root)
            files = sorted(glob.glob(str(root / "Training" / "notumor" / "*.jpg")))[:args.images]
            t0 = time.perf_counter()
            emb = patchcore_embedding(load_images(files), args.input_size, args.batch_size, dev)
            print(f"[real] {len(files)} images -> embedding {tuple(emb.shape)} in {time.perf_counter() - t0:.1f}s")
            if cache is not None:
                torch.save(emb.cpu(), cache)
        compare(emb, args.steps, args.ratio, args.full, args.seed, "real")
    else:
        emb = torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(args.seed)).to(dev)
        compare(emb, args.steps, args.ratio, args.full, args.seed, "random")


if __name__ == "__main__":
    main()
