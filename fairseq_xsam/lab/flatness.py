r"""Flatness of a fairseq checkpoint as the paper's Appendix E.5 measures it.

L(θ) is the checkpoint's training criterion (e.g. label-smoothed cross-entropy) on the first
--batches batches of the --split split (fixed order, no shuffling, model in eval mode: no
dropout), normalised like fairseq's trainer: L = Σ_b loss_b / Σ_b sample_size_b.

1. Hessian spectrum: the largest Ritz values λ_1 ≥ … ≥ λ_k (k = --top-k ≥ 5) of ∇²L(θ) by
   Lanczos with full reorthogonalisation (--lanczos-iters steps) on Hessian-vector products
   H·w = ∇⟨∇L, w⟩ (double backward); prints λ_max = λ_1, λ_1..λ_5 and λ_max/λ_5.
2. Average sharpness: (1/M)·Σ_m [L(θ + σ·d_m) − L(θ)] over M = --directions random directions
   d_m, filter-normalised as in Li et al. 2018 (each row/filter of d has the norm of the weight's
   row; biases and LayerNorm parameters are not perturbed unless --one-d weight), σ = --sigma.

Writes a JSON file (--out) with lambda_max, lambda_top, lambda_ratio, avg_sharpness, sigma,
directions, batches, checkpoint (and the details: residuals, L(θ), stderr, ...). The
checkpoint's data folder is used unless --data is given. Attention runs with PyTorch's "math"
kernel (fused kernels have no double backward).

    xsam-flatness checkpoints/xsam/checkpoint_best.pt \
        --data data-bin/iwslt14.tokenized.de-en --batches 8 --directions 250 \
        --out checkpoints/xsam/eval/sharpness.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time

import torch

logger = logging.getLogger("xsam-flatness")


# --------------------------------------------------------------------------- option checks
def checked(kind, name, ok, allowed):
    """An argparse type: converts with ``kind`` and rejects values failing ``ok``."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {name} value: {text!r} ({allowed})") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"invalid {name} value: {text!r} ({allowed})")
        return value
    return convert


def write_json(path, obj) -> None:
    """Writes ``obj`` to ``path`` (creating its folder) and says so."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    print(f"wrote {path}")


def add_data_options(p, batches_default):
    """Options shared with xsam-plane: what to load and which batches."""
    p.add_argument("checkpoint", help="a fairseq checkpoint (.pt)")
    p.add_argument("--data", default=None,
                   help="data-bin folder (default: the one stored in the checkpoint)")
    p.add_argument("--split", default="train", help="dataset split (default: train)")
    p.add_argument("--batches", type=checked(int, "--batches", lambda v: v >= 1,
                                             "allowed: an integer >= 1"),
                   default=batches_default, help="number of batches forming L (default: "
                   f"{batches_default})")
    p.add_argument("--first-batch", type=checked(int, "--first-batch", lambda v: v >= 0,
                                                 "allowed: an integer >= 0"), default=0,
                   help="index of the first batch used, in --batch-order (default 0)")
    p.add_argument("--batch-order", choices=("shuffled", "sorted"), default="shuffled",
                   help="shuffled (default): the batches in the order of fairseq's first training "
                        "epoch with seed 1, a random sample of the split; sorted: fairseq's "
                        "length-sorted order, whose first batches hold the shortest sentences "
                        "(the order before 2026-12-02)")
    p.add_argument("--max-tokens", type=checked(int, "--max-tokens", lambda v: v >= 1,
                                                "allowed: an integer >= 1"), default=4096)
    p.add_argument("--max-sentences", type=checked(int, "--max-sentences", lambda v: v >= 1,
                                                   "allowed: an integer >= 1"), default=None)
    p.add_argument("--seed", type=int, default=1, help="seed of the random vectors")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is there")


# --------------------------------------------------------------------------- fairseq
def math_attention():
    """Scaled-dot-product attention restricted to the math kernel (twice differentiable)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


