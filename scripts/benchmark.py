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

``--case mlp`` is the memory-bound case (plain-PyTorch API, ``fairseq_xsam.XSAM``): MLPs whose
forward/backward passes are short next to the parameter sweeps, where XSAM's extra vector math
shows. It prints XSAM/SAM, SAM/base, the overhead the traffic model predicts (the sweeps counted
on the update itself, each priced by timing that kind of sweep in the same run) and the extra
memory, then the traffic table of every update kind (docs/performance.md):

    python scripts/benchmark.py --case mlp --rounds 40 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
    p.add_argument("--case", choices=["transformer", "mlp"], default="transformer",
                   help="transformer: fairseq's trainer (default); mlp: the memory-bound MLPs "
                        "through the plain-PyTorch API, with the traffic model")
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
    p.add_argument("--math-repeats", type=int, default=5,
                   help="transformer case: repetitions of the vector math timed alone (median)")
    p.add_argument("--json", default=None, help="also write the figures (JSON) here")
    p.add_argument("--no-search-every-update", action="store_true",
                   help="transformer case: leave out the optimizer that searches on every update "
                        "(the slowest by far); the price of a search is then XSAM's own search "
                        "update minus its median plain update")
    p.add_argument("--rounds", type=int, default=40,
                   help="--case mlp: timed interleaved rounds (one update of each optimizer each)")
    p.add_argument("--mlps", default="2.1M,6.3M",
                   help="--case mlp: which MLPs, comma-separated, from " + ", ".join(MLPS))
    args = p.parse_args(argv)
    if args.case == "mlp":
        unknown = [m for m in args.mlps.split(",") if m not in MLPS]
        if unknown:
            p.error(f"Invalid --mlps value: {args.mlps!r} (allowed: a comma-separated subset "
                    f"of {', '.join(MLPS)})")
        if args.rounds < 1 or args.warmup < 0:
            p.error(f"Invalid --rounds/--warmup: {args.rounds}/{args.warmup} "
                    "(allowed: --rounds >= 1, --warmup >= 0)")
    return args


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
            core.sharpness_update(theta, grads, backup,
                                  rho=0.15, ascent_steps=1, variant=variant, alpha=1.3,
                                  compute_grad=lambda: grads)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case == "mlp":
        return mlp_case(args)
    return transformer_case(args)


def transformer_case(args) -> int:
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
    optimizers = {n: o for n, o in OPTIMIZERS.items()
                  if not (args.no_search_every_update and n == "xsam-search-every-update")}
    for name, opts in optimizers.items():
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
    math_s = optimizer_math_time(trainers["xsam"], args.device, repeats=args.math_repeats)
    sam_math_s = optimizer_math_time(trainers["xsam"], args.device, repeats=args.math_repeats,
                                     variant="sam")
    print(f"\nXSAM vector math alone (no passes): {1000 * math_s:.2f} ms = "
          f"{math_s / med['adamw']:.1%} of an AdamW update")
    # XSAM's update is SAM's plus its extra vector math (same passes, same base step), and once
    # per epoch a search: priced from the parts, each measured far more precisely than 1 %
    parts = 1 + ((math_s - sam_math_s) + search_extra / args.epoch_updates) / med["sam"]
    print(f"SAM vector math alone: {1000 * sam_math_s:.2f} ms; XSAM's extra: "
          f"{1000 * (math_s - sam_math_s):.2f} ms = {(math_s - sam_math_s) / med['sam']:.2%} of a "
          f"SAM update; the search amortised over {args.epoch_updates} updates: "
          f"{search_extra / args.epoch_updates / med['sam']:.2%}")
    print(f"XSAM / SAM from its parts (SAM update + XSAM's extra math + the amortised search): "
          f"{parts:.4f} (target <= 1.01)")
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
                       "search_every_update_sam": (med[every] / med["sam"] if every in times
                                                   else None),
                       "search_extra_sam": search_extra / med["sam"],
                       "xsam_sam_paired": list(paired["xsam_sam"]),
                       "xsam_sam_paired_amortised": paired_amortised,
                       "sam_adamw_paired": list(paired["sam_adamw"])},
            "seconds_per_round": times, "search_round": 0,
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


# -- the traffic model: what one update reads and writes, counted on the update itself ----------

