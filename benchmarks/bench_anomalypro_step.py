"""Training-step speed of MedAI AnomalyPro: this implementation's fast path vs the authors' step.

Both run in the same process on the same device with the same networks and initial weights, on the same
device-resident batches:

* ``reference``: ``reference_train_step`` = HealthyGAN's solver loop (fp32, NCHW, ``nn.InstanceNorm2d``,
  separate G forwards for the critic and generator steps, three critic calls, a ``.item()`` per loss every step,
  non-fused Adam);
* ``fast``: ``AnomalyProTrainer.step`` with the method's defaults on that device (CUDA: bf16 autocast with an fp32
  gradient penalty, NCHW, fused Adam, no host sync; CPU: fp32, the critic and G's last up-sampling block + output
  conv in channels_last, in-place LeakyReLU, fused Adam; both: InstanceNorm through
  the group-norm kernel, one G forward shared by the critic and generator steps, one critic call on real+fake).

Steps are timed in interleaved blocks (reference block, fast block, ...) and the median of each is reported, so
load from other processes hits both alike. On CUDA the script also checks that the scores of a fixed checkpoint
agree within 1e-3 between fp32 scoring and the fast (bf16) path, and ``--ablate`` times variants of the fast path.

    python benchmarks/bench_anomalypro_step.py                      # CPU: 64 px, batch 8, widths 32, 3 res, 1 thread
    python benchmarks/bench_anomalypro_step.py --device cuda        # paper shape: 256 px, batch 16, widths 64, 6 res
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the authors' step

from anomalypro_reference import reference_train_step  # noqa: E402

from anomaly_bench.methods.medai_anomalypro import (  # noqa: E402
    AnomalyProTrainer,
    Critic,
    Generator,
    MedAIAnomalyPro,
    auto_critic_layers,
    resolve_layout,
)

HP = dict(g_lr=1e-4, d_lr=1e-4, beta1=0.5, beta2=0.999, n_critic=2, lambda_gp=10.0, lambda_id=1.0, lambda_rec=1.0,
          lambda_mask=0.1, lambda_msmall=1.0, lambda_mzerone=1.0, mask_eps=0.01, head="mask")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def synthetic(n: int, size: int, dev: torch.device, gen: torch.Generator) -> torch.Tensor:
    """Smooth random images in [-1, 1] (low-frequency noise upsampled), resident on ``dev``."""
    low = torch.rand(n, 1, max(size // 8, 2), max(size // 8, 2), generator=gen)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1).to(dev)


def build(args, dev: torch.device, norm_impl: str, seed: int = 0):
    torch.manual_seed(seed)
    G = Generator(1, 2, args.g_conv_dim, args.g_repeat_num, norm_impl=norm_impl).to(dev)
    D = Critic(1, args.d_conv_dim, auto_critic_layers(args.size)).to(dev)
    return G, D


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per block (default: cuda 20, cpu 6)")
    ap.add_argument("--reps", type=int, default=0, help="interleaved blocks per variant (default: cuda 5, cpu 4)")
    ap.add_argument("--size", type=int, default=0, help="image side (default: cuda 256, cpu 64)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: cuda 16, cpu 8)")
    ap.add_argument("--g-conv-dim", type=int, default=0, help="(default: cuda 64, cpu 32)")
    ap.add_argument("--d-conv-dim", type=int, default=0, help="(default: cuda 64, cpu 32)")
    ap.add_argument("--g-repeat-num", type=int, default=0, help="residual blocks (default: cuda 6, cpu 3)")
    ap.add_argument("--threads", type=int, default=-1,
                    help="torch CPU threads (0: torch's default; default: 1 on the CPU, where 2 OpenMP threads on a "
                         "shared 2-core machine ran 10x slower, so the figure measured the load, not the code)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the fast path's generator")
    ap.add_argument("--ablate", action="store_true", help="also time variants of the fast path")
    ap.add_argument("--fit-iters", type=int, default=0,
                    help="also time MedAIAnomalyPro.fit (sampling, logging, checkpoints) for this many iterations")
    ap.add_argument("--json", default="", help="write the results to this file")
    args = ap.parse_args()

    spec = args.device
    dev = torch.device("cuda" if spec == "auto" and torch.cuda.is_available() else ("cpu" if spec == "auto" else spec))
    cuda = dev.type == "cuda"
    for k, gpu, cpu in (("steps", 20, 6), ("reps", 5, 4), ("size", 256, 64), ("batch", 16, 8),
                        ("g_conv_dim", 64, 32), ("d_conv_dim", 64, 32), ("g_repeat_num", 6, 3)):
        if not getattr(args, k):
            setattr(args, k, gpu if cuda else cpu)
    if args.threads < 0:
        args.threads = 0 if cuda else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(dev) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; {args.size} px, batch {args.batch}, g_conv_dim {args.g_conv_dim}, "
          f"d_conv_dim {args.d_conv_dim}, {args.g_repeat_num} res blocks, critic {auto_critic_layers(args.size)} "
          f"layers; {args.reps} x {args.steps} steps per variant", flush=True)

    gen = torch.Generator().manual_seed(0)
    B = args.batch
    n_batches = 8
    data_a = synthetic(B * n_batches, args.size, dev, gen)
    data_b = synthetic(B * n_batches, args.size, dev, gen)
    alphas = torch.rand(n_batches, B, 1, 1, 1, generator=gen).to(dev)

    # --- variants -------------------------------------------------------------------------------------
    Gr, Dr = build(args, dev, "torch")
    g_opt = torch.optim.Adam(Gr.parameters(), HP["g_lr"], (HP["beta1"], HP["beta2"]))
    d_opt = torch.optim.Adam(Dr.parameters(), HP["d_lr"], (HP["beta1"], HP["beta2"]))

    def ref_step(i: int) -> None:
        j = i % n_batches
        reference_train_step(Gr, Dr, g_opt, d_opt, data_a[j * B:(j + 1) * B], data_b[j * B:(j + 1) * B], i, HP,
                             alphas[j])

    def make_fast(amp=True, layout="auto", norm_impl="auto", compile_g=False):
        lay = resolve_layout(layout, dev, compile_g)
        impl = norm_impl if norm_impl != "auto" else ("fused" if cuda and lay == "all" else "group")
        G, D = build(args, dev, impl)
        tr = AnomalyProTrainer(G, D, HP, dev, 1, amp=amp, layout=lay, compile_g=compile_g)

        def step(i: int) -> None:
            j = i % n_batches
            tr.step(i, data_a[j * B:(j + 1) * B], data_b[j * B:(j + 1) * B], alphas[j])
            if (i + 1) % 100 == 0:
                tr.pop_losses()  # what fit does every log_every iterations
        return step, tr

    fast_step, fast_tr = make_fast()
    variants = {"reference": ref_step, "fast": fast_step}
    if args.compile:
        variants["fast+compile"] = make_fast(compile_g=True)[0]
    if args.ablate and cuda:
        variants["fast fp32 (no amp)"] = make_fast(amp=False)[0]
        variants["fast channels_last all"] = make_fast(layout="all")[0]
        variants["fast norm torch"] = make_fast(norm_impl="torch")[0]
        if args.compile:
            variants["fast+compile NCHW"] = make_fast(layout="none", compile_g=True)[0]
    elif args.ablate:
        variants["fast norm torch"] = make_fast(norm_impl="torch")[0]
        variants["fast layout head"] = make_fast(layout="head")[0]
        variants["fast layout none"] = make_fast(layout="none")[0]

    # --- timing ----------------------------------------------------------------------------------------
    warm = 10 if cuda else 2
    counters = {k: 0 for k in variants}
    t0 = time.perf_counter()
    for k, step in variants.items():
        for _ in range(warm if "compile" not in k else warm + 10):
            step(counters[k])
            counters[k] += 1
        sync(dev)
    print(f"warm-up done in {time.perf_counter() - t0:.1f} s", flush=True)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.reps):
        for k, step in variants.items():
            sync(dev)
            t = time.perf_counter()
            for _ in range(args.steps):
                step(counters[k])
                counters[k] += 1
            sync(dev)
            rates[k].append(args.steps / (time.perf_counter() - t))
    ref = statistics.median(rates["reference"])
    results = {"device": name, "size": args.size, "batch": B, "g_conv_dim": args.g_conv_dim,
               "d_conv_dim": args.d_conv_dim, "g_repeat_num": args.g_repeat_num, "it_per_s": {}, "ratio": {}}
    print(f"{'variant':26s} {'it/s':>9s} {'img/s':>9s} {'ratio':>7s}   (median of {args.reps} blocks)")
    for k, v in rates.items():
        med = statistics.median(v)
        results["it_per_s"][k], results["ratio"][k] = med, med / ref
        print(f"{k:26s} {med:9.3f} {med * B:9.1f} {med / ref:7.3f}x")

    # --- scores of a fixed checkpoint: fp32 vs the fast path ------------------------------------------------
    if cuda:
        G = fast_tr.G
        state = {"format": 1, "G": {k: v.detach().cpu() for k, v in G.state_dict().items()},
                 "arch": {"image_shape": (1, args.size, args.size), "net_channels": 1, "head": "mask",
                          "g_conv_dim": args.g_conv_dim, "g_repeat_num": args.g_repeat_num,
                          "d_conv_dim": args.d_conv_dim, "critic_layers": auto_critic_layers(args.size)}}
        images = synthetic(64, args.size, torch.device("cpu"), gen)
        scores = {}
        for amp in (False, True):
            m = MedAIAnomalyPro(device="cuda", amp=amp)
            m.load_state_dict(state)
            scores[amp] = m.score(images).scores
        diff = float(abs(scores[True] - scores[False]).max())
        results["score_max_abs_diff_fp32_vs_fast"] = diff
        ok = diff < 1e-3
        print(f"scores fp32 vs fast path: max |diff| = {diff:.2e} over 64 images "
              f"(mean score {scores[False].mean():.4f}) -> {'OK' if ok else 'FAIL'} (< 1e-3)")
    if args.fit_iters:
        results["fit_it_per_s"] = fit_check(args, dev, gen)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("RESULT " + json.dumps({k: results[k] for k in ("device", "ratio")}))
    if cuda and not results["score_max_abs_diff_fp32_vs_fast"] < 1e-3:
        sys.exit(1)


def fit_check(args, dev: torch.device, gen: torch.Generator) -> float:
    """Whole ``fit`` on synthetic data (512 A + 512 B images) with a work folder: it/s, finite scores, resume."""
    import tempfile

    from anomaly_bench.core.interface import FitContext, TrainSets

    n = args.fit_iters
    params = dict(iterations=n, batch_size=args.batch, g_conv_dim=args.g_conv_dim, d_conv_dim=args.d_conv_dim,
                  g_repeat_num=args.g_repeat_num, lr_decay_iters=n // 2, log_every=100, checkpoint_every=n // 2,
                  resume_every=n // 2, device=str(dev), compile=args.compile)
    train = TrainSets(healthy=synthetic(512, args.size, torch.device("cpu"), gen),
                      mixed=synthetic(512, args.size, torch.device("cpu"), gen))
    test = synthetic(32, args.size, torch.device("cpu"), gen)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = FitContext(workdir=tmp, checkpoint_every=n // 2, progress=False)
        sync(dev)
        t = time.perf_counter()
        m = MedAIAnomalyPro(**params).fit(train, ctx)
        sync(dev)
        rate = n / (time.perf_counter() - t)
        s1 = m.score(test).scores
        again = MedAIAnomalyPro(**params).fit(train, FitContext(workdir=tmp, progress=False))
        s2 = again.score(test).scores
    ok = bool(abs(s1 - s2).max() == 0 and (s1 == s1).all())
    print(f"fit(compile={args.compile}): {n} iterations at {rate:.2f} it/s (incl. building, compiling, sampling, "
          f"logging, 2 checkpoints + resume states); "
          f"{len(ctx.selection_checkpoints)} selection checkpoints; finished-run resume reproduces scores: {ok}")
    return rate


if __name__ == "__main__":
    main()
