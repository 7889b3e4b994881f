"""XSAM under --fp16 and --amp against fp32: the same batches through three fairseq trainers.

For each precision (fp32, fp16, amp) the same model (same seed) takes the same updates with
``--optimizer xsam_adamw --alpha-search 1`` (a search on every update) and dropout off. Per update
it records ‖g_k‖ (the norm of the ascent-point gradient, in true units), φ, α*, the loss scale,
and the gradient AdamW actually receives (captured at the base optimizer's step, so a wrong
unscale, e.g. fairseq's double unscale under --amp, shows here even though Adam's update is
nearly scale-invariant); at the end, the parameter change Δθ. It prints one markdown table of
the relative differences to fp32 (and writes it to ``--out``).

On CUDA ``--fp16`` uses fairseq's flat fp32 master tensor (the default layout); on CPU that
layout cannot be built (fairseq asks CUDA for its device), so ``--fp16-no-flatten-grads`` is
added, and ``--amp`` runs without a loss scaler (CPU autocast is off in fairseq's train_step).

    xsam-precision --device cpu                    # tiny model, synthetic
    xsam-precision --device cuda --arch transformer_iwslt_de_en \\
        --data data-bin/iwslt14.tokenized.de-en --updates 5 --out docs/results/precision.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile

import torch

from .transformer import TINY_MODEL

PRECISIONS = ("fp32", "fp16", "amp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--data", help="a fairseq data-bin folder (default: a synthetic corpus)")
    p.add_argument("--arch", default=None, help="fairseq --arch (default: a tiny transformer)")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--updates", type=int, default=3, help="updates compared (>= 1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lr", default="5e-4")
    p.add_argument("--out", default=None, help="also write the report (markdown) here")
    p.add_argument("--json", default=None, help="also write the figures (JSON) here")
    args = p.parse_args(argv)
    if args.updates < 1:
        p.error(f"--updates must be >= 1 (got {args.updates})")
    return args


def run(precision, data, args):
    """Trains ``args.updates`` updates; returns per-update records and Δθ (fp32, flat)."""
    from fairseq_xsam.fairseq.harness import build_trainer, first_batches

    argv = ["--task", "translation", "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", "0.1", "--dropout", "0.0", "--attention-dropout", "0.0",
            "--lr", args.lr, "--adam-betas", "(0.9,0.98)", "--weight-decay", "1e-4",
            "--optimizer", "xsam_adamw", "--alpha-search", "1", "--no-progress-bar",
            *(["--arch", args.arch, "--share-decoder-input-output-embed"] if args.arch
              else TINY_MODEL)]
    argv += ["--cpu"] if args.device == "cpu" else []
    argv += {"fp32": [], "amp": ["--amp"],
             "fp16": ["--fp16"] + (["--fp16-no-flatten-grads"] if args.device == "cpu" else [])
             }[precision]
    _, task, trainer = build_trainer(args.data or data, argv, seed=args.seed)
    batches = first_batches(task, 10 ** 6, args.updates,
                            args.max_tokens or (4096 if args.arch else 500))
    glue_trainer = trainer.optimizer  # builds the optimizer and attaches the glue
    records = instrument(trainer)

    def master():
        inner = getattr(glue_trainer, "fp32_optimizer", glue_trainer)
        return torch.cat([p.detach().float().reshape(-1) for p in inner.params])

    start = master().cpu()
    for batch in batches:
        trainer.train_step([batch])
        scale = getattr(getattr(glue_trainer, "scaler", None), "loss_scale", None)
        if scale is None and precision == "amp":
            scale = glue_trainer.scaler.get_scale() if glue_trainer.scaler.is_enabled() else None
        records[-1]["scale"] = scale
    return records, master().cpu() - start, trainer.get_num_updates()


def instrument(trainer) -> list:
    """Spies on an ``xsam_adamw`` trainer (building its optimizer). Returns the list that gets, per
    XSAM update, a dict: ``gk_norm`` (‖g_k‖, true units), ``phi`` (radians), ``alpha``,
    ``probe_losses`` (None without a search) and, if the base optimizer stepped, ``adam_grad``
    (the gradient AdamW received, flat fp32 on the CPU)."""
    _ = trainer.optimizer  # builds the optimizer and attaches the glue
    glue = trainer._xsam_glue
    xsam = glue.xsam
    records = []
    sharpness = glue.sharpness

    def spy_sharpness():
        info = sharpness()
        records.append({"gk_norm": float(info.grad_norm), "alpha": info.alpha,
                        "phi": float(info.phi) if info.phi is not None else float("nan"),
                        "probe_losses": (None if info.probe_losses is None
                                         else info.probe_losses.tolist())})
        return info

    base_step = xsam.base_optimizer.step

    def spy_step(*a, **k):
        records[-1]["adam_grad"] = torch.cat(
            [p.grad.detach().float().reshape(-1) for g in xsam.param_groups
             for p in g["params"] if p.grad is not None]).cpu()
        return base_step(*a, **k)

    glue.sharpness = spy_sharpness
    xsam.base_optimizer.step = spy_step
    return records


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main(argv=None) -> int:
    args = parse_args(argv)
    from fairseq_xsam.fairseq.harness import synthetic_corpus

    data = args.data or synthetic_corpus(tempfile.mkdtemp(prefix="xsam-precision-"), n_train=200)
    if args.device == "cpu":  # fairseq's fp16 overflow branch builds a tensor with .cuda()
        torch.Tensor.cuda = lambda self, *a, **k: self
    results = {p: run(p, data, args) for p in PRECISIONS}
    ref, ref_delta, _ = results["fp32"]
    lines = [f"# XSAM precision check ({args.device}, {args.arch or 'tiny transformer'})", "",
             f"torch {torch.__version__}, python {platform.python_version()}, "
             f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}; "
             f"{args.updates} updates, a search on every update, dropout 0.", "",
             "| precision | update | loss scale | α* (fp32) | ‖g_k‖ rel. diff | φ diff (deg) "
             "| AdamW's gradient rel. diff |", "|---|---|---|---|---|---|---|"]
    figures = {"device": args.device, "arch": args.arch or "tiny transformer",
               "updates": args.updates, "rows": []}
    for precision in ("fp16", "amp"):
        recs, delta, updates = results[precision]
        skipped = args.updates - updates
        for i, (r, r32) in enumerate(zip(recs, ref)):
            grad = (f"{rel(r['adam_grad'], r32['adam_grad']):.2e}" if "adam_grad" in r
                    else "skipped (overflow)")
            figures["rows"].append({
                "precision": precision, "update": i + 1, "loss_scale": r["scale"],
                "alpha": r["alpha"], "alpha_fp32": r32["alpha"],
                "gk_norm_rel_diff": abs(r["gk_norm"] - r32["gk_norm"]) / r32["gk_norm"],
                "phi_diff_deg": math.degrees(abs(r["phi"] - r32["phi"])),
                "adam_grad_rel_diff": (rel(r["adam_grad"], r32["adam_grad"])
                                       if "adam_grad" in r else None)})
            row = figures["rows"][-1]
            lines.append(
                f"| {precision} | {i + 1} | {r['scale']} | {r['alpha']} ({r32['alpha']}) | "
                f"{row['gk_norm_rel_diff']:.2e} | {row['phi_diff_deg']:.3f} | {grad} |")
        lines.append(f"| {precision} | Δθ after {args.updates} | | | | | "
                     f"{rel(delta, ref_delta):.2e} (parameter change; {skipped} skipped) |")
        figures[f"{precision}_delta_theta_rel_diff"] = rel(delta, ref_delta)
        figures[f"{precision}_skipped"] = skipped
    text = "\n".join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n\nCommand: `xsam-precision "
                    + " ".join(sys.argv[1:] if argv is None else argv) + "`\n")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