#: ops whose mutated argument is only written (not read)
WRITE_ONLY = {"copy_", "_foreach_copy_", "zero_", "_foreach_zero_", "fill_", "_foreach_fill_"}
#: how a sweep is priced: a sweep of each kind is timed in the same run (:func:`sweep_times`)
KINDS = ("reduce", "unary", "binary", "ternary", "copy")


class Traffic(TorchDispatchMode):
    """Counts what the aten ops run under it read and write.

    Every op touching at least 1 % of ``param_bytes`` is (part of) a *sweep*, classified by kind:
    'reduce' (reads, writes nothing parameter-sized), 'copy', and 'unary'/'binary'/'ternary' by
    how many parameter-sized lists it reads (an in-place op reads what it writes); a sweep over
    a share of θ (a per-tensor op) counts as that share. Smaller ops are *small ops* (the scalar
    arithmetic, per-tensor ops on tiny tensors). ``syncs`` counts host synchronisations (``item()``,
    ``bool(tensor)``: ``_local_scalar_dense``), ``allocations`` parameter-sized new tensors.
    Reads and writes are in units of ``param_bytes`` (one sweep over θ).
    """

    def __init__(self, param_bytes: int):
        super().__init__()
        self.param_bytes = param_bytes
        self.read = self.written = 0.0
        self.sweeps = collections.Counter()
        self.small = self.syncs = self.allocations = 0
        self.paused = False

    @contextlib.contextmanager
    def pause(self):
        """Not counted: the passes, which are not the optimizer's vector math."""
        self.paused, before = True, self.paused
        try:
            yield
        finally:
            self.paused = before

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused:
            self._count(func, args, kwargs, out)
        return out

    def _count(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense":
            self.syncs += 1
            return
        schema = func._schema
        if schema.returns and all(r.alias_info is not None and not r.alias_info.is_write
                                  for r in schema.returns):
            return  # a view: no data moves
        big = self.param_bytes / 100
        read = written = largest = 0
        lists_read = 0
        mutates = False
        for i, arg in enumerate(schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            nbytes = _nbytes(value)
            if not nbytes:
                continue
            largest = max(largest, nbytes)
            if arg.alias_info is not None and arg.alias_info.is_write:
                mutates = True
                written += nbytes
                if arg.name == "out" or name in WRITE_ONLY:
                    continue
            read += nbytes
            lists_read += nbytes >= big
        if not mutates:
            written += _nbytes(out)
            largest = max(largest, _nbytes(out))
            self.allocations += _nbytes(out) >= big
        if read + written < big:
            self.small += _touches_tensors(args, kwargs)  # not dtype helpers and the like
            return
        self.read += read / self.param_bytes
        self.written += written / self.param_bytes
        if name in WRITE_ONLY:
            kind = "copy"
        elif written < big:
            kind = "reduce"
        else:
            kind = KINDS[min(max(lists_read, 1), 3)]
        # in sweeps over θ: a foreach op over all parameters is 1, a per-tensor op its share
        self.sweeps[kind] += largest / self.param_bytes

    def figures(self) -> dict:
        return {"read": round(self.read, 2), "written": round(self.written, 2),
                "sweeps": {k: round(self.sweeps.get(k, 0), 2) for k in KINDS},
                "small_ops": self.small,
                "allocations": self.allocations, "host_syncs": self.syncs}


def _touches_tensors(args, kwargs) -> bool:
    values = list(args) + list(kwargs.values())
    return any(torch.is_tensor(v) or (isinstance(v, (list, tuple)) and any(map(torch.is_tensor, v)))
               for v in values)


def _nbytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


#: update kinds of the traffic table: (label, core.sharpness_update settings)
UPDATE_KINDS = [
    ("sam", dict(variant="sam")),
    ("xsam (no search), fixed", dict(variant="fixed", alpha=0.5)),
    ("xsam, search update (21 probes)", dict(variant="xsam", alpha=0.5, search=True)),
    ("msam+, k=1", dict(variant="msam+")),  # msam and lsam with k = 1 are SAM
    ("lsam+, k=1", dict(variant="lsam+")),
    ("sam, k=3", dict(variant="sam", ascent_steps=3)),
    ("xsam (no search), k=3", dict(variant="fixed", alpha=0.5, ascent_steps=3)),
    ("msam, k=3", dict(variant="msam", ascent_steps=3)),
    ("lsam, k=3", dict(variant="lsam", ascent_steps=3)),
    ("sam + ASAM", dict(variant="sam", adaptive=True)),
    ("xsam (no search) + ASAM", dict(variant="fixed", alpha=0.5, adaptive=True)),
]


def math_update(theta, grads, backup, current, *, variant, alpha=1.0, ascent_steps=1,
                adaptive=False, search=False, counter=None, moved=lambda: None, refill=True):
    """XSAM's vector math of one update on ``theta`` without forward/backward passes: every
    "pass" copies ``grads`` into the gradient list ``current`` (not counted; with ``refill``
    False it leaves ``current`` as it is, for timing), the probes return 0."""
    from fairseq_xsam import core

    pause = counter.pause if counter is not None else contextlib.nullcontext

    def compute_grad():
        if refill:
            with pause():
                torch._foreach_copy_(current, grads)
        return current

    def compute_loss():
        with pause():
            return torch.zeros((), device=theta[0].device)

    with torch.no_grad():
        return core.sharpness_update(
            theta, compute_grad(), backup, rho=0.05, ascent_steps=ascent_steps, variant=variant,
            alpha=alpha, search_grid=core.alpha_grid(2.0, 0.1) if search else None,
            probe_rho=0.1, adaptive=adaptive, compute_grad=compute_grad,
            compute_loss=compute_loss, moved=moved)


def count_traffic(theta, **kind) -> dict:
    """The traffic figures of one update of ``kind`` (see :data:`UPDATE_KINDS`) on ``theta``."""
    grads = [torch.randn_like(t) for t in theta]
    backup, current = ([torch.empty_like(t) for t in theta] for _ in range(2))
    param_bytes = sum(t.numel() * t.element_size() for t in theta)
    counter = Traffic(param_bytes)
    moved = kind.pop("moved", lambda: None)
    with counter:
        math_update(theta, grads, backup, current, counter=counter, moved=moved, **kind)
    return counter.figures()


def fp16_flat(theta):
    """fairseq's ``--fp16`` layout: one flat fp32 master tensor and the fp16 model weights that
    every move of θ refreshes (``FP16Optimizer._sync_fp32_params_to_fp16``)."""
    flat = torch.cat([t.detach().reshape(-1).float() for t in theta])
    half = [t.detach().half() for t in theta]

    def moved():
        offset = 0
        for p in half:  # fairseq's own loop
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    return [flat], moved


def traffic_table(theta) -> dict:
    """{label: figures} for every update kind, the fp16 flat master layout, and the path that
    many CUDA tensors take (scale in place first, :func:`fairseq_xsam.core.one_sweep_axpy`)."""
    from fairseq_xsam import core

    table = {label: count_traffic(theta, **dict(kind)) for label, kind in UPDATE_KINDS}
    for label, kind in (("sam, --fp16 flat master", dict(variant="sam")),
                        ("xsam (no search), --fp16 flat master",
                         dict(variant="fixed", alpha=0.5))):
        flat, moved = fp16_flat(theta)
        table[label] = count_traffic(flat, moved=moved, **kind)
    one_sweep = core.one_sweep_axpy
    core.one_sweep_axpy = lambda tensors: False
    try:
        for label, kind in (("sam, many CUDA tensors", dict(variant="sam")),
                            ("xsam (no search), many CUDA tensors",
                             dict(variant="fixed", alpha=0.5))):
            table[label] = count_traffic(theta, **kind)
    finally:
        core.one_sweep_axpy = one_sweep
    return table


def print_traffic(table) -> None:
    print("\n| update kind | reads | writes | sweeps: reduce/unary/binary/ternary/copy "
          "| small ops | param-sized allocations | host syncs |\n|---|---|---|---|---|---|---|")
    for label, f in table.items():
        sweeps = "/".join(f"{f['sweeps'][k]:g}" for k in KINDS)
        print(f"| {label} | {f['read']:g} | {f['written']:g} | {sweeps} | {f['small_ops']} | "
              f"{f['allocations']} | {f['host_syncs']} |")
    print("(reads and writes in sweeps over θ: 1 = every fp32 parameter once; the --fp16 rows "
          "count fp16 bytes as half a sweep)")


def sweep_buffers(theta):
    """Three lists shaped like ``theta`` and a 64 MiB block that evicts them from the caches
    (what a forward/backward pass does between an update's sweeps)."""
    return [[torch.rand_like(t) + 0.5 for t in theta] for _ in range(3)] + [
        torch.zeros(2 ** 24, device=theta[0].device)]


def sweep_times(buffers, device) -> dict:
    """Seconds of one sweep of each kind over ``buffers`` (:func:`sweep_buffers`), from cold
    caches, and of a small op."""
    x, y, z, flush = buffers
    s = torch.tensor(0.999, device=x[0].device)
    ops = {"reduce": lambda: torch._foreach_norm(x),
           "unary": lambda: torch._foreach_mul_(x, s),
           "binary": lambda: torch._foreach_add_(x, y, alpha=1e-3),
           "ternary": lambda: torch._foreach_addcmul_(x, y, z, value=1e-3),
           "copy": lambda: torch._foreach_copy_(y, z),
           "small": lambda: s * 2.0}
    out = {}
    for kind, op in ops.items():
        repeats = 50 if kind == "small" else 1
        flush.add_(1.0)
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            op()
        sync(device)
        out[kind] = (time.perf_counter() - start) / repeats
    return out


def predicted_seconds(figures, times) -> float:
    """The traffic model's price of an update: its sweeps and small ops, each at the time
    measured for its kind."""
    return (sum(n * times[k] for k, n in figures["sweeps"].items())
            + figures["small_ops"] * times["small"])


#: the memory-bound MLPs: 4 × (Linear(width, width) + tanh), batch, base optimizer
MLPS = {"2.1M": (724, 64, "sgd"), "6.3M": (1254, 32, "adamw"), "25.2M": (2510, 32, "adamw")}


def mlp_optimizers(width, base, device, seed):
    """{name: (model, optimizer)}: base, SAM and XSAM (no search) on identical MLPs."""
    from fairseq_xsam import XSAM

    torch.manual_seed(seed)
    layers = []
    for _ in range(4):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    template = torch.nn.Sequential(*layers).to(device)
    cls, kw = ((torch.optim.SGD, dict(lr=0.01, momentum=0.9)) if base == "sgd"
               else (torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.01)))
    out = {}
    for name in ("base", "sam", "xsam"):
        model = copy.deepcopy(template)
        if name == "base":
            opt = cls(model.parameters(), **kw)
        else:
            opt = XSAM(model.parameters(), cls, rho=0.05, sam_variant="sam" if name == "sam"
                       else "xsam", alpha=0.5, alpha_search=0, **kw)
        out[name] = (model, opt)
    return out


def mlp_step(model, opt, x, y):
    closure = lambda: torch.nn.functional.mse_loss(model(x), y)  # noqa: E731
    if hasattr(opt, "search_state"):  # XSAM: the closure runs every pass
        return opt.step(closure)
    opt.zero_grad()
    loss = closure()
    loss.backward()
    opt.step()
    return loss


def optimizer_state_bytes(opt) -> int:
    total = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t))
    return total + sum(t.numel() * t.element_size() for t in getattr(opt, "_backup", None) or [])


