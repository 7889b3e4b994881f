"""The memory-bound case of xsam-bench (``--case mlp``): MLPs through the plain-PyTorch ``XSAM``."""

from __future__ import annotations

import collections
import copy
import json
import os
import statistics
import time

import torch

from .traffic import (
    KINDS,
    count_traffic,
    math_update,
    predicted_seconds,
    print_traffic,
    sweep_buffers,
    sweep_times,
    traffic_table,
)
from .transformer import fmt_paired, paired_ratio, profile, sync

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
        results[label], tables[label] = _measure_mlp(label, args)
    _print_mlp_tables(results)
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


def _time_rounds(opts, x, y, theta, args) -> dict:
    """{kind: seconds per round}: the three optimizers' steps, the vector math of SAM and XSAM
    alone (on a copy of θ) and the sweeps, interleaved round by round (warm-up rounds included)."""
    device = args.device
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
    return samples


def _measure_mlp(label, args):
    """(the figures of one MLP of :data:`MLPS`, its parameters)."""
    width, batch, base = MLPS[label]
    opts = mlp_optimizers(width, base, args.device, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, width, generator=g).to(args.device)
    y = torch.randn(batch, width, generator=g).to(args.device)
    theta = [p for p in opts["xsam"][0].parameters()]
    samples = _time_rounds(opts, x, y, theta, args)
    timed = {k: v[args.warmup:] for k, v in samples.items()}
    med = {k: statistics.median(v) for k, v in timed.items()}
    table = {"sam": count_traffic(theta, variant="sam"),
             "xsam": count_traffic(theta, variant="fixed", alpha=0.5)}
    predicted = {k: predicted_seconds(f, med) for k, f in table.items()}
    base_mem = optimizer_state_bytes(opts["base"][1])
    result = {
        "parameters": sum(t.numel() for t in theta), "batch": batch, "base": base,
        "ms_median": {k: 1000 * med[k] for k in ("base", "sam", "xsam")},
        "sam_base": med["sam"] / med["base"], "xsam_sam": med["xsam"] / med["sam"],
        "xsam_sam_paired": list(paired_ratio(timed["xsam"], timed["sam"])),
        "sam_base_paired": list(paired_ratio(timed["sam"], timed["base"])),
        "predicted_xsam_sam": 1 + (predicted["xsam"] - predicted["sam"]) / med["sam"],
        "math_ms": {"sam": 1000 * med["math sam"], "xsam": 1000 * med["math xsam"]},
        "predicted_math_ms": {k: 1000 * v for k, v in predicted.items()},
        "sweep_ms": {k: 1000 * med[k] for k in (*KINDS, "small")},
        "extra_memory_mib": {n: (optimizer_state_bytes(opts[n][1]) - base_mem) / 2 ** 20
                             for n in ("sam", "xsam")},
        "traffic": table}
    if args.profile:
        for name in ("sam", "xsam"):
            model, opt = opts[name]
            profile(f"{label} MLP, {name}", lambda i, m=model, o=opt, x=x, y=y: mlp_step(m, o, x, y),
                    args)
    return result, theta


def _print_mlp_tables(results) -> None:
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
