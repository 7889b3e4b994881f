"""The transformer case of xsam-bench: AdamW, SAM and XSAM updates through fairseq's real
trainer, interleaved on the same batches; ``TINY_MODEL`` is the small transformer the benchmark,
the precision check and the GPU check's smoke runs share."""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time

import torch

TINY_MODEL = ["--arch", "transformer", "--encoder-layers", "2", "--decoder-layers", "2",
        "--encoder-embed-dim", "64", "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim",
        "128", "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "4",
        "--decoder-attention-heads", "4"]


OPTIMIZERS = {
    "adamw": ["--optimizer", "adam"],
    "sam": ["--optimizer", "xsam_adamw", "--sam-variant", "sam"],
    "xsam": ["--optimizer", "xsam_adamw"],  # search at the first update of every epoch
    "xsam-search-every-update": ["--optimizer", "xsam_adamw", "--alpha-search", "1"],
}


def state_bytes(trainer) -> int:
    inner = trainer.optimizer
    inner = getattr(inner, "fp32_optimizer", inner).optimizer
    total = sum(t.numel() * t.element_size() for s in inner.state.values()
                for t in s.values() if torch.is_tensor(t))
    backup = getattr(inner, "_backup", None) or []
    return total + sum(t.numel() * t.element_size() for t in backup)


def paired_ratio(numerator, denominator, resamples=2000, seed=0):
    """(median, low, high) of the per-round ratios numerator[i] / denominator[i], with a 95 %
    percentile-bootstrap interval of that median. Rounds that share a batch (and the machine's
    state at that moment) cancel most of their common noise in the ratio; the ratio of two
    medians does not."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"paired_ratio needs two equally long, non-empty samples "
                         f"(got {len(numerator)} and {len(denominator)})")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(resamples))
    low, high = medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
    return statistics.median(ratios), low, high


def fmt_paired(triple) -> str:
    return f"{triple[0]:.3f} [{triple[1]:.3f}, {triple[2]:.3f}]"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def optimizer_math_time(trainer, device, repeats=5, variant="fixed") -> float:
    """Seconds of one update's vector math (``variant`` 'fixed': XSAM's without a search; 'sam':
    SAM's), without any forward/backward pass."""
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
            core.sharpness_update(theta, grads, backup, core.Passes(lambda: grads),
                                  rho=0.15, ascent_steps=1, variant=variant, alpha=1.3)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def transformer_case(args) -> int:
    """The transformer case. On CPU under fp16, fairseq's overflow branch calls ``.cuda()`` on a
    scalar: ``torch.Tensor.cuda`` is the identity for the case's duration, restored after it."""
    cuda = torch.Tensor.cuda
    if args.device == "cpu" and args.precision == "fp16":
        torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        return _transformer_case(args)
    finally:
        torch.Tensor.cuda = cuda


