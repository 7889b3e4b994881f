r"""The paper's Figure 1 for a fairseq checkpoint: the loss on XSAM's plane through θ.

For the loss L of the selected batch(es) (training criterion, model in eval mode: no dropout):
g_0 = ∇L(θ); k = --ascent-steps ascent steps θ_{i+1} = θ_i + (ρ/k)·g_i/‖g_i‖ (ρ = --rho);
g_k = ∇L(θ_k); the plane u = (θ_k − θ)/‖θ_k − θ‖, v = g_k/‖g_k‖, φ = ∠(u, v), with the
orthonormal axes e_1 = u, e_2 = (v − cos φ·u)/sin φ; d(α) = [sin((1−α)φ)·u + sin(αφ)·v]/sin φ and
α* = argmax_α L(θ + ρ'·d(α)) over 0, Δα, …, α_max (ρ' = --probe-rho), exactly as the optimizer
computes them (fairseq_xsam.core). Then L(θ + a·e_1 + b·e_2) on a --grid × --grid grid,
a, b ∈ [−R, R] (R = --extent, default 1.5ρ').

Writes a PNG (--out): contour map, arrows (length ρ') for the directions of g_0 (its projection
on the plane), g_k (= v, SAM) and d(α*) (XSAM), the ascent points θ_1..θ_k, the probe circle
‖·‖ = ρ', a legend with α* and φ. --json writes the grid and all plane coordinates.
--rho/--probe-rho/--ascent-steps/--alpha-max/--alpha-step/--adaptive default to the checkpoint's
xsam_adamw settings (otherwise 0.15 / 0.45 / 1 / 2.0 / 0.1 / off).

    xsam-plane checkpoints/xsam/checkpoint_best.pt \
        --data data-bin/iwslt14.tokenized.de-en --grid 31 --out plane.png --json plane.json
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

import torch

from .flatness import add_data_options, checked, load_setup, write_json

POSITIVE = "allowed: a number > 0"
DEFAULTS = {"rho": 0.15, "probe_rho": 0.45, "ascent_steps": 1, "alpha_max": 2.0,
            "alpha_step": 0.1, "adaptive": False, "asam_eta": 0.01}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_data_options(p, batches_default=1)
    pos = lambda name: checked(float, name, lambda v: math.isfinite(v) and v > 0,  # noqa: E731
                               f"allowed: {name} > 0")
    p.add_argument("--rho", type=pos("--rho"), default=None, help="ascent radius ρ")
    p.add_argument("--probe-rho", type=pos("--probe-rho"), default=None, help="probe radius ρ'")
    p.add_argument("--ascent-steps", type=checked(int, "--ascent-steps", lambda v: v >= 1,
                                                  "allowed: an integer >= 1"), default=None)
    p.add_argument("--alpha-max", type=pos("--alpha-max"), default=None)
    p.add_argument("--alpha-step", type=pos("--alpha-step"), default=None)
    p.add_argument("--adaptive", action="store_true", default=None,
                   help="ASAM's element-wise ascent (default: as the checkpoint was trained)")
    p.add_argument("--grid", type=checked(int, "--grid", lambda v: v >= 3 and v % 2 == 1,
                                          "allowed: an odd integer >= 3, so that θ is a grid "
                                          "point"), default=21)
    p.add_argument("--extent", type=pos("--extent"), default=None,
                   help="half-width R of the grid (default 1.5·ρ')")
    p.add_argument("--out", default="plane_surface.png", help="PNG file")
    p.add_argument("--json", default=None, help="optional JSON file with the grid")
    return p.parse_args(argv)


def settings(args, cfg):
    """Plane options: the command line, else the checkpoint's xsam_adamw settings, else defaults."""
    opt = getattr(cfg, "optimizer", None)
    trained = {}
    if opt is not None and getattr(opt, "_name", None) == "xsam_adamw":
        for key in DEFAULTS:
            if key in opt:
                trained[key] = opt[key]
    out = {}
    for key, default in DEFAULTS.items():
        given = getattr(args, key, None)
        out[key] = given if given is not None else trained.get(key, default)
    from fairseq_xsam.core import AUTO, largest_alpha
    from fairseq_xsam.settings import parse_alpha_max

    out["alpha_max"] = parse_alpha_max(out["alpha_max"], cli=True)  # a config holds a string
    if out["alpha_max"] == AUTO:  # trained with --alpha-max auto: every α its search can reach
        out["alpha_max"] = largest_alpha(AUTO, out["alpha_step"],
                                         trained.get("alpha_expand_probes", 40))
    if out["alpha_step"] > out["alpha_max"]:
        raise SystemExit(f"invalid --alpha-step value: {out['alpha_step']} (allowed: "
                         f"0 < --alpha-step <= --alpha-max = {out['alpha_max']})")
    return out