def mlp_case(args) -> int:
    device = args.device
    print(f"[benchmark] case mlp: {args.mlps}; base, SAM, XSAM (no search) and the sweeps, "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up; "
          f"{torch.get_num_threads()} thread(s), device={device}", flush=True)
    results, tables = {}, {}
    for label in args.mlps.split(","):
        width, batch, base = MLPS[label]
        opts = mlp_optimizers(width, base, device, args.seed)
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(batch, width, generator=g).to(device)
        y = torch.randn(batch, width, generator=g).to(device)
        theta = [p for p in opts["xsam"][0].parameters()]
        samples = collections.defaultdict(list)
        scratch, backup, current = ([torch.empty_like(t) for t in theta] for _ in range(3))
        grads = [torch.randn_like(t) for t in theta]
        torch._foreach_copy_(current, grads)
        buffers = sweep_buffers(theta)
        for _ in range(args.warmup + args.rounds):
            for name, (model, opt) in opts.items():
                sync(device)
                start = time.perf_counter()
                mlp_step(model, opt, x, y)
                sync(device)
                samples[name].append(time.perf_counter() - start)
            for name, kind in (("math sam", dict(variant="sam")),
                               ("math xsam", dict(variant="fixed", alpha=0.5))):
                torch._foreach_copy_(scratch, theta)  # on a copy: the models keep training
                buffers[3].add_(1.0)  # from cold caches, like the sweeps
                sync(device)
                start = time.perf_counter()
                math_update(scratch, grads, backup, current, refill=False, **kind)
                sync(device)
                samples[name].append(time.perf_counter() - start)
            for kind, seconds in sweep_times(buffers, device).items():
                samples[kind].append(seconds)
        med = {k: statistics.median(v[args.warmup:]) for k, v in samples.items()}
        table = {"sam": count_traffic(theta, variant="sam"),
                 "xsam": count_traffic(theta, variant="fixed", alpha=0.5)}
        predicted = {k: predicted_seconds(f, med) for k, f in table.items()}
        base_mem = optimizer_state_bytes(opts["base"][1])
        results[label] = {
            "parameters": sum(t.numel() for t in theta), "batch": batch, "base": base,
            "ms_median": {k: 1000 * med[k] for k in ("base", "sam", "xsam")},
            "sam_base": med["sam"] / med["base"], "xsam_sam": med["xsam"] / med["sam"],
            "xsam_sam_paired": list(paired_ratio(samples["xsam"][args.warmup:],
                                                 samples["sam"][args.warmup:])),
            "sam_base_paired": list(paired_ratio(samples["sam"][args.warmup:],
                                                 samples["base"][args.warmup:])),
            "predicted_xsam_sam": 1 + (predicted["xsam"] - predicted["sam"]) / med["sam"],
            "math_ms": {"sam": 1000 * med["math sam"], "xsam": 1000 * med["math xsam"]},
            "predicted_math_ms": {k: 1000 * v for k, v in predicted.items()},
            "sweep_ms": {k: 1000 * med[k] for k in (*KINDS, "small")},
            "extra_memory_mib": {n: (optimizer_state_bytes(opts[n][1]) - base_mem) / 2 ** 20
                                 for n in ("sam", "xsam")},
            "traffic": table}
        tables[label] = theta
        if args.profile:
            for name in ("sam", "xsam"):
                model, opt = opts[name]
                profile(f"{label} MLP, {name}", lambda i, m=model, o=opt, x=x, y=y: mlp_step(m, o, x, y),
                        args)
    print("\n| MLP | params | batch | base | base ms | SAM ms | XSAM ms | SAM / base | XSAM / SAM "
          "| target | predicted XSAM / SAM | extra memory vs base, SAM / XSAM (MiB) "
          "| XSAM / SAM per round: median [95 % CI] | SAM / base per round |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        ms = r["ms_median"]
        mem = r["extra_memory_mib"]
        print(f"| {label} | {r['parameters']:,} | {r['batch']} | {r['base']} | {ms['base']:.2f} | "
              f"{ms['sam']:.2f} | {ms['xsam']:.2f} | {r['sam_base']:.3f} | {r['xsam_sam']:.3f} | "
              f"<= 1.03 | {r['predicted_xsam_sam']:.3f} | {mem['sam']:.2f} / {mem['xsam']:.2f} | "
              f"{fmt_paired(r['xsam_sam_paired'])} | {fmt_paired(r['sam_base_paired'])} |")
    print("\n| MLP | vector math alone, SAM / XSAM: measured ms | predicted ms (traffic model) "
          "| sweep ms: reduce/unary/binary/ternary/copy | small op us |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        m, p, sw = r["math_ms"], r["predicted_math_ms"], r["sweep_ms"]
        print(f"| {label} | {m['sam']:.2f} / {m['xsam']:.2f} | {p['sam']:.2f} / {p['xsam']:.2f} | "
              + "/".join(f"{sw[k]:.3f}" for k in KINDS) + f" | {1000 * sw['small']:.1f} |")
    first = next(iter(tables.values()))
    table = traffic_table(first)
    print(f"\ntraffic per update beyond the base optimizer (counted on the "
          f"{next(iter(tables))} MLP's parameters):")
    print_traffic(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"case": "mlp", "device": device, "threads": torch.get_num_threads(),
                       "rounds": args.rounds, "warmup": args.warmup, "mlps": results,
                       "traffic": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