def _transformer_case(args) -> int:
    from fairseq_xsam.fairseq.harness import synthetic_corpus

    data = args.data or synthetic_corpus(tempfile.mkdtemp(prefix="xsam-bench-"), n_train=400)
    trainers, batches = _build_trainers(args, data)
    times, peak = _time_updates(args, trainers, batches)
    med = {n: statistics.median(t) for n, t in times.items()}
    params = sum(p.numel() for p in trainers["adamw"].model.parameters())
    print(f"\nmodel parameters: {params:,}; timed updates per optimizer: {args.updates} "
          f"(one XSAM search among them)\n")
    _print_update_table(args, trainers, times, med, peak)
    r = _ratios(args, times, med)
    math_s = optimizer_math_time(trainers["xsam"], args.device, repeats=args.math_repeats)
    sam_math_s = optimizer_math_time(trainers["xsam"], args.device, repeats=args.math_repeats,
                                     variant="sam")
    print(f"\nXSAM vector math alone (no passes): {1000 * math_s:.2f} ms = "
          f"{math_s / med['adamw']:.1%} of an AdamW update")
    # XSAM's update is SAM's plus its extra vector math (same passes, same base step), and once
    # per epoch a search: priced from the parts, each measured far more precisely than 1 %
    search_share = r["search_extra"] / args.epoch_updates
    parts = 1 + ((math_s - sam_math_s) + search_share) / med["sam"]
    print(f"SAM vector math alone: {1000 * sam_math_s:.2f} ms; XSAM's extra: "
          f"{1000 * (math_s - sam_math_s):.2f} ms = {(math_s - sam_math_s) / med['sam']:.2%} of a "
          f"SAM update; the search amortised over {args.epoch_updates} updates: "
          f"{search_share / med['sam']:.2%}")
    print(f"XSAM / SAM from its parts (SAM update + XSAM's extra math + the amortised search): "
          f"{parts:.4f} (target <= 1.01)")
    if args.json:
        figures = {
            "device": args.device, "precision": args.precision,
            "arch": args.arch or "tiny transformer", "parameters": params,
            "timed_updates": args.updates, "warmup_updates": args.warmup,
            "optimizers": {n: {"ms_per_update_median": 1000 * med[n],
                               "ms_per_update_iqr": [1000 * _quartile(times[n], 0),
                                                     1000 * _quartile(times[n], 2)],
                               "updates_per_s": 1 / med[n],
                               "state_kept_mib": state_bytes(trainers[n]) / 2 ** 20,
                               "peak_cuda_mib": (peak[n] / 2 ** 20 if args.device == "cuda"
                                                 else None)} for n in trainers},
            "ratios": r["figures"], "seconds_per_round": times, "search_round": 0,
            "epoch_updates": args.epoch_updates, "xsam_math_ms": 1000 * math_s,
            "sam_math_ms": 1000 * sam_math_s, "xsam_sam_from_parts": parts}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    if args.profile:
        for name in ("sam", "xsam"):
            profile(name, lambda i, t=trainers[name]: t.train_step([batches[i % len(batches)]]),
                    args)
    return 0


def _build_trainers(args, data):
    """({optimizer name: fairseq trainer}, the prepared batches of every round)."""
    from fairseq_xsam.fairseq.harness import build_trainer, first_batches

    common = ["--task", "translation", "--criterion", "label_smoothed_cross_entropy",
              "--label-smoothing", "0.1", "--dropout", "0.1", "--lr", "5e-4",
              "--adam-betas", "(0.9,0.98)", "--weight-decay", "1e-4", "--no-progress-bar",
              *(["--arch", args.arch, "--share-decoder-input-output-embed"] if args.arch
                else TINY_MODEL)]
    common += ["--cpu"] if args.device == "cpu" else []
    common += {"fp32": [], "fp16": ["--fp16"], "amp": ["--amp"]}[args.precision]
    if args.device == "cpu" and args.precision == "fp16":
        # fairseq builds the flat fp32 master tensor on torch.cuda.current_device(): on CPU use
        # the per-parameter layout; its overflow branch calls .cuda() on a scalar
        common += ["--fp16-no-flatten-grads"]
    trainers, batches = {}, None
    optimizers = {n: o for n, o in OPTIMIZERS.items()
                  if not (args.no_search_every_update and n == "xsam-search-every-update")}
    for name, opts in optimizers.items():
        _, task, trainer = build_trainer(data, common + opts, seed=args.seed)
        trainers[name] = trainer
        if batches is None:
            max_tokens = args.max_tokens or (4096 if args.arch else 2000)
            batches = first_batches(task, 10 ** 6, args.warmup + args.updates, max_tokens)
            batches = [trainer._prepare_sample(b)[0] for b in batches]
    return trainers, batches


def _time_updates(args, trainers, batches):
    """({name: seconds per timed update}, {name: peak CUDA bytes}): every optimizer on the same
    batch, round by round; the timed window is one (simulated) epoch of ``args.updates``."""
    epoch_updates = args.updates  # the timed window is one (simulated) epoch: one search
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
    return times, peak


def _quartile(values, f):
    return statistics.quantiles(values, n=4)[f] if len(values) >= 2 else values[0]