def plot(surface, path, title):
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    a, b = surface.a, surface.b
    fig, ax = plt.subplots(figsize=(7, 6))
    cs = ax.contourf(a, b, surface.losses, levels=30, cmap="viridis")
    ax.contour(a, b, surface.losses, levels=15, colors="white", linewidths=0.4, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="loss L(θ + a·e₁ + b·e₂)")
    r = surface.probe_rho
    t = torch.linspace(0, 2 * math.pi, 200)
    ax.plot((r * torch.cos(t)).tolist(), (r * torch.sin(t)).tolist(), ls="--", lw=0.8,
            color="white", label=f"probe circle ρ' = {r:g}")
    arrows = [(surface.g0_dir, "orange", 4.0, "g₀ direction (SGD+, α=0 for k=1)"),
              (surface.gk_dir, "red", 2.8, "g_k direction (SAM, α=1)"),
              (surface.d_star, "cyan", 1.6, f"d(α*) (XSAM), α* = {surface.alpha_star:g}")]
    for vec, color, lw, label in arrows:  # decreasing widths: coinciding arrows stay visible
        if not all(math.isfinite(x) for x in vec):
            continue
        ax.annotate("", xy=(r * vec[0], r * vec[1]), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=lw))
        ax.plot([], [], color=color, lw=lw, label=label)
    pts = surface.ascent_points
    ax.plot([0] + [p[0] for p in pts], [0] + [p[1] for p in pts], "-o", color="magenta",
            ms=4, lw=1, label=f"ascent θ_1..θ_k (k = {surface.ascent_steps}, ρ = {surface.rho:g})")
    ax.plot([0], [0], "w*", ms=12, mec="black", label=f"θ, L = {surface.loss0:.4g}")
    ax.plot([], [], " ", label=f"φ = {math.degrees(surface.phi):.1f}°")
    ax.set(xlabel="a (along e₁ = u)", ylabel="b (along e₂: span(u, v), orthogonal to u)", title=title,
           aspect="equal")
    ax.legend(loc="lower left", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fairseq_xsam.analysis import plane_surface
    from fairseq_xsam.core import alpha_grid

    setup = load_setup(args)
    s = settings(args, setup.cfg)
    t0 = time.time()
    surface = plane_surface(
        setup.params, setup.grad, setup.loss, rho=s["rho"], probe_rho=s["probe_rho"],
        ascent_steps=s["ascent_steps"], alphas=alpha_grid(s["alpha_max"], s["alpha_step"]),
        extent=args.extent, grid=args.grid, adaptive=bool(s["adaptive"]),
        asam_eta=s["asam_eta"], generator=torch.Generator().manual_seed(args.seed))
    print(f"L(θ) = {surface.loss0:.6f}, ‖g_0‖ = {surface.g0_norm:.4g}, ‖g_k‖ = "
          f"{surface.gk_norm:.4g}, φ = {math.degrees(surface.phi):.2f}°"
          f"{' (degenerate plane)' if surface.degenerate else ''}, α* = {surface.alpha_star:g}, "
          f"max probe loss {max(surface.probe_losses):.6f}; grid {args.grid}×{args.grid} in "
          f"{time.time() - t0:.1f} s")
    name = os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint)))
    plot(surface, args.out, f"{name}/{os.path.basename(args.checkpoint)}: "
         f"α* = {surface.alpha_star:g}, φ = {math.degrees(surface.phi):.1f}°")
    print(f"wrote {args.out}")
    if args.json:
        out = surface.as_dict()
        out.update(checkpoint=os.path.abspath(args.checkpoint), split=args.split,
                   batches=args.batches, first_batch=args.first_batch, adaptive=bool(s["adaptive"]),
                   device=str(setup.device))
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
