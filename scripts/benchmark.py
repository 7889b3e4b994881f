"""Time per update of AdamW, SAM and XSAM through fairseq's real trainer, measured in one run.

The optimizers run interleaved (A B C D A B C D …) on the same batches after a warm-up, so drift
(thermal, other load) hits all of them alike. Prints per-update time (median and interquartile
range), the ratios the project targets (XSAM/SAM ≤ 1.01 with an epoch-wise search,
SAM/AdamW ≤ 2.05), the price of a search on every update, memory, and the time of the optimizer
math alone (everything XSAM does besides forward/backward passes).

    python scripts/benchmark.py --device cpu                      # tiny model, synthetic data
    python scripts/benchmark.py --device cuda --precision fp16 \\
        --data data-bin/iwslt14.tokenized.de-en --arch transformer_iwslt_de_en

Memory: on CUDA the peak allocated during each optimizer's updates; everywhere, the bytes of
optimizer state kept between updates (base state plus XSAM's scratch copy of θ).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

TINY = ["--arch", "transformer", "--encoder-layers", "2", "--decoder-layers", "2",
        "--encoder-embed-dim", "64", "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim",
        "128", "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "4",
        "--decoder-attention-heads", "4"]

OPTIMIZERS = {
    "adamw": ["--optimizer", "adam"],
    "sam": ["--optimizer", "xsam_adamw", "--sam-variant", "sam"],
    "xsam": ["--optimizer", "xsam_adamw"],  # search at the first update of every epoch
    "xsam-search-every-update": ["--optimizer", "xsam_adamw", "--alpha-search", "1"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "fp16", "amp"], default="fp32")
    p.add_argument("--data", help="a fairseq data-bin folder (default: a synthetic corpus)")
    p.add_argument("--arch", default=None, help="fairseq --arch (default: a tiny transformer)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--updates", type=int, default=20, help="timed updates per optimizer")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3, help="untimed updates per optimizer")
    p.add_argument("--epoch-updates", type=int, default=1101,
                   help="updates per epoch for the amortised XSAM/SAM ratio (default 1101: "
                        "IWSLT14 De-En at --max-tokens 4096)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N updates of SAM and of XSAM with torch.profiler "
                        "and print the top operators (0: off)")
    p.add_argument("--profile-trace", default=None,
                   help="folder for the profiler's Chrome traces (sam.json, xsam.json)")
    p.add_argument("--json", default=None, help="also write the figures (JSON) here")
    return p.parse_args(argv)


def state_bytes(trainer) -> int:
    inner = trainer.optimizer
    inner = getattr(inner, "fp32_optimizer", inner).optimizer
    total = sum(t.numel() * t.element_size() for s in inner.state.values()
                for t in s.values() if torch.is_tensor(t))
    backup = getattr(inner, "_backup", None) or []
    return total + sum(t.numel() * t.element_size() for t in backup)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def optimizer_math_time(trainer, device, repeats=5) -> float:
    """Seconds for XSAM's vector math of one update without any forward/backward pass."""
    from fairseq_xsam import core

    xsam = getattr(trainer.optimizer, "fp32_optimizer", trainer.optimizer).optimizer
    theta = [p for g in xsam.param_groups for p in g["params"]]
    grads = [torch.randn_like(p) for p in theta]
    backup = [torch.empty_like(p) for p in theta]
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            core.sharpness_update(theta, grads, backup,
                                  rho=0.15, ascent_steps=1, variant="fixed", alpha=1.3,
                                  compute_grad=lambda: grads)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from fairseq_xsam.fairseq.harness import build_trainer, first_batches, synthetic_corpus

    data = args.data or synthetic_corpus(tempfile.mkdtemp(prefix="xsam-bench-"), n_train=400)
    common = ["--task", "translation", "--criterion", "label_smoothed_cross_entropy",
              "--label-smoothing", "0.1", "--dropout", "0.1", "--lr", "5e-4",
              "--adam-betas", "(0.9,0.98)", "--weight-decay", "1e-4", "--no-progress-bar",
              *(["--arch", args.arch, "--share-decoder-input-output-embed"] if args.arch
                else TINY)]
    common += ["--cpu"] if args.device == "cpu" else []
    common += {"fp32": [], "fp16": ["--fp16"], "amp": ["--amp"]}[args.precision]
    if args.device == "cpu" and args.precision == "fp16":
        # fairseq builds the flat fp32 master tensor on torch.cuda.current_device(): on CPU use
        # the per-parameter layout; its overflow branch calls .cuda() on a scalar
        common += ["--fp16-no-flatten-grads"]
        torch.Tensor.cuda = lambda self, *a, **k: self
    epoch_updates = args.updates  # the timed window is one (simulated) epoch: one search
    trainers, batches = {}, None
    for name, opts in OPTIMIZERS.items():
        _, task, trainer = build_trainer(data, common + opts, seed=args.seed)
        trainers[name] = trainer
        if batches is None:
            max_tokens = args.max_tokens or (4096 if args.arch else 2000)
            batches = first_batches(task, 10 ** 6, args.warmup + args.updates, max_tokens)
            batches = [trainer._prepare_sample(b)[0] for b in batches]
    times = {name: [] for name in trainers}
    peak = {name: 0 for name in trainers}
    total = args.warmup + args.updates
    print(f"[benchmark] {len(trainers)} optimizers x {total} updates, interleaved; "
          f"device={args.device} precision={args.precision}", flush=True)
    for i in range(total):
        batch = batches[i % len(batches)]
        # warm-up is epoch 0; the timed window starts epoch 1, so it holds its search
        epoch = 0 if i < args.warmup else 1 + (i - args.warmup) // epoch_updates
        for name, trainer in trainers.items():
            if i == 0 or (i >= args.warmup and (i - args.warmup) % epoch_updates == 0):
                trainer.begin_epoch(epoch)
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            start = time.perf_counter()
            trainer.train_step([batch])
            sync(args.device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
                if args.device == "cuda":
                    peak[name] = max(peak[name], torch.cuda.max_memory_allocated())

    def q(values, f):
        return statistics.quantiles(values, n=4)[f] if len(values) >= 2 else values[0]

    med = {n: statistics.median(t) for n, t in times.items()}
    params = sum(p.numel() for p in trainers["adamw"].model.parameters())
    print(f"\nmodel parameters: {params:,}; timed updates per optimizer: {args.updates} "
          f"(one XSAM search among them)\n")
    print("| optimizer | ms/update (median) | IQR (ms) | state kept (MiB) |"
          + (" peak CUDA (MiB) |" if args.device == "cuda" else ""))
    print("|---|---|---|---|" + ("---|" if args.device == "cuda" else ""))
    for name in trainers:
        row = (f"| {name} | {1000 * med[name]:.2f} | {1000 * q(times[name], 0):.2f}-"
               f"{1000 * q(times[name], 2):.2f} | {state_bytes(trainers[name]) / 2 ** 20:.2f} |")
        if args.device == "cuda":
            row += f" {peak[name] / 2 ** 20:.0f} |"
        print(row)
    print("\n| ratio | measured | target |\n|---|---|---|")
    # over an epoch of E updates XSAM pays its plain update E times and one search: measured
    # here as the median plain update plus (search update - plain update) / E
    search_extra = med["xsam-search-every-update"] - med["xsam"]
    amortised = med["xsam"] + search_extra / args.epoch_updates
    print(f"| XSAM / SAM per update, search amortised over an epoch of {args.epoch_updates} "
          f"updates | {amortised / med['sam']:.3f} | <= 1.01 |")
    print(f"| XSAM / SAM, median update (no search) | {med['xsam'] / med['sam']:.3f} | ~1 |")
    print(f"| SAM / AdamW | {med['sam'] / med['adamw']:.3f} | <= 2.05 |")
    print(f"| XSAM searching every update / SAM | "
          f"{med['xsam-search-every-update'] / med['sam']:.3f} | (price of a search) |")
    math_s = optimizer_math_time(trainers["xsam"], args.device)
    print(f"\nXSAM vector math alone (no passes): {1000 * math_s:.2f} ms = "
          f"{math_s / med['adamw']:.1%} of an AdamW update")
    if args.json:
        figures = {
            "device": args.device, "precision": args.precision,
            "arch": args.arch or "tiny transformer", "parameters": params,
            "timed_updates": args.updates, "warmup_updates": args.warmup,
            "optimizers": {n: {"ms_per_update_median": 1000 * med[n],
                               "ms_per_update_iqr": [1000 * q(times[n], 0),
                                                     1000 * q(times[n], 2)],
                               "updates_per_s": 1 / med[n],
                               "state_kept_mib": state_bytes(trainers[n]) / 2 ** 20,
                               "peak_cuda_mib": (peak[n] / 2 ** 20 if args.device == "cuda"
                                                 else None)} for n in trainers},
            "ratios": {"xsam_sam_amortised": amortised / med["sam"],
                       "xsam_sam_median": med["xsam"] / med["sam"],
                       "sam_adamw": med["sam"] / med["adamw"],
                       "search_every_update_sam": med["xsam-search-every-update"] / med["sam"]},
            "epoch_updates": args.epoch_updates, "xsam_math_ms": 1000 * math_s}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    if args.profile:
        for name in ("sam", "xsam"):
            profile(name, trainers[name], batches, args)
    return 0


def profile(name, trainer, batches, args) -> None:
    """torch.profiler over ``args.profile`` plain (non-search) updates: where the time goes."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda"
                                           else [])
    with torch_profile(activities=activities) as prof:
        for i in range(args.profile):
            trainer.train_step([batches[i % len(batches)]])
        sync(args.device)
    key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    print(f"\n[profile] {name}: {args.profile} updates, top operators by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=15))
    if args.profile_trace:
        os.makedirs(args.profile_trace, exist_ok=True)
        prof.export_chrome_trace(os.path.join(args.profile_trace, f"{name}.json"))


if __name__ == "__main__":
    sys.exit(main())