def _print_update_table(args, trainers, times, med, peak) -> None:
    print("| optimizer | ms/update (median) | IQR (ms) | state kept (MiB) |"
          + (" peak CUDA (MiB) |" if args.device == "cuda" else ""))
    print("|---|---|---|---|" + ("---|" if args.device == "cuda" else ""))
    for name in trainers:
        row = (f"| {name} | {1000 * med[name]:.2f} | {1000 * _quartile(times[name], 0):.2f}-"
               f"{1000 * _quartile(times[name], 2):.2f} | "
               f"{state_bytes(trainers[name]) / 2 ** 20:.2f} |")
        if args.device == "cuda":
            row += f" {peak[name] / 2 ** 20:.0f} |"
        print(row)


def _ratios(args, times, med) -> dict:
    """The ratio table, printed; returns ``search_extra`` (one search's extra seconds) and the
    ``figures`` of the JSON's ratios."""
    print("\n| ratio | measured | target |\n|---|---|---|")
    # over an epoch of E updates XSAM pays its plain update E times and one search: measured
    # here as the median plain update plus (search update - plain update) / E
    epoch_updates = args.updates
    every = "xsam-search-every-update"
    plain = [j for j in range(args.updates) if j % epoch_updates != 0] or list(range(args.updates))
    if every in times:
        search_extra = med[every] - med["xsam"]
    else:  # XSAM's own search update (the first timed one) against its plain updates
        search_extra = times["xsam"][0] - statistics.median(times["xsam"][j] for j in plain)
    amortised = med["xsam"] + search_extra / args.epoch_updates
    # the same rounds paired: each round ran every optimizer on one batch, back to back
    pick = {n: [times[n][j] for j in plain] for n in ("adamw", "sam", "xsam")}
    paired = {"xsam_sam": paired_ratio(pick["xsam"], pick["sam"]),
              "sam_adamw": paired_ratio(pick["sam"], pick["adamw"])}
    paired_amortised = paired["xsam_sam"][0] + (search_extra / args.epoch_updates
                                                 / statistics.median(pick["sam"]))
    print(f"| XSAM / SAM per update, search amortised over an epoch of {args.epoch_updates} "
          f"updates | {amortised / med['sam']:.3f} | <= 1.01 |")
    print(f"| XSAM / SAM, median update (no search) | {med['xsam'] / med['sam']:.3f} | ~1 |")
    print(f"| XSAM / SAM per round, same batch, {len(plain)} rounds without a search: median "
          f"[95 % bootstrap CI] | {fmt_paired(paired['xsam_sam'])} | ~1 |")
    print(f"| XSAM / SAM per round plus the search amortised over {args.epoch_updates} updates "
          f"| {paired_amortised:.3f} | <= 1.01 |")
    print(f"| SAM / AdamW | {med['sam'] / med['adamw']:.3f} | <= 2.05 |")
    print(f"| SAM / AdamW per round, same batch: median [95 % bootstrap CI] "
          f"| {fmt_paired(paired['sam_adamw'])} | <= 2.05 |")
    if every in times:
        print(f"| XSAM searching every update / SAM | {med[every] / med['sam']:.3f} "
              f"| (price of a search) |")
    print(f"| one search's extra time / SAM update | {search_extra / med['sam']:.3f} "
          f"| (from {'the every-update optimizer' if every in times else 'XSAM search update'}) |")
    figures = {"xsam_sam_amortised": amortised / med["sam"],
               "xsam_sam_median": med["xsam"] / med["sam"],
               "sam_adamw": med["sam"] / med["adamw"],
               "search_every_update_sam": med[every] / med["sam"] if every in times else None,
               "search_extra_sam": search_extra / med["sam"],
               "xsam_sam_paired": list(paired["xsam_sam"]),
               "xsam_sam_paired_amortised": paired_amortised,
               "sam_adamw_paired": list(paired["sam_adamw"])}
    return {"search_extra": search_extra, "figures": figures}


def profile(name, step, args) -> None:
    """torch.profiler over ``args.profile`` calls of ``step(i)`` (plain, non-search updates):
    where the time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda"
                                           else [])
    with torch_profile(activities=activities) as prof:
        for i in range(args.profile):
            step(i)
        sync(args.device)
    key = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    print(f"\n[profile] {name}: {args.profile} updates, top operators by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=15))
    if args.profile_trace:
        os.makedirs(args.profile_trace, exist_ok=True)
        prof.export_chrome_trace(os.path.join(args.profile_trace, f"{name}.json"))