class Setup:
    """Model, criterion and fixed batches of a checkpoint; L(θ) and its derivatives on them."""

    def __init__(self, model, criterion, task, cfg, samples, device):
        self.model, self.criterion, self.task, self.cfg = model, criterion, task, cfg
        self.samples, self.device = samples, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad(), math_attention():
            self.sample_size = float(sum(float(criterion(model, s)[1]) for s in samples))
        if self.sample_size <= 0:
            raise SystemExit("the selected batches have sample size 0 (empty batches?)")

    def _batch_loss(self, sample):
        loss, _, _ = self.criterion(self.model, sample)
        return loss.to(torch.promote_types(loss.dtype, torch.float32)) / self.sample_size

    def loss(self) -> torch.Tensor:
        """L(θ) = Σ_b loss_b / Σ_b sample_size_b, no gradients."""
        with torch.no_grad(), math_attention():
            return sum(self._batch_loss(s) for s in self.samples).detach()

    def grad(self):
        """∇L(θ), one tensor per parameter."""
        for p in self.params:
            p.grad = None
        with math_attention():
            for s in self.samples:
                self._batch_loss(s).backward()
        out = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
               for p in self.params]
        for p in self.params:
            p.grad = None
        return out

    def hvp(self, vecs):
        """∇²L(θ)·w = Σ_b ∇²(loss_b/S)·w, one forward and double backward per batch."""
        from fairseq_xsam.analysis import hvp

        acc = None
        with math_attention():
            for s in self.samples:
                hv = hvp(self._batch_loss(s), self.params, vecs)
                if acc is None:
                    acc = hv
                else:
                    torch._foreach_add_(acc, hv)
        return acc


