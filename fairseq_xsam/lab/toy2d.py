"""The paper's Figure 3(a): SGD, SAM and XSAM on the 2-D sharp/flat function (PNG).

    xsam-toy2d --out docs/results/toy2d.png
"""

import argparse
import logging
import sys

import matplotlib

matplotlib.use("Agg")
logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq leaves the root at DEBUG
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fairseq_xsam import XSAM  # noqa: E402
from fairseq_xsam.toy import FLAT, SHARP, basin, loss, trajectory  # noqa: E402


def runs(start, steps, lr, rho, probe_rho):
    return {
        "SGD": trajectory(lambda p: torch.optim.SGD(p, lr=lr), start, steps),
        "SAM": trajectory(lambda p: XSAM(p, torch.optim.SGD, rho=rho, sam_variant="sam", lr=lr),
                          start, steps),
        "XSAM": trajectory(lambda p: XSAM(p, torch.optim.SGD, rho=rho, probe_rho=probe_rho,
                                          alpha_search=1, lr=lr), start, steps),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="toy2d.png")
    p.add_argument("--start", type=float, nargs=2, default=[-15.0, 10.0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=100.0)
    p.add_argument("--rho", type=float, default=8.0)
    p.add_argument("--probe-rho", type=float, default=24.0)
    args = p.parse_args(argv)
    paths = runs(args.start, args.steps, args.lr, args.rho, args.probe_rho)
    xs, ys = torch.linspace(-35, 35, 281), torch.linspace(2, 45, 173)
    grid = torch.tensor([[float(loss(torch.tensor([x, y], dtype=torch.float64))) for x in xs]
                         for y in ys])
    fig, ax = plt.subplots(figsize=(7, 5))
    cs = ax.contourf(xs, ys, grid, levels=40, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="loss")
    for (name, path), color in zip(paths.items(), ("white", "orange", "red")):
        pts = torch.stack(path)
        ax.plot(pts[:, 0], pts[:, 1], color=color, lw=1.5,
                label=f"{name} → {basin(path[-1])} ({float(path[-1][0]):.1f}, {float(path[-1][1]):.1f})")
    ax.scatter([SHARP[0], FLAT[0]], [SHARP[1], FLAT[1]], marker="x", color="black")
    ax.scatter([args.start[0]], [args.start[1]], marker="o", color="white", edgecolor="black")
    ax.set(xlabel="x (mean)", ylabel="y (std)",
           title=f"lr {args.lr}, rho {args.rho}, rho' {args.probe_rho}, {args.steps} steps")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    for name, path in paths.items():
        print(f"{name}: ends at ({float(path[-1][0]):.2f}, {float(path[-1][1]):.2f}), "
              f"{basin(path[-1])} minimum")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
