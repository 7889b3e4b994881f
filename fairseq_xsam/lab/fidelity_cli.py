"""``xsam-fidelity``: direction fidelity of SGD, SAM and XSAM on fairseq checkpoints.

    xsam-fidelity measure CKPT [CKPT ...] --data DIR --out DIR [--rho 0.05 --probe-rho 0.15
                  --radii 0.15,0.05 --batches 8 --batch-seed 2 --max-tokens 2048 ...]
    xsam-fidelity summarize JSON [JSON ...] --out summary.json [--plot fidelity.png]

``measure`` writes ``<out>/<label>.json`` per checkpoint (label: the run folder and epoch,
e.g. ``xsam-rho0.025-seed1-epoch5``): for each batch, L(θ), the worst case at each radius
(every start's loss curve and whether it converged) and, for each direction (sgd, sam_k1,
sam_k3, xsam, xsam_auto, xsam_other), its cosine to δ* and the fraction of the worst-case rise
it reaches; then mean and standard deviation over the batches. The batch before the measured
ones gives the first batch's ``xsam_other`` α; each later batch uses its predecessor's α
(an α chosen on one batch and used on the next, as an epoch-wise search does). The math:
:mod:`fairseq_xsam.lab.fidelity`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from . import fidelity

DIRECTIONS = ("sgd", "sam_k1", "sam_k3", "xsam", "xsam_auto", "xsam_other")


def _positive(name, kind=float):
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r} (allowed: "
                                             f"{name} > 0)")
        return value
    return convert


def _radii(text):
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"invalid --radii value: {text!r} (allowed: a "
                                         "comma-separated list of numbers > 0)")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xsam-fidelity", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure checkpoints")
    m.add_argument("checkpoints", nargs="+", metavar="CKPT")
    m.add_argument("--data", help="data-bin folder (default: the checkpoint's)")
    m.add_argument("--out", required=True, help="folder for the JSON files")
    m.add_argument("--rho", type=_positive("--rho"), default=0.05,
                   help="ascent radius of every direction (default 0.05)")
    m.add_argument("--probe-rho", type=_positive("--probe-rho"), default=0.15,
                   help="XSAM's probe radius ρ' (default 0.15)")
    m.add_argument("--radii", type=_radii, default=[0.15, 0.05],
                   help="radii r of the worst case (default 0.15,0.05)")
    m.add_argument("--batches", type=_positive("--batches", int), default=8)
    m.add_argument("--batch-seed", type=int, default=2,
                   help="seed of fairseq's shuffled first epoch the batches come from")
    m.add_argument("--max-tokens", type=_positive("--max-tokens", int), default=2048)
    m.add_argument("--starts", type=_positive("--starts", int), default=3,
                   help="ascent starts: SGD's point, then random ones (default 3)")
    m.add_argument("--steps", type=_positive("--steps", int), default=30,
                   help="most ascent proposals per start (default 30)")
    m.add_argument("--label", action="append",
                   help="label per checkpoint (default: run folder and epoch)")
    m.add_argument("--cpu", action="store_true")
    s = sub.add_parser("summarize", help="one table and plot over measured checkpoints")
    s.add_argument("results", nargs="+", metavar="JSON")
    s.add_argument("--out", required=True, help="the summary JSON")
    s.add_argument("--plot", help="a PNG: cosine and fraction over training per direction")
    return p


def default_label(checkpoint: str, epoch: Optional[int]) -> str:
    run = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))
    return f"{run}-epoch{epoch}" if epoch is not None else run


def _stats(values: Sequence[float]) -> Dict[str, float]:
    values = [v for v in values if math.isfinite(v)]
    return {"mean": statistics.fmean(values) if values else float("nan"),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def measure_batch(theta, evaluate, args, alpha_other: Optional[float], generator) -> dict:
    t0 = time.time()
    dirs = fidelity.directions(theta, evaluate, rho=args.rho, probe_rho=args.probe_rho,
                               alpha_other=alpha_other)
    out = {"alpha": {k: d.alpha for k, d in dirs.items() if d.alpha is not None},
           "alpha_at_edge": dirs["xsam"].at_edge, "phi_deg": dirs["xsam"].phi_deg,
           "alpha_other": alpha_other, "radii": {}}
    for r in args.radii:
        g0 = dirs["sgd"].vector
        starts = [torch._foreach_mul(g0, r)] + [
            fidelity.random_start(theta, r, generator) for _ in range(args.starts - 1)]
        worst = fidelity.worst_case(theta, evaluate, r, starts, steps=args.steps)
        out["base_loss"] = worst.base_loss
        out["radii"][repr(r)] = {
            "worst": {"loss": worst.loss, "rise": worst.rise, "best_start": worst.best_start,
                      "starts": [{"loss": s.loss, "converged": s.converged, "curve": s.curve}
                                 for s in worst.starts]},
            "directions": {k: fidelity.score(theta, evaluate, worst, d.vector)
                           for k, d in dirs.items()}}
    out["seconds"] = round(time.time() - t0, 1)
    return out, dirs["xsam"].alpha


def summary_of(batches: List[dict], radii) -> dict:
    out = {}
    for r in radii:
        key = repr(r)
        names = batches[0]["radii"][key]["directions"].keys()
        out[key] = {name: {m: _stats([b["radii"][key]["directions"][name][m] for b in batches])
                           for m in ("cosine", "fraction")} for name in names}
        out[key]["worst_rise"] = _stats([b["radii"][key]["worst"]["rise"] for b in batches])
        out[key]["not_converged"] = sum(
            not b["radii"][key]["worst"]["starts"][b["radii"][key]["worst"]["best_start"]]
            ["converged"] for b in batches)
    out["alpha_xsam"] = _stats([b["alpha"]["xsam"] for b in batches])
    out["alpha_at_edge"] = sum(bool(b["alpha_at_edge"]) for b in batches)
    return out


def measure(args) -> int:
    from .checkpoint import batch_loss, load

    labels = args.label or []
    if labels and len(labels) != len(args.checkpoints):
        raise SystemExit("xsam-fidelity: error: give --label once per checkpoint or not at all")
    os.makedirs(args.out, exist_ok=True)
    for i, ckpt in enumerate(args.checkpoints):
        loaded = load(ckpt, data=args.data, batches=args.batches + 1, max_tokens=args.max_tokens,
                      seed=args.batch_seed, order="shuffled", cpu=args.cpu)
        theta = [p.data for p in loaded.params]
        label = labels[i] if labels else default_label(ckpt, loaded.epoch)
        generator = torch.Generator().manual_seed(args.batch_seed)
        t0 = time.time()
        # the extra last batch only supplies the α that the first measured batch borrows
        *measured, previous = loaded.samples
        ev = lambda grad, s=previous: batch_loss(loaded, s, grad)  # noqa: E731
        alpha_prev = fidelity.directions(theta, ev, rho=args.rho, probe_rho=args.probe_rho,
                                         sam_steps=())["xsam"].alpha
        batches = []
        for j, sample in enumerate(measured):
            ev = lambda grad, s=sample: batch_loss(loaded, s, grad)  # noqa: E731
            result, alpha_prev = measure_batch(theta, ev, args, alpha_prev, generator)
            result.update(index=j, sentences=int(sample["nsentences"]),
                          tokens=int(sample["ntokens"]))
            batches.append(result)
            print(f"xsam-fidelity: {label}: batch {j + 1}/{len(measured)}, "
                  f"{result['seconds']} s, alpha {result['alpha']['xsam']}", flush=True)
        record = {"checkpoint": os.path.abspath(ckpt), "label": label, "epoch": loaded.epoch,
                  "settings": {k: getattr(args, k) for k in ("rho", "probe_rho", "radii",
                                                             "batches", "batch_seed",
                                                             "max_tokens", "starts", "steps")},
                  "directions": list(DIRECTIONS), "seconds": round(time.time() - t0, 1),
                  "summary": summary_of(batches, args.radii), "batches": batches}
        path = os.path.join(args.out, f"{label}.json")
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        print(f"xsam-fidelity: wrote {path}", flush=True)
    return 0


def summarize(args) -> int:
    records = []
    for path in args.results:
        with open(path) as f:
            records.append(json.load(f))
    records.sort(key=lambda r: (r["label"].rsplit("-epoch", 1)[0], r["epoch"] or 0))
    table = [{"label": r["label"], "epoch": r["epoch"], "settings": r["settings"],
              "summary": r["summary"]} for r in records]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(table, f, indent=1)
    print(f"xsam-fidelity: wrote {args.out}")
    if args.plot:
        plot(records, args.plot)
    return 0


def plot(records: List[dict], path: str) -> None:
    """Mean ± std over batches against the checkpoint's epoch: one panel per (metric, radius), a
    colour per direction, a line style per run; the points of one epoch are spread a little
    sideways so that their error bars stay apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    radii = records[0]["settings"]["radii"]
    runs = sorted({r["label"].rsplit("-epoch", 1)[0] for r in records})
    fig, axes = plt.subplots(2, len(radii), figsize=(5.5 * len(radii), 7.6), squeeze=False)
    styles = ["-", "--", ":", "-."]
    shown = [name for name in DIRECTIONS
             if any(name in x["summary"][repr(r)] for x in records for r in radii)]
    for col, r in enumerate(radii):
        for row, metric in enumerate(("cosine", "fraction")):
            ax = axes[row][col]
            for k, run in enumerate(runs):
                mine = [x for x in records if x["label"].rsplit("-epoch", 1)[0] == run]
                for n, name in enumerate(shown):
                    pts = [(x["epoch"], x["summary"][repr(r)][name][metric])
                           for x in mine if name in x["summary"][repr(r)]]
                    if not pts:
                        continue
                    shift = 0.12 * (n - (len(shown) - 1) / 2)
                    ax.errorbar([p[0] + shift for p in pts], [p[1]["mean"] for p in pts],
                                yerr=[p[1]["std"] for p in pts], color=f"C{n}",
                                linestyle=styles[k % len(styles)], marker="o", markersize=4,
                                capsize=2, linewidth=1.2)
            ax.set_title(f"{metric} to the worst case, r = {r}")
            ax.set_xlabel("epoch of the checkpoint")
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{n}", marker="o", label=name)
               for n, name in enumerate(shown)]
    if len(runs) > 1:
        handles += [Line2D([], [], color="0.3", linestyle=styles[k % len(styles)], label=run)
                    for k, run in enumerate(runs)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8,
               frameon=False)
    rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, 0.035 * rows + 0.01, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"xsam-fidelity: wrote {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    return measure(args) if args.command == "measure" else summarize(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