def load_setup(args) -> Setup:
    """Loads ``args.checkpoint`` the fairseq way and takes the batches the options select."""
    from fairseq_xsam.fairseq import register

    register()  # xsam_adamw checkpoints name the optimizer; fairseq's types for torch's safe load
    from fairseq import checkpoint_utils, utils

    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint: no such file: {args.checkpoint}")
    if args.cpu or not torch.cuda.is_available():
        device = torch.device("cpu")
    else:
        device = torch.device("cuda")
    overrides = {"data": args.data} if args.data else None
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [args.checkpoint], arg_overrides=overrides)
    model = models[0].float().to(device).eval()
    criterion = task.build_criterion(cfg.criterion).to(device).eval()
    task.load_dataset(args.split, combine=False, epoch=1)
    itr = task.get_batch_iterator(
        dataset=task.dataset(args.split), max_tokens=args.max_tokens,
        max_sentences=args.max_sentences,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True, required_batch_size_multiple=1, seed=1, epoch=1,
    ).next_epoch_itr(shuffle=getattr(args, "batch_order", "shuffled") == "shuffled")
    samples = []
    for i, sample in enumerate(itr):
        if i < args.first_batch:
            continue
        samples.append(utils.move_to_cuda(sample) if device.type == "cuda" else sample)
        if len(samples) == args.batches:
            break
    if len(samples) < args.batches:
        raise SystemExit(f"invalid --batches/--first-batch: the {args.split} split has only "
                         f"{args.first_batch + len(samples)} batches at --max-tokens "
                         f"{args.max_tokens}")
    return Setup(model, criterion, task, cfg, samples, device)


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(p, batches_default=4)
    p.add_argument("--top-k", type=checked(int, "--top-k", lambda v: v >= 5,
                                           "allowed: an integer >= 5"), default=5,
                   help="Ritz values reported (>= 5: the ratio needs λ_5)")
    p.add_argument("--lanczos-iters", type=int, default=30,
                   help="Lanczos steps m (>= --top-k; each costs --batches forward + double "
                        "backward passes; memory m × #params)")
    p.add_argument("--directions", type=checked(int, "--directions", lambda v: v >= 1,
                                                "allowed: an integer >= 1"), default=50,
                   help="random directions M for the average sharpness (paper: 250 suffice)")
    p.add_argument("--sigma", type=checked(float, "--sigma",
                                           lambda v: math.isfinite(v) and v > 0,
                                           "allowed: --sigma > 0"), default=0.05,
                   help="perturbation size σ: θ + σ·d, d filter-normalised (default 0.05)")
    p.add_argument("--norm", choices=["filter", "element"], default="filter",
                   help="direction normalisation (Li et al. 2018): per filter/row (default) or "
                        "element-wise d ⊙ |θ|")
    p.add_argument("--one-d", choices=["zero", "weight"], default="zero",
                   help="filter mode, 1-D parameters (biases, LayerNorm): 'zero' = not "
                        "perturbed (Li et al.'s --xignore biasbn, default), 'weight' = d = θ")
    p.add_argument("--out", default=None, help="JSON output file")
    args = p.parse_args(argv)
    if args.lanczos_iters < args.top_k:
        p.error(f"invalid --lanczos-iters value: {args.lanczos_iters} "
                f"(allowed: an integer >= --top-k = {args.top_k})")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fairseq_xsam.analysis import (
        average_sharpness,
        filter_normalized_direction,
        flatten,
        lanczos,
        unflatten,
    )

    setup = load_setup(args)
    params = setup.params
    dim = sum(p.numel() for p in params)
    t0 = time.time()
    loss0 = float(setup.loss())
    print(f"checkpoint {args.checkpoint}: {dim} parameters, {args.batches} batches, "
          f"sample size {setup.sample_size:g}, L(θ) = {loss0:.6f} ({setup.device})")

    def matvec(flat):
        return flatten(setup.hvp(unflatten(flat, params)))

    gen = torch.Generator().manual_seed(args.seed)
    iters = min(args.lanczos_iters, dim)
    result = lanczos(matvec, dim, k=args.top_k, iters=iters, dtype=params[0].dtype,
                     device=params[0].device, generator=gen)
    lam = result.eigenvalues
    ratio = lam[0] / lam[4] if lam[4] != 0 else None
    t1 = time.time()
    print(f"Hessian (Lanczos, {result.iterations} steps, {t1 - t0:.1f} s): "
          f"λ_max = {lam[0]:.6g}")
    for i, (val, res) in enumerate(zip(lam, result.residuals), 1):
        print(f"  λ_{i} = {val:.6g}   (residual bound {res:.2g})")
    print(f"  λ_max/λ_5 = {ratio:.6g}" if ratio is not None else "  λ_max/λ_5 = undefined (λ_5 = 0)")

    dgen = torch.Generator().manual_seed(args.seed + 1)
    directions = (filter_normalized_direction(params, dgen, args.norm, args.one_d)
                  for _ in range(args.directions))
    sharp = average_sharpness(params, setup.loss, args.sigma, directions)
    print(f"average sharpness (σ = {args.sigma:g}, {args.directions} {args.norm}-normalised "
          f"directions, {time.time() - t1:.1f} s): {sharp.average:.6g} ± {sharp.stderr:.2g}")

    out = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "lambda_max": lam[0],
        "lambda_top": lam,
        "lambda_ratio": ratio,
        "lambda_residuals": result.residuals,
        "lanczos_iters": result.iterations,
        "avg_sharpness": sharp.average,
        "avg_sharpness_stderr": sharp.stderr,
        "loss": loss0,
        "sigma": args.sigma,
        "directions": args.directions,
        "norm": args.norm,
        "one_d": args.one_d,
        "batches": args.batches,
        "first_batch": args.first_batch,
        "batch_order": args.batch_order,
        "sentences": sum(int(x["nsentences"]) for x in setup.samples),
        "max_tokens": args.max_tokens,
        "split": args.split,
        "sample_size": setup.sample_size,
        "criterion": getattr(setup.cfg.criterion, "_name", None),
        "parameters": dim,
        "seed": args.seed,
        "device": str(setup.device),
    }
    if args.out:
        write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
